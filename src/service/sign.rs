//! Signatures: sign, sign-batch and verify. The algorithm, the sign input and
//! the digest are checked by the shared [`rules`] before the backend signs;
//! ECDSA signatures come out low-S whatever the backend returned; backends
//! without a verify API are verified against the cached public key.

use super::{Grant, Service, rules};
use crate::api::{self, ApiError, B64Out, Code, b64};
use crate::backend;
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use crate::keys::KeyEntry;
use crate::policy::Op;
use futures_util::TryStreamExt;
use std::sync::Arc;

impl Service {
    pub async fn sign(
        &self,
        grant: &Grant<'_>,
        req: api::SignRequest,
    ) -> Result<api::SignResponse, ApiError> {
        let alias = grant.alias;
        let (entry, key) = self.key_for(grant, Op::Sign).await?;
        let algorithm = rules::signing_algorithm(alias, key, req.algorithm)?;
        let input = rules::sign_input(req.message.as_ref(), req.digest.as_ref(), "")?;
        rules::check_sign_input(algorithm, input, "")?;
        let known = entry.metadata().await?;
        let sig = entry
            .backend
            .sign(entry.known(&known), input, algorithm)
            .await?;
        let wanted = req.format.unwrap_or_default();
        Ok(api::SignResponse {
            algorithm: sig.algorithm,
            signature: B64Out(for_caller(
                entry,
                sig.algorithm,
                sig.bytes,
                sig.encoding,
                wanted,
            )?),
            key: alias.to_owned(),
            version: sig.version,
        })
    }

    pub async fn sign_batch(
        &self,
        grant: &Grant<'_>,
        req: api::SignBatchRequest,
    ) -> Result<api::SignBatchResponse, ApiError> {
        let (caller, alias) = (&grant.caller, grant.alias);
        let (entry, key) = self.key_for(grant, Op::Sign).await?;
        self.check_batch(req.items.len())?;
        let algorithm = rules::signing_algorithm(alias, key, req.algorithm)?;
        let inputs = req
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("items[{i}].");
                let input = rules::sign_input(item.message.as_ref(), item.digest.as_ref(), &at)?;
                rules::check_sign_input(algorithm, input, &at)?;
                Ok(input)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        // In the caller's lane (`limits.batch_concurrency` at a time, all its
        // batches together), in order; the first failure
        // fails the batch (its signatures are one answer).
        // (The calls are made first and polled by the stream: a closure in
        // the stream would not be Send for every lifetime of its input.)
        let known = entry.metadata().await?;
        let calls: Vec<_> = inputs
            .into_iter()
            .map(|input| entry.backend.sign(entry.known(&known), input, algorithm))
            .collect();
        let signed: Vec<backend::Signature> = (self.lanes.run(self.counted_as(caller), calls))
            .try_collect()
            .await?;
        let wanted = req.format.unwrap_or_default();
        let mut signatures = Vec::with_capacity(signed.len());
        let mut made_by = None;
        for sig in signed {
            let bytes = for_caller(entry, sig.algorithm, sig.bytes, sig.encoding, wanted)?;
            signatures.push(b64(&bytes));
            made_by = Some((sig.algorithm, sig.version));
        }
        let (algorithm, version) = made_by.expect("at least one item was signed");
        Ok(api::SignBatchResponse {
            signatures,
            algorithm,
            key: alias.to_owned(),
            version,
        })
    }

    pub async fn verify(
        &self,
        grant: &Grant<'_>,
        req: api::VerifyRequest,
    ) -> Result<api::VerifyResponse, ApiError> {
        let alias = grant.alias;
        let (entry, key) = self.key_for(grant, Op::Verify).await?;
        let algorithm = rules::signing_algorithm(alias, key, req.algorithm)?;
        let input = rules::sign_input(req.message.as_ref(), req.digest.as_ref(), "")?;
        rules::check_sign_input(algorithm, input, "")?;
        let version = req.version.as_ref().map(|v| v.0.as_str());
        self.check_version(entry, version).await?;
        let verified = if let Some(kms) = entry.backend.verifier() {
            let der = crypto::signature_as_der(algorithm, &req.signature.0, req.format);
            let known = entry.metadata().await?;
            kms.verify(entry.known(&known), input, &der, algorithm, version)
                .await?
        } else {
            self.verify_locally(
                entry,
                algorithm,
                input,
                &req.signature.0,
                req.format,
                version,
            )
            .await?
        };
        Ok(api::VerifyResponse {
            valid: verified.valid,
            version: verified.version,
        })
    }

    /// Verification with the cached public key, for backends without a
    /// verify API: the named version, or every enabled version newest first.
    async fn verify_locally(
        &self,
        entry: &Arc<KeyEntry>,
        algorithm: Algorithm,
        input: SignInput<'_>,
        signature: &[u8],
        format: Option<SignatureFormat>,
        version: Option<&str>,
    ) -> Result<backend::Verified, ApiError> {
        let versions: Vec<String> = match version {
            Some(v) => vec![v.to_owned()],
            None => {
                let m = entry.backend.metadata(entry.key_ref()).await?;
                let mut vs: Vec<_> = m
                    .versions
                    .into_iter()
                    .filter(|v| v.enabled)
                    .map(|v| v.version)
                    .collect();
                vs.reverse();
                if vs.is_empty() {
                    vs.push(m.current_version);
                }
                vs
            }
        };
        let format = format.unwrap_or_else(|| crypto::guess_format(algorithm, signature));
        for v in &versions {
            let pk = entry.public_key(Some(v)).await?;
            let valid = crypto::verify_locally(algorithm, &pk.spki_der, input, signature, format)
                .map_err(|e| ApiError::new(Code::OperationNotSupported, e.to_string()))?;
            if valid {
                return Ok(backend::Verified {
                    valid: true,
                    version: pk.version.clone(),
                });
            }
        }
        Ok(backend::Verified {
            valid: false,
            version: versions[0].clone(),
        })
    }
}

/// A signature as the backend made it, in the encoding the caller asked
/// for and low-S; a malformed one from the KMS is its error (502).
pub(super) fn for_caller(
    entry: &KeyEntry,
    algorithm: Algorithm,
    bytes: Vec<u8>,
    made: SignatureFormat,
    wanted: SignatureFormat,
) -> Result<Vec<u8>, ApiError> {
    crypto::signature_for_caller(algorithm, bytes, made, wanted).ok_or_else(|| {
        ApiError::new(
            Code::BackendError,
            format!(
                "backend `{}` returned a malformed {algorithm} signature for key `{}`",
                entry.backend_name, entry.alias
            ),
        )
    })
}
