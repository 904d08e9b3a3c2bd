//! Composition root: builds backends, policy, metrics and the service from a
//! config, binds the socket, and runs until shutdown. Tests build the same
//! app on a temporary socket.

use crate::backend;
use crate::config::{Config, Env, ProcessEnv};
use crate::metrics::Metrics;
use crate::reload::{Current, Reloader};
use crate::server::{self, BindError, Live, Served, Settings, routes::Routes};
use crate::service::Service;
use crate::shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend could not be set up (missing key, bad key directory).
    #[error(transparent)]
    Backend(#[from] backend::BuildFailed),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Audit(#[from] crate::audit::OpenError),
    #[error("listen.per_container_dir {dir}: {source}")]
    PerContainerDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.probes {addr}: {source}")]
    Probes {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.tcp {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code (SPEC §2): 2 for what the config got wrong (a
    /// `listen.group` that does not exist, a `listen.per_container_dir`
    /// that is not there), 1 for a failure at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Bind(BindError::NoSuchGroup { .. }) => 2,
            Error::PerContainerDir { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                2
            }
            _ => 1,
        }
    }
}

/// A built sidecar, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    backends: backend::Backends,
    service: Arc<Service>,
    /// The config file, watched and reloaded (none for the embedded default).
    file: Option<PathBuf>,
}

impl App {
    pub async fn build(config: Config, file: Option<PathBuf>) -> Result<App, Error> {
        let metrics = Arc::new(Metrics::new());
        let env: Arc<dyn Env> = Arc::new(ProcessEnv);
        let backends = backend::build(&config, &metrics, &env).await?;
        let service = Arc::new(Service::new(&config, backends.clone(), metrics));
        service.spawn_revalidation(config.cache.data_keys.revalidate.0);
        Ok(App {
            config,
            backends,
            service,
            file,
        })
    }

    /// Binds the socket (and probe listener), serves until `stop` resolves,
    /// then drains. Returns whether the drain finished within its timeout.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<bool, Error> {
        let started = Instant::now();
        let listen = &self.config.listen;
        server::raise_fd_limit();
        let sockets = bind_sockets(listen)?;
        let tcp = match listen.tcp {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Tcp { addr, source })?,
            ),
            None => None,
        };
        let audit = self.start_audit().await?;
        let App {
            config,
            backends,
            service,
            file,
        } = self;
        let listen = &config.listen;
        let metrics = service.metrics().clone();
        // From here the service lives in the routes only, so a reload that
        // replaces it ends it (and its revalidation) once its requests end.
        let live: Live = Arc::new(arc_swap::ArcSwap::from_pointee(Served {
            socket: Routes::new(service.clone(), &config.limits, audit.clone()),
            probes: Routes::new(service, &config.limits, None),
        }));
        if let Some(file) = file {
            let current = Current {
                config: config.clone(),
                backends,
            };
            Reloader::new(file, live.clone(), current, metrics).spawn();
        }
        if let Some(audit) = audit.clone() {
            reopen_on_hangup(audit);
        }
        let settings = Settings {
            mode: listen.mode.0,
            group: listen.group.clone(),
            drain_timeout: listen.drain_timeout.0,
        };
        let (trigger, shutdown) = shutdown::channel();
        if let Some(addr) = listen.probes {
            serve_probes(addr, live.clone(), shutdown.clone()).await?;
        }
        tracing::info!(
            socket = %listen.socket.display(),
            mode = %listen.mode,
            containers = sockets.len() - 1,
            keys = config.keys.len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "kms-sidecar ready"
        );
        if let Some(addr) = listen.tcp {
            tracing::info!(%addr, "loopback TCP listener ready (the caller is the owner of the peer's socket)");
        }
        let drained = server::serve(sockets, tcp, live, settings, async {
            stop.await;
            trigger.trigger();
        })
        .await;
        if let Some(audit) = audit {
            // Every request has answered: write out what is queued.
            audit.close().await;
        }
        Ok(drained)
    }

    /// The audit log, when configured, with its checkpoint key.
    async fn start_audit(&self) -> Result<Option<crate::audit::Audit>, Error> {
        let Some(a) = &self.config.audit else {
            return Ok(None);
        };
        let checkpoints = a.checkpoint.as_ref().and_then(|c| {
            Some(crate::audit::Checkpoints {
                key: self.service.key_entry(&c.key)?,
                every_entries: c.every_entries,
                every: c.every.0,
            })
        });
        let audit = crate::audit::Audit::start(crate::audit::Settings {
            path: a.path.clone(),
            checkpoints,
            on_failure: a.on_failure,
            max_file_size: a.max_file_size.0,
            max_files: a.max_files,
        })
        .await?;
        Ok(Some(audit))
    }
}

/// SIGHUP: reopen the audit log after rotation (and reload the config: see
/// `Reloader::spawn`).
fn reopen_on_hangup(audit: crate::audit::Audit) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            audit.reopen().await;
        }
    });
}

/// The TCP listener for probes and metrics (`listen.probes`).
async fn serve_probes(
    addr: std::net::SocketAddr,
    live: Live,
    shutdown: shutdown::Shutdown,
) -> Result<(), Error> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Probes { addr, source })?;
    tokio::spawn(crate::admin::serve(tcp, live, shutdown.wait()));
    tracing::info!(%addr, "probe listener ready");
    Ok(())
}

/// The shared socket, and a socket of its own for every container with a
/// directory in `listen.per_container_dir` at start: `<dir>/<name>/kms.sock`.
/// A directory whose name is no container name is left out, with a warning.
fn bind_sockets(listen: &crate::config::Listen) -> Result<Vec<server::Listening>, Error> {
    let (mode, group) = (listen.mode.0, listen.group.as_deref());
    let shared = server::bind(&listen.socket, mode, group)?;
    let mut sockets = vec![server::Listening::new(shared, listen.socket.clone(), None)];
    let Some(dir) = &listen.per_container_dir else {
        return Ok(sockets);
    };
    let io = |source| Error::PerContainerDir {
        dir: dir.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().map_err(io)?.is_dir() {
            continue;
        }
        if crate::config::is_container_name(&name) {
            names.push(name);
        } else {
            tracing::warn!(dir = %dir.display(), name, "not a container name; no socket served there");
        }
    }
    names.sort();
    for name in names {
        let path = dir.join(&name).join("kms.sock");
        let listener = server::bind(&path, mode, group)?;
        // Found once, at start: the names live as long as the process.
        let name: &'static str = Box::leak(name.into_boxed_str());
        tracing::info!(container = name, socket = %path.display(), "container socket ready");
        sockets.push(server::Listening::new(listener, path, Some(name)));
    }
    Ok(sockets)
}
