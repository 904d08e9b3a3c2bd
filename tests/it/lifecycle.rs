//! Start-up and shutdown: stale and live sockets, SIGTERM drains in-flight
//! requests and removes the socket, many concurrent connections.

use crate::harness::{BIN, Sidecar, b64, local_config, signal, spawn_binary, wait_timeout};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_removes_the_socket() {
    let config = local_config("  big: { backend: dev, key: big, algorithm: rsa-pss-4096-sha256 }");
    let mut s = Sidecar::start(&config).await;
    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A batch of RSA-4096 signatures takes a while: it is in flight at SIGTERM.
    let items: Vec<_> = (0..64)
        .map(|i| json!({"message": b64(format!("in flight {i}"))}))
        .collect();
    let body = json!({"items": items}).to_string();
    let request = format!(
        "POST /v1/keys/big/sign-batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut busy = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    busy.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    signal(s.pid(), nix::sys::signal::Signal::SIGTERM);

    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), busy.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the in-flight request completed: {response}"
    );
    assert_eq!(response.matches("\"signatures\"").count(), 1);
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!s.socket.exists(), "the socket file is removed");
    assert!(started.elapsed() < Duration::from_secs(10));
    let logs = s.logs();
    assert!(logs.contains("draining in-flight requests"), "{logs}");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    // A socket file nobody listens on (left behind by a crash).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let config = local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
        .replace("{dir}", &dir.path().display().to_string());
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let env = [("KMS_SIDECAR_LISTEN__SOCKET", socket.to_str().unwrap())];
    let args = ["serve", "--config", config_path.to_str().unwrap()];
    let mut first = spawn_binary(dir.path(), &args, &env, &dir.path().join("first.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "first sidecar did not start");
        assert!(
            first.try_wait().unwrap().is_none(),
            "first sidecar exited: {}",
            std::fs::read_to_string(dir.path().join("first.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second sidecar on the same path refuses to take over.
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("KMS_SIDECAR_LISTEN__SOCKET", &socket)
        .env("KMS_SIDECAR_LOG__FORMAT", "text")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "runtime failure exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process is listening"), "{stderr}");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the first sidecar still serves"
    );
    signal(first.id() as i32, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_timeout(&mut first, Duration::from_secs(20)).success());
    // A regular file in the way is never deleted.
    std::fs::write(&socket, "not a socket").unwrap();
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("KMS_SIDECAR_LISTEN__SOCKET", &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[tokio::test]
async fn twelve_hundred_concurrent_connections_are_served() {
    // Our side of the test needs the descriptors too.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    if hard < 3000 {
        panic!(
            "this test needs an open-file hard limit of at least 3000 (have {hard}); raise it with `ulimit -Hn`"
        );
    }
    // One uid stands in for many app containers here: its cap
    // (limits.max_connections_per_caller, 256 by default) is raised.
    let config = local_config(
        "  ecdsa-p256: { backend: dev, key: ecdsa-p256, algorithm: ecdsa-p256-sha256 }",
    ) + "limits: { max_connections: 2000, max_connections_per_caller: 2000 }\n";
    let s = Sidecar::start(&config).await;
    let mut conns = Vec::new();
    for _ in 0..1200 {
        conns.push(tokio::net::UnixStream::connect(&s.socket).await.unwrap());
    }
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let body = json!({"message": b64(format!("conn {i}"))}).to_string();
            for _ in 0..2 {
                let req = format!(
                    "POST /v1/keys/ecdsa-p256/sign HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(req.as_bytes()).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            }
            c
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let m = s.get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let open: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kms_sidecar_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        open >= 1200,
        "all connections are kept alive at once: {open}"
    );
    assert!(
        text.contains(r#"kms_sidecar_requests_total{code="ok",key="ecdsa-p256",op="sign"} 2400"#)
    );
    drop(held);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_counted() {
    let config = local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
        + "limits: { max_connections: 3 }\n";
    // The harness client keeps one pooled connection from start-up: with two
    // more, the limit is reached.
    let s = Sidecar::start(&config).await;
    let a = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    let b = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    let _ = c
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed unanswered");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = s.get("/metrics").await;
    assert!(String::from_utf8_lossy(&m.body).contains("kms_sidecar_connections_rejected_total 1"));
}

#[tokio::test]
async fn probes_listen_on_tcp_without_key_operations() {
    let port = crate::harness::free_port();
    let config = local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
        + &format!("listen: {{ probes: \"127.0.0.1:{port}\" }}\n");
    let s = Sidecar::start(&config).await;
    let get = |path: &'static str| async move {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).to_string()
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/metrics").await.contains("kms_sidecar_requests_total"));
    let keys = get("/v1/keys").await;
    assert!(keys.starts_with("HTTP/1.1 404"), "{keys}");
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = json!({"message": b64("m")}).to_string();
    c.write_all(format!("POST /v1/keys/k/mac HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 404"));
    drop(s);
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let config = local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
        + "limits: { header_timeout: 1s }\n";
    let s = Sidecar::start(&config).await;
    let mut slow = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap(); // never finishes
    let mut idle = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    let started = Instant::now();
    for conn in [&mut slow, &mut idle] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was closed by the sidecar");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn sigint_stops_cleanly_too() {
    let mut s = Sidecar::start(&local_config(
        "  k: { backend: dev, key: k, algorithm: hmac-sha256 }",
    ))
    .await;
    signal(s.pid(), nix::sys::signal::Signal::SIGINT);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!s.socket.exists());
}

/// `kms-sidecar probe`, the exec probe the webhook gives hostNetwork pods:
/// 0 when the sidecar answers 200 over its socket, 1 otherwise; and the
/// YAML null the webhook sets there (`KMS_SIDECAR_LISTEN__PROBES=null`)
/// turns the TCP listener off even when the config has one.
#[tokio::test]
async fn exec_probes_ask_over_the_socket_and_null_turns_the_tcp_listener_off() {
    let port = crate::harness::free_port();
    let config = local_config("  k: { backend: dev, key: k, algorithm: hmac-sha256 }")
        + &format!("listen: {{ probes: \"127.0.0.1:{port}\" }}\n");
    let s = Sidecar::start_with_env(&config, &[("KMS_SIDECAR_LISTEN__PROBES", "null")]).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "no TCP listener"
    );
    let probe = |socket: &std::path::Path, path: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
            .args(["probe", "--socket"])
            .arg(socket)
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = probe(&s.socket, "/readyz");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"status\":\"ready\""), "{out}");
    assert_eq!(probe(&s.socket, "/healthz").0, Some(0));
    let (code, out) = probe(&s.socket.with_extension("gone"), "/readyz");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot connect"), "{out}");
    // Only the two probe paths.
    assert_eq!(probe(&s.socket, "/v1/keys").0, Some(2));
    drop(s);
}
