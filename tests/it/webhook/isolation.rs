//! What keeps the pod's other containers out of the sidecar, through the
//! webhook binary: the socket mounted read-only in every app container, pods
//! that share one process namespace or run a container as the sidecar's uid
//! refused, and ephemeral containers (`kubectl debug`) that would reach into
//! the sidecar denied.

use super::{Webhook, fixture, patch_of, pod_review, review_of};
use serde_json::{Value, json};

/// The uid the webhook gives the sidecar by default (`run_as_user`).
const SIDECAR_UID: i64 = 65532;

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

/// Pods whose containers could act as the sidecar: one process namespace for
/// all (each sees the sidecar's process and, as root or its uid, its memory
/// and token files through /proc), or a container that runs as the
/// sidecar's uid, set on the container (app or init) or by the pod for a
/// container that sets none. Refused as the failure policy says.
#[test]
fn pods_sharing_processes_or_running_as_the_sidecars_uid_are_refused() {
    let ignore = Webhook::start("");
    let fail = Webhook::start("failure_policy: fail\n");
    let with = |pointer: &str, value: Value| {
        let mut pod = fixture("multi-container");
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        pod.pointer_mut(parent).unwrap()[field] = value;
        pod
    };
    let as_sidecar = json!({ "runAsUser": SIDECAR_UID });
    let cases = [
        (
            with("/spec/shareProcessNamespace", json!(true)),
            "shareProcessNamespace",
        ),
        (
            with("/spec/containers/1/securityContext", as_sidecar.clone()),
            "spec.containers[1] runs as uid 65532",
        ),
        (
            with("/spec/initContainers/0/securityContext", as_sidecar.clone()),
            "spec.initContainers[0] runs as uid 65532",
        ),
        (
            with("/spec/securityContext/runAsUser", json!(SIDECAR_UID)),
            "the pod's securityContext",
        ),
    ];
    for (pod, blamed) in &cases {
        let r = ignore.review(&pod_review(pod));
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("patch").is_none(), "{blamed}: injected: {r}");
        let warning = r["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains(blamed), "{blamed}: {r}");
        let r = fail.review(&pod_review(pod));
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(blamed), "{blamed}: {r}");
    }
    assert_eq!(
        ignore.metric("kms_sidecar_webhook_reviews_total{outcome=\"refused\"}"),
        4.0
    );

    // The pod's uid does not apply to containers that set their own, and
    // the sidecar's uid is the webhook's `run_as_user`.
    let mut own_uids = with("/spec/securityContext/runAsUser", json!(SIDECAR_UID));
    for list in ["containers", "initContainers"] {
        for c in own_uids["spec"][list].as_array_mut().unwrap() {
            c["securityContext"] = json!({ "runAsUser": 1000 });
        }
    }
    assert!(
        !patch_of(&ignore.review(&pod_review(&own_uids)))
            .0
            .is_empty()
    );
    let other = Webhook::start("run_as_user: 4242\n");
    let r = other.review(&pod_review(&cases[1].0));
    assert!(
        !patch_of(&r).0.is_empty(),
        "65532 is not this sidecar's uid: {r}"
    );
    let r = other.review(&pod_review(&with(
        "/spec/containers/0/securityContext",
        json!({ "runAsUser": 4242 }),
    )));
    let warning = r["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("runs as uid 4242"), "{r}");
}

/// An UPDATE of `pod`'s `ephemeralcontainers` subresource adding `debugger`,
/// as the API server sends it for `kubectl debug`.
fn ephemeral_review(pod: &Value, debugger: Value) -> Value {
    let mut updated = pod.clone();
    updated["spec"]["ephemeralContainers"] = json!([debugger]);
    let mut review = review_of(("", "v1", "Pod"), "pods", "UPDATE", &updated);
    let request = &mut review["request"];
    request["subResource"] = json!("ephemeralcontainers");
    request["requestSubResource"] = json!("ephemeralcontainers");
    request["oldObject"] = pod.clone();
    request["options"] = json!({ "apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions" });
    review
}

/// A debug container may not mount the sidecar's tokens or private
/// directory, mount the socket writable, join the sidecar's process
/// namespace or run as its uid: denied whatever the failure policy (the
/// default `ignore` here). Any other debug container, and any on a pod
/// without the sidecar, is allowed unchanged.
#[test]
fn ephemeral_containers_that_reach_into_the_sidecar_are_denied() {
    let hook = Webhook::start("");
    let pod = injected(&hook, &fixture("multi-container"));
    let debugger = |extra: Value| {
        let mut c =
            json!({ "name": "debugger", "image": "busybox:1.37", "stdin": true, "tty": true });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let mount = |name: &str, read_only: bool| json!({ "volumeMounts": [{ "name": name, "mountPath": "/mnt/x", "readOnly": read_only }] });
    for (extra, reason) in [
        (
            mount("kms-sidecar-tokens", true),
            "mounts kms-sidecar-tokens",
        ),
        (mount("kms-sidecar-data", true), "mounts kms-sidecar-data"),
        (mount("kms-sidecar-socket", false), "readOnly: true"),
        (
            json!({ "targetContainerName": "kms-sidecar" }),
            "targets kms-sidecar",
        ),
        (
            json!({ "securityContext": { "runAsUser": SIDECAR_UID } }),
            "runs as uid 65532",
        ),
    ] {
        let r = hook.review(&ephemeral_review(&pod, debugger(extra.clone())));
        assert_eq!(r["allowed"], false, "{extra}: {r}");
        assert!(r.get("patch").is_none(), "{r}");
        let message = r["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("debugger") && message.contains(reason),
            "{extra}: {message}"
        );
    }
    for extra in [
        json!({ "targetContainerName": "api" }),
        mount("kms-sidecar-socket", true),
        mount("kms-sidecar-config", true),
    ] {
        let r = hook.review(&ephemeral_review(&pod, debugger(extra.clone())));
        assert_eq!(r["allowed"], true, "{extra}: {r}");
        assert!(
            r.get("patch").is_none() && r.get("warnings").is_none(),
            "{r}"
        );
    }
    // A labelled pod the webhook did not inject has no sidecar to protect.
    let r = hook.review(&ephemeral_review(
        &fixture("bare"),
        debugger(json!({ "targetContainerName": "kms-sidecar" })),
    ));
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"denied\"}"),
        5.0
    );
}
