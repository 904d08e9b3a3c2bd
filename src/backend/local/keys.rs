//! The local backend's keys: the on-disk format (one JSON file per key,
//! 0600, every version's private material), generation, parsing into
//! `aws-lc-rs` key objects, and atomic saves.

use super::Error;
use crate::backend::{ErrorKind, KeyRef};
use crate::crypto::Algorithm;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{self as sig, KeyPair};
use aws_lc_rs::{aead, hmac, rand, rsa};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Why the key directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: is readable or writable by group/others (mode {mode:04o}); run `chmod 600` on it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a valid key file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("key `{key}` does not exist in {dir} and no `algorithm` is configured to create it")]
    Missing { key: String, dir: PathBuf },
    #[error("key `{key}` is {found} but the config says {configured}")]
    AlgorithmMismatch {
        key: String,
        found: Algorithm,
        configured: Algorithm,
    },
}

pub(super) struct LocalKey {
    pub(super) algorithm: Algorithm,
    /// Oldest first; the last is current.
    pub(super) versions: Vec<Arc<Version>>,
    /// `"disabled": true` in the file: every operation but metadata answers
    /// `key_disabled` (read again at each revalidation of cached data keys).
    pub(super) disabled: bool,
}

pub(super) struct Version {
    pub(super) number: u32,
    pub(super) created: SystemTime,
    /// The material as stored (PKCS#8 or raw secret), for rewriting the file.
    stored: Zeroizing<Vec<u8>>,
    pub(super) material: Material,
}

/// Parsed key material; the private parts live inside aws-lc, which wipes
/// them when freed.
#[allow(clippy::large_enum_variant)] // one per key version, built once, never moved on a request
pub(super) enum Material {
    Ecdsa {
        /// Signs DER signatures (the service re-encodes for the caller).
        asn1: sig::EcdsaKeyPair,
        spki: Vec<u8>,
    },
    Ed25519 {
        pair: sig::Ed25519KeyPair,
        spki: Vec<u8>,
    },
    Rsa {
        pair: rsa::KeyPair,
        spki: Vec<u8>,
    },
    Aes(aead::LessSafeKey),
    Hmac(hmac::Key),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    versions: Vec<VersionFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionFile {
    version: u32,
    created: String,
    /// Base64 of PKCS#8 DER (asymmetric) or the raw secret (AES, HMAC).
    material: Zeroizing<String>,
}

pub(super) fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

impl LocalKey {
    pub(super) fn current(&self) -> &Arc<Version> {
        self.versions
            .last()
            .expect("a local key has at least one version")
    }

    pub(super) fn version(
        &self,
        key: KeyRef<'_>,
        version: Option<&str>,
    ) -> Result<&Arc<Version>, Error> {
        match version {
            None => Ok(self.current()),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .and_then(|n| self.versions.iter().find(|x| x.number == n))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidRequest,
                        format!("key `{}` has no version `{v}`", key.alias),
                    )
                }),
        }
    }
}

pub(super) fn generate(algorithm: Algorithm, number: u32) -> Result<Version, String> {
    let fail = |_| "key generation failed".to_string();
    let stored: Zeroizing<Vec<u8>> = match algorithm {
        Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384 | Algorithm::EcdsaP521Sha512 => {
            let asn1 = ecdsa_alg(algorithm);
            Zeroizing::new(
                sig::EcdsaKeyPair::generate_pkcs8(asn1, &rand::SystemRandom::new())
                    .map_err(fail)?
                    .as_ref()
                    .to_vec(),
            )
        }
        Algorithm::Ed25519 => Zeroizing::new(
            sig::Ed25519KeyPair::generate_pkcs8v1(&rand::SystemRandom::new())
                .map_err(fail)?
                .as_ref()
                .to_vec(),
        ),
        Algorithm::RsaPssSha256 { bits } | Algorithm::RsaPkcs1Sha256 { bits } => {
            let size = match bits {
                2048 => rsa::KeySize::Rsa2048,
                3072 => rsa::KeySize::Rsa3072,
                _ => rsa::KeySize::Rsa4096,
            };
            let pair = rsa::KeyPair::generate(size).map_err(fail)?;
            let der: Pkcs8V1Der<'_> = pair.as_der().map_err(fail)?;
            Zeroizing::new(der.as_ref().to_vec())
        }
        Algorithm::Aes256Gcm | Algorithm::HmacSha256 => {
            let mut secret = Zeroizing::new(vec![0u8; 32]);
            rand::fill(&mut secret).map_err(fail)?;
            secret
        }
        Algorithm::RsaOaepSha256 { .. } => return Err(NO_RSA_ENCRYPTION.into()),
    };
    Ok(Version {
        number,
        created: SystemTime::now(),
        material: parse_material(algorithm, &stored)?,
        stored,
    })
}

fn ecdsa_alg(algorithm: Algorithm) -> &'static sig::EcdsaSigningAlgorithm {
    match algorithm {
        Algorithm::EcdsaP384Sha384 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
        Algorithm::EcdsaP521Sha512 => &sig::ECDSA_P521_SHA512_ASN1_SIGNING,
        _ => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
    }
}

/// Why a local key cannot be `rsa-oaep-*`.
const NO_RSA_ENCRYPTION: &str =
    "the local backend has no RSA encryption keys: use aes-256-gcm for encryption";

fn parse_material(algorithm: Algorithm, stored: &[u8]) -> Result<Material, String> {
    let bad = |_| format!("material is not a valid {algorithm} key");
    let spki = |der: Result<aws_lc_rs::encoding::PublicKeyX509Der<'_>, _>| {
        der.map(|d| d.as_ref().to_vec())
            .map_err(|_| "cannot encode the public key".to_string())
    };
    Ok(match algorithm {
        Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384 | Algorithm::EcdsaP521Sha512 => {
            let asn1 = sig::EcdsaKeyPair::from_pkcs8(ecdsa_alg(algorithm), stored).map_err(bad)?;
            let spki = spki(asn1.public_key().as_der())?;
            Material::Ecdsa { asn1, spki }
        }
        Algorithm::Ed25519 => {
            let pair = sig::Ed25519KeyPair::from_pkcs8(stored).map_err(bad)?;
            let spki = spki(pair.public_key().as_der())?;
            Material::Ed25519 { pair, spki }
        }
        Algorithm::RsaPssSha256 { bits } | Algorithm::RsaPkcs1Sha256 { bits } => {
            let pair = rsa::KeyPair::from_pkcs8(stored).map_err(bad)?;
            if pair.public_modulus_len() * 8 != usize::from(bits) {
                return Err(format!("material is not a {bits}-bit RSA key"));
            }
            let spki = spki(pair.public_key().as_der())?;
            Material::Rsa { pair, spki }
        }
        Algorithm::Aes256Gcm => {
            let key = aead::UnboundKey::new(&aead::AES_256_GCM, stored)
                .map_err(|_| format!("material is not a valid {algorithm} key"))?;
            Material::Aes(aead::LessSafeKey::new(key))
        }
        Algorithm::HmacSha256 => {
            if stored.len() < 32 {
                return Err("an HMAC key needs at least 32 bytes".into());
            }
            Material::Hmac(hmac::Key::new(hmac::HMAC_SHA256, stored))
        }
        Algorithm::RsaOaepSha256 { .. } => return Err(NO_RSA_ENCRYPTION.into()),
    })
}

pub(super) fn load(path: &Path) -> Result<LocalKey, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?,
    );
    // Only the position is reported: serde's messages may quote the input.
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
        corrupt(format!(
            "malformed at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    if file.versions.is_empty() {
        return Err(corrupt("no versions".into()));
    }
    let mut versions = Vec::with_capacity(file.versions.len());
    for v in &file.versions {
        let stored = Zeroizing::new(
            STANDARD
                .decode(v.material.as_bytes())
                .map_err(|_| corrupt(format!("version {}: material is not base64", v.version)))?,
        );
        let created = humantime::parse_rfc3339(&v.created)
            .map_err(|_| corrupt(format!("version {}: `created` is not RFC 3339", v.version)))?;
        let material = parse_material(file.algorithm, &stored)
            .map_err(|e| corrupt(format!("version {}: {e}", v.version)))?;
        versions.push(Arc::new(Version {
            number: v.version,
            created,
            stored,
            material,
        }));
    }
    versions.sort_by_key(|v| v.number);
    if versions.windows(2).any(|w| w[0].number == w[1].number) {
        return Err(corrupt("duplicate version numbers".into()));
    }
    Ok(LocalKey {
        algorithm: file.algorithm,
        versions,
        disabled: file.disabled,
    })
}

/// Writes the key file atomically: a 0600 temporary file, fsync, rename.
pub(super) fn save(path: &Path, key: &LocalKey) -> std::io::Result<()> {
    let file = KeyFile {
        algorithm: key.algorithm,
        disabled: key.disabled,
        versions: key
            .versions
            .iter()
            .map(|v| VersionFile {
                version: v.number,
                created: humantime::format_rfc3339_seconds(v.created).to_string(),
                material: Zeroizing::new(STANDARD.encode(&*v.stored)),
            })
            .collect(),
    };
    let text =
        Zeroizing::new(serde_json::to_vec_pretty(&file).expect("a key file always serializes"));
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub(super) fn spki_of(material: &Material) -> Option<&[u8]> {
    match material {
        Material::Ecdsa { spki, .. }
        | Material::Ed25519 { spki, .. }
        | Material::Rsa { spki, .. } => Some(spki),
        Material::Aes(_) | Material::Hmac(_) => None,
    }
}
