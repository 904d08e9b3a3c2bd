//! The `gcp` backend against the Cloud KMS contract fake, beyond the
//! conformance suite: credentials (the subject token replaced, STS and
//! impersonated tokens expiring, a revoked token, direct federation, the
//! metadata server), CRC32C corruption refused, RESOURCE_EXHAUSTED retried,
//! versions scheduled for destruction, metadata, and the fake's own
//! `config.yaml` as `make fake-gcp` writes it.

use crate::harness::{Fake, Sidecar, b64, openssl_verifies, unb64};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MSG: &[u8] = b"pay 10 EUR to bob";

/// A sidecar on `fake` with the fake's keys (`sign` = `gcp-sign`, `enc` =
/// `gcp-enc`, `mac` = `gcp-mac`), the backend's `extra` fields and `env`.
async fn sidecar(fake: &Fake, extra: &str, env: &[(&'static str, String)]) -> Sidecar {
    let config = format!(
        "backends:\n  kms: {}\nkeys:\n  sign: {{ backend: kms, key: gcp-sign, ops: [\"*\"] }}\n  enc: {{ backend: kms, key: gcp-enc, ops: [\"*\"] }}\n  mac: {{ backend: kms, key: gcp-mac, ops: [\"*\"] }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.gcp_backend(extra),
        nix::unistd::geteuid().as_raw()
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    s.secret(std::fs::read_to_string(fake.path("subject-token")).unwrap_or_default());
    s
}

/// The impersonating external account, through Application Default
/// Credentials.
fn adc(fake: &Fake) -> Vec<(&'static str, String)> {
    fake.env()
        .into_iter()
        .filter(|(k, _)| *k == "GOOGLE_APPLICATION_CREDENTIALS")
        .collect()
}

async fn sign(s: &Sidecar) -> Value {
    s.post_ok("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await
}

fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn requests(fake: &Fake, kind: &str) -> Vec<Value> {
    fake.stats().await[kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_and_a_replaced_subject_token_is_used() {
    let fake = Fake::gcp().await;
    // 20 s tokens: the library renews them every 10 s.
    fake.admin(
        "POST",
        "settings",
        json!({"sts_token_ttl": 20, "impersonated_token_ttl": 20}),
    )
    .await;
    let s = sidecar(&fake, "", &adc(&fake)).await;
    let first = requests(&fake, "impersonation_requests").await.len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        sign(&s).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let renewed = requests(&fake, "impersonation_requests").await.len();
    assert!(renewed > first, "tokens were renewed ({first} → {renewed})");
    // The kubelet replaces the projected token: the next exchange sends it.
    let new = fake
        .admin("POST", "subject-token", json!({"write": true}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.secret(new.clone());
    let want = sha256_hex(&new);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sign(&s).await;
        let sts = requests(&fake, "sts_requests").await;
        if sts
            .iter()
            .any(|r| r["subject_sha256"] == want.as_str() && r["ok"] == true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new subject token was not exchanged: {sts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failed: Vec<Value> = requests(&fake, "sts_requests")
        .await
        .into_iter()
        .filter(|r| r["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn a_revoked_token_is_replaced_within_the_call() {
    let fake = Fake::gcp().await;
    // Every log line, the libraries' included: the subject token must still
    // not show (checked when `s` drops).
    let mut env = adc(&fake);
    env.push(("RUST_LOG", "trace".into()));
    let s = sidecar(&fake, "", &env).await;
    sign(&s).await;
    let before = requests(&fake, "sts_requests").await.len();
    fake.admin("POST", "revoke", json!({})).await;
    sign(&s).await;
    assert!(
        requests(&fake, "sts_requests").await.len() > before,
        "a new exchange"
    );
}

#[tokio::test]
async fn corrupted_integrity_fields_are_refused() {
    let fake = Fake::gcp().await;
    let s = sidecar(&fake, "", &adc(&fake)).await;
    let sealed = s
        .post_ok(
            "/v1/keys/enc/encrypt",
            json!({"plaintext": b64(b"secret"), "context": {"a": "b"}}),
        )
        .await;
    let mac = s
        .post_ok("/v1/keys/mac/mac", json!({"message": b64(MSG)}))
        .await;
    assert!(!unb64(&mac["mac"]).is_empty());
    let cases = [
        ("signatureCrc32c", "sign", json!({"message": b64(MSG)})),
        ("verifiedDigestCrc32c", "sign", json!({"message": b64(MSG)})),
        (
            "ciphertextCrc32c",
            "encrypt",
            json!({"plaintext": b64(b"x")}),
        ),
        (
            "verifiedPlaintextCrc32c",
            "encrypt",
            json!({"plaintext": b64(b"x")}),
        ),
        (
            "plaintextCrc32c",
            "decrypt",
            json!({"ciphertext": sealed["ciphertext"], "context": {"a": "b"}}),
        ),
        ("macCrc32c", "mac", json!({"message": b64(MSG)})),
    ];
    for (field, op, body) in cases {
        let alias = match op {
            "sign" => "sign",
            "mac" => "mac",
            _ => "enc",
        };
        // Corrupted every time: refused, never used.
        fake.admin("POST", "corrupt", json!({"count": 50, "field": field}))
            .await;
        let r = s
            .post(&format!("/v1/keys/{alias}/{op}"), body.clone())
            .await;
        let v = r.expect(502, Some("backend_error"));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("integrity"), "{field}: {v}");
        fake.admin("POST", "corrupt", json!({"count": 0, "field": field}))
            .await;
        // Corrupted once: the retry gets an intact answer.
        fake.admin("POST", "corrupt", json!({"count": 1, "field": field}))
            .await;
        s.post_ok(&format!("/v1/keys/{alias}/{op}"), body).await;
    }
}

#[tokio::test]
async fn resource_exhausted_is_retried_then_backend_unavailable() {
    let fake = Fake::gcp().await;
    let s = sidecar(&fake, "", &adc(&fake)).await;
    sign(&s).await;
    fake.admin("POST", "throttle", json!({"count": 1})).await;
    sign(&s).await;
    assert_eq!(fake.stats().await["throttled"], 1);
    fake.admin("POST", "throttle", json!({"count": 100})).await;
    let r = s
        .post("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await;
    let body = r.expect(503, Some("backend_unavailable"));
    assert_eq!(body["error"]["retryable"], true);
    fake.admin("POST", "throttle", json!({"count": 0})).await;
    // A throttled KMS is not an unhealthy one.
    assert_eq!(s.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn versions_scheduled_for_destruction_are_key_disabled() {
    let fake = Fake::gcp().await;
    let s = sidecar(&fake, "", &adc(&fake)).await;
    let ctx = json!({"tenant": "acme"});
    let sealed = s
        .post_ok(
            "/v1/keys/enc/encrypt",
            json!({"plaintext": b64(b"secret"), "context": ctx}),
        )
        .await;
    sign(&s).await;
    for key in ["gcp-sign", "gcp-enc"] {
        fake.admin(
            "POST",
            &format!("versions/{key}/1/state"),
            json!({"state": "DESTROY_SCHEDULED"}),
        )
        .await;
    }
    s.post("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await
        .expect(409, Some("key_disabled"));
    s.post(
        "/v1/keys/enc/decrypt",
        json!({"ciphertext": sealed["ciphertext"], "context": ctx}),
    )
    .await
    .expect(409, Some("key_disabled"));
    fake.admin(
        "POST",
        "versions/gcp-sign/1/state",
        json!({"state": "ENABLED"}),
    )
    .await;
    sign(&s).await;
}

#[tokio::test]
async fn the_metadata_server_and_direct_federation_serve() {
    let fake = Fake::gcp().await;
    let metadata = sidecar(&fake, ", credentials: metadata", &fake.env_file("env.mds")).await;
    sign(&metadata).await;
    assert!(fake.stats().await["metadata_requests"].as_u64() >= Some(1));
    let direct = fake.path("external-account-direct.json");
    let federated = sidecar(
        &fake,
        &format!(
            ", credentials: external_account, credentials_file: \"{}\"",
            direct.display()
        ),
        &[],
    )
    .await;
    let before = requests(&fake, "impersonation_requests").await.len();
    sign(&federated).await;
    assert_eq!(
        requests(&fake, "impersonation_requests").await.len(),
        before,
        "a federated token used directly"
    );
}

#[tokio::test]
async fn metadata_reports_states_rotation_and_protection() {
    let fake = Fake::gcp().await;
    fake.create_key(
        "rotating",
        json!({
            "purpose": "ENCRYPT_DECRYPT", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
            "protectionLevel": "HSM", "rotationPeriod": "7776000s",
            "nextRotationTime": "2030-01-01T00:00:00Z",
        }),
    )
    .await;
    fake.create_key(
        "p384",
        json!({"purpose": "ASYMMETRIC_SIGN", "algorithm": "EC_SIGN_P384_SHA384"}),
    )
    .await;
    let config = format!(
        "backends:\n  kms: {}\nkeys:\n  rotating: {{ backend: kms, key: rotating, ops: [\"*\"] }}\n  p384: {{ backend: kms, key: p384, ops: [\"*\"] }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.gcp_backend(""),
        nix::unistd::geteuid().as_raw()
    );
    let env = adc(&fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    let meta = s.get("/v1/keys/rotating").await.ok();
    assert_eq!(meta["origin"], "hsm", "{meta}");
    assert_eq!(meta["rotation"]["period_seconds"], 7_776_000, "{meta}");
    assert_eq!(
        meta["details"]["next_rotation_time"], "2030-01-01T00:00:00Z",
        "{meta}"
    );
    assert_eq!(meta["versions"][0]["state"], "ENABLED", "{meta}");
    let v2 = s.post_ok("/v1/keys/rotating/rotate", json!({})).await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let sealed = s
        .post_ok("/v1/keys/rotating/encrypt", json!({"plaintext": b64(b"x")}))
        .await;
    assert_eq!(sealed["version"], v2.as_str(), "the new version is primary");
    // ES384 over P-384, verified by openssl with the exported PEM.
    let pem = s.get("/v1/keys/p384/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = s
        .post_ok("/v1/keys/p384/sign", json!({"message": b64(MSG)}))
        .await;
    assert!(openssl_verifies(
        fake.dir.path(),
        &pem,
        MSG,
        &unb64(&sig["signature"]),
        &["-sha384"],
        false
    ));
    // An asymmetric key's current version is its newest enabled one.
    let v2 = s.post_ok("/v1/keys/p384/rotate", json!({})).await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = s
        .post_ok("/v1/keys/p384/sign", json!({"message": b64(MSG)}))
        .await;
    assert_eq!(sig["version"], v2.as_str());
}

#[tokio::test]
async fn the_fakes_own_config_serves() {
    let fake = Fake::gcp().await;
    let config = std::fs::read_to_string(fake.path("config.yaml")).unwrap();
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    s.post_ok("/v1/keys/gcp-sign/sign", json!({"message": b64(MSG)}))
        .await;
    let envelope = s
        .post_ok(
            "/v1/keys/gcp-enc/envelope/encrypt",
            json!({"plaintext": b64(b"hello")}),
        )
        .await;
    let opened = s
        .post_ok(
            "/v1/keys/gcp-enc/envelope/decrypt",
            json!({"envelope": envelope["envelope"]}),
        )
        .await;
    assert_eq!(unb64(&opened["plaintext"]), b"hello");
    let mac = s
        .post_ok("/v1/keys/gcp-mac/mac", json!({"message": b64(MSG)}))
        .await;
    let verified = s
        .post_ok(
            "/v1/keys/gcp-mac/verify-mac",
            json!({"message": b64(MSG), "mac": mac["mac"]}),
        )
        .await;
    assert_eq!(verified["valid"], true);
}

#[tokio::test]
async fn ed25519_signs_messages_up_to_64_kib() {
    let fake = Fake::gcp().await;
    fake.create_key(
        "ed",
        json!({"purpose": "ASYMMETRIC_SIGN", "algorithm": "EC_SIGN_ED25519"}),
    )
    .await;
    let config = format!(
        "backends:\n  kms: {}\nkeys:\n  ed: {{ backend: kms, key: ed }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.gcp_backend(""),
        nix::unistd::geteuid().as_raw()
    );
    let env = adc(&fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    let pem = s.get("/v1/keys/ed/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let message = vec![7u8; 64 * 1024];
    let sig = s
        .post_ok("/v1/keys/ed/sign", json!({"message": b64(&message)}))
        .await;
    assert!(openssl_verifies(
        fake.dir.path(),
        &pem,
        &message,
        &unb64(&sig["signature"]),
        &[],
        true
    ));
    s.post(
        "/v1/keys/ed/sign",
        json!({"message": b64(vec![7u8; 64 * 1024 + 1])}),
    )
    .await
    .expect(413, Some("payload_too_large"));
}

/// A subject token for another audience than the external account's
/// workload identity provider stops the start, naming the file and both
/// audiences (the provider's `//` and `https://` forms are accepted).
#[tokio::test]
async fn a_subject_token_of_another_audience_stops_the_start() {
    let fake = Fake::gcp().await;
    let path = fake.path("subject-token");
    let wrong = fake
        .admin(
            "POST",
            "subject-token",
            json!({"write": true, "aud": "https://example.com/not-the-provider"}),
        )
        .await;
    let config = format!(
        "backends:\n  kms: {}\nkeys:\n  sign: {{ backend: kms, key: gcp-sign }}\ncallers:\n  - {{ uids: [0], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.gcp_backend("")
    );
    let env = adc(&fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &config, &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&path.display().to_string())
            && err.contains(
                "`https://example.com/not-the-provider` where `//iam.googleapis.com/projects/"
            ),
        "{err}"
    );
    assert!(!err.contains(wrong["token"].as_str().unwrap()));
    // A token for the provider is accepted.
    fake.admin("POST", "subject-token", json!({"write": true}))
        .await;
    let s = sidecar(&fake, "", &adc(&fake)).await;
    sign(&s).await;
}
