//! Real tokens end to end (issue 31, §4.6). What is real: the API server
//! admits the pods and calls our webhook, which injects the sidecar; the
//! sidecar's token is a real service-account token from the TokenRequest
//! API (the spec's audience `vault` and `expirationSeconds`, bound to the
//! pod); OpenBao's `kubernetes` auth checks it with a TokenReview against
//! this API server (with a reviewer token bound to `system:auth-delegator`),
//! and OpenBao's `jwt` auth against the API server's OIDC discovery and
//! JWKS; the sidecar is the binary cargo built, run by the kubelet stand-in
//! as the admitted spec says; the app's calls are curl run inside the app
//! container (its mount namespace, uid and env, as `kubectl exec` would)
//! through the socket mount its spec has.
//!
//! What is compressed: the API server issues no token for less than 10
//! minutes (`MinTokenAgeSec`, pkg/apis/authentication/validation and pod
//! validation; `--service-account-max-token-expiration` may not go below
//! 1 h), and the kubelet refreshes at 80 % of a token's life, so two real
//! refreshes would take 16 minutes. The runner is told
//! `--compressed-token-life=20s`: it asks the API server for a new token
//! (600 s, real) 16 s after the last one was issued instead of 480 s. Only
//! the schedule is compressed; `kube::runner` shows the kubelet's schedule
//! the runner keeps by default.

use crate::harness::{Bao, ControlPlane, RunOptions, RunningPod, b64, eventually, free_port};
use crate::webhook::Webhook;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The sidecar's config in namespace NS: the Vault backend logging in with
/// `AUTH` auth, role `app`, the projected token the webhook mounts, whose
/// audience the sidecar checks.
const SIDECAR_CONFIG: &str = r#"backends:
  vault:
    type: vault
    address: BAO
    auth: { method: AUTH, role: app, token_file: /var/run/secrets/kms-sidecar/vault, audience: vault }
keys:
  sig: { backend: vault, key: sig }
  pii: { backend: vault, key: pii }
callers:
  - { uids: [1000], keys: ["*"], ops: ["*"] }
"#;

/// An app pod as a user writes it: labelled for injection, uid 1000,
/// restricted-compliant; `EXTRA` is more of the pod's securityContext.
const APP_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: NS
  labels: { kms-sidecar.io/inject: "true" }
  annotations: { kms-sidecar.io/probes-port: "PORT" }
spec:
  serviceAccountName: app
  securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: RuntimeDefault }EXTRA }
  containers:
  - name: app
    image: curlimages/curl:8.11.1
    command: [sleep, infinity]
    securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: [ALL] } }
"#;

/// OpenBao's token reviewer: a service account bound to `system:auth-delegator`.
const REVIEWER: &str = "apiVersion: v1
kind: ServiceAccount
metadata: { name: bao-reviewer, namespace: kube-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: bao-reviewer }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator }
subjects: [{ kind: ServiceAccount, name: bao-reviewer, namespace: kube-system }]
";

/// OpenBao with transit keys `sig` and `pii`, a file audit log,
/// and `kubernetes` auth (TokenReview against `cp`) and `jwt` auth (`cp`'s
/// OIDC discovery), each with a role `app` for service account `app` of
/// namespace `kubernetes` / `jwt`, audience `vault`, whose Vault tokens
/// live 5 s (so the sidecar logs in again, re-reading its token file, many
/// times per token).
async fn openbao(cp: &ControlPlane) -> Bao {
    let bao = Bao::start_audited().await;
    bao.transit_with_key("sig", "ecdsa-p256").await;
    bao.api("POST", "transit/keys/pii", json!({"type": "aes256-gcm96"}))
        .await;
    let policy = r#"path "transit/*" { capabilities = ["create", "read", "update", "list"] }"#;
    bao.api(
        "PUT",
        "sys/policies/acl/sidecar",
        json!({ "policy": policy }),
    )
    .await;
    let ca = std::fs::read_to_string(&cp.ca).unwrap();
    cp.apply(REVIEWER);
    let reviewer = cp.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "bao-reviewer",
        "--duration",
        "1h",
    ]);
    let role = |ns: &str| {
        json!({
            "bound_service_account_names": ["app"],
            "bound_service_account_namespaces": [ns],
            "audience": "vault",
            "token_policies": ["sidecar"],
            "token_ttl": "5s",
            "token_max_ttl": "5s",
        })
    };
    bao.api("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": cp.url,
            "kubernetes_ca_cert": ca,
            "token_reviewer_jwt": reviewer.trim(),
            "disable_local_ca_jwt": true,
        }),
    )
    .await;
    bao.api("POST", "auth/kubernetes/role/app", role("kubernetes"))
        .await;
    bao.api("POST", "sys/auth/jwt", json!({"type": "jwt"}))
        .await;
    bao.api(
        "POST",
        "auth/jwt/config",
        json!({ "oidc_discovery_url": cp.url, "oidc_discovery_ca_pem": ca, "bound_issuer": cp.url }),
    )
    .await;
    bao.api(
        "POST",
        "auth/jwt/role/app",
        json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:jwt:app",
            "token_policies": ["sidecar"],
            "token_ttl": "5s",
            "token_max_ttl": "5s",
        }),
    )
    .await;
    bao
}

/// Namespace `ns` (its `default` and `app` service accounts) with the
/// sidecar's config for `auth`.
fn namespace(cp: &ControlPlane, ns: &str, bao: &Bao) {
    cp.namespace(ns, &[]);
    let config = SIDECAR_CONFIG.replace("BAO", &bao.url).replace("AUTH", ns);
    let cm = json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": ns}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kms-sidecar", "namespace": ns},
             "data": {"config.yaml": config}},
        ]
    });
    cp.apply(&cm.to_string());
}

/// The app's calls through the socket, as uid 1000 in its container: a
/// signature and an envelope (encrypted, then decrypted); panics on any
/// failed call.
fn app_round(pod: &RunningPod, round: usize) {
    let message = b64(format!("round {round}"));
    let signed = curl(pod, "/v1/keys/sig/sign", &json!({ "message": message }));
    assert!(signed["signature"].is_string(), "{signed}");
    let sealed = curl(
        pod,
        "/v1/keys/pii/envelope/encrypt",
        &json!({ "plaintext": message }),
    );
    let opened = curl(
        pod,
        "/v1/keys/pii/envelope/decrypt",
        &json!({ "envelope": sealed["envelope"] }),
    );
    assert_eq!(opened["plaintext"], message.as_str());
}

/// curl in the app container, to the socket its `KMS_SIDECAR_SOCKET`
/// names, with `args` before the URL of `path`; its output, which must be
/// a success.
fn app_curl(pod: &RunningPod, path: &str, args: &[&str]) -> String {
    let script = r#"path=$1; shift; exec curl -sS --fail-with-body --max-time 10 --unix-socket "$KMS_SIDECAR_SOCKET" "$@" "http://localhost$path""#;
    let mut command = vec!["sh", "-c", script, "sh", path];
    command.extend_from_slice(args);
    let out = pod.exec("app", &command);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {path} failed: {stdout} {}\n{}",
        pod.namespace,
        String::from_utf8_lossy(&out.stderr),
        pod.logs()
    );
    stdout
}

/// A JSON POST through [`app_curl`].
fn curl(pod: &RunningPod, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let out = app_curl(
        pod,
        path,
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {out}"))
}

/// The `jti`s of the runner's tokens for the sidecar's `vault` file.
fn vault_tokens_issued(pod: &RunningPod) -> BTreeSet<String> {
    pod.events("token issued")
        .iter()
        .filter(|e| e["path"] == "vault")
        .filter_map(|e| e["jti"].as_str().map(str::to_owned))
        .collect()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Whether OpenBao's audit log has a successful login at `auth/{method}/login`
/// with the token whose audit hash is `hash`.
fn logged_in_with(audit: &str, method: &str, hash: &str) -> bool {
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| {
            e["type"] == "response"
                && e["request"]["path"] == format!("auth/{method}/login")
                && e["request"]["data"]["jwt"] == hash
                && e["error"].as_str().unwrap_or("").is_empty()
                && e["response"]["auth"]["client_token"].is_string()
        })
}

/// The two pods, admitted by the API server through our webhook and run
/// by the runner with its refresh schedule compressed to `life`: `app` in
/// namespace `kubernetes`, and `app` in `jwt`, with an `fsGroup` (its token
/// file is then the group's, 0640). Each sidecar has its own probes port.
async fn start_pods(cp: &ControlPlane, life: Duration) -> ([RunningPod; 2], Webhook) {
    let hook =
        Webhook::start_with_kubeconfig("tokens: [vault]\ntoken_expiration: 10m\n", &cp.kubeconfig);
    cp.register_webhook("kms-sidecar", &hook.mutate_url(), &hook.ca, "kubernetes")
        .await;
    for (ns, extra) in [("kubernetes", ""), ("jwt", ", fsGroup: 2000")] {
        cp.apply(
            &APP_POD
                .replace("NS", ns)
                .replace("PORT", &free_port().to_string())
                .replace("EXTRA", extra),
        );
    }
    let compressed = RunOptions {
        compressed_token_life: Some(life),
        ..RunOptions::default()
    };
    // Started: the sidecar's startup probe (/healthz) passed, so its socket
    // serves; the app's first call may be the one that waits for the login.
    let pods = [
        RunningPod::start(cp, "kubernetes", "app", compressed).await,
        RunningPod::start(cp, "jwt", "app", compressed).await,
    ];
    (pods, hook)
}

/// The app calls and calls (every call must succeed) until the runner has
/// issued each sidecar's `vault` token three times (two refreshes), then
/// once more; returns the tokens seen in each pod's file.
async fn call_through_two_refreshes(pods: &[RunningPod; 2]) -> [BTreeSet<String>; 2] {
    let token = |pod: &RunningPod| {
        std::fs::read_to_string(pod.volume("kms-sidecar-tokens").join("vault")).unwrap()
    };
    let mut seen: [BTreeSet<String>; 2] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut round = 0;
    loop {
        let done = pods.iter().all(|p| vault_tokens_issued(p).len() >= 3);
        for (pod, seen) in pods.iter().zip(&mut seen) {
            app_round(pod, round);
            seen.insert(token(pod));
        }
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not refreshed twice in 100 s:\n{}\n{}",
            pods[0].logs(),
            pods[1].logs()
        );
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each token `pod`'s sidecar had is the API server's (the spec's audience
/// and life, bound to the pod) and OpenBao took it: a successful login at
/// `auth/{namespace}/login` with it in OpenBao's audit log.
async fn assert_real_and_logged_in_with(
    cp: &ControlPlane,
    bao: &Bao,
    pod: &RunningPod,
    seen: &BTreeSet<String>,
) {
    let method = pod.namespace.as_str();
    assert!(seen.len() >= 3, "{method}: {} tokens", seen.len());
    for token in seen {
        let c = claims(token);
        assert_eq!(c["aud"], json!(["vault"]), "{c}");
        assert_eq!(c["iss"], cp.url.as_str(), "{c}");
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            600,
            "{c}"
        );
        assert_eq!(
            c["sub"],
            format!("system:serviceaccount:{method}:app"),
            "{c}"
        );
        assert_eq!(c["kubernetes.io"]["pod"]["name"], "app", "{c}");
        let hash = bao
            .api("POST", "sys/audit-hash/file", json!({ "input": token }))
            .await["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        let audit_log = bao.audit_log();
        eventually(
            Duration::from_secs(20),
            &format!("a {method} login with each token"),
            || {
                let audit = std::fs::read_to_string(&audit_log).unwrap_or_default();
                let done = logged_in_with(&audit, method, &hash);
                async move { done }
            },
        )
        .await;
    }
}

/// The sidecar's identity-token checks read the real token: the expiry it
/// exports is the real one, its credential refreshes never failed, and
/// started with another audience expected, it refuses the token (exit 2).
fn assert_identity_checks(pod: &RunningPod) {
    let metrics = app_curl(pod, "/metrics", &[]);
    let left: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("kms_sidecar_identity_token_expiry_seconds{backend=\"vault\"} ")
        })
        .unwrap_or_else(|| panic!("no identity token expiry in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(left > 500.0 && left <= 600.0, "{left}");
    // Many logins (5 s Vault tokens), none failed.
    assert!(
        metrics.contains("kms_sidecar_credential_refresh_total{backend=\"vault\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"error\""), "{metrics}");
    let out = pod.exec(
        "kms-sidecar",
        &[
            "env",
            "KMS_SIDECAR_BACKENDS__VAULT__AUTH__AUDIENCE=elsewhere",
            "KMS_SIDECAR_LISTEN__SOCKET=/var/lib/kms-sidecar/check.sock",
            "KMS_SIDECAR_LISTEN__PROBES=null",
            "timeout",
            "20",
            "/usr/local/bin/kms-sidecar",
            "serve",
            "--config",
            "/etc/kms-sidecar/config.yaml",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has audience `vault` where `elsewhere` is expected"),
        "{err}"
    );
}

#[tokio::test]
async fn real_tokens_through_kubernetes_and_jwt_auth_are_refreshed_with_no_failed_call() {
    let cp = ControlPlane::start().await;
    let bao = openbao(&cp).await;
    for ns in ["kubernetes", "jwt"] {
        namespace(&cp, ns, &bao);
    }
    let (pods, _hook) = start_pods(&cp, Duration::from_secs(20)).await;
    let seen = call_through_two_refreshes(&pods).await;
    for (pod, seen) in pods.iter().zip(&seen) {
        assert_real_and_logged_in_with(&cp, &bao, pod, seen).await;
        assert_identity_checks(pod);
    }
    // The group path of the kubelet's rules, for real: the jwt pod's fsGroup.
    let meta = std::fs::metadata(pods[1].volume("kms-sidecar-tokens").join("vault")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, 2000, 0o640)
    );
}
