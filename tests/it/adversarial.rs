//! The sidecar attacked as a compromised container of the pod would: clients
//! running as other uids (`setpriv`, when the suite runs as root), a socket
//! every uid can open (`0666`, as the webhook injects it), and the 64 MiB
//! memory limit the webhook sets (a memory cgroup where the machine allows
//! it). Each test reproduces a finding of the security review.

use crate::audit::{lines, verify};
use crate::harness::{MemoryCgroup, Sidecar, b64, hostile_client, is_root, run_as, signal};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A uid no rule names: `nobody` when we can act as it; otherwise we are
/// the outsider and the rules name another uid.
fn outsider() -> (Option<u32>, u32) {
    let me = nix::unistd::geteuid().as_raw();
    if is_root() {
        (Some(65534), me)
    } else {
        (None, me + 1)
    }
}

/// Keys of every kind on a local backend, a 0666 socket, and one rule for
/// `ruled_uid` (plus `extra`, more config lines).
fn config(ruled_uid: u32, extra: &str) -> String {
    format!(
        r#"listen: {{ mode: "0666" }}
backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}
  aes: {{ backend: dev, key: aes, algorithm: aes-256-gcm }}
callers:
  - {{ uids: [{ruled_uid}], keys: ["*"], ops: ["*"] }}
{extra}"#
    )
}

const MIB: u64 = 1 << 20;

/// Starts `config`, inside a 64 MiB memory cgroup where the machine allows it.
async fn start_limited(config: &str) -> (Sidecar, Option<MemoryCgroup>) {
    let cgroup = MemoryCgroup::new(64 * MIB);
    let s = Sidecar::start(config).await;
    if let Some(cg) = &cgroup {
        cg.add(s.pid());
    } else {
        eprintln!(
            "no memory cgroup here (not root, or no memory controller): watching VmRSS instead"
        );
    }
    s.open_to_other_uids();
    (s, cgroup)
}

/// After an attack: the sidecar lives, was never OOM-killed, stayed under
/// 64 MiB, and still serves its rightful caller.
async fn still_healthy(s: &mut Sidecar, cgroup: &Option<MemoryCgroup>, what: &str) {
    assert!(s.alive(), "{what}: the sidecar died; log:\n{}", s.logs());
    let peak = match cgroup {
        Some(cg) => {
            assert_eq!(cg.oom_kills(), 0, "{what}: OOM kill in the memory cgroup");
            cg.peak()
        }
        None => s.peak_rss(),
    };
    assert!(
        peak < 64 * MIB,
        "{what}: memory peaked at {} MiB",
        peak / MIB
    );
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("still here")}))
        .await;
}

fn count(v: &Value, field: &str, key: &str) -> u64 {
    v[field][key].as_u64().unwrap_or(0)
}

/// `count` requests of Python's `http.client` as `uid`, each with a JSON
/// body of `body_bytes` (0: none): what they got.
fn python_http(
    uid: Option<u32>,
    s: &Sidecar,
    method: &str,
    path: &str,
    body_bytes: u64,
    count: u32,
) -> Value {
    let socket = s.socket.display().to_string();
    let (bytes, count) = (body_bytes.to_string(), count.to_string());
    hostile_client(uid, &["http", &socket, method, path, &bytes, &count])
}

#[tokio::test]
async fn a_uid_without_a_rule_is_refused_before_its_body_is_read() {
    let (uid, ruled) = outsider();
    let (mut s, cgroup) = start_limited(&config(ruled, "")).await;
    let socket = s.socket.display().to_string();
    // `{}` with no rule: 403, not "missing field `plaintext`" (400).
    let r = python_http(uid, &s, "POST", "/v1/keys/aes/encrypt", 0, 1);
    assert_eq!(count(&r, "codes", "forbidden"), 1, "{r}");
    // 300 connections each declaring 1 MiB and sending all but one byte
    // (the review: RSS 21 → 463 MB, OOM-killed in 64 MiB).
    let r = hostile_client(
        uid,
        &[
            "hold",
            &socket,
            "/v1/keys/sig/sign",
            "300",
            "1048576",
            "1048575",
            "10",
        ],
    );
    let forbidden = count(&r, "codes", "forbidden");
    assert!(forbidden >= 1, "{r}");
    assert_eq!(
        forbidden + r["closed"].as_u64().unwrap(),
        300,
        "every connection is answered 403 or closed, none left hanging: {r}"
    );
    assert_eq!(count(&r, "statuses", "200"), 0, "{r}");
    still_healthy(
        &mut s,
        &cgroup,
        "300 held 1 MiB bodies from a uid without a rule",
    )
    .await;
}

#[tokio::test]
async fn ruled_callers_holding_hundreds_of_bodies_stay_within_the_budget() {
    let me = nix::unistd::geteuid().as_raw();
    let (mut s, cgroup) = start_limited(&config(me, "limits: { body_timeout: 5s }\n")).await;
    let socket = s.socket.display().to_string();
    let r = hostile_client(
        None,
        &[
            "hold",
            &socket,
            "/v1/keys/aes/envelope/encrypt",
            "250",
            "1048576",
            "1048575",
            "12",
        ],
    );
    // At most 32 MiB of bodies are held: the rest wait a second and get a
    // retryable 503; the held ones time out with 408.
    let overloaded = count(&r, "codes", "overloaded");
    let timed_out = count(&r, "statuses", "408");
    assert!(overloaded >= 200, "{r}");
    assert_eq!(overloaded + timed_out, 250, "{r}");
    still_healthy(&mut s, &cgroup, "250 held 1 MiB bodies of a ruled caller").await;
    // 200 complete 1 MiB envelope encrypts whose answers are not read for
    // 5 s: the answers hold their share of the budget until written.
    let r = hostile_client(
        None,
        &[
            "hold",
            &socket,
            "/v1/keys/aes/envelope/encrypt",
            "200",
            "1048000",
            "1048000",
            "40",
            "5",
        ],
    );
    let (served, overloaded) = (
        count(&r, "statuses", "200"),
        count(&r, "codes", "overloaded"),
    );
    assert!(
        (16..=32).contains(&served),
        "at most 32 MiB of answers wait: {r}"
    );
    assert_eq!(served + overloaded, 200, "{r}");
    still_healthy(&mut s, &cgroup, "200 unread 1 MiB answers").await;
    // The budget is given back: a full-size body goes through again.
    let big = "x".repeat(700_000);
    s.post_ok(
        "/v1/keys/aes/envelope/encrypt",
        json!({"plaintext": b64(&big)}),
    )
    .await;
}

#[tokio::test]
async fn python_clients_get_early_answers_instead_of_broken_pipes() {
    let (uid, ruled) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(
        me,
        &format!(
            "  - {{ uids: [{ruled}], keys: [sig], ops: [sign] }}\nlimits: {{ per_caller: {{ rate: 5/s, burst: 5 }} }}\n"
        ),
    ))
    .await;
    s.open_to_other_uids();
    // 413 from Content-Length, for a body over limits.max_body (1 MiB).
    let r = python_http(
        None,
        &s,
        "POST",
        "/v1/keys/aes/envelope/encrypt",
        1153434,
        3,
    );
    assert_eq!(count(&r, "codes", "payload_too_large"), 3, "{r}");
    assert_eq!(r["errors"], json!({}), "no broken pipes: {r}");
    // 429s from the rate limit, with Retry-After.
    let r = python_http(None, &s, "POST", "/v1/keys/sig/sign", 200, 30);
    assert!(count(&r, "codes", "rate_limited") >= 20, "{r}");
    assert_eq!(r["errors"], json!({}), "no broken pipes: {r}");
    assert!(
        r["retry_after"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v == "1"),
        "{r}"
    );
    // 403 for a uid whose rule does not grant the key, with a 1 MiB body.
    if uid.is_some() {
        let r = python_http(uid, &s, "POST", "/v1/keys/aes/encrypt", 1000000, 3);
        assert_eq!(count(&r, "codes", "forbidden"), 3, "{r}");
        assert_eq!(r["errors"], json!({}), "{r}");
    }
}

#[tokio::test]
async fn no_uid_can_lock_the_others_out_with_idle_connections() {
    let (uid, _) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    // The ruled uid is another one when we can act as it.
    let friend = if is_root() { 65533 } else { me };
    let s = Sidecar::start(&config(
        me,
        &format!("  - {{ uids: [{friend}], keys: [sig], ops: [sign] }}\n"),
    ))
    .await;
    s.open_to_other_uids();
    let socket = s.socket.display().to_string();
    let rss_before = s.rss();
    // 4,100 idle connections from a uid without a rule (the review: every
    // other connection closed at accept, +59 MB).
    let hold = {
        let socket = socket.clone();
        std::thread::spawn(move || hostile_client(uid, &["idle", &socket, "4100", "4"]))
    };
    // While they are open, a ruled caller still gets in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = json!({"message": b64("x")}).to_string();
    let (ok, out, err) = run_as(
        is_root().then_some(friend),
        "curl",
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            &socket,
            "-d",
            &body,
            "http://localhost/v1/keys/sig/sign",
        ],
    );
    assert!(
        ok && out.ends_with("\n200"),
        "a ruled uid is served: {out} {err}"
    );
    assert!(
        s.rss() < rss_before + 16 * MIB,
        "idle connections cost little memory"
    );
    let r = hold.join().unwrap();
    assert!(
        r["refused"].as_u64().unwrap() >= 4100 - 64,
        "at most 64 connections of unknown uids: {r}"
    );
    assert_eq!(
        r["closed"].as_u64().unwrap(),
        4100,
        "and they are closed within seconds: {r}"
    );
    // A ruled uid is capped too (limits.max_connections_per_caller).
    let r = hostile_client(is_root().then_some(friend), &["idle", &socket, "300", "0"]);
    assert_eq!(r["refused"], 300 - 256, "{r}");
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("me")}))
        .await;
}

#[tokio::test]
async fn metrics_on_the_socket_need_the_metrics_grant() {
    let (uid, ruled) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    s.open_to_other_uids();
    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(text.contains("kms_sidecar_"), "\"*\" includes `metrics`");
    if uid.is_some() {
        let r = python_http(uid, &s, "GET", "/metrics", 0, 1);
        assert_eq!(count(&r, "codes", "forbidden"), 1, "{r}");
    }
    drop(s);
    // A rule that grants key operations only (the "*" rule is another uid's).
    let s = Sidecar::start(&config(
        ruled + 1,
        &format!("  - {{ uids: [{me}], keys: [sig], ops: [sign, verify] }}\n"),
    ))
    .await;
    s.get("/metrics").await.expect(403, Some("forbidden"));
    let listed = s.get("/v1/keys").await.ok();
    assert_eq!(
        listed["keys"][0]["ops"],
        json!(["sign", "verify"]),
        "a listing shows what this caller may do: {listed}"
    );
}

#[tokio::test]
async fn the_probe_listener_shows_key_labels_as_configured() {
    let me = nix::unistd::geteuid().as_raw();
    for (labels, shows_alias, shows_key_label) in [
        ("alias", true, true),
        ("hashed", false, true),
        ("none", false, false),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Sidecar::start_with_env(
            &config(me, &format!("metrics: {{ key_labels: {labels} }}\n")),
            &[("KMS_SIDECAR_LISTEN__PROBES", &format!("127.0.0.1:{port}"))],
        )
        .await;
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64("m")}))
            .await;
        let (ok, text, err) = run_as(
            None,
            "curl",
            &["-sf", &format!("http://127.0.0.1:{port}/metrics")],
        );
        assert!(ok, "{err}");
        let line = text
            .lines()
            .find(|l| l.starts_with("kms_sidecar_requests_total") && l.contains("op=\"sign\""))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(line.contains("\"sig\""), shows_alias, "{labels}: {line}");
        assert_eq!(line.contains("key="), shows_key_label, "{labels}: {line}");
        // The socket's /metrics, for a granted caller, always names aliases.
        let socket = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
        assert!(socket.contains("key=\"sig\""), "{labels}");
    }
}

/// Forty ECDSA P-256 signatures of `alias`, DER and raw, all low-S (and
/// some checked by `openssl`). Shared by every backend's tests.
pub async fn signatures_are_low_s(s: &Sidecar, alias: &str) {
    let pem = s.get(&format!("/v1/keys/{alias}/public-key")).await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..40 {
        for format in ["der", "raw"] {
            let message = format!("low-s {i}");
            let sig = s
                .post_ok(
                    &format!("/v1/keys/{alias}/sign"),
                    json!({"message": b64(&message), "format": format}),
                )
                .await;
            let bytes = crate::harness::unb64(&sig["signature"]);
            assert!(
                is_low_s(&bytes, format == "raw"),
                "{format} signature {i} is high-S"
            );
            if format == "der" && i < 4 {
                assert!(crate::harness::openssl_verifies(
                    s.dir.path(),
                    &pem,
                    message.as_bytes(),
                    &bytes,
                    &[],
                    false
                ));
            }
        }
    }
}

#[tokio::test]
async fn ecdsa_signatures_are_low_s() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    signatures_are_low_s(&s, "sig").await;
}

/// Whether a P-256 signature's `s` is at most n/2 (checked here
/// independently of the sidecar's code: big-endian comparison with n/2).
fn is_low_s(signature: &[u8], raw: bool) -> bool {
    const HALF_N: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31,
        0x92, 0xa8,
    ];
    let s: Vec<u8> = if raw {
        signature[32..].to_vec()
    } else {
        // SEQUENCE { INTEGER r, INTEGER s }, short lengths.
        let r_len = signature[3] as usize;
        let s_at = 4 + r_len;
        let s_len = signature[s_at + 1] as usize;
        signature[s_at + 2..s_at + 2 + s_len].to_vec()
    };
    let s = s
        .iter()
        .skip_while(|b| **b == 0)
        .copied()
        .collect::<Vec<_>>();
    let mut padded = vec![0u8; 32 - s.len().min(32)];
    padded.extend_from_slice(&s);
    padded.as_slice() <= HALF_N.as_slice()
}

// === the audit log ===

/// A tmpfs of a given size (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ok, _, err) = crate::harness::run_tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
            "install util-linux (mount)",
        );
        assert!(ok, "mounting a small tmpfs as root: {err}");
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk, then frees `room` bytes.
    fn fill_leaving(&self, room: u64) {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn the_audit_log_fails_closed_on_a_full_disk_and_recovers() {
    let me = nix::unistd::geteuid().as_raw();
    // As root: a 256 KiB tmpfs filled up, then freed. Otherwise /dev/full,
    // which is always full (no recovery to see).
    let disk = SmallDisk::mount("256k");
    let log = match &disk {
        Some(d) => d.path().join("audit.jsonl"),
        None => "/dev/full".into(),
    };
    let s = Sidecar::start(&config(
        me,
        &format!("audit: {{ path: \"{}\" }}\n", log.display()),
    ))
    .await;
    if let Some(d) = &disk {
        d.fill_leaving(8192);
    }
    let sign = || s.post("/v1/keys/sig/sign", json!({"message": b64("audited")}));
    let mut served = 0;
    let refused = loop {
        let r = sign().await;
        match r.status {
            200 => served += 1,
            _ => break r,
        }
        assert!(served < 1000, "the disk never filled up");
    };
    let v = refused.expect_saying(503, "audit_unavailable", "No space left on device");
    assert_eq!(v["error"]["retryable"], true);
    assert_eq!(refused.headers["retry-after"], "1");
    // Until a line can be written again, operations are refused before they run.
    sign().await.expect(503, Some("audit_unavailable"));
    let ready = s.get("/readyz").await;
    let body = ready.expect(503, None);
    assert_eq!(body["audit"]["status"], "error", "{body}");
    assert!(
        body["audit"]["reason"]
            .as_str()
            .unwrap()
            .contains("No space"),
        "{body}"
    );
    let Some(d) = &disk else {
        return;
    };
    // Every answered request has its line; no line is torn; the chain holds.
    let written = lines(&log);
    assert_eq!(
        written.iter().filter(|l| l["outcome"] == "ok").count(),
        served,
        "one line per served request"
    );
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    // Room again: the next request's line is written, and service resumes.
    d.free();
    let mut attempts = 0;
    while sign().await.status != 200 {
        attempts += 1;
        assert!(attempts < 5, "service did not resume");
    }
    s.get("/readyz").await.ok();
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    let written = lines(&log);
    assert_eq!(
        written.iter().filter(|l| l["outcome"] == "ok").count(),
        served + 1
    );
}

#[tokio::test]
async fn fail_open_serves_and_counts_lost_lines() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(
        me,
        "audit: { path: /dev/full, on_failure: fail_open }\n",
    ))
    .await;
    for _ in 0..3 {
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64("m")}))
            .await;
    }
    // The writer reports asynchronously: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = s.get("/readyz").await.ok();
        if body["audit"]["lost_lines"].as_u64() == Some(3) {
            assert_eq!(body["status"], "ready", "fail_open stays ready: {body}");
            assert_eq!(body["audit"]["status"], "error", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_log_rotates_by_size_and_verifies_as_one_chain() {
    let me = nix::unistd::geteuid().as_raw();
    let mut s = Sidecar::start(&config(
        me,
        "audit: { path: \"{dir}/audit.jsonl\", max_file_size: 64KiB, max_files: 3 }\n",
    ))
    .await;
    for i in 0..900 {
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64(format!("{i}"))}))
            .await;
    }
    assert!(s.terminate().success());
    let log = s.dir.path().join("audit.jsonl");
    let name = |i: u32| s.dir.path().join(format!("audit.jsonl.{i}"));
    for path in [log.clone(), name(1), name(2)] {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 64 << 10, "{}: {len} bytes", path.display());
    }
    assert!(
        !name(3).exists(),
        "the oldest file beyond max_files is deleted"
    );
    // One path: `audit verify` checks the rotated set, oldest first.
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    assert!(
        out.contains("audit.jsonl.2 → ") && out.contains("chain intact"),
        "{out}"
    );
    assert!(out.contains("continues from an earlier file"), "{out}");
}

#[tokio::test]
async fn a_flood_of_denials_is_summarised_not_written_line_by_line() {
    let (uid, ruled) = outsider();
    let mut s = Sidecar::start(&config(ruled, "audit: { path: \"{dir}/audit.jsonl\" }\n")).await;
    s.open_to_other_uids();
    let started = Instant::now();
    let r = python_http(uid, &s, "POST", "/v1/keys/sig/sign", 100, 300);
    assert_eq!(count(&r, "codes", "forbidden"), 300, "{r}");
    let seconds = started.elapsed().as_secs() + 1;
    assert!(s.terminate().success());
    let lines = lines(&s.dir.path().join("audit.jsonl"));
    let denied = uid.unwrap_or(nix::unistd::geteuid().as_raw());
    let single = lines
        .iter()
        .filter(|l| l["uid"] == denied && l["outcome"] == "forbidden")
        .count() as u64;
    let summarised: u64 = lines
        .iter()
        .filter(|l| l["type"] == "denials" && l["uid"] == denied)
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert_eq!(single + summarised, 300, "every denial is accounted for");
    assert!(
        single <= 10 * (seconds + 1),
        "{single} single lines in {seconds} s: at most 10 per second"
    );
    let (ok, out) = verify(&[&s.dir.path().join("audit.jsonl")]);
    assert!(ok, "{out}");
}

// === envelopes ===

/// Three aliases of one backend key: envelopes only, decrypt only, datakey
/// only. A caller granted one of them must not reach the others' results.
fn purpose_config(me: u32, extra: &str) -> String {
    format!(
        r#"backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  env: {{ backend: dev, key: pii, algorithm: aes-256-gcm, ops: [envelope] }}
  dec: {{ backend: dev, key: pii, ops: [decrypt] }}
  dk:  {{ backend: dev, key: pii, ops: [datakey] }}
callers:
  - {{ uids: [{me}], keys: ["*"], ops: ["*"] }}
{extra}"#
    )
}

/// An envelope made offline with a data key from `datakey`, in the given
/// algorithm (3: purpose-bound; 1: as earlier releases made them), as if
/// made through alias `env`.
fn forge(
    dk: &Value,
    context: &Value,
    algorithm: kms_sidecar::envelope::format::AlgorithmId,
    env: &str,
) -> String {
    use kms_sidecar::envelope::format::{Header, new_message_id, seal};
    let key = crate::harness::unb64(&dk["plaintext_key"]);
    let header = Header {
        alias: env.into(),
        key_version: dk["version"].as_str().unwrap().into(),
        key_ref: "forged".into(),
        wrapped_dek: crate::harness::unb64(&dk["encrypted_key"]),
        message_id: new_message_id(),
        commitment: [0; 32],
        algorithm,
    };
    b64(seal(
        &key,
        header,
        context.to_string().as_bytes(),
        b"forged",
    ))
}

/// With three aliases of one backend key — `env` (envelopes), `dec`
/// (decrypt only), `dk` (datakey only) — a caller granted `dec` cannot open
/// `env`'s envelopes, and one granted `dk` cannot forge one. Shared by every
/// backend's tests.
pub async fn envelope_grants_hold(s: &Sidecar, env: &str, dec: &str, dk: &str) {
    use kms_sidecar::envelope::format::{AlgorithmId, Header};
    let context = json!({"tenant": "acme"});
    let sealed = s
        .post_ok(
            &format!("/v1/keys/{env}/envelope/encrypt"),
            json!({"plaintext": b64("owner's data"), "context": context}),
        )
        .await;
    let bytes = crate::harness::unb64(&sealed["envelope"]);
    let (header, _) = Header::parse(&bytes).unwrap().unwrap();
    assert_eq!(header.algorithm, AlgorithmId::BoundAes256GcmHkdfSha256);
    // A `decrypt`-only caller cannot unwrap the envelope's data key...
    s.post(
        &format!("/v1/keys/{dec}/decrypt"),
        json!({"ciphertext": b64(&header.wrapped_dek), "context": context}),
    )
    .await
    .expect(422, Some("decryption_failed"));
    // ... nor name the sidecar's purpose entry itself.
    s.post(
        &format!("/v1/keys/{dec}/decrypt"),
        json!({"ciphertext": b64(&header.wrapped_dek), "context": {"tenant": "acme", "kms-sidecar:purpose": "envelope"}}),
    )
    .await
    .expect_saying(400, "invalid_request", "reserved");
    // A `datakey`-only caller cannot forge an envelope the owner opens, in
    // either algorithm.
    let data_key = s
        .post_ok(
            &format!("/v1/keys/{dk}/datakey"),
            json!({"context": context}),
        )
        .await;
    for algorithm in [
        AlgorithmId::BoundAes256GcmHkdfSha256,
        AlgorithmId::Aes256GcmHkdfSha256,
    ] {
        s.post(
            &format!("/v1/keys/{env}/envelope/decrypt"),
            json!({"envelope": forge(&data_key, &context, algorithm, env), "context": context}),
        )
        .await
        .expect(422, Some("decryption_failed"));
    }
    // The owner's envelope opens, and `decrypt` still unwraps a data key.
    let opened = s
        .post_ok(
            &format!("/v1/keys/{env}/envelope/decrypt"),
            json!({"envelope": sealed["envelope"], "context": context}),
        )
        .await;
    assert_eq!(crate::harness::unb64(&opened["plaintext"]), b"owner's data");
    let unwrapped = s
        .post_ok(
            &format!("/v1/keys/{dec}/decrypt"),
            json!({"ciphertext": data_key["encrypted_key"], "context": context}),
        )
        .await;
    assert_eq!(unwrapped["plaintext"], data_key["plaintext_key"]);
}

#[tokio::test]
async fn grants_hold_for_envelopes() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&purpose_config(me, "")).await;
    envelope_grants_hold(&s, "env", "dec", "dk").await;
}

#[tokio::test]
async fn old_envelopes_open_only_while_the_operator_allows_it() {
    use kms_sidecar::envelope::format::AlgorithmId;
    let me = nix::unistd::geteuid().as_raw();
    let context = json!({"tenant": "acme"});
    let tomorrow = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    );
    let yesterday = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(86_400),
    );
    for (until, opens) in [
        (Some(tomorrow.to_string()), true),
        (Some(yesterday.to_string()), false),
        (None, false),
    ] {
        let extra = until
            .map(|t| format!("envelope: {{ accept_unbound_until: \"{t}\" }}\n"))
            .unwrap_or_default();
        let s = Sidecar::start(&purpose_config(me, &extra)).await;
        // An envelope as earlier releases made it: algorithm 1, its data key
        // wrapped with the plain context (as `datakey` wraps them).
        let dk = s
            .post_ok("/v1/keys/dk/datakey", json!({"context": context}))
            .await;
        let old = forge(&dk, &context, AlgorithmId::Aes256GcmHkdfSha256, "env");
        let r = s
            .post(
                "/v1/keys/env/envelope/decrypt",
                json!({"envelope": old, "context": context}),
            )
            .await;
        if opens {
            assert_eq!(crate::harness::unb64(&r.ok()["plaintext"]), b"forged");
        } else {
            r.expect(422, Some("decryption_failed"));
        }
    }
}

#[tokio::test]
async fn the_encryption_context_means_one_thing() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    // A key twice in the JSON body.
    let body = r#"{"plaintext":"c2VjcmV0","context":{"tenant":"a","tenant":"b"}}"#;
    let r = s
        .request(
            http::Method::POST,
            "/v1/keys/aes/envelope/encrypt",
            &[("content-type", "application/json")],
            bytes::Bytes::from(body),
        )
        .await;
    r.expect_saying(400, "invalid_request", "more than once");
    // The header twice on a streamed envelope.
    let r = raw(
        &s,
        "POST /v1/keys/aes/envelope/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nx-encryption-context: {\"tenant\":\"a\"}\r\nx-encryption-context: {\"tenant\":\"b\"}\r\nContent-Length: 4\r\n\r\ndata",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("more than once"),
        "{r}"
    );
    // The header on a JSON request, where it would be ignored.
    let r = s
        .request(
            http::Method::POST,
            "/v1/keys/aes/envelope/encrypt",
            &[
                ("content-type", "application/json"),
                ("x-encryption-context", "{\"tenant\":\"a\"}"),
            ],
            bytes::Bytes::from(r#"{"plaintext":"c2VjcmV0"}"#),
        )
        .await;
    r.expect_saying(400, "invalid_request", "only for streamed");
}

/// Sends raw bytes on a new connection and reads until the sidecar closes
/// it or 5 s pass.
async fn raw(s: &Sidecar, request: &str) -> String {
    let mut c = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// === replay guard ===

#[tokio::test]
async fn a_nonce_is_remembered_until_its_timestamp_leaves_the_window() {
    let (uid, _) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(
        &config(me, "limits: { replay_window: 2s }\n".to_owned().as_str()).replace(
            "sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }",
            "sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256, replay_guard: true }",
        ),
    )
    .await;
    s.open_to_other_uids();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ahead = (now + 2).to_string();
    let send = |nonce: &'static str, ts: String| {
        let s = &s;
        async move {
            s.request(
                http::Method::POST,
                "/v1/keys/sig/sign",
                &[
                    ("content-type", "application/json"),
                    ("x-request-nonce", nonce),
                    ("x-request-timestamp", &ts),
                ],
                bytes::Bytes::from(json!({"message": b64("m")}).to_string()),
            )
            .await
        }
    };
    send("nonce-ahead-0001", ahead.clone()).await.ok();
    send("nonce-ahead-0001", ahead.clone())
        .await
        .expect(409, Some("replayed_request"));
    // Longer than the window, while the timestamp is still acceptable.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send("nonce-ahead-0001", ahead)
        .await
        .expect(409, Some("replayed_request"));
    // A uid without a rule learns nothing about the guard: 403, not 400.
    if uid.is_some() {
        let r = python_http(uid, &s, "POST", "/v1/keys/sig/sign", 100, 1);
        assert_eq!(count(&r, "codes", "forbidden"), 1, "{r}");
    }
}

// === streams and shutdown ===

#[tokio::test]
async fn a_stalled_streamed_upload_is_cut_off() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "limits: { stream_idle_timeout: 1s }\n")).await;
    // A decrypt that sent only `KSE1` (the review: never answered).
    let started = Instant::now();
    let r = raw(
        &s,
        "POST /v1/keys/aes/envelope/decrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nKSE1\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(r.contains("stream_idle_timeout"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // An encrypt whose body stops after its first chunk: the answer has
    // started, so it is cut before its final chunk.
    let r = raw(
        &s,
        "POST /v1/keys/aes/envelope/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.ends_with("0\r\n\r\n"), "no final chunk: {r:?}");
}

#[tokio::test]
async fn sigterm_keeps_reading_a_streamed_upload_in_flight() {
    let me = nix::unistd::geteuid().as_raw();
    let mut s = Sidecar::start(&config(me, "")).await;
    let mut c = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    c.write_all(b"POST /v1/keys/aes/envelope/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = c.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        rd.read_to_end(&mut out).await.unwrap();
        out
    });
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = Vec::new();
    for i in 0..10 {
        if i == 3 {
            signal(s.pid(), nix::sys::signal::Signal::SIGTERM);
        }
        wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        wr.write_all(&chunk).await.unwrap();
        wr.write_all(b"\r\n").await.unwrap();
        sent.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wr.write_all(b"0\r\n\r\n").await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"));
    assert!(
        response.ends_with(b"0\r\n\r\n"),
        "the upload finished within the drain"
    );
    assert!(s.wait_exit().success());
    // The envelope is whole: a restarted sidecar opens it.
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let envelope = dechunk(&response[head_end..]);
    let s = s.restart().await;
    let opened = s
        .post_ok(
            "/v1/keys/aes/envelope/decrypt",
            json!({"envelope": b64(&envelope)}),
        )
        .await;
    assert_eq!(crate::harness::unb64(&opened["plaintext"]), sent);
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + len]);
        body = &body[line_end + 2 + len + 2..];
    }
}

// === what the HTTP layer answers, and readiness ===

#[tokio::test]
async fn malformed_http_gets_a_bare_status_and_the_sidecar_goes_on() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    // A 100 KB path, or headers far over the 16 KiB head buffer: 431.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let r = raw(&s, &long).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r:.200}");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let r = raw(&s, &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r:.200}");
    // Ordinary large headers (8 KiB) are fine.
    let fine = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8_000)
    );
    let r = raw(&s, &fine).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r:.200}");
    // Two Content-Length headers that disagree.
    let r = raw(
        &s,
        "POST /v1/keys/sig/sign HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("m")}))
        .await;
}

#[tokio::test]
async fn an_unreadable_key_directory_makes_the_sidecar_unready() {
    use std::os::unix::fs::PermissionsExt;
    // The sidecar runs as an ordinary uid (as in a pod): as root, as
    // `nobody` with a rule for us; otherwise as ourselves.
    let me = nix::unistd::geteuid().as_raw();
    let runs_as = is_root().then_some(65534);
    let s = Sidecar::start_as(&config(me, ""), &[], runs_as).await;
    s.get("/readyz").await.ok();
    let keys = s.dir.path().join("keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o000)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get("/readyz").await;
        if r.status == 503 {
            let body = r.json();
            assert!(
                body["backends"]["dev"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("keys"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with a mode 000 key directory"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
}
