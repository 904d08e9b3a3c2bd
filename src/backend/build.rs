//! Building the backends from config: one [`BuildContext`] per backend
//! (its settings resolved with the environment, its keys, the resilience
//! settings), typed [`BuildError`]s, and the [`resilient::Resilient`] layer
//! and identity-token checks around each built driver.

#[cfg(feature = "aws")]
use super::aws;
#[cfg(feature = "azure")]
use super::azure;
#[cfg(feature = "gcp")]
use super::gcp;
#[cfg(feature = "local")]
use super::local;
#[cfg(feature = "pkcs11")]
use super::pkcs11;
#[cfg(feature = "vault")]
use super::vault;
use super::{Backend, Backends, identity, resilient};
use crate::config::{BackendConfig, Config, Env, KeyConfig, Resilience, Resolved};
use crate::crypto::Algorithm;
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a backend could not be built: each message names the setting, file
/// or variable to fix, and never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The backend's projected identity token is there but wrong.
    #[error(transparent)]
    IdentityToken(#[from] identity::Problem),
    /// The backend type's cargo feature was not built in.
    #[error("type `{kind}` is not compiled into this build (cargo feature)")]
    NotBuilt { kind: &'static str },
    /// A setting, or the environment variable it defaults to, is missing or
    /// cannot be used (`VAULT_ADDR`, `tenant_id`, `vault_url`, the PIN's
    /// source).
    #[error("{0}")]
    Setting(String),
    /// The credentials cannot be set up (an unusable credentials file).
    #[error("{0}")]
    Credentials(String),
    /// The KMS client (or PKCS#11 module) cannot be set up.
    #[error("{0}")]
    Client(String),
    /// A configured key reference cannot be used.
    #[error("{0}")]
    Key(String),
    /// The local key directory or a key file cannot be used.
    #[cfg(feature = "local")]
    #[error(transparent)]
    Local(#[from] local::OpenError),
}

/// Why the backends could not be built from the config: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}`: {error}")]
pub struct BuildFailed {
    pub backend: String,
    #[source]
    pub error: BuildError,
}

/// What every backend is built from: its name and config, its keys, its
/// settings resolved with the environment (and the environment itself, for
/// secrets read at each use), the metrics, and the resilience settings the
/// layer around it applies (timeout resolved with `limits.backend_timeout`).
pub struct BuildContext<'a> {
    pub name: &'a str,
    pub config: &'a BackendConfig,
    /// The configured keys of this backend: alias and key config.
    pub keys: Vec<(&'a str, &'a KeyConfig)>,
    pub resolved: Resolved,
    pub env: Arc<dyn Env>,
    pub metrics: Arc<Metrics>,
    pub timeout: std::time::Duration,
    pub resilience: Resilience,
}

impl<'a> BuildContext<'a> {
    /// The context of backend `name` of `config`.
    pub fn new(
        config: &'a Config,
        name: &'a str,
        env: &Arc<dyn Env>,
        metrics: &Arc<Metrics>,
    ) -> Option<Self> {
        let backend = config.backends.get(name)?;
        let resilience = *backend.resilience();
        Some(Self {
            name,
            config: backend,
            keys: (config.keys.iter())
                .filter(|(_, k)| k.backend == name)
                .map(|(alias, k)| (alias.as_str(), k))
                .collect(),
            resolved: backend.resolve(env.as_ref()),
            env: env.clone(),
            metrics: metrics.clone(),
            timeout: resilience
                .timeout
                .unwrap_or(config.limits.backend_timeout)
                .0,
            resilience,
        })
    }

    /// The configured keys' `key` strings and algorithms (several aliases
    /// may name one key; any of them may carry the algorithm).
    pub fn key_algorithms(&self) -> Vec<(String, Option<Algorithm>)> {
        let mut wanted: BTreeMap<String, Option<Algorithm>> = BTreeMap::new();
        for (_, k) in &self.keys {
            let slot = wanted.entry(k.key.clone()).or_default();
            *slot = slot.or(k.algorithm);
        }
        wanted.into_iter().collect()
    }
}

/// Builds every configured backend, by name.
pub async fn build(
    config: &Config,
    metrics: &Arc<Metrics>,
    env: &Arc<dyn Env>,
) -> Result<Backends, BuildFailed> {
    build_after(config, metrics, env, None).await
}

/// The backends of a reloaded `config`, given what changed and the last
/// built backends: a backend [`crate::config::Changes::backend_kept`] is the
/// same `Arc` as before (credentials, circuit and sessions go on); the
/// others are built anew.
pub async fn build_after(
    config: &Config,
    metrics: &Arc<Metrics>,
    env: &Arc<dyn Env>,
    last: Option<(crate::config::Changes<'_>, &Backends)>,
) -> Result<Backends, BuildFailed> {
    let mut out = BTreeMap::new();
    for name in config.backends.keys() {
        if let Some((changes, built)) = last
            && let Some(same) = built.get(name)
            && changes.backend_kept(name)
        {
            out.insert(name.clone(), same.clone());
            continue;
        }
        let ctx = BuildContext::new(config, name, env, metrics).expect("a configured backend");
        let failed = |error| BuildFailed {
            backend: name.clone(),
            error,
        };
        let identity = (ctx.resolved.identity_token())
            .map(|rule| identity::IdentityToken::of(name, rule, metrics));
        if let Some(token) = &identity {
            token.check_at_start().map_err(|p| failed(p.into()))?;
        }
        let built = build_one(&ctx).await.map_err(failed)?;
        let wrapped = resilient::Resilient::new(
            name,
            built,
            ctx.timeout,
            ctx.resilience.retries,
            ctx.resilience.circuit,
            config.limits.backend_concurrency,
            metrics.clone(),
        )
        .with_identity(identity);
        out.insert(name.clone(), Arc::new(wrapped) as Arc<dyn Backend>);
    }
    Ok(out)
}

async fn build_one(ctx: &BuildContext<'_>) -> Result<Arc<dyn Backend>, BuildError> {
    match (ctx.config, &ctx.resolved) {
        #[cfg(feature = "local")]
        (BackendConfig::Local(c), _) => Ok(Arc::new(
            local::LocalBackend::open(&c.dir, &ctx.key_algorithms()).await?,
        )),
        #[cfg(feature = "aws")]
        (BackendConfig::Aws(c), Resolved::Aws(r)) => {
            Ok(Arc::new(aws::AwsBackend::new(ctx, c, r).await?))
        }
        #[cfg(feature = "vault")]
        (BackendConfig::Vault(c), Resolved::Vault(r)) => {
            Ok(Arc::new(vault::VaultBackend::new(ctx, c, r).await?))
        }
        #[cfg(feature = "azure")]
        (BackendConfig::Azure(c), Resolved::Azure(r)) => {
            Ok(Arc::new(azure::AzureBackend::new(ctx, c, r).await?))
        }
        #[cfg(feature = "gcp")]
        (BackendConfig::Gcp(c), Resolved::Gcp(r)) => {
            Ok(Arc::new(gcp::GcpBackend::new(ctx, c, r).await?))
        }
        #[cfg(feature = "pkcs11")]
        (BackendConfig::Pkcs11(c), Resolved::Pkcs11(r)) => {
            Ok(Arc::new(pkcs11::Pkcs11Backend::new(ctx, c, r)?))
        }
        #[allow(unreachable_patterns)]
        (other, _) => Err(BuildError::NotBuilt { kind: other.kind() }),
    }
}
