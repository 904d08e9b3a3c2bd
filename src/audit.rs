//! The audit log (SPEC §9): one JSON line per API request, hash-chained so
//! that an edited, removed, inserted or reordered line is detected by
//! `kms-sidecar audit verify`.
//!
//! Each line is a JSON object with sorted keys. `prev` is the previous
//! line's `hash` (64 zeros for the first line of a new chain) and
//! `hash = hex(SHA-256(prev ‖ C))`, where `C` is the line's compact JSON
//! without the `hash` field (keys sorted, `prev` included). Lines never hold
//! plaintext, signature inputs, keys or tokens: only who, what, which key and
//! version, the outcome and the latency.
//!
//! Requests hand entries to a writer task through a bounded queue (they wait
//! only if it is full, so nothing is dropped); the writer flushes whenever the
//! queue is empty, reopens the file on SIGHUP (log rotation; the chain goes
//! on in the new file), and at shutdown writes everything queued before the
//! sidecar exits.
//!
//! With `audit.checkpoint`, the writer also signs the chain head with a
//! configured key after every N lines and at least every T seconds while
//! lines come: a `"type":"checkpoint"` line whose `signature` is over the
//! ASCII bytes of its `prev` (the head it vouches for). Without the key, a
//! rewritten file cannot carry valid checkpoints; `audit verify
//! --public-key` checks them.

use crate::backend::SignOptions;
use crate::crypto::{self, Algorithm, SignInput};
use crate::service::KeyEntry;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// `prev` of the first entry of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries waiting for the writer before requests wait for room.
const QUEUE: usize = 65_536;

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

enum Command {
    Entry(Box<Entry>),
    Reopen,
    Close(oneshot::Sender<()>),
}

/// Where entries go.
#[derive(Debug, Clone)]
enum Sink {
    File(PathBuf),
    Stdout,
}

/// The handle requests record through.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Command>,
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Signed checkpoints: the key, and how often.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub key: Arc<KeyEntry>,
    pub every_entries: u64,
    pub every: Duration,
}

impl Audit {
    /// Opens `path` (`-` = stdout) for appending, continuing the chain of the
    /// entries already in it, and starts the writer.
    pub fn start(path: &Path, checkpoints: Option<Checkpoints>) -> Result<Audit, OpenError> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File(path.to_owned())
        };
        let (out, prev) = open(&sink).map_err(|source| OpenError {
            path: path.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(sink, out, prev, rx, checkpoints));
        Ok(Audit { tx })
    }

    /// Queues an entry (waits only while the queue is full).
    pub async fn record(&self, entry: Entry) {
        let _ = self.tx.send(Command::Entry(Box::new(entry))).await;
    }

    /// Reopens the file (after log rotation moved it away).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Command::Reopen).await;
    }

    /// Writes and flushes everything queued so far, then stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The sink, and the hash the next entry chains to.
fn open(sink: &Sink) -> std::io::Result<(Box<dyn Write + Send>, String)> {
    match sink {
        Sink::Stdout => Ok((Box::new(std::io::stdout()), GENESIS.to_owned())),
        Sink::File(path) => {
            let prev = last_hash(path)?.unwrap_or_else(|| GENESIS.to_owned());
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Ok((Box::new(BufWriter::new(file)), prev))
        }
    }
}

/// The `hash` of the last line of an existing log, to continue its chain.
fn last_hash(path: &Path) -> std::io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&line)
            && let Some(Value::String(hash)) = map.get("hash")
        {
            last = Some(hash.clone());
        }
    }
    Ok(last)
}

async fn write_loop(
    sink: Sink,
    mut out: Box<dyn Write + Send>,
    mut prev: String,
    mut rx: mpsc::Receiver<Command>,
    checkpoints: Option<Checkpoints>,
) {
    let write = |out: &mut Box<dyn Write + Send>, line: &str| {
        if let Err(e) = out.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    };
    let period = checkpoints
        .as_ref()
        .map_or(Duration::from_secs(3600), |c| c.every);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut unsigned: u64 = 0;
    loop {
        let command = tokio::select! {
            command = rx.recv() => command,
            _ = tick.tick(), if checkpoints.is_some() && unsigned > 0 => {
                if let Some(c) = &checkpoints {
                    if let Some(line) = checkpoint(c, &mut prev).await {
                        write(&mut out, &line);
                        let _ = out.flush();
                    }
                    unsigned = 0;
                }
                continue;
            }
        };
        let Some(command) = command else { break };
        match command {
            Command::Entry(entry) => {
                let (line, hash) = chain(&entry, &prev);
                prev = hash;
                write(&mut out, &line);
                unsigned += 1;
                if let Some(c) = checkpoints.as_ref().filter(|c| unsigned >= c.every_entries) {
                    if let Some(line) = checkpoint(c, &mut prev).await {
                        write(&mut out, &line);
                    }
                    unsigned = 0;
                }
                if rx.is_empty()
                    && let Err(e) = out.flush()
                {
                    tracing::error!(error = %e, "cannot flush the audit log");
                }
            }
            Command::Reopen => {
                let _ = out.flush();
                match open(&sink) {
                    // The new file starts empty: the chain goes on from `prev`.
                    Ok((fresh, _)) => {
                        out = fresh;
                        tracing::info!("audit log reopened");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen the audit log; writing on to the old file")
                    }
                }
            }
            Command::Close(done) => {
                if let Some(c) = checkpoints.as_ref().filter(|_| unsigned > 0)
                    && let Some(line) = checkpoint(c, &mut prev).await
                {
                    write(&mut out, &line);
                }
                let _ = out.flush();
                let _ = done.send(());
                return;
            }
        }
    }
    let _ = out.flush();
}

/// A signed checkpoint line vouching for `prev`, chained after it; `None`
/// (logged) if the key cannot sign now — the next checkpoint covers these
/// lines too.
async fn checkpoint(c: &Checkpoints, prev: &mut String) -> Option<String> {
    let signed = c
        .key
        .backend
        .sign(
            c.key.key_ref(),
            SignInput::Message(prev.as_bytes()),
            SignOptions::default(),
        )
        .await;
    let sig = match signed {
        Ok(sig) => sig,
        Err(e) => {
            tracing::warn!(key = %c.key.alias, error = %e, "cannot sign an audit checkpoint");
            return None;
        }
    };
    let mut map = Map::new();
    map.insert("type".into(), "checkpoint".into());
    map.insert(
        "time".into(),
        humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    map.insert("key".into(), c.key.alias.clone().into());
    map.insert("version".into(), sig.version.into());
    map.insert("algorithm".into(), sig.algorithm.to_string().into());
    map.insert("signature".into(), B64.encode(&sig.bytes).into());
    map.insert("prev".into(), prev.clone().into());
    let hash = hash_of(&map, prev);
    map.insert("hash".into(), hash.clone().into());
    *prev = hash;
    let mut line = Value::Object(map).to_string();
    line.push('\n');
    Some(line)
}

/// The line for `entry` chained to `prev`, and its hash.
fn chain(entry: &Entry, prev: &str) -> (String, String) {
    let Ok(Value::Object(mut map)) = serde_json::to_value(entry) else {
        unreachable!("an entry serializes to an object")
    };
    map.insert("prev".into(), Value::String(prev.to_owned()));
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

/// What `audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// Checkpoint lines whose signature verified with the given public key.
    pub checkpoints: u64,
    /// Entries after the last verified checkpoint (no signature covers them).
    pub unsigned_tail: u64,
    /// The last entry's hash.
    pub head: String,
    /// The first entry's `prev` when the chain began in an earlier file.
    pub continues_from: Option<String>,
}

/// The first break in the chain: where and what.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct Broken {
    pub file: String,
    pub line: u64,
    pub problem: String,
}

/// Checks the chain across `files` in order (a rotated log's files, oldest
/// first), and with `public_key` (SubjectPublicKeyInfo DER of the checkpoint
/// key) every checkpoint's signature; then at least one checkpoint must be
/// there.
pub fn verify(files: &[PathBuf], public_key: Option<&[u8]>) -> Result<Verified, Broken> {
    let mut sources: Vec<(String, Box<dyn BufRead>)> = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Broken {
            file: name.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        sources.push((name, Box::new(BufReader::new(file))));
    }
    verify_sources(sources, public_key)
}

/// [`verify`] of one log held in memory (`name` is used in messages).
pub fn verify_bytes(name: &str, log: &[u8], public_key: Option<&[u8]>) -> Result<Verified, Broken> {
    verify_sources(vec![(name.to_owned(), Box::new(log))], public_key)
}

fn verify_sources<'a>(
    sources: Vec<(String, Box<dyn BufRead + 'a>)>,
    public_key: Option<&[u8]>,
) -> Result<Verified, Broken> {
    let mut expected: Option<String> = None;
    let mut continues_from = None;
    let mut entries = 0;
    let mut checkpoints = 0;
    let mut unsigned_tail = 0;
    let mut last = (String::new(), 0);
    for (file_name, reader) in sources {
        let broken = |line: u64, problem: String| Broken {
            file: file_name.clone(),
            line,
            problem,
        };
        for (i, line) in reader.split(b'\n').enumerate() {
            let n = i as u64 + 1;
            let line = line.map_err(|e| broken(n, format!("cannot read: {e}")))?;
            let map = match serde_json::from_slice::<Value>(&line) {
                Ok(Value::Object(map)) => map,
                _ => return Err(broken(n, "not an audit entry (a JSON object)".into())),
            };
            let (Some(Value::String(prev)), Some(Value::String(hash))) =
                (map.get("prev"), map.get("hash"))
            else {
                return Err(broken(n, "no `prev` and `hash`: not an audit entry".into()));
            };
            match &expected {
                Some(want) if want != prev => {
                    return Err(broken(
                        n,
                        "the chain is broken: `prev` is not the previous entry's hash (a line before this one was removed, inserted or reordered)".into(),
                    ));
                }
                None if prev != GENESIS => continues_from = Some(prev.clone()),
                _ => {}
            }
            if &hash_of(&map, prev) != hash {
                return Err(broken(
                    n,
                    "the entry was edited: its hash does not match its content".into(),
                ));
            }
            expected = Some(hash.clone());
            last = (file_name.clone(), n);
            if map.get("type").and_then(Value::as_str) == Some("checkpoint") {
                if let Some(spki) = public_key {
                    if !checkpoint_verifies(&map, prev, spki) {
                        return Err(broken(
                            n,
                            "the checkpoint's signature does not verify with this public key: the log was rewritten (or signed by another key)".into(),
                        ));
                    }
                    checkpoints += 1;
                    unsigned_tail = 0;
                }
            } else {
                entries += 1;
                unsigned_tail += 1;
            }
        }
    }
    if public_key.is_some() && checkpoints == 0 {
        return Err(Broken {
            file: last.0,
            line: last.1,
            problem: "no signed checkpoint in the log (is `audit.checkpoint` set?)".into(),
        });
    }
    Ok(Verified {
        entries,
        checkpoints,
        unsigned_tail,
        head: expected.unwrap_or_else(|| GENESIS.to_owned()),
        continues_from,
    })
}

/// Whether a checkpoint line's signature over its `prev` verifies.
fn checkpoint_verifies(map: &Map<String, Value>, prev: &str, spki: &[u8]) -> bool {
    let algorithm = map
        .get("algorithm")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok());
    let signature = map
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| B64.decode(s).ok());
    let (Some(algorithm), Some(signature)) = (algorithm, signature) else {
        return false;
    };
    let format = crypto::guess_format(algorithm, &signature);
    crypto::verify_locally(
        algorithm,
        spki,
        SignInput::Message(prev.as_bytes()),
        &signature,
        format,
    )
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> Entry {
        Entry {
            time: format!("2026-11-25T00:00:{i:02}.000000Z"),
            request_id: format!("req-{i}"),
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            op: "sign",
            key: Some("payments".into()),
            version: Some("1".into()),
            outcome: "ok",
            status: 200,
            latency_us: 80,
        }
    }

    fn write_log(path: &Path, n: u32) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        let mut lines = Vec::new();
        for i in 0..n {
            let (line, hash) = chain(&entry(i), &prev);
            prev = hash;
            lines.push(line);
        }
        std::fs::write(path, lines.concat()).unwrap();
        lines
    }

    fn check(path: &Path, lines: &[String]) -> Result<Verified, Broken> {
        std::fs::write(path, lines.concat()).unwrap();
        verify(&[path.to_owned()], None)
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = write_log(&path, 5);
        let ok = verify(std::slice::from_ref(&path), None).unwrap();
        assert_eq!(ok.entries, 5);
        assert_eq!(ok.continues_from, None);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"uid\":1000", "\"uid\":0");
        assert_eq!(check(&path, &edited).unwrap_err().line, 3);
        assert!(
            check(&path, &edited)
                .unwrap_err()
                .problem
                .contains("edited")
        );

        let mut removed = lines.clone();
        removed.remove(1);
        let e = check(&path, &removed).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("chain is broken"), "{e}");

        let mut reordered = lines.clone();
        reordered.swap(2, 3);
        assert_eq!(check(&path, &reordered).unwrap_err().line, 3);

        // An inserted line with a correct hash of its own still breaks the chain.
        let mut inserted = lines.clone();
        let prev = serde_json::from_str::<Value>(&lines[1]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        inserted.insert(2, chain(&entry(9), &prev).0);
        assert_eq!(check(&path, &inserted).unwrap_err().line, 4);

        let mut garbage = lines.clone();
        garbage.insert(0, "not json\n".into());
        assert_eq!(check(&path, &garbage).unwrap_err().line, 1);
    }

    #[test]
    fn the_chain_continues_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("audit.jsonl.1");
        let lines = write_log(&old, 4);
        let head = serde_json::from_str::<Value>(&lines[3]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        let new = dir.path().join("audit.jsonl");
        let (line, _) = chain(&entry(5), &head);
        std::fs::write(&new, line).unwrap();
        assert_eq!(
            verify(&[old.clone(), new.clone()], None).unwrap().entries,
            5
        );
        // The newer file alone is a chain continuing an earlier one.
        assert_eq!(
            verify(std::slice::from_ref(&new), None)
                .unwrap()
                .continues_from,
            Some(head)
        );
        // In the wrong order the break is found.
        assert!(verify(&[new, old], None).is_err());
    }
}
