//! The Vault-transit-compatible API (`compat.vault_transit`), driven by
//! clients nobody here wrote: the apps of `tests/clients/` (Go's
//! vault/api, hvac, node-vault, Spring Vault) and the `bao` CLI. Each runs
//! the scenario of `tests/clients/README.md` against a real OpenBao (which
//! proves the app right about Vault) and against the sidecar, over the
//! `local` backend and over the `vault` backend (OpenBao behind the
//! sidecar). The shared set-up is here.

use crate::harness::{Bao, Sidecar, free_port};
use serde_json::json;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

/// The scenario's steps, in order (`tests/clients/README.md`).
pub const STEPS: [&str; 10] = [
    "encrypt-decrypt",
    "batch",
    "sign-verify-ecdsa",
    "sign-verify-rsa-pss",
    "sign-verify-rsa-pkcs1v15",
    "hmac",
    "datakey",
    "rotate-rewrap",
    "read-key",
    "denied",
];

/// The scenario's keys: (name, transit type, kms-sidecar algorithm). The
/// last one, `secret`, is the one the app may not use.
pub const KEYS: [(&str, &str, &str); 5] = [
    ("aes", "aes256-gcm96", "aes-256-gcm"),
    ("ec", "ecdsa-p256", "ecdsa-p256-sha256"),
    ("rsa", "rsa-2048", "rsa-pss-2048-sha256"),
    ("mac", "hmac", "hmac-sha256"),
    ("secret", "aes256-gcm96", "aes-256-gcm"),
];

/// What the apps talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A real OpenBao, with a token whose policy leaves out `secret`.
    OpenBao,
    /// The sidecar with the `local` backend.
    Local,
    /// The sidecar with the `vault` backend (OpenBao behind it).
    Vault,
}

/// A running target: the sidecar (with `compat.vault_transit` on, its
/// socket and its loopback TCP listener) or OpenBao alone.
pub struct Running {
    pub target: Target,
    pub sidecar: Option<Sidecar>,
    pub bao: Option<Bao>,
    /// The sidecar's `listen.tcp` port.
    tcp: u16,
    /// The token the app sends: OpenBao's restricted one, or any string.
    token: String,
}

impl Running {
    pub async fn start(target: Target) -> Running {
        match target {
            Target::OpenBao => {
                let bao = Bao::start().await;
                transit_keys(&bao).await;
                let token = app_token(&bao).await;
                Running {
                    target,
                    sidecar: None,
                    bao: Some(bao),
                    tcp: 0,
                    token,
                }
            }
            Target::Local => {
                let tcp = free_port();
                let keys: String = KEYS
                    .iter()
                    .map(|(name, _, algorithm)| {
                        format!("  {name}: {{ backend: dev, key: {name}, algorithm: {algorithm}, ops: [\"*\"] }}\n")
                    })
                    .collect();
                let config = format!(
                    "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n{keys}{}",
                    sidecar_rest(tcp)
                );
                Self::sidecar(target, None, &config, tcp).await
            }
            Target::Vault => {
                let bao = Bao::start().await;
                transit_keys(&bao).await;
                let tcp = free_port();
                let keys: String = KEYS
                    .iter()
                    .map(|(name, _, _)| {
                        format!("  {name}: {{ backend: vault, key: {name}, ops: [\"*\"] }}\n")
                    })
                    .collect();
                let config = format!(
                    "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\nkeys:\n{keys}{}",
                    bao.url,
                    bao.root_token_file().display(),
                    sidecar_rest(tcp)
                );
                Self::sidecar(target, Some(bao), &config, tcp).await
            }
        }
    }

    async fn sidecar(target: Target, bao: Option<Bao>, config: &str, tcp: u16) -> Running {
        let sidecar = Sidecar::start(config).await;
        sidecar
            .ready_within(std::time::Duration::from_secs(20))
            .await;
        Running {
            target,
            sidecar: Some(sidecar),
            bao,
            tcp,
            token: "ignored-by-kms-sidecar".into(),
        }
    }

    /// `VAULT_ADDR` over the Unix socket (`unix:///…`); OpenBao's HTTP
    /// address for [`Target::OpenBao`].
    pub fn unix_addr(&self) -> String {
        match &self.sidecar {
            Some(s) => format!("unix://{}", s.socket.display()),
            None => self.bao.as_ref().expect("OpenBao runs").url.clone(),
        }
    }

    /// `VAULT_ADDR` over the sidecar's loopback TCP listener; OpenBao's
    /// HTTP address for [`Target::OpenBao`].
    pub fn tcp_addr(&self) -> String {
        match &self.sidecar {
            Some(_) => format!("http://127.0.0.1:{}", self.tcp),
            None => self.bao.as_ref().expect("OpenBao runs").url.clone(),
        }
    }

    /// The environment of an app of `tests/clients/` reaching `addr`.
    pub fn client_env(&self, addr: &str) -> Vec<(String, String)> {
        vec![
            ("VAULT_ADDR".into(), addr.into()),
            ("VAULT_TOKEN".into(), self.token.clone()),
            ("TRANSIT_MOUNT".into(), "transit".into()),
        ]
    }
}

/// The sidecar's config after its backends and keys: the app's caller rule
/// (every key but `secret`, every op), the transit API and the TCP listener.
fn sidecar_rest(tcp: u16) -> String {
    let keys: Vec<&str> = KEYS
        .iter()
        .map(|k| k.0)
        .filter(|k| *k != "secret")
        .collect();
    format!(
        "callers:\n  - {{ uids: [{}], keys: {keys:?}, ops: [\"*\"] }}\nlisten:\n  tcp: 127.0.0.1:{tcp}\ncompat:\n  vault_transit:\n    enabled: true\n",
        nix::unistd::geteuid().as_raw()
    )
}

/// Transit mounted at `transit` with the scenario's keys.
async fn transit_keys(bao: &Bao) {
    bao.api("POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    for (name, kind, _) in KEYS {
        let mut body = json!({"type": kind});
        if kind == "hmac" {
            body["key_size"] = 32.into();
        }
        bao.api("POST", &format!("transit/keys/{name}"), body).await;
    }
}

/// A token whose policy allows the scenario on every key but `secret`.
async fn app_token(bao: &Bao) -> String {
    let paths: String = KEYS
        .iter()
        .map(|k| k.0)
        .filter(|k| *k != "secret")
        .flat_map(|k| {
            [
                format!("path \"transit/+/{k}\" {{ capabilities = [\"create\", \"update\", \"read\"] }}\n"),
                format!("path \"transit/+/{k}/*\" {{ capabilities = [\"create\", \"update\"] }}\n"),
                format!("path \"transit/+/+/{k}\" {{ capabilities = [\"create\", \"update\"] }}\n"),
                format!("path \"transit/keys/{k}/rotate\" {{ capabilities = [\"update\"] }}\n"),
            ]
        })
        .collect();
    bao.api(
        "PUT",
        "sys/policies/acl/app",
        json!({ "policy": format!("{paths}path \"transit/keys\" {{ capabilities = [\"list\"] }}\n") }),
    )
    .await;
    let created = bao
        .api("POST", "auth/token/create", json!({"policies": ["app"]}))
        .await;
    created["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// Where `tests/clients/install.sh` (run by `make test-deps`) puts the
/// client apps: `$CLIENTS_CACHE`, or the user's cache.
pub fn clients_cache() -> PathBuf {
    if let Ok(dir) = std::env::var("CLIENTS_CACHE") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache"));
    cache.join("kms-sidecar/clients")
}

/// `client`'s installed app at `path` under [`clients_cache`], or a failed
/// test saying how to install it.
pub fn installed(client: &str, path: &str) -> PathBuf {
    let at = clients_cache().join(client).join(path);
    assert!(
        at.exists(),
        "the {client} client app is not installed at {}: run `make test-deps` (tests/clients/install.sh)",
        at.display()
    );
    at
}

/// Checks that the cached copies of an app's sources (`(in the cache, in
/// tests/clients/<client>/)`, where its install.sh put them) are the
/// tree's: an app built from other sources fails with the install hint.
pub fn built_from_tree(client: &str, files: &[(&str, &str)]) {
    for (cached, tree) in files {
        let cached = installed(client, cached);
        let tree = format!(
            "{}/tests/clients/{client}/{tree}",
            env!("CARGO_MANIFEST_DIR")
        );
        assert!(
            std::fs::read(&cached).ok() == std::fs::read(&tree).ok(),
            "{} is not {tree}: run `make test-deps` (tests/clients/install.sh)",
            cached.display()
        );
    }
}

/// Runs `app` (`name` in messages) with the contract's environment for
/// `addr` and none of the test's own `VAULT_*`/`BAO_*` (the clients read
/// VAULT_CACERT, VAULT_NAMESPACE, …), for at most 120 s, and checks that
/// it ran the whole scenario.
pub async fn run_app(name: &str, running: &Running, addr: &str, mut app: Command) {
    let theirs = |k: &String| k.starts_with("VAULT_") || k.starts_with("BAO_");
    for (k, _) in std::env::vars().filter(|(k, _)| theirs(k)) {
        app.env_remove(k);
    }
    let run = app
        .envs(running.client_env(addr))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("{name} did not end within 120 s"))
        .unwrap_or_else(|e| panic!("{name} does not run: {e}"));
    passed(name, running.target, &out);
}

/// Checks an app's run: exit 0, and `ok: <step>` printed for every step
/// of the scenario, in order.
#[track_caller]
fn passed(client: &str, target: Target, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{client} against {target:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let done: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok: "))
        .collect();
    assert_eq!(
        done, STEPS,
        "{client} against {target:?}: not every step ran:\n{stdout}\n{stderr}"
    );
}

mod api;
mod bao;
mod go;
mod hvac;
mod java;
mod node;
