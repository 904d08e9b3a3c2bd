//! What keeps the pod's other containers out of the sidecar, through the
//! webhook binary: the socket mounted read-only in every app container.

use super::{Webhook, fixture, patch_of, pod_review};
use serde_json::{Value, json};

/// `pod` as the webhook injects it.
fn injected(hook: &Webhook, pod: &Value) -> Value {
    let response = hook.review(&pod_review(pod));
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch_of(&response)).expect("the patch applies");
    patched
}

/// The containers of a pod other than the sidecar, named.
fn app_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter(|c| c["name"] != "kms-sidecar")
        .collect()
}

#[test]
fn every_app_mount_of_the_socket_is_read_only_and_the_sidecars_is_not() {
    let hook = Webhook::start("");
    let mut pod = fixture("multi-container");
    // A container that mounts the socket's volume itself, writable.
    pod["spec"]["containers"][1]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "kms-sidecar-socket", "mountPath": "/run/kms" }));
    let patched = injected(&hook, &pod);
    let apps = app_containers(&patched);
    assert_eq!(apps.len(), 3, "migrate, api, log-shipper");
    for c in apps {
        let mounts: Vec<&Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == "kms-sidecar-socket")
            .collect();
        assert!(!mounts.is_empty(), "{}: no socket", c["name"]);
        for m in mounts {
            assert_eq!(m["readOnly"], true, "{}: {m}", c["name"]);
        }
    }
    let sidecar = &patched["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "kms-sidecar");
    let own = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "kms-sidecar-socket")
        .expect("the sidecar mounts the socket");
    assert_ne!(
        own["readOnly"], true,
        "the sidecar creates the socket: {own}"
    );
}
