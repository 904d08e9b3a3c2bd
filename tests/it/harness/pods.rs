//! Running an admitted pod with the kubelet stand-in (`tests/kube/cmd/
//! pod-runner`, see `docs/kubernetes-tests.md`): it reads the pod from a
//! [`ControlPlane`], materialises its volumes (tokens from the TokenRequest
//! API among them) and runs its containers, each in private mount and PID
//! namespaces as the spec's uid; [`RunningPod::exec`] runs a command inside
//! one, as `kubectl exec` would. Runs as root. Dropping the [`RunningPod`]
//! stops the runner, which stops the containers.

use super::{BIN, ControlPlane, kube::kube_binary};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The sidecar image's ENTRYPOINT (the Dockerfile's), where the runner
/// puts the `kms-sidecar` binary cargo built.
const SIDECAR_ENTRYPOINT: &str = "/usr/local/bin/kms-sidecar";
/// The sidecar image's USER (distroless `nonroot`, the Dockerfile's).
const SIDECAR_USER: &str = "65532:65532";

/// How the runner runs a pod.
#[derive(Default, Clone, Copy)]
pub struct RunOptions {
    /// `--compressed-token-life`: the runner's named deviation from the
    /// kubelet, which refreshes each token at 80 % of this life instead of
    /// its real one (the tokens themselves stay the API server's, with
    /// their real `expirationSeconds`).
    pub compressed_token_life: Option<Duration>,
    /// `--only`: run only these containers, and set up only the volumes
    /// they mount (empty: every container).
    pub only: &'static [&'static str],
}

/// A pod the runner runs.
pub struct RunningPod {
    child: Child,
    pub state: TempDir,
    pub namespace: String,
}

impl RunningPod {
    /// Starts the runner for pod `namespace/name`, stored in `cp`, and
    /// waits until every container runs (init sidecars after their startup
    /// probe); the pod's sidecar image stands for the `kms-sidecar` binary.
    pub async fn start(
        cp: &ControlPlane,
        namespace: &str,
        name: &str,
        options: RunOptions,
    ) -> RunningPod {
        assert!(
            super::is_root(),
            "the kubelet stand-in mounts volumes in mount namespaces and runs containers as their uids: run the suite as root (as `make test` in CI does)"
        );
        let pod: Value = serde_json::from_str(
            &cp.kubectl_ok(&["-n", namespace, "get", "pod", name, "-o", "json"]),
        )
        .expect("the pod as JSON");
        let state = tempfile::tempdir().expect("temp dir");
        let mut args = vec![
            "run".to_owned(),
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            format!("--namespace={namespace}"),
            format!("--pod={name}"),
            format!("--state={}", state.path().display()),
        ];
        let images = ["initContainers", "containers"]
            .iter()
            .flat_map(|list| pod["spec"][list].as_array().cloned().unwrap_or_default())
            .filter(|c| c["name"] == "kms-sidecar")
            .filter_map(|c| c["image"].as_str().map(str::to_owned));
        for image in images {
            args.push(format!(
                "--image={image}=entrypoint={SIDECAR_ENTRYPOINT},binary={BIN},user={SIDECAR_USER}"
            ));
        }
        if !options.only.is_empty() {
            args.push(format!("--only={}", options.only.join(",")));
        }
        if let Some(life) = options.compressed_token_life {
            args.push(format!("--compressed-token-life={}s", life.as_secs()));
        }
        let log = std::fs::File::create(state.path().join("runner.log")).expect("log file");
        let child = Command::new(kube_binary("pod-runner"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start pod-runner");
        let mut pod = RunningPod {
            child,
            state,
            namespace: namespace.into(),
        };
        pod.wait_running().await;
        pod
    }

    async fn wait_running(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while self.events("pod running").is_empty() {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("pod-runner exited ({status}):\n{}", self.logs());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pod did not start in 90 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The runner's log and each container's, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = self.runner_log();
        let dir = self.state.path().join("containers");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let start = body.len().saturating_sub(6000);
                let start = (start..body.len())
                    .find(|i| body.is_char_boundary(*i))
                    .unwrap_or(0);
                text.push_str(&format!("\n--- {}:\n{}", path.display(), &body[start..]));
            }
        }
        text
    }

    /// The runner's own log (JSON lines).
    pub fn runner_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("runner.log")).unwrap_or_default()
    }

    /// The runner's log lines whose message is `msg`.
    pub fn events(&self, msg: &str) -> Vec<Value> {
        self.runner_log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["msg"] == msg)
            .collect()
    }

    /// Where volume `name` is on this machine.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.state.path().join("volumes").join(name)
    }

    /// Runs `command` inside `container`: its mount namespace and root, its
    /// uid, gid and groups, its environment.
    pub fn exec(&self, container: &str, command: &[&str]) -> Output {
        Command::new(kube_binary("pod-runner"))
            .args(["exec", "--state"])
            .arg(self.state.path())
            .arg(container)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("run pod-runner exec")
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        super::signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
