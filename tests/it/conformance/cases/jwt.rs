//! JWTs signed by the backend's keys: they verify with the sidecar's JWKS in
//! the `jsonwebtoken` crate and in Python's PyJWT, as another service would,
//! and with `POST /v1/jwt/verify`; a tampered payload, a `kid` that names
//! no enabled version, and an expired token are rejected by all three; a
//! rotation keeps tokens signed before it verifiable.

use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The claims of a token verified by the `jsonwebtoken` crate with the JWK
/// of its `kid` in `jwks`.
fn rust_verify(jwks: &Value, token: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = (jwks["keys"].as_array().unwrap().iter())
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("no key {kid} in the JWKS"))?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

/// The claims of a token verified by PyJWT with the JWK of its `kid`.
fn python_verify(jwks: &Value, token: &str) -> Result<Value, String> {
    const SCRIPT: &str = r#"
import json, sys, jwt
jwks, token = json.loads(sys.argv[1]), sys.argv[2]
kid = jwt.get_unverified_header(token)["kid"]
key = next(k for k in jwks["keys"] if k["kid"] == kid)
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], options={"verify_aud": False})
print(json.dumps(claims))
"#;
    let (ok, out, err) = crate::harness::run_tool(
        "python3",
        &["-c", SCRIPT, &jwks.to_string(), token],
        "install PyJWT and cryptography for python3 (`make test` does)",
    );
    assert!(
        !err.contains("No module named"),
        "PyJWT is missing: {err} (`make test` installs it)"
    );
    if ok {
        Ok(serde_json::from_str(&out).unwrap())
    } else {
        Err(err)
    }
}

fn b64url(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Env {
    /// A JWT of `alias` over `claims` (the answer).
    async fn jwt(&self, alias: &str, claims: Value) -> Value {
        self.ok(alias, "jwt", json!({"claims": claims})).await
    }

    /// `POST /v1/jwt/verify`'s answer.
    async fn jwt_verify(&self, token: &str) -> Value {
        let r = self.s.post("/v1/jwt/verify", json!({"jwt": token})).await;
        self.expect(&r, "jwt/verify", 200, None)
    }

    /// `token` verifies with the JWKS in Rust, in Python and in the sidecar,
    /// with `claims` among its claims.
    async fn jwt_verifies(&self, token: &str, claims: &Value) {
        let jwks = self.get_ok("/v1/jwks").await;
        let t = self;
        for (who, verified) in [
            ("jsonwebtoken", rust_verify(&jwks, token)),
            ("PyJWT", python_verify(&jwks, token)),
        ] {
            let got = verified.unwrap_or_else(|e| panic!("{t}: {who} refused the token: {e}"));
            for (name, value) in claims.as_object().unwrap() {
                assert_eq!(&got[name], value, "{t}: {who}: claim {name}");
            }
        }
        let v = self.jwt_verify(token).await;
        assert_eq!(v["valid"], true, "{t}: jwt/verify: {v}");
    }

    /// `token` is rejected in Rust, in Python and in the sidecar.
    async fn jwt_rejected(&self, token: &str, what: &str) {
        let jwks = self.get_ok("/v1/jwks").await;
        let t = self;
        assert!(
            rust_verify(&jwks, token).is_err(),
            "{t}: jsonwebtoken took {what}"
        );
        assert!(
            python_verify(&jwks, token).is_err(),
            "{t}: PyJWT took {what}"
        );
        let v = self.jwt_verify(token).await;
        assert_eq!(v["valid"], false, "{t}: jwt/verify took {what}: {v}");
        assert!(v["reason"].is_string(), "{t}: {v}");
    }
}

async fn jwt_verifies_with_the_jwks(t: &Env, alias: &str, alg: &str) {
    let claims = json!({"sub": "svc-a", "aud": "svc-b", "scope": "conformance"});
    let made = t.jwt(alias, claims.clone()).await;
    assert_eq!(made["alg"], alg, "{t}: {made}");
    let kid = made["kid"].as_str().unwrap();
    assert!(kid.starts_with(&format!("{alias}/")), "{t}: {made}");
    let token = made["jwt"].as_str().unwrap();
    t.s.secret(token);
    t.jwt_verifies(token, &claims).await;

    let parts: Vec<&str> = token.split('.').collect();
    let forged = json!({"sub": "admin", "aud": "svc-b", "exp": now() + 600});
    let tampered = format!("{}.{}.{}", parts[0], b64url(&forged), parts[2]);
    t.jwt_rejected(&tampered, "a tampered payload").await;

    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    header["kid"] = format!("{alias}/999999").into();
    let other_kid = format!("{}.{}.{}", b64url(&header), parts[1], parts[2]);
    t.jwt_rejected(&other_kid, "a kid of no version").await;

    // `jwt` signs no `exp` in the past: an expired token is the same
    // signing input signed with `sign` (JOSE's raw form).
    let claims = json!({"sub": "svc-a", "iat": now() - 7200, "exp": now() - 3600});
    let input = format!("{}.{}", parts[0], b64url(&claims));
    let signed = t
        .ok(
            alias,
            "sign",
            json!({"message": crate::harness::b64(&input), "format": "raw"}),
        )
        .await;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signed["signature"].as_str().unwrap())
        .unwrap();
    let expired = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
    t.jwt_rejected(&expired, "an expired token").await;
    t.s.post(&format!("/v1/keys/{alias}/jwt"), json!({"claims": claims}))
        .await
        .expect_saying(400, "invalid_request", "claims.exp");
}

pub async fn jwt_ec_verifies_with_the_jwks(t: &Env) {
    jwt_verifies_with_the_jwks(t, "ec", "ES256").await;
}

pub async fn jwt_rsa_verifies_with_the_jwks(t: &Env) {
    jwt_verifies_with_the_jwks(t, "rsa", "PS256").await;
}

pub async fn jwt_ed25519_verifies_with_the_jwks(t: &Env) {
    jwt_verifies_with_the_jwks(t, "ed", "EdDSA").await;
}

/// A token signed before a rotation still verifies (its version stays in
/// the JWKS); one signed after names the new version.
pub async fn jwt_rotation_keeps_old_tokens_verifiable(t: &Env) {
    let claims = json!({"sub": "before"});
    let before = t.jwt("ec", claims.clone()).await;
    let new = t.ok("ec", "rotate", json!({})).await;
    let after = t.jwt("ec", json!({"sub": "after"})).await;
    assert_ne!(before["kid"], after["kid"], "{t}");
    assert_eq!(
        after["kid"],
        format!("ec/{}", new["version"].as_str().unwrap()),
        "{t}"
    );
    let jwks = t.get_ok("/v1/jwks").await;
    for made in [&before, &after] {
        let kid = &made["kid"];
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| &k["kid"] == kid),
            "{t}: {kid} in the JWKS"
        );
    }
    t.jwt_verifies(before["jwt"].as_str().unwrap(), &claims)
        .await;
    t.jwt_verifies(after["jwt"].as_str().unwrap(), &json!({"sub": "after"}))
        .await;
}
