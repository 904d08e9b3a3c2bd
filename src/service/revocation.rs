//! Revocation that reaches the caches: every `cache.data_keys.revalidate`
//! the state of each key with cached data keys is asked of its KMS (one
//! call per key, not per data key), and a key that is disabled, deleted or
//! pending deletion, or a version disabled since the last look (Vault's
//! `min_decryption_version`), drops the key's cached data keys, metadata and
//! public keys at once. `POST /v1/keys/{name}/flush` does the same on an
//! operator's word. (A `key_disabled` answer to any data-key call drops
//! them too: see [`crate::cache`].)

use super::{Grant, Service};
use crate::api::{self, ApiError, Code};
use crate::backend::{ErrorKind, Revocation};
use crate::keys::{FLUSH_INTERVAL, KeyEntry};
use crate::policy::Op;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl Service {
    /// Revalidates every `interval` while the service lives.
    pub fn spawn_revalidation(self: &Arc<Self>, interval: Duration) {
        let service: Weak<Service> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: nothing is cached yet
            loop {
                tick.tick().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                service.revalidate().await;
            }
        });
    }

    /// One look at every key with cached data keys, and at every key
    /// found revoked before (which is let through again once usable).
    pub async fn revalidate(&self) {
        let mut keys = self.data_keys.cached_keys();
        for alias in self.keys.aliases() {
            if self.keys.get(alias).is_some_and(|e| e.revoked().is_some()) {
                keys.entry(alias.to_owned()).or_default();
            }
        }
        for (alias, dek_versions) in keys {
            let Some(entry) = self.keys.get(&alias) else {
                continue;
            };
            match self.revoked(entry, &dek_versions).await {
                Some(reason) => self.drop_cached(entry, reason).await,
                None if entry.revoked().is_some() => {
                    entry.set_revoked(None);
                    tracing::info!(key.alias = %alias, "key usable again in its KMS");
                }
                None => {}
            }
        }
    }

    /// Why the key's cached data keys must go, if they must;
    /// `dek_versions` wrapped its encrypt-side ones.
    async fn revoked(&self, entry: &Arc<KeyEntry>, dek_versions: &[String]) -> Option<Dropped> {
        let status = match entry.backend.key_status(entry.key_ref()).await {
            Ok(status) => status,
            Err(e) if e.kind == ErrorKind::KeyDisabled => {
                return Some(Dropped::Revoked(Revocation::Disabled));
            }
            Err(e) if e.kind == ErrorKind::KeyNotFound => {
                return Some(Dropped::Revoked(Revocation::Deleted));
            }
            // Unreachable or refused: no news about the key (the resilience
            // layer logged and counted the failure); asked again next time.
            Err(_) => return entry.revoked().map(Dropped::Revoked),
        };
        if let Some(revocation) = status.revoked {
            return Some(Dropped::Revoked(revocation));
        }
        let enabled = status.enabled_versions?;
        let mut last = self.enabled_versions.lock().expect("never poisoned");
        // A version that decrypted at the last look and does not now, or
        // one that wrapped a cached data key and does not decrypt.
        let shrank = last
            .get(&entry.alias)
            .is_some_and(|before| before.iter().any(|v| !enabled.contains(v)));
        let cached_disabled = dek_versions.iter().any(|v| !enabled.contains(v));
        last.insert(entry.alias.clone(), enabled);
        (shrank || cached_disabled).then_some(Dropped::VersionDisabled)
    }

    /// Drops the key's cached data keys (both sides), metadata and public
    /// keys; a key disabled, deleted or pending deletion is refused from now
    /// on, until a revalidation finds it usable.
    async fn drop_cached(&self, entry: &Arc<KeyEntry>, why: Dropped) {
        if let Dropped::Revoked(revocation) = why {
            if entry.revoked() == Some(revocation) {
                return; // already refused, nothing cached since
            }
            entry.set_revoked(Some(revocation));
        }
        self.data_keys.drop_key(&entry.alias, why.label());
        entry.forget_facts().await;
    }

    /// `POST /v1/keys/{name}/flush`: drops the key's cached data keys and
    /// public keys now (incident response). One flush a second per key
    /// takes effect ([`FLUSH_INTERVAL`]); another within that second is 429
    /// `rate_limited` with `Retry-After`, so that a loop of flushes cannot
    /// turn the key's traffic into a KMS call each.
    pub async fn flush(&self, grant: &Grant<'_>) -> Result<api::FlushResponse, ApiError> {
        let (caller, alias) = (&grant.caller, grant.alias);
        let entry = self.granted(grant, Op::Flush)?;
        if let Err(wait) = entry.take_flush() {
            self.metrics.rate_limited.inc();
            return Err(ApiError::new(
                Code::RateLimited,
                format!(
                    "key `{alias}` was flushed less than {} s ago: one flush a second per key takes effect; retry in {} ms",
                    FLUSH_INTERVAL.as_secs(),
                    wait.as_millis()
                ),
            )
            .retry_in(wait.as_secs_f64().ceil() as u64));
        }
        self.drop_cached(entry, Dropped::Flush).await;
        tracing::warn!(
            key.alias = alias,
            caller.uid = caller.uid,
            "key flushed by an operator"
        );
        Ok(api::FlushResponse {
            key: alias.to_owned(),
            flushed: true,
        })
    }
}

/// Why a key's cached data keys, metadata and public keys are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// The KMS refuses the key: so does the sidecar from now on.
    Revoked(Revocation),
    /// A version that decrypted does not any more.
    VersionDisabled,
    /// An operator's `flush`.
    Flush,
}

impl Dropped {
    /// The `reason` label of `datakey_revocations_total`.
    fn label(self) -> &'static str {
        match self {
            Dropped::Revoked(r) => r.label(),
            Dropped::VersionDisabled => "version_disabled",
            Dropped::Flush => "flush",
        }
    }
}
