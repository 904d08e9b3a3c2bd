//! What a key says about itself (metadata) and how it changes (rotation).

use super::*;

// === metadata ===

/// `alias`'s metadata has every documented field, typed.
async fn metadata_is_typed(t: &Env, alias: &str, key: KeyType, purpose: &str, ops: &[&str]) {
    let m = t.metadata(alias).await;
    let is_str = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let str_or_null = |v: &Value| v.is_null() || is_str(v);
    let at = format!("{t}: metadata of `{alias}`: {m}");
    assert_eq!(m["name"], alias, "{at}");
    assert_eq!(m["algorithm"], key.algorithm(), "{at}");
    assert_eq!(m["purpose"], purpose, "{at}");
    assert_eq!(m["backend"], "kms", "{at}");
    assert_eq!(m["backend_type"], t.backend.name, "{at}");
    assert!(is_str(&m["backend_key"]), "{at}");
    let listed: Vec<&str> = m["ops"]
        .as_array()
        .unwrap_or_else(|| panic!("{at}: `ops` is not an array"))
        .iter()
        .map(|op| {
            op.as_str()
                .unwrap_or_else(|| panic!("{at}: an op is not a string"))
        })
        .collect();
    for op in ops.iter().chain(&["metadata"]) {
        assert!(listed.contains(op), "{at}: `ops` lacks {op}");
    }
    assert!(is_str(&m["current_version"]), "{at}");
    let versions = m["versions"].as_array().expect("`versions` is an array");
    for v in versions {
        assert!(is_str(&v["version"]), "{at}: version {v}");
        assert!(v["enabled"].is_boolean(), "{at}: version {v}");
        assert!(str_or_null(&v["created"]), "{at}: version {v}");
    }
    assert!(
        versions
            .iter()
            .any(|v| v["version"] == m["current_version"] && v["enabled"] == true),
        "{at}: the current version is not an enabled one of `versions`"
    );
    let r = &m["rotation"];
    assert!(
        r["enabled"].is_boolean() && r["should_rotate"].is_boolean(),
        "{at}"
    );
    assert!(
        r["period_seconds"].is_null() || r["period_seconds"].is_u64(),
        "{at}"
    );
    assert!(str_or_null(&r["last"]) && str_or_null(&r["next"]), "{at}");
    assert!(
        ["software", "hsm", "external"].contains(&m["origin"].as_str().unwrap_or_default()),
        "{at}: origin"
    );
    assert!(str_or_null(&m["created"]), "{at}");
}

const SIGNING_OPS: &[&str] = &["sign", "verify", "public_key"];

pub async fn metadata_of_the_ec_key(t: &Env) {
    metadata_is_typed(t, "ec", KeyType::Ecdsa, "sign", SIGNING_OPS).await;
}

pub async fn metadata_of_the_rsa_key(t: &Env) {
    metadata_is_typed(t, "rsa", KeyType::Rsa, "sign", SIGNING_OPS).await;
}

pub async fn metadata_of_the_ed25519_key(t: &Env) {
    metadata_is_typed(t, "ed", KeyType::Ed25519, "sign", SIGNING_OPS).await;
}

pub async fn metadata_of_the_aes_key(t: &Env) {
    let ops = ["encrypt", "decrypt", "datakey", "envelope"];
    metadata_is_typed(t, "aes", KeyType::Aes, "encrypt", &ops).await;
}

pub async fn metadata_of_the_rsa_oaep_key(t: &Env) {
    let ops = ["encrypt", "decrypt", "datakey", "envelope"];
    metadata_is_typed(t, "rsaenc", KeyType::RsaOaep, "encrypt", &ops).await;
}

pub async fn metadata_of_the_hmac_key(t: &Env) {
    metadata_is_typed(t, "hmac", KeyType::Hmac, "mac", &["mac"]).await;
}

// === rotation ===

/// Rotates `alias`: the version the rotation answered.
async fn rotate(t: &Env, alias: &str) -> String {
    let rotated = t.ok(alias, "rotate", json!({})).await;
    assert_eq!(rotated["key"], alias, "{t}: {rotated}");
    version(t, &rotated)
}

/// The versions after a rotation of `alias` from `old` to `new`, checked
/// after what must keep working so that a failure here is about versions
/// only: `new` is another version, current in the metadata, `old` is still
/// listed, and each answer (what it is, the answer, the version it must
/// name) names the right one.
async fn versions_moved_on(
    t: &Env,
    alias: &str,
    old: &str,
    new: &str,
    answers: &[(&str, &Value, &str)],
) {
    assert_ne!(new, old, "{t}: rotating `{alias}` kept version {old}");
    let m = t.metadata(alias).await;
    assert_eq!(m["current_version"], new, "{t}: {m}");
    let versions = m["versions"].as_array().expect("`versions`");
    let listed = |v: &str| versions.iter().any(|x| x["version"] == v);
    assert!(listed(old) && listed(new), "{t}: versions {m}");
    for (what, answer, expected) in answers {
        assert_eq!(answer["version"], *expected, "{t}: {what}: {answer}");
    }
}

/// After a rotation the old signature still verifies, and a new one
/// verifies with openssl against the new public key.
async fn rotation_keeps_old_signatures(t: &Env, alias: &str, options: &[&str], ed25519: bool) {
    let old = t.sign(alias, MSG).await;
    let old_pem = t.pem(alias).await;
    let new = rotate(t, alias).await;
    let verified = t.verify(alias, MSG, &old["signature"]).await;
    assert_eq!(
        verified["valid"], true,
        "{t}: the old signature: {verified}"
    );
    let signed = t.sign(alias, MSG).await;
    let pk = t.public_key(alias).await;
    let pem = pk["pem"].as_str().expect("`pem`");
    let signature = unb64(&signed["signature"]);
    assert!(
        openssl_verifies(t.s.dir.path(), pem, MSG, &signature, options, ed25519),
        "{t}: openssl rejects a signature made after the rotation"
    );
    assert_ne!(pem, old_pem, "{t}: the public key did not change");
    let old = version(t, &old);
    let answers = [
        ("verifying the old signature", &verified, old.as_str()),
        ("a new signature", &signed, &new),
        ("the public key", &pk, &new),
    ];
    versions_moved_on(t, alias, &old, &new, &answers).await;
}

pub async fn rotate_ec_keeps_old_signatures(t: &Env) {
    rotation_keeps_old_signatures(t, "ec", &[], false).await;
}

pub async fn rotate_rsa_keeps_old_signatures(t: &Env) {
    rotation_keeps_old_signatures(t, "rsa", &PSS, false).await;
}

pub async fn rotate_ed25519_keeps_old_signatures(t: &Env) {
    rotation_keeps_old_signatures(t, "ed", &[], true).await;
}

/// After a rotation, ciphertexts and envelopes of before and after open.
pub async fn rotate_aes_keeps_old_ciphertexts(t: &Env) {
    let old = t.encrypt("aes", SECRET, context()).await;
    let old_envelope = t.seal(SECRET, context()).await;
    rotate(t, "aes").await;
    let sealed = t.encrypt("aes", SECRET, context()).await;
    for (what, ciphertext) in [("old", &old), ("new", &sealed)] {
        let opened = t.decrypt("aes", ciphertext, context()).await;
        assert_eq!(opened, SECRET, "{t}: the {what} ciphertext");
    }
    let opened = t.open(&old_envelope, context()).await;
    assert_eq!(opened, SECRET, "{t}: the old envelope");
    let envelope = t.seal(SECRET, context()).await;
    let opened = t.open(&envelope, context()).await;
    assert_eq!(opened, SECRET, "{t}: a new envelope");
}

/// After a rotation, new ciphertexts and envelopes name the new version.
pub async fn rotate_aes_moves_to_a_new_version(t: &Env) {
    let old = t.encrypt("aes", SECRET, context()).await;
    let new = rotate(t, "aes").await;
    let sealed = t.encrypt("aes", SECRET, context()).await;
    let envelope = t.seal(SECRET, context()).await;
    let answers = [
        ("a new ciphertext", &sealed, new.as_str()),
        ("a new envelope", &envelope, &new),
    ];
    versions_moved_on(t, "aes", &version(t, &old), &new, &answers).await;
}

pub async fn rotate_hmac_keeps_old_macs(t: &Env) {
    let old = t.mac("hmac", MSG).await;
    let new = rotate(t, "hmac").await;
    let verified = t.verify_mac("hmac", MSG, &old).await;
    assert_eq!(verified["valid"], true, "{t}: the old MAC: {verified}");
    let mac = t.mac("hmac", MSG).await;
    let v = t.verify_mac("hmac", MSG, &mac).await;
    assert_eq!(v["valid"], true, "{t}: a new MAC: {v}");
    let old = version(t, &old);
    let answers = [
        ("verifying the old MAC", &verified, old.as_str()),
        ("a new MAC", &mac, &new),
    ];
    versions_moved_on(t, "hmac", &old, &new, &answers).await;
}

// === rewrap ===

/// After a rotation, `rewrap` moves an old ciphertext to the new version:
/// the answer names it, decrypts to the same plaintext with the same
/// context, and the old ciphertext still opens.
pub async fn rewrap_moves_a_ciphertext_to_the_current_version(t: &Env) {
    let old = t.encrypt("aes", SECRET, context()).await;
    let new = rotate(t, "aes").await;
    let body = json!({"ciphertext": old["ciphertext"], "context": context()});
    let rewrapped = t.ok("aes", "rewrap", body).await;
    assert_eq!(rewrapped["version"], new.as_str(), "{t}: {rewrapped}");
    assert_ne!(rewrapped["ciphertext"], old["ciphertext"], "{t}");
    assert_eq!(
        t.decrypt("aes", &rewrapped, context()).await,
        SECRET,
        "{t}: the rewrapped ciphertext"
    );
    assert_eq!(
        t.decrypt("aes", &old, context()).await,
        SECRET,
        "{t}: the old ciphertext"
    );
}

/// `rewrap` checks like `decrypt`: another context, or a ciphertext with a
/// flipped bit, is 422 `decryption_failed`.
pub async fn rewrap_refuses_a_wrong_context_or_a_tampered_ciphertext(t: &Env) {
    let sealed = t.encrypt("aes", SECRET, context()).await;
    let body = json!({"ciphertext": sealed["ciphertext"], "context": {"tenant": "evil"}});
    t.refused("aes", "rewrap", body, 422, "decryption_failed")
        .await;
    let tampered = flipped(&unb64(&sealed["ciphertext"]));
    let body = json!({"ciphertext": b64(&tampered), "context": context()});
    t.refused("aes", "rewrap", body, 422, "decryption_failed")
        .await;
}

// === envelope rewrap ===

/// The body of an envelope: what follows `"KSE1" ‖ length ‖ header`.
fn envelope_body(envelope: &[u8]) -> &[u8] {
    let len = u32::from_be_bytes(envelope[4..8].try_into().unwrap()) as usize;
    &envelope[8 + len..]
}

/// The key version an envelope's header names (its second field).
fn envelope_version(envelope: &[u8]) -> String {
    let field = |at: usize| {
        let n = u16::from_be_bytes(envelope[at..at + 2].try_into().unwrap()) as usize;
        (at + 2 + n, &envelope[at + 2..at + 2 + n])
    };
    let (after_alias, _) = field(8);
    String::from_utf8(field(after_alias).1.to_vec()).unwrap()
}

/// After a rotation, `envelope/rewrap` moves JSON and streamed envelopes to
/// the new version with their bodies untouched: the answers name the new
/// version, open to the same plaintext with the same context, and the old
/// envelopes still open.
pub async fn envelope_rewrap_moves_the_data_key_and_keeps_the_body(t: &Env) {
    let old = t.seal(SECRET, context()).await;
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let streamed_context = r#"{"tenant":"acme"}"#;
    let streamed = t.stream("encrypt", data.clone(), streamed_context).await;
    assert_eq!(streamed.status, 200, "{t}: streamed encrypt");
    let new = rotate(t, "aes").await;

    let body = json!({"envelope": old["envelope"], "context": context()});
    let rewrapped = t.ok("aes", "envelope/rewrap", body).await;
    assert_eq!(rewrapped["version"], new.as_str(), "{t}: {rewrapped}");
    let (before, after) = (unb64(&old["envelope"]), unb64(&rewrapped["envelope"]));
    assert_eq!(envelope_version(&after), new, "{t}: the header's version");
    assert_ne!(before, after, "{t}: the header changed");
    assert!(
        envelope_body(&before) == envelope_body(&after),
        "{t}: the body is untouched"
    );
    assert_eq!(t.open(&rewrapped, context()).await, SECRET, "{t}");
    assert_eq!(
        t.open(&old, context()).await,
        SECRET,
        "{t}: the old envelope"
    );

    let moved = t
        .stream("rewrap", streamed.body.to_vec(), streamed_context)
        .await;
    assert_eq!(moved.status, 200, "{t}: streamed rewrap: {moved:?}");
    assert_eq!(envelope_version(&moved.body), new, "{t}: streamed rewrap");
    assert!(
        envelope_body(&moved.body) == envelope_body(&streamed.body),
        "{t}: the streamed body is untouched"
    );
    let opened = t
        .stream("decrypt", moved.body.to_vec(), streamed_context)
        .await;
    assert!(
        opened.status == 200 && opened.body == data,
        "{t}: the streamed rewrapped envelope opens"
    );
}

/// `envelope/rewrap` checks the context and the wrapped data key like a
/// decryption (422 `decryption_failed`, streamed too), and needs `rewrap`.
pub async fn envelope_rewrap_refuses_a_wrong_context_or_a_tampered_data_key(t: &Env) {
    let sealed = t.seal(SECRET, context()).await;
    let body = json!({"envelope": sealed["envelope"], "context": {"tenant": "evil"}});
    t.refused("aes", "envelope/rewrap", body, 422, "decryption_failed")
        .await;
    // The last byte of the wrapped DEK (the field before the message id,
    // the commitment and the algorithm id).
    let mut tampered = unb64(&sealed["envelope"]);
    let at = tampered.len() - envelope_body(&tampered).len() - 65 - 1;
    tampered[at] ^= 0x01;
    let body = json!({"envelope": b64(&tampered), "context": context()});
    t.refused("aes", "envelope/rewrap", body, 422, "decryption_failed")
        .await;
    let streamed = t
        .stream("encrypt", b"streamed".to_vec(), r#"{"tenant":"acme"}"#)
        .await;
    let refused = t
        .stream("rewrap", streamed.body.to_vec(), r#"{"tenant":"evil"}"#)
        .await;
    refused.expect(422, Some("decryption_failed"));
    let body = json!({"envelope": sealed["envelope"], "context": context()});
    t.refused("env", "envelope/rewrap", body, 403, "forbidden")
        .await;
}
