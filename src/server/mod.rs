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
use socket::{SocketId, socket_id};

use crate::config::Limits;
use crate::policy::{Caller, Principal};
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
    /// `listen.mode` and `listen.group`, to bind the socket again.
    pub mode: u32,
    pub group: Option<String>,
    pub drain_timeout: Duration,
}

/// How often the socket file is checked to still be the one the sidecar
/// listens on. Another container that can write the socket's directory
/// could delete it and listen in its place (and take the requests of the
/// others); the sidecar takes the path back within this time.
const SOCKET_CHECK: Duration = Duration::from_secs(1);

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

/// Open connections: all, per caller (uid, or gid for gid-only rules: see
/// [`Principal`]), and of uids no rule names.
#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_caller: std::collections::HashMap<Principal, usize>,
    unknown: usize,
}

/// A connection's place, given back when it closes (however its task ends).
struct Slot {
    table: Arc<std::sync::Mutex<Connections>>,
    /// `None` for a caller no rule names (the shared pool).
    caller: Option<Principal>,
    /// `connections_open`, counted down with the slot.
    open: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
        let mut t = self.table.lock().expect("never poisoned");
        t.total -= 1;
        match self.caller {
            None => t.unknown -= 1,
            Some(caller) => {
                if let Some(n) = t.per_caller.get_mut(&caller) {
                    *n -= 1;
                    if *n == 0 {
                        t.per_caller.remove(&caller);
                    }
                }
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
    let mut listener = listener;
    let mut bound = socket_id(&settings.socket);
    let socket_metrics = live.load().socket.service().metrics().clone();
    socket_metrics.socket_bound.set(1);
    let mut check = tokio::time::interval(SOCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = check.tick() => {
                if let Some((l, id)) = take_back(&settings, bound, &socket_metrics) {
                    (listener, bound) = (l, Some(id));
                }
                continue;
            }
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
        let principal = service.principal(&caller);
        let known = principal.is_some();
        let open = &service.metrics().connections_open;
        let Some(slot) = admit(&table, principal, limits, open) else {
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
        let span = tracing::debug_span!(
            "connection",
            caller.uid = caller.uid,
            caller.gid = caller.gid,
            caller.pid = caller.pid
        );
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
    drop(listener);
    // Only the sidecar's own socket: a file someone else put there stays.
    if bound.is_some()
        && socket_id(&settings.socket) == bound
        && let Err(e) = std::fs::remove_file(&settings.socket)
    {
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

/// A new listener when the socket file is no longer the one bound as
/// `bound` (deleted, or replaced by another process's socket): the path is
/// taken back, loudly. While it cannot be, the sidecar is not ready
/// (`kms_sidecar_socket_bound` 0) and tries again at the next check.
fn take_back(
    settings: &Settings,
    bound: Option<SocketId>,
    metrics: &crate::metrics::Metrics,
) -> Option<(UnixListener, SocketId)> {
    let now = socket_id(&settings.socket);
    if bound.is_some() && now == bound {
        return None;
    }
    if bound.is_some() {
        metrics.socket_replaced.inc();
        tracing::error!(
            socket = %settings.socket.display(),
            found = if now.is_none() { "nothing" } else { "another socket" },
            "the socket was removed or replaced by another process; binding it again"
        );
    }
    let rebound = socket::take_over(&settings.socket, settings.mode, settings.group.as_deref())
        .and_then(|l| {
            let id = socket_id(&settings.socket).ok_or_else(|| BindError::Io {
                path: settings.socket.clone(),
                what: "inspecting the new socket",
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            Ok((l, id))
        });
    match rebound {
        Ok(rebound) => {
            metrics.socket_bound.set(1);
            tracing::warn!(socket = %settings.socket.display(), "the socket is the sidecar's again");
            Some(rebound)
        }
        Err(e) => {
            metrics.socket_bound.set(0);
            tracing::error!(error = %e, "cannot bind the socket again; not ready until it is");
            None
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

/// A place for a new connection of `caller`: within `max_connections`,
/// within `max_connections_per_caller` for a caller some rule names (per
/// uid, or per gid where only gid rules name it), and within the small
/// shared pool of [`UNKNOWN_CALLER_CONNECTIONS`] otherwise.
fn admit(
    table: &Arc<std::sync::Mutex<Connections>>,
    caller: Option<Principal>,
    limits: &Limits,
    open: &prometheus::IntGauge,
) -> Option<Slot> {
    let mut t = table.lock().expect("never poisoned");
    let room = t.total < limits.max_connections
        && match caller {
            Some(c) => {
                t.per_caller.get(&c).copied().unwrap_or(0) < limits.max_connections_per_caller
            }
            None => t.unknown < UNKNOWN_CALLER_CONNECTIONS,
        };
    if !room {
        return None;
    }
    t.total += 1;
    match caller {
        Some(c) => *t.per_caller.entry(c).or_default() += 1,
        None => t.unknown += 1,
    }
    open.inc();
    Some(Slot {
        table: table.clone(),
        caller,
        open: open.clone(),
    })
}
