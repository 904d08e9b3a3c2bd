//! The `azure` backend against the Key Vault contract fake, beyond the
//! conformance suite: credentials (the federated token file replaced, access
//! tokens expiring and revoked, managed identity and client secret),
//! throttling with `Retry-After`, disabled versions, signatures checked with
//! openssl, and the fake's `config.yaml` as `make fake-azure` writes it.

use crate::harness::{Fake, Sidecar, b64, eventually, openssl_verifies, unb64};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MSG: &[u8] = b"pay 10 EUR to bob";

/// A sidecar on `fake` with `backend_extra` fields, keys `sign` (the fake's
/// `azure-sign`) and `rsa` (`azure-rsa`, RSA-OAEP), and `env` on top of the
/// fake's env file.
async fn sidecar(fake: &Fake, backend_extra: &str, env: &[(&str, String)]) -> Sidecar {
    let config = format!(
        "backends:\n  kv: {}\nkeys:\n  sign: {{ backend: kv, key: azure-sign }}\n  rsa: {{ backend: kv, key: azure-rsa, algorithm: rsa-oaep-2048-sha256 }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.azure_backend(backend_extra),
        nix::unistd::geteuid().as_raw()
    );
    let mut vars = fake.env();
    vars.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
    vars.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &vars).await;
    for file in ["federated-token", "client-secret", "identity-header"] {
        s.secret(std::fs::read_to_string(fake.path(file)).unwrap_or_default());
    }
    s
}

async fn sign(s: &Sidecar) -> Value {
    s.post_ok("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await
}

/// The token requests the fake answered, and how many succeeded.
async fn token_requests(fake: &Fake) -> Vec<Value> {
    fake.stats().await["token_requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.trim().as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn signatures_verify_with_openssl_in_der_and_raw() {
    let fake = Fake::azure().await;
    let s = sidecar(&fake, "", &[]).await;
    let pem = s.get("/v1/keys/sign/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let der = unb64(&sign(&s).await["signature"]);
    assert!(
        openssl_verifies(fake.dir.path(), &pem, MSG, &der, &[], false),
        "a DER ES256 signature"
    );
    let raw = s
        .post_ok(
            "/v1/keys/sign/sign",
            json!({"message": b64(MSG), "format": "raw"}),
        )
        .await;
    assert_eq!(unb64(&raw["signature"]).len(), 64, "raw r‖s of P-256");
    let verified = s
        .post_ok(
            "/v1/keys/sign/verify",
            json!({"message": b64(MSG), "signature": raw["signature"]}),
        )
        .await;
    assert_eq!(verified["valid"], true);
}

#[tokio::test]
async fn p384_and_p521_keys_sign_es384_and_es512() {
    let fake = Fake::azure().await;
    fake.create_key("p384", json!({"kty": "EC", "crv": "P-384"}))
        .await;
    fake.create_key("p521", json!({"kty": "EC-HSM", "crv": "P-521"}))
        .await;
    let config = format!(
        "backends:\n  kv: {}\nkeys:\n  p384: {{ backend: kv, key: p384 }}\n  p521: {{ backend: kv, key: p521 }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.azure_backend(""),
        nix::unistd::geteuid().as_raw()
    );
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    for (alias, algorithm, width, origin, hash) in [
        ("p384", "ecdsa-p384-sha384", 96, "software", "-sha384"),
        ("p521", "ecdsa-p521-sha512", 132, "hsm", "-sha512"),
    ] {
        let meta = s.get(&format!("/v1/keys/{alias}")).await.ok();
        assert_eq!(meta["algorithm"], algorithm, "{meta}");
        assert_eq!(meta["origin"], origin, "{meta}");
        let pk = s.get(&format!("/v1/keys/{alias}/public-key")).await.ok();
        let pem = pk["pem"].as_str().unwrap();
        let der = s
            .post_ok(
                &format!("/v1/keys/{alias}/sign"),
                json!({"message": b64(MSG)}),
            )
            .await;
        assert!(
            openssl_verifies(
                fake.dir.path(),
                pem,
                MSG,
                &unb64(&der["signature"]),
                &[hash],
                false
            ),
            "{alias}: openssl verifies the DER signature"
        );
        let raw = s
            .post_ok(
                &format!("/v1/keys/{alias}/sign"),
                json!({"message": b64(MSG), "format": "raw"}),
            )
            .await;
        assert_eq!(unb64(&raw["signature"]).len(), width, "{alias}");
        let verified = s
            .post_ok(
                &format!("/v1/keys/{alias}/verify"),
                json!({"message": b64(MSG), "signature": raw["signature"]}),
            )
            .await;
        assert_eq!(verified["valid"], true, "{alias}");
    }
}

#[tokio::test]
async fn a_replaced_federated_token_is_used_at_the_next_refresh() {
    let fake = Fake::azure().await;
    // Access tokens of 3 s: the sidecar refreshes about every 2 s.
    fake.admin("POST", "settings", json!({"access_token_ttl": 3}))
        .await;
    let s = sidecar(&fake, ", credential_refresh: { min: 1s }", &[]).await;
    sign(&s).await;
    let first = token_requests(&fake).await.len();
    // Access tokens expire and are refreshed before they do: calls never fail.
    for _ in 0..20 {
        sign(&s).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refreshed = token_requests(&fake).await.len();
    assert!(
        refreshed >= first + 2,
        "the access token was refreshed before expiry ({first} → {refreshed} token requests)"
    );
    // Kubelet replaces the projected token: the next refresh sends the new one.
    let new = fake.federated_token(3600).await;
    s.secret(new.clone());
    let path = fake.path("federated-token");
    std::fs::write(path.with_extension("tmp"), &new).unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    let want = sha256_hex(&new);
    eventually(
        Duration::from_secs(10),
        "a token request with the new federated token",
        || async {
            token_requests(&fake)
                .await
                .iter()
                .any(|r| r["assertion_sha256"] == want.as_str() && r["ok"] == true)
        },
    )
    .await;
    sign(&s).await;
    assert!(
        token_requests(&fake).await.iter().all(|r| r["ok"] == true),
        "no token request failed"
    );
}

#[tokio::test]
async fn a_revoked_access_token_is_replaced_within_the_call() {
    let fake = Fake::azure().await;
    // Every log line, the SDK's included: the federated token and the
    // client secret must still not show (checked when `s` drops).
    let s = sidecar(&fake, "", &[("RUST_LOG", "trace".into())]).await;
    sign(&s).await;
    let before = token_requests(&fake).await.len();
    fake.admin("POST", "revoke", json!({})).await;
    // Key Vault answers 401; the sidecar gets a new token and signs.
    sign(&s).await;
    assert!(token_requests(&fake).await.len() > before, "a new token");
    assert!(s.get("/readyz").await.status == 200);
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after() {
    let fake = Fake::azure().await;
    let s = sidecar(&fake, "", &[]).await;
    sign(&s).await;
    fake.admin("POST", "throttle", json!({"count": 1, "retry_after": 2}))
        .await;
    let started = Instant::now();
    sign(&s).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the retry waited Retry-After ({:?})",
        started.elapsed()
    );
    assert_eq!(fake.stats().await["throttled"], 1);
    // Longer than the call's timeout (5 s): the caller is told when to retry.
    fake.admin("POST", "throttle", json!({"count": 50, "retry_after": 30}))
        .await;
    let r = s
        .post("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await;
    let body = r.expect(503, Some("backend_unavailable"));
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    // A throttled vault is not an unhealthy one.
    let ready = s.get("/readyz").await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
}

#[tokio::test]
async fn a_disabled_version_is_key_disabled_and_works_again_once_enabled() {
    let fake = Fake::azure().await;
    let s = sidecar(&fake, "", &[]).await;
    let signed = sign(&s).await;
    let version = signed["version"].as_str().unwrap().to_owned();
    let sealed = s
        .post_ok(
            "/v1/keys/rsa/encrypt",
            json!({"plaintext": b64(b"secret"), "context": {"a": "b"}}),
        )
        .await;
    for (key, enabled) in [("azure-sign", false), ("azure-rsa", false)] {
        let v = if key == "azure-sign" {
            version.clone()
        } else {
            sealed["version"].as_str().unwrap().to_owned()
        };
        fake.admin(
            "POST",
            &format!("keys/{key}/{v}/enabled"),
            json!({"enabled": enabled}),
        )
        .await;
    }
    let r = s
        .post("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await;
    r.expect(409, Some("key_disabled"));
    let r = s
        .post(
            "/v1/keys/rsa/decrypt",
            json!({"ciphertext": sealed["ciphertext"], "context": {"a": "b"}}),
        )
        .await;
    r.expect(409, Some("key_disabled"));
    fake.admin(
        "POST",
        &format!("keys/azure-sign/{version}/enabled"),
        json!({"enabled": true}),
    )
    .await;
    sign(&s).await;
}

#[tokio::test]
async fn rsa_oaep_encryption_and_metadata() {
    let fake = Fake::azure().await;
    let s = sidecar(&fake, "", &[]).await;
    let ctx = json!({"tenant": "acme"});
    let sealed = s
        .post_ok(
            "/v1/keys/rsa/encrypt",
            json!({"plaintext": b64(b"secret"), "context": ctx}),
        )
        .await;
    let opened = s
        .post_ok(
            "/v1/keys/rsa/decrypt",
            json!({"ciphertext": sealed["ciphertext"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&opened["plaintext"]), b"secret");
    let meta = s.get("/v1/keys/rsa").await.ok();
    assert_eq!(meta["algorithm"], "rsa-oaep-2048-sha256", "{meta}");
    let details = &meta["details"];
    assert_eq!(details["key_type"], "RSA", "{meta}");
    assert!(
        details["rotation_policy"].as_str().is_some(),
        "the rotation policy is reported: {meta}"
    );
    let stats = fake.stats().await;
    assert!(stats["keyvault_requests"]["encrypt"].as_u64() >= Some(1));
}

#[tokio::test]
async fn managed_identity_and_client_secret_credentials() {
    let fake = Fake::azure().await;
    let header = std::fs::read_to_string(fake.path("identity-header")).unwrap();
    let managed = sidecar(
        &fake,
        ", credential: managed_identity",
        &[
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", fake.url)),
            ("IDENTITY_HEADER", header.trim().to_owned()),
            ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent".into()),
        ],
    )
    .await;
    sign(&managed).await;
    let secret_file = fake.path("client-secret");
    let secret = sidecar(
        &fake,
        &format!(
            ", credential: client_secret, client_secret_file: \"{}\"",
            secret_file.display()
        ),
        &[("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent".into())],
    )
    .await;
    sign(&secret).await;
    let grants: Vec<String> = token_requests(&fake)
        .await
        .iter()
        .filter(|r| r["ok"] == true)
        .filter_map(|r| r["grant"].as_str().map(str::to_owned))
        .collect();
    for grant in ["managed_identity", "client_secret"] {
        assert!(grants.iter().any(|g| g == grant), "{grant} in {grants:?}");
    }
}

/// An expired federated token stops the start, naming the file; one with
/// another audience too. Entra's own refusal (AADSTS700024) is what a
/// token that expires later gets: not ready, its reason led by the file's.
#[tokio::test]
async fn an_expired_federated_token_stops_the_start_or_is_not_ready_with_the_reason() {
    let fake = Fake::azure().await;
    let path = fake.path("federated-token");
    let config = format!(
        "backends:\n  kv: {}\nkeys:\n  sign: {{ backend: kv, key: azure-sign }}\ncallers:\n  - {{ uids: [0], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.azure_backend("")
    );
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (token, words) in [
        (fake.federated_token(-60).await, "expired at"),
        (
            fake.federated_token_for(3600, "api://SomethingElse").await,
            "`api://SomethingElse` where `api://AzureADTokenExchange`",
        ),
    ] {
        std::fs::write(&path, &token).unwrap();
        let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &config, &env);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(words),
            "{words}: {err}"
        );
        assert!(!err.contains(&token), "the token is not printed");
    }
    // Expired while running, and refused by Entra at the next exchange.
    let short = fake.federated_token(2).await;
    std::fs::write(&path, &short).unwrap();
    let s = sidecar(&fake, "", &[]).await;
    s.secret(short);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    fake.revoke_access_tokens().await;
    // The next call finds its access token revoked; the exchange for a new
    // one is refused: the expired file is why.
    let r = s
        .post("/v1/keys/sign/sign", json!({"message": b64(MSG)}))
        .await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    crate::harness::eventually(std::time::Duration::from_secs(10), "not ready", || async {
        s.get("/readyz").await.status == 503
    })
    .await;
    let text = String::from_utf8_lossy(&s.get("/readyz").await.body).to_string();
    assert!(
        text.contains("expired at"),
        "the file's problem leads: {text}"
    );
}

#[tokio::test]
async fn the_fakes_own_config_serves() {
    let fake = Fake::azure().await;
    let config = std::fs::read_to_string(fake.path("config.yaml")).unwrap();
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The config names its own socket; the harness's goes first.
    let s = Sidecar::start_with_env(&config, &env).await;
    let signed = s
        .post_ok("/v1/keys/azure-sign/sign", json!({"message": b64(MSG)}))
        .await;
    assert!(!signed["signature"].as_str().unwrap().is_empty());
    let envelope = s
        .post_ok(
            "/v1/keys/azure-rsa/envelope/encrypt",
            json!({"plaintext": b64(b"hello")}),
        )
        .await;
    let opened = s
        .post_ok(
            "/v1/keys/azure-rsa/envelope/decrypt",
            json!({"envelope": envelope["envelope"]}),
        )
        .await;
    assert_eq!(unb64(&opened["plaintext"]), b"hello");
}

#[tokio::test]
async fn a_pinned_version_stays_pinned_across_rotations() {
    let fake = Fake::azure().await;
    let s = sidecar(&fake, "", &[]).await;
    let v1 = sign(&s).await["version"].as_str().unwrap().to_owned();
    let config = format!(
        "backends:\n  kv: {}\nkeys:\n  latest: {{ backend: kv, key: azure-sign, ops: [\"*\"] }}\n  pinned: {{ backend: kv, key: azure-sign/{v1}, ops: [\"*\"] }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        fake.azure_backend(""),
        nix::unistd::geteuid().as_raw()
    );
    drop(s);
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    let v2 = s.post_ok("/v1/keys/latest/rotate", json!({})).await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(v1, v2);
    let body = json!({"message": b64(MSG)});
    assert_eq!(
        s.post_ok("/v1/keys/latest/sign", body.clone()).await["version"],
        v2.as_str()
    );
    assert_eq!(
        s.post_ok("/v1/keys/pinned/sign", body).await["version"],
        v1.as_str()
    );
    let meta = s.get("/v1/keys/pinned").await.ok();
    assert_eq!(meta["current_version"], v1.as_str(), "{meta}");
    s.post("/v1/keys/pinned/rotate", json!({}))
        .await
        .expect(422, Some("operation_not_supported"));
}
