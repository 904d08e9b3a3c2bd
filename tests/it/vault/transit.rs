//! Transit's own key types, derived keys and retired versions, errors
//! mapped to API codes, purpose binding and low-S. Every operation runs in
//! the conformance suite (`conformance::vault`).

use super::*;
use crate::harness::{Bao, Sidecar, b64};
use serde_json::json;

/// What only transit has, beyond the conformance suite's cases
/// (`conformance::vault::*` runs every operation on its key types): an
/// AppRole login; the P-384 and RSA-4096 key types, verified by openssl with
/// no `vault:` prefix leaking; derived keys, whose context is the
/// derivation; transit's details in metadata; and `min_decryption_version`
/// retiring a version (409 `key_disabled`).
#[tokio::test]
async fn transit_key_types_derived_keys_and_retired_versions_with_approle() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    setup_approle(&bao, creds.path(), "1h").await;
    let d = creds.path().display();
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}"),
    ))
    .await;
    s.secret(std::fs::read_to_string(creds.path().join("secret_id")).unwrap());
    s.secret(std::fs::read_to_string(creds.path().join("role_id")).unwrap());
    s.secret(bao.root_token.clone());
    let r = ready(&s).await;
    assert_eq!(r["backends"]["vault"]["status"], "ok", "{r}");

    let msg = b"transfer 10 EUR to bob";
    let pss = [
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
    ];
    for (key, options) in [("ec384", &["-sha384"][..]), ("rsa4k", &pss[..])] {
        let pem = s.get(&format!("/v1/keys/{key}/public-key")).await.ok()["pem"]
            .as_str()
            .unwrap()
            .to_owned();
        let signed = s
            .post_ok(
                &format!("/v1/keys/{key}/sign"),
                json!({"message": b64(msg)}),
            )
            .await;
        let sig = unb64(&signed["signature"]);
        assert!(
            !sig.starts_with(b"vault:"),
            "{key}: the transit prefix leaked"
        );
        assert!(
            openssl_verifies(s.dir.path(), &pem, msg, &sig, options, false),
            "{key}: openssl rejects it"
        );
    }
    let m = s.get("/v1/keys/ec384").await.ok();
    assert_eq!(m["algorithm"], "ecdsa-p384-sha384", "{m}");
    assert_eq!(m["details"]["transit_type"], "ecdsa-p384", "{m}");

    // A derived key: the context is the derivation, so another context
    // cannot decrypt.
    let m = s.get("/v1/keys/derived").await.ok();
    assert_eq!(m["details"]["derived"], "true", "{m}");
    let ctx = json!({"tenant": "acme", "purpose": "pii"});
    let enc = s
        .post_ok(
            "/v1/keys/derived/encrypt",
            json!({"plaintext": b64(b"4111 1111 1111 1111"), "context": ctx}),
        )
        .await;
    assert!(!unb64(&enc["ciphertext"]).starts_with(b"vault:"));
    let dec = s
        .post_ok(
            "/v1/keys/derived/decrypt",
            json!({"ciphertext": enc["ciphertext"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), b"4111 1111 1111 1111");
    s.post(
        "/v1/keys/derived/decrypt",
        json!({"ciphertext": enc["ciphertext"], "context": {"tenant": "evil"}}),
    )
    .await
    .expect(422, Some("decryption_failed"));

    // min_decryption_version retires version 1: its ciphertext no longer
    // decrypts, and the answer says the version is disabled.
    let old = s
        .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": b64(b"old")}))
        .await;
    s.post_ok("/v1/keys/aes/rotate", json!({})).await;
    bao.api(
        "POST",
        "transit/keys/aes/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    s.post(
        "/v1/keys/aes/decrypt",
        json!({"ciphertext": old["ciphertext"]}),
    )
    .await
    .expect(409, Some("key_disabled"));
}

#[tokio::test]
async fn vault_errors_map_to_api_codes() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    // A second transit mount the policy does not cover.
    bao.api("POST", "sys/mounts/other", json!({"type": "transit"}))
        .await;
    bao.api("POST", "transit/keys/rsa3k", json!({"type": "rsa-3072"}))
        .await;
    bao.api("POST", "other/keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    bao.api(
        "POST",
        "transit/keys/chacha",
        json!({"type": "chacha20-poly1305"}),
    )
    .await;
    let creds = tempfile::tempdir().unwrap();
    setup_approle(&bao, creds.path(), "1h").await;
    let d = creds.path().display();
    let cfg = format!(
        "backends:
  vault:
    type: vault
    address: {url}
    auth: {{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}
  denied:
    type: vault
    address: {url}
    mount: other
    auth: {{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}
keys:
  ec: {{ backend: vault, key: ec }}
  rsa3k: {{ backend: vault, key: rsa3k }}
  missing: {{ backend: vault, key: no-such-key }}
  chacha: {{ backend: vault, key: chacha }}
  aes: {{ backend: vault, key: aes }}
  elsewhere: {{ backend: denied, key: ec }}
callers:
  - {{ uids: [{uid}], keys: [\"*\"], ops: [\"*\"] }}
",
        url = bao.url,
        uid = nix::unistd::getuid()
    );
    let s = Sidecar::start(&cfg).await;
    ready(&s).await;
    let msg = json!({"message": b64(b"m")});
    let signed = s.post_ok("/v1/keys/rsa3k/sign", msg.clone()).await;
    assert_eq!(unb64(&signed["signature"]).len(), 384);
    s.post("/v1/keys/missing/sign", msg.clone())
        .await
        .expect(404, Some("key_not_found"));
    let r = s.post("/v1/keys/elsewhere/sign", msg.clone()).await;
    let v = r.expect(403, Some("forbidden"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
    s.post("/v1/keys/chacha/encrypt", json!({"plaintext": b64(b"x")}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.post("/v1/keys/ec/encrypt", json!({"plaintext": b64(b"x")}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.post(
        "/v1/keys/aes/decrypt",
        json!({"ciphertext": b64(b"garbage-bytes")}),
    )
    .await
    .expect(422, Some("decryption_failed"));

    // Throttled by a rate-limit quota (429): retried, then a retryable 503
    // naming the quota; readiness is unaffected.
    bao.api(
        "POST",
        "sys/quotas/rate-limit/transit",
        json!({"path": "transit/", "rate": 1, "interval": "30s"}),
    )
    .await;
    let mut throttled = None;
    for _ in 0..3 {
        let r = s.post("/v1/keys/ec/sign", msg.clone()).await;
        if r.status != 200 {
            throttled = Some(r);
            break;
        }
    }
    let v = throttled
        .expect("a 1-per-30s quota throttles the second call")
        .expect(503, Some("backend_unavailable"));
    assert_eq!(v["error"]["retryable"], true, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit quota exceeded"),
        "{v}"
    );
    assert_eq!(s.get("/readyz").await.status, 200);
    bao.api("DELETE", "sys/quotas/rate-limit/transit", Value::Null)
        .await;

    // Sealed: not ready, and calls are 503 backend_unavailable.
    bao.api("PUT", "sys/seal", Value::Null).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.get("/readyz").await;
        if r.status == 503 {
            let v = r.json();
            assert!(
                v["backends"]["vault"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("sealed"),
                "{v}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed 200 with Vault sealed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.post("/v1/keys/ec/sign", msg.clone())
        .await
        .expect(503, Some("backend_unavailable"));

    // Gone: unreachable is 503 too, after retries, and the sidecar lives on.
    drop(bao);
    s.post("/v1/keys/ec/sign", msg)
        .await
        .expect(503, Some("backend_unavailable"));
    assert_eq!(s.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn grants_hold_for_envelopes_and_signatures_are_low_s() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    setup_approle(&bao, creds.path(), "1h").await;
    let d = creds.path().display();
    let config = config(
        &bao,
        &format!("{{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}"),
    )
    .replace(
        "callers:",
        "  env: { backend: vault, key: aes, ops: [envelope] }\n  dec: { backend: vault, key: aes, ops: [decrypt] }\n  dk: { backend: vault, key: aes, ops: [datakey] }\ncallers:",
    );
    let s = Sidecar::start(&config).await;
    s.secret(std::fs::read_to_string(creds.path().join("secret_id")).unwrap());
    crate::adversarial::envelope_grants_hold(&s, "env", "dec", "dk").await;
    crate::adversarial::signatures_are_low_s(&s, "ec").await;
}

/// No driver keeps a cache of its own (issue 33): what transit says of a
/// key travels with the metadata the sidecar caches (`cache.metadata.ttl`)
/// and comes back with every call. Forty calls read the key from transit
/// once, as OpenBao's own audit log shows; a rotation through the sidecar
/// reads it again (the new version) and drops the cached metadata, so the
/// next call reads it once more.
#[tokio::test]
async fn transit_reads_a_key_once_per_cached_metadata_not_once_per_call() {
    let bao = Bao::start_audited().await;
    setup_transit(&bao).await;
    let token = bao
        .api(
            "POST",
            "auth/token/create",
            json!({"policies": ["sidecar"], "ttl": "1h"}),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &token);
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: token, token_file: {} }}", file.display()),
    ))
    .await;
    s.secret(token);
    s.secret(bao.root_token.clone());
    ready(&s).await;
    let reads = || {
        let log = std::fs::read_to_string(bao.audit_log()).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["type"] == "request"
                    && e["request"]["path"] == "transit/keys/aes"
                    && e["request"]["operation"] == "read"
            })
            .count()
    };
    for i in 0..20 {
        let plaintext = b64(format!("message {i}").as_bytes());
        let enc = s
            .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": plaintext}))
            .await;
        let dec = s
            .post_ok(
                "/v1/keys/aes/decrypt",
                json!({"ciphertext": enc["ciphertext"]}),
            )
            .await;
        assert_eq!(dec["plaintext"], plaintext);
    }
    assert_eq!(reads(), 1, "40 calls, one read of the key");

    let rotated = s.post_ok("/v1/keys/aes/rotate", json!({})).await;
    assert_eq!(rotated["version"], "2", "{rotated}");
    let enc = s
        .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": b64(b"after")}))
        .await;
    assert_eq!(enc["version"], "2", "{enc}");
    assert_eq!(
        reads(),
        3,
        "the rotation reads the new version, the next call the metadata"
    );
}
