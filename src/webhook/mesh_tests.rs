//! Pods a service mesh's injector made (Istio's and Linkerd's own test data,
//! sources named in each fixture), in native-sidecar and classic modes:
//! where the sidecar goes, which containers get the socket, the mesh's
//! exclusion annotation, and the order after either webhook ran first.

use super::*;

const ISTIO_EXCLUDE: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const LINKERD_SKIP: &str = "config.linkerd.io/skip-outbound-ports";

/// The decision on `doc` applied: the pod (typed and as JSON) and the
/// warnings; `None` when it is left alone.
fn admit(doc: &Value, config: &Config) -> Option<(Pod, Value, Vec<String>)> {
    let pod: Pod = serde_json::from_value(doc.clone()).expect("a pod");
    match mutate(&pod, config).expect("no refusal") {
        Decision::Skip { .. } => None,
        Decision::Inject(Injection {
            patch, warnings, ..
        }) => {
            let mut patched = doc.clone();
            json_patch::patch(&mut patched, &patch).expect("the patch applies cleanly");
            let typed = serde_json::from_value(patched.clone()).expect("still a pod");
            Some((typed, patched, warnings))
        }
    }
}

fn init_names(p: &Pod) -> Vec<&str> {
    names(p.spec.as_ref().unwrap().init_containers.as_deref().unwrap())
}

fn container<'a>(p: &'a Pod, name: &str) -> &'a Container {
    let spec = p.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn has_socket(c: &Container) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == SOCKET_VOLUME)
        || c.env
            .iter()
            .flatten()
            .any(|e| e.name == "KMS_SIDECAR_SOCKET")
}

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn with_ports(ports: &[u16]) -> Config {
    Config {
        kms_ports: ports.to_vec(),
        ..config(&[])
    }
}

#[test]
fn the_sidecar_goes_right_after_a_native_mesh_proxy() {
    for (fixture, mesh, app) in [
        ("istio-native", ["istio-init", "istio-proxy"], "hello"),
        (
            "linkerd-native",
            ["linkerd-init", "linkerd-proxy"],
            "vote-bot",
        ),
    ] {
        let (p, raw, warnings) = admit(&pod(fixture), &config(&[])).unwrap();
        // The proxy is started (its startup probe passed) before ours
        // starts: the sidecar's egress goes through a running proxy.
        assert_eq!(init_names(&p), [mesh[0], mesh[1], CONTAINER], "{fixture}");
        assert_eq!(
            container(&p, CONTAINER).restart_policy.as_deref(),
            Some("Always")
        );
        assert_sees_socket(container(&p, app));
        for c in mesh {
            assert!(!has_socket(container(&p, c)), "{fixture}: {c} is no app");
        }
        // Nothing to exclude, nothing to tell.
        assert_eq!(annotation(&p, ISTIO_EXCLUDE), None);
        assert_eq!(annotation(&p, LINKERD_SKIP), None);
        assert!(warnings.is_empty(), "{fixture}: {warnings:?}");
        // Reinvoked with nothing new: left alone.
        assert!(admit(&raw, &config(&[])).is_none(), "{fixture}");
    }
}

#[test]
fn before_a_classic_proxy_the_sidecar_stays_first_and_its_kms_ports_bypass_the_proxy() {
    // Istio without native sidecars: istio-init (made with no excluded
    // port) and istio-proxy after the app.
    let (p, raw, warnings) = admit(&pod("istio-classic"), &config(&[])).unwrap();
    assert_eq!(init_names(&p), [CONTAINER, "istio-init"]);
    assert_eq!(annotation(&p, ISTIO_EXCLUDE), Some("443"));
    assert!(!has_socket(container(&p, "istio-proxy")));
    assert!(!has_socket(container(&p, "istio-init")));
    assert_sees_socket(container(&p, "hello"));
    // istio-init's rules were made before: the user is told what to set.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("spec.initContainers[0] (istio-init)")
            && warnings[0].contains(&format!("{ISTIO_EXCLUDE}: \"443\"")),
        "{}",
        warnings[0]
    );
    assert!(admit(&raw, &config(&[])).is_none(), "idempotent");

    // Linkerd without native sidecars: linkerd-proxy the first container;
    // linkerd-init's list (the mesh-wide default) is kept, 443 added.
    let (p, _, warnings) = admit(&pod("linkerd-classic"), &config(&[])).unwrap();
    assert_eq!(init_names(&p), [CONTAINER, "linkerd-init"]);
    assert_eq!(annotation(&p, LINKERD_SKIP), Some("4567,4568,443"));
    assert!(!has_socket(container(&p, "linkerd-proxy")));
    assert_sees_socket(container(&p, "vote-bot"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("(linkerd-init)")
            && warnings[0].contains(&format!("{LINKERD_SKIP}: \"4567,4568,443\"")),
        "{}",
        warnings[0]
    );

    // With the mesh's CNI plugin (no iptables init container), which reads
    // the annotation when the pod's network is set up: nothing to tell.
    for (fixture, key) in [
        ("istio-classic", ISTIO_EXCLUDE),
        ("linkerd-classic", LINKERD_SKIP),
    ] {
        let mut cni = pod(fixture);
        cni["spec"]
            .as_object_mut()
            .unwrap()
            .remove("initContainers");
        let (p, _, warnings) = admit(&cni, &config(&[])).unwrap();
        assert_eq!(init_names(&p), [CONTAINER]);
        assert_eq!(annotation(&p, key), Some("443"), "{fixture}");
        assert!(warnings.is_empty(), "{fixture}: {warnings:?}");
    }

    // A pod that excludes the ports already (annotation and istio-init's
    // -o, as Istio renders them): nothing added, nothing to tell. Other
    // ports (a Vault's) are added to the pod's list.
    let mut set = pod("istio-classic");
    set["metadata"]["annotations"][ISTIO_EXCLUDE] = json!("443");
    let args = set["spec"]["initContainers"][0]["args"]
        .as_array_mut()
        .unwrap();
    args.extend([json!("-o"), json!("443")]);
    let (p, _, warnings) = admit(&set, &config(&[])).unwrap();
    assert_eq!(annotation(&p, ISTIO_EXCLUDE), Some("443"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let (p, _, warnings) = admit(&set, &with_ports(&[443, 8200])).unwrap();
    assert_eq!(annotation(&p, ISTIO_EXCLUDE), Some("443,8200"));
    assert!(warnings[0].contains("ports 443,8200"), "{warnings:?}");
    // kms_ports: [] adds nothing.
    let (p, _, warnings) = admit(&pod("istio-classic"), &with_ports(&[])).unwrap();
    assert_eq!(annotation(&p, ISTIO_EXCLUDE), None);
    assert!(warnings.is_empty());
}

#[test]
fn reinvocation_keeps_the_sidecar_after_a_native_proxy_whichever_webhook_runs_first() {
    // Ours first, then Linkerd's (its configuration's name sorts after
    // ours): Linkerd's patch (charts/patch/templates/patch.json) puts
    // linkerd-init and linkerd-proxy at initContainers 0 and 1.
    let linkerd = pod("linkerd-native");
    let mut plain = linkerd.clone();
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("initContainers");
    let (_, mut ours, _) = admit(&plain, &config(&[])).unwrap();
    let init = ours["spec"]["initContainers"].as_array_mut().unwrap();
    for (i, c) in linkerd["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        init.insert(i, c.clone());
    }
    // Reinvoked: already right after the proxy, nothing to do.
    assert!(admit(&ours, &config(&[])).is_none());
    let typed: Pod = serde_json::from_value(ours).unwrap();
    assert_eq!(
        init_names(&typed),
        ["linkerd-init", "linkerd-proxy", CONTAINER]
    );

    // A webhook that appends its native proxy after ours: reinvoked, ours
    // moves right after the proxy.
    let istio = pod("istio-native");
    let mut plain = istio.clone();
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("initContainers");
    let (_, mut ours, _) = admit(&plain, &config(&[])).unwrap();
    let init = ours["spec"]["initContainers"].as_array_mut().unwrap();
    init.extend(istio["spec"]["initContainers"].as_array().unwrap().clone());
    let (p, raw, _) = admit(&ours, &config(&[])).expect("moved");
    assert_eq!(init_names(&p), ["istio-init", "istio-proxy", CONTAINER]);
    assert!(!has_socket(container(&p, "istio-proxy")));
    assert!(admit(&raw, &config(&[])).is_none(), "stable");

    // Linkerd in classic mode after ours: linkerd-proxy the first
    // container, linkerd-init appended. Reinvoked: the proxy gets no
    // socket, the annotation gets the KMS ports (the CNI plugin reads it at
    // run time), and the user is told that linkerd-init was made without.
    let classic = pod("linkerd-classic");
    let mut plain = classic.clone();
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("initContainers");
    let proxy = plain["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    assert_eq!(proxy["name"], "linkerd-proxy");
    let (_, mut ours, _) = admit(&plain, &config(&[])).unwrap();
    ours["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .insert(0, proxy);
    let linkerd_init = classic["spec"]["initContainers"][0].clone();
    ours["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(linkerd_init);
    let (p, raw, warnings) = admit(&ours, &config(&[])).expect("annotated");
    assert_eq!(init_names(&p), [CONTAINER, "linkerd-init"]);
    assert!(!has_socket(container(&p, "linkerd-proxy")));
    assert!(!has_socket(container(&p, "linkerd-init")));
    assert_eq!(annotation(&p, LINKERD_SKIP), Some("4567,4568,443"));
    assert!(
        warnings.iter().any(|w| w.contains("(linkerd-init)")),
        "{warnings:?}"
    );
    assert!(admit(&raw, &config(&[])).is_none(), "stable");
}

#[test]
fn pod_level_resources_count_the_sidecar_where_it_goes_after_a_native_proxy() {
    // istio-init runs before the proxy, so before the sidecar, and alone:
    // the pod's init peak is its own request. The API server counts the
    // stored order (component-helpers resource/helpers.go,
    // AggregateContainerRequests): 500Mi for istio-init, then 128Mi + 16Mi
    // for the proxy and the sidecar, which stay.
    let mut doc = pod("istio-native");
    doc["spec"]["initContainers"][0]["resources"]["requests"]["memory"] = json!("500Mi");
    doc["spec"]["resources"] = json!({ "requests": { "memory": "500Mi" } });
    let (p, _, warnings) = admit(&doc, &config(&[])).expect("injected");
    assert_eq!(init_names(&p), ["istio-init", "istio-proxy", CONTAINER]);
    assert!(warnings.is_empty(), "{warnings:?}");

    // A Mi less: refused, naming the field.
    doc["spec"]["resources"]["requests"]["memory"] = json!("499Mi");
    let pod: Pod = serde_json::from_value(doc).expect("a pod");
    match mutate(&pod, &config(&[])) {
        Err(Refusal::PodResources { field, .. }) => {
            assert_eq!(field, "spec.resources.requests.memory");
        }
        other => panic!("not refused for its resources: {other:?}"),
    }
}
