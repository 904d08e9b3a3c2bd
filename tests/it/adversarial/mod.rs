//! The sidecar attacked as a compromised container of the pod would: clients
//! running as other uids (`setpriv`, when the suite runs as root), a socket
//! every uid can open (`0666`, as the webhook injects it), and the 64 MiB
//! memory limit the webhook sets (a memory cgroup where the machine allows
//! it). Each test reproduces a finding of the security review.
//!
//! - [`callers`]: callers without a rule, memory, connections, early
//!   answers, `/metrics`;
//! - [`audit`]: a full disk, rotation, floods of denials;
//! - [`envelopes`]: grants that hold for envelopes, old envelopes, the
//!   encryption context;
//! - [`requests`]: low-S signatures, replays, streams and shutdown, the HTTP
//!   layer, readiness.

mod audit;
mod callers;
mod envelopes;
mod requests;

pub use envelopes::envelope_grants_hold;
pub use requests::signatures_are_low_s;

use crate::harness::{MemoryCgroup, Sidecar, b64, hostile_client, is_root};
use serde_json::{Value, json};
use std::time::Duration;
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

/// Sends raw bytes on a new connection and reads until the sidecar closes
/// it or 5 s pass. The sidecar may answer and close before it has read
/// everything (a head far over its limit): the write then fails with a
/// broken pipe, and the answer is still there to read.
async fn raw(s: &Sidecar, request: &str) -> String {
    let mut c = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    if let Err(e) = c.write_all(request.as_bytes()).await {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
