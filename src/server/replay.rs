//! The replay guard (opt-in per key, `replay_guard: true`): a request must
//! carry `x-request-nonce` and `x-request-timestamp` (Unix seconds); a
//! timestamp more than `limits.replay_window` off the sidecar's clock, or a
//! nonce the same caller uid already used, is refused with 409
//! `replayed_request`.
//!
//! A nonce is remembered until its timestamp leaves the window (so a request
//! stamped ahead of time cannot be replayed once the nonce is forgotten), in
//! a bounded cache: beyond `CAPACITY` live nonces the oldest are forgotten
//! early, which the per-caller rate limit keeps out of reach in practice.
//! The guard runs after the caller's rules, so a caller without a grant
//! learns nothing about the key and spends no nonce.

use crate::api::{ApiError, Code};
use http::HeaderMap;
use std::time::{Duration, Instant, SystemTime};

pub const NONCE: &str = "x-request-nonce";
pub const TIMESTAMP: &str = "x-request-timestamp";
const CAPACITY: u64 = 250_000;

/// Each nonce lives until the instant stored with it.
struct UntilOutOfWindow;

impl moka::Expiry<(u32, String), Instant> for UntilOutOfWindow {
    fn expire_after_create(
        &self,
        _key: &(u32, String),
        forget_at: &Instant,
        now: Instant,
    ) -> Option<Duration> {
        Some(forget_at.saturating_duration_since(now))
    }
}

pub struct ReplayGuard {
    window: Duration,
    seen: moka::sync::Cache<(u32, String), Instant>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("window", &self.window)
            .field("nonces", &self.seen.entry_count())
            .finish()
    }
}

impl ReplayGuard {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(UntilOutOfWindow)
                .build(),
        }
    }

    /// Admits a request of caller `uid` once per nonce.
    pub fn check(&self, uid: u32, headers: &HeaderMap) -> Result<(), ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let nonce = header(NONCE)
            .filter(|n| (8..=128).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "this key is replay-guarded: send `{NONCE}` (8 to 128 visible ASCII characters, unique per request) and `{TIMESTAMP}` (Unix seconds)"
                ))
            })?;
        let timestamp: i64 = header(TIMESTAMP)
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "this key is replay-guarded: send `{TIMESTAMP}` as Unix seconds"
                ))
            })?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let window = self.window.as_secs();
        if now.abs_diff(timestamp) > window {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!(
                    "`{TIMESTAMP}` is more than {window} s off the sidecar's clock ({now}) (limits.replay_window)"
                ),
            ));
        }
        // Remembered until `timestamp + window` has passed (one second more
        // for the clock's granularity).
        let left = (timestamp + window as i64 + 1 - now).max(0) as u64;
        let forget_at = Instant::now() + Duration::from_secs(left);
        let fresh = self
            .seen
            .entry((uid, nonce.to_owned()))
            .or_insert(forget_at)
            .is_fresh();
        if !fresh {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!("`{NONCE}` was already used: a replayed request"),
            ));
        }
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

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn a_nonce_stamped_ahead_is_remembered_until_its_timestamp_leaves_the_window() {
        let guard = ReplayGuard::new(Duration::from_secs(2));
        let ahead = headers("nonce-ahead-1", now() + 2);
        guard.check(1, &ahead).unwrap();
        assert_eq!(
            guard.check(1, &ahead).unwrap_err().code,
            Code::ReplayedRequest
        );
        // Past the window's length, but its timestamp is still in the window:
        // a nonce kept only for `window` would be forgotten by now.
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            guard.check(1, &ahead).unwrap_err().code,
            Code::ReplayedRequest,
            "replayed while its timestamp is still acceptable"
        );
        // Another uid has nonces of its own.
        guard.check(2, &headers("nonce-ahead-1", now())).unwrap();
        // Too far off either way.
        for off in [-3, 3] {
            let e = guard
                .check(1, &headers(&format!("nonce-off{off}"), now() + off))
                .unwrap_err();
            assert_eq!(e.code, Code::ReplayedRequest);
        }
    }
}
