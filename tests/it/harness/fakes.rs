//! The contract fakes of `tests/fakes/` (services with no local server),
//! started for one test on 127.0.0.1: Azure Key Vault with Entra ID, and
//! Google Cloud KMS with STS, IAM Credentials and the metadata server.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A fake of `tests/fakes/` on 127.0.0.1, with its files (CA, tokens,
/// credentials, env) in a temporary directory.
pub struct Fake {
    child: Child,
    pub dir: TempDir,
    /// `https://127.0.0.1:PORT` (Azure: the vault URL and the authority
    /// host) or `http://127.0.0.1:PORT` (GCP: every endpoint).
    pub url: String,
}

impl Fake {
    /// `azure_keyvault.py`: HTTPS with its own test CA.
    pub async fn azure() -> Fake {
        Self::start("azure_keyvault.py", "Azure Key Vault").await
    }

    /// `gcp_kms.py`: plain HTTP.
    pub async fn gcp() -> Fake {
        Self::start("gcp_kms.py", "Cloud KMS").await
    }

    async fn start(script: &str, what: &str) -> Fake {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fakes")
            .join(script);
        let needs = "Python's `cryptography` package";
        let (child, dir, url) =
            start_script(&script, &[], &format!("the {what} fake"), needs).await;
        Fake { child, dir, url }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The variables of the fake's `env` file (`AZURE_*`, `SSL_CERT_FILE`;
    /// `GOOGLE_APPLICATION_CREDENTIALS`, `GCE_METADATA_HOST`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_file("env")
    }

    /// The variables of one of the fake's env files.
    pub fn env_file(&self, name: &str) -> Vec<(&'static str, String)> {
        let text = std::fs::read_to_string(self.path(name)).expect("the fake's env file");
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

    /// The Azure backend as a YAML flow map, `extra` fields added.
    pub fn azure_backend(&self, extra: &str) -> String {
        format!("{{ type: azure, vault_url: \"{}\"{extra} }}", self.url)
    }

    /// The GCP backend (the fake's project, location and key ring) as a
    /// YAML flow map, `extra` fields added.
    pub fn gcp_backend(&self, extra: &str) -> String {
        format!(
            "{{ type: gcp, project: fake-project, location: global, key_ring: fake-ring, endpoint: \"{}\"{extra} }}",
            self.url
        )
    }

    /// curl, trusting the fake's CA where it has one.
    fn curl(&self) -> tokio::process::Command {
        let mut curl = tokio::process::Command::new("curl");
        curl.arg("-sS");
        if self.path("ca.pem").exists() {
            curl.arg("--cacert").arg(self.path("ca.pem"));
        }
        curl
    }

    /// Calls the fake's admin API (`/_fake/…`): the JSON answer.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let mut curl = self.curl();
        curl.arg("--fail-with-body")
            .args(["-X", method, "-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{}/_fake/{path}", self.url));
        answer(curl, &format!("{method} /_fake/{path}")).await
    }

    /// Calls the faked service's own API (`path` with its query) as an
    /// operator's tooling does, with a bearer `token` and a JSON `body`
    /// (none when null): the JSON answer, which must be a success.
    pub async fn call_api(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let mut curl = self.curl();
        curl.args(["--fail-with-body", "-X", method, "-H"])
            .arg(format!("authorization: Bearer {token}"));
        if !body.is_null() {
            curl.args(["-H", "content-type: application/json", "-d"])
                .arg(body.to_string());
        }
        curl.arg(format!("{}{path}", self.url));
        answer(curl, &format!("{method} {path}")).await
    }

    /// An access token for the Azure fake's vault, from the client-secret
    /// grant of its Entra ID endpoint ("Microsoft identity platform and the
    /// OAuth 2.0 client credentials flow"), for [`Self::call_api`].
    pub async fn azure_access_token(&self) -> String {
        let env: std::collections::HashMap<_, _> = self.env().into_iter().collect();
        let secret = std::fs::read_to_string(self.path("client-secret")).expect("client-secret");
        // The vault's resource: its host without the first label.
        let host = self
            .url
            .trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap_or_default();
        let resource = host.split_once('.').map_or(host, |(_, rest)| rest);
        let mut curl = self.curl();
        curl.args(["--fail-with-body", "-X", "POST"])
            .args(["--data-urlencode", "grant_type=client_credentials"])
            .arg("--data-urlencode")
            .arg(format!("client_id={}", env["AZURE_CLIENT_ID"]))
            .arg("--data-urlencode")
            .arg(format!("client_secret={}", secret.trim()))
            .arg("--data-urlencode")
            .arg(format!("scope=https://{resource}/.default"))
            .arg(format!(
                "{}/{}/oauth2/v2.0/token",
                self.url, env["AZURE_TENANT_ID"]
            ));
        access_token(curl, "Entra ID token").await
    }

    /// An access token from the GCP fake's metadata server ("Query VM
    /// metadata": `instance/service-accounts/default/token`), for
    /// [`Self::call_api`].
    pub async fn gcp_access_token(&self) -> String {
        let mut curl = self.curl();
        curl.args(["--fail-with-body", "-H", "Metadata-Flavor: Google"])
            .arg(format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/token",
                self.url
            ));
        access_token(curl, "metadata server token").await
    }

    /// Creates a key (Azure: `kty`, `crv`/`key_size`, `key_ops` as Key
    /// Vault takes them; GCP: `purpose`, `algorithm`): the fake's answer.
    pub async fn create_key(&self, name: &str, spec: Value) -> Value {
        let mut body = spec;
        body["name"] = name.into();
        self.admin("POST", "keys", body).await
    }

    /// A new Azure federated token (`ttl` seconds; negative: already
    /// expired).
    pub async fn federated_token(&self, ttl: i64) -> String {
        let answer = self
            .admin("POST", "federated-token", serde_json::json!({"ttl": ttl}))
            .await;
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// A federated token for another audience.
    pub async fn federated_token_for(&self, ttl: i64, aud: &str) -> String {
        let body = serde_json::json!({"ttl": ttl, "aud": aud});
        let answer = self.admin("POST", "federated-token", body).await;
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// Revokes every access token the fake has issued.
    pub async fn revoke_access_tokens(&self) {
        self.admin("POST", "revoke", serde_json::json!({})).await;
    }

    /// The fake's counters (`token_requests`, `keyvault_requests`, …).
    pub async fn stats(&self) -> Value {
        let out = self
            .curl()
            .arg(format!("{}/_fake/stats", self.url))
            .output()
            .await
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("stats are JSON")
    }
}

/// Starts `python3 SCRIPT ARGS… --dir DIR` and waits for it to write `DIR/url`:
/// the process, DIR (its log is `fake.log`) and the URL. Fails naming
/// `needs` (which `make test` installs) if the script exits first.
pub(super) async fn start_script(
    script: &Path,
    args: &[&Path],
    what: &str,
    needs: &str,
) -> (Child, TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("fake.log");
    let log = std::fs::File::create(&log_path).expect("fake log");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start python3 ({e})"));
    let url_file = dir.path().join("url");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(url) = std::fs::read_to_string(&url_file) {
            return (child, dir, url.trim().to_owned());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}): it needs {needs} (`make test` installs it with pip); its log:\n{}",
                read_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start in 30s; its log:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `access_token` of a token endpoint's answer (`what` names it).
async fn access_token(curl: tokio::process::Command, what: &str) -> String {
    let answer = answer(curl, what).await;
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no access token: {answer}"))
        .to_owned()
}

/// The JSON answer of `curl` (null if it is not JSON), which must have
/// succeeded: else a panic naming the request (`what`) and what came back.
async fn answer(mut curl: tokio::process::Command, what: &str) -> Value {
    let out = curl.output().await.expect("curl (`make test` installs it)");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}
