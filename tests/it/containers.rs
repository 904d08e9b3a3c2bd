//! A caller per container (issue 32 §1): the sidecar serves a socket in
//! each container's own directory (`listen.per_container_dir`), the socket
//! a connection came through names the container, and `callers` rules may
//! name containers. Here the containers are processes of one uid on this
//! machine; that a container cannot open another's socket (its directory is
//! mounted in it alone) is shown on the kubelet stand-in, in
//! `kube::containers`.

use crate::harness::{Receiver, Sidecar, b64, curl_on, eventually, is_root, run_as};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A pod's containers as the webhook lays them out for the sidecar: one
/// directory per container in a parent directory (open to every uid, as
/// the kubelet makes an `emptyDir`).
fn container_dirs(names: &[&str]) -> TempDir {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in names {
        let dir = parent.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    parent
}

/// The rule of most tests here: `api` may sign with `sig`.
const API_SIGNS: &str = "  - { containers: [api], keys: [sig], ops: [sign] }\n";

fn socket_of(parent: &Path, container: &str) -> PathBuf {
    parent.join(container).join("kms.sock")
}

/// The sidecar with `rules` (YAML list items) over one signing key, a
/// socket per container of `parent`, an audit log, and sockets any uid
/// may open (the uid is what the tests vary).
async fn start(parent: &Path, rules: &str, limits: &str, env: &[(&str, &str)]) -> Sidecar {
    let config = format!(
        r#"listen: {{ mode: "0666" }}
backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}
callers:
{rules}audit: {{ path: "{{dir}}/audit.jsonl" }}
{limits}"#
    );
    let dir = parent.display().to_string();
    let mut env = env.to_vec();
    env.push(("KMS_SIDECAR_LISTEN__PER_CONTAINER_DIR", &dir));
    let s = Sidecar::start_with_env(&config, &env).await;
    s.open_to_other_uids();
    s
}

/// `curl` POSTing `body` to `path` on `socket` as `uid`: (status, body).
fn curl(uid: Option<u32>, socket: &Path, path: &str, body: &Value) -> (u16, Value) {
    let (_, out, err) = curl_on(uid, socket, path, body);
    let (text, status) = out
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status from curl: {out} {err}"));
    let status = status.parse().unwrap_or(0);
    (status, serde_json::from_str(text).unwrap_or(Value::Null))
}

/// The red-team case of the issue: two containers under the same uid, one
/// granted `sign` and one not. The second cannot sign by any route of its
/// own socket (single, batch, JWT) nor through the shared socket, and sees
/// no key; the first signs. Audit lines, metrics and errors name the
/// container.
#[tokio::test]
async fn containers_under_one_uid_get_only_their_own_grants() {
    let parent = container_dirs(&["api", "worker"]);
    let s = start(parent.path(), API_SIGNS, "", &[]).await;
    // Both app containers run as one uid (another one than ours when we
    // can: the sidecar's own uid has no rule either way).
    let app = is_root().then_some(1000);
    let (api, worker) = (
        socket_of(parent.path(), "api"),
        socket_of(parent.path(), "worker"),
    );
    let message = json!({"message": b64("pay 10")});
    let (status, body) = curl(app, &api, "/v1/keys/sig/sign", &message);
    assert_eq!(status, 200, "{body}");
    let routes = [
        ("/v1/keys/sig/sign", message.clone()),
        (
            "/v1/keys/sig/sign-batch",
            json!({"items": [{"message": b64("pay 10")}]}),
        ),
        ("/v1/keys/sig/jwt", json!({"claims": {"sub": "x"}})),
    ];
    for (path, body) in &routes {
        for socket in [&worker, &s.socket] {
            let (status, answer) = curl(app, socket, path, body);
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{path} on {}: {answer}",
                socket.display()
            );
        }
    }
    let (_, answer) = curl(app, &worker, "/v1/keys/sig/sign", &message);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("(container worker)")),
        "{answer}"
    );
    let socket = worker.display().to_string();
    let (_, listed, _) = run_as(
        app,
        "curl",
        &["-s", "--unix-socket", &socket, "http://localhost/v1/keys"],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&listed).unwrap()["keys"],
        json!([]),
        "worker sees no key"
    );
    // The audit log says which container did what.
    let audit = std::fs::read_to_string(s.dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |container: &str, outcome: &str| {
        lines
            .iter()
            .filter(|l| l["container"] == container && l["outcome"] == outcome)
            .count()
    };
    assert_eq!(by("api", "ok"), 1, "{audit}");
    assert_eq!(by("worker", "forbidden"), 4, "{audit}");
    assert!(
        lines
            .iter()
            .filter(|l| l["container"].is_null())
            .all(|l| l["outcome"] == "forbidden"),
        "the shared socket's requests name no container: {audit}"
    );
}

/// Metrics count requests per container, and a container's name is in the
/// trace span of its requests.
#[tokio::test]
async fn metrics_and_traces_name_the_container() {
    let receiver = Receiver::start().await;
    let parent = container_dirs(&["api", "worker"]);
    let me = nix::unistd::geteuid().as_raw();
    let rules = format!(
        "  - {{ containers: [api], keys: [sig], ops: [sign] }}\n  - {{ uids: [{me}], keys: [sig], ops: [metrics] }}\n"
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let s = start(parent.path(), &rules, "", &env).await;
    let message = json!({"message": b64("m")});
    for _ in 0..2 {
        let (status, body) = curl(
            None,
            &socket_of(parent.path(), "api"),
            "/v1/keys/sig/sign",
            &message,
        );
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = curl(
        None,
        &socket_of(parent.path(), "worker"),
        "/v1/keys/sig/sign",
        &message,
    );
    assert_eq!(status, 403);
    assert_eq!(
        s.metric(r#"kms_sidecar_container_requests_total{code="ok",container="api"}"#)
            .await,
        2.0
    );
    assert_eq!(
        s.metric(r#"kms_sidecar_container_requests_total{code="forbidden",container="worker"}"#)
            .await,
        1.0
    );
    let spans = receiver
        .spans_until("the spans of api's signatures", |spans| {
            spans
                .iter()
                .filter(|s| s["name"] == "request" && s["attributes"]["op"] == "sign")
                .count()
                >= 2
        })
        .await;
    for span in spans.iter().filter(|s| s["name"] == "request") {
        assert_eq!(span["attributes"]["caller.container"], "api", "{span:#}");
    }
}

/// `limits.max_connections_per_caller` counts a container on its own
/// socket as one caller: a container holding all of its connections
/// leaves another container of the same uid its own.
#[tokio::test]
async fn connection_limits_count_each_container_apart() {
    let parent = container_dirs(&["api", "worker"]);
    let s = start(
        parent.path(),
        "  - { containers: [api, worker], keys: [sig], ops: [sign] }\n",
        "limits: { max_connections_per_caller: 2 }\n",
        &[],
    )
    .await;
    let (api, worker) = (
        socket_of(parent.path(), "api"),
        socket_of(parent.path(), "worker"),
    );
    // api holds its two connections (idle: no request yet).
    let _held = [connect(&api).await, connect(&api).await];
    let mut third = connect(&api).await;
    eventually(
        Duration::from_secs(5),
        "api's third connection is closed",
        || {
            let closed = closed_by_peer(&mut third);
            async move { closed }
        },
    )
    .await;
    // worker, same uid, is another caller.
    let (status, body) = curl(
        None,
        &worker,
        "/v1/keys/sig/sign",
        &json!({"message": b64("w")}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(s.logs().contains("container socket ready"));
}

/// Only directories named as Kubernetes names containers get a socket.
#[tokio::test]
async fn a_directory_that_is_no_container_name_gets_no_socket() {
    let parent = container_dirs(&["api", "Not_A_Container"]);
    let s = start(parent.path(), API_SIGNS, "", &[]).await;
    assert!(socket_of(parent.path(), "api").exists());
    assert!(!socket_of(parent.path(), "Not_A_Container").exists());
    assert!(s.logs().contains("not a container name"), "{}", s.logs());
}

async fn connect(socket: &Path) -> tokio::net::UnixStream {
    tokio::net::UnixStream::connect(socket).await.unwrap()
}

/// Whether the sidecar closed `stream` (a read gives end of file).
fn closed_by_peer(stream: &mut tokio::net::UnixStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Ok(0))
}

/// A `listen.per_container_dir` that is not there is a config error: exit 2
/// (SPEC §2), naming it.
#[test]
fn a_missing_per_container_dir_stops_the_start_with_exit_2() {
    let config =
        crate::harness::local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
            + "listen: { per_container_dir: /nonexistent/kms-containers }\n";
    let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &config, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("listen.per_container_dir /nonexistent/kms-containers"),
        "{err}"
    );
}
