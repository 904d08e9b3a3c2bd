//! Envelope encryption over the socket: JSON and streamed, tampering, the
//! data-key cache seen through the metrics, rotation, constant memory.

use crate::harness::{Resp, Sidecar, b64, local_config, unb64};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

const STREAM: &str = "application/octet-stream";

fn config() -> String {
    local_config(r#"  pii: { backend: dev, key: pii, algorithm: aes-256-gcm, ops: ["*"] }"#)
        + "limits: { max_body: 4MiB }\n"
}

/// The value of a metric line, 0 when absent.
fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn metrics(s: &Sidecar) -> String {
    String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap()
}

const GENERATED: &str =
    r#"kms_sidecar_datakey_cache_backend_calls_total{key="pii",op="generate_data_key"} "#;

/// Deterministic test data: chunk `i` of a stream.
fn chunk(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(131) ^ j.wrapping_mul(7)) as u8)
        .collect()
}

/// Streams a body through an envelope route; returns the status, the bytes
/// received and whether the body ended cleanly.
async fn stream(
    s: &Sidecar,
    op: &str,
    context: Option<&str>,
    body: Vec<Bytes>,
) -> (u16, Vec<u8>, bool) {
    let frames = futures_util::stream::iter(
        body.into_iter()
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let mut headers = vec![("content-type", STREAM)];
    if let Some(c) = context {
        headers.push(("x-encryption-context", c));
    }
    let resp = s
        .stream_request(
            &format!("/v1/keys/pii/envelope/{op}"),
            &headers,
            StreamBody::new(frames),
        )
        .await;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            None => return (status, out, true),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Some(Err(_)) => return (status, out, false),
        }
    }
}

#[tokio::test]
async fn json_envelopes_round_trip() {
    let s = Sidecar::start(&config()).await;
    let ctx = json!({"tenant": "acme", "table": "users"});
    for size in [0usize, 1, 1 << 20] {
        let plain = chunk(size, size);
        let enc = s
            .post_ok(
                "/v1/keys/pii/envelope/encrypt",
                json!({"plaintext": b64(&plain), "context": ctx}),
            )
            .await;
        assert_eq!(enc["version"], "1");
        let env = unb64(&enc["envelope"]);
        assert_eq!(&env[..4], b"KSE1");
        let dec = s
            .post_ok(
                "/v1/keys/pii/envelope/decrypt",
                json!({"envelope": enc["envelope"], "context": ctx}),
            )
            .await;
        assert_eq!(unb64(&dec["plaintext"]), plain, "{size} bytes");
    }
    // The streaming decoder opens only streamed envelopes; JSON opens both.
    let (status, streamed, clean) = stream(
        &s,
        "encrypt",
        Some(r#"{"tenant":"acme"}"#),
        vec![Bytes::from_static(b"streamed then json")],
    )
    .await;
    assert!(status == 200 && clean);
    let dec = s
        .post_ok(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64(&streamed), "context": {"tenant": "acme"}}),
        )
        .await;
    assert_eq!(unb64(&dec["plaintext"]), b"streamed then json");
}

#[tokio::test]
async fn tampered_envelopes_fail_without_plaintext() {
    let s = Sidecar::start(&config()).await;
    let ctx = json!({"tenant": "acme"});
    let enc = s
        .post_ok(
            "/v1/keys/pii/envelope/encrypt",
            json!({"plaintext": b64("account 12345 balance 99"), "context": ctx}),
        )
        .await;
    let env = unb64(&enc["envelope"]);
    let h = u32::from_be_bytes(env[4..8].try_into().unwrap()) as usize;
    // One offset inside each header field, then the body.
    let alias = 8 + 2;
    let version = alias + 3 + 2;
    let key_ref = version + 1 + 2;
    let wrapped = key_ref + 3 + 2;
    let header_end = 8 + h;
    let (message_id, commitment, algorithm) = (header_end - 65, header_end - 33, header_end - 1);
    let fields = [
        ("magic", 0),
        ("header length", 7),
        ("alias", alias),
        ("wrapped DEK", wrapped + 5),
        ("message id", message_id + 3),
        ("commitment", commitment + 3),
        ("algorithm id", algorithm),
        ("ciphertext", header_end + 2),
        ("tag", env.len() - 1),
    ];
    let refused = |r: Resp, what: &str| {
        let v = r.expect(422, Some("decryption_failed"));
        assert!(v.get("plaintext").is_none(), "{what}");
    };
    for (what, at) in fields {
        let mut bad = env.clone();
        bad[at] ^= 0x04;
        refused(
            s.post(
                "/v1/keys/pii/envelope/decrypt",
                json!({"envelope": b64(&bad), "context": ctx}),
            )
            .await,
            what,
        );
    }
    // The key version and backend key reference are outside the AAD (a
    // rewrap replaces them), but not free text: they must be what the KMS
    // reported for the unwrap. Every byte of both, lengths included, after
    // a restart (the backend unwraps the data key, then it is cached), and
    // again. (`conformance::*::envelope_headers_name_the_version_and_key_that_unwrap`
    // has the backend unwrap for every byte, on every backend.)
    let hints = (version - 2)..(wrapped - 2);
    assert_eq!(hints.len(), 2 + 1 + 2 + 3, "version `1`, reference `pii`");
    let s = s.restart().await;
    for pass in ["first pass", "second pass"] {
        for at in hints.clone() {
            let mut hint = env.clone();
            hint[at] ^= 0x04;
            for op in ["decrypt", "rewrap"] {
                let r = s
                    .post(
                        &format!("/v1/keys/pii/envelope/{op}"),
                        json!({"envelope": b64(&hint), "context": ctx}),
                    )
                    .await;
                refused(r, &format!("{op}: byte {at} of the header flipped, {pass}"));
            }
        }
    }
    refused(
        s.post(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64(&env[..env.len() - 1]), "context": ctx}),
        )
        .await,
        "truncated",
    );
    refused(
        s.post(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64([&env[..], b"x"].concat()), "context": ctx}),
        )
        .await,
        "extended",
    );
    refused(
        s.post(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64(&env), "context": {"tenant": "evil"}}),
        )
        .await,
        "wrong context",
    );
    refused(
        s.post(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64(&env)}),
        )
        .await,
        "no context",
    );
    refused(
        s.post(
            "/v1/keys/pii/envelope/decrypt",
            json!({"envelope": b64("not an envelope at all")}),
        )
        .await,
        "garbage",
    );
    // Still fine untouched.
    s.post_ok(
        "/v1/keys/pii/envelope/decrypt",
        json!({"envelope": enc["envelope"], "context": ctx}),
    )
    .await;
}

#[tokio::test]
async fn streamed_envelopes_detect_every_reordering_and_cut() {
    let s = Sidecar::start(&config()).await;
    let ctx = r#"{"tenant":"acme"}"#;
    let plain: Vec<u8> = (0..5).flat_map(|i| chunk(i, 60_000)).collect(); // 300 000 bytes: 5 segments
    let parts: Vec<Bytes> = plain.chunks(7_777).map(Bytes::copy_from_slice).collect();
    let (status, env, clean) = stream(&s, "encrypt", Some(ctx), parts).await;
    assert!(status == 200 && clean);
    let (status, back, clean) =
        stream(&s, "decrypt", Some(ctx), vec![Bytes::from(env.clone())]).await;
    assert!(status == 200 && clean && back == plain, "round trip");

    let h = 8 + u32::from_be_bytes(env[4..8].try_into().unwrap()) as usize;
    let seg = 65_536 + 16;
    let (head, body) = env.split_at(h);
    let segs: Vec<&[u8]> = body.chunks(seg).collect();
    assert_eq!(segs.len(), 5);
    let join = |order: &[usize]| {
        Bytes::from(
            [
                head.to_vec(),
                order.iter().flat_map(|&i| segs[i].to_vec()).collect(),
            ]
            .concat(),
        )
    };
    // Failures in a later segment: the answer has started, so it is aborted,
    // and nothing past the last good segment boundary was sent.
    for (what, body, good_segments) in [
        ("swapped", join(&[0, 2, 1, 3, 4]), 1),
        ("duplicated", join(&[0, 1, 1, 2, 3, 4]), 2),
        ("truncated at a boundary", join(&[0, 1, 2, 3]), 3),
        (
            "extended",
            Bytes::from([env.clone(), vec![1u8; 100]].concat()),
            4,
        ),
        (
            "flipped byte in segment 3",
            {
                let mut b = env.clone();
                b[h + 3 * seg + 10] ^= 1;
                Bytes::from(b)
            },
            3,
        ),
    ] {
        let (status, got, clean) = stream(&s, "decrypt", Some(ctx), vec![body]).await;
        assert_eq!(status, 200, "{what}: the first segment was good");
        assert!(!clean, "{what}: the response must not end cleanly");
        assert!(
            got.len() <= good_segments * 65_536,
            "{what}: {} bytes were sent",
            got.len()
        );
        assert_eq!(
            &got[..],
            &plain[..got.len()],
            "{what}: only authenticated plaintext"
        );
    }
    // Failures up to the first segment are plain errors.
    let mut bad_first = env.clone();
    bad_first[h + 5] ^= 1;
    for (what, body, context) in [
        (
            "flipped byte in segment 0",
            Bytes::from(bad_first),
            Some(ctx),
        ),
        (
            "wrong context",
            Bytes::from(env.clone()),
            Some(r#"{"tenant":"evil"}"#),
        ),
        ("no context", Bytes::from(env.clone()), None),
        ("header only", Bytes::copy_from_slice(head), Some(ctx)),
        (
            "garbage",
            Bytes::from_static(b"this is not an envelope"),
            Some(ctx),
        ),
    ] {
        let (status, got, _) = stream(&s, "decrypt", context, vec![body]).await;
        assert_eq!(status, 422, "{what}");
        let err: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(err["error"]["code"], "decryption_failed", "{what}");
    }
    let (status, got, _) = stream(
        &s,
        "encrypt",
        Some("{not json"),
        vec![Bytes::from_static(b"x")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&got).contains("x-encryption-context"));
}

#[tokio::test]
async fn two_hundred_mib_stream_in_constant_memory() {
    let s = Sidecar::start(&config()).await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 800; // 200 MiB
    let ctx = r#"{"bucket":"backups"}"#;
    let frames = futures_util::stream::iter(0..CHUNKS)
        .map(|i| Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk(i, CHUNK)))));
    let resp = s
        .stream_request(
            "/v1/keys/pii/envelope/encrypt",
            &[("content-type", STREAM), ("x-encryption-context", ctx)],
            StreamBody::new(frames),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let path = s.dir.path().join("big.envelope");
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut body = resp.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("clean encrypt stream").into_data() {
            written += d.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &d)
                .await
                .unwrap();
        }
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await.unwrap();
    let segments = (CHUNK * CHUNKS).div_ceil(65_536) as u64;
    assert!(
        written > (CHUNK * CHUNKS) as u64 + 16 * segments,
        "{written}"
    );

    let file = tokio::fs::File::open(&path).await.unwrap();
    let reader = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
            .await
            .unwrap();
        (n > 0).then(|| {
            buf.truncate(n);
            (Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))), f)
        })
    });
    let resp = s
        .stream_request(
            "/v1/keys/pii/envelope/decrypt",
            &[("content-type", STREAM), ("x-encryption-context", ctx)],
            StreamBody::new(reader),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut pos, mut pending) = (0usize, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("clean decrypt stream").into_data() {
            pending.extend_from_slice(&d);
            while pending.len() >= CHUNK {
                assert!(
                    pending[..CHUNK] == chunk(pos, CHUNK)[..],
                    "chunk {pos} differs"
                );
                pending.drain(..CHUNK);
                pos += 1;
            }
        }
    }
    assert_eq!((pos, pending.len()), (CHUNKS, 0), "all 200 MiB came back");
    let peak = s.peak_rss();
    assert!(
        peak < 64 << 20,
        "the sidecar's peak RSS was {} MiB",
        peak >> 20
    );
}

#[tokio::test]
async fn ten_thousand_encrypts_make_one_data_key_call() {
    let s = std::sync::Arc::new(Sidecar::start(&config()).await);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..625 {
                    let body = json!({"plaintext": b64(format!("row {t}-{i}")), "context": {"table": "orders"}});
                    let r = s.post("/v1/keys/pii/envelope/encrypt", body).await;
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = metrics(&s).await;
    assert_eq!(
        metric(&m, GENERATED),
        1,
        "10,000 encrypts within one TTL: one data key\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_datakey_cache_misses_total{key="pii",op="encrypt"} "#
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_datakey_cache_hits_total{key="pii",op="encrypt"} "#
        ),
        9_999,
        "KMS calls saved"
    );
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_requests_total{code="ok",key="pii",op="envelope_encrypt"} "#
        ),
        10_000
    );
}

#[tokio::test]
async fn a_hundred_concurrent_first_requests_make_one_data_key_call() {
    let s = std::sync::Arc::new(Sidecar::start(&config()).await);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let body = json!({"plaintext": b64(format!("first {i}")), "context": {"tenant": "brand-new"}});
                s.post("/v1/keys/pii/envelope/encrypt", body).await.status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(metric(&metrics(&s).await, GENERATED), 1);
}

#[tokio::test]
async fn a_short_ttl_is_refreshed_ahead_and_counted() {
    let config = config() + "cache: { data_keys: { ttl: 1s, refresh_ahead: 500ms } }\n";
    let s = Sidecar::start(&config).await;
    let body = || json!({"plaintext": b64("refresh me"), "context": {"t": "1"}});
    s.post_ok("/v1/keys/pii/envelope/encrypt", body()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    s.post_ok("/v1/keys/pii/envelope/encrypt", body()).await;
    let m = metrics(&s).await;
    // One at the start, a refresh at ~500 ms (and maybe another started by the
    // second request, which found its key due), none on the request path.
    assert!(metric(&m, GENERATED) >= 2, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_datakey_cache_misses_total{key="pii",op="encrypt"} "#
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_datakey_cache_hits_total{key="pii",op="encrypt"} "#
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn old_envelopes_decrypt_after_rotation_and_restart() {
    let s = Sidecar::start(&config()).await;
    let ctx = json!({"tenant": "acme"});
    let old = s
        .post_ok(
            "/v1/keys/pii/envelope/encrypt",
            json!({"plaintext": b64("sealed under v1"), "context": ctx}),
        )
        .await;
    assert_eq!(old["version"], "1");
    s.post_ok("/v1/keys/pii/rotate", json!({})).await;
    let new = s
        .post_ok(
            "/v1/keys/pii/envelope/encrypt",
            json!({"plaintext": b64("sealed under v2"), "context": ctx}),
        )
        .await;
    assert_eq!(
        new["version"], "2",
        "a rotation retires the cached data key"
    );
    // A restart empties the caches: both must be unwrapped by the backend.
    let s = s.restart().await;
    for (env, plain) in [(&old, "sealed under v1"), (&new, "sealed under v2")] {
        let dec = s
            .post_ok(
                "/v1/keys/pii/envelope/decrypt",
                json!({"envelope": env["envelope"], "context": ctx}),
            )
            .await;
        assert_eq!(unb64(&dec["plaintext"]), plain.as_bytes());
    }
    let m = metrics(&s).await;
    assert_eq!(
        metric(
            &m,
            r#"kms_sidecar_datakey_cache_backend_calls_total{key="pii",op="decrypt"} "#
        ),
        2
    );
}

#[tokio::test]
async fn envelopes_need_the_envelope_grant() {
    let uid = nix::unistd::geteuid().as_raw();
    let config = format!(
        "backends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n  pii: {{ backend: dev, key: pii, algorithm: aes-256-gcm }}\ncallers:\n  - {{ uids: [{uid}], keys: [\"*\"], ops: [encrypt, decrypt] }}\n"
    );
    let s = Sidecar::start(&config).await;
    s.post(
        "/v1/keys/pii/envelope/encrypt",
        json!({"plaintext": b64("x")}),
    )
    .await
    .expect(403, Some("forbidden"));
    let (status, _, _) = stream(&s, "encrypt", None, vec![Bytes::from_static(b"x")]).await;
    assert_eq!(status, 403);
}
