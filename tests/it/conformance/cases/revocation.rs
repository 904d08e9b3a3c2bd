//! Revocation reaches the data-key cache on every backend: a key disabled in
//! its KMS, the way an operator does it there, is refused with 409
//! `key_disabled`, and the data keys cached under it are dropped, within
//! `cache.data_keys.revalidate` (the suite's [`REVALIDATE`]) + 1 s.

use super::{SECRET, context};
use crate::conformance::{Env, REVALIDATE};
use crate::harness::eventually;
use std::time::Duration;

/// An envelope sealed before, and one sealed with the cached data key; then
/// the key is disabled in the KMS. Within revalidate + 1 s sealing answers
/// 409 `key_disabled` (no cached data key seals any more), opening the
/// envelope made before does too (its unwrapped data key is gone from the
/// cache, which would otherwise open it without the KMS), and the drop is
/// counted.
pub async fn a_disabled_key_is_refused_and_its_data_keys_dropped(t: &Env) {
    let before = t.seal(SECRET, context()).await;
    assert_eq!(t.open(&before, context()).await, SECRET, "{t}");
    t.seal(SECRET, context()).await;
    t.disable_aes_key().await;
    eventually(
        REVALIDATE + Duration::from_secs(1),
        &format!("{t}: sealing with the disabled key is refused"),
        || async move { t.call("aes", "envelope/encrypt", seal_body()).await.status == 409 },
    )
    .await;
    t.refused("aes", "envelope/encrypt", seal_body(), 409, "key_disabled")
        .await;
    let open = serde_json::json!({"envelope": before["envelope"], "context": context()});
    t.refused("aes", "envelope/decrypt", open, 409, "key_disabled")
        .await;
    let metrics = String::from_utf8(t.s.get("/metrics").await.body.to_vec()).expect("utf-8");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"kms_sidecar_datakey_cache_revocations_total{key="aes","#)),
        "{t}: the drop of the cached data keys is not counted:\n{metrics}"
    );
}

fn seal_body() -> serde_json::Value {
    serde_json::json!({"plaintext": crate::harness::b64(SECRET), "context": context()})
}
