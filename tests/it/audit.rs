//! The audit log over real requests: what each line holds (and never holds),
//! `audit verify` on tampered files, SIGHUP rotation with the chain carried
//! across files, nothing lost at SIGTERM under load, and the replay guard.

use crate::harness::{BIN, Sidecar, b64, local_config, signal};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

/// `kms-sidecar audit verify FILES…`: (success, stdout and stderr).
pub fn verify(files: &[&Path]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every line of an audit file as JSON (a torn line fails the test).
pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

fn config() -> String {
    local_config(
        "  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }\n  aes: { backend: dev, key: aes, algorithm: aes-256-gcm }",
    ) + "audit: { path: \"{dir}/audit.jsonl\" }\n"
}

#[tokio::test]
async fn every_request_is_audited_and_tampering_is_found() {
    let s = Sidecar::start(&config()).await;
    let log = s.dir.path().join("audit.jsonl");
    let secret = "audit-must-not-see-this-plaintext";
    s.secret(b64(secret));
    let signed = s
        .post_ok("/v1/keys/sig/sign", json!({"message": b64(secret)}))
        .await;
    let enc = s
        .post_ok("/v1/keys/aes/encrypt", json!({"plaintext": b64(secret)}))
        .await;
    s.post("/v1/keys/nope/sign", json!({"message": b64("x")}))
        .await
        .expect(404, Some("key_not_found"));
    s.get("/v1/keys").await.ok();
    s.get("/healthz").await.ok();
    let mut s = s;
    assert!(s.terminate().success());

    let text = std::fs::read_to_string(&log).unwrap();
    for leak in [
        secret.to_owned(),
        b64(secret),
        signed["signature"].as_str().unwrap().to_owned(),
        enc["ciphertext"].as_str().unwrap().to_owned(),
    ] {
        assert!(!text.contains(&leak), "the audit log holds request data");
    }
    let entries = lines(&log);
    assert_eq!(entries.len(), 4, "probes are not audited:\n{text}");
    let me = nix::unistd::geteuid().as_raw();
    let first = &entries[0];
    assert_eq!(first["op"], "sign");
    assert_eq!(first["key"], "sig");
    assert_eq!(first["version"], signed["version"]);
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["uid"], me);
    assert!(first["pid"].as_i64().unwrap() > 0);
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(entries[1]["prev"], first["hash"]);
    assert_eq!(entries[2]["outcome"], "key_not_found");
    assert_eq!(entries[2]["status"], 404);
    assert_eq!(entries[3]["op"], "list_keys");

    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    assert!(out.contains("4 entries"), "{out}");

    // Edited, removed, reordered: each named at its line, exit 1.
    let raw: Vec<&str> = text.lines().collect();
    let tampered = log.with_extension("tampered");
    for (what, content, line) in [
        (
            "edited",
            {
                let mut l = raw.clone();
                let edited = l[1].replace("\"status\":200", "\"status\":201");
                l[1] = &*Box::leak(edited.into_boxed_str());
                l
            },
            2,
        ),
        (
            "removed",
            {
                let mut l = raw.clone();
                l.remove(1);
                l
            },
            2,
        ),
        (
            "reordered",
            {
                let mut l = raw.clone();
                l.swap(2, 3);
                l
            },
            3,
        ),
    ] {
        std::fs::write(&tampered, content.join("\n") + "\n").unwrap();
        let (ok, out) = verify(&[&tampered]);
        assert!(!ok, "{what} not detected");
        assert!(
            out.contains(&format!("audit.tampered:{line}:")),
            "{what}: {out}"
        );
    }
}

#[tokio::test]
async fn sighup_reopens_the_file_and_the_chain_goes_on() {
    let s = Sidecar::start(&config()).await;
    let log = s.dir.path().join("audit.jsonl");
    let rotated = s.dir.path().join("audit.jsonl.1");
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("a")}))
        .await;
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("b")}))
        .await;
    // logrotate: move the file, then SIGHUP.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lines_or_empty(&log) < 2 {
        assert!(std::time::Instant::now() < deadline, "entries not written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::fs::rename(&log, &rotated).unwrap();
    signal(s.pid(), nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.logs().contains("audit log reopened") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reopen:\n{}",
            s.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("c")}))
        .await;
    let mut s = s;
    assert!(s.terminate().success());
    assert_eq!(lines(&rotated).len(), 2);
    assert_eq!(lines(&log).len(), 1);
    let (ok, out) = verify(&[&rotated, &log]);
    assert!(ok && out.contains("3 entries"), "{out}");
    // One path whose `.1` exists stands for the rotated set, oldest first.
    let (ok, out) = verify(&[&log]);
    assert!(ok && out.contains("3 entries"), "{out}");
    // The newer file alone is a chain continuing an earlier one.
    let alone = s.dir.path().join("newest.jsonl");
    std::fs::copy(&log, &alone).unwrap();
    let (ok, out) = verify(&[&alone]);
    assert!(
        ok && out.contains("continues from an earlier file"),
        "{out}"
    );
    let (ok, out) = verify(&[&log, &rotated]);
    assert!(!ok, "files out of order: {out}");
}

/// An audit file deleted (or replaced) without SIGHUP: the next write
/// notices that the path no longer names the open file, reopens it with a
/// warning, and the chain goes on in the new file — nothing is written to
/// the deleted file, and `audit verify` passes on the new one.
#[tokio::test]
async fn a_deleted_audit_file_is_reopened_and_the_chain_goes_on() {
    let mut s = Sidecar::start(&config()).await;
    let log = s.dir.path().join("audit.jsonl");
    for m in ["a", "b"] {
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64(m)}))
            .await;
    }
    assert_eq!(
        lines(&log).len(),
        2,
        "failing closed, lines are written before the answer"
    );
    let head = lines(&log)[1]["hash"].clone();
    std::fs::remove_file(&log).unwrap();
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("c")}))
        .await;
    let after = lines(&log);
    assert_eq!(after.len(), 1, "the line is in a new file at the path");
    assert_eq!(after[0]["prev"], head, "the chain goes on");
    // Replaced by another file (renamed over it): the same.
    let other = s.dir.path().join("other.jsonl");
    std::fs::write(&other, "").unwrap();
    std::fs::rename(&other, &log).unwrap();
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("d")}))
        .await;
    let replaced = lines(&log);
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0]["prev"], after[0]["hash"]);
    let (ok, out) = verify(&[&log]);
    assert!(
        ok && out.contains("continues from an earlier file"),
        "{out}"
    );
    let logs = s.logs();
    assert_eq!(
        logs.matches("the audit log file was removed or replaced")
            .count(),
        2,
        "a warning each time:\n{logs}"
    );
    assert!(s.terminate().success());
}

fn lines_or_empty(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test]
async fn ten_thousand_concurrent_requests_are_all_audited_through_sigterm() {
    let s = Sidecar::start(&config()).await;
    let log = s.dir.path().join("audit.jsonl");
    let pid = s.pid();
    let mut answered = HashSet::new();
    let mut sent_sigterm = false;
    let mut results = futures_util::stream::iter(0..12_000)
        .map(|i| {
            let s = &s;
            async move {
                s.try_request_with_id(
                    http::Method::POST,
                    "/v1/keys/aes/encrypt",
                    &format!("load-{i}"),
                    json!({"plaintext": b64("x")}),
                )
                .await
            }
        })
        .buffer_unordered(100);
    while let Some(result) = results.next().await {
        if let Some((status, id)) = result
            && status == 200
        {
            answered.insert(id);
        }
        if answered.len() == 10_000 && !sent_sigterm {
            // Requests are still in flight: SIGTERM drains them.
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            sent_sigterm = true;
        }
    }
    drop(results);
    let mut s = s;
    let status = s.wait_exit();
    assert!(status.success(), "{status}");
    assert!(answered.len() >= 10_000, "{}", answered.len());
    let entries = lines(&log);
    let logged: HashSet<String> = entries
        .iter()
        .map(|e| e["request_id"].as_str().unwrap().to_owned())
        .collect();
    let missing = answered.difference(&logged).count();
    assert_eq!(missing, 0, "answered requests missing from the audit log");
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    println!(
        "{} answered, {} audited: {out}",
        answered.len(),
        entries.len()
    );
}

#[tokio::test]
async fn replay_guarded_keys_refuse_reused_nonces_and_stale_timestamps() {
    let config = local_config(
        "  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256, replay_guard: true }\n  open: { backend: dev, key: open, algorithm: ecdsa-p256-sha256 }",
    );
    let s = Sidecar::start(&config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = bytes::Bytes::from(json!({"message": b64("pay bob")}).to_string());
    let send = |nonce: &str, ts: String| {
        let body = body.clone();
        let nonce = nonce.to_owned();
        let s = &s;
        async move {
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if !nonce.is_empty() {
                headers.push(("x-request-nonce", nonce));
            }
            if !ts.is_empty() {
                headers.push(("x-request-timestamp", ts));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.request(http::Method::POST, "/v1/keys/sig/sign", &headers, body)
                .await
        }
    };
    send("nonce-0001", now.to_string()).await.ok();
    send("nonce-0001", now.to_string())
        .await
        .expect(409, Some("replayed_request"));
    send("nonce-0002", (now - 301).to_string())
        .await
        .expect(409, Some("replayed_request"));
    send("nonce-0003", (now + 600).to_string())
        .await
        .expect(409, Some("replayed_request"));
    send("", now.to_string())
        .await
        .expect(400, Some("invalid_request"));
    send("nonce-0004", String::new())
        .await
        .expect(400, Some("invalid_request"));
    send("nonce-0004", (now - 30).to_string()).await.ok();
    // Keys without the guard ignore the headers.
    let plain = s
        .post_ok("/v1/keys/open/sign", json!({"message": b64("x")}))
        .await;
    assert!(plain["signature"].is_string());
}

/// Recomputes the whole chain after editing lines, as someone rewriting the
/// file would (the format is documented: SHA-256 of prev ‖ compact JSON).
fn rechain(text: &str, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> String {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in text.lines() {
        let Value::Object(mut map) = serde_json::from_str(line).unwrap() else {
            panic!("not an object")
        };
        edit(&mut map);
        map.remove("hash");
        map.insert("prev".into(), prev.clone().into());
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(Value::Object(map.clone()).to_string().as_bytes());
        prev = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        map.insert("hash".into(), prev.clone().into());
        out += &(Value::Object(map).to_string() + "\n");
    }
    out
}

#[tokio::test]
async fn signed_checkpoints_reveal_a_rewritten_log() {
    let config = local_config(
        "  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }\n  audit-signing: { backend: dev, key: audit-signing, algorithm: ecdsa-p256-sha256 }",
    ) + "audit: { path: \"{dir}/audit.jsonl\", checkpoint: { key: audit-signing, every_entries: 3 } }\n";
    let mut s = Sidecar::start(&config).await;
    for i in 0..7 {
        s.post_ok(
            "/v1/keys/sig/sign",
            json!({"message": b64(format!("m{i}"))}),
        )
        .await;
    }
    let pem = s.get("/v1/keys/audit-signing/public-key").await.ok()["pem"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(s.terminate().success());
    let log = s.dir.path().join("audit.jsonl");
    let key = s.dir.path().join("audit.pem");
    std::fs::write(&key, pem).unwrap();
    let verify_with_key = |file: &Path| {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--public-key"])
            .arg(&key)
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let text = std::fs::read_to_string(&log).unwrap();
    let checkpoints = text.matches("\"type\":\"checkpoint\"").count();
    // After entries 3 and 6 (7 and the public-key read make 8 entries), and at shutdown.
    assert_eq!(checkpoints, 3, "{text}");
    let (ok, out) = verify_with_key(&log);
    assert!(ok, "{out}");
    assert!(
        out.contains("8 entries") && out.contains("3 signed checkpoints verified; 0 entries after"),
        "{out}"
    );

    // Rewritten whole, with a consistent chain: the chain alone cannot tell,
    // the checkpoint signatures can.
    let forged = s.dir.path().join("forged.jsonl");
    std::fs::write(
        &forged,
        rechain(&text, |m| {
            if m.get("uid").is_some() {
                m.insert("uid".into(), json!(4242));
            }
        }),
    )
    .unwrap();
    let (ok, out) = verify(&[&forged]);
    assert!(ok, "a consistent rewrite passes the chain check: {out}");
    let (ok, out) = verify_with_key(&forged);
    assert!(!ok, "{out}");
    assert!(
        out.contains("forged.jsonl:4:") && out.contains("does not verify"),
        "{out}"
    );
}
