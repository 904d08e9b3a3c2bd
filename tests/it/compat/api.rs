//! The transit API's own rules, checked with curl (as a shell script of an
//! app would call it): Vault's shapes for answers and errors, the
//! methods Vault's clients use, batches, what maps to the sidecar's caller
//! rules, rate limits, audit log and metrics, and the loopback TCP
//! listener's caller (the owner of the peer's socket).

use super::{Running, Target};
use crate::harness::{Sidecar, b64, free_port, is_root, run_as, run_tool};
use serde_json::{Value, json};

/// `curl` over the sidecar's socket: (HTTP status, JSON body).
fn curl(s: &Sidecar, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    curl_as(
        None,
        &["--unix-socket", &s.socket.display().to_string()],
        "http://localhost",
        method,
        path,
        body,
    )
}

/// `curl` as `uid` (root only) with `how` (`--unix-socket …`, or nothing
/// for TCP) at `base`.
fn curl_as(
    uid: Option<u32>,
    how: &[&str],
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let url = format!("{base}{path}");
    let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", method];
    args.extend_from_slice(how);
    if let Some(body) = &body {
        args.extend_from_slice(&["-H", "content-type: application/json", "-d", body]);
    }
    args.extend_from_slice(&["-H", "X-Vault-Token: anything", &url]);
    let (_, out, err) = run_as(uid, "curl", &args);
    let (body, status) = out
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl {method} {path}: {out} {err}"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[track_caller]
fn vault_error(answer: &(u16, Value), status: u16, words: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("Vault's error shape: {body}"));
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains(words))),
        "`{words}` in {body}"
    );
}

#[tokio::test]
async fn the_transit_api_is_off_unless_enabled() {
    let s = Sidecar::start(&crate::harness::local_config(
        "  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }",
    ))
    .await;
    let (status, body) = curl(
        &s,
        "POST",
        "/v1/transit/encrypt/aes",
        Some(&json!({"plaintext": b64("x")})),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"]["code"], "not_found",
        "API v1's own shape: {body}"
    );
    let (status, _) = curl(&s, "GET", "/v1/sys/health", None);
    assert_eq!(status, 404);
}

#[tokio::test]
async fn transit_answers_and_errors_have_vaults_shape() {
    let t = Running::start(Target::Local).await;
    let s = t.sidecar.as_ref().unwrap();
    // PUT (Go's client, the CLI) and POST (hvac) are the same write.
    let pt = b64("the transit plaintext");
    let (status, enc) = curl(
        s,
        "PUT",
        "/v1/transit/encrypt/aes",
        Some(&json!({"plaintext": pt})),
    );
    assert_eq!(status, 200, "{enc}");
    for field in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(enc.get(field).is_some(), "`{field}` in {enc}");
    }
    let ct = enc["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert!(ct.starts_with("vault:v1:"), "{enc}");
    assert_eq!(enc["data"]["key_version"], 1);
    let (_, dec) = curl(
        s,
        "POST",
        "/v1/transit/decrypt/aes",
        Some(&json!({"ciphertext": ct})),
    );
    assert_eq!(dec["data"]["plaintext"], pt);

    vault_error(
        &curl(
            s,
            "POST",
            "/v1/transit/encrypt/secret",
            Some(&json!({"plaintext": pt})),
        ),
        403,
        "permission denied",
    );
    vault_error(
        &curl(s, "POST", "/v1/transit/export/encryption-key/aes", None),
        404,
        "unsupported path",
    );
    vault_error(
        &curl(s, "GET", "/v1/transit/encrypt/aes", None),
        405,
        "is not supported",
    );
    vault_error(
        &curl(
            s,
            "POST",
            "/v1/transit/decrypt/aes",
            Some(&json!({"ciphertext": "vault:v1:AAAA"})),
        ),
        400,
        "",
    );
    vault_error(
        &curl(
            s,
            "POST",
            "/v1/transit/decrypt/aes",
            Some(&json!({"ciphertext": "not-transit"})),
        ),
        400,
        "not a transit ciphertext",
    );
    vault_error(
        &curl(
            s,
            "POST",
            "/v1/transit/encrypt/aes",
            Some(&json!({"plaintext": pt, "context": b64("c")})),
        ),
        400,
        "not a derived key",
    );
    vault_error(
        &curl(s, "POST", "/v1/transit/datakey/both/aes", None),
        400,
        "invalid type",
    );
    vault_error(
        &curl(
            s,
            "POST",
            "/v1/transit/sign/ec/sha2-512",
            Some(&json!({"input": b64("m")})),
        ),
        400,
        "unsupported hash algorithm",
    );

    // The CLI sends key=value pairs as strings.
    let (status, dk) = curl(
        s,
        "POST",
        "/v1/transit/datakey/plaintext/aes",
        Some(&json!({"bits": "128"})),
    );
    assert_eq!(status, 200, "{dk}");
    assert_eq!(crate::harness::unb64(&dk["data"]["plaintext"]).len(), 16);
    let digest = b64([7u8; 32]);
    let (status, sig) = curl(
        s,
        "POST",
        "/v1/transit/sign/ec",
        Some(&json!({"input": digest, "prehashed": "true"})),
    );
    assert_eq!(status, 200, "{sig}");
    let (_, v) = curl(
        s,
        "POST",
        "/v1/transit/verify/ec",
        Some(&json!({"input": digest, "prehashed": true, "signature": sig["data"]["signature"]})),
    );
    assert_eq!(v["data"]["valid"], true, "{v}");

    // LIST (the method, or GET ?list=true): only the keys the caller may use.
    for (method, path) in [
        ("LIST", "/v1/transit/keys"),
        ("GET", "/v1/transit/keys?list=true"),
    ] {
        let (status, list) = curl(s, method, path, None);
        assert_eq!(status, 200, "{list}");
        let mut keys: Vec<&str> = list["data"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["aes", "ec", "mac", "rsa"], "{list}");
    }
    let (status, health) = curl(s, "GET", "/v1/sys/health", None);
    assert_eq!(
        (status, &health["sealed"]),
        (200, &json!(false)),
        "{health}"
    );
    let (status, me) = curl(s, "GET", "/v1/auth/token/lookup-self", None);
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me["data"]["meta"]["uid"],
        nix::unistd::geteuid().as_raw().to_string()
    );
}

#[tokio::test]
async fn batches_answer_each_item_and_bind_associated_data() {
    let t = Running::start(Target::Local).await;
    let s = t.sidecar.as_ref().unwrap();
    let aad = b64("tenant=acme");
    let items = json!({"batch_input": [
        {"plaintext": b64("one"), "associated_data": aad, "reference": "a"},
        {"plaintext": b64("two"), "reference": "b"},
    ]});
    let (status, enc) = curl(s, "POST", "/v1/transit/encrypt/aes", Some(&items));
    assert_eq!(status, 200, "{enc}");
    let results = enc["data"]["batch_results"].as_array().unwrap();
    assert_eq!(
        (
            results[0]["reference"].as_str(),
            results[1]["reference"].as_str()
        ),
        (Some("a"), Some("b"))
    );
    let (one, two) = (
        results[0]["ciphertext"].clone(),
        results[1]["ciphertext"].clone(),
    );

    // One item fails (its associated data is missing): 400, the other decrypts.
    let batch = json!({"batch_input": [{"ciphertext": one}, {"ciphertext": two}]});
    let (status, dec) = curl(s, "POST", "/v1/transit/decrypt/aes", Some(&batch));
    assert_eq!(status, 400, "{dec}");
    let results = dec["data"]["batch_results"].as_array().unwrap();
    assert!(results[0]["error"].is_string(), "{dec}");
    assert_eq!(results[1]["plaintext"], b64("two"), "{dec}");
    // partial_failure_response_code, as Vault's.
    let mut partial = batch.clone();
    partial["partial_failure_response_code"] = 207.into();
    assert_eq!(
        curl(s, "POST", "/v1/transit/decrypt/aes", Some(&partial)).0,
        207
    );
    // With its associated data it decrypts, here and through API v1 with
    // the encryption context the docs map it to.
    let (_, dec) = curl(
        s,
        "POST",
        "/v1/transit/decrypt/aes",
        Some(&json!({"ciphertext": one, "associated_data": aad})),
    );
    assert_eq!(dec["data"]["plaintext"], b64("one"));
    let ours = one
        .as_str()
        .unwrap()
        .splitn(3, ':')
        .nth(2)
        .unwrap()
        .to_owned();
    let plain = s
        .post_ok(
            "/v1/keys/aes/decrypt",
            json!({"ciphertext": ours, "context": {"associated_data": aad}}),
        )
        .await;
    assert_eq!(plain["plaintext"], b64("one"));

    // The rules, audit and metrics of API v1: labelled by the transit route.
    let counted = s
        .metric(r#"kms_sidecar_requests_total{code="ok",key="aes",op="transit_decrypt"}"#)
        .await;
    assert!(counted >= 1.0, "{counted}");
}

#[tokio::test]
async fn a_batch_costs_a_rate_limit_token_per_item() {
    let s = Sidecar::start(&format!(
        "{}limits: {{ per_caller: {{ rate: 1/m, burst: 3 }} }}\ncompat: {{ vault_transit: {{ enabled: true }} }}\n",
        crate::harness::local_config("  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }")
    ))
    .await;
    let four: Vec<Value> = (0..4)
        .map(|i| json!({"plaintext": b64(format!("{i}"))}))
        .collect();
    vault_error(
        &curl(
            &s,
            "POST",
            "/v1/transit/encrypt/aes",
            Some(&json!({"batch_input": four})),
        ),
        429,
        "rate-limit tokens",
    );
}

#[tokio::test]
async fn the_tcp_listener_knows_its_callers_by_their_sockets_owner() {
    let t = Running::start(Target::Local).await;
    let addr = t.tcp_addr();
    let (status, enc) = curl_as(
        None,
        &[],
        &addr,
        "POST",
        "/v1/transit/encrypt/aes",
        Some(&json!({"plaintext": b64("over tcp")})),
    );
    assert_eq!(status, 200, "{enc}");
    let (status, me) = curl_as(None, &[], &addr, "GET", "/v1/auth/token/lookup-self", None);
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me["data"]["meta"]["uid"],
        nix::unistd::geteuid().as_raw().to_string()
    );
    if is_root() {
        // nobody, whom no rule names: its own uid, refused before the body.
        let answer = curl_as(
            Some(65534),
            &[],
            &addr,
            "POST",
            "/v1/transit/encrypt/aes",
            Some(&json!({"plaintext": b64("x")})),
        );
        vault_error(&answer, 403, "uid 65534");
        let (status, body) = curl_as(
            Some(65534),
            &[],
            &addr,
            "POST",
            "/v1/keys/aes/encrypt",
            Some(&json!({"plaintext": b64("x")})),
        );
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    } else {
        eprintln!("not root: another uid's TCP connection is not tried");
    }
}

#[tokio::test]
async fn the_tcp_listener_takes_loopback_addresses_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ tcp: 0.0.0.0:{} }}\ncompat: {{ vault_transit: {{ enabled: true, mount: keys }} }}\n{}",
            free_port(),
            crate::harness::local_config("  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }")
                .replace("{dir}", &dir.path().display().to_string())
        ),
    )
    .unwrap();
    let (ok, out, err) = run_tool(
        crate::harness::BIN,
        &["config", "check", &config.display().to_string()],
        "build it",
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("listen.tcp") && err.contains("not a loopback address"),
        "{err}"
    );
    assert!(err.contains("compat.vault_transit.mount"), "{err}");
}

#[tokio::test]
async fn with_the_vault_backend_ciphertexts_are_vaults_own() {
    let t = Running::start(Target::Vault).await;
    let (s, bao) = (t.sidecar.as_ref().unwrap(), t.bao.as_ref().unwrap());
    // Made by OpenBao, decrypted through the sidecar, and the reverse: the
    // same `vault:vN:` strings.
    let by_bao = bao
        .api(
            "POST",
            "transit/encrypt/aes",
            json!({"plaintext": b64("made by OpenBao")}),
        )
        .await;
    let (_, dec) = curl(
        s,
        "POST",
        "/v1/transit/decrypt/aes",
        Some(&json!({"ciphertext": by_bao["ciphertext"]})),
    );
    assert_eq!(dec["data"]["plaintext"], b64("made by OpenBao"), "{dec}");
    let (_, enc) = curl(
        s,
        "POST",
        "/v1/transit/encrypt/aes",
        Some(&json!({"plaintext": b64("made by the sidecar")})),
    );
    let by_bao = bao
        .api(
            "POST",
            "transit/decrypt/aes",
            json!({"ciphertext": enc["data"]["ciphertext"]}),
        )
        .await;
    assert_eq!(by_bao["plaintext"], b64("made by the sidecar"));
    let (_, sig) = curl(
        s,
        "POST",
        "/v1/transit/sign/ec",
        Some(&json!({"input": b64("signed")})),
    );
    let verified = bao
        .api(
            "POST",
            "transit/verify/ec",
            json!({"input": b64("signed"), "signature": sig["data"]["signature"]}),
        )
        .await;
    assert_eq!(verified["valid"], true, "{sig}");
    // Sealed by an earlier kms-sidecar, which bound an empty context as the
    // associated data `{}`: still opened by API v1 with no context.
    let legacy = bao
        .api(
            "POST",
            "transit/encrypt/aes",
            json!({"plaintext": b64("sealed before"), "associated_data": b64("{}")}),
        )
        .await;
    let text = legacy["ciphertext"].as_str().unwrap();
    let payload = crate::harness::unb64(&json!(text.rsplit(':').next().unwrap()));
    let ours = [&1u32.to_be_bytes()[..], &payload].concat();
    let plain = s
        .post_ok("/v1/keys/aes/decrypt", json!({"ciphertext": b64(ours)}))
        .await;
    assert_eq!(plain["plaintext"], b64("sealed before"));
}

/// The README's lines for Vault's CLI (under "Coming from Vault") work as
/// written against the embedded default with the transit API on.
#[tokio::test]
async fn the_readmes_vault_lines_run_as_written() {
    let readme = crate::docs::doc("README.md");
    let block = readme
        .split("## Coming from Vault")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(2))
        .and_then(|s| s.split("```").next())
        .expect("a second ```sh block under ## Coming from Vault");
    let (start, lines) = block
        .trim_start()
        .split_once('\n')
        .expect("lines after the start");
    assert!(start.starts_with("KMS_SIDECAR_COMPAT__VAULT_TRANSIT__ENABLED=true make run"));
    let s =
        Sidecar::start_default_with_env(&[("KMS_SIDECAR_COMPAT__VAULT_TRANSIT__ENABLED", "true")])
            .await;
    let bao = crate::harness::bao_binary();
    let path = format!(
        "{}:{}",
        bao.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{lines}")])
        .current_dir(s.dir.path())
        .env("PATH", path)
        .env("HOME", s.dir.path())
        .env_remove("VAULT_TOKEN")
        .output()
        .expect("bash runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("hello"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ecdsa-p256") && stdout.contains("latest_version"),
        "{stdout}"
    );
}
