//! The key endpoints, each declared once: its path under
//! `/v1/keys/{name}/`, method, metrics label, the operation a caller needs
//! granted, how it takes its body, and the service function that answers.
//! The routes run every one through the same pipeline (rules → rate limit →
//! audit availability → replay guard → body → service → audit → answer);
//! adding an endpoint is one line here plus its service function.

use super::routes::{Reply, ok};
use crate::api::{self, ApiError, parse_json};
use crate::policy::Op;
use crate::service::{Grant, Service};
use futures_util::future::BoxFuture;
use http::Method;

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

/// The service call of an endpoint: the grant and the body read whole.
pub(super) type Serve =
    for<'a> fn(&'a Service, &'a Grant<'a>, &'a [u8]) -> BoxFuture<'a, Result<Reply, ApiError>>;

/// One key endpoint.
pub(super) struct Endpoint {
    /// The path after `/v1/keys/{name}`: `""` for the key itself.
    pub path: &'static str,
    pub method: Method,
    /// The `op` label of metrics, logs and the audit log.
    pub label: &'static str,
    /// What a caller needs granted on the key.
    pub op: Op,
    pub input: Input,
    pub streamed: Option<Streamed>,
    pub serve: Serve,
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

/// A JSON endpoint answered by `$call(grant, request)`.
macro_rules! json {
    ($path:literal, $label:literal, $op:ident, $input:ident, $call:ident) => {
        json!($path, $label, $op, $input, None, $call)
    };
    ($path:literal, $label:literal, $op:ident, $input:ident, $streamed:expr, $call:ident) => {
        Endpoint {
            path: $path,
            method: Method::POST,
            label: $label,
            op: Op::$op,
            input: Input::$input,
            streamed: $streamed,
            serve: |s, g, body| Box::pin(async move { ok(s.$call(g, parse_json(body)?).await) }),
        }
    };
}

/// An endpoint that takes no request but an empty object (`{}` or nothing).
macro_rules! empty {
    ($path:literal, $label:literal, $op:ident, $call:ident) => {
        Endpoint {
            path: $path,
            method: Method::POST,
            label: $label,
            op: Op::$op,
            input: Input::Json,
            streamed: None,
            serve: |s, g, body| {
                Box::pin(async move {
                    let api::RotateRequest {} = parse_json(body)?;
                    ok(s.$call(g).await)
                })
            },
        }
    };
}

/// A GET endpoint.
macro_rules! get {
    ($path:literal, $label:literal, $op:ident, $call:ident) => {
        Endpoint {
            path: $path,
            method: Method::GET,
            label: $label,
            op: Op::$op,
            input: Input::None,
            streamed: None,
            serve: |s, g, _| Box::pin(async move { ok(s.$call(g).await) }),
        }
    };
}

/// Every key endpoint.
pub(super) static KEY_ENDPOINTS: [Endpoint; 21] = [
    get!("", "metadata", Metadata, metadata),
    get!("public-key", "public_key", PublicKey, public_key),
    json!("sign", "sign", Sign, Json, sign),
    json!("sign-batch", "sign_batch", Sign, Batch, sign_batch),
    json!("verify", "verify", Verify, Json, verify),
    json!("encrypt", "encrypt", Encrypt, Json, encrypt),
    json!("decrypt", "decrypt", Decrypt, Json, decrypt),
    json!(
        "encrypt-batch",
        "encrypt_batch",
        Encrypt,
        Batch,
        encrypt_batch
    ),
    json!(
        "decrypt-batch",
        "decrypt_batch",
        Decrypt,
        Batch,
        decrypt_batch
    ),
    json!("rewrap", "rewrap", Rewrap, Json, rewrap),
    json!("datakey", "datakey", Datakey, Json, datakey),
    json!("mac", "mac", Mac, Json, mac),
    json!("verify-mac", "verify_mac", Mac, Json, verify_mac),
    json!("jwt", "jwt", Sign, Json, jwt),
    empty!("rotate", "rotate", Rotate, rotate),
    empty!("flush", "flush", Flush, flush),
    json!(
        "envelope/encrypt",
        "envelope_encrypt",
        Envelope,
        Json,
        Some(Streamed::Encrypt),
        envelope_encrypt
    ),
    json!(
        "envelope/decrypt",
        "envelope_decrypt",
        Envelope,
        Json,
        Some(Streamed::Decrypt),
        envelope_decrypt
    ),
    json!(
        "envelope/rewrap",
        "envelope_rewrap",
        Rewrap,
        Json,
        Some(Streamed::Rewrap),
        envelope_rewrap
    ),
    json!(
        "envelope/encrypt-batch",
        "envelope_encrypt_batch",
        Envelope,
        Batch,
        envelope_encrypt_batch
    ),
    json!(
        "envelope/decrypt-batch",
        "envelope_decrypt_batch",
        Envelope,
        Batch,
        envelope_decrypt_batch
    ),
];

/// The endpoint at `path` (after `/v1/keys/{name}`, without its slash).
pub(super) fn find(path: &str) -> Option<&'static Endpoint> {
    KEY_ENDPOINTS.iter().find(|e| e.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_labels_are_unique() {
        for (i, e) in KEY_ENDPOINTS.iter().enumerate() {
            for other in &KEY_ENDPOINTS[i + 1..] {
                assert_ne!(e.path, other.path);
                assert_ne!(e.label, other.label);
            }
            assert_eq!(find(e.path).map(|f| f.label), Some(e.label));
        }
    }
}
