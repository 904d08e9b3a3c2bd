//! The data-key cache (SPEC §6): one active DEK per (key alias, encryption
//! context) reused until its TTL, message or byte limit; single-flight
//! generation; refresh-ahead in the background; and unwrapped DEKs cached by
//! their wrapped bytes for decryption. Plaintext DEKs live in `Zeroizing`
//! buffers, wiped when the last holder drops them (eviction included).

use crate::backend::{self, Context, ErrorKind, WrappedBy, canonical_context};
use crate::config::DataKeyCacheConfig;
use crate::keys::KeyEntry;
use crate::metrics::Metrics;
use crate::telemetry;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
/// Tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;
use zeroize::Zeroizing;

/// A data key: plaintext (wiped on drop), wrapped form, the key version
/// that wrapped it (of the DEKs generated here, which encrypt), and what
/// the KMS reported for the wrapping when the DEK was generated or
/// unwrapped: an envelope header is checked against it, on a cache hit as
/// on a miss.
pub struct Dek {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: Vec<u8>,
    pub version: String,
    pub by: WrappedBy,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("version", &self.version)
            .field("by", &self.by)
            .finish_non_exhaustive()
    }
}

/// The DEK currently used for one (alias, context), and how much it did.
struct Active {
    dek: Arc<Dek>,
    created: Instant,
    messages: AtomicU64,
    bytes: AtomicU64,
    refreshing: AtomicBool,
}

/// The limits of one DEK, from `cache.data_keys`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    ttl: Duration,
    refresh_ahead: Duration,
    max_messages: u64,
    max_bytes: u64,
}

impl Active {
    fn new(dek: Arc<Dek>) -> Self {
        Self {
            dek,
            created: Instant::now(),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    fn usable(&self, l: &Limits) -> bool {
        self.created.elapsed() < l.ttl
            && self.messages.load(Ordering::Relaxed) < l.max_messages
            && self.bytes.load(Ordering::Relaxed) < l.max_bytes
    }

    /// Counts one message of `bytes` against the limits; `false` when this
    /// DEK may not take it. A fresh DEK always takes its first message, so a
    /// message larger than `max_bytes` still gets a key.
    fn reserve(&self, bytes: u64, l: &Limits) -> bool {
        if self.created.elapsed() >= l.ttl {
            return false;
        }
        let m = self.messages.fetch_add(1, Ordering::Relaxed);
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        m == 0 || (m < l.max_messages && b.saturating_add(bytes) <= l.max_bytes)
    }

    fn due_for_refresh(&self, l: &Limits) -> bool {
        self.created.elapsed() + l.refresh_ahead >= l.ttl
    }
}

struct Inner {
    encrypt: Cache<Vec<u8>, Arc<Active>>,
    decrypt: Cache<Vec<u8>, Arc<Dek>>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// The data-key cache, shared by every request.
#[derive(Clone)]
pub struct DataKeyCache(Arc<Inner>);

impl fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("limits", &self.0.limits)
            .field("encrypt_entries", &self.0.encrypt.entry_count())
            .field("decrypt_entries", &self.0.decrypt.entry_count())
            .finish()
    }
}

/// Encrypt side: alias ‖ 0 ‖ rotation generation ‖ canonical context.
fn encrypt_key(key: &KeyEntry, context: &Context) -> Vec<u8> {
    let mut k = key.alias.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&key.generation.load(Ordering::Relaxed).to_be_bytes());
    k.extend_from_slice(&canonical_context(context));
    k
}

/// Decrypt side: alias ‖ 0 ‖ canonical context ‖ 0 ‖ wrapped DEK.
fn decrypt_key(alias: &str, context: &Context, wrapped: &[u8]) -> Vec<u8> {
    let mut k = alias.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&canonical_context(context));
    k.push(0);
    k.extend_from_slice(wrapped);
    k
}

impl DataKeyCache {
    pub fn new(config: &DataKeyCacheConfig, metrics: Arc<Metrics>) -> Self {
        let limits = Limits {
            ttl: config.ttl.0,
            refresh_ahead: config.refresh_ahead.0,
            max_messages: config.max_messages,
            max_bytes: config.max_bytes.0,
        };
        fn build<V: Clone + Send + Sync + 'static>(
            entries: u64,
            ttl: Duration,
        ) -> Cache<Vec<u8>, V> {
            Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .eviction_policy(EvictionPolicy::lru())
                .support_invalidation_closures()
                .build()
        }
        Self(Arc::new(Inner {
            encrypt: build(config.max_entries, limits.ttl),
            decrypt: build(config.max_entries, limits.ttl),
            limits,
            metrics,
        }))
    }

    /// A DEK to encrypt one message of `bytes` under `context`: the cached one
    /// while it is within its limits, else a fresh one (one backend call, however
    /// many requests miss at once).
    pub async fn encrypt_dek(
        &self,
        key: &Arc<KeyEntry>,
        context: &Context,
        bytes: u64,
    ) -> Result<Arc<Dek>, backend::Error> {
        let inner = &self.0;
        let l = inner.limits;
        let id = encrypt_key(key, context);
        if let Some(active) = inner.encrypt.get(&id).await
            && active.reserve(bytes, &l)
        {
            self.hit(key, "encrypt");
            self.refresh_if_due(key, context, &id, &active);
            return Ok(active.dek.clone());
        }
        loop {
            let mut generated = false;
            let entry = inner
                .encrypt
                .entry(id.clone())
                .and_try_compute_with(|current| async {
                    if let Some(current) = current
                        && current.value().usable(&l)
                    {
                        return Ok(Op::Nop);
                    }
                    generated = true;
                    let dek = self
                        .generate(key, context)
                        .instrument(fetch_span(key, "generate_data_key"))
                        .await?;
                    Ok::<_, backend::Error>(Op::Put(Arc::new(Active::new(dek))))
                })
                .await?
                .into_entry()
                .expect("an entry exists after Nop on a usable one or Put");
            let active = entry.into_value();
            if generated {
                self.miss(key, "encrypt");
                self.schedule_refresh(key, context, &id, &active);
            } else {
                self.hit(key, "encrypt");
            }
            if active.reserve(bytes, &l) {
                return Ok(active.dek.clone());
            }
            // Used up by concurrent requests between the compute and now: go again.
        }
    }

    /// The plaintext of a wrapped DEK: from the cache, else unwrapped by the
    /// backend (one call for concurrent requests).
    pub async fn decrypt_dek(
        &self,
        key: &Arc<KeyEntry>,
        context: &Context,
        wrapped: &[u8],
    ) -> Result<Arc<Dek>, backend::Error> {
        let inner = &self.0;
        let id = decrypt_key(&key.alias, context, wrapped);
        if let Some(dek) = inner.decrypt.get(&id).await {
            self.hit(key, "decrypt");
            return Ok(dek);
        }
        let mut called = false;
        let dek = inner
            .decrypt
            .try_get_with(id, async {
                called = true;
                let known = key.metadata().await?;
                let decrypted = key
                    .backend
                    .decrypt(key.known(&known), wrapped, context)
                    .instrument(fetch_span(key, "decrypt"))
                    .await
                    .inspect_err(|e| self.revoked_by(key, e))?;
                inner
                    .metrics
                    .datakey_backend_calls
                    .with_label_values(&[&key.alias, "decrypt"])
                    .inc();
                Ok::<_, backend::Error>(Arc::new(Dek {
                    plaintext: decrypted.plaintext.0,
                    wrapped: wrapped.to_vec(),
                    version: String::new(),
                    by: decrypted.by,
                }))
            })
            .await
            .map_err(|e: Arc<backend::Error>| backend::Error::new(e.kind, e.message.clone()))?;
        if called {
            self.miss(key, "decrypt");
        } else {
            self.hit(key, "decrypt");
        }
        Ok(dek)
    }

    async fn generate(
        &self,
        key: &Arc<KeyEntry>,
        context: &Context,
    ) -> Result<Arc<Dek>, backend::Error> {
        let inner = &self.0;
        let known = key.metadata().await?;
        let dk = key
            .backend
            .generate_data_key(key.known(&known), backend::DataKeySize::Aes256, context)
            .await
            .inspect_err(|e| self.revoked_by(key, e))?;
        inner
            .metrics
            .datakey_backend_calls
            .with_label_values(&[&key.alias, "generate_data_key"])
            .inc();
        if dk.plaintext.0.len() != 32 {
            return Err(backend::Error::new(
                ErrorKind::Backend,
                "the backend returned a data key that is not 256 bits",
            ));
        }
        let dek = Arc::new(Dek {
            plaintext: dk.plaintext.0,
            wrapped: dk.encrypted,
            by: WrappedBy::exactly(dk.version.as_str(), dk.key_ref),
            version: dk.version,
        });
        // What we encrypt with now we can decrypt without asking the KMS.
        inner
            .decrypt
            .insert(decrypt_key(&key.alias, context, &dek.wrapped), dek.clone())
            .await;
        Ok(dek)
    }

    /// Drops every cached data key of `alias`, both sides, now (their
    /// plaintext is wiped as the last holder lets go), and counts why.
    pub fn drop_key(&self, alias: &str, reason: &str) {
        self.forget_key(alias);
        self.0
            .metrics
            .datakey_revocations
            .with_label_values(&[alias, reason])
            .inc();
        tracing::warn!(key.alias = alias, reason, "cached data keys dropped");
    }

    /// Drops every cached data key of `alias`, both sides, without counting
    /// a revocation (a config reload removed or redefined the key).
    pub fn forget_key(&self, alias: &str) {
        let prefix = [alias.as_bytes(), &[0]].concat();
        // Only fails without `support_invalidation_closures`, set in `new`.
        let p = prefix.clone();
        let _ = self
            .0
            .encrypt
            .invalidate_entries_if(move |k, _| k.starts_with(&p));
        let _ = self
            .0
            .decrypt
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix));
    }

    /// Every alias with cached data keys (either side), and the versions
    /// that wrapped its encrypt-side ones: one pass over the caches.
    pub fn cached_keys(&self) -> BTreeMap<String, Vec<String>> {
        let alias = |k: &[u8]| {
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            String::from_utf8_lossy(&k[..end]).into_owned()
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, active) in self.0.encrypt.iter() {
            out.entry(alias(&k))
                .or_default()
                .push(active.dek.version.clone());
        }
        for (k, _) in self.0.decrypt.iter() {
            out.entry(alias(&k)).or_default();
        }
        out
    }

    /// A backend answer that the key is disabled drops its data keys at once.
    fn revoked_by(&self, key: &KeyEntry, err: &backend::Error) {
        if err.kind == ErrorKind::KeyDisabled {
            self.drop_key(&key.alias, backend::Revocation::Disabled.label());
        }
    }

    fn hit(&self, key: &KeyEntry, side: &str) {
        let m = &self.0.metrics;
        m.datakey_cache_hits
            .with_label_values(&[&key.alias, side])
            .inc();
    }

    fn miss(&self, key: &KeyEntry, side: &str) {
        self.0
            .metrics
            .datakey_cache_misses
            .with_label_values(&[&key.alias, side])
            .inc();
    }

    /// On a hit inside the refresh-ahead window, replaces the DEK in the
    /// background (once).
    fn refresh_if_due(
        &self,
        key: &Arc<KeyEntry>,
        context: &Context,
        id: &[u8],
        active: &Arc<Active>,
    ) {
        if active.due_for_refresh(&self.0.limits) {
            self.refresh(key, context, id, active);
        }
    }

    /// Arms a timer that refreshes the DEK `refresh_ahead` before it expires,
    /// if it has been used: busy contexts never wait on the KMS, idle ones
    /// are left to expire.
    fn schedule_refresh(
        &self,
        key: &Arc<KeyEntry>,
        context: &Context,
        id: &[u8],
        active: &Arc<Active>,
    ) {
        let l = self.0.limits;
        let wait = l.ttl.saturating_sub(l.refresh_ahead);
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        let (key, context, id, active) = (
            key.clone(),
            context.clone(),
            id.to_vec(),
            Arc::downgrade(active),
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let (Some(inner), Some(active)) = (weak.upgrade(), active.upgrade()) else {
                return;
            };
            if active.messages.load(Ordering::Relaxed) > 0 {
                DataKeyCache(inner).refresh(&key, &context, &id, &active);
            }
        });
    }

    fn refresh(&self, key: &Arc<KeyEntry>, context: &Context, id: &[u8], active: &Arc<Active>) {
        if active.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let (key, context, id, active) =
            (key.clone(), context.clone(), id.to_vec(), active.clone());
        // A trace of its own: the request whose hit set it off has been
        // answered already.
        let span = tracing::debug_span!(
            parent: None,
            "datakey_refresh",
            key.alias = %key.alias,
            outcome = Empty,
            otel.status_description = Empty,
        );
        tokio::spawn(async move {
            let result = this.generate(&key, &context).instrument(span.clone()).await;
            let outcome = result.as_ref().map_or_else(|e| e.kind.label(), |_| "ok");
            telemetry::ended(&span, outcome, result.is_err());
            match result {
                Ok(dek) => {
                    let fresh = Arc::new(Active::new(dek));
                    this.0.encrypt.insert(id.clone(), fresh.clone()).await;
                    this.schedule_refresh(&key, &context, &id, &fresh);
                    tracing::debug!(key.alias = %key.alias, "data key refreshed ahead of expiry");
                }
                Err(e) => {
                    // Keep serving the current DEK; the next hit tries again.
                    active.refreshing.store(false, Ordering::Release);
                    tracing::warn!(key.alias = %key.alias, error = %e, "data key refresh failed");
                }
            }
        });
    }
}

/// The span of a KMS call the cache makes on a miss (`op`:
/// `generate_data_key` or `decrypt`).
fn fetch_span(key: &KeyEntry, op: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "datakey_fetch",
        key.alias = %key.alias,
        op,
        request_id = telemetry::request_id().as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{
        Backend, DataKey, Decrypted, KeyMetadata, KeyRef, PublicKey, Sealed, Signature,
    };
    use crate::config::{ByteSize, Duration as Human};
    use crate::crypto::{Algorithm, SignInput};
    use async_trait::async_trait;

    /// The real local backend, wrapped to add latency and outages on demand
    /// and to count the calls the cache makes.
    #[derive(Debug)]
    struct Wrapped {
        inner: LocalBackend,
        latency_ms: AtomicU64,
        down: AtomicBool,
        generated: AtomicU64,
        unwrapped: AtomicU64,
    }

    impl Wrapped {
        async fn delay(&self) -> Result<(), backend::Error> {
            tokio::time::sleep(Duration::from_millis(
                self.latency_ms.load(Ordering::Relaxed),
            ))
            .await;
            if self.down.load(Ordering::Relaxed) {
                return Err(backend::Error::new(
                    ErrorKind::Unavailable,
                    "test backend is down",
                ));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Backend for Wrapped {
        fn kind(&self) -> &'static str {
            "wrapped-local"
        }
        async fn health(&self) -> Result<(), backend::Error> {
            self.inner.health().await
        }
        async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, backend::Error> {
            self.inner.metadata(key).await
        }
        async fn public_key(
            &self,
            key: KeyRef<'_>,
            v: Option<&str>,
        ) -> Result<PublicKey, backend::Error> {
            self.inner.public_key(key, v).await
        }
        async fn sign(
            &self,
            key: KeyRef<'_>,
            i: SignInput<'_>,
            a: crate::crypto::Algorithm,
        ) -> Result<Signature, backend::Error> {
            self.inner.sign(key, i, a).await
        }
        async fn encrypt(
            &self,
            key: KeyRef<'_>,
            p: &[u8],
            c: &Context,
        ) -> Result<Sealed, backend::Error> {
            self.inner.encrypt(key, p, c).await
        }
        async fn decrypt(
            &self,
            key: KeyRef<'_>,
            ct: &[u8],
            c: &Context,
        ) -> Result<Decrypted, backend::Error> {
            self.delay().await?;
            self.unwrapped.fetch_add(1, Ordering::Relaxed);
            self.inner.decrypt(key, ct, c).await
        }
        async fn generate_data_key(
            &self,
            key: KeyRef<'_>,
            size: backend::DataKeySize,
            c: &Context,
        ) -> Result<DataKey, backend::Error> {
            self.delay().await?;
            self.generated.fetch_add(1, Ordering::Relaxed);
            self.inner.generate_data_key(key, size, c).await
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        backend: Arc<Wrapped>,
        key: Arc<KeyEntry>,
        cache: DataKeyCache,
    }

    async fn fixture(config: DataKeyCacheConfig, latency_ms: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let inner = LocalBackend::open(dir.path(), &[("k".into(), Some(Algorithm::Aes256Gcm))])
            .await
            .unwrap();
        let backend = Arc::new(Wrapped {
            inner,
            latency_ms: AtomicU64::new(latency_ms),
            down: AtomicBool::new(false),
            generated: AtomicU64::new(0),
            unwrapped: AtomicU64::new(0),
        });
        let key = Arc::new(KeyEntry::new("k", "test", backend.clone(), "k"));
        let cache = DataKeyCache::new(&config, Arc::new(Metrics::new()));
        Fixture {
            _dir: dir,
            backend,
            key,
            cache,
        }
    }

    fn config(
        ttl_ms: u64,
        refresh_ms: u64,
        max_messages: u64,
        max_bytes: u64,
    ) -> DataKeyCacheConfig {
        DataKeyCacheConfig {
            ttl: Human(Duration::from_millis(ttl_ms)),
            refresh_ahead: Human(Duration::from_millis(refresh_ms)),
            max_messages,
            max_bytes: ByteSize(max_bytes),
            max_entries: 100,
            revalidate: Human(Duration::from_secs(30)),
        }
    }

    fn ctx(v: &str) -> Context {
        [("tenant".to_string(), v.to_string())].into()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_make_one_backend_call() {
        let f = fixture(config(300_000, 30_000, 1_000_000, 1 << 30), 50).await;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, key) = (f.cache.clone(), f.key.clone());
                tokio::spawn(async move {
                    cache
                        .encrypt_dek(&key, &ctx("fresh"), 10)
                        .await
                        .unwrap()
                        .wrapped
                        .clone()
                })
            })
            .collect();
        let mut wrapped = Vec::new();
        for t in tasks {
            wrapped.push(t.await.unwrap());
        }
        assert_eq!(f.backend.generated.load(Ordering::Relaxed), 1);
        assert!(
            wrapped.windows(2).all(|w| w[0] == w[1]),
            "every request got the same data key"
        );
        // Another context is another data key.
        f.cache
            .encrypt_dek(&f.key, &ctx("other"), 10)
            .await
            .unwrap();
        assert_eq!(f.backend.generated.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn message_and_byte_limits_retire_a_data_key() {
        let f = fixture(config(300_000, 30_000, 3, 1 << 30), 0).await;
        for _ in 0..7 {
            f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        }
        assert_eq!(
            f.backend.generated.load(Ordering::Relaxed),
            3,
            "messages 1-3, 4-6, 7"
        );

        let f = fixture(config(300_000, 30_000, 1000, 100), 0).await;
        for _ in 0..6 {
            f.cache.encrypt_dek(&f.key, &ctx("a"), 40).await.unwrap();
        }
        assert_eq!(
            f.backend.generated.load(Ordering::Relaxed),
            3,
            "two 40-byte messages per 100 bytes"
        );
        // A message larger than max_bytes still gets a (fresh) key.
        f.cache.encrypt_dek(&f.key, &ctx("b"), 1000).await.unwrap();
        assert_eq!(f.backend.generated.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_keeps_requests_off_the_kms() {
        // 300 ms per KMS call, a 1 s TTL refreshed 500 ms ahead: a request just
        // after the first key expired finds the refreshed one.
        let f = fixture(config(1000, 500, 1_000_000, 1 << 30), 300).await;
        let first = f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = Instant::now();
        let second = f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited.is_zero(),
            "the request waited {waited:?} for the KMS"
        );
        assert_ne!(first.wrapped, second.wrapped, "a new data key");
        assert_eq!(f.backend.generated.load(Ordering::Relaxed), 2);

        // Without a refresh window the same request waits for the KMS.
        let f = fixture(config(1000, 0, 1_000_000, 1 << 30), 300).await;
        f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = Instant::now();
        f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn an_outage_is_ridden_out_until_the_limits() {
        let f = fixture(config(300_000, 30_000, 3, 1 << 30), 0).await;
        let c = ctx("a");
        let dek = f.cache.encrypt_dek(&f.key, &c, 1).await.unwrap();
        // A data key the cache never saw, made while the backend was up.
        let foreign = f
            .backend
            .inner
            .generate_data_key(f.key.key_ref(), backend::DataKeySize::Aes256, &c)
            .await
            .unwrap();
        f.backend.down.store(true, Ordering::Relaxed);
        for _ in 0..2 {
            f.cache
                .encrypt_dek(&f.key, &c, 1)
                .await
                .expect("the cached key serves while the KMS is down");
        }
        let err = f.cache.encrypt_dek(&f.key, &c, 1).await.unwrap_err();
        assert_eq!(
            err.kind,
            ErrorKind::Unavailable,
            "past its limits: backend_unavailable"
        );
        let again = f
            .cache
            .decrypt_dek(&f.key, &c, &dek.wrapped)
            .await
            .expect("cached for decryption");
        assert_eq!(again.plaintext, dek.plaintext);
        assert_eq!(f.backend.unwrapped.load(Ordering::Relaxed), 0);
        let err = f
            .cache
            .decrypt_dek(&f.key, &c, &foreign.encrypted)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
        f.backend.down.store(false, Ordering::Relaxed);
        let unwrapped = f
            .cache
            .decrypt_dek(&f.key, &c, &foreign.encrypted)
            .await
            .unwrap();
        assert_eq!(unwrapped.plaintext, foreign.plaintext.0);
        assert_eq!(
            unwrapped.by,
            WrappedBy::exactly("1", "k"),
            "as the KMS reported"
        );
        f.cache
            .decrypt_dek(&f.key, &c, &foreign.encrypted)
            .await
            .unwrap();
        assert_eq!(
            f.backend.unwrapped.load(Ordering::Relaxed),
            1,
            "the second unwrap is a hit"
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let mut cfg = config(300_000, 30_000, 1000, 1 << 30);
        cfg.max_entries = 3;
        let f = fixture(cfg, 0).await;
        for i in 0..20 {
            f.cache
                .encrypt_dek(&f.key, &ctx(&i.to_string()), 1)
                .await
                .unwrap();
        }
        f.cache.0.encrypt.run_pending_tasks().await;
        f.cache.0.decrypt.run_pending_tasks().await;
        assert!(
            f.cache.0.encrypt.entry_count() <= 3,
            "{}",
            f.cache.0.encrypt.entry_count()
        );
        assert!(f.cache.0.decrypt.entry_count() <= 3);
    }

    #[tokio::test]
    async fn a_rotation_through_the_api_starts_a_new_data_key() {
        let f = fixture(config(300_000, 30_000, 1000, 1 << 30), 0).await;
        let before = f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        f.key.generation.fetch_add(1, Ordering::Relaxed);
        let after = f.cache.encrypt_dek(&f.key, &ctx("a"), 1).await.unwrap();
        assert_ne!(before.wrapped, after.wrapped);
    }
}
