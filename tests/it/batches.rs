//! Batches: `sign-batch` and the encrypt, decrypt and envelope batches, whose
//! items each get their own answer or error, in order.

use crate::harness::{Sidecar, b64, unb64};
use serde_json::{Value, json};

/// The `items` of a batch answer, which must be 200.
async fn results(s: &Sidecar, path: &str, items: Vec<Value>) -> Vec<Value> {
    let out = s.post_ok(path, json!({ "items": items })).await;
    out["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {out}"))
        .clone()
}

fn code(item: &Value) -> &str {
    item["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn encrypt_and_decrypt_batches_answer_each_item_in_order() {
    let s = Sidecar::start_default().await;
    let plain = |i: usize| format!("secret number {i}");
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"plaintext": b64(plain(i)), "context": {"item": i.to_string()}}))
        .collect();
    let sealed = results(&s, "/v1/keys/aes-256/encrypt-batch", items).await;
    assert_eq!(sealed.len(), 20);
    for item in &sealed {
        assert_eq!(item["version"], "1", "{item}");
    }

    let mut items: Vec<Value> = sealed
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"ciphertext": r["ciphertext"], "context": {"item": i.to_string()}}))
        .collect();
    // Three bad items among good ones: a wrong context, garbage, a reserved
    // context key. Each fails alone.
    items[3]["context"] = json!({"item": "not 3"});
    items[7]["ciphertext"] = json!(b64("not a ciphertext"));
    items[11]["context"] = json!({"kms-sidecar:x": "1"});
    let opened = results(&s, "/v1/keys/aes-256/decrypt-batch", items).await;
    assert_eq!(opened.len(), 20);
    for (i, item) in opened.iter().enumerate() {
        match i {
            3 | 7 => {
                assert_eq!(code(item), "decryption_failed", "{i}: {item}");
                assert_eq!(item["error"]["retryable"], false);
            }
            11 => assert_eq!(code(item), "invalid_request", "{i}: {item}"),
            _ => assert_eq!(
                unb64(&item["plaintext"]),
                plain(i).as_bytes(),
                "{i}: {item}"
            ),
        }
    }
    for (i, _) in opened.iter().enumerate() {
        s.secret(b64(plain(i)));
    }
}

#[tokio::test]
async fn envelope_batches_round_trip_and_fail_per_item() {
    let s = Sidecar::start_default().await;
    let items: Vec<Value> = (0..9)
        .map(
            |i| json!({"plaintext": b64(vec![i as u8; 1000 * i]), "context": {"n": i.to_string()}}),
        )
        .collect();
    let sealed = results(&s, "/v1/keys/aes-256/envelope/encrypt-batch", items).await;
    let mut items: Vec<Value> = sealed
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"envelope": r["envelope"], "context": {"n": i.to_string()}}))
        .collect();
    items[4]["context"] = json!({});
    let opened = results(&s, "/v1/keys/aes-256/envelope/decrypt-batch", items).await;
    for (i, item) in opened.iter().enumerate() {
        if i == 4 {
            assert_eq!(code(item), "decryption_failed", "{item}");
        } else {
            assert_eq!(unb64(&item["plaintext"]), vec![i as u8; 1000 * i], "{i}");
        }
    }
}

#[tokio::test]
async fn batches_and_rewrap_are_bounded_granted_and_parsed_like_single_calls() {
    let uid = nix::unistd::geteuid().as_raw();
    let config = format!(
        "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n  data: {{ backend: dev, key: data, algorithm: aes-256-gcm, ops: [\"*\"] }}\nlimits: {{ max_batch: 4, batch_concurrency: 2 }}\ncallers:\n  - {{ uids: [{uid}], keys: [data], ops: [decrypt] }}\n"
    );
    let s = Sidecar::start(&config).await;
    let item = json!({"plaintext": b64("x")});
    // Granted `decrypt` only: encrypt-batch and the envelope batches are 403.
    for path in [
        "encrypt-batch",
        "envelope/encrypt-batch",
        "envelope/decrypt-batch",
    ] {
        let r = s
            .post(&format!("/v1/keys/data/{path}"), json!({"items": [item]}))
            .await;
        r.expect(403, Some("forbidden"));
    }
    // 1 to max_batch items.
    for n in [0, 5] {
        let items = vec![json!({"ciphertext": b64("x")}); n];
        let r = s
            .post("/v1/keys/data/decrypt-batch", json!({ "items": items }))
            .await;
        r.expect_saying(400, "invalid_request", "limits.max_batch");
    }
    // An unknown field is refused with its path, for the whole batch.
    let r = s
        .post(
            "/v1/keys/data/decrypt-batch",
            json!({"items": [{"ciphertext": b64("x")}, {"ciphertext": b64("x"), "contxt": {}}]}),
        )
        .await;
    r.expect_saying(400, "invalid_request", "items[1]");
}

/// The review: a batch cost one rate-limit token for up to 64 KMS calls or
/// RSA signatures.
#[tokio::test]
async fn a_batch_costs_one_rate_limit_token_per_item() {
    let config = crate::harness::local_config(
        "  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }",
    ) + "limits: { per_caller: { rate: 1/m, burst: 10 } }\n";
    let s = Sidecar::start(&config).await;
    let batch = |n: usize| json!({ "items": vec![json!({"message": b64("m")}); n] });
    // 5 items: 5 of the 10 tokens. 6 more do not fit in the 5 left.
    s.post_ok("/v1/keys/sig/sign-batch", batch(5)).await;
    let v = s
        .post("/v1/keys/sig/sign-batch", batch(6))
        .await
        .expect(429, Some("rate_limited"));
    assert_eq!(v["error"]["retryable"], true, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one token per batch item"),
        "{v}"
    );
    // 11 items can never fit a burst of 10: said so, not worth a retry.
    let v = s
        .post("/v1/keys/sig/sign-batch", batch(11))
        .await
        .expect(429, Some("rate_limited"));
    assert_eq!(v["error"]["retryable"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("smaller batches"),
        "{v}"
    );
    // Each refused batch cost its request's token, as any request does:
    // 10 - 5 - 1 - 1 leaves 3.
    s.post_ok("/v1/keys/sig/sign-batch", batch(3)).await;
    s.post("/v1/keys/sig/sign-batch", batch(1))
        .await
        .expect(429, Some("rate_limited"));
}
