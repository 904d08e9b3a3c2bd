//! OpenTelemetry traces, exported to a real OTLP receiver
//! (`harness::Receiver`): the app's trace continued through the request,
//! the data-key cache and the backend calls; what the spans carry and what
//! they never do; both transports; sampling; the outgoing `traceparent`;
//! and a dead collector that never holds a request.

use crate::harness::{Fake, Receiver, Sidecar, b64, local_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(sampled: bool) -> String {
    format!(
        "00-{APP_TRACE}-{APP_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

fn keys() -> String {
    local_config(
        "  pii: { backend: dev, key: pii, algorithm: aes-256-gcm }\n  sig: { backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }",
    )
}

/// Export every 100 ms, so spans arrive while the test waits.
const FAST: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// A POST with the app's trace context and our request id.
async fn traced(s: &Sidecar, path: &str, body: Value, headers: &[(&str, &str)]) -> Value {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    s.request(http::Method::POST, path, &all, body.to_string().into())
        .await
        .ok()
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn child_of<'a>(spans: &'a [Value], parent: &Value, name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name && s["parent_span_id"] == parent["span_id"])
        .unwrap_or_else(|| panic!("no {name} span under {parent:#}; spans: {spans:#?}"))
}

/// The app's trace id and parent reach the request span; the data-key
/// cache's miss, the backend call and its attempt are its children, with
/// the attributes the logs have; a 4xx is an outcome, not an error; probes
/// are not traced; and nothing secret is in what was sent.
#[tokio::test]
async fn a_request_continues_the_apps_trace_down_to_the_backend_call() {
    let receiver = Receiver::start().await;
    // The data key is refreshed 0.5 s after it is made.
    let config = keys() + "cache: { data_keys: { ttl: 1s, refresh_ahead: 500ms } }\n";
    let s = Sidecar::start_with_env(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http),
            ("OTEL_SERVICE_NAME", "payments-kms-sidecar"),
            FAST,
        ],
    )
    .await;
    let plaintext = b64("card 4111 1111 1111 1111, cvv 123");
    s.secret(&plaintext);
    let parent = traceparent(true);
    traced(
        &s,
        "/v1/keys/pii/envelope/encrypt",
        json!({"plaintext": plaintext, "context": {"tenant": "t1"}}),
        &[
            ("traceparent", &parent),
            ("tracestate", "vendor=abc"),
            ("x-request-id", "req-traced-1"),
        ],
    )
    .await;
    // Not traced by the app: a trace of the sidecar's own.
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("hello")}))
        .await;
    // Refused after its body: an outcome on the span, not an error status.
    let refused = s
        .post("/v1/keys/sig/sign", json!({"message": "not base64!"}))
        .await;
    assert_eq!(refused.status, 400);
    s.get("/healthz").await;

    let spans = receiver
        .spans_until(
            "the spans of the three requests and of the data key's refresh",
            |spans| {
                named(spans, "request").len() >= 3 && !named(spans, "datakey_refresh").is_empty()
            },
        )
        .await;
    let request = spans
        .iter()
        .find(|s| s["name"] == "request" && s["trace_id"] == APP_TRACE)
        .unwrap_or_else(|| panic!("no request span in the app's trace: {spans:#?}"));
    assert_eq!(request["parent_span_id"], APP_SPAN);
    assert_eq!(request["trace_state"], "vendor=abc");
    let a = &request["attributes"];
    assert_eq!(a["request_id"], "req-traced-1");
    assert_eq!(a["op"], "envelope_encrypt");
    assert_eq!(a["key"], "pii");
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["caller.uid"], i64::from(nix::unistd::geteuid().as_raw()));
    assert_eq!(request["resource"]["service.name"], "payments-kms-sidecar");
    assert_eq!(request["status"]["code"], 0, "unset: {request:#}");

    let fetch = child_of(&spans, request, "datakey_fetch");
    assert_eq!(fetch["attributes"]["key.alias"], "pii");
    assert_eq!(fetch["attributes"]["request_id"], "req-traced-1");
    assert_eq!(fetch["attributes"]["op"], "generate_data_key");
    let call = child_of(&spans, fetch, "backend_call");
    assert_eq!(call["attributes"]["backend"], "dev");
    assert_eq!(call["attributes"]["key.alias"], "pii");
    assert_eq!(call["attributes"]["request_id"], "req-traced-1");
    assert_eq!(call["attributes"]["op"], "generate_data_key");
    assert_eq!(call["attributes"]["outcome"], "ok");
    let attempt = child_of(&spans, call, "backend_attempt");
    assert_eq!(attempt["attributes"]["attempt"], 1);
    assert_eq!(attempt["attributes"]["circuit"], "closed");
    assert_eq!(attempt["kind"], 3, "SPAN_KIND_CLIENT: {attempt:#}");
    for span in [fetch, call, attempt] {
        assert_eq!(span["trace_id"], APP_TRACE);
    }

    // The refresh ahead of expiry: a trace of its own, with its KMS call.
    let refresh = named(&spans, "datakey_refresh")[0];
    assert_eq!(refresh["attributes"]["key.alias"], "pii");
    assert_eq!(refresh["attributes"]["outcome"], "ok");
    assert_eq!(refresh["parent_span_id"], "");
    let call = child_of(&spans, refresh, "backend_call");
    assert_eq!(call["attributes"]["op"], "generate_data_key");
    assert!(call["attributes"].get("request_id").is_none(), "{call:#}");

    let own: Vec<_> = named(&spans, "request")
        .into_iter()
        .filter(|s| s["trace_id"] != APP_TRACE)
        .collect();
    assert_eq!(own.len(), 2, "{own:#?}");
    assert!(
        own.iter().all(|s| s["parent_span_id"] == ""),
        "roots: {own:#?}"
    );
    let refused = own
        .iter()
        .find(|s| s["attributes"]["outcome"] == "invalid_request")
        .unwrap_or_else(|| panic!("no refused request span: {own:#?}"));
    assert_eq!(
        refused["status"]["code"], 0,
        "a 4xx is not an error: {refused:#}"
    );
    assert!(
        named(&spans, "probe").is_empty()
            && spans.iter().all(|s| s["attributes"]["op"] != "healthz"),
        "probes are not traced"
    );
    // Only the spans of the list: no log events, no library spans.
    for span in &spans {
        assert!(
            [
                "request",
                "backend_call",
                "backend_attempt",
                "datakey_fetch",
                "datakey_refresh",
                "credential_refresh"
            ]
            .contains(&span["name"].as_str().unwrap()),
            "unexpected span {span:#}"
        );
        assert_eq!(span["events"], json!([]), "{span:#}");
    }
    let leaked = s.secrets_in(&receiver.raw());
    assert!(
        leaked.is_empty(),
        "secrets in the exported spans: {leaked:?}"
    );
    let exported = s.metric("kms_sidecar_trace_spans_exported_total").await;
    assert!(exported >= spans.len() as f64, "{exported}");
}

/// gRPC with the config's headers; `sample_ratio: 0` keeps only what the
/// app sampled.
#[tokio::test]
async fn grpc_export_with_headers_follows_the_apps_sampling() {
    let receiver = Receiver::start().await;
    let config = format!(
        "{}telemetry:\n  otlp:\n    endpoint: {}\n    protocol: grpc\n    headers: {{ x-tenant: blue }}\n    sample_ratio: 0\n",
        keys(),
        receiver.grpc
    );
    let s = Sidecar::start_with_env(&config, &[FAST]).await;
    let unsampled = traceparent(false);
    s.post_ok("/v1/keys/sig/sign", json!({"message": b64("a")}))
        .await;
    traced(
        &s,
        "/v1/keys/sig/sign",
        json!({"message": b64("b")}),
        &[("traceparent", &unsampled)],
    )
    .await;
    let sampled = traceparent(true);
    traced(
        &s,
        "/v1/keys/sig/sign",
        json!({"message": b64("c")}),
        &[("traceparent", &sampled)],
    )
    .await;
    let spans = receiver
        .spans_until("the sampled request's spans", |spans| {
            spans.iter().any(|s| s["name"] == "backend_attempt")
        })
        .await;
    // One more export period: anything else would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = receiver
        .spans()
        .into_iter()
        .chain(spans)
        .collect::<Vec<_>>();
    assert!(
        spans.iter().all(|s| s["trace_id"] == APP_TRACE),
        "only the sampled trace is exported: {spans:#?}"
    );
    let request = named(&spans, "request")[0];
    assert_eq!(request["transport"], "grpc");
    assert_eq!(request["headers"]["x-tenant"], "blue");
    assert_eq!(request["resource"]["service.name"], "kms-sidecar");
    let call = child_of(&spans, request, "backend_call");
    assert_eq!(call["attributes"]["op"], "sign");
}

/// A collector that accepts connections and never answers: requests go
/// on at their usual pace, the bounded queue drops what does not fit, and
/// the drops are counted.
#[tokio::test]
async fn a_dead_collector_never_holds_a_request() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let config = format!(
        "{}telemetry:\n  otlp: {{ endpoint: \"{endpoint}\", timeout: 60s, max_queue: 8 }}\n",
        keys()
    );
    let s = Sidecar::start_with_env(&config, &[FAST]).await;
    let started = Instant::now();
    for i in 0..200 {
        s.post_ok(
            "/v1/keys/sig/sign",
            json!({"message": b64(format!("m{i}"))}),
        )
        .await;
    }
    // Each export waits up to 60 s on the hole: had a request waited for
    // one, these 200 could not have been answered in less.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let dropped = s
        .metric("kms_sidecar_trace_spans_dropped_total{reason=\"queue_full\"}")
        .await;
    // 200 requests make 600 spans (request, call, attempt); at most 8
    // are held, those of the export in flight included.
    assert!(dropped >= 600.0 - 8.0, "{dropped}");
    assert!(s.logs().contains("exporting traces over OTLP"));
    drop(hole);
}

/// The outgoing KMS call carries the trace: Cloud KMS and Key Vault take
/// the W3C `traceparent`, and their contract fakes record what they were
/// sent. Its parent is the attempt span the sidecar exported.
#[tokio::test]
async fn kms_calls_carry_the_trace_on() {
    let receiver = Receiver::start().await;
    let (gcp, azure) = (Fake::gcp().await, Fake::azure().await);
    let config = format!(
        "backends:\n  gk: {}\n  kv: {}\nkeys:\n  g: {{ backend: gk, key: gcp-sign }}\n  a: {{ backend: kv, key: azure-sign }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        gcp.gcp_backend(""),
        azure.azure_backend(""),
        nix::unistd::geteuid().as_raw()
    );
    let mut env: Vec<(&str, String)> = azure.env();
    env.extend(
        gcp.env()
            .into_iter()
            .filter(|(k, _)| *k == "GOOGLE_APPLICATION_CREDENTIALS"),
    );
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http.clone()));
    env.push((FAST.0, FAST.1.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Sidecar::start_with_env(&config, &env).await;
    s.secret(std::fs::read_to_string(gcp.path("subject-token")).unwrap_or_default());
    s.secret(std::fs::read_to_string(azure.path("federated-token")).unwrap_or_default());
    let parent = traceparent(true);
    for key in ["g", "a"] {
        traced(
            &s,
            &format!("/v1/keys/{key}/sign"),
            json!({"message": b64("to be signed")}),
            &[("traceparent", &parent)],
        )
        .await;
    }
    let spans = receiver
        .spans_until("the sign calls of both backends", |spans| {
            ["gk", "kv"].iter().all(|b| {
                spans.iter().any(|s| {
                    s["name"] == "backend_call"
                        && s["attributes"]["backend"] == *b
                        && s["attributes"]["op"] == "sign"
                })
            })
        })
        .await;
    for (fake, backend) in [(&gcp, "gk"), (&azure, "kv")] {
        let call = spans
            .iter()
            .find(|s| {
                s["name"] == "backend_call"
                    && s["attributes"]["backend"] == backend
                    && s["attributes"]["op"] == "sign"
            })
            .unwrap();
        assert_eq!(call["trace_id"], APP_TRACE);
        let attempt = child_of(&spans, call, "backend_attempt");
        let expected = format!("00-{APP_TRACE}-{}-01", attempt["span_id"].as_str().unwrap());
        let sent = fake.stats().await["traceparents"].clone();
        assert!(
            sent.as_array().unwrap().iter().any(|t| *t == expected),
            "{backend}: {expected} not among {sent:#}"
        );
    }
    // Each backend's credential refresh is a trace of its own.
    for backend in ["gk", "kv"] {
        let refresh = spans
            .iter()
            .find(|s| s["name"] == "credential_refresh" && s["attributes"]["backend"] == backend)
            .unwrap_or_else(|| panic!("no credential refresh of {backend}: {spans:#?}"));
        assert_eq!(refresh["attributes"]["outcome"], "ok");
        assert_eq!(refresh["parent_span_id"], "");
        assert_ne!(refresh["trace_id"], APP_TRACE);
    }
    let leaked = s.secrets_in(&receiver.raw());
    assert!(
        leaked.is_empty(),
        "secrets in the exported spans: {leaked:?}"
    );
}

/// Retries and the breaker's decisions, on a stopped real server: each
/// attempt is a span with its outcome, the delay before the next one and
/// the circuit after it; a call the open circuit refuses is one attempt
/// that never left.
#[tokio::test]
async fn retries_and_the_open_circuit_are_in_the_trace() {
    use crate::harness::Bao;
    fn failed_sign(s: &Value) -> bool {
        s["name"] == "backend_call"
            && s["attributes"]["op"] == "sign"
            && s["attributes"]["outcome"] != "ok"
    }
    let receiver = Receiver::start().await;
    let mut bao = Bao::start().await;
    bao.transit_with_key("ec", "ecdsa-p256").await;
    let token = bao.root_token_file();
    let config = format!(
        "backends:\n  vault:\n    type: vault\n    address: {}\n    auth: {{ method: token, token_file: {} }}\n    retries: {{ max_attempts: 3, initial_backoff: 10ms, max_backoff: 20ms }}\n    circuit: {{ failures: 3, open_for: 1m }}\nkeys:\n  ec: {{ backend: vault, key: ec }}\ncallers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\n",
        bao.url,
        token.display(),
        nix::unistd::geteuid().as_raw()
    );
    let s = Sidecar::start_with_env(
        &config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http), FAST],
    )
    .await;
    s.secret(bao.root_token.clone());
    let sign = json!({"message": b64("m")});
    // The key's metadata is cached: what fails next is the signing call.
    s.post_ok("/v1/keys/ec/sign", sign.clone()).await;
    bao.stop();
    for _ in 0..2 {
        s.post("/v1/keys/ec/sign", sign.clone())
            .await
            .expect(503, Some("backend_unavailable"));
    }
    let spans = receiver
        .spans_until("two failed sign calls", |spans| {
            spans.iter().filter(|s| failed_sign(s)).count() == 2
        })
        .await;
    let calls: Vec<_> = spans.iter().filter(|s| failed_sign(s)).collect();
    let attempts = |call: &Value| {
        let mut a: Vec<&Value> = spans
            .iter()
            .filter(|s| s["parent_span_id"] == call["span_id"])
            .collect();
        a.sort_by_key(|s| s["attributes"]["attempt"].as_i64());
        a
    };
    let (first, second) = if calls[0]["start"].as_u64() < calls[1]["start"].as_u64() {
        (calls[0], calls[1])
    } else {
        (calls[1], calls[0])
    };
    for call in [first, second] {
        assert_eq!(call["attributes"]["key.alias"], "ec");
        assert_eq!(call["attributes"]["outcome"], "backend_unavailable");
        assert_eq!(call["status"]["code"], 2, "STATUS_CODE_ERROR: {call:#}");
        assert_eq!(call["status"]["message"], "backend_unavailable");
    }
    let tried = attempts(first);
    assert_eq!(tried.len(), 3, "{tried:#?}");
    for (i, a) in tried.iter().enumerate() {
        assert_eq!(a["attributes"]["attempt"], i as i64 + 1);
        assert_eq!(a["attributes"]["outcome"], "backend_unavailable");
    }
    // A delay before each retry; the third failure opened the circuit.
    assert!(tried[0]["attributes"]["retry_in_ms"].as_i64().is_some());
    assert!(tried[1]["attributes"]["retry_in_ms"].as_i64().is_some());
    assert!(tried[2]["attributes"].get("retry_in_ms").is_none());
    assert_eq!(tried[1]["attributes"]["circuit"], "closed");
    assert_eq!(tried[2]["attributes"]["circuit"], "open");
    let refused = attempts(second);
    assert_eq!(refused.len(), 1, "fails fast: {refused:#?}");
    assert_eq!(refused[0]["attributes"]["circuit"], "open");
}

/// A trace export the sidecar cannot set up stops the start (exit 2),
/// naming the variable at fault.
#[test]
fn an_unsupported_otlp_protocol_stops_the_start() {
    let (code, _, err) = crate::harness::run_with_config(
        &["serve", "--config"],
        &keys(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("http/json"),
        "{err}"
    );
}

/// A collector behind TLS, trusted through `SSL_CERT_FILE` (a cluster's
/// CA), over either protocol; the resource from `OTEL_RESOURCE_ATTRIBUTES`.
#[tokio::test]
async fn a_collector_over_tls_is_reached_with_either_protocol() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::harness::issue_cert(certs.path(), "collector");
    let receiver = Receiver::start_tls(&cert, &key).await;
    for (protocol, endpoint) in [("http/protobuf", &receiver.http), ("grpc", &receiver.grpc)] {
        assert!(endpoint.starts_with("https://"), "{endpoint}");
        let ca = ca.display().to_string();
        let s = Sidecar::start_with_env(
            &keys(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("SSL_CERT_FILE", &ca),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attributes,k8s.pod.name=pod-1",
                ),
                FAST,
            ],
        )
        .await;
        let id = format!("over-tls-{}", protocol.replace('/', "-"));
        traced(
            &s,
            "/v1/keys/sig/sign",
            json!({"message": b64("m")}),
            &[("x-request-id", &id)],
        )
        .await;
        let spans = receiver
            .spans_until(&format!("the request span sent with {protocol}"), |spans| {
                spans.iter().any(|s| {
                    s["attributes"]["request_id"] == id.as_str()
                        && s["transport"] == protocol.split('/').next().unwrap()
                })
            })
            .await;
        // The service's name from OTEL_RESOURCE_ATTRIBUTES, not the default.
        let span = spans
            .iter()
            .find(|s| s["attributes"]["request_id"] == id.as_str())
            .unwrap();
        assert_eq!(span["resource"]["service.name"], "from-attributes");
        assert_eq!(span["resource"]["k8s.pod.name"], "pod-1");
    }
}

/// The app's `tracestate` is held to the W3C limits before any span
/// carries it: of an 8 KB list only what the spec keeps within 512
/// characters (entries over 128 characters go first) reaches the
/// collector, and a list of more than 32 members is dropped whole.
#[tokio::test]
async fn an_oversized_tracestate_never_reaches_the_exported_spans() {
    let receiver = Receiver::start().await;
    let s = Sidecar::start_with_env(
        &keys(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http), FAST],
    )
    .await;
    let long = "v".repeat(250);
    let big: Vec<String> = std::iter::once("rojo=00f067aa0ba902b7".to_owned())
        .chain((1..32).map(|i| format!("k{i}={long}")))
        .collect();
    let big = big.join(",");
    assert!(big.len() > 7900, "{}", big.len());
    let many: Vec<String> = (0..40).map(|i| format!("m{i}=x")).collect();
    let many = many.join(",");
    let cases = [
        (
            "11111111111111111111111111111111",
            &big,
            "rojo=00f067aa0ba902b7",
        ),
        ("22222222222222222222222222222222", &many, ""),
    ];
    for (trace, state, _) in &cases {
        let parent = format!("00-{trace}-{APP_SPAN}-01");
        traced(
            &s,
            "/v1/keys/sig/sign",
            json!({"message": b64("m")}),
            &[("traceparent", &parent), ("tracestate", state)],
        )
        .await;
    }
    let spans = receiver
        .spans_until("both requests' backend attempts", |spans| {
            cases.iter().all(|(trace, _, _)| {
                spans
                    .iter()
                    .any(|s| s["name"] == "backend_attempt" && s["trace_id"] == *trace)
            })
        })
        .await;
    for (trace, _, kept) in &cases {
        let traced: Vec<_> = spans.iter().filter(|s| s["trace_id"] == *trace).collect();
        assert!(traced.len() >= 3, "{traced:#?}");
        for span in traced {
            assert_eq!(span["trace_state"], *kept, "{span:#}");
        }
    }
    assert!(
        !String::from_utf8_lossy(&receiver.raw()).contains(&long[..128]),
        "the long entries reached the collector"
    );
}

/// A uid no rule names (another uid, through `setpriv`, when the suite
/// runs as root) gets its 403s before the body: those requests export no
/// span, whatever trace context they send, and are counted instead; so is
/// a ruled caller's request refused before its body (an unknown key),
/// while its signing is exported.
#[tokio::test]
async fn requests_refused_before_their_body_export_no_span() {
    let me = nix::unistd::geteuid().as_raw();
    let (outsider, ruled) = if crate::harness::is_root() {
        (Some(65534), me)
    } else {
        (None, me + 1)
    };
    let receiver = Receiver::start().await;
    let config = format!(
        "listen: {{ mode: \"0666\" }}\nbackends:\n  dev: {{ type: local, dir: \"{{dir}}/keys\" }}\nkeys:\n  sig: {{ backend: dev, key: sig, algorithm: ecdsa-p256-sha256 }}\ncallers:\n  - {{ uids: [{ruled}], keys: [\"*\"], ops: [\"*\"] }}\n"
    );
    let s = Sidecar::start_with_env(
        &config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http), FAST],
    )
    .await;
    s.open_to_other_uids();
    const N: u32 = 25;
    let socket = s.socket.display().to_string();
    let parent = format!("traceparent:{}", traceparent(true));
    let state = format!("tracestate:v={}", "s".repeat(250));
    let seen = crate::harness::hostile_client(
        outsider,
        &[
            "http",
            &socket,
            "POST",
            "/v1/keys/sig/sign",
            "64",
            &N.to_string(),
            &parent,
            &state,
        ],
    );
    assert_eq!(seen["statuses"]["403"], N, "{seen}");
    let mut refused = f64::from(N);
    if outsider.is_some() {
        // Our own: one refused before its body, one signed and exported.
        s.post("/v1/keys/nope/sign", json!({"message": b64("x")}))
            .await
            .expect(404, Some("key_not_found"));
        refused += 1.0;
        traced(
            &s,
            "/v1/keys/sig/sign",
            json!({"message": b64("m")}),
            &[("x-request-id", "ruled-1")],
        )
        .await;
    }
    let metric = "kms_sidecar_trace_spans_dropped_total{reason=\"refused_before_body\"}";
    crate::harness::eventually(
        Duration::from_secs(10),
        "the refused requests counted",
        || async { s.metric(metric).await == refused },
    )
    .await;
    let spans = if outsider.is_some() {
        receiver
            .spans_until("the ruled caller's request", |spans| {
                spans
                    .iter()
                    .any(|s| s["attributes"]["request_id"] == "ruled-1")
            })
            .await
    } else {
        receiver.spans()
    };
    let outsiders = i64::from(outsider.unwrap_or(me));
    assert!(
        spans.iter().all(|s| {
            s["trace_id"] != APP_TRACE
                && s["attributes"]["caller.uid"] != outsiders
                && !["forbidden", "key_not_found"]
                    .contains(&s["attributes"]["outcome"].as_str().unwrap_or(""))
        }),
        "refused requests exported: {spans:#?}"
    );
    assert_eq!(s.metric(metric).await, refused);
}
