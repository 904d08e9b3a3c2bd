//! A real Kubernetes control plane for one test (issue 31), started by
//! `kube-up` (`tests/kube/cmd/kube-up`, the one place for its flags, which
//! `make kube-up` runs too): etcd (embedded from its Go module), the real
//! `kube-apiserver` of the release `tests/kube/go.mod` pins and, when a test
//! asks, `kube-controller-manager`, built by `make kube-bin` into a cache
//! directory outside the work tree. All listen on free loopback ports; the
//! API server serves TLS with a CA of the run, authenticates an admin by a
//! bearer token (in `system:masters`), authorizes with RBAC, runs the
//! mutating/validating webhook, PodSecurity and ServiceAccount admission
//! plugins, and issues service-account tokens whose OIDC discovery
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`) anyone may read.
//! Without the controller manager a namespace gets no `default`
//! ServiceAccount by itself and a Deployment makes no pods; there is never a
//! scheduler or kubelet: a pod is stored and stays Pending. With
//! [`KubeUp::chart`], kube-up installs the chart with `helm install` and
//! runs the suite's webhook binary as the chart's Deployment says.
//! `kubectl` of the same release and the Helm CLI drive it. Dropping the
//! [`ControlPlane`] stops kube-up, which stops everything it started.

use super::{free_port, issue_cert};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The module that builds the binaries; its `k8s.io/kubernetes` line names the release.
const GO_MOD: &str = include_str!("../../kube/go.mod");

/// The chart kube-up installs.
pub const CHART_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kms-sidecar");

/// What `make kube-bin` builds.
pub const KUBE_BINARIES: [&str; 8] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "etcd",
    "second-webhook",
    "kube-up",
    "pod-runner",
    "helm",
];

/// The Kubernetes release the binaries are built from (`v1.N.M`).
pub fn kube_release() -> String {
    GO_MOD
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes v"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| format!("v{v}"))
        .expect("tests/kube/go.mod requires k8s.io/kubernetes")
}

/// Where `tests/kube/build.sh` puts the binaries: the same rule as the script.
pub fn kube_bin_dir() -> PathBuf {
    let base = std::env::var_os("KUBE_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kms-sidecar"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/kms-sidecar")
        });
    base.join(format!("kube-{}", kube_release()))
}

/// The path of one built binary; fails the test with the command that builds it.
pub fn kube_binary(name: &str) -> PathBuf {
    let dir = kube_bin_dir();
    let missing: Vec<&str> = KUBE_BINARIES
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: run `make kube-bin` (builds kube-apiserver, kube-controller-manager, \
         kubectl, etcd, second-webhook, kube-up and pod-runner of Kubernetes {}, and helm, from tests/kube \
         into {}; `make test` does)",
        kube_release(),
        dir.display()
    );
    dir.join(name)
}

/// What [`KubeUp::start`] asks kube-up for, beyond etcd and the API server.
#[derive(Debug, Default, Clone)]
pub struct KubeUp {
    controller_manager: bool,
    chart: Option<Vec<String>>,
}

impl KubeUp {
    /// kube-controller-manager too: Deployments make ReplicaSets and Pods,
    /// namespaces get their `default` ServiceAccount.
    pub fn controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// The chart installed by `helm install` with `helm_args` after
    /// kube-up's own values (the webhook's URL, `sidecar.namespaces: [apps]`),
    /// the webhook binary running, namespace `apps` labelled to match the
    /// chart's `webhook.namespaceLabels`.
    pub fn chart(mut self, helm_args: &[&str]) -> Self {
        self.chart = Some(helm_args.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Runs kube-up and waits until it has written `env` (everything ready).
    /// kube-up picks free ports, which another test may take before its
    /// server binds them: such a start is made again (three times at most).
    pub async fn start(self) -> ControlPlane {
        let t0 = Instant::now();
        let mut attempts = 1;
        loop {
            match self.launch(t0).await {
                Ok(cp) => return cp,
                Err(log) if log.contains("address already in use") && attempts < 3 => {
                    eprintln!("kube-up lost a port to another process; starting it again");
                    attempts += 1;
                }
                Err(log) => panic!("{log}"),
            }
        }
    }

    /// One kube-up start; `Err` with its log if it exited before ready.
    async fn launch(&self, t0: Instant) -> Result<ControlPlane, String> {
        let bin = kube_binary("kube-up");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(&bin);
        command
            .arg(format!("--dir={}", dir.path().display()))
            .arg(format!("--controller-manager={}", self.controller_manager))
            .arg("--stop-on-stdin-eof");
        if let Some(helm_args) = &self.chart {
            command
                .arg(format!("--chart={CHART_DIR}"))
                .arg(format!("--webhook={}", super::BIN));
            for arg in helm_args {
                command.arg(format!("--helm-arg={arg}"));
            }
        }
        let log = std::fs::File::create(dir.path().join("kube-up.log")).expect("log file");
        let mut child = command
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} ({e}); run `make kube-bin`", bin.display())
            });
        let stdin = child.stdin.take();
        let env = wait_for_env(dir.path(), &mut child).await?;
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("kube-up's env has no {name}: {env:?}"))
        };
        let token = std::fs::read_to_string(var("KUBE_TOKEN_FILE")).expect("the admin token");
        let cp = ControlPlane {
            url: var("KUBE_API_URL"),
            ca: var("KUBE_CA").into(),
            token: token.trim().to_owned(),
            kubeconfig: var("KUBECONFIG").into(),
            webhook_url: env
                .iter()
                .find(|(k, _)| k == "KUBE_WEBHOOK_URL")
                .map(|(_, v)| v.clone()),
            started_in: t0.elapsed(),
            kube_up: Some((child, stdin)),
            dir,
        };
        eprintln!("control plane ready in {:?} at {}", cp.started_in, cp.url);
        Ok(cp)
    }
}

/// Waits for DIR/env (kube-up writes it last, whole) and parses it; `Err`
/// with kube-up's log when it exits first, and fails the test when it takes
/// over 3 minutes.
async fn wait_for_env(dir: &Path, child: &mut Child) -> Result<Vec<(String, String)>, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let log = || std::fs::read_to_string(dir.join("kube-up.log")).unwrap_or_default();
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("env")) {
            return Ok(text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect());
        }
        if let Some(status) = child.try_wait().expect("wait") {
            return Err(format!("kube-up exited ({status}); its log:\n{}", log()));
        }
        assert!(
            Instant::now() < deadline,
            "kube-up not ready in 180s; its log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A control plane kube-up started for one test.
pub struct ControlPlane {
    pub dir: TempDir,
    /// kube-up, and the pipe whose end stops it.
    kube_up: Option<(Child, Option<ChildStdin>)>,
    /// `https://127.0.0.1:PORT`, the API server; also the service-account issuer.
    pub url: String,
    /// The CA that signed the API server's serving certificate.
    pub ca: PathBuf,
    /// A bearer token of `admin` in `system:masters`.
    pub token: String,
    /// A kubeconfig for the admin (server, CA, token).
    pub kubeconfig: PathBuf,
    /// With [`KubeUp::chart`]: where the API server calls the webhook.
    pub webhook_url: Option<String>,
    /// How long the start took, until kube-up said ready.
    pub started_in: Duration,
}

impl ControlPlane {
    /// etcd and the API server only (see [`KubeUp`] for more).
    pub async fn start() -> ControlPlane {
        KubeUp::default().start().await
    }

    /// The processes kube-up started (and kube-up itself), by name, from
    /// DIR/pids.
    pub fn pids(&self) -> Vec<(String, i32)> {
        std::fs::read_to_string(self.dir.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, pid)| (name.to_owned(), pid.trim().parse().expect("a pid")))
            .collect()
    }

    /// Sends kube-up SIGTERM, as Ctrl-C or a service manager would, and
    /// waits until it has stopped what it started and exited.
    pub fn stop(&mut self) -> ExitStatus {
        let (mut child, stdin) = self.kube_up.take().expect("kube-up is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(stdin);
        status
    }

    /// The end of a log kube-up keeps: `etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `webhook`, or `kube-up`'s own.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let start = text.len().saturating_sub(8000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_owned()
    }

    /// A GET as the admin: (status, body); status 0 when nothing answered.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.curl(
            &["-H", &format!("Authorization: Bearer {}", self.token)],
            path,
        )
    }

    /// A GET with no credentials at all (trusting only the CA).
    pub fn get_anonymous(&self, path: &str) -> (u16, String) {
        self.curl(&[], path)
    }

    fn curl(&self, extra: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "10",
                "--cacert",
            ])
            .arg(&self.ca)
            .args(extra)
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl ({e}); install it (`make test` does)"));
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Creates namespace `name` with `labels`, and what the controller
    /// manager would make in it, when it runs: its `default` ServiceAccount
    /// (the ServiceAccount admission plugin refuses pods without it) and
    /// the `kube-root-ca.crt` ConfigMap (the root-ca-cert-publisher's: the
    /// CA every pod's `kube-api-access` volume projects, which the kubelet
    /// stand-in reads). Not for a control plane with the controller
    /// manager: the two may race to create them.
    #[track_caller]
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let ca = std::fs::read_to_string(&self.ca).expect("the API server's CA");
        let root_ca = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "kube-root-ca.crt", "namespace": name },
            "data": { "ca.crt": ca },
        });
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kms-sidecar-test: \"true\"\n{labels}---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {name}\n---\n{root_ca}\n"
        ));
    }

    /// `kubectl` of the same release with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    /// [`Self::kubectl`] that must succeed; returns its stdout.
    #[track_caller]
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`, which must succeed; returns its stdout.
    #[track_caller]
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Helm CLI (`make kube-bin` builds it) with the admin kubeconfig;
    /// its config, cache and data directories are the test's own.
    pub fn helm(&self, args: &[&str]) -> Output {
        let home = self.dir.path().join("helm");
        let mut command = Command::new(kube_binary("helm"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HELM_") {
                command.env_remove(name);
            }
        }
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .output()
            .expect("run helm")
    }

    /// [`Self::helm`] that must succeed; returns its stdout.
    #[track_caller]
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl` with `input` on its standard input.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(kube_binary("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl");
        let mut stdin = child.stdin.take().expect("kubectl stdin");
        if let Some(input) = input {
            stdin
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        drop(stdin);
        child.wait_with_output().expect("run kubectl")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.kube_up.is_some() {
            self.stop();
        }
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}); run `make kube-bin`", bin.display()))
}

/// The tests' second mutating webhook (`tests/kube/cmd/second-webhook`),
/// registered with the API server: it adds a container named `added-later`
/// to every pod that has none. Its configuration is named
/// `zz-second-webhook`, so the API server calls it after configurations
/// whose names sort before (as it orders webhooks by name), with
/// `reinvocationPolicy: IfNeeded`. Dropping it kills it.
pub struct SecondWebhook {
    child: Child,
    pub url: String,
}

impl SecondWebhook {
    /// Starts it, registers it, and waits until the API server calls it for
    /// a pod in `namespace` (a dry run; the namespace needs its `default`
    /// ServiceAccount, see [`ControlPlane::namespace`]).
    pub async fn start(cp: &ControlPlane, namespace: &str) -> SecondWebhook {
        Self::start_as(cp, namespace, "zz-second-webhook", None).await
    }

    /// [`Self::start`] registered as the configuration `config` (its name
    /// orders it among the API server's webhooks), and with `native_proxy`
    /// appending a native sidecar of that name to `initContainers` (as a
    /// mesh's injector) instead of adding `added-later`.
    pub async fn start_as(
        cp: &ControlPlane,
        namespace: &str,
        config: &str,
        native_proxy: Option<&str>,
    ) -> SecondWebhook {
        let args: Vec<String> = native_proxy
            .map(|name| format!("--native-proxy={name}"))
            .into_iter()
            .collect();
        let mark = native_proxy.unwrap_or("added-later");
        Self::launch(cp, namespace, config, args, mark).await
    }

    /// It as OpenShift's SCC admission with `restricted-v2`, whose
    /// namespace range is `range` (`1000680000/10000`, as the annotation
    /// `openshift.io/sa.scc.uid-range` says): each container without a uid
    /// gets the range's first, a pod without an fsGroup that too; a uid
    /// outside is refused. Registered as `zz-scc`, after ours.
    pub async fn scc(cp: &ControlPlane, namespace: &str, range: &str) -> SecondWebhook {
        let first = range.split('/').next().expect("MIN/SIZE");
        let mark = format!("\"runAsUser\": {first}");
        let args = vec![format!("--scc-uid-range={range}")];
        Self::launch(cp, namespace, "zz-scc", args, &mark).await
    }

    async fn launch(
        cp: &ControlPlane,
        namespace: &str,
        config: &str,
        extra: Vec<String>,
        mark: &str,
    ) -> SecondWebhook {
        let d = cp.dir.path();
        let (ca, cert, key) = issue_cert(d, "second-webhook");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            format!("--listen={listen}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
        ];
        args.extend(extra);
        let child = spawn(
            &kube_binary("second-webhook"),
            &args,
            &d.join(format!("{config}.log")),
        );
        let hook = SecondWebhook {
            child,
            url: format!("https://{listen}/mutate"),
        };
        let health = format!("https://{listen}/healthz");
        super::eventually(Duration::from_secs(30), "second-webhook answers", || {
            let ok = Command::new("curl")
                .args(["-sf", "--max-time", "2", "--cacert"])
                .arg(&ca)
                .arg(&health)
                .output()
                .is_ok_and(|o| o.status.success());
            async move { ok }
        })
        .await;
        cp.apply(&super::admission::mutating_webhook(
            config,
            "second-webhook.kms-sidecar.test",
            &hook.url,
            &ca,
            "",
        ));
        let probe = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: probe, namespace: {namespace} }}\nspec:\n  containers: [{{ name: c, image: busybox }}]\n"
        );
        cp.wait_until_called(config, &probe, &[mark]).await;
        hook
    }
}

impl Drop for SecondWebhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
