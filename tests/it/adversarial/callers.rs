//! Callers without a rule, memory held by bodies and answers, connections,
//! early answers to clients that write their body late, and `/metrics`.

use super::*;
use crate::harness::{Sidecar, b64};
use crate::harness::{hostile_client, run_as};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_uid_without_a_rule_is_refused_before_its_body_is_read() {
    let (uid, ruled) = outsider();
    let (mut s, cgroup) = start_limited(&config(ruled, "")).await;
    let socket = s.socket.display().to_string();
    // `{}` with no rule: 403, not "missing field `plaintext`" (400).
    let r = python_http(uid, &s, "POST", "/v1/keys/aes/encrypt", 0, 1);
    assert_eq!(count(&r, "codes", "forbidden"), 1, "{r}");
    // 300 connections each declaring 1 MiB and sending all but one byte
    // (the review: RSS 21 → 463 MB, OOM-killed in 64 MiB).
    let r = hostile_client(
        uid,
        &[
            "hold",
            &socket,
            "/v1/keys/sig/sign",
            "300",
            "1048576",
            "1048575",
            "10",
        ],
    );
    let forbidden = count(&r, "codes", "forbidden");
    assert!(forbidden >= 1, "{r}");
    assert_eq!(
        forbidden + r["closed"].as_u64().unwrap(),
        300,
        "every connection is answered 403 or closed, none left hanging: {r}"
    );
    assert_eq!(count(&r, "statuses", "200"), 0, "{r}");
    still_healthy(
        &mut s,
        &cgroup,
        "300 held 1 MiB bodies from a uid without a rule",
    )
    .await;
}

#[tokio::test]
async fn the_transit_api_refuses_a_uid_without_a_rule_before_its_body() {
    let (uid, ruled) = outsider();
    let compat = "compat: { vault_transit: { enabled: true } }\n";
    let (mut s, cgroup) = start_limited(&config(ruled, compat)).await;
    let socket = s.socket.display().to_string();
    let r = hostile_client(
        uid,
        &[
            "hold",
            &socket,
            "/v1/transit/encrypt/aes",
            "100",
            "1048576",
            "1048575",
            "10",
        ],
    );
    let forbidden = count(&r, "statuses", "403");
    assert!(forbidden >= 1, "{r}");
    assert_eq!(forbidden + r["closed"].as_u64().unwrap(), 100, "{r}");
    still_healthy(
        &mut s,
        &cgroup,
        "100 held 1 MiB transit bodies from a uid without a rule",
    )
    .await;
}

#[tokio::test]
async fn ruled_callers_holding_hundreds_of_bodies_stay_within_the_budget() {
    let me = nix::unistd::geteuid().as_raw();
    let (mut s, cgroup) = start_limited(&config(me, "limits: { body_timeout: 5s }\n")).await;
    let socket = s.socket.display().to_string();
    let r = hostile_client(
        None,
        &[
            "hold",
            &socket,
            "/v1/keys/aes/envelope/encrypt",
            "250",
            "1048576",
            "1048575",
            "12",
        ],
    );
    // At most 32 MiB of bodies are held: the rest wait a second and get a
    // retryable 503; the held ones time out with 408.
    let overloaded = count(&r, "codes", "overloaded");
    let timed_out = count(&r, "statuses", "408");
    assert!(overloaded >= 200, "{r}");
    assert_eq!(overloaded + timed_out, 250, "{r}");
    still_healthy(&mut s, &cgroup, "250 held 1 MiB bodies of a ruled caller").await;
    // 200 complete 1 MiB envelope encrypts whose answers are not read for
    // 5 s: the answers hold their share of the budget until written.
    let r = hostile_client(
        None,
        &[
            "hold",
            &socket,
            "/v1/keys/aes/envelope/encrypt",
            "200",
            "1048000",
            "1048000",
            "40",
            "5",
        ],
    );
    let (served, overloaded) = (
        count(&r, "statuses", "200"),
        count(&r, "codes", "overloaded"),
    );
    assert!(
        (16..=32).contains(&served),
        "at most 32 MiB of answers wait: {r}"
    );
    assert_eq!(served + overloaded, 200, "{r}");
    still_healthy(&mut s, &cgroup, "200 unread 1 MiB answers").await;
    // The budget is given back: a full-size body goes through again.
    let big = "x".repeat(700_000);
    s.post_ok(
        "/v1/keys/aes/envelope/encrypt",
        json!({"plaintext": b64(&big)}),
    )
    .await;
}

/// The review: while one ruled uid (granted only `encrypt`) held 200
/// unfinished 1 MiB bodies, every 30-byte sign of another caller got 503
/// `overloaded` for the whole 5 s.
#[tokio::test]
async fn a_caller_holding_its_share_of_bodies_does_not_starve_small_requests() {
    let me = nix::unistd::geteuid().as_raw();
    // The hog is another uid when we can act as one; else a second
    // connection pool of ours would share our own share.
    assert!(
        is_root(),
        "this test runs clients as other uids: run the suite as root (CI does)"
    );
    let hog = 65533;
    let extra = format!(
        "  - {{ uids: [{hog}], keys: [aes], ops: [encrypt] }}\nlimits: {{ body_timeout: 8s }}\n"
    );
    let (mut s, cgroup) = start_limited(&config(me, &extra)).await;
    let socket = s.socket.display().to_string();
    let hold = std::thread::spawn(move || {
        hostile_client(
            Some(hog),
            &[
                "hold",
                &socket,
                "/v1/keys/aes/encrypt",
                "200",
                "1048576",
                "1048575",
                "6",
            ],
        )
    });
    // While the hog holds all it may, small requests of others are served.
    let refused = r#"kms_sidecar_requests_total{code="overloaded",key="aes",op="encrypt"} "#;
    crate::harness::eventually(
        Duration::from_secs(5),
        "the hog holds its share",
        || async { s.metric(refused).await >= 150.0 },
    )
    .await;
    for i in 0..20 {
        let r = s
            .post(
                "/v1/keys/sig/sign",
                json!({"message": b64(format!("small {i}"))}),
            )
            .await;
        r.expect(200, None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = hold.join().unwrap();
    assert!(
        count(&r, "codes", "overloaded") >= 150,
        "the hog got its share only: {r}"
    );
    still_healthy(&mut s, &cgroup, "a caller holding its share of bodies").await;
}

#[tokio::test]
async fn python_clients_get_early_answers_instead_of_broken_pipes() {
    let (uid, ruled) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(
        me,
        &format!(
            "  - {{ uids: [{ruled}], keys: [sig], ops: [sign] }}\nlimits: {{ per_caller: {{ rate: 5/s, burst: 5 }} }}\n"
        ),
    ))
    .await;
    s.open_to_other_uids();
    // 413 from Content-Length, for a body over limits.max_body (1 MiB).
    let r = python_http(
        None,
        &s,
        "POST",
        "/v1/keys/aes/envelope/encrypt",
        1153434,
        3,
    );
    assert_eq!(count(&r, "codes", "payload_too_large"), 3, "{r}");
    assert_eq!(r["errors"], json!({}), "no broken pipes: {r}");
    // 429s from the rate limit, with Retry-After.
    let r = python_http(None, &s, "POST", "/v1/keys/sig/sign", 200, 30);
    assert!(count(&r, "codes", "rate_limited") >= 20, "{r}");
    assert_eq!(r["errors"], json!({}), "no broken pipes: {r}");
    assert!(
        r["retry_after"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v == "1"),
        "{r}"
    );
    // 403 for a uid whose rule does not grant the key, with a 1 MiB body.
    if uid.is_some() {
        let r = python_http(uid, &s, "POST", "/v1/keys/aes/encrypt", 1000000, 3);
        assert_eq!(count(&r, "codes", "forbidden"), 3, "{r}");
        assert_eq!(r["errors"], json!({}), "{r}");
    }
}

#[tokio::test]
async fn no_uid_can_lock_the_others_out_with_idle_connections() {
    let (uid, _) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    // The ruled uid is another one when we can act as it.
    let friend = if is_root() { 65533 } else { me };
    let s = Sidecar::start(&config(
        me,
        &format!("  - {{ uids: [{friend}], keys: [sig], ops: [sign] }}\n"),
    ))
    .await;
    s.open_to_other_uids();
    let socket = s.socket.display().to_string();
    let rss_before = s.rss();
    // 4,100 idle connections from a uid without a rule (the review: every
    // other connection closed at accept, +59 MB).
    let hold = {
        let socket = socket.clone();
        std::thread::spawn(move || hostile_client(uid, &["idle", &socket, "4100", "4"]))
    };
    // While they are open, a ruled caller still gets in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, out, err) = s.curl_as(
        is_root().then_some(friend),
        "/v1/keys/sig/sign",
        &json!({"message": b64("x")}),
    );
    assert!(
        ok && out.ends_with("\n200"),
        "a ruled uid is served: {out} {err}"
    );
    assert!(
        s.rss() < rss_before + 16 * MIB,
        "idle connections cost little memory"
    );
    let r = hold.join().unwrap();
    assert!(
        r["refused"].as_u64().unwrap() >= 4100 - 64,
        "at most 64 connections of unknown uids: {r}"
    );
    assert_eq!(
        r["closed"].as_u64().unwrap(),
        4100,
        "and they are closed within seconds: {r}"
    );
    // A ruled uid is capped too (limits.max_connections_per_caller).
    let r = hostile_client(is_root().then_some(friend), &["idle", &socket, "300", "0"]);
    assert_eq!(r["refused"], 300 - 256, "{r}");
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("me")}))
        .await;
}

/// The review: a root app container with a `gids` rule opened 4,096 idle
/// connections by switching uids (the cap was per uid) and the sidecar was
/// OOM-killed in 64 MiB within 4 s.
#[tokio::test]
async fn switching_uids_cannot_open_more_connections_than_memory_allows() {
    assert!(
        is_root(),
        "this test connects as other uids: run the suite as root (CI does)"
    );
    let me = nix::unistd::geteuid().as_raw();
    // A gid rule names no uid: every uid of gid 4242 is one caller.
    // 1,100 uids named one by one are 1,100 callers.
    let many: Vec<String> = (30000..31100).map(|u| u.to_string()).collect();
    let extra = format!(
        "  - {{ gids: [4242], keys: [sig], ops: [sign] }}\n  - {{ uids: [{}], keys: [sig], ops: [sign] }}\n",
        many.join(", ")
    );
    let (mut s, cgroup) = start_limited(&config(me, &extra)).await;
    let socket = s.socket.display().to_string();
    let r = hostile_client(None, &["idle-uids", &socket, "4096", "1", "4242", "20000"]);
    // (Connections the sidecar had not yet closed when the client looked
    // count as opened: at least, not exactly.)
    assert!(
        r["refused"].as_u64().unwrap() >= 4096 - 256,
        "gid 4242 is one caller: {r}"
    );
    still_healthy(
        &mut s,
        &cgroup,
        "4,096 connections of one gid, each another uid",
    )
    .await;
    // Callers named one by one: the total cap (limits.max_connections,
    // 1,024 by default) holds, and fits the 64 MiB the webhook sets.
    let r = hostile_client(None, &["idle-uids", &socket, "1100", "1", "4243", "30000"]);
    assert!(r["refused"].as_u64().unwrap() >= 1100 - 1024, "{r}");
    still_healthy(&mut s, &cgroup, "1,024 idle connections of 1,024 callers").await;
}

/// The review: a uid with no rule deleted `kms.sock` and listened in its
/// place; the other containers' verifies then answered `valid: true` for a
/// tampered message and their plaintexts went to it, while the sidecar
/// stayed ready. (The webhook also mounts the socket read-only into app
/// containers, so that they cannot: `webhook.rs`.)
#[tokio::test]
async fn a_socket_taken_over_by_another_process_is_taken_back() {
    use std::os::unix::fs::PermissionsExt;
    let (uid, ruled) = outsider();
    let s = Sidecar::start(&config(ruled, "")).await;
    // The socket's directory is writable by every container (an emptyDir).
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = s.socket.display().to_string();
    let squat = std::thread::spawn(move || hostile_client(uid, &["squat", &socket, "6"]));
    crate::harness::eventually(Duration::from_secs(5), "the sidecar notices", || async {
        s.logs()
            .contains("the socket was removed or replaced by another process")
    })
    .await;
    crate::harness::eventually(
        Duration::from_secs(5),
        "the path is the sidecar's again",
        || async {
            s.try_get("/healthz")
                .await
                .is_some_and(|r| String::from_utf8_lossy(&r.body).contains(r#""status":"ok""#))
        },
    )
    .await;
    // Requests on the path reach the sidecar, not the squatter.
    let forged = json!({"message": b64("tampered"), "signature": b64([7u8; 64])});
    let v = s
        .post("/v1/keys/sig/verify", forged)
        .await
        .expect(200, None);
    assert_eq!(v["valid"], false, "{v}");
    let r = squat.join().unwrap();
    assert_eq!(
        r["taken"], true,
        "the squatter did take the path at first: {r}"
    );
    assert_eq!(s.metric("kms_sidecar_socket_replaced_total ").await, 1.0);
    assert_eq!(s.metric("kms_sidecar_socket_bound ").await, 1.0);
    assert_eq!(s.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn metrics_on_the_socket_need_the_metrics_grant() {
    let (uid, ruled) = outsider();
    let me = nix::unistd::geteuid().as_raw();
    let s = Sidecar::start(&config(me, "")).await;
    s.open_to_other_uids();
    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(text.contains("kms_sidecar_"), "\"*\" includes `metrics`");
    if uid.is_some() {
        let r = python_http(uid, &s, "GET", "/metrics", 0, 1);
        assert_eq!(count(&r, "codes", "forbidden"), 1, "{r}");
    }
    drop(s);
    // A rule that grants key operations only (the "*" rule is another uid's).
    let s = Sidecar::start(&config(
        ruled + 1,
        &format!("  - {{ uids: [{me}], keys: [sig], ops: [sign, verify] }}\n"),
    ))
    .await;
    s.get("/metrics").await.expect(403, Some("forbidden"));
    let listed = s.get("/v1/keys").await.ok();
    assert_eq!(
        listed["keys"][0]["ops"],
        json!(["sign", "verify"]),
        "a listing shows what this caller may do: {listed}"
    );
}

#[tokio::test]
async fn the_probe_listener_shows_key_labels_as_configured() {
    let me = nix::unistd::geteuid().as_raw();
    for (labels, shows_alias, shows_key_label) in [
        ("alias", true, true),
        ("hashed", false, true),
        ("none", false, false),
    ] {
        let port = crate::harness::free_port();
        let s = Sidecar::start_with_env(
            &config(me, &format!("metrics: {{ key_labels: {labels} }}\n")),
            &[("KMS_SIDECAR_LISTEN__PROBES", &format!("127.0.0.1:{port}"))],
        )
        .await;
        s.post_ok("/v1/keys/sig/sign", json!({"message": b64("m")}))
            .await;
        let (ok, text, err) = run_as(
            None,
            "curl",
            &["-sf", &format!("http://127.0.0.1:{port}/metrics")],
        );
        assert!(ok, "{err}");
        let line = text
            .lines()
            .find(|l| l.starts_with("kms_sidecar_requests_total") && l.contains("op=\"sign\""))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(line.contains("\"sig\""), shows_alias, "{labels}: {line}");
        assert_eq!(line.contains("key="), shows_key_label, "{labels}: {line}");
        // The socket's /metrics, for a granted caller, always names aliases.
        let socket = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
        assert!(socket.contains("key=\"sig\""), "{labels}");
    }
}
