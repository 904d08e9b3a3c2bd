//! Envelope encryption (SPEC §5) as operations: a data key from the cache
//! ([`crate::cache`]) seals the message locally in the v1 format
//! ([`crate::envelope::format`]); the KMS only ever sees the data key, which
//! is wrapped bound to the envelope purpose
//! ([`crate::envelope::wrapping_context`]). JSON bodies are sealed in one
//! piece; streamed bodies in 64 KiB segments with constant memory.
//! `envelope/rewrap` wraps an envelope's DEK again under the key's current
//! version and leaves the body as it is (algorithms 5 and 6); older
//! envelopes are opened and sealed again inside the sidecar.

use super::{Grant, Service, rules};
use crate::api::{self, ApiError, B64Out, Code};
use crate::backend::{self, Context, WrappedBy, canonical_context};
use crate::cache::Dek;
use crate::envelope::format::{self, AlgorithmId, Header, Opener, SEGMENT, Sealer, TAG};
use crate::envelope::{
    Chunks, Refused, decryption_failed, next_segment, open_segment, wrapping_context,
};
use crate::keys::KeyEntry;
use crate::policy::Op;
use crate::stream::{BoxedStream, drain, read_error};
use bytes::Bytes;
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use zeroize::{Zeroize, Zeroizing};

/// Chunks in flight between the sealing task and the connection.
const CHANNEL_DEPTH: usize = 4;

impl Service {
    /// The data key of an envelope with `header`, unwrapped (from the
    /// cache, else by the KMS) under the context its algorithm wrapped it
    /// with: bound for algorithms 3 to 6; the plain context for the older 1
    /// and 2 only while `envelope.accept_unbound_until` allows. The header
    /// of 5 and 6 must name the key version and key the KMS reported for
    /// the unwrap (recorded with a cached DEK): [`names_the_unwrap`].
    async fn header_dek(
        &self,
        entry: &Arc<KeyEntry>,
        header: &Header,
        context: &Context,
    ) -> Result<Arc<Dek>, ApiError> {
        let unwrap_with = if header.algorithm.purpose_bound() {
            wrapping_context(context)
        } else if self.accepts_unbound_envelopes() {
            context.clone()
        } else {
            return Err(decryption_failed());
        };
        let dek = self
            .data_keys()
            .decrypt_dek(entry, &unwrap_with, &header.wrapped_dek)
            .await?;
        if header.algorithm.rewrappable() && !names_the_unwrap(header, &dek.by, &entry.id) {
            return Err(decryption_failed());
        }
        Ok(dek)
    }

    /// The start of a streamed envelope request for `op`: the caller's key,
    /// and the envelope's header (of this key, segmented), the bytes read
    /// so far and how many of them are the header's prefix.
    async fn streamed_header<'g>(
        &self,
        grant: &Grant<'g>,
        op: Op,
        context: &Context,
        input: &mut BoxedStream,
    ) -> Result<(&'g Arc<KeyEntry>, Header, Vec<u8>, usize), ApiError> {
        let alias = grant.alias;
        let (entry, _) = self.key_for(grant, op).await?;
        rules::check_context(context)?;
        let (header, buf, prefix_len) = read_header(input).await?;
        if header.alias != alias || !header.algorithm.segmented() {
            return Err(decryption_failed());
        }
        Ok((entry, header, buf, prefix_len))
    }

    /// An opener for the segments of a streamed envelope, its data key's
    /// commitment checked; the header's prefix is taken off `buf`.
    async fn streamed_opener(
        &self,
        entry: &Arc<KeyEntry>,
        header: &Header,
        buf: &mut Vec<u8>,
        prefix_len: usize,
        context: &Context,
        canonical: &[u8],
    ) -> Result<Opener, ApiError> {
        let dek = self.header_dek(entry, header, context).await?;
        let opener = Opener::new(&dek.plaintext, header, &buf[..prefix_len], canonical)
            .map_err(|_| decryption_failed())?;
        drop(dek);
        buf.drain(..prefix_len);
        Ok(opener)
    }

    /// Seals `plaintext` with a cached data key (algorithm 5).
    pub async fn envelope_encrypt(
        &self,
        grant: &Grant<'_>,
        req: api::EnvelopeEncryptRequest,
    ) -> Result<api::EnvelopeEncryptResponse, ApiError> {
        let alias = grant.alias;
        let (entry, _) = self.key_for(grant, Op::Envelope).await?;
        self.seal_envelope(entry, alias, req).await
    }

    pub async fn envelope_encrypt_batch(
        &self,
        grant: &Grant<'_>,
        req: api::BatchRequest<api::EnvelopeEncryptRequest>,
    ) -> Result<api::BatchResponse<api::EnvelopeEncryptResponse>, ApiError> {
        let (caller, alias) = (&grant.caller, grant.alias);
        let (entry, _) = self.key_for(grant, Op::Envelope).await?;
        self.batch(caller, req.items, |item| {
            self.seal_envelope(entry, alias, item)
        })
        .await
    }

    pub async fn envelope_decrypt(
        &self,
        grant: &Grant<'_>,
        req: api::EnvelopeDecryptRequest,
    ) -> Result<api::DecryptResponse, ApiError> {
        let alias = grant.alias;
        let (entry, _) = self.key_for(grant, Op::Envelope).await?;
        self.open_envelope(entry, alias, req).await
    }

    pub async fn envelope_decrypt_batch(
        &self,
        grant: &Grant<'_>,
        req: api::BatchRequest<api::EnvelopeDecryptRequest>,
    ) -> Result<api::BatchResponse<api::DecryptResponse>, ApiError> {
        let (caller, alias) = (&grant.caller, grant.alias);
        let (entry, _) = self.key_for(grant, Op::Envelope).await?;
        self.batch(caller, req.items, |item| {
            self.open_envelope(entry, alias, item)
        })
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
        let header = new_header(alias, &dek, AlgorithmId::RewrappableAes256GcmHkdfSha256);
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

    /// The plaintext of an envelope of `entry` held in memory (any algorithm).
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
        let dek = self.header_dek(entry, &header, &req.context).await?;
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

    /// `envelope/rewrap` (JSON): the envelope with its DEK wrapped under the
    /// key's current version. For algorithms 5 and 6 only the header
    /// changes (the KMS unwraps the DEK under the context, so a wrong
    /// context fails); an older envelope is opened and sealed again as 5
    /// with a fresh message id, its plaintext never leaving the sidecar.
    pub async fn envelope_rewrap(
        &self,
        grant: &Grant<'_>,
        req: api::EnvelopeDecryptRequest,
    ) -> Result<api::EnvelopeEncryptResponse, ApiError> {
        let alias = grant.alias;
        let (entry, _) = self.key_for(grant, Op::Rewrap).await?;
        rules::check_context(&req.context)?;
        let (header, n) = Header::parse(&req.envelope.0)
            .ok()
            .flatten()
            .filter(|(h, _)| h.alias == alias)
            .ok_or_else(decryption_failed)?;
        if header.algorithm.rewrappable() {
            let header = self.rewrapped(entry, header, &req.context).await?;
            let mut envelope = header.encode();
            envelope.extend_from_slice(&req.envelope.0[n..]);
            return Ok(api::EnvelopeEncryptResponse {
                envelope: B64Out(envelope),
                version: header.key_version,
            });
        }
        let context = req.context.clone();
        let plaintext = self.open_envelope(entry, alias, req).await?.plaintext.0;
        let req = api::EnvelopeEncryptRequest {
            plaintext: api::B64(plaintext),
            context,
        };
        self.seal_envelope(entry, alias, req).await
    }

    /// `header` with its DEK wrapped again under the current version: the
    /// header must name what the KMS reported for the unwrap
    /// ([`names_the_unwrap`]), and the new one names what it reported for
    /// the new wrapping, never what the old header said.
    async fn rewrapped(
        &self,
        entry: &Arc<KeyEntry>,
        header: Header,
        context: &Context,
    ) -> Result<Header, ApiError> {
        let known = entry.metadata().await?;
        let rewrapped = backend::rewrap(
            entry.backend.as_ref(),
            entry.known(&known),
            &header.wrapped_dek,
            &wrapping_context(context),
        )
        .await?;
        if !names_the_unwrap(&header, &rewrapped.from, &entry.id) {
            return Err(decryption_failed());
        }
        Ok(Header {
            key_version: rewrapped.sealed.version,
            // A rewrap stays with the key that unwrapped (only its version moves).
            key_ref: rewrapped.from.key_ref,
            wrapped_dek: rewrapped.sealed.bytes,
            ..header
        })
    }

    /// `envelope/rewrap` streamed: a segmented envelope read from `input`,
    /// written out with its DEK wrapped under the current version. The body
    /// of algorithm 6 passes through as it is; algorithms 4 and 2 are
    /// opened and sealed again as 6, segment by segment. As for a streamed
    /// decryption, the header and the data key are checked before
    /// answering, and a later failure aborts the answer.
    pub async fn envelope_rewrap_stream(
        &self,
        grant: &Grant<'_>,
        context: Context,
        mut input: BoxedStream,
    ) -> Result<Chunks, Refused> {
        let alias = grant.alias;
        let prelude = async {
            let (entry, header, mut buf, prefix_len) = self
                .streamed_header(grant, Op::Rewrap, &context, &mut input)
                .await?;
            if header.algorithm.rewrappable() {
                let header = self.rewrapped(entry, header, &context).await?;
                buf.drain(..prefix_len);
                return Ok((header.encode(), buf, None));
            }
            let canonical = canonical_context(&context);
            let opener = self
                .streamed_opener(entry, &header, &mut buf, prefix_len, &context, &canonical)
                .await?;
            let dek = self
                .data_keys()
                .encrypt_dek(entry, &wrapping_context(&context), 0)
                .await?;
            let header = new_header(
                alias,
                &dek,
                AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K,
            );
            let (sealer, prefix) = Sealer::new(&dek.plaintext, header, &canonical);
            Ok::<_, ApiError>((prefix, buf, Some((opener, sealer))))
        };
        let (prefix, buf, reseal) = match prelude.await {
            Ok(ready) => ready,
            Err(e) => return Err((e, input)),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let alias = alias.to_owned();
        tokio::spawn(async move {
            if tx.send(Ok(Bytes::from(prefix))).await.is_err() {
                return;
            }
            let Some((opener, mut sealer)) = reseal else {
                // Algorithm 6: the body as it came.
                let read = (!buf.is_empty()).then(|| Ok::<_, io::Error>(Bytes::from(buf)));
                let mut body = futures_util::stream::iter(read).chain(input);
                while let Some(chunk) = body.next().await {
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
                return;
            };
            // Older algorithms: each segment opened and sealed again, its
            // plaintext wiped at once.
            let reseal = move |plain: Bytes, last: bool| {
                let mut out = Vec::with_capacity(plain.len() + TAG);
                sealer.seal(&plain, last, &mut out);
                if let Ok(mut plain) = plain.try_into_mut() {
                    plain.as_mut().zeroize();
                }
                Bytes::from(out)
            };
            each_segment(opener, buf, input, &tx, &alias, reseal).await;
        });
        Ok(rx)
    }

    /// Streams `input` out as a segmented envelope (algorithm 6). Errors
    /// before the first byte (policy, data key, a stalled body) are returned
    /// with the unread input; later ones abort the stream.
    pub async fn envelope_encrypt_stream(
        &self,
        grant: &Grant<'_>,
        context: Context,
        declared_len: Option<u64>,
        mut input: BoxedStream,
    ) -> Result<Chunks, Refused> {
        let alias = grant.alias;
        let prelude = async {
            let (entry, _) = self.key_for(grant, Op::Envelope).await?;
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
                &dek,
                AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K,
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
        grant: &Grant<'_>,
        context: Context,
        mut input: BoxedStream,
    ) -> Result<Chunks, Refused> {
        let alias = grant.alias;
        let prelude = async {
            let (entry, header, mut buf, prefix_len) = self
                .streamed_header(grant, Op::Envelope, &context, &mut input)
                .await?;
            let canonical = canonical_context(&context);
            let mut opener = self
                .streamed_opener(entry, &header, &mut buf, prefix_len, &context, &canonical)
                .await?;
            let first = next_segment(&mut buf, &mut input)
                .await
                .map_err(|e| read_error(&e))?;
            let first = open_segment(&mut opener, first).map_err(|_| decryption_failed())?;
            Ok::<_, ApiError>((opener, buf, first))
        };
        let (opener, buf, first) = match prelude.await {
            Ok(ready) => ready,
            Err(e) => return Err((e, input)),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let alias = alias.to_owned();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            each_segment(opener, buf, input, &tx, &alias, |plain, _| plain).await;
        });
        Ok(rx)
    }
}

/// Opens the segments of `input` (after those in `buf`) and sends each,
/// passed through `then` with whether it is the last, to `tx` until the last
/// one. A segment that does not open, or a read error, aborts the answer.
async fn each_segment(
    mut opener: Opener,
    mut buf: Vec<u8>,
    mut input: BoxedStream,
    tx: &mpsc::Sender<Result<Bytes, io::Error>>,
    alias: &str,
    mut then: impl FnMut(Bytes, bool) -> Bytes,
) {
    while !opener.finished() {
        let result = match next_segment(&mut buf, &mut input).await {
            Ok((segment, last)) => match open_segment(&mut opener, (segment, last)) {
                Ok(plain) => Ok(then(plain, last)),
                Err(_) => {
                    tracing::warn!(key.alias = %alias, code = Code::DecryptionFailed.as_str(), "envelope stream failed after its start; aborting the response");
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "decryption_failed",
                    ))
                }
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            // The aborted answer closes the connection: first let a client
            // still writing the envelope finish, so that it sees the aborted
            // answer rather than a broken pipe.
            drain(input).await;
            let _ = tx.send(result).await;
            return;
        }
        if tx.send(result).await.is_err() {
            return;
        }
    }
}

/// Reads a streamed envelope's header: the header, the bytes read so far
/// and how many of them are its prefix (`"KSE1" ‖ length ‖ header`).
async fn read_header(input: &mut BoxedStream) -> Result<(Header, Vec<u8>, usize), ApiError> {
    let mut buf: Vec<u8> = Vec::with_capacity(2 * (SEGMENT + TAG));
    loop {
        match Header::parse(&buf) {
            Ok(Some((header, n))) => return Ok((header, buf, n)),
            Ok(None) => match input.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(read_error(&e)),
                None => return Err(decryption_failed()),
            },
            Err(_) => return Err(decryption_failed()),
        }
    }
}

/// Whether an envelope header names the key version and key that the KMS
/// reported for the unwrap of its DEK (`by`; SPEC §5): a version the
/// answer allows, and the KMS's name of the key or, as earlier releases
/// wrote it, the key's `key:` from the config (`configured`), which the
/// unwrap went through. Algorithms 5 and 6 leave both fields out of the
/// AAD, so a rewrap can replace them; this keeps them from lying about
/// which version protects the envelope.
fn names_the_unwrap(header: &Header, by: &WrappedBy, configured: &str) -> bool {
    by.versions.admit(&header.key_version)
        && (header.key_ref == by.key_ref || header.key_ref == configured)
}

/// A header for a new envelope under `dek`: its key version and key as the
/// KMS reported them when it made the DEK.
fn new_header(alias: &str, dek: &crate::cache::Dek, algorithm: AlgorithmId) -> Header {
    Header {
        alias: alias.to_owned(),
        key_version: dek.version.clone(),
        key_ref: dek.by.key_ref.clone(),
        wrapped_dek: dek.wrapped.clone(),
        message_id: format::new_message_id(),
        commitment: [0; 32],
        algorithm,
    }
}
