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

/// The socket volume mounts of each container of a stored pod, sorted:
/// (container, volume, path, read-only).
fn socket_mounts(pod: &Value) -> Vec<(String, String, String, bool)> {
    let mut out: Vec<_> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().cloned().unwrap_or_default())
        .flat_map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            c["volumeMounts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| {
                    m["name"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("kms-sidecar-socket")
                })
                .map(move |m| {
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (
                        name.clone(),
                        s("name"),
                        s("mountPath"),
                        m["readOnly"] == true,
                    )
                })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn per_container_sockets_and_openshift_namespaces_are_stored_as_injected() {
    let cp = ControlPlane::start().await;
    cp.namespace("apps", &[]);
    cp.namespace("team", &[]);
    for ns in ["apps", "team"] {
        cp.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: kms-sidecar, namespace: {ns} }}\ndata: {{ config.yaml: \"{{}}\" }}\n"
        ));
    }
    let hook = Webhook::start_with_kubeconfig("socket_per_container: true\n", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "apps")
        .await;
    // OpenShift's namespace controller annotates every namespace with its
    // range; PodSecurity `restricted` stands for restricted-v2's demands.
    cp.kubectl_ok(&[
        "annotate",
        "namespace",
        "team",
        "openshift.io/sa.scc.uid-range=1000680000/10000",
    ]);
    cp.kubectl_ok(&[
        "label",
        "namespace",
        "team",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let pod = |ns: &str, sc: &str, csc: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {ns}\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\nspec:\n  securityContext: {sc}\n  containers:\n    - {{ name: api, image: busybox, securityContext: {csc} }}\n    - {{ name: a-container-name-of-sixty-three-characters-the-longest-allowedx, image: busybox, securityContext: {csc} }}\n"
        )
    };
    let long = "a-container-name-of-sixty-three-characters-the-longest-allowedx";
    assert_eq!(long.len(), 63);

    // Each container its own volume, and a name within the API's 63.
    let (_, warnings) = create(&cp, &pod("apps", "{ runAsUser: 1000 }", "{}"));
    let stored_pod = stored(&cp, "apps", "app");
    assert!(injected(&stored_pod), "{warnings}");
    let long_volume = "kms-sidecar-socket-a-container-name-of-sixty-";
    let mounts = socket_mounts(&stored_pod);
    let s = |x: &str| x.to_owned();
    assert_eq!(mounts.len(), 5, "{mounts:?}");
    assert!(
        mounts[0].1.starts_with(long_volume) && mounts[0].1.len() == 62,
        "{mounts:?}"
    );
    assert_eq!(mounts[0].2, "/var/run/kms");
    assert_eq!(
        mounts[1],
        (
            s("api"),
            s("kms-sidecar-socket-api"),
            s("/var/run/kms"),
            true
        )
    );
    assert_eq!(mounts[2].1, "kms-sidecar-socket");
    assert_eq!(
        mounts[3],
        (
            s("kms-sidecar"),
            mounts[0].1.clone(),
            format!("/var/run/kms-sidecar/containers/{long}"),
            false
        )
    );

    // An OpenShift namespace under `restricted`: admitted, the sidecar
    // with no uid of the webhook's.
    let restricted = pod(
        "team",
        "{ runAsNonRoot: true, seccompProfile: { type: RuntimeDefault } }",
        "{ allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }",
    );
    let (_, warnings) = create(&cp, &restricted);
    let stored_pod = stored(&cp, "team", "app");
    assert!(injected(&stored_pod), "{warnings}");
    let sidecar = &stored_pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "kms-sidecar");
    assert!(
        sidecar["securityContext"]["runAsUser"].is_null(),
        "{sidecar}"
    );
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert!(stored_pod["spec"]["securityContext"]["fsGroup"].is_null());
    assert!(
        hook.metric("kms_sidecar_webhook_namespace_lookups_total{outcome=\"openshift\"}") >= 1.0
    );
}
