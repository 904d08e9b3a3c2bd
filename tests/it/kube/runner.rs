//! The kubelet stand-in itself (`tests/kube/cmd/pod-runner`, issue 31 §3):
//! a pod stored by the real API server is run with its volumes made by the
//! kubelet's own code and rules (owner, mode, `fsGroup`, the atomic
//! writer's `..data` link), a token from the TokenRequest API bound to the
//! pod, refreshed by the kubelet's rule (80 % of its life) when the runner
//! is not told to compress it, and containers that see their mounts at the
//! spec's paths, as their uid and groups, in their own mount namespace.

use crate::harness::{ControlPlane, RunOptions, RunningPod};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Two containers as `USERS` (one uid each, or the pod's), a projected
/// token (600 s, the API server's minimum), a ConfigMap, an emptyDir, and
/// the pod-level security context `POD_SC`.
const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: { name: NAME, namespace: rules }
spec:
  automountServiceAccountToken: false
  securityContext: POD_SC
  containers:
  - name: one
    image: busybox
    command: [sleep, infinity]
    securityContext: { runAsUser: UID_ONE }
    env: [{ name: WHO, value: "$(POD)-one" }, { name: POD, valueFrom: { fieldRef: { fieldPath: metadata.name } } }, { name: ME, value: "$(POD)-one" }]
    volumeMounts:
    - { name: tokens, mountPath: /var/run/secrets/tokens, readOnly: true }
    - { name: settings, mountPath: /etc/settings, readOnly: true }
    - { name: shared, mountPath: /shared }
  - name: two
    image: busybox
    command: [sleep, infinity]
    securityContext: { runAsUser: UID_TWO }
    volumeMounts:
    - { name: shared, mountPath: /shared }
  volumes:
  - name: tokens
    projected:
      sources:
      - serviceAccountToken: { audience: rules-test, expirationSeconds: 600, path: token }
  - name: settings
    configMap: { name: settings, items: [{ key: a, path: a.txt }, { key: b, path: b.txt, mode: 0400 }] }
  - name: shared
    emptyDir: {}
"#;

fn pod(name: &str, pod_sc: &str, uids: (u32, u32)) -> String {
    POD.replace("NAME", name)
        .replace("POD_SC", pod_sc)
        .replace("UID_ONE", &uids.0.to_string())
        .replace("UID_TWO", &uids.1.to_string())
}

/// (owner uid, group, permission bits) of a file, following symlinks.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn exec_ok(pod: &RunningPod, container: &str, command: &[&str]) -> String {
    let out = pod.exec(container, command);
    assert!(
        out.status.success(),
        "{command:?} in {container}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pod.logs()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The files as the kubelet leaves them: owner, group and mode by
/// pkg/volume/projected/projected.go, pkg/volume/configmap,
/// pkg/volume/emptydir and pkg/volume/volume_linux.go; the atomic writer's
/// layout.
fn assert_kubelet_files(same: &RunningPod, grouped: &RunningPod) {
    // pkg/volume/projected/projected.go and pkg/volume/volume_linux.go.
    let token = same.volume("tokens").join("token");
    assert_eq!(owner_mode(&token), (1234, 0, 0o600));
    let token = grouped.volume("tokens").join("token");
    assert_eq!(owner_mode(&token), (0, 3000, 0o640));
    // configMap: defaultMode 0644 or the item's mode; group read with an fsGroup.
    assert_eq!(
        owner_mode(&same.volume("settings").join("a.txt")),
        (0, 0, 0o644)
    );
    assert_eq!(
        owner_mode(&same.volume("settings").join("b.txt")),
        (0, 0, 0o400)
    );
    assert_eq!(
        owner_mode(&grouped.volume("settings").join("b.txt")),
        (0, 3000, 0o440)
    );
    // emptyDir: 0777; with an fsGroup, setgid and the group's.
    assert_eq!(owner_mode(&same.volume("shared")), (0, 0, 0o777));
    assert_eq!(owner_mode(&grouped.volume("shared")), (0, 3000, 0o2777));
    // The atomic writer's layout: user-visible links through `..data`.
    let link = std::fs::read_link(same.volume("tokens").join("token")).unwrap();
    assert_eq!(link, Path::new("..data/token"));
    assert!(
        std::fs::symlink_metadata(same.volume("tokens").join("..data"))
            .unwrap()
            .is_symlink()
    );
}

/// The token is the API server's (the spec's audience and life, bound to
/// the pod), refreshed by the kubelet's rule; returns it.
fn assert_real_token_on_kubelets_schedule(cp: &ControlPlane, same: &RunningPod) -> String {
    let text = std::fs::read_to_string(same.volume("tokens").join("token")).unwrap();
    let c = claims(&text);
    assert_eq!(c["aud"], serde_json::json!(["rules-test"]), "{c}");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        600,
        "{c}"
    );
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "same-uid", "{c}");
    assert_eq!(c["iss"], cp.url.as_str(), "{c}");
    // Refreshed by the kubelet's rule (pkg/kubelet/token/token_manager.go):
    // within 20 % of its life, minus up to 10 s of jitter, of its expiry.
    let issued = same.events("token issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    let e = &issued[0];
    assert_eq!(e["refresh_rule"], "kubelet", "{e}");
    let exp = e["expires_at"].as_i64().unwrap();
    assert_eq!(exp, c["exp"].as_i64().unwrap(), "{e}");
    assert_eq!(e["refresh_by"].as_i64().unwrap(), exp - 120, "{e}");
    assert_eq!(e["refresh_from"].as_i64().unwrap(), exp - 130, "{e}");
    text
}

/// Inside the containers: the mounts at the spec's paths, the uid and
/// groups, the env.
fn assert_containers(same: &RunningPod, grouped: &RunningPod, text: &str) {
    assert_eq!(
        exec_ok(same, "one", &["cat", "/etc/settings/a.txt"]),
        "alpha"
    );
    assert_eq!(
        exec_ok(same, "one", &["cat", "/var/run/secrets/tokens/token"]),
        text.trim()
    );
    assert_eq!(exec_ok(same, "one", &["id", "-u"]), "1234");
    assert_eq!(exec_ok(grouped, "two", &["id", "-G"]), "0 3000 3001");
    // `$(VAR)` expands from the entries before it only, as the kubelet does.
    assert_eq!(
        exec_ok(same, "one", &["sh", "-c", "echo $WHO $ME"]),
        "$(POD)-one same-uid-one"
    );
    // A container without the mount has no token there; a member of the
    // fsGroup reads a token that is not its uid's.
    let out = same.exec("two", &["cat", "/var/run/secrets/tokens/token"]);
    assert!(
        !out.status.success(),
        "container two has no mount of the tokens"
    );
    let out = grouped.exec("one", &["cat", "/var/run/secrets/tokens/token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The emptyDir is shared between the pod's containers, and only theirs.
    exec_ok(same, "one", &["sh", "-c", "echo hi > /shared/note"]);
    assert_eq!(exec_ok(same, "two", &["cat", "/shared/note"]), "hi");
    assert!(grouped.exec("two", &["cat", "/shared/note"]).status.code() != Some(0));
    // Mount points are made in the container's own root, not on this machine.
    assert!(!Path::new("/var/run/secrets/tokens").exists());
    assert!(!Path::new("/etc/settings").exists());
}

#[tokio::test]
async fn the_runner_makes_volumes_and_containers_by_the_kubelets_rules() {
    let cp = ControlPlane::start().await;
    cp.namespace("rules", &[]);
    cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: { name: settings, namespace: rules }\ndata: { a: alpha, b: beta }\n");
    // One uid for every container, no fsGroup: the token is that uid's, 0600.
    cp.apply(&pod("same-uid", "{}", (1234, 1234)));
    // Two uids and an fsGroup: no owner (root), the group's, 0600 | 0440.
    cp.apply(&pod(
        "fs-group",
        "{ fsGroup: 3000, supplementalGroups: [3001] }",
        (1234, 1235),
    ));
    let same = RunningPod::start(&cp, "rules", "same-uid", RunOptions::default()).await;
    let grouped = RunningPod::start(&cp, "rules", "fs-group", RunOptions::default()).await;
    assert_kubelet_files(&same, &grouped);
    let text = assert_real_token_on_kubelets_schedule(&cp, &same);
    assert_containers(&same, &grouped, &text);
}
