//! One AWS region of the `aws` backend: its KMS client, the key facts of
//! its `DescribeKey` (cached with the key's metadata, [`KeyRef::facts`]),
//! and every KMS call, with KMS's answers checked and turned into ours.

use super::credentials::RefreshedProvider;
use super::errors::{kms_error, missing, required};
use crate::backend::{
    Context, DataKey, DataKeySize, Decrypted, DriverFacts, Error, KeyMetadata, KeyRef, KeyStatus,
    Origin, Plaintext, PublicKey, Revocation, Rewrapped, Sealed, Signature, VersionInfo, Versions,
    WrappedBy,
};
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use aws_config::SdkConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeySpec, KeySpec, KeyState, MacAlgorithmSpec, MessageType, OriginType, SigningAlgorithmSpec,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Largest plaintext KMS `Encrypt` takes.
pub const MAX_ENCRYPT: usize = 4096;
/// Largest message KMS `Sign` takes as `RAW`; longer ones are hashed here.
const MAX_RAW_MESSAGE: usize = 4096;

/// What `DescribeKey` says about a key.
#[derive(Debug)]
struct KeyInfo {
    /// The region that answered (a replica's ARN names its own).
    region: String,
    algorithm: Algorithm,
    arn: String,
    /// DescribeKey's `CurrentKeyMaterialId`, `1` where it names none.
    version: String,
    /// Whether DescribeKey names key materials (not for multi-Region keys).
    materials: bool,
    created: SystemTime,
    origin: Origin,
    multi_region: bool,
    /// Why the key may not be used (`KeyState` disabled or pending
    /// deletion), if so.
    revoked: Option<Revocation>,
}

/// One region's client and key facts.
pub(super) struct Regional {
    pub(super) region: String,
    client: Client,
}

impl Regional {
    /// The key reference in this region: a key ARN names its region, so a
    /// multi-region key's ARN is rewritten; ids and aliases are the same.
    pub(super) fn key_id(&self, id: &str) -> String {
        let parts: Vec<&str> = id.split(':').collect();
        if parts.len() >= 6 && parts[0] == "arn" && parts[2] == "kms" {
            let mut parts = parts;
            parts[3] = &self.region;
            parts.join(":")
        } else {
            id.to_owned()
        }
    }

    /// The client of `region` (at `endpoint`, if set), signing with the
    /// refresher's credentials.
    pub(super) fn new(
        sdk: &SdkConfig,
        region: String,
        endpoint: Option<String>,
        credentials: RefreshedProvider,
    ) -> Self {
        // Retries are the shared layer's (backend/resilient.rs), the same
        // for every backend; replica failover is the backend's.
        let mut kms = aws_sdk_kms::config::Builder::from(sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .region(Region::new(region.clone()))
            .credentials_provider(credentials);
        if let Some(endpoint) = endpoint {
            kms = kms.endpoint_url(endpoint);
        }
        Regional {
            region,
            client: Client::from_conf(kms.build()),
        }
    }

    /// The key's algorithm and facts, as cached with its metadata if this
    /// region described it, or from a `DescribeKey`.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        match key.facts::<KeyInfo>() {
            Some(info) if info.region == self.region => Ok(info),
            _ => self.describe(key).await.map(Arc::new),
        }
    }

    /// The key's algorithm and facts, from a `DescribeKey`.
    async fn describe(&self, key: KeyRef<'_>) -> Result<KeyInfo, Error> {
        let out = self
            .client
            .describe_key()
            .key_id(key.id)
            .send()
            .await
            .map_err(|e| kms_error(key, "DescribeKey", e))?;
        let m = out
            .key_metadata()
            .ok_or_else(|| missing("DescribeKey", "KeyMetadata"))?;
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
        let info = KeyInfo {
            region: self.region.clone(),
            algorithm,
            arn: m.arn().unwrap_or(m.key_id()).to_owned(),
            version: m.current_key_material_id().unwrap_or("1").to_owned(),
            materials: m.current_key_material_id().is_some(),
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
            revoked: match m.key_state() {
                Some(KeyState::Disabled) => Some(Revocation::Disabled),
                Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
                    Some(Revocation::PendingDeletion)
                }
                _ => None,
            },
        };
        Ok(info)
    }
}

/// KMS's name of a signing algorithm.
fn signing_spec(algorithm: Algorithm) -> Result<SigningAlgorithmSpec, Error> {
    Ok(match algorithm {
        Algorithm::EcdsaP256Sha256 => SigningAlgorithmSpec::EcdsaSha256,
        Algorithm::EcdsaP384Sha384 => SigningAlgorithmSpec::EcdsaSha384,
        Algorithm::RsaPssSha256 { .. } => SigningAlgorithmSpec::RsassaPssSha256,
        Algorithm::RsaPkcs1Sha256 { .. } => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        other => return Err(Error::unsupported(format!("a {other} key cannot sign"))),
    })
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
            crypto::import_digest(algorithm, d)?;
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
    /// The key's state from a fresh `DescribeKey` (one call).
    pub(super) async fn key_status(&self, key: KeyRef<'_>) -> Result<KeyStatus, Error> {
        let info = self.describe(key).await?;
        Ok(KeyStatus {
            revoked: info.revoked,
            // Every key material decrypts while the key is enabled.
            enabled_versions: None,
        })
    }

    pub(super) async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        let info = Arc::new(self.describe(key).await?);
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
            state: None,
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
                        state: None,
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
            driver: Some(DriverFacts::shared(info)),
        })
    }

    pub(super) async fn public_key(
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
        Ok(PublicKey {
            spki_der: required(out.public_key(), "GetPublicKey", "PublicKey")?.to_vec(),
            algorithm: info.algorithm,
            version: info.version.clone(),
        })
    }

    pub(super) async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let info = self.info(key).await?;
        let spec = signing_spec(algorithm)?;
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
        let der = required(out.signature(), "Sign", "Signature")?;
        Ok(Signature {
            bytes: der.to_vec(),
            encoding: SignatureFormat::Der,
            algorithm,
            version: info.version.clone(),
        })
    }

    pub(super) async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Algorithm,
    ) -> Result<bool, Error> {
        let spec = signing_spec(algorithm)?;
        let (message_type, bytes) = kms_input(algorithm, input)?;
        let result = self
            .client
            .verify()
            .key_id(key.id)
            .message(Blob::new(bytes))
            .message_type(message_type)
            .signing_algorithm(spec)
            .signature(Blob::new(signature.to_vec()))
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.signature_valid()),
            Err(e) if e.code() == Some("KMSInvalidSignatureException") => Ok(false),
            Err(e) => Err(kms_error(key, "Verify", e)),
        }
    }

    pub(super) async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        Error::check_plaintext(plaintext.len(), MAX_ENCRYPT, "AWS KMS encrypts")?;
        let info = self.info(key).await?;
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
            bytes: required(out.ciphertext_blob(), "Encrypt", "CiphertextBlob")?.to_vec(),
            version: info.version.clone(),
        })
    }

    /// Decrypt names the key that decrypted (`KeyId`, its ARN) and, for
    /// symmetric keys, the key material (`KeyMaterialId`): the version. A
    /// KMS that names no material (moto, AWS for a `Recipient`) is taken at
    /// the version DescribeKey names, `1` where it names none. A key whose
    /// DescribeKey names no material (multi-Region keys) is `1` everywhere
    /// else in the sidecar, as earlier releases wrote in envelopes: `1` is
    /// allowed beside the material then. The second value says whether the
    /// answer named the material.
    pub(super) async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<(Decrypted, bool), Error> {
        let info = self.info(key).await?;
        let out = self
            .client
            .decrypt()
            .key_id(key.id)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| kms_error(key, "Decrypt", e))?;
        let plaintext = required(out.plaintext(), "Decrypt", "Plaintext")?;
        let versions = match out.key_material_id() {
            Some(material) if info.materials => Versions::Exactly(material.to_owned()),
            Some(material) => Versions::OneOf(vec![material.to_owned(), info.version.clone()]),
            None => Versions::Exactly(info.version.clone()),
        };
        let decrypted = Decrypted {
            plaintext: Plaintext(Zeroizing::new(plaintext.to_vec())),
            by: WrappedBy {
                versions,
                key_ref: out.key_id().unwrap_or(&info.arn).to_owned(),
            },
        };
        Ok((decrypted, out.key_material_id().is_some()))
    }

    /// Decrypt, then Encrypt under the current version. Encrypt's answer
    /// names no key material, and DescribeKey's current one may be minutes
    /// old (or absent, as for multi-Region keys, whose ciphertexts Decrypt
    /// names a material of nonetheless): where Decrypt names materials, the
    /// new ciphertext's version is asked of Decrypt too, so that it is the
    /// one a later decryption reports.
    pub(super) async fn rewrap(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Rewrapped, Error> {
        let (opened, named) = self.decrypt(key, ciphertext, context).await?;
        let mut sealed = self.encrypt(key, &opened.plaintext.0, context).await?;
        drop(opened.plaintext);
        if named {
            let (again, _) = self.decrypt(key, &sealed.bytes, context).await?;
            // The material Decrypt named (first in `OneOf` too).
            let material = match again.by.versions {
                Versions::Exactly(version) => Some(version),
                Versions::OneOf(versions) => versions.into_iter().next(),
            };
            sealed.version = material.unwrap_or(sealed.version);
        }
        Ok(Rewrapped {
            from: opened.by,
            sealed,
        })
    }

    pub(super) async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let info = self.info(key).await?;
        let mut call = self
            .client
            .generate_data_key()
            .key_id(key.id)
            .set_encryption_context(context_map(context));
        call = call.key_spec(match size {
            DataKeySize::Aes256 => DataKeySpec::Aes256,
            DataKeySize::Aes128 => DataKeySpec::Aes128,
        });
        let out = call
            .send()
            .await
            .map_err(|e| kms_error(key, "GenerateDataKey", e))?;
        let plaintext = required(out.plaintext(), "GenerateDataKey", "Plaintext")?;
        let encrypted = required(out.ciphertext_blob(), "GenerateDataKey", "CiphertextBlob")?;
        // The version and key as Decrypt will report them (see `decrypt`).
        Ok(DataKey {
            plaintext: Plaintext(Zeroizing::new(plaintext.to_vec())),
            encrypted: encrypted.to_vec(),
            version: out.key_material_id().unwrap_or(&info.version).to_owned(),
            key_ref: out.key_id().unwrap_or(&info.arn).to_owned(),
        })
    }

    pub(super) async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let info = self.info(key).await?;
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
            bytes: required(out.mac(), "GenerateMac", "Mac")?.to_vec(),
            version: info.version.clone(),
        })
    }

    pub(super) async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
    ) -> Result<bool, Error> {
        let result = self
            .client
            .verify_mac()
            .key_id(key.id)
            .message(Blob::new(message.to_vec()))
            .mac(Blob::new(mac.to_vec()))
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.mac_valid()),
            Err(e) if e.code() == Some("KMSInvalidMacException") => Ok(false),
            Err(e) => Err(kms_error(key, "VerifyMac", e)),
        }
    }

    pub(super) async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let info = self.info(key).await?;
        self.client
            .rotate_key_on_demand()
            .key_id(&info.arn)
            .send()
            .await
            .map_err(|e| kms_error(key, "RotateKeyOnDemand", e))?;
        Ok(self.describe(key).await?.version)
    }
}
