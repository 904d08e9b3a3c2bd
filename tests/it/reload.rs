//! Config hot reload: the config file mounted as Kubernetes mounts a
//! ConfigMap (`config.yaml -> ..data/config.yaml`, `..data -> ..<stamp>`),
//! updated as the kubelet updates it (a new stamped directory, `..data`
//! swapped atomically by a rename). New keys and narrowed caller rules
//! apply within 2 s, an invalid config is rejected whole, and requests in
//! flight across a reload complete.

use crate::harness::{Sidecar, b64, eventually, signal, unb64};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A ConfigMap volume at `dir`, written the way the kubelet writes one.
struct ConfigMap {
    dir: PathBuf,
    stamp: u32,
}

impl ConfigMap {
    fn new(dir: &Path, text: &str) -> ConfigMap {
        std::fs::create_dir_all(dir).unwrap();
        let mut cm = ConfigMap {
            dir: dir.to_owned(),
            stamp: 0,
        };
        cm.update(text);
        symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
        cm
    }

    fn path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// The kubelet's atomic writer: the new payload in a fresh directory,
    /// a `..data_tmp` link to it renamed over `..data`, the old one removed.
    fn update(&mut self, text: &str) {
        self.update_with(|file| std::fs::write(file, text).unwrap());
    }

    /// [`Self::update`] with the payload's `config.yaml` made by `make`.
    fn update_with(&mut self, make: impl FnOnce(&Path)) {
        let old = format!("..2026_11_28_00_00_{:02}.{}", self.stamp, self.stamp);
        self.stamp += 1;
        let new = format!("..2026_11_28_00_00_{:02}.{}", self.stamp, self.stamp);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        make(&self.dir.join(&new).join("config.yaml"));
        symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Two local backends; `keys` and `callers` as given.
fn config(dir: &Path, keys: &str, callers: &str) -> String {
    let dir = dir.display();
    format!(
        "backends:\n  dev: {{ type: local, dir: \"{dir}/keys\" }}\n  dev2: {{ type: local, dir: \"{dir}/keys2\" }}\n\
         keys:\n{keys}\ncallers:\n{callers}\nlimits: {{ max_connections_per_caller: 256 }}\n"
    )
}

const KEY_A: &str = "  a: { backend: dev, key: a, algorithm: aes-256-gcm }";
const KEY_B: &str = "  b: { backend: dev2, key: b, algorithm: aes-256-gcm }";

fn everything() -> String {
    format!("  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}", me())
}

async fn start(text: &str) -> (Sidecar, ConfigMap) {
    let dir = tempfile::tempdir().unwrap();
    let cm = ConfigMap::new(&dir.path().join("cm"), text);
    let path = cm.path();
    (Sidecar::start_in(dir, &path, &[], None).await, cm)
}

async fn listed(s: &Sidecar) -> Vec<String> {
    let keys = s.get("/v1/keys").await.ok();
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn seal(s: &Sidecar, alias: &str) -> crate::harness::Resp {
    s.post(
        &format!("/v1/keys/{alias}/envelope/encrypt"),
        json!({"plaintext": b64("kept"), "context": {"app": "reload"}}),
    )
    .await
}

/// The plaintext of an envelope of key `a` made by [`seal`].
async fn open(s: &Sidecar, envelope: &Value) -> Vec<u8> {
    let body = json!({"envelope": envelope, "context": {"app": "reload"}});
    unb64(&s.post_ok("/v1/keys/a/envelope/decrypt", body).await["plaintext"])
}

const GENERATED_A: &str =
    r#"kms_sidecar_datakey_cache_backend_calls_total{key="a",op="generate_data_key"} "#;
const APPLIED: &str = r#"kms_sidecar_config_reloads_total{outcome="applied"} "#;
const REJECTED: &str = r#"kms_sidecar_config_reloads_total{outcome="rejected"} "#;
const GENERATION: &str = "kms_sidecar_config_generation ";

#[tokio::test]
async fn a_configmap_swap_adds_a_key_narrows_a_caller_and_an_invalid_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    assert_eq!(listed(&s).await, ["a"]);
    assert_eq!(s.metric(GENERATION).await, 1.0);
    seal(&s, "a").await.ok();
    assert_eq!(s.metric(GENERATED_A).await, 1.0);

    // A new key on another backend: listed and usable within 2 s.
    cm.update(&config(
        dir.path(),
        &format!("{KEY_A}\n{KEY_B}"),
        &everything(),
    ));
    eventually(Duration::from_secs(2), "key `b` is listed", || async {
        listed(&s).await == ["a", "b"]
    })
    .await;
    seal(&s, "b").await.ok();
    assert_eq!(s.metric(GENERATION).await, 2.0);
    assert_eq!(s.metric(APPLIED).await, 1.0);
    // Key `a` and its backend did not change: its cached data key serves on.
    let before = seal(&s, "a").await.ok();
    assert_eq!(s.metric(GENERATED_A).await, 1.0, "no new data key for `a`");

    // The caller's rule narrowed to key `a`: `b` is refused within 2 s.
    let only_a = format!("  - {{ uids: [{}], keys: [a], ops: [\"*\"] }}", me());
    cm.update(&config(dir.path(), &format!("{KEY_A}\n{KEY_B}"), &only_a));
    eventually(Duration::from_secs(2), "`b` is refused", || async {
        seal(&s, "b").await.status == 403
    })
    .await;
    seal(&s, "b").await.expect(403, Some("forbidden"));
    seal(&s, "a").await.ok();

    // An invalid config (an unknown field) is rejected whole: the old one
    // serves on, and the log names the field.
    let invalid = config(
        dir.path(),
        &format!("{KEY_A}\n  b: {{ backend: dev2, key: b, colour: blue }}"),
        &everything(),
    );
    cm.update(&invalid);
    eventually(Duration::from_secs(2), "the reload is rejected", || async {
        s.metric(REJECTED).await == 1.0
    })
    .await;
    assert_eq!(s.metric(GENERATION).await, 3.0);
    seal(&s, "b").await.expect(403, Some("forbidden"));
    assert_eq!(open(&s, &before["envelope"]).await, b"kept");
    let logs = s.logs();
    assert!(
        logs.contains("config reload rejected") && logs.contains("colour"),
        "the rejection and the field are logged:\n{logs}"
    );

    // A backend that cannot be built rejects the reload too.
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let broken = config(dir.path(), &format!("{KEY_A}\n{KEY_B}"), &everything())
        .replace("/keys2\"", "/not-a-dir/keys2\"");
    cm.update(&broken);
    eventually(Duration::from_secs(2), "the second rejection", || async {
        s.metric(REJECTED).await == 2.0
    })
    .await;
    seal(&s, "b").await.expect(403, Some("forbidden"));
    assert_eq!(s.metric(GENERATION).await, 3.0);
}

#[tokio::test]
async fn sighup_reloads_the_file_even_when_it_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    signal(s.pid(), nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(2), "generation 2", || async {
        s.metric(GENERATION).await == 2.0
    })
    .await;
    seal(&s, "a").await.ok();
    assert!(s.logs().contains("SIGHUP: reloading the config"));
}

/// A config file that goes away is one rejected reload, said once (not at
/// every poll), and the config in force serves on; SIGHUP tries again.
#[tokio::test]
async fn a_missing_config_file_is_rejected_once_and_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (s, cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    std::fs::remove_file(cm.path()).unwrap();
    eventually(Duration::from_secs(2), "the rejection", || async {
        s.metric(REJECTED).await == 1.0
    })
    .await;
    tokio::time::sleep(kms_sidecar::reload::POLL + Duration::from_millis(500)).await;
    assert_eq!(s.metric(REJECTED).await, 1.0, "a poll later, still once");
    seal(&s, "a").await.ok();
    signal(s.pid(), nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(2), "SIGHUP tries again", || async {
        s.metric(REJECTED).await == 2.0
    })
    .await;
    assert!(s.logs().contains("cannot read"));
}

/// 100 requests whose bodies are half sent when a reload rebuilds the
/// backend of their key: all complete, under the config they began with.
#[tokio::test]
async fn requests_in_flight_across_a_reload_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    let (release, gate) = tokio::sync::watch::channel(false);
    let mut requests = Vec::new();
    for i in 0..100 {
        let body = serde_json::to_vec(
            &json!({"plaintext": b64(format!("message {i}")), "context": {"app": "reload"}}),
        )
        .unwrap();
        let (head, tail) = body.split_at(body.len() / 2);
        let (head, tail) = (Bytes::copy_from_slice(head), Bytes::copy_from_slice(tail));
        let gate = gate.clone();
        let frames = futures_util::stream::unfold(0, move |n| {
            let (head, tail, mut gate) = (head.clone(), tail.clone(), gate.clone());
            let gate = async move {
                let _ = gate.wait_for(|open| *open).await;
            };
            async move {
                match n {
                    0 => Some((Ok::<_, std::io::Error>(Frame::data(head)), 1)),
                    1 => {
                        gate.await;
                        Some((Ok(Frame::data(tail)), 2))
                    }
                    _ => None,
                }
            }
        });
        let s = &s;
        let resp = async move {
            let length = body.len().to_string();
            let headers = [
                ("content-type", "application/json"),
                ("content-length", length.as_str()),
            ];
            let body = StreamBody::new(Box::pin(frames));
            s.stream_request("/v1/keys/a/envelope/encrypt", &headers, body)
                .await
        };
        requests.push(resp);
    }
    let mut pending = futures_util::future::join_all(requests);
    // Every request is in: its head read, half its body sent.
    tokio::select! {
        _ = &mut pending => panic!("the requests finished before their bodies did"),
        () = eventually(Duration::from_secs(10), "100 connections open", || async {
            s.metric("kms_sidecar_connections_open ").await >= 100.0
        }) => {}
    }
    // The reload rebuilds `dev` (its timeout changed) and adds a key.
    cm.update(
        &config(dir.path(), &format!("{KEY_A}\n{KEY_B}"), &everything())
            .replace("dir: \"", "timeout: 4s, dir: \""),
    );
    tokio::select! {
        _ = &mut pending => panic!("the requests finished before their bodies did"),
        () = eventually(Duration::from_secs(2), "the reload applied", || async {
            s.metric(GENERATION).await == 2.0
        }) => {}
    }
    release.send(true).unwrap();
    let responses = pending.await;
    for (i, resp) in responses.into_iter().enumerate() {
        assert_eq!(resp.status(), 200, "request {i}");
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(
            open(&s, &body["envelope"]).await,
            format!("message {i}").as_bytes()
        );
    }
}

/// A reload that adds a backend which is not healthy (a Vault address
/// where nothing listens) is rejected after the backend had its 10 s to
/// become healthy, naming it; the old config serves on.
#[cfg(feature = "vault")]
#[tokio::test]
async fn a_new_backend_that_is_not_healthy_rejects_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), KEY_A, &everything());
    let (s, mut cm) = start(&text).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "reload-test-token").unwrap();
    s.secret("reload-test-token");
    let port = crate::harness::free_port();
    let with_vault = text.replace(
        "keys:\n",
        &format!(
            "  vault: {{ type: vault, address: \"http://127.0.0.1:{port}\", timeout: 1s, auth: {{ method: token, token_file: \"{}\" }} }}\nkeys:\n  c: {{ backend: vault, key: c }}\n",
            token.display()
        ),
    );
    cm.update(&with_vault);
    eventually(Duration::from_secs(30), "the rejection", || async {
        s.metric(REJECTED).await == 1.0
    })
    .await;
    assert_eq!(listed(&s).await, ["a"]);
    assert_eq!(s.metric(GENERATION).await, 1.0);
    seal(&s, "a").await.ok();
    let logs = s.logs();
    assert!(
        logs.contains("backend `vault` (changed) is not healthy after 10s"),
        "{logs}"
    );
}

/// The config with keys `a` and `b`, written so that a cut after `b`'s
/// `algorithm` is still a valid config: `b` with its default operations
/// (envelope among them). The whole file grants `b` `encrypt` only.
fn half_and_rest(dir: &Path) -> (String, String) {
    let b = "  b:\n    backend: dev2\n    key: b\n    algorithm: aes-256-gcm";
    let half =
        config(dir, "", &everything()).replace("keys:\n\n", "") + &format!("keys:\n{KEY_A}\n{b}\n");
    (half, "    ops: [encrypt]\n".into())
}

/// Writes `half` into the file at `path` in place (truncated, not
/// replaced), holds it open past two polls of the sidecar (which would
/// apply a change no event vouched for), then writes `rest`
/// and closes it. While the writer holds the file nothing is applied: the
/// generation stays 1 and `b` never appears; once it closes, the whole
/// file applies, once (generation 2), and `b`'s envelope is refused as the
/// whole file says (the half file would have allowed it).
async fn write_slowly_in_place(s: &Sidecar, path: &Path, half: &str, rest: &str) {
    use std::io::Write;
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    writer.write_all(half.as_bytes()).unwrap();
    writer.flush().unwrap();
    let held = std::time::Instant::now();
    while held.elapsed() < 2 * kms_sidecar::reload::POLL + Duration::from_secs(1) {
        assert_eq!(listed(s).await, ["a"], "the half-written file was applied");
        assert_eq!(s.metric(GENERATION).await, 1.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.write_all(rest.as_bytes()).unwrap();
    drop(writer);
    eventually(
        Duration::from_secs(2),
        "the closed file applies",
        || async { s.metric(GENERATION).await == 2.0 },
    )
    .await;
    assert_eq!(listed(s).await, ["a", "b"]);
    seal(s, "b").await.expect(403, Some("forbidden"));
    seal(s, "a").await.ok();
    assert_eq!(s.metric(APPLIED).await, 1.0, "applied once, whole");
    assert_eq!(s.metric(REJECTED).await, 0.0);
}

/// A config file written in place (no rename) by a writer that stops half
/// way and holds the file open: nothing applies until it closes the file.
#[tokio::test]
async fn a_file_written_in_place_applies_only_once_its_writer_closes_it() {
    let s = Sidecar::start(&config(Path::new("{dir}"), KEY_A, &everything())).await;
    let (half, rest) = half_and_rest(s.dir.path());
    let path = s.dir.path().join("config.yaml");
    write_slowly_in_place(&s, &path, &half, &rest).await;
}

/// The same through a ConfigMap's links: the file `..data/config.yaml`
/// leads to, written in place, is held back as well (the poll obeys the
/// same rule as the events).
#[tokio::test]
async fn a_configmap_file_written_in_place_applies_only_once_its_writer_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    let (half, rest) = half_and_rest(dir.path());
    let target = cm.dir.join("..data/config.yaml");
    write_slowly_in_place(&s, &target, &half, &rest).await;
}

/// What the config path leads to after a swap: not a regular file (a
/// FIFO, `/dev/zero`), or a file over 1 MiB. Each is rejected at once,
/// without blocking the reloader; the sidecar serves on, and the next good
/// file applies.
#[tokio::test]
async fn a_fifo_a_device_or_a_huge_file_is_rejected_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut cm) = start(&config(dir.path(), KEY_A, &everything())).await;
    // A FIFO no one writes to: reading it would wait forever.
    cm.update_with(|file| nix::unistd::mkfifo(file, nix::sys::stat::Mode::S_IRWXU).unwrap());
    eventually(Duration::from_secs(2), "the FIFO is rejected", || async {
        s.metric(REJECTED).await == 1.0
    })
    .await;
    seal(&s, "a").await.ok();
    // `/dev/zero`: reading it would never end.
    cm.update_with(|file| symlink("/dev/zero", file).unwrap());
    eventually(Duration::from_secs(2), "/dev/zero is rejected", || async {
        s.metric(REJECTED).await == 2.0
    })
    .await;
    seal(&s, "a").await.ok();
    // A regular file of 2 MiB: over the cap.
    let huge = format!("# {}\n", "x".repeat(2 << 20));
    cm.update(&(config(dir.path(), KEY_A, &everything()) + &huge));
    eventually(
        Duration::from_secs(2),
        "the huge file is rejected",
        || async { s.metric(REJECTED).await == 3.0 },
    )
    .await;
    let logs = s.logs();
    for why in [
        "not a regular file (a FIFO)",
        "not a regular file (a character device)",
        "larger than 1 MiB",
    ] {
        assert!(logs.contains(why), "the rejection says {why:?}:\n{logs}");
    }
    // The next good file applies.
    cm.update(&config(
        dir.path(),
        &format!("{KEY_A}\n{KEY_B}"),
        &everything(),
    ));
    eventually(Duration::from_secs(2), "key `b` is listed", || async {
        listed(&s).await == ["a", "b"]
    })
    .await;
    assert_eq!(s.metric(GENERATION).await, 2.0);
    seal(&s, "b").await.ok();
}
