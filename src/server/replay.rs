//! The replay guard (opt-in per key, `replay_guard: true`): a request must
//! carry `x-request-nonce` and `x-request-timestamp` (Unix seconds); a nonce
//! the same caller uid used in the last 5 minutes, or a timestamp more than
//! 5 minutes off the sidecar's clock, is refused with 409 `replayed_request`.
//!
//! Nonces are remembered for the window in a bounded cache: beyond
//! `CAPACITY` live nonces the oldest are forgotten early, which the
//! per-caller rate limit keeps out of reach in practice.

use crate::api::{ApiError, Code};
use http::HeaderMap;
use std::time::{Duration, SystemTime};

pub const NONCE: &str = "x-request-nonce";
pub const TIMESTAMP: &str = "x-request-timestamp";
/// How long a nonce is remembered, and how far a timestamp may be off.
pub const WINDOW: Duration = Duration::from_secs(300);
const CAPACITY: u64 = 250_000;

#[derive(Debug)]
pub struct ReplayGuard {
    seen: moka::sync::Cache<(u32, String), ()>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(WINDOW)
                .build(),
        }
    }
}

impl ReplayGuard {
    /// Admits a request of caller `uid` once per nonce within the window.
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
        if now.abs_diff(timestamp) > WINDOW.as_secs() {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!(
                    "`{TIMESTAMP}` is more than {} s off the sidecar's clock ({now})",
                    WINDOW.as_secs()
                ),
            ));
        }
        let fresh = self
            .seen
            .entry((uid, nonce.to_owned()))
            .or_insert(())
            .is_fresh();
        if !fresh {
            return Err(ApiError::new(
                Code::ReplayedRequest,
                format!(
                    "`{NONCE}` was already used in the last {} s: a replayed request",
                    WINDOW.as_secs()
                ),
            ));
        }
        Ok(())
    }
}
