//! Errors every backend answers alike: keys that are not there, an
//! unreachable backend, operations a key's type cannot do.

use super::*;

/// `GET /v1/keys/{alias}` answers `status` with `code`: the JSON.
async fn metadata_refused(t: &Env, alias: &str, status: u16, code: &str) -> Value {
    let path = format!("/v1/keys/{alias}");
    let r = t.s.get(&path).await;
    t.expect(&r, &format!("GET {path}"), status, Some(code))
}

pub async fn missing_key_is_key_not_found(t: &Env) {
    metadata_refused(t, "missing", 404, "key_not_found").await;
    for (op, body) in [
        ("sign", json!({"message": b64(MSG)})),
        ("encrypt", json!({"plaintext": b64(SECRET)})),
    ] {
        t.refused("missing", op, body, 404, "key_not_found").await;
    }
}

pub async fn unconfigured_alias_is_key_not_found(t: &Env) {
    metadata_refused(t, "nope", 404, "key_not_found").await;
    let body = json!({"message": b64(MSG)});
    t.refused("nope", "sign", body, 404, "key_not_found").await;
}

pub async fn unreachable_backend_is_retryable_backend_unavailable(t: &Env) {
    let v = metadata_refused(t, "down", 503, "backend_unavailable").await;
    assert_eq!(v["error"]["retryable"], true, "{t}: metadata: {v}");
    for (op, body) in [
        ("encrypt", json!({"plaintext": b64(SECRET)})),
        ("datakey", json!({"bits": 256})),
    ] {
        let v = t
            .refused("down", op, body, 503, "backend_unavailable")
            .await;
        assert_eq!(v["error"]["retryable"], true, "{t}: {op}: {v}");
    }
}

pub async fn sign_with_the_aes_key_is_operation_not_supported(t: &Env) {
    t.unsupported("aes", "sign", json!({"message": b64(MSG)}))
        .await;
}

pub async fn encrypt_with_the_ec_key_is_operation_not_supported(t: &Env) {
    t.unsupported("ec", "encrypt", json!({"plaintext": b64(SECRET)}))
        .await;
}

pub async fn mac_with_the_aes_key_is_operation_not_supported(t: &Env) {
    t.unsupported("aes", "mac", json!({"message": b64(MSG)}))
        .await;
}
