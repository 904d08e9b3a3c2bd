//! Every route of API v1 on the embedded default (local backend).

use crate::harness::{Sidecar, b64, unb64};
use serde_json::json;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = Sidecar::start_default().await;
    assert_eq!(s.get("/healthz").await.ok(), json!({"status": "ok"}));
    let ready = s.get("/readyz").await.ok();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["backends"]["dev"]["status"], "ok");
    s.post_ok(
        "/v1/keys/ecdsa-p256/sign",
        json!({"message": b64("count me")}),
    )
    .await;
    let m = s.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"kms_sidecar_requests_total{code="ok",key="ecdsa-p256",op="sign"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kms_sidecar_backend_calls_total{backend="dev",op="sign",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("kms_sidecar_request_duration_seconds_bucket{op=\"sign\""),
        "{text}"
    );
    assert!(
        text.contains("kms_sidecar_backend_call_duration_seconds"),
        "{text}"
    );
}

#[tokio::test]
async fn keys_are_listed_with_their_metadata() {
    let s = Sidecar::start_default().await;
    let list = s.get("/v1/keys").await.ok();
    let names: Vec<_> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["aes-256", "ecdsa-p256", "ed25519", "hmac-256", "rsa-3072"]
    );
    let ec = &list["keys"][1];
    assert_eq!(ec["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(ec["version"], "1");
    assert_eq!(
        ec["ops"],
        json!([
            "sign",
            "verify",
            "public_key",
            "metadata",
            "rotate",
            "flush"
        ])
    );

    let m = s.get("/v1/keys/aes-256").await.ok();
    assert_eq!(m["algorithm"], "aes-256-gcm");
    assert_eq!(m["purpose"], "encrypt");
    assert_eq!(m["origin"], "software");
    assert_eq!(m["backend_type"], "local");
    assert_eq!(m["current_version"], "1");
    assert_eq!(m["versions"].as_array().unwrap().len(), 1);
    assert_eq!(m["rotation"]["enabled"], true);
    assert_eq!(m["rotation"]["period_seconds"], 90 * 86400);
    assert_eq!(m["rotation"]["should_rotate"], false);
    assert!(m["rotation"]["next"].as_str().unwrap() > m["rotation"]["last"].as_str().unwrap());
    let m = s.get("/v1/keys/ed25519").await.ok();
    assert_eq!(m["rotation"]["enabled"], false);
    assert_eq!(m["rotation"]["next"], json!(null));
}

#[tokio::test]
async fn should_rotate_after_the_configured_period() {
    let config = crate::harness::local_config(
        "  old: { backend: dev, key: old, algorithm: aes-256-gcm, rotation_period: 1s, ops: [\"*\"] }",
    );
    let s = Sidecar::start(&config).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let m = s.get("/v1/keys/old").await.ok();
    assert_eq!(m["rotation"]["should_rotate"], true, "{m}");
    s.post_ok("/v1/keys/old/rotate", json!({})).await;
    let m = s.get("/v1/keys/old").await.ok();
    assert_eq!(m["rotation"]["should_rotate"], false, "{m}");
    assert_eq!(m["current_version"], "2");
}

#[tokio::test]
async fn public_keys_come_as_pem_and_jwk() {
    let s = Sidecar::start_default().await;
    for (key, kty, alg) in [
        ("ecdsa-p256", "EC", "ES256"),
        ("ed25519", "OKP", "EdDSA"),
        ("rsa-3072", "RSA", "PS256"),
    ] {
        let pk = s.get(&format!("/v1/keys/{key}/public-key")).await.ok();
        assert!(
            pk["pem"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{pk}"
        );
        assert_eq!(pk["jwk"]["kty"], kty);
        assert_eq!(pk["jwk"]["alg"], alg);
        assert_eq!(pk["jwk"]["kid"], format!("{key}/1"));
        assert_eq!(pk["version"], "1");
    }
    let rsa = s.get("/v1/keys/rsa-3072/public-key").await.ok();
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        rsa["jwk"]["n"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(n.len(), 384, "a 3072-bit modulus");
}

#[tokio::test]
async fn sign_and_verify_messages_and_digests_in_both_formats() {
    let s = Sidecar::start_default().await;
    let msg = b"transfer 100 EUR to account 42";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
    for key in ["ecdsa-p256", "ed25519", "rsa-3072"] {
        let signed = s
            .post_ok(
                &format!("/v1/keys/{key}/sign"),
                json!({"message": b64(msg)}),
            )
            .await;
        assert_eq!(signed["key"], key);
        assert_eq!(signed["version"], "1");
        let v = s
            .post_ok(
                &format!("/v1/keys/{key}/verify"),
                json!({"message": b64(msg), "signature": signed["signature"]}),
            )
            .await;
        assert_eq!(v, json!({"valid": true, "version": "1"}), "{key}");
        let v = s
            .post_ok(&format!("/v1/keys/{key}/verify"), json!({"message": b64(b"transfer 900 EUR to account 42"), "signature": signed["signature"]})).await;
        assert_eq!(
            v["valid"], false,
            "{key}: a tampered message must not verify"
        );
    }
    for key in ["ecdsa-p256", "rsa-3072"] {
        let signed = s
            .post_ok(
                &format!("/v1/keys/{key}/sign"),
                json!({"digest": b64(digest)}),
            )
            .await;
        let v = s
            .post_ok(
                &format!("/v1/keys/{key}/verify"),
                json!({"message": b64(msg), "signature": signed["signature"]}),
            )
            .await;
        assert_eq!(
            v["valid"], true,
            "{key}: a digest signature verifies against the message"
        );
        let v = s
            .post_ok(
                &format!("/v1/keys/{key}/verify"),
                json!({"digest": b64(digest), "signature": signed["signature"]}),
            )
            .await;
        assert_eq!(v["valid"], true, "{key}");
    }
    let der = s
        .post_ok(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64(msg), "format": "der"}),
        )
        .await;
    assert_eq!(
        unb64(&der["signature"])[0],
        0x30,
        "DER is an ASN.1 SEQUENCE"
    );
    let raw = s
        .post_ok(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64(msg), "format": "raw"}),
        )
        .await;
    assert_eq!(unb64(&raw["signature"]).len(), 64, "raw is r‖s");
    for body in [
        json!({"message": b64(msg), "signature": raw["signature"]}),
        json!({"message": b64(msg), "signature": raw["signature"], "format": "raw"}),
        json!({"message": b64(msg), "signature": der["signature"], "format": "der", "version": 1}),
    ] {
        assert_eq!(
            s.post_ok("/v1/keys/ecdsa-p256/verify", body).await["valid"],
            true
        );
    }
    let v = s
        .post_ok(
            "/v1/keys/ecdsa-p256/verify",
            json!({"message": b64(msg), "signature": raw["signature"], "format": "der"}),
        )
        .await;
    assert_eq!(
        v["valid"], false,
        "a raw signature labelled DER does not verify"
    );
}

#[tokio::test]
async fn sign_batch_signs_every_item() {
    let s = Sidecar::start_default().await;
    let items: Vec<_> = (0..10)
        .map(|i| json!({"message": b64(format!("batch item {i}"))}))
        .collect();
    let out = s
        .post_ok("/v1/keys/ecdsa-p256/sign-batch", json!({"items": items}))
        .await;
    let sigs = out["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 10);
    assert_eq!(out["version"], "1");
    for (i, sig) in sigs.iter().enumerate() {
        let v = s
            .post_ok(
                "/v1/keys/ecdsa-p256/verify",
                json!({"message": b64(format!("batch item {i}")), "signature": sig}),
            )
            .await;
        assert_eq!(v["valid"], true, "item {i}");
    }
}

#[tokio::test]
async fn encrypt_and_decrypt_bind_the_context() {
    let s = Sidecar::start_default().await;
    let secret = b"card 4111-1111-1111-1111 cvv 737";
    let ctx = json!({"tenant": "acme", "purpose": "billing"});
    let enc = s
        .post_ok(
            "/v1/keys/aes-256/encrypt",
            json!({"plaintext": b64(secret), "context": ctx}),
        )
        .await;
    assert_eq!(enc["version"], "1");
    let dec = s
        .post_ok(
            "/v1/keys/aes-256/decrypt",
            json!({"ciphertext": enc["ciphertext"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), secret);
    for wrong in [
        json!({"tenant": "evil", "purpose": "billing"}),
        json!({}),
        json!({"tenant": "acme"}),
    ] {
        let r = s
            .post(
                "/v1/keys/aes-256/decrypt",
                json!({"ciphertext": enc["ciphertext"], "context": wrong}),
            )
            .await;
        let body = r.expect(422, Some("decryption_failed"));
        assert!(body.get("plaintext").is_none());
    }
    let mut tampered = unb64(&enc["ciphertext"]);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    s.post(
        "/v1/keys/aes-256/decrypt",
        json!({"ciphertext": b64(&tampered), "context": ctx}),
    )
    .await
    .expect(422, Some("decryption_failed"));
    // No context at all round-trips too, and empty plaintext is allowed.
    let enc = s
        .post_ok("/v1/keys/aes-256/encrypt", json!({"plaintext": ""}))
        .await;
    let dec = s
        .post_ok(
            "/v1/keys/aes-256/decrypt",
            json!({"ciphertext": enc["ciphertext"]}),
        )
        .await;
    assert_eq!(dec["plaintext"], "");
}

#[tokio::test]
async fn datakeys_unwrap_with_decrypt() {
    let s = Sidecar::start_default().await;
    let ctx = json!({"bucket": "invoices"});
    let dk = s
        .post_ok("/v1/keys/aes-256/datakey", json!({"context": ctx}))
        .await;
    let plain = unb64(&dk["plaintext_key"]);
    assert_eq!(plain.len(), 32);
    let dec = s
        .post_ok(
            "/v1/keys/aes-256/decrypt",
            json!({"ciphertext": dk["encrypted_key"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), plain);
    let dk128 = s
        .post_ok("/v1/keys/aes-256/datakey", json!({"bits": 128}))
        .await;
    assert_eq!(unb64(&dk128["plaintext_key"]).len(), 16);
    s.post("/v1/keys/aes-256/datakey", json!({"bits": 512}))
        .await
        .expect(400, Some("invalid_request"));
}

#[tokio::test]
async fn macs_verify_and_detect_changes() {
    let s = Sidecar::start_default().await;
    let msg = b64("webhook payload 1234");
    let mac = s
        .post_ok("/v1/keys/hmac-256/mac", json!({"message": msg}))
        .await;
    assert_eq!(unb64(&mac["mac"]).len(), 32);
    let v = s
        .post_ok(
            "/v1/keys/hmac-256/verify-mac",
            json!({"message": msg, "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));
    let v = s
        .post_ok(
            "/v1/keys/hmac-256/verify-mac",
            json!({"message": b64("webhook payload 1235"), "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(v["valid"], false);
}

#[tokio::test]
async fn rotation_keeps_old_versions_working() {
    let s = Sidecar::start_default().await;
    let ctx = json!({"k": "v"});
    let old_ct = s
        .post_ok(
            "/v1/keys/aes-256/encrypt",
            json!({"plaintext": b64("old secret data"), "context": ctx}),
        )
        .await;
    let old_sig = s
        .post_ok(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64("old signed message")}),
        )
        .await;
    let old_mac = s
        .post_ok(
            "/v1/keys/hmac-256/mac",
            json!({"message": b64("old mac message")}),
        )
        .await;
    let old_pk = s.get("/v1/keys/ecdsa-p256/public-key").await.ok();
    for key in ["aes-256", "ecdsa-p256", "hmac-256"] {
        let r = s
            .post_ok(&format!("/v1/keys/{key}/rotate"), json!({}))
            .await;
        assert_eq!(r, json!({"key": key, "version": "2"}));
    }
    let m = s.get("/v1/keys/aes-256").await.ok();
    assert_eq!(m["current_version"], "2");
    let versions: Vec<_> = m["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1", "2"]);

    let dec = s
        .post_ok(
            "/v1/keys/aes-256/decrypt",
            json!({"ciphertext": old_ct["ciphertext"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), b"old secret data");
    let new_ct = s
        .post_ok(
            "/v1/keys/aes-256/encrypt",
            json!({"plaintext": b64("new secret data")}),
        )
        .await;
    assert_eq!(new_ct["version"], "2");

    let v = s
        .post_ok(
            "/v1/keys/ecdsa-p256/verify",
            json!({"message": b64("old signed message"), "signature": old_sig["signature"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));
    let new_sig = s
        .post_ok(
            "/v1/keys/ecdsa-p256/sign",
            json!({"message": b64("new message")}),
        )
        .await;
    assert_eq!(new_sig["version"], "2");
    let new_pk = s.get("/v1/keys/ecdsa-p256/public-key").await.ok();
    assert_eq!(
        new_pk["version"], "2",
        "the public-key cache is refreshed by a rotation"
    );
    assert_ne!(new_pk["pem"], old_pk["pem"]);

    let v = s
        .post_ok(
            "/v1/keys/hmac-256/verify-mac",
            json!({"message": b64("old mac message"), "mac": old_mac["mac"]}),
        )
        .await;
    assert_eq!(v, json!({"valid": true, "version": "1"}));

    // Versions survive a restart: the key files hold them.
    let dir = s.into_dir();
    let dir = dir.path();
    let files = std::fs::read_to_string(dir.join(".kms-sidecar/keys/aes-256.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&files).unwrap();
    assert_eq!(parsed["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let s = Sidecar::start_default().await;
    let r = s
        .request(
            http::Method::GET,
            "/healthz",
            &[("x-request-id", "trace-abc-123")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "trace-abc-123");
    let r = s.get("/v1/keys/nope").await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a generated UUID");
    assert_eq!(r.json()["error"]["request_id"], id);
}

#[tokio::test]
async fn the_log_scan_catches_what_is_in_the_log() {
    // The secret scan that runs when every test's sidecar stops can fail: a
    // string that is in the log is found.
    let s = Sidecar::start_default().await;
    s.post(
        "/v1/keys/nope-not-configured/sign",
        json!({"message": b64("m")}),
    )
    .await;
    s.secret("nope-not-configured");
    assert_eq!(s.leaked_secrets(), ["nope-not-configured"]);
    let logs = s.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("request refused"))
        .expect("a debug line per refused request");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log lines");
    assert_eq!(
        v["span"]["request_id"].as_str().map(str::len),
        Some(36),
        "{line}"
    );
    assert_eq!(
        v["span"]["caller.uid"],
        nix::unistd::geteuid().as_raw(),
        "{line}"
    );
    assert_eq!(v["span"]["op"], "sign", "{line}");
    s.clear_secrets();
}

/// `backend_calls_total{op="metadata"}` summed over outcomes.
async fn metadata_calls(s: &Sidecar) -> u64 {
    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("kms_sidecar_backend_calls_total{") && l.contains(r#"op="metadata""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn listing_keys_spends_no_kms_calls_once_cached() {
    let s = Sidecar::start_default().await;
    let keys = s.get("/v1/keys").await.ok()["keys"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!(keys, 5);
    let first = metadata_calls(&s).await;
    assert!(first <= keys, "one metadata call per key at most: {first}");
    for _ in 0..1000 {
        let r = s.get("/v1/keys").await;
        assert_eq!(r.status, 200);
    }
    for alias in ["ecdsa-p256", "aes-256"] {
        s.get(&format!("/v1/keys/{alias}")).await.ok();
    }
    assert_eq!(
        metadata_calls(&s).await,
        first,
        "1,000 listings and two metadata reads asked the backend nothing more"
    );
    // A rotation drops the key's cached metadata: the new version shows now.
    let rotated = s.post_ok("/v1/keys/aes-256/rotate", json!({})).await;
    let meta = s.get("/v1/keys/aes-256").await.ok();
    assert_eq!(meta["current_version"], rotated["version"]);
}

#[tokio::test]
async fn cached_metadata_expires_after_its_ttl() {
    let config =
        crate::harness::local_config("  k: { backend: dev, key: k, algorithm: aes-256-gcm }")
            + "cache: { metadata: { ttl: 1s } }\n";
    let s = Sidecar::start(&config).await;
    s.get("/v1/keys").await.ok();
    let before = metadata_calls(&s).await;
    s.get("/v1/keys").await.ok();
    assert_eq!(metadata_calls(&s).await, before);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    s.get("/v1/keys").await.ok();
    assert_eq!(metadata_calls(&s).await, before + 1, "expired: asked again");
}
