//! The audit log under attack: a full disk (fail closed, no torn line,
//! recovery), fail open, rotation by size, and a flood of denials.

use super::*;
use crate::audit::{lines, verify};
use crate::harness::{Sidecar, b64};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// A tmpfs of a given size (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ok, _, err) = crate::harness::run_tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
            "install util-linux (mount)",
        );
        assert!(ok, "mounting a small tmpfs as root: {err}");
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk, then frees `room` bytes.
    fn fill_leaving(&self, room: u64) {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn the_audit_log_fails_closed_on_a_full_disk_and_recovers() {
    let me = nix::unistd::geteuid().as_raw();
    // As root: a 256 KiB tmpfs filled up, then freed. Otherwise /dev/full,
    // which is always full (no recovery to see).
    let disk = SmallDisk::mount("256k");
    let log = match &disk {
        Some(d) => d.path().join("audit.jsonl"),
        None => "/dev/full".into(),
    };
    let s = Sidecar::start(&config(
        me,
        &format!("audit: {{ path: \"{}\" }}\n", log.display()),
    ))
    .await;
    if let Some(d) = &disk {
        d.fill_leaving(8192);
    }
    let sign = || s.post("/v1/keys/sig/sign", json!({"message": b64("audited")}));
    let mut served = 0;
    let refused = loop {
        let r = sign().await;
        match r.status {
            200 => served += 1,
            _ => break r,
        }
        assert!(served < 1000, "the disk never filled up");
    };
    let v = refused.expect_saying(503, "audit_unavailable", "No space left on device");
    assert_eq!(v["error"]["retryable"], true);
    assert_eq!(refused.headers["retry-after"], "1");
    // Until a line can be written again, operations are refused before they run.
    sign().await.expect(503, Some("audit_unavailable"));
    let ready = s.get("/readyz").await;
    let body = ready.expect(503, None);
    assert_eq!(body["audit"]["status"], "error", "{body}");
    assert!(
        body["audit"]["reason"]
            .as_str()
            .unwrap()
            .contains("No space"),
        "{body}"
    );
    let Some(d) = &disk else {
        return;
    };
    // Every answered request has its line; no line is torn; the chain holds.
    let written = lines(&log);
    assert_eq!(
        written.iter().filter(|l| l["outcome"] == "ok").count(),
        served,
        "one line per served request"
    );
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    // Room again: the next request's line is written, and service resumes.
    d.free();
    let mut attempts = 0;
    while sign().await.status != 200 {
        attempts += 1;
        assert!(attempts < 5, "service did not resume");
    }
    s.get("/readyz").await.ok();
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    let written = lines(&log);
    assert_eq!(
        written.iter().filter(|l| l["outcome"] == "ok").count(),
        served + 1
    );
}

#[tokio::test]
async fn fail_open_serves_and_counts_lost_lines() {
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(
        me,
        "audit: { path: /dev/full, on_failure: fail_open }\n",
    ))
    .await;
    for _ in 0..3 {
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64("m")}))
            .await;
    }
    // The writer reports asynchronously: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = s.get("/readyz").await.ok();
        if body["audit"]["lost_lines"].as_u64() == Some(3) {
            assert_eq!(body["status"], "ready", "fail_open stays ready: {body}");
            assert_eq!(body["audit"]["status"], "error", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_log_rotates_by_size_and_verifies_as_one_chain() {
    let me = nix::unistd::geteuid().as_raw();
    let mut s = Sidecar::start(&config(
        me,
        "audit: { path: \"{dir}/audit.jsonl\", max_file_size: 64KiB, max_files: 3 }\n",
    ))
    .await;
    for i in 0..900 {
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64(format!("{i}"))}))
            .await;
    }
    assert!(s.terminate().success());
    let log = s.dir.path().join("audit.jsonl");
    let name = |i: u32| s.dir.path().join(format!("audit.jsonl.{i}"));
    for path in [log.clone(), name(1), name(2)] {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 64 << 10, "{}: {len} bytes", path.display());
    }
    assert!(
        !name(3).exists(),
        "the oldest file beyond max_files is deleted"
    );
    // One path: `audit verify` checks the rotated set, oldest first.
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    assert!(
        out.contains("audit.jsonl.2 → ") && out.contains("chain intact"),
        "{out}"
    );
    assert!(out.contains("continues from an earlier file"), "{out}");
}

#[tokio::test]
async fn a_flood_of_denials_is_summarised_not_written_line_by_line() {
    let (uid, ruled) = outsider();
    let mut s = Sidecar::start(&config(ruled, "audit: { path: \"{dir}/audit.jsonl\" }\n")).await;
    s.open_to_other_uids();
    let started = Instant::now();
    let r = python_http(uid, &s, "POST", "/v1/keys/sig/sign", 100, 300);
    assert_eq!(count(&r, "codes", "forbidden"), 300, "{r}");
    let seconds = started.elapsed().as_secs() + 1;
    assert!(s.terminate().success());
    let lines = lines(&s.dir.path().join("audit.jsonl"));
    let denied = uid.unwrap_or(nix::unistd::geteuid().as_raw());
    let single = lines
        .iter()
        .filter(|l| l["uid"] == denied && l["outcome"] == "forbidden")
        .count() as u64;
    let summarised: u64 = lines
        .iter()
        .filter(|l| l["type"] == "denials")
        .flat_map(|l| l["top"].as_array().unwrap())
        .filter(|t| t["uid"] == denied)
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(single + summarised, 300, "every denial is accounted for");
    assert!(
        single <= 10 * (seconds + 1),
        "{single} single lines in {seconds} s: at most 10 per second"
    );
    let (ok, out) = verify(&[&s.dir.path().join("audit.jsonl")]);
    assert!(ok, "{out}");
}

/// 200 uids without a rule, 20 denied requests each (`setpriv` + curl, 32
/// uids at a time): past a global rate the denials are summarised whatever
/// the uid, so no second of the log holds more than a bounded number of
/// lines, the summaries name the uids, and every denial is accounted for.
#[tokio::test]
async fn a_flood_of_denials_across_uids_is_summarised_globally() {
    assert!(
        is_root(),
        "acting as 200 uids needs root (setpriv): run the suite as root, as CI does"
    );
    let me = nix::unistd::geteuid().as_raw();
    let mut s = Sidecar::start(&config(me, "audit: { path: \"{dir}/audit.jsonl\" }\n")).await;
    s.open_to_other_uids();
    let (uids, per_uid) = (20_000..20_200u32, 20);
    let socket = s.socket.display().to_string();
    let urls = vec!["http://localhost/v1/keys/sig/sign"; per_uid];
    let uids: Vec<u32> = uids.collect();
    let forbidden: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = uids
            .chunks(uids.len().div_ceil(32))
            .map(|chunk| {
                let (socket, urls) = (&socket, &urls);
                scope.spawn(move || {
                    let mut forbidden = 0;
                    for uid in chunk {
                        let mut args = vec![
                            "-s",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}\n",
                            "--unix-socket",
                            socket,
                            "-d",
                            r#"{"message":"AA=="}"#,
                        ];
                        args.extend(urls.iter().copied());
                        let (ok, out, err) = crate::harness::run_as(Some(*uid), "curl", &args);
                        assert!(ok, "curl as {uid}: {err}");
                        forbidden += out.lines().filter(|l| *l == "403").count();
                    }
                    forbidden
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(forbidden, uids.len() * per_uid, "every request is refused");
    assert!(s.terminate().success());
    let lines = lines(&s.dir.path().join("audit.jsonl"));
    let single: Vec<_> = lines
        .iter()
        .filter(|l| l["outcome"] == "forbidden")
        .collect();
    let summaries: Vec<_> = lines.iter().filter(|l| l["type"] == "denials").collect();
    let summarised: u64 = summaries.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(
        single.len() as u64 + summarised,
        forbidden as u64,
        "every denial is accounted for"
    );
    // At most 50 lines a second for all uids together (a window of the
    // limit can straddle two seconds of the clock), and one summary a
    // second whatever the number of uids.
    let mut by_second = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for l in &lines {
        let second = &l["time"].as_str().unwrap()[..19];
        let n = by_second.entry(second).or_default();
        if l["type"] == "denials" {
            n.1 += 1;
        } else {
            n.0 += 1;
        }
    }
    for (second, (single, summaries)) in &by_second {
        assert!(
            *single <= 2 * 50 && *summaries <= 2,
            "{second}: {single} denial lines and {summaries} summaries"
        );
    }
    // The summaries count the uids and name the largest, a bounded list.
    let uids_named: u64 = summaries
        .iter()
        .map(|l| l["uids"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(uids_named >= 50, "{uids_named} uids in a summary");
    for l in &summaries {
        let top = l["top"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= 10, "{l}");
        assert!(
            top.iter().all(|t| t["uid"].as_u64().unwrap() >= 20_000),
            "{l}"
        );
    }
    let (ok, out) = verify(&[&s.dir.path().join("audit.jsonl")]);
    assert!(ok, "{out}");
}
