//! The one trait every KMS sits behind and its typed errors; [`build`]
//! makes the configured backends. Each KMS is one module behind a cargo
//! feature; [`credentials`] is the credential refresher they share,
//! [`identity`] the checks of the projected tokens they read, [`resilient`]
//! the layer around them.
//!
//! A backend answers for *backend key references* (`KeyRef::id`: a file name,
//! an ARN, a transit key name); aliases, policy and caching live above it in
//! [`crate::service`]. Versions are strings, since KMSs name them differently
//! (numbers, key-material ids, hex strings).

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(any(feature = "azure", feature = "gcp"))]
pub mod binding;
mod build;
pub mod credentials;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod identity;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod resilient;
#[cfg(feature = "vault")]
pub mod vault;

pub use build::{BuildContext, BuildError, BuildFailed, build, build_after};

use crate::crypto::{Algorithm, SignInput, SignatureFormat};
use async_trait::async_trait;
use serde::Serialize;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// The encryption context: bound to ciphertexts as additional authenticated
/// data. A `BTreeMap`, so its canonical encoding has sorted keys.
pub type Context = BTreeMap<String, String>;

/// Canonical bytes of an encryption context: compact JSON with sorted keys
/// (`{}` for none).
pub fn canonical_context(context: &Context) -> Vec<u8> {
    serde_json::to_vec(context).expect("a map of strings always serializes")
}

/// A key as a backend knows it.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    /// The alias the app used (for messages and logs).
    pub alias: &'a str,
    /// The backend's own reference (file name, ARN, transit key name).
    pub id: &'a str,
    /// The key's metadata as the service's cache holds it
    /// ([`crate::keys::KeyEntry`], `cache.metadata.ttl`), with the facts
    /// the driver put in it ([`KeyRef::facts`]); `None` where the service
    /// has none (the metadata call itself, the revalidation).
    pub known: Option<&'a KeyMetadata>,
}

impl<'a> KeyRef<'a> {
    /// `id` under `alias`, with nothing known of it.
    pub fn new(alias: &'a str, id: &'a str) -> Self {
        Self {
            alias,
            id,
            known: None,
        }
    }

    /// The driver's own facts of the key ([`KeyMetadata::driver`]) from
    /// the cached metadata, if there are and they are of type `T`: a
    /// driver that finds none asks its KMS.
    pub fn facts<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let facts = self.known?.driver.as_ref()?;
        facts.0.clone().downcast().ok()
    }
}

/// What a driver keeps of a key beside its metadata, in a type of its own
/// (transit's key data, Key Vault's JWK, Cloud KMS's version names, the
/// AWS key ARN, PKCS#11 object handles): cached with the metadata, handed
/// back with every call ([`KeyRef::facts`]), dropped with it.
#[derive(Clone)]
pub struct DriverFacts(Arc<dyn Any + Send + Sync>);

impl DriverFacts {
    pub fn new<T: Any + Send + Sync>(facts: T) -> Self {
        Self(Arc::new(facts))
    }

    pub fn shared<T: Any + Send + Sync>(facts: Arc<T>) -> Self {
        Self(facts)
    }
}

impl fmt::Debug for DriverFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DriverFacts(..)")
    }
}

/// What kind of failure, which fixes the API code, status and retryability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request cannot be served as sent (bad digest length, …).
    InvalidRequest,
    /// The backend has no such key.
    KeyNotFound,
    /// The key or backend cannot do this operation.
    OperationNotSupported,
    /// The input is larger than the backend accepts for this operation.
    PayloadTooLarge,
    /// Wrong context, tampered or foreign ciphertext (never says which).
    DecryptionFailed,
    /// The key or the version asked for is disabled (or pending deletion)
    /// in the KMS.
    KeyDisabled,
    /// The KMS refused our credentials' permission for this.
    Forbidden,
    /// We have no valid credentials for the KMS.
    Unauthenticated,
    /// The KMS answered with an error we cannot attribute to the caller.
    Backend,
    /// The KMS cannot be reached, or its circuit is open.
    Unavailable,
    /// The KMS is throttling us: retry later. Not a health failure.
    Throttled,
    /// The KMS did not answer in time.
    Timeout,
}

impl ErrorKind {
    /// The `outcome` label of `backend_calls_total`: the API code the kind
    /// maps to, except that throttling is told apart from an outage.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::KeyNotFound => "key_not_found",
            ErrorKind::OperationNotSupported => "operation_not_supported",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::DecryptionFailed => "decryption_failed",
            ErrorKind::KeyDisabled => "key_disabled",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Backend => "backend_error",
            ErrorKind::Unavailable => "backend_unavailable",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Timeout => "backend_timeout",
        }
    }
}

/// A backend failure: its kind, a message safe to show the caller (never key
/// material, plaintext or tokens), and whether a retry may succeed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
    /// How long the KMS asked us to wait before a retry (`Retry-After` of a
    /// throttled call): the retry layer waits at least this long, and the
    /// caller's answer carries it when no retry fits in the timeout.
    pub retry_after: Option<std::time::Duration>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retryable = matches!(
            kind,
            ErrorKind::Unavailable | ErrorKind::Throttled | ErrorKind::Timeout
        );
        Self {
            kind,
            message: message.into(),
            retryable,
            retry_after: None,
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn key_not_found(key: KeyRef<'_>) -> Self {
        Self::new(
            ErrorKind::KeyNotFound,
            format!("key `{}` does not exist in its backend", key.alias),
        )
    }

    pub fn unsupported(what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::OperationNotSupported, what.to_string())
    }

    /// A failed call `op` of `kms` (`Key Vault`, `Cloud KMS`) on `key`, of
    /// `kind`, with the KMS's own `detail` (its status and message, never
    /// tokens or data), as a caller reads it.
    #[cfg(any(feature = "azure", feature = "gcp"))]
    pub(crate) fn from_kms(
        kind: ErrorKind,
        kms: &str,
        op: impl fmt::Display,
        key: KeyRef<'_>,
        detail: &str,
    ) -> Self {
        tracing::warn!(key.alias = key.alias, op = %op, error = %detail, "{kms} call failed");
        let alias = key.alias;
        match kind {
            ErrorKind::DecryptionFailed => Self::decryption_failed(),
            ErrorKind::KeyNotFound => Self::key_not_found(key),
            ErrorKind::KeyDisabled => Self::new(
                kind,
                format!(
                    "key `{alias}` is disabled in {kms} ({op}: {detail}): enable the key version or use another"
                ),
            ),
            ErrorKind::Unauthenticated => Self::new(
                kind,
                format!(
                    "{kms} {op} for key `{alias}`: {kms} rejected the sidecar's access token ({detail}); it is getting a new one"
                ),
            ),
            _ => Self::new(kind, format!("{kms} {op} for key `{alias}`: {detail}")),
        }
    }

    /// Refuses a plaintext of `len` bytes over `max`, which `who` (`AWS KMS
    /// encrypts`, `direct encryption takes`) at most.
    pub fn check_plaintext(len: usize, max: usize, who: &str) -> Result<(), Error> {
        if len <= max {
            return Ok(());
        }
        Err(Self::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "plaintext is {len} bytes; {who} at most {max}: use envelope encryption for larger data"
            ),
        ))
    }

    /// The one opaque decryption failure.
    pub fn decryption_failed() -> Self {
        Self::new(
            ErrorKind::DecryptionFailed,
            "decryption failed: wrong context, or tampered or foreign ciphertext",
        )
    }
}

/// Sign input an algorithm cannot take: a digest of the wrong length is the
/// caller's mistake (`invalid_request`); a digest or signature the
/// algorithm does not do at all is `operation_not_supported`.
impl From<crate::crypto::BadInput> for Error {
    fn from(e: crate::crypto::BadInput) -> Self {
        match e {
            crate::crypto::BadInput::DigestLength { .. } => {
                Error::new(ErrorKind::InvalidRequest, e.to_string())
            }
            crate::crypto::BadInput::NotASigningKey
            | crate::crypto::BadInput::DigestNotSupported => Error::unsupported(e.to_string()),
        }
    }
}

/// The size of a data key, decided by the service (SPEC §4: 128 or 256
/// bits); a driver asks its KMS for exactly this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKeySize {
    Aes128,
    Aes256,
}

impl DataKeySize {
    /// From a request's `bits`; `None` for any other size.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            128 => Some(Self::Aes128),
            256 => Some(Self::Aes256),
            _ => None,
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Self::Aes128 => 128,
            Self::Aes256 => 256,
        }
    }

    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }
}

/// A signature as the KMS made it: its bytes in the KMS's own `encoding`
/// (only ECDSA has two: DER from AWS, Cloud KMS, transit and local keys;
/// raw `r‖s` from Key Vault and PKCS#11), the algorithm and the version.
/// The service gives the caller the encoding asked for, low-S.
#[derive(Debug, Clone)]
pub struct Signature {
    pub bytes: Vec<u8>,
    pub encoding: SignatureFormat,
    pub algorithm: Algorithm,
    pub version: String,
}

/// A public key as SubjectPublicKeyInfo DER.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub spki_der: Vec<u8>,
    pub algorithm: Algorithm,
    pub version: String,
}

/// Ciphertext (or a MAC tag) and the key version that made it.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub version: String,
}

/// Plaintext, zeroized on drop and never printed.
pub struct Plaintext(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext({} bytes, redacted)", self.0.len())
    }
}

/// A fresh data key: its plaintext (zeroized on drop), its wrapped form,
/// and the key version and key reference the KMS reports for the wrapping
/// (what an envelope header records, and what [`Backend::decrypt`] reports
/// again when it unwraps it: see [`WrappedBy`]).
pub struct DataKey {
    pub plaintext: Plaintext,
    pub encrypted: Vec<u8>,
    pub version: String,
    pub key_ref: String,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &self.plaintext)
            .field("encrypted_len", &self.encrypted.len())
            .field("version", &self.version)
            .field("key_ref", &self.key_ref)
            .finish()
    }
}

/// The key versions a KMS's answer to a decryption allows: the one it
/// names, or where it names none (Cloud KMS says only whether its primary
/// version decrypted), the ones it leaves possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versions {
    /// The KMS named the version (or the version is bound into what it
    /// decrypted, as transit's `vault:vN:`).
    Exactly(String),
    /// One of these.
    OneOf(Vec<String>),
}

impl Versions {
    /// Whether `version` is one the answer allows.
    pub fn admit(&self, version: &str) -> bool {
        match self {
            Versions::Exactly(v) => v == version,
            Versions::OneOf(vs) => vs.iter().any(|v| v == version),
        }
    }
}

/// What the KMS reports for a decryption (an unwrap): which version of
/// which key did it. An envelope header names both outside the body's
/// AAD, and the service refuses a header that names others (SPEC §5).
///
/// `key_ref` is the KMS's own name of the key, in the same form the
/// backend reports in [`DataKey::key_ref`]: an AWS key ARN (in the primary
/// region's form, so that a replica's answer names the same key), a Cloud
/// KMS CryptoKey resource name, a Key Vault key name, a transit key name,
/// a PKCS#11 label, a local key file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedBy {
    pub versions: Versions,
    pub key_ref: String,
}

impl WrappedBy {
    /// Exactly `version` of `key_ref`.
    pub fn exactly(version: impl Into<String>, key_ref: impl Into<String>) -> Self {
        Self {
            versions: Versions::Exactly(version.into()),
            key_ref: key_ref.into(),
        }
    }
}

/// A decryption's plaintext (zeroized on drop) and what the KMS reports
/// about the key that made it.
#[derive(Debug)]
pub struct Decrypted {
    pub plaintext: Plaintext,
    pub by: WrappedBy,
}

/// A ciphertext encrypted again under the current version ([`Sealed`]),
/// and what the KMS reported for its decryption (`from`).
#[derive(Debug, Clone)]
pub struct Rewrapped {
    pub from: WrappedBy,
    pub sealed: Sealed,
}

/// Where a key's material lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Software,
    Hsm,
    External,
}

/// One version of a key.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    /// When the version was made, if the backend says (transit does not for
    /// HMAC keys).
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub created: Option<SystemTime>,
    /// Whether this version still verifies, decrypts and unwraps.
    pub enabled: bool,
    /// The KMS's own name for the version's state where it has more than
    /// enabled or not (Cloud KMS: `ENABLED`, `DISABLED`,
    /// `DESTROY_SCHEDULED`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A key's metadata, as the backend reports it.
#[derive(Debug, Clone)]
pub struct KeyMetadata {
    pub algorithm: Algorithm,
    pub current_version: String,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
    /// When the key was made, if the backend says.
    pub created: Option<SystemTime>,
    pub origin: Origin,
    /// The backend's rotation schedule, where it has one.
    pub rotation_period: Option<std::time::Duration>,
    /// Backend-specific facts worth showing (region, key ARN, …).
    pub details: BTreeMap<String, String>,
    /// The driver's own facts of the key, never shown ([`DriverFacts`]).
    pub driver: Option<DriverFacts>,
}

/// Why a KMS says a key may not be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Disabled,
    Deleted,
    PendingDeletion,
}

impl Revocation {
    /// As the `reason` label of `datakey_revocations_total` and in
    /// messages (`pending_deletion`).
    pub fn label(self) -> &'static str {
        match self {
            Revocation::Disabled => "disabled",
            Revocation::Deleted => "deleted",
            Revocation::PendingDeletion => "pending_deletion",
        }
    }
}

/// Whether a key may still be used, for the revalidation of cached data
/// keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Why the key may not be used at all, if so.
    pub revoked: Option<Revocation>,
    /// The versions that still decrypt, where the KMS disables versions on
    /// their own (`None`: all of them while the key is usable).
    pub enabled_versions: Option<Vec<String>>,
}

/// Serializes a time as RFC 3339 (UTC, seconds).
pub fn rfc3339<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

/// A KMS behind kms-sidecar: a driver, which translates. The service
/// decides before it calls one (the caller's grant, the key's purpose, the
/// signing algorithm, the sign input and digest length, the data-key size,
/// the context's limits, that a named version exists) and after (the
/// signature encoding the caller wants, low-S); it caches key facts
/// (metadata, public keys) in [`crate::keys::KeyEntry`], and
/// [`resilient::Resilient`] adds timeouts, retries and the circuit breaker.
/// `docs/backends.md` ("Writing a driver") says how to write one.
///
/// Every method may be called concurrently and makes one attempt. Errors
/// carry the API code through [`ErrorKind`] and say whether a retry may
/// succeed. Optional abilities are traits of their own ([`Verify`],
/// [`Mac`], [`Rotate`], [`Rewrap`]): a driver that has one implements it
/// and returns itself from the matching method ([`Backend::verifier`], …);
/// without it the service falls back where it can (verify with the cached
/// public key, rewrap inside the sidecar) and answers 422
/// `operation_not_supported` elsewhere.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The backend type (`local`, `aws`, …) for metrics and logs.
    fn kind(&self) -> &'static str;

    /// Whether the backend can serve: credentials valid and reachable. Called
    /// by the cached readiness check, never on the request path.
    async fn health(&self) -> Result<(), Error>;

    /// Algorithm, versions, creation time and rotation facts of a key,
    /// always asked of the KMS. What the driver's other calls need of the
    /// key goes in [`KeyMetadata::driver`]; the service caches the answer
    /// and hands it back with each call ([`KeyRef::facts`]).
    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error>;

    /// Whether the key may still be used ([`KeyStatus`]): one call to the
    /// KMS where it can (the default reads the metadata: revoked when the
    /// current version is not enabled).
    async fn key_status(&self, key: KeyRef<'_>) -> Result<KeyStatus, Error> {
        let m = self.metadata(key).await?;
        let current_enabled = m
            .versions
            .iter()
            .find(|v| v.version == m.current_version)
            .is_none_or(|v| v.enabled);
        Ok(KeyStatus {
            revoked: (!current_enabled).then_some(Revocation::Disabled),
            enabled_versions: Some(
                m.versions
                    .iter()
                    .filter(|v| v.enabled)
                    .map(|v| v.version.clone())
                    .collect(),
            ),
        })
    }

    /// The public key of `version` (default: current) of a signing key.
    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error>;

    /// Signs `input` with the current version, by `algorithm`: the key's
    /// own or, for an RSA key, the other padding at its size (decided and
    /// checked by the service, with the digest's length). Returns the
    /// signature in the KMS's own encoding ([`Signature::encoding`]).
    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error>;

    /// Encrypts small data with the current version, binding `context`.
    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error>;

    /// Decrypts what [`Backend::encrypt`] or [`Backend::generate_data_key`]
    /// (of any still-enabled version) produced, with the same context, and
    /// says which version of which key decrypted it, as the KMS reports it
    /// ([`WrappedBy`]; each backend says how it knows). Any mismatch is
    /// [`ErrorKind::DecryptionFailed`].
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error>;

    /// A fresh random data key of `size`, and the key wrapped with
    /// `context` so that [`Backend::decrypt`] unwraps it.
    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error>;

    /// A ciphertext of [`Backend::encrypt`] or [`Backend::generate_data_key`]
    /// as Vault transit's own `vault:vN:…` text, where the KMS is transit
    /// and has one: the Vault-transit-compatible API answers it, so that a
    /// ciphertext of the sidecar is the real Vault's and the reverse.
    /// `None` (every other KMS): the API writes `vault:v<N>:<base64 of the
    /// ciphertext>`.
    fn transit_text(&self, ciphertext: &[u8]) -> Option<String> {
        let _ = ciphertext;
        None
    }

    /// The ciphertext of a transit `vault:vN:…` text, the reverse of
    /// [`Backend::transit_text`]; `None` where the KMS is not transit.
    fn transit_ciphertext(&self, text: &str) -> Option<Result<Vec<u8>, Error>> {
        let _ = text;
        None
    }

    /// The KMS's own verify API, if it has one ([`Verify`]).
    fn verifier(&self) -> Option<&dyn Verify> {
        None
    }

    /// MAC keys, if the KMS has them ([`Mac`]).
    fn macs(&self) -> Option<&dyn Mac> {
        None
    }

    /// Rotation on demand, if the KMS can ([`Rotate`]).
    fn rotator(&self) -> Option<&dyn Rotate> {
        None
    }

    /// Re-encryption inside the KMS, if it has it ([`Rewrap`]).
    fn rewrapper(&self) -> Option<&dyn Rewrap> {
        None
    }
}

/// A KMS's own verify API (AWS `Verify`, transit `verify`). Without one,
/// the service verifies with the cached public key.
#[async_trait]
pub trait Verify: Send + Sync {
    /// Whether `signature` is `input`'s by `version` of the key, by
    /// `algorithm` as for [`Backend::sign`]. An ECDSA `signature` comes
    /// DER-encoded, whatever encoding the caller sent. The service picks
    /// the versions to try (the one named, else every enabled one newest
    /// first) and says which matched.
    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Algorithm,
        version: &str,
    ) -> Result<bool, Error>;
}

/// MAC keys. Without them, `mac` and `verify-mac` answer 422.
#[async_trait]
pub trait Mac: Send + Sync {
    /// HMAC of `message` with the current version.
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error>;

    /// Whether `mac` is `message`'s MAC by `version` of the key (the
    /// service picks the versions to try, as for [`Verify::verify`]).
    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: &str,
    ) -> Result<bool, Error>;
}

/// Rotation on demand. Without it, `rotate` answers 422.
#[async_trait]
pub trait Rotate: Send + Sync {
    /// Adds a new version and makes it current; returns its name.
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error>;
}

/// Re-encryption inside the KMS (AWS `ReEncrypt`). Without it, the service
/// decrypts and encrypts inside the sidecar ([`rewrap`]).
#[async_trait]
pub trait Rewrap: Send + Sync {
    /// `ciphertext` (of any still-enabled version) encrypted again under
    /// the current version, with the same context, and what the KMS
    /// reported for its decryption: the version [`Backend::decrypt`]
    /// reports for it.
    async fn rewrap(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Rewrapped, Error>;
}

impl dyn Backend {
    /// The MAC keys, or 422 `operation_not_supported`.
    pub fn mac_keys(&self) -> Result<&dyn Mac, Error> {
        (self.macs()).ok_or_else(|| Error::unsupported("this backend has no MAC keys"))
    }

    /// Rotation on demand, or 422 `operation_not_supported`.
    pub fn rotation(&self) -> Result<&dyn Rotate, Error> {
        (self.rotator())
            .ok_or_else(|| Error::unsupported("this backend cannot rotate keys on demand"))
    }
}

/// `ciphertext` encrypted again under the current version: by the KMS where
/// it can ([`Rewrap`]), else decrypted and encrypted inside the sidecar (the
/// plaintext is wiped at once).
pub async fn rewrap(
    backend: &dyn Backend,
    key: KeyRef<'_>,
    ciphertext: &[u8],
    context: &Context,
) -> Result<Rewrapped, Error> {
    if let Some(kms) = backend.rewrapper() {
        return kms.rewrap(key, ciphertext, context).await;
    }
    let opened = backend.decrypt(key, ciphertext, context).await?;
    let sealed = backend.encrypt(key, &opened.plaintext.0, context).await?;
    Ok(Rewrapped {
        from: opened.by,
        sealed,
    })
}

/// An error and its causes as one line, each cause once (a transport
/// error's reason is deepest).
#[cfg(any(feature = "azure", feature = "gcp"))]
pub(crate) fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !next.is_empty() && !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = e.source();
    }
    text
}

/// The built backends, by name.
pub type Backends = BTreeMap<String, Arc<dyn Backend>>;
