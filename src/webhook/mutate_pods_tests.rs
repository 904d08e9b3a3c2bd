//! The webhook's decision on published pod specs (sources named in each
//! fixture) and on pods changed as a later webhook changes them.

use super::*;

/// The decision on `doc`, refusal included.
pub(super) fn decide(doc: &Value, config: &Config) -> Result<Decision, Refusal> {
    let pod: Pod = serde_json::from_value(doc.clone()).expect("a pod");
    mutate(&pod, config)
}

fn skip_warning(doc: &Value, config: &Config) -> Option<String> {
    match decide(doc, config) {
        Ok(Decision::Skip { warning, .. }) => warning,
        other => panic!("not skipped: {other:?}"),
    }
}

fn warnings(doc: &Value, config: &Config) -> Vec<String> {
    match decide(doc, config) {
        Ok(Decision::Inject(i)) => i.warnings,
        other => panic!("not injected: {other:?}"),
    }
}

#[test]
fn windows_pods_are_left_alone_with_a_warning() {
    for (name, named) in [
        ("windows-iis", "nodeSelector kubernetes.io/os: windows"),
        ("windows-run-as-username", "spec.os.name: windows"),
    ] {
        let warning = skip_warning(&pod(name), &config(&[])).expect("a warning");
        assert!(warning.contains(named), "{name}: {warning}");
        assert!(warning.contains("Linux container"), "{warning}");
    }
    // A required node affinity whose every term asks for Windows.
    let mut affinity = pod("bare");
    let term = |op: &str, os: &str| json!({"matchExpressions": [{"key": "kubernetes.io/os", "operator": op, "values": [os]}]});
    let with_terms = |doc: &mut Value, terms: Vec<Value>| {
        doc["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}});
    };
    with_terms(
        &mut affinity,
        vec![term("In", "windows"), term("NotIn", "linux")],
    );
    assert!(skip_warning(&affinity, &config(&[])).is_some());
    // One Linux alternative, or a Linux selector: injected.
    with_terms(
        &mut affinity,
        vec![term("In", "windows"), term("In", "linux")],
    );
    assert!(inject(&affinity, &config(&[])).is_some());
    let mut linux = pod("bare");
    linux["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    assert!(inject(&linux, &config(&[])).is_some());
}

#[test]
fn the_sidecar_must_fit_the_pods_own_resources() {
    // As published: 0.5 CPU and 50Mi requested of the pod's 1 and 100Mi,
    // so the sidecar's 10m and 16Mi fit.
    let doc = pod("pod-level-resources");
    assert!(inject(&doc, &config(&[])).is_some());
    // The pod's request is all its containers take: no room.
    let mut full = doc.clone();
    full["spec"]["resources"]["requests"]["cpu"] = json!("500m");
    let refused = refusal(&full, &config(&[]));
    assert!(
        refused.contains("spec.resources.requests.cpu (500m)")
            && refused.contains("510m with the sidecar's 10m"),
        "{refused}"
    );
    // A sidecar limit above the pod's limit.
    let mut big = doc.clone();
    big["metadata"]["annotations"] = json!({ MEMORY_LIMIT: "256Mi" });
    let refused = refusal(&big, &config(&[]));
    assert!(
        refused.contains("spec.resources.limits.memory (200Mi)"),
        "{refused}"
    );
    // Init containers count as the API server counts them: the largest of
    // them, plus the sidecars started before it, against the sum.
    let mut init = doc.clone();
    init["spec"]["initContainers"] = json!([{
        "name": "prepare", "image": "busybox",
        "resources": {"requests": {"memory": "90Mi"}}
    }]);
    let refused = refusal(&init, &config(&[]));
    assert!(
        refused.contains("106Mi with the sidecar's 16Mi"),
        "{refused}"
    );
    // Without pod-level resources nothing is checked.
    let mut plain = doc;
    plain["spec"].as_object_mut().unwrap().remove("resources");
    assert!(inject(&plain, &config(&[])).is_some());
}

#[test]
fn the_probes_port_is_one_no_container_declares() {
    // statsd-exporter serves on 9102, the default: the sidecar takes 9103.
    let (p, _) = inject(&pod("statsd-exporter"), &config(&[])).unwrap();
    let s = sidecar_of(&p);
    let port = |c: &Container| c.ports.as_ref().unwrap()[0].container_port;
    assert_eq!(port(s), 9103);
    assert_eq!(
        env_of(s, "KMS_SIDECAR_LISTEN__PROBES").as_deref(),
        Some("0.0.0.0:9103")
    );
    let startup = s.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(startup.port, IntOrString::Int(9103));
    // The annotation chooses; a UDP port of the same number is no clash.
    let mut annotated = pod("statsd-exporter");
    annotated["metadata"]["annotations"] = json!({ PROBES_PORT: "9125" });
    let (p, _) = inject(&annotated, &config(&[])).unwrap();
    assert_eq!(port(sidecar_of(&p)), 9125);
    for (value, problem) in [
        (
            "9102",
            "port 9102 is declared by spec.containers[0] (prometheus-statsd-exporter)",
        ),
        ("0", "not a port"),
        ("http", "not a port"),
        ("65536", "not a port"),
    ] {
        annotated["metadata"]["annotations"] = json!({ PROBES_PORT: value });
        let refused = refusal(&annotated, &config(&[]));
        assert!(
            refused.contains(PROBES_PORT) && refused.contains(problem),
            "{value}: {refused}"
        );
    }
}

#[test]
fn host_network_pods_get_exec_probes_and_no_port() {
    let (p, raw) = inject(&pod("node-exporter"), &config(&[])).unwrap();
    let s = sidecar_of(&p);
    assert_eq!(s.ports, None, "nothing bound on the node");
    assert_eq!(
        env_of(s, "KMS_SIDECAR_LISTEN__PROBES").as_deref(),
        Some("null")
    );
    for probe in [&s.startup_probe, &s.readiness_probe, &s.liveness_probe] {
        let probe = probe.as_ref().unwrap();
        assert!(probe.http_get.is_none());
        let command = probe.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert_eq!(command[..4], [BINARY, "probe", "--socket", SOCKET]);
    }
    assert_eq!(
        raw["spec"]["initContainers"][0]["startupProbe"]["exec"]["command"][4],
        "/healthz"
    );
    assert_eq!(
        raw["spec"]["initContainers"][0]["readinessProbe"]["exec"]["command"][4],
        "/readyz"
    );
}

#[test]
fn containers_added_later_get_the_socket_on_reinvocation() {
    let config = config(&[Token::Aws]);
    let (_, mut injected) = inject(&pod("multi-container"), &config).unwrap();
    // Another webhook (a mesh, a log agent) adds a container and an init
    // container after ours.
    injected["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "added-later", "image": "busybox"}));
    injected["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"name": "added-init", "image": "busybox", "env": [{"name": "A", "value": "b"}]}),
        );
    let before = injected.clone();
    let (p, again) = inject(&injected, &config).expect("the new containers are patched");
    let spec = p.spec.as_ref().unwrap();
    for c in spec
        .containers
        .iter()
        .chain(&spec.init_containers.as_ref().unwrap()[1..])
    {
        assert_sees_socket(c);
    }
    // Nothing else changed: one sidecar, the same volumes.
    assert_eq!(again["spec"]["volumes"], before["spec"]["volumes"]);
    assert_eq!(
        again["spec"]["initContainers"][0],
        before["spec"]["initContainers"][0]
    );
    assert_eq!(again["metadata"], before["metadata"]);
    // And again: nothing left to do.
    assert!(inject(&again, &config).is_none());

    // An added container that reaches into the sidecar is refused, and the
    // handler denies it whatever the failure policy.
    let mut reaching = before;
    reaching["spec"]["containers"][2]["volumeMounts"] =
        json!([{"name": "kms-sidecar-tokens", "mountPath": "/t"}]);
    match decide(&reaching, &config) {
        Err(Refusal::AfterInjection(inner)) => {
            assert!(matches!(*inner, Refusal::PrivateMount { .. }), "{inner}")
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn legacy_mode_names_the_default_container_and_skips_init_containers() {
    let legacy = Config {
        native_sidecar: false,
        ..config(&[])
    };
    let doc = pod("init-containers");
    let (p, raw) = inject(&doc, &legacy).unwrap();
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["kms-sidecar", "nginx"]);
    assert_eq!(
        raw["metadata"]["annotations"][DEFAULT_CONTAINER], "nginx",
        "kubectl logs and exec pick the app"
    );
    // The init container runs before any regular container: no socket.
    assert_eq!(
        raw["spec"]["initContainers"][0],
        doc["spec"]["initContainers"][0]
    );
    let said = warnings(&doc, &legacy);
    assert!(
        said[0].contains("init containers do not get the socket"),
        "{said:?}"
    );
    // A default the pod chose is kept.
    let (_, raw) = inject(&pod("node-exporter"), &legacy).unwrap();
    assert_eq!(
        raw["metadata"]["annotations"][DEFAULT_CONTAINER],
        "node-exporter"
    );
    // Native sidecars leave the annotation alone.
    let (_, raw) = inject(&doc, &config(&[])).unwrap();
    assert!(
        raw["metadata"]["annotations"]
            .get(DEFAULT_CONTAINER)
            .is_none()
    );
}

#[test]
fn a_container_with_its_own_volume_at_the_socket_dir_is_named_in_a_warning() {
    let mut doc = pod("multi-container");
    doc["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "run-kms", "emptyDir": {}}));
    doc["spec"]["containers"][1]["volumeMounts"] =
        json!([{"name": "run-kms", "mountPath": "/var/run/kms/"}]);
    let said = warnings(&doc, &config(&[]));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(
            "spec.containers[1] (log-shipper) has its own volume run-kms at /var/run/kms"
        ),
        "{said:?}"
    );
    let (p, _) = inject(&doc, &config(&[])).unwrap();
    let shipper = &p.spec.as_ref().unwrap().containers[1];
    assert_eq!(
        env_of(shipper, "KMS_SIDECAR_SOCKET"),
        None,
        "no socket, no variable"
    );
}

#[test]
fn the_token_files_are_readable_by_any_uid_of_the_sidecar() {
    let (p, _) = inject(&pod("security-context"), &config(&[Token::Aws])).unwrap();
    let tokens = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let tokens = tokens.iter().find(|v| v.name == TOKEN_VOLUME).unwrap();
    assert_eq!(tokens.projected.as_ref().unwrap().default_mode, Some(0o444));
}
