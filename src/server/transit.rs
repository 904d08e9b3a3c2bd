//! Vault's transit API on the socket (`compat.vault_transit`, SPEC §13):
//! apps written for Vault's clients change `VAULT_ADDR` only. Each transit
//! path is an endpoint of [`super::endpoints`] (Vault dialect), so the
//! caller rules (checked before the body), rate limits, replay guard,
//! audit log and metrics are API v1's; this module translates Vault's
//! requests into the service's operations and their answers back.
//!
//! What maps to what:
//!
//! - a transit key name is a key alias; `encrypt` is op `encrypt`,
//!   `datakey` op `datakey`, `hmac` op `mac`, `verify` op `verify` for a
//!   signature and `mac` for an HMAC, `keys/{name}` op `metadata` (public
//!   keys when `public-key` is granted too), `keys/{name}/rotate` op
//!   `rotate`; `LIST keys` the keys the caller may use;
//! - versions are `vault:vN:` numbers: a backend's own numbers where they
//!   are numbers, else the version's place among the key's versions;
//! - ciphertexts are the KMS's own transit text where the KMS is transit
//!   ([`crate::backend::Backend::transit_text`]), else `vault:vN:` and the
//!   base64 of the sidecar's ciphertext; signatures and HMACs are
//!   `vault:vN:` and their base64 (base64url for `marshaling_algorithm=jws`);
//! - `associated_data` is the encryption context `{"associated_data": …}`
//!   (its base64 as sent), `context` of a derived key `{"context": …}`;
//! - `X-Vault-Token` is not read: the caller is the peer.

use super::endpoints::{self, Path};
use super::reply::{Reply, json};
use super::route::Route;
use super::routes::Routes;
use crate::api::transit::{Secret, TransitBatch, TransitItem, TransitRequest, VaultAnswer};
use crate::api::{self, ApiError, B64, BatchItem, Code, VersionArg, b64, parse_json};
use crate::backend::{Context, KeyMetadata};
use crate::crypto::{self, Algorithm, SignatureFormat};
use crate::policy::{Caller, Op};
use crate::service::{Grant, Service};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::StatusCode;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The path pattern of every transit path no endpoint serves.
pub(super) const UNSUPPORTED: &str = "*";

/// The route of `path` (without its leading `/`) under Vault's API with
/// transit at `mount`, if it is one: Vault's own paths (`v1/sys/health`)
/// and every path under `v1/<mount>/` (Vault's "unsupported path" where no
/// endpoint serves it).
pub(super) fn route<'a>(path: &'a str, mount: &str) -> Option<Route<'a>> {
    let rest = path.strip_prefix("v1/")?;
    if let Some(endpoint) = endpoints::find(Path::Vault(rest)) {
        return Some(Route {
            endpoint,
            key: None,
            param: None,
        });
    }
    let rest = match rest.strip_prefix(mount)? {
        "" => "",
        under => under.strip_prefix('/')?,
    };
    let route = transit_route(rest).unwrap_or(Route {
        endpoint: endpoints::find(Path::Transit(UNSUPPORTED))?,
        key: None,
        param: None,
    });
    Some(route)
}

/// A transit path after the mount.
fn transit_route(rest: &str) -> Option<Route<'_>> {
    let one = |s: &str| !s.is_empty() && !s.contains('/');
    let (op, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (pattern, key, param) = match op {
        "encrypt" => ("encrypt/{name}", rest, None),
        "decrypt" => ("decrypt/{name}", rest, None),
        "rewrap" => ("rewrap/{name}", rest, None),
        "datakey" => {
            let (kind, name) = rest.split_once('/')?;
            ("datakey/{type}/{name}", name, Some(kind))
        }
        "sign" | "verify" | "hmac" => {
            let (name, param) = match rest.split_once('/') {
                Some((name, param)) => (name, Some(param)),
                None => (rest, None),
            };
            let pattern = match op {
                "sign" => "sign/{name}",
                "verify" => "verify/{name}",
                _ => "hmac/{name}",
            };
            (pattern, name, param)
        }
        "keys" => match rest.split_once('/') {
            None if rest.is_empty() => {
                return Some(Route {
                    endpoint: endpoints::find(Path::Transit("keys"))?,
                    key: None,
                    param: None,
                });
            }
            None => ("keys/{name}", rest, None),
            Some((name, "rotate")) => ("keys/{name}/rotate", name, None),
            Some(_) => return None,
        },
        _ => return None,
    };
    if !one(key) || param.is_some_and(|p| !one(p)) {
        return None;
    }
    Some(Route {
        endpoint: endpoints::find(Path::Transit(pattern))?,
        key: Some(key),
        param,
    })
}

/// A transit answer: Vault's envelope around `data`; `version`: the key
/// version for the audit log.
fn answer<T: serde::Serialize>(status: StatusCode, data: T, version: Option<String>) -> Reply {
    let mut reply = vault_answer(status, "transit", data);
    reply.version = version;
    reply
}

/// Vault's envelope around `data` of a mount of `mount_type`.
fn vault_answer<T: serde::Serialize>(
    status: StatusCode,
    mount_type: &'static str,
    data: T,
) -> Reply {
    let id = crate::telemetry::request_id();
    json(
        status,
        &VaultAnswer::new(id.as_deref().unwrap_or_default(), mount_type, data),
    )
}

/// A key as transit shows it: its versions as numbers, its ciphertexts as
/// text, whether it derives.
struct Shown<'g> {
    grant: &'g Grant<'g>,
    meta: Arc<KeyMetadata>,
}

impl<'g> Shown<'g> {
    async fn of(grant: &'g Grant<'g>) -> Result<Self, ApiError> {
        Ok(Self {
            grant,
            meta: grant.entry.metadata().await?,
        })
    }

    /// Whether the backend's versions are numbers (transit, Cloud KMS,
    /// local keys, PKCS#11), shown as they are.
    fn numbered(&self) -> bool {
        (self.meta.versions.iter()).all(|v| v.version.parse::<u32>().is_ok_and(|n| n > 0))
    }

    /// The `vault:vN:` number of `version`.
    fn number(&self, version: &str) -> u32 {
        if self.numbered() {
            return version.parse().unwrap_or(0);
        }
        let place = self.meta.versions.iter().position(|v| v.version == version);
        // A version newer than the cached metadata: the next number.
        place.unwrap_or(self.meta.versions.len()) as u32 + 1
    }

    /// The version numbered `number`.
    fn version(&self, number: u32) -> Result<String, ApiError> {
        let unknown = || {
            ApiError::invalid(format!(
                "key `{}` has no version {number}",
                self.grant.alias
            ))
        };
        if self.numbered() {
            return (number > 0).then(|| number.to_string()).ok_or_else(unknown);
        }
        let place = (number as usize).checked_sub(1).ok_or_else(unknown)?;
        let v = self.meta.versions.get(place).ok_or_else(unknown)?;
        Ok(v.version.clone())
    }

    fn derived(&self) -> bool {
        self.meta
            .details
            .get("derived")
            .is_some_and(|d| d == "true")
    }

    /// The encryption context of an item's `associated_data` and `context`.
    fn context(&self, item: &TransitRequest) -> Result<Context, ApiError> {
        let mut context = Context::new();
        let mut bind = |field: &str, value: Option<&String>| {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                return Ok(());
            };
            STANDARD.decode(value).map_err(|_| {
                ApiError::invalid(format!("field `{field}`: is not valid standard base64"))
            })?;
            context.insert(field.to_owned(), value.clone());
            Ok::<_, ApiError>(())
        };
        bind("associated_data", item.associated_data.as_ref())?;
        if item.context.as_ref().is_some_and(|c| !c.is_empty()) && !self.derived() {
            return Err(ApiError::invalid(format!(
                "key `{}` is not a derived key: `context` derives a key from a transit key made with `derived=true`, which this key's backend does not do; bind data to a ciphertext with `associated_data`",
                self.grant.alias
            )));
        }
        bind("context", item.context.as_ref())?;
        Ok(context)
    }

    /// A ciphertext as transit text.
    fn ciphertext_text(&self, ciphertext: &[u8], version: &str) -> String {
        (self.grant.entry.backend.transit_text(ciphertext))
            .unwrap_or_else(|| format!("vault:v{}:{}", self.number(version), b64(ciphertext)))
    }

    /// An answer of encrypt or rewrap as its item, with its version.
    fn sealed(&self, r: api::EncryptResponse) -> (TransitItem, String) {
        let item = TransitItem {
            ciphertext: Some(self.ciphertext_text(&r.ciphertext.0, &r.version)),
            key_version: Some(self.number(&r.version)),
            ..TransitItem::default()
        };
        (item, r.version)
    }

    /// The ciphertext of transit text.
    fn ciphertext(&self, text: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        let bad = || {
            ApiError::invalid(
                "field `ciphertext`: is not a transit ciphertext (`vault:v<N>:<base64>`)",
            )
        };
        if let Some(bytes) = self.grant.entry.backend.transit_ciphertext(text) {
            return bytes.map(Zeroizing::new).map_err(|_| bad());
        }
        let (_, bytes) = versioned(text, false).ok_or_else(bad)?;
        Ok(Zeroizing::new(bytes))
    }

    /// `vault:vN:` and the base64 (`jws`: base64url) of `bytes`.
    fn text(&self, bytes: &[u8], version: &str, jws: bool) -> String {
        let encoded = if jws {
            URL_SAFE_NO_PAD.encode(bytes)
        } else {
            b64(bytes)
        };
        format!("vault:v{}:{encoded}", self.number(version))
    }

    /// `key_version` in an encrypt, sign or HMAC request: only the latest
    /// (the sidecar always uses the current version).
    fn latest_only(&self, req: &TransitRequest) -> Result<(), ApiError> {
        let latest = self.number(&self.meta.current_version);
        match req.key_version.map(|v| v.0) {
            None | Some(0) => Ok(()),
            Some(v) if v == u64::from(latest) => Ok(()),
            Some(v) => Err(ApiError::invalid(format!(
                "field `key_version`: {v} is not the latest version of key `{}` ({latest}); kms-sidecar encrypts, signs and makes HMACs with the latest",
                self.grant.alias
            ))),
        }
    }
}

/// `vault:vN:payload` → (N, the payload decoded from base64, or base64url
/// for `jws`).
fn versioned(text: &str, jws: bool) -> Option<(u32, Vec<u8>)> {
    let (number, payload) = text.strip_prefix("vault:v")?.split_once(':')?;
    let bytes = if jws {
        URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?
    } else {
        STANDARD.decode(payload).ok()?
    };
    Some((number.parse().ok()?, bytes))
}

/// The request's one item, or each of its `batch_input`, through `each`:
/// a single answer, or `batch_results` in order with each item's error its
/// own (400 when any failed, or `partial_failure_response_code` when some
/// did, as Vault answers).
async fn items<F, Fut>(
    svc: &Service,
    grant: &Grant<'_>,
    mut req: TransitRequest,
    each: F,
) -> Result<Reply, ApiError>
where
    F: FnMut(TransitRequest) -> Fut,
    Fut: std::future::Future<Output = Result<(TransitItem, String), ApiError>>,
{
    let mut each = each;
    let Some(batch) = req.batch_input.take() else {
        let (item, version) = each(req).await?;
        return Ok(answer(StatusCode::OK, item, Some(version)));
    };
    let references: Vec<Option<String>> = batch.iter().map(|i| i.reference.clone()).collect();
    let done = svc.batch(&grant.caller, batch, each).await?;
    let total = done.items.len();
    let mut failed = 0;
    let batch_results = (done.items.into_iter().zip(references))
        .map(|(result, reference)| match result {
            BatchItem::Done((item, _)) => TransitItem {
                reference: Some(reference.unwrap_or_default()),
                ..item
            },
            BatchItem::Failed { error } => {
                failed += 1;
                TransitItem {
                    error: Some(error.message),
                    reference: Some(reference.unwrap_or_default()),
                    ..TransitItem::default()
                }
            }
        })
        .collect();
    let partial = req.partial_failure_response_code.map(|c| c.0);
    let status = match failed {
        0 => StatusCode::OK,
        f if f < total => (partial.and_then(|c| u16::try_from(c).ok()))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::BAD_REQUEST,
    };
    Ok(answer(status, TransitBatch { batch_results }, None))
}

/// A transit request body: JSON, where `null` is `{}` (the body of an
/// empty write of Go's client and of the CLI's `-force`).
fn request(body: &[u8]) -> Result<TransitRequest, ApiError> {
    if body.trim_ascii() == b"null" {
        return Ok(TransitRequest::default());
    }
    parse_json(body)
}

fn missing(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("missing `{field}` to {what}"))
}

pub(super) async fn encrypt(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let plaintext = item
            .plaintext
            .ok_or_else(|| missing("plaintext", "encrypt"))?;
        let r = svc
            .encrypt(grant, api::EncryptRequest { plaintext, context })
            .await?;
        Ok(shown.sealed(r))
    })
    .await
}

pub(super) async fn decrypt(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let text = item
            .ciphertext
            .ok_or_else(|| missing("ciphertext", "decrypt"))?;
        let ciphertext = B64(shown.ciphertext(&text)?);
        let r = svc
            .decrypt(
                grant,
                api::DecryptRequest {
                    ciphertext,
                    context,
                },
            )
            .await?;
        let version = text
            .strip_prefix("vault:v")
            .and_then(|rest| rest.split_once(':'))
            .map(|(n, _)| n.to_owned());
        let item = TransitItem {
            plaintext: Some(Secret(Zeroizing::new(b64(&r.plaintext.0)))),
            ..TransitItem::default()
        };
        Ok((item, version.unwrap_or_default()))
    })
    .await
}

pub(super) async fn rewrap(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let text = item
            .ciphertext
            .ok_or_else(|| missing("ciphertext", "rewrap"))?;
        let ciphertext = B64(shown.ciphertext(&text)?);
        let r = svc
            .rewrap(
                grant,
                api::RewrapRequest {
                    ciphertext,
                    context,
                },
            )
            .await?;
        // Numbered after the rotation that made the version, not before.
        Ok(Shown::of(shown.grant).await?.sealed(r))
    })
    .await
}

/// `datakey/{plaintext|wrapped}/{name}`.
pub(super) async fn datakey(
    svc: &Service,
    grant: &Grant<'_>,
    kind: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let with_plaintext = match kind {
        Some("plaintext") => true,
        Some("wrapped") => false,
        _ => {
            return Err(ApiError::invalid(
                "invalid type: the path is datakey/plaintext/{name} or datakey/wrapped/{name}",
            ));
        }
    };
    let req = request(body)?;
    let shown = Shown::of(grant).await?;
    let context = shown.context(&req)?;
    let bits = match req.bits.map(|b| b.0) {
        None => 256,
        Some(b) => u32::try_from(b).unwrap_or(u32::MAX),
    };
    let r = svc
        .datakey(grant, api::DataKeyRequest { context, bits })
        .await?;
    let encrypted = STANDARD
        .decode(&r.encrypted_key)
        .map_err(|_| ApiError::new(Code::Internal, "a data key came back unreadable"))?;
    let item = TransitItem {
        ciphertext: Some(shown.ciphertext_text(&encrypted, &r.version)),
        plaintext: with_plaintext.then(|| Secret(r.plaintext_key.clone())),
        key_version: Some(shown.number(&r.version)),
        ..TransitItem::default()
    };
    Ok(answer(StatusCode::OK, item, Some(r.version.clone())))
}

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
pub(super) async fn sign(
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
            signature: Some(shown.text(&r.signature.0, &r.version, signing.jws)),
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
pub(super) async fn verify(
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

/// HMAC-SHA-256 is the only HMAC of kms-sidecar's keys.
fn sha256_only(hash: Option<&str>) -> Result<(), ApiError> {
    match hash.unwrap_or("sha2-256") {
        "sha2-256" => Ok(()),
        other => Err(ApiError::invalid(format!(
            "unsupported algorithm `{other}`: kms-sidecar's HMACs are sha2-256"
        ))),
    }
}

/// `hmac/{name}(/{algorithm})`.
pub(super) async fn hmac(
    svc: &Service,
    grant: &Grant<'_>,
    algorithm: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    sha256_only(
        algorithm
            .or(req.algorithm.as_deref())
            .or(req.hash_algorithm.as_deref()),
    )?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let message = item
            .input
            .ok_or_else(|| missing("input", "make an HMAC of"))?;
        let r = svc.mac(grant, api::MacRequest { message }).await?;
        let item = TransitItem {
            hmac: Some(format!("vault:v{}:{}", shown.number(&r.version), r.mac)),
            ..TransitItem::default()
        };
        Ok((item, r.version))
    })
    .await
}

/// `GET keys/{name}`.
pub(super) async fn read_key(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    _: &[u8],
) -> Result<Reply, ApiError> {
    let data = key_data(svc, grant).await?;
    Ok(answer(StatusCode::OK, data, None))
}

/// `POST keys/{name}/rotate`: answered with the key, as Vault does.
pub(super) async fn rotate(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    request(body)?;
    let rotated = svc.rotate(grant).await?;
    let data = key_data(svc, grant).await?;
    Ok(answer(StatusCode::OK, data, Some(rotated.version)))
}

/// Transit's name of a key type.
fn transit_type(algorithm: Algorithm) -> String {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ecdsa-p256".into(),
        Algorithm::EcdsaP384Sha384 => "ecdsa-p384".into(),
        Algorithm::EcdsaP521Sha512 => "ecdsa-p521".into(),
        Algorithm::Ed25519 => "ed25519".into(),
        Algorithm::RsaPssSha256 { bits }
        | Algorithm::RsaPkcs1Sha256 { bits }
        | Algorithm::RsaOaepSha256 { bits } => format!("rsa-{bits}"),
        Algorithm::Aes256Gcm => "aes256-gcm96".into(),
        Algorithm::HmacSha256 => "hmac".into(),
    }
}

/// What `GET keys/{name}` answers: the key's type, versions and abilities;
/// each version's public key when the caller may read public keys.
async fn key_data(svc: &Service, grant: &Grant<'_>) -> Result<serde_json::Value, ApiError> {
    let shown = Shown::of(grant).await?;
    let m = &shown.meta;
    let purpose = m.algorithm.purpose();
    let asymmetric =
        purpose == crypto::Purpose::Sign || matches!(m.algorithm, Algorithm::RsaOaepSha256 { .. });
    let public = asymmetric
        && svc
            .authorize(&grant.caller, grant.alias, Op::PublicKey)
            .is_ok();
    let mut keys = serde_json::Map::new();
    for v in &m.versions {
        let created = v.created.unwrap_or(std::time::UNIX_EPOCH);
        let at = created
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let shown_version = if asymmetric {
            let pem = match public {
                true => grant.entry.public_key(Some(&v.version)).await.ok(),
                false => None,
            };
            serde_json::json!({
                "name": transit_type(m.algorithm),
                "certificate_chain": "",
                "public_key": pem.map(|pk| crypto::public_key_pem(&pk.spki_der)).unwrap_or_default(),
                "creation_time": humantime::format_rfc3339_seconds(created).to_string(),
            })
        } else {
            at.into()
        };
        keys.insert(shown.number(&v.version).to_string(), shown_version);
    }
    let min_decryption =
        (m.versions.iter().find(|v| v.enabled)).map_or(1, |v| shown.number(&v.version));
    let period = grant.entry.rotation_period.or(m.rotation_period);
    Ok(serde_json::json!({
        "name": grant.alias,
        "type": transit_type(m.algorithm),
        "keys": keys,
        "latest_version": shown.number(&m.current_version),
        "min_available_version": 0,
        "min_decryption_version": min_decryption,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "derived": shown.derived(),
        "exportable": false,
        "allow_plaintext_backup": false,
        "imported_key": m.origin == crate::backend::Origin::External,
        "soft_deleted": false,
        "auto_rotate_period": period.map_or(0, |p| p.as_secs()),
        "supports_encryption": purpose == crypto::Purpose::Encrypt,
        "supports_decryption": purpose == crypto::Purpose::Encrypt,
        "supports_derivation": shown.derived(),
        "supports_signing": purpose == crypto::Purpose::Sign,
    }))
}

/// `LIST keys`: the keys the caller may use (404 when none, as Vault).
pub(super) async fn list_keys(svc: &Service, caller: &Caller) -> Result<Reply, ApiError> {
    let names: Vec<String> = (svc.list_keys(caller).await.keys.into_iter())
        .map(|k| k.name)
        .collect();
    if names.is_empty() {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &api::transit::VaultErrors { errors: vec![] },
        ));
    }
    Ok(answer(
        StatusCode::OK,
        serde_json::json!({ "keys": names }),
        None,
    ))
}

/// Any other path under the mount.
pub(super) async fn unsupported(_: &Service, _: &Caller) -> Result<Reply, ApiError> {
    Err(ApiError::new(
        Code::NotFound,
        "unsupported path: kms-sidecar serves transit's encrypt, decrypt, rewrap, datakey, sign, verify, hmac and keys (read, list, rotate); see docs/vault-transit.md",
    ))
}

/// `auth/token/lookup-self`, which clients call to check their token: the
/// caller is the peer, whatever token it sends.
pub(super) async fn token_lookup(_: &Service, caller: &Caller) -> Result<Reply, ApiError> {
    let data = serde_json::json!({
        "accessor": "",
        "creation_time": 0,
        "creation_ttl": 0,
        "display_name": format!("kms-sidecar-uid-{}", caller.uid),
        "entity_id": "",
        "expire_time": null,
        "explicit_max_ttl": 0,
        "id": "",
        "meta": { "uid": caller.uid.to_string() },
        "num_uses": 0,
        "orphan": true,
        "path": "",
        "policies": ["kms-sidecar"],
        "renewable": false,
        "ttl": 0,
        "type": "service",
    });
    Ok(vault_answer(StatusCode::OK, "token", data))
}

/// `sys/health`: 200 while the sidecar is ready, else 503 as a sealed
/// Vault answers.
pub(super) async fn health(routes: &Routes) -> Reply {
    let (ready, _) = routes.service().readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({
            "initialized": true,
            "sealed": !ready,
            "standby": false,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "version": concat!("kms-sidecar ", env!("CARGO_PKG_VERSION")),
            "cluster_name": "kms-sidecar",
            "cluster_id": "",
        }),
    )
}

/// `sys/seal-status`: sealed while the sidecar is not ready.
pub(super) async fn seal_status(routes: &Routes) -> Reply {
    let (ready, _) = routes.service().readiness().await;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "type": "shamir",
            "initialized": true,
            "sealed": !ready,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": concat!("kms-sidecar ", env!("CARGO_PKG_VERSION")),
            "build_date": "",
            "migration": false,
            "recovery_seal": false,
            "storage_type": "kms-sidecar",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str) -> Option<(&'static str, Option<&str>, Option<&str>)> {
        let r = route(path, "transit")?;
        Some((r.label(), r.key, r.param))
    }

    #[test]
    fn transit_paths_parse() {
        assert_eq!(
            parsed("v1/transit/encrypt/aes"),
            Some(("transit_encrypt", Some("aes"), None))
        );
        assert_eq!(
            parsed("v1/transit/sign/ec/sha2-256"),
            Some(("transit_sign", Some("ec"), Some("sha2-256")))
        );
        assert_eq!(
            parsed("v1/transit/datakey/wrapped/aes"),
            Some(("transit_datakey", Some("aes"), Some("wrapped")))
        );
        assert_eq!(
            parsed("v1/transit/keys/aes/rotate"),
            Some(("transit_rotate", Some("aes"), None))
        );
        assert_eq!(
            parsed("v1/transit/keys"),
            Some(("transit_list_keys", None, None))
        );
        assert_eq!(parsed("v1/sys/health"), Some(("vault_health", None, None)));
        for unsupported in [
            "v1/transit/export/encryption-key/aes",
            "v1/transit/encrypt/aes/more",
            "v1/transit/encrypt/",
            "v1/transit",
            "v1/transit/keys/aes/trim",
        ] {
            assert_eq!(
                parsed(unsupported),
                Some(("transit_unsupported", None, None)),
                "{unsupported}"
            );
        }
        assert_eq!(parsed("v1/transitx/encrypt/aes"), None);
        assert_eq!(parsed("v1/keys/aes/encrypt"), None);
        assert!(route("v1/kms/transit/encrypt/aes", "kms/transit").is_some());
    }

    #[test]
    fn versioned_values_read_back() {
        assert_eq!(versioned("vault:v3:AQI=", false), Some((3, vec![1, 2])));
        assert_eq!(versioned("vault:v3:AQI", true), Some((3, vec![1, 2])));
        assert_eq!(versioned("vault:vx:AQI=", false), None);
        assert_eq!(versioned("AQI=", false), None);
    }
}
