//! The Helm chart, the plain manifests and their examples, checked by
//! `tests/chart/check.py`: Helm's library (helm-python-sdk) renders and lints
//! the chart with every values file as for each of Kubernetes 1.29–1.33 (the
//! legacy-cluster file: 1.25 and 1.28), kubernetes-validate checks every
//! object against that version's schemas (strict), bad values must fail
//! values.schema.json, native sidecars are refused before 1.29, the TLS
//! wiring (Helm's CA and its annotations, cert-manager's stable CA) and the
//! PodDisruptionBudget are checked, the rendered configs pass this binary's
//! `config check` / `webhook --check`, and manifests/ must equal a fresh
//! render.

use std::process::Command;

#[test]
fn chart_renders_valid_objects_and_manifests_do_not_drift() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/check.py");
    let out = Command::new("python3")
        .arg(script)
        .env("CHART_CHECK_BIN", env!("CARGO_BIN_EXE_kms-sidecar"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); `make test` installs what the chart check needs")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chart check failed (`make test-deps` installs helm-python-sdk and kubernetes-validate):\n{stdout}\n{stderr}"
    );
    // Every kind of check ran.
    for expected in [
        "ok values/default.yaml",
        "ok values/production.yaml",
        "ok bad-values/unknown-field.yaml: refused",
        "ok manifests/kms-sidecar.yaml: no drift",
        "ok manifests/examples/job.yaml",
        "ok manifests/examples/azure-workload-identity.yaml",
        "ok manifests/examples/gcp-workload-identity.yaml",
        "ok manifests/examples/pkcs11-hsm.yaml",
        "ok values/gcp.yaml",
        // A drain can evict a webhook pod, with one replica too (issue 30, item 10).
        "ok values/single-replica.yaml",
        "ok bad-values/pdb-blocks-drains.yaml: refused",
        "ok bad-values/pdb-min-available.yaml: refused",
        // Rendered as for a 1.28 cluster; native sidecars refused there (item 11).
        "ok values/legacy-cluster.yaml: 10 objects rendered and valid on 1.25.0, 1.28.0",
        "ok native sidecars: refused before Kubernetes 1.29",
        // The chart's own CA under cert-manager (item 12).
        "ok values/cert-manager-chart-ca.yaml",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
