//! Thin HTTP routes: route → operation (the path is parsed in `route`),
//! body → wire type, result → JSON, plus request ids, the body limit, the
//! request span and request metrics.

use super::body;
use super::endpoints::{Endpoint, Input, Streamed};
use super::route::{Route, labels, parse_route};
use crate::api::{self, ApiError, Code, parse_json};
use crate::audit::{self as audit_log, Audit};
use crate::backend::Context;
use crate::config::{KeyLabels, Limits};
use crate::envelope;
use crate::policy::Caller;
use crate::service::{Grant, Service};
use crate::telemetry;
use bytes::Bytes;
use futures_util::FutureExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Body as _;
use hyper::body::Frame;
use hyper::body::Incoming;
use serde::Serialize;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use zeroize::Zeroizing;

/// Response body type of every route.
pub type Body = BoxBody<Chunk, std::io::Error>;

/// A piece of an answer. It keeps the request's share of the body budget
/// (if any) until hyper has written it and lets it go, so answers a client
/// does not read stay within `limits.max_buffered_bytes`.
pub struct Chunk {
    bytes: Bytes,
    _hold: Option<Arc<body::Reservation>>,
}

impl bytes::Buf for Chunk {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, n: usize) {
        self.bytes.advance(n)
    }
}

/// The request id header, echoed when the caller sends a usable one.
pub const REQUEST_ID: &str = "x-request-id";

/// The header carrying the encryption context of a streamed envelope.
pub const ENCRYPTION_CONTEXT: &str = "x-encryption-context";

/// A response before headers: status, content type, body.
pub(super) struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: ReplyBody,
    /// Seconds for `Retry-After` (429, 503).
    retry_after: Option<u64>,
    /// The key version the answer names (for the audit log).
    version: Option<String>,
    /// The request's share of the body budget, held until the answer has
    /// been written: a caller that does not read its answers cannot pile
    /// them up in memory beyond the budget.
    hold: Option<body::Reservation>,
}

enum ReplyBody {
    Full(Bytes),
    /// Streamed chunks; an `Err` aborts the response before its final chunk.
    Stream(envelope::Chunks),
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        retry_after: None,
        version: None,
        hold: None,
        body: ReplyBody::Full(Bytes::from({
            let mut body = serde_json::to_vec(value).expect("API types always serialize");
            body.push(b'\n'); // so that `curl` output ends its line
            body
        })),
    }
}

fn error_reply(e: &ApiError, request_id: &str) -> Reply {
    let mut reply = json(e.status, &e.body(request_id));
    reply.retry_after = e.retry_after;
    reply
}

/// The HTTP response of a reply, with the request id, `Allow` for 405, and
/// `Connection: close` when the rest of the request body is being dropped.
fn into_response(
    reply: Reply,
    request_id: &str,
    allow: Option<&'static str>,
    close: bool,
) -> Response<Body> {
    let hold = reply.hold.map(Arc::new);
    let chunk = move |bytes| Chunk {
        bytes,
        _hold: hold.clone(),
    };
    let body = match reply.body {
        ReplyBody::Full(bytes) => Full::new(chunk(bytes))
            .map_err(|never| match never {})
            .boxed(),
        ReplyBody::Stream(chunks) => {
            let frames =
                futures_util::stream::unfold((chunks, chunk), |(mut rx, chunk)| async move {
                    let next = rx.recv().await?;
                    Some((next.map(|b| Frame::data(chunk(b))), (rx, chunk)))
                });
            BodyExt::boxed(StreamBody::new(frames))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Some(allow) = allow {
        headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(seconds) = reply.retry_after {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if close {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub(super) fn ok<T: api::Answer>(result: Result<T, ApiError>) -> Result<Reply, ApiError> {
    result.map(|v| Reply {
        status: StatusCode::OK,
        content_type: "application/json",
        retry_after: None,
        version: v.version().map(str::to_owned),
        hold: None,
        body: ReplyBody::Full(Bytes::from(v.to_json())),
    })
}

/// The request body while a route decides whether to read it: `Some` until
/// it is read to the end or handed to a stream; what is left afterwards is
/// drained by the lingering close.
type Unread = Option<Incoming>;

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
    /// which serves `/healthz`, `/readyz` and `/metrics` only.
    pub async fn handle(&self, req: Request<Incoming>, caller: Option<Caller>) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let (parts, body) = req.into_parts();
        let route = parse_route(parts.uri.path()).filter(|r| caller.is_some() || r.is_probe());
        let (op, key_label) = match route {
            Some(r @ Route::Key(alias, _)) => {
                let label = if self.service.is_key(alias) {
                    alias
                } else {
                    "-"
                };
                (r.label(), label)
            }
            Some(r) => (r.label(), ""),
            None => ("unknown", ""),
        };
        // Every field is known here: recording one later would make the
        // JSON log layer re-format the span's fields on every request.
        // Probes and scrapes get a span of their own name, which is not
        // exported as a trace.
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
        let span = if route.is_some_and(|r| r.is_probe()) {
            request_span!("probe")
        } else {
            let span = request_span!("request");
            telemetry::adopt_parent(&span, &parts.headers);
            span
        };
        let answered = async {
            let mut unread: Unread = Some(body);
            let mut admitted = false;
            let reply = match route {
                None => Err(ApiError::new(Code::NotFound, format!("no route {} {}", parts.method, parts.uri.path()))),
                Some(route) => {
                    answer_panics(self.dispatch(route, &parts, &mut unread, caller, &mut admitted))
                        .await
                }
            };
            let unexported = self.unexported(reply.is_err() && !admitted, caller);
            let (mut reply, mut code) = match reply {
                Ok(reply) => (reply, "ok"),
                Err(e) => {
                    if e.status.is_server_error() {
                        tracing::warn!(code = e.code.as_str(), message = %e.message, "request failed");
                    } else {
                        tracing::debug!(code = e.code.as_str(), message = %e.message, "request refused");
                    }
                    (error_reply(&e, &request_id), e.code.as_str())
                }
            };
            if let (Some(audit), Some(c)) = (&self.audit, caller)
                && !route.is_some_and(|r| r.is_probe())
            {
                let written = audit
                    .record(audit_log::Entry {
                        time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                        request_id: request_id.clone(),
                        uid: c.uid,
                        gid: c.gid,
                        pid: c.pid,
                        container: c.container,
                        op,
                        key: (!key_label.is_empty()).then(|| key_label.to_owned()),
                        version: reply.version.clone(),
                        outcome: code,
                        status: reply.status.as_u16(),
                        latency_us: started.elapsed().as_micros() as u64,
                    })
                    .await;
                if let Err(e) = written {
                    // Fail closed: an answer whose record is lost is not given.
                    tracing::warn!(code = e.code.as_str(), message = %e.message, "request failed");
                    reply = error_reply(&e, &request_id);
                    code = e.code.as_str();
                }
            }
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
            let metrics = self.service.metrics();
            metrics.requests_total.with_label_values(&[op, key_label, code]).inc();
            if let Some(container) = caller.and_then(|c| c.container) {
                metrics.container_requests.with_label_values(&[container, code]).inc();
            }
            let elapsed = started.elapsed().as_secs_f64();
            self.durations.with(
                op,
                || metrics.request_duration.with_label_values(&[op]),
                |duration| duration.observe(elapsed),
            );
            tracing::debug!(status = reply.status.as_u16(), micros = started.elapsed().as_micros() as u64, "request done");
            let allow = (reply.status == StatusCode::METHOD_NOT_ALLOWED)
                .then_some(route)
                .flatten()
                .map(|r| if r.method() == Method::GET { "GET" } else { "POST" });
            // Answered before its body was read: drop the rest of the body
            // while the client reads the answer, then close.
            let linger = unread.filter(|b| !b.is_end_stream());
            let close = linger.is_some();
            if let Some(rest) = linger {
                crate::stream::linger(body::stream(rest));
            }
            into_response(reply, &request_id, allow, close)
        }
        .instrument(span);
        telemetry::with_request_id(&request_id, answered).await
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

    /// Answers `route`. `admitted` is set once the request has passed the
    /// checks made before its body (method, rules, rate limit, audit log,
    /// replay guard, headers): a refusal before that exports no span.
    async fn dispatch(
        &self,
        route: Route<'_>,
        parts: &Parts,
        unread: &mut Unread,
        caller: Option<Caller>,
        admitted: &mut bool,
    ) -> Result<Reply, ApiError> {
        if parts.method != route.method() {
            return Err(ApiError::new(
                Code::OperationNotSupported,
                format!(
                    "{} {} is not supported; use {}",
                    parts.method,
                    parts.uri.path(),
                    route.method()
                ),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED));
        }
        let svc = &self.service;
        let (caller, alias, endpoint) = match (route, caller) {
            (Route::Healthz, _) => return Ok(json(StatusCode::OK, &api::Health { status: "ok" })),
            (Route::Readyz, c) => {
                let (mut ready, mut body) = svc.readiness().await;
                if let Some(audit) = &self.audit {
                    let health = audit.health();
                    ready &= health.status == "ok" || !audit.fails_closed();
                    body.audit = Some(health);
                }
                if svc.metrics().socket_bound.get() != 1 {
                    ready = false;
                    body.socket = Some("lost");
                }
                body.status = if ready { "ready" } else { "not_ready" };
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                if c.is_none() {
                    // The TCP probe port answers anyone who reaches it: the
                    // status only, no backend names, files or errors (the
                    // socket has the reasons).
                    return Ok(json(
                        status,
                        &api::Health {
                            status: body.status,
                        },
                    ));
                }
                return Ok(json(status, &body));
            }
            (Route::Metrics, c) => {
                let text = match c {
                    // The socket: operators granted `metrics` see aliases.
                    Some(c) => {
                        svc.may_read_metrics(&c)?;
                        *admitted = true;
                        svc.metrics().encode(KeyLabels::Alias)
                    }
                    None => svc.metrics().encode(svc.key_labels()),
                };
                return Ok(Reply {
                    status: StatusCode::OK,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    retry_after: None,
                    version: None,
                    hold: None,
                    body: ReplyBody::Full(Bytes::from(text)),
                });
            }
            (Route::PublicJwks, None) => return Ok(json(StatusCode::OK, &svc.public_jwks().await)),
            (_, None) => return Err(ApiError::new(Code::NotFound, "only probes are served here")),
            (Route::PublicJwks, Some(_)) => {
                return Err(ApiError::new(
                    Code::NotFound,
                    "`/.well-known/jwks.json` is served on the probe listener (jwks.public); use GET /v1/jwks here",
                ));
            }
            (Route::ListKeys, Some(c)) => {
                self.rate_limit(&c)?;
                *admitted = true;
                return Ok(json(StatusCode::OK, &svc.list_keys(&c).await));
            }
            (Route::Jwks, Some(c)) => {
                self.rate_limit(&c)?;
                *admitted = true;
                return Ok(json(StatusCode::OK, &svc.jwks(&c).await));
            }
            (Route::JwtVerify, Some(c)) => {
                // The key is named inside the token: a caller no rule
                // grants `verify` is refused before its body is read.
                svc.may_verify_jwts(&c)?;
                self.rate_limit(&c)?;
                *admitted = true;
                let (body, reservation) = self.read_body(parts, unread, &c).await?;
                let reply = ok(svc.jwt_verify(&c, parse_json(&body)?).await);
                return reply.map(|reply| Reply {
                    hold: Some(reservation),
                    ..reply
                });
            }
            (Route::Key(alias, endpoint), Some(c)) => (c, alias, endpoint),
        };
        self.key_request(endpoint, alias, &caller, parts, unread, admitted)
            .await
    }

    /// A key endpoint's request, through the pipeline every one runs: the
    /// rules (decided once, from the path and the peer credentials alone,
    /// before a byte of the body is read or buffered), the rate limit, the
    /// audit log's availability, the replay guard and the headers; then
    /// the body (whole, or streamed where the endpoint streams), and the
    /// endpoint's service call.
    async fn key_request(
        &self,
        endpoint: &'static Endpoint,
        alias: &str,
        caller: &Caller,
        parts: &Parts,
        unread: &mut Unread,
        admitted: &mut bool,
    ) -> Result<Reply, ApiError> {
        let svc = &self.service;
        let grant = svc.authorize(caller, alias, endpoint.op)?;
        self.rate_limit(caller)?;
        if let Some(audit) = &self.audit {
            audit.available()?;
        }
        if grant.entry.replay_guard {
            let window = super::replay::Window::new(
                self.limits.replay_window.0,
                self.limits.replay_memory.0,
            );
            self.replay
                .check(caller.uid, svc.counted_as(caller), &parts.headers, window)?;
        }
        let header_context = encryption_context_header(&parts.headers)?;
        let streamed = endpoint
            .streamed
            .filter(|_| is_octet_stream(&parts.headers));
        if streamed.is_none() && header_context.is_some() {
            return Err(ApiError::invalid(format!(
                "header `{ENCRYPTION_CONTEXT}` is only for streamed envelopes (Content-Type: application/octet-stream); send `context` in the JSON body"
            )));
        }
        *admitted = true;
        if let Some(streamed) = streamed {
            let context = header_context.unwrap_or_default();
            let input = unread.take().expect("the body is unread until here");
            return self
                .envelope_stream(&grant, streamed, context, &parts.headers, input)
                .await;
        }
        let (body, reservation) = if endpoint.input == Input::None {
            (Zeroizing::new(Vec::new()), None)
        } else {
            let (body, reservation) = self.read_body(parts, unread, caller).await?;
            (body, Some(reservation))
        };
        if endpoint.input == Input::Batch {
            // The request's own token is spent: one more per further item.
            let items = u32::try_from(api::batch_len(&body).unwrap_or(1)).unwrap_or(u32::MAX);
            if self.limits.per_caller.is_some_and(|l| items > l.burst) {
                self.service.metrics().rate_limited.inc();
                return Err(ApiError::new(Code::RateLimited, too_big_a_batch(items)));
            }
            self.charge(caller, items.saturating_sub(1))?;
        }
        let reply = (endpoint.serve)(svc, &grant, &body).await;
        drop(body);
        reply.map(|reply| Reply {
            hold: reservation,
            ..reply
        })
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
        Ok(Reply {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            retry_after: None,
            version: None,
            hold: Some(reservation),
            body: ReplyBody::Stream(chunks),
        })
    }
}

fn too_big_a_batch(items: u32) -> String {
    format!(
        "a batch of {items} items costs {items} rate-limit tokens, more than limits.per_caller.burst holds: send smaller batches"
    )
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
    use super::*;

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
