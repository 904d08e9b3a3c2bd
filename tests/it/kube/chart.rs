//! The chart installed and upgraded by the real Helm CLI (`make kube-bin`
//! builds it) into a real API server, where its `lookup` sees the cluster:
//! with `tls.source: generate`, `helm upgrade` keeps the CA and certificate
//! in the existing Secret while they are good (issue 30, item 13), and makes
//! new ones, trusted beside the old CA, when they are not.

use crate::harness::ControlPlane;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kms-sidecar");
const NS: &str = "kms-system";
const SECRET: &str = "kms-sidecar-webhook-tls";

/// What a render decided about TLS, as stored in the cluster.
#[derive(Debug, Clone, PartialEq)]
struct Tls {
    /// PEM certificates of the webhook configuration's caBundle (both entries agree).
    bundle: Vec<String>,
    ca: String,
    crt: String,
    key: String,
}

fn pem(b64: &str) -> String {
    let bytes = STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {b64}"));
    String::from_utf8(bytes).expect("PEM is text")
}

/// The certificates of a PEM bundle, each with its BEGIN/END lines.
fn certificates(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read_tls(cp: &ControlPlane) -> Tls {
    let json = |text: String| -> Value { serde_json::from_str(&text).expect("kubectl -o json") };
    let mwc = json(cp.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration",
        "kms-sidecar",
        "-o",
        "json",
    ]));
    let bundles: Vec<&str> = mwc["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|h| h["clientConfig"]["caBundle"].as_str().expect("a caBundle"))
        .collect();
    assert!(
        bundles.len() == 2 && bundles[0] == bundles[1],
        "one caBundle for both webhooks: {mwc}"
    );
    let secret = json(cp.kubectl_ok(&["-n", NS, "get", "secret", SECRET, "-o", "json"]));
    let data = |k: &str| {
        pem(secret["data"][k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k}: {secret}")))
    };
    let tls = Tls {
        bundle: certificates(&pem(bundles[0])),
        ca: data("ca.crt"),
        crt: data("tls.crt"),
        key: data("tls.key"),
    };
    // Whatever was decided, the API server trusts the certificate served.
    let dir = tempfile::tempdir().expect("temp dir");
    let (bundle, crt) = (dir.path().join("bundle.pem"), dir.path().join("tls.crt"));
    std::fs::write(&bundle, tls.bundle.join("\n")).unwrap();
    std::fs::write(&crt, &tls.crt).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&bundle)
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "the caBundle does not verify the Secret's certificate: {out:?}"
    );
    tls
}

/// `helm install` or `helm upgrade` of the chart as release kms-sidecar.
fn helm(cp: &ControlPlane, action: &str, extra: &[&str]) {
    let mut args = vec![action, "kms-sidecar", CHART, "-n", NS];
    if action == "install" {
        args.push("--create-namespace");
    }
    args.extend_from_slice(extra);
    cp.helm_ok(&args);
}

/// Ages the TLS Secret by an annotation, as another writer would. Helm
/// applies server-side, so its next upgrade takes the field back with
/// `--force-conflicts` (what a user would not need: nobody else writes it).
const TAKE_BACK: &[&str] = &["--force-conflicts"];

#[tokio::test]
async fn helm_upgrade_keeps_the_generated_ca_while_it_is_valid() {
    let cp = ControlPlane::start().await;
    helm(&cp, "install", &[]);
    let installed = read_tls(&cp);
    assert_eq!(
        installed.bundle,
        [installed.ca.trim()],
        "the bundle is the CA"
    );

    // The upgrade's lookup finds the Secret: nothing changes.
    helm(&cp, "upgrade", &[]);
    assert_eq!(
        read_tls(&cp),
        installed,
        "helm upgrade changed the CA or the certificate"
    );

    // Near its expiry (a third of its validity left): a new CA and
    // certificate; the bundle trusts the new CA and the old one, which the
    // webhook's pods serve until the kubelet syncs the Secret.
    annotate(&cp, "kms-sidecar.io/tls-renew-after=2020-01-01T00:00:00Z");
    helm(&cp, "upgrade", TAKE_BACK);
    let renewed = read_tls(&cp);
    assert_ne!(
        renewed.ca, installed.ca,
        "a certificate near expiry was kept"
    );
    assert_ne!(renewed.crt, installed.crt);
    assert_ne!(renewed.key, installed.key);
    assert_eq!(
        renewed.bundle,
        [renewed.ca.trim(), installed.ca.trim()],
        "new and old CA"
    );
    // The next upgrade keeps the new one and drops the old CA.
    helm(&cp, "upgrade", &[]);
    let kept = read_tls(&cp);
    assert_eq!(
        (&kept.ca, &kept.crt, &kept.key),
        (&renewed.ca, &renewed.crt, &renewed.key)
    );
    assert_eq!(kept.bundle, [renewed.ca.trim()]);

    // Made for other names (another Service): replaced.
    annotate(&cp, "kms-sidecar.io/tls-names=other-webhook.kms-system.svc");
    helm(&cp, "upgrade", TAKE_BACK);
    let renamed = read_tls(&cp);
    assert_ne!(
        renamed.ca, kept.ca,
        "a certificate for other names was kept"
    );
    assert_ne!(renamed.crt, kept.crt);

    // Without the Secret (as `helm template` and Argo CD render it, seeing
    // no cluster): a new CA and certificate, the bundle that CA alone.
    cp.kubectl_ok(&["-n", NS, "delete", "secret", SECRET]);
    helm(&cp, "upgrade", &[]);
    let fresh = read_tls(&cp);
    assert_ne!(fresh.ca, renamed.ca, "the CA survived its Secret");
    assert_ne!(fresh.crt, renamed.crt);
    assert_eq!(fresh.bundle, [fresh.ca.trim()]);
}

/// Sets an annotation on the TLS Secret (see [`TAKE_BACK`]).
fn annotate(cp: &ControlPlane, annotation: &str) {
    cp.kubectl_ok(&[
        "-n",
        NS,
        "annotate",
        "--overwrite",
        "secret",
        SECRET,
        annotation,
    ]);
}
