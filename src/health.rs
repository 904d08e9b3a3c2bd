//! Readiness: each backend's `health()`, run at most every few seconds and
//! cached, so that probes never spend KMS quota; a throttled backend counts
//! as healthy (SPEC §4 `/readyz`).
//!
//! Backends are checked independently: each has its own cached result and
//! its own check, run in the background (one at a time per backend, bounded
//! by the backend's timeout in the resilience layer). `/readyz` waits at
//! most [`PROBE_WAIT`] for a check in progress, so a backend that hangs is
//! reported not ready within a second instead of stalling the probe — and
//! the other backends' answers and keys are unaffected.

use crate::api;
use crate::backend::{Backend, ErrorKind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a good backend health result is reused by `/readyz`; a failure
/// is checked again sooner.
const HEALTH_TTL: Duration = Duration::from_secs(5);
const FAILED_HEALTH_TTL: Duration = Duration::from_secs(1);
/// How long `/readyz` waits for a check in progress before it reports the
/// backend as not answering.
pub const PROBE_WAIT: Duration = Duration::from_millis(800);

/// The backends' cached health checks.
#[derive(Debug)]
pub struct HealthChecks {
    probes: Vec<(String, Arc<Probe>)>,
}

/// One backend's checks.
#[derive(Debug)]
struct Probe {
    name: String,
    backend: Arc<dyn Backend>,
    state: Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    /// The last result and when it was taken.
    last: Option<(Instant, api::BackendHealth)>,
    /// A check in progress: becomes `true` when it is done.
    running: Option<watch::Receiver<bool>>,
}

impl HealthChecks {
    pub fn new(backends: BTreeMap<String, Arc<dyn Backend>>) -> Self {
        let probes = backends
            .into_iter()
            .map(|(name, backend)| {
                let probe = Probe {
                    name: name.clone(),
                    backend,
                    state: Mutex::new(ProbeState::default()),
                };
                (name, Arc::new(probe))
            })
            .collect();
        Self { probes }
    }

    /// Ready when every backend's last check passed. Backends are asked at
    /// the same time; none can hold up the others.
    pub async fn readiness(&self) -> (bool, api::Readiness) {
        let checks = self
            .probes
            .iter()
            .map(|(name, probe)| async move { (name.clone(), probe.clone().health().await) });
        let backends: BTreeMap<_, _> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .collect();
        let ready = backends.values().all(|b| b.status == "ok");
        let status = if ready { "ready" } else { "not_ready" };
        (
            ready,
            api::Readiness {
                status,
                backends,
                audit: None,
                socket: None,
            },
        )
    }
}

impl Probe {
    /// The cached result while fresh; otherwise the result of a check (this
    /// one's, or the one already running), waited for at most
    /// [`PROBE_WAIT`].
    async fn health(self: Arc<Self>) -> api::BackendHealth {
        let mut done = {
            let mut state = self.state.lock().expect("never poisoned");
            if let Some((at, health)) = &state.last {
                let ttl = if health.status == "ok" {
                    HEALTH_TTL
                } else {
                    FAILED_HEALTH_TTL
                };
                if at.elapsed() < ttl {
                    return aged(health, *at);
                }
            }
            match &state.running {
                Some(done) => done.clone(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    state.running = Some(rx.clone());
                    tokio::spawn(self.clone().check(tx));
                    rx
                }
            }
        };
        let finished = matches!(
            tokio::time::timeout(PROBE_WAIT, done.wait_for(|d| *d)).await,
            Ok(Ok(_))
        );
        let state = self.state.lock().expect("never poisoned");
        match (&state.last, finished) {
            (Some((at, health)), true) => aged(health, *at),
            _ => api::BackendHealth {
                status: "error",
                reason: Some(format!(
                    "the health check has not answered within {} ms; still waiting",
                    PROBE_WAIT.as_millis()
                )),
                checked_seconds_ago: 0,
            },
        }
    }

    /// Runs the backend's check (bounded by its timeout in the resilience
    /// layer) and stores the result.
    async fn check(self: Arc<Self>, done: watch::Sender<bool>) {
        let health = match self.backend.health().await {
            Ok(()) => api::BackendHealth {
                status: "ok",
                reason: None,
                checked_seconds_ago: 0,
            },
            Err(e) if e.kind == ErrorKind::Throttled => api::BackendHealth {
                status: "ok",
                reason: Some(format!("throttled: {}", e.message)),
                checked_seconds_ago: 0,
            },
            Err(e) => {
                tracing::warn!(backend = %self.name, error = %e, "backend health check failed");
                api::BackendHealth {
                    status: "error",
                    reason: Some(e.message),
                    checked_seconds_ago: 0,
                }
            }
        };
        {
            let mut state = self.state.lock().expect("never poisoned");
            state.last = Some((Instant::now(), health));
            state.running = None;
        }
        let _ = done.send(true);
    }
}

fn aged(health: &api::BackendHealth, at: Instant) -> api::BackendHealth {
    api::BackendHealth {
        checked_seconds_ago: at.elapsed().as_secs(),
        ..health.clone()
    }
}
