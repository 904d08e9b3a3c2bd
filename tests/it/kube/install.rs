//! The chart and the plain manifests against the real API server: `helm
//! install` with the default values and with a production values file
//! (`tests/chart/values/production.yaml`: three replicas, opted-in
//! namespaces, `failurePolicy: Fail`, a priority class, resources, TLS made
//! by Helm as no cert-manager is needed), the webhook's pods made by the
//! controller manager through the admission chain; and every file of
//! `manifests/` and `manifests/examples/` accepted by `kubectl apply
//! --server-side --dry-run=server` (cert-manager's CRDs installed, so its
//! Issuers and Certificates are validated too).

use crate::harness::{CHART_DIR, ControlPlane, KubeUp, eventually, kube_bin_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PRODUCTION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/chart/values/production.yaml"
);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Waits until the release's webhook Deployment has `replicas` pods.
async fn webhook_pods(cp: &ControlPlane, namespace: &str, release: &str, replicas: usize) {
    let selector =
        format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=webhook");
    eventually(
        Duration::from_secs(60),
        &format!("{replicas} webhook pods of {release}"),
        || {
            let names = cp.kubectl_ok(&[
                "-n", namespace, "get", "pods", "-l", &selector, "-o", "name",
            ]);
            async move { names.lines().count() == replicas }
        },
    )
    .await;
}

#[tokio::test]
async fn helm_installs_the_chart_with_default_and_production_values() {
    let cp = KubeUp::default().controller_manager().start().await;

    cp.helm_ok(&[
        "install",
        "kms-sidecar",
        CHART_DIR,
        "-n",
        "kms-system",
        "--create-namespace",
    ]);
    webhook_pods(&cp, "kms-system", "kms-sidecar", 2).await;

    // The production file's sidecar namespaces exist before the install
    // (the chart writes a ConfigMap into each).
    for ns in ["payments", "batch"] {
        cp.kubectl_ok(&["create", "namespace", ns]);
    }
    cp.helm_ok(&[
        "install",
        "prod",
        CHART_DIR,
        "-n",
        "platform",
        "--create-namespace",
        "--values",
        PRODUCTION,
    ]);
    webhook_pods(&cp, "platform", "prod", 3).await;
    let mwc = json(&cp.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration",
        "prod-kms-sidecar",
        "-o",
        "json",
    ]));
    let inject = &mwc["webhooks"][0];
    assert_eq!(inject["name"], "inject.kms-sidecar.io", "{mwc}");
    assert_eq!(inject["failurePolicy"], "Fail", "{mwc}");
    assert_eq!(inject["timeoutSeconds"], 3, "{mwc}");
    assert_eq!(
        inject["namespaceSelector"]["matchLabels"]["kms-sidecar.io/injection"], "enabled",
        "{mwc}"
    );
    for ns in ["payments", "batch", "platform"] {
        let config =
            json(&cp.kubectl_ok(&["-n", ns, "get", "configmap", "kms-sidecar", "-o", "json"]));
        assert!(
            config["data"]["config.yaml"]
                .as_str()
                .unwrap_or_default()
                .contains("alias/payments"),
            "{ns}: {config}"
        );
    }
    let deployment = json(&cp.kubectl_ok(&[
        "-n",
        "platform",
        "get",
        "deployment",
        "prod-kms-sidecar-webhook",
        "-o",
        "json",
    ]));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical", "{pod}");
    let webhook = json(&cp.kubectl_ok(&[
        "-n",
        "platform",
        "get",
        "configmap",
        "prod-kms-sidecar-webhook",
        "-o",
        "json",
    ]));
    let config = webhook["data"]["webhook.yaml"].as_str().unwrap_or_default();
    assert!(
        config.contains("failure_policy: fail") && config.contains("96Mi"),
        "{config}"
    );
}

/// Each YAML file of `dir` (sorted).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The objects of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[tokio::test]
async fn the_api_server_accepts_every_file_of_manifests_in_a_server_side_dry_run() {
    let cp = KubeUp::default().controller_manager().start().await;
    let crds = kube_bin_dir().join("crds");
    cp.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut files = yaml_files(&root);
    files.extend(yaml_files(&root.join("examples")));
    // values.yaml is Helm values for `make manifests`, not objects.
    files.retain(|f| f.file_name().is_some_and(|n| n != "values.yaml"));
    assert!(files.len() >= 8, "{files:?}");
    let mut refused = Vec::new();
    for file in &files {
        let docs = documents(file);
        // What the files live in; and the ServiceAccounts their pods name,
        // made for real (a dry run stores nothing, and ServiceAccount
        // admission looks the pod's account up).
        for doc in &docs {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            let _ = cp.kubectl(&["create", "namespace", ns]);
            if doc["kind"] == "ServiceAccount" {
                cp.apply(&doc.to_string());
            }
        }
        let out = cp.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            file.to_str().unwrap(),
        ]);
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        if out.status.success() {
            let applied = String::from_utf8_lossy(&out.stdout).lines().count();
            assert_eq!(
                applied,
                docs.len(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        } else {
            refused.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(
        refused.is_empty(),
        "refused by the API server:\n{}",
        refused.join("\n")
    );
}
