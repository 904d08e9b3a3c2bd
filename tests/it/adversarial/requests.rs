//! Signatures, replays, streams and shutdown, what the HTTP layer answers,
//! and readiness with an unreadable key directory.

use super::*;
use crate::harness::signal;
use crate::harness::{Sidecar, b64};
use serde_json::json;
use std::time::{Duration, Instant};

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

/// A sign of key `guarded` with `x-request-nonce` and `x-request-timestamp`.
async fn guarded_sign(s: &Sidecar, nonce: &str, timestamp: &str) -> crate::harness::Resp {
    s.request(
        http::Method::POST,
        "/v1/keys/guarded/sign",
        &[
            ("content-type", "application/json"),
            ("x-request-nonce", nonce),
            ("x-request-timestamp", timestamp),
        ],
        bytes::Bytes::from(json!({"message": b64("pay 10")}).to_string()),
    )
    .await
}

/// A flood of fresh nonces (the review: 4 keep-alive clients took RSS from
/// 18 to 82 MB in 6 s and the sidecar was OOM-killed in 64 MiB; evicting
/// the oldest made a request captured before the flood replayable; a reload
/// that changed `replay_window` forgot every nonce).
#[tokio::test]
async fn a_nonce_flood_is_refused_not_remembered_and_nonces_survive_reloads() {
    let me = nix::unistd::geteuid().as_raw();
    // 1 MiB of nonces: 8,192 at 128 bytes each, half of it per caller.
    let others = "  - { uids: [65533, 65532], keys: [guarded], ops: [sign] }\nlimits: { replay_memory: 1MiB }\n";
    let text = config(me, others).replace(
        "keys:\n",
        "keys:\n  guarded: { backend: dev, key: guarded, algorithm: ecdsa-p256-sha256, replay_guard: true }\n",
    );
    let (mut s, cgroup) = start_limited(&text).await;
    let socket = s.socket.display().to_string();
    let captured_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    guarded_sign(&s, "captured-before-the-flood", &captured_at)
        .await
        .ok();
    // Past its half the caller is refused (429, retryable); nothing is
    // forgotten to make room.
    let r = hostile_client(
        None,
        &["nonces", &socket, "/v1/keys/guarded/sign", "4500", "a"],
    );
    assert_eq!(count(&r, "statuses", "200"), 4096 - 1, "{r}");
    assert_eq!(count(&r, "codes", "rate_limited"), 4500 - 4095, "{r}");
    assert!(
        r["retry_after"][0]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0,
        "{r}"
    );
    guarded_sign(&s, "captured-before-the-flood", &captured_at)
        .await
        .expect(409, Some("replayed_request"));
    // Another caller fills the rest; then the guard is full and refuses
    // everybody (503, retryable) rather than evict.
    if is_root() {
        let r = hostile_client(
            Some(65533),
            &["nonces", &socket, "/v1/keys/guarded/sign", "4200", "b"],
        );
        assert_eq!(count(&r, "statuses", "200"), 4096, "{r}");
        let r = hostile_client(
            Some(65532),
            &["nonces", &socket, "/v1/keys/guarded/sign", "5", "c"],
        );
        assert_eq!(count(&r, "codes", "overloaded"), 5, "{r}");
    }
    still_healthy(&mut s, &cgroup, "a flood of fresh nonces").await;
    // A reload that changes replay_window keeps every nonce.
    let path = s.dir.path().join("config.yaml");
    let reloaded = std::fs::read_to_string(&path).unwrap().replace(
        "replay_memory: 1MiB",
        "replay_memory: 1MiB, replay_window: 10m",
    );
    let tmp = s.dir.path().join("config.yaml.new");
    std::fs::write(&tmp, reloaded).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    signal(s.pid(), nix::sys::signal::Signal::SIGHUP);
    crate::harness::eventually(Duration::from_secs(5), "the reload", || async {
        s.metric("kms_sidecar_config_generation ").await >= 2.0
    })
    .await;
    guarded_sign(&s, "captured-before-the-flood", &captured_at)
        .await
        .expect(409, Some("replayed_request"));
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

/// The review: a streamed upload dripping a byte just inside
/// `stream_idle_timeout` was held open forever.
#[tokio::test]
async fn a_dripping_streamed_upload_is_cut_off() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "limits: { stream_idle_timeout: 1s }\n")).await;
    let mut c = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    c.write_all(b"POST /v1/keys/aes/envelope/decrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut rx, mut tx) = c.into_split();
    let drip = tokio::spawn(async move {
        // A byte every 0.7 s, for up to 20 s: never idle for 1 s.
        for byte in b"KSE1".iter().cycle().take(28) {
            let chunk = [b'1', b'\r', b'\n', *byte, b'\r', b'\n'];
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), rx.read_to_end(&mut out)).await;
    drip.abort();
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 408"), "cut off: {r:?}");
    assert!(r.contains("stream_min_rate"), "{r}");
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

/// `/readyz` on the TCP probe port, which anyone on the network may reach,
/// answers the status alone; the socket keeps the reasons (backend names,
/// files, errors) for the pod's own containers.
#[tokio::test]
async fn readyz_on_the_probe_port_names_no_backend_or_file() {
    use std::os::unix::fs::PermissionsExt;
    let me = nix::unistd::geteuid().as_raw();
    let runs_as = is_root().then_some(65534);
    let port = crate::harness::free_port();
    let probes = format!("127.0.0.1:{port}");
    let s = Sidecar::start_as(
        &config(me, ""),
        &[("KMS_SIDECAR_LISTEN__PROBES", &probes)],
        runs_as,
    )
    .await;
    let probe = || {
        let (ok, out, err) = crate::harness::run_tool(
            "curl",
            &[
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("http://{probes}/readyz"),
            ],
            "install curl (`make test` does)",
        );
        assert!(ok, "{err}");
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap();
        (
            status.to_owned(),
            serde_json::from_str::<Value>(body).unwrap(),
        )
    };
    assert_eq!(probe(), ("200".into(), json!({"status": "ready"})));
    let keys = s.dir.path().join("keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o000)).unwrap();
    crate::harness::eventually(Duration::from_secs(10), "not ready", || async {
        s.get("/readyz").await.status == 503
    })
    .await;
    let full = s.get("/readyz").await.json();
    assert_eq!(full["backends"]["dev"]["status"], "error", "{full}");
    assert!(
        full["backends"]["dev"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("keys")),
        "the socket has the reason: {full}"
    );
    assert_eq!(probe(), ("503".into(), json!({"status": "not_ready"})));
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
}
