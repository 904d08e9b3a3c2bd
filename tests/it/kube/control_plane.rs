//! The control plane itself: the admin drives it with `kubectl` of the same
//! release, it issues service-account tokens that verify against its own
//! anonymous OIDC discovery, and its admission chain (ServiceAccount,
//! PodSecurity, mutating webhooks) runs on the pods it stores.

use crate::harness::{ControlPlane, SecondWebhook};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Verifies `token` with the key of the JWKS its `kid` names, as RS256 (the
/// algorithm the test's RSA signing key gives), for `aud` and `iss`.
fn verify(token: &str, jwks: &JwkSet, aud: &str, iss: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("the token names no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or("the JWKS has no key of the token's kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[iss]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn tokens_it_issues_verify_against_its_anonymous_oidc_discovery() {
    let cp = ControlPlane::start().await;
    cp.kubectl_ok(&["create", "namespace", "kube-it"]);
    cp.kubectl_ok(&["-n", "kube-it", "create", "serviceaccount", "app"]);
    let token = cp
        .kubectl_ok(&[
            "-n",
            "kube-it",
            "create",
            "token",
            "app",
            "--audience",
            "kms-sidecar-test",
            "--duration",
            "10m",
        ])
        .trim()
        .to_owned();

    // Discovery and keys, with no credentials at all.
    let (status, body) = cp.get_anonymous("/.well-known/openid-configuration");
    assert_eq!(status, 200, "{body}");
    let discovery = json(&body);
    assert_eq!(discovery["issuer"], cp.url.as_str(), "{body}");
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/openid/v1/jwks", cp.url),
        "{body}"
    );
    let (status, body) = cp.get_anonymous("/openid/v1/jwks");
    assert_eq!(status, 200, "{body}");
    let jwks: JwkSet = serde_json::from_str(&body).expect("a JWKS");

    let claims = verify(&token, &jwks, "kms-sidecar-test", &cp.url).expect("the token verifies");
    assert_eq!(
        claims["sub"], "system:serviceaccount:kube-it:app",
        "{claims}"
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], "kube-it", "{claims}");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"], "app",
        "{claims}"
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 600, "{claims}");

    // What must not verify: another audience, another issuer, a changed signature.
    let err = verify(&token, &jwks, "another-audience", &cp.url).unwrap_err();
    assert!(err.contains("Audience"), "{err}");
    assert!(verify(&token, &jwks, "kms-sidecar-test", "https://other.example").is_err());
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let err = verify(&tampered, &jwks, "kms-sidecar-test", &cp.url).unwrap_err();
    assert!(err.contains("Signature"), "{err}");

    // Anonymous requests read discovery and nothing else (RBAC is on).
    let (status, body) = cp.get_anonymous("/api/v1/namespaces/kube-it/serviceaccounts");
    assert_eq!(status, 403, "{body}");
    let (status, body) = cp.get("/api/v1/namespaces/kube-it/serviceaccounts/app");
    assert_eq!(status, 200, "{body}");
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: NS
spec:
  containers:
  - name: app
    image: busybox
    command: [sleep, infinity]
";

#[tokio::test]
async fn pods_pass_its_admission_chain_and_are_stored() {
    let cp = ControlPlane::start().await;
    cp.namespace("apps", &[]);
    cp.apply(&POD.replace("NS", "apps"));
    let names = cp.kubectl_ok(&["-n", "apps", "get", "pods", "-o", "name"]);
    assert_eq!(names.trim(), "pod/web");
    let pod = json(&cp.kubectl_ok(&["-n", "apps", "get", "pod", "web", "-o", "json"]));
    // No scheduler or kubelet: it stays Pending, on no node.
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
    // The ServiceAccount admission plugin ran: the default account and its
    // projected token volume (the kubelet's 3607 s token).
    assert_eq!(pod["spec"]["serviceAccountName"], "default", "{pod}");
    let volume = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .unwrap_or_else(|| panic!("no kube-api-access volume: {pod}"));
    let token = volume["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| s.get("serviceAccountToken"))
        .unwrap_or_else(|| panic!("no serviceAccountToken source: {volume}"));
    assert_eq!(token["expirationSeconds"], 3607, "{volume}");

    // Without its default ServiceAccount, ServiceAccount admission refuses the pod.
    cp.kubectl_ok(&["create", "namespace", "bare"]);
    let out = cp.kubectl_with_input(&["apply", "-f", "-"], Some(&POD.replace("NS", "bare")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a pod with no service account was admitted"
    );
    assert!(err.contains("service account"), "{err}");

    // PodSecurity enforces a namespace's level: restricted refuses this pod.
    cp.namespace(
        "locked",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    );
    let out = cp.kubectl_with_input(&["apply", "-f", "-"], Some(&POD.replace("NS", "locked")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restricted admitted a non-compliant pod"
    );
    assert!(err.contains("violates PodSecurity \"restricted:"), "{err}");
    let names = cp.kubectl_ok(&["-n", "locked", "get", "pods", "-o", "name"]);
    assert_eq!(names.trim(), "");
}

#[tokio::test]
async fn the_second_webhook_adds_its_container_once() {
    let cp = ControlPlane::start().await;
    cp.namespace("apps", &[]);
    let _hook = SecondWebhook::start(&cp, "apps").await;
    let containers = |name: &str| -> Vec<String> {
        let pod = json(&cp.kubectl_ok(&["-n", "apps", "get", "pod", name, "-o", "json"]));
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    cp.apply(&POD.replace("NS", "apps"));
    assert_eq!(containers("web"), ["app", "added-later"]);
    // A pod that has it already is left as it is.
    cp.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: { name: has-it, namespace: apps }\nspec:\n  containers:\n  - { name: added-later, image: busybox }\n  - { name: app, image: busybox }\n",
    );
    assert_eq!(containers("has-it"), ["added-later", "app"]);
}
