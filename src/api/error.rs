//! The error body and its stable codes. The API edge maps every backend
//! error kind here with an exhaustive `match`, so a new kind forces a decision
//! about its code and status.

use crate::backend::{self, ErrorKind};
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Stable error codes (documented in `docs/api.md`, "Errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    KeyNotFound,
    NotFound,
    OperationNotSupported,
    PayloadTooLarge,
    DecryptionFailed,
    KeyDisabled,
    ReplayedRequest,
    RateLimited,
    AuditUnavailable,
    Overloaded,
    BackendError,
    BackendUnavailable,
    BackendTimeout,
    /// A bug: the request's task panicked. Answered and audited all the same.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::Unauthenticated => "unauthenticated",
            Code::Forbidden => "forbidden",
            Code::KeyNotFound => "key_not_found",
            Code::NotFound => "not_found",
            Code::OperationNotSupported => "operation_not_supported",
            Code::PayloadTooLarge => "payload_too_large",
            Code::DecryptionFailed => "decryption_failed",
            Code::KeyDisabled => "key_disabled",
            Code::ReplayedRequest => "replayed_request",
            Code::RateLimited => "rate_limited",
            Code::AuditUnavailable => "audit_unavailable",
            Code::Overloaded => "overloaded",
            Code::BackendError => "backend_error",
            Code::BackendUnavailable => "backend_unavailable",
            Code::BackendTimeout => "backend_timeout",
            Code::Internal => "internal_error",
        }
    }

    /// The status a code is answered with (`operation_not_supported` is 422
    /// for a key that cannot do the operation, 405 for a wrong HTTP method).
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::KeyNotFound | Code::NotFound => StatusCode::NOT_FOUND,
            Code::OperationNotSupported | Code::DecryptionFailed => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::ReplayedRequest | Code::KeyDisabled => StatusCode::CONFLICT,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::BackendError => StatusCode::BAD_GATEWAY,
            Code::AuditUnavailable | Code::Overloaded | Code::BackendUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as the caller sees it. The message helps fix the call and never
/// holds key material, plaintext, tokens or secrets.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    pub retryable: bool,
    /// Seconds for a `Retry-After` header (`rate_limited`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }

    /// A refusal worth retrying after `retry_after` seconds.
    pub fn retry_in(mut self, seconds: u64) -> Self {
        self.retryable = true;
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The JSON body: `{"error":{"code","message","retryable","request_id"}}`.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        serde_json::json!({"error": {
            "code": self.code.as_str(),
            "message": self.message,
            "retryable": self.retryable,
            "request_id": request_id,
        }})
    }
}

impl Code {
    /// The code of a backend error kind.
    pub fn of(kind: ErrorKind) -> Code {
        match kind {
            ErrorKind::InvalidRequest => Code::InvalidRequest,
            ErrorKind::KeyNotFound => Code::KeyNotFound,
            ErrorKind::OperationNotSupported => Code::OperationNotSupported,
            ErrorKind::PayloadTooLarge => Code::PayloadTooLarge,
            ErrorKind::DecryptionFailed => Code::DecryptionFailed,
            ErrorKind::KeyDisabled => Code::KeyDisabled,
            ErrorKind::Forbidden => Code::Forbidden,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Backend => Code::BackendError,
            ErrorKind::Unavailable | ErrorKind::Throttled => Code::BackendUnavailable,
            ErrorKind::Timeout => Code::BackendTimeout,
        }
    }
}

impl From<backend::Error> for ApiError {
    fn from(e: backend::Error) -> Self {
        let code = Code::of(e.kind);
        let error = Self {
            retryable: e.retryable,
            ..ApiError::new(code, e.message)
        };
        match e.retry_after {
            Some(wait) => error.retry_in(wait.as_secs_f64().ceil() as u64),
            None => error,
        }
    }
}

/// Deepest nesting of arrays and objects a request body may have (API
/// bodies need 3; serde_json alone would allow 128).
pub const MAX_JSON_DEPTH: usize = 16;

/// How many `items` (or `batch_input`) a batch body holds, if it is a JSON
/// object with such an array (the rest is checked when the body is parsed for real).
pub fn batch_len(body: &[u8]) -> Option<usize> {
    use memchr::memmem;
    use std::sync::LazyLock;
    #[derive(serde::Deserialize)]
    struct Items {
        items: Option<Vec<serde::de::IgnoredAny>>,
        /// Vault's transit API's name.
        batch_input: Option<Vec<serde::de::IgnoredAny>>,
    }
    // Most bodies of routes that take batches are single items (transit's):
    // they are not parsed twice.
    static ITEMS: LazyLock<[memmem::Finder<'static>; 2]> = LazyLock::new(|| {
        [
            memmem::Finder::new(b"\"items\""),
            memmem::Finder::new(b"\"batch_input\""),
        ]
    });
    let named = ITEMS.iter().any(|name| name.find(body).is_some());
    if !named || json_depth(body) > MAX_JSON_DEPTH {
        return None;
    }
    let b = serde_json::from_slice::<Items>(body).ok()?;
    let count = |v: Option<Vec<_>>| v.map(|v| v.len());
    match (count(b.items), count(b.batch_input)) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// Parses a JSON request body. An empty body reads as `{}`. Errors name the
/// field and why, without quoting the value that was sent.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    if json_depth(body) > MAX_JSON_DEPTH {
        return Err(ApiError::invalid(format!(
            "request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    // The usual case, a body that parses, without tracking the path: that
    // allocates every key it reads. A body that does not parse is read
    // again with the path, for the message.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(value) = T::deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            if path == "." {
                ApiError::invalid(format!("request body: {}", sanitize(&inner.to_string())))
            } else {
                ApiError::invalid(format!("field `{path}`: {}", sanitize(&inner.to_string())))
            }
        } else {
            ApiError::invalid(format!("request body is not valid JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The deepest nesting of `[` and `{` outside strings, in one pass (the
/// parser rejects malformed JSON afterwards). String contents — base64
/// payloads, most of a body — are skipped with `memchr` to the next quote
/// or backslash.
fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < body.len() {
        match body[i] {
            b'"' => {
                // To the closing quote, past escapes.
                i += 1;
                loop {
                    let Some(rest) = body.get(i..) else {
                        return max; // a backslash ended the body
                    };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(at) if body[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                        None => return max,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Drops the quoted input from serde's "invalid type/value" messages (it may be
/// a secret sent in the wrong field) and the position suffix.
fn sanitize(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    for marker in ["unknown variant `", "unknown algorithm `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            let after = rest.find('`').map_or("", |i| &rest[i + 1..]);
            return format!(
                "{}{}{after}",
                &message[..start],
                marker.trim_end_matches(" `")
            );
        }
    }
    for marker in ["invalid type: ", "invalid value: "] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.find(", expected").map_or("", |i| &rest[i..]);
            return format!("{}{marker}{kind}{expected}", &message[..start]);
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert_eq!(super::json_depth(br#"{"a":[1,{"b":"[[[{{{"}]}"#), 3);
        assert_eq!(super::json_depth(br#"{"a":"\"[[["}"#), 1);
        assert_eq!(super::json_depth(br#"{"a":"\\"}[["#), 2);
        // Cut off inside a string or after a backslash: no panic.
        assert_eq!(super::json_depth(br#"{"a":"[["#), 1);
        assert_eq!(super::json_depth(br#"{"a":"\"#), 1);
        assert_eq!(super::json_depth(br#"[{"a":"\\"#), 2);
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let err = super::parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(err.message.contains("deeper than 16"), "{}", err.message);
    }

    use super::*;
    use crate::api::{EncryptRequest, SignRequest};

    #[test]
    fn parse_errors_name_the_field_without_quoting_values() {
        let e = parse_json::<EncryptRequest>(br#"{"plaintext": 5}"#).unwrap_err();
        assert_eq!(
            e.message,
            "field `plaintext`: invalid type: integer, expected a standard base64 string"
        );
        let e = parse_json::<EncryptRequest>(
            br#"{"plaintext": "c2VjcmV0", "context": {"a": "SECRETVALUE", "b": 1}}"#,
        )
        .unwrap_err();
        assert!(e.message.starts_with("field `context.b`"), "{}", e.message);
        let e = parse_json::<SignRequest>(br#"{"message": "not base64!!"}"#).unwrap_err();
        assert_eq!(e.message, "field `message`: is not valid standard base64");
        let e = parse_json::<SignRequest>(br#"{"mesage": "aGk="}"#).unwrap_err();
        assert!(
            e.message.contains("unknown field `mesage`"),
            "{}",
            e.message
        );
        let e = parse_json::<SignRequest>(br#"{"format": "SECRETFORMAT"}"#).unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        let e = parse_json::<SignRequest>(b"{").unwrap_err();
        assert!(
            e.message.starts_with("request body is not valid JSON"),
            "{}",
            e.message
        );
        let e = parse_json::<SignRequest>(b"{} {}").unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert!(parse_json::<SignRequest>(b"").is_ok());
    }
}
