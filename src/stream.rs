//! Request bodies as byte streams, for the server and the envelope code
//! alike: the boxed stream type, the pace streamed uploads must keep, the
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
/// (`limits.stream_idle_timeout`), or when, past the first `idle`, it has
/// come slower than `min_rate` bytes a second on average
/// (`limits.stream_min_rate`): a client dripping a byte just inside the idle
/// timeout would otherwise hold its connection and reservation forever.
pub fn paced<S>(input: S, idle: Duration, min_rate: u64) -> BoxedStream
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
{
    let started = tokio::time::Instant::now();
    let timed_out = |what: String| Err(io::Error::new(io::ErrorKind::TimedOut, what));
    Box::pin(
        futures_util::stream::unfold(Some((input, 0u64)), move |state| async move {
            let (mut input, mut seen) = state?;
            match tokio::time::timeout(idle, input.next()).await {
                Ok(Some(Ok(chunk))) => {
                    seen = seen.saturating_add(chunk.len() as u64);
                    let elapsed = started.elapsed();
                    if elapsed > idle && (seen as f64) < min_rate as f64 * elapsed.as_secs_f64() {
                        return Some((
                            timed_out(format!(
                                "{seen} bytes in {} s, under {min_rate} bytes a second (limits.stream_min_rate)",
                                elapsed.as_secs()
                            )),
                            None,
                        ));
                    }
                    Some((Ok(chunk), Some((input, seen))))
                }
                Ok(Some(Err(e))) => Some((Err(e), Some((input, seen)))),
                Ok(None) => None,
                Err(_) => Some((
                    timed_out(format!("no data for {idle:?} (limits.stream_idle_timeout)")),
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
