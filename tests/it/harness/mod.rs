//! Test harness: starts the real `kms-sidecar` binary in a temporary
//! directory, on a temporary socket, and talks to it over the socket as an app
//! would. Every sidecar's log is captured; when the test ends the harness
//! checks that none of the secrets the test sent or received (plaintexts,
//! messages, data keys), no local key material and no AWS access key id
//! appears in it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

mod admission;
mod fakes;
mod kube;
mod otlp;
mod pods;
mod servers;
mod softhsm;
mod system;
mod tools;

pub use fakes::Fake;
pub use kube::{CHART_DIR, ControlPlane, KubeUp, SecondWebhook, kube_bin_dir, kube_release};
pub use otlp::Receiver;
pub use pods::{RunOptions, RunningPod};
pub use servers::{Bao, Moto, bao_binary};
pub use softhsm::{HsmKey, SoftHsm, softhsm_module};
pub use system::{MemoryCgroup, curl_on, hostile_client, run_as};
pub use tools::{issue_cert, openssl_verifies};

pub const BIN: &str = env!("CARGO_BIN_EXE_kms-sidecar");

/// A response: status, headers and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The error code of an error response.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// Asserts the status and, for errors, the stable code; returns the JSON.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> Value {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "unexpected status; body: {body}");
        if let Some(code) = code {
            assert_eq!(self.code(), code, "unexpected code; body: {body}");
            let err = &self.json()["error"];
            assert!(
                err["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(
                err["request_id"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(err["retryable"].is_boolean(), "{body}");
        }
        self.json()
    }

    /// [`Self::expect`], and the error message mentions `words`.
    #[track_caller]
    pub fn expect_saying(&self, status: u16, code: &str, words: &str) -> Value {
        let v = self.expect(status, Some(code));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "expected {words:?} in: {v}");
        v
    }

    #[track_caller]
    pub fn ok(&self) -> Value {
        self.expect(200, None)
    }
}

/// A running sidecar.
pub struct Sidecar {
    pub dir: TempDir,
    pub socket: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    secrets: Mutex<Vec<String>>,
    /// Where the log scan starts (moved on by the scan's self-tests only).
    scan_from: AtomicUsize,
    client: Client<UnixConnector, Full<Bytes>>,
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("valid base64")
}

impl Sidecar {
    /// The embedded default (no config at all), as `make run` starts it.
    pub async fn start_default() -> Sidecar {
        Self::start_default_with_env(&[]).await
    }

    /// The embedded default with `env` (`KMS_SIDECAR_…` overrides).
    pub async fn start_default_with_env(env: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("kms-sidecar.sock");
        Self::spawn(dir, socket, &["serve"], env, None).await
    }

    /// A config file; `{dir}` in it is replaced by the temporary directory.
    /// The socket is `{dir}/kms.sock` unless the config says otherwise.
    pub async fn start(config: &str) -> Sidecar {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Sidecar {
        Self::start_as(config, env, None).await
    }

    /// [`Self::start_with_env`], the sidecar running as `uid` (root only:
    /// its directory is opened to that uid).
    pub async fn start_as(config: &str, env: &[(&str, &str)], uid: Option<u32>) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        if uid.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
        Self::start_in(dir, &path, env, uid).await
    }

    /// A sidecar in `dir` reading the config file at `path` (written by
    /// the caller, e.g. as a ConfigMap volume).
    pub async fn start_in(
        dir: TempDir,
        path: &Path,
        env: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Sidecar {
        let socket = dir.path().join("kms.sock");
        let mut env: Vec<(&str, &str)> = env.to_vec();
        let socket_str = socket.display().to_string();
        if !env.iter().any(|(k, _)| *k == "KMS_SIDECAR_LISTEN__SOCKET") {
            env.push(("KMS_SIDECAR_LISTEN__SOCKET", &socket_str));
        }
        let path = path.display().to_string();
        Self::spawn(
            dir,
            socket.clone(),
            &["serve", "--config", &path],
            &env,
            uid,
        )
        .await
    }

    async fn spawn(
        dir: TempDir,
        socket: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Sidecar {
        let log = dir.path().join("sidecar.log");
        let child = spawn_binary_as(dir.path(), args, env, &log, uid);
        let sidecar = Sidecar {
            dir,
            socket,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: Some(child),
            log,
            secrets: Mutex::new(Vec::new()),
            scan_from: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build(UnixConnector),
        };
        // Credentials handed over in the environment must stay out of the log.
        for (k, v) in env {
            if matches!(*k, "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN") {
                sidecar.secret(*v);
            }
        }
        sidecar.wait_ready().await;
        sidecar
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.socket.exists()
                && self
                    .try_get("/healthz")
                    .await
                    .is_some_and(|r| r.status == 200)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "kms-sidecar did not become ready in 60s; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Remembers a secret that must never appear in the log.
    pub fn secret(&self, s: impl Into<String>) {
        let mut s: String = s.into();
        // A prefix is enough: a leak of the whole contains it, and the scan
        // stays fast with megabyte plaintexts.
        if let Some((cut, _)) = s.char_indices().nth(64) {
            s.truncate(cut);
        }
        if s.len() >= 8 {
            self.secrets.lock().unwrap().push(s);
        }
    }

    /// Forgets the registered secrets and the log so far (for the tests of
    /// the scan itself).
    pub fn clear_secrets(&self) {
        self.secrets.lock().unwrap().clear();
        let len = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        self.scan_from.store(len, Ordering::SeqCst);
    }

    fn secret_bytes(&self, bytes: &[u8]) {
        self.secret(b64(bytes));
        self.secret(hex(bytes));
        if let Ok(text) = std::str::from_utf8(bytes) {
            self.secret(text);
        }
    }

    /// Registers every base64 value of fields that carry secrets.
    fn register_secrets(&self, v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "error" {
                        continue;
                    }
                    if matches!(
                        k.as_str(),
                        "message" | "plaintext" | "digest" | "plaintext_key"
                    ) && let Some(s) = v.as_str()
                    {
                        self.secret(s);
                        if let Ok(bytes) = STANDARD.decode(s) {
                            self.secret_bytes(&bytes);
                        }
                    }
                    self.register_secrets(v);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.register_secrets(i)),
            _ => {}
        }
    }

    pub async fn try_get(&self, path: &str) -> Option<Resp> {
        self.try_request(http::Method::GET, path, &[], Bytes::new())
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(http::Method::GET, path, &[], Bytes::new())
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.register_secrets(&body);
        let resp = self
            .request(
                http::Method::POST,
                path,
                &[("content-type", "application/json")],
                Bytes::from(body.to_string()),
            )
            .await;
        if let Ok(v) = serde_json::from_slice::<Value>(&resp.body) {
            self.register_secrets(&v);
        }
        resp
    }

    /// POSTs JSON and asserts a 200 answer, which it returns.
    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        self.post(path, body).await.ok()
    }

    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|| panic!("request to {path} failed; log:\n{}", self.logs()))
    }

    /// A JSON POST with our own `x-request-id`: the status and the id the
    /// sidecar answered with, or `None` if the connection failed.
    pub async fn try_request_with_id(
        &self,
        method: http::Method,
        path: &str,
        id: &str,
        body: Value,
    ) -> Option<(u16, String)> {
        let r = self
            .try_request(
                method,
                path,
                &[("content-type", "application/json"), ("x-request-id", id)],
                Bytes::from(body.to_string()),
            )
            .await?;
        let id = r.headers.get("x-request-id")?.to_str().ok()?.to_owned();
        Some((r.status, id))
    }

    async fn try_request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Option<Resp> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// Polls `/readyz` (every 200 ms, at most `within`) until it answers
    /// 200; its body.
    pub async fn ready_within(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get("/readyz").await;
            if r.status == 200 {
                return r.json();
            }
            assert!(Instant::now() < deadline, "not ready: {:?}", r.json());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `/readyz` (every 200 ms, at most `within`) until it says
    /// `backend` is not ready for a reason that contains every one of
    /// `words`; the reason.
    pub async fn not_ready_because(
        &self,
        backend: &str,
        words: &[&str],
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get("/readyz").await;
            let v = r.json();
            let reason = v["backends"][backend]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if r.status == 503 && words.iter().all(|w| reason.contains(w)) {
                return reason;
            }
            assert!(
                Instant::now() < deadline,
                "readyz {}: {v}, not for {words:?}\n{}",
                r.status,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the sidecar and starts it again in the same directory (same
    /// keys, empty caches).
    pub async fn restart(mut self) -> Sidecar {
        if self.child.is_some() {
            self.terminate();
        }
        let leaked = self.leaked_secrets();
        assert!(
            leaked.is_empty(),
            "secrets found in the sidecar log: {leaked:?}"
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = std::fs::rename(
            dir.path().join("sidecar.log"),
            dir.path().join("sidecar.log.1"),
        );
        Self::spawn(dir, self.socket.clone(), &args, &env, None).await
    }

    /// A request whose body is streamed, on a connection of its own; the
    /// response body is left to the caller to stream.
    pub async fn stream_request<B>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: B,
    ) -> http::Response<hyper::body::Incoming>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::post(path).header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        sender
            .send_request(req.body(body).unwrap())
            .await
            .expect("send request")
    }

    /// The value of the first `/metrics` line starting with `line_prefix`
    /// (a name, or a name and its labels), 0 when there is none.
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = String::from_utf8_lossy(&self.get("/metrics").await.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The peak resident memory of the sidecar so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kb * 1024
    }

    /// Sends SIGTERM and waits for the exit (at most 30s).
    /// Waits for the sidecar to exit on its own (after a signal the test sent).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("still running");
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("still running");
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    /// Stops the sidecar (checking its log like a drop does) and hands over
    /// its directory, for tests that look at what it left behind.
    pub fn into_dir(mut self) -> TempDir {
        let placeholder = tempfile::tempdir().expect("temp dir");
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            wait_timeout(&mut child, Duration::from_secs(30));
        }
        let leaked = self.leaked_secrets();
        assert!(
            leaked.is_empty(),
            "secrets found in the sidecar log: {leaked:?}"
        );
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Every secret registered so far that appears in the log (one pass over
    /// the log for all of them), and every AWS access key id in it.
    pub fn leaked_secrets(&self) -> Vec<String> {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let from = self.scan_from.load(Ordering::SeqCst).min(log.len());
        self.secrets_in(&log[from..])
    }

    /// Every secret registered so far (and every key file's material, and
    /// every AWS access key id) found in `bytes`: a log, or what the
    /// sidecar sent somewhere.
    pub fn secrets_in(&self, bytes: &[u8]) -> Vec<String> {
        let log = String::from_utf8_lossy(bytes);
        let mut secrets = self.secrets.lock().unwrap().clone();
        secrets.extend(
            key_material(self.dir.path())
                .into_iter()
                .map(|m| m.chars().take(64).collect()),
        );
        secrets.sort();
        secrets.dedup();
        let matcher = aho_corasick::AhoCorasick::new(&secrets).expect("secret patterns");
        let mut found: Vec<String> = matcher
            .find_overlapping_iter(log.as_ref())
            .map(|m| secrets[m.pattern().as_usize()].clone())
            .collect();
        found.extend(aws_access_key_ids(&log));
        found.sort();
        found.dedup();
        found
    }
}

impl Drop for Sidecar {
    /// Stops the sidecar, which must exit 0 (a crash at exit, such as a
    /// module called into while `exit` runs, fails the test), and checks its
    /// log for secrets.
    fn drop(&mut self) {
        let status = self.child.take().map(|mut child| {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            wait_timeout(&mut child, Duration::from_secs(30))
        });
        if !std::thread::panicking() {
            if let Some(status) = status {
                assert!(
                    status.success(),
                    "kms-sidecar exited with {status} on SIGTERM; its log ends: {}",
                    self.logs()
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            let leaked = self.leaked_secrets();
            assert!(
                leaked.is_empty(),
                "secrets found in the sidecar log: {leaked:?}"
            );
        }
    }
}

pub fn spawn_binary(cwd: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    spawn_binary_as(cwd, args, env, log, None)
}

/// [`spawn_binary`], as `uid` through `setpriv` when given.
fn spawn_binary_as(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
    uid: Option<u32>,
) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            let id = uid.to_string();
            c.args(["--reuid", &id, "--regid", &id, "--clear-groups", BIN]);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("KMS_SIDECAR_CONFIG")
        .env("RUST_LOG", "debug")
        .env("KMS_SIDECAR_LOG__FORMAT", "json")
        // Never let the AWS credential chain reach for a cloud metadata service.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start kms-sidecar")
}

/// Runs the binary once — `config check`, or a `serve` that should exit at
/// start — with `config` written to a fresh temporary directory (`{dir}`
/// replaced; the socket, if any, goes there too). `command` comes before the
/// config path. Returns (exit code, stdout, stderr).
pub fn run_with_config(
    command: &[&str],
    config: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .expect("write config");
    let mut cmd = Command::new(BIN);
    cmd.args(command)
        .arg(&path)
        .env("KMS_SIDECAR_LISTEN__SOCKET", dir.path().join("s.sock"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kms-sidecar");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kms-sidecar did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The AWS access key ids in `text`: `AKIA` (long-term) or `ASIA`
/// (temporary, what moto's STS hands out) and 16 uppercase letters or
/// digits, not part of a longer word.
pub fn aws_access_key_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let word = |i: Option<usize>| {
        i.and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_alphanumeric)
    };
    let mut found = Vec::new();
    for prefix in ["AKIA", "ASIA"] {
        for (at, _) in text.match_indices(prefix) {
            let end = at + 20;
            let Some(rest) = bytes.get(at + 4..end) else {
                continue;
            };
            if rest
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                && !word(at.checked_sub(1))
                && !word(Some(end))
            {
                found.push(text[at..end].to_owned());
            }
        }
    }
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The private material of every local key file under `dir`, as base64 and hex.
fn key_material(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && let Ok(v) = serde_json::from_str::<Value>(
                    &std::fs::read_to_string(&path).unwrap_or_default(),
                )
            {
                for version in v["versions"].as_array().into_iter().flatten() {
                    if let Some(m) = version["material"].as_str() {
                        out.push(m.to_owned());
                        if let Ok(bytes) = STANDARD.decode(m) {
                            out.push(hex(&bytes));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A config with one local backend and the given keys, granting everything to
/// this process's uid.
pub fn local_config(keys: &str) -> String {
    format!(
        "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n{keys}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        nix::unistd::geteuid().as_raw()
    )
}

/// Polls `cond` every 100 ms until it holds; fails the test naming `what`
/// when it has not within `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A projected service-account token as the kubelet writes one (a JWT with
/// `iss`, `sub`, `aud`, `iat`, `exp`), expiring `ttl` seconds from now
/// (negative: already expired). Signed with a throwaway key: the sidecar
/// never verifies it, and moto's STS does not either.
pub fn projected_token(aud: &str, ttl: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:default:kms-sidecar",
        "aud": [aud],
        "iat": now - 10,
        "exp": now + ttl,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"throwaway"),
    )
    .unwrap()
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the OS's choice),
/// for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Whether this process runs as root (then tests can act as other uids).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command and returns (exit success, stdout, stderr), failing the test
/// with an install hint when the tool is missing.
pub fn run_tool(program: &str, args: &[&str], hint: &str) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}); {hint} (`make test` installs it)")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
