//! What the real API server (the suite's kube-apiserver) makes of the
//! webhook's answers: an injected pod passes the `restricted` Pod Security
//! Standard (the real PodSecurity admission decides), an injected pod with
//! pod-level resources passes the API server's validation, and a Windows pod
//! is admitted unchanged with the webhook's warning.

use super::Webhook;
use super::config_maps::{create, injected, stored};
use crate::harness::ControlPlane;
use serde_json::Value;

#[tokio::test]
async fn the_api_server_admits_what_the_webhook_injects_and_what_it_leaves_alone() {
    let cp = ControlPlane::start().await;
    cp.namespace(
        "restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    );
    cp.namespace("apps", &[]);
    for ns in ["restricted", "apps"] {
        cp.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: kms-sidecar, namespace: {ns} }}\ndata: {{ config.yaml: \"{{}}\" }}\n"
        ));
    }
    let hook = Webhook::start_with_kubeconfig("", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "apps")
        .await;

    // An app that meets `restricted` itself: with the sidecar, it still does.
    let app = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: restricted\n  labels: { kms-sidecar.io/inject: \"true\" }\nspec:\n  securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: RuntimeDefault } }\n  containers:\n    - name: app\n      image: busybox\n      securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }\n";
    let (_, warnings) = create(&cp, app);
    assert!(
        injected(&stored(&cp, "restricted", "app")),
        "not injected: {warnings}"
    );

    // Published specs, as the webhook decides on them (fixtures named in
    // each file): pod-level resources the sidecar fits into, and a pod
    // with a taken probes port, are stored injected; a Windows pod is
    // stored as it came, with the warning.
    // A Windows pod by spec.os.name, injected, would be rejected by the API
    // server (Linux-only securityContext fields in a Windows pod), and so
    // would a pod whose own requests leave no room for the sidecar: the
    // webhook leaves them alone (failure policy `ignore`) and they are
    // created, with its warning.
    for (fixture, name) in [
        ("pod-level-resources", "pod-resources-demo"),
        ("statsd-exporter", "statsd"),
        ("windows-iis", "iis"),
        ("windows-run-as-username", "win-user"),
        ("pod-level-resources", "no-room"),
    ] {
        let mut pod = super::fixture(fixture);
        if name == "no-room" {
            pod["spec"]["resources"]["requests"]["memory"] = "50Mi".into();
        }
        pod["metadata"]["namespace"] = "apps".into();
        pod["metadata"]["name"] = name.into();
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("generateName");
        }
        if let Some(spec) = pod["spec"].as_object_mut() {
            spec.remove("serviceAccountName");
        }
        let (_, warnings) = create(&cp, &pod.to_string());
        let stored: Value = stored(&cp, "apps", name);
        if fixture.starts_with("windows") {
            assert!(!injected(&stored), "{fixture}");
            assert!(warnings.contains("Windows"), "{fixture}: {warnings}");
        } else if name == "no-room" {
            assert!(!injected(&stored), "{name}");
            assert!(
                warnings.contains("spec.resources.requests.memory"),
                "{name}: {warnings}"
            );
        } else {
            assert!(injected(&stored), "{fixture}: {warnings}");
        }
    }
}
