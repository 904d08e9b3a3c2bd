//! The key aliases of the config and what stands behind each: backend, key
//! reference, allowed operations, rotation period, replay guard, and — once
//! known — the key's facts: its algorithm, its metadata (for
//! `cache.metadata.ttl`) and its public keys (for `cache.public_keys.ttl`),
//! the one cache of them above the backends. Below the service, the
//! data-key cache and the audit log, which all name keys by alias.

use crate::backend::{self, Backend, KeyRef};
use crate::config::Config;
use crate::crypto::Algorithm;
use crate::policy::{Op, OpOrAll, grants};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// A key's metadata as last asked, and when.
type Cached = Option<(Instant, Arc<backend::KeyMetadata>)>;

/// A key's metadata, asked of the backend at most once per `ttl`: callers
/// that find it missing or expired wait for one call together, and one that
/// finds it in the last fifth of its life has it refreshed in the
/// background, so a key in use never waits. Errors are not kept.
#[derive(Debug, Default)]
struct MetadataCache {
    ttl: Duration,
    /// What `slot` holds, read without its lock: every request reads the
    /// metadata, often twice, and concurrent requests of one key would
    /// otherwise queue on the lock.
    fresh: arc_swap::ArcSwapOption<(Instant, Arc<backend::KeyMetadata>)>,
    slot: tokio::sync::Mutex<Cached>,
    refreshing: AtomicBool,
    /// Bumped (under the slot's lock) each time the cache is cleared: a
    /// background refresh that began before keeps what it fetched to itself,
    /// or a rotation's clearing would be undone with the old metadata.
    cleared: AtomicU64,
}

impl MetadataCache {
    /// Keeps `m`, asked now, in `slot` (its lock held) and in `fresh`.
    fn keep(&self, slot: &mut Cached, m: Arc<backend::KeyMetadata>) {
        let now = Instant::now();
        *slot = Some((now, m.clone()));
        self.fresh.store(Some(Arc::new((now, m))));
    }
}

/// Most public keys kept per key (versions asked for, and the current one).
const PUBLIC_KEYS_PER_KEY: usize = 64;

/// A key's public keys by version (`""`: the current one), each with when
/// it was asked, reused for `cache.public_keys.ttl`.
#[derive(Debug, Default)]
struct PublicKeys {
    ttl: Duration,
    by_version: std::sync::Mutex<HashMap<String, (Instant, Arc<backend::PublicKey>)>>,
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
    public_keys: PublicKeys,
    /// Why the KMS says the key may not be used, as the last revalidation
    /// found: until one finds it usable again, requests are refused without
    /// a KMS call.
    revoked: std::sync::Mutex<Option<backend::Revocation>>,
    /// When an operator's `flush` last took effect ([`FLUSH_INTERVAL`]).
    last_flush: std::sync::Mutex<Option<Instant>>,
}

/// The least time between two flushes of one key that take effect. A flush
/// makes the key's next requests call the KMS (its data keys and public
/// keys are gone), so flushes in a loop would be a KMS call storm; one a
/// second per key still lets an operator drop a key at once.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
            public_keys: PublicKeys::default(),
            revoked: std::sync::Mutex::new(None),
            last_flush: std::sync::Mutex::new(None),
        }
    }

    /// Takes the key's turn to be flushed: `Err(wait)` while the last flush
    /// that took effect is less than [`FLUSH_INTERVAL`] old.
    pub fn take_flush(&self) -> Result<(), Duration> {
        let mut last = self.last_flush.lock().expect("never poisoned");
        let now = Instant::now();
        if let Some(at) = *last {
            let since = now.saturating_duration_since(at);
            if since < FLUSH_INTERVAL {
                return Err(FLUSH_INTERVAL - since);
            }
        }
        *last = Some(now);
        Ok(())
    }

    /// See [`KeyEntry::revoked`]: `Some(reason)` while refused.
    pub fn revoked(&self) -> Option<backend::Revocation> {
        *self.revoked.lock().expect("never poisoned")
    }

    pub fn set_revoked(&self, reason: Option<backend::Revocation>) {
        *self.revoked.lock().expect("never poisoned") = reason;
    }

    /// The key's metadata, from the cache while `cache.metadata.ttl` allows
    /// (see [`MetadataCache`]).
    pub async fn metadata(self: &Arc<Self>) -> Result<Arc<backend::KeyMetadata>, backend::Error> {
        let cache = &self.metadata;
        // Young enough to need no refresh: no lock.
        if let Some(hit) = &*cache.fresh.load()
            && hit.0.elapsed() < cache.ttl / 5 * 4
        {
            return Ok(hit.1.clone());
        }
        let mut slot = cache.slot.lock().await;
        if let Some((at, m)) = &*slot {
            let age = at.elapsed();
            if age < cache.ttl {
                if age >= cache.ttl / 5 * 4 && !cache.refreshing.swap(true, Ordering::AcqRel) {
                    let entry = self.clone();
                    let cleared = cache.cleared.load(Ordering::Acquire);
                    tokio::spawn(async move {
                        if let Ok(m) = entry.backend.metadata(entry.key_ref()).await {
                            let mut slot = entry.metadata.slot.lock().await;
                            if entry.metadata.cleared.load(Ordering::Acquire) == cleared {
                                entry.metadata.keep(&mut slot, Arc::new(m));
                            }
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
            cache.keep(&mut slot, m.clone());
        }
        Ok(m)
    }

    /// Drops the cached metadata (a rotation, a version the cache does not
    /// know yet).
    pub async fn forget_metadata(&self) {
        let mut slot = self.metadata.slot.lock().await;
        *slot = None;
        self.metadata.fresh.store(None);
        self.metadata.cleared.fetch_add(1, Ordering::AcqRel);
    }

    /// The public key of `version` (default: the current one), from the
    /// cache while `cache.public_keys.ttl` allows.
    pub async fn public_key(
        self: &Arc<Self>,
        version: Option<&str>,
    ) -> Result<Arc<backend::PublicKey>, backend::Error> {
        let cache = &self.public_keys;
        let slot = version.unwrap_or("");
        if let Some((at, pk)) = cache.by_version.lock().expect("never poisoned").get(slot)
            && at.elapsed() < cache.ttl
        {
            return Ok(pk.clone());
        }
        let known = self.metadata().await?;
        let pk = Arc::new(self.backend.public_key(self.known(&known), version).await?);
        let mut kept = cache.by_version.lock().expect("never poisoned");
        if kept.len() >= PUBLIC_KEYS_PER_KEY {
            kept.clear();
        }
        kept.insert(slot.to_owned(), (Instant::now(), pk.clone()));
        Ok(pk)
    }

    /// Drops everything cached of the key's facts: metadata and public keys
    /// (a rotation, a revocation, an operator's flush).
    pub async fn forget_facts(&self) {
        self.forget_metadata().await;
        self.public_keys
            .by_version
            .lock()
            .expect("never poisoned")
            .clear();
    }

    /// The key as its backend knows it, nothing known of it (for the
    /// metadata call itself and the revalidation, which always ask the KMS).
    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef::new(&self.alias, &self.id)
    }

    /// The key with its cached `metadata` (from [`KeyEntry::metadata`]),
    /// which carries the driver's own facts of it: every other backend call
    /// goes with it, so that no driver keeps a cache of its own.
    pub fn known<'a>(&'a self, metadata: &'a backend::KeyMetadata) -> KeyRef<'a> {
        KeyRef {
            known: Some(metadata),
            ..self.key_ref()
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
                entry.public_keys.ttl = config.cache.public_keys.ttl.0;
                Some((alias.clone(), Arc::new(entry)))
            })
            .collect();
        Self { by_alias }
    }

    /// The aliases of a reloaded `config` (the last ones were `keys`): an
    /// alias [`crate::config::Changes::key_kept`] whose backend is the same
    /// is the same entry as before, state and caches included.
    pub fn new_after(
        config: &Config,
        changes: crate::config::Changes<'_>,
        keys: &Keys,
        backends: &backend::Backends,
    ) -> Self {
        let mut next = Self::new(config, backends);
        for (alias, entry) in &mut next.by_alias {
            let Some(before) = keys.get(alias) else {
                continue;
            };
            if changes.key_kept(alias) && Arc::ptr_eq(&before.backend, &entry.backend) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Signature;
    use crate::backend::{Context, DataKey, Decrypted, KeyMetadata, Origin, PublicKey, Sealed};
    use crate::crypto::SignInput;
    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    /// A backend whose key is at `version`, and whose metadata calls can be
    /// held: a held call answers with the version of when it was made.
    #[derive(Debug, Default)]
    struct Rotating {
        version: AtomicU64,
        gate: Option<Semaphore>,
        calls: AtomicU64,
    }

    #[async_trait]
    impl Backend for Rotating {
        fn kind(&self) -> &'static str {
            "rotating"
        }
        async fn health(&self) -> Result<(), backend::Error> {
            Ok(())
        }
        async fn metadata(&self, _: KeyRef<'_>) -> Result<KeyMetadata, backend::Error> {
            let version = self.version.load(Ordering::SeqCst).to_string();
            if self.calls.fetch_add(1, Ordering::SeqCst) > 0
                && let Some(gate) = &self.gate
            {
                gate.acquire().await.expect("open").forget();
            }
            Ok(KeyMetadata {
                algorithm: Algorithm::Aes256Gcm,
                current_version: version,
                versions: vec![],
                created: None,
                origin: Origin::Software,
                rotation_period: None,
                details: BTreeMap::new(),
                driver: None,
            })
        }
        async fn public_key(
            &self,
            _: KeyRef<'_>,
            _: Option<&str>,
        ) -> Result<PublicKey, backend::Error> {
            Err(backend::Error::unsupported("public_key"))
        }
        async fn sign(
            &self,
            _: KeyRef<'_>,
            _: SignInput<'_>,
            _: crate::crypto::Algorithm,
        ) -> Result<Signature, backend::Error> {
            Err(backend::Error::unsupported("sign"))
        }
        async fn encrypt(
            &self,
            _: KeyRef<'_>,
            _: &[u8],
            _: &Context,
        ) -> Result<Sealed, backend::Error> {
            Err(backend::Error::unsupported("encrypt"))
        }
        async fn decrypt(
            &self,
            _: KeyRef<'_>,
            _: &[u8],
            _: &Context,
        ) -> Result<Decrypted, backend::Error> {
            Err(backend::Error::unsupported("decrypt"))
        }
        async fn generate_data_key(
            &self,
            _: KeyRef<'_>,
            _: backend::DataKeySize,
            _: &Context,
        ) -> Result<DataKey, backend::Error> {
            Err(backend::Error::unsupported("generate_data_key"))
        }
    }

    /// A background refresh that fetched before a rotation cleared the
    /// cache, and finishes after, does not put the old metadata back.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_from_before_a_clearing_is_not_kept() {
        let backend = Arc::new(Rotating {
            gate: Some(Semaphore::new(0)),
            ..Default::default()
        });
        let mut entry = KeyEntry::new("k", "b", backend.clone(), "k");
        entry.metadata.ttl = Duration::from_secs(10);
        let entry = Arc::new(entry);
        assert_eq!(entry.metadata().await.unwrap().current_version, "0");
        // In the last fifth of its life: served, and refreshed behind.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(entry.metadata().await.unwrap().current_version, "0");
        tokio::task::yield_now().await;
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            2,
            "the refresh is under way"
        );
        // The key rotates; the rotation clears the cache; then the held
        // refresh, which read version 0, answers.
        backend.version.store(1, Ordering::SeqCst);
        entry.forget_metadata().await;
        backend.gate.as_ref().unwrap().add_permits(100);
        while entry.metadata.refreshing.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert_eq!(entry.metadata().await.unwrap().current_version, "1");
        assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    }

    /// Without a clearing, the refresh is kept: no call at the next read.
    #[tokio::test(start_paused = true)]
    async fn a_background_refresh_is_kept() {
        let backend = Arc::new(Rotating::default());
        let mut entry = KeyEntry::new("k", "b", backend.clone(), "k");
        entry.metadata.ttl = Duration::from_secs(10);
        let entry = Arc::new(entry);
        entry.metadata().await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        backend.version.store(1, Ordering::SeqCst);
        assert_eq!(entry.metadata().await.unwrap().current_version, "0");
        while backend.calls.load(Ordering::SeqCst) < 2
            || entry.metadata.refreshing.load(Ordering::Acquire)
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(entry.metadata().await.unwrap().current_version, "1");
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    }

    /// One flush a second per key takes effect; the others say how long
    /// until the next one may.
    #[tokio::test(start_paused = true)]
    async fn one_flush_a_second_per_key_takes_effect() {
        let backend = Arc::new(Rotating::default());
        let a = KeyEntry::new("a", "b", backend.clone(), "a");
        let b = KeyEntry::new("b", "b", backend, "b");
        assert_eq!(a.take_flush(), Ok(()));
        assert_eq!(b.take_flush(), Ok(()), "another key has its own turn");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(a.take_flush(), Err(Duration::from_millis(700)));
        assert_eq!(
            a.take_flush(),
            Err(Duration::from_millis(700)),
            "a refused flush does not count"
        );
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(a.take_flush(), Ok(()));
        assert!(a.take_flush().is_err());
    }
}
