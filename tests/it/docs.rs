//! The README's curl tour and `examples/curl.sh` work as written against the
//! embedded default, the way `make run` starts it.

use crate::harness::Sidecar;
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

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
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

#[tokio::test]
async fn examples_curl_sh_passes() {
    let s = Sidecar::start_default().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh");
    run_script(&s, script);
}

/// The README's configuration reference (the ```yaml block that starts with
/// `listen:`) is a valid config, so its defaults and field names are real.
#[test]
fn the_readme_config_reference_passes_config_check() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.starts_with("listen:"))
        .expect("README has the config reference");
    let (code, out, err) = crate::harness::run_with_config(&["config", "check"], reference, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("backend_timeout: 5s"), "{out}");
}
