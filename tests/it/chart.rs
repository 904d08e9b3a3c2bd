//! The Helm chart, the plain manifests and their examples, checked by
//! `tests/chart/check.py`: Helm's library (helm-python-sdk) renders and lints
//! the chart with every values file, kubernetes-validate checks every object
//! against the 1.29–1.33 schemas (strict), bad values must fail
//! values.schema.json, the rendered configs pass this binary's `config
//! check` / `webhook --check`, and manifests/ must equal a fresh render.

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
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
