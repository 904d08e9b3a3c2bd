//! The contract fakes of `tests/fakes/` (services with no local server),
//! started for one test on 127.0.0.1: the Azure Key Vault and Entra ID fake.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// `tests/fakes/azure_keyvault.py` on 127.0.0.1 (HTTPS with its own test
/// CA), with its files (CA, federated token, env) in a temporary directory.
pub struct AzureFake {
    child: Child,
    pub dir: TempDir,
    /// `https://127.0.0.1:PORT`: the vault URL and the authority host.
    pub url: String,
}

impl AzureFake {
    pub async fn start() -> AzureFake {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/azure_keyvault.py");
        let log = std::fs::File::create(dir.path().join("fake.log")).expect("fake log");
        let child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 ({e})"));
        let mut fake = AzureFake {
            child,
            dir,
            url: String::new(),
        };
        let url_file = fake.dir.path().join("url");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(url) = std::fs::read_to_string(&url_file) {
                fake.url = url.trim().to_owned();
                return fake;
            }
            if let Some(status) = fake.child.try_wait().unwrap() {
                panic!(
                    "the Azure Key Vault fake exited ({status}): it needs Python's `cryptography` package (`make test` installs it with pip); its log:\n{}",
                    fake.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Azure Key Vault fake did not start in 30s; its log:\n{}",
                fake.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The variables of the fake's `env` file (`AZURE_*`, `SSL_CERT_FILE`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let text = std::fs::read_to_string(self.path("env")).expect("the fake's env file");
        let mut out = Vec::new();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let k: &'static str = Box::leak(k.trim().to_owned().into_boxed_str());
            out.push((k, v.trim().trim_matches('"').to_owned()));
        }
        out
    }

    /// The backend as a YAML flow map, `extra` fields added.
    pub fn backend(&self, extra: &str) -> String {
        format!("{{ type: azure, vault_url: \"{}\"{extra} }}", self.url)
    }

    /// Calls the fake's admin API (`/_fake/…`): the JSON answer.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(self.path("ca.pem"))
            .args(["-X", method, "-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{}/_fake/{path}", self.url))
            .output()
            .await
            .expect("curl (`make test` installs it)");
        assert!(
            out.status.success(),
            "{method} /_fake/{path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Creates a key (`kty`, `crv`/`key_size`, `key_ops` as Key Vault
    /// takes them): its KeyBundle.
    pub async fn create_key(&self, name: &str, spec: Value) -> Value {
        let mut body = spec;
        body["name"] = name.into();
        self.admin("POST", "keys", body).await
    }

    /// A new federated token (`ttl` seconds; negative: already expired).
    pub async fn federated_token(&self, ttl: i64) -> String {
        let answer = self
            .admin("POST", "federated-token", serde_json::json!({"ttl": ttl}))
            .await;
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// The fake's counters (`token_requests`, `keyvault_requests`, …).
    pub async fn stats(&self) -> Value {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.path("ca.pem"))
            .arg(format!("{}/_fake/stats", self.url))
            .output()
            .await
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("stats are JSON")
    }
}

impl Drop for AzureFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
