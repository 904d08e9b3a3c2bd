//! kube-up itself (`tests/kube/cmd/kube-up`), as `make kube-up` runs it:
//! with the controller manager, the chart and the webhook, it writes
//! DIR/env, DIR/kubeconfig, DIR/bin/kubectl and DIR/bin/helm, which a user
//! drives the cluster with; SIGTERM stops every process it started.

use super::{injected, labelled_pod};
use crate::harness::{KubeUp, kube_release};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// DIR/bin/NAME with `args`, as a user runs it (no harness flags).
fn run(dir: &Path, name: &str, args: &[&str], input: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(dir.join("bin").join(name))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run DIR/bin/{name}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn kube_up_runs_a_cluster_a_user_drives_and_sigterm_stops_all_of_it() {
    let mut cp = KubeUp::default()
        .controller_manager()
        .chart(&[])
        .start()
        .await;
    let dir = cp.dir.path().to_owned();
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    assert!(
        env.contains(&format!("KUBECONFIG={}\n", kubeconfig.display())),
        "{env}"
    );
    let webhook = cp.webhook_url.clone().expect("the webhook's URL");
    assert!(webhook.starts_with("https://127.0.0.1:"), "{webhook}");
    assert!(
        env.contains(&format!("KUBE_WEBHOOK_URL={webhook}\n")),
        "{env}"
    );
    let kubeconfig = kubeconfig.to_str().unwrap();

    // DIR/bin/kubectl is the cluster's release; DIR/bin/helm lists the release.
    let out = run(
        &dir,
        "kubectl",
        &["version", "--client", "-o", "json"],
        None,
    );
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        version["clientVersion"]["gitVersion"],
        kube_release().as_str()
    );
    let out = run(
        &dir,
        "helm",
        &["--kubeconfig", kubeconfig, "list", "-A", "-q"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kms-sidecar",
        "{out:?}"
    );

    // A labelled pod in `apps`, created with them: injected.
    let pod = labelled_pod("apps", "app", "");
    let out = run(
        &dir,
        "kubectl",
        &["--kubeconfig", kubeconfig, "create", "-f", "-"],
        Some(&pod),
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        &dir,
        "kubectl",
        &[
            "--kubeconfig",
            kubeconfig,
            "-n",
            "apps",
            "get",
            "pod",
            "app",
            "-o",
            "json",
        ],
        None,
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(injected(&stored), "{stored}");

    // Everything it started, running; after SIGTERM, gone.
    let pids = cp.pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "kube-up",
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "webhook"
        ]
    );
    for (name, pid) in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{name} not running"
        );
    }
    let status = cp.stop();
    assert!(
        status.success(),
        "kube-up exited with {status}: {}",
        cp.log("kube-up")
    );
    for (name, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} ({pid}) still runs"
        );
    }
    assert!(!dir.join("env").exists(), "DIR/env left behind");
}
