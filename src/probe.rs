//! `kms-sidecar probe`: one `GET /healthz` or `/readyz` over the sidecar's
//! socket, for exec probes where no TCP port can serve them (the webhook
//! uses it on `hostNetwork` pods, whose ports are the node's).

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;

/// The paths a probe may ask for.
pub const PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How long a probe waits for the whole answer (the kubelet's default
/// timeout is 1 s; the webhook sets 2 s).
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer kept (a readiness body names a few backends).
const MAX_ANSWER: usize = 64 << 10;

/// Asks the sidecar listening on `socket`: its status code and body, or why
/// it could not be asked.
pub async fn probe(socket: &Path, path: &str) -> Result<(u16, String), String> {
    tokio::time::timeout(TIMEOUT, ask(socket, path))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
}

async fn ask(socket: &Path, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
