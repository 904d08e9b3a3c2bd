//! The key aliases of the config and what stands behind each: backend, key
//! reference, allowed operations, rotation period, replay guard, and — once
//! known — the key's algorithm. Below the service, the data-key cache and the
//! audit log, which all name keys by alias.

use crate::backend::{self, Backend, KeyRef};
use crate::config::Config;
use crate::crypto::Algorithm;
use crate::policy::{Op, OpOrAll, grants};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A configured key alias and the backend behind it.
#[derive(Debug)]
pub struct KeyEntry {
    pub alias: String,
    pub backend_name: String,
    pub backend: Arc<dyn Backend>,
    /// The backend's reference for the key.
    pub id: String,
    ops: Option<Vec<OpOrAll>>,
    /// `keys.*.rotation_period`.
    pub rotation_period: Option<Duration>,
    /// Requests must carry a fresh nonce and timestamp.
    pub replay_guard: bool,
    /// Bumped by every rotation through the API, so that envelopes stop
    /// using data keys wrapped by the old version.
    pub generation: AtomicU64,
    /// The key's algorithm, asked of the backend once: no KMS changes the
    /// type of an existing key.
    algorithm: OnceLock<Algorithm>,
}

impl KeyEntry {
    /// An alias with the default operations and no rotation period.
    pub fn new(alias: &str, backend_name: &str, backend: Arc<dyn Backend>, id: &str) -> Self {
        Self {
            alias: alias.to_owned(),
            backend_name: backend_name.to_owned(),
            backend,
            id: id.to_owned(),
            ops: None,
            rotation_period: None,
            replay_guard: false,
            generation: AtomicU64::new(0),
            algorithm: OnceLock::new(),
        }
    }

    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            alias: &self.alias,
            id: &self.id,
        }
    }

    /// The operations this alias allows, given its algorithm.
    pub fn ops(&self, algorithm: Algorithm) -> Vec<Op> {
        algorithm
            .supported_ops()
            .iter()
            .copied()
            .filter(|op| self.allows(*op))
            .collect()
    }

    /// Whether `keys.*.ops` allows `op` (default: everything but `rotate`).
    pub fn allows(&self, op: Op) -> bool {
        match &self.ops {
            Some(ops) => grants(ops, op),
            None => op != Op::Rotate,
        }
    }

    /// The key's algorithm: from the backend's metadata the first time, then
    /// remembered.
    pub async fn algorithm(&self) -> Result<Algorithm, backend::Error> {
        if let Some(a) = self.algorithm.get() {
            return Ok(*a);
        }
        let m = self.backend.metadata(self.key_ref()).await?;
        Ok(*self.algorithm.get_or_init(|| m.algorithm))
    }
}

/// Every configured alias.
#[derive(Debug, Default)]
pub struct Keys {
    by_alias: HashMap<String, Arc<KeyEntry>>,
}

impl Keys {
    /// The aliases of `config` over the built `backends`.
    pub fn new(config: &Config, backends: &BTreeMap<String, Arc<dyn Backend>>) -> Self {
        let by_alias = config
            .keys
            .iter()
            .filter_map(|(alias, k)| {
                let mut entry =
                    KeyEntry::new(alias, &k.backend, backends.get(&k.backend)?.clone(), &k.key);
                entry.ops = k.ops.clone();
                entry.rotation_period = k.rotation_period.map(|d| d.0);
                entry.replay_guard = k.replay_guard;
                Some((alias.clone(), Arc::new(entry)))
            })
            .collect();
        Self { by_alias }
    }

    pub fn get(&self, alias: &str) -> Option<&Arc<KeyEntry>> {
        self.by_alias.get(alias)
    }

    pub fn contains(&self, alias: &str) -> bool {
        self.by_alias.contains_key(alias)
    }

    /// The aliases, sorted.
    pub fn aliases(&self) -> Vec<&str> {
        let mut aliases: Vec<&str> = self.by_alias.keys().map(String::as_str).collect();
        aliases.sort_unstable();
        aliases
    }
}
