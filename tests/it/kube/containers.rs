//! A socket per container and OpenShift, end to end (issue 32 §1, §2):
//! pods admitted by the real API server through the webhook binary, run by
//! the kubelet stand-in (`tests/kube/cmd/pod-runner`: each container in its
//! own mount and PID namespaces, as its uid and groups), called from inside
//! their containers.
//!
//! - two app containers under one uid, a rule for one of them: the other
//!   cannot sign by any route it can name (its own socket answers 403;
//!   the other's is mounted nowhere it can reach, not even through
//!   `/proc/PID/root`);
//! - on OpenShift (the namespace's `openshift.io/sa.scc.uid-range`, the
//!   `restricted-v2` SCC played by `second-webhook --scc-uid-range`, which
//!   gives every container the range's first uid and the runtime gid 0):
//!   the pod passes PodSecurity `restricted`, its sidecar has no uid of the
//!   webhook's, and each container reaches only its own grants.

use super::stored;
use crate::harness::{ControlPlane, RunOptions, RunningPod, SecondWebhook, free_port};
use crate::webhook::Webhook;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;

/// The sidecar config of both tests: a signing key and an encryption key,
/// in the sidecar's own directory; `api` may sign, `worker` encrypt.
const SIDECAR_CONFIG: &str = r#"backends:
  dev: { type: local, dir: /var/lib/kms-sidecar/keys }
keys:
  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }
  data: { backend: dev, key: data, algorithm: aes-256-gcm }
callers:
  - { containers: [api], keys: [sig], ops: [sign] }
  - { containers: [worker], keys: [data], ops: [encrypt] }
"#;

/// Two app containers `api` and `worker`, the pod's security context `@SC@`
/// and each container's `@CSC@`, more annotations `@ANNOTATIONS@`.
const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: @NS@
  labels: { kms-sidecar.io/inject: "true" }
  annotations: { kms-sidecar.io/probes-port: "@PORT@", kms-sidecar.io/tokens: none@ANNOTATIONS@ }
spec:
  automountServiceAccountToken: false
  securityContext: @SC@
  containers:
  - { name: api, image: busybox, command: [sleep, infinity], securityContext: @CSC@ }
  - { name: worker, image: busybox, command: [sleep, infinity], securityContext: @CSC@ }
"#;

/// The namespace `ns` with the sidecar's ConfigMap.
fn namespace(cp: &ControlPlane, ns: &str, labels: &[(&str, &str)]) {
    cp.namespace(ns, labels);
    let data = SIDECAR_CONFIG.replace('\n', "\n    ");
    cp.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: kms-sidecar, namespace: {ns} }}\ndata:\n  config.yaml: |\n    {data}\n"
    ));
}

/// A call from inside `container` to `path` through `socket` (default: the
/// one its `KMS_SIDECAR_SOCKET` names): the HTTP status, 0 when it could
/// not connect.
fn call(pod: &RunningPod, container: &str, socket: Option<&str>, path: &str, body: &str) -> u16 {
    let script = r#"s=${1:-$KMS_SIDECAR_SOCKET}; curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket "$s" -d "$3" "http://localhost$2" || true"#;
    let out = pod.exec(
        container,
        &["sh", "-c", script, "sh", socket.unwrap_or(""), path, body],
    );
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    code.parse().unwrap_or(0)
}

const SIGN: (&str, &str) = ("/v1/keys/sig/sign", r#"{"message":"aGk="}"#);
const ENCRYPT: (&str, &str) = ("/v1/keys/data/encrypt", r#"{"plaintext":"aGk="}"#);

/// Each socket-volume the stored `pod` mounts, per container: (container,
/// volume, path, read-only).
fn socket_mounts(pod: &Value) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or_default();
                if name.starts_with("kms-sidecar-socket") {
                    out.push((
                        c["name"].as_str().unwrap().to_owned(),
                        name.to_owned(),
                        m["mountPath"].as_str().unwrap().to_owned(),
                        m["readOnly"] == true,
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_container_cannot_sign_by_any_route_where_another_of_its_uid_may() {
    let cp = ControlPlane::start().await;
    namespace(&cp, "apps", &[]);
    let hook = Webhook::start_with_kubeconfig("", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "apps")
        .await;
    // The same uid and gid for both: uid rules could not tell them apart.
    let out = super::create(
        &cp,
        &POD.replace("@NS@", "apps")
            .replace("@PORT@", &free_port().to_string())
            .replace(
                "@ANNOTATIONS@",
                r#", kms-sidecar.io/socket-per-container: "true""#,
            )
            .replace("@CSC@", "{}")
            .replace("@SC@", "{ runAsUser: 1000, runAsGroup: 1000 }"),
    );
    let said = super::stderr(&out);
    assert!(out.status.success(), "{said}");
    let pod = stored(&cp, "apps", "app");
    assert!(super::injected(&pod), "{said}");
    let s = |x: &str| x.to_owned();
    assert_eq!(
        socket_mounts(&pod),
        [
            (
                s("api"),
                s("kms-sidecar-socket-api"),
                s("/var/run/kms"),
                true
            ),
            (
                s("kms-sidecar"),
                s("kms-sidecar-socket"),
                s("/var/run/kms"),
                false
            ),
            (
                s("kms-sidecar"),
                s("kms-sidecar-socket-api"),
                s("/var/run/kms-sidecar/containers/api"),
                false
            ),
            (
                s("kms-sidecar"),
                s("kms-sidecar-socket-worker"),
                s("/var/run/kms-sidecar/containers/worker"),
                false
            ),
            (
                s("worker"),
                s("kms-sidecar-socket-worker"),
                s("/var/run/kms"),
                true
            ),
        ],
        "each container its own socket, stored by the API server"
    );
    let running = RunningPod::start(&cp, "apps", "app", RunOptions::default()).await;
    assert_eq!(
        call(&running, "api", None, SIGN.0, SIGN.1),
        200,
        "{}",
        running.logs()
    );
    assert_eq!(call(&running, "worker", None, SIGN.0, SIGN.1), 403);
    assert_eq!(call(&running, "worker", None, ENCRYPT.0, ENCRYPT.1), 200);

    // Every other route `worker` can name to `api`'s socket or the shared
    // one: the sidecar's paths, the volumes' paths on this machine (the
    // kubelet's pod directory stands there), and every process's root it
    // can see, `api`'s and the sidecar's pids on this machine included.
    let pid = |c: &str| -> String {
        let spec = std::fs::read_to_string(
            running
                .state
                .path()
                .join("containers")
                .join(format!("{c}.json")),
        )
        .unwrap();
        serde_json::from_str::<Value>(&spec).unwrap()["pid"].to_string()
    };
    let volume = |v: &str| running.volume(v).join("kms.sock").display().to_string();
    let mut routes = vec![
        s("/var/run/kms-sidecar/containers/api/kms.sock"),
        s("/var/run/kms-sidecar/containers/worker/kms.sock"),
        volume("kms-sidecar-socket-api"),
        volume("kms-sidecar-socket"),
    ];
    for c in ["api", "kms-sidecar"] {
        let p = pid(c);
        routes.push(format!("/proc/{p}/root/var/run/kms/kms.sock"));
        routes.push(format!(
            "/proc/{p}/root/var/run/kms-sidecar/containers/api/kms.sock"
        ));
    }
    let listed = running.exec(
        "worker",
        &[
            "sh",
            "-c",
            "ls -d /proc/[0-9]*/root/var/run/kms/kms.sock /proc/[0-9]*/root/var/run/kms-sidecar/containers/*/kms.sock 2>/dev/null",
        ],
    );
    let seen = String::from_utf8_lossy(&listed.stdout).into_owned();
    routes.extend(seen.lines().map(str::to_owned));
    for route in &routes {
        let code = call(&running, "worker", Some(route), SIGN.0, SIGN.1);
        assert!(
            code == 0 || code == 403,
            "worker signed through {route}: {code}"
        );
    }
    // It saw no process but its own: one `sleep`, no sidecar.
    let ps = running.exec(
        "worker",
        &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
    );
    let seen = String::from_utf8_lossy(&ps.stdout);
    assert!(
        seen.matches("sleep infinity").count() == 1 && !seen.contains("kms-sidecar serve"),
        "worker sees {seen}"
    );
    // And `api` still may.
    assert_eq!(call(&running, "api", None, SIGN.0, SIGN.1), 200);
}

/// A namespace range as OpenShift's allocator gives one: a random block of
/// 10000 uids above 1000000000.
fn random_range() -> (u32, String) {
    let first = 1_000_000_000 + fastrand::u32(0..100_000) * 10_000;
    (first, format!("{first}/10000"))
}

#[tokio::test]
async fn on_openshift_each_container_reaches_only_its_own_grants_under_the_assigned_uid() {
    let cp = ControlPlane::start().await;
    namespace(&cp, "team", &[]);
    let (first, range) = random_range();
    cp.kubectl_ok(&[
        "annotate",
        "namespace",
        "team",
        &format!("openshift.io/sa.scc.uid-range={range}"),
    ]);
    // No `openshift` in the webhook's config: it reads the namespace.
    let hook = Webhook::start_with_kubeconfig("socket_per_container: true\n", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "team")
        .await;
    let _scc = SecondWebhook::scc(&cp, "team", &range).await;
    // Enforced once both webhooks are seen called (their probe pods would
    // not pass).
    cp.kubectl_ok(&[
        "label",
        "namespace",
        "team",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    // What restricted asks of the app, and no uid: the SCC assigns it.
    let out = super::create(
        &cp,
        &POD.replace("@NS@", "team")
            .replace("@PORT@", &free_port().to_string())
            .replace("@ANNOTATIONS@", "")
            .replace(
                "@CSC@",
                "{ allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }",
            )
            .replace(
                "@SC@",
                "{ runAsNonRoot: true, seccompProfile: { type: RuntimeDefault } }",
            ),
    );
    assert!(out.status.success(), "{}", super::stderr(&out));
    let pod = stored(&cp, "team", "app");
    assert!(super::injected(&pod), "{pod}");
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kms-sidecar")
        .unwrap();
    // The uid is the SCC's, as for every container; the mode without others.
    assert_eq!(sidecar["securityContext"]["runAsUser"], first, "{sidecar}");
    assert!(sidecar["securityContext"]["runAsGroup"].is_null());
    let mode = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KMS_SIDECAR_LISTEN__MODE")
        .unwrap();
    assert_eq!(mode["value"], "0660");
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"], first);

    let running = RunningPod::start(&cp, "team", "app", RunOptions::default()).await;
    for c in ["kms-sidecar", "api", "worker"] {
        let id = running.exec(c, &["sh", "-c", "echo $(id -u) $(id -g)"]);
        assert_eq!(
            String::from_utf8_lossy(&id.stdout).trim(),
            format!("{first} 0"),
            "{c}: {}",
            running.logs()
        );
    }
    // Each container its own grants, though all share one uid.
    assert_eq!(
        call(&running, "api", None, SIGN.0, SIGN.1),
        200,
        "{}",
        running.logs()
    );
    assert_eq!(call(&running, "api", None, ENCRYPT.0, ENCRYPT.1), 403);
    assert_eq!(call(&running, "worker", None, ENCRYPT.0, ENCRYPT.1), 200);
    assert_eq!(call(&running, "worker", None, SIGN.0, SIGN.1), 403);
    // The sockets: the group's, never others'.
    for v in ["kms-sidecar-socket-api", "kms-sidecar-socket-worker"] {
        let m = std::fs::metadata(running.volume(v).join("kms.sock")).unwrap();
        assert_eq!(m.mode() & 0o007, 0, "{v}: {:o}", m.mode());
        assert_eq!(m.uid(), first, "{v}");
    }
}
