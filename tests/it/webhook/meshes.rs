//! Pods a service mesh's injector made (Istio's and Linkerd's own test data,
//! `tests/webhook/pods/{istio,linkerd}-{native,classic}.yaml`, sources named
//! in each), created through the real API server with our webhook
//! registered: stored with the sidecar right after a native proxy, or first
//! with the mesh's exclusion annotation before a classic one; and the
//! sidecar, run by the kubelet stand-in with no network to its KMS, passes
//! the startup probe those pods got while `/readyz` says why it is not ready. And with a mesh-like
//! webhook (`tests/kube/cmd/second-webhook --native-proxy`) called before
//! ours or after (the API server orders configurations by name: Istio's
//! `istio-sidecar-injector` before `kms-sidecar`, Linkerd's
//! `linkerd-proxy-injector-webhook-config` after), the sidecar ends up right
//! after the native proxy either way.

use super::Webhook;
use super::config_maps::{create, injected, stored};
use crate::harness::{ControlPlane, RunOptions, RunningPod, SecondWebhook, free_port, run_tool};
use serde_json::Value;

const ISTIO_EXCLUDE: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const LINKERD_SKIP: &str = "config.linkerd.io/skip-outbound-ports";

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn has_socket(c: &Value) -> bool {
    let mounts = c["volumeMounts"].as_array().into_iter().flatten();
    mounts
        .into_iter()
        .any(|m| m["name"] == "kms-sidecar-socket")
}

/// The mesh fixture `name`, in `namespace`, created through the API server:
/// the pod as stored and kubectl's warnings.
fn create_fixture(cp: &ControlPlane, name: &str, namespace: &str) -> (Value, String) {
    let mut pod = super::fixture(name);
    pod["metadata"]["namespace"] = namespace.into();
    pod["metadata"]["name"] = name.into();
    let (_, warnings) = create(cp, &pod.to_string());
    (stored(cp, namespace, name), warnings)
}

#[tokio::test]
async fn mesh_pods_are_stored_with_the_sidecar_where_it_can_start() {
    let cp = ControlPlane::start().await;
    cp.namespace("meshed", &[]);
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "kms-sidecar", "namespace": "meshed" },
        "data": { "config.yaml": offline_config() },
    });
    cp.apply(&config.to_string());
    let probes_port = free_port();
    let hook = Webhook::start_with_kubeconfig(
        &format!("tokens: [vault]\nprobes_port: {probes_port}\n"),
        &cp.kubeconfig,
    );
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "meshed")
        .await;

    // Native proxies: ours right after, nothing excluded.
    for (fixture, mesh, app) in [
        ("istio-native", ["istio-init", "istio-proxy"], "hello"),
        (
            "linkerd-native",
            ["linkerd-init", "linkerd-proxy"],
            "vote-bot",
        ),
    ] {
        let (pod, warnings) = create_fixture(&cp, fixture, "meshed");
        assert!(injected(&pod), "{fixture}: {warnings}");
        let init = &pod["spec"]["initContainers"];
        assert_eq!(
            names(init),
            [mesh[0], mesh[1], "kms-sidecar"],
            "{fixture}: {warnings}"
        );
        assert_eq!(init[2]["restartPolicy"], "Always");
        assert_eq!(init[1]["restartPolicy"], "Always", "the proxy as made");
        let annotations = &pod["metadata"]["annotations"];
        assert!(annotations.get(ISTIO_EXCLUDE).is_none(), "{annotations}");
        assert!(annotations.get(LINKERD_SKIP).is_none(), "{annotations}");
        let app = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == app)
            .unwrap();
        assert!(has_socket(app), "{fixture}");
        assert!(!init.as_array().unwrap()[..2].iter().any(has_socket));
    }

    // Classic proxies: ours first, its KMS port excluded in the mesh's own
    // annotation (merged into linkerd-init's list), and kubectl shows what
    // to set on the template for the init container made before.
    for (fixture, mesh_init, key, value, proxy) in [
        (
            "istio-classic",
            "istio-init",
            ISTIO_EXCLUDE,
            "443",
            "istio-proxy",
        ),
        (
            "linkerd-classic",
            "linkerd-init",
            LINKERD_SKIP,
            "4567,4568,443",
            "linkerd-proxy",
        ),
    ] {
        let (pod, warnings) = create_fixture(&cp, fixture, "meshed");
        assert!(injected(&pod), "{fixture}: {warnings}");
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["kms-sidecar", mesh_init],
            "{fixture}"
        );
        assert_eq!(pod["metadata"]["annotations"][key], value, "{fixture}");
        assert!(
            warnings.contains(&format!("{key}: \"{value}\"")),
            "{fixture}: {warnings}"
        );
        let containers = pod["spec"]["containers"].as_array().unwrap();
        let proxy = containers.iter().find(|c| c["name"] == proxy).unwrap();
        assert!(!has_socket(proxy), "{fixture}: the proxy is no app");
    }

    // A meshed pod as stored, run by the kubelet stand-in: its sidecar
    // starts while its KMS cannot be reached.
    starts_with_no_network(&cp, "istio-native", probes_port).await;
}

/// The sidecar's config in the meshed namespace: a Vault (Kubernetes auth
/// with the token the webhook projects) at an address where nothing
/// answers, as before a mesh's proxy runs; root (the test, from outside the
/// pod) may call.
fn offline_config() -> String {
    format!(
        "backends:\n  vault:\n    type: vault\n    address: http://127.0.0.1:{}\n    timeout: 1s\n    auth: {{ method: kubernetes, role: app, token_file: /var/run/secrets/kms-sidecar/vault, audience: vault }}\nkeys:\n  k: {{ backend: vault, key: k }}\ncallers:\n  - {{ uids: [0], keys: [\"*\"], ops: [\"*\"] }}\n",
        free_port()
    )
}

/// Runs the stored pod `name`'s sidecar with the kubelet stand-in, which
/// starts the pod's other containers only once its startup probe passes:
/// with no network to its KMS it starts (socket serving, the stored startup
/// probe 200), while the stored readiness probe gets 503 and `/readyz` on
/// the socket says why.
async fn starts_with_no_network(cp: &ControlPlane, name: &str, probes_port: u16) {
    let pod = stored(cp, "meshed", name);
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kms-sidecar")
        .unwrap();
    let path = |probe: &str| {
        sidecar[probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (startup, ready) = (path("startupProbe"), path("readinessProbe"));
    let only = RunOptions {
        only: &["kms-sidecar"],
        ..RunOptions::default()
    };
    // Returns once the runner saw the startup probe pass.
    let running = RunningPod::start(cp, "meshed", name, only).await;
    let started = running.events("startup probe passed");
    assert!(!started.is_empty(), "{}", running.logs());
    let socket = running.volume("kms-sidecar-socket").join("kms.sock");
    let curl = |extra: &[&str], url: &str| {
        let mut args = vec!["-s", "--max-time", "5", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        args.push(url);
        let (ok, out, err) = run_tool("curl", &args, super::CURL_HINT);
        assert!(ok, "curl {url}: {err}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let probe = |path: &str| curl(&[], &format!("http://127.0.0.1:{probes_port}{path}"));
    let (code, body) = probe(&startup);
    assert_eq!(code, "200", "the startup probe {startup}: {body}");
    // The probe port tells the kubelet the status alone; the socket tells
    // the app why.
    let (code, body) = probe(&ready);
    assert_eq!(code, "503", "{ready}: {body}");
    assert!(body.contains("not_ready"), "{body}");
    let on_socket = ["--unix-socket", socket.to_str().unwrap()];
    let (code, body) = curl(&on_socket, "http://kms/readyz");
    assert_eq!(code, "503", "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let vault = &body["backends"]["vault"];
    assert_eq!(vault["status"], "error", "{body}");
    println!("/readyz with no network: {body}");
    let reason = vault["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("Connection refused"),
        "/readyz says why: {body}"
    );
    // The socket serves requests meanwhile.
    let (code, body) = curl(&on_socket, "http://kms/v1/keys");
    assert_eq!(code, "200", "{body}");
}

#[tokio::test]
async fn the_sidecar_follows_a_native_proxy_whichever_webhook_runs_first() {
    let cp = ControlPlane::start().await;
    cp.namespace("meshed", &[]);
    cp.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: kms-sidecar, namespace: meshed }\ndata: { config.yaml: \"{}\" }\n",
    );
    let hook = Webhook::start_with_kubeconfig("", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "meshed")
        .await;
    // An app init container that runs after the sidecar, with the socket.
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: meshed\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\nspec:\n  initContainers: [{{ name: migrate, image: busybox }}]\n  containers: [{{ name: app, image: busybox }}]\n"
        )
    };
    // The mesh after ours (it appends its proxy behind the sidecar; ours,
    // reinvoked, moves right after it), then before ours.
    for (config, name) in [("zz-mesh", "mesh-after"), ("aa-mesh", "mesh-before")] {
        let mesh = SecondWebhook::start_as(&cp, "meshed", config, Some("istio-proxy")).await;
        let (_, warnings) = create(&cp, &pod(name));
        let stored = stored(&cp, "meshed", name);
        assert!(injected(&stored), "{name}: {warnings}");
        let init = &stored["spec"]["initContainers"];
        let order = names(init);
        let ours = order.iter().position(|&c| c == "kms-sidecar").unwrap();
        let proxy = order.iter().position(|&c| c == "istio-proxy").unwrap();
        assert_eq!(ours, proxy + 1, "{name}: {order:?}");
        assert_eq!(init[proxy]["restartPolicy"], "Always");
        assert!(!has_socket(&init[proxy]), "{name}: the proxy is no app");
        // An app init container the proxy was put after runs before the
        // sidecar: moved there, it is named in a warning.
        assert_eq!(
            name == "mesh-after",
            warnings.contains("(migrate) now runs before the sidecar"),
            "{name}: {warnings}"
        );
        drop(mesh);
        cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", config]);
    }
}
