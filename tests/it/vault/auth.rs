//! Authentication: token files, Kubernetes and JWT logins, renewal,
//! restarts, TLS, revoked tokens.

use super::*;
use crate::harness::{Bao, Sidecar, b64};
use serde_json::json;

#[tokio::test]
async fn token_file_in_a_namespace_is_re_read_when_it_changes() {
    let bao = Bao::start().await;
    bao.api("POST", "sys/namespaces/team", json!({})).await;
    let ns = Some("team");
    bao.api_in(ns, "POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    bao.api_in(ns, "POST", "transit/keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    bao.api_in(
        ns,
        "PUT",
        "sys/policies/acl/sidecar",
        json!({"policy": documented_policy()}),
    )
    .await;
    let new_token = || async {
        let auth = bao
            .api_in(
                ns,
                "POST",
                "auth/token/create",
                json!({"policies": ["sidecar"], "ttl": "1h"}),
            )
            .await;
        auth["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let first = new_token().await;
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &format!("{first}\n"));
    let cfg = format!(
        "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        file.display(),
        nix::unistd::getuid()
    );
    // The namespace comes from VAULT_NAMESPACE (or `namespace:` in the config).
    let s = Sidecar::start_with_env(&cfg, &[("VAULT_NAMESPACE", "team")]).await;
    s.secret(first.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    // A new token in the file is picked up; the old one can then go.
    let second = new_token().await;
    s.secret(second.clone());
    write(&file, &second);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.logs().matches("logged in to Vault").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new token was not read:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bao.api_in(ns, "POST", "auth/token/revoke", json!({"token": first}))
        .await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
}

/// A TokenReview endpoint like the Kubernetes API server's: it authenticates
/// tokens signed by the test issuer and answers who they belong to.
async fn token_review_server(issuer: Issuer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = std::sync::Arc::new(issuer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let issuer = issuer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let issuer = issuer.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let token = review["spec"]["token"].as_str().unwrap_or("");
                            let status = match issuer.claims(token) {
                                Some(c)
                                    if path == "/apis/authentication.k8s.io/v1/tokenreviews" =>
                                {
                                    let k = &c["kubernetes.io"];
                                    json!({
                                        "authenticated": true,
                                        "user": {
                                            "username": c["sub"],
                                            "uid": k["serviceaccount"]["uid"],
                                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", k["namespace"].as_str().unwrap())],
                                        },
                                        "audiences": c["aud"],
                                    })
                                }
                                _ => {
                                    json!({"authenticated": false, "error": "invalid bearer token"})
                                }
                            };
                            let answer = json!({
                                "apiVersion": "authentication.k8s.io/v1",
                                "kind": "TokenReview",
                                "status": status,
                            });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn kubernetes_auth_through_token_review() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "sa");
    let good = issuer.mint("apps", "app", "vault", 3600);
    let other_namespace = issuer.mint("other", "app", "vault", 3600);
    let forged = Issuer::new(creds.path(), "forger").mint("apps", "app", "vault", 3600);
    let review = token_review_server(issuer).await;
    // The CA is required by the auth method's config; TokenReview is plain HTTP here.
    let (ca, _, _) = crate::harness::issue_cert(creds.path(), "review");
    bao.api("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": review,
            "kubernetes_ca_cert": std::fs::read_to_string(&ca).unwrap(),
            "disable_local_ca_jwt": true,
        }),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/role/app",
        json!({
            "bound_service_account_names": ["app"],
            "bound_service_account_namespaces": ["apps"],
            "audience": "vault",
            "token_policies": ["sidecar"],
            "token_ttl": "1h",
        }),
    )
    .await;

    let start = |token: &str| {
        let file = creds.path().join(format!("token-{}", uuid::Uuid::new_v4()));
        write(&file, token);
        let cfg = config(
            &bao,
            &format!(
                "{{ method: kubernetes, role: app, token_file: {} }}",
                file.display()
            ),
        );
        async move { Sidecar::start(&cfg).await }
    };
    let s = start(&good).await;
    s.secret(good.clone());
    ready(&s).await;
    let signed = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
    assert_eq!(signed["version"], "1");
    drop(s);

    for (token, what) in [
        (&other_namespace, "another namespace"),
        (&forged, "a forged token"),
    ] {
        let s = start(token).await;
        s.secret(token.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = s.get("/readyz").await;
        assert_eq!(r.status, 503, "{what}: {:?}", r.json());
        let v = r.json();
        let reason = v["backends"]["vault"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("Kubernetes login as role `app` failed"),
            "{what}: {reason}"
        );
        s.post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await
            .expect(401, Some("unauthenticated"));
        assert_eq!(s.get("/healthz").await.status, 200);
    }
}

#[tokio::test]
async fn jwt_auth_renews_short_tokens_and_rereads_the_token_file() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "one");
    // 4 s tokens, at most 10 s: renewals, then re-logins near the max TTL.
    setup_jwt(&bao, &issuer, "4s", "10s").await;
    let file = creds.path().join("token");
    let first = issuer.mint("apps", "app", "vault", 3600);
    write(&file, &first);
    let s = Sidecar::start(&config(
        &bao,
        &format!(
            "{{ method: jwt, role: app, token_file: {} }}",
            file.display()
        ),
    ))
    .await;
    s.secret(first.clone());
    ready(&s).await;

    // The cluster's signing key rotates: the kubelet writes a token from the
    // new key and Vault trusts only that key from now on.
    let started = Instant::now();
    let mut rotated = false;
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(22) {
        if !rotated && started.elapsed() > Duration::from_secs(3) {
            let issuer2 = Issuer::new(creds.path(), "two");
            let second = issuer2.mint("apps", "app", "vault", 3600);
            s.secret(second.clone());
            write(&file, &second);
            configure_jwt(&bao, &issuer2).await;
            rotated = true;
        }
        let r = s
            .post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await;
        assert_eq!(
            r.status,
            200,
            "call {calls} at {:?}: {:?}",
            started.elapsed(),
            r.json()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = s.logs();
    let logins = logs.matches("logged in to Vault").count();
    let renewals = logs.matches("renewed the Vault token").count();
    assert!(
        logins >= 3,
        "{logins} logins in 22 s of 10 s max-TTL tokens"
    );
    assert!(renewals >= 2, "{renewals} renewals of 4 s tokens");
    let metrics = String::from_utf8_lossy(&s.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("kms_sidecar_credential_expiry_timestamp_seconds{backend=\"vault\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn recovers_when_vault_restarts_and_reports_bad_jwts() {
    let mut bao = Bao::start().await;
    setup_transit(&bao).await;
    let creds = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(creds.path(), "sa");
    setup_jwt(&bao, &issuer, "1h", "2h").await;
    let file = creds.path().join("token");
    let token = issuer.mint("apps", "app", "vault", 3600);
    write(&file, &token);
    let cfg = config(
        &bao,
        &format!(
            "{{ method: jwt, role: app, token_file: {} }}",
            file.display()
        ),
    );
    let s = Sidecar::start(&cfg).await;
    s.secret(token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    // A dev server forgets everything: set it up again; the sidecar finds
    // its token unknown and logs in again, without a restart.
    bao.restart().await;
    setup_transit(&bao).await;
    setup_jwt(&bao, &issuer, "1h", "2h").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s
            .post("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {:?}\n{}",
            r.json(),
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(s);

    // An expired token stops the start, naming the file (the sidecar's own
    // check of projected tokens).
    let expired = issuer.mint("apps", "app", "vault", -600);
    write(&file, &expired);
    let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &cfg, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("expired at"),
        "{err}"
    );
    assert!(!err.contains(&expired), "the token is not printed");
    // With the role's audience in the config, a token for another one
    // stops the start too.
    let other = issuer.mint("apps", "app", "not-vault", 3600);
    write(&file, &other);
    let with_audience = cfg.replace("role: app,", "role: app, audience: vault,");
    let (code, _, err) =
        crate::harness::run_with_config(&["serve", "--config"], &with_audience, &[]);
    assert_eq!(code, Some(2), "{with_audience}\n{err}");
    assert!(
        err.contains("has audience `not-vault` where `vault` is expected"),
        "{err}"
    );

    // A wrong audience (the config names none to check): not ready with
    // Vault's reason, no crash.
    for (bad, what) in [(
        issuer.mint("apps", "app", "not-vault", 3600),
        "wrong audience",
    )] {
        write(&file, &bad);
        let s = Sidecar::start(&cfg).await;
        s.secret(bad.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = s.get("/readyz").await;
        assert_eq!(r.status, 503, "{what}: {:?}", r.json());
        let v = r.json();
        let reason = v["backends"]["vault"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("JWT login as role `app` failed"),
            "{what}: {reason}"
        );
        assert_eq!(s.get("/healthz").await.status, 200, "{what}");
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca_from_the_vault_environment() {
    let bao = Bao::start_tls().await;
    bao.transit_with_key("ec", "ecdsa-p256").await;
    let file = bao.root_token_file();
    // No address or CA in the config: VAULT_ADDR and VAULT_CACERT say.
    let cfg = format!(
        "backends:\n  vault:\n    type: vault\n    auth: {{ method: token, token_file: {} }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        file.display(),
        nix::unistd::getuid()
    );
    let ca = bao.ca.clone().unwrap().display().to_string();
    let env = [
        ("VAULT_ADDR", bao.url.as_str()),
        ("VAULT_CACERT", ca.as_str()),
    ];
    let s = Sidecar::start_with_env(&cfg, &env).await;
    s.secret(bao.root_token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
    drop(s);

    // Without the CA the server's certificate is not trusted: not ready, and why.
    let s = Sidecar::start_with_env(&cfg, &env[..1]).await;
    s.secret(bao.root_token.clone());
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let reason = r.json()["backends"]["vault"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("certificate"), "{reason}");
}

/// Vault answers 403 both to a token its policy does not cover and to a
/// token it no longer accepts. A revoked token makes calls `unauthenticated`
/// and the backend not ready, and the sidecar logs in again: at once, then
/// with backoff while the login fails; a policy denial stays `forbidden`.
#[tokio::test]
async fn a_revoked_vault_token_is_unauthenticated_and_approle_logs_in_again() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    // A genuine denial: this policy refuses signing with `ed`.
    let policy = format!(
        "{}\npath \"transit/sign/ed\" {{\n  capabilities = [\"deny\"]\n}}\n",
        documented_policy()
    );
    bao.api("PUT", "sys/policies/acl/sidecar", json!({"policy": policy}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    setup_approle(&bao, creds.path(), "1h").await;
    let secret_id_file = creds.path().join("secret_id");
    let d = creds.path().display();
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: approle, role_id_file: {d}/role_id, secret_id_file: {d}/secret_id }}"),
    ))
    .await;
    let first_secret_id = std::fs::read_to_string(&secret_id_file).unwrap();
    s.secret(first_secret_id.clone());
    s.secret(std::fs::read_to_string(creds.path().join("role_id")).unwrap());
    s.secret(bao.root_token.clone());
    ready(&s).await;
    let msg = json!({"message": b64(b"m")});
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;

    // The policy's refusal with a valid token is the caller's 403, and the
    // token is kept.
    let v = s
        .post("/v1/keys/ed/sign", msg.clone())
        .await
        .expect(403, Some("forbidden"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    assert_eq!(s.logs().matches("logged in to Vault").count(), 1);

    // The operator revokes every token AppRole issued and destroys the
    // secret id, so that logging in again fails too.
    bao.api(
        "POST",
        "auth/approle/role/sidecar/secret-id/destroy",
        json!({"secret_id": first_secret_id.trim()}),
    )
    .await;
    bao.api(
        "PUT",
        "sys/leases/revoke-prefix/auth/approle/login",
        Value::Null,
    )
    .await;
    sign_is_unauthenticated(&s).await;
    // The login was tried at once and failed: not ready, saying why.
    let reason = not_ready_because(&s, &["revoked", "AppRole login failed"]).await;
    assert!(reason.contains("Vault token"), "{reason}");
    sign_is_unauthenticated(&s).await;
    assert_eq!(s.get("/healthz").await.status, 200);

    // A new secret id in the file: a later login (with backoff) succeeds.
    let fresh = bao
        .api("POST", "auth/approle/role/sidecar/secret-id", json!({}))
        .await;
    let fresh = fresh["secret_id"].as_str().unwrap().to_owned();
    s.secret(fresh.clone());
    write(&secret_id_file, &fresh);
    s.ready_within(Duration::from_secs(60)).await;
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    assert_eq!(s.logs().matches("logged in to Vault").count(), 2);

    // Revoked again while the secret id is good: the refused call is 401,
    // the sidecar logs in again at once and the next calls succeed.
    bao.api(
        "PUT",
        "sys/leases/revoke-prefix/auth/approle/login",
        Value::Null,
    )
    .await;
    sign_is_unauthenticated(&s).await;
    logged(&s, "logged in to Vault", 3).await;
    s.post_ok("/v1/keys/ec/sign", msg.clone()).await;
    ready(&s).await;
}

/// A `token` method's token revoked by an operator: calls are
/// `unauthenticated` and the backend not ready until the file holds a token
/// Vault accepts.
#[tokio::test]
async fn a_revoked_vault_token_file_is_unauthenticated_until_the_file_is_replaced() {
    let bao = Bao::start().await;
    setup_transit(&bao).await;
    let new_token = || async {
        let auth = bao
            .api(
                "POST",
                "auth/token/create",
                json!({"policies": ["sidecar"], "ttl": "1h"}),
            )
            .await;
        auth["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let first = new_token().await;
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("token");
    write(&file, &first);
    let s = Sidecar::start(&config(
        &bao,
        &format!("{{ method: token, token_file: {} }}", file.display()),
    ))
    .await;
    s.secret(first.clone());
    s.secret(bao.root_token.clone());
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;

    bao.api("POST", "auth/token/revoke", json!({"token": first}))
        .await;
    sign_is_unauthenticated(&s).await;
    let path = file.display().to_string();
    not_ready_because(&s, &["revoked", "Vault token", &path]).await;
    // It stays so while the file holds the revoked token: the next login
    // (with backoff) reads it again and fails again.
    logged(&s, "credential refresh failed", 2).await;
    not_ready_because(&s, &["revoked", &path]).await;
    sign_is_unauthenticated(&s).await;

    let second = new_token().await;
    s.secret(second.clone());
    write(&file, &second);
    ready(&s).await;
    s.post_ok("/v1/keys/ec/sign", json!({"message": b64(b"m")}))
        .await;
}
