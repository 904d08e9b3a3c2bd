//! One operation end to end: the caller's rules → the key and the rules
//! every backend shares ([`rules`]) → the backend (behind its resilience
//! layer) → the answer. Routes parse and render; this module decides.
//!
//! - [`sign`]: sign, sign-batch, verify (natively or with the cached
//!   public key);
//! - [`crypt`]: encrypt, decrypt (single and batches), data keys, MACs;
//! - [`envelope`]: envelope encryption, JSON (single and batches) and
//!   streamed, and rewrap;
//! - [`jwt`]: JWTs signed by a key, the JWKS, and JWT verification;
//! - here: who may use which key, listing, metadata, public keys, rotation,
//!   readiness.

mod crypt;
mod envelope;
pub mod jwt;
mod lanes;
mod revocation;
pub mod rules;
mod sign;

use crate::api::{self, ApiError, Code};
use crate::backend;
use crate::cache::DataKeyCache;
use crate::config::Config;
use crate::crypto::{self, Algorithm};
use crate::health::HealthChecks;
use crate::keys::{KeyEntry, Keys};
use crate::metrics::Metrics;
use crate::policy::{Caller, Op, Policy};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The operations of API v1, shared by every connection.
/// A request's authorization: `caller` may do `op` on the key `alias`
/// (`entry`). [`Service::authorize`] makes it once per request, from the
/// path and the peer credentials; the service's operations take it instead
/// of checking the rules again.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub caller: Caller,
    pub alias: &'a str,
    pub entry: &'a Arc<KeyEntry>,
    pub op: Op,
}

#[derive(Debug)]
pub struct Service {
    keys: Keys,
    policy: Policy,
    metrics: Arc<Metrics>,
    max_batch: usize,
    /// `limits.batch_concurrency` places per caller, for all its batches.
    lanes: lanes::Lanes,
    health: HealthChecks,
    data_keys: DataKeyCache,
    /// `envelope.accept_unbound_until`.
    accept_unbound_until: Option<SystemTime>,
    key_labels: crate::config::KeyLabels,
    /// The versions of each key that decrypted at the last revalidation.
    enabled_versions: Mutex<HashMap<String, Vec<String>>>,
    /// `jwks.public`: served on the probe listener.
    public_jwks: Vec<String>,
    /// `compat.vault_transit.mount`, while the transit API is on.
    transit_mount: Option<String>,
}

impl Service {
    pub fn new(config: &Config, backends: backend::Backends, metrics: Arc<Metrics>) -> Self {
        let keys = Keys::new(config, &backends);
        let data_keys = DataKeyCache::new(&config.cache.data_keys, metrics.clone());
        Self::from_parts(config, keys, data_keys, HashMap::new(), backends, metrics)
    }

    fn from_parts(
        config: &Config,
        keys: Keys,
        data_keys: DataKeyCache,
        enabled_versions: HashMap<String, Vec<String>>,
        backends: backend::Backends,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            keys,
            health: HealthChecks::new(backends),
            data_keys,
            policy: Policy::new(config.callers.clone()),
            metrics,
            max_batch: config.limits.max_batch,
            lanes: lanes::Lanes::new(config.limits.batch_concurrency),
            accept_unbound_until: config.envelope.accept_unbound_until.map(|t| t.0),
            key_labels: config.metrics.key_labels,
            enabled_versions: Mutex::new(enabled_versions),
            public_jwks: config.jwks.public.clone(),
            transit_mount: (config.compat.vault_transit)
                .enabled
                .then(|| config.compat.vault_transit.mount.clone()),
        }
    }

    /// The service of a reloaded `config` (`changes` from the last) over
    /// `backends`, where a backend the reload left alone is the same `Arc`
    /// as before. A key whose definition and backend are unchanged keeps its
    /// state (rotation generation, algorithm, cached metadata, revocation)
    /// and, while `cache.data_keys` is unchanged, its cached data keys; those
    /// of keys removed or redefined are dropped.
    pub fn next(
        &self,
        config: &Config,
        changes: crate::config::Changes<'_>,
        backends: backend::Backends,
    ) -> Self {
        let keys = Keys::new_after(config, changes, &self.keys, &backends);
        let kept = |alias: &str| {
            (keys.get(alias))
                .zip(self.keys.get(alias))
                .is_some_and(|(a, b)| Arc::ptr_eq(a, b))
        };
        let data_keys = if changes.data_keys_kept() {
            for alias in self.keys.aliases().into_iter().filter(|a| !kept(a)) {
                self.data_keys.forget_key(alias);
            }
            self.data_keys.clone()
        } else {
            DataKeyCache::new(&config.cache.data_keys, self.metrics.clone())
        };
        let enabled = (self.enabled_versions.lock())
            .expect("never poisoned")
            .iter()
            .filter(|(alias, _)| kept(alias))
            .map(|(a, v)| (a.clone(), v.clone()))
            .collect();
        let metrics = self.metrics.clone();
        Self::from_parts(config, keys, data_keys, enabled, backends, metrics)
    }

    /// The mount of the Vault-transit-compatible API, when it is on
    /// (`compat.vault_transit`).
    pub fn transit_mount(&self) -> Option<&str> {
        self.transit_mount.as_deref()
    }

    /// `metrics.key_labels`: the `key` label on the probe listener.
    pub fn key_labels(&self) -> crate::config::KeyLabels {
        self.key_labels
    }

    /// Who `caller` is to the per-caller limits, if any rule names it (see
    /// [`crate::policy::Policy::principal`]).
    pub fn principal(&self, caller: &Caller) -> Option<crate::policy::Principal> {
        self.policy.principal(caller)
    }

    /// May `caller` read `/metrics` on the socket (op `metrics`)?
    pub fn may_read_metrics(&self, caller: &Caller) -> Result<(), ApiError> {
        self.may_anywhere(caller, Op::Metrics, "read `/metrics`")
    }

    /// May `caller` verify JWTs at all (some rule grants `verify`)? The key
    /// is named in the token, so this is all that can be checked before
    /// the body is read.
    pub fn may_verify_jwts(&self, caller: &Caller) -> Result<(), ApiError> {
        self.may_anywhere(caller, Op::Verify, "verify JWTs")
    }

    /// 403 unless a rule grants `caller` the operation `op` (`what` it
    /// does) on any key.
    fn may_anywhere(&self, caller: &Caller, op: Op, what: &str) -> Result<(), ApiError> {
        if self.policy.allows_global(caller, op) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::Forbidden,
            format!(
                "caller {caller} may not {what} (a rule must grant `{}`)",
                op.as_str()
            ),
        ))
    }

    /// Whether envelopes made before data keys were bound to their purpose
    /// (algorithms 1 and 2) are still opened (`envelope.accept_unbound_until`).
    pub(crate) fn accepts_unbound_envelopes(&self) -> bool {
        self.accept_unbound_until
            .is_some_and(|until| SystemTime::now() < until)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The data-key cache behind envelope encryption.
    pub fn data_keys(&self) -> &DataKeyCache {
        &self.data_keys
    }

    /// Whether `alias` is a configured key (for bounded metric labels).
    pub fn is_key(&self, alias: &str) -> bool {
        self.keys.contains(alias)
    }

    /// The key behind an alias, for the sidecar's own use (audit
    /// checkpoints), without a caller.
    pub fn key_entry(&self, alias: &str) -> Option<Arc<KeyEntry>> {
        self.keys.get(alias).cloned()
    }

    /// Whether `caller` may do `op` on the key `alias`: policy first (so
    /// unknown callers learn nothing about keys), then the key, then what
    /// the key allows. Decided once per request, before its body is read;
    /// the [`Grant`] is what the service's operations take.
    pub fn authorize<'a>(
        &'a self,
        caller: &Caller,
        alias: &'a str,
        op: Op,
    ) -> Result<Grant<'a>, ApiError> {
        if !self.policy.allows(caller, alias, op) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!("caller {caller} may not `{op}` key `{alias}`"),
            ));
        }
        let entry = self.keys.get(alias).ok_or_else(|| {
            ApiError::new(Code::KeyNotFound, format!("no key `{alias}` is configured"))
        })?;
        if !entry.allows(op) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!("key `{alias}` does not allow `{op}` (see keys.{alias}.ops)"),
            ));
        }
        Ok(Grant {
            caller: *caller,
            alias,
            entry,
            op,
        })
    }

    /// A batch of `items`: 1 to `limits.max_batch` of them, run through
    /// `each` in `caller`'s lane (`limits.batch_concurrency` at a time, all
    /// its batches together: [`lanes`]); the results in the items' order,
    /// each item's error its own.
    pub(crate) async fn batch<I, T, Fut>(
        &self,
        caller: &Caller,
        items: Vec<I>,
        each: impl FnMut(I) -> Fut,
    ) -> Result<api::BatchResponse<T>, ApiError>
    where
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        use futures_util::StreamExt;
        self.check_batch(items.len())?;
        // Futures are lazy: made here, run as the stream polls them.
        let calls: Vec<Fut> = items.into_iter().map(each).collect();
        let items = (self.lanes.run(self.counted_as(caller), calls))
            .map(api::BatchItem::from)
            .collect()
            .await;
        Ok(api::BatchResponse { items })
    }

    /// Who `caller` is to the per-caller limits (rate, batch lanes): its
    /// [`Service::principal`], or its uid where no rule names it.
    pub fn counted_as(&self, caller: &Caller) -> crate::policy::Principal {
        (self.policy.principal(caller)).unwrap_or(crate::policy::Principal::Uid(caller.uid))
    }

    pub(crate) fn check_batch(&self, items: usize) -> Result<(), ApiError> {
        if items == 0 || items > self.max_batch {
            return Err(ApiError::invalid(format!(
                "field `items`: send 1 to {} items (limits.max_batch)",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// The key of `grant` for `op`, usable now: not revoked, and of an
    /// algorithm whose purpose allows `op`. The grant was decided once, by
    /// the routes; `op` must be the one it was given for.
    pub(crate) async fn key_for<'g>(
        &self,
        grant: &Grant<'g>,
        op: Op,
    ) -> Result<(&'g Arc<KeyEntry>, Algorithm), ApiError> {
        let (entry, alias) = (self.granted(grant, op)?, grant.alias);
        if let Some(reason) = entry.revoked() {
            return Err(ApiError::new(
                Code::KeyDisabled,
                format!(
                    "key `{alias}` is {} in its KMS (found by the last check of cache.data_keys.revalidate); it is checked again at the next",
                    reason.label().replace('_', " ")
                ),
            ));
        }
        let algorithm = entry.algorithm().await?;
        rules::require_purpose(alias, algorithm, op)?;
        Ok((entry, algorithm))
    }

    /// The key of `grant`, which must be a grant of `op` (a route given the
    /// grant of another operation is a bug: 500, never a wider grant).
    pub(crate) fn granted<'g>(
        &self,
        grant: &Grant<'g>,
        op: Op,
    ) -> Result<&'g Arc<KeyEntry>, ApiError> {
        if grant.op != op {
            return Err(ApiError::new(
                Code::Internal,
                format!("a request granted `{}` asked for `{op}`", grant.op),
            ));
        }
        Ok(grant.entry)
    }

    /// A version the request names must be one of the key's (400) — the
    /// same answer from every backend, whether or not its API checks.
    pub(crate) async fn check_version(
        &self,
        entry: &Arc<KeyEntry>,
        version: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(version) = version else {
            return Ok(());
        };
        let has = |m: &backend::KeyMetadata| m.versions.iter().any(|v| v.version == version);
        if has(&*entry.metadata().await?) {
            return Ok(());
        }
        // A version made since the metadata was cached (outside the
        // sidecar): asked of the KMS once more before it is refused.
        entry.forget_metadata().await;
        if has(&*entry.metadata().await?) {
            return Ok(());
        }
        Err(ApiError::invalid(format!(
            "field `version`: key `{}` has no version `{version}`",
            entry.alias
        )))
    }

    // === keys ===

    pub async fn list_keys(&self, caller: &Caller) -> api::KeyList {
        let mut keys = Vec::new();
        for alias in self.keys.aliases() {
            let Some(entry) = self
                .keys
                .get(alias)
                .filter(|_| self.policy.allows_any(caller, alias))
            else {
                continue;
            };
            let summary = match entry.metadata().await {
                Ok(m) => api::KeySummary {
                    name: alias.to_owned(),
                    backend: entry.backend_name.clone(),
                    algorithm: Some(m.algorithm),
                    // What this caller may do with it: the key's ops its rules grant.
                    ops: entry
                        .ops(m.algorithm)
                        .into_iter()
                        .filter(|op| self.policy.allows(caller, alias, *op))
                        .collect(),
                    version: Some(m.current_version.clone()),
                    error: None,
                },
                Err(e) => api::KeySummary {
                    name: alias.to_owned(),
                    backend: entry.backend_name.clone(),
                    algorithm: None,
                    ops: vec![],
                    version: None,
                    error: Some(e.message),
                },
            };
            keys.push(summary);
        }
        api::KeyList { keys }
    }

    pub async fn metadata(&self, grant: &Grant<'_>) -> Result<api::KeyMetadataResponse, ApiError> {
        let alias = grant.alias;
        let entry = self.granted(grant, Op::Metadata)?;
        let m = entry.metadata().await?;
        let m = backend::KeyMetadata::clone(&m);
        let last = m
            .versions
            .iter()
            .find(|v| v.version == m.current_version)
            .and_then(|v| v.created)
            .or(m.created);
        let period = entry.rotation_period.or(m.rotation_period);
        let next = period.and_then(|p| last?.checked_add(p));
        let should_rotate = next.is_some_and(|n| SystemTime::now() >= n);
        let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        Ok(api::KeyMetadataResponse {
            name: alias.to_owned(),
            backend: entry.backend_name.clone(),
            backend_type: entry.backend.kind(),
            backend_key: entry.id.clone(),
            algorithm: m.algorithm,
            purpose: m.algorithm.purpose(),
            ops: entry.ops(m.algorithm),
            current_version: m.current_version,
            versions: m.versions,
            created: m.created.map(time),
            rotation: api::Rotation {
                enabled: period.is_some(),
                period_seconds: period.map(|p| p.as_secs()),
                last: last.map(time),
                next: next.map(time),
                should_rotate,
            },
            origin: m.origin,
            details: m.details,
        })
    }

    pub async fn public_key(&self, grant: &Grant<'_>) -> Result<api::PublicKeyResponse, ApiError> {
        let alias = grant.alias;
        let (entry, _) = self.key_for(grant, Op::PublicKey).await?;
        let pk = entry.public_key(None).await?;
        let kid = format!("{alias}/{}", pk.version);
        let jwk = crypto::public_key_jwk(pk.algorithm, &pk.spki_der, &kid)
            .map_err(|e| ApiError::new(Code::BackendError, e.to_string()))?;
        Ok(api::PublicKeyResponse {
            pem: crypto::public_key_pem(&pk.spki_der),
            jwk,
            algorithm: pk.algorithm,
            version: pk.version.clone(),
        })
    }

    // === administration ===

    pub async fn rotate(&self, grant: &Grant<'_>) -> Result<api::RotateResponse, ApiError> {
        let (caller, alias) = (&grant.caller, grant.alias);
        let entry = self.granted(grant, Op::Rotate)?;
        let rotation = entry.backend.rotation()?;
        let known = entry.metadata().await?;
        let version = rotation.rotate(entry.known(&known)).await;
        // Whatever the answer, the versions may have changed.
        entry.forget_facts().await;
        let version = version?;
        entry.generation.fetch_add(1, Ordering::Relaxed);
        tracing::info!(key.alias = alias, version = %version, caller.uid = caller.uid, "key rotated");
        Ok(api::RotateResponse {
            key: alias.to_owned(),
            version,
        })
    }

    /// Readiness of every backend (cached checks).
    pub async fn readiness(&self) -> (bool, api::Readiness) {
        self.health.readiness().await
    }
}
