//! Request bodies: the memory budget they are read into, and reading a JSON
//! body within `limits.max_body` and `limits.body_timeout`.
//!
//! **Budget.** Every body held in memory (and every streamed envelope, for
//! its segment buffers) holds a [`Reservation`] of a global budget,
//! `limits.max_buffered_bytes`, for as long as its request runs and until
//! its answer has been written (so unread answers are bounded too). A caller
//! (a [`Principal`]: its uid, the gid of gid-only rules, or the container
//! on its own socket) may hold at most its fair share: the budget divided
//! among the callers holding or waiting for a reservation, and never more
//! than half of it while anybody else wants some (a single `max_body` is
//! always allowed). A request that does not fit waits up to
//! [`BUDGET_WAIT`], then gets 503 `overloaded`. Callers that no rule names
//! never get this far: they are refused from the path and their
//! credentials, before any body is read.
//!
//! **Room for the others.** The last eighth of the budget ([`reserve`]) is
//! only for a caller that holds nothing yet, or little ([`SMALL`]): one
//! caller filling its share — even alone, before anybody else came — never
//! leaves another caller's small request without room.
//!
//! **Lingering close.** An answer given before the body was read (403, 413
//! from `Content-Length`, 429, …) is followed by reading and dropping the
//! rest of the body ([`crate::stream::linger`]), then the connection is
//! closed.

use crate::api::{ApiError, Code};
use crate::policy::Principal;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use zeroize::Zeroizing;

/// How long a request waits for room in the budget before 503 `overloaded`.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// What a streamed envelope holds in memory at most (two segments being
/// assembled and the chunks queued towards the connection), reserved for
/// the whole stream.
pub const STREAM_RESERVATION: u64 = 8 * 64 * 1024;
/// A body of unknown length (chunked) reserves in steps of this much.
const STEP: u64 = 64 * 1024;
/// What a caller may hold in all and still use the reserve.
pub const SMALL: u64 = STEP;

/// The part of a budget of `total` bytes kept for callers that hold little:
/// an eighth, less where a single `floor`-sized body would not fit beside it.
fn reserve(total: u64, floor: u64) -> u64 {
    (total / 8).min(total - floor)
}

/// The global budget of request bodies held in memory.
#[derive(Debug)]
pub struct Budget {
    total: u64,
    /// A caller may always hold this much (one `max_body`).
    floor: u64,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    /// Bytes held per caller.
    held: HashMap<Principal, u64>,
    /// Requests waiting per caller (they count for the fair share).
    waiting: HashMap<Principal, u32>,
}

impl State {
    /// The most one caller may hold now.
    fn share(&self, who: Principal, total: u64, floor: u64) -> u64 {
        let mut callers = self.held.len() + self.waiting.len();
        if !self.held.contains_key(&who) && !self.waiting.contains_key(&who) {
            callers += 1;
        }
        let others = self
            .held
            .keys()
            .chain(self.waiting.keys())
            .any(|u| *u != who);
        let divisor = if others { callers.max(2) } else { 1 } as u64;
        (total / divisor).max(floor)
    }

    fn fits(&self, who: Principal, bytes: u64, total: u64, floor: u64) -> bool {
        let mine = self.held.get(&who).copied().unwrap_or(0);
        let into_reserve = self.used + bytes > total - reserve(total, floor);
        self.used + bytes <= total
            && mine + bytes <= self.share(who, total, floor)
            && (!into_reserve || mine == 0 || mine + bytes <= SMALL)
    }
}

/// Bytes of the budget held by one request; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    who: Principal,
    bytes: u64,
}

impl Budget {
    pub fn new(total: u64, max_body: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            floor: max_body.min(total),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the budget lock is never poisoned")
    }

    /// Bytes held by all requests now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn try_take(&self, who: Principal, bytes: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut s = self.lock();
        if !s.fits(who, bytes, self.total, self.floor) {
            return false;
        }
        s.used += bytes;
        *s.held.entry(who).or_default() += bytes;
        true
    }

    /// `bytes` for caller `who`, waiting up to [`BUDGET_WAIT`] for room.
    pub async fn reserve(
        self: &Arc<Self>,
        who: Principal,
        bytes: u64,
    ) -> Result<Reservation, ApiError> {
        let mut r = Reservation {
            budget: self.clone(),
            who,
            bytes: 0,
        };
        r.grow(bytes).await?;
        Ok(r)
    }

    async fn take(&self, who: Principal, bytes: u64) -> Result<(), ApiError> {
        if self.try_take(who, bytes) {
            return Ok(());
        }
        *self.lock().waiting.entry(who).or_default() += 1;
        let waited = tokio::time::timeout(BUDGET_WAIT, async {
            loop {
                let freed = self.freed.notified();
                if self.try_take(who, bytes) {
                    return;
                }
                freed.await;
            }
        })
        .await;
        {
            let mut s = self.lock();
            if let Some(n) = s.waiting.get_mut(&who) {
                *n -= 1;
                if *n == 0 {
                    s.waiting.remove(&who);
                }
            }
        }
        // Others may fit now that this caller no longer waits.
        self.freed.notify_waiters();
        waited.map_err(|_| {
            ApiError::new(
                Code::Overloaded,
                "too many request bodies are in memory (limits.max_buffered_bytes); retry shortly",
            )
            .retry_in(1)
        })
    }

    fn give_back(&self, who: Principal, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let waiters = {
            let mut s = self.lock();
            s.used -= bytes;
            if let Some(held) = s.held.get_mut(&who) {
                *held -= bytes;
                if *held == 0 {
                    s.held.remove(&who);
                }
            }
            !s.waiting.is_empty()
        };
        // Nobody to wake on the usual path (a waiter counts itself in
        // `waiting` before it tries again, so it cannot miss this).
        if waiters {
            self.freed.notify_waiters();
        }
    }
}

impl Reservation {
    /// Takes `bytes` more (waiting like [`Budget::reserve`]).
    pub async fn grow(&mut self, bytes: u64) -> Result<(), ApiError> {
        self.budget.take(self.who, bytes).await?;
        self.bytes += bytes;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.who, self.bytes);
    }
}

/// The `Content-Length` a request declares, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("request body is over the {max}-byte limit (limits.max_body)"),
    )
}

/// Reads a whole JSON body of at most `max` bytes into a buffer that is
/// zeroized on drop, holding budget for it. A declared `Content-Length` over
/// the limit is refused before anything is read or reserved; a chunked body
/// reserves as it grows and is refused as soon as it passes the limit. On
/// an error the body may be partly read: the caller lingers on the rest.
pub async fn read(
    body: &mut Incoming,
    headers: &HeaderMap,
    max: usize,
    budget: &Arc<Budget>,
    who: Principal,
) -> Result<(Zeroizing<Vec<u8>>, Reservation), ApiError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let mut reservation = budget.reserve(who, declared.unwrap_or(STEP)).await?;
    let mut buf = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0) as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len() + data.len();
        if len > max {
            return Err(too_large(max));
        }
        if len as u64 > reservation.bytes() {
            let step = (len as u64 - reservation.bytes()).div_ceil(STEP) * STEP;
            reservation.grow(step).await?;
            let room = reservation.bytes() as usize - buf.len();
            buf.reserve_exact(room);
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf, reservation))
}

/// The body's data as a stream of byte chunks.
pub fn stream(body: Incoming) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin {
    http_body_util::BodyDataStream::new(body).map(|r| r.map_err(io::Error::other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_caller_gets_half_while_another_waits_and_the_rest_waits_or_fails() {
        let budget = Budget::new(8 << 20, 1 << 20);
        // Alone, a caller may use the budget but its last eighth.
        let mut a: Vec<_> = Vec::new();
        for _ in 0..7 {
            a.push(budget.reserve(Principal::Uid(1), 1 << 20).await.unwrap());
        }
        assert_eq!(budget.used(), 7 << 20);
        // Another caller's first body takes the reserve.
        a.push(budget.reserve(Principal::Uid(3), 1 << 20).await.unwrap());
        assert_eq!(budget.used(), 8 << 20);
        // Over it: a request waits, then gets a retryable 503.
        let e = budget
            .reserve(Principal::Uid(1), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Overloaded);
        assert!(e.retryable && e.retry_after == Some(1));
        // Another caller waits; as the first caller's requests end, it gets in.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(Principal::Uid(2), 1 << 20).await })
        };
        tokio::task::yield_now().await;
        a.pop();
        let b = waiter.await.unwrap().unwrap();
        // While caller 2 holds some, caller 1 may hold at most half.
        a.truncate(3);
        let more = budget.reserve(Principal::Uid(1), 1 << 20).await.unwrap();
        assert_eq!(
            budget
                .reserve(Principal::Uid(1), 1 << 20)
                .await
                .unwrap_err()
                .code,
            Code::Overloaded,
            "caller 1 holds 4 MiB of 8: its half"
        );
        drop((a, b, more));
        assert_eq!(budget.used(), 0, "everything is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_filling_its_share_leaves_room_for_small_requests() {
        // The review: one caller held 200 unfinished 1 MiB bodies and every
        // 30-byte request of another got 503 for as long as they lasted.
        let budget = Budget::new(32 << 20, 1 << 20);
        let mut hog = Vec::new();
        while let Ok(r) = budget.reserve(Principal::Uid(1), 1 << 20).await {
            hog.push(r);
        }
        assert_eq!(budget.used(), 28 << 20, "all but the reserve");
        // Small requests of others get in, one after another and together.
        let mut small = Vec::new();
        for uid in 2..40 {
            small.push(budget.reserve(Principal::Uid(uid), 30).await.unwrap());
            let more = budget
                .reserve(Principal::Uid(uid), 64 << 10)
                .await
                .unwrap_err();
            assert_eq!(
                more.code,
                Code::Overloaded,
                "past SMALL, the reserve is not theirs"
            );
        }
        // A caller that holds more than a little cannot enter it.
        let big = budget
            .reserve(Principal::Uid(2), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(big.code, Code::Overloaded);
        drop((hog, small));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn growing_a_reservation_is_bounded_too() {
        let budget = Budget::new(1 << 20, 1 << 20);
        let mut r = budget.reserve(Principal::Uid(7), STEP).await.unwrap();
        for _ in 1..16 {
            r.grow(STEP).await.unwrap();
        }
        assert_eq!(r.bytes(), 1 << 20);
        assert_eq!(r.grow(STEP).await.unwrap_err().code, Code::Overloaded);
        drop(r);
        assert_eq!(budget.used(), 0);
    }
}
