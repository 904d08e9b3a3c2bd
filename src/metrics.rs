//! The Prometheus registry (prefix `kms_sidecar_`, SPEC §10): the metrics,
//! and their text exposition. Who records what lives with the code that does
//! it (backend calls in the resilience layer, requests in the routes, the
//! data-key cache); this module depends on no domain module. Labels are
//! bounded: ops, configured key aliases, backend names, codes — never values.
//! On the TCP probe listener the `key` label is shown as
//! `metrics.key_labels` says: the alias, a hash of it, or not at all (the
//! series of all keys added up).

use prometheus::proto::{Histogram, Metric, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// What the `key` label holds on the TCP probe listener
/// (`metrics.key_labels`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyLabels {
    /// The configured alias.
    #[default]
    Alias,
    /// `h-` and the first 12 hex digits of SHA-256(alias): series stay
    /// apart without naming the key (a pseudonym, not a secret).
    Hashed,
    /// No key label: series of all keys are added up.
    None,
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `requests_total{op,key,code}`; `code` is `ok` or the error code.
    pub requests_total: IntCounterVec,
    /// `request_duration_seconds{op}`.
    pub request_duration: HistogramVec,
    /// `container_requests_total{container,code}`: API requests that came
    /// through a container's own socket (`listen.per_container_dir`); the
    /// containers are those found at start, so the label set is bounded.
    pub container_requests: IntCounterVec,
    /// `backend_calls_total{backend,op,outcome}`; `outcome` is `ok` or the error code.
    pub backend_calls_total: IntCounterVec,
    /// `backend_call_duration_seconds{backend,op}`.
    pub backend_call_duration: HistogramVec,
    /// `datakey_cache_hits_total{key,op}`: data keys served from the cache
    /// (`op` is `encrypt` or `decrypt`); each hit is a KMS call saved.
    pub datakey_cache_hits: IntCounterVec,
    /// `datakey_cache_misses_total{key,op}`.
    pub datakey_cache_misses: IntCounterVec,
    /// `datakey_cache_backend_calls_total{key,op}`: KMS calls the cache made
    /// (`generate_data_key`, `decrypt`), refreshes included.
    pub datakey_backend_calls: IntCounterVec,
    /// `datakey_cache_revocations_total{key,reason}`: times a key's cached
    /// data keys were dropped (`disabled`, `deleted`, `pending_deletion`,
    /// `version_disabled`, `flush`).
    pub datakey_revocations: IntCounterVec,
    /// `credential_expiry_timestamp_seconds{backend}`: when the backend's
    /// current credentials expire (0 for credentials without an expiry).
    pub credential_expiry: prometheus::GaugeVec,
    /// `credential_refresh_total{backend,outcome}`.
    pub credential_refresh: IntCounterVec,
    /// `backend_failovers_total{backend,from,to}`: calls moved to a replica region.
    pub backend_failovers: IntCounterVec,
    /// `circuit_breaker_state{backend}`: 0 closed, 1 open, 2 half-open.
    pub circuit_breaker_state: prometheus::IntGaugeVec,
    /// `backend_retries_total{backend}`: retried backend calls.
    pub backend_retries: IntCounterVec,
    /// `rate_limited_total`: requests refused by `limits.per_caller`, and
    /// flushes of a key within a second of the last one.
    pub rate_limited: prometheus::IntCounter,
    /// Open connections on the socket.
    pub connections_open: IntGauge,
    /// Connections closed at accept because `limits.max_connections` was reached.
    pub connections_rejected: prometheus::IntCounter,
    /// `socket_bound`: 1 while the file at `listen.socket` is the socket the
    /// sidecar listens on, 0 while it could not take it back (not ready).
    pub socket_bound: IntGauge,
    /// `socket_replaced_total`: times the socket file was found removed or
    /// replaced by another process.
    pub socket_replaced: prometheus::IntCounter,
    /// `identity_token_expiry_seconds{backend}`: seconds until the backend's
    /// projected identity token expires (negative once it has), at the last
    /// look.
    pub identity_token_expiry: prometheus::GaugeVec,
    /// `config_reloads_total{outcome}`: `applied` or `rejected`.
    pub config_reloads: IntCounterVec,
    /// `config_generation`: 1 for the config the sidecar started with, one
    /// more for each reload applied since.
    pub config_generation: IntGauge,
}

/// `trace_spans_dropped_total{reason}`: spans not exported over OTLP,
/// `queue_full` (the bounded queue was full: the collector is slow or gone),
/// `export_failed`, or by design: `refused_before_body` (a request refused
/// before its body was read) and `no_caller_rule` (a request of a caller no
/// rule names). One per process: the tracer outlives config reloads.
pub fn trace_spans_dropped() -> &'static IntCounterVec {
    static DROPPED: OnceLock<IntCounterVec> = OnceLock::new();
    DROPPED.get_or_init(|| {
        IntCounterVec::new(
            Opts::new(
                "trace_spans_dropped_total",
                "Trace spans not exported over OTLP, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric")
    })
}

/// `trace_spans_exported_total`: spans the OTLP collector accepted.
pub fn trace_spans_exported() -> &'static prometheus::IntCounter {
    static EXPORTED: OnceLock<prometheus::IntCounter> = OnceLock::new();
    EXPORTED.get_or_init(|| {
        prometheus::IntCounter::new(
            "trace_spans_exported_total",
            "Trace spans exported over OTLP",
        )
        .expect("valid metric")
    })
}

/// A metric: its name (after the `kms_sidecar_` prefix), help text and
/// labels (none for a single series).
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const REQUESTS_TOTAL: Spec = Spec {
    name: "requests_total",
    help: "API requests by operation, key alias and result code",
    labels: &["op", "key", "code"],
};
const CONTAINER_REQUESTS: Spec = Spec {
    name: "container_requests_total",
    help: "API requests through a container's own socket, by container and result code",
    labels: &["container", "code"],
};
const REQUEST_DURATION: Spec = Spec {
    name: "request_duration_seconds",
    help: "API request latency by operation",
    labels: &["op"],
};
const BACKEND_CALLS: Spec = Spec {
    name: "backend_calls_total",
    help: "Calls to a KMS backend by operation and outcome",
    labels: &["backend", "op", "outcome"],
};
const BACKEND_CALL_DURATION: Spec = Spec {
    name: "backend_call_duration_seconds",
    help: "KMS backend call latency",
    labels: &["backend", "op"],
};
const DATAKEY_CACHE_HITS: Spec = Spec {
    name: "datakey_cache_hits_total",
    help: "Data keys served from the cache (each one a KMS call saved)",
    labels: &["key", "op"],
};
const DATAKEY_CACHE_MISSES: Spec = Spec {
    name: "datakey_cache_misses_total",
    help: "Data key requests the cache could not serve",
    labels: &["key", "op"],
};
const DATAKEY_REVOCATIONS: Spec = Spec {
    name: "datakey_cache_revocations_total",
    help: "Times a key's cached data keys were dropped: the key was disabled, deleted or pending deletion, a version was disabled, or an operator flushed it",
    labels: &["key", "reason"],
};
const DATAKEY_BACKEND_CALLS: Spec = Spec {
    name: "datakey_cache_backend_calls_total",
    help: "KMS calls made by the data-key cache, refreshes included",
    labels: &["key", "op"],
};
const CREDENTIAL_EXPIRY: Spec = Spec {
    name: "credential_expiry_timestamp_seconds",
    help: "When the backend's current credentials expire (Unix time)",
    labels: &["backend"],
};
const CREDENTIAL_REFRESH: Spec = Spec {
    name: "credential_refresh_total",
    help: "Background credential refreshes by outcome",
    labels: &["backend", "outcome"],
};
const BACKEND_FAILOVERS: Spec = Spec {
    name: "backend_failovers_total",
    help: "Backend calls that failed over to a replica region",
    labels: &["backend", "from", "to"],
};
const CIRCUIT_BREAKER_STATE: Spec = Spec {
    name: "circuit_breaker_state",
    help: "Circuit breaker of each backend: 0 closed, 1 open, 2 half-open",
    labels: &["backend"],
};
const BACKEND_RETRIES: Spec = Spec {
    name: "backend_retries_total",
    help: "Backend calls retried after a retryable failure",
    labels: &["backend"],
};
const RATE_LIMITED: Spec = Spec {
    name: "rate_limited_total",
    help: "Requests refused by the per-caller rate limit or the per-key flush limit",
    labels: &[],
};
const CONNECTIONS_OPEN: Spec = Spec {
    name: "connections_open",
    help: "Open connections on the Unix socket",
    labels: &[],
};
const CONNECTIONS_REJECTED: Spec = Spec {
    name: "connections_rejected_total",
    help: "Connections closed at accept because limits.max_connections was reached",
    labels: &[],
};
const SOCKET_BOUND: Spec = Spec {
    name: "socket_bound",
    help: "1 while listen.socket is the socket the sidecar listens on",
    labels: &[],
};
const SOCKET_REPLACED: Spec = Spec {
    name: "socket_replaced_total",
    help: "Times the socket file was found removed or replaced by another process",
    labels: &[],
};
const IDENTITY_TOKEN_EXPIRY: Spec = Spec {
    name: "identity_token_expiry_seconds",
    help: "Seconds until the backend's projected identity token expires, at the last look",
    labels: &["backend"],
};
const CONFIG_RELOADS: Spec = Spec {
    name: "config_reloads_total",
    help: "Config file reloads by outcome (applied, rejected)",
    labels: &["outcome"],
};
const CONFIG_GENERATION: Spec = Spec {
    name: "config_generation",
    help: "The live config: 1 at start, one more for each reload applied",
    labels: &[],
};

/// Makes each metric of a [`Spec`] and registers it.
struct Registrar(Registry);

impl Registrar {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, metric: C) -> C {
        (self.0)
            .register(Box::new(metric.clone()))
            .expect("each metric is registered once");
        metric
    }

    fn counters(&self, spec: &Spec) -> IntCounterVec {
        let opts = Opts::new(spec.name, spec.help);
        self.add(IntCounterVec::new(opts, spec.labels).expect("valid metric"))
    }

    fn histograms(&self, spec: &Spec) -> HistogramVec {
        let opts = HistogramOpts::new(spec.name, spec.help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, spec.labels).expect("valid metric"))
    }

    fn gauges(&self, spec: &Spec) -> prometheus::GaugeVec {
        let opts = Opts::new(spec.name, spec.help);
        self.add(prometheus::GaugeVec::new(opts, spec.labels).expect("valid metric"))
    }

    fn int_gauges(&self, spec: &Spec) -> prometheus::IntGaugeVec {
        let opts = Opts::new(spec.name, spec.help);
        self.add(prometheus::IntGaugeVec::new(opts, spec.labels).expect("valid metric"))
    }

    fn counter(&self, spec: &Spec) -> prometheus::IntCounter {
        self.add(prometheus::IntCounter::new(spec.name, spec.help).expect("valid metric"))
    }

    fn gauge(&self, spec: &Spec) -> IntGauge {
        self.add(IntGauge::new(spec.name, spec.help).expect("valid metric"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar(
            Registry::new_custom(Some("kms_sidecar".into()), None)
                .expect("a constant prefix is valid"),
        );
        let metrics = Self {
            requests_total: r.counters(&REQUESTS_TOTAL),
            request_duration: r.histograms(&REQUEST_DURATION),
            container_requests: r.counters(&CONTAINER_REQUESTS),
            backend_calls_total: r.counters(&BACKEND_CALLS),
            backend_call_duration: r.histograms(&BACKEND_CALL_DURATION),
            datakey_cache_hits: r.counters(&DATAKEY_CACHE_HITS),
            datakey_cache_misses: r.counters(&DATAKEY_CACHE_MISSES),
            datakey_backend_calls: r.counters(&DATAKEY_BACKEND_CALLS),
            datakey_revocations: r.counters(&DATAKEY_REVOCATIONS),
            credential_expiry: r.gauges(&CREDENTIAL_EXPIRY),
            credential_refresh: r.counters(&CREDENTIAL_REFRESH),
            backend_failovers: r.counters(&BACKEND_FAILOVERS),
            circuit_breaker_state: r.int_gauges(&CIRCUIT_BREAKER_STATE),
            backend_retries: r.counters(&BACKEND_RETRIES),
            rate_limited: r.counter(&RATE_LIMITED),
            connections_open: r.gauge(&CONNECTIONS_OPEN),
            connections_rejected: r.counter(&CONNECTIONS_REJECTED),
            socket_bound: r.gauge(&SOCKET_BOUND),
            socket_replaced: r.counter(&SOCKET_REPLACED),
            identity_token_expiry: r.gauges(&IDENTITY_TOKEN_EXPIRY),
            config_reloads: r.counters(&CONFIG_RELOADS),
            config_generation: r.gauge(&CONFIG_GENERATION),
            registry: r.0,
        };
        metrics.config_generation.set(1);
        for outcome in ["applied", "rejected"] {
            metrics.config_reloads.with_label_values(&[outcome]);
        }
        for c in [
            Box::new(trace_spans_dropped().clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(trace_spans_exported().clone()),
        ] {
            metrics
                .registry
                .register(c)
                .expect("each metric is registered once");
        }
        metrics
    }

    /// The Prometheus text exposition of every metric, with the `key`
    /// label as `labels` says.
    pub fn encode(&self, labels: KeyLabels) -> Vec<u8> {
        let mut families = self.registry.gather();
        if labels != KeyLabels::Alias {
            for family in &mut families {
                relabel_keys(family, labels);
            }
        }
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }
}

/// The `key` label of every series in `family` hashed, or removed (series
/// that then share their labels are added up).
fn relabel_keys(family: &mut MetricFamily, labels: KeyLabels) {
    let has_key = |m: &Metric| m.get_label().iter().any(|l| l.name() == "key");
    if !family.get_metric().iter().any(has_key) {
        return;
    }
    let kind = family.get_field_type();
    let mut merged: BTreeMap<Vec<(String, String)>, Metric> = BTreeMap::new();
    for mut metric in family.take_metric() {
        let mut pairs = metric.take_label();
        match labels {
            KeyLabels::Alias => {}
            KeyLabels::Hashed => {
                for pair in pairs.iter_mut().filter(|p| p.name() == "key") {
                    if !matches!(pair.value(), "" | "-") {
                        pair.set_value(hashed_alias(pair.value()));
                    }
                }
            }
            KeyLabels::None => pairs.retain(|p| p.name() != "key"),
        }
        let id = pairs
            .iter()
            .map(|p| (p.name().to_owned(), p.value().to_owned()))
            .collect();
        metric.set_label(pairs);
        match merged.entry(id) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(metric);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                add_into(slot.get_mut(), &metric, kind);
            }
        }
    }
    family.set_metric(merged.into_values().collect());
}

/// Adds `more` (same labels) into `total`.
fn add_into(total: &mut Metric, more: &Metric, kind: MetricType) {
    match kind {
        MetricType::COUNTER => {
            let mut c = total.get_counter().clone();
            c.set_value(c.get_value() + more.get_counter().get_value());
            total.set_counter(c);
        }
        MetricType::GAUGE => {
            let mut g = total.get_gauge().clone();
            g.set_value(g.get_value() + more.get_gauge().get_value());
            total.set_gauge(g);
        }
        MetricType::HISTOGRAM => {
            let (a, b) = (total.get_histogram(), more.get_histogram());
            let mut h = Histogram::default();
            h.set_sample_count(a.get_sample_count() + b.get_sample_count());
            h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
            let mut buckets = a.get_bucket().to_vec();
            for (x, y) in buckets.iter_mut().zip(b.get_bucket()) {
                x.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
            }
            h.set_bucket(buckets);
            total.set_histogram(h);
        }
        // No summaries or untyped metrics carry a key label.
        _ => {}
    }
}

/// `h-` and the first 12 hex digits of SHA-256 of an alias: stable across
/// pods and restarts, so series can be followed, without naming the key. A
/// pseudonym, not a secret: a guessable alias can be hashed by anyone.
pub fn hashed_alias(alias: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, alias.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("h-{hex}")
}

/// Series of a metric vector looked up once per label: the first use makes
/// the series (so `/metrics` lists what happened, as before), later uses
/// skip the vector's label hashing and lock — the hot paths record several
/// series per request.
#[derive(Debug)]
pub struct Cached<T> {
    cells: HashMap<&'static str, OnceLock<T>>,
}

impl<T> Cached<T> {
    /// A cache for these labels; others are looked up on every use.
    pub fn new(labels: &[&'static str]) -> Self {
        Self {
            cells: labels.iter().map(|l| (*l, OnceLock::new())).collect(),
        }
    }

    /// Runs `use_it` on `label`'s series: the cached one, made by `make` on
    /// first use; for a label not cached, one made by `make` for this call.
    pub fn with<R>(
        &self,
        label: &str,
        make: impl FnOnce() -> T,
        use_it: impl FnOnce(&T) -> R,
    ) -> R {
        match self.cells.get(label) {
            Some(cell) => use_it(cell.get_or_init(make)),
            None => use_it(&make()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_labels_are_hashed_or_added_up() {
        let m = Metrics::new();
        for (key, n) in [("payments", 2), ("pii", 3), ("-", 1)] {
            m.requests_total
                .with_label_values(&["sign", key, "ok"])
                .inc_by(n);
            m.datakey_cache_hits
                .with_label_values(&[key, "encrypt"])
                .inc_by(n);
        }
        let text = |l| String::from_utf8(m.encode(l)).unwrap();
        let alias = text(KeyLabels::Alias);
        assert!(alias.contains(r#"key="payments""#), "{alias}");
        let hashed = text(KeyLabels::Hashed);
        assert!(
            !hashed.contains("payments") && !hashed.contains("pii"),
            "{hashed}"
        );
        assert!(
            hashed.contains(&format!(r#"key="{}""#, hashed_alias("payments"))),
            "{hashed}"
        );
        assert!(hashed.contains(r#"key="-""#), "unknown aliases stay `-`");
        let none = text(KeyLabels::None);
        assert!(!none.contains("key="), "{none}");
        assert!(
            none.contains(r#"kms_sidecar_requests_total{code="ok",op="sign"} 6"#),
            "{none}"
        );
        assert!(
            none.contains(r#"kms_sidecar_datakey_cache_hits_total{op="encrypt"} 6"#),
            "{none}"
        );
    }
}
