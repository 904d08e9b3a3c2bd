//! The `aws` backend against a real moto server: what only AWS has (key
//! names, details, limits), credentials (static, IRSA-style web identity,
//! EKS Pod Identity, role chains, profiles), failover and throttling. Every
//! operation runs in the conformance suite (`conformance::aws`).
//!
//! Known moto gaps the tests work around: it signs SHA-256(digest) for
//! MessageType=DIGEST (so digest signatures are checked with KMS Verify only,
//! RAW ones also with openssl), uses the maximum PSS salt length, and accepts
//! any web-identity token.

use crate::harness::{Moto, Sidecar, aws_access_key_ids, b64, unb64};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use serde_json::json;
use std::time::Duration;

struct Keys {
    ec: String,
    ec_arn: String,
}

/// A new KMS key of `spec` for `usage` on moto: its key id.
pub(crate) async fn create_key(
    kms: &aws_sdk_kms::Client,
    spec: KeySpec,
    usage: KeyUsageType,
) -> String {
    let out = kms
        .create_key()
        .key_spec(spec)
        .key_usage(usage)
        .send()
        .await
        .expect("CreateKey on moto");
    out.key_metadata().unwrap().key_id().to_owned()
}

async fn create_keys(moto: &Moto) -> Keys {
    let kms = moto.kms();
    let create = |spec, usage| create_key(&kms, spec, usage);
    let aes = create(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt).await;
    kms.create_alias()
        .alias_name("alias/pii")
        .target_key_id(&aes)
        .send()
        .await
        .expect("CreateAlias");
    let ec = create(KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let ec_arn = kms
        .describe_key()
        .key_id(&ec)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    Keys { ec, ec_arn }
}

fn config(moto: &Moto, keys: &Keys) -> String {
    format!(
        r#"backends:
  kms: {{ type: aws, region: us-east-1, endpoint: "{url}" }}
keys:
  sig:  {{ backend: kms, key: "{ec}", ops: ["*"] }}
  byarn: {{ backend: kms, key: "{ec_arn}" }}
  pii:  {{ backend: kms, key: "alias/pii", ops: ["*"] }}
callers:
  - {{ uids: [{uid}], keys: ["*"], ops: ["*"] }}
"#,
        url = moto.url,
        ec = keys.ec,
        ec_arn = keys.ec_arn,
        uid = nix::unistd::geteuid().as_raw()
    )
}

/// AWS's documented example key pair (moto accepts any): the id has the
/// shape the harness's log scan looks for, and the harness registers the
/// secret key as a secret.
pub(crate) const STATIC: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
];

/// What only AWS has, beyond the conformance suite's cases
/// (`conformance::aws::*` runs every operation): a key named by id, alias or
/// ARN is the same key; metadata carries the region and ARN; a direct
/// encrypt past KMS's 4 KiB says to use an envelope; backend calls are
/// counted under the backend's name.
#[tokio::test]
async fn keys_by_id_alias_and_arn_with_aws_details_and_limits() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let s = Sidecar::start_with_env(&config(&moto, &keys), &STATIC).await;
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    let m = s.get("/v1/keys/sig").await.ok();
    assert_eq!(m["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(m["backend_type"], "aws");
    assert_eq!(m["details"]["region"], "us-east-1");
    assert!(
        m["details"]["arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-east-1:")
    );
    assert_eq!(s.get("/v1/keys/pii").await.ok()["algorithm"], "aes-256-gcm");
    let by_arn = s
        .post_ok("/v1/keys/byarn/sign", json!({"message": b64("by ARN")}))
        .await;
    let v = s
        .post_ok(
            "/v1/keys/sig/verify",
            json!({"message": b64("by ARN"), "signature": by_arn["signature"]}),
        )
        .await;
    assert_eq!(
        v["valid"], true,
        "keys by id, alias and ARN name the same key"
    );
    let ctx = json!({"tenant": "acme"});
    let enc = s
        .post_ok(
            "/v1/keys/pii/encrypt",
            json!({"plaintext": b64("card 4242 4242"), "context": ctx}),
        )
        .await;
    let dec = s
        .post_ok(
            "/v1/keys/pii/decrypt",
            json!({"ciphertext": enc["ciphertext"], "context": ctx}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), b"card 4242 4242", "by alias");
    let r = s
        .post(
            "/v1/keys/pii/encrypt",
            json!({"plaintext": b64(vec![0u8; 4097])}),
        )
        .await;
    assert!(
        r.expect(413, Some("payload_too_large"))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("envelope")
    );
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"kms_sidecar_backend_calls_total{backend="kms",op="sign",outcome="ok"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn irsa_web_identity_credentials_work() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let first = crate::harness::projected_token("sts.amazonaws.com", 3600);
    std::fs::write(&token, &first).unwrap();
    let token_path = token.display().to_string();
    let env = [
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/kms-sidecar"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
        ("AWS_ROLE_SESSION_NAME", "kms-sidecar-test"),
        ("AWS_ENDPOINT_URL_STS", moto.url.as_str()),
    ];
    let s = Sidecar::start_with_env(&config(&moto, &keys), &env).await;
    s.secret(first);
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    let signed = s
        .post_ok("/v1/keys/sig/sign", json!({"message": b64("via IRSA")}))
        .await;
    let v = s
        .post_ok(
            "/v1/keys/sig/verify",
            json!({"message": b64("via IRSA"), "signature": signed["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true);
}

#[tokio::test]
async fn an_unreachable_kms_is_a_retryable_backend_unavailable() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let s = Sidecar::start_with_env(&config(&moto, &keys), &STATIC).await;
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("while up")}))
        .await;
    drop(moto);
    let started = std::time::Instant::now();
    let r = s
        .post(
            "/v1/keys/pii/encrypt",
            json!({"plaintext": b64("while down")}),
        )
        .await;
    let v = r.expect(503, Some("backend_unavailable"));
    assert_eq!(v["error"]["retryable"], true);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Signing keys whose metadata is cached fail the same way, not as a bug.
    let r = s
        .post("/v1/keys/sig/sign", json!({"message": b64("while down")}))
        .await;
    r.expect(503, Some("backend_unavailable"));
}

#[tokio::test]
async fn credentials_are_refreshed_in_the_background_and_gate_readiness() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let s = Sidecar::start_with_env(&config(&moto, &keys), &STATIC).await;
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"kms_sidecar_credential_refresh_total{backend="kms",outcome="ok"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"kms_sidecar_credential_expiry_timestamp_seconds{backend="kms"} 0"#),
        "static keys never expire\n{m}"
    );
    drop(s);

    // No credentials anywhere: not ready, with the reason, and calls say so.
    let s = Sidecar::start_with_env(&config(&moto, &keys), &[]).await;
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["backends"]["kms"]["status"], "error");
    assert!(
        v["backends"]["kms"]["reason"]
            .as_str()
            .unwrap()
            .contains("no valid AWS credentials"),
        "{v}"
    );
    let r = s
        .post("/v1/keys/sig/sign", json!({"message": b64("no creds")}))
        .await;
    assert!(
        r.status == 401 || r.status == 503,
        "{}: {:?}",
        r.status,
        r.json()
    );
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"kms_sidecar_credential_refresh_total{backend="kms",outcome="error"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn assume_role_is_chained_on_top_of_the_default_credentials() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let config = config(&moto, &keys).replace(
        &format!("endpoint: \"{}\" }}", moto.url),
        &format!(
            "endpoint: \"{url}\", sts_endpoint: \"{url}\", assume_role: {{ role_arn: \"arn:aws:iam::123456789012:role/payments\", session_name: sidecar, external_id: ext-1 }} }}",
            url = moto.url
        ),
    );
    assert!(config.contains("assume_role"), "{config}");
    let s = Sidecar::start_with_env(&config, &STATIC).await;
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    let signed = s
        .post_ok(
            "/v1/keys/sig/sign",
            json!({"message": b64("as the assumed role")}),
        )
        .await;
    let v = s
        .post_ok(
            "/v1/keys/sig/verify",
            json!({"message": b64("as the assumed role"), "signature": signed["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true);
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    let expiry = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"kms_sidecar_credential_expiry_timestamp_seconds{backend="kms"} "#)
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "assumed-role credentials carry an expiry in the future: {expiry}"
    );
}

#[tokio::test]
async fn eks_pod_identity_credentials_come_from_the_agent_with_the_token_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    // A stand-in for the EKS Pod Identity agent on loopback: it records the
    // Authorization header and hands out credentials.
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}/v1/credentials", agent.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_by_agent = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = agent.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            let n = c.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let auth = req
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or_else(|| l.strip_prefix("Authorization: "))
                })
                .unwrap_or("")
                .to_owned();
            seen_by_agent.lock().unwrap().push(auth);
            let body = r#"{"AccessKeyId":"AKIAPODIDENTITY","SecretAccessKey":"pod-identity-secret","Token":"pod-identity-session","Expiration":"2099-01-01T00:00:00Z"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token, "pod-identity-projected-token-1").unwrap();
    let token_path = token.display().to_string();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent_url.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_path.as_str(),
        ),
    ];
    let s = Sidecar::start_with_env(&config(&moto, &keys), &env).await;
    s.secret("pod-identity-projected-token-1");
    s.secret("pod-identity-secret");
    s.secret("pod-identity-session");
    // Shorter than a real key id, so the pattern scan would miss it.
    s.secret("AKIAPODIDENTITY");
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    s.post_ok(
        "/v1/keys/sig/sign",
        json!({"message": b64("via pod identity")}),
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == "pod-identity-projected-token-1"),
        "{seen:?}"
    );
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"kms_sidecar_credential_expiry_timestamp_seconds{backend="kms"} 4070908800"#),
        "{m}"
    );
}

#[tokio::test]
async fn calls_fail_over_to_the_replica_region_when_the_primary_is_down() {
    // Two moto servers, one per region. moto cannot replicate a multi-region
    // key across servers, so each region gets its own key under the same
    // alias: enough to see where calls go.
    let primary = Moto::start().await;
    let replica = Moto::start().await;
    for (moto, region) in [(&primary, "us-east-1"), (&replica, "eu-central-1")] {
        let kms = moto.kms_in(region);
        let key = kms
            .create_key()
            .key_spec(KeySpec::EccNistP256)
            .key_usage(KeyUsageType::SignVerify)
            .multi_region(true)
            .send()
            .await
            .unwrap();
        let id = key.key_metadata().unwrap().key_id().to_owned();
        kms.create_alias()
            .alias_name("alias/payments")
            .target_key_id(id)
            .send()
            .await
            .unwrap();
    }
    let config = format!(
        r#"backends:
  kms: {{ type: aws, region: us-east-1, endpoint: "{p}", replica_regions: [{{ region: eu-central-1, endpoint: "{r}" }}] }}
keys:
  pay: {{ backend: kms, key: alias/payments }}
callers:
  - {{ uids: [{uid}], keys: ["*"], ops: ["*"] }}
# The metadata read after the failover must be fresh, not cached.
cache: {{ metadata: {{ ttl: 0s }} }}
"#,
        p = primary.url,
        r = replica.url,
        uid = nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start_with_env(&config, &STATIC).await;
    assert_eq!(
        s.get("/v1/keys/pay").await.ok()["details"]["region"],
        "us-east-1"
    );
    s.post_ok("/v1/keys/pay/sign", json!({"message": b64("before")}))
        .await;
    drop(primary);
    let signed = s
        .post_ok(
            "/v1/keys/pay/sign",
            json!({"message": b64("after the primary went away")}),
        )
        .await;
    let v = s.post_ok("/v1/keys/pay/verify", json!({"message": b64("after the primary went away"), "signature": signed["signature"]})).await;
    assert_eq!(v["valid"], true);
    assert_eq!(
        s.get("/v1/keys/pay").await.ok()["details"]["region"],
        "eu-central-1",
        "metadata says which region served"
    );
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"kms_sidecar_backend_failovers_total{backend="kms",from="us-east-1",to="eu-central-1"}"#),
        "{m}"
    );
    drop(replica);
    s.post("/v1/keys/pay/sign", json!({"message": b64("nobody left")}))
        .await
        .expect(503, Some("backend_unavailable"));
}

#[tokio::test]
async fn the_token_file_is_reread_at_every_refresh_and_the_last_good_credentials_are_kept() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let (one, two) = (
        crate::harness::projected_token("sts.amazonaws.com", 3600),
        crate::harness::projected_token("sts.amazonaws.com", 7200),
    );
    std::fs::write(&token, &one).unwrap();
    let token_path = token.display().to_string();
    // IRSA with the STS endpoint from the config (a private VPC endpoint, here moto).
    let env = [
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/kms-sidecar"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
    ];
    let config = config(&moto, &keys).replace(
        &format!("endpoint: \"{}\" }}", moto.url),
        &format!(
            "endpoint: \"{url}\", sts_endpoint: \"{url}\", credential_refresh: {{ min: 200ms, max: 300ms }} }}",
            url = moto.url
        ),
    );
    let s = Sidecar::start_with_env(&config, &env).await;
    s.secret(one);
    s.secret(two.clone());
    let refreshes = |outcome: &'static str| {
        let s = &s;
        async move {
            let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix(&format!(r#"kms_sidecar_credential_refresh_total{{backend="kms",outcome="{outcome}"}} "#)))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        }
    };
    // The kubelet rotates the token file; a missing file fails the refresh,
    // which keeps the last good credentials serving.
    std::fs::remove_file(&token).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        refreshes("error").await >= 1,
        "a refresh read the (missing) file again"
    );
    s.post_ok(
        "/v1/keys/sig/sign",
        json!({"message": b64("still serving")}),
    )
    .await;
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    std::fs::write(&token, &two).unwrap();
    let ok_before = refreshes("ok").await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        refreshes("ok").await > ok_before,
        "refreshes pick up the new file without a restart"
    );
    s.post_ok(
        "/v1/keys/sig/sign",
        json!({"message": b64("after the new token")}),
    )
    .await;
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_then_a_clean_retryable_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // moto never throttles: a loopback endpoint answers every KMS call with
    // the ThrottlingException wire error and counts the attempts.
    let kms = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", kms.local_addr().unwrap());
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = kms.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: throttle-req-1\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let config = format!(
        "backends:\n  kms: {{ type: aws, region: us-east-1, endpoint: \"{url}\" }}\nkeys:\n  pii: {{ backend: kms, key: alias/pii }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start_with_env(&config, &STATIC).await;
    let r = s
        .post("/v1/keys/pii/encrypt", json!({"plaintext": b64("x")}))
        .await;
    let v = r.expect(503, Some("backend_unavailable"));
    assert_eq!(v["error"]["retryable"], true);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ThrottlingException"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("throttle-req-1"),
        "the request id is kept: {v}"
    );
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        n, 3,
        "throttling is retried: 3 attempts in all (retries.max_attempts)"
    );
    assert!(
        s.logs().contains("throttle-req-1"),
        "the request id is in the log"
    );
    // A throttled KMS is not an unhealthy one.
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
}

#[tokio::test]
async fn the_log_scan_catches_aws_access_key_ids() {
    // The scan that ends every test fails on anything shaped like an access
    // key id, registered or not; here an alias carries two into the log.
    let ids = ["AKIAIOSFODNN7EXAMPLE", "ASIARZPUZDIKHZLPZBKB"];
    let s = Sidecar::start_default().await;
    for id in ids {
        s.post(&format!("/v1/keys/{id}/sign"), json!({"message": b64("m")}))
            .await
            .expect(404, Some("key_not_found"));
    }
    assert_eq!(s.leaked_secrets(), ids);
    s.clear_secrets();
    assert!(s.leaked_secrets().is_empty());
    // What the SDK's debug event printed, and near misses.
    assert_eq!(
        aws_access_key_ids(
            r#"Credentials { provider_name: "x", access_key_id: "ASIARZPUZDIKHZLPZBKB", secret_access_key: "** redacted **" }"#
        ),
        ["ASIARZPUZDIKHZLPZBKB"]
    );
    assert_eq!(
        aws_access_key_ids("Credential=AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/kms/aws4_request"),
        ["AKIAIOSFODNN7EXAMPLE"]
    );
    for miss in [
        "AKIAPODIDENTITY",
        "xASIARZPUZDIKHZLPZBKB",
        "ASIARZPUZDIKHZLPZBKBX",
        "asiarzpuzdikhzlpzbkb",
        "AKIAiosfodnn7example",
    ] {
        assert!(aws_access_key_ids(miss).is_empty(), "{miss}");
    }
}

#[tokio::test]
async fn profile_file_credentials_and_their_role_chain_stay_out_of_the_log() {
    // The SDK logs the credentials a profile file gives (at INFO) and the id
    // of those its role chain assumes (at DEBUG): the harness's scan for
    // access key ids fails the test if any of them reaches the log.
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let (credentials, config_file) = (dir.path().join("credentials"), dir.path().join("config"));
    std::fs::write(
        &credentials,
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            STATIC[0].1, STATIC[1].1
        ),
    )
    .unwrap();
    std::fs::write(
        &config_file,
        "[profile sidecar]\nrole_arn = arn:aws:iam::123456789012:role/payments\nsource_profile = base\nregion = us-east-1\n",
    )
    .unwrap();
    let (credentials, config_file) = (
        credentials.display().to_string(),
        config_file.display().to_string(),
    );
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
        ("AWS_CONFIG_FILE", config_file.as_str()),
        ("AWS_PROFILE", "sidecar"),
        ("AWS_ENDPOINT_URL_STS", moto.url.as_str()),
    ];
    let s = Sidecar::start_with_env(&config(&moto, &keys), &env).await;
    s.secret(STATIC[1].1);
    assert_eq!(s.get("/readyz").await.ok()["status"], "ready");
    s.post_ok(
        "/v1/keys/sig/sign",
        json!({"message": b64("via a profile's role")}),
    )
    .await;
    // Only the profile's role could sign: the chain's own log lines, which
    // would say so, are capped (they can quote an unusable token).
}

#[tokio::test]
async fn grants_hold_for_envelopes_and_signatures_are_low_s() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    let config = config(&moto, &keys).replace(
        "callers:",
        "  env: { backend: kms, key: \"alias/pii\", ops: [envelope] }\n  dec: { backend: kms, key: \"alias/pii\", ops: [decrypt] }\n  dk: { backend: kms, key: \"alias/pii\", ops: [datakey] }\ncallers:",
    );
    let s = Sidecar::start_with_env(&config, &STATIC).await;
    crate::adversarial::envelope_grants_hold(&s, "env", "dec", "dk").await;
    crate::adversarial::signatures_are_low_s(&s, "sig").await;
}

#[tokio::test]
async fn an_unusable_pod_identity_token_never_reaches_the_log_or_an_answer() {
    let moto = Moto::start().await;
    let keys = create_keys(&moto).await;
    // `echo token > file` leaves a newline, which no HTTP header may hold:
    // aws-config then quotes the whole token in its log and its error.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("eks-pod-identity-token");
    let secret = "pod-identity-token-with-a-newline-0123456789";
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    let token_path = token.display().to_string();
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://127.0.0.1:1/v1/credentials",
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_path.as_str(),
        ),
    ];
    let s = Sidecar::start_with_env(&config(&moto, &keys), &env).await;
    s.secret(secret);
    let ready = s.get("/readyz").await;
    let body = String::from_utf8_lossy(&ready.body).to_string();
    assert_eq!(ready.status, 503, "{body}");
    assert!(
        body.contains("<token>") || body.contains("auth token"),
        "{body}"
    );
    let r = s
        .post("/v1/keys/sig/sign", json!({"message": b64("m")}))
        .await;
    let answer = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !answer.contains(secret) && !body.contains(secret),
        "{answer}"
    );
    // The harness's log scan (at drop) fails the test if the token is in the log.
}

// === workload identity tokens explained ===

/// IRSA through moto's STS (its endpoint in the config), with the token
/// file in a directory of its own.
struct Irsa {
    moto: Moto,
    keys: Keys,
    token: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Irsa {
    async fn start() -> Irsa {
        let moto = Moto::start().await;
        let keys = create_keys(&moto).await;
        let dir = tempfile::tempdir().unwrap();
        Irsa {
            token: dir.path().join("token"),
            moto,
            keys,
            _dir: dir,
        }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/kms-sidecar".into(),
            ),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                self.token.display().to_string(),
            ),
        ]
    }

    fn config(&self) -> String {
        config(&self.moto, &self.keys).replace(
            &format!("endpoint: \"{}\" }}", self.moto.url),
            &format!(
                "endpoint: \"{url}\", sts_endpoint: \"{url}\", credential_refresh: {{ min: 200ms, max: 300ms }} }}",
                url = self.moto.url
            ),
        )
    }
}

/// A token of another audience, an expired one, and a file that is no JWT
/// stop the start (exit 2), naming the file and what is wrong; the token
/// itself is never printed.
#[tokio::test]
async fn a_wrong_expired_or_non_jwt_identity_token_stops_the_start() {
    let irsa = Irsa::start().await;
    let (token, env) = (&irsa.token, irsa.env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = irsa.config();
    for (content, words) in [
        (
            crate::harness::projected_token("vault", 3600),
            "has audience `vault` where `sts.amazonaws.com` is expected",
        ),
        (
            crate::harness::projected_token("sts.amazonaws.com", -60),
            "expired at",
        ),
        ("not-a-jwt-at-all".to_owned(), "is not a JWT"),
    ] {
        std::fs::write(token, &content).unwrap();
        let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &config, &env);
        assert_eq!(code, Some(2), "{words}: {err}");
        assert!(
            err.contains(&token.display().to_string())
                && err.contains("AWS_WEB_IDENTITY_TOKEN_FILE")
                && err.contains(words),
            "{words}: {err}"
        );
        assert!(!err.contains(&content), "the token is not printed: {err}");
    }
}

/// A projected token is read, never verified: what it says reaches stderr
/// escaped and cut, so an audience or a header with newlines cannot write
/// lines of its own (a forged log line), and a huge claim is not copied.
#[test]
fn an_identity_tokens_claims_cannot_forge_lines_on_stderr() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:default:app",
        "aud": ["vault\nforged-aud-line {\"level\":\"ERROR\"}", "y".repeat(5000)],
        "exp": 4_000_000_000u64,
    });
    let bad_audience = format!(
        "{}.{}.c2ln",
        part(json!({"alg": "RS256", "typ": "JWT"})),
        part(claims)
    );
    let bad_header = format!(
        "{}.{}.c2ln",
        part(json!({"alg": "x\nforged-header-line", "typ": "JWT"})),
        part(json!({"sub": "s"}))
    );
    // Nothing listens on the endpoints: the start stops at the token.
    let config = "backends:\n  kms: { type: aws, region: us-east-1, endpoint: \"http://127.0.0.1:9\", sts_endpoint: \"http://127.0.0.1:9\" }\nkeys:\n  sig: { backend: kms, key: alias/sig }\n";
    let token_path = token.display().to_string();
    let env = [
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/kms-sidecar"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
    ];
    for (content, forged, escaped) in [
        (
            &bad_audience,
            "forged-aud-line",
            "`vault\\nforged-aud-line {\\\"level",
        ),
        (&bad_header, "forged-header-line", "x\\nforged-header-line"),
    ] {
        std::fs::write(&token, content).unwrap();
        let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], config, &env);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(escaped), "escaped on its line: {err}");
        assert!(
            !err.lines().any(|l| l.trim_start().starts_with(forged)),
            "a line of the token's own: {err}"
        );
        assert!(
            !err.contains(&"y".repeat(100)),
            "a huge claim is cut: {err}"
        );
    }
}

/// A token file not there at start is the readiness reason until it
/// appears; then the sidecar serves, and the token's lifetime is a metric.
#[tokio::test]
async fn a_token_file_missing_at_start_is_the_reason_until_it_appears() {
    let irsa = Irsa::start().await;
    let (token, env) = (&irsa.token, irsa.env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&irsa.config(), &env).await;
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503);
    let reason = r.json()["backends"]["kms"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!(
            "{} (AWS_WEB_IDENTITY_TOKEN_FILE) does not exist",
            token.display()
        )),
        "{reason}"
    );
    let projected = crate::harness::projected_token("sts.amazonaws.com", 3600);
    s.secret(projected.clone());
    std::fs::write(token, &projected).unwrap();
    crate::harness::eventually(
        Duration::from_secs(10),
        "ready once the token is there",
        || async { s.get("/readyz").await.status == 200 },
    )
    .await;
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("now")}))
        .await;
    let left = s
        .metric(r#"kms_sidecar_identity_token_expiry_seconds{backend="kms"} "#)
        .await;
    assert!((3500.0..=3600.0).contains(&left), "{left}");
}

/// A token that expires while nothing rotates it: the credentials it got
/// serve on, the metric goes negative, and one warning says so.
#[tokio::test]
async fn an_expired_token_that_nothing_rotates_is_warned_about_once() {
    let irsa = Irsa::start().await;
    let short = crate::harness::projected_token("sts.amazonaws.com", 2);
    std::fs::write(&irsa.token, &short).unwrap();
    let env = irsa.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Credentials refreshed rarely: those from the first exchange serve on.
    let config = irsa.config().replace(
        "credential_refresh: { min: 200ms, max: 300ms }",
        "credential_refresh: { min: 10m, max: 15m }",
    );
    let s = Sidecar::start_with_env(&config, &env).await;
    s.secret(short);
    assert_eq!(s.get("/readyz").await.status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Health checks look at the token (cached 5 s): three looks.
    for _ in 0..3 {
        assert_eq!(s.get("/readyz").await.status, 200, "credentials serve on");
        tokio::time::sleep(Duration::from_millis(5200)).await;
    }
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("still")}))
        .await;
    assert!(
        s.metric(r#"kms_sidecar_identity_token_expiry_seconds{backend="kms"} "#)
            .await
            < 0.0
    );
    let logs = s.logs();
    assert_eq!(
        logs.matches("nothing is rotating it").count(),
        1,
        "one warning:\n{logs}"
    );
}
