//! Config hot reload. Kubernetes updates a mounted ConfigMap by swapping its
//! `..data` link; operators expect new keys and caller rules without a
//! restart. The file is watched ([`watch`]: inotify on its directory and on
//! the directory its links lead to), looked at every [`POLL`] in case no
//! event comes, and SIGHUP reloads at once.
//!
//! **Only a whole file is applied.** A file read while its writer is half
//! way is often valid YAML with fields missing (a key without its replay
//! guard, a caller rule without its `keys`), so a change applies when its
//! writer is done with it: the kubelet's `..data` rename or any rename onto
//! the name (atomic writers), or the writer closing the file after writing
//! (`IN_CLOSE_WRITE`). While a write has been seen and not closed, nothing
//! is applied, SIGHUP included. A text read while a write was seen is
//! dropped (the close brings the reloader back).
//!
//! **The poll obeys the same rule.** It is for changes no event vouched for
//! (no watch could be set, the kernel's event queue overflowed, a file
//! system without events, a removed or relinked name): such a change
//! applies only when two polls [`POLL`] apart read the same text and no
//! write was seen in between. That is robust where events are missing
//! altogether, except against a writer that stops for longer than a poll
//! while holding the file open on a file system without events; hence the
//! advice of `docs/operations.md` to replace the file by a rename, as the
//! kubelet does.
//!
//! **Only regular files, at most 1 MiB** ([`config::read_file`]): a FIFO or
//! a device at the path is refused without blocking the reloader or reading
//! without end.
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

mod watch;

use crate::backend::{self, Backend, ErrorKind};
use crate::config::{self, Config, ProcessEnv};
use crate::metrics::Metrics;
use crate::server::{Live, Served};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use watch::Watch;

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

/// What made the reloader look at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// An event that may have changed it.
    Event,
    /// The periodic look.
    Poll,
    /// SIGHUP: even an unchanged file is applied.
    Signal,
}

/// Reloads the config file into `live`.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    live: Live,
    metrics: Arc<Metrics>,
    watch: Arc<Watch>,
    /// Told by the watch of every event that may have changed the file.
    changed: Arc<Notify>,
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
    /// A changed text no event vouched for, as the last poll read it (and
    /// the writes seen then): applied if the next poll reads it again.
    pending: Option<(Vec<u8>, u64)>,
    /// Why the file could not be read at the last look (said once, not at
    /// every poll).
    unreadable: Option<String>,
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
    Backend(#[from] backend::BuildFailed),
    #[error("backend `{backend}` (changed) is not healthy after {}s: {reason}", READY_WAIT.as_secs())]
    NotReady { backend: String, reason: String },
}

impl Reloader {
    pub fn new(path: PathBuf, live: Live, current: Current, metrics: Arc<Metrics>) -> Arc<Self> {
        let applied = config::read_file(&path).ok().map(|text| sha256(&text));
        let changed = Arc::new(Notify::new());
        let watch = Arc::new(Watch::start(&path, changed.clone()));
        Arc::new(Self {
            path,
            live,
            metrics,
            watch,
            changed,
            state: tokio::sync::Mutex::new(State {
                current,
                generation: 1,
                applied,
                rejected: None,
                pending: None,
                unreadable: None,
            }),
        })
    }

    /// Looks at the file on events, every [`POLL`] and on SIGHUP until the
    /// process ends.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler: reload on file changes only"))
                .ok();
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                let look = tokio::select! {
                    () = this.changed.notified() => {
                        // Let the burst of events of one swap settle.
                        while tokio::time::timeout(SETTLE, this.changed.notified()).await.is_ok() {}
                        Look::Event
                    }
                    _ = poll.tick() => Look::Poll,
                    Some(()) = async { hup.as_mut()?.recv().await } => {
                        tracing::info!("SIGHUP: reloading the config");
                        Look::Signal
                    }
                };
                this.reload(look).await;
            }
        });
    }

    /// Reads the file and applies it if its writer is done with it and its
    /// text changed (or on SIGHUP).
    async fn reload(&self, look: Look) {
        let mut state = self.state.lock().await;
        let before = self.watch.state();
        if before.writing {
            if look == Look::Signal {
                tracing::warn!(config = %self.path.display(), "a writer still has the config file open: it is applied once the writer closes it");
            }
            return;
        }
        let Some(text) = self.read(&mut state, look).await else {
            return;
        };
        let hash = sha256(&text);
        if look != Look::Signal
            && (state.applied.as_ref() == Some(&hash) || state.rejected.as_ref() == Some(&hash))
        {
            state.pending = None;
            return;
        }
        // The events of a write that began while the file was read are in
        // by now: that text may be partial, and the close brings us back.
        tokio::time::sleep(SETTLE).await;
        let after = self.watch.state();
        if after.writing || after.writes != before.writes {
            return;
        }
        let vouched = look == Look::Signal || (look == Look::Event && after.whole && !after.blind);
        if !vouched && !self.settled(&mut state, look, &hash, after.writes) {
            return;
        }
        state.pending = None;
        self.apply_text(&mut state, &text, hash).await;
    }

    /// The file's bytes (off the runtime), following where its links lead;
    /// `None` if it cannot be read, rejected once per reason (SIGHUP
    /// reports it again).
    async fn read(&self, state: &mut State, look: Look) -> Option<Vec<u8>> {
        let (path, watch) = (self.path.clone(), self.watch.clone());
        let read = tokio::task::spawn_blocking(move || {
            let text = config::read_file(&path);
            watch.follow();
            text
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok(text) => {
                state.unreadable = None;
                Some(text)
            }
            Err(source) => {
                let why = Some(source.to_string());
                if state.unreadable != why || look == Look::Signal {
                    state.unreadable = why;
                    let path = self.path.clone();
                    self.rejected(state, None, Rejected::Read { path, source });
                }
                None
            }
        }
    }

    /// Whether a change no event vouched for has held still: read the same
    /// by two polls with no write seen between them.
    fn settled(&self, state: &mut State, look: Look, hash: &[u8], writes: u64) -> bool {
        if look != Look::Poll {
            return false;
        }
        let seen = (hash.to_vec(), writes);
        if state.pending.as_ref() == Some(&seen) {
            return true;
        }
        tracing::info!(config = %self.path.display(), "the config file changed without a sign that its writer is done; applied if it reads the same at the next poll");
        state.pending = Some(seen);
        false
    }

    /// Applies `text` (whose SHA-256 is `hash`), counting and logging how
    /// it went.
    async fn apply_text(&self, state: &mut State, text: &[u8], hash: Vec<u8>) {
        match self.apply(state, text).await {
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
            Err(why) => self.rejected(state, Some(hash), why),
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
        let env: Arc<dyn config::Env> = Arc::new(ProcessEnv);
        let old = &state.current;
        let changes = config::Changes::between(&old.config, &config);
        let backends =
            backend::build_after(&config, &self.metrics, &env, Some((changes, &old.backends)))
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
        for section in changes.restart_only() {
            tracing::warn!(
                field = section,
                "config reload: `{section}` changed, which takes effect at the next restart"
            );
        }
        let served = self.live.load_full();
        let service = Arc::new(
            served
                .socket
                .service()
                .next(&config, changes, backends.clone()),
        );
        service.spawn_revalidation(config.cache.data_keys.revalidate.0);
        self.live.store(Arc::new(Served {
            socket: served.socket.next(service.clone(), &config.limits, changes),
            probes: served.probes.next(service, &config.limits, changes),
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

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}
