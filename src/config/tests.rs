//! Parsing, overrides and validation of whole configs.

use super::*;

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::parse(EMBEDDED_DEFAULT, "default", &no_env()).unwrap();
    assert_eq!(c.keys.len(), 5);
    assert_eq!(c.listen.socket, PathBuf::from("./kms-sidecar.sock"));
    assert_eq!(c.listen.mode, Mode(0o660));
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let text = "listen: {sockett: x}\nbackends: {}\nkeys: {}\n";
    let err = Config::parse(text, "t.yaml", &no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen") && err.contains("sockett"), "{err}");
    let text = "backends: {d: {type: local, dir: x, extra: 1}}\nkeys: {}\n";
    let err = Config::parse(text, "t.yaml", &no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("extra"), "{err}");
}

#[test]
fn wrong_types_name_the_field_and_expectation() {
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\nlimits: {max_body: lots}\n";
    let err = Config::parse(text, "t.yaml", &no_env())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("limits.max_body") && err.contains("1MiB"),
        "{err}"
    );
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\nlisten: {drain_timeout: 5}\n";
    let err = Config::parse(text, "t.yaml", &no_env())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listen.drain_timeout") && err.contains("duration"),
        "{err}"
    );
}

#[test]
fn vault_backends_parse_and_are_checked() {
    let text = r#"
backends:
  v: {type: vault, address: "https://vault:8200", namespace: team,
  auth: {method: kubernetes, role: app, token_file: /var/run/secrets/tokens/vault}}
  a: {type: vault, auth: {method: approle, role_id_file: /r, secret_id_file: /s}}
keys: {k: {backend: v, key: k}}
"#;
    let c = Config::parse(text, "t", &no_env()).unwrap();
    let BackendConfig::Vault(v) = &c.backends["v"] else {
        panic!("not vault")
    };
    assert_eq!(v.mount, "transit");
    assert_eq!(v.resilience.timeout, None);
    assert_eq!(v.resilience.retries.max_attempts, 3);
    assert!(matches!(&v.auth, VaultAuth::Kubernetes(r) if r.role == "app"));

    let text = r#"
backends:
  v: {type: vault, address: "vault:8200", mount: "/", timeout: 0s, client_cert: /c,
  auth: {method: jwt, role: app}}
  w: {type: vault, auth: {method: token, token_file: /t, role: x}}
keys: {k: {backend: v, key: k}}
"#;
    let err = Config::parse(text, "t", &no_env()).unwrap_err().to_string();
    assert!(err.contains("role"), "unknown auth field: {err}");
    let text = text.replace(
        "\n  w: {type: vault, auth: {method: token, token_file: /t, role: x}}",
        "",
    );
    let Error::Invalid { problems, .. } = Config::parse(&text, "t", &no_env()).unwrap_err() else {
        panic!("expected semantic problems")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for field in [
        "backends.v.address",
        "backends.v.mount",
        "backends.v.timeout",
        "backends.v.client_cert",
        "backends.v.auth.token_file",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
backends: {d: {type: local, dir: x}}
keys:
  a: {backend: nope, key: a}
  b: {backend: d, key: "../etc"}
callers:
  - {keys: ["zzz"], ops: [sign]}
limits: {max_batch: 0}
"#;
    let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err() else {
        panic!("expected semantic problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "keys.a.backend",
            "keys.b.key",
            "callers[0]",
            "callers[0].keys[0]",
            "limits.max_batch"
        ]
    );
}

#[test]
fn data_key_cache_limits_are_validated() {
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\ncache: {data_keys: {ttl: 1m, refresh_ahead: 2m, max_messages: 0}}\n";
    let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err() else {
        panic!("expected semantic problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cache.data_keys.refresh_ahead",
            "cache.data_keys.max_messages"
        ]
    );
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\ncache: {data_keys: {max_bytes: 64MiB, ttl: 10m}}\n";
    let c = Config::parse(text, "t", &no_env()).unwrap();
    assert_eq!(c.cache.data_keys.max_bytes, ByteSize(64 << 20));
    assert_eq!(
        c.cache.data_keys.refresh_ahead,
        Duration::from_secs(30),
        "defaults fill the rest"
    );
}

#[test]
fn hardening_limits_are_validated() {
    let text = r#"
backends: {d: {type: local, dir: x}}
keys: {k: {backend: d, key: k, ops: [sign, metrics]}}
limits: {max_body: 2MiB, max_buffered_bytes: 1MiB, max_connections_per_caller: 0, replay_window: 0s, stream_idle_timeout: 0s}
audit: {path: /tmp/a, max_file_size: 1KiB, max_files: 1}
"#;
    let Error::Invalid { problems, .. } = Config::parse(text, "t", &no_env()).unwrap_err() else {
        panic!("expected semantic problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "keys.k.ops",
            "audit.max_file_size",
            "audit.max_files",
            "limits.max_connections_per_caller",
            "limits.max_buffered_bytes",
            "limits.replay_window",
            "limits.stream_idle_timeout",
        ]
    );
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {}\naudit: {path: /tmp/a, on_failure: fail_open}\nmetrics: {key_labels: hashed}\nenvelope: {accept_unbound_until: 2027-01-31}\n";
    let c = Config::parse(text, "t", &no_env()).unwrap();
    let audit = c.audit.as_ref().unwrap();
    assert_eq!(audit.on_failure, AuditFailure::FailOpen);
    assert_eq!(
        (audit.max_file_size, audit.max_files),
        (ByteSize(8 << 20), 4)
    );
    assert_eq!(c.metrics.key_labels, KeyLabels::Hashed);
    assert_eq!(c.limits.max_buffered_bytes, ByteSize(32 << 20));
    assert_eq!(
        c.envelope.accept_unbound_until.unwrap().to_string(),
        "2027-01-31T00:00:00Z"
    );
    assert!(Config::parse(&text.replace("hashed", "secret"), "t", &no_env()).is_err());
}

#[test]
fn env_overrides_apply_and_are_validated() {
    let env: BTreeMap<String, String> = [
        (
            "KMS_SIDECAR_LISTEN__SOCKET".to_owned(),
            "/tmp/x.sock".to_owned(),
        ),
        ("KMS_SIDECAR_LISTEN__MODE".to_owned(), "0600".to_owned()),
    ]
    .into();
    let c = Config::parse(EMBEDDED_DEFAULT, "default", &env).unwrap();
    assert_eq!(c.listen.socket, PathBuf::from("/tmp/x.sock"));
    assert_eq!(c.listen.mode, Mode(0o600));
    let env: BTreeMap<String, String> =
        [("KMS_SIDECAR_LISTEN__SOKET".to_owned(), "x".to_owned())].into();
    let err = Config::parse(EMBEDDED_DEFAULT, "default", &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("soket"), "{err}");
}

#[test]
fn resolved_config_round_trips_through_yaml() {
    let c = Config::parse(EMBEDDED_DEFAULT, "default", &no_env()).unwrap();
    let again = Config::parse(&c.to_yaml(), "resolved", &no_env()).unwrap();
    assert_eq!(again.to_yaml(), c.to_yaml());
}

#[test]
fn telemetry_otlp_is_checked_and_its_header_values_are_not_shown() {
    let base = "backends: {d: {type: local, dir: x}}\nkeys: {}\n";
    let good = format!(
        "{base}telemetry:\n  otlp: {{ endpoint: \"http://collector:4317\", protocol: grpc, headers: {{ api-key: s3cr3t-value }}, sample_ratio: 0.25, timeout: 2s, max_queue: 100 }}\n"
    );
    let c = Config::parse(&good, "t.yaml", &no_env()).unwrap();
    let otlp = c.telemetry.otlp.as_ref().unwrap();
    assert_eq!(otlp.protocol, Some(OtlpProtocol::Grpc));
    assert_eq!(otlp.sample_ratio, Some(0.25));
    let shown = format!("{c:?}");
    assert!(
        shown.contains("api-key") && !shown.contains("s3cr3t-value"),
        "{shown}"
    );
    for (bad, field) in [
        ("{ sample_ratio: 1.5 }", "telemetry.otlp.sample_ratio"),
        ("{ max_queue: 0 }", "telemetry.otlp.max_queue"),
        (
            "{ endpoint: \"collector:4317\" }",
            "telemetry.otlp.endpoint",
        ),
        ("{ protocol: http/json }", "protocol"),
        ("{ endpiont: \"http://c\" }", "endpiont"),
        ("{ headers: { \"a b\": x } }", "telemetry.otlp.headers.a b"),
        (
            "{ headers: { k: \"line\\nbreak\" } }",
            "telemetry.otlp.headers.k",
        ),
    ] {
        let text = format!("{base}telemetry:\n  otlp: {bad}\n");
        let err = Config::parse(&text, "t.yaml", &no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

#[test]
fn a_slim_build_names_the_feature_a_config_needs() {
    let text = "backends:\n  dev: {type: local, dir: x}\n  kms: {type: aws, region: eu-west-1}\n  bao: {type: vault, address: \"http://127.0.0.1:8200\", auth: {method: token, token_file: /t}}\nkeys: {}\ntelemetry:\n  otlp: {endpoint: \"http://collector:4318\"}\n";
    let c = Config::parse(text, "t", &no_env()).unwrap();
    assert!(c.problems().is_empty(), "this build has every feature");
    let slim = c.problems_in(|feature| feature == "local");
    let found: Vec<_> = slim
        .iter()
        .map(|p| (p.path.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        found.iter().map(|(path, _)| *path).collect::<Vec<_>>(),
        ["backends.bao.type", "backends.kms.type", "telemetry.otlp"]
    );
    assert!(found[1].1.contains("type `aws`") && found[1].1.contains("cargo feature `aws`"));
    assert!(
        found.iter().all(|(_, m)| m.contains("`make build`")),
        "{found:?}"
    );
}

/// The webhook's data volume (64 MiB at /var/lib/kms-sidecar) holds the
/// default rotation of an audit log in it; a rotation that can outgrow it
/// is a problem of `audit.max_file_size`, and a log elsewhere (or no
/// volume said) is not checked.
#[test]
fn an_audit_log_in_the_data_volume_must_fit_it() {
    let volume: BTreeMap<String, String> = [
        ("KMS_SIDECAR_DATA_VOLUME__PATH", "/var/lib/kms-sidecar"),
        ("KMS_SIDECAR_DATA_VOLUME__SIZE_LIMIT", "64Mi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let with = |audit: &str| {
        format!("backends: {{d: {{type: local, dir: x}}}}\nkeys: {{}}\naudit: {audit}\n")
    };
    let fits = [
        "{path: /var/lib/kms-sidecar/audit.jsonl}",
        "{path: /var/lib/kms-sidecar/audit.jsonl, max_file_size: 16MiB, max_files: 3}",
        "{path: /var/log/audit.jsonl, max_file_size: 1GiB}",
        "{path: /var/lib/kms-sidecar-other/audit.jsonl, max_file_size: 1GiB}",
        "{path: audit.jsonl, max_file_size: 1GiB}",
        "{path: \"-\", max_file_size: 1GiB}",
    ];
    for audit in fits {
        let c = Config::parse(&with(audit), "t", &volume);
        assert!(c.is_ok(), "{audit}: {:?}", c.err());
    }
    let outgrows = [
        "{path: /var/lib/kms-sidecar/audit.jsonl, max_file_size: 64MiB}",
        "{path: /var/lib/kms-sidecar/logs/audit.jsonl, max_file_size: 16MiB}",
        "{path: /var/lib/kms-sidecar/./x/../audit.jsonl, max_files: 8}",
        "{path: /var/lib/kms-sidecar/audit.jsonl, max_file_size: 8EiB}",
    ];
    for audit in outgrows {
        let Error::Invalid { problems, .. } =
            Config::parse(&with(audit), "t", &volume).unwrap_err()
        else {
            panic!("{audit}: expected a problem")
        };
        assert_eq!(problems.len(), 1, "{audit}: {problems:?}");
        assert_eq!(problems[0].path, "audit.max_file_size");
        assert!(
            problems[0].message.contains("data_volume.size_limit"),
            "{}",
            problems[0]
        );
    }
    let c = Config::parse(&with(outgrows[0]), "t", &no_env());
    assert!(c.is_ok(), "no volume said: not checked");
    let partial: BTreeMap<String, String> =
        [("KMS_SIDECAR_DATA_VOLUME__PATH".to_owned(), "/x".to_owned())].into();
    let err = Config::parse(&with(fits[0]), "t", &partial)
        .unwrap_err()
        .to_string();
    assert!(err.contains("size_limit"), "{err}");
}

#[test]
fn container_rules_need_a_socket_per_container_and_container_names() {
    let text = "backends: {d: {type: local, dir: x}}\nkeys: {k: {backend: d, key: k}}\ncallers:\n  - {containers: [api, Worker_1], keys: [k], ops: [sign]}\n";
    let err = Config::parse(text, "t.yaml", &no_env())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`callers[0].containers`: needs a socket per container")
            && err.contains("`callers[0].containers[1]`: `Worker_1` is not a container name"),
        "{err}"
    );
    // The webhook sets the directory in the sidecar's environment.
    let env: BTreeMap<String, String> = [(
        "KMS_SIDECAR_LISTEN__PER_CONTAINER_DIR".to_owned(),
        "/var/run/kms-sidecar/containers".to_owned(),
    )]
    .into();
    let c = Config::parse(&text.replace(", Worker_1", ""), "t.yaml", &env).unwrap();
    assert_eq!(
        c.listen.per_container_dir,
        Some(PathBuf::from("/var/run/kms-sidecar/containers"))
    );
    assert_eq!(c.callers[0].containers, ["api"]);
}

/// Each backend's rule for its identity token, resolved once: the config's
/// file before the environment's, none where the credential reads none.
#[test]
fn identity_tokens_resolve_from_config_then_environment() {
    let text = r#"
backends:
  wi: {type: azure, vault_url: "https://v.vault.azure.net"}
  own: {type: azure, vault_url: "https://v.vault.azure.net", token_file: /own}
  mi: {type: azure, vault_url: "https://v.vault.azure.net", credential: managed_identity}
  k8s: {type: vault, auth: {method: kubernetes, role: r}}
  jwt: {type: vault, auth: {method: jwt, role: r, token_file: /jwt, audience: bao}}
  md: {type: gcp, project: p, location: l, key_ring: r, credentials: metadata}
  aws: {type: aws, region: r}
keys: {}
"#;
    let env: BTreeMap<String, String> = [
        ("AZURE_FEDERATED_TOKEN_FILE", "/azure"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent.json"),
        ("VAULT_NAMESPACE", "team"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let c = Config::parse(text, "t", &no_env()).unwrap();
    let token = |name: &str| {
        let resolved = c.backends[name].resolve(&env);
        resolved
            .identity_token()
            .map(|t| (t.path.display().to_string(), t.from, t.audiences.len()))
    };
    assert_eq!(
        token("wi"),
        Some(("/azure".into(), "AZURE_FEDERATED_TOKEN_FILE", 3))
    );
    assert_eq!(token("own"), Some(("/own".into(), "token_file", 3)));
    assert_eq!(token("mi"), None);
    assert_eq!(
        token("k8s"),
        Some((SERVICE_ACCOUNT_TOKEN.into(), "auth.token_file", 0))
    );
    assert_eq!(token("jwt"), Some(("/jwt".into(), "auth.token_file", 1)));
    assert_eq!(token("md"), None);
    assert_eq!(token("aws"), None, "no AWS_WEB_IDENTITY_TOKEN_FILE");
    let Resolved::Vault(v) = c.backends["k8s"].resolve(&env) else {
        panic!("not vault")
    };
    assert_eq!((v.namespace.as_deref(), v.address), (Some("team"), None));
}
