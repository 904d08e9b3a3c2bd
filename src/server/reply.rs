//! Answers before and as HTTP: a [`Reply`] (status, content type, body,
//! the key version for the audit log, the body budget it holds) and the
//! response it becomes, with the request id and the headers every answer
//! carries.

use super::body;
use super::routes::REQUEST_ID;
use crate::api::{self, ApiError};
use crate::envelope;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use std::sync::Arc;

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

/// A response before headers: status, content type, body.
pub(super) struct Reply {
    pub status: StatusCode,
    content_type: &'static str,
    body: ReplyBody,
    /// Seconds for `Retry-After` (429, 503).
    retry_after: Option<u64>,
    /// The key version the answer names (for the audit log).
    pub version: Option<String>,
    /// The request's share of the body budget, held until the answer has
    /// been written: a caller that does not read its answers cannot pile
    /// them up in memory beyond the budget.
    hold: Option<body::Reservation>,
}

impl Reply {
    /// `/metrics`: the Prometheus text format.
    pub fn metrics(text: Vec<u8>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            retry_after: None,
            version: None,
            hold: None,
            body: ReplyBody::Full(Bytes::from(text)),
        }
    }

    /// A streamed envelope, holding `hold` until it is written.
    pub fn stream(chunks: envelope::Chunks, hold: body::Reservation) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            retry_after: None,
            version: None,
            hold: Some(hold),
            body: ReplyBody::Stream(chunks),
        }
    }

    /// The answer, holding the request's share of the body budget (if
    /// any) until it is written.
    pub fn holding(self, hold: Option<body::Reservation>) -> Self {
        Self { hold, ..self }
    }
}

enum ReplyBody {
    Full(Bytes),
    /// Streamed chunks; an `Err` aborts the response before its final chunk.
    Stream(envelope::Chunks),
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let mut body = serde_json::to_vec(value).expect("API types always serialize");
    body.push(b'\n'); // so that `curl` output ends its line
    json_body(status, body)
}

/// A JSON answer already written.
pub(super) fn json_body(status: StatusCode, body: Vec<u8>) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        retry_after: None,
        version: None,
        hold: None,
        body: ReplyBody::Full(Bytes::from(body)),
    }
}

pub(super) fn error_reply(e: &ApiError, request_id: &str) -> Reply {
    let mut reply = json(e.status, &e.body(request_id));
    reply.retry_after = e.retry_after;
    reply
}

/// An error of Vault's transit API (`compat.vault_transit`) as Vault
/// answers one: `{"errors": [message]}`, 400 where API v1 says 422, and
/// "permission denied" first in a 403's message, as Vault's clients expect.
pub(super) fn vault_error_reply(e: &ApiError) -> Reply {
    let status = match e.status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let message = match e.code {
        api::Code::Forbidden => format!("permission denied: {}", e.message),
        _ => e.message.clone(),
    };
    let errors = api::transit::VaultErrors {
        errors: vec![message],
    };
    let mut reply = json(status, &errors);
    reply.retry_after = e.retry_after;
    reply
}

/// The HTTP response of a reply, with the request id, `Allow` for 405, and
/// `Connection: close` when the rest of the request body is being dropped.
pub(super) fn into_response(
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
