//! The socket is the trust boundary: peer credentials decide, no rule means
//! 403, and the socket gets its configured mode.

use crate::harness::{Sidecar, b64, is_root};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn a_caller_without_a_rule_is_forbidden() {
    let me = nix::unistd::geteuid().as_raw();
    // As root, the client really runs as another uid (setpriv); otherwise the
    // rule names a uid that is not ours.
    let other = if is_root() { 65534 } else { me + 1 };
    let config = format!(
        r#"listen: {{ mode: "0666" }}
backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}
callers:
  - {{ uids: [{me}], keys: ["*"], ops: ["*"] }}
"#
    );
    if is_root() {
        let s = Sidecar::start(&config).await;
        assert_eq!(
            std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777,
            0o666
        );
        s.open_to_other_uids();
        let body = json!({"message": b64("from another uid")});
        let curl = |uid: u32| {
            let (_, out, err) = s.curl_as(Some(uid), "/v1/keys/sig/sign", &body);
            assert!(err.is_empty(), "{err}");
            out
        };
        let out = curl(other);
        assert!(out.ends_with("\n403"), "uid {other} must be refused: {out}");
        assert!(out.contains(r#""code":"forbidden""#), "{out}");
        assert!(out.contains(&format!("caller uid {other}")), "{out}");
        let out = curl(0);
        assert!(out.ends_with("\n200"), "root has a rule: {out}");
    } else {
        let s =
            Sidecar::start(&config.replace(&format!("uids: [{me}]"), &format!("uids: [{other}]")))
                .await;
        let r = s
            .post("/v1/keys/sig/sign", json!({"message": b64("not mine")}))
            .await;
        r.expect(403, Some("forbidden"));
        let list = s.get("/v1/keys").await.ok();
        assert_eq!(
            list["keys"],
            json!([]),
            "a caller sees no keys it may not use"
        );
    }
}

#[tokio::test]
async fn rules_select_keys_and_operations() {
    let me = nix::unistd::geteuid().as_raw();
    let config = format!(
        r#"backends:
  dev: {{ type: local, dir: "{{dir}}/keys" }}
keys:
  payments-signing: {{ backend: dev, key: p, algorithm: ecdsa-p256-sha256 }}
  payments-verify:  {{ backend: dev, key: p }}
  pii:              {{ backend: dev, key: pii, algorithm: aes-256-gcm }}
callers:
  - {{ uids: [{me}], keys: ["payments-*"], ops: [sign, verify, public_key] }}
"#
    );
    let s = Sidecar::start(&config).await;
    let sig = s
        .post_ok(
            "/v1/keys/payments-signing/sign",
            json!({"message": b64("m")}),
        )
        .await;
    let v = s
        .post_ok(
            "/v1/keys/payments-verify/verify",
            json!({"message": b64("m"), "signature": sig["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true, "two aliases of one key");
    s.post("/v1/keys/pii/encrypt", json!({"plaintext": b64("p")}))
        .await
        .expect(403, Some("forbidden"));
    s.post("/v1/keys/nonexistent/sign", json!({"message": b64("m")}))
        .await
        .expect(403, Some("forbidden"));
    s.get("/v1/keys/payments-signing")
        .await
        .expect(403, Some("forbidden"));
    let list = s.get("/v1/keys").await.ok();
    let names: Vec<_> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["payments-signing", "payments-verify"]);
}

#[tokio::test]
async fn the_socket_gets_the_configured_mode() {
    // 0640: not what binding under the sidecar's umask (0177) gives by itself.
    let config =
        crate::harness::local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
            + "listen: { mode: \"0640\" }\n";
    let s = Sidecar::start(&config).await;
    let meta = std::fs::metadata(&s.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let keys = std::fs::metadata(s.dir.path().join("keys")).unwrap();
    assert_eq!(keys.permissions().mode() & 0o777, 0o700);
    let file = std::fs::metadata(s.dir.path().join("keys/k.json")).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn the_socket_gets_the_configured_group() {
    // A group the socket would not have anyway: as root any gid (the
    // sidecar's is 0); otherwise one of our supplementary groups, if any.
    let own = nix::unistd::getegid();
    let gid = if is_root() {
        65533
    } else {
        match nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .find(|g| *g != own)
        {
            Some(g) => g.as_raw(),
            None => panic!(
                "this test needs a supplementary group other than the primary one, or root (as `make test` in CI runs)"
            ),
        }
    };
    assert_ne!(gid, own.as_raw());
    let config =
        crate::harness::local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
            + &format!("listen: {{ group: \"{gid}\" }}\n");
    let s = Sidecar::start(&config).await;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&s.socket).unwrap().gid(), gid);
    drop(s);
    let config =
        crate::harness::local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
            + "listen: { group: no-such-group-kms }\n";
    let (code, _, err) = crate::harness::run_with_config(&["serve", "--config"], &config, &[]);
    assert_eq!(code, Some(2), "a config error (SPEC §2): {err}");
    assert!(
        err.contains("group `no-such-group-kms` does not exist"),
        "{err}"
    );
}
