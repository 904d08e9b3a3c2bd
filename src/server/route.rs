//! The API's paths: a request path as a [`Route`] (a key's route carries
//! its [`Action`]), with its label for metrics and logs, its method, and the
//! operation a caller needs granted. No allocation per request.

use crate::policy::Op;
use http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    ListKeys,
    /// `GET /v1/jwks`.
    Jwks,
    /// `POST /v1/jwt/verify`.
    JwtVerify,
    /// `GET /.well-known/jwks.json`, on the probe listener only.
    PublicJwks,
    Key(&'a str, Action),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Metadata,
    PublicKey,
    Sign,
    SignBatch,
    Verify,
    Encrypt,
    Decrypt,
    Datakey,
    Mac,
    VerifyMac,
    Rotate,
    EnvelopeEncrypt,
    EnvelopeDecrypt,
    EncryptBatch,
    DecryptBatch,
    EnvelopeEncryptBatch,
    EnvelopeDecryptBatch,
    Rewrap,
    EnvelopeRewrap,
    Flush,
    Jwt,
}

/// Every `op` label of [`Route::label`], and `unknown`.
pub(super) const LABELS: &[&str] = &[
    "healthz",
    "readyz",
    "metrics",
    "list_keys",
    "jwks",
    "jwt_verify",
    "public_jwks",
    "metadata",
    "public_key",
    "sign",
    "sign_batch",
    "verify",
    "encrypt",
    "decrypt",
    "datakey",
    "mac",
    "verify_mac",
    "rotate",
    "envelope_encrypt",
    "envelope_decrypt",
    "encrypt_batch",
    "decrypt_batch",
    "envelope_encrypt_batch",
    "envelope_decrypt_batch",
    "rewrap",
    "envelope_rewrap",
    "flush",
    "jwt",
    "unknown",
];

impl Route<'_> {
    /// The `op` label of metrics and logs.
    pub(super) fn label(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::ListKeys => "list_keys",
            Route::Jwks => "jwks",
            Route::JwtVerify => "jwt_verify",
            Route::PublicJwks => "public_jwks",
            Route::Key(_, a) => match a {
                Action::Metadata => "metadata",
                Action::PublicKey => "public_key",
                Action::Sign => "sign",
                Action::SignBatch => "sign_batch",
                Action::Verify => "verify",
                Action::Encrypt => "encrypt",
                Action::Decrypt => "decrypt",
                Action::Datakey => "datakey",
                Action::Mac => "mac",
                Action::VerifyMac => "verify_mac",
                Action::Rotate => "rotate",
                Action::EnvelopeEncrypt => "envelope_encrypt",
                Action::EnvelopeDecrypt => "envelope_decrypt",
                Action::EncryptBatch => "encrypt_batch",
                Action::DecryptBatch => "decrypt_batch",
                Action::EnvelopeEncryptBatch => "envelope_encrypt_batch",
                Action::EnvelopeDecryptBatch => "envelope_decrypt_batch",
                Action::Rewrap => "rewrap",
                Action::EnvelopeRewrap => "envelope_rewrap",
                Action::Flush => "flush",
                Action::Jwt => "jwt",
            },
        }
    }

    pub(super) fn method(self) -> Method {
        match self {
            Route::Key(_, Action::Metadata | Action::PublicKey)
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::ListKeys
            | Route::Jwks
            | Route::PublicJwks => Method::GET,
            Route::Key(..) | Route::JwtVerify => Method::POST,
        }
    }

    pub(super) fn is_probe(self) -> bool {
        matches!(
            self,
            Route::Healthz | Route::Readyz | Route::Metrics | Route::PublicJwks
        )
    }
}

pub(super) fn parse_route(path: &str) -> Option<Route<'_>> {
    // No route has more than five segments: no allocation per request.
    let mut segments = [""; 5];
    let mut count = 0;
    for segment in path.trim_start_matches('/').split('/') {
        *segments.get_mut(count)? = segment;
        count += 1;
    }
    Some(match &segments[..count] {
        ["healthz"] => Route::Healthz,
        ["readyz"] => Route::Readyz,
        ["metrics"] => Route::Metrics,
        ["v1", "keys"] => Route::ListKeys,
        ["v1", "jwks"] => Route::Jwks,
        ["v1", "jwt", "verify"] => Route::JwtVerify,
        [".well-known", "jwks.json"] => Route::PublicJwks,
        ["v1", "keys", name] if !name.is_empty() => Route::Key(name, Action::Metadata),
        ["v1", "keys", name, action] if !name.is_empty() => {
            let action = match *action {
                "public-key" => Action::PublicKey,
                "sign" => Action::Sign,
                "sign-batch" => Action::SignBatch,
                "verify" => Action::Verify,
                "encrypt" => Action::Encrypt,
                "decrypt" => Action::Decrypt,
                "encrypt-batch" => Action::EncryptBatch,
                "decrypt-batch" => Action::DecryptBatch,
                "rewrap" => Action::Rewrap,
                "flush" => Action::Flush,
                "datakey" => Action::Datakey,
                "mac" => Action::Mac,
                "verify-mac" => Action::VerifyMac,
                "rotate" => Action::Rotate,
                "jwt" => Action::Jwt,
                _ => return None,
            };
            Route::Key(name, action)
        }
        ["v1", "keys", name, "envelope", "encrypt"] if !name.is_empty() => {
            Route::Key(name, Action::EnvelopeEncrypt)
        }
        ["v1", "keys", name, "envelope", "decrypt"] if !name.is_empty() => {
            Route::Key(name, Action::EnvelopeDecrypt)
        }
        ["v1", "keys", name, "envelope", "encrypt-batch"] if !name.is_empty() => {
            Route::Key(name, Action::EnvelopeEncryptBatch)
        }
        ["v1", "keys", name, "envelope", "decrypt-batch"] if !name.is_empty() => {
            Route::Key(name, Action::EnvelopeDecryptBatch)
        }
        ["v1", "keys", name, "envelope", "rewrap"] if !name.is_empty() => {
            Route::Key(name, Action::EnvelopeRewrap)
        }
        _ => return None,
    })
}

impl Action {
    /// Whether the body is a batch (`{"items": [...]}`).
    pub fn is_batch(self) -> bool {
        matches!(
            self,
            Action::SignBatch
                | Action::EncryptBatch
                | Action::DecryptBatch
                | Action::EnvelopeEncryptBatch
                | Action::EnvelopeDecryptBatch
        )
    }

    /// The operation a caller needs granted for this action.
    pub(super) fn op(self) -> Op {
        match self {
            Action::Metadata => Op::Metadata,
            Action::PublicKey => Op::PublicKey,
            Action::Sign | Action::SignBatch | Action::Jwt => Op::Sign,
            Action::Verify => Op::Verify,
            Action::Encrypt | Action::EncryptBatch => Op::Encrypt,
            Action::Decrypt | Action::DecryptBatch => Op::Decrypt,
            Action::Datakey => Op::Datakey,
            Action::Mac | Action::VerifyMac => Op::Mac,
            Action::Rotate => Op::Rotate,
            Action::Rewrap | Action::EnvelopeRewrap => Op::Rewrap,
            Action::Flush => Op::Flush,
            Action::EnvelopeEncrypt
            | Action::EnvelopeDecrypt
            | Action::EnvelopeEncryptBatch
            | Action::EnvelopeDecryptBatch => Op::Envelope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_label_is_cached() {
        let actions = [
            Action::Metadata,
            Action::PublicKey,
            Action::Sign,
            Action::SignBatch,
            Action::Verify,
            Action::Encrypt,
            Action::Decrypt,
            Action::Datakey,
            Action::Mac,
            Action::VerifyMac,
            Action::Rotate,
            Action::EnvelopeEncrypt,
            Action::EnvelopeDecrypt,
            Action::EncryptBatch,
            Action::DecryptBatch,
            Action::EnvelopeEncryptBatch,
            Action::EnvelopeDecryptBatch,
            Action::Rewrap,
            Action::EnvelopeRewrap,
            Action::Flush,
            Action::Jwt,
        ];
        let routes = [
            Route::Healthz,
            Route::Readyz,
            Route::Metrics,
            Route::ListKeys,
            Route::Jwks,
            Route::JwtVerify,
            Route::PublicJwks,
        ]
        .into_iter()
        .chain(actions.into_iter().map(|a| Route::Key("k", a)));
        for route in routes {
            assert!(LABELS.contains(&route.label()), "{}", route.label());
        }
    }

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("/healthz"), Some(Route::Healthz));
        assert_eq!(parse_route("/v1/keys"), Some(Route::ListKeys));
        assert_eq!(
            parse_route("/v1/keys/a"),
            Some(Route::Key("a", Action::Metadata))
        );
        assert_eq!(
            parse_route("/v1/keys/a/sign-batch"),
            Some(Route::Key("a", Action::SignBatch))
        );
        assert_eq!(parse_route("/v1/keys/a/explode"), None);
        assert_eq!(parse_route("/v1/keys//sign"), None);
        assert_eq!(parse_route("/v2/keys"), None);
        assert_eq!(
            parse_route("/v1/keys/a/envelope/encrypt"),
            Some(Route::Key("a", Action::EnvelopeEncrypt))
        );
        assert_eq!(parse_route("/v1/keys/a/envelope/encrypt/more"), None);
        assert_eq!(
            parse_route("/v1/keys/a/encrypt-batch"),
            Some(Route::Key("a", Action::EncryptBatch))
        );
        assert_eq!(
            parse_route("/v1/keys/a/envelope/decrypt-batch"),
            Some(Route::Key("a", Action::EnvelopeDecryptBatch))
        );
    }
}
