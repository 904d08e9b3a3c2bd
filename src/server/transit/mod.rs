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
//!
//! [`crypt`]: encrypt, decrypt, rewrap, datakey, hmac; [`sign`]: sign and
//! verify; [`keys`]: read, rotate, list; [`vault`]: what clients ask of
//! Vault itself, and the unsupported paths.

mod crypt;
mod keys;
mod sign;
mod vault;

pub(super) use crypt::{datakey, decrypt, encrypt, hmac, rewrap};
pub(super) use keys::{list_keys, read_key, rotate};
pub(super) use sign::{sign, verify};
pub(super) use vault::{health, seal_status, token_lookup, unsupported};

use super::endpoints::{self, Path};
use super::reply::{Reply, json_body};
use super::route::Route;
use crate::api::transit::{Text, TransitItem, TransitRequest, vault_answer};
use crate::api::{self, ApiError, BatchItem, JsonObject, parse_json};
use crate::backend::{Context, KeyMetadata};
use crate::service::{Grant, Service};
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
    if let Some(under) = rest.strip_prefix(mount) {
        let under = match under {
            "" => "",
            under => under.strip_prefix('/')?,
        };
        let route = transit_route(under).unwrap_or(Route {
            endpoint: endpoints::find(Path::Transit(UNSUPPORTED))?,
            key: None,
            param: None,
        });
        return Some(route);
    }
    // The mount is neither (config validation): API v1's paths are not
    // looked for among Vault's.
    if !(rest.starts_with("sys/") || rest.starts_with("auth/")) {
        return None;
    }
    Some(Route {
        endpoint: endpoints::find(Path::Vault(rest))?,
        key: None,
        param: None,
    })
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

/// A transit answer of one item; `version`: the key version for the
/// audit log.
fn answer(item: &TransitItem, version: Option<String>) -> Reply {
    let body = envelope("transit", item.binary_len(), |o| {
        o.object("data", |data| item.write(data))
    });
    let mut reply = json_body(StatusCode::OK, body);
    reply.version = version;
    reply
}

/// Vault's envelope around `data` (any other answer) of a mount of
/// `mount_type`.
fn answer_with<T: serde::Serialize>(mount_type: &'static str, data: &T) -> Reply {
    json_body(
        StatusCode::OK,
        envelope(mount_type, 0, |o| o.value("data", data)),
    )
}

/// Vault's envelope; `data` writes the field `data`.
fn envelope(
    mount_type: &'static str,
    binary: usize,
    data: impl FnOnce(JsonObject) -> JsonObject,
) -> Vec<u8> {
    let id = crate::telemetry::request_id();
    vault_answer(id.as_deref().unwrap_or_default(), mount_type, binary, data)
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
            base64_simd::STANDARD.decode_to_vec(value).map_err(|_| {
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
    fn ciphertext_text(&self, ciphertext: Vec<u8>, version: &str) -> Text {
        match self.grant.entry.backend.transit_text(&ciphertext) {
            Some(text) => Text::Transit(text),
            None => Text::versioned(self.number(version), ciphertext),
        }
    }

    /// An answer of encrypt or rewrap as its item, with its version.
    fn sealed(&self, r: api::EncryptResponse) -> (TransitItem, String) {
        let item = TransitItem {
            ciphertext: Some(self.ciphertext_text(r.ciphertext.0, &r.version)),
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
    fn text(&self, bytes: Vec<u8>, version: &str, jws: bool) -> Text {
        Text::Versioned {
            number: self.number(version),
            bytes,
            url: jws,
        }
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
        (base64_simd::URL_SAFE_NO_PAD)
            .decode_to_vec(payload.trim_end_matches('='))
            .ok()?
    } else {
        base64_simd::STANDARD.decode_to_vec(payload).ok()?
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
        return Ok(answer(&item, Some(version)));
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
    let batch_results: Vec<TransitItem> = batch_results;
    let binary = batch_results.iter().map(TransitItem::binary_len).sum();
    let body = envelope("transit", binary, |o| {
        o.object("data", |data| {
            data.objects("batch_results", &batch_results, |o, item| item.write(o))
        })
    });
    Ok(json_body(status, body))
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
