//! Envelope encryption (SPEC §5) as operations: a data key from the cache
//! ([`crate::cache`]) seals the message locally in the v1 format
//! ([`crate::envelope::format`]); the KMS only ever sees the data key, which
//! is wrapped bound to the envelope purpose
//! ([`crate::envelope::wrapping_context`]). JSON bodies are sealed in one
//! piece; streamed bodies in 64 KiB segments with constant memory.

use super::{Service, rules};
use crate::api::{self, ApiError, B64Out, Code};
use crate::backend::{Context, canonical_context};
use crate::envelope::format::{self, AlgorithmId, Header, Opener, SEGMENT, Sealer, TAG};
use crate::envelope::{
    Chunks, Refused, decryption_failed, next_segment, open_segment, wrapping_context,
};
use crate::keys::KeyEntry;
use crate::policy::{Caller, Op};
use crate::stream::{BoxedStream, drain, read_error};
use bytes::Bytes;
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Chunks in flight between the sealing task and the connection.
const CHANNEL_DEPTH: usize = 4;

impl Service {
    /// The context to unwrap the DEK of an envelope of `algorithm` with:
    /// bound for algorithms 3 and 4; the plain context for the older 1 and 2
    /// only while `envelope.accept_unbound_until` allows.
    fn unwrapping_context(
        &self,
        algorithm: AlgorithmId,
        context: &Context,
    ) -> Result<Context, ApiError> {
        if algorithm.purpose_bound() {
            Ok(wrapping_context(context))
        } else if self.accepts_unbound_envelopes() {
            Ok(context.clone())
        } else {
            Err(decryption_failed())
        }
    }

    /// Seals `plaintext` with a cached data key (algorithm 3).
    pub async fn envelope_encrypt(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::EnvelopeEncryptRequest,
    ) -> Result<api::EnvelopeEncryptResponse, ApiError> {
        let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
        self.seal_envelope(entry, alias, req).await
    }

    pub async fn envelope_encrypt_batch(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::BatchRequest<api::EnvelopeEncryptRequest>,
    ) -> Result<api::BatchResponse<api::EnvelopeEncryptResponse>, ApiError> {
        let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
        self.batch(req.items, |item| self.seal_envelope(entry, alias, item))
            .await
    }

    pub async fn envelope_decrypt(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::EnvelopeDecryptRequest,
    ) -> Result<api::DecryptResponse, ApiError> {
        let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
        self.open_envelope(entry, alias, req).await
    }

    pub async fn envelope_decrypt_batch(
        &self,
        caller: &Caller,
        alias: &str,
        req: api::BatchRequest<api::EnvelopeDecryptRequest>,
    ) -> Result<api::BatchResponse<api::DecryptResponse>, ApiError> {
        let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
        self.batch(req.items, |item| self.open_envelope(entry, alias, item))
            .await
    }

    /// A JSON envelope of `req` under `entry`'s cached data key.
    async fn seal_envelope(
        &self,
        entry: &Arc<KeyEntry>,
        alias: &str,
        req: api::EnvelopeEncryptRequest,
    ) -> Result<api::EnvelopeEncryptResponse, ApiError> {
        rules::check_context(&req.context)?;
        let dek = self
            .data_keys()
            .encrypt_dek(
                entry,
                &wrapping_context(&req.context),
                req.plaintext.0.len() as u64,
            )
            .await?;
        let header = new_header(
            alias,
            &entry.id,
            &dek,
            AlgorithmId::BoundAes256GcmHkdfSha256,
        );
        let envelope = format::seal(
            &dek.plaintext,
            header,
            &canonical_context(&req.context),
            &req.plaintext.0,
        );
        Ok(api::EnvelopeEncryptResponse {
            envelope: B64Out(envelope),
            version: dek.version.clone(),
        })
    }

    /// Opens an envelope of any algorithm held in memory.
    /// The plaintext of a JSON envelope of `entry`.
    async fn open_envelope(
        &self,
        entry: &Arc<KeyEntry>,
        alias: &str,
        req: api::EnvelopeDecryptRequest,
    ) -> Result<api::DecryptResponse, ApiError> {
        rules::check_context(&req.context)?;
        let (header, _) = Header::parse(&req.envelope.0)
            .ok()
            .flatten()
            .filter(|(h, _)| h.alias == alias)
            .ok_or_else(decryption_failed)?;
        let unwrap_with = self.unwrapping_context(header.algorithm, &req.context)?;
        let dek = self
            .data_keys()
            .decrypt_dek(entry, &unwrap_with, &header.wrapped_dek)
            .await?;
        let plaintext = format::open(
            &dek.plaintext,
            &req.envelope.0,
            &canonical_context(&req.context),
        )
        .map_err(|_| decryption_failed())?;
        Ok(api::DecryptResponse {
            plaintext: B64Out(plaintext),
        })
    }

    /// Streams `input` out as a segmented envelope (algorithm 4). Errors
    /// before the first byte (policy, data key, a stalled body) are returned
    /// with the unread input; later ones abort the stream.
    pub async fn envelope_encrypt_stream(
        &self,
        caller: &Caller,
        alias: &str,
        context: Context,
        declared_len: Option<u64>,
        mut input: BoxedStream,
    ) -> Result<Chunks, Refused> {
        let prelude = async {
            let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
            rules::check_context(&context)?;
            // Reading before answering lets a client that sent `Expect:
            // 100-continue` start its upload now rather than after its timeout.
            let first = input.next().await;
            if let Some(Err(e)) = &first {
                return Err(read_error(e));
            }
            let dek = self
                .data_keys()
                .encrypt_dek(
                    entry,
                    &wrapping_context(&context),
                    declared_len.unwrap_or(0),
                )
                .await?;
            let header = new_header(
                alias,
                &entry.id,
                &dek,
                AlgorithmId::BoundAes256GcmHkdfSha256Segments64K,
            );
            let (sealer, prefix) =
                Sealer::new(&dek.plaintext, header, &canonical_context(&context));
            Ok::<_, ApiError>((sealer, prefix, first))
        };
        let (mut sealer, prefix, first) = match prelude.await {
            Ok(ready) => ready,
            Err(e) => return Err((e, input)),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::spawn(async move {
            if tx.send(Ok(Bytes::from(prefix))).await.is_err() {
                return;
            }
            let mut pending = Zeroizing::new(Vec::with_capacity(2 * SEGMENT));
            let mut input = futures_util::stream::iter(first).chain(input);
            let seal = |sealer: &mut Sealer, plain: &[u8], last: bool| {
                let mut out = Vec::with_capacity(plain.len() + TAG);
                sealer.seal(plain, last, &mut out);
                Ok(Bytes::from(out))
            };
            while let Some(chunk) = input.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                pending.extend_from_slice(&chunk);
                // A segment is only known not to be the last once more follows.
                while pending.len() > SEGMENT {
                    let out = seal(&mut sealer, &pending[..SEGMENT], false);
                    pending.drain(..SEGMENT);
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(seal(&mut sealer, &pending, true)).await;
        });
        Ok(rx)
    }

    /// Streams the plaintext of a segmented envelope read from `input`. The
    /// header, the data key and the first segment are checked before
    /// answering, so those failures are ordinary errors (returned with the
    /// unread input).
    pub async fn envelope_decrypt_stream(
        &self,
        caller: &Caller,
        alias: &str,
        context: Context,
        mut input: BoxedStream,
    ) -> Result<Chunks, Refused> {
        let prelude = async {
            let (entry, _) = self.key_for(caller, alias, Op::Envelope).await?;
            rules::check_context(&context)?;
            let mut buf: Vec<u8> = Vec::with_capacity(2 * (SEGMENT + TAG));
            let (header, prefix_len) = loop {
                match Header::parse(&buf) {
                    Ok(Some(parsed)) => break parsed,
                    Ok(None) => match input.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => return Err(read_error(&e)),
                        None => return Err(decryption_failed()),
                    },
                    Err(_) => return Err(decryption_failed()),
                }
            };
            if header.alias != alias || !header.algorithm.segmented() {
                return Err(decryption_failed());
            }
            let unwrap_with = self.unwrapping_context(header.algorithm, &context)?;
            let dek = self
                .data_keys()
                .decrypt_dek(entry, &unwrap_with, &header.wrapped_dek)
                .await?;
            let mut opener = Opener::new(
                &dek.plaintext,
                &header,
                &buf[..prefix_len],
                &canonical_context(&context),
            )
            .map_err(|_| decryption_failed())?;
            drop(dek);
            buf.drain(..prefix_len);
            let first = next_segment(&mut buf, &mut input)
                .await
                .map_err(|e| read_error(&e))?;
            let first = open_segment(&mut opener, first).map_err(|_| decryption_failed())?;
            Ok::<_, ApiError>((opener, buf, first))
        };
        let (mut opener, mut buf, first) = match prelude.await {
            Ok(ready) => ready,
            Err(e) => return Err((e, input)),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let alias = alias.to_owned();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while !opener.finished() {
                let result = match next_segment(&mut buf, &mut input).await {
                    Ok(segment) => open_segment(&mut opener, segment).map_err(|_| {
                        tracing::warn!(key.alias = %alias, code = Code::DecryptionFailed.as_str(), "envelope stream failed after its start; aborting the response");
                        io::Error::new(io::ErrorKind::InvalidData, "decryption_failed")
                    }),
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    // The aborted answer closes the connection: first let a
                    // client still writing the envelope finish, so that it
                    // sees the aborted answer rather than a broken pipe.
                    drain(input).await;
                    let _ = tx.send(result).await;
                    return;
                }
                if tx.send(result).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn new_header(
    alias: &str,
    key_ref: &str,
    dek: &crate::cache::Dek,
    algorithm: AlgorithmId,
) -> Header {
    Header {
        alias: alias.to_owned(),
        key_version: dek.version.clone(),
        key_ref: key_ref.to_owned(),
        wrapped_dek: dek.wrapped.clone(),
        message_id: format::new_message_id(),
        commitment: [0; 32],
        algorithm,
    }
}
