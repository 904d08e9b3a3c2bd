//! The `gcp` backend: Google Cloud KMS through the official
//! `google-cloud-kms-v1` client (REST over reqwest + rustls) and
//! `google-cloud-auth` credentials.
//!
//! The shared [`Refresher`] holds the access token (`credentials.rs`); the
//! client's own retries are off — retries, the timeout and the circuit
//! breaker are the shared layer's ([`super::resilient`]). A call Cloud KMS
//! answers 401 drops the token, waits for a new one and is sent once more.
//!
//! Every call sends the CRC32C of its inputs and checks the integrity
//! fields of the answer as the API documents (`verified_*_crc32c`, and the
//! CRC32C of what came back); an answer that fails is refused, never used.
//! Cloud KMS signs digests (Ed25519: messages); it has no verify API, so
//! signatures are verified locally with the cached public key. Symmetric
//! keys encrypt with the context as AAD; RSA-OAEP keys (`ASYMMETRIC_DECRYPT`)
//! are encrypted to locally with the version's public key, the context bound
//! inside the block (`super::binding`), and decrypted by
//! `asymmetricDecrypt`. `metadata` always asks Cloud KMS, so that the
//! service's revalidation sees a disabled version at once; what the
//! operations need (resource name, versions, primary) comes back with the
//! service's cached metadata ([`KeyRef::facts`]).

mod credentials;
mod errors;

use errors::Call;
mod names;

use super::credentials::Refresher;
use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, DriverFacts, Error, ErrorKind, KeyMetadata,
    KeyRef, Mac, Origin, Plaintext, PublicKey, Rotate, Sealed, Signature, VersionInfo, Versions,
    WrappedBy, canonical_context,
};
use crate::config::GcpBackendConfig;
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use crate::metrics::Metrics;
use async_trait::async_trait;
use credentials::{Login, Refreshed, Token};
use errors::{corrupted, crc32c, malformed};
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::{CryptoKey, CryptoKeyVersion, Digest};
use names::{algorithm_of, version_number};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Google Cloud KMS.
pub struct GcpBackend {
    /// `projects/P/locations/L/keyRings/R`, for keys named by id.
    ring: Option<String>,
    client: KeyManagementService,
    /// The access token; dropping it stops the refresh.
    credentials: Refresher<Token>,
    /// A configured key, read by the health check.
    probe: Option<String>,
}

impl fmt::Debug for GcpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpBackend")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

/// What the calls need of a CryptoKey, kept with its cached metadata.
struct KeyInfo {
    /// The CryptoKey's resource name.
    name: String,
    algorithm: Algorithm,
    /// The version operations use: the pinned one, the primary
    /// (symmetric keys), or the newest enabled one.
    current: String,
    /// The CryptoKey's primary version (symmetric keys).
    primary: Option<String>,
    versions: Vec<VersionInfo>,
    /// The current version's SubjectPublicKeyInfo (RSA-OAEP keys, which
    /// encrypt here), asked once while these facts are kept.
    spki: tokio::sync::OnceCell<Vec<u8>>,
}

impl KeyInfo {
    fn version_name(&self, version: &str) -> String {
        format!("{}/cryptoKeyVersions/{version}", self.name)
    }

    /// The versions a decrypt answer allows. Cloud KMS names no version
    /// there, only whether the primary decrypted (`usedPrimary`): then the
    /// primary, else one of the key's other versions. (The primary is the
    /// one of these facts, as old as the cached metadata.)
    fn decrypted_by(&self, used_primary: bool) -> WrappedBy {
        let versions = match (&self.primary, used_primary) {
            (Some(primary), true) => Versions::Exactly(primary.clone()),
            (primary, _) => Versions::OneOf(
                (self.versions.iter())
                    .map(|v| v.version.clone())
                    .filter(|v| Some(v) != primary.as_ref())
                    .collect(),
            ),
        };
        WrappedBy {
            versions,
            key_ref: self.name.clone(),
        }
    }
}

impl GcpBackend {
    pub async fn new(
        ctx: &super::BuildContext<'_>,
        config: &GcpBackendConfig,
        resolved: &crate::config::GcpResolved,
    ) -> Result<Self, super::BuildError> {
        let (name, metrics): (&str, Arc<Metrics>) = (ctx.name, ctx.metrics.clone());
        let key_ids: Vec<&str> = ctx.keys.iter().map(|(_, k)| k.key.as_str()).collect();
        let login = Login::new(config, resolved)?;
        let credentials = Refresher::spawn(name, login, credentials::SCHEDULE, metrics);
        let mut builder = KeyManagementService::builder()
            .with_credentials(google_cloud_auth::credentials::Credentials::from(
                Refreshed(credentials.handle()),
            ))
            .with_retry_policy(NeverRetry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let client = builder.build().await.map_err(|e| {
            super::BuildError::Client(format!("cannot build the Cloud KMS client: {e}"))
        })?;
        // Get a token at once when the exchange answers quickly, so that a
        // normal start is ready at once; the refresher goes on either way.
        credentials.first_refresh(Duration::from_secs(5)).await;
        let mut backend = Self {
            ring: config.key_ring.as_ref().map(|ring| {
                format!(
                    "projects/{}/locations/{}/keyRings/{ring}",
                    config.project, config.location
                )
            }),
            client,
            credentials,
            probe: None,
        };
        backend.probe = key_ids
            .first()
            .map(|id| backend.resolve(KeyRef::new("(health check)", id)).0);
        Ok(backend)
    }

    /// Runs a Cloud KMS call with the current token. A 401 drops the token
    /// (if still current), waits for a new one, and sends the call once
    /// more; other failures map to our errors.
    async fn call<T, F, Fut>(&self, key: KeyRef<'_>, op: Call, f: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = google_cloud_kms_v1::Result<T>>,
    {
        self.credentials
            .call_rejecting(f, |e| {
                errors::unauthenticated(e)
                    .then(|| format!("Cloud KMS {op}: {}", errors::describe(e)))
            })
            .await
            .map_err(|why| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("the sidecar has no valid access token for Cloud KMS: {why}"),
                )
            })?
            .map_err(|e| errors::error(key, op, &e))
    }

    /// The CryptoKey's resource name and pinned version, if any.
    fn resolve(&self, key: KeyRef<'_>) -> (String, Option<String>) {
        let full = if key.id.starts_with("projects/") {
            key.id.to_owned()
        } else {
            format!(
                "{}/cryptoKeys/{}",
                self.ring.as_deref().unwrap_or(""),
                key.id
            )
        };
        match full.split_once("/cryptoKeyVersions/") {
            Some((name, version)) => (name.to_owned(), Some(version.to_owned())),
            None => (full, None),
        }
    }

    /// The key's facts, as cached with its metadata ([`KeyRef::facts`]),
    /// or asked of Cloud KMS.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        match key.facts() {
            Some(info) => Ok(info),
            None => Ok(self.describe(key).await?.1),
        }
    }

    /// The key's metadata and facts, asked of Cloud KMS (the CryptoKey and
    /// its versions); the facts go with the metadata unless a version is
    /// still being generated.
    async fn describe(&self, key: KeyRef<'_>) -> Result<(KeyMetadata, Arc<KeyInfo>), Error> {
        let (name, pinned) = self.resolve(key);
        let crypto_key = self
            .call(key, Call::GetCryptoKey, || {
                self.client.get_crypto_key().set_name(name.clone()).send()
            })
            .await?;
        let mut listed = self.versions_of(key, &name).await?;
        let number = |v: &CryptoKeyVersion| version_number(&v.name).unwrap_or_default().to_owned();
        listed.sort_by_key(|v| number(v).parse::<u64>().unwrap_or(0));
        let template = crypto_key.version_template.as_ref();
        let gcp_algorithm = template
            .and_then(|t| t.algorithm.name())
            .or_else(|| crypto_key.primary.as_ref().and_then(|p| p.algorithm.name()))
            .or_else(|| listed.last().and_then(|v| v.algorithm.name()))
            .unwrap_or("CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED")
            .to_owned();
        let algorithm = algorithm_of(&gcp_algorithm).ok_or_else(|| {
            Error::unsupported(format!(
                "key `{}` is a Cloud KMS {gcp_algorithm} key, which kms-sidecar does not support (EC_SIGN_P256/P384, EC_SIGN_ED25519, RSA_SIGN_PSS/PKCS1_*_SHA256, RSA_DECRYPT_OAEP_*_SHA256, GOOGLE_SYMMETRIC_ENCRYPTION, HMAC_SHA256)",
                key.alias
            ))
        })?;
        let enabled = |v: &CryptoKeyVersion| v.state.name() == Some("ENABLED");
        let current = match (&pinned, &crypto_key.primary) {
            (Some(v), _) => v.clone(),
            (None, Some(primary)) => number(primary),
            (None, None) => listed
                .iter()
                .rev()
                .find(|v| enabled(v))
                .map(number)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::KeyDisabled,
                        format!("key `{}` has no enabled version in Cloud KMS", key.alias),
                    )
                })?,
        };
        let pending = listed
            .iter()
            .any(|v| v.state.name() == Some("PENDING_GENERATION"));
        let versions: Vec<_> = listed.iter().map(|v| version_info(v, number(v))).collect();
        let protection = template
            .and_then(|t| t.protection_level.name())
            .unwrap_or("SOFTWARE");
        let details = details_of(&name, gcp_algorithm, protection, &crypto_key);
        let info = Arc::new(KeyInfo {
            name,
            algorithm,
            current: current.clone(),
            primary: crypto_key.primary.as_ref().map(number),
            versions: versions.clone(),
            spki: Default::default(),
        });
        let metadata = KeyMetadata {
            algorithm,
            current_version: current,
            versions,
            created: (crypto_key.create_time.as_ref()).map(|t| system_time(t.seconds())),
            origin: match protection {
                "SOFTWARE" => Origin::Software,
                "EXTERNAL" | "EXTERNAL_VPC" => Origin::External,
                _ => Origin::Hsm,
            },
            rotation_period: (crypto_key.rotation_period())
                .map(|d| Duration::from_secs(d.seconds().max(0) as u64)),
            details,
            driver: (!pending).then(|| DriverFacts::shared(info.clone())),
        };
        Ok((metadata, info))
    }

    /// Every version of the CryptoKey `name`, page by page.
    async fn versions_of(
        &self,
        key: KeyRef<'_>,
        name: &str,
    ) -> Result<Vec<CryptoKeyVersion>, Error> {
        let mut listed = Vec::new();
        let mut page = String::new();
        loop {
            let answer = self
                .call(key, Call::ListVersions, || {
                    self.client
                        .list_crypto_key_versions()
                        .set_parent(name.to_owned())
                        .set_page_size(100)
                        .set_page_token(page.clone())
                        .send()
                })
                .await?;
            listed.extend(answer.crypto_key_versions);
            if answer.next_page_token.is_empty() {
                return Ok(listed);
            }
            page = answer.next_page_token;
        }
    }

    /// The SubjectPublicKeyInfo of a version, its PEM's CRC32C checked.
    async fn spki(&self, key: KeyRef<'_>, version_name: &str) -> Result<Vec<u8>, Error> {
        let answer = self
            .call(key, Call::GetPublicKey, || {
                self.client
                    .get_public_key()
                    .set_name(version_name.to_owned())
                    .send()
            })
            .await?;
        if answer.pem_crc32c != Some(crc32c(answer.pem.as_bytes())) {
            return Err(corrupted(key, Call::GetPublicKey, "pemCrc32c"));
        }
        let pem = pem::parse(answer.pem.as_bytes())
            .map_err(|_| malformed("a public key that is not PEM"))?;
        Ok(pem.contents().to_vec())
    }

    /// Encrypts `plaintext` with the current (or pinned) version.
    async fn seal(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        let info = self.info(key).await?;
        if let Algorithm::RsaOaepSha256 { bits } = info.algorithm {
            return self.seal_rsa(key, &info, bits, plaintext, context).await;
        }
        let aad = canonical_context(context);
        // A pinned version encrypts itself; otherwise the primary does.
        let target = if key.id.contains("/cryptoKeyVersions/") {
            info.version_name(&info.current)
        } else {
            info.name.clone()
        };
        let answer = self
            .call(key, Call::Encrypt, || {
                self.client
                    .encrypt()
                    .set_name(target.clone())
                    .set_plaintext(plaintext.to_vec())
                    .set_plaintext_crc32c(crc32c(plaintext))
                    .set_additional_authenticated_data(aad.clone())
                    .set_additional_authenticated_data_crc32c(crc32c(&aad))
                    .send()
            })
            .await?;
        if !answer.verified_plaintext_crc32c {
            return Err(corrupted(key, Call::Encrypt, "verifiedPlaintextCrc32c"));
        }
        if !answer.verified_additional_authenticated_data_crc32c {
            return Err(corrupted(
                key,
                Call::Encrypt,
                "verifiedAdditionalAuthenticatedDataCrc32c",
            ));
        }
        if answer.ciphertext_crc32c != Some(crc32c(&answer.ciphertext)) {
            return Err(corrupted(key, Call::Encrypt, "ciphertextCrc32c"));
        }
        let version = version_number(&answer.name)
            .ok_or_else(|| malformed("an encrypt answer without the version's name"))?
            .to_owned();
        Ok(Sealed {
            bytes: answer.ciphertext.to_vec(),
            version,
        })
    }

    /// RSA-OAEP: encrypted here to the current version's public key, the
    /// context bound inside; the ciphertext names the version (1 byte of
    /// length, then its number).
    async fn seal_rsa(
        &self,
        key: KeyRef<'_>,
        info: &KeyInfo,
        bits: u16,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        use aws_lc_rs::rsa::{
            OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey,
        };
        let limit = super::binding::rsa_oaep_limit(bits);
        if plaintext.len() > limit {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "key `{}` ({}) encrypts at most {limit} bytes: use `envelope` for larger data",
                    key.alias, info.algorithm
                ),
            ));
        }
        let version_name = info.version_name(&info.current);
        let spki = (info.spki)
            .get_or_try_init(|| self.spki(key, &version_name))
            .await?;
        let public = PublicEncryptingKey::from_der(spki)
            .ok()
            .and_then(|k| OaepPublicEncryptingKey::new(k).ok())
            .ok_or_else(|| malformed("an RSA public key that does not parse"))?;
        let bound = super::binding::bind(context, plaintext);
        let mut ciphertext = vec![0u8; public.ciphertext_size()];
        let sealed = public
            .encrypt(&OAEP_SHA256_MGF1SHA256, &bound, &mut ciphertext, None)
            .map_err(|_| Error::new(ErrorKind::Backend, "RSA-OAEP encryption failed"))?;
        let mut bytes = vec![info.current.len() as u8];
        bytes.extend_from_slice(info.current.as_bytes());
        bytes.extend_from_slice(sealed);
        Ok(Sealed {
            bytes,
            version: info.current.clone(),
        })
    }

    async fn open_rsa(
        &self,
        key: KeyRef<'_>,
        info: &KeyInfo,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let fail = Error::decryption_failed;
        let (&len, rest) = ciphertext.split_first().ok_or_else(fail)?;
        let (version, sealed) = rest.split_at_checked(usize::from(len)).ok_or_else(fail)?;
        let version = std::str::from_utf8(version).map_err(|_| fail())?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || sealed.is_empty() {
            return Err(fail());
        }
        let version_name = info.version_name(version);
        let answer = self
            .call(key, Call::AsymmetricDecrypt, || {
                self.client
                    .asymmetric_decrypt()
                    .set_name(version_name.clone())
                    .set_ciphertext(sealed.to_vec())
                    .set_ciphertext_crc32c(crc32c(sealed))
                    .send()
            })
            .await
            .map_err(not_this_keys)?;
        if !answer.verified_ciphertext_crc32c {
            return Err(corrupted(
                key,
                Call::AsymmetricDecrypt,
                "verifiedCiphertextCrc32c",
            ));
        }
        let opened = Zeroizing::new(answer.plaintext.to_vec());
        if answer.plaintext_crc32c != Some(crc32c(&opened)) {
            return Err(corrupted(key, Call::AsymmetricDecrypt, "plaintextCrc32c"));
        }
        Ok(Decrypted {
            plaintext: Plaintext(super::binding::unbind(context, &opened)?),
            // The version named in the call's resource name decrypted.
            by: WrappedBy::exactly(version, info.name.as_str()),
        })
    }
}

/// The largest message Cloud KMS signs as `data` (Ed25519).
const MAX_SIGNED_DATA: usize = 64 * 1024;

/// A version the key does not have is in another key's ciphertext.
fn not_this_keys(e: Error) -> Error {
    match e.kind {
        ErrorKind::KeyNotFound => Error::decryption_failed(),
        _ => e,
    }
}

fn system_time(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64)
}

/// What the metadata says of a CryptoKeyVersion numbered `number`.
fn version_info(v: &CryptoKeyVersion, number: String) -> VersionInfo {
    VersionInfo {
        version: number,
        created: v.create_time.as_ref().map(|t| system_time(t.seconds())),
        enabled: v.state.name() == Some("ENABLED"),
        state: v.state.name().map(str::to_owned),
    }
}

/// The metadata's `details` of a CryptoKey.
fn details_of(
    name: &str,
    gcp_algorithm: String,
    protection: &str,
    crypto_key: &CryptoKey,
) -> BTreeMap<String, String> {
    let mut details = BTreeMap::from([
        ("resource".to_owned(), name.to_owned()),
        ("gcp_algorithm".to_owned(), gcp_algorithm),
        ("protection_level".to_owned(), protection.to_owned()),
        (
            "purpose".to_owned(),
            crypto_key.purpose.name().unwrap_or_default().to_owned(),
        ),
    ]);
    if let Some(next) = &crypto_key.next_rotation_time {
        details.insert(
            "next_rotation_time".to_owned(),
            humantime::format_rfc3339_seconds(system_time(next.seconds())).to_string(),
        );
    }
    details
}

#[async_trait]
impl Backend for GcpBackend {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    /// A valid token, and a configured key readable (`cloudkms.cryptoKeys.get`,
    /// in `roles/cloudkms.viewer`). A throttled answer is a working KMS.
    async fn health(&self) -> Result<(), Error> {
        let probe = KeyRef::new("(health check)", "-");
        match &self.probe {
            Some(name) => self
                .call(probe, Call::GetCryptoKey, || {
                    self.client.get_crypto_key().set_name(name.clone()).send()
                })
                .await
                .map(|_| ()),
            None => self
                .credentials
                .refreshed()
                .await
                .map(|_| ())
                .map_err(|why| Error::new(ErrorKind::Unavailable, why.to_string())),
        }
    }

    /// Always asked of Cloud KMS: the service's revalidation reads the
    /// versions' states from here.
    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        Ok(self.describe(key).await?.0)
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let info = self.info(key).await?;
        let version = version.unwrap_or(&info.current).to_owned();
        Ok(PublicKey {
            spki_der: self.spki(key, &info.version_name(&version)).await?,
            algorithm: info.algorithm,
            version,
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let info = self.info(key).await?;
        if algorithm != info.algorithm {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                format!(
                    "field `algorithm`: this key signs {}, not {algorithm} (a Cloud KMS key has one algorithm)",
                    info.algorithm
                ),
            ));
        }
        // Cloud KMS signs a digest, or (Ed25519) the message itself as `data`.
        let request = self.client.asymmetric_sign();
        let (request, sent_data) = match (algorithm.digest(), input) {
            (None, SignInput::Digest(_)) => {
                return Err(Error::unsupported("this algorithm signs messages only"));
            }
            (None, SignInput::Message(m)) if m.len() > MAX_SIGNED_DATA => {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "key `{}` ({algorithm}): Cloud KMS signs messages of at most 64 KiB",
                        key.alias
                    ),
                ));
            }
            (None, SignInput::Message(m)) => (
                request.set_data(m.to_vec()).set_data_crc32c(crc32c(m)),
                true,
            ),
            (Some(hash), input) => {
                let digest = match input {
                    SignInput::Message(m) => aws_lc_rs::digest::digest(hash, m).as_ref().to_vec(),
                    SignInput::Digest(d) => {
                        crypto::import_digest(algorithm, d)?;
                        d.to_vec()
                    }
                };
                let crc = crc32c(&digest);
                let digest = match hash.output_len() {
                    32 => Digest::new().set_sha256(digest),
                    48 => Digest::new().set_sha384(digest),
                    _ => Digest::new().set_sha512(digest),
                };
                (request.set_digest(digest).set_digest_crc32c(crc), false)
            }
        };
        let version_name = info.version_name(&info.current);
        let request = request.set_name(version_name.clone());
        let answer = self
            .call(key, Call::AsymmetricSign, || request.clone().send())
            .await?;
        let (verified, field) = if sent_data {
            (answer.verified_data_crc32c, "verifiedDataCrc32c")
        } else {
            (answer.verified_digest_crc32c, "verifiedDigestCrc32c")
        };
        if !verified {
            return Err(corrupted(key, Call::AsymmetricSign, field));
        }
        if answer.signature_crc32c != Some(crc32c(&answer.signature)) {
            return Err(corrupted(key, Call::AsymmetricSign, "signatureCrc32c"));
        }
        if answer.name != version_name {
            return Err(malformed("a signature by another version than asked"));
        }
        Ok(Signature {
            bytes: answer.signature.to_vec(),
            encoding: SignatureFormat::Der,
            algorithm,
            version: info.current.clone(),
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        self.seal(key, plaintext, context).await
    }

    /// The key is the CryptoKey asked for (Cloud KMS decrypts only with
    /// its versions); the version, see [`KeyInfo::decrypted_by`].
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let info = self.info(key).await?;
        if matches!(info.algorithm, Algorithm::RsaOaepSha256 { .. }) {
            return self.open_rsa(key, &info, ciphertext, context).await;
        }
        if ciphertext.is_empty() {
            return Err(Error::decryption_failed());
        }
        let aad = canonical_context(context);
        let answer = self
            .call(key, Call::Decrypt, || {
                self.client
                    .decrypt()
                    .set_name(info.name.clone())
                    .set_ciphertext(ciphertext.to_vec())
                    .set_ciphertext_crc32c(crc32c(ciphertext))
                    .set_additional_authenticated_data(aad.clone())
                    .set_additional_authenticated_data_crc32c(crc32c(&aad))
                    .send()
            })
            .await
            .map_err(not_this_keys)?;
        let plaintext = Zeroizing::new(answer.plaintext.to_vec());
        if answer.plaintext_crc32c != Some(crc32c(&plaintext)) {
            return Err(corrupted(key, Call::Decrypt, "plaintextCrc32c"));
        }
        Ok(Decrypted {
            plaintext: Plaintext(plaintext),
            by: info.decrypted_by(answer.used_primary),
        })
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let mut dek = Zeroizing::new(vec![0u8; size.bytes()]);
        aws_lc_rs::rand::fill(&mut dek)
            .map_err(|_| Error::new(ErrorKind::Backend, "no randomness for a data key"))?;
        let sealed = self.seal(key, &dek, context).await?;
        Ok(DataKey {
            plaintext: Plaintext(dek),
            encrypted: sealed.bytes,
            version: sealed.version,
            key_ref: self.resolve(key).0,
        })
    }

    fn macs(&self) -> Option<&dyn Mac> {
        Some(self)
    }

    fn rotator(&self) -> Option<&dyn Rotate> {
        Some(self)
    }
}

#[async_trait]
impl Mac for GcpBackend {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let info = self.info(key).await?;
        let version_name = info.version_name(&info.current);
        let answer = self
            .call(key, Call::MacSign, || {
                self.client
                    .mac_sign()
                    .set_name(version_name.clone())
                    .set_data(message.to_vec())
                    .set_data_crc32c(crc32c(message))
                    .send()
            })
            .await?;
        if !answer.verified_data_crc32c {
            return Err(corrupted(key, Call::MacSign, "verifiedDataCrc32c"));
        }
        if answer.mac_crc32c != Some(crc32c(&answer.mac)) {
            return Err(corrupted(key, Call::MacSign, "macCrc32c"));
        }
        Ok(Sealed {
            bytes: answer.mac.to_vec(),
            version: info.current.clone(),
        })
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: &str,
    ) -> Result<bool, Error> {
        let version_name = self.info(key).await?.version_name(version);
        let answer = self
            .call(key, Call::MacVerify, || {
                self.client
                    .mac_verify()
                    .set_name(version_name.clone())
                    .set_data(message.to_vec())
                    .set_data_crc32c(crc32c(message))
                    .set_mac(mac.to_vec())
                    .set_mac_crc32c(crc32c(mac))
                    .send()
            })
            .await?;
        if !answer.verified_data_crc32c || !answer.verified_mac_crc32c {
            return Err(corrupted(key, Call::MacVerify, "verified input CRC32C"));
        }
        if answer.verified_success_integrity != answer.success {
            return Err(corrupted(key, Call::MacVerify, "verifiedSuccessIntegrity"));
        }
        Ok(answer.success)
    }
}

#[async_trait]
impl Rotate for GcpBackend {
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let (name, pinned) = self.resolve(key);
        if pinned.is_some() {
            return Err(Error::unsupported(format!(
                "key `{}` is pinned to a version: rotate the CryptoKey instead",
                key.alias
            )));
        }
        let info = self.info(key).await?;
        let created = self
            .call(key, Call::CreateVersion, || {
                self.client
                    .create_crypto_key_version()
                    .set_parent(name.clone())
                    .set_crypto_key_version(CryptoKeyVersion::new())
                    .send()
            })
            .await?;
        let version = version_number(&created.name)
            .ok_or_else(|| malformed("a new version without a name"))?
            .to_owned();
        // Symmetric keys encrypt with their primary: make the new one it.
        if info.algorithm == Algorithm::Aes256Gcm {
            self.call(key, Call::UpdatePrimary, || {
                self.client
                    .update_crypto_key_primary_version()
                    .set_name(name.clone())
                    .set_crypto_key_version_id(version.clone())
                    .send()
            })
            .await?;
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
