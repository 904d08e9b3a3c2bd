//! The request rules every backend shares, decided once here before a
//! backend is called, so that the same request gets the same status and
//! code whatever KMS stands behind the key: what a key's purpose lets it do,
//! which signing algorithm a request may ask for, which sign inputs an
//! algorithm takes, data-key sizes, and encryption-context limits. Backends
//! only translate.

use crate::api::{self, ApiError, Code};
use crate::backend::{Context, DataKeySize};
use crate::crypto::{self, Algorithm, Purpose, SignInput};
use crate::policy::Op;

/// The purpose a key must have for `op` (`None`: any key).
pub fn purpose_of(op: Op) -> Option<Purpose> {
    match op {
        Op::Sign | Op::Verify | Op::PublicKey => Some(Purpose::Sign),
        Op::Encrypt | Op::Decrypt | Op::Datakey | Op::Envelope | Op::Rewrap => {
            Some(Purpose::Encrypt)
        }
        Op::Mac => Some(Purpose::Mac),
        Op::Rotate | Op::Flush | Op::Metadata | Op::Metrics => None,
    }
}

/// 422 `operation_not_supported` unless the key's algorithm is made for `op`.
pub fn require_purpose(alias: &str, algorithm: Algorithm, op: Op) -> Result<(), ApiError> {
    match purpose_of(op) {
        Some(purpose) if algorithm.purpose() != purpose => Err(ApiError::new(
            Code::OperationNotSupported,
            format!("key `{alias}` is {algorithm}: it cannot `{op}`"),
        )),
        _ => Ok(()),
    }
}

/// The algorithm a sign or verify request runs with: the key's own, or one
/// the request asks for that the key can do — an RSA key signs both PSS and
/// PKCS#1 v1.5 at its size. Anything else is 400 (field `algorithm`).
pub fn signing_algorithm(
    alias: &str,
    key: Algorithm,
    asked: Option<Algorithm>,
) -> Result<Algorithm, ApiError> {
    let Some(asked) = asked else {
        return Ok(key);
    };
    let same_rsa_key = match (key, asked) {
        (
            Algorithm::RsaPssSha256 { bits } | Algorithm::RsaPkcs1Sha256 { bits },
            Algorithm::RsaPssSha256 { bits: b } | Algorithm::RsaPkcs1Sha256 { bits: b },
        ) => bits == b,
        _ => false,
    };
    if asked == key || same_rsa_key {
        return Ok(asked);
    }
    Err(ApiError::invalid(format!(
        "field `algorithm`: key `{alias}` is {key}, which cannot sign {asked}"
    )))
}

/// Exactly one of `message` and `digest` (`at` prefixes the field names of
/// a batch item).
pub fn sign_input<'a>(
    message: Option<&'a api::B64>,
    digest: Option<&'a api::B64>,
    at: &str,
) -> Result<SignInput<'a>, ApiError> {
    match (message, digest) {
        (Some(m), None) => Ok(SignInput::Message(&m.0)),
        (None, Some(d)) => Ok(SignInput::Digest(&d.0)),
        _ => Err(ApiError::invalid(format!(
            "send exactly one of `{at}message` and `{at}digest`"
        ))),
    }
}

/// A digest must have the algorithm's hash length (400); an algorithm that
/// signs messages only (Ed25519) takes no digest (422).
pub fn check_sign_input(
    algorithm: Algorithm,
    input: SignInput<'_>,
    at: &str,
) -> Result<(), ApiError> {
    let SignInput::Digest(d) = input else {
        return Ok(());
    };
    match crypto::import_digest(algorithm, d) {
        Ok(_) => Ok(()),
        Err(e @ crypto::BadInput::DigestLength { .. }) => {
            Err(ApiError::invalid(format!("field `{at}digest`: {e}")))
        }
        Err(e) => Err(ApiError::new(
            Code::OperationNotSupported,
            format!("{algorithm}: {e}"),
        )),
    }
}

/// Data keys are 128 or 256 bits.
pub fn data_key_size(bits: u32) -> Result<DataKeySize, ApiError> {
    DataKeySize::from_bits(bits)
        .ok_or_else(|| ApiError::invalid("field `bits`: must be 128 or 256"))
}

/// Most pairs in an encryption context, and the largest key or value.
const MAX_CONTEXT_PAIRS: usize = 64;
const MAX_CONTEXT_STRING: usize = 1024;

/// An encryption context within its limits and without the sidecar's
/// reserved keys.
pub fn check_context(context: &Context) -> Result<(), ApiError> {
    if context
        .keys()
        .any(|k| k.starts_with(crate::envelope::RESERVED_CONTEXT_PREFIX))
    {
        return Err(ApiError::invalid(format!(
            "field `context`: keys starting with `{}` are reserved for the sidecar",
            crate::envelope::RESERVED_CONTEXT_PREFIX
        )));
    }
    if context.len() > MAX_CONTEXT_PAIRS {
        return Err(ApiError::invalid(format!(
            "field `context`: at most {MAX_CONTEXT_PAIRS} pairs"
        )));
    }
    if context
        .iter()
        .any(|(k, v)| k.len() > MAX_CONTEXT_STRING || v.len() > MAX_CONTEXT_STRING)
    {
        return Err(ApiError::invalid(format!(
            "field `context`: keys and values are at most {MAX_CONTEXT_STRING} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: Algorithm = Algorithm::EcdsaP256Sha256;
    const PSS: Algorithm = Algorithm::RsaPssSha256 { bits: 2048 };
    const PKCS1: Algorithm = Algorithm::RsaPkcs1Sha256 { bits: 2048 };

    #[test]
    fn purposes_decide_what_a_key_can_do() {
        assert!(require_purpose("k", EC, Op::Sign).is_ok());
        assert!(require_purpose("k", Algorithm::Aes256Gcm, Op::Envelope).is_ok());
        for (algorithm, op) in [
            (Algorithm::Aes256Gcm, Op::Sign),
            (EC, Op::Encrypt),
            (Algorithm::Aes256Gcm, Op::Mac),
            (Algorithm::HmacSha256, Op::PublicKey),
        ] {
            let e = require_purpose("k", algorithm, op).unwrap_err();
            assert_eq!(e.code, Code::OperationNotSupported, "{algorithm} {op}");
        }
        assert!(require_purpose("k", Algorithm::HmacSha256, Op::Rotate).is_ok());
    }

    #[test]
    fn an_override_is_the_keys_own_or_the_other_rsa_padding() {
        assert_eq!(signing_algorithm("k", EC, None).unwrap(), EC);
        assert_eq!(signing_algorithm("k", PSS, Some(PKCS1)).unwrap(), PKCS1);
        assert_eq!(signing_algorithm("k", PKCS1, Some(PSS)).unwrap(), PSS);
        for (key, asked) in [
            (EC, Algorithm::EcdsaP384Sha384),
            (PSS, Algorithm::RsaPssSha256 { bits: 3072 }),
            (EC, PSS),
            (Algorithm::Ed25519, EC),
        ] {
            let e = signing_algorithm("k", key, Some(asked)).unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest);
            assert!(e.message.starts_with("field `algorithm`"), "{}", e.message);
        }
    }

    #[test]
    fn digests_are_checked_by_algorithm() {
        assert!(check_sign_input(EC, SignInput::Digest(&[0; 32]), "").is_ok());
        assert!(check_sign_input(EC, SignInput::Message(&[0; 5]), "").is_ok());
        let e = check_sign_input(EC, SignInput::Digest(&[0; 31]), "items[2].").unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest);
        assert!(
            e.message.starts_with("field `items[2].digest`"),
            "{}",
            e.message
        );
        let e = check_sign_input(Algorithm::Ed25519, SignInput::Digest(&[0; 32]), "").unwrap_err();
        assert_eq!(e.code, Code::OperationNotSupported);
        assert_eq!(data_key_size(128).unwrap(), DataKeySize::Aes128);
        assert_eq!(data_key_size(256).unwrap().bytes(), 32);
        assert_eq!(data_key_size(192).unwrap_err().code, Code::InvalidRequest);
    }
}
