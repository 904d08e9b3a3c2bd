//! The credential refresher every backend shares (SPEC §8): one background
//! task, owned by a guard, keeps a backend's credential fresh — AWS
//! credentials, a Vault token, and later Azure and GCP tokens.
//!
//! A backend supplies a [`Source`], which makes the next credential given
//! the current one (Vault renews its token or logs in again; AWS asks its
//! provider chain) and reads the files it needs again each time. The
//! [`Refresher`]:
//!
//! - refreshes at [`REFRESH_AT`] (~70 %) of the credential's remaining
//!   lifetime, ±10 % jitter so that pods started together spread out,
//!   clamped to the [`Schedule`]'s bounds (a credential without an expiry is
//!   fetched again at the upper bound);
//! - after a failure keeps the last good credential while it is valid and
//!   retries with exponential backoff, ±20 % jitter;
//! - refreshes at once when woken ([`Handle::wake`], [`Handle::reject`] of a
//!   credential the KMS no longer accepts), and when a polled source says its
//!   credential was replaced at its origin (a rewritten token file);
//! - serves the current credential from memory, so requests never wait on a
//!   refresh (except [`Handle::refreshed`], for when there is none);
//! - exports `credential_expiry_timestamp_seconds{backend}` and
//!   `credential_refresh_total{backend,outcome}` (SPEC §10).
//!
//! Validity is kept on tokio's clock (monotonic, and paused in the tests
//! below); the exported expiry is wall-clock time. Credentials stay in the
//! source's own types, which redact and wipe them: nothing here prints one.

use crate::metrics::Metrics;
use crate::telemetry;
use async_trait::async_trait;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

/// Which fraction of its remaining lifetime a credential is refreshed at.
pub const REFRESH_AT: f64 = 0.7;
/// Spread of the refresh time: ±10 % of it.
const REFRESH_JITTER: f64 = 0.1;
/// Spread of a retry's wait: ±20 % of it (as backend retries, SPEC §8).
const RETRY_JITTER: f64 = 0.2;

/// A credential a [`Source`] made, and when it expires (`None`: never).
pub struct Fresh<T> {
    pub credential: T,
    pub expires: Option<SystemTime>,
}

/// Why a refresh failed: a message for logs and `/readyz` (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefreshError(pub String);

impl From<String> for RefreshError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// Where a backend's credentials come from.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The credential, in a type that wipes it on drop and never prints it.
    type Credential: Send + Sync + 'static;

    /// The next credential. `current` is the valid one in use (none at the
    /// start, once it expired, or after [`Handle::reject`]), for sources
    /// that renew rather than start over. Files a credential comes from are
    /// read again at every call, never kept beyond the credential they made.
    /// One call at a time; an error keeps `current` in use while it is valid.
    async fn refresh(
        &self,
        current: Option<&Self::Credential>,
    ) -> Result<Fresh<Self::Credential>, RefreshError>;

    /// How often to ask [`Source::replaced`]; `None` (the default): never.
    fn poll_every(&self) -> Option<Duration> {
        None
    }

    /// Whether `current` was replaced at its origin (its file now holds
    /// another one), so that it is refreshed at once. Default: `false`.
    async fn replaced(&self, _current: &Self::Credential) -> bool {
        false
    }
}

/// When a [`Refresher`] refreshes: after a success within `[min, max]`,
/// after failures from `retry` doubling up to `retry_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Earliest refresh after a success.
    pub min: Duration,
    /// Latest refresh after a success (also of credentials that never expire).
    pub max: Duration,
    /// The wait after a first failure, doubled per failure in a row.
    pub retry: Duration,
    /// The longest wait after failures.
    pub retry_max: Duration,
}

impl Schedule {
    /// The schedule of cloud credentials: at ~70 % of their lifetime
    /// within `credential_refresh` (default 1–15 min); after a failure from
    /// 5 s doubling up to 60 s, never longer than `credential_refresh.max`.
    pub fn within(bounds: crate::config::RefreshBounds) -> Self {
        Self {
            min: bounds.min.0,
            max: bounds.max.0,
            retry: Duration::from_secs(5).min(bounds.max.0),
            retry_max: Duration::from_secs(60).min(bounds.max.0),
        }
    }

    /// When to refresh a credential with `left` to live (`None`: never
    /// expires): [`REFRESH_AT`] of it ±10 %, within `[min, max]`.
    pub fn refresh_in(&self, left: Option<Duration>) -> Duration {
        let at = left.map_or(self.max, |left| left.mul_f64(REFRESH_AT));
        jittered(at, REFRESH_JITTER).max(self.min).min(self.max)
    }

    /// How long to wait after the `failures`-th failure in a row: `retry`
    /// doubled per failure, at most `retry_max`, ±20 %.
    pub fn retry_in(&self, failures: u32) -> Duration {
        let doubled = self
            .retry
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        jittered(doubled.min(self.retry_max), RETRY_JITTER).min(self.retry_max)
    }
}

/// `d` ± `spread` of it, uniformly.
fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + spread * (2.0 * fastrand::f64() - 1.0))
}

/// Why there is no valid credential (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// No refresh has ended yet.
    NotYet,
    /// The last refresh failed, and no valid credential is left.
    Failed(String),
    /// The credential expired before the next refresh.
    Expired,
    /// The KMS rejected the credential ([`Handle::reject`]); `failed`: why
    /// the refreshes since failed.
    Rejected { why: String, failed: Option<String> },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NotYet => f.write_str("not loaded yet"),
            NotReady::Failed(why) => f.write_str(why),
            NotReady::Expired => f.write_str("they expired before they could be refreshed"),
            NotReady::Rejected { why, failed: None } => {
                write!(
                    f,
                    "rejected as invalid, expired or revoked ({why}); refreshing"
                )
            }
            NotReady::Rejected {
                why,
                failed: Some(failed),
            } => write!(
                f,
                "rejected as invalid, expired or revoked ({why}), and refreshing failed: {failed}"
            ),
        }
    }
}

/// The background refresh of one backend's credential: the guard that owns
/// its task (dropping it stops the task) and, through `Deref`, the
/// [`Handle`] to read the credential.
pub struct Refresher<T> {
    handle: Handle<T>,
    task: tokio::task::AbortHandle,
}

impl<T> Drop for Refresher<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> std::ops::Deref for Refresher<T> {
    type Target = Handle<T>;

    fn deref(&self) -> &Handle<T> {
        &self.handle
    }
}

impl<T> fmt::Debug for Refresher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl<T: Send + Sync + 'static> Refresher<T> {
    /// Starts refreshing `backend`'s credential from `source`, the first
    /// refresh at once. Must be called within a tokio runtime.
    pub fn spawn<S>(backend: &str, source: S, schedule: Schedule, metrics: Arc<Metrics>) -> Self
    where
        S: Source<Credential = T>,
    {
        let (attempts, seen) = watch::channel(0);
        let shared = Arc::new(Shared {
            backend: backend.to_owned(),
            state: RwLock::new(State::default()),
            wake: Notify::new(),
            attempts: seen,
        });
        let task = tokio::spawn(
            run(source, shared.clone(), schedule, metrics, attempts)
                .instrument(tracing::info_span!("credentials", backend)),
        );
        Self {
            handle: Handle(shared),
            task: task.abort_handle(),
        }
    }

    /// Waits up to `within` for the first refresh to end, however it ends,
    /// so that a normal start is ready at once; a slower one goes on in the
    /// background.
    pub async fn first_refresh(&self, within: Duration) {
        let mut attempts = self.handle.0.attempts.clone();
        let _ = tokio::time::timeout(within, attempts.wait_for(|n| *n > 0)).await;
    }

    /// A handle to the credential, for code that does not own the task.
    pub fn handle(&self) -> Handle<T> {
        self.handle.clone()
    }
}

/// Reads a [`Refresher`]'s credential, wakes it, rejects a credential.
pub struct Handle<T>(Arc<Shared<T>>);

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.0.state.read().expect("never poisoned");
        f.debug_struct("Refresher")
            .field("backend", &self.0.backend)
            .field("loaded", &state.current.is_some())
            .field(
                "valid_until",
                &state.current.as_ref().map(|c| c.valid_until),
            )
            .field("failed", &state.failed)
            .field("rejected", &state.rejected)
            .finish()
    }
}

impl<T> Handle<T> {
    /// The backend whose credential this is.
    pub fn backend(&self) -> &str {
        &self.0.backend
    }

    /// The current credential, unless it expired or was rejected.
    pub fn current(&self) -> Option<Arc<T>> {
        self.ready().ok()
    }

    /// The current credential, or why there is none (the readiness check).
    pub fn ready(&self) -> Result<Arc<T>, NotReady> {
        self.0.ready()
    }

    /// Why the last refresh failed, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.0.state.read().expect("never poisoned").failed.clone()
    }

    /// Refreshes at once (after the refresh under way, if any).
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// Drops `credential`, which the KMS no longer accepts, if it is still
    /// the current one, and refreshes at once. Until a refresh succeeds there
    /// is no credential, and [`Handle::ready`] says why. Returns whether it
    /// was dropped.
    pub fn reject(&self, credential: &Arc<T>, why: &str) -> bool {
        let mut state = self.0.state.write().expect("never poisoned");
        if !state
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.credential, credential))
        {
            return false;
        }
        state.current = None;
        state.rejected = Some(why.to_owned());
        // Only failures of the refreshes from now on explain the state.
        state.failed = None;
        drop(state);
        tracing::warn!(backend = %self.0.backend, error = why, "credential rejected as invalid, expired or revoked; refreshing at once");
        self.wake();
        true
    }

    /// The current credential, else one from a refresh started now (or the
    /// one under way): for a caller that cannot go on without one.
    pub async fn refreshed(&self) -> Result<Arc<T>, NotReady> {
        if let Ok(current) = self.ready() {
            return Ok(current);
        }
        let mut attempts = self.0.attempts.clone();
        attempts.borrow_and_update();
        self.wake();
        // An error: the task is gone; answer from what is left.
        let _ = attempts.changed().await;
        self.ready()
    }

    /// Runs a KMS call made with the current credential (after waiting for
    /// one, [`Self::refreshed`]). When the KMS refuses the credential itself
    /// (`rejected` says why), drops it ([`Self::reject`]), waits for a new
    /// one and runs the call once more. The outer error: no credential; the
    /// inner result: the last attempt's.
    pub async fn call_rejecting<R, E, F, Fut>(
        &self,
        call: F,
        rejected: impl Fn(&E) -> Option<String>,
    ) -> Result<Result<R, E>, NotReady>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<R, E>>,
    {
        let credential = self.refreshed().await?;
        let first = call().await;
        let Some(why) = first.as_ref().err().and_then(&rejected) else {
            return Ok(first);
        };
        // The rejection starts the refresh: wait for it without asking for
        // another (a credential already replaced is used as it is).
        let mut attempts = self.0.attempts.clone();
        attempts.borrow_and_update();
        let renewed = if self.reject(&credential, &why) {
            let _ = attempts.changed().await;
            self.ready()
        } else {
            self.refreshed().await
        };
        if renewed.is_err() {
            return Ok(first);
        }
        Ok(call().await)
    }
}

/// What the task and the handles share.
struct Shared<T> {
    backend: String,
    state: RwLock<State<T>>,
    wake: Notify,
    /// How many refreshes have ended (the task holds the sender).
    attempts: watch::Receiver<u64>,
}

struct State<T> {
    current: Option<Current<T>>,
    /// Why the last refresh failed, until one succeeds.
    failed: Option<String>,
    /// Why the KMS rejected the last credential, until a refresh succeeds.
    rejected: Option<String>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            current: None,
            failed: None,
            rejected: None,
        }
    }
}

struct Current<T> {
    credential: Arc<T>,
    valid_until: Option<Instant>,
}

impl<T> Shared<T> {
    /// Makes `fresh` current, returning its remaining lifetime; one already
    /// expired is a failure.
    fn install(
        &self,
        fresh: Fresh<T>,
        metrics: &Metrics,
    ) -> Result<Option<Duration>, RefreshError> {
        let left = match fresh.expires {
            None => None,
            Some(expires) => match expires.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => Some(left),
                _ => {
                    return Err(RefreshError(
                        "the new credential had already expired".into(),
                    ));
                }
            },
        };
        let mut state = self.state.write().expect("never poisoned");
        state.current = Some(Current {
            credential: Arc::new(fresh.credential),
            valid_until: left.map(|left| Instant::now() + left),
        });
        state.failed = None;
        state.rejected = None;
        drop(state);
        let unix = fresh
            .expires
            .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics
            .credential_expiry
            .with_label_values(&[&self.backend])
            .set(unix);
        metrics
            .credential_refresh
            .with_label_values(&[&self.backend, "ok"])
            .inc();
        tracing::debug!(backend = %self.backend, left = ?left, "credential refreshed");
        Ok(left)
    }

    fn failed(&self, error: &RefreshError, metrics: &Metrics) {
        metrics
            .credential_refresh
            .with_label_values(&[&self.backend, "error"])
            .inc();
        tracing::warn!(backend = %self.backend, error = %error, "credential refresh failed; keeping the last good credential while it is valid");
        self.state.write().expect("never poisoned").failed = Some(error.0.clone());
    }

    fn ready(&self) -> Result<Arc<T>, NotReady> {
        let state = self.state.read().expect("never poisoned");
        if let Some(current) = &state.current
            && current
                .valid_until
                .is_none_or(|until| until > Instant::now())
        {
            return Ok(current.credential.clone());
        }
        Err(match (&state.rejected, &state.failed) {
            (Some(why), failed) => NotReady::Rejected {
                why: why.clone(),
                failed: failed.clone(),
            },
            (None, Some(failed)) => NotReady::Failed(failed.clone()),
            (None, None) if state.current.is_some() => NotReady::Expired,
            (None, None) => NotReady::NotYet,
        })
    }
}

/// The refresh task: waits for the next refresh (due, woken, or a polled
/// replacement), runs it, and schedules the one after.
async fn run<S: Source>(
    source: S,
    shared: Arc<Shared<S::Credential>>,
    schedule: Schedule,
    metrics: Arc<Metrics>,
    attempts: watch::Sender<u64>,
) {
    let poll = source.poll_every();
    let mut due = Instant::now();
    let mut failures = 0;
    loop {
        let polled = tokio::select! {
            () = tokio::time::sleep_until(due) => false,
            () = shared.wake.notified() => false,
            () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => true,
        };
        let current = shared.ready().ok();
        if polled
            && let Some(current) = &current
            && !source.replaced(current).await
        {
            continue;
        }
        // Each refresh is a trace of its own, not a child of the task's
        // span (which lives as long as the backend).
        let span = tracing::info_span!(
            parent: None,
            "credential_refresh",
            backend = %shared.backend,
            outcome = Empty,
            otel.status_description = Empty,
        );
        let outcome = source
            .refresh(current.as_deref())
            .instrument(span.clone())
            .await;
        let now = Instant::now();
        match outcome.and_then(|fresh| shared.install(fresh, &metrics)) {
            Ok(left) => {
                telemetry::ended(&span, "ok", false);
                failures = 0;
                due = now + schedule.refresh_in(left);
            }
            Err(error) => {
                telemetry::ended(&span, "error", true);
                span.in_scope(|| shared.failed(&error, &metrics));
                failures += 1;
                due = now + schedule.retry_in(failures);
            }
        }
        attempts.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
