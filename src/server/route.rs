//! The API's paths: a request path as a [`Route`] (a key's route carries
//! its [`Endpoint`], declared once in [`super::endpoints`]), with its label
//! for metrics and logs, its method, and whether it is a probe. No
//! allocation per request.

use super::endpoints::{self, Endpoint};
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
    Key(&'a str, &'static Endpoint),
}

/// The `op` labels of the routes that are no key endpoint, and `unknown`.
const OTHER_LABELS: [&str; 8] = [
    "healthz",
    "readyz",
    "metrics",
    "list_keys",
    "jwks",
    "jwt_verify",
    "public_jwks",
    "unknown",
];

/// Every `op` label of [`Route::label`], and `unknown`.
pub(super) fn labels() -> Vec<&'static str> {
    (OTHER_LABELS.into_iter())
        .chain(endpoints::KEY_ENDPOINTS.iter().map(|e| e.label))
        .collect()
}

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
            Route::Key(_, endpoint) => endpoint.label,
        }
    }

    pub(super) fn method(self) -> Method {
        match self {
            Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::ListKeys
            | Route::Jwks
            | Route::PublicJwks => Method::GET,
            Route::JwtVerify => Method::POST,
            Route::Key(_, endpoint) => endpoint.method.clone(),
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
    let path = path.trim_start_matches('/');
    if let Some(key) = path.strip_prefix("v1/keys/") {
        let (name, endpoint) = match key.split_once('/') {
            None => (key, endpoints::find("")?),
            Some((_, "")) => return None,
            Some((name, rest)) => (name, endpoints::find(rest)?),
        };
        return (!name.is_empty()).then_some(Route::Key(name, endpoint));
    }
    Some(match path {
        "healthz" => Route::Healthz,
        "readyz" => Route::Readyz,
        "metrics" => Route::Metrics,
        "v1/keys" => Route::ListKeys,
        "v1/jwks" => Route::Jwks,
        "v1/jwt/verify" => Route::JwtVerify,
        ".well-known/jwks.json" => Route::PublicJwks,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Option<(&str, &'static str)> {
        match parse_route(path)? {
            Route::Key(name, e) => Some((name, e.label)),
            _ => None,
        }
    }

    #[test]
    fn every_route_label_is_cached() {
        let labels = labels();
        for e in &endpoints::KEY_ENDPOINTS {
            assert!(labels.contains(&Route::Key("k", e).label()), "{}", e.label);
        }
    }

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("/healthz"), Some(Route::Healthz));
        assert_eq!(parse_route("/v1/keys"), Some(Route::ListKeys));
        assert_eq!(key("/v1/keys/a"), Some(("a", "metadata")));
        assert_eq!(key("/v1/keys/a/sign-batch"), Some(("a", "sign_batch")));
        assert_eq!(parse_route("/v1/keys/a/explode"), None);
        assert_eq!(parse_route("/v1/keys//sign"), None);
        assert_eq!(parse_route("/v1/keys/a/"), None);
        assert_eq!(parse_route("/v2/keys"), None);
        assert_eq!(
            key("/v1/keys/a/envelope/encrypt"),
            Some(("a", "envelope_encrypt"))
        );
        assert_eq!(parse_route("/v1/keys/a/envelope"), None);
        assert_eq!(parse_route("/v1/keys/a/envelope/encrypt/more"), None);
        assert_eq!(
            key("/v1/keys/a/encrypt-batch"),
            Some(("a", "encrypt_batch"))
        );
        assert_eq!(
            key("/v1/keys/a/envelope/decrypt-batch"),
            Some(("a", "envelope_decrypt_batch"))
        );
    }
}
