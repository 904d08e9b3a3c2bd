//! A token's answers as our errors: the function and its `CKR_` code (never
//! data, keys or the PIN), and their API codes (the table in `docs/pkcs11.md`).

use crate::backend::{Error, ErrorKind, KeyRef};
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use std::fmt;

/// A failed PKCS#11 call, before it is told which key and request it
/// failed for.
#[derive(Debug)]
pub(in crate::backend) enum Fail {
    /// The token's return value for a function.
    Ck(RvError, Function),
    /// The wrapper refused (a length that does not fit, a missing symbol).
    Lib(String),
    /// Already decided (no token, the PIN refused, …).
    Api(Error),
    /// The key's objects were found in an earlier initialization of the
    /// module: their handles mean nothing now.
    Stale,
}

impl Fail {
    pub(super) fn unavailable(message: impl Into<String>) -> Self {
        Fail::Api(Error::new(ErrorKind::Unavailable, message))
    }

    pub(super) fn unauthenticated(message: impl Into<String>) -> Self {
        Fail::Api(Error::new(ErrorKind::Unauthenticated, message))
    }

    /// An object handle the token no longer knows: the key's objects are
    /// looked up again.
    pub(super) fn is_stale(&self) -> bool {
        matches!(
            self,
            Fail::Stale | Fail::Ck(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
        )
    }

    /// Our error for a call of `op` on `key`, logged with the token's
    /// reason.
    pub(super) fn for_key(self, key: KeyRef<'_>, op: Call) -> Error {
        let (rv, detail) = match self {
            Fail::Api(e) => return e,
            Fail::Lib(why) => (None, why),
            Fail::Stale => (None, "the key's objects changed on the token".into()),
            Fail::Ck(rv, function) => (Some(rv), format!("C_{function:?}: {}", ckr_name(rv))),
        };
        let kind = rv.map_or(ErrorKind::Backend, |rv| kind_of(rv, op == Call::Decrypt));
        tracing::warn!(key.alias = key.alias, op = %op, error = %detail, "PKCS#11 call failed");
        let alias = key.alias;
        match kind {
            ErrorKind::DecryptionFailed => Error::decryption_failed(),
            ErrorKind::Unavailable => Error::new(
                kind,
                format!(
                    "the PKCS#11 token is unavailable ({detail}) for key `{alias}`; the sidecar re-opens its sessions"
                ),
            ),
            _ => Error::new(kind, format!("PKCS#11 {op} for key `{alias}`: {detail}")),
        }
    }
}

/// What a key was used for when the token failed, for error mapping and
/// messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Find,
    Sign,
    Encrypt,
    Decrypt,
    DataKey,
    Mac,
    VerifyMac,
    Rotate,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Find => "find",
            Call::Sign => "sign",
            Call::Encrypt => "encrypt",
            Call::Decrypt => "decrypt",
            Call::DataKey => "datakey",
            Call::Mac => "mac",
            Call::VerifyMac => "verify-mac",
            Call::Rotate => "rotate",
        })
    }
}

impl From<CkError> for Fail {
    fn from(err: CkError) -> Self {
        match err {
            CkError::Pkcs11(rv, function) => Fail::Ck(rv, function),
            other => Fail::Lib(other.to_string()),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Ck(rv, function) => write!(f, "C_{function:?}: {}", ckr_name(*rv)),
            Fail::Lib(why) => f.write_str(why),
            Fail::Api(e) => write!(f, "{e}"),
            Fail::Stale => f.write_str("object handles of an earlier initialization"),
        }
    }
}

/// The API code of a return value; `decrypting`: a refused decryption is
/// the one opaque failure whatever the token says of it.
fn kind_of(rv: RvError, decrypting: bool) -> ErrorKind {
    use RvError::*;
    match rv {
        DeviceRemoved
        | TokenNotPresent
        | TokenNotRecognized
        | DeviceError
        | SlotIdInvalid
        | SessionHandleInvalid
        | SessionClosed
        | SessionCount
        | CryptokiNotInitialized
        | HostMemory => ErrorKind::Unavailable,
        UserNotLoggedIn | PinIncorrect | PinInvalid | PinLenRange | PinLocked | PinExpired => {
            ErrorKind::Unauthenticated
        }
        EncryptedDataInvalid
        | EncryptedDataLenRange
        | DataInvalid
        | DataLenRange
        | GeneralError
        | FunctionFailed
        | ArgumentsBad
            if decrypting =>
        {
            ErrorKind::DecryptionFailed
        }
        KeyFunctionNotPermitted
        | KeyTypeInconsistent
        | MechanismInvalid
        | MechanismParamInvalid
        | FunctionNotSupported
        | KeySizeRange => ErrorKind::OperationNotSupported,
        DataLenRange | DataInvalid => ErrorKind::InvalidRequest,
        ObjectHandleInvalid | KeyHandleInvalid => ErrorKind::KeyNotFound,
        _ => ErrorKind::Backend,
    }
}

/// `CKR_SESSION_HANDLE_INVALID` for `RvError::SessionHandleInvalid`.
pub(super) fn ckr_name(rv: RvError) -> String {
    let name = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds() {
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            kind_of(RvError::TokenNotPresent, false),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(RvError::EncryptedDataInvalid, true),
            ErrorKind::DecryptionFailed
        );
        assert_eq!(
            kind_of(RvError::DataLenRange, false),
            ErrorKind::InvalidRequest
        );
        assert_eq!(
            kind_of(RvError::KeyFunctionNotPermitted, false),
            ErrorKind::OperationNotSupported
        );
        assert_eq!(
            kind_of(RvError::PinIncorrect, false),
            ErrorKind::Unauthenticated
        );
    }
}
