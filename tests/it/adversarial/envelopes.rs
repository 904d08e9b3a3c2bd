//! Grants that hold for envelopes (a caller granted `decrypt` or `datakey`
//! cannot reach an envelope's data key), envelopes of earlier releases, and
//! encryption contexts that mean one thing.

use super::*;
use crate::harness::{Sidecar, b64};
use serde_json::{Value, json};
use std::time::Duration;

/// Three aliases of one backend key: envelopes only, decrypt only, datakey
/// only. A caller granted one of them must not reach the others' results.
fn purpose_config(me: u32, extra: &str) -> String {
    format!(
        r#"backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  env: {{ backend: dev, key: pii, algorithm: aes-256-gcm, ops: [envelope] }}
  dec: {{ backend: dev, key: pii, ops: [decrypt] }}
  dk:  {{ backend: dev, key: pii, ops: [datakey] }}
  rw:  {{ backend: dev, key: pii, ops: [envelope, rewrap] }}
callers:
  - {{ uids: [{me}], keys: ["*"], ops: ["*"] }}
{extra}"#
    )
}

/// An envelope made offline with a data key from `datakey`, in the given
/// algorithm (3: purpose-bound; 1: as earlier releases made them), as if
/// made through alias `env`.
fn forge(
    dk: &Value,
    context: &Value,
    algorithm: kms_sidecar::envelope::format::AlgorithmId,
    env: &str,
) -> String {
    use kms_sidecar::envelope::format::{Header, new_message_id, seal};
    let key = crate::harness::unb64(&dk["plaintext_key"]);
    let header = Header {
        alias: env.into(),
        key_version: dk["version"].as_str().unwrap().into(),
        key_ref: "forged".into(),
        wrapped_dek: crate::harness::unb64(&dk["encrypted_key"]),
        message_id: new_message_id(),
        commitment: [0; 32],
        algorithm,
    };
    b64(seal(
        &key,
        header,
        context.to_string().as_bytes(),
        b"forged",
    ))
}

/// With three aliases of one backend key — `env` (envelopes), `dec`
/// (decrypt only), `dk` (datakey only) — a caller granted `dec` cannot open
/// `env`'s envelopes, and one granted `dk` cannot forge one. Shared by every
/// backend's tests.
pub async fn envelope_grants_hold(s: &Sidecar, env: &str, dec: &str, dk: &str) {
    use kms_sidecar::envelope::format::{AlgorithmId, Header};
    let context = json!({"tenant": "acme"});
    let sealed = s
        .post_ok(
            &format!("/v1/keys/{env}/envelope/encrypt"),
            json!({"plaintext": b64("owner's data"), "context": context}),
        )
        .await;
    let bytes = crate::harness::unb64(&sealed["envelope"]);
    let (header, _) = Header::parse(&bytes).unwrap().unwrap();
    assert_eq!(
        header.algorithm,
        AlgorithmId::RewrappableAes256GcmHkdfSha256
    );
    // A `decrypt`-only caller cannot unwrap the envelope's data key...
    s.post(
        &format!("/v1/keys/{dec}/decrypt"),
        json!({"ciphertext": b64(&header.wrapped_dek), "context": context}),
    )
    .await
    .expect(422, Some("decryption_failed"));
    // ... nor name the sidecar's purpose entry itself.
    s.post(
        &format!("/v1/keys/{dec}/decrypt"),
        json!({"ciphertext": b64(&header.wrapped_dek), "context": {"tenant": "acme", "kms-sidecar:purpose": "envelope"}}),
    )
    .await
    .expect_saying(400, "invalid_request", "reserved");
    // A `datakey`-only caller cannot forge an envelope the owner opens, in
    // any algorithm.
    let data_key = s
        .post_ok(
            &format!("/v1/keys/{dk}/datakey"),
            json!({"context": context}),
        )
        .await;
    for algorithm in [
        AlgorithmId::RewrappableAes256GcmHkdfSha256,
        AlgorithmId::BoundAes256GcmHkdfSha256,
        AlgorithmId::Aes256GcmHkdfSha256,
    ] {
        s.post(
            &format!("/v1/keys/{env}/envelope/decrypt"),
            json!({"envelope": forge(&data_key, &context, algorithm, env), "context": context}),
        )
        .await
        .expect(422, Some("decryption_failed"));
    }
    // The owner's envelope opens, and `decrypt` still unwraps a data key.
    let opened = s
        .post_ok(
            &format!("/v1/keys/{env}/envelope/decrypt"),
            json!({"envelope": sealed["envelope"], "context": context}),
        )
        .await;
    assert_eq!(crate::harness::unb64(&opened["plaintext"]), b"owner's data");
    let unwrapped = s
        .post_ok(
            &format!("/v1/keys/{dec}/decrypt"),
            json!({"ciphertext": data_key["encrypted_key"], "context": context}),
        )
        .await;
    assert_eq!(unwrapped["plaintext"], data_key["plaintext_key"]);
}

#[tokio::test]
async fn grants_hold_for_envelopes() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&purpose_config(me, "")).await;
    envelope_grants_hold(&s, "env", "dec", "dk").await;
}

#[tokio::test]
async fn old_envelopes_open_only_while_the_operator_allows_it() {
    use kms_sidecar::envelope::format::AlgorithmId;
    let me = nix::unistd::geteuid().as_raw();
    let context = json!({"tenant": "acme"});
    let tomorrow = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    );
    let yesterday = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(86_400),
    );
    for (until, opens) in [
        (Some(tomorrow.to_string()), true),
        (Some(yesterday.to_string()), false),
        (None, false),
    ] {
        let extra = until
            .map(|t| format!("envelope: {{ accept_unbound_until: \"{t}\" }}\n"))
            .unwrap_or_default();
        let s = Sidecar::start(&purpose_config(me, &extra)).await;
        // An envelope as earlier releases made it: algorithm 1, its data key
        // wrapped with the plain context (as `datakey` wraps them).
        let dk = s
            .post_ok("/v1/keys/dk/datakey", json!({"context": context}))
            .await;
        let old = forge(&dk, &context, AlgorithmId::Aes256GcmHkdfSha256, "env");
        let r = s
            .post(
                "/v1/keys/env/envelope/decrypt",
                json!({"envelope": old, "context": context}),
            )
            .await;
        if opens {
            assert_eq!(crate::harness::unb64(&r.ok()["plaintext"]), b"forged");
        } else {
            r.expect(422, Some("decryption_failed"));
        }
    }
}

/// A streamed envelope call on alias `rw`, context `{"tenant":"acme"}`.
async fn stream(s: &Sidecar, op: &str, body: Vec<u8>) -> crate::harness::Resp {
    let path = format!("/v1/keys/rw/envelope/{op}");
    let headers = [
        ("content-type", "application/octet-stream"),
        ("x-encryption-context", r#"{"tenant":"acme"}"#),
    ];
    s.request(
        http::Method::POST,
        &path,
        &headers,
        bytes::Bytes::from(body),
    )
    .await
}

/// `envelope/rewrap` of an envelope made before data keys were bound to
/// their purpose (algorithms 1 and 2) opens and seals it again inside the
/// sidecar as 5 or 6, its data key bound: the migration away from them,
/// done while `envelope.accept_unbound_until` allows and refused after.
#[tokio::test]
async fn rewrap_reseals_old_envelopes_while_the_operator_allows_it() {
    use kms_sidecar::envelope::format::{AlgorithmId, Header, Sealer, new_message_id};
    let me = nix::unistd::geteuid().as_raw();
    let context = json!({"tenant": "acme"});
    let tomorrow = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    );
    for (extra, allowed) in [
        (
            format!("envelope: {{ accept_unbound_until: \"{tomorrow}\" }}\n"),
            true,
        ),
        (String::new(), false),
    ] {
        let s = Sidecar::start(&purpose_config(me, &extra)).await;
        let dk = s
            .post_ok("/v1/keys/dk/datakey", json!({"context": context}))
            .await;
        let json_old = forge(&dk, &context, AlgorithmId::Aes256GcmHkdfSha256, "rw");
        // Algorithm 2, one last segment.
        let (mut sealer, mut streamed_old) = Sealer::new(
            &crate::harness::unb64(&dk["plaintext_key"]),
            Header {
                alias: "rw".into(),
                key_version: dk["version"].as_str().unwrap().into(),
                key_ref: "forged".into(),
                wrapped_dek: crate::harness::unb64(&dk["encrypted_key"]),
                message_id: new_message_id(),
                commitment: [0; 32],
                algorithm: AlgorithmId::Aes256GcmHkdfSha256Segments64K,
            },
            context.to_string().as_bytes(),
        );
        sealer.seal(b"forged", true, &mut streamed_old);

        let r = s
            .post(
                "/v1/keys/rw/envelope/rewrap",
                json!({"envelope": json_old, "context": context}),
            )
            .await;
        let streamed = stream(&s, "rewrap", streamed_old).await;
        if !allowed {
            r.expect(422, Some("decryption_failed"));
            streamed.expect(422, Some("decryption_failed"));
            continue;
        }
        let resealed = crate::harness::unb64(&r.ok()["envelope"]);
        let (header, _) = Header::parse(&resealed).unwrap().unwrap();
        assert_eq!(
            header.algorithm,
            AlgorithmId::RewrappableAes256GcmHkdfSha256
        );
        assert_eq!(streamed.status, 200, "{:?}", streamed.body);
        let (header, _) = Header::parse(&streamed.body).unwrap().unwrap();
        assert_eq!(
            header.algorithm,
            AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K
        );
        // Both open once the operator stops accepting unbound envelopes
        // (the config reloaded without `accept_unbound_until`).
        let dir = s.dir.path().display().to_string();
        std::fs::write(
            s.dir.path().join("config.yaml"),
            purpose_config(me, "").replace("{dir}", &dir),
        )
        .unwrap();
        crate::harness::eventually(Duration::from_secs(2), "the reload", || async {
            s.metric("kms_sidecar_config_generation ").await == 2.0
        })
        .await;
        let r = s
            .post(
                "/v1/keys/rw/envelope/decrypt",
                json!({"envelope": json_old, "context": context}),
            )
            .await;
        r.expect(422, Some("decryption_failed"));
        let opened = s
            .post_ok(
                "/v1/keys/rw/envelope/decrypt",
                json!({"envelope": b64(&resealed), "context": context}),
            )
            .await;
        assert_eq!(crate::harness::unb64(&opened["plaintext"]), b"forged");
        let opened = stream(&s, "decrypt", streamed.body.to_vec()).await;
        assert_eq!(opened.status, 200);
        assert_eq!(&opened.body[..], b"forged");
    }
}

#[tokio::test]
async fn the_encryption_context_means_one_thing() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    // A key twice in the JSON body.
    let body = r#"{"plaintext":"c2VjcmV0","context":{"tenant":"a","tenant":"b"}}"#;
    let r = s
        .request(
            http::Method::POST,
            "/v1/keys/aes/envelope/encrypt",
            &[("content-type", "application/json")],
            bytes::Bytes::from(body),
        )
        .await;
    r.expect_saying(400, "invalid_request", "more than once");
    // The header twice on a streamed envelope.
    let r = raw(
        &s,
        "POST /v1/keys/aes/envelope/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nx-encryption-context: {\"tenant\":\"a\"}\r\nx-encryption-context: {\"tenant\":\"b\"}\r\nContent-Length: 4\r\n\r\ndata",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("more than once"),
        "{r}"
    );
    // The header on a JSON request, where it would be ignored.
    let r = s
        .request(
            http::Method::POST,
            "/v1/keys/aes/envelope/encrypt",
            &[
                ("content-type", "application/json"),
                ("x-encryption-context", "{\"tenant\":\"a\"}"),
            ],
            bytes::Bytes::from(r#"{"plaintext":"c2VjcmV0"}"#),
        )
        .await;
    r.expect_saying(400, "invalid_request", "only for streamed");
}
