//! The API's paths: a request path as a [`Route`], the [`Endpoint`]
//! declared for it in [`super::endpoints`] and the key it names, if any.
//! No allocation per request.

use super::endpoints::{self, Endpoint, Path};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Route<'a> {
    pub endpoint: &'static Endpoint,
    /// The key named in the path (`/v1/keys/{name}/...`).
    pub key: Option<&'a str>,
    /// What the path says after (or, for transit's `datakey`, before) the
    /// key: transit's hash algorithm or data-key type.
    pub param: Option<&'a str>,
}

/// The `op` label of requests to no route.
pub(super) const UNKNOWN: &str = "unknown";

/// Every `op` label of [`Route::label`], and [`UNKNOWN`].
pub(super) fn labels() -> Vec<&'static str> {
    (endpoints::ENDPOINTS.iter().map(|e| e.label))
        .chain([UNKNOWN])
        .collect()
}

impl Route<'_> {
    /// The `op` label of metrics and logs.
    pub(super) fn label(self) -> &'static str {
        self.endpoint.label
    }

    pub(super) fn is_probe(self) -> bool {
        self.endpoint.is_probe()
    }
}

/// The route of `path`; `transit`: the mount of `compat.vault_transit`,
/// when it is on.
pub(super) fn parse_route<'a>(path: &'a str, transit: Option<&str>) -> Option<Route<'a>> {
    let path = path.trim_start_matches('/');
    if let Some(mount) = transit
        && let Some(route) = super::transit::route(path, mount)
    {
        return Some(route);
    }
    if let Some(key) = path.strip_prefix("v1/keys/") {
        let (name, rest) = match key.split_once('/') {
            None => (key, ""),
            Some((_, "")) => return None,
            Some(split) => split,
        };
        let endpoint = endpoints::find(Path::Key(rest))?;
        return (!name.is_empty()).then_some(Route {
            endpoint,
            key: Some(name),
            param: None,
        });
    }
    let endpoint = endpoints::find(Path::Fixed(path))?;
    Some(Route {
        endpoint,
        key: None,
        param: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Option<(&str, &'static str)> {
        let route = parse_route(path, None)?;
        Some((route.key?, route.label()))
    }

    fn label(path: &str) -> Option<&'static str> {
        parse_route(path, None)
            .filter(|r| r.key.is_none())
            .map(Route::label)
    }

    #[test]
    fn every_route_label_is_cached() {
        let labels = labels();
        for e in &endpoints::ENDPOINTS {
            assert!(labels.contains(&e.label), "{}", e.label);
        }
        assert!(labels.contains(&UNKNOWN));
    }

    #[test]
    fn routes_parse() {
        assert_eq!(label("/healthz"), Some("healthz"));
        assert_eq!(label("//readyz"), Some("readyz"));
        assert_eq!(label("/metrics"), Some("metrics"));
        assert_eq!(label("/v1/keys"), Some("list_keys"));
        assert_eq!(label("/v1/jwks"), Some("jwks"));
        assert_eq!(label("/v1/jwt/verify"), Some("jwt_verify"));
        assert_eq!(label("/.well-known/jwks.json"), Some("public_jwks"));
        assert_eq!(key("/v1/keys/a"), Some(("a", "metadata")));
        assert_eq!(key("/v1/keys/a/sign-batch"), Some(("a", "sign_batch")));
        assert_eq!(parse_route("/v1/keys/a/explode", None), None);
        assert_eq!(parse_route("/v1/keys//sign", None), None);
        assert_eq!(parse_route("/v1/keys/a/", None), None);
        assert_eq!(parse_route("/v1/keys/", None), None);
        assert_eq!(parse_route("/v2/keys", None), None);
        assert_eq!(parse_route("/sign", None), None);
        assert_eq!(parse_route("/v1/keys/healthz/healthz", None), None);
        assert_eq!(
            key("/v1/keys/a/envelope/encrypt"),
            Some(("a", "envelope_encrypt"))
        );
        assert_eq!(parse_route("/v1/keys/a/envelope", None), None);
        assert_eq!(parse_route("/v1/keys/a/envelope/encrypt/more", None), None);
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
