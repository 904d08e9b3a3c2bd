//! The audit log (SPEC §9): one JSON line per API request, hash-chained so
//! that an edited, removed, inserted or reordered line is detected by
//! `kms-sidecar audit verify` ([`verify`]).
//!
//! Each line is a JSON object with sorted keys. `prev` is the previous
//! line's `hash` (64 zeros for the first line of a new chain) and
//! `hash = hex(SHA-256(prev ‖ C))`, where `C` is the line's compact JSON
//! without the `hash` field (keys sorted, `prev` included). Lines never hold
//! plaintext, signature inputs, keys or tokens: only who, what, which key and
//! version, the outcome and the latency.
//!
//! **Failing closed** (`audit.on_failure: fail_closed`, the default): a
//! request waits until its line is written; if it cannot be (a full disk),
//! the request is answered 503 `audit_unavailable` instead, the failed lines
//! are rolled back (never a torn line; the chain stays verifiable), and
//! until a write succeeds again operations are refused before they run and
//! `/readyz` says why. Every refused request still tries to write its line,
//! so the log recovers by itself once there is room. `fail_open` serves
//! requests whatever happens to their lines (lost lines are counted).
//!
//! **Denials are summarised** ([`denials`]): a uid's first 10 denied
//! requests in a second (403, 429, unknown routes, 503 `overloaded`), and
//! at most 50 of all uids together, are written line by line; past that
//! they are counted, and one `"type":"denials"` line per second, whatever
//! the number of uids, says how many there were, from how many uids and
//! which had the most, so callers cannot fill the disk with their own
//! refusals. Denials never wait for the writer.
//!
//! The writer ([`writer`]) runs as a task, its file I/O off the runtime; it
//! rotates the file by size (`audit.max_file_size`, `audit.max_files`: `path`
//! → `path.1` → …, the chain continuing in the new file), reopens the file
//! on SIGHUP (external rotation) and when the path no longer names it (a
//! file deleted or replaced without SIGHUP: the chain continues in the new
//! file, with a warning), and signs checkpoints (`audit.checkpoint`).

mod denials;
mod verify;
mod writer;

pub use verify::{Broken, Verified, rotated_set, verify, verify_bytes};

use crate::api::{self, ApiError, Code};
use crate::config::AuditFailure;
use crate::keys::KeyEntry;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// `prev` of the first entry of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries waiting for the writer before requests wait for room.
const QUEUE: usize = 65_536;

/// Outcomes that are denials: the caller is refused before anything is
/// done for it.
const DENIALS: [&str; 4] = ["forbidden", "rate_limited", "not_found", "overloaded"];

/// One audited request.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339, microseconds.
    pub time: String,
    pub request_id: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The container whose own socket the request came through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'static str>,
    pub op: &'static str,
    /// The key alias (`-` for an unknown one, absent for key listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ok` or the error code.
    pub outcome: &'static str,
    pub status: u16,
    pub latency_us: u64,
}

/// Signed checkpoints: the key, and how often.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub key: Arc<KeyEntry>,
    pub every_entries: u64,
    pub every: Duration,
}

/// What [`Audit::start`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file, or `-` for stdout.
    pub path: PathBuf,
    pub checkpoints: Option<Checkpoints>,
    pub on_failure: AuditFailure,
    pub max_file_size: u64,
    pub max_files: u32,
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

enum Command {
    /// A line, and whom to tell whether it was written.
    Entry(Box<Entry>, Option<oneshot::Sender<bool>>),
    Reopen,
    Close(oneshot::Sender<()>),
}

/// The state requests and `/readyz` see.
#[derive(Debug)]
struct Shared {
    fail_closed: bool,
    healthy: AtomicBool,
    reason: Mutex<Option<String>>,
    lost: AtomicU64,
    denials: Mutex<denials::Denials>,
}

impl Shared {
    fn written(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("the audit log is written again");
            *self.reason.lock().expect("never poisoned") = None;
        }
    }

    fn failed(&self, error: &std::io::Error, lines: u64) {
        self.lost.fetch_add(lines, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %error, lines, "cannot write the audit log");
        }
        *self.reason.lock().expect("never poisoned") = Some(error.to_string());
    }
}

/// The handle requests record through.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Audit {
    /// Opens the log (`-` = stdout) for appending, continuing the chain of
    /// the entries already in it, and starts the writer.
    pub async fn start(settings: Settings) -> Result<Audit, OpenError> {
        let (sink, prev) = writer::Sink::open(&settings)
            .await
            .map_err(|source| OpenError {
                path: settings.path.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            fail_closed: settings.on_failure == AuditFailure::FailClosed,
            healthy: AtomicBool::new(true),
            reason: Mutex::new(None),
            lost: AtomicU64::new(0),
            denials: Mutex::new(denials::Denials::default()),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = writer::Writer::new(sink, prev, settings.checkpoints, shared.clone());
        tokio::spawn(writer.run(rx));
        Ok(Audit { tx, shared })
    }

    /// Records one request. Denials are written or summarised without
    /// waiting. Failing closed, any other request waits for its line and
    /// gets `audit_unavailable` if it could not be written; failing open it
    /// only waits for room in the queue.
    pub async fn record(&self, entry: Entry) -> Result<(), ApiError> {
        if DENIALS.contains(&entry.outcome) {
            let (who, gid) = ((entry.uid, entry.container), entry.gid);
            let mut denials = self.shared.denials.lock().expect("never poisoned");
            if denials.admit(who, gid)
                && self
                    .tx
                    .try_send(Command::Entry(Box::new(entry), None))
                    .is_err()
            {
                denials.dropped(who);
            }
            return Ok(());
        }
        if !self.shared.fail_closed {
            let _ = self.tx.send(Command::Entry(Box::new(entry), None)).await;
            return Ok(());
        }
        let (ack, written) = oneshot::channel();
        if self
            .tx
            .send(Command::Entry(Box::new(entry), Some(ack)))
            .await
            .is_err()
        {
            return Err(self.unavailable());
        }
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(self.unavailable()),
        }
    }

    /// Failing closed while the last write failed: refuse before doing any
    /// work (the refused request's own line is still tried).
    pub fn available(&self) -> Result<(), ApiError> {
        if self.shared.fail_closed && !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        Ok(())
    }

    fn unavailable(&self) -> ApiError {
        let reason = self
            .shared
            .reason
            .lock()
            .expect("never poisoned")
            .clone()
            .unwrap_or_else(|| "the audit writer stopped".into());
        ApiError::new(
            Code::AuditUnavailable,
            format!(
                "the audit log cannot be written ({reason}); the request was not served (audit.on_failure: fail_closed)"
            ),
        )
        .retry_in(1)
    }

    /// Whether requests are refused when their line cannot be written.
    pub fn fails_closed(&self) -> bool {
        self.shared.fail_closed
    }

    /// The state `/readyz` reports.
    pub fn health(&self) -> api::AuditHealth {
        let healthy = self.shared.healthy.load(Ordering::Acquire);
        api::AuditHealth {
            status: if healthy { "ok" } else { "error" },
            reason: self.shared.reason.lock().expect("never poisoned").clone(),
            lost_lines: self.shared.lost.load(Ordering::Relaxed),
        }
    }

    /// Reopens the file (after log rotation moved it away).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Command::Reopen).await;
    }

    /// Writes everything queued so far, then stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// The line for `record` chained to `prev`, and its hash.
fn chain(record: &impl Serialize, prev: &str) -> (String, String) {
    let Ok(Value::Object(mut map)) = serde_json::to_value(record) else {
        unreachable!("an entry serializes to an object")
    };
    map.insert("prev".into(), Value::String(prev.to_owned()));
    seal_line(map, prev)
}

/// Adds `hash` to a line (which holds `prev`) and renders it.
fn seal_line(mut map: Map<String, Value>, prev: &str) -> (String, String) {
    let hash = hash_of(&map, prev);
    map.insert("hash".into(), Value::String(hash.clone()));
    let mut line = Value::Object(map).to_string();
    line.push('\n');
    (line, hash)
}

/// `hex(SHA-256(prev ‖ compact JSON of the object without "hash"))`.
fn hash_of(map: &Map<String, Value>, prev: &str) -> String {
    let mut without = map.clone();
    without.remove("hash");
    let canonical = Value::Object(without).to_string();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(canonical.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `path` names standard output.
fn is_stdout(path: &Path) -> bool {
    path == Path::new("-")
}
