//! JWTs signed by a KMS key (RFC 7519, compact JWS of RFC 7515), the JWKS of
//! the signing keys (RFC 7517), and verification against them.
//!
//! - `jwt`: the header gets `alg` from the key (ES256, ES384, PS256, RS256,
//!   EdDSA) and `kid` = `name/version`, and may carry the caller's `typ` and
//!   `cty`, nothing else; `iat` and `exp` are filled unless given, and `exp`
//!   is at most 24 h ahead ([`prepare`]); ECDSA signatures are JOSE's raw
//!   `r ‖ s` (low-S). The signing input goes to the backend like any
//!   message to sign, so the private key stays in the KMS.
//! - `jwks`: every enabled version of every signing key, so tokens signed
//!   before a rotation still verify.
//! - `jwt/verify`: the `kid` picks the key and version; signature, `exp` and
//!   `nbf` (60 s leeway), and `aud`/`iss` when asked, are checked by the
//!   `jsonwebtoken` crate against the cached public key; an ECDSA signature
//!   with a high S (the twin of one the sidecar issued) is refused.

use super::{Grant, Service};
use crate::api::{self, ApiError, Code};
use crate::backend::ErrorKind;
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use crate::keys::KeyEntry;
use crate::policy::{Caller, Op};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use std::fmt::Write as _;
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

/// The longest `typ` or `cty` a caller may put in the header, in bytes.
pub const MAX_HEADER_VALUE: usize = 128;

/// What `jwt` signs, decided from the request and the clock alone.
#[derive(Debug)]
pub struct Unsigned {
    /// The claims' JSON, base64url: with `iat` and `exp` filled in.
    pub claims: String,
    /// The caller's `typ` and `cty`, if sent (the sidecar adds `alg` and
    /// `kid`, and `typ: JWT` unless given).
    pub header: Map<String, Value>,
    /// `exp` in RFC 3339.
    pub expires_at: String,
}

/// The claims and header of a JWT for a key whose JWS `alg` is `alg`, at
/// `now` (seconds since 1970). `exp` comes from `ttl` or `claims.exp` and
/// lies within [`MAX_TTL`] ahead of `now`; `iat`, `nbf` and `exp` are whole
/// seconds; the header takes only `typ` and `cty` (and `alg` if it is the
/// key's). Pure, with checked arithmetic on every time: no request can make
/// it panic (the `jwt_request` fuzz target feeds it any JSON).
pub fn prepare(req: api::JwtRequest, alg: &str, now: u64) -> Result<Unsigned, ApiError> {
    let header = caller_header(req.header, alg)?;
    let mut claims = req.claims;
    let exp = expiry(&claims, req.ttl.map(|t| t.0), now)?;
    let iat = numeric_date(&claims, "iat")?;
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf >= exp
    {
        return Err(ApiError::invalid(format!(
            "field `claims.nbf`: {nbf} is not before `exp` ({exp}): the token would never be valid"
        )));
    }
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .and_then(|t| {
            let mut text = String::new();
            write!(text, "{}", humantime::format_rfc3339_seconds(t)).ok()?;
            Some(text)
        })
        .ok_or_else(|| ApiError::invalid(format!("field `claims.exp`: {exp} is out of range")))?;
    if iat.is_none() {
        claims.insert("iat".into(), now.into());
    }
    claims.insert("exp".into(), exp.into());
    Ok(Unsigned {
        claims: URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string()),
        header,
        expires_at,
    })
}

/// `exp`: `claims.exp` as sent, or `now + ttl` (default [`DEFAULT_TTL`]);
/// either way after `now` and at most [`MAX_TTL`] later, as a signed
/// bearer token cannot be revoked.
fn expiry(claims: &Map<String, Value>, ttl: Option<Duration>, now: u64) -> Result<u64, ApiError> {
    let cap = humantime::format_duration(MAX_TTL);
    let latest = now.saturating_add(MAX_TTL.as_secs());
    match (numeric_date(claims, "exp")?, ttl) {
        (Some(_), Some(_)) => Err(ApiError::invalid("send `ttl` or `claims.exp`, not both")),
        (Some(exp), None) if exp <= now => Err(ApiError::invalid(format!(
            "field `claims.exp`: {exp} is not in the future (now is {now})"
        ))),
        (Some(exp), None) if exp > latest => Err(ApiError::invalid(format!(
            "field `claims.exp`: {exp} is more than {cap} ahead (now is {now}); JWTs live at most {cap}, as with `ttl`"
        ))),
        (Some(exp), None) => Ok(exp),
        (None, ttl) => {
            let ttl = ttl.unwrap_or(DEFAULT_TTL);
            if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
                return Err(ApiError::invalid(format!("field `ttl`: 1s to {cap}")));
            }
            now.checked_add(ttl.as_secs())
                .ok_or_else(|| ApiError::invalid("field `ttl`: the expiry is out of range"))
        }
    }
}

/// The time claim `name`, if sent: a NumericDate in whole seconds (what
/// the verifiers here read).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    claims
        .get(name)
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                ApiError::invalid(format!(
                    "field `claims.{name}`: a NumericDate (whole seconds since 1970)"
                ))
            })
        })
        .transpose()
}

/// The header entries a caller may set: `typ` and `cty`, strings of at
/// most [`MAX_HEADER_VALUE`] bytes (and `alg` when it is the key's own).
/// Anything else — `jku`, `x5u`, `jwk`, `crit`, `b64`, … — would change
/// how a verifier finds the key or reads the token, so it is refused.
fn caller_header(header: Map<String, Value>, alg: &str) -> Result<Map<String, Value>, ApiError> {
    let mut kept = Map::new();
    for (name, value) in header {
        match name.as_str() {
            "alg" if value.as_str() == Some(alg) => {}
            "alg" | "kid" => {
                return Err(ApiError::invalid(format!(
                    "field `header.{name}`: the sidecar sets it (`alg` is the key's, {alg}; `kid` is name/version)"
                )));
            }
            "typ" | "cty" => match value.as_str() {
                Some(v) if v.len() <= MAX_HEADER_VALUE => {
                    kept.insert(name, value);
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "field `header.{name}`: a string of at most {MAX_HEADER_VALUE} bytes"
                    )));
                }
            },
            _ => {
                return Err(ApiError::invalid(format!(
                    "field `header.{}`: not allowed; a JWT header may set `typ` and `cty` (the sidecar sets `alg` and `kid`)",
                    shown(&name)
                )));
            }
        }
    }
    Ok(kept)
}

/// A name the caller sent, for a message: escaped, at most 64 characters.
fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

impl Service {
    /// `POST /v1/keys/{name}/jwt`.
    pub async fn jwt(
        &self,
        grant: &Grant<'_>,
        req: api::JwtRequest,
    ) -> Result<api::JwtResponse, ApiError> {
        let alias = grant.alias;
        let (entry, key) = self.key_for(grant, Op::Sign).await?;
        let alg = jwt_alg(alias, key)?;
        let Unsigned {
            claims,
            header: given,
            expires_at,
        } = prepare(req, alg, unix_now())?;
        // The kid names the version before it signs: the current one, and
        // if a rotation came between, the one that did sign.
        let known = entry.metadata().await?;
        let mut version = known.current_version.clone();
        for _ in 0..2 {
            let kid = format!("{alias}/{version}");
            let mut header = Map::new();
            header.insert("typ".into(), "JWT".into());
            header.extend(given.clone());
            header.insert("alg".into(), alg.into());
            header.insert("kid".into(), kid.clone().into());
            let input = format!(
                "{}.{claims}",
                URL_SAFE_NO_PAD.encode(Value::Object(header).to_string())
            );
            let sig = (entry.backend)
                .sign(
                    entry.known(&known),
                    SignInput::Message(input.as_bytes()),
                    key,
                )
                .await?;
            if sig.version != version {
                version = sig.version;
                continue;
            }
            let sig = super::sign::for_caller(
                entry,
                sig.algorithm,
                sig.bytes,
                sig.encoding,
                SignatureFormat::Raw,
            )?;
            return Ok(api::JwtResponse {
                jwt: format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)),
                kid,
                alg,
                expires_at,
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
            let pk = entry.public_key(Some(&v.version)).await?;
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
        let header = jsonwebtoken::decode_header(&req.jwt)
            .map_err(|e| ApiError::invalid(format!("field `jwt`: not a compact JWS: {e}")))?;
        let Some(kid) = header.kid.as_deref() else {
            return Ok(invalid(None, "the header has no `kid`".into()));
        };
        Ok(match self.jwt_key(caller, kid, &req.jwt).await? {
            Ok((key, alg)) => decode_jwt(&req, kid, &key, alg),
            Err(reason) => invalid(Some(kid), reason),
        })
    }

    /// The key and algorithm that verify a token of `kid` (`name/version`),
    /// or why none does; the token's `jwt` for its signature's S.
    async fn jwt_key(
        &self,
        caller: &Caller,
        kid: &str,
        jwt: &str,
    ) -> Result<Result<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm), String>, ApiError>
    {
        let Some((alias, version)) = kid.rsplit_once('/') else {
            return Ok(Err("`kid` is not `name/version`".into()));
        };
        let entry = match self.authorize(caller, alias, Op::Verify) {
            Ok(grant) => grant.entry,
            Err(e) if e.code == Code::KeyNotFound => {
                return Ok(Err(format!("no key `{alias}` is configured")));
            }
            Err(e) => return Err(e),
        };
        let enabled =
            (entry.metadata().await?.versions.iter()).any(|v| v.version == version && v.enabled);
        if !enabled {
            return Ok(Err(format!(
                "key `{alias}` has no enabled version `{version}`"
            )));
        }
        let pk = entry.public_key(Some(version)).await?;
        let jwk = crypto::public_key_jwk(pk.algorithm, &pk.spki_der, kid)
            .ok()
            .and_then(|jwk| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk).ok());
        let alg = pk.algorithm.jose_name().and_then(|a| a.parse().ok());
        let (Some(jwk), Some(alg)) = (jwk, alg) else {
            return Ok(Err(format!("key `{alias}` does not sign JWTs")));
        };
        // (r, n − s) verifies like (r, s): a second valid string for the
        // same token. The sidecar issues low-S only, so the twin is refused.
        let signature = jwt.rsplit('.').next().unwrap_or_default();
        if URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|raw| crypto::is_high_s(pk.algorithm, &raw))
        {
            return Ok(Err(
                "the ECDSA signature has a high S (s > n/2); the sidecar issues low-S signatures only".into(),
            ));
        }
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| {
            ApiError::new(
                Code::BackendError,
                format!("the public key of `{kid}`: {e}"),
            )
        })?;
        Ok(Ok((key, alg)))
    }
}

/// A token that does not verify, and why.
fn invalid(kid: Option<&str>, reason: String) -> api::JwtVerifyResponse {
    api::JwtVerifyResponse {
        valid: false,
        kid: kid.map(str::to_owned),
        header: None,
        claims: None,
        reason: Some(reason),
    }
}

/// The token of `req` checked with `key`: its signature, its times (with
/// [`LEEWAY_SECONDS`]), and the audience and issuer `req` asks for.
fn decode_jwt(
    req: &api::JwtVerifyRequest,
    kid: &str,
    key: &jsonwebtoken::DecodingKey,
    alg: jsonwebtoken::Algorithm,
) -> api::JwtVerifyResponse {
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
    match jsonwebtoken::decode::<Value>(&req.jwt, key, &validation) {
        Ok(data) => api::JwtVerifyResponse {
            valid: true,
            kid: Some(kid.to_owned()),
            header: serde_json::to_value(&data.header).ok(),
            claims: Some(data.claims),
            reason: None,
        },
        Err(e) => invalid(Some(kid), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn request(body: Value) -> api::JwtRequest {
        serde_json::from_value(body).unwrap()
    }

    fn claims(u: &Unsigned) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&u.claims).unwrap()).unwrap()
    }

    #[test]
    fn exp_is_within_the_cap_whatever_is_sent() {
        let day = MAX_TTL.as_secs();
        let u = prepare(request(serde_json::json!({"claims": {}})), "ES256", NOW).unwrap();
        assert_eq!(claims(&u)["exp"], NOW + 300);
        assert_eq!(claims(&u)["iat"], NOW);
        assert_eq!(u.expires_at, "2027-01-15T08:05:00Z");
        let u = prepare(
            request(serde_json::json!({"claims": {"exp": NOW + day, "iat": 5}})),
            "ES256",
            NOW,
        )
        .unwrap();
        assert_eq!(
            (claims(&u)["exp"].as_u64(), claims(&u)["iat"].as_u64()),
            (Some(NOW + day), Some(5))
        );
        for exp in [NOW + day + 1, NOW, NOW - 1, 0, 253_402_300_800, u64::MAX] {
            let e = prepare(
                request(serde_json::json!({"claims": {"exp": exp}})),
                "ES256",
                NOW,
            )
            .unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest);
            assert!(e.message.contains("claims.exp"), "{exp}: {}", e.message);
        }
        // Any clock: never a panic, never an expiry past the cap.
        for now in [0, 253_402_300_799, u64::MAX - 10, u64::MAX] {
            for body in [
                serde_json::json!({"claims": {}}),
                serde_json::json!({"claims": {"exp": u64::MAX}}),
                serde_json::json!({"claims": {}, "ttl": "1day"}),
            ] {
                if let Ok(u) = prepare(request(body), "ES256", now) {
                    let exp = claims(&u)["exp"].as_u64().unwrap();
                    assert!(exp > now && exp - now <= day);
                }
            }
        }
    }

    #[test]
    fn the_header_takes_typ_and_cty_only() {
        let header = |h: Value| {
            prepare(
                request(serde_json::json!({"claims": {}, "header": h})),
                "ES256",
                NOW,
            )
        };
        let u = header(serde_json::json!({"typ": "at+jwt", "cty": "JWT", "alg": "ES256"})).unwrap();
        assert_eq!(
            Value::Object(u.header),
            serde_json::json!({"typ": "at+jwt", "cty": "JWT"})
        );
        for (h, words) in [
            (
                serde_json::json!({"jku": "https://x"}),
                "`header.jku`: not allowed",
            ),
            (serde_json::json!({"crit": ["b64"]}), "`header.crit`"),
            (serde_json::json!({"alg": "none"}), "`header.alg`"),
            (serde_json::json!({"kid": "x/1"}), "`header.kid`"),
            (serde_json::json!({"typ": "t".repeat(129)}), "`header.typ`"),
            (serde_json::json!({"a\nb": 1}), "`header.a\\nb`"),
        ] {
            let e = header(h).unwrap_err();
            assert!(e.message.contains(words), "{}", e.message);
        }
        let e = header(serde_json::json!({"x".repeat(100_000): 1})).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message);
    }
}
