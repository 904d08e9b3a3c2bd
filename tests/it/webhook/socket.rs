//! The socket's read-only mount, for real. The kubelet's part is played by a
//! private mount namespace (`unshare -m`) that bind-mounts a running
//! sidecar's socket directory where an app container sees it, read-only when
//! the injected pod says `readOnly: true`; the app, as another uid
//! (`setpriv`), then tries to take the socket over through that path and
//! calls the sidecar through it.

use super::{Webhook, patch_of, pod_review};
use crate::harness::{Sidecar, is_root};
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

/// The app's attempts, through the socket path it is given: remove the
/// socket, move it away, create another beside it (each "done" or the errno
/// name), then sign through it with Python's `http.client`.
const APP: &str = r#"
import errno, http.client, json, os, socket, sys

path = sys.argv[1]

def attempt(action):
    try:
        action()
        return "done"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def bind_another():
    socket.socket(socket.AF_UNIX).bind(os.path.join(os.path.dirname(path), "impostor.sock"))

class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)

report = {
    "unlink": attempt(lambda: os.unlink(path)),
    "rename": attempt(lambda: os.rename(path, path + ".old")),
    "bind": attempt(bind_another),
}
try:
    c = UnixConnection("localhost", timeout=10)
    c.request("POST", "/v1/keys/sig/sign", body=json.dumps({"message": "aGVsbG8="}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    report["status"], report["answer"] = r.status, json.loads(r.read() or b"null")
except OSError as e:
    report["status"] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(report))
"#;

/// Mounts `$1` at `$2` (read-only when `$3` is `ro`), then runs the rest.
const MOUNT_THEN_RUN: &str = r#"set -e
mount --bind "$1" "$2"
if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi
shift 3
exec "$@""#;

/// Whether the webhook mounts the socket read-only in the app container of
/// `examples/app/pod.yaml`.
fn app_mount_is_read_only() -> bool {
    let hook = Webhook::start("");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pod: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("examples/app/pod.yaml")).unwrap(),
    )
    .unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch_of(&hook.review(&pod_review(&pod)))).unwrap();
    let app = &patched["spec"]["containers"][0];
    let mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/run/kms")
        .unwrap_or_else(|| panic!("no socket mount in {app}"));
    assert_eq!(mount["name"], "kms-sidecar-socket");
    mount["readOnly"] == true
}

#[tokio::test]
async fn an_app_cannot_replace_the_socket_through_its_mount_but_still_calls_it() {
    let read_only = app_mount_is_read_only();
    // The app's uid: nobody, when we can act as it (root); else ourselves,
    // in a user namespace of our own.
    let root = is_root();
    let app_uid = if root {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let s = Sidecar::start(&format!(
        r#"listen: {{ mode: "0666" }}
backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}
callers:
  - {{ uids: [{app_uid}], keys: ["*"], ops: ["*"] }}
"#
    ))
    .await;
    // The socket's directory as an emptyDir is: anyone may write in it.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let inode = std::fs::metadata(&s.socket).unwrap().ino();

    // Where the app container sees it.
    let view = tempfile::tempdir().unwrap();
    std::fs::set_permissions(view.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app_dir = view.path().join("kms");
    std::fs::create_dir(&app_dir).unwrap();
    let app_socket = app_dir.join("kms.sock");
    let (source, target) = (s.dir.path().to_str().unwrap(), app_dir.to_str().unwrap());
    let mut cmd = Command::new("unshare");
    if root {
        cmd.args(["--mount", "--propagation", "private"]);
    } else {
        cmd.args(["--map-root-user", "--mount"]);
    }
    cmd.args(["--", "sh", "-c", MOUNT_THEN_RUN, "sh", source, target]);
    cmd.arg(if read_only { "ro" } else { "rw" });
    if root {
        // Another uid cannot use root's own interpreter (pyenv under /root).
        let id = app_uid.to_string();
        cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        cmd.arg("/usr/bin/python3");
    } else {
        cmd.arg("python3");
    }
    cmd.args(["-c", APP, app_socket.to_str().unwrap()]);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run unshare ({e}): install util-linux and python3 (`make test-deps`)")
    });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "unshare -m, mount --bind or the app failed ({}): {stdout}{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the app said {stdout:?} ({e}): {stderr}"));

    // Nothing of the socket could be changed through the app's mount...
    for attempt in ["unlink", "rename", "bind"] {
        assert_eq!(
            report[attempt], "EROFS",
            "{attempt} through the app's mount (readOnly: {read_only}): {report}"
        );
    }
    // ... and it still reaches the sidecar, which answers.
    assert_eq!(report["status"], 200, "{report}");
    assert!(report["answer"]["signature"].is_string(), "{report}");
    assert_eq!(
        std::fs::metadata(&s.socket).map(|m| m.ino()).ok(),
        Some(inode),
        "the sidecar's socket is the one it bound"
    );
    assert_eq!(s.get("/healthz").await.status, 200);
    assert!(!s.dir.path().join("impostor.sock").exists(), "{report}");
}
