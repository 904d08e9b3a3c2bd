//! Config hot reload. Kubernetes updates a mounted ConfigMap by swapping its
//! `..data` link; operators expect new keys and caller rules without a
//! restart. The file's directory is watched (inotify), the file is also
//! looked at every [`POLL`] in case no event comes (a watch that could not
//! be set, a file system without events), and SIGHUP reloads at once.
//!
//! A reload is all or nothing: the new text must parse and validate, and
//! every backend it changed must be built and answer its health check
//! within [`READY_WAIT`]; otherwise the old config keeps serving and the
//! reason is logged (with field paths). An applied reload swaps the routes
//! whole ([`crate::server::Served`]): the socket stays, open connections and
//! requests in flight are kept, and unchanged backends and keys carry over
//! with their credentials, circuit, caches and state.
//!
//! What a reload cannot change (`listen`, `audit`, `log`) is logged as
//! needing a restart; the rest of the new config is applied.

use crate::backend::{self, Backend, ErrorKind};
use crate::config::{self, Config, ProcessEnv};
use crate::metrics::Metrics;
use crate::server::{Live, Served};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the file is read to catch a change no event told of.
pub const POLL: Duration = Duration::from_secs(5);
/// Events come in bursts (a ConfigMap swap makes several): the file is read
/// once they have been quiet for this long.
const SETTLE: Duration = Duration::from_millis(100);
/// How long a backend a reload changed has to become healthy.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// What a reload starts from: the config in force and its backends.
#[derive(Debug)]
pub struct Current {
    pub config: Config,
    pub backends: backend::Backends,
}

/// Reloads the config file into `live`.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    live: Live,
    metrics: Arc<Metrics>,
    /// Held for a whole reload, so reloads never interleave.
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Current,
    generation: i64,
    /// SHA-256 of the text in force, and of the text last rejected: a file
    /// that did not change is not reloaded again (SIGHUP forces it).
    applied: Option<Vec<u8>>,
    rejected: Option<Vec<u8>>,
    /// The file could not be read at the last look (said once, not at
    /// every poll).
    unreadable: bool,
}

/// Why a reload was rejected (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] config::Error),
    #[error(transparent)]
    Backend(#[from] backend::BuildError),
    #[error("backend `{backend}` (changed) is not healthy after {}s: {reason}", READY_WAIT.as_secs())]
    NotReady { backend: String, reason: String },
}

impl Reloader {
    pub fn new(path: PathBuf, live: Live, current: Current, metrics: Arc<Metrics>) -> Arc<Self> {
        let applied = std::fs::read(&path).ok().map(|text| sha256(&text));
        Arc::new(Self {
            path,
            live,
            metrics,
            state: tokio::sync::Mutex::new(State {
                current,
                generation: 1,
                applied,
                rejected: None,
                unreadable: false,
            }),
        })
    }

    /// Watches the file, polls it and listens for SIGHUP until the process
    /// ends.
    pub fn spawn(self: &Arc<Self>) {
        let changed = Arc::new(Notify::new());
        let watcher = watch(&self.path, changed.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let _watcher = watcher; // dropping it ends the watch
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler: reload on file changes only"))
                .ok();
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                let force = tokio::select! {
                    () = changed.notified() => {
                        // Let the burst of events of one swap settle.
                        while tokio::time::timeout(SETTLE, changed.notified()).await.is_ok() {}
                        false
                    }
                    _ = poll.tick() => false,
                    Some(()) = async { hup.as_mut()?.recv().await } => {
                        tracing::info!("SIGHUP: reloading the config");
                        true
                    }
                };
                this.reload(force).await;
            }
        });
    }

    /// Reads the file and, if its text changed (or `force`), applies it.
    pub async fn reload(&self, force: bool) {
        let mut state = self.state.lock().await;
        let text = match tokio::fs::read(&self.path).await {
            Ok(text) => text,
            Err(_) if state.unreadable && !force => return,
            Err(source) => {
                state.unreadable = true;
                let path = self.path.clone();
                return self.rejected(&mut state, None, Rejected::Read { path, source });
            }
        };
        state.unreadable = false;
        let hash = sha256(&text);
        if !force
            && (state.applied.as_ref() == Some(&hash) || state.rejected.as_ref() == Some(&hash))
        {
            return;
        }
        match self.apply(&mut state, &text).await {
            Ok(generation) => {
                state.applied = Some(hash.clone());
                state.rejected = None;
                self.metrics
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.metrics.config_generation.set(generation);
                tracing::info!(
                    config = %self.path.display(),
                    generation,
                    sha256 = %hex::encode(&hash[..8]),
                    keys = state.current.config.keys.len(),
                    "config reloaded"
                );
            }
            Err(why) => self.rejected(&mut state, Some(hash), why),
        }
    }

    /// Counts and logs a rejected reload; `hash` is the text's, if read.
    fn rejected(&self, state: &mut State, hash: Option<Vec<u8>>, why: Rejected) {
        state.rejected = hash;
        self.metrics
            .config_reloads
            .with_label_values(&["rejected"])
            .inc();
        tracing::error!(
            config = %self.path.display(),
            generation = state.generation,
            error = %why,
            "config reload rejected; the config in force keeps serving"
        );
    }

    /// Builds everything the new text needs and swaps it in.
    async fn apply(&self, state: &mut State, text: &[u8]) -> Result<i64, Rejected> {
        let text = String::from_utf8_lossy(text);
        let config = Config::parse(&text, &self.path.display().to_string(), &ProcessEnv)?;
        let old = &state.current;
        let backends =
            backend::build_after(&config, &self.metrics, Some((&old.config, &old.backends)))
                .await?;
        for (name, backend) in &backends {
            let kept = old
                .backends
                .get(name)
                .is_some_and(|b| Arc::ptr_eq(b, backend));
            if !kept {
                healthy(name, backend.as_ref()).await?;
            }
        }
        for section in restart_only(&old.config, &config) {
            tracing::warn!(
                field = section,
                "config reload: `{section}` changed, which takes effect at the next restart"
            );
        }
        let served = self.live.load_full();
        let service = Arc::new(served.socket.service().next(
            &config,
            &old.config,
            backends.clone(),
        ));
        service.spawn_revalidation(config.cache.data_keys.revalidate.0);
        self.live.store(Arc::new(Served {
            socket: served.socket.next(service.clone(), &config.limits),
            probes: served.probes.next(service, &config.limits),
        }));
        state.current = Current { config, backends };
        state.generation += 1;
        Ok(state.generation)
    }
}

/// Waits (at most [`READY_WAIT`]) for a rebuilt backend's health check to pass.
async fn healthy(name: &str, backend: &dyn Backend) -> Result<(), Rejected> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let reason = match backend.health().await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == ErrorKind::Throttled => return Ok(()),
            Err(e) => e.message,
        };
        if Instant::now() >= deadline {
            return Err(Rejected::NotReady {
                backend: name.to_owned(),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sections a reload cannot apply that differ between `old` and `new`.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !config::same(&old.listen, &new.listen) {
        out.push("listen");
    }
    if !config::same(&old.audit, &new.audit) {
        out.push("audit");
    }
    if !config::same(&old.log, &new.log) {
        out.push("log");
    }
    if !config::same(&old.telemetry, &new.telemetry) {
        out.push("telemetry");
    }
    out
}

/// Watches the directory of `path`: a ConfigMap swap renames `..data` there
/// and never writes the file. Events that name the file or the kubelet's
/// `..` entries count; others in the same directory (a log, a socket) are
/// ignored. `None` when no watch could be set; a file whose link leads
/// elsewhere is caught by the polling as well.
fn watch(path: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let name = path.file_name()?.to_owned();
    let ours = move |p: &PathBuf| {
        p.file_name()
            .is_some_and(|n| *n == *name || n.as_encoded_bytes().starts_with(b".."))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.paths.iter().any(&ours)) {
            changed.notify_one();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; polling it instead"))
    .ok()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling it instead");
        return None;
    }
    Some(watcher)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}
