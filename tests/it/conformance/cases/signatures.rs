//! Signatures: ECDSA (message, digest, DER and raw, batches, low-S,
//! versions, refused algorithms and digests), RSA (PSS, PKCS#1 v1.5),
//! Ed25519, and public keys as PEM and JWK.

use super::*;

/// Signs `message` with `alias`: the signature verifies, over a tampered
/// message it is `valid: false`. The sign answer.
async fn signs_and_verifies(t: &Env, alias: &str, message: &[u8]) -> Value {
    let signed = t.sign(alias, message).await;
    let signature = &signed["signature"];
    assert!(t.verifies(alias, message, signature).await, "{t}: {alias}");
    let tampered = flipped(message);
    assert!(
        !t.verifies(alias, &tampered, signature).await,
        "{t}: {alias} over a tampered message"
    );
    signed
}

/// Whether openssl accepts `signature` over `message` with `alias`'s PEM
/// (`options` and `ed25519` as [`openssl_verifies`] takes them).
async fn openssl_accepts(
    t: &Env,
    alias: &str,
    message: &[u8],
    signature: &Value,
    options: &[&str],
    ed25519: bool,
) -> bool {
    let pem = t.pem(alias).await;
    let signature = unb64(signature);
    openssl_verifies(t.s.dir.path(), &pem, message, &signature, options, ed25519)
}

// === ECDSA signatures ===

pub async fn sign_verify_message(t: &Env) {
    let signed = t.sign("ec", MSG).await;
    assert_eq!(signed["algorithm"], "ecdsa-p256-sha256", "{t}: {signed}");
    assert_eq!(signed["key"], "ec", "{t}: {signed}");
    let der = unb64(&signed["signature"]);
    assert_eq!(der[0], 0x30, "{t}: ECDSA signatures are DER by default");
    let v = t.verify("ec", MSG, &signed["signature"]).await;
    assert_eq!(v["valid"], true, "{t}: {v}");
    assert_eq!(v["version"], signed["version"], "{t}: {v}");
}

pub async fn sign_verify_digest(t: &Env) {
    let digest = sha256(MSG);
    let signed = t.ok("ec", "sign", json!({"digest": b64(&digest)})).await;
    let verify = |digest: Vec<u8>| json!({"digest": b64(digest), "signature": signed["signature"]});
    assert!(
        t.valid("ec", "verify", verify(digest)).await,
        "{t}: a digest's signature verifies with the digest"
    );
    assert!(
        !t.valid("ec", "verify", verify(sha256(FORGED))).await,
        "{t}: ... and not with another digest"
    );
}

pub async fn sign_verify_raw(t: &Env) {
    let raw = t
        .ok("ec", "sign", json!({"message": b64(MSG), "format": "raw"}))
        .await;
    let len = unb64(&raw["signature"]).len();
    assert_eq!(len, 64, "{t}: raw P-256 signatures are r‖s, 64 bytes");
    assert!(
        t.verifies("ec", MSG, &raw["signature"]).await,
        "{t}: the format is told by the length when absent"
    );
    let mut body = verify_body(MSG, &raw["signature"]);
    body["format"] = "raw".into();
    assert!(t.valid("ec", "verify", body).await, "{t}: format raw");
}

pub async fn tampered_message_is_valid_false(t: &Env) {
    let signed = signs_and_verifies(t, "ec", MSG).await;
    assert!(
        !t.verifies("ec", FORGED, &signed["signature"]).await,
        "{t}: another message"
    );
    let tampered = json!(b64(flipped(&unb64(&signed["signature"]))));
    assert!(
        !t.verifies("ec", MSG, &tampered).await,
        "{t}: a tampered signature"
    );
}

pub async fn signature_verifies_with_openssl(t: &Env) {
    let signature = &t.sign("ec", MSG).await["signature"];
    assert!(
        openssl_accepts(t, "ec", MSG, signature, &[], false).await,
        "{t}: openssl rejects the signature with the key's PEM"
    );
    assert!(
        !openssl_accepts(t, "ec", FORGED, signature, &[], false).await,
        "{t}: openssl accepts a forged message"
    );
}

pub async fn large_message_sign_verify(t: &Env) {
    // Over AWS's 4 KiB for RAW messages: the sidecar hashes it there.
    signs_and_verifies(t, "ec", &[7u8; 10_000]).await;
}

pub async fn sign_batch_signs_every_item(t: &Env) {
    let digest = sha256(MSG);
    let items = json!([{"message": b64(MSG)}, {"digest": b64(&digest)}, {"message": b64(FORGED)}]);
    let batch = t
        .ok("ec", "sign-batch", json!({"items": items.clone()}))
        .await;
    assert_eq!(batch["algorithm"], "ecdsa-p256-sha256", "{t}: {batch}");
    assert_eq!(batch["key"], "ec", "{t}: {batch}");
    version(t, &batch);
    let signatures = batch["signatures"].as_array().expect("`signatures`");
    assert_eq!(signatures.len(), 3, "{t}: {batch}");
    for (i, (item, signature)) in items.as_array().unwrap().iter().zip(signatures).enumerate() {
        let mut body = item.clone();
        body["signature"] = signature.clone();
        assert!(
            t.valid("ec", "verify", body).await,
            "{t}: item {i} does not verify"
        );
    }
}

pub async fn signatures_are_low_s(t: &Env) {
    crate::adversarial::signatures_are_low_s(&t.s, "ec").await;
}

/// Signs [`MSG`] with `ec`: the sign answer, and a verify body for it
/// with `field` set to `value`.
async fn signed_with(t: &Env, field: &str, value: Value) -> (Value, Value) {
    let signed = t.sign("ec", MSG).await;
    let mut body = verify_body(MSG, &signed["signature"]);
    body[field] = if value.is_null() {
        signed[field].clone()
    } else {
        value
    };
    (signed, body)
}

pub async fn verify_names_the_version_that_signed(t: &Env) {
    let (signed, body) = signed_with(t, "version", Value::Null).await;
    let v = t.ok("ec", "verify", body).await;
    assert_eq!(v["valid"], true, "{t}: {v}");
    assert_eq!(v["version"], signed["version"], "{t}: {v}");
}

pub async fn verify_with_an_unknown_version_is_invalid_request(t: &Env) {
    let (_, body) = signed_with(t, "version", json!("999")).await;
    t.invalid("ec", "verify", body).await;
}

pub async fn sign_with_an_algorithm_the_key_lacks_is_invalid_request(t: &Env) {
    let named = |algorithm: &str| json!({"message": b64(MSG), "algorithm": algorithm});
    for (alias, algorithm) in [
        ("ec", "ecdsa-p384-sha384"),
        ("ec", "rsa-pss-2048-sha256"),
        ("rsa", "rsa-pss-3072-sha256"),
    ] {
        t.invalid(alias, "sign", named(algorithm)).await;
    }
    // Its own algorithm, named, is fine.
    t.ok("ec", "sign", named("ecdsa-p256-sha256")).await;
}

pub async fn verify_with_an_algorithm_the_key_lacks_is_invalid_request(t: &Env) {
    let (_, body) = signed_with(t, "algorithm", json!("ecdsa-p384-sha384")).await;
    t.invalid("ec", "verify", body).await;
}

pub async fn digest_of_the_wrong_length_is_invalid_request(t: &Env) {
    let signed = t.sign("ec", MSG).await;
    for len in [20, 48] {
        let digest = b64(vec![1u8; len]);
        t.invalid("ec", "sign", json!({"digest": digest})).await;
        let body = json!({"digest": digest, "signature": signed["signature"]});
        t.invalid("ec", "verify", body).await;
    }
}

// === RSA and Ed25519 signatures ===

/// [`signs_and_verifies`], and the signature is `len` bytes of the key's
/// `algorithm` that openssl accepts with the key's PEM.
async fn signature_checks_out(
    t: &Env,
    alias: &str,
    (algorithm, len): (&str, usize),
    options: &[&str],
    ed25519: bool,
) {
    let signed = signs_and_verifies(t, alias, MSG).await;
    assert_eq!(signed["algorithm"], algorithm, "{t}: {signed}");
    let got = unb64(&signed["signature"]).len();
    assert_eq!(got, len, "{t}: {algorithm} signatures are {len} bytes");
    assert!(
        openssl_accepts(t, alias, MSG, &signed["signature"], options, ed25519).await,
        "{t}: openssl rejects the {algorithm} signature"
    );
}

pub async fn rsa_pss_sign_verify(t: &Env) {
    signature_checks_out(t, "rsa", ("rsa-pss-2048-sha256", 256), &PSS, false).await;
}

pub async fn rsa_digest_sign_verify(t: &Env) {
    let digest = json!(b64(sha256(MSG)));
    let signed = t.ok("rsa", "sign", json!({"digest": digest})).await;
    let body = json!({"digest": digest, "signature": signed["signature"]});
    assert!(t.valid("rsa", "verify", body).await, "{t}");
}

pub async fn rsa_pkcs1_on_request(t: &Env) {
    let algorithm = "rsa-pkcs1-2048-sha256";
    let body = json!({"message": b64(MSG), "algorithm": algorithm});
    let signed = t.ok("rsa", "sign", body).await;
    assert_eq!(signed["algorithm"], algorithm, "{t}: {signed}");
    assert!(
        openssl_accepts(t, "rsa", MSG, &signed["signature"], &[], false).await,
        "{t}: openssl rejects the PKCS#1 v1.5 signature"
    );
    let mut body = verify_body(MSG, &signed["signature"]);
    body["algorithm"] = algorithm.into();
    assert!(t.valid("rsa", "verify", body).await, "{t}");
}

/// An RSA key configured for PKCS#1 v1.5 (alias `pkcs1`) asked for PSS
/// signs PSS: an RSA key signs either padding at its size (SPEC §4, the
/// service's `rules::signing_algorithm`), whichever the key was configured
/// for, and the driver signs what the service decided.
pub async fn rsa_pkcs1_key_signs_pss_on_request(t: &Env) {
    let algorithm = "rsa-pss-2048-sha256";
    let body = json!({"message": b64(MSG), "algorithm": algorithm});
    let signed = t.ok("pkcs1", "sign", body).await;
    assert_eq!(signed["algorithm"], algorithm, "{t}: {signed}");
    assert!(
        openssl_accepts(t, "pkcs1", MSG, &signed["signature"], &PSS, false).await,
        "{t}: openssl rejects the PSS signature"
    );
    let mut body = verify_body(MSG, &signed["signature"]);
    body["algorithm"] = algorithm.into();
    assert!(t.valid("pkcs1", "verify", body).await, "{t}");
}

pub async fn ed25519_sign_verify(t: &Env) {
    signature_checks_out(t, "ed", ("ed25519", 64), &[], true).await;
}

pub async fn ed25519_digest_sign_is_operation_not_supported(t: &Env) {
    let body = json!({"digest": b64(sha256(MSG))});
    t.unsupported("ed", "sign", body).await;
}

pub async fn ed25519_digest_verify_is_operation_not_supported(t: &Env) {
    let signed = t.sign("ed", MSG).await;
    let body = json!({"digest": b64(sha256(MSG)), "signature": signed["signature"]});
    t.unsupported("ed", "verify", body).await;
}

// === public keys ===

/// The PEM and the JWK of `alias`'s public key are the same key: every
/// JWK coordinate is in the SubjectPublicKeyInfo (EC and OKP points end
/// it); the JWK has the documented `kty`, `crv`, `alg` and `kid`, no
/// private member; the version is the current one.
async fn pem_is_the_jwk(t: &Env, alias: &str, key: KeyType, jwk_fields: Value) {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let pk = t.public_key(alias).await;
    let current = t.metadata(alias).await["current_version"].clone();
    assert_eq!(pk["version"], current, "{t}: {pk}");
    assert_eq!(pk["algorithm"], key.algorithm(), "{t}: {pk}");
    let pem = pk["pem"].as_str().expect("`pem`");
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{t}: {pem}"
    );
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = STANDARD.decode(body).expect("PEM body is base64");
    let jwk = &pk["jwk"];
    for (field, value) in jwk_fields.as_object().unwrap() {
        assert_eq!(&jwk[field], value, "{t}: JWK `{field}`: {jwk}");
    }
    let kid = format!("{alias}/{}", pk["version"].as_str().unwrap());
    assert_eq!(jwk["kid"], kid, "{t}: {jwk}");
    assert!(jwk["d"].is_null(), "{t}: the JWK holds private material");
    let part = |name: &str| {
        let value = jwk[name].as_str()?;
        Some(
            URL_SAFE_NO_PAD
                .decode(value)
                .expect("JWK members are base64url"),
        )
    };
    let parts: Vec<(&str, Vec<u8>)> = ["x", "y", "n", "e"]
        .into_iter()
        .filter_map(|name| Some((name, part(name)?)))
        .collect();
    assert!(!parts.is_empty(), "{t}: no key material in {jwk}");
    for (name, bytes) in &parts {
        assert!(
            spki.windows(bytes.len()).any(|w| w == bytes),
            "{t}: JWK `{name}` is not in the PEM's key"
        );
    }
    let point: Vec<u8> = match key {
        KeyType::Ecdsa => [&[4u8][..], &part("x").unwrap(), &part("y").unwrap()].concat(),
        KeyType::Ed25519 => part("x").unwrap(),
        _ => return,
    };
    assert!(
        spki.ends_with(&point),
        "{t}: the PEM's point is not the JWK's"
    );
}

pub async fn public_key_pem_is_the_jwk_ec(t: &Env) {
    let fields = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"});
    pem_is_the_jwk(t, "ec", KeyType::Ecdsa, fields).await;
}

pub async fn public_key_pem_is_the_jwk_rsa(t: &Env) {
    let fields = json!({"kty": "RSA", "alg": "PS256", "use": "sig"});
    pem_is_the_jwk(t, "rsa", KeyType::Rsa, fields).await;
}

pub async fn public_key_pem_is_the_jwk_ed25519(t: &Env) {
    let fields = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"});
    pem_is_the_jwk(t, "ed", KeyType::Ed25519, fields).await;
}
