//! Denials past a rate are summarised rather than written line by line, so
//! that callers cannot fill the audit volume with their own refusals — one
//! uid, or a root container rotating through many. In each window of a
//! second a uid gets at most [`PER_UID_PER_SECOND`] lines of its own, and all
//! uids together at most [`PER_SECOND`]; the rest are counted, and one
//! `"type":"denials"` line per window, whatever the number of uids, says how
//! many there were, from how many uids, and which [`TOP`] uids had the most.
//! A container on its own socket counts apart from the others of its uid
//! (its entries in `top` name it), so that it cannot spend their lines.

use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Denied requests of one uid written line by line per window.
pub const PER_UID_PER_SECOND: u32 = 10;
/// Denied requests of all uids together written line by line per window.
pub const PER_SECOND: u32 = 50;
/// Uids named in a summary line (those with the most summarised denials).
pub const TOP: usize = 8;
/// Uids counted one by one in a window: denials of further uids count in
/// the total only, so the window's memory stays bounded.
const MAX_UIDS: usize = 4096;
/// A window lasts at least this long (until its summary is taken).
const WINDOW: Duration = Duration::from_secs(1);

/// The `"type":"denials"` line of one window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Summary {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    /// Denied requests in the window that have no line of their own.
    count: u64,
    window_s: u64,
    /// From how many uids (each of the window's first 4,096 uids counted).
    uids: u64,
    /// The uids with the most of them, most first.
    top: Vec<UidCount>,
}

#[derive(Debug, Clone, Serialize)]
struct UidCount {
    uid: u32,
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'static str>,
    count: u64,
}

/// Whose denials are counted together: a uid, or a uid's container on its
/// own socket.
pub(super) type Who = (u32, Option<&'static str>);

/// The denials of the current window.
#[derive(Debug)]
pub(super) struct Denials {
    started: Instant,
    written: u32,
    summarised: u64,
    by_uid: HashMap<Who, PerUid>,
}

#[derive(Debug)]
struct PerUid {
    gid: u32,
    written: u32,
    summarised: u64,
}

impl Default for Denials {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            written: 0,
            summarised: 0,
            by_uid: HashMap::new(),
        }
    }
}

impl Denials {
    /// Whether this denial gets a line of its own; if not, it is counted
    /// for the window's summary.
    pub(super) fn admit(&mut self, who: Who, gid: u32) -> bool {
        // A window with counted denials ends when its summary is taken.
        if self.summarised == 0 && self.started.elapsed() >= WINDOW {
            self.restart();
        }
        let room = self.by_uid.len() < MAX_UIDS;
        let this = match self.by_uid.get_mut(&who) {
            Some(this) => Some(this),
            None if room => Some(self.by_uid.entry(who).or_insert(PerUid {
                gid,
                written: 0,
                summarised: 0,
            })),
            None => None,
        };
        match this {
            Some(this) if this.written < PER_UID_PER_SECOND && self.written < PER_SECOND => {
                this.written += 1;
                self.written += 1;
                true
            }
            this => {
                if let Some(this) = this {
                    this.summarised += 1;
                }
                self.summarised += 1;
                false
            }
        }
    }

    /// An admitted denial that found no room in the writer's queue: it is
    /// counted in the summary instead.
    pub(super) fn dropped(&mut self, who: Who) {
        self.written = self.written.saturating_sub(1);
        self.summarised += 1;
        if let Some(this) = self.by_uid.get_mut(&who) {
            this.written = this.written.saturating_sub(1);
            this.summarised += 1;
        }
    }

    /// The summary of the window if it is over (or with `all`, at
    /// shutdown) and counted denials; a new window starts.
    pub(super) fn take_summary(&mut self, all: bool) -> Option<Summary> {
        let age = self.started.elapsed();
        if !all && age < WINDOW {
            return None;
        }
        let summary = (self.summarised > 0).then(|| {
            let mut top: Vec<UidCount> = self
                .by_uid
                .iter()
                .filter(|(_, u)| u.summarised > 0)
                .map(|((uid, container), u)| UidCount {
                    uid: *uid,
                    gid: u.gid,
                    container: *container,
                    count: u.summarised,
                })
                .collect();
            let uids = top.len() as u64;
            top.sort_unstable_by(|a, b| {
                (b.count.cmp(&a.count)).then((a.uid, a.container).cmp(&(b.uid, b.container)))
            });
            top.truncate(TOP);
            Summary {
                kind: "denials",
                time: super::now_rfc3339(),
                count: self.summarised,
                window_s: age.as_secs().max(1),
                uids,
                top,
            }
        });
        self.restart();
        summary
    }

    fn restart(&mut self) {
        self.started = Instant::now();
        self.written = 0;
        self.summarised = 0;
        self.by_uid.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(d: &mut Denials) {
        d.started -= WINDOW;
    }

    #[test]
    fn one_uid_past_its_rate_is_summarised() {
        let mut d = Denials::default();
        let admitted = (0..25).filter(|_| d.admit((65534, None), 65534)).count();
        assert_eq!(admitted, PER_UID_PER_SECOND as usize);
        assert!(
            d.admit((1000, None), 1000),
            "another uid has its own allowance"
        );
        assert!(d.take_summary(false).is_none(), "the second is not over");
        over(&mut d);
        let s = d.take_summary(false).unwrap();
        assert_eq!((s.count, s.uids), (15, 1));
        assert_eq!((s.top[0].uid, s.top[0].count), (65534, 15));
        // A new window: lines again, up to the rate; a dropped line counts.
        assert!(d.admit((65534, None), 65534));
        d.dropped((65534, None));
        over(&mut d);
        assert_eq!(d.take_summary(false).unwrap().count, 1);
        over(&mut d);
        assert!(d.take_summary(false).is_none(), "nothing counted");
    }

    #[test]
    fn many_uids_share_one_rate_and_one_summary() {
        let mut d = Denials::default();
        let mut admitted = 0;
        for uid in 0..300u32 {
            for _ in 0..30 {
                admitted += u32::from(d.admit((uid, None), uid));
            }
        }
        assert_eq!(admitted, PER_SECOND, "one rate for all uids");
        over(&mut d);
        let s = d.take_summary(false).unwrap();
        assert_eq!(s.count, 300 * 30 - u64::from(PER_SECOND));
        assert_eq!(s.uids, 300);
        assert_eq!(s.top.len(), TOP);
        assert!(s.top.windows(2).all(|w| w[0].count >= w[1].count));
        assert_eq!(s.top[0].count, 30, "a uid with no line of its own");
        // Past MAX_UIDS, uids count in the total only.
        for uid in 0..(MAX_UIDS as u32 + 100) {
            d.admit((uid, None), uid);
        }
        assert_eq!(d.by_uid.len(), MAX_UIDS);
        over(&mut d);
        let s = d.take_summary(true).unwrap();
        assert_eq!(s.count, MAX_UIDS as u64 + 100 - u64::from(PER_SECOND));
        assert!(d.by_uid.is_empty(), "a new window forgets the uids");
    }
}
