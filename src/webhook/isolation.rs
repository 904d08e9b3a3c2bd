//! Whether a pod's containers, injected, could reach into the sidecar
//! (SPEC §11): a shared process namespace, the sidecar's own volumes, its
//! uid; with a socket per container, another container's socket. Pure, used
//! on creation, on reinvocation ([`super::mutate`]) and for ephemeral
//! containers ([`super::ephemeral`]).

use super::config::Config;
use super::mutate::{CONTAINER, PRIVATE_VOLUMES, Refusal};
use super::sockets;
use k8s_openapi::api::core::v1::{PodSpec, SecurityContext, VolumeMount};

/// Refuses a pod whose containers, injected, could reach into the sidecar:
/// a shared process namespace, a container (other than the sidecar) mounting
/// the sidecar's own volumes or running as its uid (its own `runAsUser`,
/// else the pod's); in per-container mode, one mounting a socket not its
/// own. On OpenShift the platform gives every container the sidecar's uid:
/// no uid is compared. In either mode `hostPID` is refused: it would expose
/// the sidecar's memory, or another container's socket, to a process of the
/// same uid.
pub(crate) fn check_isolation(
    spec: &PodSpec,
    config: &Config,
    per_container: bool,
) -> Result<(), Refusal> {
    if spec.share_process_namespace == Some(true) {
        return Err(Refusal::SharedProcessNamespace);
    }
    if (config.openshift || per_container) && spec.host_pid == Some(true) {
        return Err(Refusal::HostPid);
    }
    let lists = [
        ("containers", &spec.containers[..]),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            if c.name == CONTAINER {
                continue;
            }
            let container = || format!("spec.{list}[{i}]");
            if let Some(volume) = private_mount(c.volume_mounts.as_deref()) {
                return Err(Refusal::PrivateMount {
                    container: container(),
                    volume,
                });
            }
            let mounts = c.volume_mounts.as_deref().unwrap_or_default();
            if let Some(volume) = per_container
                .then(|| sockets::foreign_socket(c, mounts))
                .flatten()
            {
                return Err(Refusal::ForeignSocket {
                    container: container(),
                    volume: volume.to_owned(),
                });
            }
            if let Some((uid, set_in)) = run_as_user(c.security_context.as_ref(), spec)
                && !config.openshift
                && uid == config.run_as_user
            {
                return Err(Refusal::SidecarUid {
                    container: container(),
                    uid,
                    set_in,
                });
            }
        }
    }
    Ok(())
}

/// The first of the sidecar's own volumes that `mounts` mounts.
pub(crate) fn private_mount(mounts: Option<&[VolumeMount]>) -> Option<&'static str> {
    mounts
        .into_iter()
        .flatten()
        .find_map(|m| PRIVATE_VOLUMES.into_iter().find(|&ours| m.name == ours))
}

/// The uid a container declares it runs as, and where that is set: its own
/// `securityContext`, else the pod's. `None` when neither says (the image's
/// user then applies, which the webhook cannot see).
pub(crate) fn run_as_user(
    container: Option<&SecurityContext>,
    spec: &PodSpec,
) -> Option<(i64, &'static str)> {
    let pod = spec.security_context.as_ref().and_then(|sc| sc.run_as_user);
    match container.and_then(|sc| sc.run_as_user) {
        Some(uid) => Some((uid, "its securityContext")),
        None => pod.map(|uid| (uid, "the pod's securityContext")),
    }
}
