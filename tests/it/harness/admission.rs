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
        let selector = r#"
  objectSelector:
    matchExpressions:
    - { key: kms-sidecar.io/inject, operator: In, values: ["true", "True", "TRUE"] }"#;
        self.apply(&mutating_webhook(
            name,
            "inject.kms-sidecar.io",
            url,
            ca,
            selector,
        ));
        let probe = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: webhook-probe\n  namespace: {namespace}\n  labels: {{ kms-sidecar.io/inject: \"true\" }}\nspec:\n  containers: [{{ name: c, image: busybox }}]\n"
        );
        let marks = ["kms-sidecar.io/status", "Warning: kms-sidecar"];
        self.wait_until_called(&format!("the webhook at {url}"), &probe, &marks)
            .await;
    }

    /// Waits until a server-side dry run of `pod` (YAML) succeeds with one
    /// of `marks` in kubectl's output or warnings: the API server calls the
    /// webhook just registered.
    pub async fn wait_until_called(&self, webhook: &str, pod: &str, marks: &[&str]) {
        eventually(
            Duration::from_secs(30),
            &format!("the API server calls {webhook}"),
            || {
                let out = self.kubectl_with_input(
                    &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                    Some(pod),
                );
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let called = out.status.success() && marks.iter().any(|m| said.contains(m));
                async move { called }
            },
        )
        .await;
    }
}

/// A MutatingWebhookConfiguration `name` with one webhook, `hook`, for pod
/// `CREATE`s, sent to `url` (HTTPS, its certificate signed by the PEM CA
/// `ca`), `failurePolicy: Fail` and `reinvocationPolicy: IfNeeded`;
/// `extra` is more YAML for the webhook (an `objectSelector`).
pub fn mutating_webhook(name: &str, hook: &str, url: &str, ca: &Path, extra: &str) -> String {
    let ca_bundle = b64(std::fs::read(ca).expect("read the webhook's CA"));
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
- name: {hook}
  clientConfig:
    url: {url}
    caBundle: {ca_bundle}
  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
    scope: Namespaced{extra}
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  timeoutSeconds: 10
"#
    )
}
