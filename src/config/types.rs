//! The config's own sections: listen, keys, callers, cache, limits, log,
//! audit, metrics, envelope, jwks, telemetry (backends are in `backends`).

use super::{ByteSize, Duration, KeyLabels, Mode, Rate, Timestamp};
use crate::crypto::Algorithm;
use crate::ops::OpOrAll;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `metrics`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// What the `key` label holds on the TCP probes listener (the socket's
    /// `/metrics`, for callers granted `metrics`, always shows aliases).
    pub key_labels: KeyLabels,
}

/// `envelope`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvelopeConfig {
    /// Until this time, `envelope/decrypt` also opens envelopes of
    /// algorithms 1 and 2 (made before data keys were bound to their
    /// purpose). Unset: refused. While set, a caller granted `datakey` can
    /// forge such envelopes; re-encrypt old envelopes, then unset it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_unbound_until: Option<Timestamp>,
}

/// `jwks`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// Keys whose JWKS the probe listener serves to anyone at
    /// `GET /.well-known/jwks.json` (public keys only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub public: Vec<String>,
}

/// `compat`: other products' APIs served beside API v1.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    pub vault_transit: VaultTransitConfig,
}

/// `compat.vault_transit`: Vault's transit API at `/v1/<mount>/…`, so that
/// apps written for Vault's clients change `VAULT_ADDR` only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultTransitConfig {
    pub enabled: bool,
    /// The mount the apps name (`transit/encrypt/…`): one or more path
    /// segments of letters, digits, `-` and `_`.
    pub mount: String,
}

impl Default for VaultTransitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mount: "transit".into(),
        }
    }
}

/// `telemetry`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OpenTelemetry traces over OTLP. Off unless an endpoint is set here
    /// or in `OTEL_EXPORTER_OTLP_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`. Each field left unset falls back to its standard
/// `OTEL_…` variable, then to the OpenTelemetry default.
#[derive(Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://otel-collector:4318`; gRPC:
    /// `http://otel-collector:4317`). For `http/protobuf`, `/v1/traces` is
    /// appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Headers sent with every export. A secret (a vendor's API key)
    /// belongs in `OTEL_EXPORTER_OTLP_HEADERS` from a Secret, not here.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The share of traces the sidecar starts that are sampled, 0 to 1
    /// (default 1). A request whose `traceparent` says whether the app
    /// sampled it follows the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Bound on one export (default 10s, `OTEL_EXPORTER_OTLP_TIMEOUT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Spans waiting for export; beyond it new spans are dropped and
    /// counted (default 2048, `OTEL_BSP_MAX_QUEUE_SIZE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
}

/// Header values may carry credentials: only their names are shown.
impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("sample_ratio", &self.sample_ratio)
            .field("timeout", &self.timeout)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`'s values).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// `audit`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

/// `data_volume`: the volume the sidecar writes to (local keys, an audit
/// log) and its size limit, as the webhook tells it in
/// `KMS_SIDECAR_DATA_VOLUME__PATH` and `KMS_SIDECAR_DATA_VOLUME__SIZE_LIMIT`.
/// An audit log inside it must fit it with its rotation:
/// `audit.max_file_size` × (`audit.max_files` + 1) at most `size_limit`. The
/// `+ 1` is room beside the rotated files for the rest of the volume (local
/// keys), a batch of lines written past `max_file_size` into a new file,
/// and a deleted file a log shipper still holds open.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataVolume {
    /// Where the volume is mounted in the sidecar container.
    pub path: PathBuf,
    /// Its size limit (the `emptyDir`'s `sizeLimit`).
    pub size_limit: ByteSize,
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

/// 8 MiB × 4 files (+ 1 of room, see [`DataVolume`]) fits the 64 MiB data
/// volume the webhook gives the sidecar.
fn default_audit_file_size() -> ByteSize {
    ByteSize(8 << 20)
}

fn default_audit_files() -> u32 {
    4
}

/// `audit.checkpoint`: a signed checkpoint line after every `every_entries`
/// lines, and at least every `every` while lines keep coming.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// A loopback TCP address serving the socket's routes, for clients that
    /// cannot dial a Unix socket (Java's HTTP clients). The caller is the
    /// uid that owns the connecting socket in the kernel's socket table
    /// (`/proc/net/tcp`, `/proc/net/tcp6`); a connection whose owner cannot
    /// be found is closed. Loopback addresses only; off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<std::net::SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// A directory with one subdirectory per app container (named after
    /// it): the sidecar serves a socket `<dir>/<name>/kms.sock` in each
    /// subdirectory present at start, and a connection on it is the
    /// container `<name>` to `callers[].containers`. The webhook mounts each
    /// container's directory in that container only
    /// (`kms-sidecar.io/socket-per-container`), so no container can open
    /// another's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_container_dir: Option<PathBuf>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/var/run/kms/kms.sock"),
            mode: Mode(0o660),
            group: None,
            probes: None,
            tcp: None,
            drain_timeout: Duration::from_secs(10),
            per_container_dir: None,
        }
    }
}

/// One key alias, as the app names it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

/// A rule granting keys × operations to callers matched by uid, gid and
/// container (every one given must match).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CallerRule {
    /// Caller uids this rule matches (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    /// Caller gids this rule matches (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gids: Vec<u32>,
    /// Containers this rule matches (any of them): the caller connected on
    /// that container's own socket (`listen.per_container_dir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Key aliases, `"*"` or a prefix pattern like `"payments-*"`.
    pub keys: Vec<String>,
    /// Operations granted, or `"*"`.
    pub ops: Vec<OpOrAll>,
}

/// `cache`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    pub public_keys: PublicKeyCache,
    pub data_keys: DataKeyCacheConfig,
    pub metadata: MetadataCache,
}

/// `cache.metadata`: how long a key's metadata (algorithm, versions,
/// rotation) is reused for listings, metadata and version checks, so that a
/// probe or a dashboard polling `GET /v1/keys` costs the KMS nothing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataCache {
    /// `0s`: asked of the KMS at every request.
    pub ttl: Duration,
}

impl Default for MetadataCache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
        }
    }
}

/// `cache.data_keys`: how long and how much one data key is reused for
/// envelope encryption (cf. the AWS Encryption SDK's caching CMM).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// How often the state of every key with cached data keys is asked of
    /// the KMS (one call per key): a key disabled, deleted or pending
    /// deletion, or a version disabled, drops the key's cached data keys.
    pub revalidate: Duration,
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
            revalidate: Duration::from_secs(30),
            max_entries: 10_000,
        }
    }
}

/// `cache.public_keys`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; larger ones get 413 before they are read.
    pub max_body: ByteSize,
    /// Most items in one batch (`sign-batch`, `encrypt-batch`, …).
    pub max_batch: usize,
    /// Items of one batch served at once (the backend's own
    /// `backend_concurrency` bounds them too).
    pub batch_concurrency: usize,
    /// Most open connections on the socket; more are closed at accept. The
    /// default fits the 64 MiB the webhook gives the sidecar, every one of
    /// them idle (about 16 KiB each).
    pub max_connections: usize,
    /// A request's headers must arrive within this time after the previous
    /// answer (or the connect): the idle timeout of connections with no
    /// request, keep-alive or never used, and of slow-header (slowloris)
    /// clients.
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
    /// Most open connections of one caller: a uid a rule names, or a gid
    /// where only rules naming gids match it (so switching uids inside the
    /// gid gains nothing); uids no rule names share a small pool instead.
    pub max_connections_per_caller: usize,
    /// Replay-guarded keys: how far `x-request-timestamp` may be off, and
    /// how long past its timestamp a nonce is remembered.
    pub replay_window: Duration,
    /// What the replay guard may hold, all callers together (128 bytes a
    /// nonce, any length): when full, guarded requests are refused with 503
    /// `overloaded` (and a caller holding half of it gets 429) until older
    /// nonces leave the window — a nonce is never forgotten early.
    pub replay_memory: ByteSize,
    /// A streamed envelope body that sends nothing for this long is cut off.
    pub stream_idle_timeout: Duration,
    /// Past its first `stream_idle_timeout`, a streamed envelope body that
    /// has come slower than this many bytes a second on average is cut off
    /// (no total deadline: a large body at a good pace may take its time).
    pub stream_min_rate: ByteSize,
}

/// `limits.per_caller`: `rate` requests per second, minute or hour
/// (`200/s`, `600/m`), in bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
            batch_concurrency: 8,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_headers: 64,
            backend_timeout: Duration::from_secs(5),
            backend_concurrency: 256,
            per_caller: None,
            max_buffered_bytes: ByteSize(32 << 20),
            max_connections_per_caller: 256,
            replay_window: Duration::from_secs(300),
            replay_memory: ByteSize(16 << 20),
            stream_idle_timeout: Duration::from_secs(30),
            stream_min_rate: ByteSize(1 << 10),
        }
    }
}

/// `log`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
