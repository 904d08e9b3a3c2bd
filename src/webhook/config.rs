//! The webhook's own config (`kms-sidecar webhook --config FILE`): what it
//! injects by default. Pods override image, resources, config map, tokens
//! and identity by annotation (see [`super::mutate`]).

use crate::config::{Duration, Log};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The sidecar image.
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The default ConfigMap with the sidecar config, in the pod's namespace.
    pub config_map: String,
    /// That config map's content as the webhook sees it (the chart mounts
    /// it): read at start to learn which tokens its backends need.
    pub sidecar_config: Option<PathBuf>,
    /// The tokens to project; default: what `sidecar_config`'s backends need.
    pub tokens: Option<Vec<Token>>,
    /// Inject a native sidecar (Kubernetes ≥ 1.29); `false` injects a
    /// regular container for older clusters.
    pub native_sidecar: bool,
    pub resources: Resources,
    /// The sidecar's TCP port for probes and metrics.
    pub probes_port: u16,
    /// The socket's file mode. The socket lives in a pod-private `emptyDir`
    /// and `callers` decides who may do what, so app containers running as
    /// any uid may connect by default.
    pub socket_mode: String,
    /// The sidecar's uid (the image's non-root user). A pod with another
    /// container running as it is refused.
    pub run_as_user: i64,
    /// Give every app container its own socket (a pod's
    /// `kms-sidecar.io/socket-per-container` annotation overrides it): the
    /// sidecar then knows which container calls, and `callers` rules may
    /// name containers ([`super::sockets`]).
    pub socket_per_container: bool,
    /// OpenShift: the sidecar gets no `runAsUser` (the SCC assigns one from
    /// the namespace's range, with gid 0) and its socket no access for
    /// others; no container is compared with the sidecar's uid, which is
    /// the pod's. `false`: decided per pod by its namespace's
    /// `openshift.io/sa.scc.uid-range` annotation ([`super::openshift`]).
    pub openshift: bool,
    /// Lifetime of projected service-account tokens (10m to 1h; the kubelet
    /// refreshes them at 80 %).
    pub token_expiration: Duration,
    /// The audience of the Vault token (the Vault role's `audience`).
    pub vault_audience: String,
    pub aws: AwsIdentity,
    pub azure: AzureIdentity,
    pub gcp: GcpIdentity,
    /// What to do with a pod the webhook cannot inject (a bad annotation, a
    /// volume named like the sidecar's: [`super::mutate::Refusal`]; a
    /// missing ConfigMap): `ignore` admits it unchanged and logs why, `fail`
    /// denies it.
    pub failure_policy: FailurePolicy,
    /// Look up, through the Kubernetes API, that `config_map` and
    /// `gcp.credentials_config_map` exist in the pod's namespace before
    /// injecting ([`super::config_maps`]): a pod without them is refused
    /// (it would wait in `ContainerCreating`). Needs get/list/watch on those
    /// ConfigMaps (the chart's ClusterRole); `false` checks nothing.
    pub check_config_maps: bool,
    /// The ports the sidecar reaches its KMS on (AWS, Azure, GCP: 443; a
    /// Vault's own port). In a pod whose mesh proxy is a regular container,
    /// which starts after the sidecar, they are added to the mesh's
    /// exclusion annotation (`traffic.sidecar.istio.io/excludeOutboundPorts`,
    /// `config.linkerd.io/skip-outbound-ports`), so that the sidecar's KMS
    /// traffic bypasses the proxy ([`super::mesh`]); empty: nothing added.
    pub kms_ports: Vec<u16>,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image: concat!(
                "ghcr.io/kms-sidecar/kms-sidecar:",
                env!("CARGO_PKG_VERSION")
            )
            .into(),
            image_pull_policy: Some("IfNotPresent".into()),
            config_map: "kms-sidecar".into(),
            sidecar_config: None,
            tokens: None,
            native_sidecar: true,
            resources: Resources::default(),
            probes_port: 9102,
            socket_mode: "0666".into(),
            run_as_user: 65532,
            socket_per_container: false,
            openshift: false,
            token_expiration: Duration(std::time::Duration::from_secs(3600)),
            vault_audience: "vault".into(),
            aws: AwsIdentity::default(),
            azure: AzureIdentity::default(),
            gcp: GcpIdentity::default(),
            failure_policy: FailurePolicy::Ignore,
            check_config_maps: true,
            kms_ports: vec![443],
            log: Log::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub requests: BTreeMap<String, Quantity>,
    pub limits: BTreeMap<String, Quantity>,
}

impl Default for Resources {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.into());
        Self {
            requests: [("cpu".into(), q("10m")), ("memory".into(), q("16Mi"))].into(),
            limits: [("memory".into(), q("64Mi"))].into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsIdentity {
    /// `AWS_ROLE_ARN` for pods without a `kms-sidecar.io/aws-role-arn` annotation.
    pub role_arn: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureIdentity {
    /// `AZURE_CLIENT_ID` for pods without a `kms-sidecar.io/azure-client-id` annotation.
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: String,
}

impl Default for AzureIdentity {
    fn default() -> Self {
        Self {
            client_id: None,
            tenant_id: None,
            authority_host: "https://login.microsoftonline.com/".into(),
        }
    }
}

/// GCP workload identity federation: the provider's audience and the
/// ConfigMap with the external-account credentials file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcpIdentity {
    /// The workload identity pool provider
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R`)
    /// for pods without a `kms-sidecar.io/gcp-audience` annotation.
    pub audience: Option<String>,
    /// The ConfigMap (in the pod's namespace) whose `credentials.json` is
    /// the external-account file, for pods without a
    /// `kms-sidecar.io/gcp-credentials` annotation.
    pub credentials_config_map: String,
}

impl Default for GcpIdentity {
    fn default() -> Self {
        Self {
            audience: None,
            credentials_config_map: "kms-sidecar-gcp".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

/// A projected service-account token the sidecar needs, one per audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Token {
    /// IRSA: audience `sts.amazonaws.com`, `AWS_WEB_IDENTITY_TOKEN_FILE`.
    Aws,
    /// Azure Workload Identity: `api://AzureADTokenExchange`, `AZURE_FEDERATED_TOKEN_FILE`.
    Azure,
    /// Vault `kubernetes`/`jwt` auth: `vault_audience`.
    Vault,
    /// GCP workload identity federation: the pool provider's audience,
    /// `GOOGLE_APPLICATION_CREDENTIALS` (the external-account file).
    Gcp,
}

impl Token {
    /// The file name under [`super::mutate::TOKEN_DIR`].
    pub fn file(self) -> &'static str {
        match self {
            Token::Aws => "aws",
            Token::Azure => "azure",
            Token::Vault => "vault",
            Token::Gcp => "gcp",
        }
    }

    /// The token's audience; GCP's is per pool provider (`None` when
    /// neither the webhook's config nor the pod names one).
    pub fn audience(self, config: &Config) -> Option<&str> {
        match self {
            Token::Aws => Some("sts.amazonaws.com"),
            Token::Azure => Some("api://AzureADTokenExchange"),
            Token::Vault => Some(&config.vault_audience),
            Token::Gcp => config.gcp.audience.as_deref(),
        }
    }

    /// `aws,vault` (or `none`), as in the `kms-sidecar.io/tokens` annotation.
    pub fn parse_list(list: &str) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let t = match word {
                "none" => continue,
                "aws" => Token::Aws,
                "azure" => Token::Azure,
                "vault" => Token::Vault,
                "gcp" => Token::Gcp,
                other => {
                    return Err(format!(
                        "unknown token `{other}` (aws, azure, gcp, vault or none)"
                    ));
                }
            };
            if !tokens.contains(&t) {
                tokens.push(t);
            }
        }
        tokens.sort();
        Ok(tokens)
    }

    /// The tokens a sidecar config's backends need: `aws` and `azure`
    /// backends their platform's token, `vault` backends logging in with
    /// `kubernetes` or `jwt` auth a Vault one. Read loosely (only
    /// `backends.*.type` and `auth.method`), so configs for backends this
    /// build lacks still count.
    pub fn needed_by(sidecar_config: &str) -> Result<Vec<Token>, String> {
        let root: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(sidecar_config).map_err(|e| format!("not valid YAML: {e}"))?;
        let mut tokens = Vec::new();
        let Some(backends) = root.get("backends").and_then(|b| b.as_mapping()) else {
            return Ok(tokens);
        };
        for backend in backends.values() {
            let t = match backend.get("type").and_then(|t| t.as_str()) {
                Some("aws") => Token::Aws,
                Some("azure") => Token::Azure,
                Some("gcp") => Token::Gcp,
                Some("vault") => match backend
                    .get("auth")
                    .and_then(|a| a.get("method"))
                    .and_then(|m| m.as_str())
                {
                    Some("kubernetes" | "jwt") => Token::Vault,
                    _ => continue,
                },
                _ => continue,
            };
            if !tokens.contains(&t) {
                tokens.push(t);
            }
        }
        tokens.sort();
        Ok(tokens)
    }
}

impl Config {
    /// Reads `path` (or the defaults without one) and the sidecar config it
    /// names; every problem is reported at once.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let mut config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Self::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
        };
        if config.tokens.is_none() {
            let tokens = match &config.sidecar_config {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| format!("sidecar_config: cannot read {}: {e}", p.display()))?;
                    Token::needed_by(&text)
                        .map_err(|e| format!("sidecar_config {}: {e}", p.display()))?
                }
                None => Vec::new(),
            };
            config.tokens = Some(tokens);
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
        };
        let mut problems = Vec::new();
        if config.image.trim().is_empty() {
            problems.push("`image`: must not be empty".to_string());
        }
        if !super::annotations::is_dns_subdomain(&config.config_map) {
            problems.push("`config_map`: not a valid ConfigMap name".into());
        }
        if !super::annotations::is_dns_subdomain(&config.gcp.credentials_config_map) {
            problems.push("`gcp.credentials_config_map`: not a valid ConfigMap name".into());
        }
        if config.probes_port == 0 {
            problems.push("`probes_port`: must not be 0".into());
        }
        let mode_ok = (3..=4).contains(&config.socket_mode.len())
            && config
                .socket_mode
                .bytes()
                .all(|b| (b'0'..=b'7').contains(&b));
        if !mode_ok {
            problems.push("`socket_mode`: expected an octal mode such as \"0660\"".into());
        }
        let expiration = config.token_expiration.0.as_secs();
        if !(600..=3600).contains(&expiration) {
            problems.push("`token_expiration`: must be between 10m and 1h".into());
        }
        for (section, map) in [
            ("requests", &config.resources.requests),
            ("limits", &config.resources.limits),
        ] {
            for (name, q) in map {
                if let Err(problem) = super::quantity::check_resource(name, &q.0) {
                    problems.push(format!("`resources.{section}.{name}`: {problem}"));
                }
            }
        }
        for (name, limit) in &config.resources.limits {
            if let Some(request) = config.resources.requests.get(name)
                && super::quantity::is_below(limit, request)
            {
                problems.push(format!(
                    "`resources.limits.{name}`: below `resources.requests.{name}`"
                ));
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_backends() {
        let yaml = r#"
backends:
  a: { type: aws, region: eu-west-1 }
  v: { type: vault, address: "https://v", auth: { method: kubernetes, role: app } }
  t: { type: vault, address: "https://v", auth: { method: token, token_file: /t } }
  z: { type: azure, vault_url: "https://z.vault.azure.net" }
  g: { type: gcp, project: p, location: global, key_ring: r }
  l: { type: local, dir: /keys }
"#;
        assert_eq!(
            Token::needed_by(yaml).unwrap(),
            vec![Token::Aws, Token::Azure, Token::Vault, Token::Gcp]
        );
        assert_eq!(Token::needed_by("listen: {}").unwrap(), vec![]);
        assert!(Token::needed_by("backends: [").is_err());
    }

    #[test]
    fn token_lists_parse() {
        assert_eq!(
            Token::parse_list("vault, aws,aws").unwrap(),
            vec![Token::Aws, Token::Vault]
        );
        assert_eq!(Token::parse_list("none").unwrap(), vec![]);
        assert_eq!(
            Token::parse_list("gcp,aws").unwrap(),
            vec![Token::Aws, Token::Gcp]
        );
        assert!(Token::parse_list("pkcs11").unwrap_err().contains("pkcs11"));
    }

    #[test]
    fn bad_configs_name_every_field() {
        let e = Config::parse(
            "image: ''\nconfig_map: Bad_Name\nsocket_mode: '999'\ntoken_expiration: 2h\nresources: { requests: { cpu: lots } }\n",
        )
        .unwrap_err();
        for field in [
            "image",
            "config_map",
            "socket_mode",
            "token_expiration",
            "resources.requests.cpu",
        ] {
            assert!(
                e.contains(&format!("`{field}`")),
                "{field} missing from {e}"
            );
        }
        assert!(Config::parse("imagee: x").unwrap_err().contains("imagee"));
        // The defaults follow the rules of annotations.
        let e = Config::parse(
            "resources: { requests: { cpu: '-1', memory: 128Mi }, limits: { cpu: 1e999, memory: 64Mi } }\n",
        )
        .unwrap_err();
        for field in [
            "`resources.requests.cpu`: must be positive",
            "`resources.limits.cpu`: must be between 1m and 64",
            "`resources.limits.memory`: below `resources.requests.memory`",
        ] {
            assert!(e.contains(field), "{field} missing from {e}");
        }
        let c = Config::parse("native_sidecar: false\nfailure_policy: fail\n").unwrap();
        assert!(!c.native_sidecar);
        assert_eq!(c.failure_policy, FailurePolicy::Fail);
    }
}
