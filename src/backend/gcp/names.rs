//! Cloud KMS's names: its algorithms as the sidecar's, and the version
//! number in a CryptoKeyVersion's resource name.

use crate::crypto::Algorithm;

/// The number at the end of a CryptoKeyVersion's resource name.
pub(super) fn version_number(name: &str) -> Option<&str> {
    name.rsplit_once("/cryptoKeyVersions/").map(|(_, n)| n)
}

/// The sidecar's algorithm for a Cloud KMS one.
pub(super) fn algorithm_of(gcp: &str) -> Option<Algorithm> {
    let rsa_bits = |rest: &str| -> Option<u16> {
        let bits = rest.strip_suffix("_SHA256")?.parse().ok()?;
        matches!(bits, 2048 | 3072 | 4096).then_some(bits)
    };
    Some(match gcp {
        "GOOGLE_SYMMETRIC_ENCRYPTION" => Algorithm::Aes256Gcm,
        "EC_SIGN_P256_SHA256" => Algorithm::EcdsaP256Sha256,
        "EC_SIGN_P384_SHA384" => Algorithm::EcdsaP384Sha384,
        "EC_SIGN_ED25519" => Algorithm::Ed25519,
        "HMAC_SHA256" => Algorithm::HmacSha256,
        other => {
            if let Some(rest) = other.strip_prefix("RSA_SIGN_PSS_") {
                Algorithm::RsaPssSha256 {
                    bits: rsa_bits(rest)?,
                }
            } else if let Some(rest) = other.strip_prefix("RSA_SIGN_PKCS1_") {
                Algorithm::RsaPkcs1Sha256 {
                    bits: rsa_bits(rest)?,
                }
            } else if let Some(rest) = other.strip_prefix("RSA_DECRYPT_OAEP_") {
                Algorithm::RsaOaepSha256 {
                    bits: rsa_bits(rest)?,
                }
            } else {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_and_versions() {
        assert_eq!(
            algorithm_of("RSA_SIGN_PSS_3072_SHA256"),
            Some(Algorithm::RsaPssSha256 { bits: 3072 })
        );
        assert_eq!(
            algorithm_of("RSA_DECRYPT_OAEP_2048_SHA256"),
            Some(Algorithm::RsaOaepSha256 { bits: 2048 })
        );
        assert_eq!(algorithm_of("RSA_SIGN_PSS_4096_SHA512"), None);
        assert_eq!(algorithm_of("RSA_DECRYPT_OAEP_2048_SHA1"), None);
        assert_eq!(algorithm_of("EC_SIGN_SECP256K1_SHA256"), None);
        assert_eq!(
            version_number("projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/7"),
            Some("7")
        );
    }
}
