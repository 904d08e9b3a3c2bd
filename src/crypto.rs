//! Algorithms and the software crypto every backend shares: public-key
//! encodings (PEM, JWK) and local signature verification with a public key.
//! All primitives come from `aws-lc-rs`; nothing here is hand-rolled crypto.

use aws_lc_rs::{digest, signature};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::policy::Op;

/// A key algorithm, named as in config and API (`ecdsa-p256-sha256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    EcdsaP521Sha512,
    Ed25519,
    /// RSASSA-PSS, SHA-256, salt length = hash length.
    RsaPssSha256 {
        bits: u16,
    },
    /// RSASSA-PKCS1-v1_5, SHA-256.
    RsaPkcs1Sha256 {
        bits: u16,
    },
    /// RSAES-OAEP, SHA-256 and MGF1-SHA-256 (encryption; the context is
    /// bound as a SHA-256 prefix of the plaintext, see the Azure backend).
    RsaOaepSha256 {
        bits: u16,
    },
    Aes256Gcm,
    HmacSha256,
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Sign,
    Encrypt,
    Mac,
}

/// Signature encoding: ASN.1 DER (as AWS/GCP/Vault return it) or raw
/// fixed-width `r‖s` (JOSE, Azure). Only ECDSA has two encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    #[default]
    Der,
    Raw,
}

/// What is signed: the message itself, or its digest computed by the caller.
#[derive(Clone, Copy, Debug)]
pub enum SignInput<'a> {
    Message(&'a [u8]),
    Digest(&'a [u8]),
}

const RSA_SIZES: [u16; 3] = [2048, 3072, 4096];

impl Algorithm {
    pub fn purpose(self) -> Purpose {
        match self {
            Algorithm::EcdsaP256Sha256
            | Algorithm::EcdsaP384Sha384
            | Algorithm::EcdsaP521Sha512
            | Algorithm::Ed25519
            | Algorithm::RsaPssSha256 { .. }
            | Algorithm::RsaPkcs1Sha256 { .. } => Purpose::Sign,
            Algorithm::Aes256Gcm | Algorithm::RsaOaepSha256 { .. } => Purpose::Encrypt,
            Algorithm::HmacSha256 => Purpose::Mac,
        }
    }

    /// The operations a key of this algorithm can do (`rotate` included).
    pub fn supported_ops(self) -> &'static [Op] {
        match self.purpose() {
            Purpose::Sign => &[
                Op::Sign,
                Op::Verify,
                Op::PublicKey,
                Op::Metadata,
                Op::Rotate,
                Op::Flush,
            ],
            Purpose::Encrypt => &[
                Op::Encrypt,
                Op::Decrypt,
                Op::Datakey,
                Op::Envelope,
                Op::Rewrap,
                Op::Metadata,
                Op::Rotate,
                Op::Flush,
            ],
            Purpose::Mac => &[Op::Mac, Op::Metadata, Op::Rotate, Op::Flush],
        }
    }

    /// The digest a `digest` sign/verify input must be, if the algorithm
    /// accepts a pre-computed digest at all (Ed25519 signs messages only).
    pub fn digest(self) -> Option<&'static digest::Algorithm> {
        match self {
            Algorithm::EcdsaP256Sha256
            | Algorithm::RsaPssSha256 { .. }
            | Algorithm::RsaPkcs1Sha256 { .. } => Some(&digest::SHA256),
            Algorithm::EcdsaP384Sha384 => Some(&digest::SHA384),
            Algorithm::EcdsaP521Sha512 => Some(&digest::SHA512),
            Algorithm::Ed25519
            | Algorithm::Aes256Gcm
            | Algorithm::RsaOaepSha256 { .. }
            | Algorithm::HmacSha256 => None,
        }
    }

    /// Width of one ECDSA coordinate, for raw `r‖s` signatures.
    pub fn ecdsa_coordinate_len(self) -> Option<usize> {
        match self {
            Algorithm::EcdsaP256Sha256 => Some(32),
            Algorithm::EcdsaP384Sha384 => Some(48),
            Algorithm::EcdsaP521Sha512 => Some(66),
            _ => None,
        }
    }

    /// JOSE `alg` name of a signing algorithm.
    pub fn jose_name(self) -> Option<&'static str> {
        match self {
            Algorithm::EcdsaP256Sha256 => Some("ES256"),
            Algorithm::EcdsaP384Sha384 => Some("ES384"),
            Algorithm::EcdsaP521Sha512 => Some("ES512"),
            Algorithm::Ed25519 => Some("EdDSA"),
            Algorithm::RsaPssSha256 { .. } => Some("PS256"),
            Algorithm::RsaPkcs1Sha256 { .. } => Some("RS256"),
            Algorithm::Aes256Gcm | Algorithm::RsaOaepSha256 { .. } | Algorithm::HmacSha256 => None,
        }
    }

    fn verification(
        self,
        format: SignatureFormat,
    ) -> Option<&'static dyn signature::VerificationAlgorithm> {
        use SignatureFormat::{Der, Raw};
        Some(match (self, format) {
            (Algorithm::EcdsaP256Sha256, Der) => &signature::ECDSA_P256_SHA256_ASN1,
            (Algorithm::EcdsaP256Sha256, Raw) => &signature::ECDSA_P256_SHA256_FIXED,
            (Algorithm::EcdsaP384Sha384, Der) => &signature::ECDSA_P384_SHA384_ASN1,
            (Algorithm::EcdsaP384Sha384, Raw) => &signature::ECDSA_P384_SHA384_FIXED,
            (Algorithm::EcdsaP521Sha512, Der) => &signature::ECDSA_P521_SHA512_ASN1,
            (Algorithm::EcdsaP521Sha512, Raw) => &signature::ECDSA_P521_SHA512_FIXED,
            (Algorithm::Ed25519, _) => &signature::ED25519,
            (Algorithm::RsaPssSha256 { .. }, _) => &signature::RSA_PSS_2048_8192_SHA256,
            (Algorithm::RsaPkcs1Sha256 { .. }, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Algorithm::Aes256Gcm | Algorithm::RsaOaepSha256 { .. } | Algorithm::HmacSha256, _) => {
                return None;
            }
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::EcdsaP256Sha256 => f.write_str("ecdsa-p256-sha256"),
            Algorithm::EcdsaP384Sha384 => f.write_str("ecdsa-p384-sha384"),
            Algorithm::EcdsaP521Sha512 => f.write_str("ecdsa-p521-sha512"),
            Algorithm::Ed25519 => f.write_str("ed25519"),
            Algorithm::RsaPssSha256 { bits } => write!(f, "rsa-pss-{bits}-sha256"),
            Algorithm::RsaPkcs1Sha256 { bits } => write!(f, "rsa-pkcs1-{bits}-sha256"),
            Algorithm::RsaOaepSha256 { bits } => write!(f, "rsa-oaep-{bits}-sha256"),
            Algorithm::Aes256Gcm => f.write_str("aes-256-gcm"),
            Algorithm::HmacSha256 => f.write_str("hmac-sha256"),
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let fixed = [
            Algorithm::EcdsaP256Sha256,
            Algorithm::EcdsaP384Sha384,
            Algorithm::EcdsaP521Sha512,
            Algorithm::Ed25519,
            Algorithm::Aes256Gcm,
            Algorithm::HmacSha256,
        ];
        let rsa = RSA_SIZES.into_iter().flat_map(|bits| {
            [
                Algorithm::RsaPssSha256 { bits },
                Algorithm::RsaPkcs1Sha256 { bits },
                Algorithm::RsaOaepSha256 { bits },
            ]
        });
        fixed
            .into_iter()
            .chain(rsa)
            .find(|a| a.to_string() == s)
            .ok_or_else(|| {
                format!(
                    "unknown algorithm `{s}`, expected one of ecdsa-p256-sha256, ecdsa-p384-sha384, \
                     ecdsa-p521-sha512, ed25519, rsa-pss-{{2048,3072,4096}}-sha256, \
                     rsa-pkcs1-{{2048,3072,4096}}-sha256, rsa-oaep-{{2048,3072,4096}}-sha256, \
                     aes-256-gcm, hmac-sha256"
                )
            })
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a public key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the public key is not a valid {algorithm} SubjectPublicKeyInfo")]
pub struct BadPublicKey {
    pub algorithm: Algorithm,
}

/// PEM (`PUBLIC KEY`, SubjectPublicKeyInfo) of a DER public key.
pub fn public_key_pem(spki_der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", spki_der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The RFC 7517 JWK of a public key given as SubjectPublicKeyInfo DER.
pub fn public_key_jwk(
    algorithm: Algorithm,
    spki_der: &[u8],
    kid: &str,
) -> Result<serde_json::Value, BadPublicKey> {
    let bad = || BadPublicKey { algorithm };
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let alg = algorithm.jose_name().ok_or_else(bad)?;
    let mut jwk = match algorithm {
        Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384 | Algorithm::EcdsaP521Sha512 => {
            let n = algorithm.ecdsa_coordinate_len().ok_or_else(bad)?;
            // The uncompressed point 0x04‖x‖y ends the SPKI's BIT STRING.
            let point = spki_der
                .get(spki_der.len().checked_sub(2 * n + 1).ok_or_else(bad)?..)
                .ok_or_else(bad)?;
            if point[0] != 4 {
                return Err(bad());
            }
            let crv = match n {
                32 => "P-256",
                48 => "P-384",
                _ => "P-521",
            };
            serde_json::json!({"kty": "EC", "crv": crv, "x": b64(&point[1..=n]), "y": b64(&point[n + 1..])})
        }
        Algorithm::Ed25519 => {
            let x = spki_der
                .get(spki_der.len().checked_sub(32).ok_or_else(bad)?..)
                .ok_or_else(bad)?;
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x)})
        }
        Algorithm::RsaPssSha256 { .. } | Algorithm::RsaPkcs1Sha256 { .. } => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(spki_der).map_err(|_| bad())?;
            serde_json::json!({
                "kty": "RSA",
                "n": b64(key.modulus().big_endian_without_leading_zero()),
                "e": b64(key.exponent().big_endian_without_leading_zero()),
            })
        }
        Algorithm::Aes256Gcm | Algorithm::RsaOaepSha256 { .. } | Algorithm::HmacSha256 => {
            return Err(bad());
        }
    };
    jwk["alg"] = alg.into();
    jwk["use"] = "sig".into();
    jwk["kid"] = kid.into();
    Ok(jwk)
}

/// The SubjectPublicKeyInfo DER of an ECDSA key's uncompressed point
/// (`04 ‖ x ‖ y`) or an Ed25519 key's 32 bytes; `None` if the point is not
/// one of `algorithm`'s curve.
pub fn spki_of_point(algorithm: Algorithm, point: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::encoding::AsDer;
    let verification: &'static dyn signature::VerificationAlgorithm = match algorithm {
        Algorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        Algorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
        Algorithm::EcdsaP521Sha512 => &signature::ECDSA_P521_SHA512_ASN1,
        Algorithm::Ed25519 => &signature::ED25519,
        _ => return None,
    };
    let key = signature::ParsedPublicKey::new(verification, point).ok()?;
    Some(key.as_der().ok()?.as_ref().to_vec())
}

/// The SubjectPublicKeyInfo DER of an RSA key's modulus and exponent
/// (big-endian).
pub fn spki_of_rsa(n: &[u8], e: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::encoding::AsDer;
    let components = aws_lc_rs::rsa::PublicKeyComponents { n, e };
    Some(components.as_der().ok()?.as_ref().to_vec())
}

/// Checks a signature with a public key (SubjectPublicKeyInfo DER), as a
/// backend without a verify API needs. `Ok(false)` is an invalid signature;
/// `Err` means the input cannot be checked with this algorithm at all.
pub fn verify_locally(
    algorithm: Algorithm,
    spki_der: &[u8],
    input: SignInput<'_>,
    signature: &[u8],
    format: SignatureFormat,
) -> Result<bool, BadInput> {
    let alg = algorithm
        .verification(format)
        .ok_or(BadInput::NotASigningKey)?;
    let key = signature::UnparsedPublicKey::new(alg, spki_der);
    Ok(match input {
        SignInput::Message(m) => key.verify(m, signature).is_ok(),
        SignInput::Digest(d) => {
            let digest = import_digest(algorithm, d)?;
            key.verify_digest(&digest, signature).is_ok()
        }
    })
}

/// A caller-supplied digest as the algorithm's digest type, length-checked.
pub fn import_digest(algorithm: Algorithm, bytes: &[u8]) -> Result<digest::Digest, BadInput> {
    let alg = algorithm.digest().ok_or(BadInput::DigestNotSupported)?;
    digest::Digest::import_less_safe(bytes, alg).map_err(|_| BadInput::DigestLength {
        expected: alg.output_len(),
    })
}

/// Sign/verify input that an algorithm cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadInput {
    #[error("this key does not sign")]
    NotASigningKey,
    #[error("this algorithm signs messages only, not digests")]
    DigestNotSupported,
    #[error("`digest` must be {expected} bytes for this algorithm")]
    DigestLength { expected: usize },
}

/// Picks the encoding of an ECDSA signature the caller did not label: a raw
/// `r‖s` signature has exactly twice the coordinate width.
pub fn guess_format(algorithm: Algorithm, signature: &[u8]) -> SignatureFormat {
    match algorithm.ecdsa_coordinate_len() {
        Some(n) if signature.len() == 2 * n => SignatureFormat::Raw,
        _ => SignatureFormat::Der,
    }
}

/// A signature as a KMS made it (`made`: its encoding) in the encoding the
/// caller asked for (`wanted`), low-S ([`low_s`]); `None` when an ECDSA
/// signature is not a well-formed one of its encoding (a KMS's fault).
/// Other algorithms have one encoding and pass unchanged.
pub fn signature_for_caller(
    algorithm: Algorithm,
    signature: Vec<u8>,
    made: SignatureFormat,
    wanted: SignatureFormat,
) -> Option<Vec<u8>> {
    let Some(n) = algorithm.ecdsa_coordinate_len() else {
        return Some(signature);
    };
    if made == wanted {
        return Some(low_s(algorithm, signature, made));
    }
    let raw = match made {
        SignatureFormat::Raw if signature.len() == 2 * n => signature,
        SignatureFormat::Raw => return None,
        SignatureFormat::Der => ecdsa_der_to_raw(&signature, n)?,
    };
    let raw = low_s(algorithm, raw, SignatureFormat::Raw);
    Some(match wanted {
        SignatureFormat::Raw => raw,
        SignatureFormat::Der => ecdsa_raw_to_der(&raw, n),
    })
}

/// A caller's signature as a KMS's verify API takes it: ECDSA in DER (a raw
/// `r‖s`, labelled `format` or guessed by its length, converted), others
/// unchanged.
pub fn signature_as_der(
    algorithm: Algorithm,
    signature: &[u8],
    format: Option<SignatureFormat>,
) -> Vec<u8> {
    match algorithm.ecdsa_coordinate_len() {
        Some(n)
            if format.unwrap_or_else(|| guess_format(algorithm, signature))
                == SignatureFormat::Raw =>
        {
            ecdsa_raw_to_der(signature, n)
        }
        _ => signature.to_vec(),
    }
}

/// The order `n` of the curve of an ECDSA algorithm (big-endian).
fn ecdsa_order(algorithm: Algorithm) -> Option<&'static [u8]> {
    const P256: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    const P384: [u8; 48] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37,
        0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc,
        0xc5, 0x29, 0x73,
    ];
    const P521: [u8; 66] = [
        0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xfa, 0x51, 0x86, 0x87, 0x83, 0xbf, 0x2f, 0x96, 0x6b, 0x7f, 0xcc, 0x01,
        0x48, 0xf7, 0x09, 0xa5, 0xd0, 0x3b, 0xb5, 0xc9, 0xb8, 0x89, 0x9c, 0x47, 0xae, 0xbb, 0x6f,
        0xb7, 0x1e, 0x91, 0x38, 0x64, 0x09,
    ];
    match algorithm {
        Algorithm::EcdsaP256Sha256 => Some(&P256),
        Algorithm::EcdsaP384Sha384 => Some(&P384),
        Algorithm::EcdsaP521Sha512 => Some(&P521),
        _ => None,
    }
}

/// An ECDSA signature with the low of its two valid `s` values (`s ≤ n/2`;
/// `(r, n − s)` verifies exactly like `(r, s)`), in the same encoding, so
/// that every backend answers the one canonical form that strict verifiers
/// (Bitcoin-style low-S rules) want. Other signatures pass unchanged;
/// verification accepts both forms.
pub fn low_s(algorithm: Algorithm, signature: Vec<u8>, format: SignatureFormat) -> Vec<u8> {
    let (Some(width), Some(order)) = (algorithm.ecdsa_coordinate_len(), ecdsa_order(algorithm))
    else {
        return signature;
    };
    let raw = match format {
        SignatureFormat::Raw if signature.len() == 2 * width => signature.clone(),
        SignatureFormat::Der => match ecdsa_der_to_raw(&signature, width) {
            Some(raw) => raw,
            None => return signature,
        },
        SignatureFormat::Raw => return signature,
    };
    let (r, s) = raw.split_at(width);
    if !s_is_high(s, order) {
        return signature;
    }
    // n − s, with a borrow.
    let mut low = vec![0u8; width];
    let mut borrow = 0i16;
    for i in (0..width).rev() {
        let mut v = i16::from(order[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(v < 0);
        if v < 0 {
            v += 256;
        }
        low[i] = v as u8;
    }
    let raw = [r, &low].concat();
    match format {
        SignatureFormat::Raw => raw,
        SignatureFormat::Der => ecdsa_raw_to_der(&raw, width),
    }
}

/// Whether a JOSE ECDSA signature (raw `r ‖ s` of `algorithm`'s width)
/// has the high one of its two `s` values (`s > n/2`): the twin of a
/// low-S signature, which [`low_s`] never lets out. `false` for other
/// algorithms and other lengths.
pub fn is_high_s(algorithm: Algorithm, raw: &[u8]) -> bool {
    let (Some(width), Some(order)) = (algorithm.ecdsa_coordinate_len(), ecdsa_order(algorithm))
    else {
        return false;
    };
    raw.len() == 2 * width && s_is_high(&raw[width..], order)
}

/// `s > n/2` ⇔ `2·s > n`, compared on the big-endian bytes (`s` as wide as
/// `order`).
fn s_is_high(s: &[u8], order: &[u8]) -> bool {
    let width = s.len();
    let mut doubled = vec![0u8; width + 1];
    let mut carry = 0u16;
    for i in (0..width).rev() {
        let v = u16::from(s[i]) * 2 + carry;
        doubled[i + 1] = v as u8;
        carry = v >> 8;
    }
    doubled[0] = carry as u8;
    let mut n = vec![0u8];
    n.extend_from_slice(order);
    doubled > n
}

/// A DER ECDSA signature (`SEQUENCE { INTEGER r, INTEGER s }`, as KMSs return
/// it) as fixed-width `r‖s` with `n`-byte coordinates; `None` if malformed.
pub fn ecdsa_der_to_raw(der: &[u8], n: usize) -> Option<Vec<u8>> {
    let (tag, body, rest) = der_element(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * n];
    let mut input = body;
    for half in 0..2 {
        let (tag, int, rest) = der_element(input)?;
        if tag != 0x02 || int.is_empty() {
            return None;
        }
        let int = match int {
            [0, tail @ ..] if !tail.is_empty() => tail,
            other => other,
        };
        if int.len() > n {
            return None;
        }
        out[half * n + n - int.len()..(half + 1) * n].copy_from_slice(int);
        input = rest;
    }
    input.is_empty().then_some(out)
}

/// Fixed-width `r‖s` as a DER ECDSA signature.
pub fn ecdsa_raw_to_der(raw: &[u8], n: usize) -> Vec<u8> {
    let int = |x: &[u8]| {
        let x = &x[x
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(x.len().saturating_sub(1))..];
        let mut v = vec![0x02];
        let pad = x.first().is_some_and(|b| b & 0x80 != 0);
        v.push((x.len() + usize::from(pad)) as u8);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    };
    let (r, s) = raw.split_at(n.min(raw.len()));
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

/// One DER element: (tag, contents, what follows). Short and one-byte long
/// lengths only, as ECDSA signatures up to P-521 need.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len {
        0..=0x7f => (len as usize, rest),
        0x81 => {
            let (&l, rest) = rest.split_first()?;
            (l as usize, rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_come_out_low_s_and_still_verify() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for (algorithm, signing, width) in [
            (
                Algorithm::EcdsaP256Sha256,
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                32,
            ),
            (
                Algorithm::EcdsaP384Sha384,
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                48,
            ),
        ] {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::signature::KeyPair;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
            let spki = pair.public_key().as_der().unwrap();
            // s ≤ n/2  ⇔  2·s ≤ n.
            let half = |s: &[u8]| {
                let mut n = vec![0u8];
                n.extend_from_slice(ecdsa_order(algorithm).unwrap());
                num_twice(s) <= n
            };
            let (mut high, mut low) = (0, 0);
            for i in 0..64u32 {
                let message = i.to_be_bytes();
                let raw = pair.sign(&rng, &message).unwrap().as_ref().to_vec();
                assert_eq!(is_high_s(algorithm, &raw), !half(&raw[width..]));
                if half(&raw[width..]) {
                    low += 1;
                } else {
                    high += 1;
                }
                for format in [SignatureFormat::Raw, SignatureFormat::Der] {
                    let sig = match format {
                        SignatureFormat::Raw => raw.clone(),
                        SignatureFormat::Der => ecdsa_raw_to_der(&raw, width),
                    };
                    let normal = low_s(algorithm, sig.clone(), format);
                    let normal_raw = match format {
                        SignatureFormat::Raw => normal.clone(),
                        SignatureFormat::Der => ecdsa_der_to_raw(&normal, width).unwrap(),
                    };
                    assert!(half(&normal_raw[width..]), "{algorithm} {format:?}: low S");
                    assert!(!is_high_s(algorithm, &normal_raw));
                    assert_eq!(normal_raw[..width], raw[..width], "r is kept");
                    for s in [&sig, &normal] {
                        assert!(
                            verify_locally(
                                algorithm,
                                spki.as_ref(),
                                SignInput::Message(&message),
                                s,
                                format
                            )
                            .unwrap(),
                            "both forms verify"
                        );
                    }
                    assert_eq!(
                        low_s(algorithm, normal.clone(), format),
                        normal,
                        "idempotent"
                    );
                }
            }
            assert!(high > 0 && low > 0, "64 signatures give both forms");
        }
        let rsa = vec![1, 2, 3];
        assert_eq!(
            low_s(Algorithm::Ed25519, rsa.clone(), SignatureFormat::Der),
            rsa
        );
    }

    /// `2·x` with one more leading byte.
    fn num_twice(x: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() + 1];
        let mut carry = 0u16;
        for i in (0..x.len()).rev() {
            let v = u16::from(x[i]) * 2 + carry;
            out[i + 1] = v as u8;
            carry = v >> 8;
        }
        out[0] = carry as u8;
        out
    }

    #[test]
    fn ecdsa_signatures_convert_between_der_and_raw() {
        use aws_lc_rs::signature::KeyPair;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let der_pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
        )
        .unwrap();
        let public = der_pair.public_key().as_ref().to_vec();
        for i in 0..200u32 {
            let msg = i.to_be_bytes();
            let der = der_pair.sign(&rng, &msg).unwrap();
            let raw = ecdsa_der_to_raw(der.as_ref(), 32).unwrap();
            assert_eq!(raw.len(), 64);
            let fixed =
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public);
            assert!(
                fixed.verify(&msg, &raw).is_ok(),
                "raw form of signature {i} verifies"
            );
            assert_eq!(
                ecdsa_raw_to_der(&raw, 32),
                der.as_ref(),
                "and converts back to the same DER"
            );
        }
        assert_eq!(ecdsa_der_to_raw(b"\x30\x03\x02\x01", 32), None);
        assert_eq!(
            ecdsa_der_to_raw(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], 32),
            None,
            "trailing bytes"
        );
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([1u8; 33]);
        long.extend([0x02, 0x01, 0x01]);
        assert_eq!(ecdsa_der_to_raw(&long, 32), None, "r wider than the curve");
    }

    #[test]
    fn algorithm_names_round_trip() {
        for name in [
            "ecdsa-p256-sha256",
            "ed25519",
            "rsa-pss-3072-sha256",
            "rsa-pkcs1-2048-sha256",
            "aes-256-gcm",
            "hmac-sha256",
        ] {
            assert_eq!(name.parse::<Algorithm>().unwrap().to_string(), name);
        }
        assert!("rsa-pss-1024-sha256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn ec_jwk_and_local_verification_agree_with_the_signer() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let kp =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = kp.public_key().as_der().unwrap();
        let jwk = public_key_jwk(Algorithm::EcdsaP256Sha256, spki.as_ref(), "k/1").unwrap();
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = kp.sign(&rng, b"hello").unwrap();
        let ok = |m: &[u8]| {
            verify_locally(
                Algorithm::EcdsaP256Sha256,
                spki.as_ref(),
                SignInput::Message(m),
                sig.as_ref(),
                SignatureFormat::Der,
            )
            .unwrap()
        };
        assert!(ok(b"hello"));
        assert!(!ok(b"hellO"));
        let d = digest::digest(&digest::SHA256, b"hello");
        assert!(
            verify_locally(
                Algorithm::EcdsaP256Sha256,
                spki.as_ref(),
                SignInput::Digest(d.as_ref()),
                sig.as_ref(),
                SignatureFormat::Der
            )
            .unwrap()
        );
        assert_eq!(
            verify_locally(
                Algorithm::EcdsaP256Sha256,
                spki.as_ref(),
                SignInput::Digest(b"short"),
                sig.as_ref(),
                SignatureFormat::Der
            ),
            Err(BadInput::DigestLength { expected: 32 })
        );
    }
}
