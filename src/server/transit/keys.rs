//! Transit's keys: read one, rotate one, list those the caller may use.

use super::{Shown, answer_with, request};
use crate::api::{self, ApiError};
use crate::crypto::{self, Algorithm};
use crate::policy::{Caller, Op};
use crate::server::reply::{Reply, json};
use crate::service::{Grant, Service};
use http::StatusCode;

/// `GET keys/{name}`.
pub(in crate::server) async fn read_key(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    _: &[u8],
) -> Result<Reply, ApiError> {
    let data = key_data(svc, grant).await?;
    Ok(answer_with("transit", &data))
}

/// `POST keys/{name}/rotate`: answered with the key, as Vault does.
pub(in crate::server) async fn rotate(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    request(body)?;
    let rotated = svc.rotate(grant).await?;
    let data = key_data(svc, grant).await?;
    let mut reply = answer_with("transit", &data);
    reply.version = Some(rotated.version);
    Ok(reply)
}

/// Transit's name of a key type.
pub(super) fn transit_type(algorithm: Algorithm) -> String {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => "ecdsa-p256".into(),
        Algorithm::EcdsaP384Sha384 => "ecdsa-p384".into(),
        Algorithm::EcdsaP521Sha512 => "ecdsa-p521".into(),
        Algorithm::Ed25519 => "ed25519".into(),
        Algorithm::RsaPssSha256 { bits }
        | Algorithm::RsaPkcs1Sha256 { bits }
        | Algorithm::RsaOaepSha256 { bits } => format!("rsa-{bits}"),
        Algorithm::Aes256Gcm => "aes256-gcm96".into(),
        Algorithm::HmacSha256 => "hmac".into(),
    }
}

/// What `GET keys/{name}` answers: the key's type, versions and abilities;
/// each version's public key when the caller may read public keys.
async fn key_data(svc: &Service, grant: &Grant<'_>) -> Result<serde_json::Value, ApiError> {
    let shown = Shown::of(grant).await?;
    let m = &shown.meta;
    let purpose = m.algorithm.purpose();
    let asymmetric =
        purpose == crypto::Purpose::Sign || matches!(m.algorithm, Algorithm::RsaOaepSha256 { .. });
    let public = asymmetric
        && svc
            .authorize(&grant.caller, grant.alias, Op::PublicKey)
            .is_ok();
    let mut keys = serde_json::Map::new();
    for v in &m.versions {
        let created = v.created.unwrap_or(std::time::UNIX_EPOCH);
        let at = created
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let shown_version = if asymmetric {
            let pem = match public {
                true => grant.entry.public_key(Some(&v.version)).await.ok(),
                false => None,
            };
            serde_json::json!({
                "name": transit_type(m.algorithm),
                "certificate_chain": "",
                "public_key": pem.map(|pk| crypto::public_key_pem(&pk.spki_der)).unwrap_or_default(),
                "creation_time": humantime::format_rfc3339_seconds(created).to_string(),
            })
        } else {
            at.into()
        };
        keys.insert(shown.number(&v.version).to_string(), shown_version);
    }
    let min_decryption =
        (m.versions.iter().find(|v| v.enabled)).map_or(1, |v| shown.number(&v.version));
    let period = grant.entry.rotation_period.or(m.rotation_period);
    Ok(serde_json::json!({
        "name": grant.alias,
        "type": transit_type(m.algorithm),
        "keys": keys,
        "latest_version": shown.number(&m.current_version),
        "min_available_version": 0,
        "min_decryption_version": min_decryption,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "derived": shown.derived(),
        "exportable": false,
        "allow_plaintext_backup": false,
        "imported_key": m.origin == crate::backend::Origin::External,
        "soft_deleted": false,
        "auto_rotate_period": period.map_or(0, |p| p.as_secs()),
        "supports_encryption": purpose == crypto::Purpose::Encrypt,
        "supports_decryption": purpose == crypto::Purpose::Encrypt,
        "supports_derivation": shown.derived(),
        "supports_signing": purpose == crypto::Purpose::Sign,
    }))
}

/// `LIST keys`: the keys the caller may use (404 when none, as Vault).
pub(in crate::server) async fn list_keys(
    svc: &Service,
    caller: &Caller,
) -> Result<Reply, ApiError> {
    let names: Vec<String> = (svc.list_keys(caller).await.keys.into_iter())
        .map(|k| k.name)
        .collect();
    if names.is_empty() {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &api::transit::VaultErrors { errors: vec![] },
        ));
    }
    Ok(answer_with(
        "transit",
        &serde_json::json!({ "keys": names }),
    ))
}
