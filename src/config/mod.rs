//! Typed configuration: one YAML file plus `KMS_SIDECAR_…` environment
//! overrides, unknown fields rejected, every semantic problem reported at once
//! with its field path (SPEC §3).

mod backends;
mod changes;
mod env;
mod file;
mod resilience;
mod resolved;
mod types;
mod units;
mod validate;

pub use crate::metrics::KeyLabels;
pub use backends::*;
pub use changes::Changes;
pub use env::{Env, ProcessEnv};
pub use file::{MAX_FILE_SIZE, read_file};
pub use resilience::{Resilience, WithResilience};
pub use resolved::*;
pub use types::*;
pub use units::{ByteSize, Duration, Mode, Rate, Timestamp};

use crate::ops::OpOrAll;
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    #[serde(default)]
    pub jwks: JwksConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub compat: CompatConfig,
    /// The volume the sidecar writes to, when the webhook says (unset: the
    /// audit log's rotation is not checked against a volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolume>,
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
                let text = read_file(p)
                    .and_then(|bytes| {
                        String::from_utf8(bytes)
                            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                    })
                    .map_err(|source| Error::Read {
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
                        containers: vec![],
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

/// A container's name as Kubernetes allows it (an RFC 1123 label: at most
/// 63 lowercase letters, digits and `-`, starting and ending with a letter
/// or digit); the names of `callers[].containers` and of the directories in
/// `listen.per_container_dir`.
pub fn is_container_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests;
