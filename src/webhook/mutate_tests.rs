//! The patch applied (with the `json-patch` crate, as the API server applies
//! RFC 6902) to real-world pod specs from `tests/webhook/pods/`.

use super::*;
use crate::webhook::config::{FailurePolicy, Token};
use crate::webhook::quantity::*;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

fn pod(name: &str) -> Value {
    let path = format!(
        "{}/tests/webhook/pods/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_yaml_ng::from_str(&text).expect("fixture is YAML")
}

fn config(tokens: &[Token]) -> Config {
    Config {
        tokens: Some(tokens.to_vec()),
        ..Config::default()
    }
}

/// Runs the webhook's decision on `doc` and applies the patch; `None` when
/// the pod is left alone.
fn inject(doc: &Value, config: &Config) -> Option<(Pod, Value)> {
    let pod: Pod = serde_json::from_value(doc.clone()).expect("a pod");
    match mutate(&pod, config).expect("no refusal") {
        Decision::Skip { .. } => None,
        Decision::Inject(Injection { patch, .. }) => {
            let mut patched = doc.clone();
            json_patch::patch(&mut patched, &patch).expect("the patch applies cleanly");
            let typed = serde_json::from_value(patched.clone()).expect("still a pod");
            Some((typed, patched))
        }
    }
}

fn sidecar_of(pod: &Pod) -> &Container {
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(
        init[0].name, CONTAINER,
        "the sidecar is the first init container"
    );
    &init[0]
}

fn names(cs: &[Container]) -> Vec<&str> {
    cs.iter().map(|c| c.name.as_str()).collect()
}

fn assert_sees_socket(c: &Container) {
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path == SOCKET_DIR)
        .collect();
    assert_eq!(mounts.len(), 1, "{}: one socket mount", c.name);
    assert_eq!(mounts[0].name, SOCKET_VOLUME);
    // Every mount of the socket's volume in an app container, the webhook's
    // and the pod's own, is read-only: it connects, it cannot replace.
    for m in c.volume_mounts.iter().flatten() {
        if m.name == SOCKET_VOLUME {
            assert_eq!(m.read_only, Some(true), "{}: {m:?}", c.name);
        }
    }
    let env: Vec<_> = c
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "KMS_SIDECAR_SOCKET")
        .collect();
    assert_eq!(env.len(), 1, "{}: one KMS_SIDECAR_SOCKET", c.name);
    assert_eq!(env[0].value.as_deref(), Some(SOCKET));
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// `multi-container.yaml`, injected with AWS and Vault tokens: the
/// document, the pod and the patched document.
fn multi_container() -> (Value, Pod, Value) {
    let doc = pod("multi-container");
    let (p, raw) = inject(&doc, &config(&[Token::Aws, Token::Vault])).expect("injected");
    (doc, p, raw)
}

/// The app and init containers after the sidecar.
fn apps_of(p: &Pod) -> impl Iterator<Item = &Container> {
    let spec = p.spec.as_ref().unwrap();
    (spec.containers.iter()).chain(&spec.init_containers.as_ref().unwrap()[1..])
}

#[test]
fn multi_container_pod_keeps_everything_and_gains_the_sidecar() {
    let (doc, p, raw) = multi_container();
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["kms-sidecar", "migrate"]
    );
    assert_eq!(names(&spec.containers), ["api", "log-shipper"]);
    for c in apps_of(&p) {
        assert_sees_socket(c);
    }
    // What was there is still there, first and unchanged.
    let api = &spec.containers[0];
    assert_eq!(api.env.as_ref().unwrap()[0].name, "RUST_LOG");
    assert_eq!(api.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
    assert_eq!(
        raw["spec"]["containers"][0]["resources"],
        doc["spec"]["containers"][0]["resources"]
    );
    assert_eq!(
        raw["spec"]["initContainers"][1]["env"][0],
        doc["spec"]["initContainers"][0]["env"][0]
    );
    assert_eq!(
        raw["spec"]["securityContext"],
        doc["spec"]["securityContext"]
    );
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes[0].name, "tmp");
    let annotations = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations[STATUS], "injected");
    // Idempotent: the injected pod is left alone.
    assert!(inject(&raw, &config(&[Token::Aws])).is_none());
}

#[test]
fn the_sidecar_is_native_probed_hardened_and_small() {
    let (_, p, _) = multi_container();
    // Its socket mount alone is writable (it creates the socket).
    let s = sidecar_of(&p);
    assert_eq!(s.restart_policy.as_deref(), Some("Always"));
    let own = s
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == SOCKET_VOLUME);
    assert_eq!(own.map(|m| m.read_only), Some(None), "{own:?}");
    // Started once the socket serves, whatever the network (a mesh's proxy
    // may start after it); ready when the KMS answers.
    let startup = s.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(startup.path.as_deref(), Some("/healthz"));
    assert_eq!(startup.port, IntOrString::Int(9102));
    assert_eq!(
        s.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let sc = s.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let res = s.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "16Mi");
    assert_eq!(
        env_of(s, "KMS_SIDECAR_LISTEN__SOCKET").as_deref(),
        Some(SOCKET)
    );
    assert_eq!(
        env_of(s, "AWS_WEB_IDENTITY_TOKEN_FILE").as_deref(),
        Some("/var/run/secrets/kms-sidecar/aws")
    );
    assert_eq!(
        env_of(s, "AWS_ROLE_ARN"),
        None,
        "no role ARN configured or annotated"
    );
}

#[test]
fn only_the_sidecar_sees_its_tokens_and_private_directory() {
    let (_, p, _) = multi_container();
    for c in apps_of(&p) {
        let ours: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name.starts_with("kms-sidecar"))
            .collect();
        assert_eq!(ours.len(), 1, "{}: only the socket", c.name);
    }

    // One projected volume, a token per audience, at most an hour.
    let volumes = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let tokens = volumes.iter().find(|v| v.name == TOKEN_VOLUME).unwrap();
    let sources = tokens.projected.as_ref().unwrap().sources.as_ref().unwrap();
    let audiences: Vec<_> = sources
        .iter()
        .map(|s| {
            let t = s.service_account_token.as_ref().unwrap();
            assert!(t.expiration_seconds.unwrap() <= 3600);
            (t.audience.clone().unwrap(), t.path.clone())
        })
        .collect();
    assert_eq!(
        audiences,
        [
            ("sts.amazonaws.com".into(), "aws".into()),
            ("vault".into(), "vault".into())
        ]
    );
    let cm = volumes.iter().find(|v| v.name == CONFIG_VOLUME).unwrap();
    assert_eq!(cm.config_map.as_ref().unwrap().name, "kms-sidecar");
}

#[test]
fn bare_pod_gets_every_list_created() {
    let (p, _) = inject(&pod("bare"), &config(&[])).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["kms-sidecar"]
    );
    assert_sees_socket(&spec.containers[0]);
    let volumes: Vec<_> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [SOCKET_VOLUME, DATA_VOLUME, CONFIG_VOLUME],
        "no token volume without tokens"
    );
    assert!(
        spec.security_context.is_none(),
        "the pod's own securityContext is not invented"
    );
    assert_eq!(p.metadata.annotations.as_ref().unwrap()[STATUS], "injected");
    assert!(
        sidecar_of(&p)
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != TOKEN_VOLUME)
    );
}

#[test]
fn job_pod_can_complete_and_follows_its_annotations() {
    let (p, _) = inject(&pod("job-pod"), &config(&[Token::Vault])).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    // The app is the only regular container: when it exits, the pod
    // completes and the kubelet stops the native sidecar.
    assert_eq!(names(&spec.containers), ["rekey"]);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let s = sidecar_of(&p);
    assert_eq!(s.restart_policy.as_deref(), Some("Always"));
    let cm = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == CONFIG_VOLUME)
        .unwrap();
    assert_eq!(cm.config_map.as_ref().unwrap().name, "rekey-config");
    // `kms-sidecar.io/tokens: aws` replaces the default (vault).
    assert_eq!(
        env_of(s, "AWS_ROLE_ARN").as_deref(),
        Some("arn:aws:iam::111122223333:role/rekey")
    );
    let tokens = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == TOKEN_VOLUME)
        .unwrap();
    let sources = tokens.projected.as_ref().unwrap().sources.as_ref().unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(
        sources[0]
            .service_account_token
            .as_ref()
            .unwrap()
            .audience
            .as_deref(),
        Some("sts.amazonaws.com")
    );
}

#[test]
fn injected_opted_out_and_unlabelled_pods_are_left_alone() {
    assert!(inject(&pod("opted-out"), &config(&[Token::Aws])).is_none());
    // Injected once: the same pod again (a reinvocation with nothing new)
    // is left alone.
    let (_, injected) = inject(&pod("multi-container"), &config(&[Token::Aws])).unwrap();
    assert!(inject(&injected, &config(&[Token::Aws])).is_none());
    let mut unlabelled = pod("bare");
    unlabelled["metadata"]["labels"] = json!({});
    assert!(inject(&unlabelled, &config(&[])).is_none());
    // Injected by hand (a container named kms-sidecar), without the annotation.
    let mut by_hand = pod("bare");
    by_hand["spec"]["containers"][0]["name"] = json!("kms-sidecar");
    assert!(inject(&by_hand, &config(&[])).is_none());
}

#[test]
fn old_clusters_get_a_regular_container() {
    // A sovereign cloud's authority: the webhook's setting, not a default,
    // is what the sidecar gets.
    let c = Config {
        native_sidecar: false,
        azure: crate::webhook::config::AzureIdentity {
            authority_host: "https://login.microsoftonline.us/".into(),
            ..Default::default()
        },
        ..config(&[Token::Azure])
    };
    let (p, _) = inject(&pod("multi-container"), &c).expect("injected");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        names(&spec.containers),
        ["kms-sidecar", "api", "log-shipper"]
    );
    assert_eq!(names(spec.init_containers.as_ref().unwrap()), ["migrate"]);
    let s = &spec.containers[0];
    assert_eq!(s.restart_policy, None);
    assert_eq!(
        env_of(s, "AZURE_FEDERATED_TOKEN_FILE").as_deref(),
        Some("/var/run/secrets/kms-sidecar/azure")
    );
    assert_eq!(
        env_of(s, "AZURE_AUTHORITY_HOST").as_deref(),
        Some("https://login.microsoftonline.us/")
    );
    assert_sees_socket(&spec.containers[1]);
    assert_sees_socket(&spec.containers[2]);
}

#[test]
fn annotations_override_image_resources_and_identity() {
    let mut doc = pod("bare");
    doc["metadata"]["annotations"] = json!({
        IMAGE: "registry.internal/kms-sidecar:0.1.0-fips",
        CPU_REQUEST: "50m",
        MEMORY_LIMIT: "128Mi",
        TOKENS: "azure",
        AZURE_CLIENT_ID: "00000000-0000-0000-0000-000000000001",
    });
    let c = Config {
        azure: crate::webhook::config::AzureIdentity {
            tenant_id: Some("tenant".into()),
            ..Default::default()
        },
        ..config(&[Token::Aws])
    };
    let (p, _) = inject(&doc, &c).expect("injected");
    let s = sidecar_of(&p);
    assert_eq!(
        s.image.as_deref(),
        Some("registry.internal/kms-sidecar:0.1.0-fips")
    );
    let res = s.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "50m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "16Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(
        env_of(s, "AZURE_CLIENT_ID").as_deref(),
        Some("00000000-0000-0000-0000-000000000001")
    );
    assert_eq!(env_of(s, "AZURE_TENANT_ID").as_deref(), Some("tenant"));
    assert_eq!(env_of(s, "AWS_WEB_IDENTITY_TOKEN_FILE"), None);
}

#[test]
fn existing_socket_mount_and_env_are_not_duplicated() {
    let mut doc = pod("bare");
    doc["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "mine", "mountPath": SOCKET_DIR }]);
    doc["spec"]["containers"][0]["env"] =
        json!([{ "name": "KMS_SIDECAR_SOCKET", "value": "/elsewhere" }]);
    doc["spec"]["volumes"] = json!([{ "name": "mine", "emptyDir": {} }]);
    let (p, _) = inject(&doc, &config(&[])).expect("injected");
    let app = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(app.volume_mounts.as_ref().unwrap().len(), 1);
    assert_eq!(
        env_of(app, "KMS_SIDECAR_SOCKET").as_deref(),
        Some("/elsewhere")
    );
}

#[test]
fn bad_annotations_are_refused_with_their_name() {
    for (annotation, value) in [
        (CPU_REQUEST, "a lot"),
        (MEMORY_LIMIT, "16MB"),
        (CONFIG, "Not_A_Name"),
        (IMAGE, "two words"),
        (TOKENS, "aws,pkcs11"),
        (AWS_ROLE_ARN, ""),
    ] {
        let mut doc = pod("bare");
        doc["metadata"]["annotations"] = json!({ annotation: value });
        let p: Pod = serde_json::from_value(doc).unwrap();
        let refusal = mutate(&p, &config(&[])).expect_err(annotation);
        assert!(
            matches!(&refusal, Refusal::Annotation { annotation: a, .. } if *a == annotation),
            "{refusal:?}"
        );
        assert!(!refusal.to_string().contains(value) || value.is_empty() || annotation == TOKENS);
    }
    assert_eq!(config(&[]).failure_policy, FailurePolicy::Ignore);
}

#[test]
fn quantities() {
    for ok in [
        "10m", "16Mi", "1", "0.5", ".5", "1.", "1e3", "1E-2", "2Gi", "+1k", "100", "5u", "-1",
    ] {
        assert!(milli_value(ok).is_some(), "{ok}");
    }
    for bad in [
        "", "m", "1.2.3", "16MB", "1e", "ten", "1 Mi", ".", "1Ki5", "--1", "1e+",
    ] {
        assert_eq!(milli_value(bad), None, "{bad}");
    }
    // In thousandths, exactly; rounded up to one as the API server does.
    for (q, milli) in [
        ("10m", 10),
        ("0.1", 100),
        ("100m", 100),
        (".5", 500),
        ("1.5k", 1_500_000),
        ("1Ki", 1_024_000),
        ("1Gi", 1_073_741_824_000),
        ("1073741824", 1_073_741_824_000),
        ("1.5Mi", 1_572_864_000),
        ("1e3", 1_000_000),
        ("1E-2", 10),
        ("2.5e-1", 250),
        ("1u", 1),
        ("0.1m", 1),
        ("1500n", 1),
        ("1500000n", 2),
        ("1e-999", 1),
        ("0.0000000000000000000000000000000000000000001", 1),
        ("-1", -1000),
        ("-0", 0),
        ("0e999", 0),
        ("000.000", 0),
        ("1e999", i128::MAX),
        ("-1e999", -i128::MAX),
        ("9999999999Ei", 11_529_215_044_915_548_255_393_153_024_000),
        ("99999999999999999999999Ei", i128::MAX),
        ("1234567890123456789012345678901234567890", i128::MAX),
        // Past 30 significant digits, still rounded up.
        (
            "0.0000000000000000000000000000000000000001000000000000000000000000000000000001",
            1,
        ),
    ] {
        assert_eq!(milli_value(q), Some(milli), "{q}");
    }
    // Huge exponents and long fractions do not cancel out wrongly.
    let tiny_times_huge = format!("0.{}1e3000000", "0".repeat(2_000_000));
    assert_eq!(milli_value(&tiny_times_huge), Some(i128::MAX));
    let huge_times_tiny = format!("{}1e-3000000", "1".repeat(2_000_000));
    assert_eq!(milli_value(&huge_times_tiny), Some(1));
    assert!(is_below(&Quantity("100m".into()), &Quantity("0.11".into())));
    assert!(!is_below(
        &Quantity("1Gi".into()),
        &Quantity("1073741824".into())
    ));
    assert!(!is_below(&Quantity("lots".into()), &Quantity("1".into())));
    assert_eq!(check_resource("cpu", "64"), Ok(()));
    assert_eq!(
        check_resource("cpu", "64001m"),
        Err("must be between 1m and 64 (cores)")
    );
    assert_eq!(
        check_resource("memory", "1048575"),
        Err("must be between 1Mi and 64Gi")
    );
    assert_eq!(check_resource("memory", "0.0Mi"), Err("must be positive"));
    assert_eq!(check_resource("ephemeral-storage", "1Ti"), Ok(()));
}

/// `doc`'s refusal as the user reads it; panics when `doc` is admitted.
fn refusal(doc: &Value, config: &Config) -> String {
    let p: Pod = serde_json::from_value(doc.clone()).expect("a pod");
    match mutate(&p, config) {
        Err(refusal) => refusal.to_string(),
        Ok(Decision::Skip { reason, .. }) => panic!("skipped ({reason}) instead of refused"),
        Ok(Decision::Inject(_)) => panic!("injected instead of refused"),
    }
}

fn annotated(annotations: Value) -> Value {
    let mut doc = pod("bare");
    doc["metadata"]["annotations"] = annotations;
    doc
}

#[test]
fn impossible_resources_are_refused_with_the_annotation_to_fix() {
    let defaults = config(&[]);
    // Defaults: requests 10m / 16Mi, limit 64Mi, no cpu limit.
    for (annotations, blamed) in [
        (json!({ CPU_REQUEST: "-1" }), CPU_REQUEST),
        (json!({ CPU_REQUEST: "0" }), CPU_REQUEST),
        (json!({ CPU_LIMIT: "-500m" }), CPU_LIMIT),
        (json!({ MEMORY_REQUEST: "1e999" }), MEMORY_REQUEST),
        (json!({ CPU_LIMIT: "1e999" }), CPU_LIMIT),
        (json!({ CPU_LIMIT: "65" }), CPU_LIMIT),
        (json!({ MEMORY_LIMIT: "65Gi" }), MEMORY_LIMIT),
        // 64 bytes: `Mi` forgotten.
        (json!({ MEMORY_LIMIT: "64" }), MEMORY_LIMIT),
        // Limit below request, both annotated: the limit is blamed.
        (
            json!({ MEMORY_REQUEST: "256Mi", MEMORY_LIMIT: "128Mi" }),
            MEMORY_LIMIT,
        ),
        (json!({ CPU_REQUEST: "200m", CPU_LIMIT: "0.1" }), CPU_LIMIT),
        // Over or under the webhook's default on the other side.
        (json!({ MEMORY_REQUEST: "128Mi" }), MEMORY_REQUEST),
        (json!({ MEMORY_LIMIT: "8Mi" }), MEMORY_LIMIT),
        (json!({ CPU_LIMIT: "5m" }), CPU_LIMIT),
    ] {
        let why = refusal(&annotated(annotations.clone()), &defaults);
        assert!(why.contains(blamed), "{annotations}: {why}");
    }
    let mut with_cpu_limit = config(&[]);
    with_cpu_limit
        .resources
        .limits
        .insert("cpu".into(), Quantity("100m".into()));
    let why = refusal(&annotated(json!({ CPU_REQUEST: "200m" })), &with_cpu_limit);
    assert!(why.contains(CPU_REQUEST) && why.contains("100m"), "{why}");

    // At the bounds, and equal limits and requests however written.
    for annotations in [
        json!({ CPU_REQUEST: "0.1", CPU_LIMIT: "100m" }),
        json!({ MEMORY_REQUEST: "64Mi" }),
        json!({ MEMORY_REQUEST: "1073741824", MEMORY_LIMIT: "1Gi" }),
        json!({ CPU_REQUEST: "1m", CPU_LIMIT: "64", MEMORY_LIMIT: "64Gi" }),
        json!({ MEMORY_REQUEST: "1Mi", MEMORY_LIMIT: "1.5Mi" }),
        json!({ CPU_LIMIT: "10m" }),
    ] {
        let (p, _) = inject(&annotated(annotations.clone()), &defaults).expect("injected");
        assert!(sidecar_of(&p).resources.is_some(), "{annotations}");
    }
}

#[test]
fn a_volume_named_like_the_sidecars_is_refused() {
    let tokens = config(&[Token::Aws]);
    for name in [SOCKET_VOLUME, CONFIG_VOLUME, DATA_VOLUME, TOKEN_VOLUME] {
        let mut doc = pod("multi-container");
        doc["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": name, "emptyDir": {} }));
        let why = refusal(&doc, &tokens);
        assert!(why.contains(name), "{name}: {why}");
    }
}

#[test]
fn app_containers_cannot_mount_the_sidecars_private_volumes() {
    let tokens = config(&[Token::Aws]);
    for (list, name, path) in [
        ("containers", TOKEN_VOLUME, "/tokens"),
        ("containers", DATA_VOLUME, "/data"),
        ("initContainers", TOKEN_VOLUME, TOKEN_DIR),
    ] {
        let mut doc = pod("multi-container");
        let c = &mut doc["spec"][list][0];
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        let mut mounts = mounts;
        mounts.push(json!({ "name": name, "mountPath": path }));
        c["volumeMounts"] = Value::Array(mounts);
        let why = refusal(&doc, &tokens);
        assert!(
            why.contains(name) && why.contains(list),
            "{list} {name}: {why}"
        );
    }
    // The socket is theirs to mount where they like, read-only: a mount
    // that says writable, or nothing, is made read-only.
    for read_only in [json!(false), Value::Null] {
        let mut doc = pod("bare");
        let mut mount = json!({ "name": SOCKET_VOLUME, "mountPath": "/run/kms" });
        if !read_only.is_null() {
            mount["readOnly"] = read_only;
        }
        doc["spec"]["containers"][0]["volumeMounts"] = json!([mount]);
        doc["spec"]["initContainers"] = json!([{ "name": "init", "volumeMounts": [
            { "name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "subPath": "x" }
        ] }]);
        let (p, raw) = inject(&doc, &tokens).expect("injected");
        let spec = p.spec.as_ref().unwrap();
        assert_sees_socket(&spec.containers[0]);
        assert_sees_socket(&spec.init_containers.as_ref().unwrap()[1]);
        assert_eq!(
            raw["spec"]["containers"][0]["volumeMounts"][0],
            json!({ "name": SOCKET_VOLUME, "mountPath": "/run/kms", "readOnly": true })
        );
    }
}

#[test]
fn a_shared_process_namespace_is_refused() {
    let mut doc = pod("multi-container");
    doc["spec"]["shareProcessNamespace"] = json!(true);
    let why = refusal(&doc, &config(&[]));
    assert!(why.contains("shareProcessNamespace"), "{why}");
    doc["spec"]["shareProcessNamespace"] = json!(false);
    assert!(inject(&doc, &config(&[])).is_some());
}

#[test]
fn containers_running_as_the_sidecars_uid_are_refused() {
    let sidecar_uid = Config::default().run_as_user;
    let as_sidecar = json!({ "runAsUser": sidecar_uid });
    // Each place a container's uid is set: its own securityContext (app or
    // init container), or the pod's for a container that sets none.
    for (at, blamed, set_in) in [
        (
            Some(("containers", 1)),
            "spec.containers[1]",
            "its securityContext",
        ),
        (
            Some(("initContainers", 0)),
            "spec.initContainers[0]",
            "its securityContext",
        ),
        (None, "spec.containers[0]", "the pod's securityContext"),
    ] {
        let mut doc = pod("multi-container");
        match at {
            Some((list, i)) => doc["spec"][list][i]["securityContext"] = as_sidecar.clone(),
            None => doc["spec"]["securityContext"] = as_sidecar.clone(),
        }
        let why = refusal(&doc, &config(&[]));
        assert!(
            why.contains(blamed) && why.contains(&sidecar_uid.to_string()) && why.contains(set_in),
            "{at:?}: {why}"
        );
    }
    // The pod's uid does not apply to containers that set their own.
    let mut doc = pod("multi-container");
    doc["spec"]["securityContext"]["runAsUser"] = json!(sidecar_uid);
    for list in ["containers", "initContainers"] {
        for c in doc["spec"][list].as_array_mut().unwrap() {
            c["securityContext"] = json!({ "runAsUser": 1000 });
        }
    }
    assert!(inject(&doc, &config(&[])).is_some());
    // The sidecar's uid is the webhook's setting.
    let mut doc = pod("bare");
    doc["spec"]["containers"][0]["securityContext"] = json!({ "runAsUser": 4242 });
    assert!(inject(&doc, &config(&[])).is_some());
    let other = Config {
        run_as_user: 4242,
        ..config(&[])
    };
    assert!(refusal(&doc, &other).contains("4242"));
}

#[test]
fn a_mount_at_the_socket_dir_spelled_differently_is_not_doubled() {
    let mut doc = pod("bare");
    doc["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "mine", "mountPath": "/var/run/kms/" }]);
    doc["spec"]["volumes"] = json!([{ "name": "mine", "emptyDir": {} }]);
    let (p, _) = inject(&doc, &config(&[])).expect("injected");
    let app = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(app.volume_mounts.as_ref().unwrap().len(), 1, "{app:?}");
}

#[test]
fn inject_and_opt_out_ignore_case() {
    for (label, annotation, injected) in [
        (Some("TRUE"), None, true),
        (Some("True"), None, true),
        // The chart's objectSelector matches the label only: an annotation
        // alone does not opt in.
        (None, Some("TRUE"), false),
        (Some("true"), Some("FALSE"), false),
        (Some("True"), Some("False"), false),
        (Some("FALSE"), None, false),
        (Some("yes"), None, false),
    ] {
        let mut doc = pod("bare");
        doc["metadata"]["labels"] = match label {
            Some(v) => json!({ INJECT: v }),
            None => json!({}),
        };
        if let Some(v) = annotation {
            doc["metadata"]["annotations"] = json!({ INJECT: v });
        }
        assert_eq!(
            inject(&doc, &config(&[])).is_some(),
            injected,
            "label {label:?}, annotation {annotation:?}"
        );
    }
}

#[test]
fn gcp_tokens_project_the_providers_audience_and_the_credentials_file() {
    const PROVIDER: &str =
        "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/r";
    let c = Config {
        gcp: crate::webhook::config::GcpIdentity {
            audience: Some(PROVIDER.into()),
            ..Default::default()
        },
        ..config(&[Token::Gcp])
    };
    let (p, _) = inject(&pod("bare"), &c).expect("injected");
    assert_eq!(
        env_of(sidecar_of(&p), "GOOGLE_APPLICATION_CREDENTIALS").as_deref(),
        Some(GCP_CREDENTIALS_FILE)
    );
    let tokens = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let projected = tokens
        .iter()
        .find_map(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .expect("a projected volume");
    let token = projected
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .expect("a token");
    assert_eq!(
        (token.audience.as_deref(), token.path.as_str()),
        (Some(PROVIDER), "gcp")
    );
    let config_map = projected
        .iter()
        .find_map(|s| s.config_map.as_ref())
        .expect("the credentials ConfigMap");
    assert_eq!(config_map.name, "kms-sidecar-gcp");
    assert_eq!(
        config_map.items.as_ref().unwrap()[0].path,
        "gcp-credentials.json"
    );
    // A pod names its own provider and ConfigMap.
    let doc = annotated(json!({
        TOKENS: "gcp",
        GCP_AUDIENCE: "//iam.googleapis.com/projects/9/locations/global/workloadIdentityPools/q/providers/s",
        GCP_CREDENTIALS: "orders-gcp",
    }));
    let (p, _) = inject(&doc, &config(&[])).expect("injected");
    let volumes = serde_json::to_string(&p.spec.as_ref().unwrap().volumes).unwrap();
    assert!(
        volumes.contains("projects/9/") && volumes.contains("orders-gcp"),
        "{volumes}"
    );
    // Without an audience anywhere, the pod cannot be given a gcp token.
    let why = refusal(&annotated(json!({ TOKENS: "gcp" })), &config(&[]));
    assert!(why.contains(GCP_AUDIENCE), "{why}");
}

/// The sidecar is told where its data volume is and its size limit, the
/// same as the `emptyDir`'s, so it can refuse an audit rotation that does
/// not fit (`data_volume` in its config).
#[test]
fn the_sidecar_is_told_its_data_volume_and_its_size() {
    let (p, _) = inject(&pod("bare"), &config(&[])).expect("injected");
    let s = sidecar_of(&p);
    let volume = p
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == DATA_VOLUME)
        .unwrap();
    let limit = volume
        .empty_dir
        .as_ref()
        .unwrap()
        .size_limit
        .as_ref()
        .unwrap();
    assert_eq!(
        env_of(s, "KMS_SIDECAR_DATA_VOLUME__SIZE_LIMIT").as_deref(),
        Some(limit.0.as_str())
    );
    assert_eq!(
        env_of(s, "KMS_SIDECAR_DATA_VOLUME__PATH").as_deref(),
        Some(DATA_DIR)
    );
    let mount = s
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == DATA_VOLUME)
        .unwrap();
    assert_eq!(mount.mount_path, DATA_DIR);
    // The sidecar reads them as its config's `data_volume`: the default
    // audit rotation fits it.
    let env: std::collections::BTreeMap<String, String> = s
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let text = format!(
        "backends: {{d: {{type: local, dir: x}}}}\nkeys: {{}}\naudit: {{path: {DATA_DIR}/audit.jsonl}}\n"
    );
    let c = crate::config::Config::parse(&text, "t", &env).expect("the defaults fit");
    let v = c.data_volume.expect("the volume is known");
    assert_eq!(v.size_limit.0, 64 << 20);
}

/// Published pod specs that the trial of real pods found problems with:
/// Windows, pod-level resources, a taken probes port, hostNetwork, later
/// containers, legacy mode, a hidden socket, the token files' mode.
#[path = "mutate_pods_tests.rs"]
mod pods;

/// Pods a service mesh's injector made (Istio's and Linkerd's test data).
#[path = "mesh_tests.rs"]
mod meshes;

/// A socket per container, and OpenShift (issue 32 §1, §2).
#[path = "mutate_modes_tests.rs"]
mod modes;
