//! The token: the module, a fixed set of worker threads (the backend's own
//! blocking pool, as many as sessions), a pool of sessions on one login, and
//! recovery from what tokens do when they log us out, close sessions or go
//! away.
//!
//! - Every PKCS#11 call runs on a worker, never on the async runtime: a hung
//!   HSM holds at most these threads, and the caller's timeout (the
//!   resilience layer's) still answers. A job whose caller has given up is
//!   skipped.
//! - A job borrows one session for its calls and gives it back; at most one
//!   session per worker is ever open.
//! - A call refused with `CKR_USER_NOT_LOGGED_IN` is made again after a new
//!   login (the PIN read again); one refused with
//!   `CKR_SESSION_HANDLE_INVALID`, on a new session.
//! - When the token is gone (`CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`,
//!   or its slot no longer shows it), the module is initialized again
//!   ([`super::module`]). Slots and object handles of an older
//!   initialization are never used: they carry the generation they were
//!   found in.
//! - The process waits for the workers before it exits ([`finish`]): a
//!   module still called into while `exit` runs its static destructors
//!   crashes or hangs (SoftHSM2: a segmentation fault in about one exit of
//!   forty, and now and then a hang).

use super::errors::Fail;
use super::module::{Module, Pool, State};
use crate::backend::BuildError;
use crate::config::{Env, Pkcs11BackendConfig, Pkcs11Resolved, SecretFrom};
use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Where the user PIN comes from; read at every login, never kept.
#[derive(Clone)]
enum PinSource {
    File(PathBuf),
    /// A variable of the environment, read through it.
    Env(String, Arc<dyn Env>),
}

impl std::fmt::Debug for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PinSource {
    fn read(&self) -> Result<Zeroizing<String>, Fail> {
        let mut pin = match self {
            PinSource::File(path) => {
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Fail::unauthenticated(format!(
                        "cannot read the PIN file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?)
            }
            PinSource::Env(var, env) => Zeroizing::new(env.var(var).ok_or_else(|| {
                Fail::unauthenticated(format!("the PIN variable ${var} is not set"))
            })?),
        };
        let len = pin.trim_end_matches(['\n', '\r']).len();
        pin.truncate(len);
        Ok(pin)
    }

    fn describe(&self) -> String {
        match self {
            PinSource::File(path) => format!("the PIN in {}", path.display()),
            PinSource::Env(var, _) => format!("the PIN in ${var}"),
        }
    }
}

/// What the workers share.
struct Shared {
    module: Arc<Module>,
    token_label: String,
    pin: PinSource,
    /// The slot the token was found in (slot ids change), and the module
    /// initialization it was found in.
    slot: Mutex<Option<(u64, Slot)>>,
    /// Idle sessions, at most one per worker.
    sessions: Arc<Pool>,
    /// The module initialization in which the token was found gone, and
    /// why: until the next one, calls fail at once.
    gone_in: Mutex<Option<(u64, String)>>,
    /// SHA-256 of the last PIN the token refused: not offered again, since
    /// HSMs lock the user after a few wrong PINs. A changed file is tried.
    refused_pin: Mutex<Option<digest::Digest>>,
}

/// A job for a worker; it answers through a channel of its own.
type Job = Box<dyn for<'a> FnOnce(&mut Worker<'a>) + Send>;

/// A job's view of the token: the module as initialized now, and the
/// session the job has borrowed.
pub(super) struct Worker<'a> {
    shared: &'a Shared,
    state: &'a State,
    session: Option<Session>,
}

/// A PKCS#11 token behind a pool of sessions.
pub(super) struct Token {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.shared.module.path)
            .field("token_label", &self.shared.token_label)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Loads the module and starts `config.sessions` workers. The token
    /// need not be present yet: readiness says so until it is.
    pub(super) fn open(
        name: &str,
        config: &Pkcs11BackendConfig,
        resolved: &Pkcs11Resolved,
        env: Arc<dyn Env>,
    ) -> Result<Self, BuildError> {
        let sessions = Arc::new(Pool::default());
        let module = Module::open(&resolved.module, &sessions).map_err(BuildError::Client)?;
        let pin = match &resolved.pin {
            Some(SecretFrom::File { file }) => PinSource::File(file.clone()),
            Some(SecretFrom::Env { env: var }) => PinSource::Env(var.clone(), env),
            None => return Err(BuildError::Setting("needs `pin_file` or `pin_env`".into())),
        };
        let shared = Arc::new(Shared {
            module,
            token_label: resolved.token_label.clone(),
            pin,
            slot: Mutex::new(None),
            sessions,
            gone_in: Mutex::new(None),
            refused_pin: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.sessions.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            let running = Running::start();
            std::thread::Builder::new()
                .name(format!("pkcs11-{name}-{i}"))
                .spawn(move || {
                    serve_jobs(&rx, shared);
                    // Only once this worker's share of the module is gone
                    // (the last one finalizes it).
                    drop(running);
                })
                .map_err(|e| {
                    BuildError::Client(format!("cannot start a PKCS#11 worker thread: {e}"))
                })?;
        }
        Ok(Self { jobs: tx, shared })
    }

    /// Runs `job` on a free worker and waits for its answer. When the
    /// caller stops waiting (its timeout), a job not yet started is skipped.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl for<'a> FnOnce(&mut Worker<'a>) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, Fail> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |worker| {
            if !tx.is_closed() {
                let _ = tx.send(job(worker));
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| Fail::unavailable("the PKCS#11 workers have stopped"))?;
        rx.await
            .map_err(|_| Fail::unavailable("the PKCS#11 call panicked in the module"))?
    }
}

/// A worker's loop: jobs until the backend is gone (its sender dropped).
fn serve_jobs(jobs: &Mutex<mpsc::Receiver<Job>>, shared: Arc<Shared>) {
    loop {
        let job = match jobs.lock().expect("never poisoned").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        shared.work(job);
    }
}

/// How many worker threads of the process are running, and a wake-up for
/// [`finish`] when that changes.
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One running worker, counted until dropped (also when the thread
/// unwinds).
struct Running(());

impl Running {
    fn start() -> Running {
        *RUNNING.0.lock().expect("never poisoned") += 1;
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        *RUNNING.0.lock().expect("never poisoned") -= 1;
        RUNNING.1.notify_all();
    }
}

/// Waits, at most `timeout`, for the workers of every dropped backend to end
/// their last call and finalize their modules; whether they all did. The
/// process calls it before it exits, once its backends are dropped.
pub fn finish(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut running = RUNNING.0.lock().expect("never poisoned");
    while *running > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(workers = *running, "PKCS#11 calls still running at exit");
            return false;
        }
        running = RUNNING
            .1
            .wait_timeout(running, left)
            .expect("never poisoned")
            .0;
    }
    true
}

impl Shared {
    /// Runs one job on this worker thread, with a session from the pool.
    fn work(&self, job: Job) {
        self.module.reinitialize_if_wanted();
        let state = self.module.state();
        let mut worker = Worker {
            shared: self,
            state: &state,
            session: None,
        };
        // A module that panics through the wrapper must not shrink the pool.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut worker)));
        if let Some(session) = worker.session.take()
            && ran.is_ok()
            && !self.is_gone(state.generation)
        {
            self.sessions.lock().expect("never poisoned").push(session);
        }
    }

    /// Why the token is gone, if it was found gone in initialization
    /// `generation`.
    fn gone_in(&self, generation: u64) -> Option<String> {
        match &*self.gone_in.lock().expect("never poisoned") {
            Some((g, why)) if *g == generation => Some(why.clone()),
            _ => None,
        }
    }

    fn is_gone(&self, generation: u64) -> bool {
        self.gone_in(generation).is_some()
    }

    /// Logs the user in (on one session: the login holds for every session
    /// of the process), with the PIN read now.
    fn login(&self, session: &Session) -> Result<(), Fail> {
        let pin = self.pin.read()?;
        let hash = digest::digest(&digest::SHA256, pin.as_bytes());
        if self
            .refused_pin
            .lock()
            .expect("never poisoned")
            .as_ref()
            .is_some_and(|r| r.as_ref() == hash.as_ref())
        {
            return Err(Fail::unauthenticated(format!(
                "the token `{}` refused {} before; it is not offered again until it changes (tokens lock the user after a few wrong PINs)",
                self.token_label,
                self.pin.describe()
            )));
        }
        let auth = AuthPin::from(pin.as_str());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                tracing::debug!(token = %self.token_label, "logged in to the PKCS#11 token");
                Ok(())
            }
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired),
                _,
            )) => {
                if rv != RvError::PinLocked {
                    *self.refused_pin.lock().expect("never poisoned") = Some(hash);
                }
                tracing::warn!(token = %self.token_label, error = %super::errors::ckr_name(rv), "the PKCS#11 token refused the PIN");
                Err(Fail::unauthenticated(format!(
                    "the token `{}` refused {} ({})",
                    self.token_label,
                    self.pin.describe(),
                    super::errors::ckr_name(rv)
                )))
            }
            Err(e) => Err(Fail::from(e)),
        }
    }
}

impl Worker<'_> {
    /// The initialization the job runs in: object handles found in another
    /// are not used.
    pub(super) fn generation(&self) -> u64 {
        self.state.generation
    }

    /// Records that the token is gone: the module is initialized again
    /// soon, and until then the token's calls fail at once.
    fn gone(&self) -> Fail {
        self.gone_because(String::new())
    }

    /// [`Self::gone`], with what was seen (`tokens found: …`).
    fn gone_because(&self, seen: String) -> Fail {
        let why = format!(
            "the PKCS#11 token `{}` is not present{seen}; the sidecar initializes the module again until it is back",
            self.shared.token_label
        );
        *self.shared.gone_in.lock().expect("never poisoned") =
            Some((self.state.generation, why.clone()));
        self.shared.module.want_reinit();
        Fail::unavailable(why)
    }

    /// Runs one PKCS#11 call (or a few, as one: a key lookup) on the job's
    /// session, opening one (and logging in) as needed, and recovering as
    /// the module doc says.
    pub(super) fn call<T, E: Into<Fail>>(
        &mut self,
        mut f: impl FnMut(&Session) -> Result<T, E>,
    ) -> Result<T, Fail> {
        let mut retried = false;
        loop {
            let err = match f(self.session()?) {
                Ok(v) => return Ok(v),
                Err(e) => e.into(),
            };
            let Fail::Ck(rv, _) = err else {
                return Err(err);
            };
            match rv {
                RvError::UserNotLoggedIn => {
                    tracing::info!(token = %self.shared.token_label, "PKCS#11 session logged out: logging in again");
                    let shared = self.shared;
                    shared.login(self.session()?)?;
                }
                RvError::SessionHandleInvalid | RvError::SessionClosed => {
                    tracing::info!(token = %self.shared.token_label, "PKCS#11 session closed by the token: opening another");
                    self.session = None;
                }
                RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => {
                    // A token that went away, a lost login (private objects
                    // vanish with it), or handles of a re-created object.
                    if !self.token_present() {
                        return Err(self.gone());
                    }
                    if self.logged_in() {
                        return Err(err);
                    }
                    let shared = self.shared;
                    shared.login(self.session()?)?;
                }
                RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceError
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized => {
                    tracing::warn!(token = %self.shared.token_label, error = %super::errors::ckr_name(rv), "PKCS#11 token went away");
                    self.session = None;
                    return Err(self.gone());
                }
                _ => return Err(err),
            }
            if retried {
                return Err(err);
            }
            retried = true;
        }
    }

    /// The job's session: an idle one of the pool, or a new one (and a
    /// login, which holds for the process).
    fn session(&mut self) -> Result<&Session, Fail> {
        if self.session.is_none() {
            let state = self.state;
            if let Some(why) = self.shared.gone_in(state.generation) {
                return Err(Fail::unavailable(why));
            }
            let pkcs11 = state.pkcs11.as_ref().ok_or_else(|| self.gone())?;
            let pooled = self.shared.sessions.lock().expect("never poisoned").pop();
            let session = match pooled {
                Some(s) => s,
                None => {
                    let slot = self.slot()?;
                    let session = pkcs11.open_rw_session(slot).map_err(|e| match e {
                        CkError::Pkcs11(
                            RvError::TokenNotPresent
                            | RvError::SlotIdInvalid
                            | RvError::DeviceRemoved
                            | RvError::TokenNotRecognized,
                            _,
                        ) => self.gone(),
                        other => Fail::from(other),
                    })?;
                    self.shared.login(&session)?;
                    session
                }
            };
            self.session = Some(session);
        }
        Ok(self.session.as_ref().expect("just set"))
    }

    /// The slot holding the token, found by label once per initialization.
    fn slot(&self) -> Result<Slot, Fail> {
        let mut slot = self.shared.slot.lock().expect("never poisoned");
        if let Some((generation, found)) = *slot
            && generation == self.state.generation
        {
            return Ok(found);
        }
        let pkcs11 = self.state.pkcs11.as_ref().ok_or_else(|| self.gone())?;
        let mut labels = Vec::new();
        for candidate in pkcs11.get_slots_with_token().map_err(Fail::from)? {
            // A slot whose token cannot be read is not ours.
            let Ok(info) = pkcs11.get_token_info(candidate) else {
                continue;
            };
            if info.label() == self.shared.token_label {
                *slot = Some((self.state.generation, candidate));
                if self
                    .shared
                    .gone_in
                    .lock()
                    .expect("never poisoned")
                    .take()
                    .is_some()
                {
                    tracing::info!(token = %self.shared.token_label, "PKCS#11 token is present again");
                    self.shared.module.token_back();
                }
                return Ok(candidate);
            }
            if info.token_initialized() {
                labels.push(format!("`{}`", info.label()));
            }
        }
        drop(slot);
        Err(self.gone_because(format!(
            " (tokens found: {})",
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        )))
    }

    /// Whether the token still shows in its slot under its label.
    pub(super) fn token_present(&self) -> bool {
        let (Some(pkcs11), Ok(slot)) = (self.state.pkcs11.as_ref(), self.slot()) else {
            return false;
        };
        pkcs11
            .get_token_info(slot)
            .is_ok_and(|info| info.label() == self.shared.token_label)
    }

    fn logged_in(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.get_session_info().ok())
            .is_some_and(|info| {
                matches!(
                    info.session_state(),
                    SessionState::RwUser | SessionState::RoUser
                )
            })
    }

    /// Readiness: a session opens (or the pooled one answers), the user is
    /// logged in, and the token is present.
    pub(super) fn check(&mut self) -> Result<(), Fail> {
        self.call(|s| s.get_session_info())?;
        if !self.token_present() {
            return Err(self.gone());
        }
        if !self.logged_in() {
            let shared = self.shared;
            shared.login(self.session()?)?;
        }
        Ok(())
    }

    /// The token's answer when a key's objects are not found: the key is
    /// missing (`None`), or the token is (`Some`).
    pub(super) fn absent_token(&self) -> Option<Fail> {
        (!self.token_present()).then(|| self.gone())
    }
}
