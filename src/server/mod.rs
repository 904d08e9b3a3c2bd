//! The server owns the API surface on the Unix socket: binding it, accepting
//! connections with their peer credentials, HTTP/1.1 keep-alive, and the
//! bounded drain at shutdown. Routes are in [`routes`].

mod replay;
pub mod routes;
mod socket;

pub use socket::{BindError, bind, raise_fd_limit};

use crate::config::Limits;
use crate::policy::Caller;
use crate::service::Service;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Connection settings of the socket server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub limits: Limits,
    pub drain_timeout: Duration,
    pub audit: Option<crate::audit::Audit>,
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, removes
/// the socket file, and waits (at most `drain_timeout`) for in-flight
/// requests to finish. Returns whether the drain completed in time.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let graceful = GracefulShutdown::new();
    let limits = &settings.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let routes = Arc::new(routes::Routes::new(
        service.clone(),
        limits,
        settings.audit.clone(),
    ));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            service.metrics().connections_rejected.inc();
            tracing::warn!(
                limit = limits.max_connections,
                "connection limit reached; closing a new connection"
            );
            continue;
        };
        let caller = match stream.peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing the connection");
                continue;
            }
        };
        let routes = routes.clone();
        let svc = hyper::service::service_fn(move |req| {
            let routes = routes.clone();
            async move { Ok::<_, Infallible>(routes.handle(req, Some(caller)).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        let metrics_service = service.clone();
        let span = tracing::debug_span!(
            "connection",
            caller.uid = caller.uid,
            caller.gid = caller.gid,
            caller.pid = caller.pid
        );
        tokio::spawn(
            async move {
                metrics_service.metrics().connections_open.inc();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                metrics_service.metrics().connections_open.dec();
                drop(slot);
            }
            .instrument(span),
        );
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&settings.socket) {
        tracing::warn!(socket = %settings.socket.display(), error = %e, "could not remove the socket");
    }
    tracing::info!("draining in-flight requests");
    match tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(timeout = ?settings.drain_timeout, "drain timed out; closing remaining connections");
            false
        }
    }
}
