//! The admission webhook binary over HTTPS, posted AdmissionReviews as the
//! API server posts them (there is no API server here): pods injected,
//! everything else admitted unchanged, malformed reviews answered with an
//! error, the certificate reloaded when its files change.
//!
//! - [`isolation`]: the socket read-only in app containers; pods and
//!   ephemeral containers that would reach into the sidecar refused;
//! - [`socket`]: the read-only mount, for real, in a mount namespace;
//! - [`tokens`]: the token files readable by the sidecar under the kubelet's
//!   ownership rules;
//! - [`config_maps`]: pods whose namespace lacks the sidecar's ConfigMap,
//!   through a real API server;
//! - [`reinvocation`]: a container another webhook adds after ours gets the
//!   socket, through a real API server;
//! - [`admitted`]: the real API server's PodSecurity and validation accept
//!   what the webhook injects into published pods;
//! - [`meshes`]: pods Istio's and Linkerd's injectors made, injected through
//!   a real API server where the sidecar can start, and the sidecar started
//!   with no network to its KMS.

mod admitted;
mod config_maps;
mod isolation;
mod meshes;
mod reinvocation;
mod socket;
mod tokens;

use crate::harness::{issue_cert as issue, run_tool, spawn_binary, wait_timeout};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const CURL_HINT: &str = "install curl (apt-get install curl)";

pub(crate) struct Webhook {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    pub(crate) ca: PathBuf,
}

impl Webhook {
    /// Starts `kms-sidecar webhook` with `config` (the webhook's YAML),
    /// with no Kubernetes API credentials (`KUBECONFIG` names no file).
    fn start(config: &str) -> Webhook {
        Self::start_with_kubeconfig(config, Path::new("/nonexistent/kubeconfig"))
    }

    /// [`Self::start`] with `KUBECONFIG` set to `kubeconfig`.
    pub(crate) fn start_with_kubeconfig(config: &str, kubeconfig: &Path) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = issue(dir.path(), "first");
        std::fs::copy(&cert, dir.path().join("tls.crt")).unwrap();
        std::fs::copy(&key, dir.path().join("tls.key")).unwrap();
        std::fs::write(
            dir.path().join("webhook.yaml"),
            config.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let port = crate::harness::free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = spawn_binary(
            dir.path(),
            &[
                "webhook",
                "--tls-cert",
                "tls.crt",
                "--tls-key",
                "tls.key",
                "--listen",
                &listen,
                "--config",
                "webhook.yaml",
            ],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
            &dir.path().join("webhook.log"),
        );
        let mut hook = Webhook {
            child,
            url: format!("https://localhost:{port}"),
            ca,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while hook.get("/healthz").0 != 200 {
            if let Some(status) = hook.child.try_wait().unwrap() {
                panic!("the webhook exited ({status}): {}", hook.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the webhook never became healthy: {}",
                hook.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        hook
    }

    /// Where an API server calls it (the certificate names 127.0.0.1).
    pub(crate) fn mutate_url(&self) -> String {
        format!("{}/mutate", self.url.replace("localhost", "127.0.0.1"))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("webhook.log")).unwrap_or_default()
    }

    /// curl with the current CA: (status, body); status 0 when TLS or the
    /// connection failed.
    fn curl(&self, ca: &Path, args: &[&str], path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        let mut all = vec![
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
        ];
        all.extend_from_slice(args);
        all.push(&url);
        let (_, out, _) = run_tool("curl", &all, CURL_HINT);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.curl(&self.ca, &[], path)
    }

    /// POSTs `body` to /mutate as the API server does.
    fn post_raw(&self, body: &[u8], content_type: &str) -> (u16, String) {
        let file = self.dir.path().join(format!("body-{}", fastrand_name()));
        std::fs::write(&file, body).unwrap();
        let data = format!("@{}", file.display());
        let header = format!("content-type: {content_type}");
        let r = self.curl(
            &self.ca,
            &["-X", "POST", "-H", &header, "--data-binary", &data],
            "/mutate",
        );
        let _ = std::fs::remove_file(file);
        r
    }

    /// POSTs a review and returns its `response`.
    fn review(&self, review: &Value) -> Value {
        let (status, body) = self.post_raw(review.to_string().as_bytes(), "application/json");
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "the uid is echoed"
        );
        answer["response"].clone()
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        crate::harness::signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(20));
    }
}

fn fastrand_name() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/webhook/pods/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An AdmissionReview as the API server sends it.
fn review_of(kind: (&str, &str, &str), resource: &str, operation: &str, object: &Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uuid::Uuid::new_v4().to_string(),
            "kind": { "group": group, "version": version, "kind": kind },
            "resource": { "group": group, "version": version, "resource": resource },
            "requestKind": { "group": group, "version": version, "kind": kind },
            "requestResource": { "group": group, "version": version, "resource": resource },
            "namespace": "apps",
            "operation": operation,
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u", "groups": ["system:serviceaccounts"] },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" }
        }
    })
}

fn pod_review(pod: &Value) -> Value {
    review_of(("", "v1", "Pod"), "pods", "CREATE", pod)
}

/// The JSONPatch of a response: base64, as the API server's Go type
/// (`[]byte`) decodes it.
fn patch_of(response: &Value) -> json_patch::Patch {
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded = response["patch"]
        .as_str()
        .expect("the patch is a base64 string");
    serde_json::from_slice(&crate::harness::unb64(&json!(encoded))).unwrap()
}

#[test]
fn injects_labelled_pods_and_admits_everything_else_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar_config = dir.path().join("config.yaml");
    std::fs::write(
        &sidecar_config,
        "backends:\n  kms: { type: aws, region: eu-west-1 }\n  vault: { type: vault, address: \"https://vault:8200\", auth: { method: kubernetes, role: app, token_file: /var/run/secrets/kms-sidecar/vault } }\nkeys: {}\n",
    )
    .unwrap();
    let hook = Webhook::start(&format!(
        "image: registry.example.com/kms-sidecar:test\nsidecar_config: {}\naws: {{ role_arn: \"arn:aws:iam::111122223333:role/app\" }}\n",
        sidecar_config.display()
    ));

    let pod = fixture("multi-container");
    let response = hook.review(&pod_review(&pod));
    assert_eq!(response["allowed"], true);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch_of(&response)).expect("the patch applies");
    let sidecar = &patched["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "kms-sidecar");
    assert_eq!(sidecar["image"], "registry.example.com/kms-sidecar:test");
    assert_eq!(sidecar["restartPolicy"], "Always");
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert!(env.contains(&(
        "AWS_ROLE_ARN".into(),
        "arn:aws:iam::111122223333:role/app".into()
    )));
    // The tokens the sidecar config's backends need, read from it at start.
    let volumes = patched["spec"]["volumes"].as_array().unwrap();
    let tokens = volumes
        .iter()
        .find(|v| v["name"] == "kms-sidecar-tokens")
        .unwrap();
    let audiences: Vec<&str> = tokens["projected"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["serviceAccountToken"]["audience"].as_str().unwrap())
        .collect();
    assert_eq!(audiences, ["sts.amazonaws.com", "vault"]);
    assert_eq!(
        patched["metadata"]["annotations"]["kms-sidecar.io/status"],
        "injected"
    );

    // Reinvocation on the patched pod (nothing new), an opted-out pod, a pod
    // with the opt-in annotation but not the label: allowed, no patch.
    let mut annotated = fixture("bare");
    annotated["metadata"]["labels"] = json!({});
    annotated["metadata"]["annotations"] = json!({"kms-sidecar.io/inject": "true"});
    for pod in [patched, fixture("opted-out"), annotated] {
        let r = hook.review(&pod_review(&pod));
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
    }
    // Not a pod creation: a Deployment, a pod update, a pod's binding.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"kms-sidecar.io/inject": "true"}}, "spec": {"selector": {}, "template": {"spec": {"containers": []}}}});
    let mut binding = pod_review(&fixture("bare"));
    binding["request"]["subResource"] = json!("binding");
    for review in [
        review_of(
            ("apps", "v1", "Deployment"),
            "deployments",
            "CREATE",
            &deployment,
        ),
        review_of(("", "v1", "Pod"), "pods", "UPDATE", &fixture("bare")),
        binding,
    ] {
        let r = hook.review(&review);
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
    }
    assert_eq!(
        hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"injected\"}"),
        1.0
    );
    assert_eq!(
        hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"skipped\"}"),
        6.0
    );
}

#[test]
fn malformed_requests_get_clear_errors_and_never_crash_it() {
    let hook = Webhook::start("");
    let bad_json = |body: &[u8]| {
        let (status, text) = hook.post_raw(body, "application/json");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error body: {text}"));
        (status, v["error"].as_str().unwrap_or_default().to_string())
    };
    let (status, e) = bad_json(b"{not json");
    assert_eq!(status, 400);
    assert!(e.contains("not an AdmissionReview"), "{e}");
    let (status, e) = bad_json(
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#,
    );
    assert_eq!(status, 400);
    assert!(e.contains("admission.k8s.io/v1"), "{e}");
    let (status, e) = bad_json(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#);
    assert_eq!(status, 400);
    assert!(e.contains("no request"), "{e}");
    let (status, _) = bad_json(&vec![b' '; 5 << 20]);
    assert_eq!(status, 413);
    let (status, _) = hook.post_raw(b"{}", "text/plain");
    assert_eq!(status, 415);
    assert_eq!(hook.get("/mutate").0, 405);
    assert_eq!(hook.get("/nope").0, 404);

    // A pod object that is not a pod, and a bad annotation: admitted
    // unchanged with a warning the user sees (failure_policy: ignore).
    let broken = pod_review(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"kms-sidecar.io/inject": "true"}}, "spec": {"containers": "many"}}),
    );
    let r = hook.review(&broken);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert!(
        r["warnings"][0].as_str().unwrap().contains("not a pod"),
        "{r}"
    );
    let mut pod = fixture("bare");
    pod["metadata"]["annotations"] = json!({"kms-sidecar.io/memory-limit": "lots"});
    let r = hook.review(&pod_review(&pod));
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("kms-sidecar.io/memory-limit"),
        "{r}"
    );
    assert_eq!(hook.get("/healthz").0, 200, "still serving");
    assert_eq!(
        hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"malformed\"}"),
        5.0
    );
    assert_eq!(
        hook.metric("kms_sidecar_webhook_reviews_total{outcome=\"refused\"}"),
        2.0
    );
}

#[test]
fn failure_policy_fail_denies_what_it_cannot_inject() {
    let hook = Webhook::start("failure_policy: fail\n");
    let mut pod = fixture("bare");
    pod["metadata"]["annotations"] = json!({"kms-sidecar.io/tokens": "pkcs11"});
    let r = hook.review(&pod_review(&pod));
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("kms-sidecar.io/tokens") && message.contains("pkcs11"),
        "{message}"
    );
    // A good pod is still injected.
    let r = hook.review(&pod_review(&fixture("bare")));
    assert_eq!(r["allowed"], true);
    assert!(!patch_of(&r).0.is_empty());
}

#[test]
fn reloads_its_certificate_when_the_files_change() {
    let mut hook = Webhook::start("");
    let (new_ca, new_cert, new_key) = issue(hook.dir.path(), "second");
    assert_eq!(
        hook.curl(&new_ca, &[], "/healthz").0,
        0,
        "the new CA does not trust the first certificate"
    );

    // A half-written pair (a certificate that does not match the key) is
    // not served: the previous certificate stays.
    std::fs::copy(&new_cert, hook.dir.path().join("tls.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while hook.metric("kms_sidecar_webhook_tls_reloads_total{outcome=\"error\"}") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a mismatched pair was not noticed: {}",
            hook.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        hook.get("/healthz").0,
        200,
        "still serving the first certificate"
    );

    // The key arrives: the new certificate is served, without a restart.
    std::fs::copy(&new_key, hook.dir.path().join("tls.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while hook.curl(&new_ca, &[], "/healthz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served: {}",
            hook.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(hook.get("/healthz").0, 0, "the old CA no longer matches");
    hook.ca = new_ca;
    assert_eq!(
        hook.metric("kms_sidecar_webhook_tls_reloads_total{outcome=\"ok\"}"),
        1.0
    );
    let logs = hook.logs();
    assert!(logs.contains("TLS certificate reloaded"), "{logs}");
    let key = std::fs::read_to_string(&new_key).unwrap();
    let body = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    assert!(!logs.contains(&body[..40]), "key material in the log");
}

#[test]
fn bad_config_or_certificate_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "token_expiration: 5h\n").unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    for (args, expect) in [
        (
            vec![
                "--config",
                "bad.yaml",
                "--tls-cert",
                "empty.pem",
                "--tls-key",
                "empty.pem",
            ],
            "token_expiration",
        ),
        (
            vec!["--tls-cert", "empty.pem", "--tls-key", "empty.pem"],
            "no certificate",
        ),
        (
            vec!["--tls-cert", "missing.pem", "--tls-key", "missing.pem"],
            "missing.pem",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
            .arg("webhook")
            .args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

/// The pod of `manifests/examples/sidecar-by-hand.yaml` is exactly what the
/// webhook makes of `examples/app/pod.yaml` (without the label), so the
/// hand-written example cannot drift from the injection; and injected pods
/// are valid Kubernetes 1.29 and 1.33 pods (kubernetes-validate, strict).
/// `WRITE_EXAMPLES=1` rewrites the example from the webhook's answer.
#[test]
fn injected_pods_are_valid_and_the_hand_written_example_matches() {
    let hook = Webhook::start("");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("examples/app/pod.yaml")).unwrap(),
    )
    .unwrap();
    let mut injected = Vec::new();
    let mut pods = vec![app.clone()];
    // Published specs (sources in each file): a probes port taken, a
    // hostNetwork DaemonSet's pod, init containers, an fsGroup, pod-level
    // resources (1.32+).
    pods.extend(
        [
            "multi-container",
            "job-pod",
            "bare",
            "statsd-exporter",
            "node-exporter",
            "init-containers",
            "security-context",
            "pod-level-resources",
        ]
        .map(fixture),
    );
    for pod in pods {
        let response = hook.review(&pod_review(&pod));
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch_of(&response)).unwrap();
        injected.push(patched);
    }
    for (i, pod) in injected.iter().enumerate() {
        let file = hook.dir.path().join(format!("injected-{i}.json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        let versions: &[&str] = if pod["spec"]["resources"].is_object() {
            &["1.33.0"]
        } else {
            &["1.29.0", "1.33.0"]
        };
        for &version in versions {
            let (ok, out, err) = run_tool(
                "python3",
                &[
                    "-m",
                    "kubernetes_validate",
                    "--strict",
                    "--quiet",
                    "-k",
                    version,
                    file.to_str().unwrap(),
                ],
                "install kubernetes-validate (pip install kubernetes-validate)",
            );
            assert!(
                ok,
                "injected pod {i} is not a valid {version} pod: {out}{err}"
            );
        }
    }

    let mut by_hand = injected[0].clone();
    by_hand["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("kms-sidecar.io/inject");
    by_hand["metadata"]["name"] = json!("kms-demo-app-by-hand");
    let example = root.join("manifests/examples/sidecar-by-hand.yaml");
    if std::env::var_os("WRITE_EXAMPLES").is_some() {
        let header = "# The sidecar added by hand, for clusters without the webhook: exactly\n# what the webhook injects into examples/app/pod.yaml (a test keeps the two\n# equal; WRITE_EXAMPLES=1 cargo nextest run -E 'test(hand_written)'\n# rewrites it). The ConfigMap is the sidecar's config; create the app's\n# script with `kubectl create configmap kms-demo-app --from-file=examples/app/app.sh`.\n";
        let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kms-sidecar\ndata:\n  config.yaml: |\n    backends:\n      dev: { type: local, dir: /var/lib/kms-sidecar/keys }\n    keys:\n      signing: { backend: dev, key: signing, algorithm: ecdsa-p256-sha256 }\n      data: { backend: dev, key: data, algorithm: aes-256-gcm }\n    callers:\n      - { uids: [1000], keys: [\"*\"], ops: [\"*\"] }\n";
        let pod = serde_yaml_ng::to_string(&by_hand).unwrap();
        std::fs::write(&example, format!("{header}{config}---\n{pod}")).unwrap();
    }
    let text = std::fs::read_to_string(&example).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let pod = docs
        .iter()
        .find(|d| d["kind"] == "Pod")
        .expect("a Pod in the example");
    assert_eq!(
        pod, &by_hand,
        "manifests/examples/sidecar-by-hand.yaml drifted from the webhook's injection: rerun with WRITE_EXAMPLES=1"
    );
}

/// Pods the API server would reject once injected (impossible resources, a
/// volume named like the sidecar's) are refused as the failure policy says:
/// admitted unchanged with a warning, or denied, naming what to fix. The
/// `inject` label and the opt-out annotation ignore case.
#[test]
fn impossible_pods_follow_the_failure_policy_and_booleans_ignore_case() {
    let ignore = Webhook::start("");
    let fail = Webhook::start("failure_policy: fail\n");
    let annotated = |annotations: Value| {
        let mut pod = fixture("bare");
        pod["metadata"]["annotations"] = annotations;
        pod
    };
    let mut duplicate_volume = fixture("multi-container");
    duplicate_volume["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kms-sidecar-socket", "emptyDir": {}}));
    for (pod, blamed) in [
        (
            annotated(json!({"kms-sidecar.io/cpu-request": "-1"})),
            "kms-sidecar.io/cpu-request",
        ),
        (
            annotated(json!({"kms-sidecar.io/memory-request": "1e999"})),
            "kms-sidecar.io/memory-request",
        ),
        (
            annotated(json!({
                "kms-sidecar.io/memory-request": "256Mi",
                "kms-sidecar.io/memory-limit": "128Mi",
            })),
            "kms-sidecar.io/memory-limit",
        ),
        (duplicate_volume, "kms-sidecar-socket"),
    ] {
        let r = ignore.review(&pod_review(&pod));
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("patch").is_none(), "{r}");
        let warning = r["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains(blamed), "{blamed}: {r}");
        let r = fail.review(&pod_review(&pod));
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(blamed), "{blamed}: {r}");
    }

    // Windows pods: admitted unchanged whatever the policy, with the reason.
    for hook in [&ignore, &fail] {
        for name in ["windows-iis", "windows-run-as-username"] {
            let r = hook.review(&pod_review(&fixture(name)));
            assert_eq!(r["allowed"], true, "{r}");
            assert!(r.get("patch").is_none(), "{r}");
            let warning = r["warnings"][0].as_str().unwrap_or_default();
            assert!(warning.contains("Windows"), "{r}");
        }
    }
    // A pod whose own requests leave no room for the sidecar, and a probes
    // port annotation that clashes: refused as the policy says.
    let mut full = fixture("pod-level-resources");
    full["spec"]["resources"]["requests"]["memory"] = json!("50Mi");
    let mut clash = fixture("statsd-exporter");
    clash["metadata"]["annotations"] = json!({"kms-sidecar.io/probes-port": "9102"});
    for (pod, blamed) in [
        (full, "spec.resources.requests.memory"),
        (clash, "kms-sidecar.io/probes-port"),
    ] {
        let r = ignore.review(&pod_review(&pod));
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("patch").is_none(), "{r}");
        assert!(
            r["warnings"][0]
                .as_str()
                .unwrap_or_default()
                .contains(blamed),
            "{r}"
        );
        let r = fail.review(&pod_review(&pod));
        assert_eq!(r["allowed"], false, "{r}");
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(blamed),
            "{r}"
        );
    }

    let mut shouted = fixture("bare");
    shouted["metadata"]["labels"]["kms-sidecar.io/inject"] = json!("TRUE");
    let r = ignore.review(&pod_review(&shouted));
    assert!(!patch_of(&r).0.is_empty(), "`TRUE` injects: {r}");
    let mut opted_out = fixture("opted-out");
    opted_out["metadata"]["annotations"]["kms-sidecar.io/inject"] = json!("FALSE");
    let r = ignore.review(&pod_review(&opted_out));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "`FALSE` opts out: {r}");
    assert_eq!(
        ignore.metric("kms_sidecar_webhook_reviews_total{outcome=\"refused\"}"),
        6.0
    );
}
