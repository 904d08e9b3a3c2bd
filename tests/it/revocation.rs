//! Revocation reaches the caches: a key disabled in its KMS stops
//! encrypting and decrypting through cached data keys within
//! `cache.data_keys.revalidate` (here 1 s) + 1 s, and works again once
//! enabled; `flush` drops a key's cached data keys on an operator's word.

use crate::harness::{Bao, Moto, Sidecar, b64, eventually, local_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const REVALIDATE: &str = "cache: { data_keys: { revalidate: 1s } }\n";
const CONTEXT: &str = r#"{"tenant":"acme"}"#;

fn context() -> Value {
    serde_json::from_str(CONTEXT).unwrap()
}

async fn seal(s: &Sidecar, alias: &str) -> crate::harness::Resp {
    s.post(
        &format!("/v1/keys/{alias}/envelope/encrypt"),
        json!({"plaintext": b64("kept under the key"), "context": context()}),
    )
    .await
}

async fn open(s: &Sidecar, alias: &str, envelope: &Value) -> crate::harness::Resp {
    s.post(
        &format!("/v1/keys/{alias}/envelope/decrypt"),
        json!({"envelope": envelope, "context": context()}),
    )
    .await
}

/// Envelope encryption with a cached data key, then `disable`: within
/// revalidate + 1 s both sealing and opening an envelope made before answer
/// 409 `key_disabled`; after `enable` both work again.
async fn disabled_then_enabled(
    s: &Sidecar,
    alias: &str,
    disable: impl std::future::Future<Output = ()>,
    enable: impl std::future::Future<Output = ()>,
) {
    let before = seal(s, alias).await.ok();
    assert_eq!(seal(s, alias).await.status, 200, "a cached data key seals");
    disable.await;
    let started = Instant::now();
    eventually(Duration::from_secs(2), "sealing stops", || async {
        seal(s, alias).await.status == 409
    })
    .await;
    seal(s, alias).await.expect(409, Some("key_disabled"));
    open(s, alias, &before["envelope"])
        .await
        .expect(409, Some("key_disabled"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "kms_sidecar_datakey_cache_revocations_total{{key=\"{alias}\",reason=\"disabled\"}}"
        ))),
        "{metrics}"
    );
    enable.await;
    eventually(Duration::from_secs(3), "sealing works again", || async {
        seal(s, alias).await.status == 200
    })
    .await;
    assert_eq!(open(s, alias, &before["envelope"]).await.status, 200);
}

#[tokio::test]
async fn a_local_key_disabled_in_its_file_stops_its_cached_data_keys() {
    let s = Sidecar::start(
        &(local_config(
            "  data: { backend: dev, key: data, algorithm: aes-256-gcm, ops: [\"*\"] }",
        ) + REVALIDATE),
    )
    .await;
    let file = s.dir.path().join("keys/data.json");
    let set = |disabled: bool| {
        let file = file.clone();
        async move {
            let mut v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            v["disabled"] = disabled.into();
            // Written in place: the file keeps its 0600 mode.
            std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    };
    disabled_then_enabled(&s, "data", set(true), set(false)).await;
}

#[tokio::test]
async fn an_aws_key_disabled_in_kms_stops_its_cached_data_keys() {
    let moto = Moto::start().await;
    let kms = moto.kms();
    let key = kms.create_key().send().await.unwrap();
    let id = key.key_metadata().unwrap().key_id().to_owned();
    let config = format!(
        "backends:\n  kms: {{ type: aws, region: us-east-1, endpoint: \"{}\" }}\nkeys:\n  data: {{ backend: kms, key: \"{id}\", ops: [\"*\"] }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n{REVALIDATE}",
        moto.url,
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start_with_env(&config, &crate::aws::STATIC).await;
    disabled_then_enabled(
        &s,
        "data",
        async {
            kms.disable_key().key_id(&id).send().await.unwrap();
        },
        async {
            kms.enable_key().key_id(&id).send().await.unwrap();
        },
    )
    .await;
}

/// Vault: raising `min_decryption_version` past the version that wrapped a
/// cached data key drops it; envelopes made before stop opening, and new
/// ones use the newest version.
#[tokio::test]
async fn a_vault_version_below_min_decryption_version_stops_its_cached_data_keys() {
    let bao = Bao::start().await;
    bao.transit_with_key("data", "aes256-gcm96").await;
    let token_file = bao.root_token_file();
    let config = format!(
        "backends:\n  vault: {{ type: vault, address: \"{}\", auth: {{ method: token, token_file: \"{}\" }} }}\nkeys:\n  data: {{ backend: vault, key: data, ops: [\"*\"] }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n{REVALIDATE}",
        bao.url,
        token_file.display(),
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start(&config).await;
    s.secret(bao.root_token.clone());
    let before = seal(&s, "data").await.ok();
    assert_eq!(before["version"], "1");
    bao.api("POST", "transit/keys/data/rotate", json!({})).await;
    bao.api(
        "POST",
        "transit/keys/data/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "new envelopes use version 2",
        || async { seal(&s, "data").await.json()["version"] == "2" },
    )
    .await;
    open(&s, "data", &before["envelope"])
        .await
        .expect(409, Some("key_disabled"));
    let after = seal(&s, "data").await.ok();
    assert_eq!(open(&s, "data", &after["envelope"]).await.status, 200);
}

#[tokio::test]
async fn flush_drops_cached_data_keys_for_operators_only() {
    let uid = nix::unistd::geteuid().as_raw();
    let config = format!(
        "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n  data: {{ backend: dev, key: data, algorithm: aes-256-gcm }}\n  ops: {{ backend: dev, key: ops, algorithm: aes-256-gcm, ops: [envelope, flush] }}\ncallers:\n  - {{ uids: [{uid}], keys: [\"*\"], ops: [\"*\"] }}\n"
    );
    let s = Sidecar::start(&config).await;
    // `flush` is not among a key's default operations.
    s.post("/v1/keys/data/flush", json!({}))
        .await
        .expect(403, Some("forbidden"));
    async fn misses(s: &Sidecar) -> u64 {
        let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
        let line = r#"kms_sidecar_datakey_cache_misses_total{key="ops",op="encrypt"} "#;
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }
    seal(&s, "ops").await.ok();
    seal(&s, "ops").await.ok();
    assert_eq!(
        misses(&s).await,
        1,
        "the second envelope used the cached key"
    );
    let flushed = s.post_ok("/v1/keys/ops/flush", json!({})).await;
    assert_eq!(flushed, json!({"key": "ops", "flushed": true}));
    seal(&s, "ops").await.ok();
    assert_eq!(
        misses(&s).await,
        2,
        "after the flush a new data key was made"
    );
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics
            .contains(r#"kms_sidecar_datakey_cache_revocations_total{key="ops",reason="flush"} 1"#),
        "{metrics}"
    );
}

/// The KMS calls of `op` that the backends made, as `backend_calls_total`
/// counts them (every outcome).
async fn backend_calls(s: &Sidecar, op: &str) -> u64 {
    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    let op = format!(r#"op="{op}""#);
    text.lines()
        .filter(|l| l.starts_with("kms_sidecar_backend_calls_total{") && l.contains(&op))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `flush` is not a way to make KMS call storms: in a burst of flushes by
/// an operator, each followed by an envelope, one flush a second per key
/// takes effect and the others are 429 `rate_limited` (retryable, with
/// `Retry-After`) and keep the cached data key, so the KMS makes a data
/// key per second of the burst at most, not one per flush.
#[tokio::test]
async fn a_burst_of_flushes_makes_a_bounded_number_of_kms_calls() {
    let s = Sidecar::start(&local_config(
        "  ops: { backend: dev, key: ops, algorithm: aes-256-gcm, ops: [envelope, flush] }",
    ))
    .await;
    let started = Instant::now();
    let (mut took_effect, mut refused) = (0u64, 0u64);
    for _ in 0..40 {
        let r = s.post("/v1/keys/ops/flush", json!({})).await;
        if r.status == 200 {
            took_effect += 1;
        } else {
            let v = r.expect(429, Some("rate_limited"));
            assert_eq!(v["error"]["retryable"], true, "{v}");
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert_eq!(wait, 1, "Retry-After: at most the one second");
            refused += 1;
        }
        seal(&s, "ops").await.ok();
    }
    let seconds = started.elapsed().as_secs();
    let generated = backend_calls(&s, "generate_data_key").await;
    assert!(
        took_effect <= 1 + seconds && generated <= 1 + seconds,
        "{took_effect} flushes took effect and {generated} data keys were made in {seconds} s"
    );
    assert_eq!(took_effect + refused, 40);
    assert_eq!(
        generated, took_effect,
        "a refused flush keeps the cached data key"
    );
    assert!(s.metric("kms_sidecar_rate_limited_total").await >= refused as f64);
    // Once the second is over, a flush takes effect again.
    eventually(
        Duration::from_secs(3),
        "a flush after Retry-After",
        || async { s.post("/v1/keys/ops/flush", json!({})).await.status == 200 },
    )
    .await;
    seal(&s, "ops").await.ok();
    assert_eq!(backend_calls(&s, "generate_data_key").await, generated + 1);
}
