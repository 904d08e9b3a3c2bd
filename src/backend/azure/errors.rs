//! Key Vault's answers as our errors: the HTTP status, Key Vault's error
//! code and message (which name keys and reasons, never tokens or data),
//! `Retry-After`, and their API codes (the table in `docs/azure.md`).

use crate::backend::{Error, ErrorKind, KeyRef};
use azure_core::error::ErrorKind as AzureKind;
use azure_core::http::headers::RETRY_AFTER;
use azure_core::http::{RawResponse, StatusCode};
use std::fmt;
use std::time::Duration;

/// What Key Vault said: `{"error":{"code","message","innererror":{"code"}}}`.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub status: Option<u16>,
    /// The error code, or the inner one where Key Vault gives one
    /// (`KeyDisabled` inside `Forbidden`).
    pub code: Option<String>,
    pub message: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub(super) fn of(err: &azure_core::Error) -> Self {
        let AzureKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } = err.kind()
        else {
            return Self::default();
        };
        let mut answer = Answer {
            status: Some(u16::from(*status)),
            code: error_code.clone(),
            ..Default::default()
        };
        if let Some(raw) = raw_response {
            answer.read(raw);
        }
        answer
    }

    fn read(&mut self, raw: &RawResponse) {
        self.retry_after = raw
            .headers()
            .get_optional_str(&RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let Ok(body) = raw.body().json::<serde_json::Value>() else {
            return;
        };
        let error = &body["error"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        if let Some(inner) = text(&error["innererror"]["code"]) {
            self.code = Some(inner);
        } else if let Some(code) = text(&error["code"]) {
            self.code = Some(code);
        }
        // Entra ID's token errors are `{"error": "...", "error_description"}`.
        self.message = text(&error["message"]).or_else(|| text(&body["error_description"]));
    }

    fn disabled(&self) -> bool {
        self.code.as_deref() == Some("KeyDisabled")
            || self
                .message
                .as_deref()
                .is_some_and(|m| m.contains("disabled key") || m.contains("is disabled"))
    }
}

/// An error for logs and messages: status, code and Key Vault's message, or
/// the transport's deepest cause.
pub(super) fn describe(err: &azure_core::Error) -> String {
    let answer = Answer::of(err);
    if let Some(status) = answer.status {
        let mut text = format!("HTTP {status}");
        if let Some(code) = &answer.code {
            text.push_str(&format!(" {code}"));
        }
        if let Some(message) = &answer.message {
            let message: String = message.chars().take(300).collect();
            text.push_str(&format!(": {message}"));
        }
        return text;
    }
    crate::backend::with_causes(err)
}

/// A Key Vault call, for error mapping and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    GetKey,
    ListVersions,
    GetRotationPolicy,
    ListKeys,
    Sign,
    Encrypt,
    WrapKey,
    Decrypt,
    UnwrapKey,
    Rotate,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::GetKey => "get key",
            Call::ListVersions => "list key versions",
            Call::GetRotationPolicy => "get rotation policy",
            Call::ListKeys => "list keys",
            Call::Sign => "sign",
            Call::Encrypt => "encrypt",
            Call::WrapKey => "wrapKey",
            Call::Decrypt => "decrypt",
            Call::UnwrapKey => "unwrapKey",
            Call::Rotate => "rotate",
        })
    }
}

/// Our error for a failed Key Vault call `op` on `key` (SPEC §4), logged
/// with Key Vault's reasons.
pub(super) fn error(key: KeyRef<'_>, op: Call, err: &azure_core::Error) -> Error {
    let answer = Answer::of(err);
    let detail = describe(err);
    let kind = match (answer.status, err.kind()) {
        (Some(400), _) if matches!(op, Call::Decrypt | Call::UnwrapKey) => {
            ErrorKind::DecryptionFailed
        }
        (Some(400), _) => ErrorKind::InvalidRequest,
        (Some(401), _) => ErrorKind::Unauthenticated,
        (Some(403), _) if answer.disabled() => ErrorKind::KeyDisabled,
        (Some(403), _) => ErrorKind::Forbidden,
        (Some(404), _) => ErrorKind::KeyNotFound,
        (Some(429), _) => ErrorKind::Throttled,
        (Some(502..=504), _) => ErrorKind::Unavailable,
        (Some(_), _) => ErrorKind::Backend,
        (None, AzureKind::Io | AzureKind::Connection) => ErrorKind::Unavailable,
        (None, AzureKind::Credential) => ErrorKind::Unavailable,
        (None, _) => ErrorKind::Backend,
    };
    let mut error = Error::from_kms(kind, "Key Vault", op, key, &detail);
    if answer.status.is_some_and(|s| s >= 500) {
        error.retryable = true;
    }
    error.retry_after = answer.retry_after;
    error
}

/// Whether Key Vault refused the access token itself.
pub(super) fn unauthorized(err: &azure_core::Error) -> bool {
    err.http_status() == Some(StatusCode::Unauthorized)
}

/// An answer that lacks what Key Vault always sends.
pub(super) fn malformed(what: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("Key Vault returned a malformed answer: {what}"),
    )
}
