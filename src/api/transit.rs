//! Wire types of the Vault-transit-compatible API (`compat.vault_transit`,
//! SPEC §13): Vault's request fields, read as leniently as Vault reads them
//! (numbers and booleans also as strings, which is how the `vault`/`bao`
//! CLI sends `key=value` pairs; fields it does not know are ignored, as
//! Vault ignores them), and Vault's answer envelope. Pure serde.

use super::B64;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// A transit request: one item's fields at the top, or `batch_input` with
/// the same fields per item, and the request's own parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TransitRequest {
    pub plaintext: Option<B64>,
    pub ciphertext: Option<String>,
    pub input: Option<B64>,
    pub signature: Option<String>,
    pub hmac: Option<String>,
    /// Base64: the derivation context of a derived key.
    pub context: Option<String>,
    /// Base64: AES-GCM associated data.
    pub associated_data: Option<String>,
    /// Echoed in the item's result.
    pub reference: Option<String>,
    pub batch_input: Option<Vec<TransitRequest>>,
    pub key_version: Option<Number>,
    pub hash_algorithm: Option<String>,
    /// `hmac`'s name for the hash.
    pub algorithm: Option<String>,
    pub signature_algorithm: Option<String>,
    pub marshaling_algorithm: Option<String>,
    pub prehashed: Option<Flag>,
    pub salt_length: Option<String>,
    pub bits: Option<Number>,
    pub partial_failure_response_code: Option<Number>,
}

/// A number, or a string of one (`bits=256` from the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number(pub u64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Number, E> {
                s.trim()
                    .parse()
                    .map(Number)
                    .map_err(|_| E::custom("must be a non-negative integer"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A boolean, or a string of one (`prehashed=true` from the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Flag, E> {
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" => Ok(Flag(true)),
                    "false" | "f" | "0" | "" => Ok(Flag(false)),
                    _ => Err(E::custom("must be true or false")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One item's result (a single request's `data`, or one of
/// `batch_results`): only the fields of its operation.
#[derive(Debug, Default, Serialize)]
pub struct TransitItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
    /// Holds plaintext: zeroized on drop, never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Base64 of secret bytes in an answer: zeroized on drop, never printed.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Secret(pub Zeroizing<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// `data` of a batch.
#[derive(Debug, Serialize)]
pub struct TransitBatch {
    pub batch_results: Vec<TransitItem>,
}

/// Vault's answer envelope around `data`.
#[derive(Debug, Serialize)]
pub struct VaultAnswer<'a, T> {
    pub request_id: &'a str,
    pub lease_id: &'static str,
    pub renewable: bool,
    pub lease_duration: u64,
    pub data: T,
    pub wrap_info: Option<()>,
    pub warnings: Option<()>,
    pub auth: Option<()>,
    pub mount_type: &'static str,
}

impl<'a, T> VaultAnswer<'a, T> {
    pub fn new(request_id: &'a str, mount_type: &'static str, data: T) -> Self {
        Self {
            request_id,
            lease_id: "",
            renewable: false,
            lease_duration: 0,
            data,
            wrap_info: None,
            warnings: None,
            auth: None,
            mount_type,
        }
    }
}

/// Vault's error body.
#[derive(Debug, Serialize)]
pub struct VaultErrors {
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_json;

    #[test]
    fn numbers_and_flags_read_as_vault_reads_them() {
        let r: TransitRequest =
            parse_json(br#"{"bits": "512", "prehashed": "true", "key_version": 2}"#).unwrap();
        assert_eq!(r.bits, Some(Number(512)));
        assert_eq!(r.prehashed, Some(Flag(true)));
        assert_eq!(r.key_version, Some(Number(2)));
        let e = parse_json::<TransitRequest>(br#"{"bits": "many"}"#).unwrap_err();
        assert!(e.message.contains("`bits`"), "{}", e.message);
        let r: TransitRequest = parse_json(br#"{"unknown": [1], "type": "aes256-gcm96"}"#)
            .expect("fields Vault would ignore are ignored");
        assert!(r.plaintext.is_none());
    }

    #[test]
    fn plaintext_is_never_printed() {
        let r: TransitRequest = parse_json(br#"{"plaintext": "c2VjcmV0"}"#).unwrap();
        assert!(!format!("{r:?}").contains("c2VjcmV0"));
        let item = TransitItem {
            plaintext: Some(Secret(Zeroizing::new("c2VjcmV0".into()))),
            ..TransitItem::default()
        };
        assert!(!format!("{item:?}").contains("c2VjcmV0"));
    }
}
