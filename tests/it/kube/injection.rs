//! The chart installed by the real `helm install` and its webhook running,
//! as `make kube-up` sets them up (kube-up, with the controller manager):
//! the real API server sends the webhook the pods the chart's selectors
//! choose, and only those are injected — a labelled pod in an opted-in
//! namespace, a Deployment's pods (made by its ReplicaSet); not an opted-out
//! pod, not a pod in a namespace without `webhook.namespaceLabels`, never a
//! pod in the webhook's own namespace.

use super::{create, injected, labelled_pod, stderr, stored};
use crate::harness::{ControlPlane, KubeUp, eventually};
use serde_json::Value;
use std::time::Duration;

/// The chart's opt-in label for namespaces in this test.
const OPT_IN: (&str, &str) = ("kms-sidecar.io/injection", "enabled");

#[track_caller]
fn create_ok(cp: &ControlPlane, yaml: &str) {
    let out = create(cp, yaml);
    assert!(out.status.success(), "kubectl create: {}", stderr(&out));
}

/// The sidecar's ConfigMap in `namespace` (the chart's, copied), so that
/// only the selectors decide whether a pod there is injected.
fn copy_config_map(cp: &ControlPlane, namespace: &str) {
    let config: Value = serde_json::from_str(&cp.kubectl_ok(&[
        "-n",
        "kms-system",
        "get",
        "configmap",
        "kms-sidecar",
        "-o",
        "json",
    ]))
    .unwrap();
    let copy = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "kms-sidecar", "namespace": namespace },
        "data": config["data"],
    });
    cp.apply(&copy.to_string());
}

#[tokio::test]
async fn the_chart_s_webhook_injects_the_pods_its_selectors_choose_and_only_those() {
    let label = format!(
        "--set=webhook.namespaceLabels.kms-sidecar\\.io/injection={}",
        OPT_IN.1
    );
    let cp = KubeUp::default()
        .controller_manager()
        .chart(&[&label])
        .start()
        .await;

    // `apps` is opted in (kube-up labels it as the chart's selector says).
    create_ok(&cp, &labelled_pod("apps", "labelled", ""));
    assert!(injected(&stored(&cp, "apps", "labelled")), "not injected");

    // Opted out by annotation: sent to the webhook, left alone.
    create_ok(
        &cp,
        &labelled_pod("apps", "opted-out", "kms-sidecar.io/inject: \"false\""),
    );
    assert!(
        !injected(&stored(&cp, "apps", "opted-out")),
        "opted out, injected"
    );

    // A Deployment: the controller manager makes its ReplicaSet, which
    // creates the pods through the same admission chain.
    cp.apply(DEPLOYMENT);
    eventually(Duration::from_secs(60), "the Deployment's 2 pods", || {
        let names = cp.kubectl_ok(&["-n", "apps", "get", "pods", "-l", "app=web", "-o", "name"]);
        async move { names.lines().count() == 2 }
    })
    .await;
    let pods: Value = serde_json::from_str(
        &cp.kubectl_ok(&["-n", "apps", "get", "pods", "-l", "app=web", "-o", "json"]),
    )
    .unwrap();
    for pod in pods["items"].as_array().unwrap() {
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet",
            "{pod}"
        );
        assert!(injected(pod), "a Deployment's pod not injected: {pod}");
    }

    // A namespace without the opt-in label: not injected, though its pod is
    // labelled and the namespace has the sidecar's ConfigMap; once labelled,
    // the same pod is.
    cp.kubectl_ok(&["create", "namespace", "excluded"]);
    copy_config_map(&cp, "excluded");
    wait_for_default_service_account(&cp, "excluded").await;
    create_ok(&cp, &labelled_pod("excluded", "before", ""));
    assert!(
        !injected(&stored(&cp, "excluded", "before")),
        "excluded namespace injected"
    );
    let opt_in = format!("{}={}", OPT_IN.0, OPT_IN.1);
    cp.kubectl_ok(&["label", "namespace", "excluded", &opt_in]);
    create_ok(&cp, &labelled_pod("excluded", "after", ""));
    assert!(
        injected(&stored(&cp, "excluded", "after")),
        "opted-in namespace not injected"
    );

    // The webhook's own namespace, even opted in and with the ConfigMap
    // (the chart renders it there): never injected.
    cp.kubectl_ok(&["label", "namespace", "kms-system", &opt_in]);
    create_ok(&cp, &labelled_pod("kms-system", "own", ""));
    assert!(
        !injected(&stored(&cp, "kms-system", "own")),
        "the webhook's namespace injected"
    );
}

/// The controller manager makes a new namespace's `default` ServiceAccount
/// (ServiceAccount admission refuses pods until then).
async fn wait_for_default_service_account(cp: &ControlPlane, namespace: &str) {
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || {
            let ok = cp
                .kubectl(&["-n", namespace, "get", "serviceaccount", "default"])
                .status
                .success();
            async move { ok }
        },
    )
    .await;
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: apps }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata:
      labels: { app: web, kms-sidecar.io/inject: \"true\" }
    spec:
      containers:
        - { name: app, image: busybox, securityContext: { runAsUser: 1000 } }
";
