//! The mutating admission webhook (`kms-sidecar webhook`, SPEC §11): an
//! HTTPS server taking `admission.k8s.io/v1` AdmissionReviews on `POST
//! /mutate` and answering with a JSONPatch that injects the sidecar (pod
//! creations), or with a denial for ephemeral containers that would reach
//! into it (`pods/ephemeralcontainers` updates), plus `/healthz` and
//! `/metrics` for itself.
//!
//! - [`config`]: what it injects by default.
//! - [`config_maps`]: whether the ConfigMaps a pod would mount exist (a
//!   metadata-only watch through the Kubernetes API).
//! - [`mutate`]: pure decision and patch, tested on real pod specs;
//!   `annotations` reads the pod's overrides, [`fit`] whether the sidecar
//!   can run in the pod (its OS, pod-level resources, a free probes port),
//!   [`quantity`] Kubernetes quantities.
//! - [`sockets`]: a socket per container (which pods, the volumes' names).
//! - [`openshift`]: whether a pod's namespace is OpenShift's (its
//!   `openshift.io/sa.scc.uid-range` annotation, a metadata-only watch).
//! - [`isolation`]: whether a pod's containers could reach into the
//!   sidecar (its process, volumes, uid; another container's socket).
//! - [`ephemeral`]: pure review of ephemeral containers added to an
//!   injected pod (`pods/ephemeralcontainers`): denied when they would reach
//!   into the sidecar.
//! - [`tls`]: the certificate, reloaded when cert-manager rotates it.

mod annotations;
pub mod config;
pub mod config_maps;
pub mod ephemeral;
pub mod fit;
pub mod isolation;
pub mod mesh;
pub mod mutate;
pub mod openshift;
pub mod quantity;
mod sidecar;
pub mod sockets;
pub mod tls;

pub use config::{Config, FailurePolicy};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use config_maps::ConfigMaps;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use k8s_openapi::api::core::v1::Pod;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// The largest AdmissionReview read (a pod object is at most ~1.5 MiB in etcd).
pub const MAX_BODY: usize = 4 << 20;

/// The webhook's errors at start-up; requests never fail the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where and with what the webhook runs.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub config: Config,
}

/// Binds, then serves until `shutdown` resolves; in-flight reviews finish
/// (bounded by 10 s).
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let cert = Arc::new(
        tls::ReloadingCert::new(&settings.tls_cert, &settings.tls_key).map_err(Error::Tls)?,
    );
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().map_err(Error::Tls)?));
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: settings.listen,
            source,
        })?;
    let metrics = WebhookMetrics::new();
    let config_maps = ConfigMaps::start(&settings.config, metrics.config_map_watches.clone()).await;
    let namespaces = openshift::Namespaces::start(settings.config.openshift).await;
    let handler = Arc::new(Handler {
        config: settings.config,
        metrics,
        config_maps,
        namespaces,
    });
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(settings.listen),
        native_sidecar = handler.config.native_sidecar,
        tokens = ?handler.config.tokens,
        check_config_maps = handler.config.check_config_maps,
        socket_per_container = handler.config.socket_per_container,
        openshift = handler.config.openshift,
        "kms-sidecar webhook ready"
    );
    let reloader = tokio::spawn(reload_tls(cert, handler.metrics.tls_reloads.clone()));

    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        let watcher = graceful.watcher();
        tokio::spawn(connection(
            stream,
            peer,
            acceptor,
            handler,
            http.clone(),
            watcher,
        ));
    }
    drop(listener);
    reloader.abort();
    tracing::info!("draining in-flight reviews");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out");
    }
    Ok(())
}

/// Reloads the TLS certificate when cert-manager rotates it, counting
/// reloads in `reloads`; runs until aborted.
async fn reload_tls(cert: Arc<tls::ReloadingCert>, reloads: IntCounterVec) {
    let mut tick = tokio::time::interval(tls::POLL);
    loop {
        tick.tick().await;
        match cert.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                reloads.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "TLS certificate change not loaded; serving the previous one");
            }
        }
    }
}

/// Serves one connection from `peer`: its TLS handshake, then its reviews.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<Handler>,
    http: http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Some(tls) = handshake(&acceptor, stream, peer).await else {
        return;
    };
    let svc = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req).await) }
    });
    if let Err(e) = watcher
        .watch(http.serve_connection(TokioIo::new(tls), svc))
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The TLS handshake of a new connection, within 10 s.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Accepts one connection, with Nagle's algorithm off: a review is one
/// small request and one small answer, and Nagle holding back the last
/// segment of a TLS flight until the API server's delayed ACK cost ~40 ms
/// on about one fresh-TLS review in ten.
async fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    if let Err(e) = stream.set_nodelay(true) {
        // Still served, only slower: not a reason to drop the review.
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    Ok((stream, peer))
}

#[derive(Debug)]
struct WebhookMetrics {
    registry: Registry,
    /// `webhook_reviews_total{outcome}`: injected, skipped (admitted
    /// unchanged), refused (a [`mutate::Refusal`] or not a pod), denied (an
    /// [`ephemeral::Denial`]), malformed (not an AdmissionReview).
    reviews: IntCounterVec,
    review_duration: HistogramVec,
    /// `webhook_tls_reloads_total{outcome}`.
    tls_reloads: IntCounterVec,
    /// `webhook_config_map_lookups_total{outcome}`: found, missing,
    /// not_watched, unavailable ([`config_maps::Presence`]).
    config_map_lookups: IntCounterVec,
    /// `webhook_config_map_watch_ready{config_map}`: 1 once the watch of
    /// that (configured) name has listed.
    config_map_watches: IntGaugeVec,
    /// `webhook_namespace_lookups_total{outcome}`: openshift, kubernetes,
    /// unavailable (the webhook's `openshift` setting applied).
    namespace_lookups: IntCounterVec,
}

impl WebhookMetrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("kms_sidecar".into()), None)
            .expect("a constant prefix is valid");
        let reviews = IntCounterVec::new(
            Opts::new(
                "webhook_reviews_total",
                "AdmissionReviews answered, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let review_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_review_duration_seconds",
                "Time to answer an AdmissionReview, body read included",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
            ]),
            &[],
        )
        .expect("valid metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "webhook_tls_reloads_total",
                "Certificate reloads after a file change",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let config_map_lookups = IntCounterVec::new(
            Opts::new(
                "webhook_config_map_lookups_total",
                "Lookups of the ConfigMaps an injection mounts, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let config_map_watches = IntGaugeVec::new(
            Opts::new(
                "webhook_config_map_watch_ready",
                "1 once the watch of a configured ConfigMap name has listed",
            ),
            &["config_map"],
        )
        .expect("valid metric");
        let namespace_lookups = IntCounterVec::new(
            Opts::new(
                "webhook_namespace_lookups_total",
                "Lookups of a pod's namespace for OpenShift's uid range, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reviews.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(namespace_lookups.clone()),
            Box::new(review_duration.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(config_map_lookups.clone()),
            Box::new(config_map_watches.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            registry,
            reviews,
            review_duration,
            tls_reloads,
            config_map_lookups,
            config_map_watches,
            namespace_lookups,
        }
    }
}

/// Answers the webhook's HTTP requests.
#[derive(Debug)]
pub struct Handler {
    config: Config,
    metrics: WebhookMetrics,
    config_maps: ConfigMaps,
    namespaces: openshift::Namespaces,
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/metrics") => {
                let mut out = String::new();
                match TextEncoder::new().encode_utf8(&self.metrics.registry.gather(), &mut out) {
                    Ok(()) => text(StatusCode::OK, out),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            (&Method::POST, "/mutate") => {
                let started = Instant::now();
                let (status, body) = match read_body(req).await {
                    Ok(body) => self.review(&body).await,
                    Err((status, message)) => {
                        self.metrics.reviews.with_label_values(&["malformed"]).inc();
                        (status, error_body(&message))
                    }
                };
                self.metrics
                    .review_duration
                    .with_label_values(&[] as &[&str])
                    .observe(started.elapsed().as_secs_f64());
                json(status, body)
            }
            (_, "/mutate" | "/healthz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: the webhook serves POST /mutate, /healthz and /metrics\n",
            ),
        }
    }

    /// One AdmissionReview in, one out. A body that is not an
    /// AdmissionReview gets a 400 with a JSON error (the API server then
    /// applies the webhook's `failurePolicy`).
    pub async fn review(&self, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let malformed = |message: String| {
            self.metrics.reviews.with_label_values(&["malformed"]).inc();
            tracing::warn!(error = %message, "malformed AdmissionReview");
            (StatusCode::BAD_REQUEST, error_body(&message))
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return malformed(format!("not an AdmissionReview: {e}")),
        };
        if review.types.api_version != kube_core::admission::META_API_VERSION_V1
            || review.types.kind != kube_core::admission::META_KIND
        {
            return malformed(format!(
                "expected apiVersion {} kind {}, got `{}` `{}`",
                kube_core::admission::META_API_VERSION_V1,
                kube_core::admission::META_KIND,
                review.types.api_version,
                review.types.kind
            ));
        }
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => return malformed("the AdmissionReview has no request".into()),
        };
        let (outcome, mut response) = self.decide(&request).await;
        self.metrics.reviews.with_label_values(&[outcome]).inc();
        // The API documents `patch` as base64 (a Go []byte); kube-core's
        // Vec<u8> would go out as an array of numbers (kube-rs/kube#1781).
        let patch = response.patch.take();
        let answer = serde_json::to_value(response.into_review()).map(|mut review| {
            if let Some(patch) = patch {
                review["response"]["patch"] = STANDARD.encode(patch).into();
            }
            review
        });
        match answer.and_then(|review| serde_json::to_vec(&review)) {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                error_body(&e.to_string()),
            ),
        }
    }

    async fn decide(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        let response = AdmissionResponse::from(request);
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        match (is_pod, &request.operation, request.sub_resource.as_deref()) {
            (true, Operation::Create, None) => match pod_of(request) {
                Ok(pod) => self.inject(&pod, response, namespace).await,
                Err(e) => self.cannot_decide(response, namespace, &e),
            },
            (true, Operation::Update, Some("ephemeralcontainers")) => match pod_of(request) {
                Ok(pod) => self.review_ephemeral(&pod, response, namespace).await,
                Err(e) => {
                    tracing::warn!(pod.namespace = namespace, reason = %e, "ephemeral containers denied: the pod cannot be read");
                    let message =
                        format!("kms-sidecar cannot review the ephemeral containers: {e}");
                    ("denied", response.deny(message))
                }
            },
            _ => {
                tracing::debug!(kind = %request.kind.kind, operation = ?request.operation, "not a pod creation or ephemeral containers; admitted unchanged");
                ("skipped", response)
            }
        }
    }

    /// A pod's creation: injected, left alone, or refused (the pod as it
    /// is, or the ConfigMaps its patch mounts missing from its namespace).
    async fn inject(
        &self,
        pod: &Pod,
        response: AdmissionResponse,
        namespace: &str,
    ) -> (&'static str, AdmissionResponse) {
        let name = pod_name(pod);
        let config = self.config_for(namespace).await;
        match mutate::mutate(pod, &config) {
            Ok(mutate::Decision::Skip { reason, warning }) => {
                tracing::debug!(pod.namespace = namespace, pod.name = %name, reason, "admitted unchanged");
                let mut response = response;
                response.warnings = warning.map(|w| vec![format!("kms-sidecar not injected: {w}")]);
                ("skipped", response)
            }
            Ok(mutate::Decision::Inject(mut injection)) => {
                match self.check_config_maps(&injection, namespace).await {
                    Ok(warnings) => injection.warnings.extend(warnings),
                    Err(why) => return self.cannot_decide(response, namespace, &why),
                }
                match response.clone().with_patch(injection.patch) {
                    Ok(mut patched) => {
                        tracing::info!(pod.namespace = namespace, pod.name = %name, "sidecar injected");
                        if !injection.warnings.is_empty() {
                            patched.warnings = Some(
                                injection
                                    .warnings
                                    .iter()
                                    .map(|w| format!("kms-sidecar: {w}"))
                                    .collect(),
                            );
                        }
                        ("injected", patched)
                    }
                    Err(e) => self.cannot_decide(response, namespace, &e.to_string()),
                }
            }
            Err(refusal @ mutate::Refusal::AfterInjection(_)) => {
                tracing::warn!(pod.namespace = namespace, pod.name = %name, reason = %refusal, "pod denied");
                let message = format!("kms-sidecar: {refusal}");
                ("refused", response.deny(message))
            }
            Err(refusal) => self.cannot_decide(response, namespace, &refusal.to_string()),
        }
    }

    /// The config for a pod of `namespace`: in OpenShift mode when the
    /// webhook's says so or the namespace is OpenShift's; when the webhook
    /// cannot tell, its own.
    async fn config_for(&self, namespace: &str) -> Cow<'_, Config> {
        if self.config.openshift {
            return Cow::Borrowed(&self.config);
        }
        let detected = self.namespaces.is_openshift(namespace).await;
        let outcome = match detected {
            Some(true) => "openshift",
            Some(false) => "kubernetes",
            None => "unavailable",
        };
        self.metrics
            .namespace_lookups
            .with_label_values(&[outcome])
            .inc();
        tracing::debug!(pod.namespace = namespace, outcome, "namespace looked up");
        match detected {
            Some(true) => Cow::Owned(Config {
                openshift: true,
                ..self.config.clone()
            }),
            _ => Cow::Borrowed(&self.config),
        }
    }

    /// Looks up the ConfigMaps `injection` mounts: `Err` when one is missing
    /// (the refusal), else the warnings for those it could not check.
    async fn check_config_maps(
        &self,
        injection: &mutate::Injection,
        namespace: &str,
    ) -> Result<Vec<String>, String> {
        let found = self
            .config_maps
            .check(namespace, &injection.config_maps)
            .await;
        for (name, presence) in &found {
            self.metrics
                .config_map_lookups
                .with_label_values(&[presence.outcome()])
                .inc();
            tracing::debug!(pod.namespace = namespace, config_map.name = %name, outcome = presence.outcome(), "ConfigMap looked up");
        }
        config_maps::verdict(namespace, &found)
    }

    /// An update of a pod's ephemeral containers: denied when one would
    /// reach into the sidecar ([`ephemeral::Denial`]) whatever the failure
    /// policy (which is about pods the webhook cannot inject), else admitted
    /// unchanged.
    async fn review_ephemeral(
        &self,
        pod: &Pod,
        response: AdmissionResponse,
        namespace: &str,
    ) -> (&'static str, AdmissionResponse) {
        let name = pod_name(pod);
        let config = self.config_for(namespace).await;
        match ephemeral::review(pod, &config) {
            Ok(()) => {
                tracing::debug!(pod.namespace = namespace, pod.name = %name, "ephemeral containers admitted");
                ("skipped", response)
            }
            Err(denial) => {
                tracing::warn!(pod.namespace = namespace, pod.name = %name, reason = %denial, "ephemeral container denied");
                ("denied", response.deny(denial.to_string()))
            }
        }
    }

    /// `failure_policy: ignore` admits the pod unchanged with a warning the
    /// user sees in kubectl; `fail` denies it with the reason.
    fn cannot_decide(
        &self,
        response: AdmissionResponse,
        namespace: &str,
        why: &str,
    ) -> (&'static str, AdmissionResponse) {
        let message = format!("kms-sidecar not injected: {why}");
        match self.config.failure_policy {
            FailurePolicy::Ignore => {
                tracing::warn!(
                    pod.namespace = namespace,
                    reason = why,
                    "admitted without the sidecar"
                );
                let mut response = response;
                response.warnings = Some(vec![message]);
                ("refused", response)
            }
            FailurePolicy::Fail => {
                tracing::warn!(pod.namespace = namespace, reason = why, "pod denied");
                ("refused", response.deny(message))
            }
        }
    }
}

/// The review's object as a pod.
fn pod_of(request: &AdmissionRequest<DynamicObject>) -> Result<Pod, String> {
    let object = request
        .object
        .as_ref()
        .ok_or_else(|| "the review has no object".to_string())?;
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    serde_json::from_value::<Pod>(value).map_err(|e| format!("not a pod: {e}"))
}

/// The pod's name, or its `generateName` (a controller's pod has no name yet).
fn pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the review is over {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json".into(),
        ));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("could not read the body: {e}"),
        )),
    }
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.into())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    response(status, "application/json", body.into())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, _) = accept(&listener).await.unwrap();
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY is set");
        client.await.unwrap().unwrap();
    }
}
