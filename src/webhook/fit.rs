//! Whether the sidecar can run in a pod as the pod is, decided before any
//! patch: the pod's OS, its pod-level resources, and a port for the probes
//! that no container of the pod declares.

use super::mutate::Refusal;
use super::quantity::milli_value;
use k8s_openapi::api::core::v1::{Container, NodeSelectorTerm, PodSpec};
use std::collections::BTreeMap;

/// The node labels that name a node's OS (`beta.` is the old spelling
/// still found in published specs).
const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];

/// Why `spec` runs on Windows, if it does: `spec.os.name`, a node selector,
/// or a required node affinity every term of which asks for Windows. The
/// sidecar is a Linux container: on a Windows node it never starts, and the
/// API server forbids its Linux security settings in a Windows pod.
pub fn windows(spec: &PodSpec) -> Option<String> {
    let why = |how: String| {
        format!("the pod runs on Windows ({how}) and the sidecar is a Linux container")
    };
    if let Some(os) = spec.os.as_ref().filter(|os| is_windows(&os.name)) {
        return Some(why(format!("spec.os.name: {}", os.name)));
    }
    if let Some((label, value)) = spec
        .node_selector
        .iter()
        .flatten()
        .find(|(k, v)| OS_LABELS.contains(&k.as_str()) && is_windows(v))
    {
        return Some(why(format!("nodeSelector {label}: {value}")));
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    // Terms are alternatives: Windows only if every one of them is.
    (!terms.is_empty() && terms.iter().all(asks_for_windows))
        .then(|| why("a required node affinity for kubernetes.io/os: windows".into()))
}

fn is_windows(os: &str) -> bool {
    os.eq_ignore_ascii_case("windows")
}

/// A node selector term that only Windows nodes match: `os In [windows]`
/// or `os NotIn [linux]` (its expressions must all hold).
fn asks_for_windows(term: &NodeSelectorTerm) -> bool {
    term.match_expressions.iter().flatten().any(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        OS_LABELS.contains(&e.key.as_str())
            && match e.operator.as_str() {
                "In" => !values.is_empty() && values.iter().all(|v| is_windows(v)),
                "NotIn" => values.iter().any(|v| v.eq_ignore_ascii_case("linux")),
                _ => false,
            }
    })
}

/// Checks the sidecar against the pod's own totals (`spec.resources`,
/// Kubernetes 1.32+), as the API server will once it is added: the pod's
/// requests at least what its containers request together, counted as
/// `AggregateContainerRequests` counts them (k8s.io/component-helpers
/// `resource/helpers.go`: regular containers and sidecars add up, an init
/// container needs its own request plus the sidecars started before it),
/// and no container limit above the pod's. Where the pod gives a limit but
/// no request, the requests must fit the limit.
pub fn check_pod_resources(
    spec: &PodSpec,
    sidecar: &Container,
    native_at: Option<usize>,
) -> Result<(), Refusal> {
    let Some(pod) = &spec.resources else {
        return Ok(());
    };
    let none = BTreeMap::new();
    let pod_requests = pod.requests.as_ref().unwrap_or(&none);
    let pod_limits = pod.limits.as_ref().unwrap_or(&none);
    let total = aggregate_requests(spec, sidecar, native_at);
    for (resource, &needed) in &total {
        let (field, bound) = match (pod_requests.get(resource), pod_limits.get(resource)) {
            (Some(q), _) => ("requests", q),
            (None, Some(q)) => ("limits", q),
            (None, None) => continue,
        };
        if milli_value(&bound.0).is_some_and(|b| b < needed) {
            return Err(Refusal::PodResources {
                field: format!("spec.resources.{field}.{resource}"),
                pod: bound.0.clone(),
                problem: format!(
                    "the containers request {} with the sidecar's {}",
                    show(resource, needed),
                    show(resource, request_of(sidecar, resource))
                ),
            });
        }
    }
    let sidecar_limits = sidecar.resources.as_ref().and_then(|r| r.limits.as_ref());
    for (resource, limit) in sidecar_limits.unwrap_or(&none) {
        let Some(bound) = pod_limits.get(resource) else {
            continue;
        };
        if let (Some(limit), Some(b)) = (milli_value(&limit.0), milli_value(&bound.0))
            && b < limit
        {
            return Err(Refusal::PodResources {
                field: format!("spec.resources.limits.{resource}"),
                pod: bound.0.clone(),
                problem: format!(
                    "the sidecar's {resource} limit is {}",
                    show(resource, limit)
                ),
            });
        }
    }
    Ok(())
}

/// The pod's requests per resource once `sidecar` is in it (as the init
/// container at index `native_at`, else as a container), in thousandths.
fn aggregate_requests(
    spec: &PodSpec,
    sidecar: &Container,
    native_at: Option<usize>,
) -> BTreeMap<String, i128> {
    let mut total = BTreeMap::new();
    let add = |into: &mut BTreeMap<String, i128>, c: &Container| {
        for resource in requested(c) {
            *into.entry(resource.clone()).or_default() += request_of(c, &resource);
        }
    };
    for c in &spec.containers {
        add(&mut total, c);
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let (mut sidecars, mut init_peak) = (BTreeMap::new(), BTreeMap::new());
    let mut order: Vec<(&Container, bool)> = init
        .iter()
        .map(|c| (c, c.restart_policy.as_deref() == Some("Always")))
        .collect();
    match native_at {
        Some(at) => order.insert(at.min(order.len()), (sidecar, true)),
        None => add(&mut total, sidecar),
    }
    for (c, restartable) in order {
        let mut use_now = sidecars.clone();
        add(&mut use_now, c);
        if restartable {
            add(&mut total, c);
            sidecars = use_now.clone();
        }
        for (resource, v) in use_now {
            let peak: &mut i128 = init_peak.entry(resource).or_default();
            *peak = (*peak).max(v);
        }
    }
    for (resource, peak) in init_peak {
        let t = total.entry(resource).or_default();
        *t = (*t).max(peak);
    }
    total
}

fn requested(c: &Container) -> Vec<String> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

/// A container's request of `resource` in thousandths (0 when none).
fn request_of(c: &Container, resource: &str) -> i128 {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource))
        .and_then(|q| milli_value(&q.0))
        .unwrap_or(0)
}

/// Thousandths back to a quantity a user reads: `250m` of CPU, `80Mi` (or
/// bytes) of memory.
fn show(resource: &str, milli: i128) -> String {
    const MI: i128 = 1 << 20;
    let whole = milli / 1000 + i128::from(milli % 1000 != 0);
    match resource {
        "cpu" => format!("{milli}m"),
        _ if whole % MI == 0 => format!("{}Mi", whole / MI),
        _ => format!("{whole}"),
    }
}

/// The port for the sidecar's probes: the pod's annotation if no container
/// declares it, else the webhook's default or, when a container declares
/// that, the next port none declares. A clash with the annotation is
/// refused: the sidecar could not bind, and its startup probe would hold
/// the pod.
pub fn probes_port(
    spec: &PodSpec,
    annotated: Option<&String>,
    default: u16,
) -> Result<u16, Refusal> {
    let refuse = |problem: String| Refusal::Annotation {
        annotation: super::mutate::PROBES_PORT,
        problem,
    };
    let Some(value) = annotated else {
        let port = (default..=u16::MAX)
            .chain(1024..default)
            .find(|&p| declared_by(spec, p).is_none())
            .unwrap_or(default);
        return Ok(port);
    };
    let port = value
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| refuse("not a port (1 to 65535)".into()))?;
    match declared_by(spec, port) {
        Some(container) => Err(refuse(format!(
            "port {port} is declared by {container}: choose another"
        ))),
        None => Ok(port),
    }
}

/// The container (`spec.containers[1] (statsd)`) that declares TCP `port`.
pub fn declared_by(spec: &PodSpec, port: u16) -> Option<String> {
    let lists = [
        ("containers", &spec.containers[..]),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    lists.into_iter().find_map(|(list, containers)| {
        containers.iter().enumerate().find_map(|(i, c)| {
            c.ports
                .iter()
                .flatten()
                .any(|p| {
                    p.container_port == i32::from(port)
                        && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                })
                .then(|| format!("spec.{list}[{i}] ({})", c.name))
        })
    })
}
