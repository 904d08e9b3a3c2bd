//! The layer every backend is wrapped in: resilience (SPEC §8) — a timeout
//! per call that bounds its retries too, retries of retryable failures with
//! exponential backoff and ±20 % jitter, a circuit breaker, a cap on calls in
//! flight — and observability (SPEC §10): every call, whoever makes it
//! (service, data-key cache, health checks, audit checkpoints), runs in a
//! `backend_call` span and is counted in `backend_calls_total` and
//! `backend_call_duration_seconds`. It is a [`Backend`] decorator, so each
//! KMS gets it the same way.
//!
//! Retries use `backon`'s exponential backoff with our ±20 % jitter on top
//! (backon's own jitter only adds up to +100 %). The breaker is a small state
//! machine here: the crates that offer one (failsafe) neither count
//! successes to close a half-open circuit nor expose the state for a metric.

use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, Error, ErrorKind, KeyMetadata, KeyRef,
    KeyStatus, Mac, PublicKey, Rewrap, Rewrapped, Rotate, Sealed, Signature, Verify, identity,
};
use crate::config::{Circuit, Retries};
use crate::crypto::{Algorithm, SignInput};
use crate::metrics::{Cached, Metrics};
use crate::telemetry;
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing::field::Empty;

/// A backend behind a timeout, retries, a circuit breaker and a concurrency cap.
pub struct Resilient {
    name: String,
    inner: Arc<dyn Backend>,
    timeout: Duration,
    retries: Retries,
    breaker: Breaker,
    permits: Semaphore,
    metrics: Arc<Metrics>,
    /// This backend's series, looked up once rather than on every call.
    series: Series,
    /// The projected identity token the backend reads, if any.
    identity: Option<Arc<identity::IdentityToken>>,
}

/// The metric series of one backend: its breaker state, and per operation
/// its call latency and successful calls. Failures are rarer and labelled
/// by their kind: they are looked up when they happen.
struct Series {
    circuit_state: prometheus::IntGauge,
    ops: Cached<(prometheus::Histogram, prometheus::IntCounter)>,
}

/// Every `op` label the layer records.
const OPS: &[&str] = &[
    "health",
    "metadata",
    "key_status",
    "public_key",
    "sign",
    "verify",
    "encrypt",
    "decrypt",
    "rewrap",
    "generate_data_key",
    "mac",
    "verify_mac",
    "rotate",
];

impl Series {
    fn new(name: &str, metrics: &Metrics) -> Self {
        Self {
            circuit_state: metrics.circuit_breaker_state.with_label_values(&[name]),
            ops: Cached::new(OPS),
        }
    }
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resilient {
    pub fn new(
        name: &str,
        inner: Arc<dyn Backend>,
        timeout: Duration,
        retries: Retries,
        circuit: Circuit,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let series = Series::new(name, &metrics);
        series.circuit_state.set(0);
        Self {
            series,
            name: name.to_owned(),
            inner,
            timeout,
            retries,
            breaker: Breaker::new(circuit),
            permits: Semaphore::new(concurrency),
            metrics,
            identity: None,
        }
    }

    /// Checks the backend's projected identity token every
    /// [`identity::CHECK_EVERY`] and at each health check: a wrong, expired
    /// or missing token is logged, and leads the readiness reason of a
    /// backend that is not ready.
    pub fn with_identity(mut self, token: Option<Arc<identity::IdentityToken>>) -> Self {
        if let Some(token) = &token {
            token.spawn_checks();
        }
        self.identity = token;
        self
    }

    /// Runs one backend operation `op` under the layer, in its span, and
    /// records its outcome and latency.
    async fn observed<T>(
        &self,
        op: &'static str,
        key: Option<&str>,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let span = tracing::debug_span!(
            "backend_call",
            backend = %self.name,
            op,
            key.alias = key,
            request_id = telemetry::request_id().as_deref(),
            outcome = Empty,
            otel.status_description = Empty,
        );
        let result = call.instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.label(),
        };
        telemetry::ended(&span, outcome, result.is_err());
        let elapsed = started.elapsed().as_secs_f64();
        let metrics = &self.metrics;
        let series = || {
            (
                metrics
                    .backend_call_duration
                    .with_label_values(&[&self.name, op]),
                metrics
                    .backend_calls_total
                    .with_label_values(&[&self.name, op, "ok"]),
            )
        };
        self.series.ops.with(op, series, |(duration, ok)| {
            duration.observe(elapsed);
            if outcome == "ok" {
                ok.inc();
            } else {
                metrics
                    .backend_calls_total
                    .with_label_values(&[&self.name, op, outcome])
                    .inc();
            }
        });
        if let Err(e) = &result {
            span.in_scope(
                || tracing::debug!(error = %e, source = ?e.source, "backend call failed"),
            );
        }
        result
    }

    /// Runs `call` under the layer: fail fast while the circuit is open, wait
    /// for a slot, and retry retryable failures while attempts and
    /// `max_elapsed` allow — all within one `timeout`, which bounds the whole
    /// call, retries included (a caller never waits longer than it).
    async fn run<T, F, Fut>(&self, op: &'static str, key: KeyRef<'_>, call: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.observed(op, Some(key.alias), self.retried(call)).await
    }

    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.retries.initial_backoff.0)
            .with_max_delay(self.retries.max_backoff.0)
            .with_max_times(self.retries.max_attempts.saturating_sub(1) as usize)
            .build()
            .map(jitter);
        // i64: trace attributes have no unsigned integers.
        let mut attempt: i64 = 0;
        loop {
            attempt += 1;
            let (result, span) = self.attempt(&call, deadline, attempt).await;
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // A throttled call's `Retry-After` is a floor under the backoff.
            let retry = if error.retryable && self.breaker.admits() {
                delays
                    .next()
                    .map(|d| d.max(error.retry_after.unwrap_or_default()))
                    .filter(|d| {
                        started.elapsed() + *d < self.retries.max_elapsed.0
                            && tokio::time::Instant::now() + *d < deadline
                    })
            } else {
                None
            };
            match retry {
                Some(delay) => {
                    span.record("retry_in_ms", delay.as_millis() as i64);
                    self.metrics
                        .backend_retries
                        .with_label_values(&[&self.name])
                        .inc();
                    tracing::debug!(backend = %self.name, error = %error, delay = ?delay, "retrying a backend call");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }

    /// Attempt number `n`, cut off at `deadline`, in its `backend_attempt`
    /// span: its outcome and the circuit's state after it are recorded
    /// there, and the span is returned for the delay before the next.
    async fn attempt<T, F, Fut>(
        &self,
        call: &F,
        deadline: tokio::time::Instant,
        n: i64,
    ) -> (Result<T, Error>, tracing::Span)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let span = tracing::debug_span!(
            "backend_attempt",
            otel.kind = "client",
            attempt = n,
            outcome = Empty,
            circuit = Empty,
            retry_in_ms = Empty,
            otel.status_description = Empty,
        );
        let result = self
            .try_once(call, deadline, &span)
            .instrument(span.clone())
            .await;
        let outcome = result.as_ref().map_or_else(|e| e.kind.label(), |_| "ok");
        telemetry::ended(&span, outcome, result.is_err());
        (result, span)
    }

    async fn try_once<T, F, Fut>(
        &self,
        call: &F,
        deadline: tokio::time::Instant,
        span: &tracing::Span,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if !self.breaker.admits() {
            span.record("circuit", "open");
            return Err(self.open_error());
        }
        let outcome = tokio::time::timeout_at(deadline, async {
            let _permit = self.permits.acquire().await.expect("never closed");
            call().await
        })
        .await;
        let result = outcome.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "backend `{}` did not answer within {:?}",
                    self.name, self.timeout
                ),
            ))
        });
        let state = self.breaker.record(result.as_ref().err().map(|e| e.kind));
        self.series.circuit_state.set(state as i64);
        span.record("circuit", state.label());
        if state == State::Open && result.is_err() {
            tracing::warn!(backend = %self.name, "circuit breaker open: failing fast");
        }
        result
    }

    fn open_error(&self) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "backend `{}` is failing: its circuit breaker is open, calls resume within {:?}",
                self.name, self.breaker.circuit.open_for.0
            ),
        )
    }
}

/// Scales a backoff delay by a random factor in [0.8, 1.2].
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Circuit states, as exported by `kms_sidecar_circuit_breaker_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    /// The state after an attempt, on its trace span.
    fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Counts consecutive failures (unreachable, timed out, 5xx — not the
/// caller's mistakes, refusals or throttling, which show a working backend).
#[derive(Debug)]
struct Breaker {
    circuit: Circuit,
    state: Mutex<BreakerState>,
}

#[derive(Debug)]
struct BreakerState {
    state: State,
    failures: u32,
    successes: u32,
    /// Tokio's clock, so that tests can pause and advance it.
    opened: tokio::time::Instant,
}

impl Breaker {
    fn new(circuit: Circuit) -> Self {
        Self {
            circuit,
            state: Mutex::new(BreakerState {
                state: State::Closed,
                failures: 0,
                successes: 0,
                opened: tokio::time::Instant::now(),
            }),
        }
    }

    /// Whether a call may go to the backend now; an open circuit turns
    /// half-open once `open_for` has passed.
    fn admits(&self) -> bool {
        let mut s = self.state.lock().expect("never poisoned");
        if s.state == State::Open && s.opened.elapsed() >= self.circuit.open_for.0 {
            s.state = State::HalfOpen;
            s.successes = 0;
        }
        s.state != State::Open
    }

    /// Records an outcome (`None`: success) and returns the new state.
    fn record(&self, failure: Option<ErrorKind>) -> State {
        let failed = matches!(
            failure,
            Some(ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Backend)
        );
        let mut s = self.state.lock().expect("never poisoned");
        match (s.state, failed) {
            (State::Closed, false) => s.failures = 0,
            (State::Closed, true) => {
                s.failures += 1;
                if s.failures >= self.circuit.failures {
                    s.state = State::Open;
                    s.opened = tokio::time::Instant::now();
                }
            }
            (State::HalfOpen, false) => {
                s.successes += 1;
                if s.successes >= self.circuit.successes {
                    s.state = State::Closed;
                    s.failures = 0;
                }
            }
            (State::HalfOpen, true) => {
                s.state = State::Open;
                s.opened = tokio::time::Instant::now();
            }
            // A call admitted before the circuit opened.
            (State::Open, _) => {}
        }
        s.state
    }
}

#[async_trait]
impl Backend for Resilient {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// The backend's own health (timed out like a call); an open circuit is
    /// unavailable.
    /// The backend's own check. When it fails and the projected identity
    /// token has a problem, the token's problem leads the reason: it is what
    /// to fix, where the KMS's answer is often opaque. (A token problem
    /// alone does not make the backend unready: credentials it already has
    /// go on serving until they expire.)
    async fn health(&self) -> Result<(), Error> {
        let result = if self.breaker.admits() {
            let check = async {
                tokio::time::timeout(self.timeout, self.inner.health())
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!("health check timed out after {:?}", self.timeout),
                        ))
                    })
            };
            self.observed("health", None, check).await
        } else {
            Err(self.open_error())
        };
        let token = self.identity.as_ref().map(|t| t.check());
        match (result, token) {
            (Err(e), Some(Err(problem))) => Err(Error::new(
                e.kind,
                format!("{problem}; the backend: {}", e.message),
            )),
            (result, _) => result,
        }
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        self.run("metadata", key, || self.inner.metadata(key)).await
    }

    async fn key_status(&self, key: KeyRef<'_>) -> Result<KeyStatus, Error> {
        self.run("key_status", key, || self.inner.key_status(key))
            .await
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        self.run("public_key", key, || self.inner.public_key(key, version))
            .await
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        self.run("sign", key, || self.inner.sign(key, input, algorithm))
            .await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        self.run("encrypt", key, || {
            self.inner.encrypt(key, plaintext, context)
        })
        .await
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        self.run("decrypt", key, || {
            self.inner.decrypt(key, ciphertext, context)
        })
        .await
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        self.run("generate_data_key", key, || {
            self.inner.generate_data_key(key, size, context)
        })
        .await
    }

    fn transit_text(&self, ciphertext: &[u8]) -> Option<String> {
        self.inner.transit_text(ciphertext)
    }

    fn transit_ciphertext(&self, text: &str) -> Option<Result<Vec<u8>, Error>> {
        self.inner.transit_ciphertext(text)
    }

    fn verifier(&self) -> Option<&dyn Verify> {
        self.inner.verifier().map(|_| self as &dyn Verify)
    }

    fn macs(&self) -> Option<&dyn Mac> {
        self.inner.macs().map(|_| self as &dyn Mac)
    }

    fn rotator(&self) -> Option<&dyn Rotate> {
        self.inner.rotator().map(|_| self as &dyn Rotate)
    }

    /// Always: the driver's own, or its decrypt and encrypt, as one call.
    fn rewrapper(&self) -> Option<&dyn Rewrap> {
        Some(self)
    }
}

#[async_trait]
impl Verify for Resilient {
    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Algorithm,
        version: &str,
    ) -> Result<bool, Error> {
        let inner = (self.inner.verifier())
            .ok_or_else(|| Error::unsupported("this backend has no verify API"))?;
        self.run("verify", key, || {
            inner.verify(key, input, signature, algorithm, version)
        })
        .await
    }
}

#[async_trait]
impl Mac for Resilient {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        let inner = self.inner.mac_keys()?;
        self.run("mac", key, || inner.mac(key, message)).await
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: &str,
    ) -> Result<bool, Error> {
        let inner = self.inner.mac_keys()?;
        self.run("verify_mac", key, || {
            inner.verify_mac(key, message, mac, version)
        })
        .await
    }
}

#[async_trait]
impl Rotate for Resilient {
    /// Not retried: a rotation that timed out may have happened.
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let inner = self.inner.rotation()?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let call = || inner.rotate(key);
        let once = async { self.attempt(&call, deadline, 1).await.0 };
        self.observed("rotate", Some(key.alias), once).await
    }
}

#[async_trait]
impl Rewrap for Resilient {
    async fn rewrap(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Rewrapped, Error> {
        self.run("rewrap", key, || {
            super::rewrap(self.inner.as_ref(), key, ciphertext, context)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> Circuit {
        Circuit {
            failures: 3,
            open_for: crate::config::Duration(Duration::from_millis(50)),
            successes: 2,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(circuit());
        let down = Some(ErrorKind::Unavailable);
        assert_eq!(b.record(down), State::Closed);
        assert_eq!(b.record(down), State::Closed);
        assert_eq!(b.record(None), State::Closed, "a success resets the count");
        assert_eq!(b.record(Some(ErrorKind::KeyNotFound)), State::Closed);
        assert_eq!(b.record(Some(ErrorKind::Throttled)), State::Closed);
        b.record(down);
        b.record(down);
        assert_eq!(b.record(Some(ErrorKind::Timeout)), State::Open);
        assert!(!b.admits());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_closes_after_successes_and_reopens_on_failure() {
        let b = Breaker::new(circuit());
        for _ in 0..3 {
            b.record(Some(ErrorKind::Backend));
        }
        assert!(!b.admits());
        tokio::time::advance(Duration::from_millis(49)).await;
        assert!(!b.admits(), "open for open_for");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admits(), "half-open after open_for");
        assert_eq!(b.record(None), State::HalfOpen);
        assert_eq!(b.record(Some(ErrorKind::Unavailable)), State::Open);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(b.admits());
        assert_eq!(b.record(None), State::HalfOpen);
        assert_eq!(b.record(None), State::Closed);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(100)).as_secs_f64();
            assert!((0.08..=0.12).contains(&d), "{d}");
        }
    }
}
