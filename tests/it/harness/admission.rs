//! Registering an admission webhook of ours with a test [`ControlPlane`], as
//! the chart's `inject.kms-sidecar.io` entry does.

use super::{ControlPlane, b64, eventually};
use std::path::Path;
use std::time::Duration;

impl ControlPlane {
    /// Registers (or re-points) the MutatingWebhookConfiguration `name`:
    /// pod `CREATE`s of pods labelled `kms-sidecar.io/inject` go to `url`
    /// (HTTPS, its certificate signed by the PEM CA `ca`), with the chart's
    /// `objectSelector` and `reinvocationPolicy: IfNeeded`, and
    /// `failurePolicy: Fail` so that a webhook the API server cannot call
    /// fails the creation instead of hiding behind `Ignore`. Then waits
    /// until the API server calls it: a server-side dry run of a labelled
    /// pod in `namespace` (which needs its `default` ServiceAccount) succeeds
    /// with the webhook's mark (its status annotation, or a warning of its
    /// own).
    pub async fn register_webhook(&self, name: &str, url: &str, ca: &Path, namespace: &str) {
        let ca_bundle = b64(std::fs::read(ca).expect("read the webhook's CA"));
        self.apply(&format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
- name: inject.kms-sidecar.io
  clientConfig:
    url: {url}
    caBundle: {ca_bundle}
  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
    scope: Namespaced
  objectSelector:
    matchExpressions:
    - {{ key: kms-sidecar.io/inject, operator: In, values: ["true", "True", "TRUE"] }}
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  timeoutSeconds: 10
"#
        ));
        let probe = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: webhook-probe\n  namespace: {namespace}\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\nspec:\n  containers: [{{ name: c, image: busybox }}]\n"
        );
        eventually(
            Duration::from_secs(30),
            &format!("the API server calls the webhook at {url}"),
            || {
                let out = self.kubectl_with_input(
                    &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                    Some(&probe),
                );
                let called = out.status.success()
                    && (String::from_utf8_lossy(&out.stdout).contains("kms-sidecar.io/status")
                        || String::from_utf8_lossy(&out.stderr).contains("Warning: kms-sidecar"));
                async move { called }
            },
        )
        .await;
    }
}
