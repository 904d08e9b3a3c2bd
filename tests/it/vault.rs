//! The `vault` backend against a real OpenBao dev server: every transit
//! operation over the socket, the four auth methods (token file, AppRole,
//! Kubernetes with a TokenReview endpoint served here, JWT minted here),
//! token renewal, re-login after a server restart, and errors.

use crate::harness::{Bao, Sidecar, b64, openssl_verifies, run_tool, unb64};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The policy the README documents, taken from the README so that the docs
/// are what the tests prove sufficient.
fn readme_policy() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```hcl\n")
        .expect("README has the Vault policy in an ```hcl block")
        + 7;
    let len = readme[start..].find("```").unwrap();
    readme[start..start + len].to_owned()
}

const KEYS: &[(&str, &str)] = &[
    ("ec", "ecdsa-p256"),
    ("ec384", "ecdsa-p384"),
    ("ed", "ed25519"),
    ("rsa", "rsa-2048"),
    ("rsa4k", "rsa-4096"),
    ("aes", "aes256-gcm96"),
    ("mac", "hmac"),
];

/// Transit with the test keys (and a derived AES key), the README policy.
async fn setup_transit(bao: &Bao) {
    bao.api("POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    for (name, kind) in KEYS {
        let mut body = json!({"type": kind});
        if *kind == "hmac" {
            body["key_size"] = 32.into();
        }
        bao.api("POST", &format!("transit/keys/{name}"), body).await;
    }
    bao.api(
        "POST",
        "transit/keys/derived",
        json!({"type": "aes256-gcm96", "derived": true}),
    )
    .await;
    put_readme_policy(bao).await;
}

/// The README's policy as `sidecar`.
pub(crate) async fn put_readme_policy(bao: &Bao) {
    bao.api(
        "PUT",
        "sys/policies/acl/sidecar",
        json!({"policy": readme_policy()}),
    )
    .await;
}

/// An AppRole `sidecar` with the policy; writes role_id/secret_id files.
async fn setup_approle(bao: &Bao, dir: &Path, ttl: &str) {
    bao.api("POST", "sys/auth/approle", json!({"type": "approle"}))
        .await;
    bao.api(
        "POST",
        "auth/approle/role/sidecar",
        json!({"token_policies": ["sidecar"], "token_ttl": ttl, "token_max_ttl": "1h"}),
    )
    .await;
    let role_id = bao
        .api("GET", "auth/approle/role/sidecar/role-id", Value::Null)
        .await;
    let secret_id = bao
        .api("POST", "auth/approle/role/sidecar/secret-id", json!({}))
        .await;
    std::fs::write(dir.join("role_id"), role_id["role_id"].as_str().unwrap()).unwrap();
    std::fs::write(
        dir.join("secret_id"),
        secret_id["secret_id"].as_str().unwrap(),
    )
    .unwrap();
}

fn config(bao: &Bao, auth: &str) -> String {
    let keys: String = KEYS
        .iter()
        .chain(&[("derived", "")])
        .map(|(name, _)| format!("  {name}: {{ backend: vault, key: {name}, ops: [\"*\"] }}\n"))
        .collect();
    format!(
        "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {auth}\nkeys:\n{keys}callers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        nix::unistd::getuid()
    )
}

/// A signing key for test-minted service-account JWTs (EC P-256 PEM pair).
struct Issuer {
    private: Vec<u8>,
    pub public: String,
}

impl Issuer {
    fn new(dir: &Path, name: &str) -> Issuer {
        let key = dir.join(format!("{name}.key"));
        let k = key.display().to_string();
        let (ok, _, err) = run_tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &k,
            ],
            "install it with `apt-get install openssl`",
        );
        assert!(ok, "{err}");
        let (ok, public, err) = run_tool(
            "openssl",
            &["pkey", "-in", &k, "-pubout"],
            "install openssl",
        );
        assert!(ok, "{err}");
        Issuer {
            private: std::fs::read(&key).unwrap(),
            public,
        }
    }

    /// A projected service-account token as the kubelet would write it.
    fn mint(&self, namespace: &str, account: &str, audience: &str, lifetime: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "aud": [audience],
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": format!("uid-{namespace}-{account}")},
            },
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(&self.private).unwrap(),
        )
        .unwrap()
    }

    fn claims(&self, token: &str) -> Option<Value> {
        let public = jsonwebtoken::DecodingKey::from_ec_pem(self.public.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &public, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// JWT auth trusting `issuer`, role `app` for `apps/app` with audience `vault`.
async fn setup_jwt(bao: &Bao, issuer: &Issuer, ttl: &str, max_ttl: &str) {
    bao.api("POST", "sys/auth/jwt", json!({"type": "jwt"}))
        .await;
    configure_jwt(bao, issuer).await;
    bao.api(
        "POST",
        "auth/jwt/role/app",
        json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_audiences": ["vault"],
            "bound_subject": "system:serviceaccount:apps:app",
            "token_policies": ["sidecar"],
            "token_ttl": ttl,
            "token_max_ttl": max_ttl,
        }),
    )
    .await;
}

async fn configure_jwt(bao: &Bao, issuer: &Issuer) {
    bao.api(
        "POST",
        "auth/jwt/config",
        json!({"jwt_validation_pubkeys": [issuer.public]}),
    )
    .await;
}

fn write(path: &Path, contents: &str) {
    // Replace atomically, as the kubelet swaps projected files.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn ready(s: &Sidecar) -> Value {
    ready_within(s, Duration::from_secs(20)).await
}

async fn ready_within(s: &Sidecar, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = s.get("/readyz").await;
        if r.status == 200 {
            return r.json();
        }
        assert!(Instant::now() < deadline, "not ready: {:?}", r.json());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `/readyz` says the Vault backend is not ready for a reason
/// that contains every one of `words`, and returns the reason.
async fn not_ready_because(s: &Sidecar, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.get("/readyz").await;
        let v = r.json();
        let reason = v["backends"]["vault"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if r.status == 503 && words.iter().all(|w| reason.contains(w)) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "readyz {}: {v}, not for {words:?}\n{}",
            r.status,
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the log holds `message` at least `count` times.
async fn logged(s: &Sidecar, message: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.logs().matches(message).count() < count {
        assert!(
            Instant::now() < deadline,
            "`{message}` not logged {count} times:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sign call refused because the sidecar's token is gone (401, whatever
/// Vault's own 403 said).
async fn sign_is_unauthenticated(s: &Sidecar) {
    let v = s
        .post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await
        .expect(401, Some("unauthenticated"));
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("revoked"), "{v}");
    assert_eq!(v["error"]["retryable"], false, "{v}");
}

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

    // min_decryption_version retires version 1: its ciphertext no longer decrypts.
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
    .expect(422, Some("decryption_failed"));
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
async fn token_file_in_a_namespace_is_re_read_when_it_changes() {
    let bao = Bao::start().await;
    bao.api("POST", "sys/namespaces/team", json!({})).await;
    let ns = Some("team");
    bao.api_in(ns, "POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    bao.api_in(ns, "POST", "transit/keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    bao.api_in(
        ns,
        "PUT",
        "sys/policies/acl/sidecar",
        json!({"policy": readme_policy()}),
    )
    .await;
    let new_token = || async {
        let auth = bao
            .api_in(
                ns,
                "POST",
                "auth/token/create",
                json!({"policies": ["sidecar"], "ttl": "1h"}),
            )
            .await;
        auth["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let first = new_token().await;
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &format!("{first}\n"));
    let cfg = format!(
        "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        file.display(),
        nix::unistd::getuid()
    );
    // The namespace comes from VAULT_NAMESPACE (or `namespace:` in the config).
    let s = Sidecar::start_with_env(&cfg, &[("VAULT_NAMESPACE", "team")]).await;
    s.secret(first.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    // A new token in the file is picked up; the old one can then go.
    let second = new_token().await;
    s.secret(second.clone());
    write(&file, &second);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.logs().matches("logged in to Vault").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new token was not read:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bao.api_in(ns, "POST", "auth/token/revoke", json!({"token": first}))
        .await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
}

/// A TokenReview endpoint like the Kubernetes API server's: it authenticates
/// tokens signed by the test issuer and answers who they belong to.
async fn token_review_server(issuer: Issuer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = std::sync::Arc::new(issuer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let issuer = issuer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let issuer = issuer.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let token = review["spec"]["token"].as_str().unwrap_or("");
                            let status = match issuer.claims(token) {
                                Some(c)
                                    if path == "/apis/authentication.k8s.io/v1/tokenreviews" =>
                                {
                                    let k = &c["kubernetes.io"];
                                    json!({
                                        "authenticated": true,
                                        "user": {
                                            "username": c["sub"],
                                            "uid": k["serviceaccount"]["uid"],
                                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", k["namespace"].as_str().unwrap())],
                                        },
                                        "audiences": c["aud"],
                                    })
                                }
                                _ => {
                                    json!({"authenticated": false, "error": "invalid bearer token"})
                                }
                            };
                            let answer = json!({
                                "apiVersion": "authentication.k8s.io/v1",
                                "kind": "TokenReview",
                                "status": status,
                            });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn kubernetes_auth_through_token_review() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "sa");
    let good = issuer.mint("apps", "app", "vault", 3600);
    let other_namespace = issuer.mint("other", "app", "vault", 3600);
    let forged = Issuer::new(creds.path(), "forger").mint("apps", "app", "vault", 3600);
    let review = token_review_server(issuer).await;
    // The CA is required by the auth method's config; TokenReview is plain HTTP here.
    let (ca, _, _) = crate::harness::issue_cert(creds.path(), "review");
    bao.api("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": review,
            "kubernetes_ca_cert": std::fs::read_to_string(&ca).unwrap(),
            "disable_local_ca_jwt": true,
        }),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/role/app",
        json!({
            "bound_service_account_names": ["app"],
            "bound_service_account_namespaces": ["apps"],
            "audience": "vault",
            "token_policies": ["sidecar"],
            "token_ttl": "1h",
        }),
    )
    .await;

    let start = |token: &str| {
        let file = creds.path().join(format!("token-{}", uuid::Uuid::new_v4()));
        write(&file, token);
        let cfg = config(
            &bao,
            &format!(
                "{{ method: kubernetes, role: app, token_file: {} }}",
                file.display()
            ),
        );
        async move { Sidecar::start(&cfg).await }
    };
    let s = start(&good).await;
    s.secret(good.clone());
    ready(&s).await;
    let signed = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
    assert_eq!(signed["version"], "1");
    drop(s);

    for (token, what) in [
        (&other_namespace, "another namespace"),
        (&forged, "a forged token"),
    ] {
        let s = start(token).await;
        s.secret(token.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = s.get("/readyz").await;
        assert_eq!(r.status, 503, "{what}: {:?}", r.json());
        let v = r.json();
        let reason = v["backends"]["vault"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("Kubernetes login as role `app` failed"),
            "{what}: {reason}"
        );
        s.post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await
            .expect(401, Some("unauthenticated"));
        assert_eq!(s.get("/healthz").await.status, 200);
    }
}

#[tokio::test]
async fn jwt_auth_renews_short_tokens_and_rereads_the_token_file() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "one");
    // 4 s tokens, at most 10 s: renewals, then re-logins near the max TTL.
    setup_jwt(&bao, &issuer, "4s", "10s").await;
    let file = creds.path().join("token");
    let first = issuer.mint("apps", "app", "vault", 3600);
    write(&file, &first);
    let s = Sidecar::start(&config(
        &bao,
        &format!(
            "{{ method: jwt, role: app, token_file: {} }}",
            file.display()
        ),
    ))
    .await;
    s.secret(first.clone());
    ready(&s).await;

    // The cluster's signing key rotates: the kubelet writes a token from the
    // new key and Vault trusts only that key from now on.
    let started = Instant::now();
    let mut rotated = false;
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(22) {
        if !rotated && started.elapsed() > Duration::from_secs(3) {
            let issuer2 = Issuer::new(creds.path(), "two");
            let second = issuer2.mint("apps", "app", "vault", 3600);
            s.secret(second.clone());
            write(&file, &second);
            configure_jwt(&bao, &issuer2).await;
            rotated = true;
        }
        let r = s
            .post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await;
        assert_eq!(
            r.status,
            200,
            "call {calls} at {:?}: {:?}",
            started.elapsed(),
            r.json()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = s.logs();
    let logins = logs.matches("logged in to Vault").count();
    let renewals = logs.matches("renewed the Vault token").count();
    assert!(
        logins >= 3,
        "{logins} logins in 22 s of 10 s max-TTL tokens"
    );
    assert!(renewals >= 2, "{renewals} renewals of 4 s tokens");
    let metrics = String::from_utf8_lossy(&s.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("kms_sidecar_credential_expiry_timestamp_seconds{backend=\"vault\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn recovers_when_vault_restarts_and_reports_bad_jwts() {
    let mut bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "sa");
    setup_jwt(&bao, &issuer, "1h", "2h").await;
    let file = creds.path().join("token");
    let token = issuer.mint("apps", "app", "vault", 3600);
    write(&file, &token);
    let cfg = config(
        &bao,
        &format!(
            "{{ method: jwt, role: app, token_file: {} }}",
            file.display()
        ),
    );
    let s = Sidecar::start(&cfg).await;
    s.secret(token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    // A dev server forgets everything: set it up again; the sidecar finds
    // its token unknown and logs in again, without a restart.
    bao.restart().await;
    setup_transit(&bao).await;
    setup_jwt(&bao, &issuer, "1h", "2h").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s
            .post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {:?}\n{}",
            r.json(),
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(s);

    // Wrong audience, expired: not ready with the reason, no crash.
    for (bad, what) in [
        (
            issuer.mint("apps", "app", "not-vault", 3600),
            "wrong audience",
        ),
        (issuer.mint("apps", "app", "vault", -600), "expired"),
    ] {
        write(&file, &bad);
        let s = Sidecar::start(&cfg).await;
        s.secret(bad.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = s.get("/readyz").await;
        assert_eq!(r.status, 503, "{what}: {:?}", r.json());
        let v = r.json();
        let reason = v["backends"]["vault"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("JWT login as role `app` failed"),
            "{what}: {reason}"
        );
        assert_eq!(s.get("/healthz").await.status, 200, "{what}");
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca_from_the_vault_environment() {
    let bao = Bao::start_tls().await;
    bao.api("POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    bao.api("POST", "transit/keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &bao.root_token);
    // No address or CA in the config: VAULT_ADDR and VAULT_CACERT say.
    let cfg = format!(
        "backends:\n  vault:\n    type: vault\n    auth: {{ method: token, token_file: {} }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        file.display(),
        nix::unistd::getuid()
    );
    let ca = bao.ca.clone().unwrap().display().to_string();
    let env = [
        ("VAULT_ADDR", bao.url.as_str()),
        ("VAULT_CACERT", ca.as_str()),
    ];
    let s = Sidecar::start_with_env(&cfg, &env).await;
    s.secret(bao.root_token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
    drop(s);

    // Without the CA the server's certificate is not trusted: not ready, and why.
    let s = Sidecar::start_with_env(&cfg, &env[..1]).await;
    s.secret(bao.root_token.clone());
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let reason = r.json()["backends"]["vault"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("certificate"), "{reason}");
}

/// Vault answers 403 both to a token its policy does not cover and to a
/// token it no longer accepts. A revoked token makes calls `unauthenticated`
/// and the backend not ready, and the sidecar logs in again: at once, then
/// with backoff while the login fails; a policy denial stays `forbidden`.
#[tokio::test]
async fn a_revoked_vault_token_is_unauthenticated_and_approle_logs_in_again() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    // A genuine denial: this policy refuses signing with `ed`.
    let policy = format!(
        "{}\npath \"transit/sign/ed\" {{\n  capabilities = [\"deny\"]\n}}\n",
        readme_policy()
    );
    bao.api("PUT", "sys/policies/acl/sidecar", json!({"policy": policy}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    setup_approle(&bao, creds.path(), "1h").await;
    let secret_id_file = creds.path().join("secret_id");
    let d = creds.path().display();
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}"),
    ))
    .await;
    let first_secret_id = std::fs::read_to_string(&secret_id_file).unwrap();
    s.secret(first_secret_id.clone());
    s.secret(std::fs::read_to_string(creds.path().join("role_id")).unwrap());
    s.secret(bao.root_token.clone());
    ready(&s).await;
    let msg = json!({"message": b64(b"m")});
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;

    // The policy's refusal with a valid token is the caller's 403, and the
    // token is kept.
    let v = s
        .post("/v1/keys/ed/sign", msg.clone())
        .await
        .expect(403, Some("forbidden"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    assert_eq!(s.logs().matches("logged in to Vault").count(), 1);

    // The operator revokes every token AppRole issued and destroys the
    // secret id, so that logging in again fails too.
    bao.api(
        "POST",
        "auth/approle/role/sidecar/secret-id/destroy",
        json!({"secret_id": first_secret_id.trim()}),
    )
    .await;
    bao.api(
        "PUT",
        "sys/leases/revoke-prefix/auth/approle/login",
        Value::Null,
    )
    .await;
    sign_is_unauthenticated(&s).await;
    // The login was tried at once and failed: not ready, saying why.
    let reason = not_ready_because(&s, &["revoked", "AppRole login failed"]).await;
    assert!(reason.contains("Vault token"), "{reason}");
    sign_is_unauthenticated(&s).await;
    assert_eq!(s.get("/healthz").await.status, 200);

    // A new secret id in the file: a later login (with backoff) succeeds.
    let fresh = bao
        .api("POST", "auth/approle/role/sidecar/secret-id", json!({}))
        .await;
    let fresh = fresh["secret_id"].as_str().unwrap().to_owned();
    s.secret(fresh.clone());
    write(&secret_id_file, &fresh);
    ready_within(&s, Duration::from_secs(60)).await;
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    assert_eq!(s.logs().matches("logged in to Vault").count(), 2);

    // Revoked again while the secret id is good: the refused call is 401,
    // the sidecar logs in again at once and the next calls succeed.
    bao.api(
        "PUT",
        "sys/leases/revoke-prefix/auth/approle/login",
        Value::Null,
    )
    .await;
    sign_is_unauthenticated(&s).await;
    logged(&s, "logged in to Vault", 3).await;
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    ready(&s).await;
}

/// A `token` method's token revoked by an operator: calls are
/// `unauthenticated` and the backend not ready until the file holds a token
/// Vault accepts.
#[tokio::test]
async fn a_revoked_vault_token_file_is_unauthenticated_until_the_file_is_replaced() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let new_token = || async {
        let auth = bao
            .api(
                "POST",
                "auth/token/create",
                json!({"policies": ["sidecar"], "ttl": "1h"}),
            )
            .await;
        auth["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let first = new_token().await;
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &first);
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: token, token_file: {} }}", file.display()),
    ))
    .await;
    s.secret(first.clone());
    s.secret(bao.root_token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    bao.api("POST", "auth/token/revoke", json!({"token": first}))
        .await;
    sign_is_unauthenticated(&s).await;
    let path = file.display().to_string();
    not_ready_because(&s, &["revoked", "Vault token", &path]).await;
    // It stays so while the file holds the revoked token: the next login
    // (with backoff) reads it again and fails again.
    logged(&s, "credential refresh failed", 2).await;
    not_ready_because(&s, &["revoked", &path]).await;
    sign_is_unauthenticated(&s).await;

    let second = new_token().await;
    s.secret(second.clone());
    write(&file, &second);
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
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
