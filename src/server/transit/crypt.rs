//! Transit's encryption and MACs: `encrypt`, `decrypt`, `rewrap`,
//! `datakey` and `hmac`, translated into the service's operations.

use super::{Shown, answer, items, missing, request};
use crate::api::transit::{Text, TransitItem};
use crate::api::{self, ApiError, B64, Code};
use crate::server::reply::Reply;
use crate::service::{Grant, Service};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

pub(in crate::server) async fn encrypt(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let plaintext = item
            .plaintext
            .ok_or_else(|| missing("plaintext", "encrypt"))?;
        let r = svc
            .encrypt(grant, api::EncryptRequest { plaintext, context })
            .await?;
        Ok(shown.sealed(r))
    })
    .await
}

pub(in crate::server) async fn decrypt(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let text = item
            .ciphertext
            .ok_or_else(|| missing("ciphertext", "decrypt"))?;
        let ciphertext = B64(shown.ciphertext(&text)?);
        let r = svc
            .decrypt(
                grant,
                api::DecryptRequest {
                    ciphertext,
                    context,
                },
            )
            .await?;
        let version = text
            .strip_prefix("vault:v")
            .and_then(|rest| rest.split_once(':'))
            .map(|(n, _)| n.to_owned());
        let item = TransitItem {
            plaintext: Some(r.plaintext.0),
            ..TransitItem::default()
        };
        Ok((item, version.unwrap_or_default()))
    })
    .await
}

pub(in crate::server) async fn rewrap(
    svc: &Service,
    grant: &Grant<'_>,
    _: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let context = shown.context(&item)?;
        let text = item
            .ciphertext
            .ok_or_else(|| missing("ciphertext", "rewrap"))?;
        let ciphertext = B64(shown.ciphertext(&text)?);
        let r = svc
            .rewrap(
                grant,
                api::RewrapRequest {
                    ciphertext,
                    context,
                },
            )
            .await?;
        // Numbered after the rotation that made the version, not before.
        Ok(Shown::of(shown.grant).await?.sealed(r))
    })
    .await
}

/// `datakey/{plaintext|wrapped}/{name}`.
pub(in crate::server) async fn datakey(
    svc: &Service,
    grant: &Grant<'_>,
    kind: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let with_plaintext = match kind {
        Some("plaintext") => true,
        Some("wrapped") => false,
        _ => {
            return Err(ApiError::invalid(
                "invalid type: the path is datakey/plaintext/{name} or datakey/wrapped/{name}",
            ));
        }
    };
    let req = request(body)?;
    let shown = Shown::of(grant).await?;
    let context = shown.context(&req)?;
    let bits = match req.bits.map(|b| b.0) {
        None => 256,
        Some(b) => u32::try_from(b).unwrap_or(u32::MAX),
    };
    let r = svc
        .datakey(grant, api::DataKeyRequest { context, bits })
        .await?;
    let unreadable = |_| ApiError::new(Code::Internal, "a data key came back unreadable");
    let encrypted = STANDARD.decode(&r.encrypted_key).map_err(unreadable)?;
    let plaintext = Zeroizing::new(STANDARD.decode(&*r.plaintext_key).map_err(unreadable)?);
    let item = TransitItem {
        ciphertext: Some(shown.ciphertext_text(encrypted, &r.version)),
        plaintext: with_plaintext.then_some(plaintext),
        key_version: Some(shown.number(&r.version)),
        ..TransitItem::default()
    };
    Ok(answer(&item, Some(r.version.clone())))
}

/// HMAC-SHA-256 is the only HMAC of kms-sidecar's keys.
pub(super) fn sha256_only(hash: Option<&str>) -> Result<(), ApiError> {
    match hash.unwrap_or("sha2-256") {
        "sha2-256" => Ok(()),
        other => Err(ApiError::invalid(format!(
            "unsupported algorithm `{other}`: kms-sidecar's HMACs are sha2-256"
        ))),
    }
}

/// `hmac/{name}(/{algorithm})`.
pub(in crate::server) async fn hmac(
    svc: &Service,
    grant: &Grant<'_>,
    algorithm: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req = request(body)?;
    sha256_only(
        algorithm
            .or(req.algorithm.as_deref())
            .or(req.hash_algorithm.as_deref()),
    )?;
    let shown = &Shown::of(grant).await?;
    shown.latest_only(&req)?;
    items(svc, grant, req, |item| async move {
        let message = item
            .input
            .ok_or_else(|| missing("input", "make an HMAC of"))?;
        let r = svc.mac(grant, api::MacRequest { message }).await?;
        let item = TransitItem {
            hmac: Some(Text::Transit(format!(
                "vault:v{}:{}",
                shown.number(&r.version),
                r.mac
            ))),
            ..TransitItem::default()
        };
        Ok((item, r.version))
    })
    .await
}
