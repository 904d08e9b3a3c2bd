//! The replay guard (opt-in per key, `replay_guard: true`): a request must
//! carry `x-request-nonce` and `x-request-timestamp` (Unix seconds); a
//! timestamp more than `limits.replay_window` off the sidecar's clock, or a
//! nonce the same caller uid already used, is refused with 409
//! `replayed_request`.
//!
//! A nonce is remembered until its timestamp leaves the window (so a request
//! stamped ahead of time cannot be replayed once the nonce is forgotten).
//! What is remembered is bounded in bytes (`limits.replay_memory`): each
//! nonce costs a fixed [`ENTRY_BYTES`] whatever its length (a 128-bit hash
//! of uid and nonce, and its timestamp), and a nonce is at most
//! [`MAX_NONCE`] characters. A nonce is **never forgotten early**: evicting
//! one would make a request captured before a flood replayable again. So
//! when a caller uid holds its share (half of the room) its next guarded
//! request gets 429 `rate_limited`, and when the room is full everybody's
//! gets 503 `overloaded` — both retryable, and nothing is remembered for
//! them. One guard serves for the sidecar's lifetime: a config reload keeps
//! every nonce, and a changed `replay_window` applies to the nonces already
//! seen (they are kept by timestamp, not by a deadline fixed when they came).
//!
//! The guard runs after the caller's rules, so a caller without a grant
//! learns nothing about the key and spends no nonce.

use crate::api::{ApiError, Code};
use crate::policy::Principal;
use http::HeaderMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub const NONCE: &str = "x-request-nonce";
pub const TIMESTAMP: &str = "x-request-timestamp";
/// Shortest and longest nonce, in visible ASCII characters.
pub const MIN_NONCE: usize = 8;
pub const MAX_NONCE: usize = 64;
/// What one remembered nonce costs at most: its map slot (hash, timestamp,
/// uid and the table's spare room) and its place in the expiry queue.
pub const ENTRY_BYTES: u64 = 128;

/// A nonce as remembered: the first 128 bits of SHA-256(uid ‖ nonce).
type Tag = [u8; 16];

/// The settings a check runs under, from the routes in force.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// `limits.replay_window`.
    pub window: Duration,
    /// `limits.replay_memory` in nonces.
    pub capacity: usize,
}

impl Window {
    pub fn new(window: Duration, memory: u64) -> Self {
        Self {
            window,
            capacity: usize::try_from(memory / ENTRY_BYTES).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Default)]
struct Seen {
    /// Each remembered nonce: its timestamp and whose share it counts in.
    tags: HashMap<Tag, (i64, Principal)>,
    /// The same nonces, oldest timestamp first, to forget them in order.
    queue: BinaryHeap<Reverse<(i64, Tag)>>,
    /// Nonces remembered per caller (as the per-caller limits count them).
    per_caller: HashMap<Principal, usize>,
}

impl Seen {
    /// Forgets the nonces whose timestamps are out of the window at `now`
    /// (kept one second more for the clock's granularity).
    fn forget_before(&mut self, now: i64, window: i64) {
        while let Some(Reverse((stamp, tag))) = self.queue.peek().copied() {
            if stamp.saturating_add(window).saturating_add(1) > now {
                break;
            }
            self.queue.pop();
            if let Some((_, caller)) = self.tags.remove(&tag)
                && let Some(n) = self.per_caller.get_mut(&caller)
            {
                *n -= 1;
                if *n == 0 {
                    self.per_caller.remove(&caller);
                }
            }
        }
    }
}

/// The nonces seen, shared by every config the sidecar runs.
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("nonces", &self.remembered())
            .finish()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn tag(uid: u32, nonce: &str) -> Tag {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&uid.to_be_bytes());
    ctx.update(nonce.as_bytes());
    let mut tag = Tag::default();
    tag.copy_from_slice(&ctx.finish().as_ref()[..16]);
    tag
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self {
            seen: Mutex::new(Seen::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("the nonce lock is never poisoned")
    }

    /// Nonces remembered now.
    pub fn remembered(&self) -> usize {
        self.lock().tags.len()
    }

    /// Admits a request of caller `uid` once per nonce; its nonces count in
    /// the share of `caller` (the uid, or the gid of a gid-only rule, so that
    /// switching uids does not buy more room).
    pub fn check(
        &self,
        uid: u32,
        caller: Principal,
        headers: &HeaderMap,
        w: Window,
    ) -> Result<(), ApiError> {
        self.check_at(uid, caller, headers, w, unix_now())
    }

    fn check_at(
        &self,
        uid: u32,
        caller: Principal,
        headers: &HeaderMap,
        w: Window,
        now: i64,
    ) -> Result<(), ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let nonce = header(NONCE)
            .filter(|n| {
                (MIN_NONCE..=MAX_NONCE).contains(&n.len())
                    && n.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "this key is replay-guarded: send `{NONCE}` ({MIN_NONCE} to {MAX_NONCE} visible ASCII characters, unique per request) and `{TIMESTAMP}` (Unix seconds)"
                ))
            })?;
        let timestamp: i64 = header(TIMESTAMP)
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "this key is replay-guarded: send `{TIMESTAMP}` as Unix seconds"
                ))
            })?;
        let window = w.window.as_secs();
        if now.abs_diff(timestamp) > window {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!(
                    "`{TIMESTAMP}` is more than {window} s off the sidecar's clock ({now}) (limits.replay_window)"
                ),
            ));
        }
        let window = i64::try_from(window).unwrap_or(i64::MAX);
        let tag = tag(uid, nonce);
        let mut seen = self.lock();
        seen.forget_before(now, window);
        if seen.tags.contains_key(&tag) {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!("`{NONCE}` was already used: a replayed request"),
            ));
        }
        // Until the oldest nonce leaves the window, nothing gets room.
        let retry = || {
            seen.queue.peek().map_or(1, |Reverse((oldest, _))| {
                (oldest.saturating_add(window).saturating_add(1) - now).max(1) as u64
            })
        };
        if seen.tags.len() >= w.capacity {
            return Err(ApiError::new(
                Code::Overloaded,
                "the replay guard remembers as many nonces as it has room for (limits.replay_memory); retry when older ones leave limits.replay_window",
            )
            .retry_in(retry()));
        }
        let mine = seen.per_caller.get(&caller).copied().unwrap_or(0);
        if mine >= (w.capacity / 2).max(1) {
            return Err(ApiError::new(
                Code::RateLimited,
                format!(
                    "caller uid {uid} holds its share of the replay guard's nonces (half of limits.replay_memory); retry when older ones leave limits.replay_window"
                ),
            )
            .retry_in(retry()));
        }
        seen.tags.insert(tag, (timestamp, caller));
        seen.queue.push(Reverse((timestamp, tag)));
        *seen.per_caller.entry(caller).or_default() += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(nonce: &str, timestamp: i64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(NONCE, HeaderValue::from_str(nonce).unwrap());
        h.insert(TIMESTAMP, HeaderValue::from(timestamp));
        h
    }

    const NOW: i64 = 1_800_000_000;

    fn window(secs: u64, capacity: usize) -> Window {
        Window {
            window: Duration::from_secs(secs),
            capacity,
        }
    }

    #[test]
    fn a_nonce_stamped_ahead_is_remembered_until_its_timestamp_leaves_the_window() {
        let guard = ReplayGuard::new();
        let w = window(2, 100);
        let ahead = headers("nonce-ahead-1", NOW + 2);
        guard
            .check_at(1, Principal::Uid(1), &ahead, w, NOW)
            .unwrap();
        let replayed = |now| {
            guard
                .check_at(1, Principal::Uid(1), &ahead, w, now)
                .unwrap_err()
                .code
        };
        assert_eq!(replayed(NOW), Code::ReplayedRequest);
        // Past the window's length, but its timestamp is still in the window:
        // a nonce kept only for `window` would be forgotten by now.
        assert_eq!(
            replayed(NOW + 3),
            Code::ReplayedRequest,
            "replayed while its timestamp is still acceptable"
        );
        // Another uid has nonces of its own.
        guard
            .check_at(2, Principal::Uid(2), &headers("nonce-ahead-1", NOW), w, NOW)
            .unwrap();
        // Too far off either way.
        for off in [-3, 3] {
            let e = guard
                .check_at(
                    1,
                    Principal::Uid(1),
                    &headers(&format!("nonce-off{off}"), NOW + off),
                    w,
                    NOW,
                )
                .unwrap_err();
            assert_eq!(e.code, Code::ReplayedRequest);
        }
        // Out of the window, it is refused for its timestamp, and forgotten
        // (with the other uid's) by the next request that gets through.
        assert_eq!(
            guard
                .check_at(1, Principal::Uid(1), &ahead, w, NOW + 5)
                .unwrap_err()
                .code,
            Code::ReplayedRequest
        );
        assert_eq!(guard.remembered(), 2);
        guard
            .check_at(
                1,
                Principal::Uid(1),
                &headers("nonce-later", NOW + 5),
                w,
                NOW + 5,
            )
            .unwrap();
        assert_eq!(guard.remembered(), 1);
    }

    #[test]
    fn a_full_guard_refuses_instead_of_forgetting() {
        let guard = ReplayGuard::new();
        let w = window(300, 8);
        let captured = headers("captured-before-the-flood", NOW);
        guard
            .check_at(1, Principal::Uid(1), &captured, w, NOW)
            .unwrap();
        // Caller 2 fills its half, then is refused (429, retryable).
        for i in 0..4 {
            guard
                .check_at(
                    2,
                    Principal::Uid(2),
                    &headers(&format!("flood-{i:04}"), NOW),
                    w,
                    NOW,
                )
                .unwrap();
        }
        let e = guard
            .check_at(2, Principal::Uid(2), &headers("flood-more", NOW), w, NOW)
            .unwrap_err();
        assert_eq!((e.code, e.retryable), (Code::RateLimited, true));
        assert_eq!(
            e.retry_after,
            Some(301),
            "until the oldest nonce leaves the window"
        );
        // Others fill the rest; then everybody is refused (503), and the
        // request captured before the flood is still a replay.
        for uid in 3..6 {
            guard
                .check_at(
                    uid,
                    Principal::Uid(uid),
                    &headers("other-caller", NOW),
                    w,
                    NOW,
                )
                .unwrap();
        }
        let e = guard
            .check_at(7, Principal::Uid(7), &headers("a-new-caller", NOW), w, NOW)
            .unwrap_err();
        assert_eq!((e.code, e.retryable), (Code::Overloaded, true));
        assert_eq!(
            guard
                .check_at(1, Principal::Uid(1), &captured, w, NOW + 10)
                .unwrap_err()
                .code,
            Code::ReplayedRequest
        );
        assert_eq!(guard.remembered(), 8);
        // Once the old ones leave the window there is room again.
        guard
            .check_at(
                7,
                Principal::Uid(7),
                &headers("a-new-caller", NOW + 301),
                w,
                NOW + 301,
            )
            .unwrap();
        assert_eq!(guard.remembered(), 1);
    }

    #[test]
    fn uids_counted_as_one_caller_share_one_share() {
        // A root container switching uids inside a gid-only rule's gid.
        let guard = ReplayGuard::new();
        let (w, gid) = (window(300, 8), Principal::Gid(4242));
        for uid in 20_000..20_004 {
            guard
                .check_at(uid, gid, &headers("nonce-of-one", NOW), w, NOW)
                .unwrap();
        }
        let e = guard
            .check_at(20_004, gid, &headers("nonce-of-one", NOW), w, NOW)
            .unwrap_err();
        assert_eq!(e.code, Code::RateLimited);
        guard
            .check_at(
                1000,
                Principal::Uid(1000),
                &headers("another-caller", NOW),
                w,
                NOW,
            )
            .unwrap();
    }

    #[test]
    fn a_longer_window_keeps_the_nonces_already_seen_longer() {
        let guard = ReplayGuard::new();
        let stamp = headers("seen-under-10s", NOW);
        guard
            .check_at(1, Principal::Uid(1), &stamp, window(10, 100), NOW)
            .unwrap();
        // The window grew to 60 s (a reload): the timestamp is acceptable
        // for 60 s, so the nonce must be remembered that long.
        let e = guard
            .check_at(1, Principal::Uid(1), &stamp, window(60, 100), NOW + 30)
            .unwrap_err();
        assert_eq!(e.code, Code::ReplayedRequest);
        assert!(e.message.contains("already used"), "{}", e.message);
    }

    #[test]
    fn nonces_are_bounded_in_length() {
        let guard = ReplayGuard::new();
        let long = "n".repeat(MAX_NONCE + 1);
        let e = guard
            .check_at(
                1,
                Principal::Uid(1),
                &headers(&long, NOW),
                window(300, 100),
                NOW,
            )
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest);
        guard
            .check_at(
                1,
                Principal::Uid(1),
                &headers(&"n".repeat(MAX_NONCE), NOW),
                window(300, 100),
                NOW,
            )
            .unwrap();
    }
}
