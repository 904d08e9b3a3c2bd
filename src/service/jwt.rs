//! JWTs signed by a KMS key (RFC 7519, compact JWS of RFC 7515), the JWKS of
//! the signing keys (RFC 7517), and verification against them.
//!
//! - `jwt`: the header gets `alg` from the key (ES256, ES384, PS256, RS256,
//!   EdDSA) and `kid` = `name/version`; `iat` and `exp` are filled unless
//!   given; ECDSA signatures are JOSE's raw `r ‖ s` (low-S). The signing
//!   input goes to the backend like any message to sign, so the private key
//!   stays in the KMS.
//! - `jwks`: every enabled version of every signing key, so tokens signed
//!   before a rotation still verify.
//! - `jwt/verify`: the `kid` picks the key and version; signature, `exp` and
//!   `nbf` (60 s leeway), and `aud`/`iss` when asked, are checked by the
//!   `jsonwebtoken` crate against the cached public key.

use super::{Service, rules};
use crate::api::{self, ApiError, Code};
use crate::backend::ErrorKind;
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use crate::keys::KeyEntry;
use crate::policy::{Caller, Op};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `ttl` when neither it nor `claims.exp` is sent.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The longest `ttl`: a signed bearer token cannot be revoked.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Clock skew allowed on `exp` and `nbf` when verifying.
pub const LEEWAY_SECONDS: u64 = 60;

/// The JWS `alg` of a key, for the algorithms `jwt` signs with: every
/// signing algorithm's JOSE name but ES512, which the JWT verifiers here
/// (the `jsonwebtoken` crate) do not know.
fn jwt_alg(alias: &str, algorithm: Algorithm) -> Result<&'static str, ApiError> {
    match algorithm.jose_name() {
        Some(alg) if alg != "ES512" => Ok(alg),
        _ => Err(ApiError::new(
            Code::OperationNotSupported,
            format!(
                "key `{alias}` is {algorithm}: JWTs are signed with ECDSA P-256 or P-384, RSA (PSS or PKCS#1) or Ed25519 keys"
            ),
        )),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Service {
    /// `POST /v1/keys/{name}/jwt`.
    pub async fn jwt(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::JwtRequest,
    ) -> Result<api::JwtResponse, ApiError> {
        let (entry, key) = self.key_for(caller, alias, Op::Sign).await?;
        let alg = jwt_alg(alias, key)?;
        let mut claims = req.claims;
        let now = unix_now();
        claims.entry("iat").or_insert(now.into());
        let exp = match (claims.get("exp"), req.ttl) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("send `ttl` or `claims.exp`, not both"));
            }
            (Some(exp), None) => exp.as_u64().ok_or_else(|| {
                ApiError::invalid("field `claims.exp`: a NumericDate (seconds since 1970)")
            })?,
            (None, ttl) => {
                let ttl = ttl.map_or(DEFAULT_TTL, |t| t.0);
                if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
                    return Err(ApiError::invalid(format!(
                        "field `ttl`: 1s to {}",
                        humantime::format_duration(MAX_TTL)
                    )));
                }
                let exp = now + ttl.as_secs();
                claims.insert("exp".into(), exp.into());
                exp
            }
        };
        for (name, value) in &req.header {
            let refused = match name.as_str() {
                "alg" => value.as_str() != Some(alg),
                "kid" => true,
                _ => false,
            };
            if refused {
                return Err(ApiError::invalid(format!(
                    "field `header.{name}`: the sidecar sets it (`alg` is the key's, {alg}; `kid` is name/version)"
                )));
            }
        }
        let claims = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
        // The kid names the version before it signs: the current one, and
        // if a rotation came between, the one that did sign.
        let mut version = entry.metadata().await?.current_version.clone();
        for _ in 0..2 {
            let kid = format!("{alias}/{version}");
            let mut header = Map::new();
            header.insert("typ".into(), "JWT".into());
            header.extend(req.header.clone());
            header.insert("alg".into(), alg.into());
            header.insert("kid".into(), kid.clone().into());
            let input = format!(
                "{}.{claims}",
                URL_SAFE_NO_PAD.encode(Value::Object(header).to_string())
            );
            let options = rules::sign_options(Some(SignatureFormat::Raw), key);
            let sig = (entry.backend)
                .sign(
                    entry.key_ref(),
                    SignInput::Message(input.as_bytes()),
                    options,
                )
                .await?;
            if sig.version != version {
                version = sig.version;
                continue;
            }
            let sig = crypto::low_s(sig.algorithm, sig.bytes, SignatureFormat::Raw);
            let expires = UNIX_EPOCH + Duration::from_secs(exp);
            return Ok(api::JwtResponse {
                jwt: format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)),
                kid,
                alg,
                expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
                version,
            });
        }
        Err(ApiError::new(
            Code::BackendUnavailable,
            format!("key `{alias}` changed versions while signing; try again"),
        ))
    }

    /// `GET /v1/jwks`: the signing keys `caller` may read (`public_key`).
    pub async fn jwks(&self, caller: &Caller) -> api::Jwks {
        let aliases: Vec<&str> = (self.keys.aliases().into_iter())
            .filter(|a| self.policy.allows(caller, a, Op::PublicKey))
            .collect();
        self.jwks_of(&aliases).await
    }

    /// `GET /.well-known/jwks.json` on the probe listener: the keys of
    /// `jwks.public`, for anyone who reaches it.
    pub async fn public_jwks(&self) -> api::Jwks {
        let aliases: Vec<&str> = self.public_jwks.iter().map(String::as_str).collect();
        self.jwks_of(&aliases).await
    }

    /// Every enabled version of each signing key of `aliases` as a JWK. A
    /// key whose versions or public keys cannot be read now is left out
    /// (and logged), so that one unreachable KMS does not take the others'
    /// keys away from verifiers.
    async fn jwks_of(&self, aliases: &[&str]) -> api::Jwks {
        let mut keys = Vec::new();
        for alias in aliases {
            let Some(entry) = self.keys.get(alias).filter(|e| e.allows(Op::PublicKey)) else {
                continue;
            };
            match self.jwks_of_key(entry).await {
                Ok(jwks) => keys.extend(jwks),
                Err(e) => tracing::warn!(key.alias = alias, error = %e, "key left out of the JWKS"),
            }
        }
        api::Jwks { keys }
    }

    async fn jwks_of_key(
        &self,
        entry: &Arc<KeyEntry>,
    ) -> Result<Vec<Value>, crate::backend::Error> {
        let metadata = entry.metadata().await?;
        if metadata.algorithm.jose_name().is_none() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for v in metadata.versions.iter().rev().filter(|v| v.enabled) {
            let pk = self.cached_public_key(entry, Some(&v.version)).await?;
            let kid = format!("{}/{}", entry.alias, pk.version);
            let jwk = crypto::public_key_jwk(pk.algorithm, &pk.spki_der, &kid)
                .map_err(|e| crate::backend::Error::new(ErrorKind::Backend, e.to_string()))?;
            keys.push(jwk);
        }
        Ok(keys)
    }

    /// `POST /v1/jwt/verify`. A token that does not verify is
    /// `valid: false` with the reason, not an error; a `kid` naming a key
    /// the caller may not `verify` with is 403, as for `verify`.
    pub async fn jwt_verify(
        &self,
        caller: &Caller,
        req: api::JwtVerifyRequest,
    ) -> Result<api::JwtVerifyResponse, ApiError> {
        let invalid = |kid: Option<&str>, reason: String| api::JwtVerifyResponse {
            valid: false,
            kid: kid.map(str::to_owned),
            header: None,
            claims: None,
            reason: Some(reason),
        };
        let header = jsonwebtoken::decode_header(&req.jwt)
            .map_err(|e| ApiError::invalid(format!("field `jwt`: not a compact JWS: {e}")))?;
        let Some(kid) = header.kid.as_deref() else {
            return Ok(invalid(None, "the header has no `kid`".into()));
        };
        let Some((alias, version)) = kid.rsplit_once('/') else {
            return Ok(invalid(Some(kid), "`kid` is not `name/version`".into()));
        };
        let entry = match self.authorize(caller, alias, Op::Verify) {
            Ok(entry) => entry,
            Err(e) if e.code == Code::KeyNotFound => {
                return Ok(invalid(
                    Some(kid),
                    format!("no key `{alias}` is configured"),
                ));
            }
            Err(e) => return Err(e),
        };
        let enabled =
            (entry.metadata().await?.versions.iter()).any(|v| v.version == version && v.enabled);
        if !enabled {
            return Ok(invalid(
                Some(kid),
                format!("key `{alias}` has no enabled version `{version}`"),
            ));
        }
        let pk = self.cached_public_key(entry, Some(version)).await?;
        let jwk = crypto::public_key_jwk(pk.algorithm, &pk.spki_der, kid)
            .ok()
            .and_then(|jwk| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk).ok());
        let alg = pk.algorithm.jose_name().and_then(|a| a.parse().ok());
        let (Some(jwk), Some(alg)) = (jwk, alg) else {
            return Ok(invalid(
                Some(kid),
                format!("key `{alias}` does not sign JWTs"),
            ));
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| {
            ApiError::new(
                Code::BackendError,
                format!("the public key of `{kid}`: {e}"),
            )
        })?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        match &req.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &req.issuer {
            validation.set_issuer(&[iss]);
        }
        match jsonwebtoken::decode::<Value>(&req.jwt, &key, &validation) {
            Ok(data) => Ok(api::JwtVerifyResponse {
                valid: true,
                kid: Some(kid.to_owned()),
                header: serde_json::to_value(&data.header).ok(),
                claims: Some(data.claims),
                reason: None,
            }),
            Err(e) => Ok(invalid(Some(kid), e.to_string())),
        }
    }
}
