//! Signatures: sign, sign-batch and verify. The algorithm, the sign input and
//! the digest are checked by the shared [`rules`] before the backend signs;
//! ECDSA signatures come out low-S whatever the backend returned; backends
//! without a verify API are verified against the cached public key.

use super::{Grant, Service, rules};
use crate::api::{self, ApiError, B64Out, Code, b64};
use crate::backend;
use crate::crypto::{self, Algorithm, SignatureFormat};
use crate::keys::KeyEntry;
use crate::policy::Op;
use futures_util::TryStreamExt;

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
        let known = entry.metadata().await?;
        let versions = versions_to_try(&known, version);
        match entry.backend.verifier() {
            Some(kms) => {
                let der = &crypto::signature_as_der(algorithm, &req.signature.0, req.format);
                let key = entry.known(&known);
                first_valid(versions, |v| async move {
                    Ok(kms.verify(key, input, der, algorithm, &v).await?)
                })
                .await
            }
            // No verify API: with the cached public key of each version.
            None => {
                let signature = &req.signature.0;
                let format =
                    (req.format).unwrap_or_else(|| crypto::guess_format(algorithm, signature));
                first_valid(versions, |v| async move {
                    let pk = entry.public_key(Some(&v)).await?;
                    crypto::verify_locally(algorithm, &pk.spki_der, input, signature, format)
                        .map_err(|e| ApiError::new(Code::OperationNotSupported, e.to_string()))
                })
                .await
            }
        }
    }
}

/// The versions a verification tries: the one the caller named, else every
/// enabled version of the key's cached metadata, newest first (most
/// signatures and MACs are recent), or the current one if none is marked
/// enabled.
pub(super) fn versions_to_try(m: &backend::KeyMetadata, named: Option<&str>) -> Vec<String> {
    if let Some(v) = named {
        return vec![v.to_owned()];
    }
    let mut versions: Vec<String> = (m.versions.iter().rev())
        .filter(|v| v.enabled)
        .map(|v| v.version.clone())
        .collect();
    if versions.is_empty() {
        versions.push(m.current_version.clone());
    }
    versions
}

/// The first of `versions` that `check` finds valid; when none is, the
/// answer names the first tried.
pub(super) async fn first_valid<F, Fut>(
    versions: Vec<String>,
    mut check: F,
) -> Result<api::VerifyResponse, ApiError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<bool, ApiError>>,
{
    for v in &versions {
        if check(v.clone()).await? {
            return Ok(api::VerifyResponse {
                valid: true,
                version: v.clone(),
            });
        }
    }
    Ok(api::VerifyResponse {
        valid: false,
        version: versions.into_iter().next().unwrap_or_default(),
    })
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
