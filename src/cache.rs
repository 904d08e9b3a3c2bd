//! The data-key cache (SPEC §6): one active DEK per (key alias, encryption
//! context) reused until its TTL, message or byte limit; single-flight
//! generation; refresh-ahead in the background; and unwrapped DEKs cached by
//! their wrapped bytes for decryption. Plaintext DEKs live in `Zeroizing`
//! buffers, wiped when the last holder drops them (eviction included).

use crate::backend::{self, Context, ErrorKind, canonical_context};
use crate::config::DataKeyCacheConfig;
use crate::metrics::Metrics;
use crate::service::KeyEntry;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A data key: plaintext (wiped on drop), wrapped form and the key version
/// that wrapped it.
pub struct Dek {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: Vec<u8>,
    pub version: String,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("version", &self.version)
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

fn encrypt_key(alias: &str, context: &Context) -> Vec<u8> {
    let mut k = alias.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&canonical_context(context));
    k
}

fn decrypt_key(alias: &str, context: &Context, wrapped: &[u8]) -> Vec<u8> {
    let mut k = encrypt_key(alias, context);
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
        let id = encrypt_key(&key.alias, context);
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
                    let dek = self.generate(key, context).await?;
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
                let plaintext = inner
                    .metrics
                    .observe_backend_call(
                        &key.backend_name,
                        "decrypt",
                        key.backend.decrypt(key.key_ref(), wrapped, context),
                    )
                    .await?;
                inner
                    .metrics
                    .datakey_backend_calls
                    .with_label_values(&[&key.alias, "decrypt"])
                    .inc();
                Ok::<_, backend::Error>(Arc::new(Dek {
                    plaintext: plaintext.0,
                    wrapped: wrapped.to_vec(),
                    version: String::new(),
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
        let dk = inner
            .metrics
            .observe_backend_call(
                &key.backend_name,
                "generate_data_key",
                key.backend.generate_data_key(key.key_ref(), 256, context),
            )
            .await?;
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
            version: dk.version,
        });
        // What we encrypt with now we can decrypt without asking the KMS.
        inner
            .decrypt
            .insert(decrypt_key(&key.alias, context, &dek.wrapped), dek.clone())
            .await;
        Ok(dek)
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
        tokio::spawn(async move {
            match this.generate(&key, &context).await {
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
