//! Encryption with the KMS key itself (small secrets), data keys for the
//! caller's own crypto, and MACs — after the shared [`rules`] on purpose,
//! context and data-key size.

use super::sign::{first_valid, versions_to_try};
use super::{Grant, Service, rules};
use crate::api::{self, ApiError, B64Out, b64};
use crate::backend;
use crate::keys::KeyEntry;
use crate::policy::Op;
use std::sync::Arc;
use zeroize::Zeroizing;

impl Service {
    pub async fn encrypt(
        &self,
        grant: &Grant<'_>,
        req: api::EncryptRequest,
    ) -> Result<api::EncryptResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Encrypt).await?;
        encrypt(entry, req).await
    }

    pub async fn encrypt_batch(
        &self,
        grant: &Grant<'_>,
        req: api::BatchRequest<api::EncryptRequest>,
    ) -> Result<api::BatchResponse<api::EncryptResponse>, ApiError> {
        let caller = &grant.caller;
        let (entry, _) = self.key_for(grant, Op::Encrypt).await?;
        self.batch(caller, req.items, |item| encrypt(entry, item))
            .await
    }

    pub async fn decrypt(
        &self,
        grant: &Grant<'_>,
        req: api::DecryptRequest,
    ) -> Result<api::DecryptResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Decrypt).await?;
        decrypt(entry, req).await
    }

    pub async fn decrypt_batch(
        &self,
        grant: &Grant<'_>,
        req: api::BatchRequest<api::DecryptRequest>,
    ) -> Result<api::BatchResponse<api::DecryptResponse>, ApiError> {
        let caller = &grant.caller;
        let (entry, _) = self.key_for(grant, Op::Decrypt).await?;
        self.batch(caller, req.items, |item| decrypt(entry, item))
            .await
    }

    /// A ciphertext of `encrypt` under the key's current version; the
    /// caller never sees the plaintext.
    pub async fn rewrap(
        &self,
        grant: &Grant<'_>,
        req: api::RewrapRequest,
    ) -> Result<api::EncryptResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Rewrap).await?;
        rules::check_context(&req.context)?;
        let known = entry.metadata().await?;
        let (backend, key) = (entry.backend.as_ref(), entry.known(&known));
        let sealed = backend::rewrap(backend, key, &req.ciphertext.0, &req.context)
            .await?
            .sealed;
        Ok(api::EncryptResponse {
            ciphertext: B64Out(sealed.bytes),
            version: sealed.version,
        })
    }

    pub async fn datakey(
        &self,
        grant: &Grant<'_>,
        req: api::DataKeyRequest,
    ) -> Result<api::DataKeyResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Datakey).await?;
        rules::check_context(&req.context)?;
        let size = rules::data_key_size(req.bits)?;
        let known = entry.metadata().await?;
        let dk = entry
            .backend
            .generate_data_key(entry.known(&known), size, &req.context)
            .await?;
        Ok(api::DataKeyResponse {
            plaintext_key: Zeroizing::new(b64(&dk.plaintext.0)),
            encrypted_key: b64(&dk.encrypted),
            version: dk.version,
        })
    }

    pub async fn mac(
        &self,
        grant: &Grant<'_>,
        req: api::MacRequest,
    ) -> Result<api::MacResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Mac).await?;
        let known = entry.metadata().await?;
        let macs = entry.backend.mac_keys()?;
        let mac = macs.mac(entry.known(&known), &req.message.0).await?;
        Ok(api::MacResponse {
            mac: b64(&mac.bytes),
            version: mac.version,
        })
    }

    pub async fn verify_mac(
        &self,
        grant: &Grant<'_>,
        req: api::VerifyMacRequest,
    ) -> Result<api::VerifyResponse, ApiError> {
        let (entry, _) = self.key_for(grant, Op::Mac).await?;
        let version = req.version.as_ref().map(|v| v.0.as_str());
        self.check_version(entry, version).await?;
        let known = entry.metadata().await?;
        let (macs, key) = (entry.backend.mac_keys()?, entry.known(&known));
        let (message, mac) = (&req.message.0, &req.mac.0);
        first_valid(versions_to_try(&known, version), |v| async move {
            Ok(macs.verify_mac(key, message, mac, &v).await?)
        })
        .await
    }
}

async fn encrypt(
    entry: &Arc<KeyEntry>,
    req: api::EncryptRequest,
) -> Result<api::EncryptResponse, ApiError> {
    rules::check_context(&req.context)?;
    let known = entry.metadata().await?;
    let sealed = entry
        .backend
        .encrypt(entry.known(&known), &req.plaintext.0, &req.context)
        .await?;
    Ok(api::EncryptResponse {
        ciphertext: B64Out(sealed.bytes),
        version: sealed.version,
    })
}

async fn decrypt(
    entry: &Arc<KeyEntry>,
    req: api::DecryptRequest,
) -> Result<api::DecryptResponse, ApiError> {
    rules::check_context(&req.context)?;
    let known = entry.metadata().await?;
    let plain = entry
        .backend
        .decrypt(entry.known(&known), &req.ciphertext.0, &req.context)
        .await?;
    Ok(api::DecryptResponse {
        plaintext: B64Out(plain.plaintext.0),
    })
}
