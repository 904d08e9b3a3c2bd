//! Key Vault keys as the sidecar sees them: which algorithm a JSON Web Key
//! is, its public key as SubjectPublicKeyInfo, the sidecar's ciphertext
//! format (Key Vault's ciphertexts carry neither the key version nor the
//! GCM IV and tag), and how a context is bound where the algorithm has no
//! associated data.

use crate::backend::{Error, ErrorKind, KeyRef};
use crate::crypto::Algorithm;
use aws_lc_rs::digest;
use azure_security_keyvault_keys::models::{CurveName, EncryptionAlgorithm, JsonWebKey, KeyType};

/// A key reference: `name` (latest version) or `name/version` (pinned).
pub(super) fn split_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once('/') {
        Some((name, version)) if !version.is_empty() => (name, Some(version)),
        Some((name, _)) => (name, None),
        None => (id, None),
    }
}

/// The version named by a key id (`https://…/keys/NAME/VERSION`).
pub(super) fn version_of_kid(kid: &str) -> Option<&str> {
    name_and_version_of_kid(kid).map(|(_, version)| version)
}

/// The key name and version named by a key id
/// (`https://…/keys/NAME/VERSION`).
pub(super) fn name_and_version_of_kid(kid: &str) -> Option<(&str, &str)> {
    let mut parts = kid.trim_end_matches('/').rsplit('/');
    let version = parts.next()?;
    let name = parts.next()?;
    (parts.next() == Some("keys")).then_some((name, version))
}

/// The sidecar's algorithm for a Key Vault key: EC keys by curve; RSA keys
/// by `configured` (`keys.*.algorithm`), else sign (PSS) when the key may
/// sign, else encrypt (RSA-OAEP-256); `oct-HSM` keys are AES-256-GCM.
pub(super) fn algorithm_of(
    key: KeyRef<'_>,
    jwk: &JsonWebKey,
    configured: Option<Algorithm>,
) -> Result<Algorithm, Error> {
    let unsupported = |what: String| {
        Error::unsupported(format!(
            "key `{}` is {what}, which kms-sidecar does not support on Azure (EC P-256/P-384/P-521, RSA 2048/3072/4096, oct-HSM 256)",
            key.alias
        ))
    };
    let found = match jwk.kty.as_ref() {
        Some(KeyType::Ec | KeyType::EcHsm) => match jwk.crv.as_ref() {
            Some(CurveName::P256) => Algorithm::EcdsaP256Sha256,
            Some(CurveName::P384) => Algorithm::EcdsaP384Sha384,
            Some(CurveName::P521) => Algorithm::EcdsaP521Sha512,
            other => return Err(unsupported(format!("an EC key on curve {other:?}"))),
        },
        Some(KeyType::Rsa | KeyType::RsaHsm) => {
            let bits =
                rsa_bits(jwk).ok_or_else(|| super::errors::malformed("RSA key without `n`"))?;
            if !matches!(bits, 2048 | 3072 | 4096) {
                return Err(unsupported(format!("a {bits}-bit RSA key")));
            }
            match configured {
                Some(
                    a @ (Algorithm::RsaPssSha256 { bits: b }
                    | Algorithm::RsaPkcs1Sha256 { bits: b }
                    | Algorithm::RsaOaepSha256 { bits: b }),
                ) if b == bits => a,
                _ if may(jwk, "sign") => Algorithm::RsaPssSha256 { bits },
                _ => Algorithm::RsaOaepSha256 { bits },
            }
        }
        Some(KeyType::OctHsm | KeyType::Oct) => Algorithm::Aes256Gcm,
        other => return Err(unsupported(format!("a key of type {other:?}"))),
    };
    match configured {
        Some(want) if want != found => Err(Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "key `{}` is configured as {want}, but the Key Vault key is {found}",
                key.alias
            ),
        )),
        _ => Ok(found),
    }
}

/// Whether the key's `key_ops` allow `op` (all ops when Key Vault omits them).
fn may(jwk: &JsonWebKey, op: &str) -> bool {
    jwk.key_ops
        .as_ref()
        .is_none_or(|ops| ops.iter().any(|o| o == op))
}

fn rsa_bits(jwk: &JsonWebKey) -> Option<u16> {
    let n = jwk.n.as_deref()?;
    let skip = n.iter().take_while(|b| **b == 0).count();
    u16::try_from((n.len() - skip) * 8).ok()
}

/// The public key of an EC or RSA JWK as SubjectPublicKeyInfo DER.
pub(super) fn spki_of(jwk: &JsonWebKey, algorithm: Algorithm) -> Result<Vec<u8>, Error> {
    let bad = || super::errors::malformed("a public key that does not parse");
    match algorithm {
        Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384 | Algorithm::EcdsaP521Sha512 => {
            let n = algorithm.ecdsa_coordinate_len().ok_or_else(bad)?;
            let (x, y) = (
                jwk.x.as_deref().ok_or_else(bad)?,
                jwk.y.as_deref().ok_or_else(bad)?,
            );
            if x.len() > n || y.len() > n {
                return Err(bad());
            }
            // The uncompressed point 0x04 ‖ x ‖ y, coordinates left-padded.
            let mut point = vec![0u8; 1 + 2 * n];
            point[0] = 4;
            point[1 + n - x.len()..=n].copy_from_slice(x);
            point[1 + 2 * n - y.len()..].copy_from_slice(y);
            crate::crypto::spki_of_point(algorithm, &point).ok_or_else(bad)
        }
        Algorithm::RsaPssSha256 { .. }
        | Algorithm::RsaPkcs1Sha256 { .. }
        | Algorithm::RsaOaepSha256 { .. } => crate::crypto::spki_of_rsa(
            jwk.n.as_deref().ok_or_else(bad)?,
            jwk.e.as_deref().ok_or_else(bad)?,
        )
        .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// The digest Key Vault signs for `algorithm` (it signs digests only).
pub(super) fn digest_of(algorithm: Algorithm, message: &[u8]) -> Option<digest::Digest> {
    Some(digest::digest(algorithm.digest()?, message))
}

/// How a ciphertext was made, its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Made {
    /// `encrypt`, RSA-OAEP-256, the context bound as a prefix.
    RsaEncrypt = 1,
    /// `wrapKey`, RSA-OAEP-256, the context bound as a prefix (data keys).
    RsaWrap = 2,
    /// `encrypt`, A256GCM with the context as AAD (Managed HSM `oct-HSM`).
    AesGcm = 3,
    /// `wrapKey`, A256KW, the context bound as a prefix (Managed HSM data
    /// keys).
    AesWrap = 4,
}

impl Made {
    fn of(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Made::RsaEncrypt,
            2 => Made::RsaWrap,
            3 => Made::AesGcm,
            4 => Made::AesWrap,
            _ => return None,
        })
    }

    /// Key Vault's algorithm for it.
    pub(super) fn algorithm(self) -> EncryptionAlgorithm {
        match self {
            Made::RsaEncrypt | Made::RsaWrap => EncryptionAlgorithm::RsaOaep256,
            Made::AesGcm => EncryptionAlgorithm::A256Gcm,
            Made::AesWrap => EncryptionAlgorithm::A256Kw,
        }
    }

    /// Whether Key Vault's `unwrapKey` (not `decrypt`) opens it.
    pub(super) fn wrapped(self) -> bool {
        matches!(self, Made::RsaWrap | Made::AesWrap)
    }

    /// Whether the context is bound as a prefix of the plaintext.
    pub(super) fn prefixed(self) -> bool {
        self != Made::AesGcm
    }
}

const GCM_IV: usize = 12;
const GCM_TAG: usize = 16;

/// The sidecar's Azure ciphertext: `made` (1 byte), the version's length
/// (1 byte) and the version, for `AesGcm` the IV (12) and tag (16), then
/// Key Vault's ciphertext.
pub(super) struct Blob<'a> {
    pub made: Made,
    pub version: &'a str,
    pub iv: &'a [u8],
    pub tag: &'a [u8],
    pub ciphertext: &'a [u8],
}

impl<'a> Blob<'a> {
    pub(super) fn seal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.version.len() + 28 + self.ciphertext.len());
        out.push(self.made as u8);
        out.push(self.version.len() as u8);
        out.extend_from_slice(self.version.as_bytes());
        if self.made == Made::AesGcm {
            out.extend_from_slice(self.iv);
            out.extend_from_slice(self.tag);
        }
        out.extend_from_slice(self.ciphertext);
        out
    }

    /// Parses a blob; anything else is the one opaque decryption failure.
    pub(super) fn open(bytes: &'a [u8]) -> Result<Self, Error> {
        let fail = Error::decryption_failed;
        let (&made, rest) = bytes.split_first().ok_or_else(fail)?;
        let made = Made::of(made).ok_or_else(fail)?;
        let (&len, rest) = rest.split_first().ok_or_else(fail)?;
        let (version, rest) = rest.split_at_checked(usize::from(len)).ok_or_else(fail)?;
        let version = std::str::from_utf8(version).map_err(|_| fail())?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fail());
        }
        let (iv, tag, ciphertext) = if made == Made::AesGcm {
            let (iv, rest) = rest.split_at_checked(GCM_IV).ok_or_else(fail)?;
            let (tag, rest) = rest.split_at_checked(GCM_TAG).ok_or_else(fail)?;
            (iv, tag, rest)
        } else {
            (&[][..], &[][..], rest)
        };
        if ciphertext.is_empty() {
            return Err(fail());
        }
        Ok(Blob {
            made,
            version,
            iv,
            tag,
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_refuse_garbage() {
        for made in [Made::RsaEncrypt, Made::RsaWrap, Made::AesGcm, Made::AesWrap] {
            let blob = Blob {
                made,
                version: "0123abcd",
                iv: &[7; GCM_IV],
                tag: &[9; GCM_TAG],
                ciphertext: b"sealed",
            };
            let bytes = blob.seal();
            let open = Blob::open(&bytes).expect("opens");
            assert_eq!(
                (open.made, open.version, open.ciphertext),
                (made, "0123abcd", &b"sealed"[..])
            );
        }
        for garbage in [
            &b""[..],
            b"\x09\x01a1",
            b"\x01\x05ab",
            b"\x01\x02a/x",
            b"\x03\x01a",
        ] {
            let e = Blob::open(garbage).err().expect("refused");
            assert_eq!(e.kind, ErrorKind::DecryptionFailed);
        }
    }

    #[test]
    fn ids_and_kids() {
        assert_eq!(split_id("k"), ("k", None));
        assert_eq!(split_id("k/abc"), ("k", Some("abc")));
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/k/0a1b"),
            Some("0a1b")
        );
        assert_eq!(version_of_kid("https://v.vault.azure.net/secrets"), None);
        assert_eq!(
            name_and_version_of_kid("https://v.vault.azure.net/keys/k/0a1b"),
            Some(("k", "0a1b"))
        );
    }
}
