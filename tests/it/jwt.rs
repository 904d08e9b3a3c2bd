//! JWTs through the API on the local backend: what `jwt` fills in and
//! refuses, who may see which keys in the JWKS, `jwt/verify`'s answers, and
//! the public JWKS of the probe listener. (Every signing backend runs the
//! conformance cases: `conformance::*::jwt_*`.)

use crate::harness::Sidecar;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Signing keys of every kind, an AES and an HMAC key; `callers` as given.
fn config(callers: &str, extra: &str) -> String {
    format!(
        r#"backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  ec: {{ backend: dev, key: ec, algorithm: ecdsa-p256-sha256, ops: ["*"] }}
  ec384: {{ backend: dev, key: ec384, algorithm: ecdsa-p384-sha384 }}
  ec521: {{ backend: dev, key: ec521, algorithm: ecdsa-p521-sha512 }}
  pkcs1: {{ backend: dev, key: pkcs1, algorithm: rsa-pkcs1-2048-sha256 }}
  aes: {{ backend: dev, key: aes, algorithm: aes-256-gcm }}
callers:
{callers}
{extra}"#
    )
}

fn all_mine() -> String {
    format!("  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}", me())
}

fn part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn jwt_fills_in_the_header_iat_and_exp_and_refuses_what_it_cannot_sign() {
    let s = Sidecar::start(&config(&all_mine(), "")).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let made = s
        .post_ok(
            "/v1/keys/ec/jwt",
            json!({"claims": {"sub": "svc"}, "header": {"cty": "example"}, "ttl": "2m"}),
        )
        .await;
    let token = made["jwt"].as_str().unwrap();
    s.secret(token);
    let header = part(token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["cty"], "example");
    assert_eq!(header["kid"], made["kid"]);
    assert_eq!(made["kid"], "ec/1");
    let claims = part(token, 1);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= before + 5, "{claims}");
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 120);
    let expires: std::time::SystemTime =
        humantime::parse_rfc3339(made["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        iat + 120
    );
    // The JOSE signature of ES256 is raw r ‖ s, 64 bytes.
    let sig = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(2).unwrap())
        .unwrap();
    assert_eq!(sig.len(), 64);
    // Given iat and exp are kept; the default lifetime is 5 minutes.
    let (iat, exp) = (before - 10, before + 600);
    let kept = s
        .post_ok(
            "/v1/keys/ec/jwt",
            json!({"claims": {"iat": iat, "exp": exp}}),
        )
        .await;
    let claims = part(kept["jwt"].as_str().unwrap(), 1);
    assert_eq!(
        (claims["iat"].as_u64(), claims["exp"].as_u64()),
        (Some(iat), Some(exp))
    );
    let default = s.post_ok("/v1/keys/ec/jwt", json!({"claims": {}})).await;
    let claims = part(default["jwt"].as_str().unwrap(), 1);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    // ES384 and RS256 by the key.
    for (alias, alg) in [("ec384", "ES384"), ("pkcs1", "RS256")] {
        let made = s
            .post_ok(&format!("/v1/keys/{alias}/jwt"), json!({"claims": {}}))
            .await;
        assert_eq!(made["alg"], alg);
        let v = s
            .post_ok("/v1/jwt/verify", json!({"jwt": made["jwt"]}))
            .await;
        assert_eq!(v["valid"], true, "{alias}: {v}");
    }
    // Refusals.
    for (body, words) in [
        (json!({"claims": {"exp": 5}, "ttl": "1m"}), "not both"),
        (json!({"claims": {"exp": "soon"}}), "claims.exp"),
        (json!({"claims": {}, "ttl": "2d"}), "field `ttl`"),
        (
            json!({"claims": {}, "header": {"kid": "other/1"}}),
            "header.kid",
        ),
        (
            json!({"claims": {}, "header": {"alg": "none"}}),
            "header.alg",
        ),
        (json!({"claims": "sub"}), "claims"),
    ] {
        s.post("/v1/keys/ec/jwt", body)
            .await
            .expect_saying(400, "invalid_request", words);
    }
    s.post("/v1/keys/ec521/jwt", json!({"claims": {}}))
        .await
        .expect_saying(422, "operation_not_supported", "JWTs are signed with");
    s.post("/v1/keys/aes/jwt", json!({"claims": {}}))
        .await
        .expect(422, Some("operation_not_supported"));
}

#[tokio::test]
async fn the_jwks_and_jwt_verify_follow_the_callers_rules() {
    // The caller may sign with `ec` and read `ec384`'s public key only, and
    // verify with `ec`.
    let rules = format!(
        "  - {{ uids: [{me}], keys: [ec], ops: [sign, verify] }}\n  - {{ uids: [{me}], keys: [ec384], ops: [public_key] }}",
        me = me()
    );
    let s = Sidecar::start(&config(&rules, "")).await;
    let jwks = s.get("/v1/jwks").await.ok();
    let kids: Vec<&str> = (jwks["keys"].as_array().unwrap().iter())
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["ec384/1"], "only keys the caller may read");
    let made = s
        .post_ok(
            "/v1/keys/ec/jwt",
            json!({"claims": {"aud": "b", "iss": "a"}}),
        )
        .await;
    let token = made["jwt"].as_str().unwrap();
    let verify = |body: Value| s.post("/v1/jwt/verify", body);
    let v = verify(json!({"jwt": token, "audience": "b", "issuer": "a"}))
        .await
        .ok();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["claims"]["aud"], "b");
    assert_eq!(v["header"]["kid"], "ec/1");
    for (body, reason) in [
        (json!({"jwt": token, "audience": "c"}), "InvalidAudience"),
        (json!({"jwt": token, "issuer": "z"}), "InvalidIssuer"),
    ] {
        let v = verify(body).await.ok();
        assert_eq!(
            (v["valid"].as_bool(), v["reason"].as_str()),
            (Some(false), Some(reason)),
            "{v}"
        );
    }
    // A kid of a key the caller may not verify with (configured or not):
    // 403, as for `verify`; of no `name/version` form, or of a version the
    // key lacks: `valid: false`.
    let resign = |kid: &str| {
        let mut header = part(token, 0);
        header["kid"] = kid.into();
        let rest: Vec<&str> = token.splitn(2, '.').collect();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), rest[1])
    };
    for kid in ["ec384/1", "nosuch/1"] {
        verify(json!({"jwt": resign(kid)}))
            .await
            .expect(403, Some("forbidden"));
    }
    for kid in ["ec", "ec/2"] {
        let v = verify(json!({"jwt": resign(kid)})).await.ok();
        assert_eq!(v["valid"], false, "{kid}: {v}");
    }
    verify(json!({"jwt": "not a token"})).await.expect_saying(
        400,
        "invalid_request",
        "field `jwt`",
    );
    verify(json!({"jwt": token, "leeway": 5}))
        .await
        .expect(400, Some("invalid_request"));
    s.post("/v1/keys/ec384/jwt", json!({"claims": {}}))
        .await
        .expect(403, Some("forbidden"));
    // A caller no rule grants `verify` is refused before its body is read.
    let rules = format!("  - {{ uids: [{}], keys: [\"*\"], ops: [sign] }}", me());
    let s = Sidecar::start(&config(&rules, "")).await;
    s.post("/v1/jwt/verify", json!({"jwt": token}))
        .await
        .expect_saying(403, "forbidden", "may not verify JWTs");
}

/// `jwks.public` serves the JWKS of chosen keys on the probe listener, to
/// anyone who reaches it; the socket answers it with 404.
#[tokio::test]
async fn the_probe_listener_serves_the_public_jwks() {
    let port = crate::harness::free_port();
    let s = Sidecar::start_with_env(
        &config(&all_mine(), "jwks: { public: [ec, pkcs1] }\n"),
        &[("KMS_SIDECAR_LISTEN__PROBES", &format!("127.0.0.1:{port}"))],
    )
    .await;
    let made = s
        .post_ok("/v1/keys/ec/jwt", json!({"claims": {"sub": "x"}}))
        .await;
    let (ok, text, err) = crate::harness::run_tool(
        "curl",
        &[
            "-sf",
            &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        ],
        "install curl (`make test` does)",
    );
    assert!(ok, "{err}");
    let jwks: Value = serde_json::from_str(&text).unwrap();
    let kids: Vec<&str> = (jwks["keys"].as_array().unwrap().iter())
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["ec/1", "pkcs1/1"]);
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "public keys only"
    );
    // The same JWKS verifies the token elsewhere.
    let token = made["jwt"].as_str().unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    s.get("/.well-known/jwks.json")
        .await
        .expect(404, Some("not_found"));
    // Unknown aliases are a config error.
    let (code, _, err) = crate::harness::run_with_config(
        &["config", "check"],
        &config(&all_mine(), "jwks: { public: [nosuch] }\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("jwks.public[0]"), "{err}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims.exp` is held to the cap on `ttl` (24 h ahead) and refused in
/// the past; an `exp` of year 10000 or beyond, which once panicked the
/// connection after the KMS had signed, is a 400 like any other, and the
/// open-connection gauge stays right.
#[tokio::test]
async fn jwt_exp_is_capped_like_ttl_and_no_time_claim_can_panic() {
    let s = Sidecar::start(&config(&all_mine(), "")).await;
    let now = unix_now();
    let day = 24 * 3600;
    let made = s
        .post_ok(
            "/v1/keys/ec/jwt",
            json!({"claims": {"exp": now + day - 60}}),
        )
        .await;
    assert_eq!(
        part(made["jwt"].as_str().unwrap(), 1)["exp"],
        now + day - 60
    );
    for (claims, words) in [
        (
            json!({"exp": now + 100 * 365 * day}),
            "more than 1day ahead",
        ),
        (json!({"exp": now + day + 120}), "more than 1day ahead"),
        (json!({"exp": now - 3600}), "not in the future"),
        (json!({"exp": 1}), "not in the future"),
        (json!({"exp": 253_402_300_800u64}), "claims.exp"),
        (json!({"exp": u64::MAX}), "claims.exp"),
        (json!({"exp": -1}), "claims.exp"),
        (json!({"exp": 1.0e300}), "claims.exp"),
        (json!({"iat": u64::MAX, "nbf": u64::MAX}), "claims.nbf"),
        (json!({"iat": -5}), "claims.iat"),
        (json!({"nbf": "later"}), "claims.nbf"),
        (
            json!({"nbf": now + 7200, "exp": now + 3600}),
            "never be valid",
        ),
    ] {
        s.post("/v1/keys/ec/jwt", json!({"claims": claims}))
            .await
            .expect_saying(400, "invalid_request", words);
    }
    // The connections above were all answered and closed: only the
    // scrape's own is open.
    crate::harness::eventually(
        std::time::Duration::from_secs(5),
        "one connection open",
        || async { s.metric("kms_sidecar_connections_open ").await == 1.0 },
    )
    .await;
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

/// The caller's header may set `typ` and `cty` only (strings of at most
/// 128 bytes): `jku`, `x5u`, `jwk`, `crit`, `b64` or anything else is
/// refused naming the field, and a 900 KB value is refused.
#[tokio::test]
async fn jwt_headers_take_only_typ_and_cty_within_a_size_cap() {
    let s = Sidecar::start(&config(&all_mine(), "")).await;
    let made = s
        .post_ok(
            "/v1/keys/ec/jwt",
            json!({"claims": {}, "header": {"typ": "at+jwt", "cty": "JWT", "alg": "ES256"}}),
        )
        .await;
    let header = part(made["jwt"].as_str().unwrap(), 0);
    assert_eq!(
        header,
        json!({"typ": "at+jwt", "cty": "JWT", "alg": "ES256", "kid": "ec/1"})
    );
    let big = "x".repeat(900 * 1024);
    for (header, words) in [
        (
            json!({"jku": "https://attacker.example/jwks"}),
            "`header.jku`",
        ),
        (
            json!({"x5u": "https://attacker.example/cert"}),
            "`header.x5u`",
        ),
        (json!({"jwk": {"kty": "EC"}}), "`header.jwk`"),
        (json!({"crit": ["b64"]}), "`header.crit`"),
        (json!({"b64": false}), "`header.b64`"),
        (json!({"zip": "DEF"}), "`header.zip`"),
        (
            json!({"typ": big}),
            "`header.typ`: a string of at most 128 bytes",
        ),
        (json!({"cty": 5}), "`header.cty`"),
        (json!({&big: "x"}), "not allowed"),
    ] {
        let r = s
            .post("/v1/keys/ec/jwt", json!({"claims": {}, "header": header}))
            .await;
        let v = r.expect_saying(400, "invalid_request", words);
        assert!(v.to_string().len() < 1024, "the message is short: {v}");
    }
}

/// The order `n` of P-256 and P-384, big-endian.
const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";

/// `n − s` of equal-width big-endian numbers.
fn minus(n: &[u8], s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; n.len()];
    let mut borrow = 0i16;
    for i in (0..n.len()).rev() {
        let mut v = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(v < 0);
        if v < 0 {
            v += 256;
        }
        out[i] = v as u8;
    }
    out
}

/// The high-S twin `(r, n − s)` of a token the sidecar issued verifies
/// for the `jsonwebtoken` crate, but `jwt/verify` refuses it: the sidecar
/// issues low-S signatures only, so a token has one valid string.
#[tokio::test]
async fn jwt_verify_refuses_the_high_s_twin_of_an_issued_token() {
    let s = Sidecar::start(&config(&all_mine(), "")).await;
    let jwks = s.get("/v1/jwks").await.ok();
    for (alias, n) in [("ec", P256_N), ("ec384", P384_N)] {
        let made = s
            .post_ok(
                &format!("/v1/keys/{alias}/jwt"),
                json!({"claims": {"sub": alias}}),
            )
            .await;
        let token = made["jwt"].as_str().unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let (r, low) = sig.split_at(sig.len() / 2);
        let twin = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode([r, &minus(&hex::decode(n).unwrap(), low)].concat())
        );
        // A valid signature all the same, for a verifier without the rule.
        let kid = made["kid"].as_str().unwrap();
        let jwk = (jwks["keys"].as_array().unwrap().iter())
            .find(|k| k["kid"] == kid)
            .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let alg = made["alg"].as_str().unwrap().parse().unwrap();
        jsonwebtoken::decode::<Value>(&twin, &key, &jsonwebtoken::Validation::new(alg))
            .unwrap_or_else(|e| panic!("{alias}: the twin is a valid signature: {e}"));
        let v = s.post_ok("/v1/jwt/verify", json!({"jwt": token})).await;
        assert_eq!(v["valid"], true, "{alias}: {v}");
        let v = s.post_ok("/v1/jwt/verify", json!({"jwt": twin})).await;
        assert_eq!(v["valid"], false, "{alias}: {v}");
        assert!(
            v["reason"].as_str().unwrap().contains("high S"),
            "{alias}: {v}"
        );
    }
}
