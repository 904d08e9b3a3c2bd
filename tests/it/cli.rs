//! The binary's command line: `config check`, exit codes, env overrides.

use crate::harness::{BIN, Sidecar, local_config, run_with_config};
use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    run_with_config(&["config", "check"], config, env)
}

#[test]
fn config_check_prints_the_resolved_config() {
    let config =
        local_config("  k: { backend: dev, key: k, algorithm: aes-256-gcm, rotation_period: 30d }");
    let (code, out, err) = check(
        &config,
        &[
            ("KMS_SIDECAR_LIMITS__MAX_BODY", "2MiB"),
            ("KMS_SIDECAR_LISTEN__MODE", "0600"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(v["limits"]["max_body"], "2.0 MiB");
    assert_eq!(v["listen"]["mode"], "0600");
    assert_eq!(v["keys"]["k"]["rotation_period"], "30days");
    assert_eq!(v["limits"]["max_batch"], 64, "defaults are shown");
}

#[test]
fn bad_configs_exit_2_naming_the_field() {
    let base = local_config("  k: { backend: dev, key: k, algorithm: aes-256-gcm }");
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            base.replace("type: local", "type: local, dirr: x"),
            vec![],
            "dirr",
        ),
        (
            base.replace("algorithm: aes-256-gcm", "algorithm: aes-512"),
            vec![],
            "keys.k.algorithm",
        ),
        (
            base.replace("backend: dev", "backend: nope"),
            vec![],
            "keys.k.backend",
        ),
        (
            base.clone() + "limits: { max_body: huge }\n",
            vec![],
            "limits.max_body",
        ),
        (
            base.clone(),
            vec![("KMS_SIDECAR_LISTEN__MODE", "0999")],
            "listen.mode",
        ),
        (
            base.clone(),
            vec![("KMS_SIDECAR_LIMITS__MAX_BATHC", "3")],
            "max_bathc",
        ),
        ("backends: [\n".to_string(), vec![], "not valid YAML"),
    ];
    for (config, env, expected) in cases {
        let (code, _, err) = check(&config, &env);
        assert_eq!(code, Some(2), "{expected}: {err}");
        assert!(
            err.contains(expected),
            "stderr should name {expected:?}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/kms.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kms.yaml"));
    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage");
}

#[test]
fn a_missing_local_key_without_an_algorithm_exits_2() {
    let config = local_config("  k: { backend: dev, key: k }");
    let (code, _, err) = run_with_config(&["serve", "--config"], &config, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no `algorithm` is configured"), "{err}");
}

#[tokio::test]
async fn key_files_readable_by_others_are_refused() {
    let s = Sidecar::start(&local_config(
        "  k: { backend: dev, key: k, algorithm: hmac-sha256 }",
    ))
    .await;
    let dir = s.into_dir();
    let dir = dir.path();
    let config = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("keys/k.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.join("config.yaml").to_str().unwrap(),
        ])
        .env("KMS_SIDECAR_LISTEN__SOCKET", dir.join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{config}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

/// The webhook tells the sidecar its data volume's path and size limit
/// (`KMS_SIDECAR_DATA_VOLUME__*`): an audit log in that volume whose
/// rotation (`max_file_size` × (`max_files` + 1)) could outgrow it is
/// refused by `serve` and `config check` alike, exit 2 naming both. The
/// defaults fit the webhook's 64 MiB volume; a log elsewhere is not checked.
#[test]
fn an_audit_rotation_larger_than_its_data_volume_exits_2() {
    let base = local_config("  k: { backend: dev, key: k, algorithm: aes-256-gcm }");
    let volume = [
        ("KMS_SIDECAR_DATA_VOLUME__PATH", "/var/lib/kms-sidecar"),
        ("KMS_SIDECAR_DATA_VOLUME__SIZE_LIMIT", "64Mi"),
    ];
    let too_big = base.clone()
        + "audit: { path: /var/lib/kms-sidecar/audit/../audit.jsonl, max_file_size: 16MiB }\n";
    for command in [&["config", "check"][..], &["serve", "--config"]] {
        let (code, _, err) = run_with_config(command, &too_big, &volume);
        assert_eq!(code, Some(2), "{command:?}: {err}");
        for says in ["audit.max_file_size", "data_volume.size_limit", "80.0 MiB"] {
            assert!(err.contains(says), "{command:?} names {says:?}: {err}");
        }
    }
    let defaults = base.clone() + "audit: { path: /var/lib/kms-sidecar/audit.jsonl }\n";
    let (code, out, err) = check(&defaults, &volume);
    assert_eq!(code, Some(0), "the defaults fit: {err}");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(v["audit"]["max_file_size"], "8.0 MiB");
    assert_eq!(v["data_volume"]["size_limit"], "64.0 MiB");
    let elsewhere = base + "audit: { path: /var/log/audit.jsonl, max_file_size: 64MiB }\n";
    let (code, _, err) = check(&elsewhere, &volume);
    assert_eq!(code, Some(0), "not in the volume: {err}");
}

/// `config check` prints, after the config, each backend's settings as
/// resolved with the environment — token files and their audiences,
/// endpoints, where secrets come from — as YAML comments (the output still
/// loads as a config), and never a secret: not the PIN, not the client
/// secret, not a token.
#[test]
fn config_check_prints_resolved_values_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let gcp = dir.path().join("gcp.json");
    let audience =
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k";
    std::fs::write(
        &gcp,
        serde_json::json!({
            "type": "external_account",
            "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": { "file": "/var/run/secrets/tokens/gcp" },
        })
        .to_string(),
    )
    .unwrap();
    let config = format!(
        r#"backends:
  kms: {{ type: aws, region: eu-west-1, sts_endpoint: "http://127.0.0.1:1" }}
  bao: {{ type: vault, auth: {{ method: kubernetes, role: app, audience: vault }} }}
  kv: {{ type: azure, vault_url: "https://v.vault.azure.net", credential: client_secret }}
  hsm: {{ type: pkcs11, module: /usr/lib/softhsm/libsofthsm2.so, token_label: t, pin_env: HSM_PIN }}
  gc: {{ type: gcp, project: p, location: global, key_ring: r, credentials: external_account, credentials_file: "{}" }}
keys: {{}}
"#,
        gcp.display()
    );
    let secrets = ["azure-s3cret-value-1234", "pin-s3cret-9876"];
    let (code, out, err) = check(
        &config,
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks/token"),
            ("VAULT_ADDR", "https://vault.example:8200"),
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", secrets[0]),
            ("HSM_PIN", secrets[1]),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    for secret in secrets {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
    // The output is still a config, resolved values aside.
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(v["backends"]["kms"]["region"], "eu-west-1");
    let (_, comments) = out
        .split_once("# Resolved with the environment")
        .unwrap_or_else(|| panic!("no resolved values in {out}"));
    let resolved: String = comments
        .lines()
        .skip(1)
        .map(|l| {
            format!(
                "{}\n",
                l.strip_prefix("# ").unwrap_or_else(|| panic!("{l:?}"))
            )
        })
        .collect();
    let r: serde_yaml_ng::Value = serde_yaml_ng::from_str(&resolved).unwrap();
    let b = &r["backends"];
    assert_eq!(b["kms"]["type"], "aws");
    assert_eq!(b["kms"]["role_arn"], "arn:aws:iam::111122223333:role/app");
    assert_eq!(
        b["kms"]["identity_token"]["path"],
        "/var/run/secrets/eks/token"
    );
    assert_eq!(
        b["kms"]["identity_token"]["from"],
        "AWS_WEB_IDENTITY_TOKEN_FILE"
    );
    assert_eq!(
        b["kms"]["identity_token"]["audiences"][0],
        "sts.amazonaws.com"
    );
    assert_eq!(b["bao"]["address"], "https://vault.example:8200");
    assert_eq!(
        b["bao"]["identity_token"]["path"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    assert_eq!(b["bao"]["identity_token"]["audiences"][0], "vault");
    assert_eq!(b["kv"]["tenant_id"], "tenant-1");
    assert_eq!(b["kv"]["client_secret"]["env"], "AZURE_CLIENT_SECRET");
    assert_eq!(b["hsm"]["pin"]["env"], "HSM_PIN");
    assert_eq!(
        b["gc"]["credentials_file"],
        gcp.display().to_string().as_str()
    );
    assert_eq!(
        b["gc"]["identity_token"]["path"],
        "/var/run/secrets/tokens/gcp"
    );
    assert_eq!(b["gc"]["identity_token"]["audiences"][0], audience);
    assert_eq!(
        b["gc"]["identity_token"]["audiences"][1],
        format!("https:{audience}").as_str()
    );
}
