//! A PKCS#11 module, loaded and initialized once per process and shared by
//! every backend that names it (two tokens of one vendor are two backends on
//! one module: `C_Initialize` holds for the process).
//!
//! While a token is gone the module is finalized and initialized again, a
//! second after the token went and then less and less often (at most every
//! 30 s) until a gone token is back, since some modules (SoftHSM2) only see
//! a returned token after that. That needs every session of the module
//! closed first (a handle closed later could be a new session's), so each
//! backend registers its pool of idle sessions here, and the
//! re-initialization runs only while no call is in flight on the module
//! (the write side of its lock). Other tokens of the module keep serving:
//! their next calls open new sessions and look their keys up again.

use super::errors::Fail;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::Session;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// The least time between two initializations of a module, doubled after
/// each one that brought no token back, up to [`REINIT_AT_MOST`].
const REINIT_EVERY: Duration = Duration::from_secs(1);
const REINIT_AT_MOST: Duration = Duration::from_secs(30);

/// A pool of idle sessions of one backend.
pub(super) type Pool = Mutex<Vec<Session>>;

/// The modules of the process, by path.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Weak<Module>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One loaded module.
pub(super) struct Module {
    pub path: PathBuf,
    state: RwLock<State>,
    /// Every backend's idle sessions on this module.
    pools: Mutex<Vec<Weak<Pool>>>,
    /// A token is gone: initialize the module again before the next call.
    wanted: AtomicBool,
    /// Initializations since a gone token was last found back.
    fruitless: AtomicU32,
}

/// One initialization of the module.
pub(super) struct State {
    /// `None` while the module could not be initialized again.
    pub pkcs11: Option<Pkcs11>,
    /// Counts initializations: object handles and slots of another are
    /// meaningless.
    pub generation: u64,
    last_init: Instant,
}

fn initialize(path: &Path) -> Result<Pkcs11, String> {
    let pkcs11 = Pkcs11::new(path)
        .map_err(|e| format!("cannot load the PKCS#11 module {}: {e}", path.display()))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(pkcs11),
        Err(e) => Err(format!(
            "the PKCS#11 module {} failed to initialize: {}",
            path.display(),
            Fail::from(e)
        )),
    }
}

impl Module {
    /// The module at `path`, loaded and initialized unless a backend already
    /// did; `pool` is closed whenever it is initialized again.
    pub fn open(path: &Path, pool: &Arc<Pool>) -> Result<Arc<Module>, String> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut modules = MODULES.lock().expect("never poisoned");
        let module = match modules.get(&key).and_then(Weak::upgrade) {
            Some(module) => module,
            None => {
                let module = Arc::new(Module {
                    path: path.to_path_buf(),
                    state: RwLock::new(State {
                        pkcs11: Some(initialize(path)?),
                        generation: 0,
                        last_init: Instant::now(),
                    }),
                    pools: Mutex::new(Vec::new()),
                    wanted: AtomicBool::new(false),
                    fruitless: AtomicU32::new(0),
                });
                modules.insert(key, Arc::downgrade(&module));
                module
            }
        };
        module
            .pools
            .lock()
            .expect("never poisoned")
            .push(Arc::downgrade(pool));
        Ok(module)
    }

    /// The current initialization, held for one job: no re-initialization
    /// starts until it is dropped.
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("never poisoned")
    }

    /// Asks for a new initialization before a next call: a token is gone.
    pub fn want_reinit(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// A token that was gone is back.
    pub fn token_back(&self) {
        self.fruitless.store(0, Ordering::Release);
    }

    /// Finalizes and initializes the module again when a token is gone and
    /// its time has come, unless a call is in flight on the module (it is
    /// tried before the next job).
    pub fn reinitialize_if_wanted(&self) {
        if !self.wanted.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut state) = self.state.try_write() else {
            return;
        };
        let fruitless = self.fruitless.load(Ordering::Acquire);
        let wait = REINIT_EVERY
            .saturating_mul(1 << fruitless.min(5))
            .min(REINIT_AT_MOST);
        if !self.wanted.load(Ordering::Acquire) || state.last_init.elapsed() < wait {
            return;
        }
        state.last_init = Instant::now();
        for pool in self.pools.lock().expect("never poisoned").iter() {
            if let Some(pool) = pool.upgrade() {
                pool.lock().expect("never poisoned").clear();
            }
        }
        if let Some(old) = state.pkcs11.take() {
            let _ = old.finalize();
        }
        match initialize(&self.path) {
            Ok(pkcs11) => {
                state.pkcs11 = Some(pkcs11);
                state.generation += 1;
                self.wanted.store(false, Ordering::Release);
                self.fruitless.store(fruitless + 1, Ordering::Release);
                if fruitless == 0 {
                    tracing::info!(module = %self.path.display(), "PKCS#11 module initialized again to find a token that went away");
                } else {
                    tracing::debug!(module = %self.path.display(), tries = fruitless + 1, "PKCS#11 module initialized again");
                }
            }
            Err(why) => {
                tracing::warn!(module = %self.path.display(), error = %why, "PKCS#11 module cannot be initialized again yet");
            }
        }
    }
}
