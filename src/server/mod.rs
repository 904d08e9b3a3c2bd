//! The server owns the API surface on the Unix socket: binding it, accepting
//! connections with their peer credentials, HTTP/1.1 keep-alive, and the
//! bounded drain at shutdown. Paths are parsed in `route`, answered in
//! [`routes`].

pub mod body;
mod replay;
mod route;
pub mod routes;
mod socket;

pub use socket::{BindError, bind, raise_fd_limit};

use crate::config::Limits;
use crate::policy::Caller;
use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tracing::Instrument;

/// Connection settings of the socket server that stay until a restart.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub drain_timeout: Duration,
}

/// The routes in force on the socket and on the probe listener (which has
/// no audit log). A config reload swaps them whole ([`crate::reload`]): a
/// connection is admitted under the limits current at its accept, and each
/// request is served by the routes current when it starts, so requests in
/// flight finish under the config they began with.
#[derive(Debug)]
pub struct Served {
    pub socket: routes::Routes,
    pub probes: routes::Routes,
}

/// The current [`Served`], shared by the listeners and the reloader.
pub type Live = Arc<ArcSwap<Served>>;

/// Connections that uids no caller rule names may hold, all together: they
/// can only probe and be refused, so a few short connections are plenty,
/// and everything else stays free for callers with rules.
pub const UNKNOWN_CALLER_CONNECTIONS: usize = 64;
/// Those connections serve one request and must send it within this.
const UNKNOWN_CALLER_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The read buffer of a connection, which bounds its request head (request
/// line and headers: a larger one gets a bare 431) and what a connection
/// holds while its body is read or drained.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Open connections: all, per caller uid, and of uids no rule names.
#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_uid: std::collections::HashMap<u32, usize>,
    unknown: usize,
}

/// A connection's place, given back when it closes.
struct Slot {
    table: Arc<std::sync::Mutex<Connections>>,
    uid: u32,
    known: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().expect("never poisoned");
        t.total -= 1;
        if !self.known {
            t.unknown -= 1;
        }
        if let Some(n) = t.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                t.per_uid.remove(&self.uid);
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, removes
/// the socket file, and waits (at most `drain_timeout`) for in-flight
/// requests to finish. Returns whether the drain completed in time.
pub async fn serve(
    listener: UnixListener,
    live: Live,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let graceful = GracefulShutdown::new();
    let table = Arc::new(std::sync::Mutex::new(Connections::default()));
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
        let served = live.load_full();
        let (service, limits) = (served.socket.service(), served.socket.limits());
        let known = service.knows(&caller);
        let Some(slot) = admit(&table, caller.uid, known, limits) else {
            service.metrics().connections_rejected.inc();
            tracing::debug!(
                caller.uid = caller.uid,
                known,
                "connection limit reached; closing a new connection"
            );
            continue;
        };
        let live = live.clone();
        let svc = hyper::service::service_fn(move |req| {
            let served = live.load_full();
            async move { Ok::<_, Infallible>(served.socket.handle(req, Some(caller)).await) }
        });
        let conn = graceful.watch(http(limits, known).serve_connection(TokioIo::new(stream), svc));
        let metrics = service.metrics().clone();
        let span = tracing::debug_span!(
            "connection",
            caller.uid = caller.uid,
            caller.gid = caller.gid,
            caller.pid = caller.pid
        );
        tokio::spawn(
            async move {
                metrics.connections_open.inc();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                metrics.connections_open.dec();
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

/// HTTP/1.1 under `limits`. Connections of uids no rule names serve one
/// request, whose head must come within [`UNKNOWN_CALLER_HEADER_TIMEOUT`].
fn http(limits: &Limits, known: bool) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        .max_headers(limits.max_headers)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    if !known {
        http.header_read_timeout(UNKNOWN_CALLER_HEADER_TIMEOUT)
            .keep_alive(false);
    }
    http
}

/// A place for a new connection of `uid`: within `max_connections`, within
/// `max_connections_per_caller` for a uid some rule names, and within the
/// small shared pool of [`UNKNOWN_CALLER_CONNECTIONS`] otherwise.
fn admit(
    table: &Arc<std::sync::Mutex<Connections>>,
    uid: u32,
    known: bool,
    limits: &Limits,
) -> Option<Slot> {
    let mut t = table.lock().expect("never poisoned");
    let mine = t.per_uid.get(&uid).copied().unwrap_or(0);
    let room = t.total < limits.max_connections
        && mine < limits.max_connections_per_caller
        && (known || t.unknown < UNKNOWN_CALLER_CONNECTIONS);
    if !room {
        return None;
    }
    t.total += 1;
    *t.per_uid.entry(uid).or_default() += 1;
    if !known {
        t.unknown += 1;
    }
    Some(Slot {
        table: table.clone(),
        uid,
        known,
    })
}
