//! The pod's annotations (`kms-sidecar.io/…`), validated, over the
//! webhook's defaults: what this pod's sidecar gets (config map, image,
//! resources, tokens, identity, probes port), or the [`Refusal`] naming the
//! annotation to fix.

use super::config::{Config, Token};
use super::fit;
use super::mutate::{
    AWS_ROLE_ARN, AZURE_CLIENT_ID, CONFIG, CPU_LIMIT, CPU_REQUEST, GCP_AUDIENCE, GCP_CREDENTIALS,
    IMAGE, MEMORY_LIMIT, MEMORY_REQUEST, PROBES_PORT, Refusal, TOKENS,
};
use super::quantity::{check_resource, is_below};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// The pod's annotations, validated, over the webhook's defaults.
pub(crate) struct Overrides {
    pub(crate) config_map: String,
    pub(crate) image: String,
    pub(crate) requests: BTreeMap<String, Quantity>,
    pub(crate) limits: BTreeMap<String, Quantity>,
    pub(crate) tokens: Vec<Token>,
    pub(crate) aws_role_arn: Option<String>,
    pub(crate) azure_client_id: Option<String>,
    /// With a `gcp` token: the provider's audience and the credentials
    /// ConfigMap.
    pub(crate) gcp: Option<(String, String)>,
    /// The probes' port; `None` on a `hostNetwork` pod, whose ports are the
    /// node's: probes then run the binary against the socket.
    pub(crate) probes_port: Option<u16>,
}

impl Overrides {
    pub(crate) fn read(
        a: &BTreeMap<String, String>,
        spec: &PodSpec,
        config: &Config,
    ) -> Result<Self, Refusal> {
        let config_map = match a.get(CONFIG) {
            Some(name) if !is_dns_subdomain(name) => {
                return Err(refuse(CONFIG, "not a valid ConfigMap name"));
            }
            Some(name) => name.clone(),
            None => config.config_map.clone(),
        };
        let image = match a.get(IMAGE) {
            Some(i) if !is_one_word(i) => return Err(refuse(IMAGE, "not an image reference")),
            Some(i) => i.clone(),
            None => config.image.clone(),
        };
        let (requests, limits) = resources(a, config)?;
        let tokens = match a.get(TOKENS) {
            Some(list) => Token::parse_list(list).map_err(|e| refuse(TOKENS, &e))?,
            // The tokens the default config's backends need (also for a
            // config map the webhook has not read, unless the pod names them).
            None => config.tokens.clone().unwrap_or_default(),
        };
        let gcp = match tokens.contains(&Token::Gcp) {
            true => Some(gcp(a, config)?),
            false => None,
        };
        Ok(Self {
            config_map,
            image,
            requests,
            limits,
            tokens,
            aws_role_arn: identity(a, AWS_ROLE_ARN, &config.aws.role_arn)?,
            azure_client_id: identity(a, AZURE_CLIENT_ID, &config.azure.client_id)?,
            gcp,
            probes_port: match spec.host_network {
                Some(true) => None,
                _ => Some(fit::probes_port(
                    spec,
                    a.get(PROBES_PORT),
                    config.probes_port,
                )?),
            },
        })
    }
}

/// Resource names (`cpu`, `memory`) and their quantities.
type Resources = BTreeMap<String, Quantity>;

fn refuse(annotation: &'static str, problem: &str) -> Refusal {
    Refusal::Annotation {
        annotation,
        problem: problem.into(),
    }
}

/// The sidecar's resource requests and limits: the webhook's defaults,
/// with the pod's annotations over them, each a limit at least its request.
fn resources(
    a: &BTreeMap<String, String>,
    config: &Config,
) -> Result<(Resources, Resources), Refusal> {
    let mut requests = config.resources.requests.clone();
    let mut limits = config.resources.limits.clone();
    for (resource, request_annotation, limit_annotation) in [
        ("cpu", CPU_REQUEST, CPU_LIMIT),
        ("memory", MEMORY_REQUEST, MEMORY_LIMIT),
    ] {
        for (annotation, map) in [
            (request_annotation, &mut requests),
            (limit_annotation, &mut limits),
        ] {
            if let Some(q) = a.get(annotation) {
                check_resource(resource, q).map_err(|p| refuse(annotation, p))?;
                map.insert(resource.into(), Quantity(q.clone()));
            }
        }
        // The webhook's defaults agree (checked at start): an annotation
        // broke the order, and the one to blame is the annotated side.
        if let (Some(request), Some(limit)) = (requests.get(resource), limits.get(resource))
            && is_below(limit, request)
        {
            let (annotation, problem) = if !a.contains_key(limit_annotation) {
                let default = &limit.0;
                (
                    request_annotation,
                    format!("above the webhook's default {resource} limit {default}"),
                )
            } else if !a.contains_key(request_annotation) {
                let default = &request.0;
                (
                    limit_annotation,
                    format!("below the webhook's default {resource} request {default}"),
                )
            } else {
                (
                    limit_annotation,
                    format!("below {request_annotation} (a limit is at least its request)"),
                )
            };
            return Err(refuse(annotation, &problem));
        }
    }
    Ok((requests, limits))
}

/// A workload identity (role, client id, audience): the annotation's, one
/// word, or the webhook's `default`.
fn identity(
    a: &BTreeMap<String, String>,
    annotation: &'static str,
    default: &Option<String>,
) -> Result<Option<String>, Refusal> {
    match a.get(annotation) {
        Some(v) if !is_one_word(v) => Err(refuse(annotation, "must be one word")),
        Some(v) => Ok(Some(v.clone())),
        None => Ok(default.clone()),
    }
}

/// With a `gcp` token: the workload identity provider's audience and the
/// ConfigMap with the external-account credentials file.
fn gcp(a: &BTreeMap<String, String>, config: &Config) -> Result<(String, String), Refusal> {
    let audience = identity(a, GCP_AUDIENCE, &config.gcp.audience)?.ok_or_else(|| {
        refuse(
            GCP_AUDIENCE,
            "a gcp token needs the workload identity provider's audience: set it here or in the webhook's gcp.audience",
        )
    })?;
    let config_map = match a.get(GCP_CREDENTIALS) {
        Some(name) if !is_dns_subdomain(name) => {
            return Err(refuse(GCP_CREDENTIALS, "not a valid ConfigMap name"));
        }
        Some(name) => name.clone(),
        None => config.gcp.credentials_config_map.clone(),
    };
    Ok((audience, config_map))
}

/// Non-empty, without spaces or control characters (an image reference, an
/// ARN, a client id).
fn is_one_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// RFC 1123 subdomain, as Kubernetes names objects.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
