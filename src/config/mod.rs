//! Typed configuration: one YAML file plus `KMS_SIDECAR_…` environment
//! overrides, unknown fields rejected, every semantic problem reported at once
//! with its field path (SPEC §3).

mod env;
mod units;

pub use crate::metrics::KeyLabels;
pub use env::{Env, ProcessEnv};
pub use units::{ByteSize, Duration, Mode, Rate, Timestamp};

use crate::crypto::Algorithm;
use crate::policy::OpOrAll;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The embedded default configuration (local software keys).
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

/// Where `serve` looks for a config file when none is given.
pub const DEFAULT_PATH: &str = "/etc/kms-sidecar/config.yaml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid YAML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: environment override {message}")]
    Env { origin: String, message: String },
    #[error("{origin}: `{path}`: {message}")]
    Field {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: {} invalid field(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// One semantic problem: the field path and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.path, self.message)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    pub backends: BTreeMap<String, BackendConfig>,
    pub keys: BTreeMap<String, KeyConfig>,
    #[serde(default)]
    pub callers: Vec<CallerRule>,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: Log,
    /// The hash-chained audit log (SPEC §9); unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub envelope: EnvelopeConfig,
}

/// `metrics`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// What the `key` label holds on the TCP probes listener (the socket's
    /// `/metrics`, for callers granted `metrics`, always shows aliases).
    pub key_labels: KeyLabels,
}

/// `envelope`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvelopeConfig {
    /// Until this time, `envelope/decrypt` also opens envelopes of
    /// algorithms 1 and 2 (made before data keys were bound to their
    /// purpose). Unset: refused. While set, a caller granted `datakey` can
    /// forge such envelopes; re-encrypt old envelopes, then unset it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_unbound_until: Option<Timestamp>,
}

/// `audit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file, appended to (created 0600); `-` writes to stdout.
    pub path: PathBuf,
    /// Sign the chain head now and then, so that a rewritten file is found too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<AuditCheckpoint>,
    /// What a request gets when its line cannot be written.
    #[serde(default)]
    pub on_failure: AuditFailure,
    /// The file is rotated (`path` → `path.1` → … ) before it grows past this;
    /// the chain continues in the new file.
    #[serde(default = "default_audit_file_size")]
    pub max_file_size: ByteSize,
    /// Files kept, the current one included; the oldest is deleted.
    #[serde(default = "default_audit_files")]
    pub max_files: u32,
}

/// `audit.on_failure`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditFailure {
    /// A request whose line cannot be written is not served: 503
    /// `audit_unavailable`, and `/readyz` says why.
    #[default]
    FailClosed,
    /// Requests are served; lost lines are logged and counted.
    FailOpen,
}

fn default_audit_file_size() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_audit_files() -> u32 {
    4
}

/// `audit.checkpoint`: a signed checkpoint line after every `every_entries`
/// lines, and at least every `every` while lines keep coming.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// The alias of a signing key (in `keys`).
    pub key: String,
    #[serde(default = "default_checkpoint_entries")]
    pub every_entries: u64,
    #[serde(default = "default_checkpoint_every")]
    pub every: Duration,
}

fn default_checkpoint_entries() -> u64 {
    1000
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(60)
}

/// `listen`: the Unix socket and the optional TCP probe listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Path of the Unix socket; created at start, removed on exit.
    pub socket: PathBuf,
    /// File mode of the socket.
    pub mode: Mode,
    /// Group (name or numeric id) that owns the socket, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// TCP address for `/healthz`, `/readyz` and `/metrics` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<std::net::SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/var/run/kms/kms.sock"),
            mode: Mode(0o660),
            group: None,
            probes: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// One backend (a KMS and how to reach it), selected by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// Software keys in a local directory (development, tests).
    Local(LocalBackend),
    /// AWS KMS.
    Aws(AwsBackendConfig),
    /// HashiCorp Vault or OpenBao transit.
    Vault(VaultBackendConfig),
}

impl BackendConfig {
    /// The per-call timeout (unset: `limits.backend_timeout`), retries and
    /// circuit breaker every backend takes.
    pub fn resilience(&self) -> (Option<Duration>, Retries, Circuit) {
        match self {
            BackendConfig::Local(c) => (c.timeout, c.retries, c.circuit),
            BackendConfig::Aws(c) => (c.timeout, c.retries, c.circuit),
            BackendConfig::Vault(c) => (c.timeout, c.retries, c.circuit),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Local(_) => "local",
            BackendConfig::Aws(_) => "aws",
            BackendConfig::Vault(_) => "vault",
        }
    }
}

/// `type: local`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBackend {
    /// Directory of key files (created 0700; files 0600).
    pub dir: PathBuf,
    /// Timeout of one backend call; default `limits.backend_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of retryable failures (SPEC §8).
    #[serde(default)]
    pub retries: Retries,
    /// The circuit breaker (SPEC §8).
    #[serde(default)]
    pub circuit: Circuit,
}

/// `type: aws`. Credentials come from the AWS default chain (IRSA web
/// identity, EKS Pod Identity, environment), never from this file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsBackendConfig {
    pub region: String,
    /// KMS endpoint override (VPC endpoint, test server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// STS endpoint (VPC endpoint, test server) for IRSA's web-identity
    /// exchange and for `assume_role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// A role to assume on top of the default credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<AssumeRole>,
    /// Regions to fail over to, in order, for multi-region keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_regions: Vec<ReplicaRegion>,
    /// When credentials are refreshed: at 70 % of their remaining lifetime,
    /// but no sooner than `min` and no later than `max` after the last refresh.
    #[serde(default)]
    pub credential_refresh: RefreshBounds,
    /// Timeout of one backend call; default `limits.backend_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of retryable failures (SPEC §8).
    #[serde(default)]
    pub retries: Retries,
    /// The circuit breaker (SPEC §8).
    #[serde(default)]
    pub circuit: Circuit,
}

/// `type: vault`: HashiCorp Vault or OpenBao, transit secrets engine.
/// `address`, `namespace` and `ca_file` default to `$VAULT_ADDR`,
/// `$VAULT_NAMESPACE` and `$VAULT_CACERT`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultBackendConfig {
    /// `https://vault:8200`; default `$VAULT_ADDR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Mount path of the transit engine.
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`); default
    /// `$VAULT_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PEM bundle of CAs to trust for Vault's certificate; default
    /// `$VAULT_CACERT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Timeout of one backend call; default `limits.backend_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of retryable failures (SPEC §8).
    #[serde(default)]
    pub retries: Retries,
    /// The circuit breaker (SPEC §8).
    #[serde(default)]
    pub circuit: Circuit,
}

fn default_transit_mount() -> String {
    "transit".into()
}

/// How the sidecar gets its Vault token, selected by `method`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum VaultAuth {
    /// A token in a file (written by an operator or another agent), re-read
    /// when it changes.
    Token(VaultTokenAuth),
    /// AppRole: role id and secret id from files.
    Approle(VaultAppRoleAuth),
    /// Kubernetes auth with the pod's projected service-account token.
    Kubernetes(VaultRoleAuth),
    /// JWT/OIDC auth with a projected service-account token (clusters whose
    /// issuer Vault trusts).
    Jwt(VaultRoleAuth),
}

impl VaultAuth {
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::Approle(_) => "approle",
            VaultAuth::Kubernetes(_) => "kubernetes",
            VaultAuth::Jwt(_) => "jwt",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTokenAuth {
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAppRoleAuth {
    /// Mount path of the auth method; default `approle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRoleAuth {
    /// Mount path of the auth method; default: the method's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The Vault role to log in as.
    pub role: String,
    /// The projected service-account token, re-read at every login. Default
    /// for `kubernetes`: the pod's own token
    /// (`/var/run/secrets/kubernetes.io/serviceaccount/token`); required for `jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Retries of retryable backend failures (unreachable, throttled, timed out,
/// 5xx), with exponential backoff and ±20 % jitter.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Attempts in all; 1 disables retries.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts once this long has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration(std::time::Duration::from_millis(50)),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

/// A circuit breaker: after `failures` consecutive failed calls the backend
/// is not called for `open_for` (requests fail fast with
/// `backend_unavailable`); then calls are let through again (half-open), and
/// `successes` consecutive successes close it, one failure opens it again.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Circuit {
    pub failures: u32,
    pub open_for: Duration,
    pub successes: u32,
}

impl Default for Circuit {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(30),
            successes: 2,
        }
    }
}

/// Bounds of a background credential refresh interval.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshBounds {
    pub min: Duration,
    pub max: Duration,
}

impl Default for RefreshBounds {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(60),
            max: Duration::from_secs(900),
        }
    }
}

/// A replica region: its name, or `{region, endpoint}` for an endpoint
/// override (VPC endpoint, test server).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ReplicaRegion {
    Name(String),
    WithEndpoint { region: String, endpoint: String },
}

impl ReplicaRegion {
    pub fn region_and_endpoint(&self) -> (String, Option<String>) {
        match self {
            ReplicaRegion::Name(r) => (r.clone(), None),
            ReplicaRegion::WithEndpoint { region, endpoint } => {
                (region.clone(), Some(endpoint.clone()))
            }
        }
    }
}

/// `assume_role` of an AWS backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRole {
    pub role_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// One key alias, as the app names it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Name of the backend (in `backends`) that holds the key.
    pub backend: String,
    /// The backend's reference for the key (local: file name in `dir`).
    pub key: String,
    /// Operations this alias allows; default: all its algorithm supports
    /// except `rotate`. `"*"` allows everything, `rotate` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpOrAll>>,
    /// Algorithm to create the key with when a local backend does not have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// After this long on one version, metadata reports `should_rotate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<Duration>,
    /// Requests for this key must carry `x-request-nonce` and
    /// `x-request-timestamp`; a nonce seen before, or a timestamp more than
    /// `limits.replay_window` off, is refused (409 `replayed_request`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay_guard: bool,
}

/// A rule granting keys × operations to callers matched by uid/gid.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CallerRule {
    /// Caller uids this rule matches (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    /// Caller gids this rule matches (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gids: Vec<u32>,
    /// Key aliases, `"*"` or a prefix pattern like `"payments-*"`.
    pub keys: Vec<String>,
    /// Operations granted, or `"*"`.
    pub ops: Vec<OpOrAll>,
}

/// `cache`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    pub public_keys: PublicKeyCache,
    pub data_keys: DataKeyCacheConfig,
}

/// `cache.data_keys`: how long and how much one data key is reused for
/// envelope encryption (cf. the AWS Encryption SDK's caching CMM).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataKeyCacheConfig {
    /// A data key is used for new messages at most this long.
    pub ttl: Duration,
    /// ... for at most this many messages,
    pub max_messages: u64,
    /// ... and at most this many plaintext bytes.
    pub max_bytes: ByteSize,
    /// A data key in use is replaced in the background this long before its
    /// `ttl`, so that requests never wait on the KMS.
    pub refresh_ahead: Duration,
    /// Most cached data keys (encrypt side and decrypt side each); the least
    /// recently used go first.
    pub max_entries: u64,
}

impl Default for DataKeyCacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_messages: 1_000_000,
            max_bytes: ByteSize(1 << 30),
            refresh_ahead: Duration::from_secs(30),
            max_entries: 10_000,
        }
    }
}

/// `cache.public_keys`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicKeyCache {
    pub ttl: Duration,
}

impl Default for PublicKeyCache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
        }
    }
}

/// `limits`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; larger ones get 413 before they are read.
    pub max_body: ByteSize,
    /// Most items in one `sign-batch`.
    pub max_batch: usize,
    /// Most open connections on the socket; more are closed at accept.
    pub max_connections: usize,
    /// A request's headers must arrive within this time after the previous
    /// answer (or the connect), so this also closes idle keep-alive
    /// connections and slow-header (slowloris) clients.
    pub header_timeout: Duration,
    /// A JSON request body must arrive within this after its headers.
    pub body_timeout: Duration,
    /// Most header fields in a request (the head as a whole is bounded by
    /// hyper's 400 KiB read buffer).
    pub max_headers: usize,
    /// Timeout of one backend call (a backend's own `timeout` wins).
    pub backend_timeout: Duration,
    /// Most calls in flight to one backend; more wait (within the timeout).
    pub backend_concurrency: usize,
    /// A token bucket per caller uid; unset: no per-caller limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<RateLimit>,
    /// Request bodies held in memory, all callers together. One caller gets
    /// at most half of it while another waits; over it a request waits up to
    /// a second, then gets 503 `overloaded`.
    pub max_buffered_bytes: ByteSize,
    /// Most open connections of one caller uid (uids no rule names share a
    /// small pool instead).
    pub max_connections_per_caller: usize,
    /// Replay-guarded keys: how far `x-request-timestamp` may be off, and
    /// how long past its timestamp a nonce is remembered.
    pub replay_window: Duration,
    /// A streamed envelope body that sends nothing for this long is cut off.
    pub stream_idle_timeout: Duration,
}

/// `limits.per_caller`: `rate` requests per second, minute or hour
/// (`200/s`, `600/m`), in bursts of up to `burst`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: ByteSize(1 << 20),
            max_batch: 64,
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_headers: 64,
            backend_timeout: Duration::from_secs(5),
            backend_concurrency: 256,
            per_caller: None,
            max_buffered_bytes: ByteSize(32 << 20),
            max_connections_per_caller: 256,
            replay_window: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// `log`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter (`info`, `kms_sidecar=debug`); `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// Log line format: JSON, human text, or JSON unless stderr is a TTY.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Where a configuration came from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("embedded default config"),
        }
    }
}

impl Config {
    /// Loads the configuration `serve` runs with: `path`, else
    /// `KMS_SIDECAR_CONFIG`, else [`DEFAULT_PATH`] if it exists, else the
    /// embedded default. Environment overrides apply in every case.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<(Config, Source), Error> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.var("KMS_SIDECAR_CONFIG").map(PathBuf::from));
        let source = match explicit {
            Some(p) => Source::File(p),
            None if Path::new(DEFAULT_PATH).exists() => Source::File(DEFAULT_PATH.into()),
            None => Source::Embedded,
        };
        let config = match &source {
            Source::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                    path: p.clone(),
                    source,
                })?;
                Config::parse(&text, &source.to_string(), env)?
            }
            Source::Embedded => {
                let mut c = Config::parse(EMBEDDED_DEFAULT, &source.to_string(), env)?;
                if c.callers.is_empty() {
                    c.callers.push(CallerRule {
                        uids: vec![nix::unistd::geteuid().as_raw()],
                        gids: vec![],
                        keys: vec!["*".into()],
                        ops: vec![OpOrAll::All],
                    });
                }
                c
            }
        };
        Ok((config, source))
    }

    /// Parses YAML text, applies overrides from `env`, and validates.
    pub fn parse(text: &str, origin: &str, env: &dyn Env) -> Result<Config, Error> {
        let mut tree: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Syntax {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
        env::apply_overrides(&mut tree, env).map_err(|message| Error::Env {
            origin: origin.to_owned(),
            message,
        })?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            Error::Field {
                origin: origin.to_owned(),
                path: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Every semantic problem of the configuration, each with its field path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| out.push(Problem { path, message });
        if self.listen.socket.as_os_str().is_empty() {
            bad("listen.socket".into(), "must be a path".into());
        }
        if self.listen.mode.0 & 0o7000 != 0 {
            bad(
                "listen.mode".into(),
                "setuid/setgid/sticky bits are not allowed".into(),
            );
        }
        if self.backends.is_empty() {
            bad("backends".into(), "at least one backend is required".into());
        }
        for name in self.backends.keys() {
            if !valid_name(name) {
                bad(format!("backends.{name}"), NAME_RULE.into());
            }
        }
        for (alias, key) in &self.keys {
            let at = |f: &str| format!("keys.{alias}.{f}");
            if !valid_name(alias) {
                bad(format!("keys.{alias}"), NAME_RULE.into());
            }
            match self.backends.get(&key.backend) {
                None => bad(
                    at("backend"),
                    format!(
                        "backend `{}` is not defined (defined: {})",
                        key.backend,
                        self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(BackendConfig::Local(_)) if !valid_name(&key.key) => {
                    bad(at("key"), format!("local key names: {NAME_RULE}"))
                }
                Some(_) => {}
            }
            if key.key.is_empty() {
                bad(at("key"), "must name the backend's key".into());
            }
            if matches!(&key.ops, Some(ops) if ops.is_empty()) {
                bad(
                    at("ops"),
                    "an empty list allows nothing; omit it for the default".into(),
                );
            }
            if key
                .ops
                .iter()
                .flatten()
                .any(|o| *o == OpOrAll::Op(crate::policy::Op::Metrics))
            {
                bad(
                    at("ops"),
                    "`metrics` is not an operation on a key; grant it in `callers`".into(),
                );
            }
        }
        for (i, rule) in self.callers.iter().enumerate() {
            if rule.uids.is_empty() && rule.gids.is_empty() {
                bad(
                    format!("callers[{i}]"),
                    "a rule needs `uids` or `gids`".into(),
                );
            }
            if rule.ops.is_empty() {
                bad(
                    format!("callers[{i}].ops"),
                    "must grant at least one operation or \"*\"".into(),
                );
            }
            for (j, pattern) in rule.keys.iter().enumerate() {
                let at = format!("callers[{i}].keys[{j}]");
                let stars = pattern.matches('*').count();
                if stars > 1 || (stars == 1 && !pattern.ends_with('*')) {
                    bad(
                        at,
                        "a pattern is an alias, \"*\", or a prefix ending in `*`".into(),
                    );
                    continue;
                }
                let matches_any = match pattern.strip_suffix('*') {
                    Some(prefix) => self.keys.keys().any(|k| k.starts_with(prefix)),
                    None => self.keys.contains_key(pattern),
                };
                if !matches_any {
                    bad(at, format!("`{pattern}` matches no key in `keys`"));
                }
            }
        }
        for (name, backend) in &self.backends {
            if let BackendConfig::Aws(aws) = backend
                && (aws.credential_refresh.min > aws.credential_refresh.max
                    || aws.credential_refresh.min.0.is_zero())
            {
                bad(
                    format!("backends.{name}.credential_refresh"),
                    "`min` must be above zero and at most `max`".into(),
                );
            }
        }
        for (name, backend) in &self.backends {
            let BackendConfig::Vault(vault) = backend else {
                continue;
            };
            let at = format!("backends.{name}");
            if let Some(address) = &vault.address
                && let Err(why) = check_vault_address(address)
            {
                bad(format!("{at}.address"), why);
            }
            if vault.mount.trim_matches('/').is_empty() {
                bad(format!("{at}.mount"), "must name the transit mount".into());
            }
            if vault.client_cert.is_some() != vault.client_key.is_some() {
                bad(
                    format!("{at}.client_cert"),
                    "`client_cert` and `client_key` go together".into(),
                );
            }
            if let VaultAuth::Jwt(jwt) = &vault.auth
                && jwt.token_file.is_none()
            {
                bad(
                    format!("{at}.auth.token_file"),
                    "the `jwt` method needs the token file to log in with".into(),
                );
            }
        }
        if let Some(cp) = self.audit.as_ref().and_then(|a| a.checkpoint.as_ref()) {
            if !self.keys.contains_key(&cp.key) {
                bad(
                    "audit.checkpoint.key".into(),
                    format!("`{}` is not a key in `keys`", cp.key),
                );
            }
            if cp.every_entries == 0 || cp.every.0.is_zero() {
                bad(
                    "audit.checkpoint".into(),
                    "`every_entries` and `every` must be above zero".into(),
                );
            }
        }
        if let Some(audit) = &self.audit {
            if audit.max_file_size.0 < 64 << 10 {
                bad(
                    "audit.max_file_size".into(),
                    "must be at least 64KiB".into(),
                );
            }
            if audit.max_files < 2 {
                bad(
                    "audit.max_files".into(),
                    "must be at least 2 (the current file and one rotated file)".into(),
                );
            }
        }
        let dk = &self.cache.data_keys;
        if dk.ttl.0 < std::time::Duration::from_millis(100) {
            bad(
                "cache.data_keys.ttl".into(),
                "must be at least 100ms".into(),
            );
        }
        if dk.refresh_ahead >= dk.ttl {
            bad(
                "cache.data_keys.refresh_ahead".into(),
                format!("must be shorter than cache.data_keys.ttl ({})", dk.ttl),
            );
        }
        for (field, value) in [
            ("max_messages", dk.max_messages),
            ("max_bytes", dk.max_bytes.0),
            ("max_entries", dk.max_entries),
        ] {
            if value == 0 {
                bad(
                    format!("cache.data_keys.{field}"),
                    "must be at least 1".into(),
                );
            }
        }
        if self.limits.max_body.0 < 1024 {
            bad("limits.max_body".into(), "must be at least 1KiB".into());
        }
        if self.limits.max_batch == 0 {
            bad("limits.max_batch".into(), "must be at least 1".into());
        }
        let l = &self.limits;
        for (field, value) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_caller", l.max_connections_per_caller),
            ("max_headers", l.max_headers),
            ("backend_concurrency", l.backend_concurrency),
        ] {
            if value == 0 {
                bad(format!("limits.{field}"), "must be at least 1".into());
            }
        }
        if l.max_buffered_bytes < l.max_body {
            bad(
                "limits.max_buffered_bytes".into(),
                format!(
                    "must be at least limits.max_body ({}), or no body of that size could be read",
                    l.max_body
                ),
            );
        }
        for (field, value) in [
            ("backend_timeout", l.backend_timeout),
            ("body_timeout", l.body_timeout),
            ("replay_window", l.replay_window),
            ("stream_idle_timeout", l.stream_idle_timeout),
        ] {
            if value.0.is_zero() {
                bad(format!("limits.{field}"), "must be above zero".into());
            }
        }
        if l.per_caller.is_some_and(|p| p.burst == 0) {
            bad(
                "limits.per_caller.burst".into(),
                "must be at least 1".into(),
            );
        }
        for (name, backend) in &self.backends {
            let (timeout, retries, circuit) = backend.resilience();
            let at = format!("backends.{name}");
            if timeout.is_some_and(|t| t.0.is_zero()) {
                bad(format!("{at}.timeout"), "must be above zero".into());
            }
            if retries.max_attempts == 0 {
                bad(
                    format!("{at}.retries.max_attempts"),
                    "must be at least 1 (1 = no retries)".into(),
                );
            }
            if retries.initial_backoff > retries.max_backoff {
                bad(
                    format!("{at}.retries.initial_backoff"),
                    "must be at most `max_backoff`".into(),
                );
            }
            if circuit.failures == 0 || circuit.successes == 0 {
                bad(
                    format!("{at}.circuit"),
                    "`failures` and `successes` must be at least 1".into(),
                );
            }
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            bad("log.level".into(), format!("not a tracing filter: {e}"));
        }
        out
    }

    /// The resolved configuration as YAML, as `config check` prints it.
    /// (The config holds no secrets: credentials come from the platform.)
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a Config always serializes")
    }
}

const NAME_RULE: &str = "names use letters, digits, `.`, `_` and `-` (at most 128)";

/// Names of keys and backends: safe in URLs, file names and metric labels.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a Vault address cannot be used: it must be an absolute `http(s)` URL.
pub fn check_vault_address(address: &str) -> Result<(), String> {
    let uri: http::Uri = address
        .parse()
        .map_err(|_| "is not a URL (like https://vault:8200)".to_owned())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err("must be an http:// or https:// URL with a host".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT, "default", &no_env()).unwrap();
        assert_eq!(c.keys.len(), 5);
        assert_eq!(c.listen.socket, PathBuf::from("./kms-sidecar.sock"));
        assert_eq!(c.listen.mode, Mode(0o660));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let text = "listen: {sockett: x}\nbackends: {}\nkeys: {}\n";
        let err = Config::parse(text, "t.yaml", &no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen") && err.contains("sockett"), "{err}");
        let text = "backends: {d: {type: local, dir: x, extra: 1}}\nkeys: {}\n";
        let err = Config::parse(text, "t.yaml", &no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_field_and_expectation() {
        let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\nlimits: {max_body: lots}\n";
        let err = Config::parse(text, "t.yaml", &no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.max_body") && err.contains("1MiB"),
            "{err}"
        );
        let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\nlisten: {drain_timeout: 5}\n";
        let err = Config::parse(text, "t.yaml", &no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen.drain_timeout") && err.contains("duration"),
            "{err}"
        );
    }

    #[test]
    fn vault_backends_parse_and_are_checked() {
        let text = r#"
backends:
  v: {type: vault, address: "https://vault:8200", namespace: team,
      auth: {method: kubernetes, role: app, token_file: /var/run/secrets/tokens/vault}}
  a: {type: vault, auth: {method: approle, role_id_file: /r, secret_id_file: /s}}
keys: {k: {backend: v, key: k}}
"#;
        let c = Config::parse(text, "t", &no_env()).unwrap();
        let BackendConfig::Vault(v) = &c.backends["v"] else {
            panic!("not vault")
        };
        assert_eq!(v.mount, "transit");
        assert_eq!(v.timeout, None);
        assert_eq!(v.retries.max_attempts, 3);
        assert!(matches!(&v.auth, VaultAuth::Kubernetes(r) if r.role == "app"));

        let text = r#"
backends:
  v: {type: vault, address: "vault:8200", mount: "/", timeout: 0s, client_cert: /c,
      auth: {method: jwt, role: app}}
  w: {type: vault, auth: {method: token, token_file: /t, role: x}}
keys: {k: {backend: v, key: k}}
"#;
        let err = Config::parse(text, "t", &no_env()).unwrap_err().to_string();
        assert!(err.contains("role"), "unknown auth field: {err}");
        let text = text.replace(
            "\n  w: {type: vault, auth: {method: token, token_file: /t, role: x}}",
            "",
        );
        let Error::Invalid { problems, .. } = Config::parse(&text, "t", &no_env()).unwrap_err()
        else {
            panic!("expected semantic problems")
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for field in [
            "backends.v.address",
            "backends.v.mount",
            "backends.v.timeout",
            "backends.v.client_cert",
            "backends.v.auth.token_file",
        ] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
backends: {d: {type: local, dir: x}}
keys:
  a: {backend: nope, key: a}
  b: {backend: d, key: "../etc"}
callers:
  - {keys: ["zzz"], ops: [sign]}
limits: {max_batch: 0}
"#;
        let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err()
        else {
            panic!("expected semantic problems")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "keys.a.backend",
                "keys.b.key",
                "callers[0]",
                "callers[0].keys[0]",
                "limits.max_batch"
            ]
        );
    }

    #[test]
    fn data_key_cache_limits_are_validated() {
        let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\ncache: {data_keys: {ttl: 1m, refresh_ahead: 2m, max_messages: 0}}\n";
        let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err()
        else {
            panic!("expected semantic problems")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cache.data_keys.refresh_ahead",
                "cache.data_keys.max_messages"
            ]
        );
        let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\ncache: {data_keys: {max_bytes: 64MiB, ttl: 10m}}\n";
        let c = Config::parse(text, "t", &no_env()).unwrap();
        assert_eq!(c.cache.data_keys.max_bytes, ByteSize(64 << 20));
        assert_eq!(
            c.cache.data_keys.refresh_ahead,
            Duration::from_secs(30),
            "defaults fill the rest"
        );
    }

    #[test]
    fn hardening_limits_are_validated() {
        let text = r#"
backends: {d: {type: local, dir: x}}
keys: {k: {backend: d, key: k, ops: [sign, metrics]}}
limits: {max_body: 2MiB, max_buffered_bytes: 1MiB, max_connections_per_caller: 0, replay_window: 0s, stream_idle_timeout: 0s}
audit: {path: /tmp/a, max_file_size: 1KiB, max_files: 1}
"#;
        let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err()
        else {
            panic!("expected semantic problems")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "keys.k.ops",
                "audit.max_file_size",
                "audit.max_files",
                "limits.max_connections_per_caller",
                "limits.max_buffered_bytes",
                "limits.replay_window",
                "limits.stream_idle_timeout",
            ]
        );
        let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\naudit: {path: /tmp/a, on_failure: fail_open}\nmetrics: {key_labels: hashed}\nenvelope: {accept_unbound_until: 2027-01-31}\n";
        let c = Config::parse(text, "t", &no_env()).unwrap();
        let audit = c.audit.as_ref().unwrap();
        assert_eq!(audit.on_failure, AuditFailure::FailOpen);
        assert_eq!(
            (audit.max_file_size, audit.max_files),
            (ByteSize(64 << 20), 4)
        );
        assert_eq!(c.metrics.key_labels, KeyLabels::Hashed);
        assert_eq!(c.limits.max_buffered_bytes, ByteSize(32 << 20));
        assert_eq!(
            c.envelope.accept_unbound_until.unwrap().to_string(),
            "2027-01-31T00:00:00Z"
        );
        assert!(Config::parse(&text.replace("hashed", "secret"), "t", &no_env()).is_err());
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let env: BTreeMap<String, String> = [
            (
                "KMS_SIDECAR_LISTEN__SOCKET".to_owned(),
                "/tmp/x.sock".to_owned(),
            ),
            ("KMS_SIDECAR_LISTEN__MODE".to_owned(), "0600".to_owned()),
        ]
        .into();
        let c = Config::parse(EMBEDDED_DEFAULT, "default", &env).unwrap();
        assert_eq!(c.listen.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.listen.mode, Mode(0o600));
        let env: BTreeMap<String, String> =
            [("KMS_SIDECAR_LISTEN__SOKET".to_owned(), "x".to_owned())].into();
        let err = Config::parse(EMBEDDED_DEFAULT, "default", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("soket"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips_through_yaml() {
        let c = Config::parse(EMBEDDED_DEFAULT, "default", &no_env()).unwrap();
        let again = Config::parse(&c.to_yaml(), "resolved", &no_env()).unwrap();
        assert_eq!(again.to_yaml(), c.to_yaml());
    }
}
