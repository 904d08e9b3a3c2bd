//! AWS KMS's answers as our errors: SDK errors mapped to error kinds (with
//! KMS's code, message and request id), and answers missing a field KMS
//! always sends.

use crate::backend::{Error, ErrorKind, KeyRef};
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;

/// Maps an SDK error to our kinds, keeping KMS's code, message and request id
/// (never credentials: the SDK does not put them in errors).
pub(super) fn kms_error<E>(key: KeyRef<'_>, op: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request_id = err.request_id().unwrap_or("-").to_owned();
    let (kind, detail) = match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("Unknown");
            let kind = match code {
                "NotFoundException" => ErrorKind::KeyNotFound,
                "AccessDeniedException" => ErrorKind::Forbidden,
                "ThrottlingException" | "LimitExceededException" => ErrorKind::Throttled,
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    ErrorKind::DecryptionFailed
                }
                "InvalidKeyUsageException" | "UnsupportedOperationException" => {
                    ErrorKind::OperationNotSupported
                }
                "ValidationException" | "InvalidArnException" => ErrorKind::InvalidRequest,
                "DependencyTimeoutException" => ErrorKind::Timeout,
                "KMSInternalException" | "KeyUnavailableException" => ErrorKind::Unavailable,
                // Disabled, or pending deletion.
                "DisabledException" | "KMSInvalidStateException" => ErrorKind::KeyDisabled,
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException" => ErrorKind::Unauthenticated,
                _ => ErrorKind::Backend,
            };
            (kind, format!("{code}: {}", err.message().unwrap_or("")))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "timed out".to_owned()),
        SdkError::DispatchFailure(_) => (ErrorKind::Unavailable, "cannot reach AWS KMS".to_owned()),
        _ => (ErrorKind::Backend, "unexpected response".to_owned()),
    };
    tracing::warn!(key.alias = key.alias, op, aws.request_id = %request_id, error = %detail, "AWS KMS call failed");
    if kind == ErrorKind::DecryptionFailed {
        return Error::decryption_failed();
    }
    Error::new(
        kind,
        format!(
            "AWS KMS {op} for key `{}`: {detail} (request id {request_id})",
            key.alias
        ),
    )
    .with_source(err)
}

/// The bytes of a field KMS always sends with a success, or a `backend`
/// error naming it (never an empty value in its place).
pub(super) fn required<'a>(
    blob: Option<&'a Blob>,
    op: &str,
    field: &str,
) -> Result<&'a [u8], Error> {
    blob.map(Blob::as_ref).ok_or_else(|| missing(op, field))
}

/// The `backend` error for an answer to `op` without `field`.
pub(super) fn missing(op: &str, field: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("AWS KMS {op} returned no `{field}`"),
    )
}
