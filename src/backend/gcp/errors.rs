//! Cloud KMS's answers as our errors: the google.rpc status and its message
//! (which name resources and reasons, never tokens or data), and their API
//! codes (the table in `docs/gcp.md`); and the CRC32C checks of every answer.

use crate::backend::{Error, ErrorKind, KeyRef};
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;
use std::fmt;

/// An error for logs and messages: the status and Cloud KMS's message, or
/// the transport's deepest cause.
pub(super) fn describe(err: &GaxError) -> String {
    if let Some(status) = err.status() {
        let message: String = status.message.chars().take(300).collect();
        return format!("{} {}: {message}", http_of(err), status.code.name());
    }
    crate::backend::with_causes(err)
}

fn http_of(err: &GaxError) -> String {
    err.http_status_code()
        .map(|s| format!("HTTP {s}"))
        .unwrap_or_else(|| "RPC".into())
}

/// Whether Cloud KMS refused the access token itself.
pub(super) fn unauthenticated(err: &GaxError) -> bool {
    err.status()
        .is_some_and(|s| s.code == Code::Unauthenticated)
        || err.http_status_code() == Some(401)
}

/// A Cloud KMS call, for error mapping and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    GetCryptoKey,
    ListVersions,
    GetPublicKey,
    Encrypt,
    Decrypt,
    AsymmetricDecrypt,
    AsymmetricSign,
    MacSign,
    MacVerify,
    CreateVersion,
    UpdatePrimary,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::GetCryptoKey => "getCryptoKey",
            Call::ListVersions => "listCryptoKeyVersions",
            Call::GetPublicKey => "getPublicKey",
            Call::Encrypt => "encrypt",
            Call::Decrypt => "decrypt",
            Call::AsymmetricDecrypt => "asymmetricDecrypt",
            Call::AsymmetricSign => "asymmetricSign",
            Call::MacSign => "macSign",
            Call::MacVerify => "macVerify",
            Call::CreateVersion => "createCryptoKeyVersion",
            Call::UpdatePrimary => "updateCryptoKeyPrimaryVersion",
        })
    }
}

/// Our error for a failed Cloud KMS call `op` on `key` (SPEC §4), logged
/// with Cloud KMS's reasons.
pub(super) fn error(key: KeyRef<'_>, op: Call, err: &GaxError) -> Error {
    let detail = describe(err);
    let message = err.status().map(|s| s.message.as_str()).unwrap_or_default();
    let decrypting = matches!(op, Call::Decrypt | Call::AsymmetricDecrypt);
    let kind = match err.status().map(|s| s.code) {
        Some(Code::InvalidArgument) if decrypting => ErrorKind::DecryptionFailed,
        Some(Code::InvalidArgument | Code::OutOfRange) => ErrorKind::InvalidRequest,
        Some(Code::FailedPrecondition) if not_enabled(message) => ErrorKind::KeyDisabled,
        Some(Code::FailedPrecondition) => ErrorKind::OperationNotSupported,
        Some(Code::Unauthenticated) => ErrorKind::Unauthenticated,
        Some(Code::PermissionDenied) => ErrorKind::Forbidden,
        Some(Code::NotFound) => ErrorKind::KeyNotFound,
        Some(Code::ResourceExhausted) => ErrorKind::Throttled,
        Some(Code::Unavailable) => ErrorKind::Unavailable,
        Some(Code::DeadlineExceeded) => ErrorKind::Timeout,
        Some(_) => ErrorKind::Backend,
        None if err.is_timeout() => ErrorKind::Timeout,
        None if err.is_connect() || err.is_io() || err.is_transport() => ErrorKind::Unavailable,
        None if err.is_authentication() => ErrorKind::Unavailable,
        None => match err.http_status_code() {
            Some(401) => ErrorKind::Unauthenticated,
            Some(403) => ErrorKind::Forbidden,
            Some(404) => ErrorKind::KeyNotFound,
            Some(429) => ErrorKind::Throttled,
            Some(502..=504) => ErrorKind::Unavailable,
            _ => ErrorKind::Backend,
        },
    };
    let mut error = Error::from_kms(kind, "Cloud KMS", op, key, &detail);
    if matches!(err.status().map(|s| s.code), Some(Code::Internal))
        || err.http_status_code().is_some_and(|s| s >= 500)
    {
        error.retryable = true;
    }
    error
}

/// Cloud KMS's message for a version that is not enabled ("… is not
/// enabled, current state is: DESTROY_SCHEDULED.").
fn not_enabled(message: &str) -> bool {
    message.contains("is not enabled") || message.contains("current state is")
}

/// CRC32C (Castagnoli) of `data`, as Cloud KMS's integrity fields carry it.
pub(super) fn crc32c(data: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(data))
}

/// An answer whose integrity fields do not match what was sent or received:
/// corrupted in transit. Retryable: a new call may well arrive intact.
pub(super) fn corrupted(key: KeyRef<'_>, op: Call, what: &str) -> Error {
    tracing::warn!(
        key.alias = key.alias,
        op = %op,
        what,
        "Cloud KMS answer failed its CRC32C check"
    );
    let mut error = Error::new(
        ErrorKind::Backend,
        format!(
            "Cloud KMS {op} for key `{}`: the answer failed its integrity check ({what}); nothing was returned",
            key.alias
        ),
    );
    error.retryable = true;
    error
}

/// An answer that lacks what Cloud KMS always sends.
pub(super) fn malformed(what: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("Cloud KMS returned a malformed answer: {what}"),
    )
}
