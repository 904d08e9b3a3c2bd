//! Transit's formats: a key's facts (`GET {mount}/keys/{name}`), the key
//! types we serve, `vault:vN:` versioned values and our ciphertexts, and
//! the sign/verify parameters — pure, no IO.
//!
//! Transit prefixes ciphertexts, signatures and MACs with `vault:vN:`. Our
//! API shows `N` as the version and never the prefix: a ciphertext is `N`
//! (u32, big-endian) followed by the decoded transit ciphertext, and
//! verify/decrypt rebuild the prefix.

use super::errors::malformed;
use crate::backend::{Error, ErrorKind, Sealed};
use crate::crypto::{self, Algorithm, SignInput};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// What `GET {mount}/keys/{name}` says about a key.
#[derive(Debug, Deserialize)]
pub(super) struct KeyData {
    #[serde(rename = "type")]
    pub(super) key_type: String,
    pub(super) latest_version: u32,
    #[serde(default)]
    pub(super) min_decryption_version: u32,
    #[serde(default)]
    pub(super) derived: bool,
    #[serde(default)]
    pub(super) exportable: bool,
    #[serde(default, alias = "imported")]
    pub(super) imported_key: bool,
    /// Seconds (Vault ≥ 1.10); 0 when off.
    #[serde(default)]
    pub(super) auto_rotate_period: u64,
    /// Absent for HMAC keys.
    #[serde(default)]
    pub(super) keys: BTreeMap<String, KeyVersion>,
}

/// One version: its creation time (symmetric keys) or its public key.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum KeyVersion {
    Symmetric(i64),
    Asymmetric {
        creation_time: String,
        #[serde(default)]
        public_key: String,
    },
}

/// A key's facts, as requests need them.
#[derive(Debug)]
pub(super) struct KeyInfo {
    pub(super) algorithm: Algorithm,
    pub(super) data: KeyData,
}

impl KeyInfo {
    pub(super) fn version_created(&self, version: u32) -> Option<SystemTime> {
        match self.data.keys.get(&version.to_string())? {
            KeyVersion::Symmetric(unix) => {
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs((*unix).max(0) as u64))
            }
            KeyVersion::Asymmetric { creation_time, .. } => {
                humantime::parse_rfc3339_weak(creation_time.trim_end_matches('Z'))
                    .or_else(|_| humantime::parse_rfc3339(creation_time))
                    .ok()
            }
        }
    }
}

/// Our algorithm for a transit key type.
pub(super) fn algorithm_of(key_type: &str) -> Option<Algorithm> {
    Some(match key_type {
        "ecdsa-p256" => Algorithm::EcdsaP256Sha256,
        "ecdsa-p384" => Algorithm::EcdsaP384Sha384,
        "ed25519" => Algorithm::Ed25519,
        "rsa-2048" => Algorithm::RsaPssSha256 { bits: 2048 },
        "rsa-3072" => Algorithm::RsaPssSha256 { bits: 3072 },
        "rsa-4096" => Algorithm::RsaPssSha256 { bits: 4096 },
        "aes256-gcm96" => Algorithm::Aes256Gcm,
        "hmac" => Algorithm::HmacSha256,
        _ => return None,
    })
}

/// `vault:vN:payload` → (N, payload).
pub(super) fn split_versioned(text: &str) -> Option<(u32, &str)> {
    let rest = text.strip_prefix("vault:v")?;
    let (version, payload) = rest.split_once(':')?;
    Some((version.parse().ok()?, payload))
}

/// Our ciphertext: the version, then the transit ciphertext bytes.
pub(super) fn seal_ciphertext(text: &str) -> Result<Sealed, Error> {
    let (version, payload) = split_versioned(text).ok_or_else(malformed)?;
    let bytes = B64.decode(payload).map_err(|_| malformed())?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(Sealed {
        bytes: out,
        version: version.to_string(),
    })
}

/// Our ciphertext's version and its transit `vault:vN:…` string.
pub(super) fn open_ciphertext(bytes: &[u8]) -> Result<(u32, String), Error> {
    if bytes.len() <= 4 {
        return Err(Error::decryption_failed());
    }
    let (version, payload) = bytes.split_at(4);
    let version = u32::from_be_bytes(version.try_into().expect("four bytes"));
    Ok((version, format!("vault:v{version}:{}", B64.encode(payload))))
}

/// A version string from the API as a transit version number.
pub(super) fn parse_version(version: &str) -> Result<u32, Error> {
    version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidRequest,
            "`version` must be a transit key version number (1, 2, …)",
        )
    })
}

/// The transit hash name for an algorithm's digest.
fn hash_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP384Sha384 => "sha2-384",
        _ => "sha2-256",
    }
}

/// Sign/verify parameters for a key, the algorithm the caller asked for and
/// the input: ECDSA and RSA inputs are hashed here and sent prehashed (the
/// digest is what is signed either way, and it keeps requests small);
/// Ed25519 signs the message.
pub(super) fn sign_params(
    algorithm: Algorithm,
    input: SignInput<'_>,
) -> Result<serde_json::Value, Error> {
    let mut params = serde_json::json!({});
    let input = match (algorithm.digest(), input) {
        (None, SignInput::Message(m)) => B64.encode(m),
        (None, SignInput::Digest(_)) => {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                crypto::BadInput::DigestNotSupported.to_string(),
            ));
        }
        (Some(alg), input) => {
            let digest = match input {
                SignInput::Message(m) => aws_lc_rs::digest::digest(alg, m),
                SignInput::Digest(d) => crypto::import_digest(algorithm, d)?,
            };
            params["prehashed"] = true.into();
            params["hash_algorithm"] = hash_name(algorithm).into();
            B64.encode(digest.as_ref())
        }
    };
    params["input"] = input.into();
    match algorithm {
        Algorithm::RsaPssSha256 { .. } => {
            params["signature_algorithm"] = "pss".into();
            params["salt_length"] = "hash".into();
        }
        Algorithm::RsaPkcs1Sha256 { .. } => {
            params["signature_algorithm"] = "pkcs1v15".into();
        }
        _ => {}
    }
    Ok(params)
}

/// Transit's answer carrying a versioned value (`signature`, `hmac`, …).
#[derive(Deserialize)]
pub(super) struct SignatureData {
    pub(super) signature: String,
}

#[derive(Deserialize)]
pub(super) struct ValidData {
    pub(super) valid: bool,
}

#[derive(Deserialize)]
pub(super) struct CiphertextData {
    pub(super) ciphertext: String,
}

/// Base64 plaintext: the caller wipes it once decoded.
#[derive(Deserialize)]
pub(super) struct PlaintextData {
    pub(super) plaintext: String,
}

/// Wipes the strings of a request body built as a JSON value (the base64
/// plaintext of an encrypt) once it has been serialized.
pub(super) fn wipe(mut body: serde_json::Value) {
    if let Some(fields) = body.as_object_mut() {
        for value in fields.values_mut() {
            if let serde_json::Value::String(s) = value {
                zeroize::Zeroize::zeroize(s);
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DataKeyData {
    pub(super) ciphertext: String,
    pub(super) plaintext: Zeroizing<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_values_round_trip() {
        assert_eq!(split_versioned("vault:v12:AAAA"), Some((12, "AAAA")));
        assert_eq!(split_versioned("vault:vx:AAAA"), None);
        assert_eq!(split_versioned("AAAA"), None);
        let sealed = seal_ciphertext("vault:v3:AQID").unwrap();
        assert_eq!(sealed.version, "3");
        assert_eq!(sealed.bytes, [0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(
            open_ciphertext(&sealed.bytes).unwrap(),
            (3, "vault:v3:AQID".to_owned())
        );
        assert!(open_ciphertext(&[0, 0, 0, 1]).is_err());
    }

    #[test]
    fn transit_key_types() {
        assert_eq!(algorithm_of("ecdsa-p384"), Some(Algorithm::EcdsaP384Sha384));
        assert_eq!(
            algorithm_of("rsa-3072"),
            Some(Algorithm::RsaPssSha256 { bits: 3072 })
        );
        assert_eq!(algorithm_of("chacha20-poly1305"), None);
    }
}
