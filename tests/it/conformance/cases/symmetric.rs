//! Symmetric keys: encryption with a context (and every way decryption
//! must fail), data keys, envelopes (JSON and streamed), MACs.

use super::*;

// === encryption ===

/// The ciphertext bytes of [`SECRET`] encrypted by `alias` with [`context`].
async fn sealed_secret(t: &Env, alias: &str) -> Vec<u8> {
    unb64(&t.encrypt(alias, SECRET, context()).await["ciphertext"])
}

pub async fn encrypt_decrypt_with_context(t: &Env) {
    for context in [context(), json!({})] {
        let sealed = t.encrypt("aes", SECRET, context.clone()).await;
        version(t, &sealed);
        let opened = t.decrypt("aes", &sealed, context.clone()).await;
        assert_eq!(opened, SECRET, "{t}: context {context}");
    }
}

pub async fn decrypt_with_the_wrong_context_fails(t: &Env) {
    let sealed = sealed_secret(t, "aes").await;
    let mut extra = context();
    extra["more"] = "x".into();
    for wrong in [json!({"tenant": "evil", "purpose": "conformance"}), extra] {
        t.decryption_fails("aes", &sealed, wrong).await;
    }
}

pub async fn decrypt_without_the_context_fails(t: &Env) {
    let sealed = sealed_secret(t, "aes").await;
    let body = json!({"ciphertext": b64(&sealed)});
    t.refused("aes", "decrypt", body, 422, "decryption_failed")
        .await;
    t.decryption_fails("aes", &sealed, json!({})).await;
}

pub async fn decrypt_a_foreign_ciphertext_fails(t: &Env) {
    let foreign = sealed_secret(t, "aes2").await;
    t.decryption_fails("aes", &foreign, context()).await;
}

pub async fn decrypt_a_truncated_ciphertext_fails(t: &Env) {
    let sealed = sealed_secret(t, "aes").await;
    for cut in [sealed.len() - 8, sealed.len() / 2] {
        t.decryption_fails("aes", &sealed[..cut], context()).await;
    }
}

pub async fn decrypt_a_tampered_ciphertext_fails(t: &Env) {
    let sealed = sealed_secret(t, "aes").await;
    t.decryption_fails("aes", &flipped(&sealed), context())
        .await;
}

// === data keys ===

/// A data key of `bits` comes with its plaintext, and `decrypt` with the
/// same context (only) unwraps it.
async fn datakey_unwraps(t: &Env, bits: u32) {
    let body = json!({"bits": bits, "context": context()});
    let dk = t.ok("aes", "datakey", body).await;
    version(t, &dk);
    let len = unb64(&dk["plaintext_key"]).len() * 8;
    assert_eq!(len, bits as usize, "{t}: a {bits}-bit data key");
    let wrapped = json!({"ciphertext": dk["encrypted_key"]});
    let unwrapped = t.decrypt("aes", &wrapped, context()).await;
    assert_eq!(b64(unwrapped), dk["plaintext_key"], "{t}: unwrapped");
    let wrapped = unb64(&dk["encrypted_key"]);
    t.decryption_fails("aes", &wrapped, json!({"tenant": "evil"}))
        .await;
}

pub async fn datakey_256_unwraps_through_decrypt(t: &Env) {
    datakey_unwraps(t, 256).await;
}

pub async fn datakey_128_unwraps_through_decrypt(t: &Env) {
    datakey_unwraps(t, 128).await;
}

pub async fn datakey_with_bad_bits_is_invalid_request(t: &Env) {
    for bits in [json!(0), json!(64), json!(192), json!(512), json!("256")] {
        t.invalid("aes", "datakey", json!({"bits": bits})).await;
    }
}

// === envelopes ===

pub async fn envelope_json_round_trip(t: &Env) {
    let plaintext: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sealed = t.seal(&plaintext, context()).await;
    version(t, &sealed);
    let opened = t.open(&sealed, context()).await;
    assert!(opened == plaintext, "{t}: round trip");
    for wrong in [json!({"tenant": "evil"}), json!({})] {
        let body = json!({"envelope": sealed["envelope"], "context": wrong});
        t.refused("aes", "envelope/decrypt", body, 422, "decryption_failed")
            .await;
    }
}

pub async fn envelope_streamed_round_trip(t: &Env) {
    // Several 64 KiB segments and a short last one.
    let text: String = (0..6000)
        .map(|i| format!("streamed conformance line {i:05}\n"))
        .collect();
    t.s.secret(&text[..64]);
    let data = text.into_bytes();
    let context = r#"{"tenant":"acme"}"#;
    let sealed = t.stream("encrypt", data.clone(), context).await;
    assert_eq!(sealed.status, 200, "{t}: streamed encrypt: {sealed:?}");
    let opened = t.stream("decrypt", sealed.body.to_vec(), context).await;
    assert_eq!(opened.status, 200, "{t}: streamed decrypt: {opened:?}");
    assert!(opened.body == data, "{t}: streamed round trip");
    // The JSON API opens a streamed envelope too.
    let envelope = json!(b64(&sealed.body));
    let json_opened = t.open(&envelope, json!({"tenant": "acme"})).await;
    assert!(
        json_opened == data,
        "{t}: JSON decrypt of a streamed envelope"
    );
    let refused = t
        .stream("decrypt", sealed.body.to_vec(), r#"{"tenant":"evil"}"#)
        .await;
    let request = "streamed POST /v1/keys/aes/envelope/decrypt (wrong context)";
    t.expect(&refused, request, 422, Some("decryption_failed"));
}

pub async fn envelope_grants_hold(t: &Env) {
    crate::adversarial::envelope_grants_hold(&t.s, "env", "dec", "dk").await;
}

// === MACs ===

pub async fn mac_verify_mac(t: &Env) {
    let mac = t.mac("hmac", MSG).await;
    let tag = unb64(&mac["mac"]);
    assert_eq!(tag.len(), 32, "{t}: HMAC-SHA-256 tags are 32 bytes");
    let v = t.verify_mac("hmac", MSG, &mac).await;
    assert_eq!(v["valid"], true, "{t}: {v}");
    assert_eq!(v["version"], mac["version"], "{t}: {v}");
    let tampered = json!({"mac": b64(flipped(&tag))});
    for (message, mac, what) in [(FORGED, &mac, "message"), (MSG, &tampered, "MAC")] {
        let v = t.verify_mac("hmac", message, mac).await;
        assert_eq!(v["valid"], false, "{t}: a tampered {what}: {v}");
    }
}

pub async fn verify_mac_with_an_unknown_version_is_invalid_request(t: &Env) {
    let mac = t.mac("hmac", MSG).await;
    let body = json!({"message": b64(MSG), "mac": mac["mac"], "version": "999"});
    t.invalid("hmac", "verify-mac", body).await;
}

// === RSA encryption (RSA-OAEP-256: the context bound by the backend) ===

pub async fn rsa_oaep_encrypt_binds_the_context(t: &Env) {
    let sealed = t.encrypt("rsaenc", SECRET, context()).await;
    version(t, &sealed);
    assert_eq!(t.decrypt("rsaenc", &sealed, context()).await, SECRET, "{t}");
    let bytes = unb64(&sealed["ciphertext"]);
    for wrong in [
        json!({"tenant": "evil", "purpose": "conformance"}),
        json!({}),
    ] {
        t.decryption_fails("rsaenc", &bytes, wrong).await;
    }
    t.decryption_fails("rsaenc", &flipped(&bytes), context())
        .await;
    let plain = t.encrypt("rsaenc", SECRET, json!({})).await;
    t.decryption_fails("rsaenc", &unb64(&plain["ciphertext"]), context())
        .await;
}

pub async fn rsa_oaep_over_its_limit_is_payload_too_large(t: &Env) {
    let body = json!({"plaintext": b64([7u8; 159])});
    t.refused("rsaenc", "encrypt", body, 413, "payload_too_large")
        .await;
    t.encrypt("rsaenc", &[7u8; 158], json!({})).await;
}

pub async fn rsa_oaep_datakey_and_envelope(t: &Env) {
    let dk = t
        .ok(
            "rsaenc",
            "datakey",
            json!({"bits": 256, "context": context()}),
        )
        .await;
    let body = json!({"ciphertext": dk["encrypted_key"], "context": context()});
    let opened = unb64(&t.ok("rsaenc", "decrypt", body).await["plaintext"]);
    assert_eq!(opened, unb64(&dk["plaintext_key"]), "{t}");
    let body = json!({"ciphertext": dk["encrypted_key"], "context": {"tenant": "evil"}});
    t.refused("rsaenc", "decrypt", body, 422, "decryption_failed")
        .await;
    let data = vec![42u8; 5000];
    let body = json!({"plaintext": b64(&data), "context": context()});
    let envelope = t.ok("rsaenc", "envelope/encrypt", body).await;
    let body = json!({"envelope": envelope["envelope"], "context": context()});
    let opened = unb64(&t.ok("rsaenc", "envelope/decrypt", body).await["plaintext"]);
    assert_eq!(opened, data, "{t}");
    let body = json!({"envelope": envelope["envelope"], "context": {"tenant": "evil"}});
    t.refused("rsaenc", "envelope/decrypt", body, 422, "decryption_failed")
        .await;
}
