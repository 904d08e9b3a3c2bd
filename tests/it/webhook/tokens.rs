//! The sidecar can read its own tokens whatever the pod's uids and
//! `fsGroup`: published pod specs are created in a real API server, which
//! calls the webhook; then the kubelet stand-in (`pod-runner`, see
//! `docs/kubernetes-tests.md`) makes the token volume of each stored pod
//! with the kubelet's own code of k8s.io/kubernetes v1.37.2 (the release
//! `make kube-bin` builds) and starts the sidecar container as the spec
//! says, in which the token files are then read.
//!
//! The kubelet's rules that decide it, applied by that code:
//!
//! - `pkg/volume/util/util.go`, `FsUserFrom`: the volume's file owner is the
//!   one uid every container (init containers included) runs as, or none
//!   when a container sets no uid or two differ;
//! - `pkg/volume/projected/projected.go`, `collectData`: a token file gets
//!   the volume's `defaultMode`, or `0600` when there is such an owner or an
//!   `fsGroup`; a ConfigMap item gets its own `mode`, else `defaultMode`;
//! - `pkg/volume/util/atomic_writer.go`: the files are written by root and
//!   chowned to that owner, if any;
//! - `pkg/volume/volume_linux.go`, `changeFilePermission` (through
//!   `SetVolumeOwnership`, the volume being read-only): with an `fsGroup`,
//!   each file's group becomes it and `0440` is added to its mode;
//! - `pkg/kubelet/kuberuntime/security_context.go`: a container's
//!   supplementary groups are the pod's `fsGroup` and `supplementalGroups`;
//!   its gid is its `runAsGroup`, else the pod's, else the image's (65532,
//!   distroless `nonroot`, the sidecar image's user).

use super::config_maps::{create, injected, stored};
use super::{Webhook, fixture};
use crate::harness::{ControlPlane, RunOptions, RunningPod, free_port};
use serde_json::Value;
use std::path::Path;

const GCP_PROVIDER: &str =
    "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s";

/// Every published pod we have: the fixtures (their sources are named in
/// each file) and the examples users copy.
fn published() -> Vec<(String, Value)> {
    let mut pods: Vec<(String, Value)> = [
        "security-context",
        "multi-container",
        "bare",
        "job-pod",
        "statsd-exporter",
        "node-exporter",
        "pod-level-resources",
        "init-containers",
    ]
    .into_iter()
    .map(|name| (name.to_string(), fixture(name)))
    .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in [
        "examples/app/pod.yaml",
        "manifests/examples/irsa.yaml",
        "manifests/examples/vault-kubernetes-auth.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(example)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            if doc["kind"] == "Pod" {
                pods.push((example.to_string(), doc));
            }
        }
    }
    pods
}

/// The published pod as this test's namespace stores it: its own name, no
/// service account of its own (the namespace has `default`).
fn to_create(pod: &Value, name: &str) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["namespace"] = "published".into();
    pod["metadata"]["name"] = name.into();
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("generateName");
    }
    if let Some(spec) = pod["spec"].as_object_mut() {
        spec.remove("serviceAccountName");
    }
    pod
}

/// The paths in the sidecar's token volume of a stored pod.
fn token_files(pod: &Value) -> Vec<String> {
    let volume = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "kms-sidecar-tokens")
        .unwrap_or_else(|| panic!("no token volume: {pod}"));
    volume["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let token = s["serviceAccountToken"]["path"].as_str().map(str::to_owned);
            let items = s["configMap"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            token.into_iter().chain(
                items
                    .into_iter()
                    .filter_map(|i| i["path"].as_str().map(str::to_owned)),
            )
        })
        .collect()
}

/// A config that starts without a KMS: these tests are about the files.
const SIDECAR_CONFIG: &str =
    "backends:\n  dev: { type: local, dir: /var/lib/kms-sidecar/keys }\nkeys: {}\ncallers: []\n";

/// GCP's external-account file (its content does not matter here).
const GCP_CREDENTIALS: &str = "{\"type\": \"external_account\"}";

/// The namespace, with the sidecar's ConfigMaps (a config serving no key,
/// GCP's credentials file), and the webhook asked
/// for every token.
async fn setup(cp: &ControlPlane) -> Webhook {
    cp.namespace("published", &[]);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kms-sidecar", "namespace": "published"},
         "data": {"config.yaml": SIDECAR_CONFIG}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kms-sidecar-gcp", "namespace": "published"},
         "data": {"credentials.json": GCP_CREDENTIALS}},
    ]});
    cp.apply(&list.to_string());
    let hook = Webhook::start_with_kubeconfig(
        &format!(
            "tokens: [aws, azure, gcp, vault]\ngcp: {{ audience: \"{GCP_PROVIDER}\" }}\nprobes_port: {}\n",
            free_port()
        ),
        &cp.kubeconfig,
    );
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "published")
        .await;
    hook
}

/// The ConfigMaps a pod's annotations name instead of the webhook's.
fn config_maps_named_by(cp: &ControlPlane, pod: &Value) {
    let annotations = &pod["metadata"]["annotations"];
    let wanted = [
        ("kms-sidecar.io/config", "config.yaml", SIDECAR_CONFIG),
        (
            "kms-sidecar.io/gcp-credentials",
            "credentials.json",
            GCP_CREDENTIALS,
        ),
    ];
    for (annotation, key, value) in wanted {
        if let Some(name) = annotations[annotation].as_str() {
            let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "published"}, "data": {key: value}});
            cp.apply(&cm.to_string());
        }
    }
}

#[tokio::test]
async fn the_sidecar_reads_its_tokens_whatever_the_pods_uids_and_fs_group() {
    let cp = ControlPlane::start().await;
    let _hook = setup(&cp).await;
    let (mut checked, mut with_fs_group) = (0, 0);
    for (i, (source, pod)) in published().into_iter().enumerate() {
        let name = format!("published-{i}");
        config_maps_named_by(&cp, &pod);
        let (_, warnings) = create(&cp, &to_create(&pod, &name).to_string());
        let pod = stored(&cp, "published", &name);
        assert!(injected(&pod), "{source}: not injected: {warnings}");
        // Only the sidecar runs (the apps' images are not here), but the
        // kubelet's rules see every container of the pod.
        let only = RunOptions {
            only: &["kms-sidecar"],
            ..RunOptions::default()
        };
        let running = RunningPod::start(&cp, "published", &name, only).await;
        for file in token_files(&pod) {
            let path = format!("/var/run/secrets/kms-sidecar/{file}");
            let out = running.exec("kms-sidecar", &["cat", &path]);
            let on_disk = std::fs::read(running.volume("kms-sidecar-tokens").join(&file)).unwrap();
            assert!(
                out.status.success() && out.stdout == on_disk,
                "{source}: the sidecar cannot read {file}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                running.logs()
            );
            checked += 1;
        }
        with_fs_group += usize::from(pod["spec"]["securityContext"]["fsGroup"].is_i64());
    }
    // Every pod has its files (all four tokens and GCP's credentials file,
    // unless it names its tokens), and the rule's other branch (an fsGroup)
    // is seen at least once.
    assert!(checked > published().len() * 2, "{checked} files");
    assert!(with_fs_group >= 1);
}
