//! Pure injection logic: a pod and the webhook's settings in, a decision out
//! (leave the pod alone, or a JSONPatch that adds the sidecar). No IO, so the
//! tests apply its patches to real-world pod specs.
//!
//! What the patch adds (SPEC §11): the sidecar as a native sidecar (first
//! init container, `restartPolicy: Always`, or right after a service mesh's
//! native proxy: see [`super::mesh`]) or, for clusters before 1.29, a
//! regular container, its startup probe on `/healthz` (the socket serves:
//! pod start never waits for the network) and readiness on `/readyz` (the
//! KMS); a classic mesh proxy's exclusion annotation with the KMS ports; an
//! `emptyDir` for the socket mounted read-only at `/var/run/kms` in every
//! other container with `KMS_SIDECAR_SOCKET` (a read-only mount still
//! connects, but cannot remove or replace the socket; only the sidecar's own
//! mount is writable); the config map; a private `emptyDir` for the
//! sidecar's own files; a projected service-account token per audience the
//! backends need; the `kms-sidecar.io/status: injected` annotation that
//! makes injection idempotent, save for containers another webhook adds
//! later, which get the socket when the API server calls again.
//!
//! What it leaves alone with a warning: Windows pods (see [`super::fit`]).
//! What it refuses ([`Refusal`], then the failure policy applies): a pod
//! that, injected, the API server would reject or that would break the
//! sidecar's isolation — an annotation it cannot use (impossible resources
//! included: see [`super::quantity::RESOURCE_BOUNDS`]), pod-level resources
//! the sidecar overflows, a volume named like the sidecar's, an
//! app container mounting the sidecar's tokens or private directory, a pod
//! sharing one process namespace, a container running as the sidecar's uid.

use super::annotations::Overrides;
use super::config::Config;
use super::fit;
use super::isolation::check_isolation;
use super::mesh;
pub(crate) use super::sidecar::empty_dir;
use super::sidecar::{env, sidecar, socket_mount, volumes};
use super::sockets::{self, VOLUME_PREFIX};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, MoveOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume, VolumeMount};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The label (or annotation) that asks for injection: `"true"`; an
/// annotation `"false"` opts a labelled pod out. Either in any case
/// (`TRUE`, `False`), as Kubernetes users write booleans.
pub const INJECT: &str = "kms-sidecar.io/inject";
/// Set on every injected pod; a pod carrying it is left alone.
pub const STATUS: &str = "kms-sidecar.io/status";
/// The ConfigMap (in the pod's namespace) with the sidecar's config.
pub const CONFIG: &str = "kms-sidecar.io/config";
/// The sidecar image.
pub const IMAGE: &str = "kms-sidecar.io/image";
/// Resource overrides.
pub const CPU_REQUEST: &str = "kms-sidecar.io/cpu-request";
pub const MEMORY_REQUEST: &str = "kms-sidecar.io/memory-request";
pub const CPU_LIMIT: &str = "kms-sidecar.io/cpu-limit";
pub const MEMORY_LIMIT: &str = "kms-sidecar.io/memory-limit";
/// Which service-account tokens to project (`aws,azure,vault` or `none`),
/// for a config map the webhook does not know.
pub const TOKENS: &str = "kms-sidecar.io/tokens";
/// Workload identity of the pod, when not the webhook's default.
pub const AWS_ROLE_ARN: &str = "kms-sidecar.io/aws-role-arn";
pub const AZURE_CLIENT_ID: &str = "kms-sidecar.io/azure-client-id";
/// GCP: the workload identity pool provider's audience, and the ConfigMap
/// with the external-account credentials file (`credentials.json`).
pub const GCP_AUDIENCE: &str = "kms-sidecar.io/gcp-audience";
pub const GCP_CREDENTIALS: &str = "kms-sidecar.io/gcp-credentials";
/// The sidecar's probes and metrics port, when not the webhook's default
/// (or, when a container declares that, the next port none declares).
pub const PROBES_PORT: &str = "kms-sidecar.io/probes-port";
/// Which container `kubectl logs` and `exec` pick: set to the first app
/// container when the sidecar is a regular container (it goes first).
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// The image's entrypoint, for the exec probes of `hostNetwork` pods.
pub const BINARY: &str = "/usr/local/bin/kms-sidecar";
/// Where the GCP external-account file is, beside the tokens.
pub const GCP_CREDENTIALS_FILE: &str = "/var/run/secrets/kms-sidecar/gcp-credentials.json";

/// The injected container's name.
pub const CONTAINER: &str = "kms-sidecar";
/// Where the socket directory is mounted in every container.
pub const SOCKET_DIR: &str = "/var/run/kms";
/// The socket path apps find in `KMS_SIDECAR_SOCKET`.
pub const SOCKET: &str = "/var/run/kms/kms.sock";
/// Where the sidecar reads its config.
pub const CONFIG_DIR: &str = "/etc/kms-sidecar";
/// The sidecar's own writable directory (local dev keys, an audit log),
/// mounted in no other container.
pub const DATA_DIR: &str = "/var/lib/kms-sidecar";
/// The size limit of that volume, told to the sidecar (with its path) so
/// that it refuses an audit rotation that cannot fit.
pub const DATA_VOLUME_LIMIT: &str = "64Mi";
/// Where the projected tokens are mounted in the sidecar (one file per
/// token: `aws`, `azure`, `gcp`, `vault`; and GCP's credentials file).
pub const TOKEN_DIR: &str = "/var/run/secrets/kms-sidecar";

pub(crate) const SOCKET_VOLUME: &str = "kms-sidecar-socket";
pub(super) const CONFIG_VOLUME: &str = "kms-sidecar-config";
pub(super) const DATA_VOLUME: &str = "kms-sidecar-data";
pub(super) const TOKEN_VOLUME: &str = "kms-sidecar-tokens";
/// The names of the volumes the patch adds: a pod with a volume of one of
/// these names is refused (the API server would reject the duplicate).
const VOLUMES: [&str; 4] = [SOCKET_VOLUME, CONFIG_VOLUME, DATA_VOLUME, TOKEN_VOLUME];
/// The sidecar's own volumes, which no other container may mount (the
/// socket's is shared, read-only; a pod may mount it by name where it likes).
pub(crate) const PRIVATE_VOLUMES: [&str; 2] = [DATA_VOLUME, TOKEN_VOLUME];

/// What to do with a pod.
#[derive(Debug)]
pub enum Decision {
    /// Admit unchanged: `reason` is logged; `warning`, when there is one,
    /// is also shown to the user (the review's `warnings`, which kubectl
    /// prints).
    Skip {
        reason: &'static str,
        warning: Option<String>,
    },
    /// Admit with this patch.
    Inject(Injection),
}

impl Decision {
    fn skip(reason: &'static str) -> Result<Self, Refusal> {
        Ok(Self::Skip {
            reason,
            warning: None,
        })
    }
}

/// A patch and what the handler needs to know about it.
#[derive(Debug)]
pub struct Injection {
    pub patch: Patch,
    /// Shown to the user (the review's `warnings`): what the patch could not
    /// do for some container.
    pub warnings: Vec<String>,
    /// The ConfigMaps of the pod's namespace the patch mounts (the sidecar
    /// config, GCP's credentials file): the pod cannot start without them.
    pub config_maps: Vec<String>,
}

/// The pod asks for the sidecar but cannot have it as it is: the message
/// names what to change (an annotation, a volume, a container).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// An annotation the webhook cannot use.
    #[error("annotation {annotation}: {problem}")]
    Annotation {
        annotation: &'static str,
        problem: String,
    },
    /// The pod has a volume named like one the patch adds.
    #[error(
        "the pod already has a volume named {volume}, a name the sidecar's volumes use: rename it"
    )]
    VolumeName { volume: String },
    /// A container of the pod mounts one of the sidecar's own volumes.
    #[error("{container} mounts {volume}, which only the sidecar may mount")]
    PrivateMount {
        /// Where: `spec.containers[1]`.
        container: String,
        volume: &'static str,
    },
    /// Per-container sockets: a container mounts the shared socket's volume
    /// (the sidecar's own in that mode) or another container's socket.
    #[error(
        "{container} mounts {volume}, a socket that is not its own (each container gets its socket at /var/run/kms, and may mount no other): remove that mount"
    )]
    ForeignSocket {
        /// Where: `spec.containers[1]`.
        container: String,
        volume: String,
    },
    /// `hostPID: true` where containers may share a uid with the sidecar
    /// (OpenShift gives every container of the pod the same one) or with
    /// each other (per-container sockets): through `/proc/PID/root` and
    /// `/proc/PID/mem`, one would reach the sidecar's memory or another
    /// container's socket.
    #[error(
        "the pod sets hostPID: its containers would see the sidecar's process and each other's, and one of the same uid could reach the sidecar's memory, or another container's socket, through /proc; unset it"
    )]
    HostPid,
    /// `shareProcessNamespace: true`: every container would see the
    /// sidecar's process, and one running as root or as the sidecar's uid
    /// could read its memory and its token files through `/proc`.
    #[error(
        "the pod sets shareProcessNamespace: every container would see the sidecar's process (and, as root or its uid, its memory and KMS tokens through /proc): unset it"
    )]
    SharedProcessNamespace,
    /// A container would run as the sidecar's uid: to the kernel it would
    /// be the sidecar (its process, what it owns).
    #[error(
        "{container} runs as uid {uid}, the sidecar's, set in {set_in}: it could act as the sidecar; run it as another uid"
    )]
    SidecarUid {
        container: String,
        uid: i64,
        /// `its securityContext` or `the pod's securityContext`.
        set_in: &'static str,
    },
    /// The sidecar does not fit the pod's own resources (`spec.resources`):
    /// the API server would reject the injected pod.
    #[error(
        "the sidecar does not fit the pod's {field} ({pod}): {problem}; raise it, or lower the sidecar's with the kms-sidecar.io/cpu-… and memory-… annotations"
    )]
    PodResources {
        field: String,
        pod: String,
        problem: String,
    },
    /// A pod injected before gained a container that would reach into the
    /// sidecar: denied whatever the failure policy, as the sidecar is
    /// already in the pod.
    #[error("{0} (the pod already has the sidecar)")]
    AfterInjection(Box<Refusal>),
}

/// Decides what to do with `pod` (a CREATE of a pod, or of a pod template
/// from a controller).
pub fn mutate(pod: &Pod, config: &Config) -> Result<Decision, Refusal> {
    let meta = &pod.metadata;
    let none = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&none);
    let labels = meta.labels.as_ref().unwrap_or(&none);
    let Some(spec) = &pod.spec else {
        return Decision::skip("the pod has no spec");
    };
    if let Some(skip) = not_asked(spec, annotations, labels) {
        return Ok(skip);
    }
    if annotations.contains_key(STATUS) {
        return reinvoked(spec, annotations, config);
    }
    let named_sidecar = |c: &Container| c.name == CONTAINER;
    if spec.containers.iter().any(named_sidecar)
        || spec.init_containers.iter().flatten().any(named_sidecar)
    {
        return Decision::skip("the pod already has a container named kms-sidecar");
    }
    let per_container = sockets::requested(annotations, config.socket_per_container)?;
    if let Some(volume) =
        spec.volumes.iter().flatten().map(|v| &v.name).find(|&v| {
            VOLUMES.contains(&v.as_str()) || (per_container && v.starts_with(VOLUME_PREFIX))
        })
    {
        return Err(Refusal::VolumeName {
            volume: volume.clone(),
        });
    }
    check_isolation(spec, config, per_container)?;
    let overrides = Overrides::read(annotations, spec, config)?;
    let pod_annotations = (annotations, meta.annotations.is_some());
    inject(spec, pod_annotations, &overrides, config, per_container)
}

/// Why a pod is left alone, if it is: it opts out, does not opt in (by
/// its label), or runs Windows.
fn not_asked(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Option<Decision> {
    let says = |map: &BTreeMap<String, String>, word: &str| {
        map.get(INJECT)
            .is_some_and(|v| v.eq_ignore_ascii_case(word))
    };
    if says(annotations, "false") {
        return Some(Decision::Skip {
            reason: "the pod opts out by annotation",
            warning: None,
        });
    }
    if !says(labels, "true") {
        // The chart's objectSelector sends the webhook labelled pods only:
        // an annotation alone would work here and nowhere else.
        let warning = says(annotations, "true").then(|| {
            format!("the annotation {INJECT}: \"true\" does not opt in; label the pod {INJECT}: \"true\"")
        });
        return Some(Decision::Skip {
            reason: "the pod does not ask for injection",
            warning,
        });
    }
    fit::windows(spec).map(|why| Decision::Skip {
        reason: "a Windows pod",
        warning: Some(why),
    })
}

/// The patch that injects a new pod: the sidecar (with `overrides`), the
/// socket in the app containers, the volumes, the annotations (the pod's,
/// and whether it has the map at all).
fn inject(
    spec: &PodSpec,
    (annotations, annotations_exist): (&BTreeMap<String, String>, bool),
    overrides: &Overrides,
    config: &Config,
    per_container: bool,
) -> Result<Decision, Refusal> {
    let mut sidecar = sidecar(overrides, config);
    if config.native_sidecar {
        sidecar.restart_policy = Some("Always".into());
    }
    // Where a native sidecar goes: first, or after a mesh's native proxy.
    let native_at = config
        .native_sidecar
        .then(|| mesh::sidecar_index(spec.init_containers.as_deref().unwrap_or_default()));
    fit::check_pod_resources(spec, &sidecar, native_at)?;

    // App and init containers first, at their original indices (the sidecar
    // is inserted before them last).
    let mut ops = Vec::new();
    let Apps {
        mut warnings,
        sockets,
    } = apps(&mut ops, spec, native_at, per_container);
    let mut volumes = volumes(overrides, config);
    serve_sockets(&mut sidecar, &mut volumes, &sockets);
    if !config.native_sidecar && spec.init_containers.is_some() {
        warnings.push(
            "init containers do not get the socket: the sidecar is a regular container (injection.nativeSidecar: false), which starts after them".into(),
        );
    }
    push_items(
        &mut ops,
        &["spec"],
        "volumes",
        spec.volumes.is_some(),
        volumes,
    );
    let list = if config.native_sidecar {
        "initContainers"
    } else {
        "containers"
    };
    push_at(&mut ops, list, spec, sidecar, native_at.unwrap_or(0));
    let (added, more) = added_annotations(spec, annotations, config);
    warnings.extend(more);
    push_entries(
        &mut ops,
        &["metadata", "annotations"],
        annotations_exist,
        added,
    );
    let mut config_maps = vec![overrides.config_map.clone()];
    config_maps.extend(overrides.gcp.as_ref().map(|(_, map)| map.clone()));
    Ok(Decision::Inject(Injection {
        patch: Patch(ops),
        warnings,
        config_maps,
    }))
}

/// Per-container sockets: the sidecar serves the containers directory
/// (when there is one to serve: it refuses to start on a missing one) and
/// mounts each socket's volume, which the pod gains.
fn serve_sockets(sidecar: &mut Container, volumes: &mut Vec<Volume>, sockets: &[String]) {
    if !sockets.is_empty() {
        sidecar
            .env
            .get_or_insert_default()
            .push(env(sockets::DIR_ENV, sockets::CONTAINERS_DIR));
    }
    for name in sockets {
        volumes.push(empty_dir(&sockets::volume_name(name), "1Mi"));
        sidecar
            .volume_mounts
            .get_or_insert_default()
            .push(sockets::sidecar_mount(name));
    }
}

/// The annotations the patch adds: the status, the default container (when
/// the sidecar is a regular container, it goes first: kubectl logs and exec
/// would pick it over the app), a classic mesh proxy's exclusions; and
/// what the user must set where the webhook comes too late.
fn added_annotations(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    config: &Config,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut added = BTreeMap::from([(STATUS.to_owned(), "injected".to_owned())]);
    if let (false, Some(app)) = (config.native_sidecar, spec.containers.first())
        && !annotations.contains_key(DEFAULT_CONTAINER)
    {
        added.insert(DEFAULT_CONTAINER.into(), app.name.clone());
    }
    let exclusions = mesh::exclusions(spec, annotations, &config.kms_ports);
    added.extend(exclusions.annotations);
    (added, exclusions.warnings)
}

/// A pod injected before (the API server calls the webhook again when a
/// later webhook changed the pod: `reinvocationPolicy: IfNeeded`): the
/// containers added since get the socket, once; those that would reach into
/// the sidecar are refused; a mesh's native proxy added before the sidecar
/// is fine, one added after it has the sidecar moved right after it; a
/// classic proxy gets its exclusion annotation.
fn reinvoked(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    config: &Config,
) -> Result<Decision, Refusal> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let sidecar_at = init.iter().position(|c| c.name == CONTAINER);
    let sidecar = init
        .iter()
        .chain(&spec.containers)
        .find(|c| c.name == CONTAINER);
    let per_container = sidecar.is_some_and(sockets::is_per_container);
    check_isolation(spec, config, per_container)
        .map_err(|r| Refusal::AfterInjection(Box::new(r)))?;
    let moved = match (sidecar_at, mesh::native_proxy(init)) {
        (Some(from), Some(proxy)) if proxy > from => Some((from, proxy)),
        _ => None,
    };
    let mut ops = Vec::new();
    // The socket for the init containers that will run after the sidecar
    // (indices before the move, which comes last).
    let after = moved.map(|(_, proxy)| proxy).or(sidecar_at);
    let Apps {
        mut warnings,
        sockets,
    } = apps(&mut ops, spec, after.map(|i| i + 1), per_container);
    if let Some(sidecar) = sidecar {
        sockets::new_sockets(&mut ops, spec, sidecar, sidecar_at, &sockets);
    }
    if let Some((from, proxy)) = moved {
        for (i, c) in init.iter().enumerate().take(proxy).skip(from + 1) {
            if !mesh::is_mesh_container(&c.name) {
                warnings.push(format!(
                    "spec.initContainers[{i}] ({}) now runs before the sidecar, which follows the mesh's native proxy {} put after it: it cannot use the socket",
                    c.name, init[proxy].name
                ));
            }
        }
        // Removed first, then inserted where the proxy's successor was.
        let (from, to) = (from.to_string(), proxy.to_string());
        ops.push(PatchOperation::Move(MoveOperation {
            from: pointer(&["spec", "initContainers", &from]),
            path: pointer(&["spec", "initContainers", &to]),
        }));
    }
    let exclusions = mesh::exclusions(spec, annotations, &config.kms_ports);
    warnings.extend(exclusions.warnings);
    if !exclusions.annotations.is_empty() {
        push_entries(
            &mut ops,
            &["metadata", "annotations"],
            true,
            exclusions.annotations,
        );
    }
    if ops.is_empty() {
        return Decision::skip("the pod is already injected");
    }
    Ok(Decision::Inject(Injection {
        patch: Patch(ops),
        warnings,
        config_maps: Vec::new(),
    }))
}

/// What [`apps`] did: what could not be done, for the user; in
/// per-container mode, the containers given their own socket (whose volume
/// and sidecar mount the pod needs).
struct Apps {
    warnings: Vec<String>,
    sockets: Vec<String>,
}

/// Gives every app container the socket (see [`app_container`]): all
/// regular containers but the sidecar, and the init containers from index
/// `init_from` on (those that run while the sidecar does; none without a
/// native sidecar); in per-container mode each its own.
fn apps(
    ops: &mut Vec<PatchOperation>,
    spec: &PodSpec,
    init_from: Option<usize>,
    per_container: bool,
) -> Apps {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let init = match init_from {
        Some(from) => init.get(from..).unwrap_or_default(),
        None => &[],
    };
    let lists = [
        ("containers", &spec.containers[..], 0),
        ("initContainers", init, init_from.unwrap_or(0)),
    ];
    let mut done = Apps {
        warnings: Vec::new(),
        sockets: Vec::new(),
    };
    for (list, containers, offset) in lists {
        for (i, c) in containers.iter().enumerate() {
            // A mesh's proxy and init containers are not apps.
            if c.name == CONTAINER || mesh::is_mesh_container(&c.name) {
                continue;
            }
            let i = (i + offset).to_string();
            let volume = match per_container {
                true => sockets::volume_name(&c.name),
                false => SOCKET_VOLUME.to_owned(),
            };
            match app_container(ops, ["spec", list, &i], c, &volume) {
                Some(other) => done
                    .warnings
                    .push(sockets::not_here(list, &i, &c.name, &other)),
                None if per_container => done.sockets.push(c.name.clone()),
                None => {}
            }
        }
    }
    done
}

/// Inserts the sidecar at index `at` of `list` (`containers` or
/// `initContainers`).
fn push_at(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    spec: &PodSpec,
    sidecar: Container,
    at: usize,
) {
    let exists = match list {
        "containers" => true,
        _ => spec.init_containers.is_some(),
    };
    if exists {
        ops.push(add(&["spec", list, &at.to_string()], to_value(&sidecar)));
    } else {
        ops.push(add(&["spec", list], Value::Array(vec![to_value(&sidecar)])));
    }
}

/// Adds `entries` to the map at `path`, creating it when it does not exist.
fn push_entries(
    ops: &mut Vec<PatchOperation>,
    path: &[&str],
    exists: bool,
    entries: BTreeMap<String, String>,
) {
    if exists {
        for (k, v) in entries {
            let mut at = path.to_vec();
            at.push(&k);
            ops.push(add(&at, v.into()));
        }
    } else {
        ops.push(add(path, to_value(&entries)));
    }
}

/// The patch for one app or init container at `base`: the socket's
/// `volume` (the shared one, or its own) mounted read-only and
/// `KMS_SIDECAR_SOCKET`, each unless already there (so the patch of a pod
/// injected before adds nothing twice). A mount already at the socket's
/// directory, however spelled, is left in place (two would be invalid):
/// when it is another volume, its name is returned, as that container does
/// not get the socket. Any mount of the socket's volume is made read-only: a
/// writable one could remove the socket and bind another in its place.
fn app_container(
    ops: &mut Vec<PatchOperation>,
    base: [&str; 3],
    c: &Container,
    volume: &str,
) -> Option<String> {
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    for (j, m) in mounts.iter().enumerate() {
        if m.name == volume && m.read_only != Some(true) {
            let j = j.to_string();
            let path = [base[0], base[1], base[2], "volumeMounts", &j, "readOnly"];
            ops.push(add(&path, Value::Bool(true)));
        }
    }
    let at_socket_dir = |m: &&VolumeMount| {
        Path::new(&m.mount_path)
            .components()
            .eq(Path::new(SOCKET_DIR).components())
    };
    match mounts.iter().find(at_socket_dir) {
        None => {
            push_items(
                ops,
                &base,
                "volumeMounts",
                c.volume_mounts.is_some(),
                [socket_mount(volume, true)],
            );
        }
        // No socket there: no variable pointing at one either.
        Some(m) if m.name != volume => return Some(m.name.clone()),
        Some(_) => {}
    }
    if !c
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "KMS_SIDECAR_SOCKET")
    {
        push_items(
            ops,
            &base,
            "env",
            c.env.is_some(),
            [env("KMS_SIDECAR_SOCKET", SOCKET)],
        );
    }
    None
}

/// Adds `items` to the list `field` under `base`: each appended when the
/// list exists, else the list is created with all of them.
pub(crate) fn push_items<T: serde::Serialize>(
    ops: &mut Vec<PatchOperation>,
    base: &[&str],
    field: &str,
    exists: bool,
    items: impl IntoIterator<Item = T>,
) {
    let mut path: Vec<&str> = base.to_vec();
    path.push(field);
    let items = items.into_iter().map(|item| to_value(&item));
    if exists {
        path.push("-");
        ops.extend(items.map(|item| add(&path, item)));
    } else {
        ops.push(add(&path, Value::Array(items.collect())));
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("Kubernetes types serialize to JSON")
}

#[cfg(test)]
#[path = "mutate_tests.rs"]
mod tests;
