//! Reinvocation by a real API server (the suite's kube-apiserver): a second
//! mutating webhook (`tests/kube/cmd/second-webhook`, configuration
//! `zz-second-webhook`, which the API server calls after ours as it orders
//! configurations by name) adds a container after the sidecar was injected;
//! as both say `reinvocationPolicy: IfNeeded`, the API server calls ours
//! again (`staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/mutating/dispatcher.go`)
//! and the added container gets the socket (with a socket per container,
//! its own, which the sidecar mounts).

use super::Webhook;
use crate::harness::{ControlPlane, SecondWebhook};
use serde_json::Value;

#[tokio::test]
async fn a_container_a_later_webhook_adds_gets_the_socket() {
    let cp = ControlPlane::start().await;
    cp.namespace("apps", &[]);
    cp.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: kms-sidecar, namespace: apps }\ndata: { config.yaml: \"{}\" }\n",
    );
    let hook = Webhook::start_with_kubeconfig("", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "apps")
        .await;
    let _second = SecondWebhook::start(&cp, "apps").await;

    let injected = || hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"injected\"}");
    let before = injected();
    cp.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: apps\n  labels: { kms-sidecar.io/inject: \"true\" }\nspec:\n  containers: [{ name: app, image: busybox }]\n",
    );
    let pod: Value =
        serde_json::from_str(&cp.kubectl_ok(&["-n", "apps", "get", "pod", "app", "-o", "json"]))
            .unwrap();
    let spec = &pod["spec"];
    let names = |list: &str| -> Vec<String> {
        spec[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("initContainers"),
        ["kms-sidecar"],
        "exactly one sidecar"
    );
    assert_eq!(names("containers"), ["app", "added-later"]);
    for c in spec["containers"].as_array().unwrap() {
        let mounts: Vec<&Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == "kms-sidecar-socket")
            .collect();
        assert_eq!(mounts.len(), 1, "{c}");
        assert_eq!(mounts[0]["mountPath"], "/var/run/kms");
        assert_eq!(mounts[0]["readOnly"], true);
        let env: Vec<&Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "KMS_SIDECAR_SOCKET")
            .collect();
        assert_eq!(env.len(), 1, "{c}");
    }
    // Our webhook injected once, and patched once more when called again.
    assert_eq!(injected() - before, 2.0);
}

#[tokio::test]
async fn a_container_a_later_webhook_adds_gets_its_own_socket() {
    let cp = ControlPlane::start().await;
    cp.namespace("apps", &[]);
    cp.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: kms-sidecar, namespace: apps }\ndata: { config.yaml: \"{}\" }\n",
    );
    let hook = Webhook::start_with_kubeconfig("socket_per_container: true\n", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "apps")
        .await;
    let _second = SecondWebhook::start(&cp, "apps").await;
    cp.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: apps\n  labels: { kms-sidecar.io/inject: \"true\" }\nspec:\n  containers: [{ name: app, image: busybox }]\n",
    );
    let pod: Value =
        serde_json::from_str(&cp.kubectl_ok(&["-n", "apps", "get", "pod", "app", "-o", "json"]))
            .unwrap();
    let spec = &pod["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "kms-sidecar");
    for name in ["app", "added-later"] {
        let c = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let volume = format!("kms-sidecar-socket-{name}");
        let sockets: Vec<(&str, &str, bool)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("kms-sidecar-socket")
            })
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                    m["readOnly"] == true,
                )
            })
            .collect();
        assert_eq!(sockets, [(volume.as_str(), "/var/run/kms", true)], "{c}");
        let dir = format!("/var/run/kms-sidecar/containers/{name}");
        assert!(
            sidecar["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == volume.as_str() && m["mountPath"] == dir.as_str()),
            "{sidecar}"
        );
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(
            volumes
                .iter()
                .filter(|v| v["name"] == volume.as_str())
                .count(),
            1
        );
    }
}
