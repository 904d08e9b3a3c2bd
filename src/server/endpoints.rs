//! Every endpoint of the API, declared once in [`ENDPOINTS`]: its path,
//! method, `op` label (metrics, logs, audit log), who may call it, how it
//! takes its body, whether it streams, and the function that answers it.
//! [`super::routes::Routes`] runs every request through one pipeline from
//! that declaration:
//!
//! caller → rules → rate limit → replay guard → body → service → audit → answer
//!
//! What each kind of endpoint goes through, decided once per request from
//! the path and the peer credentials, before a byte of its body is read:
//!
//! | kind | listeners | rules | rate limit | audit | replay guard |
//! |---|---|---|---|---|---|
//! | `probe!` | socket and probe listener | none, or [`OnSocket`] | no | no | no |
//! | `caller!` | socket | none, or a rule granting an op on any key | yes | yes | no |
//! | `key!` | socket | the op on the key named in the path | yes (a batch: one token per item) | yes, and refused while the audit log is down | the key's `replay_guard` |
//!
//! # Adding an endpoint
//!
//! One line in [`ENDPOINTS`] plus the function that answers:
//!
//! - under a key (`/v1/keys/{name}/...`): `key!(POST "path", "label", Op,
//!   Json, method)` with `Service::method(&self, &Grant, Request) ->
//!   Result<impl api::Answer, ApiError>` (`Input::None`: a GET,
//!   `Service::method(&self, &Grant)`; `Batch`: `{"items": [...]}`);
//! - for any caller: `caller!(GET "v1/path", "label", method)` with
//!   `Service::method(&self, &Caller) -> impl api::Answer`, or
//!   `caller!(POST "v1/path", "label", check, method)` with a JSON request,
//!   where `Service::check(&self, &Caller)` refuses before the body;
//! - a probe: `probe!("path", "label", OnSocket::..., function)` with
//!   `async fn function(&Routes, on_socket: bool) -> Reply` in `probes`.
//!
//! The label is counted in metrics from the start (`route::labels`), the
//! 405 for another method, the 403 before the body, the audit record and
//! the request metrics come from the pipeline.

use super::probes;
use super::reply::{Reply, json, ok};
use super::routes::Routes;
use super::transit;
use crate::api::{self, ApiError, parse_json};
use crate::policy::{Caller, Op};
use crate::service::{Grant, Service};
use futures_util::future::BoxFuture;
use http::{Method, StatusCode};

/// Where an endpoint is, relative to the API's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path<'a> {
    /// This path (without its leading `/`).
    Fixed(&'a str),
    /// This path after `/v1/keys/{name}` (`""`: the key itself).
    Key(&'a str),
    /// Vault's path after `/v1/` (`sys/health`), served while
    /// `compat.vault_transit` is on.
    Vault(&'a str),
    /// This transit path after `/v1/<mount>/` (`encrypt/{name}`, with the
    /// key's place as `{name}`), while `compat.vault_transit` is on.
    Transit(&'a str),
}

/// The API an endpoint belongs to: its errors' shape and the methods it
/// takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    /// API v1: `{"error": {...}}`.
    Ours,
    /// Vault's (`compat.vault_transit`): `{"errors": [...]}`; a POST is also
    /// a PUT, a GET also a LIST.
    Vault,
}

/// How an endpoint takes its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Input {
    /// None (a GET).
    None,
    /// A JSON object.
    Json,
    /// A JSON batch (`{"items": [...]}`): one rate-limit token per item.
    Batch,
}

/// What an endpoint does with an `application/octet-stream` body: the
/// streamed envelopes (constant memory, any size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Streamed {
    Encrypt,
    Decrypt,
    Rewrap,
}

/// A check that a caller may call an endpoint at all, made before its body
/// is read (`Service::may_read_metrics`, `Service::may_verify_jwts`).
pub(super) type Check = fn(&Service, &Caller) -> Result<(), ApiError>;

/// Who may call a probe on the socket (on the probe listener: anyone).
#[derive(Clone, Copy)]
pub(super) enum OnSocket {
    Anyone,
    /// Callers `Check` lets through.
    Checked(Check),
    /// Nobody: a 404 with this message.
    NotHere(&'static str),
}

/// A probe's answer; `bool`: asked on the socket (not the probe listener).
pub(super) type ProbeFn = for<'a> fn(&'a Routes, bool) -> BoxFuture<'a, Reply>;
/// A caller endpoint's answer: the caller and the body read whole.
pub(super) type CallerFn =
    for<'a> fn(&'a Service, &'a Caller, &'a [u8]) -> BoxFuture<'a, Result<Reply, ApiError>>;
/// A key endpoint's answer: the grant, the path's parameter after the key
/// (transit's `sign/{name}/{hash}`) and the body read whole.
pub(super) type KeyFn = for<'a> fn(
    &'a Service,
    &'a Grant<'a>,
    Option<&'a str>,
    &'a [u8],
) -> BoxFuture<'a, Result<Reply, ApiError>>;

/// Who may call an endpoint (the kinds of the table above) and what
/// answers it.
#[derive(Clone, Copy)]
pub(super) enum Serve {
    Probe(OnSocket, ProbeFn),
    /// `Some(check)`: the callers it lets through; else any caller (the
    /// answer is what its rules grant).
    Caller(Option<Check>, CallerFn),
    /// Callers granted the first `Op` on the key named in the path (or
    /// the second, when there is one: transit's `verify` checks signatures
    /// and HMACs, and the body says which).
    Key(Op, Option<Op>, KeyFn),
}

/// One endpoint.
pub(super) struct Endpoint {
    pub path: Path<'static>,
    pub method: Method,
    /// The `op` label of metrics, logs and the audit log.
    pub label: &'static str,
    pub input: Input,
    pub streamed: Option<Streamed>,
    pub serve: Serve,
    pub dialect: Dialect,
}

impl Endpoint {
    /// A probe: served on the probe listener too, in a span of its own,
    /// neither audited nor rate-limited.
    pub(super) fn is_probe(&self) -> bool {
        matches!(self.serve, Serve::Probe(..))
    }

    /// Whether `method` is this endpoint's: Vault's clients write with PUT
    /// or POST and list with LIST (or GET); a transit path no endpoint
    /// serves is unsupported whatever the method.
    pub(super) fn takes(&self, method: &Method) -> bool {
        *method == self.method
            || self.path == Path::Transit(transit::UNSUPPORTED)
            || self.dialect == Dialect::Vault
                && (self.method == Method::POST && *method == Method::PUT
                    || self.method == Method::GET && method.as_str() == "LIST")
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label)
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label
    }
}

impl Eq for Endpoint {}

/// A probe answered by `probes::$answer`.
macro_rules! probe {
    ($path:literal, $label:literal, $on_socket:expr, $answer:ident) => {
        Endpoint {
            path: Path::Fixed($path),
            method: Method::GET,
            label: $label,
            input: Input::None,
            streamed: None,
            serve: Serve::Probe($on_socket, |r, socket| Box::pin(probes::$answer(r, socket))),
            dialect: Dialect::Ours,
        }
    };
}

/// An endpoint for callers: a GET answered by `Service::$call(caller)`, or
/// a POST of JSON that `Service::$check` lets through, answered by
/// `Service::$call(caller, request)`.
macro_rules! caller {
    (GET $path:literal, $label:literal, $call:ident) => {
        Endpoint {
            path: Path::Fixed($path),
            method: Method::GET,
            label: $label,
            input: Input::None,
            streamed: None,
            serve: Serve::Caller(None, |s, c, _| {
                Box::pin(async move { Ok(json(StatusCode::OK, &s.$call(c).await)) })
            }),
            dialect: Dialect::Ours,
        }
    };
    (POST $path:literal, $label:literal, $check:ident, $call:ident) => {
        Endpoint {
            path: Path::Fixed($path),
            method: Method::POST,
            label: $label,
            input: Input::Json,
            streamed: None,
            serve: Serve::Caller(Some(Service::$check), |s, c, body| {
                Box::pin(async move { ok(s.$call(c, parse_json(body)?).await) })
            }),
            dialect: Dialect::Ours,
        }
    };
}

/// A key endpoint: a POST of JSON (or a batch, or a stream) answered by
/// `Service::$call(grant, request)`, a POST of an empty object (`{}` or
/// nothing) or a GET answered by `Service::$call(grant)`.
macro_rules! key {
    (POST $path:literal, $label:literal, $op:ident, $input:ident, $call:ident) => {
        key!(POST $path, $label, $op, $input, None, $call)
    };
    (POST $path:literal, $label:literal, $op:ident, $input:ident, $streamed:expr, $call:ident) => {
        Endpoint {
            path: Path::Key($path),
            method: Method::POST,
            label: $label,
            input: Input::$input,
            streamed: $streamed,
            serve: Serve::Key(Op::$op, None, |s, g, _, body| {
                Box::pin(async move { ok(s.$call(g, parse_json(body)?).await) })
            }),
            dialect: Dialect::Ours,
        }
    };
    (POST $path:literal, $label:literal, $op:ident, $call:ident) => {
        Endpoint {
            path: Path::Key($path),
            method: Method::POST,
            label: $label,
            input: Input::Json,
            streamed: None,
            serve: Serve::Key(Op::$op, None, |s, g, _, body| {
                Box::pin(async move {
                    let api::RotateRequest {} = parse_json(body)?;
                    ok(s.$call(g).await)
                })
            }),
            dialect: Dialect::Ours,
        }
    };
    (GET $path:literal, $label:literal, $op:ident, $call:ident) => {
        Endpoint {
            path: Path::Key($path),
            method: Method::GET,
            label: $label,
            input: Input::None,
            streamed: None,
            serve: Serve::Key(Op::$op, None, |s, g, _, _| Box::pin(async move { ok(s.$call(g).await) })),
            dialect: Dialect::Ours,
        }
    };
}

/// A transit endpoint on a key (`compat.vault_transit`): `$op` (or `$also`)
/// on it, answered by `transit::$answer(service, grant, parameter, body)`.
macro_rules! transit {
    ($method:ident $path:literal, $label:literal, $op:ident $(or $also:ident)?, $input:ident, $answer:ident) => {
        Endpoint {
            path: Path::Transit($path),
            method: Method::$method,
            label: $label,
            input: Input::$input,
            streamed: None,
            serve: Serve::Key(Op::$op, transit!(@also $($also)?), |s, g, p, body| {
                Box::pin(transit::$answer(s, g, p, body))
            }),
            dialect: Dialect::Vault,
        }
    };
    (@also) => { None };
    (@also $also:ident) => { Some(Op::$also) };
}

/// A Vault endpoint for any caller, or a probe (`compat.vault_transit`).
macro_rules! vault {
    (GET $path:expr, $label:literal, caller $answer:ident) => {
        Endpoint {
            path: $path,
            method: Method::GET,
            label: $label,
            input: Input::None,
            streamed: None,
            serve: Serve::Caller(None, |s, c, _| Box::pin(transit::$answer(s, c))),
            dialect: Dialect::Vault,
        }
    };
    (GET $path:expr, $label:literal, probe $answer:ident) => {
        Endpoint {
            path: $path,
            method: Method::GET,
            label: $label,
            input: Input::None,
            streamed: None,
            serve: Serve::Probe(OnSocket::Anyone, |r, _| Box::pin(transit::$answer(r))),
            dialect: Dialect::Vault,
        }
    };
}

/// The message of `/.well-known/jwks.json` on the socket.
const PUBLIC_JWKS_ELSEWHERE: &str =
    "`/.well-known/jwks.json` is served on the probe listener (jwks.public); use GET /v1/jwks here";

/// Every endpoint.
#[rustfmt::skip]
pub(super) static ENDPOINTS: [Endpoint; 42] = [
    probe!("healthz", "healthz", OnSocket::Anyone, healthz),
    probe!("readyz", "readyz", OnSocket::Anyone, readyz),
    probe!("metrics", "metrics", OnSocket::Checked(Service::may_read_metrics), metrics),
    probe!(".well-known/jwks.json", "public_jwks", OnSocket::NotHere(PUBLIC_JWKS_ELSEWHERE), public_jwks),
    caller!(GET "v1/keys", "list_keys", list_keys),
    caller!(GET "v1/jwks", "jwks", jwks),
    // The key is named inside the token: a caller no rule grants `verify`
    // is refused before its body is read.
    caller!(POST "v1/jwt/verify", "jwt_verify", may_verify_jwts, jwt_verify),
    key!(GET "", "metadata", Metadata, metadata),
    key!(GET "public-key", "public_key", PublicKey, public_key),
    key!(POST "sign", "sign", Sign, Json, sign),
    key!(POST "sign-batch", "sign_batch", Sign, Batch, sign_batch),
    key!(POST "verify", "verify", Verify, Json, verify),
    key!(POST "encrypt", "encrypt", Encrypt, Json, encrypt),
    key!(POST "decrypt", "decrypt", Decrypt, Json, decrypt),
    key!(POST "encrypt-batch", "encrypt_batch", Encrypt, Batch, encrypt_batch),
    key!(POST "decrypt-batch", "decrypt_batch", Decrypt, Batch, decrypt_batch),
    key!(POST "rewrap", "rewrap", Rewrap, Json, rewrap),
    key!(POST "datakey", "datakey", Datakey, Json, datakey),
    key!(POST "mac", "mac", Mac, Json, mac),
    key!(POST "verify-mac", "verify_mac", Mac, Json, verify_mac),
    key!(POST "jwt", "jwt", Sign, Json, jwt),
    key!(POST "rotate", "rotate", Rotate, rotate),
    key!(POST "flush", "flush", Flush, flush),
    key!(POST "envelope/encrypt", "envelope_encrypt", Envelope, Json, Some(Streamed::Encrypt), envelope_encrypt),
    key!(POST "envelope/decrypt", "envelope_decrypt", Envelope, Json, Some(Streamed::Decrypt), envelope_decrypt),
    key!(POST "envelope/rewrap", "envelope_rewrap", Rewrap, Json, Some(Streamed::Rewrap), envelope_rewrap),
    key!(POST "envelope/encrypt-batch", "envelope_encrypt_batch", Envelope, Batch, envelope_encrypt_batch),
    key!(POST "envelope/decrypt-batch", "envelope_decrypt_batch", Envelope, Batch, envelope_decrypt_batch),
    // Vault's transit API (`compat.vault_transit`, `transit`).
    transit!(POST "encrypt/{name}", "transit_encrypt", Encrypt, Batch, encrypt),
    transit!(POST "decrypt/{name}", "transit_decrypt", Decrypt, Batch, decrypt),
    transit!(POST "rewrap/{name}", "transit_rewrap", Rewrap, Batch, rewrap),
    transit!(POST "datakey/{type}/{name}", "transit_datakey", Datakey, Json, datakey),
    transit!(POST "sign/{name}", "transit_sign", Sign, Batch, sign),
    // A signature (`verify`) or an HMAC (`mac`): the body says which.
    transit!(POST "verify/{name}", "transit_verify", Verify or Mac, Batch, verify),
    transit!(POST "hmac/{name}", "transit_hmac", Mac, Batch, hmac),
    transit!(GET "keys/{name}", "transit_read_key", Metadata, None, read_key),
    transit!(POST "keys/{name}/rotate", "transit_rotate", Rotate, Json, rotate),
    vault!(GET Path::Transit("keys"), "transit_list_keys", caller list_keys),
    // Every other path under the mount: Vault's "unsupported path", whatever the method.
    vault!(GET Path::Transit(transit::UNSUPPORTED), "transit_unsupported", caller unsupported),
    vault!(GET Path::Vault("auth/token/lookup-self"), "vault_token_lookup", caller token_lookup),
    vault!(GET Path::Vault("sys/health"), "vault_health", probe health),
    vault!(GET Path::Vault("sys/seal-status"), "vault_seal_status", probe seal_status),
];

/// The endpoint at `path`.
pub(super) fn find(path: Path<'_>) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_labels_are_unique() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            for other in &ENDPOINTS[i + 1..] {
                assert_ne!(e.path, other.path);
                assert_ne!(e.label, other.label);
            }
            assert_eq!(find(e.path).map(|f| f.label), Some(e.label));
            assert_ne!(e.label, "unknown");
        }
    }

    #[test]
    fn only_key_endpoints_stream_or_take_batches() {
        for e in &ENDPOINTS {
            let key = matches!(e.serve, Serve::Key(..));
            let names_a_key = match e.path {
                Path::Key(_) => true,
                Path::Transit(p) => p.contains("{name}"),
                _ => false,
            };
            assert_eq!(key, names_a_key, "{}", e.label);
            assert_eq!(
                e.dialect == Dialect::Vault,
                matches!(e.path, Path::Transit(_) | Path::Vault(_)),
                "{}",
                e.label
            );
            if !key {
                assert!(
                    e.streamed.is_none() && e.input != Input::Batch,
                    "{}",
                    e.label
                );
            }
            assert_eq!(
                e.input == Input::None,
                e.method == Method::GET,
                "{}",
                e.label
            );
        }
    }
}
