//! Against a real Kubernetes control plane (issue 31): etcd and the real
//! kube-apiserver (and, where a test needs it, kube-controller-manager) of
//! the release `tests/kube/go.mod` pins, built by `make kube-bin` and
//! started by kube-up (`tests/kube/cmd/kube-up`, what `make kube-up` runs),
//! one control plane per test (`harness::ControlPlane`, `harness::KubeUp`).
//!
//! - [`chart`]: `helm upgrade` keeps the generated CA;
//! - [`install`]: `helm install` with the default and a production values
//!   file, and every file of `manifests/` accepted by a server-side dry run;
//! - [`injection`]: the chart installed by helm, its webhook running, pods
//!   (and a Deployment's) injected where the chart says and only there;
//! - [`failure_policy`]: what the API server does with the webhook down;
//! - [`kube_up`]: kube-up itself, as `make kube-up` runs it;
//! - [`runner`]: the kubelet stand-in (`tests/kube/cmd/pod-runner`) makes
//!   volumes and runs containers by the kubelet's rules;
//! - [`containers`]: a socket per container and OpenShift's uids, injected
//!   pods run by the stand-in, called from inside each container;
//! - [`tokens`]: injected pods run by the stand-in log in to OpenBao with
//!   real tokens (`kubernetes` and `jwt` auth) through two refreshes.

mod chart;
mod containers;
mod control_plane;
mod failure_policy;
mod injection;
mod install;
mod kube_up;
mod runner;
mod tokens;

use crate::harness::ControlPlane;
use serde_json::Value;
use std::process::Output;

/// A pod labelled for injection, as a user writes one; `annotations` is
/// YAML flow-map content (`""` for none).
fn labelled_pod(namespace: &str, name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\n  annotations: {{ {annotations} }}\nspec:\n  containers:\n    - {{ name: app, image: busybox, securityContext: {{ runAsUser: 1000 }} }}\n"
    )
}

/// `kubectl create -f -` of `yaml`: kubectl's output (stderr holds the
/// warnings and errors).
fn create(cp: &ControlPlane, yaml: &str) -> Output {
    cp.kubectl_with_input(&["create", "-f", "-"], Some(yaml))
}

/// The pod as the API server stored it.
fn stored(cp: &ControlPlane, namespace: &str, name: &str) -> Value {
    let json = cp.kubectl_ok(&["-n", namespace, "get", "pod", name, "-o", "json"]);
    serde_json::from_str(&json).expect("kubectl -o json")
}

/// Whether the webhook injected the sidecar: its init container and marker.
fn injected(pod: &Value) -> bool {
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "kms-sidecar"));
    sidecar && pod["metadata"]["annotations"]["kms-sidecar.io/status"] == "injected"
}

/// stderr of a kubectl run, as text.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
