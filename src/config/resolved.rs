//! What each backend's config resolves to together with the environment
//! the platform sets (`VAULT_ADDR`, `AZURE_TENANT_ID`, IRSA's
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, …): the one place that knows each
//! backend's defaults from the environment and its rules for finding its
//! projected identity token and the audiences the KMS accepts. Backends are
//! built from these values, the identity checks look at these tokens, and
//! `config check` prints them. Secrets are never resolved here: only where
//! they come from ([`SecretFrom`]); their values are read where they are
//! used, through the same [`Env`].

use super::{AwsBackendConfig, AzureBackendConfig, GcpBackendConfig, VaultAuth};
use super::{AzureCredential, BackendConfig, Env, GcpCredentials, SERVICE_ACCOUNT_TOKEN};
use super::{Pkcs11BackendConfig, VaultBackendConfig, VaultRoleAuth};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Azure's token exchange audiences: public cloud, China, US Government.
const AZURE_AUDIENCES: [&str; 3] = [
    "api://AzureADTokenExchange",
    "api://AzureADTokenExchangeChina",
    "api://AzureADTokenExchangeUSGov",
];

/// The audience of IRSA's projected token.
const AWS_AUDIENCE: &str = "sts.amazonaws.com";

/// The session name of IRSA's web-identity exchange when
/// `AWS_ROLE_SESSION_NAME` is not set.
const AWS_SESSION_NAME: &str = "kms-sidecar";

/// A projected service-account token a backend reads, and what it must say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRule {
    pub path: PathBuf,
    /// Where the path comes from, for messages (`AWS_WEB_IDENTITY_TOKEN_FILE`).
    pub from: &'static str,
    /// Audiences the KMS side accepts (any one); empty: not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Where a secret comes from (`{file: PATH}` or `{env: VARIABLE}`); never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SecretFrom {
    /// A file, read at every use.
    File { file: PathBuf },
    /// An environment variable.
    Env { env: String },
}

/// A backend's settings as resolved with the environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Resolved {
    Local { dir: PathBuf },
    Aws(AwsResolved),
    Vault(VaultResolved),
    Azure(AzureResolved),
    Gcp(GcpResolved),
    Pkcs11(Pkcs11Resolved),
}

/// `type: aws`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwsResolved {
    pub region: String,
    /// The KMS endpoint; unset: the region's public endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// IRSA's role (`AWS_ROLE_ARN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// IRSA's session name (`AWS_ROLE_SESSION_NAME`, else `kms-sidecar`).
    pub role_session_name: String,
    /// IRSA's projected token (`AWS_WEB_IDENTITY_TOKEN_FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<TokenRule>,
    /// The role assumed on top (`assume_role.role_arn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<String>,
}

/// `type: vault`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultResolved {
    /// `address`, else `$VAULT_ADDR`; unset: the backend cannot start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `namespace`, else `$VAULT_NAMESPACE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `ca_file`, else `$VAULT_CACERT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub mount: String,
    pub auth: &'static str,
    /// The token of `kubernetes` and `jwt` auth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<TokenRule>,
    /// The files the login reads its secrets from (`token`, `approle`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<PathBuf>,
}

/// `type: azure`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AzureResolved {
    pub vault_url: String,
    pub credential: AzureCredential,
    /// `tenant_id`, else `$AZURE_TENANT_ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `client_id`, else `$AZURE_CLIENT_ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `authority_host`; unset: the SDK's (`$AZURE_AUTHORITY_HOST`, else
    /// public cloud).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    /// Workload identity's projected token (`token_file`, else
    /// `$AZURE_FEDERATED_TOKEN_FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<TokenRule>,
    /// `client_secret`: where the secret comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretFrom>,
}

/// `type: gcp`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcpResolved {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `credentials_file`, else `$GOOGLE_APPLICATION_CREDENTIALS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// An external account's projected token (`credential_source.file`)
    /// and audience, as its credentials file says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<TokenRule>,
}

/// `type: pkcs11`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pkcs11Resolved {
    pub module: PathBuf,
    pub token_label: String,
    /// Where the user PIN comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<SecretFrom>,
}

/// A variable's value, if set and not empty.
fn set(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.is_empty())
}

impl BackendConfig {
    /// This backend's settings with their defaults from `env`.
    pub fn resolve(&self, env: &dyn Env) -> Resolved {
        match self {
            BackendConfig::Local(c) => Resolved::Local { dir: c.dir.clone() },
            BackendConfig::Aws(c) => Resolved::Aws(aws(c, env)),
            BackendConfig::Vault(c) => Resolved::Vault(vault(c, env)),
            BackendConfig::Azure(c) => Resolved::Azure(azure(c, env)),
            BackendConfig::Gcp(c) => Resolved::Gcp(gcp(c, env)),
            BackendConfig::Pkcs11(c) => Resolved::Pkcs11(pkcs11(c)),
        }
    }
}

impl Resolved {
    /// The projected token the backend reads, if it reads one.
    pub fn identity_token(&self) -> Option<&TokenRule> {
        match self {
            Resolved::Aws(c) => c.identity_token.as_ref(),
            Resolved::Vault(c) => c.identity_token.as_ref(),
            Resolved::Azure(c) => c.identity_token.as_ref(),
            Resolved::Gcp(c) => c.identity_token.as_ref(),
            Resolved::Local { .. } | Resolved::Pkcs11(_) => None,
        }
    }
}

fn aws(c: &AwsBackendConfig, env: &dyn Env) -> AwsResolved {
    AwsResolved {
        region: c.region.clone(),
        endpoint: c.endpoint.clone(),
        sts_endpoint: c.sts_endpoint.clone(),
        role_arn: set(env, "AWS_ROLE_ARN"),
        role_session_name: set(env, "AWS_ROLE_SESSION_NAME")
            .unwrap_or_else(|| AWS_SESSION_NAME.into()),
        identity_token: set(env, "AWS_WEB_IDENTITY_TOKEN_FILE").map(|path| TokenRule {
            path: path.into(),
            from: "AWS_WEB_IDENTITY_TOKEN_FILE",
            audiences: vec![AWS_AUDIENCE.into()],
        }),
        assume_role: c.assume_role.as_ref().map(|r| r.role_arn.clone()),
    }
}

fn vault(c: &VaultBackendConfig, env: &dyn Env) -> VaultResolved {
    let role_token = |a: &VaultRoleAuth| TokenRule {
        path: a.token_path(),
        from: "auth.token_file",
        audiences: a.audience.iter().cloned().collect(),
    };
    let (identity_token, secret_files) = match &c.auth {
        VaultAuth::Kubernetes(a) | VaultAuth::Jwt(a) => (Some(role_token(a)), vec![]),
        VaultAuth::Token(t) => (None, vec![t.token_file.clone()]),
        VaultAuth::Approle(a) => (None, vec![a.role_id_file.clone(), a.secret_id_file.clone()]),
    };
    VaultResolved {
        address: c.address.clone().or_else(|| set(env, "VAULT_ADDR")),
        namespace: c.namespace.clone().or_else(|| set(env, "VAULT_NAMESPACE")),
        ca_file: (c.ca_file.clone()).or_else(|| set(env, "VAULT_CACERT").map(PathBuf::from)),
        mount: c.mount.trim_matches('/').to_owned(),
        auth: c.auth.method(),
        identity_token,
        secret_files,
    }
}

impl VaultRoleAuth {
    /// The token file `kubernetes` and `jwt` auth log in with: `token_file`,
    /// else the pod's own service-account token.
    pub fn token_path(&self) -> PathBuf {
        (self.token_file.clone()).unwrap_or_else(|| SERVICE_ACCOUNT_TOKEN.into())
    }
}

fn azure(c: &AzureBackendConfig, env: &dyn Env) -> AzureResolved {
    let identity_token = match c.credential {
        AzureCredential::WorkloadIdentity => match &c.token_file {
            Some(path) => Some((path.clone(), "token_file")),
            None => set(env, "AZURE_FEDERATED_TOKEN_FILE")
                .map(|p| (p.into(), "AZURE_FEDERATED_TOKEN_FILE")),
        },
        _ => None,
    }
    .map(|(path, from)| TokenRule {
        path,
        from,
        audiences: AZURE_AUDIENCES.map(String::from).to_vec(),
    });
    let client_secret = match (&c.client_secret_file, c.credential) {
        (_, AzureCredential::WorkloadIdentity | AzureCredential::ManagedIdentity) => None,
        (Some(file), _) => Some(SecretFrom::File { file: file.clone() }),
        (None, _) => set(env, "AZURE_CLIENT_SECRET").map(|_| SecretFrom::Env {
            env: "AZURE_CLIENT_SECRET".into(),
        }),
    };
    AzureResolved {
        vault_url: c.vault_url.clone(),
        credential: c.credential,
        tenant_id: c.tenant_id.clone().or_else(|| set(env, "AZURE_TENANT_ID")),
        client_id: c.client_id.clone().or_else(|| set(env, "AZURE_CLIENT_ID")),
        authority_host: c.authority_host.clone(),
        identity_token,
        client_secret,
    }
}

impl AzureCredential {
    /// The name in the config (`workload_identity`, …).
    pub fn name(self) -> &'static str {
        match self {
            AzureCredential::WorkloadIdentity => "workload_identity",
            AzureCredential::ManagedIdentity => "managed_identity",
            AzureCredential::ClientSecret => "client_secret",
        }
    }
}

fn gcp(c: &GcpBackendConfig, env: &dyn Env) -> GcpResolved {
    let credentials_file = (c.credentials_file.clone())
        .or_else(|| set(env, "GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from));
    let identity_token = match (&credentials_file, c.credentials) {
        (Some(file), None | Some(GcpCredentials::ExternalAccount | GcpCredentials::File)) => {
            external_account_token(file)
        }
        _ => None,
    };
    GcpResolved {
        endpoint: c.endpoint.clone(),
        credentials_file,
        identity_token,
    }
}

/// The projected token and audience an external-account credentials file
/// names (`credential_source.file`, `audience`); none for another kind of
/// file, or one that cannot be read now (building the backend says why).
/// Only these two fields are taken from the file.
fn external_account_token(file: &Path) -> Option<TokenRule> {
    let text = zeroize::Zeroizing::new(std::fs::read(file).ok()?);
    let account: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if account["type"] != "external_account" {
        return None;
    }
    let path = account["credential_source"]["file"].as_str()?;
    let audience = account["audience"].as_str()?;
    Some(TokenRule {
        path: path.into(),
        from: "the external account's credential_source.file",
        audiences: vec![audience.to_owned(), format!("https:{audience}")],
    })
}

fn pkcs11(c: &Pkcs11BackendConfig) -> Pkcs11Resolved {
    let pin = match (&c.pin_file, &c.pin_env) {
        (Some(file), _) => Some(SecretFrom::File { file: file.clone() }),
        (None, Some(var)) => Some(SecretFrom::Env { env: var.clone() }),
        (None, None) => None,
    };
    Pkcs11Resolved {
        module: c.module.clone(),
        token_label: c.token_label.clone(),
        pin,
    }
}

impl super::Config {
    /// Every backend's settings resolved with `env`, as the YAML comments
    /// `config check` prints after the config (so that its output is still
    /// a config that loads): endpoints, token files and their audiences,
    /// where each secret comes from — never a secret's value.
    pub fn resolved_comments(&self, env: &dyn Env) -> String {
        let backends: std::collections::BTreeMap<&str, Resolved> = (self.backends.iter())
            .map(|(name, backend)| (name.as_str(), backend.resolve(env)))
            .collect();
        let yaml =
            serde_yaml_ng::to_string(&std::collections::BTreeMap::from([("backends", backends)]))
                .expect("resolved settings always serialize");
        let mut out = String::from(
            "\n# Resolved with the environment (where secrets come from, never their values):\n",
        );
        for line in yaml.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}
