//! Vault's answers as our errors: the HTTP status and Vault's own messages
//! of an error (never tokens or data), and their API codes (SPEC §4).

use crate::backend::{Error, ErrorKind, KeyRef};
use std::fmt;
use vaultrs::error::ClientError;

/// The HTTP status of a Vault error answer, if it was one.
pub(super) fn status_of(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// A Vault error for logs and callers: its status and Vault's own messages
/// (which name paths and reasons, never tokens or data), or the transport
/// failure.
pub(super) fn describe(err: &ClientError) -> String {
    match err {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("HTTP {code}"),
        ClientError::APIError { code, errors } => {
            // Vault wraps several errors as "N errors occurred:\n\t* …".
            let lines: Vec<&str> = errors
                .iter()
                .flat_map(|e| e.lines())
                .map(|l| l.trim().trim_start_matches("* "))
                .filter(|l| !l.is_empty() && !l.ends_with("occurred:"))
                .collect();
            let joined: String = lines.join("; ").chars().take(300).collect();
            format!("HTTP {code}: {joined}")
        }
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                format!("HTTP {code}")
            }
            other => {
                // The transport error (refused, timed out, TLS) is deepest.
                let mut cause: &dyn std::error::Error = other;
                let mut text = other.to_string();
                while let Some(next) = cause.source() {
                    text = next.to_string();
                    cause = next;
                }
                text
            }
        },
        other => other.to_string(),
    }
}

/// Whether the error is a timeout of the HTTP call.
fn timed_out(err: &ClientError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return r.is_timeout();
        }
        if let Some(rustify::errors::ClientError::RequestError { source, .. }) =
            e.downcast_ref::<rustify::errors::ClientError>()
        {
            cause = Some(source.as_ref());
            continue;
        }
        cause = e.source();
    }
    false
}

/// A transit call, for error mapping and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    ReadKey,
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    DataKey,
    Hmac,
    VerifyHmac,
    Rotate,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::ReadKey => "read key",
            Call::Sign => "sign",
            Call::Verify => "verify",
            Call::Encrypt => "encrypt",
            Call::Decrypt => "decrypt",
            Call::DataKey => "datakey",
            Call::Hmac => "hmac",
            Call::VerifyHmac => "verify hmac",
            Call::Rotate => "rotate",
        })
    }
}

/// Our error for a Vault one (SPEC §4), logged with Vault's reasons;
/// `rejected`: Vault no longer accepts the token the call was made with.
pub(super) fn error(key: KeyRef<'_>, op: Call, err: &ClientError, rejected: bool) -> Error {
    let detail = describe(err);
    let status = status_of(err);
    let kind = match status {
        // A version below the key's `min_decryption_version`.
        Some(400) if detail.contains("disallowed by policy") => ErrorKind::KeyDisabled,
        Some(400) if op == Call::Decrypt => ErrorKind::DecryptionFailed,
        Some(400) if detail.contains("not found") => ErrorKind::KeyNotFound,
        Some(400) => ErrorKind::InvalidRequest,
        Some(401 | 403) if rejected => ErrorKind::Unauthenticated,
        Some(401 | 403) => ErrorKind::Forbidden,
        Some(404) => ErrorKind::KeyNotFound,
        Some(429) => ErrorKind::Throttled,
        Some(500) => ErrorKind::Backend,
        Some(501..=599) => ErrorKind::Unavailable,
        Some(_) => ErrorKind::Backend,
        None if timed_out(err) => ErrorKind::Timeout,
        None if matches!(
            err,
            ClientError::RestClientError {
                source: rustify::errors::ClientError::RequestError { .. }
            }
        ) =>
        {
            ErrorKind::Unavailable
        }
        None => ErrorKind::Backend,
    };
    tracing::warn!(key.alias = key.alias, op = %op, error = %detail, "Vault call failed");
    match kind {
        ErrorKind::DecryptionFailed => Error::decryption_failed(),
        ErrorKind::KeyNotFound => Error::key_not_found(key),
        ErrorKind::Unauthenticated => Error::new(
            kind,
            format!(
                "Vault {op} for key `{}`: Vault rejected the sidecar's token as invalid, expired or revoked ({detail}); it is logging in again",
                key.alias
            ),
        ),
        _ => {
            let mut error = Error::new(
                kind,
                format!("Vault {op} for key `{}`: {detail}", key.alias),
            );
            if matches!(status, Some(500..=599)) {
                error.retryable = true;
            }
            error
        }
    }
}

/// An answer from Vault that is not what transit sends.
pub(super) fn malformed() -> Error {
    Error::new(ErrorKind::Backend, "Vault returned a malformed value")
}
