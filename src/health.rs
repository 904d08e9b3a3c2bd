//! Readiness: each backend's `health()`, run at most every few seconds and
//! cached, so that probes never spend KMS quota; a throttled backend counts
//! as healthy (SPEC §4 `/readyz`).

use crate::api;
use crate::backend::{Backend, ErrorKind};
use crate::metrics::Metrics;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a good backend health result is reused by `/readyz`; a failure
/// is checked again sooner.
const HEALTH_TTL: Duration = Duration::from_secs(5);
const FAILED_HEALTH_TTL: Duration = Duration::from_secs(1);

/// The backends' cached health checks.
#[derive(Debug)]
pub struct HealthChecks {
    backends: BTreeMap<String, Arc<dyn Backend>>,
    metrics: Arc<Metrics>,
    /// Last result per backend and when it was taken. One lock, so that
    /// concurrent probes share one round of checks.
    cache: tokio::sync::Mutex<HashMap<String, (Instant, api::BackendHealth)>>,
}

impl HealthChecks {
    pub fn new(backends: BTreeMap<String, Arc<dyn Backend>>, metrics: Arc<Metrics>) -> Self {
        Self {
            backends,
            metrics,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Ready when every backend's last check passed.
    pub async fn readiness(&self) -> (bool, api::Readiness) {
        let mut cache = self.cache.lock().await;
        let mut backends = BTreeMap::new();
        for (name, backend) in &self.backends {
            let fresh = cache
                .get(name)
                .filter(|(at, h)| {
                    at.elapsed()
                        < if h.status == "ok" {
                            HEALTH_TTL
                        } else {
                            FAILED_HEALTH_TTL
                        }
                })
                .cloned();
            let (at, health) = match fresh {
                Some(hit) => hit,
                None => {
                    let checked = Instant::now();
                    let health = match self
                        .metrics
                        .observe_backend_call(name, "health", backend.health())
                        .await
                    {
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
                            tracing::warn!(backend = %name, error = %e, "backend health check failed");
                            api::BackendHealth {
                                status: "error",
                                reason: Some(e.message),
                                checked_seconds_ago: 0,
                            }
                        }
                    };
                    cache.insert(name.clone(), (checked, health.clone()));
                    (checked, health)
                }
            };
            let health = api::BackendHealth {
                checked_seconds_ago: at.elapsed().as_secs(),
                ..health
            };
            backends.insert(name.clone(), health);
        }
        let ready = backends.values().all(|b| b.status == "ok");
        let status = if ready { "ready" } else { "not_ready" };
        (
            ready,
            api::Readiness {
                status,
                backends,
                audit: None,
            },
        )
    }
}
