//! The `tracing` subscriber: JSON lines when stderr is not a TTY (a
//! container), human text on a terminal. `RUST_LOG` overrides `log.level`,
//! except for library events that print credentials, which stay capped.
//! With `telemetry.otlp` (or the `OTEL_…` variables), spans are exported as
//! OpenTelemetry traces too ([`otlp`]); the helpers below tie a request to
//! the app's trace and carry it on to the KMS.

#[cfg(feature = "otlp")]
pub mod otlp;

use crate::config::{Env, Log, LogFormat};
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// AWS SDK targets whose events print credentials, and the most verbose
/// level they may log at whatever `RUST_LOG` says (more specific targets
/// win over their parents):
/// - endpoint resolution prints its parameters at DEBUG, the resolved
///   identity among them (the access key id); so does the auth step's
///   legacy path, and at TRACE the resolved identity;
/// - the orchestrator prints each request with its `Authorization` and
///   `x-amz-security-token` headers at TRACE, and the SigV4 signer its
///   canonical request, session token included;
/// - `assume_role` prints the id of the credentials it obtained at DEBUG;
/// - the profile-file provider prints the credentials it loads at INFO.
const CREDENTIAL_TARGETS: &[(&str, LevelFilter)] = &[
    (
        "aws_smithy_runtime::client::orchestrator::endpoints",
        LevelFilter::INFO,
    ),
    (
        "aws_smithy_runtime::client::orchestrator::auth",
        LevelFilter::INFO,
    ),
    (
        "aws_smithy_runtime::client::orchestrator",
        LevelFilter::DEBUG,
    ),
    ("aws_sigv4", LevelFilter::DEBUG),
    ("aws_config::sts::assume_role", LevelFilter::INFO),
    ("aws_config::profile::credentials", LevelFilter::WARN),
    // An unusable Pod Identity token is logged whole at WARN, by the
    // provider and by the chain that tried it (the sidecar logs the reason
    // itself, tokens cut out).
    ("aws_config::ecs", LevelFilter::ERROR),
    ("aws_config::meta::credentials::chain", LevelFilter::ERROR),
    // The Azure SDK traces requests (headers redacted) at DEBUG and below;
    // token requests carry the federated token or client secret in their
    // bodies. Keep them to INFO and up.
    ("typespec_client_core", LevelFilter::INFO),
    ("azure_core", LevelFilter::INFO),
    ("azure_identity", LevelFilter::INFO),
    // google-cloud-auth and the client's transport trace requests and
    // token exchanges (the subject token is in the STS request body).
    ("google_cloud_auth", LevelFilter::INFO),
    ("google_cloud_gax_internal", LevelFilter::INFO),
    ("google_cloud_kms_v1", LevelFilter::INFO),
];

/// Logging only (the webhook, and the sidecar when no trace export is set);
/// `RUST_LOG` in `env` overrides `log.level`.
pub fn init(log: &Log, env: &dyn Env) {
    install(log, env, None);
}

/// Logging, and OpenTelemetry traces when `telemetry.otlp` or the standard
/// `OTEL_EXPORTER_OTLP_…` variables name a collector. The returned export
/// is to be shut down (flushed) before `runtime` ends.
#[cfg(feature = "otlp")]
pub fn init_with_traces(
    log: &Log,
    config: Option<&crate::config::OtlpConfig>,
    env: &dyn Env,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<otlp::Tracing>, String> {
    let Some(settings) = otlp::Settings::resolve(config, env)? else {
        init(log, env);
        return Ok(None);
    };
    let traces = {
        let _in = runtime.enter();
        otlp::Tracing::start(&settings, runtime.clone())?
    };
    install(log, env, Some(Box::new(traces.layer())));
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(protocol = settings.protocol(), "exporting traces over OTLP");
    Ok(Some(traces))
}

/// The subscriber: the trace export's layer (if any) and the log layer,
/// each with its own filter. No layer is unfiltered: a span or event that
/// no filter wants (a `debug` span at level `info`) is not even made.
fn install(log: &Log, env: &dyn Env, traces: Option<Box<dyn Layer<Registry> + Send + Sync>>) {
    let spec = (env.var("RUST_LOG"))
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| log.level.clone());
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(traces);
    let result = if json {
        let logs = logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields);
        registry
            .with(logs.with_filter(log_filter(&spec)))
            .try_init()
    } else {
        registry
            .with(logs.with_filter(log_filter(&spec)))
            .try_init()
    };
    // A second init (tests building several apps) keeps the first subscriber.
    drop(result);
    log_panics();
}

/// Panics are logged as an event of the span they happened in (a request's
/// carries its request id) with where they happened, never what they say: a
/// message may hold whatever value the code that panicked formatted (a
/// plaintext, a key). A request's panic is answered 500 `internal_error`
/// and audited ([`crate::server::routes`]).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(
            location = location.as_deref().unwrap_or("unknown"),
            "panicked (the message is not logged)"
        );
    }));
}

/// Why a request's span is not exported (the `not_exported` field of the
/// request span, and the `reason` it is counted under in
/// `kms_sidecar_trace_spans_dropped_total`): the request was refused before
/// its body (no rule for the caller, the key or the op; rate limit; replay
/// guard; a bad header; no route)…
pub const REFUSED_BEFORE_BODY: &str = "refused_before_body";
/// …or the caller is one no rule names (its few answered requests, such
/// as an empty `GET /v1/keys`). Only callers with a rule spend the export.
pub const NO_CALLER_RULE: &str = "no_caller_rule";

/// Whether spans are exported (set once, at start).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes the W3C trace context the app sent (`traceparent`, `tracestate`)
/// the parent of `span`. A malformed header is ignored; the `tracestate`,
/// which every span of the request carries to the collector and on to the
/// KMS, is held to the spec's limits first ([`bounded_tracestate`]).
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    #[cfg(feature = "otlp")]
    if exporting() && headers.contains_key("traceparent") {
        use opentelemetry::propagation::{Extractor, TextMapPropagator};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        /// `traceparent` as sent, `tracestate` as bounded.
        struct Bounded<'a>(&'a http::HeaderMap, Option<String>);
        impl Extractor for Bounded<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                match key {
                    "tracestate" => self.1.as_deref(),
                    _ => self.0.get(key).and_then(|v| v.to_str().ok()),
                }
            }
            fn keys(&self) -> Vec<&str> {
                vec!["traceparent", "tracestate"]
            }
        }
        let extractor = Bounded(headers, bounded_tracestate(headers));
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&extractor);
        let _ = span.set_parent(cx);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, headers);
}

/// The most list-members a `tracestate` may have (W3C Trace Context,
/// "tracestate Header Field Values").
pub const TRACESTATE_MEMBERS: usize = 32;
/// The combined `tracestate` length the spec asks to propagate, commas
/// included ("tracestate Limits"): what the sidecar keeps at most.
pub const TRACESTATE_LENGTH: usize = 512;
/// Entries longer than this are the first removed when truncating.
const TRACESTATE_LONG_ENTRY: usize = 128;

/// The app's `tracestate` within the W3C limits, or `None`: the header
/// fields joined with commas (RFC 7230), empty members skipped; more than
/// [`TRACESTATE_MEMBERS`] members, a member that is not `key=value`, or a
/// key or value over 256 characters make the list invalid and it is
/// dropped whole. A valid list longer than [`TRACESTATE_LENGTH`] loses whole
/// entries as the spec says: those over 128 characters first, then from the
/// end. (Keys and values are checked against the grammar again by the
/// OpenTelemetry parser, which drops an invalid list.)
pub fn bounded_tracestate(headers: &http::HeaderMap) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for field in headers.get_all("tracestate") {
        for member in field.to_str().ok()?.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, value) = member.split_once('=')?;
            if key.is_empty() || key.len() > 256 || value.len() > 256 {
                return None;
            }
            members.push(member);
            if members.len() > TRACESTATE_MEMBERS {
                return None;
            }
        }
    }
    let length = |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len().saturating_sub(1);
    if length(&members) > TRACESTATE_LENGTH {
        members.retain(|m| m.len() <= TRACESTATE_LONG_ENTRY);
    }
    while length(&members) > TRACESTATE_LENGTH {
        members.pop();
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// The current trace context as W3C headers (`traceparent`, and
/// `tracestate` when there is one), for an outgoing KMS call; nothing when
/// no span is exported.
pub fn inject(mut set: impl FnMut(&'static str, String)) {
    #[cfg(feature = "otlp")]
    if exporting() {
        use opentelemetry::propagation::{Injector, TextMapPropagator};
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        struct Set<'a>(&'a mut dyn FnMut(&'static str, String));
        impl Injector for Set<'_> {
            fn set(&mut self, key: &str, value: String) {
                match key {
                    "traceparent" => (self.0)("traceparent", value),
                    "tracestate" if !value.is_empty() => (self.0)("tracestate", value),
                    _ => {}
                }
            }
        }
        let mut cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            cx = opentelemetry::Context::current();
        }
        if cx.span().span_context().is_valid() {
            opentelemetry_sdk::propagation::TraceContextPropagator::new()
                .inject_context(&cx, &mut Set(&mut set));
        }
    }
    #[cfg(not(feature = "otlp"))]
    let _ = &mut set;
}

tokio::task_local! {
    /// The id of the request the task is serving, while traces are
    /// exported: spans made under it (backend calls, data-key fetches)
    /// carry it as `request_id`, as the request span does.
    static REQUEST_ID: std::sync::Arc<str>;
}

/// Serves `request` with its id at hand for [`request_id`] (only while
/// traces are exported; otherwise `request` as it is).
pub fn with_request_id<F: std::future::Future>(
    id: &str,
    request: F,
) -> impl std::future::Future<Output = F::Output> {
    use futures_util::future::Either;
    if exporting() {
        Either::Left(REQUEST_ID.scope(std::sync::Arc::from(id), request))
    } else {
        Either::Right(request)
    }
}

/// The id of the request being served, for a span's `request_id`: `None`
/// in background work, or when traces are not exported.
pub fn request_id() -> Option<std::sync::Arc<str>> {
    REQUEST_ID.try_with(std::sync::Arc::clone).ok()
}

/// Records how the work of `span` ended, for its trace: `outcome` (`ok` or
/// an error code) and, when `failed`, an error status. The span must
/// declare both fields (`outcome`, `otel.status_description`) as `Empty`.
pub fn ended(span: &tracing::Span, outcome: &str, failed: bool) {
    span.record("outcome", outcome);
    if failed {
        span.record("otel.status_description", outcome);
    }
}

/// The fields of a span as a JSON object, written straight into the
/// span's string. tracing-subscriber's `JsonFields` builds a map of
/// `serde_json::Value`s and serializes it — most of the logging cost of a
/// request, whose span is made on every call at the default level. Events
/// are formatted by the crate's JSON formatter, which reads these objects.
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut out = String::from("{");
        let mut visitor = JsonVisitor::new(&mut out);
        fields.record(&mut visitor);
        out.push('}');
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut current_fields = std::mem::take(&mut current.fields);
        if current_fields.ends_with('}') {
            current_fields.pop();
        } else {
            current_fields = String::from("{");
        }
        let mut visitor = JsonVisitor::new(&mut current_fields);
        fields.record(&mut visitor);
        current_fields.push('}');
        current.fields = current_fields;
        Ok(())
    }
}

/// Appends `"name":value` pairs to an object being written.
struct JsonVisitor<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonVisitor<'a> {
    /// `out` is an object's text without its closing brace.
    fn new(out: &'a mut String) -> Self {
        let first = out.ends_with('{');
        Self { out, first }
    }

    /// `"name":` (names are escaped like any string).
    fn name(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        push_json_str(self.out, field.name());
        self.out.push(':');
    }

    fn display(&mut self, field: &Field, value: impl fmt::Display) {
        self.name(field);
        let _ = write!(self.out, "{value}");
    }
}

/// `s` as a JSON string: as is when nothing in it needs escaping (the
/// usual case), else escaped by serde_json.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        push_json_str(self.out, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.display(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.display(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.display(field, value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.display(field, value);
        } else {
            self.display(field, "null");
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        let start = self.out.len();
        let _ = write!(self.out, "{value:?}");
        let text = self.out.split_off(start);
        push_json_str(self.out, &text);
    }
}

/// The filter `spec` asks for, with the Vault client libraries quiet.
fn filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // vaultrs logs every Vault error answer at ERROR and rustify traces each
    // request; the vault backend logs failures itself, with context. Quiet
    // them unless asked for by name.
    for noisy in ["vaultrs", "rustify"] {
        if !spec.contains(noisy) {
            filter =
                filter.add_directive(format!("{noisy}=off").parse().expect("a valid directive"));
        }
    }
    filter
}

/// What the log layer writes: the [`filter`] `spec` asks for, under the
/// [`credential_caps`].
fn log_filter<S: tracing::Subscriber>(
    spec: &str,
) -> impl tracing_subscriber::layer::Filter<S> + use<S> {
    filter(spec).and(credential_caps())
}

/// A second filter that only ever lowers levels: [`CREDENTIAL_TARGETS`] are
/// capped even when `RUST_LOG` names them; everything else is left to the
/// [`filter`].
fn credential_caps() -> Targets {
    CREDENTIAL_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, (target, cap)| t.with_target(*target, *cap),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::Context;

    /// Records the target and level of every event that gets through.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let m = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", m.level(), m.target()));
        }
    }

    fn seen_with(spec: &str) -> Vec<String> {
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(seen.clone().with_filter(log_filter(spec)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "resolving endpoint");
            tracing::info!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "endpoint info");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "beginning attempt");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "transmitting request");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator::auth", "resolved identity");
            tracing::trace!(target: "aws_sigv4::http_request::sign", "signing request");
            tracing::debug!(target: "aws_config::sts::assume_role", "obtained assumed credentials");
            tracing::info!(target: "aws_config::profile::credentials", "loaded base credentials");
            tracing::debug!(target: "aws_config::profile::credentials::exec", "first credentials will be loaded from");
            tracing::warn!(target: "aws_config::profile::credentials", "failed to load base credentials");
            tracing::warn!(target: "aws_config::meta::credentials::chain", "provider failed to provide credentials");
            tracing::warn!(target: "aws_config::ecs", "invalid auth token");
            tracing::debug!(target: "aws_config::imds::region", "loading region");
            tracing::debug!(target: "kms_sidecar::server", "request refused");
            tracing::trace!(target: "kms_sidecar::server", "our trace");
            tracing::error!(target: "vaultrs::api", "a Vault error answer");
        });
        seen.0.lock().unwrap().clone()
    }

    /// Span fields reach JSON log lines as the crate's formatter wrote them:
    /// escaped, typed, and with fields recorded after the span was made.
    #[test]
    fn span_fields_are_a_json_object_in_every_event() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"a\"b\\c\n",
                caller.uid = 1000u32,
                delta = -3i64,
                ok = true,
                ratio = f64::NAN,
                later = tracing::field::Empty,
            );
            let _in = span.enter();
            tracing::info!("first");
            span.record("later", "set");
            tracing::warn!(code = "x", "second");
            let empty = tracing::info_span!("bare");
            let _in = empty.enter();
            tracing::info!("third");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let span = &lines[0]["span"];
        assert_eq!(span["request_id"], "a\"b\\c\n");
        assert_eq!(span["caller.uid"], 1000);
        assert_eq!(span["delta"], -3);
        assert_eq!(span["ok"], true);
        assert!(span["ratio"].is_null());
        assert!(span.get("later").is_none());
        assert_eq!(span["name"], "request");
        assert_eq!(lines[1]["span"]["later"], "set");
        assert_eq!(lines[1]["span"]["caller.uid"], 1000);
        assert_eq!(lines[1]["fields"]["code"], "x");
        assert_eq!(lines[2]["span"]["name"], "bare");
    }

    /// The request path makes `debug` spans at every backend call: at
    /// `info`, with no trace export, no layer wants them, so they are not
    /// made at all (a span the registry makes and no layer writes costs
    /// thousands of instructions).
    #[test]
    fn spans_no_layer_wants_are_not_made() {
        let traces: Option<Box<dyn Layer<Registry> + Send + Sync>> = None;
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
        let subscriber = tracing_subscriber::registry()
            .with(traces)
            .with(logs.with_filter(log_filter("info")));
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(LevelFilter::current(), LevelFilter::INFO);
            assert!(tracing::debug_span!("backend_call").is_disabled());
            assert!(!tracing::info_span!("request").is_disabled());
        });
    }

    fn tracestate(fields: &[&str]) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        for f in fields {
            headers.append("tracestate", http::HeaderValue::from_str(f).unwrap());
        }
        bounded_tracestate(&headers)
    }

    /// W3C Trace Context's `tracestate` limits: fields joined, at most 32
    /// members, 512 characters kept (long entries dropped first, then from
    /// the end), an invalid list dropped whole.
    #[test]
    fn tracestate_is_held_to_the_w3c_limits() {
        assert_eq!(tracestate(&[]), None);
        assert_eq!(tracestate(&[" , "]), None);
        assert_eq!(
            tracestate(&["rojo=00f067aa0ba902b7 ,\t congo=t61rcWkgMzE", "b=1"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,b=1")
        );
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert_eq!(tracestate(&[&members.join(",")]), Some(members.join(",")));
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(tracestate(&[&members.join(",")]), None, "33 members");
        assert_eq!(tracestate(&["novalue"]), None);
        assert_eq!(tracestate(&[&format!("k={}", "v".repeat(257))]), None);
        // Over 512: the entries over 128 characters go first...
        let long = format!("l={}", "v".repeat(200));
        let kept = tracestate(&[&format!("a=1,{long},{long},{long},b=2")]);
        assert_eq!(kept.as_deref(), Some("a=1,b=2"));
        // ...then entries from the end, whole.
        let mid: Vec<String> = (0..8)
            .map(|i| format!("k{i}={}", "v".repeat(100)))
            .collect();
        let kept = tracestate(&[&mid.join(",")]).unwrap();
        assert_eq!(kept, mid[..4].join(","));
        assert!(kept.len() <= TRACESTATE_LENGTH);
        // 512 characters, commas included, are kept whole.
        let (a, b) = (
            format!("a={}", "v".repeat(125)),
            format!("b={}", "v".repeat(126)),
        );
        let full = [a.as_str(), &a, &a, &b].join(",");
        assert_eq!(full.len(), TRACESTATE_LENGTH);
        assert_eq!(tracestate(&[&full]), Some(full.clone()));
    }

    #[test]
    fn credential_printing_targets_stay_capped_whatever_rust_log_says() {
        assert_eq!(
            seen_with("debug"),
            [
                "INFO aws_smithy_runtime::client::orchestrator::endpoints",
                "DEBUG aws_smithy_runtime::client::orchestrator",
                "WARN aws_config::profile::credentials",
                "DEBUG aws_config::imds::region",
                "DEBUG kms_sidecar::server",
            ]
        );
        // Naming the targets does not lift the caps.
        let named = "trace,aws_smithy_runtime::client::orchestrator::endpoints=trace,aws_smithy_runtime=trace,aws_sigv4=trace,aws_config=trace";
        assert_eq!(
            seen_with(named),
            [
                "INFO aws_smithy_runtime::client::orchestrator::endpoints",
                "DEBUG aws_smithy_runtime::client::orchestrator",
                "WARN aws_config::profile::credentials",
                "DEBUG aws_config::imds::region",
                "DEBUG kms_sidecar::server",
                "TRACE kms_sidecar::server",
            ]
        );
        // The caps never raise a level.
        assert_eq!(
            seen_with("info"),
            [
                "INFO aws_smithy_runtime::client::orchestrator::endpoints",
                "WARN aws_config::profile::credentials",
            ]
        );
        assert_eq!(seen_with("warn"), ["WARN aws_config::profile::credentials"]);
        // vaultrs stays off unless named.
        assert!(!seen_with("trace").iter().any(|e| e.contains("vaultrs")));
        assert!(
            seen_with("vaultrs=error")
                .iter()
                .any(|e| e == "ERROR vaultrs::api")
        );
    }
}
