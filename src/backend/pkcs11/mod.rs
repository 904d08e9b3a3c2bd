//! The `pkcs11` backend: keys in a PKCS#11 token (an HSM, SoftHSM2),
//! through the vendor's module loaded at run time (`cryptoki`).
//!
//! - Keys are objects found by `CKA_LABEL` and/or `CKA_ID`; each `CKA_ID`
//!   under one label is a version, the highest current ([`objects`]).
//! - Every call runs on the backend's own worker threads, one session each,
//!   on one login ([`token`]).
//! - ECDSA, RSA-PSS and PKCS#1 v1.5 sign a digest made in the sidecar
//!   (`CKM_ECDSA`, `CKM_RSA_PKCS_PSS`, `CKM_RSA_PKCS` over a DigestInfo);
//!   Ed25519 signs the message (`CKM_EDDSA`). Verification is local, with
//!   the public key read from the public key object.
//! - AES keys encrypt with `CKM_AES_GCM` (a random 96-bit IV from the
//!   sidecar, AAD = header ‖ context); data keys come from the token's RNG
//!   and are wrapped the same way, so the context binds them too.
//! - HMAC keys MAC with `CKM_SHA256_HMAC`.

mod errors;
mod module;
mod objects;
mod token;

use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, DriverFacts, Error, ErrorKind, KeyMetadata,
    KeyRef, Mac, Origin, Plaintext, PublicKey, Rotate, Sealed, Signature, VersionInfo, WrappedBy,
    canonical_context,
};
use crate::config::{Pkcs11BackendConfig, Pkcs11KeyRef};
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use async_trait::async_trait;
use aws_lc_rs::{digest, rand};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use errors::{Call, Fail};
use objects::TokenKey;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
pub use token::finish;
use token::{Token, Worker};
use zeroize::Zeroizing;

/// Largest plaintext `encrypt` takes; larger data belongs in an envelope.
pub const MAX_ENCRYPT: usize = 64 * 1024;

/// The DER DigestInfo prefix of SHA-256 (RFC 8017 §9.2), for `CKM_RSA_PKCS`.
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// A PKCS#11 token behind the backend trait.
pub struct Pkcs11Backend {
    token: Token,
    token_label: String,
    /// Each configured key's reference and configured algorithm, by its
    /// `key` string.
    keys: HashMap<String, (Pkcs11KeyRef, Option<Algorithm>)>,
    /// Serializes rotations, so that two never make the same next id.
    rotating: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Loads the module and starts the session workers, for the configured
    /// keys' `key` strings and algorithms.
    pub fn new(
        ctx: &super::BuildContext<'_>,
        config: &Pkcs11BackendConfig,
        resolved: &crate::config::Pkcs11Resolved,
    ) -> Result<Self, super::BuildError> {
        let mut refs = HashMap::new();
        for (_, k) in &ctx.keys {
            let parsed = Pkcs11KeyRef::parse(&k.key).map_err(super::BuildError::Key)?;
            let slot: &mut (Pkcs11KeyRef, Option<Algorithm>) =
                refs.entry(k.key.clone()).or_insert((parsed, None));
            slot.1 = slot.1.or(k.algorithm);
        }
        Ok(Self {
            token: Token::open(ctx.name, config, resolved, ctx.env.clone())?,
            token_label: config.token_label.clone(),
            keys: refs,
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    fn key_ref(&self, key: KeyRef<'_>) -> Result<(Pkcs11KeyRef, Option<Algorithm>), Error> {
        match self.keys.get(key.id) {
            Some(found) => Ok(found.clone()),
            None => Pkcs11KeyRef::parse(key.id)
                .map(|r| (r, None))
                .map_err(|why| Error::new(ErrorKind::InvalidRequest, why)),
        }
    }

    /// The key's objects, as cached with its metadata ([`KeyRef::facts`]),
    /// or looked up on the token.
    async fn key(&self, key: KeyRef<'_>) -> Result<Arc<TokenKey>, Error> {
        match key.facts() {
            Some(facts) => Ok(facts),
            None => self.find(key).await.map(Arc::new),
        }
    }

    /// The key's objects, looked up on the token.
    async fn find(&self, key: KeyRef<'_>) -> Result<TokenKey, Error> {
        let (reference, configured) = self.key_ref(key)?;
        let found = self
            .token
            .run(move |w| {
                let generation = w.generation();
                match w.call(|s| objects::find(s, &reference, configured, generation))? {
                    Some(found) => Ok(Some(found)),
                    // No objects: a missing key, or a token gone missing.
                    None => w.absent_token().map_or(Ok(None), Err),
                }
            })
            .await
            .map_err(|f| f.for_key(key, Call::Find))?
            .ok_or_else(|| Error::key_not_found(key))?;
        Ok(found)
    }

    /// Runs `job` with the key's objects on a worker. A handle the token no
    /// longer knows (the token was re-initialized, objects re-created) makes
    /// the key be looked up again, once.
    async fn with_key<T: Send + 'static>(
        &self,
        key: KeyRef<'_>,
        op: Call,
        job: impl Fn(&mut Worker<'_>, &TokenKey) -> Result<T, Fail> + Send + Sync + 'static,
    ) -> Result<T, Error> {
        let job = Arc::new(job);
        let mut looked_up_again = false;
        loop {
            let facts = match looked_up_again {
                false => self.key(key).await?,
                true => Arc::new(self.find(key).await?),
            };
            let run = job.clone();
            let ran = self
                .token
                .run(move |w| {
                    if facts.generation != w.generation() {
                        return Err(Fail::Stale);
                    }
                    run(w, &facts)
                })
                .await;
            match ran {
                Ok(v) => return Ok(v),
                Err(fail) if fail.is_stale() && !looked_up_again => {
                    looked_up_again = true;
                }
                Err(fail) => return Err(fail.for_key(key, op)),
            }
        }
    }
}

/// What a signing call sends the token: the digest (with a DigestInfo for
/// PKCS#1 v1.5) or, for Ed25519, the message.
fn to_be_signed(algorithm: Algorithm, input: SignInput<'_>) -> Result<Vec<u8>, Error> {
    if algorithm == Algorithm::Ed25519 {
        return match input {
            SignInput::Message(m) => Ok(m.to_vec()),
            SignInput::Digest(_) => Err(crypto::BadInput::DigestNotSupported.into()),
        };
    }
    let digest_alg = algorithm
        .digest()
        .ok_or_else(|| Error::unsupported(format!("a {algorithm} key cannot sign")))?;
    let digest = match input {
        SignInput::Message(m) => digest::digest(digest_alg, m).as_ref().to_vec(),
        SignInput::Digest(d) => {
            crypto::import_digest(algorithm, d)?;
            d.to_vec()
        }
    };
    Ok(match algorithm {
        Algorithm::RsaPkcs1Sha256 { .. } => [SHA256_DIGEST_INFO, &digest].concat(),
        _ => digest,
    })
}

/// The signing mechanism of `algorithm` (input from [`to_be_signed`]).
fn sign_mechanism(algorithm: Algorithm) -> Mechanism<'static> {
    match algorithm {
        Algorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        Algorithm::RsaPssSha256 { .. } => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        }),
        Algorithm::RsaPkcs1Sha256 { .. } => Mechanism::RsaPkcs,
        _ => Mechanism::Ecdsa,
    }
}

#[async_trait]
impl Backend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    async fn health(&self) -> Result<(), Error> {
        let label = self.token_label.clone();
        self.token
            .run(|w| w.check())
            .await
            .map_err(|fail| match fail {
                Fail::Api(e) => e,
                other => Error::new(
                    ErrorKind::Unavailable,
                    format!("the PKCS#11 token `{label}` does not answer: {other}"),
                ),
            })
    }

    /// Always looked up on the token: the service's revalidation finds a
    /// destroyed key from here.
    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        let k = Arc::new(self.find(key).await?);
        let current = k.current();
        let mut details: BTreeMap<String, String> = current.facts.clone();
        details.insert("token".into(), self.token_label.clone());
        details.insert("id".into(), current.name.clone());
        Ok(KeyMetadata {
            algorithm: k.algorithm,
            current_version: current.name.clone(),
            versions: k
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.name.clone(),
                    created: None,
                    enabled: true,
                    state: None,
                })
                .collect(),
            created: None,
            origin: Origin::Hsm,
            rotation_period: None,
            details,
            driver: Some(DriverFacts::shared(k)),
        })
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let k = self.key(key).await?;
        let v = match version {
            Some(name) => k.version(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::KeyNotFound,
                    format!("key `{}` has no version `{name}`", key.alias),
                )
            })?,
            None => k.current(),
        };
        Ok(PublicKey {
            spki_der: v.spki.clone().expect("signing keys carry their public key"),
            algorithm: k.algorithm,
            version: v.name.clone(),
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let data = to_be_signed(algorithm, input)?;
        let (bytes, version) = self
            .with_key(key, Call::Sign, move |w, k| {
                let v = k.current();
                let handle = v.handle;
                let sig = w.call(|s| s.sign(&sign_mechanism(algorithm), handle, &data))?;
                Ok((sig, v.name.clone()))
            })
            .await?;
        Ok(Signature {
            bytes,
            encoding: SignatureFormat::Raw,
            algorithm,
            version,
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        Error::check_plaintext(plaintext.len(), MAX_ENCRYPT, "direct encryption takes")?;
        let plaintext = Zeroizing::new(plaintext.to_vec());
        let context = canonical_context(context);
        self.with_key(key, Call::Encrypt, move |w, k| {
            let v = k.current();
            seal(w, v, &plaintext, &context).map(|bytes| Sealed {
                bytes,
                version: v.name.clone(),
            })
        })
        .await
    }

    /// The version is the one whose `CKA_ID` the ciphertext names (in the
    /// GCM AAD: another id opens under another key and fails); the key,
    /// the label asked for, whose versions alone are tried.
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let ciphertext = ciphertext.to_vec();
        let context = canonical_context(context);
        let label = key.id.to_owned();
        self.with_key(key, Call::Decrypt, move |w, k| {
            let parts =
                objects::split(&ciphertext).ok_or_else(|| Fail::Api(Error::decryption_failed()))?;
            let v = k
                .version_by_id(parts.id)
                .ok_or_else(|| Fail::Api(Error::decryption_failed()))?;
            let aad = [parts.header, &context].concat();
            let mut iv = parts.iv.to_vec();
            let handle = v.handle;
            w.call(|s| {
                let params = GcmParams::new(&mut iv, &aad, (objects::TAG_LEN as u64 * 8).into())?;
                s.decrypt(&Mechanism::AesGcm(params), handle, parts.sealed)
            })
            .map(|p| Decrypted {
                plaintext: Plaintext(Zeroizing::new(p)),
                by: WrappedBy::exactly(v.name.clone(), label.clone()),
            })
        })
        .await
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let context = canonical_context(context);
        let label = key.id.to_owned();
        self.with_key(key, Call::DataKey, move |w, k| {
            let v = k.current();
            let plaintext = Zeroizing::new(w.call(|s| s.generate_random_vec(size.bytes() as u32))?);
            let encrypted = seal(w, v, &plaintext, &context)?;
            Ok(DataKey {
                plaintext: Plaintext(plaintext),
                encrypted,
                version: v.name.clone(),
                key_ref: label.clone(),
            })
        })
        .await
    }

    fn macs(&self) -> Option<&dyn Mac> {
        Some(self)
    }

    fn rotator(&self) -> Option<&dyn Rotate> {
        Some(self)
    }
}

#[async_trait]
impl Mac for Pkcs11Backend {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let message = Zeroizing::new(message.to_vec());
        self.with_key(key, Call::Mac, move |w, k| {
            let v = k.current();
            let handle = v.handle;
            let bytes = w.call(|s| s.sign(&Mechanism::Sha256Hmac, handle, &message))?;
            Ok(Sealed {
                bytes,
                version: v.name.clone(),
            })
        })
        .await
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: &str,
    ) -> Result<bool, Error> {
        let message = Zeroizing::new(message.to_vec());
        let mac = mac.to_vec();
        let version = version.to_owned();
        self.with_key(key, Call::VerifyMac, move |w, k| {
            let Some(handle) = k.version(&version).map(|v| v.handle) else {
                return Ok(false);
            };
            w.call(
                |s| match s.verify(&Mechanism::Sha256Hmac, handle, &message, &mac) {
                    Ok(()) => Ok(true),
                    Err(e) if objects::invalid_signature(&e) => Ok(false),
                    Err(e) => Err(e),
                },
            )
        })
        .await
    }
}

#[async_trait]
impl Rotate for Pkcs11Backend {
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let _one_at_a_time = self.rotating.lock().await;
        // The objects as the token has them now, not as cached.
        let key = KeyRef { known: None, ..key };
        let k = self.key(key).await?;
        let label = match (&self.key_ref(key)?.0.label, k.pinned) {
            (Some(label), false) => label.clone(),
            _ => {
                return Err(Error::unsupported(format!(
                    "key `{}` names one object by its CKA_ID: name it by label alone to rotate it",
                    key.alias
                )));
            }
        };
        let made = self
            .with_key(key, Call::Rotate, move |w, k| {
                w.call(|s| objects::generate_next(s, &label, k))
            })
            .await;
        let id = made?;
        tracing::info!(key.alias = key.alias, version = %hex::encode(&id), "PKCS#11 key rotated: new object generated on the token");
        Ok(hex::encode(id))
    }
}

/// AES-GCM under version `v`, with a fresh IV and AAD = header ‖ context:
/// the ciphertext format of [`objects::split`].
fn seal(
    w: &mut Worker<'_>,
    v: &objects::Version,
    plaintext: &[u8],
    context: &[u8],
) -> Result<Vec<u8>, Fail> {
    let header = objects::header(&v.id);
    let aad = [header.as_slice(), context].concat();
    let mut iv = [0u8; objects::IV_LEN];
    rand::fill(&mut iv).map_err(|_| Fail::Lib("the random IV".into()))?;
    let handle = v.handle;
    let sealed = w.call(|s| {
        let mut iv = iv;
        let params = GcmParams::new(&mut iv, &aad, (objects::TAG_LEN as u64 * 8).into())?;
        s.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
    })?;
    let mut out = header;
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    Ok(out)
}
