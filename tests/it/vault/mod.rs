//! The `vault` backend against a real OpenBao dev server: every transit
//! operation over the socket and the errors ([`transit`]), the four auth
//! methods — token file, AppRole, Kubernetes with a TokenReview endpoint
//! served here, JWT minted here — token renewal, revocation and re-login
//! after a server restart ([`auth`]). The shared set-up is here.

mod auth;
mod transit;

use crate::harness::{Bao, Sidecar, b64, openssl_verifies, run_tool, unb64};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The policy `docs/vault.md` documents, taken from that page so that the
/// docs are what the tests prove sufficient.
fn documented_policy() -> String {
    let page = crate::docs::doc("docs/vault.md");
    let start = page
        .find("```hcl\n")
        .expect("docs/vault.md has the Vault policy in an ```hcl block")
        + 7;
    let len = page[start..].find("```").unwrap();
    page[start..start + len].to_owned()
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

/// Transit with the test keys (and a derived AES key), the documented policy.
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
    put_documented_policy(bao).await;
}

/// The documented policy (`docs/vault.md`) as `sidecar`.
pub(crate) async fn put_documented_policy(bao: &Bao) {
    bao.api(
        "PUT",
        "sys/policies/acl/sidecar",
        json!({"policy": documented_policy()}),
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
    s.ready_within(Duration::from_secs(20)).await
}

/// Waits until `/readyz` says the Vault backend is not ready for a reason
/// that contains every one of `words`, and returns the reason.
async fn not_ready_because(s: &Sidecar, words: &[&str]) -> String {
    s.not_ready_because("vault", words, Duration::from_secs(20))
        .await
}

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
