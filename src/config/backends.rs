//! `backends.*`: one config type per KMS, selected by `type`, and the
//! resilience settings every backend takes.

use super::{Duration, Resilience, WithResilience};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One backend (a KMS and how to reach it), selected by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// Software keys in a local directory (development, tests).
    Local(WithResilience<LocalBackend>),
    /// AWS KMS.
    Aws(WithResilience<AwsBackendConfig>),
    /// HashiCorp Vault or OpenBao transit.
    Vault(WithResilience<VaultBackendConfig>),
    /// Azure Key Vault or Managed HSM.
    Azure(WithResilience<AzureBackendConfig>),
    /// Google Cloud KMS.
    Gcp(WithResilience<GcpBackendConfig>),
    /// A PKCS#11 token (an HSM, SoftHSM2).
    Pkcs11(WithResilience<Pkcs11BackendConfig>),
}

impl BackendConfig {
    /// The per-call timeout (unset: `limits.backend_timeout`), retries and
    /// circuit breaker every backend takes.
    pub fn resilience(&self) -> &Resilience {
        match self {
            BackendConfig::Local(c) => &c.resilience,
            BackendConfig::Aws(c) => &c.resilience,
            BackendConfig::Vault(c) => &c.resilience,
            BackendConfig::Azure(c) => &c.resilience,
            BackendConfig::Gcp(c) => &c.resilience,
            BackendConfig::Pkcs11(c) => &c.resilience,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Local(_) => "local",
            BackendConfig::Aws(_) => "aws",
            BackendConfig::Vault(_) => "vault",
            BackendConfig::Azure(_) => "azure",
            BackendConfig::Gcp(_) => "gcp",
            BackendConfig::Pkcs11(_) => "pkcs11",
        }
    }
}

/// `type: local`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBackend {
    /// Directory of key files (created 0700; files 0600).
    pub dir: PathBuf,
}

/// `type: aws`. Credentials come from the AWS default chain (IRSA web
/// identity, EKS Pod Identity, environment), never from this file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
}

/// `type: vault`: HashiCorp Vault or OpenBao, transit secrets engine.
/// `address`, `namespace` and `ca_file` default to `$VAULT_ADDR`,
/// `$VAULT_NAMESPACE` and `$VAULT_CACERT`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
}

/// `type: azure`: Azure Key Vault or Managed HSM. Credentials come from the
/// platform (workload identity's projected token, managed identity, or a
/// client secret in a file or `$AZURE_CLIENT_SECRET`), never from this file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBackendConfig {
    /// `https://NAME.vault.azure.net` or `https://NAME.managedhsm.azure.net`.
    pub vault_url: String,
    /// How the sidecar gets its Entra ID access token.
    #[serde(default)]
    pub credential: AzureCredential,
    /// Directory (tenant) id; default `$AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Application (client) id, or a user-assigned managed identity's client
    /// id; default `$AZURE_CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Microsoft Entra authority (sovereign clouds, tests); default
    /// `$AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    /// `workload_identity`: the projected service-account token; default
    /// `$AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `client_secret`: a file holding the secret (re-read at every token
    /// request); default `$AZURE_CLIENT_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The token scope; default the vault's resource, `https://` + the
    /// vault URL's host without its first label + `/.default`
    /// (`https://vault.azure.net/.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// When the access token is refreshed: at 70 % of its remaining
    /// lifetime, within these bounds.
    #[serde(default)]
    pub credential_refresh: RefreshBounds,
}

/// `type: gcp`: Google Cloud KMS. Credentials come from the platform
/// (Application Default Credentials: workload identity federation's
/// external-account file, the GKE metadata server), never from this file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcpBackendConfig {
    pub project: String,
    pub location: String,
    /// The key ring of the keys named by their CryptoKey id; keys given as
    /// full resource names (`projects/…/cryptoKeys/K`) need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ring: Option<String>,
    /// Cloud KMS endpoint (private service connect, tests); default
    /// `https://cloudkms.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// STS endpoint of workload identity federation, replacing the
    /// external-account file's `token_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// Where the access token comes from; default Application Default
    /// Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, else the metadata
    /// server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<GcpCredentials>,
    /// The credentials file of `external_account` and `file`; default
    /// `$GOOGLE_APPLICATION_CREDENTIALS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

/// `type: pkcs11`: a token of a PKCS#11 module (an HSM vendor's library,
/// SoftHSM2), loaded at run time. The user PIN comes from a file or an
/// environment variable, never from this file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11BackendConfig {
    /// Path of the vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, not a slot id: slot ids
    /// change when tokens are added or removed).
    pub token_label: String,
    /// A file holding the user PIN, re-read at every login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// Sessions open on the token (and threads calling the module): at most
    /// this many calls run at once.
    #[serde(default = "default_pkcs11_sessions")]
    pub sessions: u16,
}

fn default_pkcs11_sessions() -> u16 {
    4
}

/// How a key of a `pkcs11` backend names its objects: `LABEL` (every
/// object with that `CKA_LABEL`, one version per `CKA_ID`), `LABEL/ID` (the
/// one object with that label and that `CKA_ID` in hex: a pinned version),
/// or `/ID` (the object with that `CKA_ID`, whatever its label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11KeyRef {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
}

impl Pkcs11KeyRef {
    pub fn parse(key: &str) -> Result<Self, String> {
        let (label, id) = match key.rsplit_once('/') {
            Some((label, id)) => {
                let id = hex::decode(id)
                    .ok()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "`{key}`: after the `/` comes the object's CKA_ID in hex (LABEL/0a1b)"
                        )
                    })?;
                (label, Some(id))
            }
            None => (key, None),
        };
        if label.is_empty() && id.is_none() {
            return Err(
                "name the object by its label (LABEL), label and id (LABEL/0a1b) or id (/0a1b)"
                    .into(),
            );
        }
        Ok(Self {
            label: (!label.is_empty()).then(|| label.to_owned()),
            id,
        })
    }
}

/// Where the GCP backend's access token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcpCredentials {
    /// Workload identity federation: an external-account file (the
    /// projected token exchanged at STS, optionally impersonating a service
    /// account).
    ExternalAccount,
    /// The metadata server (GKE workload identity, GCE).
    Metadata,
    /// A credentials file of any type the client library reads
    /// (external account, service account key).
    File,
}

/// How the Azure backend authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureCredential {
    /// Azure Workload Identity: the pod's projected service-account token
    /// exchanged for an access token (federated identity credential).
    #[default]
    WorkloadIdentity,
    /// The managed identity of the node or App Service (IMDS, or
    /// `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`).
    ManagedIdentity,
    /// An app registration's client secret.
    ClientSecret,
}

fn default_transit_mount() -> String {
    "transit".into()
}

/// How the sidecar gets its Vault token, selected by `method`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTokenAuth {
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAppRoleAuth {
    /// Mount path of the auth method; default `approle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// The audience the Vault role expects (its `audience`, or a
    /// `bound_audiences` entry for `jwt`): the token's `aud` is checked
    /// against it at start and while running. Unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// The pod's own service-account token, `kubernetes` auth's default.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Retries of retryable backend failures (unreachable, throttled, timed out,
/// 5xx), with exponential backoff and ±20 % jitter.
#[derive(Debug, Clone, PartialEq, Copy, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Copy, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Copy, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRole {
    pub role_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
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

/// Why an Azure `vault_url` cannot be used: it must be an `https://` URL of
/// a host (`https://NAME.vault.azure.net`), with no path beyond `/`.
pub fn check_azure_vault_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "`{url}` is not an https:// URL (https://NAME.vault.azure.net)"
        ));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`{url}` must be the vault's URL alone, like https://NAME.vault.azure.net"
        ));
    }
    Ok(())
}
