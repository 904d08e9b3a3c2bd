//! The `pkcs11` backend against SoftHSM2, beyond the conformance suite: the
//! token's own public keys and new objects, the PIN file read again at each
//! login, a pool of sessions under load, a token that goes away and comes
//! back, and config mistakes.

use crate::harness::{
    HsmKey, Sidecar, SoftHsm, b64, eventually, openssl_verifies, run_with_config, unb64,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MSG: &[u8] = b"signed in the token";

/// A sidecar on `hsm` with the keys `ec` (P-256) and `aes`, and `extra`
/// backend fields.
async fn sidecar(hsm: &SoftHsm, extra: &str) -> Sidecar {
    sidecar_with(hsm, extra, "").await
}

/// [`sidecar`] with more keys (YAML lines under `keys:`).
async fn sidecar_with(hsm: &SoftHsm, extra: &str, keys: &str) -> Sidecar {
    sidecar_full(hsm, extra, "", keys).await
}

/// [`sidecar_with`] with more backends (YAML lines under `backends:`).
async fn sidecar_full(hsm: &SoftHsm, extra: &str, backends: &str, keys: &str) -> Sidecar {
    let backend = hsm.backend().replace(" }", &format!("{extra} }}"));
    let local = hsm.dir.path().join("local-keys");
    let config = format!(
        "backends:\n  hsm: {backend}\n  dev: {{ type: local, dir: \"{}\" }}\n{backends}keys:\n  ec: {{ backend: hsm, key: ec, ops: [\"*\"] }}\n  aes: {{ backend: hsm, key: aes, ops: [\"*\"] }}\n{keys}callers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        local.display(),
        nix::unistd::geteuid().as_raw()
    );
    let env: Vec<(&str, String)> = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    s.secret(hsm.pin.clone());
    s
}

fn token(label: &str) -> SoftHsm {
    let hsm = SoftHsm::start(label);
    hsm.create_key(HsmKey::EcP256, "ec", "01");
    hsm.create_key(HsmKey::Aes256, "aes", "01");
    hsm
}

async fn sign(s: &Sidecar) -> crate::harness::Resp {
    s.post("/v1/keys/ec/sign", json!({"message": b64(MSG)}))
        .await
}

/// Replaces a file the way Kubernetes updates a mounted secret: a new file
/// renamed over the old one.
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn public_keys_are_the_tokens_and_rotation_makes_a_sensitive_object() {
    let hsm = token("keys");
    let s = sidecar(&hsm, "").await;
    let pk = s.get("/v1/keys/ec/public-key").await.ok();
    let pem = pk["pem"].as_str().unwrap();
    let der = pem::parse(pem).unwrap().into_contents();
    assert_eq!(
        der,
        hsm.public_key_der("ec", "01"),
        "the sidecar's public key is the token's (pkcs11-tool --read-object)"
    );
    let sig = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(MSG)}))
        .await;
    assert_eq!(sig["version"], "01");
    assert!(openssl_verifies(
        hsm.dir.path(),
        pem,
        MSG,
        &unb64(&sig["signature"]),
        &[],
        false
    ));

    // Rotation: a new key pair on the token, the next CKA_ID, sensitive and
    // never extractable, and the sidecar signs with it.
    let rotated = s.post_ok("/v1/keys/ec/rotate", json!({})).await;
    assert_eq!(rotated["version"], "02", "{rotated}");
    let listed =
        String::from_utf8(hsm.tool(&["--list-objects", "--type", "privkey"]).stdout).unwrap();
    let new_object = listed
        .split("Private Key Object")
        .find(|o| o.contains("ID:         02"))
        .unwrap_or_else(|| panic!("no private key with ID 02 on the token: {listed}"));
    assert!(new_object.contains("label:      ec"), "{new_object}");
    assert!(
        new_object.contains("sensitive") && new_object.contains("never extractable"),
        "{new_object}"
    );
    let sig2 = s
        .post_ok("/v1/keys/ec/sign", json!({"message": b64(MSG)}))
        .await;
    assert_eq!(sig2["version"], "02");
    let pk2 = s.get("/v1/keys/ec/public-key?version=02").await.ok();
    assert_eq!(
        pem::parse(pk2["pem"].as_str().unwrap())
            .unwrap()
            .into_contents(),
        hsm.public_key_der("ec", "02")
    );
    // The old signature still verifies, against version 01.
    let v = s
        .post_ok(
            "/v1/keys/ec/verify",
            json!({"message": b64(MSG), "signature": sig["signature"]}),
        )
        .await;
    assert_eq!(
        (v["valid"].as_bool(), v["version"].as_str()),
        (Some(true), Some("01"))
    );

    let meta = s.get("/v1/keys/ec").await.ok();
    assert_eq!(meta["current_version"], "02", "{meta}");
    let details = &meta["details"];
    assert_eq!(details["token"], "keys", "{meta}");
    assert_eq!(details["sensitive"], "true", "{meta}");
    assert_eq!(details["extractable"], "false", "{meta}");
    assert_eq!(details["local"], "true", "generated on the token: {meta}");
    assert_eq!(meta["origin"], "hsm", "{meta}");
}

#[tokio::test]
async fn p384_and_rsa_pkcs1_keys_sign_for_openssl() {
    let hsm = token("curves");
    hsm.create_key(HsmKey::EcP384, "ec384", "0a");
    hsm.create_key(HsmKey::Rsa2048, "legacy", "01");
    let s = sidecar_with(
        &hsm,
        "",
        "  ec384: { backend: hsm, key: ec384, ops: [\"*\"] }\n  legacy: { backend: hsm, key: legacy, algorithm: rsa-pkcs1-2048-sha256, ops: [\"*\"] }\n",
    )
    .await;
    for (alias, algorithm, options) in [
        ("ec384", "ecdsa-p384-sha384", vec!["-sha384"]),
        ("legacy", "rsa-pkcs1-2048-sha256", vec![]),
    ] {
        let meta = s.get(&format!("/v1/keys/{alias}")).await.ok();
        assert_eq!(meta["algorithm"], algorithm, "{meta}");
        let sig = s
            .post_ok(
                &format!("/v1/keys/{alias}/sign"),
                json!({"message": b64(MSG)}),
            )
            .await;
        assert_eq!(sig["algorithm"], algorithm, "{sig}");
        let pk = s.get(&format!("/v1/keys/{alias}/public-key")).await.ok();
        assert!(
            openssl_verifies(
                hsm.dir.path(),
                pk["pem"].as_str().unwrap(),
                MSG,
                &unb64(&sig["signature"]),
                &options,
                false
            ),
            "openssl verifies the {algorithm} signature"
        );
    }
}

#[tokio::test]
async fn a_replaced_pin_file_is_read_at_the_next_login_and_a_refused_pin_is_not_retried() {
    let hsm = token("pin");
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    replace(&hsm.pin_file, &wrong);
    let s = sidecar(&hsm, "").await;
    s.secret(wrong.clone());
    s.not_ready_because(
        "hsm",
        &["refused", "CKR_PIN_INCORRECT"],
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..3 {
        let r = sign(&s).await;
        r.expect_saying(401, "unauthenticated", "PIN");
    }
    // The refused PIN was offered to the token once, however often asked.
    assert_eq!(
        s.logs()
            .matches("the PKCS#11 token refused the PIN")
            .count(),
        1,
        "{}",
        s.logs()
    );

    replace(&hsm.pin_file, &format!("{}\n", hsm.pin));
    s.ready_within(Duration::from_secs(10)).await;
    let r = sign(&s).await;
    assert_eq!(r.status, 200, "{:?}", r.json());

    // A PIN changed on the token and in the file is used at the next login:
    // here, after the token went away and came back.
    let new_pin = format!("pin-{}", uuid::Uuid::new_v4().simple());
    s.secret(new_pin.clone());
    hsm.tool(&["--change-pin", "--new-pin", &new_pin]);
    replace(&hsm.pin_file, &new_pin);
    let away = hsm.tokens.with_extension("away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    s.not_ready_because("hsm", &["not present"], Duration::from_secs(10))
        .await;
    std::fs::rename(&away, &hsm.tokens).unwrap();
    s.ready_within(Duration::from_secs(15)).await;
    let r = sign(&s).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

#[tokio::test]
async fn sixty_four_concurrent_signs_share_four_sessions() {
    let hsm = token("pool");
    let s = sidecar(&hsm, ", sessions: 4").await;
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..64).map(|i| {
        let s = &s;
        async move {
            s.post(
                "/v1/keys/ec/sign",
                json!({"message": b64(format!("message {i}").as_bytes())}),
            )
            .await
        }
    }))
    .await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "sign {i}: {:?}", r.json());
    }
    // The wait is bounded: every sign was served within the call timeout
    // (5 s), not failed for lack of a session.
    assert!(started.elapsed() < Duration::from_secs(5));
    for (i, r) in answers.iter().enumerate().step_by(16) {
        let v = s
            .post_ok(
                "/v1/keys/ec/verify",
                json!({"message": b64(format!("message {i}").as_bytes()), "signature": r.json()["signature"]}),
            )
            .await;
        assert_eq!(v["valid"], true);
    }
    // Four worker threads, one session each: no more were opened.
    let threads = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .unwrap()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.ok()?.path().join("comm")).ok()?;
            comm.starts_with("pkcs11-hsm").then_some(comm)
        })
        .count();
    assert_eq!(
        threads, 4,
        "the backend's own pool is sized to its sessions"
    );
}

#[tokio::test]
async fn a_token_that_goes_away_is_unavailable_then_recovers_without_a_restart() {
    let hsm = token("removable");
    let s = sidecar(&hsm, ", circuit: { open_for: 1s }").await;
    let ct = s
        .post_ok(
            "/v1/keys/aes/encrypt",
            json!({"plaintext": b64(b"kept"), "context": {"a": "b"}}),
        )
        .await;
    assert_eq!(sign(&s).await.status, 200);

    let away = hsm.tokens.with_extension("away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    let r = sign(&s).await;
    let v = r.expect(503, Some("backend_unavailable"));
    assert_eq!(v["error"]["retryable"], true, "{v}");
    let reason = s
        .not_ready_because("hsm", &["not present"], Duration::from_secs(10))
        .await;
    assert!(reason.contains("removable"), "{reason}");
    let r = s
        .post(
            "/v1/keys/aes/decrypt",
            json!({"ciphertext": ct["ciphertext"], "context": {"a": "b"}}),
        )
        .await;
    assert_eq!(
        r.status,
        503,
        "not a 404 or a decryption failure: {:?}",
        r.json()
    );

    std::fs::rename(&away, &hsm.tokens).unwrap();
    s.ready_within(Duration::from_secs(15)).await;
    eventually(Duration::from_secs(10), "signing works again", || async {
        sign(&s).await.status == 200
    })
    .await;
    let plain = s
        .post_ok(
            "/v1/keys/aes/decrypt",
            json!({"ciphertext": ct["ciphertext"], "context": {"a": "b"}}),
        )
        .await;
    assert_eq!(unb64(&plain["plaintext"]), b"kept");
    assert!(
        s.logs().contains("initialized again"),
        "the module was initialized again: {}",
        s.logs()
    );
}

/// Two tokens of one module are two backends sharing one initialization of
/// it: both serve, and when one token goes away (and the module is
/// initialized again to find it back) the other keeps serving.
#[tokio::test]
async fn two_tokens_of_one_module_are_two_backends() {
    let hsm = token("alpha");
    let beta_dir = hsm.add_token("beta");
    hsm.create_key_on("beta", HsmKey::EcP256, "ec-beta", "01");
    let beta = hsm
        .backend()
        .replace("token_label: \"alpha\"", "token_label: \"beta\"")
        .replace(" }", ", circuit: { open_for: 1s } }");
    let s = sidecar_full(
        &hsm,
        ", circuit: { open_for: 1s }",
        &format!("  beta: {beta}\n"),
        "  eb: { backend: beta, key: ec-beta, ops: [\"*\"] }\n",
    )
    .await;
    let sign_beta = || s.post("/v1/keys/eb/sign", json!({"message": b64(MSG)}));
    assert_eq!(sign(&s).await.status, 200);
    assert_eq!(sign_beta().await.status, 200);
    let beta_pk = s.get("/v1/keys/eb/public-key").await.ok();
    assert_eq!(
        pem::parse(beta_pk["pem"].as_str().unwrap())
            .unwrap()
            .into_contents(),
        hsm.public_key_der_on("beta", "ec-beta", "01"),
        "each backend reads its own token"
    );

    let away = beta_dir.with_extension("away");
    std::fs::rename(&beta_dir, &away).unwrap();
    sign_beta().await.expect(503, Some("backend_unavailable"));
    s.not_ready_because("beta", &["not present"], Duration::from_secs(10))
        .await;
    // Meanwhile alpha serves, through the module's new initializations.
    for _ in 0..10 {
        let r = sign(&s).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    std::fs::rename(&away, &beta_dir).unwrap();
    eventually(Duration::from_secs(15), "beta signs again", || async {
        sign_beta().await.status == 200
    })
    .await;
    assert_eq!(sign(&s).await.status, 200);
    s.ready_within(Duration::from_secs(10)).await;
}

#[test]
fn config_mistakes_exit_2_naming_the_field() {
    let module = crate::harness::softhsm_module();
    let config = |backend: &str, key: &str| -> String {
        format!(
            "backends:\n  hsm: {{ type: pkcs11, module: \"{module}\", token_label: t{backend} }}\nkeys:\n  k: {{ backend: hsm, key: \"{key}\" }}\ncallers:\n  - {{ uids: [0], keys: [\"*\"], ops: [\"*\"] }}\n"
        )
    };
    for (config, expected) in [
        (
            config(", pin_file: /p, pin_env: P", "k"),
            "backends.hsm.pin_file",
        ),
        (config("", "k"), "backends.hsm.pin_file"),
        (
            config(", pin_env: P, sessions: 0", "k"),
            "backends.hsm.sessions",
        ),
        (config(", pin_env: P", "k/xyz"), "keys.k.key"),
    ] {
        let (code, _, err) = run_with_config(&["config", "check"], &config, &[]);
        assert_eq!(code, Some(2), "{expected}: {err}");
        assert!(
            err.contains(expected),
            "stderr should name {expected}: {err}"
        );
    }
    let missing = config(", pin_env: P", "k").replace(module, "/nonexistent/libvendor.so");
    let (code, _, err) = run_with_config(&["serve", "--config"], &missing, &[("P", "x")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/libvendor.so"),
        "names the module: {err}"
    );
}

/// The token's own view of a signature: `pkcs11-tool --verify` with the
/// public key object.
#[tokio::test]
async fn the_token_verifies_what_the_sidecar_signed() {
    let hsm = token("verify");
    let s = sidecar(&hsm, "").await;
    let sig: Value = s
        .post_ok(
            "/v1/keys/ec/sign",
            json!({"message": b64(MSG), "format": "raw"}),
        )
        .await;
    let dir = hsm.dir.path();
    // SoftHSM2 has no CKM_ECDSA_SHA256: the token verifies the digest.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MSG);
    std::fs::write(dir.join("msg"), digest.as_ref()).unwrap();
    std::fs::write(dir.join("sig"), unb64(&sig["signature"])).unwrap();
    let (msg, sigf) = (
        dir.join("msg").display().to_string(),
        dir.join("sig").display().to_string(),
    );
    let out = hsm.tool(&[
        "--verify",
        "-m",
        "ECDSA",
        "--label",
        "ec",
        "--id",
        "01",
        "-i",
        &msg,
        "--signature-file",
        &sigf,
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Signature is valid"), "{said}");
}

/// The SoftHSM2 walk-through of `docs/pkcs11.md` runs as written, in a
/// directory of its own, with this build's binary in place of
/// `./target/debug/kms-sidecar`.
#[tokio::test]
async fn the_documented_softhsm2_walk_through_runs_as_written() {
    crate::harness::softhsm_module();
    let page = crate::docs::doc("docs/pkcs11.md");
    let walk = page
        .split("## A walk-through with SoftHSM2")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/pkcs11.md has a ```sh block under ## A walk-through with SoftHSM2");
    assert!(walk.contains("./target/debug/kms-sidecar serve"));
    let walk = walk.replace("./target/debug/kms-sidecar", crate::harness::BIN);
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("timeout")
        .args(["120", "bash", "-c", &format!("set -euo pipefail\n{walk}")])
        .current_dir(dir.path())
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("hsm/sidecar.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the walk-through failed (`make test` installs softhsm2, opensc, curl, jq and openssl):\n{stdout}\n{}\nsidecar log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verified OK"), "{stdout}");
    assert!(stdout.contains(r#"{"plaintext":"c2VjcmV0"}"#), "{stdout}");
    assert!(
        stdout.contains(r#"{"key":"orders-data","version":"02"}"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""current_version":"02""#), "{stdout}");
    assert!(!log.contains("11223344"), "the PIN is never logged:\n{log}");
}

/// The PKCS#11 config example of `docs/pkcs11.md` is a valid config.
#[test]
fn the_documented_pkcs11_config_passes_config_check() {
    let block = crate::docs::yaml_block("docs/pkcs11.md", "backends:\n  hsm:\n    type: pkcs11");
    let config = format!("{block}callers:\n  - {{ uids: [0], keys: [\"*\"], ops: [\"*\"] }}\n");
    let (code, out, err) = run_with_config(&["config", "check"], &config, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("sessions: 4"), "{out}");
}

/// A token that stops answering (SoftHSM2 blocked on the record locks of
/// its token files, held here by another process) costs callers the
/// backend's timeout, never more, and stalls neither the runtime nor
/// another backend; when it answers again, so does the sidecar.
#[tokio::test]
async fn a_hung_token_times_out_without_stalling_other_backends() {
    let hsm = token("hung");
    let s = sidecar_with(
        &hsm,
        ", timeout: 3s, retries: { max_attempts: 1 }, circuit: { open_for: 1s }",
        "  soft: { backend: dev, key: soft, algorithm: ecdsa-p256-sha256, ops: [\"*\"] }\n",
    )
    .await;
    assert_eq!(sign(&s).await.status, 200);

    // fcntl record locks on every token file: SoftHSM2's next read waits.
    let mut locker = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,glob,sys,time\nfs=[open(p,'r+b') for p in glob.glob(sys.argv[1]+'/*/*')]\nfor f in fs: fcntl.lockf(f, fcntl.LOCK_EX)\nprint(len(fs), flush=True)\ntime.sleep(60)",
            hsm.tokens.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (`make test` installs it)");
    let mut locked = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.take().unwrap()),
        &mut locked,
    )
    .unwrap();
    assert!(locked.trim().parse::<u32>().unwrap() > 0, "{locked}");

    // More hung calls than sessions: every worker is stuck in the module.
    let s = std::sync::Arc::new(s);
    let hung: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { sign(&s).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let soft = s
        .post("/v1/keys/soft/sign", json!({"message": b64(MSG)}))
        .await;
    assert_eq!(
        soft.status,
        200,
        "the local backend serves: {:?}",
        soft.json()
    );
    assert!(
        hung.iter().all(|h| !h.is_finished()),
        "the local sign was served while the token's calls still hung"
    );
    for h in hung {
        let r = h.await.unwrap();
        r.expect(504, Some("backend_timeout"));
    }

    locker.kill().unwrap();
    locker.wait().unwrap();
    eventually(Duration::from_secs(10), "the token signs again", || async {
        sign(&s).await.status == 200
    })
    .await;
}

/// SIGTERM while the workers are busy (a backend whose token is gone keeps
/// finalizing and initializing the module again) ends in exit 0, every
/// time: the process waits for its workers before `exit` runs SoftHSM2's
/// static destructors. Before, about one exit in forty crashed (SIGSEGV)
/// and a few hung, with a module call racing the destructors.
#[tokio::test]
async fn sigterm_while_the_workers_are_busy_exits_0_every_time() {
    let hsm = token("exiting");
    let down = hsm
        .backend()
        .replace("token_label: \"exiting\"", "token_label: \"not-here\"");
    let backends = format!("  down: {down}\n");
    let keys = "  gone: { backend: down, key: aes }\n";
    for round in 0..24u64 {
        let mut s = sidecar_full(&hsm, "", &backends, keys).await;
        assert_eq!(sign(&s).await.status, 200);
        // Into the first re-initializations (1 s, then 2 s apart).
        tokio::time::sleep(Duration::from_millis(round % 6 * 250)).await;
        let status = s.terminate();
        assert!(
            status.success(),
            "round {round}: exited with {status}: {}",
            s.logs()
        );
    }
}
