//! The `aws` backend: AWS KMS through `aws-sdk-kms` (rustls). Credentials
//! come from `aws-config`'s standard chain — IRSA (`AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, the token re-read on every refresh), EKS Pod
//! Identity, environment — optionally chained into an `assume_role`.

use super::{
    AbortOnDrop, Backend, Context, DataKey, Error, ErrorKind, KeyMetadata, KeyRef, Origin,
    Plaintext, PublicKey, Sealed, SignOptions, Signature, Verified, VersionInfo,
};
use crate::config::AwsBackendConfig;
use crate::crypto::{self, Algorithm, Purpose, SignInput, SignatureFormat};
use crate::metrics::Metrics;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::future::ProvideCredentials as CredentialsFuture;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::{Credentials, ProvideCredentials, Region, SharedCredentialsProvider};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeySpec, KeySpec, MacAlgorithmSpec, MessageType, OriginType, SigningAlgorithmSpec,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

/// Largest plaintext KMS `Encrypt` takes.
pub const MAX_ENCRYPT: usize = 4096;
/// Largest message KMS `Sign` takes as `RAW`; longer ones are hashed here.
const MAX_RAW_MESSAGE: usize = 4096;
/// How long `DescribeKey` results are reused for sign/verify decisions.
const KEY_INFO_TTL: Duration = Duration::from_secs(300);

/// AWS KMS: a primary region and, for multi-region keys, replica regions to
/// fail over to.
pub struct AwsBackend {
    name: String,
    /// Primary first.
    regions: Vec<Regional>,
    /// The credentials every region's client signs with, refreshed in the background.
    credentials: Arc<Refreshed>,
    /// Stops the refresh loop when the backend goes.
    _refresher: AbortOnDrop,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let regions: Vec<_> = self.regions.iter().map(|r| r.region.as_str()).collect();
        f.debug_struct("AwsBackend")
            .field("regions", &regions)
            .finish_non_exhaustive()
    }
}

/// One region's client and key facts.
struct Regional {
    region: String,
    client: Client,
    keys: Mutex<HashMap<String, (Instant, Arc<KeyInfo>)>>,
}

impl Regional {
    /// The key reference in this region: a key ARN names its region, so a
    /// multi-region key's ARN is rewritten; ids and aliases are the same.
    fn key_id(&self, id: &str) -> String {
        let parts: Vec<&str> = id.split(':').collect();
        if parts.len() >= 6 && parts[0] == "arn" && parts[2] == "kms" {
            let mut parts = parts;
            parts[3] = &self.region;
            parts.join(":")
        } else {
            id.to_owned()
        }
    }
}

/// What `DescribeKey` says about a key.
#[derive(Debug)]
struct KeyInfo {
    algorithm: Algorithm,
    arn: String,
    version: String,
    created: SystemTime,
    origin: Origin,
    multi_region: bool,
}

impl AwsBackend {
    pub async fn new(
        name: &str,
        config: &AwsBackendConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let region = RegionProviderChain::first_try(Region::new(config.region.clone()));
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let mut source = match WebIdentity::from_env(&sdk, config) {
            Some(web_identity) => Some(SharedCredentialsProvider::new(web_identity)),
            None => sdk.credentials_provider(),
        };
        if let Some(role) = &config.assume_role {
            let mut sts = sdk.clone().into_builder();
            if let Some(endpoint) = &config.sts_endpoint {
                sts = sts.endpoint_url(endpoint);
            }
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
                .configure(&sts.build())
                .session_name(
                    role.session_name
                        .clone()
                        .unwrap_or_else(|| "kms-sidecar".into()),
                );
            if let Some(id) = &role.external_id {
                provider = provider.external_id(id);
            }
            source = match source {
                Some(base) => Some(SharedCredentialsProvider::new(
                    provider.build_from_provider(base).await,
                )),
                None => Some(SharedCredentialsProvider::new(provider.build().await)),
            };
        }
        let source = source.ok_or("no AWS credentials provider could be configured")?;
        let credentials = Arc::new(Refreshed {
            source,
            current: RwLock::new(None),
            last_error: RwLock::new(None),
        });
        // Start with credentials when they come quickly, so a normal start is
        // ready at once; the loop takes over either way.
        let first = tokio::time::timeout(Duration::from_secs(5), credentials.fetch()).await;
        let first = matches!(first, Ok(Ok(_)));
        let primary = (config.region.clone(), config.endpoint.clone());
        let replicas = config
            .replica_regions
            .iter()
            .map(|r| r.region_and_endpoint());
        let regions = std::iter::once(primary)
            .chain(replicas)
            .map(|(region, endpoint)| {
                // Retries are the shared layer's (backend/resilient.rs), the
                // same for every backend; replica failover stays here.
                let mut kms = aws_sdk_kms::config::Builder::from(&sdk)
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .region(Region::new(region.clone()))
                    .credentials_provider(RefreshedProvider(credentials.clone()));
                if let Some(endpoint) = endpoint {
                    kms = kms.endpoint_url(endpoint);
                }
                Regional {
                    region,
                    client: Client::from_conf(kms.build()),
                    keys: Mutex::new(HashMap::new()),
                }
            })
            .collect();
        let refresher = tokio::spawn(refresh_loop(
            config.credential_refresh,
            name.to_owned(),
            credentials.clone(),
            metrics.clone(),
            first,
        ));
        Ok(Self {
            name: name.to_owned(),
            regions,
            credentials,
            _refresher: AbortOnDrop(refresher.abort_handle()),
            metrics,
        })
    }

    fn note_failover(&self, key: KeyRef<'_>, from: &str, to: &str, error: &Error) {
        self.metrics
            .backend_failovers
            .with_label_values(&[&self.name, from, to])
            .inc();
        tracing::warn!(backend = %self.name, key.alias = key.alias, from, to, error = %error, "failing over to a replica region");
    }
}

impl Regional {
    /// [`Self::info`], refusing keys not made for `purpose` (KMS would too).
    async fn info_for(
        &self,
        key: KeyRef<'_>,
        purpose: Purpose,
        what: &str,
    ) -> Result<Arc<KeyInfo>, Error> {
        let info = self.info(key).await?;
        super::require_purpose(key, info.algorithm, purpose, what)?;
        Ok(info)
    }

    /// The key's algorithm and facts, from a `DescribeKey` at most
    /// [`KEY_INFO_TTL`] old.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        if let Some((at, info)) = self.keys.lock().expect("never poisoned").get(key.id)
            && at.elapsed() < KEY_INFO_TTL
        {
            return Ok(info.clone());
        }
        let out = self
            .client
            .describe_key()
            .key_id(key.id)
            .send()
            .await
            .map_err(|e| kms_error(key, "DescribeKey", e))?;
        let m = out.key_metadata().ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                "AWS KMS DescribeKey returned no key metadata",
            )
        })?;
        let spec = m.key_spec().cloned().unwrap_or(KeySpec::SymmetricDefault);
        let algorithm = match spec {
            KeySpec::EccNistP256 => Algorithm::EcdsaP256Sha256,
            KeySpec::EccNistP384 => Algorithm::EcdsaP384Sha384,
            KeySpec::Rsa2048 => Algorithm::RsaPssSha256 { bits: 2048 },
            KeySpec::Rsa3072 => Algorithm::RsaPssSha256 { bits: 3072 },
            KeySpec::Rsa4096 => Algorithm::RsaPssSha256 { bits: 4096 },
            KeySpec::SymmetricDefault => Algorithm::Aes256Gcm,
            KeySpec::Hmac256 => Algorithm::HmacSha256,
            other => {
                return Err(Error::unsupported(format!(
                    "key `{}` is an AWS KMS {} key, which kms-sidecar does not serve",
                    key.alias,
                    other.as_str()
                )));
            }
        };
        let info = Arc::new(KeyInfo {
            algorithm,
            arn: m.arn().unwrap_or(m.key_id()).to_owned(),
            version: m.current_key_material_id().unwrap_or("1").to_owned(),
            created: m
                .creation_date()
                .and_then(|d| SystemTime::try_from(*d).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            origin: match m.origin() {
                Some(OriginType::AwsCloudhsm) => Origin::Hsm,
                Some(OriginType::External | OriginType::ExternalKeyStore) => Origin::External,
                _ => Origin::Hsm,
            },
            multi_region: m.multi_region().unwrap_or(false),
        });
        self.keys
            .lock()
            .expect("never poisoned")
            .insert(key.id.to_owned(), (Instant::now(), info.clone()));
        Ok(info)
    }
}

/// IRSA's web-identity exchange with a configured `sts_endpoint` (aws-config's
/// own provider takes a custom STS endpoint only from the environment). The
/// projected token is read from its file at every exchange and never kept.
struct WebIdentity {
    sts: aws_sdk_sts::Client,
    role_arn: String,
    token_file: std::path::PathBuf,
    session_name: String,
}

impl fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebIdentity")
            .field("role_arn", &self.role_arn)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WebIdentity {
    /// Set up when `sts_endpoint` is configured and the pod has IRSA's
    /// `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`.
    fn from_env(sdk: &aws_config::SdkConfig, config: &AwsBackendConfig) -> Option<Self> {
        let endpoint = config.sts_endpoint.as_ref()?;
        let role_arn = std::env::var("AWS_ROLE_ARN").ok()?;
        let token_file = std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE")?.into();
        let session_name =
            std::env::var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|_| "kms-sidecar".into());
        let sts = aws_sdk_sts::config::Builder::from(sdk)
            .endpoint_url(endpoint)
            .build();
        Some(Self {
            sts: aws_sdk_sts::Client::from_conf(sts),
            role_arn,
            token_file,
            session_name,
        })
    }

    async fn exchange(&self) -> Result<Credentials, CredentialsError> {
        let token = Zeroizing::new(tokio::fs::read_to_string(&self.token_file).await.map_err(
            |e| {
                CredentialsError::provider_error(format!(
                    "reading {}: {e}",
                    self.token_file.display()
                ))
            },
        )?);
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.role_arn)
            .role_session_name(&self.session_name)
            .web_identity_token(token.trim())
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(
                    aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        let c = out
            .credentials()
            .ok_or_else(|| CredentialsError::provider_error("STS returned no credentials"))?;
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            SystemTime::try_from(*c.expiration()).ok(),
            "kms-sidecar-web-identity",
        ))
    }
}

impl ProvideCredentials for WebIdentity {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        CredentialsFuture::new(self.exchange())
    }
}

/// Credentials fetched ahead of their expiry by [`refresh_loop`], so that
/// requests never wait on STS or the token file; the source chain re-reads
/// the projected token file at every refresh.
struct Refreshed {
    source: SharedCredentialsProvider,
    current: RwLock<Option<Credentials>>,
    /// Why the last refresh failed (no secrets: provider errors name no keys).
    last_error: RwLock<Option<String>>,
}

impl Refreshed {
    /// The current credentials if they have not expired.
    fn valid(&self) -> Option<Credentials> {
        let current = self.current.read().expect("never poisoned").clone()?;
        match current.expiry() {
            Some(expiry) if expiry <= SystemTime::now() => None,
            _ => Some(current),
        }
    }

    async fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let fresh = self.source.provide_credentials().await?;
        *self.current.write().expect("never poisoned") = Some(fresh.clone());
        *self.last_error.write().expect("never poisoned") = None;
        Ok(fresh)
    }
}

#[derive(Clone)]
struct RefreshedProvider(Arc<Refreshed>);

impl fmt::Debug for RefreshedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshedProvider")
    }
}

impl ProvideCredentials for RefreshedProvider {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        match self.0.valid() {
            Some(c) => CredentialsFuture::ready(Ok(c)),
            // Not loaded yet or expired: fetch now rather than fail.
            None => CredentialsFuture::new(self.0.fetch()),
        }
    }
}

/// Refreshes credentials at ~70 % of their remaining lifetime (within
/// `credential_refresh`, default 1–15 min),
/// keeps the last good ones on failure and retries with backoff (5–60 s);
/// exports their expiry and the refresh outcomes.
async fn refresh_loop(
    bounds: crate::config::RefreshBounds,
    backend: String,
    credentials: Arc<Refreshed>,
    metrics: Arc<Metrics>,
    mut fetched: bool,
) {
    let mut backoff = Duration::from_secs(5);
    loop {
        let result = match (fetched, credentials.valid()) {
            (true, Some(c)) => Ok(c),
            _ => credentials.fetch().await,
        };
        fetched = false;
        let wait = match result {
            Ok(c) => {
                backoff = Duration::from_secs(5);
                metrics
                    .credential_refresh
                    .with_label_values(&[&backend, "ok"])
                    .inc();
                let expiry = c.expiry();
                let unix = expiry
                    .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics
                    .credential_expiry
                    .with_label_values(&[&backend])
                    .set(unix);
                let left = expiry
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::from_secs(900));
                left.mul_f64(0.7).clamp(bounds.min.0, bounds.max.0)
            }
            Err(e) => {
                metrics
                    .credential_refresh
                    .with_label_values(&[&backend, "error"])
                    .inc();
                let reason = aws_sdk_kms::error::DisplayErrorContext(&e).to_string();
                tracing::warn!(backend = %backend, error = %reason, "AWS credential refresh failed; keeping the last good credentials");
                *credentials.last_error.write().expect("never poisoned") = Some(reason);
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait.min(bounds.max.0)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Maps an SDK error to our kinds, keeping KMS's code, message and request id
/// (never credentials: the SDK does not put them in errors).
fn kms_error<E>(key: KeyRef<'_>, op: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request_id = err.request_id().unwrap_or("-").to_owned();
    let (kind, detail) = match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("Unknown");
            let kind = match code {
                "NotFoundException" => ErrorKind::KeyNotFound,
                "AccessDeniedException" => ErrorKind::Forbidden,
                "ThrottlingException" | "LimitExceededException" => ErrorKind::Throttled,
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    ErrorKind::DecryptionFailed
                }
                "InvalidKeyUsageException" | "UnsupportedOperationException" => {
                    ErrorKind::OperationNotSupported
                }
                "ValidationException" | "InvalidArnException" => ErrorKind::InvalidRequest,
                "DependencyTimeoutException" => ErrorKind::Timeout,
                "KMSInternalException" | "KeyUnavailableException" => ErrorKind::Unavailable,
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException" => ErrorKind::Unauthenticated,
                _ => ErrorKind::Backend,
            };
            (kind, format!("{code}: {}", err.message().unwrap_or("")))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "timed out".to_owned()),
        SdkError::DispatchFailure(_) => (ErrorKind::Unavailable, "cannot reach AWS KMS".to_owned()),
        _ => (ErrorKind::Backend, "unexpected response".to_owned()),
    };
    tracing::warn!(key.alias = key.alias, op, aws.request_id = %request_id, error = %detail, "AWS KMS call failed");
    if kind == ErrorKind::DecryptionFailed {
        return Error::decryption_failed();
    }
    Error::new(
        kind,
        format!(
            "AWS KMS {op} for key `{}`: {detail} (request id {request_id})",
            key.alias
        ),
    )
    .with_source(err)
}

fn signing_spec(
    algorithm: Algorithm,
    asked: Option<Algorithm>,
) -> Result<(Algorithm, SigningAlgorithmSpec), Error> {
    let effective = match (algorithm, asked) {
        (Algorithm::RsaPssSha256 { bits }, Some(Algorithm::RsaPkcs1Sha256 { bits: b }))
            if b == bits =>
        {
            Algorithm::RsaPkcs1Sha256 { bits }
        }
        (a, Some(asked)) if asked != a => {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                format!("field `algorithm`: this key signs {a}, not {asked}"),
            ));
        }
        (a, _) => a,
    };
    let spec = match effective {
        Algorithm::EcdsaP256Sha256 => SigningAlgorithmSpec::EcdsaSha256,
        Algorithm::EcdsaP384Sha384 => SigningAlgorithmSpec::EcdsaSha384,
        Algorithm::RsaPssSha256 { .. } => SigningAlgorithmSpec::RsassaPssSha256,
        Algorithm::RsaPkcs1Sha256 { .. } => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        other => return Err(Error::unsupported(format!("a {other} key cannot sign"))),
    };
    Ok((effective, spec))
}

/// KMS's `MessageType` and bytes for an input: messages over 4 KiB are
/// hashed here and sent as a digest.
fn kms_input(algorithm: Algorithm, input: SignInput<'_>) -> Result<(MessageType, Vec<u8>), Error> {
    Ok(match input {
        SignInput::Message(m) if m.len() <= MAX_RAW_MESSAGE => (MessageType::Raw, m.to_vec()),
        SignInput::Message(m) => {
            let alg = algorithm
                .digest()
                .ok_or_else(|| Error::unsupported("this algorithm signs messages only"))?;
            (
                MessageType::Digest,
                aws_lc_rs::digest::digest(alg, m).as_ref().to_vec(),
            )
        }
        SignInput::Digest(d) => {
            crypto::import_digest(algorithm, d)
                .map_err(|e| Error::new(ErrorKind::InvalidRequest, e.to_string()))?;
            (MessageType::Digest, d.to_vec())
        }
    })
}

fn context_map(context: &Context) -> Option<HashMap<String, String>> {
    (!context.is_empty()).then(|| {
        context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

impl Regional {
    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        self.keys.lock().expect("never poisoned").remove(key.id);
        let info = self.info(key).await?;
        let mut details = BTreeMap::from([
            ("arn".to_owned(), info.arn.clone()),
            ("region".to_owned(), self.region.clone()),
            ("multi_region".to_owned(), info.multi_region.to_string()),
        ]);
        let mut rotation_period = None;
        if info.algorithm == Algorithm::Aes256Gcm {
            let status = self
                .client
                .get_key_rotation_status()
                .key_id(&info.arn) // these calls take no aliases
                .send()
                .await
                .map_err(|e| kms_error(key, "GetKeyRotationStatus", e))?;
            if status.key_rotation_enabled() {
                rotation_period = status
                    .rotation_period_in_days()
                    .map(|d| Duration::from_secs(d as u64 * 86_400));
            }
            details.insert(
                "automatic_rotation".into(),
                status.key_rotation_enabled().to_string(),
            );
        }
        let mut versions = vec![VersionInfo {
            version: info.version.clone(),
            created: Some(info.created),
            enabled: true,
        }];
        if let Ok(rotations) = self
            .client
            .list_key_rotations()
            .key_id(&info.arn)
            .send()
            .await
        {
            versions = rotations
                .rotations()
                .iter()
                .filter_map(|r| {
                    Some(VersionInfo {
                        version: r.key_material_id()?.to_owned(),
                        created: r
                            .rotation_date()
                            .and_then(|d| SystemTime::try_from(*d).ok()),
                        enabled: true,
                    })
                })
                .chain(versions)
                .collect();
        }
        Ok(KeyMetadata {
            algorithm: info.algorithm,
            current_version: info.version.clone(),
            versions,
            created: Some(info.created),
            origin: info.origin,
            rotation_period,
            details,
        })
    }

    async fn public_key(
        &self,
        key: KeyRef<'_>,
        _version: Option<&str>,
    ) -> Result<PublicKey, Error> {
        let info = self.info(key).await?;
        let out = self
            .client
            .get_public_key()
            .key_id(key.id)
            .send()
            .await
            .map_err(|e| kms_error(key, "GetPublicKey", e))?;
        let spki = out.public_key().ok_or_else(|| {
            Error::new(ErrorKind::Backend, "AWS KMS GetPublicKey returned no key")
        })?;
        Ok(PublicKey {
            spki_der: spki.as_ref().to_vec(),
            algorithm: info.algorithm,
            version: info.version.clone(),
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        options: SignOptions,
    ) -> Result<Signature, Error> {
        let info = self.info(key).await?;
        let (algorithm, spec) = signing_spec(info.algorithm, options.algorithm)?;
        let (message_type, bytes) = kms_input(algorithm, input)?;
        let out = self
            .client
            .sign()
            .key_id(key.id)
            .message(Blob::new(bytes))
            .message_type(message_type)
            .signing_algorithm(spec)
            .send()
            .await
            .map_err(|e| kms_error(key, "Sign", e))?;
        let der = out
            .signature()
            .ok_or_else(|| Error::new(ErrorKind::Backend, "AWS KMS Sign returned no signature"))?
            .as_ref();
        let bytes = match (options.format, algorithm.ecdsa_coordinate_len()) {
            (SignatureFormat::Raw, Some(n)) => {
                crypto::ecdsa_der_to_raw(der, n).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Backend,
                        "AWS KMS returned a malformed ECDSA signature",
                    )
                })?
            }
            _ => der.to_vec(),
        };
        Ok(Signature {
            bytes,
            algorithm,
            version: info.version.clone(),
        })
    }

    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        options: SignOptions,
        _version: Option<&str>,
    ) -> Result<Verified, Error> {
        let info = self.info(key).await?;
        let (algorithm, spec) = signing_spec(info.algorithm, options.algorithm)?;
        let (message_type, bytes) = kms_input(algorithm, input)?;
        // KMS takes DER; a raw r‖s signature (labelled, or of exactly twice the
        // coordinate width) is converted first.
        let signature = match algorithm.ecdsa_coordinate_len() {
            Some(n)
                if options.format == SignatureFormat::Raw
                    || crypto::guess_format(algorithm, signature) == SignatureFormat::Raw =>
            {
                crypto::ecdsa_raw_to_der(signature, n)
            }
            _ => signature.to_vec(),
        };
        let result = self
            .client
            .verify()
            .key_id(key.id)
            .message(Blob::new(bytes))
            .message_type(message_type)
            .signing_algorithm(spec)
            .signature(Blob::new(signature))
            .send()
            .await;
        let valid = match result {
            Ok(out) => out.signature_valid(),
            Err(e) if e.code() == Some("KMSInvalidSignatureException") => false,
            Err(e) => return Err(kms_error(key, "Verify", e)),
        };
        Ok(Verified {
            valid,
            version: info.version.clone(),
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        if plaintext.len() > MAX_ENCRYPT {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "plaintext is {} bytes; AWS KMS encrypts at most {MAX_ENCRYPT}: use envelope encryption for larger data",
                    plaintext.len()
                ),
            ));
        }
        let info = self.info_for(key, Purpose::Encrypt, "encrypt").await?;
        let out = self
            .client
            .encrypt()
            .key_id(key.id)
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| kms_error(key, "Encrypt", e))?;
        Ok(Sealed {
            bytes: out
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
            version: info.version.clone(),
        })
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Plaintext, Error> {
        self.info_for(key, Purpose::Encrypt, "decrypt").await?;
        let out = self
            .client
            .decrypt()
            .key_id(key.id)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| kms_error(key, "Decrypt", e))?;
        let plaintext = out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default();
        Ok(Plaintext(Zeroizing::new(plaintext)))
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        bits: u32,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let info = self
            .info_for(key, Purpose::Encrypt, "make data keys")
            .await?;
        let mut call = self
            .client
            .generate_data_key()
            .key_id(key.id)
            .set_encryption_context(context_map(context));
        call = match bits {
            256 => call.key_spec(DataKeySpec::Aes256),
            128 => call.key_spec(DataKeySpec::Aes128),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    "`bits` must be 128 or 256",
                ));
            }
        };
        let out = call
            .send()
            .await
            .map_err(|e| kms_error(key, "GenerateDataKey", e))?;
        Ok(DataKey {
            plaintext: Plaintext(Zeroizing::new(
                out.plaintext()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default(),
            )),
            encrypted: out
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
            version: info.version.clone(),
        })
    }

    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let info = self.info_for(key, Purpose::Mac, "compute a MAC").await?;
        let out = self
            .client
            .generate_mac()
            .key_id(key.id)
            .message(Blob::new(message.to_vec()))
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .send()
            .await
            .map_err(|e| kms_error(key, "GenerateMac", e))?;
        Ok(Sealed {
            bytes: out.mac().map(|b| b.as_ref().to_vec()).unwrap_or_default(),
            version: info.version.clone(),
        })
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        _version: Option<&str>,
    ) -> Result<Verified, Error> {
        let info = self.info_for(key, Purpose::Mac, "verify a MAC").await?;
        let result = self
            .client
            .verify_mac()
            .key_id(key.id)
            .message(Blob::new(message.to_vec()))
            .mac(Blob::new(mac.to_vec()))
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .send()
            .await;
        let valid = match result {
            Ok(out) => out.mac_valid(),
            Err(e) if e.code() == Some("KMSInvalidMacException") => false,
            Err(e) => return Err(kms_error(key, "VerifyMac", e)),
        };
        Ok(Verified {
            valid,
            version: info.version.clone(),
        })
    }

    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let info = self.info(key).await?;
        self.client
            .rotate_key_on_demand()
            .key_id(&info.arn)
            .send()
            .await
            .map_err(|e| kms_error(key, "RotateKeyOnDemand", e))?;
        self.keys.lock().expect("never poisoned").remove(key.id);
        Ok(self.info(key).await?.version.clone())
    }
}

/// Runs a call in the primary region and, while it fails with a retryable
/// error (unreachable, throttled, timed out), in the next replica region,
/// with the key reference rewritten for that region.
macro_rules! failover {
    ($self:ident, $key:ident, |$r:ident, $k:ident| $call:expr) => {{
        let mut answer = None;
        for (i, $r) in $self.regions.iter().enumerate() {
            let id = $r.key_id($key.id);
            let $k = KeyRef {
                alias: $key.alias,
                id: &id,
            };
            match $call.await {
                Err(e) if e.retryable && i + 1 < $self.regions.len() => {
                    $self.note_failover($key, &$r.region, &$self.regions[i + 1].region, &e);
                }
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        answer.expect("the last region always answers")
    }};
}

#[async_trait]
impl Backend for AwsBackend {
    fn kind(&self) -> &'static str {
        "aws"
    }

    /// Valid credentials from the background refresh; no KMS call.
    async fn health(&self) -> Result<(), Error> {
        if self.credentials.valid().is_some() {
            return Ok(());
        }
        let reason = self
            .credentials
            .last_error
            .read()
            .expect("never poisoned")
            .clone();
        Err(Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "no valid AWS credentials: {}",
                reason.as_deref().unwrap_or("not loaded yet")
            ),
        ))
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        failover!(self, key, |r, k| r.metadata(k))
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        failover!(self, key, |r, k| r.public_key(k, version))
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        options: SignOptions,
    ) -> Result<Signature, Error> {
        failover!(self, key, |r, k| r.sign(k, input, options))
    }

    fn verifies(&self) -> bool {
        true
    }

    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        options: SignOptions,
        version: Option<&str>,
    ) -> Result<Verified, Error> {
        failover!(self, key, |r, k| r
            .verify(k, input, signature, options, version))
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        failover!(self, key, |r, k| r.encrypt(k, plaintext, context))
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Plaintext, Error> {
        failover!(self, key, |r, k| r.decrypt(k, ciphertext, context))
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        bits: u32,
        context: &Context,
    ) -> Result<DataKey, Error> {
        failover!(self, key, |r, k| r.generate_data_key(k, bits, context))
    }

    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        failover!(self, key, |r, k| r.mac(k, message))
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: Option<&str>,
    ) -> Result<Verified, Error> {
        failover!(self, key, |r, k| r.verify_mac(k, message, mac, version))
    }

    /// Rotation happens in the primary region (KMS replicates it).
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        self.regions[0].rotate(key).await
    }
}
