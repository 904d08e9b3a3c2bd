//! Every error code a request can get from the local backend, with its status,
//! and proof that bad input changes nothing.

use crate::harness::{Sidecar, b64, local_config};
use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn malformed_requests_are_invalid_request_naming_the_field() {
    let s = Sidecar::start_default().await;
    let raw = |body: &'static str| {
        s.request(
            Method::POST,
            "/v1/keys/aes-256/encrypt",
            &[("content-type", "application/json")],
            Bytes::from(body),
        )
    };
    let cases: [(&str, &str); 6] = [
        (r#"{"plaintext": "#, "not valid JSON"),
        (r#"{"plaintext": 42}"#, "field `plaintext`: invalid type"),
        (
            r#"{"plaintext": "%%%not-base64%%%"}"#,
            "field `plaintext`: is not valid standard base64",
        ),
        (
            r#"{"plaintext": "aGk=", "contxt": {}}"#,
            "unknown field `contxt`",
        ),
        (
            r#"{"plaintext": "aGk=", "context": {"a": 1}}"#,
            "field `context.a`",
        ),
        (r#"{}"#, "missing field `plaintext`"),
    ];
    for (body, expected) in cases {
        let r = raw(body).await;
        let v = r.expect(400, Some("invalid_request"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(expected),
            "{body}: message {msg:?} should contain {expected:?}"
        );
    }
    let r = s
        .post(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64("x"), "digest": b64("y")}),
        )
        .await;
    assert!(
        r.expect(400, Some("invalid_request"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exactly one")
    );
    let r = s
        .post(
            "/v1/keys/ecdsa-p256/sign",
            json!({"digest": b64("too short")}),
        )
        .await;
    assert!(
        r.expect(400, Some("invalid_request"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("32 bytes")
    );
    let r = s
        .post(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64("m"), "algorithm": "ed25519"}),
        )
        .await;
    r.expect(400, Some("invalid_request"));
    let r = s
        .post("/v1/keys/ecdsa-p256/sign-batch", json!({"items": []}))
        .await;
    r.expect(400, Some("invalid_request"));
    let items: Vec<_> = (0..65).map(|_| json!({"message": b64("m")})).collect();
    let r = s
        .post("/v1/keys/ecdsa-p256/sign-batch", json!({"items": items}))
        .await;
    assert!(
        r.expect(400, Some("invalid_request"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_batch")
    );
    let r = s
        .post(
            "/v1/keys/ecdsa-p256/verify",
            json!({"message": b64("m"), "signature": b64("s"), "version": "9"}),
        )
        .await;
    r.expect(400, Some("invalid_request"));
    // A secret sent in the wrong place is not echoed back.
    let r = s
        .post(
            "/v1/keys/aes-256/datakey",
            json!({"bits": "TOPSECRET-VALUE-123"}),
        )
        .await;
    let v = r.expect(400, Some("invalid_request"));
    assert!(!v.to_string().contains("TOPSECRET"), "{v}");
    s.secret("TOPSECRET-VALUE-123");
}

#[tokio::test]
async fn unknown_keys_routes_and_methods() {
    let s = Sidecar::start_default().await;
    s.get("/v1/keys/nope")
        .await
        .expect(404, Some("key_not_found"));
    s.post("/v1/keys/nope/sign", json!({"message": b64("m")}))
        .await
        .expect(404, Some("key_not_found"));
    s.get("/v2/whatever").await.expect(404, Some("not_found"));
    s.post("/v1/keys/ecdsa-p256/explode", json!({}))
        .await
        .expect(404, Some("not_found"));
    let r = s.get("/v1/keys/ecdsa-p256/sign").await;
    r.expect(405, Some("operation_not_supported"));
    assert_eq!(r.headers["allow"], "POST");
    let r = s.post("/v1/keys/ecdsa-p256", json!({})).await;
    r.expect(405, Some("operation_not_supported"));
    assert_eq!(r.headers["allow"], "GET");
}

#[tokio::test]
async fn operations_a_key_cannot_do_are_not_supported() {
    let s = Sidecar::start_default().await;
    s.post("/v1/keys/aes-256/sign", json!({"message": b64("m")}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.post(
        "/v1/keys/ecdsa-p256/encrypt",
        json!({"plaintext": b64("p")}),
    )
    .await
    .expect(422, Some("operation_not_supported"));
    s.post(
        "/v1/keys/ecdsa-p256/decrypt",
        json!({"ciphertext": b64("c")}),
    )
    .await
    .expect(422, Some("operation_not_supported"));
    s.post("/v1/keys/hmac-256/datakey", json!({}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.post("/v1/keys/aes-256/mac", json!({"message": b64("m")}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.get("/v1/keys/aes-256/public-key")
        .await
        .expect(422, Some("operation_not_supported"));
    s.post(
        "/v1/keys/aes-256/verify",
        json!({"message": b64("m"), "signature": b64("s")}),
    )
    .await
    .expect(422, Some("operation_not_supported"));
    let digest = [7u8; 32];
    s.post("/v1/keys/ed25519/sign", json!({"digest": b64(digest)}))
        .await
        .expect(422, Some("operation_not_supported"));
}

#[tokio::test]
async fn garbage_ciphertexts_fail_opaquely() {
    let s = Sidecar::start_default().await;
    for ct in [b64(""), b64("short"), b64([1u8; 40]), b64([0u8; 64])] {
        let r = s
            .post("/v1/keys/aes-256/decrypt", json!({"ciphertext": ct}))
            .await;
        let v = r.expect(422, Some("decryption_failed"));
        assert_eq!(
            v["error"]["message"],
            "decryption failed: wrong context, or tampered or foreign ciphertext",
            "the failure never says which check failed"
        );
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_they_are_read() {
    let config = local_config("  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }")
        + "limits: { max_body: 128KiB }\n";
    let s = Sidecar::start(&config).await;
    // Declared too large: answered 413 without sending a single body byte.
    let mut stream = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    stream
        .write_all(b"POST /v1/keys/aes/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");
    // Chunked without a length: refused once it passes the limit.
    let big = Bytes::from(vec![b' '; 200 * 1024]);
    let r = s
        .request(
            Method::POST,
            "/v1/keys/aes/encrypt",
            &[("transfer-encoding", "chunked")],
            big,
        )
        .await;
    r.expect(413, Some("payload_too_large"));
    // Within the body limit but over what direct encryption takes: 413 with a hint.
    let r = s
        .post(
            "/v1/keys/aes/encrypt",
            json!({"plaintext": b64(vec![0u8; 65 * 1024])}),
        )
        .await;
    let v = r.expect(413, Some("payload_too_large"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("envelope"),
        "{v}"
    );
}

#[tokio::test]
async fn rotate_needs_a_grant_on_the_key_and_for_the_caller() {
    let uid = nix::unistd::geteuid().as_raw();
    let config = format!(
        r#"backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  plain:     {{ backend: dev, key: plain, algorithm: aes-256-gcm }}
  rotatable: {{ backend: dev, key: rot, algorithm: aes-256-gcm, ops: [encrypt, decrypt, rotate] }}
callers:
  - {{ uids: [{uid}], keys: ["*"], ops: [encrypt, decrypt, metadata] }}
"#
    );
    let s = Sidecar::start(&config).await;
    let r = s.post("/v1/keys/rotatable/rotate", json!({})).await;
    assert!(
        r.expect(403, Some("forbidden"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not `rotate`")
    );
    s.post("/v1/keys/rotatable/datakey", json!({}))
        .await
        .expect(403, Some("forbidden"));
    s.post_ok(
        "/v1/keys/plain/encrypt",
        json!({"plaintext": b64("fine here")}),
    )
    .await;
    drop(s);

    let config = config.replace("ops: [encrypt, decrypt, metadata]", "ops: [\"*\"]");
    let s = Sidecar::start(&config).await;
    let r = s.post("/v1/keys/plain/rotate", json!({})).await;
    assert!(
        r.expect(403, Some("forbidden"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keys.plain.ops")
    );
    s.post_ok("/v1/keys/plain/datakey", json!({})).await;
    s.post_ok("/v1/keys/rotatable/rotate", json!({})).await;
    s.post("/v1/keys/rotatable/datakey", json!({}))
        .await
        .expect(403, Some("forbidden"));
    let m = s.get("/v1/keys/plain").await.ok();
    assert_eq!(
        m["current_version"], "1",
        "a refused rotation changed nothing"
    );
}

#[tokio::test]
async fn a_broken_key_directory_is_a_backend_error_and_not_ready() {
    let config =
        local_config("  aes: { backend: dev, key: aes, algorithm: aes-256-gcm, ops: [\"*\"] }");
    let s = Sidecar::start(&config).await;
    std::fs::remove_dir_all(s.dir.path().join("keys")).unwrap();
    let r = s.post("/v1/keys/aes/rotate", json!({})).await;
    let v = r.expect(502, Some("backend_error"));
    assert_eq!(v["error"]["retryable"], false);
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503);
    let v = r.json();
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["backends"]["dev"]["status"], "error");
    assert!(
        v["backends"]["dev"]["reason"]
            .as_str()
            .unwrap()
            .contains("not readable"),
        "{v}"
    );
    // Keys already loaded keep working.
    s.post_ok(
        "/v1/keys/aes/encrypt",
        json!({"plaintext": b64("still works")}),
    )
    .await;
    let m = s.get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains(r#"kms_sidecar_backend_calls_total{backend="dev",op="rotate",outcome="backend_error"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"kms_sidecar_requests_total{code="backend_error",key="aes",op="rotate"} 1"#
        ),
        "{text}"
    );
}
