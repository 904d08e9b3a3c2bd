//! Service meshes in the pod (Istio, Linkerd; docs/meshes.md): where the
//! sidecar goes among their containers, which of their containers are not
//! apps, and keeping the sidecar's KMS traffic out of a proxy that is not
//! running. Pure, like [`super::mutate`].
//!
//! - A proxy that is a native sidecar (an init container with
//!   `restartPolicy: Always`) starts, and is ready, before the init
//!   containers after it: the sidecar goes right after it, so its egress,
//!   captured by the mesh from the pod's start (Istio CNI, Linkerd's CNI
//!   plugin), goes through a running proxy.
//! - A proxy that is a regular container starts after every init container:
//!   the sidecar stays first (the pod's containers need its socket), and the
//!   ports its KMS listens on (`kms_ports`) are added to the mesh's own
//!   exclusion annotation, which the mesh reads when it sets up the pod's
//!   capture at run time (Istio's CNI plugin, Linkerd's). An iptables init
//!   container (`istio-init`, `linkerd-init`) was rendered by the mesh's
//!   injector before: when its arguments leave one of those ports captured,
//!   the user is told what to set on the pod template.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use std::collections::BTreeMap;

/// A mesh whose proxy the webhook recognises by its container name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mesh {
    Istio,
    Linkerd,
}

impl Mesh {
    const ALL: [Mesh; 2] = [Mesh::Istio, Mesh::Linkerd];

    /// The proxy's container name, as the mesh's injector names it.
    pub fn proxy(self) -> &'static str {
        match self {
            Mesh::Istio => "istio-proxy",
            Mesh::Linkerd => "linkerd-proxy",
        }
    }

    /// The pod annotation listing outbound ports the proxy does not
    /// capture: read by the mesh's injector and, at run time, by its CNI
    /// plugin (Istio `cni/pkg/plugin/sidecar_redirect.go`; linkerd2-proxy-init
    /// `cni-plugin/main.go`). Either replaces the mesh-wide list.
    pub fn exclude_annotation(self) -> &'static str {
        match self {
            Mesh::Istio => "traffic.sidecar.istio.io/excludeOutboundPorts",
            Mesh::Linkerd => "config.linkerd.io/skip-outbound-ports",
        }
    }

    /// The init container that installs the capture with iptables (when
    /// the mesh's CNI plugin does not), and its flag for excluded ports.
    fn iptables_init(self) -> (&'static str, &'static str) {
        match self {
            Mesh::Istio => ("istio-init", "-o"),
            Mesh::Linkerd => ("linkerd-init", "--outbound-ports-to-ignore"),
        }
    }
}

/// Containers a mesh's injector adds: not apps, they never get the socket.
const MESH_CONTAINERS: [&str; 6] = [
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "linkerd-proxy",
    "linkerd-init",
    "linkerd-network-validator",
];

/// Whether `name` is a container a mesh's injector adds.
pub fn is_mesh_container(name: &str) -> bool {
    MESH_CONTAINERS.contains(&name)
}

fn is_native(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The index in `init` (the pod's init containers) of the last mesh proxy
/// that is a native sidecar.
pub fn native_proxy(init: &[Container]) -> Option<usize> {
    init.iter()
        .rposition(|c| is_native(c) && Mesh::ALL.iter().any(|m| c.name == m.proxy()))
}

/// Where the sidecar goes among the pod's init containers: right after a
/// native mesh proxy, else first.
pub fn sidecar_index(init: &[Container]) -> usize {
    native_proxy(init).map_or(0, |i| i + 1)
}

/// What keeping the KMS traffic out of classic proxies needs: annotations
/// to set (the mesh's own, with `kms_ports` merged into what the pod or
/// the mesh's init container already excludes), and what the user must set
/// where the webhook comes too late.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    pub annotations: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// [`Exclusions`] for every mesh whose proxy is a regular container of
/// `spec`; none without one (a native proxy runs before the sidecar), or
/// when `kms_ports` is empty.
pub fn exclusions(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    kms_ports: &[u16],
) -> Exclusions {
    let mut out = Exclusions::default();
    if kms_ports.is_empty() {
        return out;
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for mesh in Mesh::ALL {
        if !spec.containers.iter().any(|c| c.name == mesh.proxy()) {
            continue;
        }
        let (init_name, flag) = mesh.iptables_init();
        let rendered = init
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == init_name)
            .map(|(i, c)| (i, flag_value(c, flag).unwrap_or_default()));
        let key = mesh.exclude_annotation();
        // The pod's own list, else what the init container was given (the
        // mesh-wide default), so that ours adds to it rather than replaces.
        let current = match (annotations.get(key), &rendered) {
            (Some(v), _) => v.clone(),
            (None, Some((_, v))) => v.clone(),
            (None, None) => String::new(),
        };
        let merged = merge(&current, kms_ports);
        if !covers(&current, kms_ports) {
            out.annotations.insert(key.into(), merged.clone());
        }
        if let Some((i, args)) = rendered
            && !covers(&args, kms_ports)
        {
            out.warnings.push(format!(
                "spec.initContainers[{i}] ({init_name}) captures the pod's traffic with rules made before kms-sidecar's webhook saw the pod: the sidecar's KMS traffic (ports {}) goes to {} and fails until that proxy runs and after it stops; set the annotation {key}: \"{merged}\" on the pod template, which {mesh:?} reads when it injects",
                list(kms_ports),
                mesh.proxy(),
            ));
        }
    }
    out
}

/// The value after `flag` in the container's args (`-o 443` or `-o=443`).
fn flag_value(c: &Container, flag: &str) -> Option<String> {
    let args = c.args.as_deref().unwrap_or_default();
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

/// Whether the comma-separated list `value` (ports, `a-b` ranges, `*`)
/// excludes every port of `ports`.
fn covers(value: &str, ports: &[u16]) -> bool {
    ports.iter().all(|&p| {
        value.split(',').map(str::trim).any(|item| {
            if item == "*" {
                return true;
            }
            match item.split_once('-') {
                Some((a, b)) => match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&p),
                    _ => false,
                },
                None => item.parse::<u16>() == Ok(p),
            }
        })
    })
}

/// `value` with the ports it does not cover appended.
fn merge(value: &str, ports: &[u16]) -> String {
    let mut items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for &p in ports {
        if !covers(&items.join(","), &[p]) {
            items.push(p.to_string());
        }
    }
    items.join(",")
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_merge_without_duplicates() {
        assert_eq!(merge("", &[443]), "443");
        assert_eq!(merge("4567,4568", &[443, 8200]), "4567,4568,443,8200");
        assert_eq!(merge("443, 80", &[443]), "443,80");
        assert_eq!(merge("400-500", &[443, 8200]), "400-500,8200");
        assert_eq!(merge("*", &[443]), "*");
        assert!(!covers("4567,4568", &[443]));
        assert!(covers("8200,443", &[443, 8200]));
    }
}
