//! Request bodies as byte streams, for the server and the envelope code
//! alike: the boxed stream type, the idle timeout of streamed uploads, the
//! API error a failed read maps to, and the bounded drain of a lingering
//! close.
//!
//! **Lingering close.** An answer given before the body was read (403, 413
//! from `Content-Length`, 429, or a streamed decryption that failed in a later
//! segment) would make the sidecar close the connection while the client is
//! still writing, and clients that write the body after the headers
//! (Python's `http.client`, `requests`) then see a broken pipe instead of the
//! answer. So the rest of the body is read and dropped — at most
//! [`LINGER_BYTES`] within [`LINGER_TIME`], as nginx's lingering close does —
//! and the connection is closed after the answer.

use crate::api::ApiError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::time::Duration;

/// A request body as a stream of bytes.
pub type BoxedStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Most bytes of an unwanted body read and dropped after an early answer.
pub const LINGER_BYTES: usize = 16 << 20;
/// How long an unwanted body is read after an early answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// `input`, ended with a `TimedOut` error when no chunk arrives for `idle`
/// (`limits.stream_idle_timeout`).
pub fn idle_timeout<S>(input: S, idle: Duration) -> BoxedStream
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
{
    Box::pin(
        futures_util::stream::unfold(Some(input), move |state| async move {
            let mut input = state?;
            match tokio::time::timeout(idle, input.next()).await {
                Ok(Some(item)) => Some((item, Some(input))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {idle:?} (limits.stream_idle_timeout)"),
                    )),
                    None,
                )),
            }
        })
        // Polled again after its end (a drain after a read to the end), it
        // answers `None` rather than panicking.
        .fuse(),
    )
}

/// The API error for a failed read of a streamed body: 408 when it stalled.
pub fn read_error(e: &io::Error) -> ApiError {
    if e.kind() == io::ErrorKind::TimedOut {
        ApiError::invalid(format!("the request body stalled: {e}"))
            .with_status(StatusCode::REQUEST_TIMEOUT)
    } else {
        ApiError::invalid(format!("could not read the request body: {e}"))
    }
}

/// Reads and drops what is left of a body the answer did not need (at most
/// [`LINGER_BYTES`] within [`LINGER_TIME`]), so that a client still writing
/// it reaches the point where it reads the answer.
pub async fn drain<S>(input: S)
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    // The input may have ended already: fused, it says so again.
    let mut input = input.fuse();
    let read = async {
        let mut left = LINGER_BYTES;
        while let Some(Ok(chunk)) = input.next().await {
            match left.checked_sub(chunk.len()) {
                Some(l) => left = l,
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read).await;
}

/// [`drain`] in the background, while the answer is written.
pub fn linger<S>(input: S)
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
{
    tokio::spawn(drain(input));
}
