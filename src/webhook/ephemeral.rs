//! Ephemeral containers (`kubectl debug`) added to an injected pod, through
//! the `pods/ephemeralcontainers` subresource: pure, a pod in, allowed or
//! denied out. They are never patched.
//!
//! An ephemeral container may use the socket as an app does (read-only), but
//! must not reach into the sidecar: no mount of the sidecar's own volumes
//! (its KMS tokens, its private directory), no writable mount of the
//! socket's (which could remove the socket and bind another in its place),
//! no `targetContainerName` naming the sidecar (its process namespace, and
//! through `/proc` its memory and files), no run as the sidecar's uid. A pod
//! without the sidecar is not this webhook's business and is allowed.
//!
//! With a socket per container, no ephemeral container mounts a container's
//! socket volume (it would call as that container). On OpenShift, where the
//! platform gives every container the sidecar's uid, no uid is compared (as
//! for the pod's own containers: [`super::mutate`]).

use super::config::Config;
use super::isolation;
use super::mutate::{CONTAINER, SOCKET_VOLUME};
use super::sockets;
use k8s_openapi::api::core::v1::Pod;

/// Why an ephemeral container is denied; the message names it and what to
/// change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denial {
    #[error("ephemeral container {container} mounts {volume}, which only the sidecar may mount")]
    PrivateMount {
        container: String,
        volume: &'static str,
    },
    #[error(
        "ephemeral container {container} mounts {SOCKET_VOLUME} writable: mount it with readOnly: true (the socket connects through a read-only mount; a writable one could replace it)"
    )]
    WritableSocket { container: String },
    #[error(
        "ephemeral container {container} mounts {volume}, a container's own socket: it would call the sidecar as that container"
    )]
    ContainerSocket { container: String, volume: String },
    #[error(
        "ephemeral container {container} targets {CONTAINER}: it would share the sidecar's process namespace; target an app container"
    )]
    TargetsSidecar { container: String },
    #[error(
        "ephemeral container {container} runs as uid {uid}, the sidecar's, set in {set_in}: run it as another uid"
    )]
    SidecarUid {
        container: String,
        uid: i64,
        set_in: &'static str,
    },
}

/// Reviews the ephemeral containers of `pod` (the pod as the update would
/// leave it). Allowed when the pod has no sidecar or every ephemeral
/// container keeps out of it.
pub fn review(pod: &Pod, config: &Config) -> Result<(), Denial> {
    let Some(spec) = &pod.spec else {
        return Ok(());
    };
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == CONTAINER);
    let Some(sidecar) = sidecar else {
        return Ok(());
    };
    // The uid the sidecar runs as in this pod (set by hand, perhaps), else
    // the one the webhook gives it.
    let sidecar_uid = isolation::run_as_user(sidecar.security_context.as_ref(), spec)
        .map_or(config.run_as_user, |(uid, _)| uid);
    for e in spec.ephemeral_containers.iter().flatten() {
        let container = || e.name.clone();
        if let Some(volume) = isolation::private_mount(e.volume_mounts.as_deref()) {
            return Err(Denial::PrivateMount {
                container: container(),
                volume,
            });
        }
        if e.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == SOCKET_VOLUME && m.read_only != Some(true))
        {
            return Err(Denial::WritableSocket {
                container: container(),
            });
        }
        if let Some(m) = e
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name.starts_with(sockets::VOLUME_PREFIX))
        {
            return Err(Denial::ContainerSocket {
                container: container(),
                volume: m.name.clone(),
            });
        }
        if e.target_container_name.as_deref() == Some(CONTAINER) {
            return Err(Denial::TargetsSidecar {
                container: container(),
            });
        }
        if let Some((uid, set_in)) = isolation::run_as_user(e.security_context.as_ref(), spec)
            && !config.openshift
            && uid == sidecar_uid
        {
            return Err(Denial::SidecarUid {
                container: container(),
                uid,
                set_in,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// An injected pod (the sidecar as the webhook adds it, uid 65532) with
    /// `ephemeral` as its ephemeral containers.
    fn pod(ephemeral: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "p" },
            "spec": {
                "securityContext": { "runAsUser": 1000 },
                "initContainers": [{
                    "name": CONTAINER,
                    "restartPolicy": "Always",
                    "securityContext": { "runAsUser": 65532 },
                }],
                "containers": [{ "name": "app" }],
                "ephemeralContainers": ephemeral,
            }
        }))
        .expect("a pod")
    }

    #[test]
    fn debug_containers_keep_out_of_the_sidecar() {
        let config = Config::default();
        for (ephemeral, denied) in [
            (
                json!({ "volumeMounts": [{ "name": "kms-sidecar-tokens", "mountPath": "/t" }] }),
                Some("kms-sidecar-tokens"),
            ),
            (
                json!({ "volumeMounts": [{ "name": "kms-sidecar-data", "mountPath": "/d" }] }),
                Some("kms-sidecar-data"),
            ),
            (
                json!({ "volumeMounts": [{ "name": SOCKET_VOLUME, "mountPath": "/s" }] }),
                Some("readOnly"),
            ),
            (
                json!({ "volumeMounts": [{ "name": SOCKET_VOLUME, "mountPath": "/s", "readOnly": false }] }),
                Some("readOnly"),
            ),
            (
                json!({ "targetContainerName": CONTAINER }),
                Some("process namespace"),
            ),
            (
                json!({ "securityContext": { "runAsUser": 65532 } }),
                Some("65532"),
            ),
            (
                json!({ "volumeMounts": [{ "name": SOCKET_VOLUME, "mountPath": "/s", "readOnly": true }] }),
                None,
            ),
            (
                json!({ "volumeMounts": [{ "name": "kms-sidecar-config", "mountPath": "/c" }] }),
                None,
            ),
            (
                json!({ "targetContainerName": "app", "securityContext": { "runAsUser": 0 } }),
                None,
            ),
        ] {
            let mut debugger = json!({ "name": "debugger", "image": "busybox" });
            debugger
                .as_object_mut()
                .unwrap()
                .extend(ephemeral.as_object().unwrap().clone());
            let verdict = review(&pod(json!([debugger])), &config);
            match denied {
                Some(word) => {
                    let why = verdict.expect_err(word).to_string();
                    assert!(why.contains(word) && why.contains("debugger"), "{why}");
                }
                None => assert_eq!(verdict, Ok(()), "{ephemeral}"),
            }
        }
    }

    #[test]
    fn the_sidecars_uid_is_the_one_it_runs_as_in_the_pod() {
        // The pod-level uid applies to an ephemeral container without its own.
        let mut p = pod(json!([{ "name": "debugger" }]));
        let spec = p.spec.as_mut().unwrap();
        spec.security_context.as_mut().unwrap().run_as_user = Some(65532);
        let why = review(&p, &Config::default()).unwrap_err().to_string();
        assert!(why.contains("the pod's securityContext"), "{why}");
        // A sidecar set by hand to another uid: that uid is the one refused.
        let mut p = pod(json!([{ "name": "debugger", "securityContext": { "runAsUser": 4242 } }]));
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers.as_mut().unwrap()[0].security_context = None;
        spec.security_context.as_mut().unwrap().run_as_user = Some(4242);
        assert!(review(&p, &Config::default()).is_err());
    }

    #[test]
    fn no_debug_container_calls_as_another_and_openshift_compares_no_uid() {
        // A container's own socket (per-container mode): calling through it
        // would be calling as that container.
        let volume = sockets::volume_name("app");
        let p = pod(json!([{ "name": "debugger", "volumeMounts": [
            { "name": volume, "mountPath": "/s", "readOnly": true }
        ] }]));
        let why = review(&p, &Config::default()).unwrap_err().to_string();
        assert!(
            why.contains(&volume) && why.contains("as that container"),
            "{why}"
        );
        // On OpenShift the platform gives every container the sidecar's uid:
        // a debug container of that uid is no worse than the pod's own.
        let p = pod(json!([{ "name": "debugger", "securityContext": { "runAsUser": 65532 } }]));
        assert!(review(&p, &Config::default()).is_err());
        let openshift = Config {
            openshift: true,
            ..Config::default()
        };
        assert_eq!(review(&p, &openshift), Ok(()));
        // Targeting the sidecar stays denied there.
        let p = pod(json!([{ "name": "debugger", "targetContainerName": CONTAINER }]));
        assert!(review(&p, &openshift).is_err());
    }

    #[test]
    fn pods_without_the_sidecar_are_not_reviewed() {
        let mut p = pod(json!([{ "name": "debugger", "targetContainerName": CONTAINER }]));
        p.spec.as_mut().unwrap().init_containers = None;
        assert_eq!(review(&p, &Config::default()), Ok(()));
    }
}
