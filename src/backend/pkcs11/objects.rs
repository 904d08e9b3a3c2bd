//! A key as objects on the token: found by `CKA_LABEL` and/or `CKA_ID`, one
//! version per `CKA_ID` (the highest is current; `rotate` adds the next),
//! its algorithm read from the attributes, its public key from the public
//! key object (`CKA_EC_POINT`, `CKA_MODULUS`); and the ciphertext format.

use super::errors::Fail;
use crate::backend::Error;
use crate::config::Pkcs11KeyRef;
use crate::crypto::{self, Algorithm};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::collections::BTreeMap;

/// DER of the curve OIDs in `CKA_EC_PARAMS`.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
/// Ed25519: the RFC 8410 OID, or the PrintableString `edwards25519` that
/// PKCS#11 3.0 also allows.
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// One version: the object that signs, decrypts or MACs.
#[derive(Debug, Clone)]
pub(super) struct Version {
    /// `CKA_ID`; the version's name is its hex.
    pub id: Vec<u8>,
    pub name: String,
    pub handle: ObjectHandle,
    /// The public key, SubjectPublicKeyInfo DER (signing keys).
    pub spki: Option<Vec<u8>>,
    /// What the token says of the object, for metadata.
    pub facts: BTreeMap<String, String>,
}

/// A key's objects on the token.
#[derive(Debug)]
pub(super) struct TokenKey {
    pub algorithm: Algorithm,
    /// Oldest first: by `CKA_ID` as a big-endian number.
    pub versions: Vec<Version>,
    /// The key is one object (`LABEL/ID` or `/ID`): it cannot rotate.
    pub pinned: bool,
    /// The module initialization the handles belong to.
    pub generation: u64,
}

impl TokenKey {
    pub fn current(&self) -> &Version {
        self.versions
            .last()
            .expect("a key has at least one version")
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    pub fn version_by_id(&self, id: &[u8]) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }
}

/// Sorts ids as big-endian numbers (shorter is smaller).
fn id_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let trim = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|b| *b == 0).collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then(a.cmp(&b))
}

/// The id after `id`, as a big-endian number of the same width (one byte
/// wider when it overflows).
pub(super) fn next_id(id: &[u8]) -> Vec<u8> {
    let mut next = id.to_vec();
    for byte in next.iter_mut().rev() {
        let (v, overflow) = byte.overflowing_add(1);
        *byte = v;
        if !overflow {
            return next;
        }
    }
    next.insert(0, 1);
    next
}

fn template(key: &Pkcs11KeyRef) -> Vec<Attribute> {
    let mut t = Vec::new();
    if let Some(label) = &key.label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &key.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

/// Why the objects cannot be used as one key.
fn unusable(why: impl Into<String>) -> Fail {
    Fail::Api(Error::unsupported(why.into()))
}

/// Finds the key's objects; `Ok(None)` when the token has none.
/// `configured` is the key's `algorithm` from the config, which picks
/// PKCS#1 v1.5 for an RSA key (PSS otherwise).
pub(super) fn find(
    session: &Session,
    key: &Pkcs11KeyRef,
    configured: Option<Algorithm>,
    generation: u64,
) -> Result<Option<TokenKey>, Fail> {
    let handles = session.find_objects(&template(key))?;
    let mut privates = Vec::new();
    let mut publics: BTreeMap<Vec<u8>, ObjectHandle> = BTreeMap::new();
    for handle in handles {
        let attrs = session.get_attributes(handle, &[AttributeType::Class, AttributeType::Id])?;
        let mut class = None;
        let mut id = Vec::new();
        for a in attrs {
            match a {
                Attribute::Class(c) => class = Some(c),
                Attribute::Id(i) => id = i,
                _ => {}
            }
        }
        match class {
            Some(ObjectClass::PRIVATE_KEY) | Some(ObjectClass::SECRET_KEY) => {
                privates.push((id, handle))
            }
            Some(ObjectClass::PUBLIC_KEY) => {
                publics.insert(id, handle);
            }
            _ => {} // certificates, data objects
        }
    }
    if privates.is_empty() {
        return Ok(None);
    }
    privates.sort_by(|a, b| id_order(&a.0, &b.0));
    let mut algorithm = None;
    let mut versions = Vec::new();
    for (id, handle) in privates {
        if id.is_empty() {
            return Err(unusable(
                "an object of this key has no CKA_ID: give every version an id (pkcs11-tool --id)",
            ));
        }
        if versions.iter().any(|v: &Version| v.id == id) {
            return Err(unusable(format!(
                "two objects of this key have the CKA_ID {}: ids name versions and must differ",
                hex::encode(&id)
            )));
        }
        let (alg, spki, facts) = describe(session, handle, publics.get(&id).copied(), configured)?;
        match algorithm {
            None => algorithm = Some(alg),
            Some(a) if a != alg => {
                return Err(unusable(format!(
                    "the objects of this key are of different types ({a} and {alg})"
                )));
            }
            Some(_) => {}
        }
        versions.push(Version {
            name: hex::encode(&id),
            id,
            handle,
            spki,
            facts,
        });
    }
    Ok(Some(TokenKey {
        algorithm: algorithm.expect("at least one object"),
        versions,
        pinned: key.id.is_some(),
        generation,
    }))
}

type Described = (Algorithm, Option<Vec<u8>>, BTreeMap<String, String>);

/// The algorithm, public key and facts of one key object.
fn describe(
    session: &Session,
    handle: ObjectHandle,
    public: Option<ObjectHandle>,
    configured: Option<Algorithm>,
) -> Result<Described, Fail> {
    let attrs = session.get_attributes(
        handle,
        &[
            AttributeType::KeyType,
            AttributeType::Label,
            AttributeType::ValueLen,
            AttributeType::EcParams,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Local,
            AttributeType::NeverExtractable,
        ],
    )?;
    let mut a = Attrs::default();
    a.read(attrs);
    if let Some(public) = public {
        // The public object has the point (a private EC object has none).
        a.read(session.get_attributes(
            public,
            &[
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )?);
    }
    let key_type = a
        .key_type
        .ok_or_else(|| unusable("an object of this key has no CKA_KEY_TYPE"))?;
    let algorithm = a.algorithm(key_type, configured)?;
    let spki = match algorithm.purpose() {
        crypto::Purpose::Sign => Some(a.spki(algorithm)?),
        _ => None,
    };
    let mut facts = BTreeMap::new();
    facts.insert("key_type".into(), key_type.to_string());
    if let Some(label) = a.label {
        facts.insert("label".into(), label);
    }
    for (name, value) in [
        ("sensitive", a.sensitive),
        ("extractable", a.extractable),
        ("never_extractable", a.never_extractable),
        ("local", a.local),
    ] {
        if let Some(v) = value {
            facts.insert(name.into(), v.to_string());
        }
    }
    Ok((algorithm, spki, facts))
}

#[derive(Default)]
struct Attrs {
    key_type: Option<KeyType>,
    label: Option<String>,
    value_len: Option<usize>,
    ec_params: Option<Vec<u8>>,
    ec_point: Option<Vec<u8>>,
    modulus: Option<Vec<u8>>,
    exponent: Option<Vec<u8>>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    never_extractable: Option<bool>,
    local: Option<bool>,
}

impl Attrs {
    fn read(&mut self, attrs: Vec<Attribute>) {
        for a in attrs {
            match a {
                Attribute::KeyType(t) => self.key_type = Some(t),
                Attribute::Label(l) => self.label = Some(String::from_utf8_lossy(&l).into_owned()),
                Attribute::ValueLen(n) => self.value_len = Some(usize::from(n)),
                Attribute::EcParams(p) => self.ec_params = Some(p),
                Attribute::EcPoint(p) => self.ec_point = Some(p),
                Attribute::Modulus(m) => self.modulus = Some(m),
                Attribute::PublicExponent(e) => self.exponent = Some(e),
                Attribute::Sensitive(b) => self.sensitive = Some(b),
                Attribute::Extractable(b) => self.extractable = Some(b),
                Attribute::NeverExtractable(b) => self.never_extractable = Some(b),
                Attribute::Local(b) => self.local = Some(b),
                _ => {}
            }
        }
    }

    fn algorithm(
        &self,
        key_type: KeyType,
        configured: Option<Algorithm>,
    ) -> Result<Algorithm, Fail> {
        let algorithm = match key_type {
            KeyType::AES => match self.value_len {
                Some(32) => Algorithm::Aes256Gcm,
                other => {
                    return Err(unusable(format!(
                        "an AES key of {} bytes: the sidecar's AES algorithm is aes-256-gcm (32-byte keys)",
                        other.map_or("unknown".into(), |n| n.to_string())
                    )));
                }
            },
            KeyType::GENERIC_SECRET | KeyType::SHA256_HMAC => Algorithm::HmacSha256,
            KeyType::EC => match self.ec_params.as_deref() {
                Some(P256) => Algorithm::EcdsaP256Sha256,
                Some(P384) => Algorithm::EcdsaP384Sha384,
                Some(P521) => Algorithm::EcdsaP521Sha512,
                _ => {
                    return Err(unusable(
                        "an EC key on a curve other than P-256, P-384 and P-521",
                    ));
                }
            },
            KeyType::EC_EDWARDS => match self.ec_params.as_deref() {
                Some(ED25519_OID | ED25519_NAME) => Algorithm::Ed25519,
                _ => return Err(unusable("an Edwards key on a curve other than Ed25519")),
            },
            KeyType::RSA => {
                let bits = self
                    .modulus
                    .as_deref()
                    .map(|n| n.iter().skip_while(|b| **b == 0).count() * 8)
                    .and_then(|b| u16::try_from(b).ok())
                    .ok_or_else(|| unusable("an RSA key whose modulus the token does not show"))?;
                match configured {
                    Some(Algorithm::RsaPkcs1Sha256 { .. }) => Algorithm::RsaPkcs1Sha256 { bits },
                    _ => Algorithm::RsaPssSha256 { bits },
                }
            }
            other => {
                return Err(unusable(format!(
                    "a {other} key, which the sidecar does not use"
                )));
            }
        };
        Ok(algorithm)
    }

    fn spki(&self, algorithm: Algorithm) -> Result<Vec<u8>, Fail> {
        let missing = || {
            unusable(
                "a signing key without its public key object (same CKA_LABEL and CKA_ID): the sidecar needs it for the public key and verification",
            )
        };
        let spki = match algorithm {
            Algorithm::RsaPssSha256 { .. } | Algorithm::RsaPkcs1Sha256 { .. } => {
                crypto::spki_of_rsa(
                    self.modulus.as_deref().ok_or_else(missing)?,
                    self.exponent.as_deref().ok_or_else(missing)?,
                )
            }
            _ => {
                let point = self.ec_point.as_deref().ok_or_else(missing)?;
                crypto::spki_of_point(algorithm, unwrap_point(algorithm, point))
            }
        };
        spki.ok_or_else(|| unusable("a public key object whose key does not parse"))
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the point; some tokens give
/// the bare point.
fn unwrap_point(algorithm: Algorithm, value: &[u8]) -> &[u8] {
    let bare = match algorithm.ecdsa_coordinate_len() {
        Some(n) => 1 + 2 * n,
        None => 32,
    };
    if value.len() == bare {
        return value;
    }
    match value {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        other => other,
    }
}

/// The attributes every object of a version has: on the token, its label
/// and `CKA_ID`, and for secret and private keys sensitive, private and
/// not extractable.
fn version_template(label: &str, id: &[u8], private: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if private {
        t.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ]);
    }
    t
}

/// Makes the next version of `key` on the token: a new object (a key pair
/// for signing keys) with the same label and key parameters, the next
/// `CKA_ID`, sensitive and not extractable. Returns the new id.
pub(super) fn generate_next(
    session: &Session,
    label: &str,
    key: &TokenKey,
) -> Result<Vec<u8>, Fail> {
    let current = key.current();
    let id = next_id(&current.id);
    let common = |private: bool| version_template(label, &id, private);
    let params = session.get_attributes(
        current.handle,
        &[
            AttributeType::EcParams,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let mut a = Attrs::default();
    a.read(params);
    match key.algorithm {
        Algorithm::Aes256Gcm | Algorithm::HmacSha256 => {
            let (mechanism, mut t) = if key.algorithm == Algorithm::Aes256Gcm {
                (
                    Mechanism::AesKeyGen,
                    vec![Attribute::Encrypt(true), Attribute::Decrypt(true)],
                )
            } else {
                (
                    Mechanism::GenericSecretKeyGen,
                    vec![
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::Sign(true),
                        Attribute::Verify(true),
                    ],
                )
            };
            t.push(Attribute::ValueLen(32.into()));
            t.extend(common(true));
            session.generate_key(&mechanism, &t)?;
        }
        Algorithm::RsaPssSha256 { bits } | Algorithm::RsaPkcs1Sha256 { bits } => {
            let exponent = a.exponent.clone().unwrap_or_else(|| vec![0x01, 0x00, 0x01]);
            let mut public = vec![
                Attribute::ModulusBits(u64::from(bits).into()),
                Attribute::PublicExponent(exponent),
                Attribute::Verify(true),
            ];
            public.extend(common(false));
            let mut private = vec![Attribute::Sign(true)];
            private.extend(common(true));
            session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        }
        _ => {
            let mechanism = if key.algorithm == Algorithm::Ed25519 {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            };
            let params = a.ec_params.clone().ok_or_else(|| {
                unusable("the current version's CKA_EC_PARAMS cannot be read, so no next version can be made like it")
            })?;
            let mut public = vec![Attribute::EcParams(params), Attribute::Verify(true)];
            public.extend(common(false));
            let mut private = vec![Attribute::Sign(true)];
            private.extend(common(true));
            session.generate_key_pair(&mechanism, &public, &private)?;
        }
    }
    Ok(id)
}

/// A token ciphertext: `0x01 ‖ id length (1) ‖ CKA_ID ‖ IV (12) ‖ AES-GCM
/// ciphertext ‖ tag (16)`. The AAD is everything before the IV followed by
/// the canonical context, so neither the version nor the context can be
/// swapped.
pub(super) const FORMAT: u8 = 1;
pub(super) const IV_LEN: usize = 12;
pub(super) const TAG_LEN: usize = 16;

/// The header (format, id) of a ciphertext of version `id`.
pub(super) fn header(id: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(2 + id.len());
    h.push(FORMAT);
    h.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    h.extend_from_slice(id);
    h
}

/// The parts of a token ciphertext.
pub(super) struct Parts<'a> {
    /// Format and id: the start of the AAD.
    pub header: &'a [u8],
    /// The version's `CKA_ID`.
    pub id: &'a [u8],
    pub iv: &'a [u8],
    /// Ciphertext and tag.
    pub sealed: &'a [u8],
}

/// Splits a ciphertext into its parts; `None` for anything not made here.
pub(super) fn split(ciphertext: &[u8]) -> Option<Parts<'_>> {
    let [FORMAT, len, rest @ ..] = ciphertext else {
        return None;
    };
    let len = usize::from(*len);
    if rest.len() < len + IV_LEN + TAG_LEN {
        return None;
    }
    let (id, rest) = rest.split_at(len);
    let (iv, sealed) = rest.split_at(IV_LEN);
    Some(Parts {
        header: &ciphertext[..2 + len],
        id,
        iv,
        sealed,
    })
}

/// Whether an error of `C_Verify` means "not this signature".
pub(super) fn invalid_signature(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            cryptoki::error::RvError::SignatureInvalid
                | cryptoki::error::RvError::SignatureLenRange,
            _
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_grow() {
        assert_eq!(next_id(&[0x01]), vec![0x02]);
        assert_eq!(next_id(&[0x00, 0xff]), vec![0x01, 0x00]);
        assert_eq!(next_id(&[0xff]), vec![0x01, 0x00]);
        let mut ids = vec![vec![0x02], vec![0x01, 0x00], vec![0x00, 0x03], vec![0x01]];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(
            ids,
            vec![vec![0x01], vec![0x02], vec![0x00, 0x03], vec![0x01, 0x00]]
        );
    }

    #[test]
    fn ciphertexts_split_or_refuse() {
        let mut ct = header(&[0xab, 0xcd]);
        ct.extend([7u8; IV_LEN]);
        ct.extend([9u8; TAG_LEN + 3]);
        let parts = split(&ct).expect("splits");
        assert_eq!(parts.header, &[FORMAT, 2, 0xab, 0xcd]);
        assert_eq!(parts.id, &[0xab, 0xcd]);
        assert_eq!(parts.iv, &[7u8; IV_LEN]);
        assert_eq!(parts.sealed.len(), TAG_LEN + 3);
        assert!(split(&ct[..ct.len() - 4]).is_none());
        assert!(split(&[2, 0]).is_none());
        assert!(split(&[]).is_none());
    }

    #[test]
    fn points_unwrap() {
        let point = [4u8; 65];
        assert_eq!(unwrap_point(Algorithm::EcdsaP256Sha256, &point), &point);
        let mut der = vec![0x04, 65];
        der.extend(point);
        assert_eq!(unwrap_point(Algorithm::EcdsaP256Sha256, &der), &point);
        let mut der = vec![0x04, 32];
        der.extend([1u8; 32]);
        assert_eq!(unwrap_point(Algorithm::Ed25519, &der), &[1u8; 32]);
        let mut der = vec![0x04, 0x81, 97];
        der.extend([4u8; 97]);
        assert_eq!(unwrap_point(Algorithm::EcdsaP384Sha384, &der), &[4u8; 97]);
    }
}
