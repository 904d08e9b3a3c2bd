//! Every transit operation over the socket, errors mapped to API codes,
//! purpose binding and low-S.

use super::*;
use crate::harness::{Bao, Sidecar, b64};
use serde_json::json;

#[tokio::test]
async fn every_transit_operation_over_the_socket_with_approle() {
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

    let dir = s.dir.path();
    let msg = b"transfer 10 EUR to bob";

    // Signatures: each key type, verified by the sidecar (transit verify)
    // and independently by openssl with the exported public key.
    for (key, options, ed) in [
        ("ec", &[][..], false),
        ("ec384", &["-sha384"][..], false),
        ("ed", &[][..], true),
        (
            "rsa",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ][..],
            false,
        ),
        (
            "rsa4k",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ][..],
            false,
        ),
    ] {
        let pk = s.get(&format!("/v1/keys/{key}/public-key")).await.ok();
        let pem = pk["pem"].as_str().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{key}: {pk}");
        assert_eq!(pk["version"], "1", "{pk}");
        assert!(pk["jwk"]["kty"].is_string(), "{pk}");
        let signed = s
            .post_ok(
                &format!("/v1/keys/{key}/sign"),
                json!({"message": b64(msg)}),
            )
            .await;
        assert_eq!(signed["version"], "1", "{signed}");
        let sig = unb64(&signed["signature"]);
        assert!(
            !sig.starts_with(b"vault:"),
            "{key}: the transit prefix leaked"
        );
        assert!(
            openssl_verifies(dir, pem, msg, &sig, options, ed),
            "{key}: openssl rejects it"
        );
        assert!(!openssl_verifies(
            dir,
            pem,
            b"forged: 99 EUR",
            &sig,
            options,
            ed
        ));
        let v = s
            .post_ok(
                &format!("/v1/keys/{key}/verify"),
                json!({"message": b64(msg), "signature": signed["signature"]}),
            )
            .await;
        assert_eq!(v, json!({"valid": true, "version": "1"}), "{key}");
        let v = s
            .post_ok(
                &format!("/v1/keys/{key}/verify"),
                json!({"message": b64(b"forged: 99 EUR"), "signature": signed["signature"]}),
            )
            .await;
        assert_eq!(v["valid"], false, "{key}");
    }
    // The Ed25519 JWK is the raw key transit returns.
    let jwk = s.get("/v1/keys/ed/public-key").await.ok()["jwk"].clone();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");

    // ECDSA raw r‖s (JWS marshaling) and digests (prehashed).
    let pem = s.get("/v1/keys/ec/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = s
        .post_ok(
            "/v1/keys/ec/sign",
            json!({"message": b64(msg), "format": "raw"}),
        )
        .await;
    assert_eq!(unb64(&raw["signature"]).len(), 64);
    let v = s
        .post_ok(
            "/v1/keys/ec/verify",
            json!({"message": b64(msg), "signature": raw["signature"], "format": "raw"}),
        )
        .await;
    assert_eq!(v["valid"], true, "{v}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
    let by_digest = s
        .post_ok("/v1/keys/ec/sign", json!({"digest": b64(digest.as_ref())}))
        .await;
    assert!(openssl_verifies(
        dir,
        &pem,
        msg,
        &unb64(&by_digest["signature"]),
        &[],
        false
    ));
    let v = s
        .post_ok(
            "/v1/keys/ec/verify",
            json!({"digest": b64(digest.as_ref()), "signature": by_digest["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true);
    // Ed25519 takes no digest (422, as on every backend); a digest of the
    // wrong length is refused (400).
    s.post("/v1/keys/ed/sign", json!({"digest": b64(digest.as_ref())}))
        .await
        .expect(422, Some("operation_not_supported"));
    s.post("/v1/keys/ec/sign", json!({"digest": b64([1u8; 20])}))
        .await
        .expect(400, Some("invalid_request"));

    // RSA PKCS#1 v1.5 on request.
    let rsa_pem = s.get("/v1/keys/rsa/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let pkcs1 = s
        .post_ok(
            "/v1/keys/rsa/sign",
            json!({"message": b64(msg), "algorithm": "rsa-pkcs1-2048-sha256"}),
        )
        .await;
    assert!(openssl_verifies(
        dir,
        &rsa_pem,
        msg,
        &unb64(&pkcs1["signature"]),
        &[],
        false
    ));

    // Encryption binds the context (associated data; derivation for derived keys).
    for key in ["aes", "derived"] {
        let ctx = json!({"tenant": "acme", "purpose": "pii"});
        let enc = s
            .post_ok(
                &format!("/v1/keys/{key}/encrypt"),
                json!({"plaintext": b64(b"4111 1111 1111 1111"), "context": ctx}),
            )
            .await;
        assert_eq!(enc["version"], "1");
        assert!(!unb64(&enc["ciphertext"]).starts_with(b"vault:"));
        let dec = s
            .post_ok(
                &format!("/v1/keys/{key}/decrypt"),
                json!({"ciphertext": enc["ciphertext"], "context": ctx}),
            )
            .await;
        assert_eq!(unb64(&dec["plaintext"]), b"4111 1111 1111 1111");
        s.post(
            &format!("/v1/keys/{key}/decrypt"),
            json!({"ciphertext": enc["ciphertext"], "context": {"tenant": "evil"}}),
        )
        .await
        .expect(422, Some("decryption_failed"));
        let mut tampered = unb64(&enc["ciphertext"]);
        *tampered.last_mut().unwrap() ^= 1;
        s.post(
            &format!("/v1/keys/{key}/decrypt"),
            json!({"ciphertext": b64(&tampered), "context": ctx}),
        )
        .await
        .expect(422, Some("decryption_failed"));
    }

    // Data keys unwrap with decrypt and the same context.
    let ctx = json!({"bucket": "b1"});
    let dk = s
        .post_ok("/v1/keys/aes/datakey", json!({"bits": 256, "context": ctx}))
        .await;
    assert_eq!(unb64(&dk["plaintext_key"]).len(), 32);
    let unwrapped = s
        .post_ok(
            "/v1/keys/aes/decrypt",
            json!({"ciphertext": dk["encrypted_key"], "context": ctx}),
        )
        .await;
    assert_eq!(unwrapped["plaintext"], dk["plaintext_key"]);
    s.post(
        "/v1/keys/aes/decrypt",
        json!({"ciphertext": dk["encrypted_key"], "context": {"bucket": "b2"}}),
    )
    .await
    .expect(422, Some("decryption_failed"));

    // Envelopes over transit data keys.
    let env = s
        .post_ok(
            "/v1/keys/aes/envelope/encrypt",
            json!({"plaintext": b64(vec![7u8; 100_000]), "context": ctx}),
        )
        .await;
    let opened = s
        .post_ok(
            "/v1/keys/aes/envelope/decrypt",
            json!({"envelope": env["envelope"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&opened["plaintext"]), vec![7u8; 100_000]);

    // HMAC.
    let mac = s
        .post_ok("/v1/keys/mac/mac", json!({"message": b64(msg)}))
        .await;
    assert_eq!(unb64(&mac["mac"]).len(), 32);
    let v = s
        .post_ok(
            "/v1/keys/mac/verify-mac",
            json!({"message": b64(msg), "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));
    let v = s
        .post_ok(
            "/v1/keys/mac/verify-mac",
            json!({"message": b64(b"x"), "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(v["valid"], false);

    // Metadata.
    let m = s.get("/v1/keys/ec384").await.ok();
    assert_eq!(m["algorithm"], "ecdsa-p384-sha384", "{m}");
    assert_eq!(m["current_version"], "1", "{m}");
    assert_eq!(m["details"]["transit_type"], "ecdsa-p384", "{m}");
    let m = s.get("/v1/keys/derived").await.ok();
    assert_eq!(m["details"]["derived"], "true", "{m}");

    // Rotation: new versions sign and encrypt; old ciphertexts, signatures
    // and MACs still work and report their version.
    let old_ct = s
        .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": b64(b"old")}))
        .await;
    let old_sig = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(msg)}))
        .await;
    for key in ["aes", "ec", "mac"] {
        let r = s
            .post_ok(&format!("/v1/keys/{key}/rotate"), json!({}))
            .await;
        assert_eq!(r["version"], "2", "{key}: {r}");
    }
    let new_ct = s
        .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": b64(b"new")}))
        .await;
    assert_eq!(new_ct["version"], "2");
    let dec = s
        .post_ok(
            "/v1/keys/aes/decrypt",
            json!({"ciphertext": old_ct["ciphertext"]}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), b"old");
    let v = s
        .post_ok(
            "/v1/keys/ec/verify",
            json!({"message": b64(msg), "signature": old_sig["signature"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));
    let new_sig = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(msg)}))
        .await;
    assert_eq!(new_sig["version"], "2");
    let pk2 = s.get("/v1/keys/ec/public-key").await.ok();
    assert_eq!(pk2["version"], "2");
    assert_ne!(pk2["pem"], json!(pem));
    assert!(openssl_verifies(
        dir,
        pk2["pem"].as_str().unwrap(),
        msg,
        &unb64(&new_sig["signature"]),
        &[],
        false
    ));
    let v = s
        .post_ok(
            "/v1/keys/mac/verify-mac",
            json!({"message": b64(msg), "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));
    let m = s.get("/v1/keys/aes").await.ok();
    assert_eq!(m["current_version"], "2", "{m}");
    assert_eq!(m["versions"].as_array().unwrap().len(), 2, "{m}");

    // min_decryption_version retires version 1: its ciphertext no longer
    // decrypts, and the answer says the version is disabled.
    bao.api(
        "POST",
        "transit/keys/aes/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    s.post(
        "/v1/keys/aes/decrypt",
        json!({"ciphertext": old_ct["ciphertext"]}),
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
