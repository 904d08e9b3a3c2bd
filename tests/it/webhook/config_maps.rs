//! Pods whose namespace lacks the sidecar's ConfigMap (issue 30, item 9):
//! the real webhook binary, registered with a real API server
//! ([`ControlPlane`]) and holding only the chart's RBAC, refuses them with a
//! warning `kubectl` prints; where it cannot reach the API it injects and
//! says it could not check.

use super::Webhook;
use crate::harness::{ControlPlane, eventually, free_port};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The webhook's registration (a MutatingWebhookConfiguration).
const REGISTRATION: &str = "kms-sidecar-test";

/// A labelled pod, as a user writes one.
fn pod(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\nspec:\n  containers:\n    - {{ name: app, image: busybox, securityContext: {{ runAsUser: 1000 }} }}\n"
    )
}

/// `kubectl create` of `yaml`, which must succeed: (the object as stored, what
/// kubectl printed on stderr: its warnings).
#[track_caller]
pub(super) fn create(cp: &ControlPlane, yaml: &str) -> (Value, String) {
    let out = cp.kubectl_with_input(&["create", "-o", "json", "-f", "-"], Some(yaml));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kubectl create failed: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

/// Read back from the API server (no kubelet: it stays Pending).
pub(super) fn stored(cp: &ControlPlane, namespace: &str, name: &str) -> Value {
    let json = cp.kubectl_ok(&["-n", namespace, "get", "pod", name, "-o", "json"]);
    serde_json::from_str(&json).unwrap()
}

pub(super) fn injected(pod: &Value) -> bool {
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "kms-sidecar"));
    sidecar && pod["metadata"]["annotations"]["kms-sidecar.io/status"] == "injected"
}

/// The chart's RBAC for the webhook, as `manifests/kms-sidecar.yaml` renders
/// it (a test keeps that file equal to the chart): its ServiceAccount,
/// ClusterRole and ClusterRoleBinding.
fn chart_rbac() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/kms-sidecar.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
            .contains(&v["kind"].as_str().unwrap_or_default())
        {
            docs.push(serde_yaml_ng::to_string(&v).unwrap());
        }
    }
    assert_eq!(docs.len(), 3, "the chart's webhook RBAC in {path}");
    docs.join("---\n")
}

fn kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{ server: \"{server}\", certificate-authority: \"{}\" }}\nusers:\n- name: webhook\n  user: {{ token: \"{token}\" }}\ncontexts:\n- name: c\n  context: {{ cluster: c, user: webhook }}\ncurrent-context: c\n",
            ca.display()
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn pods_are_refused_where_the_config_map_is_missing_and_warned_where_it_cannot_be_checked() {
    let cp = ControlPlane::start().await;
    cp.namespace("kms-system", &[]);
    cp.apply(&chart_rbac());
    let token = cp.kubectl_ok(&["-n", "kms-system", "create", "token", "kms-sidecar-webhook"]);
    let token = token.trim();

    // Least privilege: the account may list and watch ConfigMaps across
    // namespaces only by name (a metadata.name field selector, which RBAC
    // resourceNames authorizes), and read nothing else.
    let as_webhook = |args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        cp.kubectl(&all)
    };
    for allowed in [
        &[
            "get",
            "configmaps",
            "-A",
            "--field-selector",
            "metadata.name=kms-sidecar",
        ][..],
        &[
            "get",
            "configmaps",
            "-A",
            "--field-selector",
            "metadata.name=kms-sidecar-gcp",
        ],
    ] {
        let out = as_webhook(allowed);
        assert!(
            out.status.success(),
            "{allowed:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for denied in [
        &["get", "configmaps", "-A"][..],
        &[
            "get",
            "configmaps",
            "-A",
            "--field-selector",
            "metadata.name=other",
        ],
        &["-n", "kms-system", "get", "configmap", "other"],
        &["get", "secrets", "-A"],
        &["get", "pods", "-A"],
    ] {
        let out = as_webhook(denied);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("forbidden"),
            "{denied:?} allowed: {err}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    kubeconfig(&config, &cp.url, &cp.ca, token);
    let hook = Webhook::start_with_kubeconfig("", &config);
    eventually(
        Duration::from_secs(60),
        "the webhook lists the ConfigMaps",
        || async {
            hook.metric("kms_sidecar_webhook_config_map_watch_ready{config_map=\"kms-sidecar\"}")
                == 1.0
        },
    )
    .await;
    cp.namespace("bare", &[]);
    cp.namespace("configured", &[]);
    cp.register_webhook(REGISTRATION, &hook.mutate_url(), &hook.ca, "bare")
        .await;

    // No ConfigMap: admitted without the sidecar, kubectl prints why.
    let (_, warnings) = create(&cp, &pod("bare", "app"));
    assert!(
        warnings.contains(
            "Warning: kms-sidecar not injected: ConfigMap kms-sidecar does not exist in namespace bare"
        ),
        "{warnings}"
    );
    assert!(!injected(&stored(&cp, "bare", "app")));

    // The ConfigMap, created just before the pod (the watch may not have
    // seen it yet: the webhook asks the API server before refusing).
    let secret = format!("not-for-logs-{}", uuid::Uuid::new_v4().simple());
    cp.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: kms-sidecar, namespace: configured }}\ndata:\n  config.yaml: \"# {secret}\\n\"\n"
    ));
    let (_, warnings) = create(&cp, &pod("configured", "app"));
    assert!(!warnings.contains("Warning"), "{warnings}");
    assert!(injected(&stored(&cp, "configured", "app")));
    assert!(
        hook.metric("kms_sidecar_webhook_config_map_lookups_total{outcome=\"missing\"}") >= 1.0
    );
    assert!(hook.metric("kms_sidecar_webhook_config_map_lookups_total{outcome=\"found\"}") >= 1.0);
    let logs = hook.logs();
    assert!(
        !logs.contains(&secret),
        "the webhook logged a ConfigMap's content"
    );
    // The watch itself (not only its first list) was authorized.
    assert!(!logs.contains("ConfigMap watch failed"), "{logs}");

    // The API out of reach (a kubeconfig to a closed port): injected as
    // before, with a warning that it could not check.
    let webhook_ca = hook.ca.clone();
    drop(hook);
    let closed = dir.path().join("closed-kubeconfig");
    kubeconfig(
        &closed,
        &format!("https://127.0.0.1:{}", free_port()),
        &cp.ca,
        token,
    );
    let blind = Webhook::start_with_kubeconfig("", &closed);
    assert_ne!(blind.ca, webhook_ca);
    cp.register_webhook(REGISTRATION, &blind.mutate_url(), &blind.ca, "bare")
        .await;
    let (_, warnings) = create(&cp, &pod("bare", "blind"));
    assert!(
        warnings.contains("Warning: kms-sidecar: could not check that ConfigMap kms-sidecar exists in namespace bare"),
        "{warnings}"
    );
    assert!(injected(&stored(&cp, "bare", "blind")));
}

/// Without a control plane: a webhook whose API server refuses connections
/// injects, and its review's warnings say it could not check.
#[test]
fn an_unreachable_api_injects_with_a_could_not_check_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = crate::harness::issue_cert(dir.path(), "api");
    let closed = dir.path().join("kubeconfig");
    let server = format!("https://127.0.0.1:{}", free_port());
    kubeconfig(&closed, &server, &ca, "t");
    let hook = Webhook::start_with_kubeconfig("", &closed);
    let response = hook.review(&super::pod_review(&super::fixture("bare")));
    assert_eq!(response["allowed"], true);
    super::patch_of(&response);
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains(
            "kms-sidecar: could not check that ConfigMap kms-sidecar exists in namespace apps"
        ),
        "{warnings}"
    );
    assert_eq!(
        hook.metric("kms_sidecar_webhook_config_map_lookups_total{outcome=\"unavailable\"}"),
        1.0
    );
}
