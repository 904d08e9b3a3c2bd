//! The request pipeline every endpoint runs through, from its declaration
//! in [`super::endpoints`]: request ids, the request span, the method, the
//! rules (once per request), the rate limit, a key's checks (audit log,
//! replay guard, headers), the body within its limits, the answer, the
//! audit record and the request metrics. Answers are built in
//! [`super::reply`], paths parsed in `route`.

use super::body;
use super::endpoints::{Dialect, Endpoint, Input, OnSocket, Serve, Streamed};
pub use super::reply::{Body, Chunk};
use super::reply::{Reply, error_reply, into_response, vault_error_reply};
use super::route::{Route, UNKNOWN, labels, parse_route};
use crate::api::{self, ApiError, Code, parse_json};
use crate::audit::{self as audit_log, Audit};
use crate::backend::Context;
use crate::config::Limits;
use crate::policy::Caller;
use crate::service::{Grant, Service};
use crate::telemetry;
use futures_util::FutureExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Body as _;
use hyper::body::Incoming;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use zeroize::Zeroizing;

/// The request id header, echoed when the caller sends a usable one.
pub const REQUEST_ID: &str = "x-request-id";

/// The header carrying the encryption context of a streamed envelope.
pub const ENCRYPTION_CONTEXT: &str = "x-encryption-context";

/// The request body while a route decides whether to read it: `Some` until
/// it is read to the end or handed to a stream; what is left afterwards is
/// drained by the lingering close.
type Unread = Option<Incoming>;

/// What is known of a request before it is answered.
struct Facts<'a> {
    id: String,
    /// `None` on the probe listener.
    caller: Option<Caller>,
    route: Option<Route<'a>>,
    /// The `op` label of metrics, logs and the audit log.
    op: &'static str,
    /// The key label: the alias of a configured key, `-` for another name,
    /// `""` for no key.
    key: &'a str,
    started: Instant,
}

impl Facts<'_> {
    /// The request's span, with every field known now: recording one
    /// later would make the JSON log layer re-format the span's fields on
    /// every request. Probes and scrapes get a span of their own name,
    /// which is not exported as a trace.
    fn span(&self, headers: &HeaderMap) -> tracing::Span {
        let (request_id, caller, op, key_label) = (&self.id, self.caller, self.op, self.key);
        macro_rules! request_span {
            ($name:literal) => {
                tracing::info_span!(
                    $name,
                    request_id = %request_id,
                    // i64: trace attributes have no unsigned integers.
                    caller.uid = caller.map(|c| i64::from(c.uid)),
                    caller.gid = caller.map(|c| i64::from(c.gid)),
                    caller.pid = caller.and_then(|c| c.pid).map(i64::from),
                    caller.container = caller.and_then(|c| c.container),
                    op,
                    key = (!key_label.is_empty()).then_some(key_label),
                    outcome = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                    not_exported = tracing::field::Empty,
                )
            };
        }
        if self.route.is_some_and(|r| r.is_probe()) {
            return request_span!("probe");
        }
        let span = request_span!("request");
        telemetry::adopt_parent(&span, headers);
        span
    }
}

/// The routes, shared by every connection. A config reload builds new ones
/// ([`Routes::next`]); a request keeps the routes it started with.
#[derive(Debug)]
pub struct Routes {
    service: Arc<Service>,
    limits: Limits,
    max_body: usize,
    /// `limits.max_buffered_bytes`.
    budget: Arc<body::Budget>,
    /// `limits.per_caller`: a token bucket per caller (uid, or gid for
    /// gid-only rules: [`crate::policy::Principal`]).
    per_caller: Option<Arc<DefaultKeyedRateLimiter<crate::policy::Principal>>>,
    audit: Option<Audit>,
    replay: Arc<super::replay::ReplayGuard>,
    /// `request_duration` per route label.
    durations: crate::metrics::Cached<prometheus::Histogram>,
}

impl Routes {
    pub fn new(service: Arc<Service>, limits: &Limits, audit: Option<Audit>) -> Self {
        let per_caller = limits.per_caller.map(|l| {
            let period = l.rate.per / l.rate.count;
            let quota = Quota::with_period(period.max(std::time::Duration::from_nanos(1)))
                .expect("a positive period")
                .allow_burst(NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN));
            Arc::new(RateLimiter::keyed(quota))
        });
        let max_body = usize::try_from(limits.max_body.0).unwrap_or(usize::MAX);
        Self {
            service,
            limits: limits.clone(),
            max_body,
            budget: body::Budget::new(limits.max_buffered_bytes.0, limits.max_body.0),
            per_caller,
            audit,
            replay: Arc::new(super::replay::ReplayGuard::new()),
            durations: crate::metrics::Cached::new(&labels()),
        }
    }

    /// The routes of a reloaded config over `service`. What callers hold
    /// carries over where its limit is unchanged: the body budget (with the
    /// bodies in flight) and each caller's token bucket. The nonces seen
    /// always carry over: forgetting them would make captured requests
    /// replayable.
    pub fn next(
        &self,
        service: Arc<Service>,
        limits: &Limits,
        changes: crate::config::Changes<'_>,
    ) -> Self {
        let mut next = Self::new(service, limits, self.audit.clone());
        next.replay = self.replay.clone();
        if changes.body_budget_kept() {
            next.budget = self.budget.clone();
        }
        if changes.rate_limits_kept() {
            next.per_caller = self.per_caller.clone();
        }
        next
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The audit log (none on the probe listener).
    pub(super) fn audit(&self) -> Option<&Audit> {
        self.audit.as_ref()
    }

    /// `limits.per_caller`: `Err` with the seconds until the caller may retry.
    fn rate_limit(&self, caller: &Caller) -> Result<(), ApiError> {
        self.charge(caller, 1)
    }

    /// `tokens` of the caller's bucket (a batch costs one per item).
    fn charge(&self, caller: &Caller, tokens: u32) -> Result<(), ApiError> {
        let (Some(limiter), Some(n)) = (&self.per_caller, NonZeroU32::new(tokens)) else {
            return Ok(());
        };
        let over = |message: String| {
            self.service.metrics().rate_limited.inc();
            ApiError::new(Code::RateLimited, message)
        };
        match limiter.check_key_n(&self.service.counted_as(caller), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(over(format!(
                    "caller {caller} is over its rate limit (limits.per_caller{}); retry in {} ms",
                    if tokens > 1 {
                        ", one token per batch item"
                    } else {
                        ""
                    },
                    wait.as_millis()
                ))
                .retry_in(wait.as_secs_f64().ceil() as u64))
            }
            Err(_) => Err(over(too_big_a_batch(tokens + 1))),
        }
    }

    /// Answers one request. `caller` is `None` on the TCP probe listener,
    /// which serves the probes only.
    pub async fn handle(&self, req: Request<Incoming>, caller: Option<Caller>) -> Response<Body> {
        let started = Instant::now();
        let id = request_id(req.headers());
        let (parts, body) = req.into_parts();
        let transit = self.service.transit_mount();
        let route =
            parse_route(parts.uri.path(), transit).filter(|r| caller.is_some() || r.is_probe());
        let key = match route.and_then(|r| r.key) {
            Some(alias) if self.service.is_key(alias) => alias,
            Some(_) => "-",
            None => "",
        };
        let request = Facts {
            id,
            caller,
            route,
            op: route.map_or(UNKNOWN, Route::label),
            key,
            started,
        };
        let span = request.span(&parts.headers);
        let answered = self.answer(&request, &parts, body).instrument(span);
        telemetry::with_request_id(&request.id, answered).await
    }

    /// The pipeline after the span is entered: the route's answer (or an
    /// error), its audit record, the request metrics, the response.
    async fn answer(&self, request: &Facts<'_>, parts: &Parts, body: Incoming) -> Response<Body> {
        let mut unread: Unread = Some(body);
        let mut admitted = false;
        let reply = match request.route {
            None => Err(ApiError::new(
                Code::NotFound,
                format!("no route {} {}", parts.method, parts.uri.path()),
            )),
            Some(route) => {
                let caller = request.caller;
                answer_panics(self.dispatch(route, parts, &mut unread, caller, &mut admitted)).await
            }
        };
        let unexported = self.unexported(reply.is_err() && !admitted, request.caller);
        let (reply, code) = self.audited(request, reply).await;
        self.observe(request, &reply, code, unexported);
        let allow = (reply.status == StatusCode::METHOD_NOT_ALLOWED)
            .then_some(request.route)
            .flatten()
            .map(|r| {
                if r.endpoint.method == Method::GET {
                    "GET"
                } else {
                    "POST"
                }
            });
        // Answered before its body was read: drop the rest of the body
        // while the client reads the answer, then close.
        let linger = unread.filter(|b| !b.is_end_stream());
        let close = linger.is_some();
        if let Some(rest) = linger {
            crate::stream::linger(body::stream(rest));
        }
        into_response(reply, &request.id, allow, close)
    }

    /// The reply of `answered` and its outcome code, once its audit record
    /// is written (for every request on the socket but the probes). An
    /// answer whose record is lost is not given: it becomes the error.
    async fn audited(
        &self,
        request: &Facts<'_>,
        answered: Result<Reply, ApiError>,
    ) -> (Reply, &'static str) {
        let (mut reply, mut code) = match answered {
            Ok(reply) => (reply, "ok"),
            Err(e) => {
                refused(&e);
                (self.error_reply(request, &e), e.code.as_str())
            }
        };
        let (Some(audit), Some(c)) = (&self.audit, request.caller) else {
            return (reply, code);
        };
        if request.route.is_some_and(|r| r.is_probe()) {
            return (reply, code);
        }
        let written = audit
            .record(audit_log::Entry {
                time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                request_id: request.id.clone(),
                uid: c.uid,
                gid: c.gid,
                pid: c.pid,
                container: c.container,
                op: request.op,
                key: (!request.key.is_empty()).then(|| request.key.to_owned()),
                version: reply.version.clone(),
                outcome: code,
                status: reply.status.as_u16(),
                latency_us: request.started.elapsed().as_micros() as u64,
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(code = e.code.as_str(), message = %e.message, "request failed");
            reply = self.error_reply(request, &e);
            code = e.code.as_str();
        }
        (reply, code)
    }

    /// The answer of error `e`, in the shape of the request's API.
    fn error_reply(&self, request: &Facts<'_>, e: &ApiError) -> Reply {
        match request.route.map(|r| r.endpoint.dialect) {
            Some(Dialect::Vault) => vault_error_reply(e),
            _ => error_reply(e, &request.id),
        }
    }

    /// The request's trace outcome and its metrics.
    fn observe(
        &self,
        request: &Facts<'_>,
        reply: &Reply,
        code: &'static str,
        unexported: Option<&'static str>,
    ) {
        if telemetry::exporting() {
            // Only then: a field recorded now makes the JSON log layer
            // format the span's fields again.
            let span = tracing::Span::current();
            telemetry::ended(&span, code, reply.status.is_server_error());
            // Only callers with a rule, past the checks made before the
            // body, spend the export: the others' spans are counted.
            if let Some(reason) = unexported {
                span.record("not_exported", reason);
            }
        }
        let (op, started) = (request.op, request.started);
        let metrics = self.service.metrics();
        (metrics.requests_total)
            .with_label_values(&[op, request.key, code])
            .inc();
        if let Some(container) = request.caller.and_then(|c| c.container) {
            (metrics.container_requests)
                .with_label_values(&[container, code])
                .inc();
        }
        let elapsed = started.elapsed().as_secs_f64();
        self.durations.with(
            op,
            || metrics.request_duration.with_label_values(&[op]),
            |duration| duration.observe(elapsed),
        );
        let micros = started.elapsed().as_micros() as u64;
        tracing::debug!(status = reply.status.as_u16(), micros, "request done");
    }

    /// Why the span of a request is not exported, if it is not: it was
    /// refused before its body, or its caller is one no rule names.
    fn unexported(
        &self,
        refused_before_body: bool,
        caller: Option<Caller>,
    ) -> Option<&'static str> {
        if refused_before_body {
            Some(telemetry::REFUSED_BEFORE_BODY)
        } else if caller
            .is_some_and(|c| telemetry::exporting() && self.service.principal(&c).is_none())
        {
            Some(telemetry::NO_CALLER_RULE)
        } else {
            None
        }
    }

    /// Answers `route` as its endpoint declares ([`super::endpoints`]):
    /// the method, who may call it (decided once, from the path and the
    /// peer credentials alone, before a byte of the body is read), the
    /// rate limit, a key's checks, the body, the answer. `admitted` is set
    /// once the request has passed the checks made before its body: a
    /// refusal before that exports no span.
    async fn dispatch(
        &self,
        route: Route<'_>,
        parts: &Parts,
        unread: &mut Unread,
        caller: Option<Caller>,
        admitted: &mut bool,
    ) -> Result<Reply, ApiError> {
        let endpoint = route.endpoint;
        if !endpoint.takes(&parts.method) {
            return Err(wrong_method(parts, endpoint));
        }
        let svc = &self.service;
        match (endpoint.serve, caller) {
            (Serve::Probe(on_socket, answer), c) => {
                if let Some(c) = c {
                    match on_socket {
                        OnSocket::Anyone => {}
                        OnSocket::Checked(check) => check(svc, &c)?,
                        OnSocket::NotHere(message) => {
                            return Err(ApiError::new(Code::NotFound, message));
                        }
                    }
                    *admitted = true;
                }
                Ok(answer(self, c.is_some()).await)
            }
            (_, None) => Err(ApiError::new(Code::NotFound, "only probes are served here")),
            (Serve::Caller(check, answer), Some(c)) => {
                if let Some(check) = check {
                    check(svc, &c)?;
                }
                self.rate_limit(&c)?;
                *admitted = true;
                let (body, hold) = self.read_input(endpoint.input, parts, unread, &c).await?;
                Ok(answer(svc, &c, &body).await?.holding(hold))
            }
            (Serve::Key(op, also, answer), Some(c)) => {
                // Never "": a key endpoint's route names its key (`parse_route`).
                let alias = route.key.unwrap_or_default();
                let grant = match (svc.authorize(&c, alias, op), also) {
                    (Err(e), Some(also)) => svc.authorize(&c, alias, also).map_err(|_| e)?,
                    (granted, _) => granted?,
                };
                self.rate_limit(&c)?;
                let streamed = self.key_checks(&grant, endpoint, &parts.headers)?;
                *admitted = true;
                if let Some((streamed, context)) = streamed {
                    let input = unread.take().expect("the body is unread until here");
                    // Boxed: its state would make every request's future
                    // (moved several times on the way) as large as its own.
                    let stream =
                        self.envelope_stream(&grant, streamed, context, &parts.headers, input);
                    return Box::pin(stream).await;
                }
                let (body, hold) = self.read_input(endpoint.input, parts, unread, &c).await?;
                let reply = answer(svc, &grant, route.param, &body).await;
                drop(body);
                Ok(reply?.holding(hold))
            }
        }
    }

    /// What a key endpoint's request passes after the rules and the rate
    /// limit, before its body: the audit log can be written, the key's
    /// replay guard, the headers. `Some`: the body is a streamed envelope,
    /// with this encryption context.
    fn key_checks(
        &self,
        grant: &Grant<'_>,
        endpoint: &Endpoint,
        headers: &HeaderMap,
    ) -> Result<Option<(Streamed, Context)>, ApiError> {
        if let Some(audit) = &self.audit {
            audit.available()?;
        }
        if grant.entry.replay_guard {
            let window = super::replay::Window::new(
                self.limits.replay_window.0,
                self.limits.replay_memory.0,
            );
            let caller = &grant.caller;
            (self.replay).check(caller.uid, self.service.counted_as(caller), headers, window)?;
        }
        let header_context = encryption_context_header(headers)?;
        match endpoint.streamed.filter(|_| is_octet_stream(headers)) {
            Some(streamed) => Ok(Some((streamed, header_context.unwrap_or_default()))),
            None if header_context.is_some() => Err(ApiError::invalid(format!(
                "header `{ENCRYPTION_CONTEXT}` is only for streamed envelopes (Content-Type: application/octet-stream); send `context` in the JSON body"
            ))),
            None => Ok(None),
        }
    }

    /// The body as `input` says: none, or read whole with its share of the
    /// body budget (a batch spends one more rate-limit token per further
    /// item, the request's own being spent).
    async fn read_input(
        &self,
        input: Input,
        parts: &Parts,
        unread: &mut Unread,
        caller: &Caller,
    ) -> Result<(Zeroizing<Vec<u8>>, Option<body::Reservation>), ApiError> {
        if input == Input::None {
            return Ok((Zeroizing::new(Vec::new()), None));
        }
        let (body, reservation) = self.read_body(parts, unread, caller).await?;
        if input == Input::Batch {
            let items = u32::try_from(api::batch_len(&body).unwrap_or(1)).unwrap_or(u32::MAX);
            if self.limits.per_caller.is_some_and(|l| items > l.burst) {
                self.service.metrics().rate_limited.inc();
                return Err(ApiError::new(Code::RateLimited, too_big_a_batch(items)));
            }
            self.charge(caller, items.saturating_sub(1))?;
        }
        Ok((body, Some(reservation)))
    }

    /// The request body, read within `limits.max_body`, the body budget
    /// and `limits.body_timeout`.
    async fn read_body(
        &self,
        parts: &Parts,
        unread: &mut Unread,
        caller: &Caller,
    ) -> Result<(Zeroizing<Vec<u8>>, body::Reservation), ApiError> {
        let incoming = unread.as_mut().expect("the body is unread until here");
        let read = body::read(
            incoming,
            &parts.headers,
            self.max_body,
            &self.budget,
            self.service.counted_as(caller),
        );
        let read = tokio::time::timeout(self.limits.body_timeout.0, read)
            .await
            .map_err(|_| {
                ApiError::invalid(format!(
                    "the request body did not arrive within {:?} (limits.body_timeout)",
                    self.limits.body_timeout.0
                ))
                .with_status(StatusCode::REQUEST_TIMEOUT)
            })??;
        *unread = None;
        Ok(read)
    }

    /// Envelope encryption of a streamed body: no size limit, constant memory
    /// (a fixed reservation of the body budget); the context travels in
    /// `x-encryption-context` as a JSON object. A body that sends nothing for
    /// `limits.stream_idle_timeout`, or comes slower than
    /// `limits.stream_min_rate`, is cut off.
    async fn envelope_stream(
        &self,
        grant: &Grant<'_>,
        streamed: Streamed,
        context: Context,
        headers: &HeaderMap,
        input: Incoming,
    ) -> Result<Reply, ApiError> {
        let input = crate::stream::paced(
            body::stream(input),
            self.limits.stream_idle_timeout.0,
            self.limits.stream_min_rate.0,
        );
        let reservation = match self
            .budget
            .reserve(
                self.service.counted_as(&grant.caller),
                body::STREAM_RESERVATION,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                crate::stream::linger(input);
                return Err(e);
            }
        };
        let svc = &self.service;
        let result = match streamed {
            Streamed::Encrypt => {
                let declared = body::declared_length(headers);
                (svc.envelope_encrypt_stream(grant, context, declared, input)).await
            }
            Streamed::Rewrap => (svc.envelope_rewrap_stream(grant, context, input)).await,
            Streamed::Decrypt => (svc.envelope_decrypt_stream(grant, context, input)).await,
        };
        let chunks = result.map_err(|(e, rest)| {
            crate::stream::linger(rest);
            e
        })?;
        Ok(Reply::stream(chunks, reservation))
    }
}

fn too_big_a_batch(items: u32) -> String {
    format!(
        "a batch of {items} items costs {items} rate-limit tokens, more than limits.per_caller.burst holds: send smaller batches"
    )
}

/// The 405 of a request with another method than `endpoint`'s.
fn wrong_method(parts: &Parts, endpoint: &Endpoint) -> ApiError {
    ApiError::new(
        Code::OperationNotSupported,
        format!(
            "{} {} is not supported; use {}",
            parts.method,
            parts.uri.path(),
            endpoint.method
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Logs an error answer: a warning for the sidecar's own failures.
fn refused(e: &ApiError) {
    if e.status.is_server_error() {
        tracing::warn!(code = e.code.as_str(), message = %e.message, "request failed");
    } else {
        tracing::debug!(code = e.code.as_str(), message = %e.message, "request refused");
    }
}

/// `dispatched`, or a 500 `internal_error` if it panics: a bug must not
/// take the connection with it, so the panic is answered, audited and
/// counted like any error (what it said is not logged: see `telemetry`).
async fn answer_panics<F>(dispatched: F) -> Result<Reply, ApiError>
where
    F: std::future::Future<Output = Result<Reply, ApiError>>,
{
    AssertUnwindSafe(dispatched)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                Code::Internal,
                "the sidecar failed on this request (a bug, logged with its request id); it goes on serving",
            ))
        })
}

/// The encryption context of `x-encryption-context`, if sent: a JSON object
/// of strings, sent once.
fn encryption_context_header(headers: &HeaderMap) -> Result<Option<Context>, ApiError> {
    let mut values = headers.get_all(ENCRYPTION_CONTEXT).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(format!(
            "header `{ENCRYPTION_CONTEXT}` is sent more than once; send one JSON object"
        )));
    }
    let api::ContextObject(context) = parse_json(value.as_bytes())
        .map_err(|e| ApiError::invalid(format!("header `{ENCRYPTION_CONTEXT}`: {}", e.message)))?;
    Ok(Some(context))
}

fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/octet-stream"))
        })
}

/// The caller's `x-request-id` if it is short printable ASCII, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        // A version-4 UUID from a fast thread-local generator: ids must be
        // unique, not secret, and `new_v4` makes a getrandom syscall each.
        .map_or_else(
            || {
                uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
                    .into_uuid()
                    .to_string()
            },
            str::to_owned,
        )
}

#[cfg(test)]
mod tests {
    use super::super::reply::json;
    use super::*;
    use http::header::HeaderValue;

    #[tokio::test]
    async fn a_panic_in_a_request_is_a_500_answer() {
        let fine = answer_panics(async { Ok(json(StatusCode::OK, &api::Health { status: "ok" })) });
        assert_eq!(fine.await.ok().map(|r| r.status), Some(StatusCode::OK));
        let bug = async {
            let far: Option<u64> = std::hint::black_box(None);
            Ok(json(StatusCode::OK, &far.expect("a bug")))
        };
        let e = answer_panics(bug)
            .await
            .err()
            .expect("answered as an error");
        assert_eq!(
            (e.code, e.status),
            (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert!(
            !e.message.contains("a bug\""),
            "the panic's message is not shown"
        );
    }

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id\"with quotes"));
        assert_ne!(request_id(&h), "bad id\"with quotes");
    }
}
