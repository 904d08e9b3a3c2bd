//! What the watch on the config file has seen of its writers: whether the
//! file is whole (its writer closed it, or it was renamed into place) or a
//! writer still has it open.
//!
//! The watch (inotify, through `notify`) is on the config path's directory
//! and, when the path leads elsewhere through links (a ConfigMap's
//! `config.yaml -> ..data/config.yaml`), on the directory of the file it
//! leads to, followed as the links change ([`Watch::follow`]). Of the
//! events about the file:
//!
//! - a write (`IN_MODIFY`; a truncation is one) or its creation as a
//!   regular file: a writer has it open ([`Seen::Writing`]);
//! - its writer closing it after writing (`IN_CLOSE_WRITE`), a file renamed
//!   onto its name (`mv`, an editor's atomic save), or the kubelet renaming
//!   `..data` beside it: the file is whole ([`Seen::Done`]);
//! - anything else that may change what the name holds (removed, renamed
//!   away, a link made): [`Seen::Changed`], which says nothing of whether
//!   the file is whole;
//! - a full kernel queue or a failed watch: events may have been lost
//!   ([`Seen::Lost`]), until the next `Done`.
//!
//! Opens and reads (the reloader's own among them) and metadata changes
//! are ignored.

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The watch on the config file.
#[derive(Debug)]
pub(super) struct Watch {
    path: PathBuf,
    /// `None` when no watch could be set (then only the poll looks); and
    /// the directory watched where links lead, if any.
    watcher: Mutex<(Option<RecommendedWatcher>, Option<PathBuf>)>,
    /// Shared with the event handler (notify's thread).
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug)]
struct Shared {
    names: Names,
    state: State,
}

/// What is known of the file's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    /// A write was seen and its writer has not closed the file since.
    pub writing: bool,
    /// The last event about the file said it is whole (`Done`); false
    /// after a change that does not say so.
    pub whole: bool,
    /// Events may have been lost since the last `Done` (no watch, a full
    /// kernel queue).
    pub blind: bool,
    /// Writes seen so far: a text read while this moved may be partial.
    pub writes: u64,
}

/// What one event says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Ignored,
    Writing,
    Done,
    Changed,
    Lost,
}

/// The paths events name (absolute, as the watches were set).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    /// The config path's directory, and the file's name in it.
    dir: PathBuf,
    name: OsString,
    /// The directory and name of the file the path leads to, when links
    /// lead elsewhere.
    target: Option<(PathBuf, OsString)>,
}

enum Which {
    /// The config file, by its name or where its links lead.
    File,
    /// A kubelet entry beside it (`..data`, `..2026_…`).
    Swap,
}

impl Watch {
    /// Watches `path`; when no watch can be set, the state is blind and
    /// only the poll looks. `changed` is told of every event that may have
    /// changed the file.
    pub(super) fn start(path: &Path, changed: Arc<Notify>) -> Watch {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let names = Names {
            dir: dir.clone(),
            name: path.file_name().unwrap_or_default().to_owned(),
            target: None,
        };
        let shared = Arc::new(Mutex::new(Shared {
            names,
            state: State {
                writing: false,
                whole: true,
                blind: false,
                writes: 0,
            },
        }));
        let handler = {
            let shared = shared.clone();
            move |event: notify::Result<Event>| {
                let mut shared = shared.lock().expect("never poisoned");
                let seen = classify(&shared.names, &event);
                let renamed = matches!(&event, Ok(e) if matches!(e.kind, EventKind::Modify(ModifyKind::Name(_))));
                if seen == Seen::Done && renamed {
                    // The path leads somewhere new (the kubelet deletes the
                    // old `..<stamp>` next): the next look follows it.
                    shared.names.target = None;
                }
                if shared.state.see(seen) {
                    changed.notify_one();
                }
            }
        };
        let watcher = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
            .map_err(|e| {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling the file instead");
            })
            .ok();
        if watcher.is_none() {
            shared.lock().expect("never poisoned").state.blind = true;
        }
        let watch = Watch {
            path: path.to_owned(),
            watcher: Mutex::new((watcher, None)),
            shared,
        };
        watch.follow();
        watch
    }

    pub(super) fn state(&self) -> State {
        self.shared.lock().expect("never poisoned").state
    }

    /// Watches the directory of the file the path leads to now, when links
    /// lead out of the path's directory (after a ConfigMap swap, a new
    /// `..<stamp>` directory). Blocking (file system calls): call it off
    /// the runtime.
    pub(super) fn follow(&self) {
        let Ok(resolved) = std::fs::canonicalize(&self.path) else {
            return; // nothing there now: the next look follows
        };
        let (Some(dir), Some(name)) = (resolved.parent(), resolved.file_name()) else {
            return;
        };
        let names = self.shared.lock().expect("never poisoned").names.clone();
        let target =
            (dir != names.dir || name != names.name).then(|| (dir.to_owned(), name.to_owned()));
        let wanted = target
            .as_ref()
            .map(|(d, _)| d.clone())
            .filter(|d| *d != names.dir);
        // The watcher's calls wait for notify's thread, which may be
        // waiting for `shared` in the handler: it is not held here.
        let mut watcher = self.watcher.lock().expect("never poisoned");
        let (Some(inner), followed) = &mut *watcher else {
            return;
        };
        let mut failed = false;
        if *followed != wanted {
            if let Some(old) = followed.take() {
                let _ = inner.unwatch(&old); // gone with its directory, often
            }
            if let Some(new) = &wanted {
                match inner.watch(new, RecursiveMode::NonRecursive) {
                    Ok(()) => *followed = wanted.clone(),
                    Err(e) => {
                        tracing::warn!(dir = %new.display(), error = %e, "cannot watch the directory the config file's links lead to; polling it");
                        failed = true;
                    }
                }
            }
        }
        let mut shared = self.shared.lock().expect("never poisoned");
        shared.names.target = target;
        if failed {
            shared.state.blind = true;
        }
    }
}

impl State {
    /// Takes in what an event said; whether the file may have changed.
    fn see(&mut self, seen: Seen) -> bool {
        match seen {
            Seen::Ignored => return false,
            Seen::Writing => {
                self.writing = true;
                self.whole = false;
                self.writes += 1;
                return false;
            }
            Seen::Done => {
                self.writing = false;
                self.whole = true;
                self.blind = false;
            }
            Seen::Changed => self.whole = false,
            Seen::Lost => {
                self.whole = false;
                self.blind = true;
            }
        }
        true
    }
}

impl Names {
    fn which(&self, path: &Path) -> Option<Which> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        let target = self.target.as_ref();
        if (dir == self.dir && name == self.name)
            || target.is_some_and(|(d, n)| dir == d && name == n)
        {
            Some(Which::File)
        } else if dir == self.dir && name.as_encoded_bytes().starts_with(b"..") {
            Some(Which::Swap)
        } else {
            None
        }
    }
}

/// What `event` says about the file named by `names`.
fn classify(names: &Names, event: &notify::Result<Event>) -> Seen {
    let event = match event {
        Ok(e) if !e.need_rescan() => e,
        _ => return Seen::Lost,
    };
    let ours = |i: usize| event.paths.get(i).and_then(|p| names.which(p));
    match (event.kind, ours(0)) {
        (_, None) if event.paths.len() < 2 => Seen::Ignored,
        // A rename: what counts is the name it lands on.
        (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), first) => match (ours(1), first) {
            (Some(_), _) => Seen::Done,
            (None, Some(Which::File)) => Seen::Changed,
            _ => Seen::Ignored,
        },
        (_, None) => Seen::Ignored,
        (EventKind::Modify(ModifyKind::Name(RenameMode::To)), Some(_)) => Seen::Done,
        (_, Some(Which::Swap)) => Seen::Ignored,
        (EventKind::Access(AccessKind::Close(AccessMode::Write)), _) => Seen::Done,
        // Opens and reads, ours among them; and metadata (`touch`, `chmod`),
        // which is not the text.
        (EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)), _) => Seen::Ignored,
        (EventKind::Modify(ModifyKind::Data(_)), _) => Seen::Writing,
        (EventKind::Create(_), _) => {
            let regular = std::fs::symlink_metadata(&event.paths[0]).is_ok_and(|m| m.is_file());
            if regular {
                Seen::Writing
            } else {
                Seen::Changed
            }
        }
        _ => Seen::Changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, MetadataKind, RemoveKind};

    fn names() -> Names {
        Names {
            dir: "/cm".into(),
            name: "config.yaml".into(),
            target: Some(("/cm/..2026_01_01.1".into(), "config.yaml".into())),
        }
    }

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(p.into());
        }
        Ok(e)
    }

    #[test]
    fn a_write_holds_until_its_close_or_a_rename() {
        let n = names();
        let see = |kind, paths: &[&str]| classify(&n, &event(kind, paths));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let rename = |mode| EventKind::Modify(ModifyKind::Name(mode));
        for file in ["/cm/config.yaml", "/cm/..2026_01_01.1/config.yaml"] {
            assert_eq!(see(data, &[file]), Seen::Writing, "{file}");
            assert_eq!(see(close, &[file]), Seen::Done, "{file}");
            assert_eq!(see(rename(RenameMode::To), &[file]), Seen::Done);
            assert_eq!(see(rename(RenameMode::From), &[file]), Seen::Changed);
            assert_eq!(
                see(EventKind::Remove(RemoveKind::File), &[file]),
                Seen::Changed
            );
        }
        // Reads (the reloader's own) and metadata are not the text.
        let f = "/cm/config.yaml";
        assert_eq!(
            see(EventKind::Access(AccessKind::Open(AccessMode::Any)), &[f]),
            Seen::Ignored
        );
        assert_eq!(
            see(EventKind::Access(AccessKind::Close(AccessMode::Read)), &[f]),
            Seen::Ignored
        );
        assert_eq!(
            see(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                &[f]
            ),
            Seen::Ignored
        );
        // The kubelet's swap: `..data_tmp` renamed to `..data`.
        let swap = ["/cm/..data_tmp", "/cm/..data"];
        assert_eq!(see(rename(RenameMode::Both), &swap), Seen::Done);
        assert_eq!(see(rename(RenameMode::To), &swap[1..]), Seen::Done);
        assert_eq!(see(rename(RenameMode::From), &swap[..1]), Seen::Ignored);
        assert_eq!(
            see(
                EventKind::Create(CreateKind::Folder),
                &["/cm/..2026_01_02.2"]
            ),
            Seen::Ignored
        );
        // The file renamed away; other files of the directory.
        assert_eq!(
            see(rename(RenameMode::Both), &[f, "/cm/old.yaml"]),
            Seen::Changed
        );
        assert_eq!(see(data, &["/cm/sidecar.log"]), Seen::Ignored);
        assert_eq!(see(data, &["/elsewhere/config.yaml"]), Seen::Ignored);
        // A full queue or an error: events may be lost.
        let rescan = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert_eq!(classify(&n, &rescan), Seen::Lost);
        assert_eq!(classify(&n, &Err(notify::Error::generic("x"))), Seen::Lost);
    }

    #[test]
    fn the_state_says_whole_only_after_a_done() {
        let mut s = State {
            writing: false,
            whole: true,
            blind: false,
            writes: 0,
        };
        assert!(!s.see(Seen::Writing), "a write does not call for a look");
        assert!((s.writing, s.whole, s.writes) == (true, false, 1));
        assert!(!s.see(Seen::Ignored));
        assert!(s.see(Seen::Changed));
        assert!(s.writing, "only a close or a rename ends a write");
        assert!(s.see(Seen::Done));
        assert!((s.writing, s.whole) == (false, true));
        assert!(s.see(Seen::Lost));
        assert!((s.whole, s.blind) == (false, true));
        s.see(Seen::Done);
        assert!(!s.blind, "a done event says the file is whole again");
    }
}
