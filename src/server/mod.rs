//! The server owns the API surface on the Unix socket: binding it, accepting
//! connections with their peer credentials, HTTP/1.1 keep-alive, and the
//! bounded drain at shutdown. Every endpoint is declared once in
//! `endpoints`; [`routes`] runs each request through the pipeline.

pub mod body;
mod endpoints;
pub mod peer;
mod probes;
mod replay;
mod reply;
mod route;
pub mod routes;
mod socket;
mod transit;

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
    /// `listen.mode` and `listen.group`, to bind a socket again.
    pub mode: u32,
    pub group: Option<String>,
    pub drain_timeout: Duration,
}

/// A bound socket: the shared `listen.socket`, or a container's own in
/// `listen.per_container_dir` (a connection on it is that container).
#[derive(Debug)]
pub struct Listening {
    pub listener: UnixListener,
    pub path: PathBuf,
    pub container: Option<&'static str>,
    /// The socket file bound, to tell it from one put in its place.
    bound: Option<SocketId>,
}

impl Listening {
    pub fn new(listener: UnixListener, path: PathBuf, container: Option<&'static str>) -> Self {
        let bound = socket_id(&path);
        Self {
            listener,
            path,
            container,
            bound,
        }
    }
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

/// Serves `sockets` until `shutdown` resolves; then stops accepting,
/// removes the socket files, and waits (at most `drain_timeout`) for
/// in-flight requests to finish. Returns whether the drain completed in
/// time.
pub async fn serve(
    mut sockets: Vec<Listening>,
    tcp: Option<tokio::net::TcpListener>,
    live: Live,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let graceful = GracefulShutdown::new();
    let table = Arc::new(std::sync::Mutex::new(Connections::default()));
    let socket_metrics = live.load().socket.service().metrics().clone();
    socket_metrics.socket_bound.set(1);
    let mut check = tokio::time::interval(SOCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = check.tick() => {
                let all = sockets.iter_mut().all(|s| take_back(s, &settings, &socket_metrics));
                socket_metrics.socket_bound.set(i64::from(all));
            }
            (accepted, container) = accept(&sockets, &mut next) => match accepted {
                Ok(stream) => match unix_caller(&stream, container) {
                    Some(caller) => connect(stream, caller, &live, &table, &graceful),
                    None => continue,
                },
                Err(e) => backoff(e).await,
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, peer)) => match tcp_caller(&stream, peer) {
                    Some(caller) => connect(stream, caller, &live, &table, &graceful),
                    None => continue,
                },
                Err(e) => backoff(e).await,
            },
        }
    }
    for socket in sockets {
        remove(socket);
    }
    drain(graceful, settings.drain_timeout).await
}

/// A failed accept (EMFILE and friends): back off instead of spinning.
async fn backoff(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The caller of a connection on a socket of `container`: its peer
/// credentials; `None` (the connection is closed) when they cannot be read.
fn unix_caller(stream: &tokio::net::UnixStream, container: Option<&'static str>) -> Option<Caller> {
    match stream.peer_cred() {
        Ok(c) => Some(Caller {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
            container,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing the connection");
            None
        }
    }
}

/// The next connection on the loopback TCP listener, if there is one.
async fn accept_tcp(
    tcp: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tcp {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The caller of a TCP connection: the owner of its peer's socket
/// ([`peer::tcp_caller`]); `None` (the connection is closed) when the
/// kernel does not list it.
fn tcp_caller(stream: &tokio::net::TcpStream, peer: std::net::SocketAddr) -> Option<Caller> {
    let found = stream
        .local_addr()
        .and_then(|local| peer::tcp_caller(local, peer));
    match found {
        Ok(Some(caller)) => Some(caller),
        Ok(None) => {
            tracing::warn!(%peer, "no owner of this TCP connection in the kernel's socket table; closing it");
            None
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot read the kernel's socket table; closing a TCP connection");
            None
        }
    }
}

/// Serves a new connection of `caller` in a task of its own, if the
/// caller has room for one more.
fn connect<S>(
    stream: S,
    caller: Caller,
    live: &Live,
    table: &Arc<std::sync::Mutex<Connections>>,
    graceful: &GracefulShutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = live.load_full();
    let (service, limits) = (served.socket.service(), served.socket.limits());
    let principal = service.principal(&caller);
    let known = principal.is_some();
    let open = &service.metrics().connections_open;
    let Some(slot) = admit(table, principal, limits, open) else {
        service.metrics().connections_rejected.inc();
        tracing::debug!(
            caller.uid = caller.uid,
            caller.container = caller.container,
            known,
            "connection limit reached; closing a new connection"
        );
        return;
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
        caller.pid = caller.pid,
        caller.container = caller.container,
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

/// Waits at most `timeout` for the connections' in-flight requests to
/// finish; whether they did.
async fn drain(graceful: GracefulShutdown, timeout: Duration) -> bool {
    tracing::info!("draining in-flight requests");
    match tokio::time::timeout(timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(timeout = ?timeout, "drain timed out; closing remaining connections");
            false
        }
    }
}

/// The next connection on any of `sockets`, with the container its socket
/// names. The socket after the last one that had a connection is asked
/// first, so that a busy one cannot starve the others.
async fn accept(
    sockets: &[Listening],
    next: &mut usize,
) -> (
    std::io::Result<tokio::net::UnixStream>,
    Option<&'static str>,
) {
    std::future::poll_fn(|cx| {
        let n = sockets.len();
        for k in 0..n {
            let i = (*next + k) % n;
            if let std::task::Poll::Ready(accepted) = sockets[i].listener.poll_accept(cx) {
                *next = i + 1;
                let container = sockets[i].container;
                return std::task::Poll::Ready((accepted.map(|(s, _)| s), container));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Closes `socket` and removes its file: only the sidecar's own, a file
/// someone else put there stays.
fn remove(socket: Listening) {
    let Listening {
        listener,
        path,
        bound,
        ..
    } = socket;
    drop(listener);
    if bound.is_some()
        && socket_id(&path) == bound
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
    }
}

/// Whether `socket`'s file is (again) the socket it listens on. When it
/// is no longer (deleted, or replaced by another process's socket), the
/// path is taken back, loudly. While it cannot be, the sidecar is not ready
/// (`kms_sidecar_socket_bound` 0) and tries again at the next check.
fn take_back(
    socket: &mut Listening,
    settings: &Settings,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let path = &socket.path;
    let now = socket_id(path);
    if socket.bound.is_some() && now == socket.bound {
        return true;
    }
    if socket.bound.is_some() {
        metrics.socket_replaced.inc();
        tracing::error!(
            socket = %path.display(),
            found = if now.is_none() { "nothing" } else { "another socket" },
            "the socket was removed or replaced by another process; binding it again"
        );
    }
    let rebound = socket::take_over(path, settings.mode, settings.group.as_deref()).and_then(|l| {
        let id = socket_id(path).ok_or_else(|| BindError::Io {
            path: path.clone(),
            what: "inspecting the new socket",
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Ok((l, id))
    });
    match rebound {
        Ok((listener, id)) => {
            tracing::warn!(socket = %path.display(), "the socket is the sidecar's again");
            (socket.listener, socket.bound) = (listener, Some(id));
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot bind the socket again; not ready until it is");
            // Not ours any more: tried again at the next check.
            socket.bound = None;
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
