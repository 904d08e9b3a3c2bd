//! The audit writer: a task that chains queued lines, writes them in
//! batches (each batch's file I/O on the blocking pool), rolls a failed
//! write back so no line is ever torn, rotates the file by size, reopens it
//! on SIGHUP or when its path no longer names it (deleted or replaced),
//! writes denial summaries and signs checkpoints.

use super::{
    Checkpoints, Command, Entry, GENESIS, Settings, Shared, chain, is_stdout, now_rfc3339,
    seal_line,
};
use crate::crypto::{self, SignInput, SignatureFormat};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most lines written in one batch.
const BATCH: usize = 1024;

/// Where lines go.
#[derive(Debug)]
pub(super) enum Sink {
    File(FileSink),
    Stdout,
}

/// An append-only file, rotated by size.
#[derive(Debug)]
pub(super) struct FileSink {
    path: PathBuf,
    file: File,
    /// Bytes in the file: where a failed write is cut back to.
    len: u64,
    /// Only a regular file is rotated, cut back and followed (not a pipe
    /// or device).
    regular: bool,
    /// The open file's device and inode: before each write the path is
    /// checked against them, so that a file deleted or replaced without
    /// SIGHUP is noticed and the path reopened.
    id: (u64, u64),
    max_size: u64,
    max_files: u32,
}

impl Sink {
    /// Opens the sink and finds the hash the next line chains to (off the
    /// runtime: it reads the existing file).
    pub(super) async fn open(settings: &Settings) -> io::Result<(Sink, String)> {
        if is_stdout(&settings.path) {
            return Ok((Sink::Stdout, GENESIS.to_owned()));
        }
        let (path, max_size, max_files) = (
            settings.path.clone(),
            settings.max_file_size,
            settings.max_files,
        );
        tokio::task::spawn_blocking(move || {
            let prev = last_hash(&path)?.unwrap_or_else(|| GENESIS.to_owned());
            let file = open_append(&path)?;
            let mut sink = FileSink {
                path,
                file,
                len: 0,
                regular: false,
                id: (0, 0),
                max_size,
                max_files,
            };
            sink.opened()?;
            Ok((Sink::File(sink), prev))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Appends whole lines, or nothing: a failed write is cut back off.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(f) => f.append(bytes),
        }
    }

    /// Opens the file again at its path (after an external rotation).
    fn reopen(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.reopen(),
            Sink::Stdout => Ok(()),
        }
    }
}

impl FileSink {
    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        self.opened()
    }

    /// Takes in the newly opened file's length, type and identity.
    fn opened(&mut self) -> io::Result<()> {
        let meta = self.file.metadata()?;
        self.len = meta.len();
        self.regular = meta.is_file();
        self.id = (meta.dev(), meta.ino());
        Ok(())
    }

    /// Reopens the path if it no longer names the open file (deleted or
    /// replaced without SIGHUP), so that no line goes to a file no one will
    /// read; the chain goes on in the new file. If the path cannot be
    /// opened the write fails (fail closed), and the next one tries again.
    fn follow_path(&mut self) -> io::Result<()> {
        let how = match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => return Ok(()),
            Ok(_) => "replaced",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "removed",
            Err(_) => return Ok(()), // cannot tell: the open file it is
        };
        tracing::warn!(
            path = %self.path.display(),
            how,
            "the audit log file was removed or replaced without SIGHUP; reopening its path, the chain goes on in the new file"
        );
        self.reopen()
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.regular {
            self.follow_path()?;
        }
        if self.regular && self.len > 0 && self.len + bytes.len() as u64 > self.max_size {
            self.rotate()?;
        }
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partly written batch off, so no line is torn.
                if self.regular
                    && let Err(cut) = self.file.set_len(self.len)
                {
                    tracing::error!(error = %cut, "cannot cut a failed audit write back");
                }
                Err(e)
            }
        }
    }

    /// `path.N-1` is deleted, `path.i` becomes `path.i+1`, `path` becomes
    /// `path.1`, and a new `path` is started.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let oldest = numbered(self.max_files - 1);
        match std::fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for i in (1..self.max_files - 1).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.reopen()?;
        tracing::info!(path = %self.path.display(), "audit log rotated");
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The `hash` of the last line of an existing log, to continue its chain
/// (none for a new file, or a device such as a pipe).
fn last_hash(path: &Path) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
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

/// The writer task's state.
pub(super) struct Writer {
    /// `None` only while a batch is being written on the blocking pool.
    sink: Option<Sink>,
    /// The hash the next line chains to.
    prev: String,
    checkpoints: Option<Checkpoints>,
    /// Lines since the last checkpoint.
    unsigned: u64,
    shared: Arc<Shared>,
}

/// Where the chain stood before a batch, to go back to if it is not written.
struct Mark {
    prev: String,
    unsigned: u64,
}

impl Writer {
    pub(super) fn new(
        sink: Sink,
        prev: String,
        checkpoints: Option<Checkpoints>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            sink: Some(sink),
            prev,
            checkpoints,
            unsigned: 0,
            shared,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let period = self
            .checkpoints
            .as_ref()
            .map_or(Duration::from_secs(3600), |c| c.every);
        let mut checkpoint_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut summary_tick = tokio::time::interval(Duration::from_secs(1));
        summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => {
                    let Some(command) = command else { break };
                    // What is queued, up to a batch of lines, goes in one write.
                    let mut batch = Vec::new();
                    let mut next = Some(command);
                    while let Some(Command::Entry(entry, ack)) = next {
                        batch.push((entry, ack));
                        next = if batch.len() < BATCH { rx.try_recv().ok() } else { None };
                    }
                    self.write_entries(batch).await;
                    match next {
                        Some(Command::Reopen) => self.reopen().await,
                        Some(Command::Close(done)) => {
                            self.close().await;
                            let _ = done.send(());
                            return;
                        }
                        _ => {}
                    }
                }
                _ = summary_tick.tick() => self.write_summaries(false).await,
                _ = checkpoint_tick.tick(), if self.checkpoints.is_some() && self.unsigned > 0 => {
                    let mark = self.mark();
                    let mut lines = Vec::new();
                    self.checkpoint(&mut lines).await;
                    self.write(lines, 0, mark).await;
                }
            }
        }
        self.close().await;
    }

    fn mark(&self) -> Mark {
        Mark {
            prev: self.prev.clone(),
            unsigned: self.unsigned,
        }
    }

    /// Chains one record onto `lines`.
    fn push(&mut self, lines: &mut Vec<u8>, record: &impl serde::Serialize) {
        let (line, hash) = chain(record, &self.prev);
        self.prev = hash;
        self.unsigned += 1;
        lines.extend_from_slice(line.as_bytes());
    }

    /// Chains `batch`, adds checkpoints as they fall due, writes it, and
    /// tells each waiting request whether its line was written.
    async fn write_entries(&mut self, batch: Vec<(Box<Entry>, Option<oneshot::Sender<bool>>)>) {
        if batch.is_empty() {
            return;
        }
        let mark = self.mark();
        let count = batch.len() as u64;
        let mut lines = Vec::with_capacity(batch.len() * 256);
        let mut acks = Vec::new();
        for (entry, ack) in batch {
            self.push(&mut lines, &*entry);
            if self
                .checkpoints
                .as_ref()
                .is_some_and(|c| self.unsigned >= c.every_entries)
            {
                self.checkpoint(&mut lines).await;
            }
            acks.extend(ack);
        }
        let written = self.write(lines, count, mark).await;
        for ack in acks {
            let _ = ack.send(written);
        }
    }

    /// Writes chained `lines` (`count` records) on the blocking pool. On
    /// failure the file is cut back and the chain returns to `mark`, as if
    /// the lines had never been made.
    async fn write(&mut self, lines: Vec<u8>, count: u64, mark: Mark) -> bool {
        if lines.is_empty() {
            return true;
        }
        let mut sink = self
            .sink
            .take()
            .expect("the sink is back after every write");
        let (sink, result) = tokio::task::spawn_blocking(move || {
            let result = sink.append(&lines);
            (sink, result)
        })
        .await
        .expect("an audit write does not panic");
        self.sink = Some(sink);
        match result {
            Ok(()) => {
                self.shared.written();
                true
            }
            Err(e) => {
                self.prev = mark.prev;
                self.unsigned = mark.unsigned;
                self.shared.failed(&e, count);
                false
            }
        }
    }

    async fn reopen(&mut self) {
        let mut sink = self
            .sink
            .take()
            .expect("the sink is back after every write");
        let (sink, result) = tokio::task::spawn_blocking(move || {
            let result = sink.reopen();
            (sink, result)
        })
        .await
        .expect("reopening does not panic");
        self.sink = Some(sink);
        match result {
            // The new file starts empty: the chain goes on from `prev`.
            Ok(()) => tracing::info!("audit log reopened"),
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the audit log; writing on to the old file")
            }
        }
    }

    /// The denial summary of the window that ended, if it counted any.
    async fn write_summaries(&mut self, all: bool) {
        let summary = self
            .shared
            .denials
            .lock()
            .expect("never poisoned")
            .take_summary(all);
        let Some(summary) = summary else {
            return;
        };
        let mark = self.mark();
        let mut lines = Vec::new();
        self.push(&mut lines, &summary);
        self.write(lines, 1, mark).await;
    }

    /// Pending denial summaries and a last checkpoint over what is unsigned.
    async fn close(&mut self) {
        self.write_summaries(true).await;
        if self.checkpoints.is_some() && self.unsigned > 0 {
            let mark = self.mark();
            let mut lines = Vec::new();
            self.checkpoint(&mut lines).await;
            self.write(lines, 0, mark).await;
        }
    }

    /// Appends a signed checkpoint line vouching for the chain head; nothing
    /// (logged) if the key cannot sign now — the next checkpoint covers
    /// these lines too.
    async fn checkpoint(&mut self, lines: &mut Vec<u8>) {
        let Some(c) = &self.checkpoints else {
            return;
        };
        let signed = async {
            let algorithm = c.key.algorithm().await?;
            let input = SignInput::Message(self.prev.as_bytes());
            let known = c.key.metadata().await?;
            let sig = c
                .key
                .backend
                .sign(c.key.known(&known), input, algorithm)
                .await?;
            let der = crypto::signature_for_caller(
                sig.algorithm,
                sig.bytes,
                sig.encoding,
                SignatureFormat::Der,
            )
            .ok_or_else(|| {
                crate::backend::Error::new(
                    crate::backend::ErrorKind::Backend,
                    "the backend returned a malformed signature",
                )
            })?;
            Ok::<_, crate::backend::Error>((sig.algorithm, sig.version, der))
        }
        .await;
        let (algorithm, version, signature) = match signed {
            Ok(sig) => sig,
            Err(e) => {
                tracing::warn!(key = %c.key.alias, error = %e, "cannot sign an audit checkpoint");
                return;
            }
        };
        let mut map = Map::new();
        map.insert("type".into(), "checkpoint".into());
        map.insert("time".into(), now_rfc3339().into());
        map.insert("key".into(), c.key.alias.clone().into());
        map.insert("version".into(), version.into());
        map.insert("algorithm".into(), algorithm.to_string().into());
        map.insert("signature".into(), B64.encode(&signature).into());
        map.insert("prev".into(), self.prev.clone().into());
        let (line, hash) = seal_line(map, &self.prev);
        self.prev = hash;
        self.unsigned = 0;
        lines.extend_from_slice(line.as_bytes());
    }
}
