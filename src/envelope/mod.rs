//! The envelope format and what every envelope operation shares: the v1
//! format ([`format`]), the purpose binding of data keys
//! ([`wrapping_context`]), and reading segments off a stream. The operations
//! themselves are in `service::envelope`.
//!
//! A streamed decryption that fails after the answer has started (a tampered,
//! reordered or truncated later segment) ends the response without its final
//! chunk, so the client sees an incomplete body, never a successful one; only
//! segments that authenticated were sent before it.

pub mod format;

use crate::api::ApiError;
use crate::backend::Context;
use crate::stream::BoxedStream;
use bytes::Bytes;
use format::{Opener, SEGMENT, TAG};
use futures_util::{Stream, StreamExt};
use std::io;
use tokio::sync::mpsc;

/// The answer of a streaming operation: chunks, or an error that must abort
/// the response.
pub type Chunks = mpsc::Receiver<Result<Bytes, io::Error>>;

/// A streaming operation refused before its answer started, with what is
/// left of its input (for the lingering close).
pub type Refused = (ApiError, BoxedStream);

/// Context keys starting with this are the sidecar's; callers may not send
/// them.
pub const RESERVED_CONTEXT_PREFIX: &str = "kms-sidecar:";

/// The context entry that binds an envelope's DEK to its purpose.
pub const PURPOSE_KEY: &str = "kms-sidecar:purpose";

/// The context an envelope's DEK is wrapped and unwrapped with: the
/// caller's context plus `kms-sidecar:purpose = envelope`. Callers cannot
/// send reserved keys, so `decrypt` never unwraps an envelope's DEK, and a
/// data key from `datakey` (wrapped with the plain context) never opens as
/// an envelope's.
pub fn wrapping_context(context: &Context) -> Context {
    let mut bound = context.clone();
    bound.insert(PURPOSE_KEY.to_owned(), "envelope".to_owned());
    bound
}

/// The one opaque decryption failure, as the API answers it.
pub fn decryption_failed() -> ApiError {
    ApiError::from(crate::backend::Error::decryption_failed())
}

/// The next sealed segment and whether it is the last: a full segment once
/// more bytes follow it, else whatever is left at the end of the input.
pub async fn next_segment<S>(buf: &mut Vec<u8>, input: &mut S) -> Result<(Vec<u8>, bool), io::Error>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    loop {
        if buf.len() > SEGMENT + TAG {
            let rest = buf.split_off(SEGMENT + TAG);
            return Ok((std::mem::replace(buf, rest), false));
        }
        match input.next().await {
            Some(chunk) => buf.extend_from_slice(&chunk?),
            None => return Ok((std::mem::take(buf), true)),
        }
    }
}

pub fn open_segment(
    opener: &mut Opener,
    (mut segment, last): (Vec<u8>, bool),
) -> Result<Bytes, format::DecryptError> {
    let len = opener.open(&mut segment, last)?.len();
    segment.truncate(len);
    Ok(Bytes::from(segment))
}
