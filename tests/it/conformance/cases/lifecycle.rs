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

// === envelope headers ===

/// The indices of every byte of an envelope header's key version and key
/// reference fields (their u16 lengths included): the two fields the AAD of
/// algorithms 5 and 6 leaves out.
fn version_and_key_bytes(envelope: &[u8]) -> std::ops::Range<usize> {
    let field_end =
        |at: usize| at + 2 + u16::from_be_bytes(envelope[at..at + 2].try_into().unwrap()) as usize;
    let version = field_end(8);
    version..field_end(field_end(version))
}

/// `envelope` with one bit of byte `at` flipped.
fn flipped_at(envelope: &[u8], at: usize) -> Vec<u8> {
    let mut out = envelope.to_vec();
    out[at] ^= 0x01;
    out
}

/// An envelope header names the key version and key that the KMS reports
/// for the unwrap of its DEK (SPEC §5): a flip of any byte of those two
/// fields is 422 `decryption_failed` for `envelope/decrypt` and
/// `envelope/rewrap` (JSON and streamed), whether the DEK is unwrapped by
/// the KMS or found in the cache; the untampered envelopes still open after
/// a rotation, and `envelope/rewrap` names the version it wrapped under.
pub async fn envelope_headers_name_the_version_and_key_that_unwrap(t: &Env) {
    let probe = unb64(&t.seal(SECRET, context()).await["envelope"]);
    // One envelope per byte, each under a context of its own, so that each
    // has a data key of its own for the KMS to unwrap below.
    let numbered =
        |n: usize| json!({"tenant": "acme", "purpose": "conformance", "n": n.to_string()});
    let mut sealed = Vec::new();
    for at in version_and_key_bytes(&probe) {
        let envelope = unb64(&t.seal(SECRET, numbered(at)).await["envelope"]);
        assert_eq!(
            version_and_key_bytes(&envelope),
            version_and_key_bytes(&probe),
            "{t}: envelopes of one key have one header layout"
        );
        sealed.push((at, envelope));
    }
    let streamed_context = r#"{"tenant":"acme"}"#;
    let streamed = t.stream("encrypt", SECRET.to_vec(), streamed_context).await;
    assert_eq!(streamed.status, 200, "{t}: streamed encrypt");
    let new = rotate(t, "aes").await;
    // No data key cached: the first unwrap of each is the KMS's.
    t.ok("aes", "flush", json!({})).await;
    let refused = |r: crate::harness::Resp, what: String| {
        t.expect(&r, &what, 422, Some("decryption_failed"));
    };
    for pass in ["unwrapped by the KMS", "cached"] {
        for (at, envelope) in &sealed {
            let body =
                json!({"envelope": b64(flipped_at(envelope, *at)), "context": numbered(*at)});
            for op in ["envelope/decrypt", "envelope/rewrap"] {
                let what = format!("{op} with byte {at} of the header flipped ({pass})");
                refused(t.call("aes", op, body.clone()).await, what);
            }
        }
    }
    for at in version_and_key_bytes(&streamed.body) {
        let tampered = flipped_at(&streamed.body, at);
        for op in ["decrypt", "rewrap"] {
            let r = t.stream(op, tampered.clone(), streamed_context).await;
            refused(r, format!("streamed envelope/{op}, byte {at} flipped"));
        }
    }
    // Untampered, they open after the rotation, and a rewrap moves them.
    let (at, envelope) = &sealed[0];
    let body = json!({"envelope": b64(envelope), "context": numbered(*at)});
    assert_eq!(
        t.open(&body["envelope"], numbered(*at)).await,
        SECRET,
        "{t}"
    );
    let rewrapped = t.ok("aes", "envelope/rewrap", body).await;
    assert_eq!(rewrapped["version"], new.as_str(), "{t}: {rewrapped}");
    let moved = unb64(&rewrapped["envelope"]);
    assert_eq!(envelope_version(&moved), new, "{t}: the header's version");
    assert_eq!(t.open(&rewrapped, numbered(*at)).await, SECRET, "{t}");
    let opened = t
        .stream("decrypt", streamed.body.to_vec(), streamed_context)
        .await;
    assert!(
        opened.status == 200 && opened.body == SECRET,
        "{t}: the streamed envelope opens: {opened:?}"
    );
}

/// The error of a refused call, without its request id: what a caller can
/// tell two refusals apart by.
fn refusal(t: &Env, r: &crate::harness::Resp, what: &str) -> (u16, Value) {
    let mut error = t.expect(r, what, 422, Some("decryption_failed"))["error"].clone();
    error["request_id"] = Value::Null;
    (r.status, error)
}

/// `rewrap` (of ciphertexts and of envelopes) answers a wrong context
/// exactly as it answers a tampered or foreign ciphertext: the same status,
/// code, message and `retryable`, so a caller granted `rewrap` learns no
/// more than whether the context it guessed is right (which a rewrap that
/// succeeds tells, as `docs/api.md` says).
pub async fn rewrap_answers_a_wrong_context_as_a_tampered_ciphertext(t: &Env) {
    let evil = json!({"tenant": "evil", "purpose": "conformance"});
    let sealed = unb64(&t.encrypt("aes", SECRET, context()).await["ciphertext"]);
    let rewrap = |ciphertext: Vec<u8>, context: Value| async move {
        let body = json!({"ciphertext": b64(ciphertext), "context": context});
        t.call("aes", "rewrap", body).await
    };
    let wrong = refusal(
        t,
        &rewrap(sealed.clone(), evil.clone()).await,
        "rewrap, wrong context",
    );
    let mut extra = context();
    extra["more"] = "x".into();
    let middle = flipped_at(&sealed, sealed.len() / 2);
    let mut variants = vec![
        ("no context", sealed.clone(), json!({})),
        ("one entry more", sealed.clone(), extra),
        ("the last byte flipped", flipped(&sealed), context()),
        ("a middle byte flipped", middle, context()),
        ("truncated", sealed[..sealed.len() - 8].to_vec(), context()),
        ("short garbage", b"not a ciphertext".to_vec(), context()),
        ("empty", Vec::new(), context()),
    ];
    if t.backend
        .lacks(crate::conformance::ForeignCiphertext)
        .is_none()
    {
        variants.push(("the first byte flipped", flipped_at(&sealed, 0), context()));
        let foreign = unb64(&t.encrypt("aes2", SECRET, context()).await["ciphertext"]);
        variants.push(("another key's", foreign, context()));
    }
    for (what, ciphertext, context) in variants {
        let what = format!("rewrap, {what}");
        let answer = refusal(t, &rewrap(ciphertext, context).await, &what);
        assert_eq!(
            answer, wrong,
            "{t}: {what} is answered unlike a wrong context"
        );
    }

    let envelope = unb64(&t.seal(SECRET, context()).await["envelope"]);
    let envelope_rewrap = |envelope: Vec<u8>, context: Value| async move {
        let body = json!({"envelope": b64(envelope), "context": context});
        t.call("aes", "envelope/rewrap", body).await
    };
    let what = "envelope/rewrap, wrong context";
    let answer = refusal(t, &envelope_rewrap(envelope.clone(), evil).await, what);
    assert_eq!(answer, wrong, "{t}: {what}");
    let hints = version_and_key_bytes(&envelope);
    let dek_end = envelope.len() - envelope_body(&envelope).len() - 65;
    for (what, at) in [
        ("the magic", 0),
        ("the alias", 10),
        ("the key version", hints.start + 2),
        ("the key reference", hints.end - 1),
        ("the wrapped DEK", dek_end - 1),
    ] {
        let what = format!("envelope/rewrap, a byte of {what} flipped");
        let r = envelope_rewrap(flipped_at(&envelope, at), context()).await;
        assert_eq!(refusal(t, &r, &what), wrong, "{t}: {what}");
    }
}
