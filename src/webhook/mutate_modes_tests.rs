//! The two modes of issue 32: a socket per container (§1), and OpenShift's
//! `restricted-v2` (§2), on the published multi-container pod.

use super::pods::decide;
use super::*;
use crate::webhook::sidecar::socket_mode;
use crate::webhook::sockets::{self, CONTAINERS_DIR, DIR_ENV, PER_CONTAINER};

fn per_container() -> Config {
    Config {
        socket_per_container: true,
        ..config(&[])
    }
}

fn openshift() -> Config {
    Config {
        openshift: true,
        ..config(&[])
    }
}

/// The names of the volumes mounted in `c`.
fn mounted(c: &Container) -> Vec<(&str, &str, Option<bool>)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect()
}

/// Each app container sees its own socket volume at /var/run/kms,
/// read-only, and no other socket; the sidecar mounts each writable under
/// its containers directory, and the shared one alone.
fn assert_own_sockets(p: &Pod, apps: &[&str]) {
    let spec = p.spec.as_ref().unwrap();
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for c in spec.containers.iter().chain(init) {
        if c.name == CONTAINER {
            continue;
        }
        let own = sockets::volume_name(&c.name);
        let sockets: Vec<_> = mounted(c)
            .into_iter()
            .filter(|(v, _, _)| v.starts_with("kms-sidecar-socket"))
            .collect();
        assert_eq!(
            sockets,
            [(own.as_str(), SOCKET_DIR, Some(true))],
            "{}",
            c.name
        );
        assert_eq!(env_of(c, "KMS_SIDECAR_SOCKET").as_deref(), Some(SOCKET));
    }
    let s = sidecar_of(p);
    assert_eq!(env_of(s, DIR_ENV).as_deref(), Some(CONTAINERS_DIR));
    let mut expected = vec![(SOCKET_VOLUME.to_string(), SOCKET_DIR.to_string())];
    expected.extend(
        apps.iter()
            .map(|a| (sockets::volume_name(a), format!("{CONTAINERS_DIR}/{a}"))),
    );
    let sidecar_sockets: Vec<_> = s
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name.starts_with("kms-sidecar-socket"))
        .map(|m| {
            assert_eq!(m.read_only, None, "the sidecar's own: writable");
            (m.name.clone(), m.mount_path.clone())
        })
        .collect();
    assert_eq!(sidecar_sockets, expected);
    let volumes = spec.volumes.as_ref().unwrap();
    for (v, _) in &expected {
        let found: Vec<_> = volumes.iter().filter(|x| &x.name == v).collect();
        assert_eq!(found.len(), 1, "{v}");
        assert!(found[0].empty_dir.is_some(), "{v}");
    }
}

#[test]
fn per_container_mode_gives_every_app_container_its_own_socket() {
    let doc = pod("multi-container");
    let (p, _) = inject(&doc, &per_container()).expect("injected");
    assert_own_sockets(&p, &["api", "log-shipper", "migrate"]);
    // The annotation turns it on for one pod, or off where the webhook has it on.
    let mut on = doc.clone();
    on["metadata"]["annotations"][PER_CONTAINER] = json!("True");
    let (p, _) = inject(&on, &config(&[])).expect("injected");
    assert_own_sockets(&p, &["api", "log-shipper", "migrate"]);
    let mut off = doc.clone();
    off["metadata"]["annotations"][PER_CONTAINER] = json!("false");
    let (p, _) = inject(&off, &per_container()).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    for c in &spec.containers {
        assert_sees_socket(c);
    }
    assert_eq!(env_of(sidecar_of(&p), DIR_ENV), None);
    // Another value is refused, naming the annotation.
    let mut bad = doc.clone();
    bad["metadata"]["annotations"][PER_CONTAINER] = json!("yes");
    let why = refusal(&bad, &config(&[]));
    assert!(why.contains(PER_CONTAINER), "{why}");
}

#[test]
fn per_container_mode_keeps_the_mesh_order_and_the_legacy_mode() {
    // After Istio's native proxy, whose containers get no socket.
    let (p, _) = inject(&pod("istio-native"), &per_container()).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    let at = init.iter().position(|c| c.name == CONTAINER).unwrap();
    assert!(init[at - 1].name == "istio-proxy", "{:?}", names(init));
    let apps: Vec<&str> = spec
        .containers
        .iter()
        .chain(&init[at + 1..])
        .map(|c| c.name.as_str())
        .filter(|n| !mesh::is_mesh_container(n))
        .collect();
    let s = &init[at];
    for app in &apps {
        let dir = format!("{CONTAINERS_DIR}/{app}");
        assert!(
            s.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == dir),
            "{app}"
        );
    }
    let proxy = &init[at - 1];
    assert!(
        !mounted(proxy)
            .iter()
            .any(|(v, _, _)| v.starts_with("kms-sidecar")),
        "the proxy gets no socket"
    );
    // A regular-container sidecar: the app containers get theirs, the init
    // containers (which run before it) none.
    let legacy = Config {
        native_sidecar: false,
        ..per_container()
    };
    let (p, _) = inject(&pod("multi-container"), &legacy).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, CONTAINER);
    let dirs: Vec<_> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path.starts_with(CONTAINERS_DIR))
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(
        dirs,
        [
            format!("{CONTAINERS_DIR}/api"),
            format!("{CONTAINERS_DIR}/log-shipper")
        ]
    );
}

#[test]
fn a_pod_with_no_container_to_give_a_socket_gets_no_containers_directory() {
    // Its one container has its own volume at /var/run/kms: no socket for
    // it, so none to serve (the sidecar would refuse a missing directory).
    let mut doc = pod("bare");
    doc["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "mine", "mountPath": "/var/run/kms" }]);
    doc["spec"]["volumes"] = json!([{ "name": "mine", "emptyDir": {} }]);
    let (p, _) = inject(&doc, &per_container()).expect("injected");
    assert_eq!(env_of(sidecar_of(&p), DIR_ENV), None);
}

#[test]
fn per_container_mode_refuses_a_container_mounting_a_socket_not_its_own() {
    // The attack: `log-shipper` names `api`'s socket volume, which the
    // patch would add; or the shared one, the sidecar's own in this mode.
    for volume in [sockets::volume_name("api"), SOCKET_VOLUME.to_string()] {
        let mut doc = pod("multi-container");
        doc["spec"]["containers"][1]["volumeMounts"] =
            json!([{ "name": volume, "mountPath": "/x", "readOnly": true }]);
        let why = refusal(&doc, &per_container());
        assert!(
            why.contains("spec.containers[1]")
                && why.contains(&volume)
                && why.contains("not its own"),
            "{why}"
        );
        // The shared socket is still an app's to mount without the mode.
        if volume == SOCKET_VOLUME {
            assert!(inject(&doc, &config(&[])).is_some());
        }
    }
    // A volume of the pod's own named like a container's socket.
    let mut doc = pod("multi-container");
    doc["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "kms-sidecar-socket-api", "emptyDir": {} }));
    let why = refusal(&doc, &per_container());
    assert!(why.contains("kms-sidecar-socket-api"), "{why}");
}

#[test]
fn per_container_mode_gives_containers_added_later_their_own_socket() {
    let on = per_container();
    let (_, mut injected) = inject(&pod("multi-container"), &on).unwrap();
    injected["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "added-later", "image": "busybox" }));
    let before = injected.clone();
    // Even with the webhook's default back to one socket: the pod's sidecar says.
    let (p, again) = inject(&injected, &config(&[])).expect("the new container is patched");
    assert_own_sockets(&p, &["api", "log-shipper", "migrate", "added-later"]);
    assert_eq!(again["metadata"], before["metadata"]);
    assert!(inject(&again, &on).is_none(), "nothing left to do");
    // One added later that mounts another's socket is denied.
    let mut reaching = before;
    reaching["spec"]["containers"][2]["volumeMounts"] =
        json!([{ "name": sockets::volume_name("api"), "mountPath": "/x" }]);
    match decide(&reaching, &on) {
        Err(Refusal::AfterInjection(inner)) => {
            assert!(matches!(*inner, Refusal::ForeignSocket { .. }), "{inner}")
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn openshift_mode_leaves_the_uid_to_the_platform() {
    let (p, _) = inject(&pod("multi-container"), &openshift()).expect("injected");
    let s = sidecar_of(&p);
    let sc = s.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, None, "the SCC assigns it");
    assert_eq!(sc.run_as_group, None);
    // restricted-v2's other demands, still met.
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // Group 0 is every container's: the socket is the group's, never others'.
    assert_eq!(
        env_of(s, "KMS_SIDECAR_LISTEN__MODE").as_deref(),
        Some("0660")
    );
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        spec.security_context.as_ref().unwrap().fs_group,
        Some(2000),
        "the pod's own, untouched"
    );
    let (p, _) = inject(&pod("bare"), &openshift()).expect("injected");
    assert!(
        p.spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .is_none_or(|sc| sc.fs_group.is_none()),
        "no fsGroup added"
    );
    // Outside OpenShift: the image's uid, as before.
    let (p, _) = inject(&pod("multi-container"), &config(&[])).expect("injected");
    let sc = sidecar_of(&p).security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, Some(65532));
}

#[test]
fn openshift_mode_compares_no_uid_and_refuses_host_pid() {
    // Every container of the pod gets the sidecar's uid there: the uid rule
    // cannot apply (docs/openshift.md says what protects instead).
    let mut doc = pod("multi-container");
    doc["spec"]["securityContext"]["runAsUser"] = json!(65532);
    assert!(refusal(&doc, &config(&[])).contains("65532"));
    assert!(inject(&doc, &openshift()).is_some());
    // hostPID would show the sidecar's process to containers of its uid.
    let mut doc = pod("multi-container");
    doc["spec"]["hostPID"] = json!(true);
    let why = refusal(&doc, &openshift());
    assert!(why.contains("hostPID"), "{why}");
    // So would it with a socket per container, each a uid's to share.
    let per_container = Config {
        socket_per_container: true,
        ..config(&[])
    };
    assert!(refusal(&doc, &per_container).contains("hostPID"));
    assert!(inject(&doc, &config(&[])).is_some(), "as before otherwise");
    // And every other isolation rule still holds.
    let mut doc = pod("multi-container");
    doc["spec"]["shareProcessNamespace"] = json!(true);
    assert!(refusal(&doc, &openshift()).contains("shareProcessNamespace"));
    let mut doc = pod("multi-container");
    doc["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "kms-sidecar-tokens", "mountPath": "/t" }]);
    assert!(refusal(&doc, &openshift()).contains("kms-sidecar-tokens"));
}

#[test]
fn openshift_and_per_container_together() {
    let both = Config {
        openshift: true,
        ..per_container()
    };
    let (p, _) = inject(&pod("multi-container"), &both).expect("injected");
    assert_own_sockets(&p, &["api", "log-shipper", "migrate"]);
    let sc = sidecar_of(&p).security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, None);
}

#[test]
fn per_container_mode_follows_a_native_proxy_added_later_with_its_mounts() {
    let (_, mut injected) = inject(&pod("multi-container"), &per_container()).unwrap();
    // A mesh's injector, called after ours, appends its native proxy.
    injected["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always" }));
    let (p, _) = inject(&injected, &config(&[])).expect("moved after the proxy");
    let init = p.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(names(init), ["migrate", "istio-proxy", CONTAINER]);
    // The sidecar moved whole: its sockets, for the containers that run
    // while it does, are still there.
    let s = &init[2];
    for app in ["api", "log-shipper", "migrate"] {
        let dir = format!("{CONTAINERS_DIR}/{app}");
        assert!(
            s.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == dir),
            "{app}"
        );
    }
}

#[test]
fn the_socket_mode_loses_others_access_on_openshift_only() {
    for (mode, on_openshift) in [
        ("0666", "0660"),
        ("0660", "0660"),
        ("0777", "0770"),
        ("600", "0600"),
    ] {
        let c = Config {
            socket_mode: mode.into(),
            ..openshift()
        };
        assert_eq!(socket_mode(&c), on_openshift, "{mode}");
        let c = Config {
            socket_mode: mode.into(),
            ..config(&[])
        };
        assert_eq!(socket_mode(&c), mode);
    }
}
