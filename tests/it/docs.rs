//! The README's curl tour and `examples/curl.sh` work as written against the
//! embedded default, the way `make run` starts it; the config and webhook
//! references of `docs/` are valid.

use crate::harness::Sidecar;
use std::path::Path;
use std::process::Command;

const HINT: &str = "install bash, curl, jq and openssl (`make test` does)";

fn run_script(s: &Sidecar, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(s.dir.path())
        .env("KMS_SIDECAR_SOCKET", &s.socket)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash ({e}); {HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed ({HINT}):\n{stdout}\n{stderr}"
    );
    stdout
}

/// The text of `path`, relative to the repository (`README.md`, `docs/api.md`).
pub fn doc(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let readme = doc("README.md");
    let tour = readme
        .split("## Try it")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("the README has a ```sh block under ## Try it");
    let s = Sidecar::start_default().await;
    let out = run_script(&s, &format!("set -euo pipefail\n{tour}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"{"valid":true,"version":"1"}"#)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"{"valid":false,"version":"1"}"#)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""code":"decryption_failed""#)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"{"key":"aes-256","version":"2"}"#)),
        "{out}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#"{"plaintext":"c2VjcmV0"}"#))
            .count(),
        3,
        "{out}"
    );
    assert!(lines.contains(&"streamed round trip ok"), "{out}");
    // The tour's secrets are plain literals in the README; register them for the log scan.
    s.secret("c2VjcmV0");
}

/// The ```yaml block of the document at `path` (relative to the
/// repository) that starts with `first_line`.
pub fn yaml_block(path: &str, first_line: &str) -> String {
    doc(path)
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.starts_with(first_line))
        .unwrap_or_else(|| panic!("{path} has a yaml block starting with `{first_line}`"))
        .to_owned()
}

#[tokio::test]
async fn examples_curl_sh_passes() {
    let s = Sidecar::start_default().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh");
    run_script(&s, script);
}

/// The configuration reference of `docs/configuration.md` (the ```yaml block
/// that starts with `listen:`) is a valid config, so its defaults and field
/// names are real.
#[test]
fn the_documented_config_reference_passes_config_check() {
    let reference = yaml_block("docs/configuration.md", "listen:");
    let (code, out, err) = crate::harness::run_with_config(&["config", "check"], &reference, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("backend_timeout: 5s"), "{out}");
}

/// `examples/app/app.sh` (the app of the Kubernetes examples) signs,
/// verifies and round-trips an envelope under plain `sh`, and fails when a
/// step does.
#[tokio::test]
async fn examples_app_sh_passes_and_fails_when_it_should() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app/app.sh");
    let run = |s: &Sidecar, data_key: &str| {
        Command::new("sh")
            .arg(script)
            .env("KMS_SIDECAR_SOCKET", &s.socket)
            .env("DATA_KEY", data_key)
            .env("WAIT_SECONDS", "5")
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh ({e}); {HINT}"))
    };
    let s = Sidecar::start(&crate::harness::local_config(
        "  signing: { backend: dev, key: signing, algorithm: ecdsa-p256-sha256 }\n  data: { backend: dev, key: data, algorithm: aes-256-gcm }",
    ))
    .await;
    let out = run(&s, "data");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("signed and verified with signing"),
        "{stdout}"
    );
    assert!(
        stdout.contains("encrypted and decrypted a record with data"),
        "{stdout}"
    );
    let out = run(&s, "no-such-key");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-key/envelope/encrypt") && stderr.contains("key_not_found"),
        "{stderr}"
    );
}

/// The webhook config reference of `docs/kubernetes.md` (the ```yaml block
/// that starts with `image:`) passes `kms-sidecar webhook --check`.
#[cfg(feature = "webhook")]
#[test]
fn the_documented_webhook_config_passes_webhook_check() {
    let reference = yaml_block("docs/kubernetes.md", "image:");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhook.yaml");
    // The sidecar config it names is mounted in a cluster; here, one with an AWS backend.
    let sidecar = dir.path().join("config.yaml");
    std::fs::write(
        &sidecar,
        "backends:\n  kms: { type: aws, region: eu-west-1 }\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        reference.replace("/etc/kms-sidecar/config.yaml", sidecar.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
        .args(["webhook", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("- aws"),
        "tokens read from the sidecar config: {stdout}"
    );
}

/// The Python decoder in `docs/envelope-format.md`, written from the
/// description alone, opens both documented test vectors (algorithms 3 and
/// 5): an independent check of the format as documented. (The unit tests of
/// `envelope::format` check that the code makes the same bytes.)
#[test]
fn the_documented_python_decoder_opens_both_test_vectors() {
    let doc = doc("docs/envelope-format.md");
    let decoder = doc
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/envelope-format.md has a python block");
    let mut script = decoder.to_owned();
    for marker in ["<!-- test-vector -->", "<!-- test-vector-5 -->"] {
        let block = doc
            .split(marker)
            .nth(1)
            .and_then(|b| b.split("```text").nth(1))
            .and_then(|b| b.split("```").next())
            .unwrap_or_else(|| panic!("a ```text block after {marker}"));
        let mut lines = block.lines().skip_while(|l| !l.starts_with("envelope:"));
        let mut hex = lines.next().unwrap()["envelope:".len()..].trim().to_owned();
        hex.extend(lines.take_while(|l| l.starts_with(' ')).map(str::trim));
        script.push_str(&format!(
            "print(open_v1(bytes(range(32)), bytes.fromhex(\"{hex}\"), b'{{\"tenant\":\"acme\"}}').decode())\n"
        ));
    }
    let (ok, out, err) = crate::harness::run_tool(
        "python3",
        &["-c", &script],
        "install python3 and its cryptography package (`make test` does)",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "hello, envelope\nhello, envelope\n");
}
