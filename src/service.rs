//! One operation end to end: policy → backend (with the public-key cache and
//! the local-verify fallback) → backend-call metrics. Routes parse and render;
//! this module decides.

use crate::api::{self, ApiError, Code, b64};
use crate::backend::{self, Backend, KeyRef};
use crate::cache::DataKeyCache;
use crate::config::{Config, KeyConfig};
use crate::crypto::{self, Algorithm, SignInput};
use crate::health::HealthChecks;
use crate::metrics::Metrics;
use crate::policy::{Caller, Op, OpOrAll, Policy, grants};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

/// A configured key alias and the backend behind it.
#[derive(Debug)]
pub struct KeyEntry {
    pub alias: String,
    pub backend_name: String,
    pub backend: Arc<dyn Backend>,
    /// The backend's reference for the key.
    pub id: String,
    ops: Option<Vec<OpOrAll>>,
    rotation_period: Option<Duration>,
    /// Requests must carry a fresh nonce and timestamp.
    pub replay_guard: bool,
    /// Bumped by every rotation through the API, so that envelopes stop
    /// using data keys wrapped by the old version.
    pub generation: AtomicU64,
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
        }
    }

    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            alias: &self.alias,
            id: &self.id,
        }
    }

    /// The operations this alias allows, given its algorithm.
    fn ops(&self, algorithm: Algorithm) -> Vec<Op> {
        algorithm
            .supported_ops()
            .iter()
            .copied()
            .filter(|op| self.allows(*op))
            .collect()
    }

    fn allows(&self, op: Op) -> bool {
        match &self.ops {
            Some(ops) => grants(ops, op),
            None => op != Op::Rotate,
        }
    }
}

/// Most cached public keys (aliases × versions).
const PUBLIC_KEY_CACHE_MAX: usize = 4096;

/// Public keys by (alias, version or "" for current), with when they were fetched.
type PublicKeyCache = HashMap<(String, String), (Instant, Arc<backend::PublicKey>)>;

/// The operations of API v1, shared by every connection.
#[derive(Debug)]
pub struct Service {
    keys: HashMap<String, Arc<KeyEntry>>,
    policy: Policy,
    metrics: Arc<Metrics>,
    max_batch: usize,
    public_keys: Mutex<PublicKeyCache>,
    public_key_ttl: Duration,
    health: HealthChecks,
    data_keys: DataKeyCache,
    /// `envelope.accept_unbound_until`.
    accept_unbound_until: Option<SystemTime>,
    key_labels: crate::config::KeyLabels,
}

impl Service {
    pub fn new(
        config: &Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = config
            .keys
            .iter()
            .filter_map(|(alias, k): (&String, &KeyConfig)| {
                Some((
                    alias.clone(),
                    Arc::new(KeyEntry {
                        alias: alias.clone(),
                        backend_name: k.backend.clone(),
                        backend: backends.get(&k.backend)?.clone(),
                        id: k.key.clone(),
                        ops: k.ops.clone(),
                        rotation_period: k.rotation_period.map(|d| d.0),
                        replay_guard: k.replay_guard,
                        generation: AtomicU64::new(0),
                    }),
                ))
            })
            .collect();
        Self {
            keys,
            health: HealthChecks::new(backends),
            data_keys: DataKeyCache::new(&config.cache.data_keys, metrics.clone()),
            policy: Policy::new(config.callers.clone()),
            metrics,
            max_batch: config.limits.max_batch,
            public_keys: Mutex::new(HashMap::new()),
            public_key_ttl: config.cache.public_keys.ttl.0,
            accept_unbound_until: config.envelope.accept_unbound_until.map(|t| t.0),
            key_labels: config.metrics.key_labels,
        }
    }

    /// `metrics.key_labels`: the `key` label on the probe listener.
    pub fn key_labels(&self) -> crate::config::KeyLabels {
        self.key_labels
    }

    /// Whether any caller rule names `caller` (see [`Policy::knows`]).
    pub fn knows(&self, caller: &Caller) -> bool {
        self.policy.knows(caller)
    }

    /// May `caller` read `/metrics` on the socket (op `metrics`)?
    pub fn may_read_metrics(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.policy.allows_global(caller, Op::Metrics) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::Forbidden,
            format!(
                "caller uid {} gid {} may not read `/metrics` (a rule must grant `metrics`)",
                caller.uid, caller.gid
            ),
        ))
    }

    /// Whether envelopes made before data keys were bound to their purpose
    /// (algorithms 1 and 2) are still opened (`envelope.accept_unbound_until`).
    pub(crate) fn accepts_unbound_envelopes(&self) -> bool {
        self.accept_unbound_until
            .is_some_and(|until| SystemTime::now() < until)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The data-key cache behind envelope encryption.
    pub fn data_keys(&self) -> &DataKeyCache {
        &self.data_keys
    }

    /// Whether `alias` is a configured key (for bounded metric labels).
    pub fn is_key(&self, alias: &str) -> bool {
        self.keys.contains_key(alias)
    }

    /// The key behind an alias, for the sidecar's own use (audit
    /// checkpoints), without a caller.
    pub fn key_entry(&self, alias: &str) -> Option<Arc<KeyEntry>> {
        self.keys.get(alias).cloned()
    }

    /// Whether requests for `alias` need a fresh nonce and timestamp.
    pub fn replay_guarded(&self, alias: &str) -> bool {
        self.keys.get(alias).is_some_and(|k| k.replay_guard)
    }

    /// Policy first (so unknown callers learn nothing about keys), then the
    /// key, then what the key allows.
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        alias: &str,
        op: Op,
    ) -> Result<&Arc<KeyEntry>, ApiError> {
        if !self.policy.allows(caller, alias, op) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "caller uid {} gid {} may not `{op}` key `{alias}`",
                    caller.uid, caller.gid
                ),
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
        Ok(entry)
    }

    // === keys ===

    pub async fn list_keys(&self, caller: &Caller) -> api::KeyList {
        let mut keys = Vec::new();
        let mut aliases: Vec<_> = self
            .keys
            .keys()
            .filter(|a| self.policy.allows_any(caller, a))
            .collect();
        aliases.sort();
        for alias in aliases {
            let entry = &self.keys[alias];
            let summary = match entry.backend.metadata(entry.key_ref())
                .await
            {
                Ok(m) => api::KeySummary {
                    name: alias.clone(),
                    backend: entry.backend_name.clone(),
                    algorithm: Some(m.algorithm),
                    // What this caller may do with it: the key's ops its rules grant.
                    ops: entry
                        .ops(m.algorithm)
                        .into_iter()
                        .filter(|op| self.policy.allows(caller, alias, *op))
                        .collect(),
                    version: Some(m.current_version),
                    error: None,
                },
                Err(e) => api::KeySummary {
                    name: alias.clone(),
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

    pub async fn metadata(
        &self,
        caller: &Caller,
        alias: &str,
    ) -> Result<api::KeyMetadataResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Metadata)?;
        let m = entry.backend.metadata(entry.key_ref())
            .await?;
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

    async fn cached_public_key(
        &self,
        entry: &KeyEntry,
        version: Option<&str>,
    ) -> Result<Arc<backend::PublicKey>, backend::Error> {
        let cache_key = (entry.alias.clone(), version.unwrap_or("").to_owned());
        {
            let cache = self
                .public_keys
                .lock()
                .expect("cache lock is never poisoned");
            if let Some((at, pk)) = cache.get(&cache_key)
                && at.elapsed() < self.public_key_ttl
            {
                return Ok(pk.clone());
            }
        }
        let pk = Arc::new(
            entry.backend.public_key(entry.key_ref(), version)
            .await?,
        );
        let mut cache = self
            .public_keys
            .lock()
            .expect("cache lock is never poisoned");
        if cache.len() >= PUBLIC_KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(cache_key, (Instant::now(), pk.clone()));
        Ok(pk)
    }

    pub async fn public_key(
        &self,
        caller: &Caller,
        alias: &str,
    ) -> Result<api::PublicKeyResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::PublicKey)?;
        let pk = self.cached_public_key(entry, None).await?;
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

    // === signatures ===

    pub async fn sign(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::SignRequest,
    ) -> Result<api::SignResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Sign)?;
        let input = sign_input(req.message.as_ref(), req.digest.as_ref(), "")?;
        let options = options(req.format, req.algorithm);
        let sig = entry.backend.sign(entry.key_ref(), input, options)
            .await?;
        Ok(api::SignResponse {
            signature: b64(&crypto::low_s(sig.algorithm, sig.bytes, options.format)),
            algorithm: sig.algorithm,
            key: alias.to_owned(),
            version: sig.version,
        })
    }

    pub async fn sign_batch(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::SignBatchRequest,
    ) -> Result<api::SignBatchResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Sign)?;
        if req.items.is_empty() || req.items.len() > self.max_batch {
            return Err(ApiError::invalid(format!(
                "field `items`: send 1 to {} items (limits.max_batch)",
                self.max_batch
            )));
        }
        let inputs = req
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                sign_input(
                    item.message.as_ref(),
                    item.digest.as_ref(),
                    &format!("items[{i}]."),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = options(req.format, req.algorithm);
        let mut signatures = Vec::with_capacity(inputs.len());
        let mut made_by = None;
        for input in inputs {
            let sig = entry.backend.sign(entry.key_ref(), input, options)
                .await?;
            signatures.push(b64(&crypto::low_s(
                sig.algorithm,
                sig.bytes,
                options.format,
            )));
            made_by = Some((sig.algorithm, sig.version));
        }
        let (algorithm, version) = made_by.expect("at least one item was signed");
        Ok(api::SignBatchResponse {
            signatures,
            algorithm,
            key: alias.to_owned(),
            version,
        })
    }

    pub async fn verify(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::VerifyRequest,
    ) -> Result<api::VerifyResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Verify)?;
        let input = sign_input(req.message.as_ref(), req.digest.as_ref(), "")?;
        let version = req.version.as_ref().map(|v| v.0.as_str());
        let verified = if entry.backend.verifies() {
            let options = options(req.format, req.algorithm);
            let native =
                entry
                    .backend
                    .verify(entry.key_ref(), input, &req.signature.0, options, version);
            native.await?
        } else {
            self.verify_locally(
                entry,
                input,
                &req.signature.0,
                req.format,
                version,
                req.algorithm,
            )
            .await?
        };
        Ok(api::VerifyResponse {
            valid: verified.valid,
            version: verified.version,
        })
    }

    /// Verification with the cached public key, for backends without a
    /// verify API: the named version, or every enabled version newest first.
    async fn verify_locally(
        &self,
        entry: &KeyEntry,
        input: SignInput<'_>,
        signature: &[u8],
        format: Option<crypto::SignatureFormat>,
        version: Option<&str>,
        algorithm: Option<Algorithm>,
    ) -> Result<backend::Verified, ApiError> {
        let versions: Vec<String> = match version {
            Some(v) => vec![v.to_owned()],
            None => {
                let m = entry.backend.metadata(entry.key_ref())
                    .await?;
                let mut vs: Vec<_> = m
                    .versions
                    .into_iter()
                    .filter(|v| v.enabled)
                    .map(|v| v.version)
                    .collect();
                vs.reverse();
                if vs.is_empty() {
                    vs.push(m.current_version);
                }
                vs
            }
        };
        for v in &versions {
            let pk = self.cached_public_key(entry, Some(v)).await?;
            check_algorithm(algorithm, pk.algorithm, &entry.alias)?;
            let format = format.unwrap_or_else(|| crypto::guess_format(pk.algorithm, signature));
            let valid =
                crypto::verify_locally(pk.algorithm, &pk.spki_der, input, signature, format)
                    .map_err(|e| match e {
                        crypto::BadInput::DigestLength { .. } => {
                            ApiError::invalid(format!("field `digest`: {e}"))
                        }
                        _ => ApiError::new(Code::OperationNotSupported, e.to_string()),
                    })?;
            if valid {
                return Ok(backend::Verified {
                    valid: true,
                    version: pk.version.clone(),
                });
            }
        }
        Ok(backend::Verified {
            valid: false,
            version: versions[0].clone(),
        })
    }

    // === encryption ===

    pub async fn encrypt(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::EncryptRequest,
    ) -> Result<api::EncryptResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Encrypt)?;
        check_context(&req.context)?;
        let sealed = entry
                    .backend
                    .encrypt(entry.key_ref(), &req.plaintext.0, &req.context)
            .await?;
        Ok(api::EncryptResponse {
            ciphertext: b64(&sealed.bytes),
            version: sealed.version,
        })
    }

    pub async fn decrypt(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::DecryptRequest,
    ) -> Result<api::DecryptResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Decrypt)?;
        check_context(&req.context)?;
        let plain = entry
                    .backend
                    .decrypt(entry.key_ref(), &req.ciphertext.0, &req.context)
            .await?;
        Ok(api::DecryptResponse {
            plaintext: Zeroizing::new(b64(&plain.0)),
        })
    }

    pub async fn datakey(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::DataKeyRequest,
    ) -> Result<api::DataKeyResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Datakey)?;
        check_context(&req.context)?;
        if req.bits != 128 && req.bits != 256 {
            return Err(ApiError::invalid("field `bits`: must be 128 or 256"));
        }
        let dk = entry
                    .backend
                    .generate_data_key(entry.key_ref(), req.bits, &req.context)
            .await?;
        Ok(api::DataKeyResponse {
            plaintext_key: Zeroizing::new(b64(&dk.plaintext.0)),
            encrypted_key: b64(&dk.encrypted),
            version: dk.version,
        })
    }

    // === MACs ===

    pub async fn mac(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::MacRequest,
    ) -> Result<api::MacResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Mac)?;
        let mac = entry.backend.mac(entry.key_ref(), &req.message.0)
            .await?;
        Ok(api::MacResponse {
            mac: b64(&mac.bytes),
            version: mac.version,
        })
    }

    pub async fn verify_mac(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::VerifyMacRequest,
    ) -> Result<api::VerifyResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Mac)?;
        let version = req.version.as_ref().map(|v| v.0.as_str());
        let v = entry
                    .backend
                    .verify_mac(entry.key_ref(), &req.message.0, &req.mac.0, version)
            .await?;
        Ok(api::VerifyResponse {
            valid: v.valid,
            version: v.version,
        })
    }

    // === administration ===

    pub async fn rotate(
        &self,
        caller: &Caller,
        alias: &str,
    ) -> Result<api::RotateResponse, ApiError> {
        let entry = self.authorize(caller, alias, Op::Rotate)?;
        let version = entry.backend.rotate(entry.key_ref())
            .await?;
        self.public_keys
            .lock()
            .expect("cache lock is never poisoned")
            .retain(|(a, _), _| a != alias);
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

fn options(
    format: Option<crypto::SignatureFormat>,
    algorithm: Option<Algorithm>,
) -> backend::SignOptions {
    backend::SignOptions {
        format: format.unwrap_or_default(),
        algorithm,
    }
}

/// Exactly one of `message` and `digest`.
fn sign_input<'a>(
    message: Option<&'a api::B64>,
    digest: Option<&'a api::B64>,
    at: &str,
) -> Result<SignInput<'a>, ApiError> {
    match (message, digest) {
        (Some(m), None) => Ok(SignInput::Message(&m.0)),
        (None, Some(d)) => Ok(SignInput::Digest(&d.0)),
        _ => Err(ApiError::invalid(format!(
            "send exactly one of `{at}message` and `{at}digest`"
        ))),
    }
}

fn check_algorithm(
    requested: Option<Algorithm>,
    actual: Algorithm,
    alias: &str,
) -> Result<(), ApiError> {
    match requested {
        Some(r) if r != actual => Err(ApiError::invalid(format!(
            "field `algorithm`: key `{alias}` is {actual}, not {r}"
        ))),
        _ => Ok(()),
    }
}

/// Most pairs in an encryption context, and the largest key or value.
const MAX_CONTEXT_PAIRS: usize = 64;
const MAX_CONTEXT_STRING: usize = 1024;

pub(crate) fn check_context(context: &backend::Context) -> Result<(), ApiError> {
    if context
        .keys()
        .any(|k| k.starts_with(crate::envelope::RESERVED_CONTEXT_PREFIX))
    {
        return Err(ApiError::invalid(format!(
            "field `context`: keys starting with `{}` are reserved for the sidecar",
            crate::envelope::RESERVED_CONTEXT_PREFIX
        )));
    }
    if context.len() > MAX_CONTEXT_PAIRS {
        return Err(ApiError::invalid(format!(
            "field `context`: at most {MAX_CONTEXT_PAIRS} pairs"
        )));
    }
    if context
        .iter()
        .any(|(k, v)| k.len() > MAX_CONTEXT_STRING || v.len() > MAX_CONTEXT_STRING)
    {
        return Err(ApiError::invalid(format!(
            "field `context`: keys and values are at most {MAX_CONTEXT_STRING} bytes"
        )));
    }
    Ok(())
}
