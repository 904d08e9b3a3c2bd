//! The sidecar can read its own tokens whatever the pod's uids and
//! `fsGroup`: published pod specs are injected by the real webhook, then the
//! files of the token volume are made as the kubelet makes them and opened
//! as the sidecar's process would be started by the container runtime.
//!
//! There is no kubelet here: its rules are emulated from its source
//! (k8s.io/kubernetes v1.37.2, the release `make kube-bin` builds):
//!
//! - `pkg/volume/util/util.go`, `FsUserFrom`: the volume's file owner is the
//!   one uid every container (init containers included) runs as, or none
//!   when a container sets no uid or two differ;
//! - `pkg/volume/projected/projected.go`, `collectData`: a token file gets
//!   the volume's `defaultMode`, or `0600` when there is such an owner or an
//!   `fsGroup`; a ConfigMap item gets its own `mode`, else `defaultMode`;
//! - `pkg/volume/util/atomic_writer.go`: the files are written by root and
//!   chowned to that owner, if any;
//! - `pkg/volume/volume_linux.go`, `changeFilePermission` (through
//!   `SetVolumeOwnership`, the volume being read-only): with an `fsGroup`,
//!   each file's group becomes it and `0440` is added to its mode;
//! - `pkg/kubelet/kuberuntime/security_context.go`: a container's
//!   supplementary groups are the pod's `fsGroup` and `supplementalGroups`;
//!   its gid is its `runAsGroup`, else the pod's, else the image's (65532,
//!   distroless `nonroot`, the sidecar image's user).

use super::{Webhook, fixture, patch_of, pod_review};
use serde_json::Value;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;

const GCP_PROVIDER: &str =
    "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s";

/// Every published pod we have: the fixtures (their sources are named in
/// each file) and the examples users copy.
fn published() -> Vec<(String, Value)> {
    let mut pods: Vec<(String, Value)> = [
        "security-context",
        "multi-container",
        "bare",
        "job-pod",
        "statsd-exporter",
        "node-exporter",
        "pod-level-resources",
        "init-containers",
    ]
    .into_iter()
    .map(|name| (name.to_string(), fixture(name)))
    .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in [
        "examples/app/pod.yaml",
        "manifests/examples/irsa.yaml",
        "manifests/examples/vault-kubernetes-auth.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(example)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            if doc["kind"] == "Pod" {
                pods.push((example.to_string(), doc));
            }
        }
    }
    pods
}

/// The effective uid of a container: its own `runAsUser`, else the pod's.
fn run_as(pod: &Value, c: &Value, field: &str) -> Option<i64> {
    c["securityContext"][field]
        .as_i64()
        .or_else(|| pod["spec"]["securityContext"][field].as_i64())
}

/// `FsUserFrom`: the uid all containers run as, if they all set the same.
fn fs_user(pod: &Value) -> Option<i64> {
    let spec = &pod["spec"];
    let all = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().cloned().unwrap_or_default());
    let mut user = None;
    for c in all {
        let uid = run_as(pod, &c, "runAsUser")?;
        if user.is_some_and(|u| u != uid) {
            return None;
        }
        user = Some(uid);
    }
    user
}

/// One file of the token volume as the kubelet leaves it: (name, owner uid,
/// group, mode).
fn kubelet_files(pod: &Value) -> Vec<(String, u32, u32, u32)> {
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kms-sidecar-tokens")
        .expect("a token volume");
    let projected = &volume["projected"];
    let default_mode = projected["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let fs_group = pod["spec"]["securityContext"]["fsGroup"].as_i64();
    let owner = fs_user(pod);
    let mut files = Vec::new();
    for source in projected["sources"].as_array().unwrap() {
        let (path, mode, file_owner) = if let Some(t) = source.get("serviceAccountToken") {
            let mode = if owner.is_some() || fs_group.is_some() {
                0o600
            } else {
                default_mode
            };
            (t["path"].as_str().unwrap().to_string(), mode, owner)
        } else {
            let item = &source["configMap"]["items"][0];
            let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
            (item["path"].as_str().unwrap().to_string(), mode, None)
        };
        let uid = file_owner.unwrap_or(0) as u32;
        let (gid, mode) = match fs_group {
            Some(g) => (g as u32, mode | 0o440),
            None => (0, mode),
        };
        files.push((path, uid, gid, mode));
    }
    files
}

/// `setpriv` arguments for the sidecar container's process.
fn sidecar_credentials(pod: &Value) -> Vec<String> {
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "kms-sidecar");
    let uid = run_as(pod, sidecar, "runAsUser").expect("the sidecar sets its uid");
    let gid = run_as(pod, sidecar, "runAsGroup").unwrap_or(65532);
    let sc = &pod["spec"]["securityContext"];
    let groups: Vec<String> = sc["fsGroup"]
        .as_i64()
        .into_iter()
        .chain(
            sc["supplementalGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64),
        )
        .map(|g| g.to_string())
        .collect();
    let mut args = vec![format!("--reuid={uid}"), format!("--regid={gid}")];
    if groups.is_empty() {
        args.push("--clear-groups".into());
    } else {
        args.push(format!("--groups={}", groups.join(",")));
    }
    args
}

#[test]
fn the_sidecar_reads_its_tokens_whatever_the_pods_uids_and_fs_group() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes files owned by other uids and opens them as the sidecar's: run the suite as root (as `make test` in CI does)"
    );
    let hook = Webhook::start(&format!(
        "tokens: [aws, azure, gcp, vault]\ngcp: {{ audience: \"{GCP_PROVIDER}\" }}\n"
    ));
    let mut checked = 0;
    let mut with_fs_group = 0;
    for (name, pod) in published() {
        let response = hook.review(&pod_review(&pod));
        let mut injected = pod.clone();
        json_patch::patch(&mut injected, &patch_of(&response)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let credentials = sidecar_credentials(&injected);
        for (file, uid, gid, mode) in kubelet_files(&injected) {
            let path = dir.path().join(&file);
            std::fs::write(&path, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
            chown(&path, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let out = Command::new("setpriv")
                .args(&credentials)
                .args(["--", "cat"])
                .arg(&path)
                .output()
                .expect("setpriv (util-linux) runs");
            assert!(
                out.status.success(),
                "{name}: the sidecar ({credentials:?}) cannot read {file} (owner {uid}:{gid}, mode {mode:o}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
        with_fs_group += usize::from(pod["spec"]["securityContext"]["fsGroup"].is_i64());
    }
    // Every pod has its files (all four tokens and GCP's credentials file,
    // unless it names its tokens), and the rule's other branch (an fsGroup)
    // is seen at least once.
    assert!(checked > published().len() * 2, "{checked} files");
    assert!(with_fs_group >= 1);
}
