//! Transit's signatures: `sign` and `verify` (of a signature, or of an
//! HMAC), with transit's hash, padding and marshaling parameters.

use super::crypt::sha256_only;
use super::keys::transit_type;
use super::versioned;
use super::{Shown, items, missing, request};
use crate::api::transit::{TransitItem, TransitRequest};
use crate::api::{self, ApiError, B64, Code, VersionArg};
use crate::crypto::{self, Algorithm, SignatureFormat};
use crate::policy::Op;
use crate::server::reply::Reply;
use crate::service::{Grant, Service};
use zeroize::Zeroizing;

/// How a request asks to sign: the algorithm (the hash must be the key's,
/// RSA's padding is `signature_algorithm`), the encoding, and whether the
/// input is a digest.
#[derive(Clone, Copy)]
struct Signing {
    algorithm: Algorithm,
    jws: bool,
    prehashed: bool,
}

impl Signing {
    async fn of(
        grant: &Grant<'_>,
        hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Self, ApiError> {
        let key = grant.entry.algorithm().await?;
        let hash = hash.or(req.hash_algorithm.as_deref()).unwrap_or("sha2-256");
        let expected = match key {
            Algorithm::EcdsaP384Sha384 => Some("sha2-384"),
            Algorithm::EcdsaP521Sha512 => Some("sha2-512"),
            // Ed25519 hashes inside the algorithm; transit ignores the hash.
            Algorithm::Ed25519 => None,
            _ => Some("sha2-256"),
        };
        if let Some(expected) = expected.filter(|e| *e != hash) {
            return Err(ApiError::invalid(format!(
                "unsupported hash algorithm `{hash}` for key `{}`: kms-sidecar signs this key's {} with {expected}",
                grant.alias,
                transit_type(key)
            )));
        }
        let padding = req.signature_algorithm.as_deref().unwrap_or("pss");
        let algorithm = match key {
            Algorithm::RsaPssSha256 { bits } | Algorithm::RsaPkcs1Sha256 { bits } => {
                match padding {
                    "pss" => Algorithm::RsaPssSha256 { bits },
                    "pkcs1v15" => Algorithm::RsaPkcs1Sha256 { bits },
                    other => {
                        return Err(ApiError::invalid(format!(
                            "unsupported signature algorithm `{other}`: use pss or pkcs1v15"
                        )));
                    }
                }
            }
            other => other,
        };
        let jws = match req.marshaling_algorithm.as_deref().unwrap_or("asn1") {
            "asn1" => false,
            "jws" => true,
            other => {
                return Err(ApiError::invalid(format!(
                    "unsupported marshaling algorithm `{other}`: use asn1 or jws"
                )));
            }
        };
        if req
            .salt_length
            .as_deref()
            .is_some_and(|s| !matches!(s, "auto" | "hash"))
        {
            return Err(ApiError::invalid(
                "field `salt_length`: kms-sidecar's PSS salt is the hash's length (`hash`)",
            ));
        }
        Ok(Self {
            algorithm,
            jws,
            prehashed: req.prehashed.is_some_and(|p| p.0),
        })
    }

    /// An item's input as a message or a digest.
    fn input(self, input: B64) -> (Option<B64>, Option<B64>) {
        if self.prehashed {
            (None, Some(input))
        } else {
            (Some(input), None)
        }
    }

    fn format(self) -> SignatureFormat {
        if self.jws {
            SignatureFormat::Raw
        } else {
            SignatureFormat::Der
        }
    }
}

/// `sign/{name}(/{hash_algorithm})`.
pub(in crate::server) async fn sign(
    svc: &Service,
    grant: &Grant<'_>,
    hash: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    let signing = Signing::of(grant, hash, &req).await?;
    items(svc, grant, req, |item| async move {
        let input = item.input.ok_or_else(|| missing("input", "sign"))?;
        let (message, digest) = signing.input(input);
        let request = api::SignRequest {
            message,
            digest,
            algorithm: Some(signing.algorithm),
            format: Some(signing.format()),
        };
        let r = svc.sign(grant, request).await?;
        let item = TransitItem {
            signature: Some(shown.text(r.signature.0, &r.version, signing.jws)),
            key_version: Some(shown.number(&r.version)),
            ..TransitItem::default()
        };
        Ok((item, r.version))
    })
    .await
}

/// The grant of `op` on `grant`'s key for the same caller (a `verify` of
/// a signature or of an HMAC).
fn regrant<'g>(svc: &'g Service, grant: &Grant<'g>, op: Op) -> Result<Grant<'g>, ApiError> {
    if grant.op == op {
        return Ok(*grant);
    }
    svc.authorize(&grant.caller, grant.alias, op)
}

/// `verify/{name}(/{hash_algorithm})`: a `signature` (op `verify`) or an
/// `hmac` (op `mac`).
pub(in crate::server) async fn verify(
    svc: &Service,
    grant: &Grant<'_>,
    hash: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    let signing = match shown.meta.algorithm.purpose() {
        crypto::Purpose::Sign => Some(Signing::of(grant, hash, &req).await?),
        _ => None,
    };
    let hmac_hash = (hash
        .or(req.hash_algorithm.as_deref())
        .or(req.algorithm.as_deref()))
    .map(str::to_owned);
    let hmac_hash = hmac_hash.as_deref();
    items(svc, grant, req, |item| async move {
        let input = item.input.ok_or_else(|| missing("input", "verify"))?;
        let valid = match (item.signature, item.hmac, signing) {
            (Some(text), None, Some(signing)) => {
                let grant = regrant(svc, grant, Op::Verify)?;
                let (number, signature) = versioned(&text, signing.jws).ok_or_else(|| {
                    ApiError::invalid("invalid signature: not `vault:v<N>:<base64>`")
                })?;
                let (message, digest) = signing.input(input);
                let request = api::VerifyRequest {
                    message,
                    digest,
                    signature: B64(Zeroizing::new(signature)),
                    version: Some(VersionArg(shown.version(number)?)),
                    algorithm: Some(signing.algorithm),
                    format: Some(signing.format()),
                };
                svc.verify(&grant, request).await?
            }
            (None, Some(text), _) => {
                sha256_only(hmac_hash)?;
                let grant = regrant(svc, grant, Op::Mac)?;
                let (number, mac) = versioned(&text, false)
                    .ok_or_else(|| ApiError::invalid("invalid HMAC: not `vault:v<N>:<base64>`"))?;
                let request = api::VerifyMacRequest {
                    message: input,
                    mac: B64(Zeroizing::new(mac)),
                    version: Some(VersionArg(shown.version(number)?)),
                };
                svc.verify_mac(&grant, request).await?
            }
            (Some(_), None, None) => {
                return Err(ApiError::new(
                    Code::OperationNotSupported,
                    format!("key `{}` does not sign: verify an `hmac`", grant.alias),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "send one of `signature` and `hmac` to verify",
                ));
            }
        };
        let item = TransitItem {
            valid: Some(valid.valid),
            ..TransitItem::default()
        };
        Ok((item, valid.version))
    })
    .await
}
