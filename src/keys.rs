//! The key aliases of the config and what stands behind each: backend, key
//! reference, allowed operations, rotation period, replay guard, and — once
//! known — the key's algorithm and (for `cache.metadata.ttl`) its metadata. Below the service, the data-key cache and the
//! audit log, which all name keys by alias.

use crate::backend::{self, Backend, KeyRef};
use crate::config::Config;
use crate::crypto::Algorithm;
use crate::policy::{Op, OpOrAll, grants};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A key's metadata as last asked, and when.
type Cached = Option<(Instant, Arc<backend::KeyMetadata>)>;

/// A key's metadata, asked of the backend at most once per `ttl`: callers
/// that find it missing or expired wait for one call together, and one that
/// finds it in the last fifth of its life has it refreshed in the
/// background, so a key in use never waits. Errors are not kept.
#[derive(Debug, Default)]
struct MetadataCache {
    ttl: Duration,
    slot: tokio::sync::Mutex<Cached>,
    refreshing: AtomicBool,
}

/// A configured key alias and the backend behind it.
#[derive(Debug)]
pub struct KeyEntry {
    pub alias: String,
    pub backend_name: String,
    pub backend: Arc<dyn Backend>,
    /// The backend's reference for the key.
    pub id: String,
    ops: Option<Vec<OpOrAll>>,
    /// `keys.*.rotation_period`.
    pub rotation_period: Option<Duration>,
    /// Requests must carry a fresh nonce and timestamp.
    pub replay_guard: bool,
    /// Bumped by every rotation through the API, so that envelopes stop
    /// using data keys wrapped by the old version.
    pub generation: AtomicU64,
    /// The key's algorithm, asked of the backend once: no KMS changes the
    /// type of an existing key.
    algorithm: OnceLock<Algorithm>,
    metadata: MetadataCache,
    /// Why the KMS says the key may not be used (`disabled`, `deleted`,
    /// `pending_deletion`), as the last revalidation found: until one finds
    /// it usable again, requests are refused without a KMS call.
    revoked: std::sync::Mutex<Option<&'static str>>,
}

impl KeyEntry {
    /// An alias with the default operations and no rotation period.
    pub fn new(alias: &str, backend_name: &str, backend: Arc<dyn Backend>, id: &str) -> Self {
        Self {
            alias: alias.to_owned(),
            backend_name: backend_name.to_owned(),
            backend,
            id: id.to_owned(),
            ops: None,
            rotation_period: None,
            replay_guard: false,
            generation: AtomicU64::new(0),
            algorithm: OnceLock::new(),
            metadata: MetadataCache::default(),
            revoked: std::sync::Mutex::new(None),
        }
    }

    /// See [`KeyEntry::revoked`]: `Some(reason)` while refused.
    pub fn revoked(&self) -> Option<&'static str> {
        *self.revoked.lock().expect("never poisoned")
    }

    pub fn set_revoked(&self, reason: Option<&'static str>) {
        *self.revoked.lock().expect("never poisoned") = reason;
    }

    /// The key's metadata, from the cache while `cache.metadata.ttl` allows
    /// (see [`MetadataCache`]).
    pub async fn metadata(self: &Arc<Self>) -> Result<Arc<backend::KeyMetadata>, backend::Error> {
        let cache = &self.metadata;
        let mut slot = cache.slot.lock().await;
        if let Some((at, m)) = &*slot {
            let age = at.elapsed();
            if age < cache.ttl {
                if age >= cache.ttl / 5 * 4 && !cache.refreshing.swap(true, Ordering::AcqRel) {
                    let entry = self.clone();
                    tokio::spawn(async move {
                        if let Ok(m) = entry.backend.metadata(entry.key_ref()).await {
                            *entry.metadata.slot.lock().await = Some((Instant::now(), Arc::new(m)));
                        }
                        entry.metadata.refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(m.clone());
            }
        }
        // One call for every caller waiting on the lock.
        let m = Arc::new(self.backend.metadata(self.key_ref()).await?);
        if !cache.ttl.is_zero() {
            *slot = Some((Instant::now(), m.clone()));
        }
        Ok(m)
    }

    /// Drops the cached metadata (a rotation, a version the cache does not
    /// know yet).
    pub async fn forget_metadata(&self) {
        *self.metadata.slot.lock().await = None;
    }

    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            alias: &self.alias,
            id: &self.id,
        }
    }

    /// The operations this alias allows, given its algorithm.
    pub fn ops(&self, algorithm: Algorithm) -> Vec<Op> {
        algorithm
            .supported_ops()
            .iter()
            .copied()
            .filter(|op| self.allows(*op))
            .collect()
    }

    /// Whether `keys.*.ops` allows `op` (default: everything but the
    /// operators' `rotate` and `flush`).
    pub fn allows(&self, op: Op) -> bool {
        match &self.ops {
            Some(ops) => grants(ops, op),
            None => !matches!(op, Op::Rotate | Op::Flush),
        }
    }

    /// The key's algorithm: from the backend's metadata the first time, then
    /// remembered.
    pub async fn algorithm(self: &Arc<Self>) -> Result<Algorithm, backend::Error> {
        if let Some(a) = self.algorithm.get() {
            return Ok(*a);
        }
        let m = self.metadata().await?;
        Ok(*self.algorithm.get_or_init(|| m.algorithm))
    }
}

/// Every configured alias.
#[derive(Debug, Default)]
pub struct Keys {
    by_alias: HashMap<String, Arc<KeyEntry>>,
}

impl Keys {
    /// The aliases of `config` over the built `backends`.
    pub fn new(config: &Config, backends: &BTreeMap<String, Arc<dyn Backend>>) -> Self {
        let by_alias = config
            .keys
            .iter()
            .filter_map(|(alias, k)| {
                let mut entry =
                    KeyEntry::new(alias, &k.backend, backends.get(&k.backend)?.clone(), &k.key);
                entry.ops = k.ops.clone();
                entry.rotation_period = k.rotation_period.map(|d| d.0);
                entry.replay_guard = k.replay_guard;
                entry.metadata.ttl = config.cache.metadata.ttl.0;
                Some((alias.clone(), Arc::new(entry)))
            })
            .collect();
        Self { by_alias }
    }

    /// The aliases of a reloaded `config` (the last one was `old`, with
    /// `keys`): an alias whose definition, backend and metadata TTL are
    /// unchanged is the same entry as before, state and caches included.
    pub fn new_after(
        config: &Config,
        old: &Config,
        keys: &Keys,
        backends: &backend::Backends,
    ) -> Self {
        let mut next = Self::new(config, backends);
        let ttl_same = config.cache.metadata.ttl.0 == old.cache.metadata.ttl.0;
        for (alias, entry) in &mut next.by_alias {
            let Some(before) = keys.get(alias) else {
                continue;
            };
            let same = ttl_same
                && Arc::ptr_eq(&before.backend, &entry.backend)
                && (old.keys.get(alias))
                    .zip(config.keys.get(alias))
                    .is_some_and(|(a, b)| crate::config::same(a, b));
            if same {
                *entry = before.clone();
            }
        }
        next
    }

    pub fn get(&self, alias: &str) -> Option<&Arc<KeyEntry>> {
        self.by_alias.get(alias)
    }

    pub fn contains(&self, alias: &str) -> bool {
        self.by_alias.contains_key(alias)
    }

    /// The aliases, sorted.
    pub fn aliases(&self) -> Vec<&str> {
        let mut aliases: Vec<&str> = self.by_alias.keys().map(String::as_str).collect();
        aliases.sort_unstable();
        aliases
    }
}
