//! A socket per container (issue 32 §1): which pods get one, the names of
//! the volumes, and where each is mounted.
//!
//! In per-container mode every app container gets its own `emptyDir`,
//! mounted read-only at the usual [`SOCKET_DIR`] in that container only (so
//! apps keep `KMS_SIDECAR_SOCKET`), and writable at
//! `/var/run/kms-sidecar/containers/<container name>` in the sidecar, which
//! serves one socket in each (`listen.per_container_dir`): the socket a
//! connection arrives on names the container, and no container can open
//! another's, as it is mounted nowhere else. The shared socket volume is then
//! the sidecar's own (its exec probes use it).
//!
//! Volume names: `kms-sidecar-socket-<container name>` when that is at most
//! 61 characters (a name of up to 42); a longer name keeps its first 26
//! characters and gets a dash and 16 hex digits of its SHA-256, which makes
//! 62. A container name is a DNS-1123 label, so both are (≤ 63), and the two
//! forms never have the same length: distinct containers get distinct
//! volumes.

use super::mutate::{CONTAINER, Refusal, SOCKET_DIR, SOCKET_VOLUME, empty_dir, push_items};
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, PodSpec, VolumeMount};
use std::collections::BTreeMap;

/// The pod annotation that turns per-container sockets on (`"true"`) or off
/// (`"false"`) for one pod, over the webhook's `socket_per_container`.
pub const PER_CONTAINER: &str = "kms-sidecar.io/socket-per-container";
/// Where the sidecar finds the containers' socket directories.
pub const CONTAINERS_DIR: &str = "/var/run/kms-sidecar/containers";
/// The sidecar's env naming [`CONTAINERS_DIR`]; its presence also marks an
/// injected pod as being in per-container mode.
pub const DIR_ENV: &str = "KMS_SIDECAR_LISTEN__PER_CONTAINER_DIR";
/// The prefix of every per-container volume.
pub const VOLUME_PREFIX: &str = "kms-sidecar-socket-";

/// Container names up to this length are kept whole in the volume name.
const WHOLE: usize = 42;
/// How much of a longer name is kept before its hash.
const KEPT: usize = 26;

/// Whether the pod gets a socket per container: its annotation, else the
/// webhook's setting. The annotation is `true` or `false`, in any case.
pub fn requested(annotations: &BTreeMap<String, String>, default: bool) -> Result<bool, Refusal> {
    match annotations.get(PER_CONTAINER) {
        None => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(Refusal::Annotation {
            annotation: PER_CONTAINER,
            problem: "expected \"true\" or \"false\"".into(),
        }),
    }
}

/// The volume holding `container`'s socket.
pub fn volume_name(container: &str) -> String {
    if container.len() <= WHOLE {
        return format!("{VOLUME_PREFIX}{container}");
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, container.as_bytes());
    let hash = hex::encode(&digest.as_ref()[..8]);
    // A container name is ASCII (a DNS-1123 label): any index is a boundary.
    let kept = container.get(..KEPT).unwrap_or(container);
    format!("{VOLUME_PREFIX}{kept}-{hash}")
}

/// Where the sidecar mounts `container`'s socket directory.
pub fn sidecar_dir(container: &str) -> String {
    format!("{CONTAINERS_DIR}/{container}")
}

/// Whether an injected sidecar serves a socket per container.
pub fn is_per_container(sidecar: &Container) -> bool {
    sidecar.env.iter().flatten().any(|e| e.name == DIR_ENV)
}

/// The sidecar's writable mount of `container`'s socket directory.
pub fn sidecar_mount(container: &str) -> VolumeMount {
    VolumeMount {
        name: volume_name(container),
        mount_path: sidecar_dir(container),
        ..Default::default()
    }
}

/// In per-container mode, a socket volume `container` must not mount: the
/// shared one (the sidecar's own) or another container's.
pub fn foreign_socket<'a>(container: &Container, mounts: &'a [VolumeMount]) -> Option<&'a str> {
    let own = volume_name(&container.name);
    mounts
        .iter()
        .map(|m| m.name.as_str())
        .find(|&name| name == SOCKET_VOLUME || (name.starts_with(VOLUME_PREFIX) && name != own))
}

/// Why a container is not given its socket (for the warning), when its own
/// volume is already at [`SOCKET_DIR`] under another name.
pub fn not_here(list: &str, i: &str, name: &str, volume: &str) -> String {
    format!(
        "spec.{list}[{i}] ({name}) has its own volume {volume} at {SOCKET_DIR}: it does not get the socket; move that volume to another path"
    )
}

/// The volumes and the sidecar's mounts of the per-container `sockets` a
/// reinvocation gave containers added since, each unless already there.
/// The sidecar is init container `sidecar_at`, else a regular container.
pub(crate) fn new_sockets(
    ops: &mut Vec<PatchOperation>,
    spec: &PodSpec,
    sidecar: &Container,
    sidecar_at: Option<usize>,
    sockets: &[String],
) {
    let (list, at) = match sidecar_at {
        Some(i) => ("initContainers", i),
        None => (
            "containers",
            spec.containers
                .iter()
                .position(|c| c.name == CONTAINER)
                .unwrap_or_default(),
        ),
    };
    let at = at.to_string();
    for name in sockets {
        let volume = volume_name(name);
        if !spec.volumes.iter().flatten().any(|v| v.name == volume) {
            push_items(ops, &["spec"], "volumes", true, [empty_dir(&volume, "1Mi")]);
        }
        let dir = sidecar_dir(name);
        let mounts = sidecar.volume_mounts.as_deref().unwrap_or_default();
        if !mounts.iter().any(|m| m.mount_path == dir) {
            let base = ["spec", list, &at];
            let exists = sidecar.volume_mounts.is_some();
            push_items(ops, &base, "volumeMounts", exists, [sidecar_mount(name)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn volume_names_are_bounded_labels_distinct_per_container() {
        assert_eq!(volume_name("api"), "kms-sidecar-socket-api");
        let longest = "a".repeat(63);
        let mut seen = std::collections::BTreeSet::new();
        for name in [
            "api".to_string(),
            "a".repeat(WHOLE),
            "a".repeat(WHOLE + 1),
            longest.clone(),
            format!("{}-{}", "a".repeat(KEPT), "b".repeat(16)),
            format!("{}b", "a".repeat(62)),
        ] {
            let v = volume_name(&name);
            assert!(is_dns_label(&v), "{name} -> {v} ({} chars)", v.len());
            assert!(seen.insert(v.clone()), "{name} -> {v} twice");
            assert_eq!(v, volume_name(&name), "stable");
        }
        // The hashed form: 19 + 26 + 1 + 16.
        assert_eq!(volume_name(&longest).len(), 62);
        assert!(volume_name(&longest).starts_with(&format!("{VOLUME_PREFIX}{}-", "a".repeat(26))));
    }

    #[test]
    fn the_annotation_is_true_or_false() {
        let a = |v: &str| BTreeMap::from([(PER_CONTAINER.to_string(), v.to_string())]);
        assert_eq!(requested(&BTreeMap::new(), true), Ok(true));
        assert_eq!(requested(&BTreeMap::new(), false), Ok(false));
        assert_eq!(requested(&a("True"), false), Ok(true));
        assert_eq!(requested(&a("false"), true), Ok(false));
        let why = requested(&a("yes"), false).unwrap_err().to_string();
        assert!(
            why.contains(PER_CONTAINER) && why.contains("\"true\" or \"false\""),
            "{why}"
        );
    }
}
