//! The sidecar's own container and volumes, as the webhook injects them
//! (SPEC §11): its command and config, startup probe on `/healthz` and
//! readiness on `/readyz`, its mounts (the socket writable, its private
//! data, the projected tokens), the environment its backends read their
//! token files from, a security context fit for OpenShift or not, and the
//! volumes they need. [`super::mutate`] decides where they go.

use super::annotations::Overrides;
use super::config::{Config, Token};
use super::mutate::*;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, ExecAction, HTTPGetAction, KeyToPath, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The sidecar's container.
pub(super) fn sidecar(o: &Overrides, config: &Config) -> Container {
    let probes = match o.probes_port {
        Some(port) => format!("0.0.0.0:{port}"),
        // No TCP listener at all (the YAML null): nothing on the node.
        None => "null".into(),
    };
    let mut envs = vec![
        env("KMS_SIDECAR_LISTEN__SOCKET", SOCKET),
        env("KMS_SIDECAR_LISTEN__MODE", &socket_mode(config)),
        env("KMS_SIDECAR_LISTEN__PROBES", &probes),
        env("KMS_SIDECAR_DATA_VOLUME__PATH", DATA_DIR),
        env("KMS_SIDECAR_DATA_VOLUME__SIZE_LIMIT", DATA_VOLUME_LIMIT),
    ];
    envs.extend(token_env(o, config));
    Container {
        name: CONTAINER.into(),
        image: Some(o.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/config.yaml"),
        ]),
        env: Some(envs),
        ports: o.probes_port.map(|port| {
            vec![ContainerPort {
                name: Some("kms-probes".into()),
                container_port: port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]
        }),
        // Started once the socket serves: the pod's other containers start
        // then, whether or not the KMS is reachable yet (a mesh's proxy
        // that is a regular container, which carries the sidecar's egress,
        // starts only after it). Readiness reports the KMS.
        startup_probe: Some(probe(o, "/healthz", 1, 60)),
        readiness_probe: Some(probe(o, "/readyz", 5, 3)),
        liveness_probe: Some(probe(o, "/healthz", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(o.requests.clone()).filter(|m| !m.is_empty()),
            limits: Some(o.limits.clone()).filter(|m| !m.is_empty()),
            ..Default::default()
        }),
        security_context: Some(security_context(config)),
        volume_mounts: Some(sidecar_mounts(o)),
        ..Default::default()
    }
}

/// A probe of the sidecar on `path`: HTTP on the probes port, or (without
/// one) the binary's `probe` command on the socket.
fn probe(o: &Overrides, path: &str, period: i32, failures: i32) -> Probe {
    let mut probe = Probe {
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    match o.probes_port {
        Some(port) => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port.into()),
                ..Default::default()
            });
        }
        None => {
            probe.exec = Some(ExecAction {
                command: Some(
                    [BINARY, "probe", "--socket", SOCKET, path]
                        .map(String::from)
                        .into(),
                ),
            });
        }
    }
    probe
}

/// The sidecar's mounts: the socket's volume (the one mount that may
/// create the socket), the config, its own directory, the tokens.
fn sidecar_mounts(o: &Overrides) -> Vec<VolumeMount> {
    let mut mounts = vec![
        // The sidecar's own mount: the one that may create the socket.
        socket_mount(SOCKET_VOLUME, false),
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
    ];
    if !o.tokens.is_empty() {
        mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    mounts
}

/// The variables that point each cloud's SDK at its projected token and
/// workload identity.
fn token_env(o: &Overrides, config: &Config) -> Vec<EnvVar> {
    let mut envs = Vec::new();
    let token_file = |t: Token| format!("{TOKEN_DIR}/{}", t.file());
    for t in &o.tokens {
        match t {
            Token::Aws => {
                envs.push(env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file(Token::Aws)));
                if let Some(arn) = &o.aws_role_arn {
                    envs.push(env("AWS_ROLE_ARN", arn));
                }
                envs.push(env("AWS_ROLE_SESSION_NAME", CONTAINER));
            }
            Token::Azure => {
                envs.push(env("AZURE_FEDERATED_TOKEN_FILE", &token_file(Token::Azure)));
                if let Some(id) = &o.azure_client_id {
                    envs.push(env("AZURE_CLIENT_ID", id));
                }
                if let Some(tenant) = &config.azure.tenant_id {
                    envs.push(env("AZURE_TENANT_ID", tenant));
                }
                envs.push(env("AZURE_AUTHORITY_HOST", &config.azure.authority_host));
            }
            Token::Gcp => envs.push(env("GOOGLE_APPLICATION_CREDENTIALS", GCP_CREDENTIALS_FILE)),
            Token::Vault => {}
        }
    }
    envs
}

/// The sidecar runs as non-root with nothing it does not need.
fn security_context(config: &Config) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        // On OpenShift the SCC assigns the uid (gid 0), from the
        // namespace's range: a fixed one would be refused.
        run_as_user: (!config.openshift).then_some(config.run_as_user),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn volumes(o: &Overrides, config: &Config) -> Vec<Volume> {
    let mut volumes = vec![
        empty_dir(SOCKET_VOLUME, "1Mi"),
        empty_dir(DATA_VOLUME, DATA_VOLUME_LIMIT),
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: o.config_map.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if !o.tokens.is_empty() {
        let expiration = i64::try_from(config.token_expiration.0.as_secs()).unwrap_or(3600);
        let mut sources: Vec<VolumeProjection> = o
            .tokens
            .iter()
            .map(|t| {
                let audience = match (t, &o.gcp) {
                    (Token::Gcp, Some((audience, _))) => Some(audience.as_str()),
                    _ => t.audience(config),
                };
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: audience.map(str::to_owned),
                        expiration_seconds: Some(expiration),
                        path: t.file().into(),
                    }),
                    ..Default::default()
                }
            })
            .collect();
        // GCP's external-account file, which names the token file above.
        if let Some((_, config_map)) = &o.gcp {
            sources.push(VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: config_map.clone(),
                    items: Some(vec![KeyToPath {
                        key: "credentials.json".into(),
                        path: "gcp-credentials.json".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                // Readable by the sidecar whatever its pod's uids and fsGroup:
                // the kubelet leaves these files owned by root unless the pod
                // has an fsGroup (then 0640, that group's, which every
                // container has) or all containers one uid (never, with the
                // sidecar's uid its own). Only the sidecar mounts this volume.
                default_mode: Some(0o444),
            }),
            ..Default::default()
        });
    }
    volumes
}

pub(crate) fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(size_limit.into())),
        }),
        ..Default::default()
    }
}

/// The socket's file mode: the webhook's, without any access for others on
/// OpenShift, where the pod's containers share group 0 with the sidecar.
pub(super) fn socket_mode(config: &Config) -> String {
    match u32::from_str_radix(&config.socket_mode, 8) {
        Ok(mode) if config.openshift => format!("{:04o}", mode & 0o7770),
        _ => config.socket_mode.clone(),
    }
}

/// A socket's volume at [`SOCKET_DIR`]: writable for the sidecar only.
pub(super) fn socket_mount(volume: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: SOCKET_DIR.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}
