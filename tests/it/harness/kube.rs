//! A real Kubernetes control plane for one test (issue 31): etcd (embedded
//! from its Go module, `tests/kube/cmd/etcd`) and the real `kube-apiserver`
//! of the release `tests/kube/go.mod` pins, built by `make kube-bin` into a
//! cache directory outside the work tree. Both listen on free loopback ports;
//! the API server serves TLS with a test CA, authenticates an admin by a
//! bearer token (in `system:masters`), authorizes with RBAC, runs the
//! mutating/validating webhook, PodSecurity and ServiceAccount admission
//! plugins, and issues service-account tokens whose OIDC discovery
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`) anyone may read
//! (a ClusterRoleBinding of the harness opens it to unauthenticated users).
//! There is no controller manager, scheduler or kubelet: a pod is stored and
//! stays Pending, and a namespace gets no `default` ServiceAccount by itself.
//! `kubectl` of the same release and the Helm CLI drive it. Dropping the
//! [`ControlPlane`] kills both processes.

use super::{free_port, issue_cert, run_tool};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The module that builds the binaries; its `k8s.io/kubernetes` line names the release.
const GO_MOD: &str = include_str!("../../kube/go.mod");

/// What `make kube-bin` builds.
pub const KUBE_BINARIES: [&str; 5] = [
    "kube-apiserver",
    "kubectl",
    "etcd",
    "second-webhook",
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
        "missing {missing:?}: run `make kube-bin` (builds kube-apiserver, kubectl, etcd and \
         second-webhook of Kubernetes {}, and helm, from tests/kube into {}; `make test` does)",
        kube_release(),
        dir.display()
    );
    dir.join(name)
}

/// etcd and kube-apiserver on 127.0.0.1, for one test.
pub struct ControlPlane {
    pub dir: TempDir,
    etcd: Child,
    apiserver: Child,
    /// `https://127.0.0.1:PORT`, the API server; also the service-account issuer.
    pub url: String,
    /// The CA that signed the API server's serving certificate.
    pub ca: PathBuf,
    /// A bearer token of `admin` in `system:masters`.
    pub token: String,
    /// A kubeconfig for the admin (server, CA, token).
    pub kubeconfig: PathBuf,
    /// How long [`Self::start`] took until `/readyz` said ok.
    pub started_in: Duration,
}

impl ControlPlane {
    /// Starts etcd and the API server and waits until `/readyz` answers ok.
    pub async fn start() -> ControlPlane {
        let t0 = Instant::now();
        let (etcd_bin, apiserver_bin) = (kube_binary("etcd"), kube_binary("kube-apiserver"));
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (ca, cert, key) = issue_cert(d, "apiserver");
        let sa_key = d.join("service-account.key");
        let (ok, _, err) = run_tool(
            "openssl",
            &["genrsa", "-out", &sa_key.display().to_string(), "2048"],
            "install openssl (apt-get install openssl)",
        );
        assert!(ok, "openssl genrsa: {err}");
        let token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let tokens = d.join("tokens.csv");
        std::fs::write(&tokens, format!("{token},admin,admin,\"system:masters\"\n")).unwrap();

        let etcd_url = format!("http://127.0.0.1:{}", free_port());
        let etcd = spawn(
            &etcd_bin,
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-url={etcd_url}"),
                format!("--listen-peer-url=http://127.0.0.1:{}", free_port()),
            ],
            &d.join("etcd.log"),
        );
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let args = apiserver_args(d, port, &etcd_url, (&cert, &key), &sa_key, &tokens);
        let apiserver = spawn(&apiserver_bin, &args, &d.join("kube-apiserver.log"));
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &ca, &token)).unwrap();
        let mut cp = ControlPlane {
            dir,
            etcd,
            apiserver,
            url,
            ca,
            token,
            kubeconfig,
            started_in: Duration::ZERO,
        };
        cp.wait_ready().await;
        // The bootstrap policy binds the discovery role to service accounts
        // only; like a cluster whose issuer is public (as OpenBao's `jwt`
        // auth or any outside verifier needs), anyone may read it here.
        cp.apply(DISCOVERY_PUBLIC);
        cp.started_in = t0.elapsed();
        eprintln!("control plane ready in {:?} at {}", cp.started_in, cp.url);
        cp
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let (200, body) = self.get("/readyz")
                && body.trim() == "ok"
            {
                return;
            }
            if let Some((name, status)) = self.exited() {
                panic!("{name} exited ({status}); log:\n{}", self.log(name));
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 90s; log:\n{}",
                self.log("kube-apiserver")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Which of the two processes has exited, if one has.
    fn exited(&mut self) -> Option<(&'static str, std::process::ExitStatus)> {
        if let Some(status) = self.etcd.try_wait().expect("wait") {
            return Some(("etcd", status));
        }
        let status = self.apiserver.try_wait().expect("wait")?;
        Some(("kube-apiserver", status))
    }

    /// The end of `etcd`'s or `kube-apiserver`'s log.
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

    /// Creates namespace `name` with `labels` and its `default`
    /// ServiceAccount (which the controller manager, not running here, would
    /// make; the ServiceAccount admission plugin refuses pods without it).
    #[track_caller]
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kms-sidecar-test: \"true\"\n{labels}---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {name}\n"
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
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Binds `system:service-account-issuer-discovery` (the bootstrap role that
/// may GET the discovery document and the JWKS) to unauthenticated users too,
/// as Kubernetes' documentation says to for a public issuer.
const DISCOVERY_PUBLIC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: service-account-issuer-discovery-public
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:service-account-issuer-discovery
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:unauthenticated
";

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

/// The API server's flags: loopback only, its own etcd, TLS, token and
/// anonymous authentication, RBAC, the admission plugins the suite relies on,
/// and a service-account issuer at its own URL (so the discovery document's
/// `jwks_uri` is on this server).
fn apiserver_args(
    d: &Path,
    port: u16,
    etcd_url: &str,
    (cert, key): (&Path, &Path),
    sa_key: &Path,
    tokens: &Path,
) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", p(&d.join("apiserver-certs"))),
        format!("--tls-cert-file={}", p(cert)),
        format!("--tls-private-key-file={}", p(key)),
        format!("--token-auth-file={}", p(tokens)),
        "--anonymous-auth=true".into(),
        "--authorization-mode=RBAC".into(),
        "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity,ServiceAccount".into(),
        format!("--service-account-issuer=https://127.0.0.1:{port}"),
        format!("--service-account-signing-key-file={}", p(sa_key)),
        format!("--service-account-key-file={}", p(sa_key)),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        // The `kubernetes` Service's endpoints may not be a loopback address.
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn kubeconfig_yaml(url: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
        ca.display()
    )
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
        let d = cp.dir.path();
        let (ca, cert, key) = issue_cert(d, "second-webhook");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            format!("--listen={listen}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
        ];
        args.extend(native_proxy.map(|name| format!("--native-proxy={name}")));
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
        let mark = native_proxy.unwrap_or("added-later");
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
