//! The `local` backend: software keys in a directory, for development and
//! tests. One JSON file per key (mode 0600, directory 0700) holding every
//! version's private material; created on first start when the config names
//! an `algorithm`. Crypto is `aws-lc-rs`.

mod keys;

pub use keys::OpenError;
use keys::{LocalKey, Material, generate, key_path, load, save, spki_of};

use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, Error, ErrorKind, KeyMetadata, KeyRef,
    KeyStatus, Mac, Origin, Plaintext, PublicKey, Revocation, Rotate, Sealed, Signature,
    VersionInfo, WrappedBy, canonical_context,
};
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use async_trait::async_trait;
use aws_lc_rs::signature as sig;
use aws_lc_rs::{aead, hmac, rand};
use std::collections::HashMap;
use std::fmt;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// Largest plaintext `encrypt` takes; larger data belongs in an envelope.
pub const MAX_ENCRYPT: usize = 64 * 1024;

/// First byte of a local ciphertext: `0x01 ‖ version (u32 BE) ‖ nonce (12) ‖
/// AES-256-GCM ciphertext ‖ tag`, AAD = those first 5 bytes ‖ canonical context.
const CIPHERTEXT_FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 4;

/// Software keys, loaded from (and rotated into) a directory.
pub struct LocalBackend {
    dir: PathBuf,
    keys: RwLock<HashMap<String, Arc<LocalKey>>>,
    /// Serializes rotations so that no version is lost.
    rotating: tokio::sync::Mutex<()>,
}

impl fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBackend")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// Opens `dir` (creating it 0700) and loads the keys named in `wanted`,
    /// generating those that are missing and have an algorithm.
    pub async fn open(
        dir: &Path,
        wanted: &[(String, Option<Algorithm>)],
    ) -> Result<Self, OpenError> {
        let dir = dir.to_path_buf();
        let wanted = wanted.to_vec();
        let backend = tokio::task::spawn_blocking(move || Self::open_blocking(dir, &wanted))
            .await
            .expect("the key loader does not panic")?;
        Ok(backend)
    }

    fn open_blocking(
        dir: PathBuf,
        wanted: &[(String, Option<Algorithm>)],
    ) -> Result<Self, OpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let mut keys = HashMap::new();
        for (name, algorithm) in wanted {
            let path = key_path(&dir, name);
            let key = match std::fs::metadata(&path) {
                Ok(meta) => {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(OpenError::Permissions { path, mode });
                    }
                    let key = load(&path)?;
                    if let Some(configured) = *algorithm
                        && configured != key.algorithm
                    {
                        return Err(OpenError::AlgorithmMismatch {
                            key: name.clone(),
                            found: key.algorithm,
                            configured,
                        });
                    }
                    key
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let Some(algorithm) = *algorithm else {
                        return Err(OpenError::Missing {
                            key: name.clone(),
                            dir: dir.clone(),
                        });
                    };
                    let key = LocalKey {
                        disabled: false,
                        algorithm,
                        versions: vec![Arc::new(generate(algorithm, 1).map_err(|reason| {
                            OpenError::Corrupt {
                                path: path.clone(),
                                reason,
                            }
                        })?)],
                    };
                    save(&path, &key).map_err(io(&path))?;
                    tracing::info!(key.id = %name, algorithm = %algorithm, "generated local key");
                    key
                }
                Err(e) => return Err(io(&path)(e)),
            };
            keys.insert(name.clone(), Arc::new(key));
        }
        Ok(Self {
            dir,
            keys: RwLock::new(keys),
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    fn key(&self, key: KeyRef<'_>) -> Result<Arc<LocalKey>, Error> {
        self.keys
            .read()
            .expect("the key map lock is never poisoned: no code panics while holding it")
            .get(key.id)
            .cloned()
            .ok_or_else(|| Error::key_not_found(key))
    }

    /// [`Self::key`], refused while the key file says `"disabled": true`.
    /// A disabled key's file is read again at each call, so that enabling
    /// it in the file takes effect at once.
    fn enabled(&self, key: KeyRef<'_>) -> Result<Arc<LocalKey>, Error> {
        let mut k = self.key(key)?;
        if k.disabled
            && let Ok(reloaded) = load(&key_path(&self.dir, key.id))
            && !reloaded.disabled
        {
            k = Arc::new(reloaded);
            self.keys
                .write()
                .expect("the key map lock is never poisoned: no code panics while holding it")
                .insert(key.id.to_owned(), k.clone());
        }
        if k.disabled {
            return Err(Error::new(
                ErrorKind::KeyDisabled,
                format!(
                    "key `{}` is disabled (\"disabled\": true in its key file)",
                    key.alias
                ),
            ));
        }
        Ok(k)
    }
}

fn not_for(key: KeyRef<'_>, algorithm: Algorithm, what: &str) -> Error {
    Error::unsupported(format!(
        "key `{}` is {algorithm}: it cannot {what}",
        key.alias
    ))
}

fn internal(what: &str) -> Error {
    Error::new(ErrorKind::Backend, format!("local backend: {what} failed"))
}

fn seal(
    aes: &aead::LessSafeKey,
    number: u32,
    plaintext: &[u8],
    context: &Context,
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    rand::fill(&mut nonce).map_err(|_| internal("random nonce"))?;
    let mut out = Vec::with_capacity(
        HEADER_LEN + nonce.len() + plaintext.len() + aead::AES_256_GCM.tag_len(),
    );
    out.push(CIPHERTEXT_FORMAT);
    out.extend_from_slice(&number.to_be_bytes());
    let mut aad = out.clone();
    aad.extend_from_slice(&canonical_context(context));
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(body_start);
    aes.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut body,
    )
    .map_err(|_| internal("encryption"))?;
    out.append(&mut body);
    Ok(out)
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// The key directory can be listed (a directory made unreadable, as
    /// with mode 000, or removed, is not ready).
    async fn health(&self) -> Result<(), Error> {
        match tokio::fs::read_dir(&self.dir).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("key directory {} is not readable: {e}", self.dir.display()),
            )),
        }
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        let k = self.key(key)?;
        Ok(KeyMetadata {
            algorithm: k.algorithm,
            current_version: k.current().number.to_string(),
            versions: k
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.number.to_string(),
                    created: Some(v.created),
                    enabled: true,
                    state: None,
                })
                .collect(),
            created: Some(k.versions[0].created),
            origin: Origin::Software,
            rotation_period: None,
            details: [(
                "file".to_string(),
                key_path(&self.dir, key.id).display().to_string(),
            )]
            .into(),
            driver: None,
        })
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let k = self.enabled(key)?;
        let v = k.version(key, version)?;
        let spki =
            spki_of(&v.material).ok_or_else(|| not_for(key, k.algorithm, "have a public key"))?;
        Ok(PublicKey {
            spki_der: spki.to_vec(),
            algorithm: k.algorithm,
            version: v.number.to_string(),
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let k = self.enabled(key)?;
        let v = k.current();
        let rng = rand::SystemRandom::new();
        let failed = |_| internal("signing");
        let bytes = match (&v.material, input) {
            (Material::Ecdsa { asn1, .. }, input) => match input {
                SignInput::Message(m) => asn1.sign(&rng, m).map_err(failed)?,
                SignInput::Digest(d) => {
                    let digest = crypto::import_digest(k.algorithm, d)?;
                    asn1.sign_digest(&digest).map_err(failed)?
                }
            }
            .as_ref()
            .to_vec(),
            (Material::Ed25519 { pair, .. }, SignInput::Message(m)) => {
                pair.sign(m).as_ref().to_vec()
            }
            (Material::Ed25519 { .. }, SignInput::Digest(_)) => {
                return Err(crypto::BadInput::DigestNotSupported.into());
            }
            (Material::Rsa { pair, .. }, input) => {
                let padding: &'static dyn sig::RsaEncoding = match algorithm {
                    Algorithm::RsaPkcs1Sha256 { .. } => &sig::RSA_PKCS1_SHA256,
                    _ => &sig::RSA_PSS_SHA256,
                };
                let mut out = vec![0u8; pair.public_modulus_len()];
                match input {
                    SignInput::Message(m) => {
                        pair.sign(padding, &rng, m, &mut out).map_err(failed)?
                    }
                    SignInput::Digest(d) => {
                        let digest = crypto::import_digest(k.algorithm, d)?;
                        pair.sign_digest(padding, &digest, &mut out)
                            .map_err(failed)?
                    }
                }
                out
            }
            (Material::Aes(_) | Material::Hmac(_), _) => {
                return Err(not_for(key, k.algorithm, "sign"));
            }
        };
        Ok(Signature {
            bytes,
            encoding: SignatureFormat::Der,
            algorithm,
            version: v.number.to_string(),
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        let k = self.enabled(key)?;
        let v = k.current();
        let Material::Aes(aes) = &v.material else {
            return Err(not_for(key, k.algorithm, "encrypt"));
        };
        Error::check_plaintext(plaintext.len(), MAX_ENCRYPT, "direct encryption takes")?;
        Ok(Sealed {
            bytes: seal(aes, v.number, plaintext, context)?,
            version: v.number.to_string(),
        })
    }

    /// The version is the one the ciphertext names (its first bytes, in the
    /// AAD: another number opens under another key and fails); the key is
    /// the file asked for, whose versions alone are tried.
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let k = self.enabled(key)?;
        if !matches!(k.current().material, Material::Aes(_)) {
            return Err(not_for(key, k.algorithm, "decrypt"));
        }
        let min = HEADER_LEN + aead::NONCE_LEN + aead::AES_256_GCM.tag_len();
        if ciphertext.len() < min || ciphertext[0] != CIPHERTEXT_FORMAT {
            return Err(Error::decryption_failed());
        }
        let number = u32::from_be_bytes(ciphertext[1..HEADER_LEN].try_into().expect("4 bytes"));
        let Some(Material::Aes(aes)) = k
            .versions
            .iter()
            .find(|v| v.number == number)
            .map(|v| &v.material)
        else {
            return Err(Error::decryption_failed());
        };
        let mut aad = ciphertext[..HEADER_LEN].to_vec();
        aad.extend_from_slice(&canonical_context(context));
        let nonce = aead::Nonce::try_assume_unique_for_key(
            &ciphertext[HEADER_LEN..HEADER_LEN + aead::NONCE_LEN],
        )
        .map_err(|_| Error::decryption_failed())?;
        let mut buf = Zeroizing::new(ciphertext[HEADER_LEN + aead::NONCE_LEN..].to_vec());
        let len = aes
            .open_in_place(nonce, aead::Aad::from(aad), &mut buf)
            .map_err(|_| Error::decryption_failed())?
            .len();
        buf.truncate(len);
        Ok(Decrypted {
            plaintext: Plaintext(buf),
            by: WrappedBy::exactly(number.to_string(), key.id),
        })
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let mut plaintext = Zeroizing::new(vec![0u8; size.bytes()]);
        rand::fill(&mut plaintext).map_err(|_| internal("random data key"))?;
        let sealed = self.encrypt(key, &plaintext, context).await?;
        Ok(DataKey {
            plaintext: Plaintext(plaintext),
            encrypted: sealed.bytes,
            version: sealed.version,
            key_ref: key.id.to_owned(),
        })
    }

    /// Reads the key file again (an operator may have set `"disabled"`).
    async fn key_status(&self, key: KeyRef<'_>) -> Result<KeyStatus, Error> {
        let _not_while_rotating = self.rotating.lock().await;
        let path = key_path(&self.dir, key.id);
        let loaded = tokio::task::spawn_blocking(move || load(&path))
            .await
            .map_err(|_| internal("reading the key file"))?;
        let k = match loaded {
            Ok(k) => Arc::new(k),
            Err(OpenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(KeyStatus {
                    revoked: Some(Revocation::Deleted),
                    enabled_versions: None,
                });
            }
            Err(e) => return Err(internal("reading the key file").with_source(e)),
        };
        let revoked = k.disabled.then_some(Revocation::Disabled);
        self.keys
            .write()
            .expect("the key map lock is never poisoned: no code panics while holding it")
            .insert(key.id.to_owned(), k);
        Ok(KeyStatus {
            revoked,
            enabled_versions: None,
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
impl Mac for LocalBackend {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let k = self.enabled(key)?;
        let v = k.current();
        let Material::Hmac(h) = &v.material else {
            return Err(not_for(key, k.algorithm, "compute a MAC"));
        };
        Ok(Sealed {
            bytes: hmac::sign(h, message).as_ref().to_vec(),
            version: v.number.to_string(),
        })
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: &str,
    ) -> Result<bool, Error> {
        let k = self.enabled(key)?;
        Ok(match &k.version(key, Some(version))?.material {
            Material::Hmac(h) => hmac::verify(h, message, mac).is_ok(),
            _ => false,
        })
    }
}

#[async_trait]
impl Rotate for LocalBackend {
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let _one_at_a_time = self.rotating.lock().await;
        let old = self.enabled(key)?;
        let algorithm = old.algorithm;
        let number = old.current().number + 1;
        let fresh = tokio::task::spawn_blocking(move || generate(algorithm, number))
            .await
            .map_err(|_| internal("key generation"))?
            .map_err(|_| internal("key generation"))?;
        let mut versions = old.versions.clone();
        versions.push(Arc::new(fresh));
        let rotated = Arc::new(LocalKey {
            algorithm,
            versions,
            disabled: old.disabled,
        });
        let path = key_path(&self.dir, key.id);
        let to_save = rotated.clone();
        tokio::task::spawn_blocking(move || save(&path, &to_save))
            .await
            .map_err(|_| internal("writing the key file"))?
            .map_err(|e| internal("writing the key file").with_source(e))?;
        self.keys
            .write()
            .expect("the key map lock is never poisoned: no code panics while holding it")
            .insert(key.id.to_owned(), rotated);
        tracing::info!(key.alias = key.alias, version = number, "rotated local key");
        Ok(number.to_string())
    }
}
