//! Acting as the rest of the pod would: clients as other uids (`setpriv`),
//! the adversarial client, and a memory cgroup around the sidecar.

use super::{Sidecar, is_root, run_tool};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs `program args` as `uid` (and gid `uid`, no supplementary groups)
/// with `setpriv` when the suite runs as root; as ourselves otherwise.
/// Returns (exit success, stdout, stderr).
pub fn run_as(uid: Option<u32>, program: &str, args: &[&str]) -> (bool, String, String) {
    match uid {
        Some(uid) if is_root() => {
            let id = uid.to_string();
            let mut all = vec!["--reuid", &id, "--regid", &id, "--clear-groups", program];
            all.extend_from_slice(args);
            run_tool(
                "setpriv",
                &all,
                "install util-linux (setpriv) to run clients as another uid",
            )
        }
        _ => run_tool(program, args, "install it (`make test` does)"),
    }
}

/// The adversarial client (`tests/adversarial/client.py`) in `mode` as
/// `uid`, its JSON report parsed.
pub fn hostile_client(uid: Option<u32>, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/adversarial/client.py");
    let mut all = vec![script];
    all.extend_from_slice(args);
    // Another uid cannot use root's own interpreter (pyenv under /root): the
    // system's, which `make test` installs (standard library only).
    let python = if uid.is_some() && is_root() {
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "clients as other uids need /usr/bin/python3: apt-get install python3 (`make test` does)"
        );
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let (ok, out, err) = run_as(uid, python, &all);
    assert!(ok, "client.py {args:?} failed: {err}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client.py said {out:?} ({e}); {err}"))
}

impl Sidecar {
    /// Lets other uids reach the socket (its directory is the temp dir).
    pub fn open_to_other_uids(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `curl` POSTing `body` to `path` on the socket as `uid` (see
    /// [`run_as`]): (exit success, stdout ending with a line that holds the
    /// status, stderr).
    pub fn curl_as(&self, uid: Option<u32>, path: &str, body: &Value) -> (bool, String, String) {
        curl_on(uid, &self.socket, path, body)
    }

    /// The sidecar's resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

fn proc_status_kb(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A memory cgroup (v1 or v2) with a hard limit, for running the sidecar
/// the way a pod's memory limit would. `None` where this machine does not
/// let the suite make one (not root, no memory controller): tests then
/// watch VmRSS instead.
pub struct MemoryCgroup {
    path: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    pub fn new(limit: u64) -> Option<MemoryCgroup> {
        if !is_root() {
            return None;
        }
        let name = format!("kms-sidecar-test-{}", uuid::Uuid::new_v4().simple());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (path, v2) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), false)
        } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (Path::new("/sys/fs/cgroup").join(&name), true)
        } else {
            return None;
        };
        std::fs::create_dir(&path).ok()?;
        let cg = MemoryCgroup { path, v2 };
        let (file, swap) = if v2 {
            ("memory.max", "memory.swap.max")
        } else {
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        };
        std::fs::write(cg.path.join(file), limit.to_string()).ok()?;
        let _ = std::fs::write(
            cg.path.join(swap),
            if v2 { "0".into() } else { limit.to_string() },
        );
        Some(cg)
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .expect("moving the sidecar into the memory cgroup");
    }

    /// Processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most memory the cgroup used.
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once the sidecar has exited; retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `curl` POSTing `body` to `path` on the socket at `socket` as `uid` (see
/// [`run_as`]): (exit success, stdout ending with a line that holds the
/// status, stderr).
pub fn curl_on(
    uid: Option<u32>,
    socket: &std::path::Path,
    path: &str,
    body: &Value,
) -> (bool, String, String) {
    let socket = socket.display().to_string();
    let (body, url) = (body.to_string(), format!("http://localhost{path}"));
    run_as(
        uid,
        "curl",
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            &socket,
            "-d",
            &body,
            &url,
        ],
    )
}
