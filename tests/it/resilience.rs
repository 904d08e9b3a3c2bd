//! The shared resilience layer and the request limits (SPEC §8, issue
//! "hardening"): per-caller rate limits, backend timeouts, the circuit
//! breaker against a stopped real server, and input limits.

use crate::harness::{Sidecar, b64, is_root, local_config};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(s: &Sidecar) -> String {
    String::from_utf8_lossy(&s.get("/metrics").await.body).into_owned()
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_and_others_are_unaffected() {
    let me = nix::unistd::geteuid().as_raw();
    let config = format!(
        r#"listen: {{ mode: "0666" }}
backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}
callers:
  - {{ uids: [{me}, 65534], keys: ["*"], ops: ["*"] }}
limits:
  per_caller: {{ rate: 1/m, burst: 3 }}
"#
    );
    let s = Sidecar::start(&config).await;
    let sign = json!({"message": b64("rate me")});
    for _ in 0..3 {
        s.post_ok("/v1/keys/sig/sign", sign.clone()).await;
    }
    let r = s.post("/v1/keys/sig/sign", sign.clone()).await;
    let v = r.expect(429, Some("rate_limited"));
    assert_eq!(v["error"]["retryable"], true);
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    // Listing keys counts too; probes do not.
    s.get("/v1/keys").await.expect(429, Some("rate_limited"));
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(s.get("/readyz").await.status, 200);
    assert_eq!(
        metric(&metrics(&s).await, "kms_sidecar_rate_limited_total"),
        Some(2.0)
    );

    // Another uid has its own bucket.
    if is_root() {
        s.open_to_other_uids();
        let (_, out, err) = s.curl_as(Some(65534), "/v1/keys/sig/sign", &sign);
        assert!(
            out.ends_with("\n200"),
            "uid 65534 was limited too: {out}{err}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_does_not_answer_times_out_with_504() {
    // A KMS endpoint that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = format!(
        "backends:\n  kms: {{ type: aws, region: us-east-1, endpoint: \"http://127.0.0.1:{port}\", timeout: 300ms, retries: {{ max_attempts: 2, initial_backoff: 10ms }} }}\nkeys:\n  pii: {{ backend: kms, key: alias/pii }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        nix::unistd::geteuid().as_raw()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let s = Sidecar::start_with_env(&config, &env).await;
    for (path, body) in [
        ("/v1/keys/pii/encrypt", json!({"plaintext": b64("x")})),
        // A data-key cache miss is the same backend call: 504 too, not 503.
        (
            "/v1/keys/pii/envelope/encrypt",
            json!({"plaintext": b64("x")}),
        ),
    ] {
        let started = Instant::now();
        let v = s
            .post(path, body)
            .await
            .expect(504, Some("backend_timeout"));
        let took = started.elapsed();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did not answer within 300ms"),
            "{v}"
        );
        assert_eq!(v["error"]["retryable"], true);
        // The timeout bounds the whole call, retries included: not two
        // attempts of 300 ms, nor the SDK's own minutes.
        assert!(took < Duration::from_millis(550), "{path} took {took:?}");
    }
    let text = metrics(&s).await;
    assert_eq!(
        metric(&text, "kms_sidecar_backend_retries_total{backend=\"kms\"}"),
        None,
        "a timed-out attempt leaves no time for a retry: {text}"
    );
}

#[cfg(feature = "vault")]
#[tokio::test]
async fn the_circuit_opens_on_a_stopped_server_fails_fast_and_recovers() {
    use crate::harness::Bao;
    let mut bao = Bao::start().await;
    bao.transit_with_key("ec", "ecdsa-p256").await;
    let token = bao.root_token_file();
    let config = format!(
        "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\n    retries: {{ max_attempts: 1 }}\n    circuit: {{ failures: 5, open_for: 2s, successes: 2 }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        token.display(),
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start(&config).await;
    s.secret(bao.root_token.clone());
    let sign = json!({"message": b64("m")});
    s.post_ok("/v1/keys/ec/sign", sign.clone()).await;
    let state = "kms_sidecar_circuit_breaker_state{backend=\"vault\"}";
    assert_eq!(metric(&metrics(&s).await, state), Some(0.0));

    // Five failures (connection refused) open the circuit ...
    bao.stop();
    for i in 0..5 {
        let v = s
            .post("/v1/keys/ec/sign", sign.clone())
            .await
            .expect(503, Some("backend_unavailable"));
        assert!(
            !v["error"]["message"].as_str().unwrap().contains("circuit"),
            "call {i}: {v}"
        );
    }
    assert_eq!(metric(&metrics(&s).await, state), Some(1.0));
    // ... then calls fail fast without reaching the backend.
    let started = Instant::now();
    let v = s
        .post("/v1/keys/ec/sign", sign.clone())
        .await
        .expect(503, Some("backend_unavailable"));
    let fail_fast = started.elapsed();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{v}"
    );
    println!("fail-fast answer over the socket: {fail_fast:?}");
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503);

    // The server is back: after open_for the circuit is half-open, and two
    // successes close it.
    bao.restart().await;
    bao.transit_with_key("ec", "ecdsa-p256").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.post_ok("/v1/keys/ec/sign", sign.clone()).await;
    assert_eq!(metric(&metrics(&s).await, state), Some(2.0));
    s.post_ok("/v1/keys/ec/sign", sign.clone()).await;
    assert_eq!(metric(&metrics(&s).await, state), Some(0.0));
}

#[tokio::test]
async fn input_limits_refuse_deep_json_many_headers_and_slow_bodies() {
    let config = local_config("  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }")
        + "limits: { body_timeout: 300ms, max_headers: 20 }\n";
    let s = Sidecar::start(&config).await;
    // JSON nested deeper than 16 levels.
    let deep = format!(
        "{{\"plaintext\":\"\",\"context\":{}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let r = s
        .request(
            http::Method::POST,
            "/v1/keys/aes/encrypt",
            &[("content-type", "application/json")],
            bytes::Bytes::from(deep),
        )
        .await;
    let v = r.expect(400, Some("invalid_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deeper than 16"),
        "{v}"
    );
    // Too many context pairs.
    let context: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    s.post(
        "/v1/keys/aes/encrypt",
        json!({"plaintext": b64("x"), "context": context}),
    )
    .await
    .expect(400, Some("invalid_request"));

    let raw = |request: Vec<u8>| {
        let socket = s.socket.clone();
        async move {
            let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    // More header fields than limits.max_headers.
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..30 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let head = raw(many).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // A body that stops arriving: 408 after limits.body_timeout.
    let head = raw(
        b"POST /v1/keys/aes/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"plain".to_vec(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("limits.body_timeout"), "{head}");
    // The sidecar is fine.
    assert_eq!(s.get("/healthz").await.status, 200);
}

#[cfg(feature = "vault")]
#[tokio::test]
async fn a_hung_backend_cannot_stall_the_probes_or_the_other_backends() {
    use crate::harness::Bao;
    let bao = Bao::start().await;
    bao.transit_with_key("ec", "ecdsa-p256").await;
    let token = bao.root_token_file();
    let config = format!(
        "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\n    timeout: 5s\nkeys:\n  ec: {{ backend: vault, key: ec }}\n  local: {{ backend: dev, key: local, algorithm: ecdsa-p256-sha256 }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        token.display(),
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start(&config).await;
    s.secret(bao.root_token.clone());
    s.get("/readyz").await.ok();
    // Vault hangs (SIGSTOP: connections are accepted, nothing answers).
    bao.freeze(true);
    // Every probe answers within a second — until the cached good result
    // runs out, then with Vault not ready and the local backend ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unready = 0;
    while unready < 2 {
        let started = Instant::now();
        let r = s.get("/readyz").await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
        if r.status == 503 {
            let body = r.json();
            assert_eq!(body["backends"]["vault"]["status"], "error", "{body}");
            assert_eq!(body["backends"]["dev"]["status"], "ok", "{body}");
            unready += 1;
        }
        assert!(Instant::now() < deadline, "Vault never reported not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Keys of the other backend keep serving meanwhile.
    let started = Instant::now();
    s.post_ok("/v1/keys/local/sign", json!({"message": b64("m")}))
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    bao.freeze(false);
    // Once Vault answers again it is ready again.
    s.ready_within(Duration::from_secs(20)).await;
}
