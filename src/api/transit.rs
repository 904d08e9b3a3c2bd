//! Wire types of the Vault-transit-compatible API (`compat.vault_transit`,
//! SPEC §13): Vault's request fields, read as leniently as Vault reads them
//! (numbers and booleans also as strings, which is how the `vault`/`bao`
//! CLI sends `key=value` pairs; fields it does not know are ignored, as
//! Vault ignores them), and Vault's answer envelope. Pure serde.

use super::{B64, JsonObject};
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

/// A `vault:vN:` value of an answer: transit's own text (a ciphertext of the
/// `vault` backend), or its number and bytes, written as base64 (base64url
/// for `marshaling_algorithm=jws`) after the prefix.
#[derive(Debug)]
pub enum Text {
    Transit(String),
    Versioned {
        number: u32,
        bytes: Vec<u8>,
        url: bool,
    },
}

impl Text {
    pub fn versioned(number: u32, bytes: Vec<u8>) -> Self {
        Text::Versioned {
            number,
            bytes,
            url: false,
        }
    }

    fn write(&self, o: JsonObject, name: &'static str) -> JsonObject {
        match self {
            Text::Transit(text) => o.value(name, text),
            Text::Versioned { number, bytes, url } => {
                let prefix = format!("vault:v{number}:");
                if *url {
                    o.text(name, &prefix, bytes, &base64_simd::URL_SAFE_NO_PAD)
                } else {
                    o.text(name, &prefix, bytes, &base64_simd::STANDARD)
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Text::Transit(text) => text.len(),
            Text::Versioned { bytes, .. } => bytes.len() * 4 / 3 + 16,
        }
    }
}

/// One item's result (a single request's `data`, or one of
/// `batch_results`): only the fields of its operation. Written into the
/// answer in place ([`JsonObject`]): its base64 is never copied or escaped.
#[derive(Default)]
pub struct TransitItem {
    pub ciphertext: Option<Text>,
    /// Plaintext: zeroized on drop, never printed.
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    pub signature: Option<Text>,
    pub hmac: Option<Text>,
    pub valid: Option<bool>,
    pub key_version: Option<u32>,
    pub reference: Option<String>,
    pub error: Option<String>,
}

impl fmt::Debug for TransitItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitItem")
            .field("ciphertext", &self.ciphertext)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "<redacted>"))
            .field("signature", &self.signature)
            .field("hmac", &self.hmac)
            .field("valid", &self.valid)
            .field("key_version", &self.key_version)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl TransitItem {
    /// The base64 this item holds, to size its answer's buffer.
    pub fn binary_len(&self) -> usize {
        let text = |t: &Option<Text>| t.as_ref().map_or(0, Text::len);
        text(&self.ciphertext)
            + text(&self.signature)
            + text(&self.hmac)
            + self.plaintext.as_ref().map_or(0, |p| p.len())
    }

    /// The item's fields, written into `o`.
    pub fn write(&self, mut o: JsonObject) -> JsonObject {
        for (name, text) in [
            ("ciphertext", &self.ciphertext),
            ("signature", &self.signature),
            ("hmac", &self.hmac),
        ] {
            if let Some(text) = text {
                o = text.write(o, name);
            }
        }
        if let Some(plaintext) = &self.plaintext {
            o = o.b64("plaintext", plaintext);
        }
        if let Some(valid) = self.valid {
            o = o.value("valid", &valid);
        }
        if let Some(version) = self.key_version {
            o = o.value("key_version", &version);
        }
        if let Some(reference) = &self.reference {
            o = o.value("reference", reference);
        }
        if let Some(error) = &self.error {
            o = o.value("error", error);
        }
        o
    }
}

/// Vault's answer around `data` (written by `data` as the field `data`)
/// of a mount of `mount_type`, for the request `request_id`.
pub fn vault_answer(
    request_id: &str,
    mount_type: &str,
    binary: usize,
    data: impl FnOnce(JsonObject) -> JsonObject,
) -> Vec<u8> {
    let o = JsonObject::new(binary)
        .value("request_id", request_id)
        .value("lease_id", "")
        .value("renewable", &false)
        .value("lease_duration", &0);
    data(o)
        .value("wrap_info", &())
        .value("warnings", &())
        .value("auth", &())
        .value("mount_type", mount_type)
        .finish()
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
            plaintext: Some(Zeroizing::new(b"secret".to_vec())),
            ..TransitItem::default()
        };
        assert!(!format!("{item:?}").contains("secret"));
    }

    #[test]
    fn items_are_written_as_vault_writes_them() {
        let item = TransitItem {
            signature: Some(Text::Versioned {
                number: 2,
                bytes: vec![0xfb, 0xff],
                url: true,
            }),
            ciphertext: Some(Text::versioned(1, vec![0xfb, 0xff])),
            key_version: Some(2),
            ..TransitItem::default()
        };
        let body = vault_answer("id", "transit", 0, |o| o.object("data", |d| item.write(d)));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"]["signature"], "vault:v2:-_8");
        assert_eq!(v["data"]["ciphertext"], "vault:v1:+/8=");
        assert_eq!(v["data"]["key_version"], 2);
        assert_eq!(v["request_id"], "id");
        assert!(v["wrap_info"].is_null() && v["lease_duration"] == 0, "{v}");
    }
}
