//! OpenTelemetry traces over OTLP (`telemetry.otlp`, feature `otlp`).
//!
//! The `tracing` spans named in [`EXPORTED`] become OpenTelemetry spans
//! (through `tracing-opentelemetry`), batched by the SDK's
//! `BatchSpanProcessor` on its own thread and exported by the OTLP exporter
//! (`http/protobuf` or `grpc`). A request only ever puts a finished span in
//! a bounded queue: when the collector is slow or gone, spans beyond
//! `max_queue` are dropped and counted
//! (`kms_sidecar_trace_spans_dropped_total{reason}`), and requests never
//! wait. The span of a request refused before its body, or of a caller no
//! rule names, is not exported at all but counted under the same metric
//! (`server::routes` marks it `not_exported`), so callers without a rule
//! cannot spend the export.
//!
//! Exports run on the sidecar's tokio runtime ([`OnRuntime`]): both the async
//! `reqwest` client and tonic need one, and the batch thread has none.

use crate::config::{Env, OtlpConfig, OtlpProtocol};
use crate::metrics;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::{Layer, Registry};

/// The spans that are exported, and nothing else: no events (log lines),
/// no library spans. What each carries is listed in `docs/security.md`.
pub const EXPORTED: &[&str] = &[
    "request",
    "backend_call",
    "backend_attempt",
    "datakey_fetch",
    "datakey_refresh",
    "credential_refresh",
];

/// The default bound on spans waiting for export (the SDK's default).
const DEFAULT_MAX_QUEUE: usize = 2048;

/// What the export needs, from the config and the `OTEL_…` variables
/// (the config wins).
#[derive(Debug, PartialEq)]
pub struct Settings {
    /// `None`: the exporter reads `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`.
    endpoint: Option<String>,
    protocol: OtlpProtocol,
    headers: std::collections::BTreeMap<String, String>,
    sample_ratio: Option<f64>,
    timeout: Option<Duration>,
    max_queue: usize,
    /// The endpoint, wherever it was set, is `https://`.
    tls: bool,
    /// Neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names
    /// the service (which the resource builder reads), so it is
    /// `kms-sidecar`.
    default_service_name: bool,
}

impl Settings {
    /// `None` when tracing is off: no endpoint anywhere, or
    /// `OTEL_SDK_DISABLED=true`.
    pub fn resolve(config: Option<&OtlpConfig>, env: &dyn Env) -> Result<Option<Self>, String> {
        let set = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let default = OtlpConfig::default();
        let config = config.unwrap_or(&default);
        let from_env = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let Some(where_to) = config.endpoint.clone().or(from_env) else {
            return Ok(None);
        };
        let protocol = match config.protocol {
            Some(p) => p,
            None => {
                let (name, value) = [
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ]
                .into_iter()
                .find_map(|name| Some((name, set(name)?)))
                .unwrap_or(("", "http/protobuf".into()));
                match value.trim() {
                    "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    "grpc" => OtlpProtocol::Grpc,
                    other => {
                        return Err(format!(
                            "{name}: `{other}` is not supported; use `http/protobuf` or `grpc`"
                        ));
                    }
                }
            }
        };
        // A base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: HTTP appends the
        // signal's path; gRPC names the service in the call.
        let endpoint = config.endpoint.as_ref().map(|e| match protocol {
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", e.trim_end_matches('/')),
            OtlpProtocol::Grpc => e.clone(),
        });
        let max_queue = match config.max_queue {
            Some(n) => n,
            None => match set("OTEL_BSP_MAX_QUEUE_SIZE") {
                Some(v) => v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("OTEL_BSP_MAX_QUEUE_SIZE: `{v}` is not a positive number")
                })?,
                None => DEFAULT_MAX_QUEUE,
            },
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            headers: config.headers.clone(),
            sample_ratio: config.sample_ratio,
            timeout: config.timeout.map(|t| t.0),
            max_queue,
            tls: where_to.trim().starts_with("https://"),
            default_service_name: env.var("OTEL_SERVICE_NAME").is_none()
                && !env.var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
                    a.split(',')
                        .any(|kv| kv.trim().starts_with("service.name="))
                }),
        }))
    }

    /// The endpoint and timeout, where set (else the exporter reads the
    /// `OTEL_…` variables).
    fn apply<B: WithExportConfig>(&self, mut builder: B) -> B {
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(t) = self.timeout {
            builder = builder.with_timeout(t);
        }
        builder
    }

    pub fn protocol(&self) -> &'static str {
        match self.protocol {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// The running export: flushed and stopped by [`Tracing::shutdown`].
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and the tracer. Must be called within `runtime`'s
    /// context (tonic binds its channel to it).
    pub fn start(settings: &Settings, runtime: tokio::runtime::Handle) -> Result<Self, String> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            OtlpProtocol::HttpProtobuf => settings
                .apply(
                    builder
                        .with_http()
                        .with_headers(settings.headers.clone().into_iter().collect()),
                )
                .build(),
            OtlpProtocol::Grpc => {
                // Names and values were validated with the config.
                let headers: http::HeaderMap = settings
                    .headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((
                            http::HeaderName::try_from(name.as_str()).ok()?,
                            http::HeaderValue::try_from(value.as_str()).ok()?,
                        ))
                    })
                    .collect();
                let metadata = tonic::metadata::MetadataMap::from_headers(headers);
                let mut builder = builder.with_tonic().with_metadata(metadata);
                if settings.tls {
                    // The system's roots (`SSL_CERT_FILE` too), as the
                    // HTTP exporter's client trusts.
                    let roots = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
                    builder = builder.with_tls_config(roots);
                }
                settings.apply(builder).build()
            }
        }
        .map_err(|e| format!("OTLP exporter: {e}"))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue)
            .build();
        let processor = Bounded {
            inner: BatchSpanProcessor::builder(OnRuntime::new(exporter, runtime, queued.clone()))
                .with_batch_config(batch)
                .build(),
            queued,
            limit: settings.max_queue,
        };
        let mut resource = Resource::builder();
        if settings.default_service_name {
            resource = resource.with_service_name("kms-sidecar");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let mut provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource);
        if let Some(ratio) = settings.sample_ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        Ok(Self {
            provider: provider.build(),
        })
    }

    /// The `tracing` layer that turns the [`EXPORTED`] spans into
    /// OpenTelemetry spans.
    pub fn layer(&self) -> impl Layer<Registry> + Send + Sync + 'static {
        let exported = filter_fn(|m| {
            m.is_span() && m.target().starts_with("kms_sidecar") && EXPORTED.contains(&m.name())
        })
        .with_max_level_hint(LevelFilter::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("kms-sidecar"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(exported)
    }

    /// Exports what is queued (within the exporter's timeout) and stops.
    /// Called off the runtime's threads, which the last export needs.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// The SDK's batch processor behind a count of the spans it holds: a span
/// that would take the count past `limit` is dropped here, and counted,
/// before the processor's own queue could drop it uncounted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Some(reason) = not_exported(&span) {
            metrics::trace_spans_dropped()
                .with_label_values(&[reason])
                .inc();
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::trace_spans_dropped()
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The reason a request span carries in `not_exported`, if any: such a
/// span is counted, not queued.
fn not_exported(span: &SpanData) -> Option<&'static str> {
    let kv = span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "not_exported")?;
    [super::REFUSED_BEFORE_BODY, super::NO_CALLER_RULE]
        .into_iter()
        .find(|r| kv.value.as_str() == *r)
}

/// An exporter run on the sidecar's runtime from the batch thread, which
/// counts what leaves the queue: exported, or dropped when the export fails.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
    queued: Arc<AtomicUsize>,
}

impl<E> OnRuntime<E> {
    fn new(inner: E, runtime: tokio::runtime::Handle, queued: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            runtime,
            queued,
        }
    }
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        // The batch thread is not a runtime thread, so blocking it on the
        // runtime is allowed; the export is bounded by its timeout.
        let result = self.runtime.block_on(self.inner.export(batch));
        self.queued.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => metrics::trace_spans_exported().inc_by(n as u64),
            Err(e) => {
                metrics::trace_spans_dropped()
                    .with_label_values(&["export_failed"])
                    .inc_by(n as u64);
                tracing::debug!(error = %e, spans = n, "OTLP export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(Settings::resolve(None, &env(&[])), Ok(None));
        let on = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert!(Settings::resolve(None, &on).unwrap().is_some());
        let off = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!(Settings::resolve(None, &off), Ok(None));
    }

    #[test]
    fn the_config_wins_over_the_environment() {
        let config = OtlpConfig {
            endpoint: Some("http://collector:4318/".into()),
            max_queue: Some(7),
            ..Default::default()
        };
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "99"),
        ]);
        let s = Settings::resolve(Some(&config), &vars).unwrap().unwrap();
        // The protocol was not set in the config: the variable's.
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4318/"));
        assert_eq!(s.max_queue, 7);
        let http = OtlpConfig {
            protocol: Some(OtlpProtocol::HttpProtobuf),
            ..config
        };
        let s = Settings::resolve(Some(&http), &vars).unwrap().unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        // Endpoint from the environment: left to the exporter, which
        // appends the path itself.
        let s = Settings::resolve(None, &vars).unwrap().unwrap();
        assert_eq!((s.endpoint, s.max_queue), (None, 99));
        assert!(s.default_service_name);
        for named in [
            ("OTEL_SERVICE_NAME", "payments"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=p, service.name=payments",
            ),
        ] {
            let mut vars = vars.clone();
            vars.insert(named.0.into(), named.1.into());
            let s = Settings::resolve(None, &vars).unwrap().unwrap();
            assert!(!s.default_service_name, "{named:?}");
        }
    }

    /// With traces on, the exported spans are made at any log level, and
    /// other `debug` spans still are not.
    #[test]
    fn only_the_exported_spans_are_made_for_the_export() {
        use tracing_subscriber::layer::SubscriberExt;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let vars = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")]);
        let settings = Settings::resolve(None, &vars).unwrap().unwrap();
        let traces = {
            let _in = runtime.enter();
            Tracing::start(&settings, runtime.handle().clone()).unwrap()
        };
        let layer: Box<dyn Layer<Registry> + Send + Sync> = Box::new(traces.layer());
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
        let subscriber = tracing_subscriber::registry()
            .with(Some(layer))
            .with(logs.with_filter(super::super::log_filter("info")));
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::debug_span!("backend_call").is_disabled());
            assert!(tracing::debug_span!("connection").is_disabled());
            assert!(tracing::trace_span!("request").is_disabled());
        });
        std::thread::spawn(move || traces.shutdown())
            .join()
            .unwrap();
    }

    #[test]
    fn unsupported_protocols_and_bad_queue_sizes_are_named() {
        let vars = env(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ]);
        let e = Settings::resolve(None, &vars).unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && e.contains("http/json"),
            "{e}"
        );
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ]);
        let e = Settings::resolve(None, &vars).unwrap_err();
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{e}");
    }
}
