//! The README's curl tour and `examples/curl.sh` work as written against the
//! embedded default, the way `make run` starts it; the config and webhook
//! references of `docs/` are valid; and every relative link of the README
//! and `docs/` leads to a file and, into a markdown file, to a heading.

use crate::harness::Sidecar;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

/// Every relative link in `README.md` and `docs/` leads to a file (or a
/// folder) of the repository, and a `#anchor` into a markdown file to one
/// of its headings, so that moving text between pages cannot leave a link
/// behind.
#[test]
fn every_relative_link_of_the_docs_leads_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    assert!(pages.len() > 10, "README.md and docs/*.md: {pages:?}");
    let mut headings = HashMap::new();
    let mut links = 0;
    let mut broken = Vec::new();
    for page in &pages {
        for target in markdown_links(&std::fs::read_to_string(page).unwrap()) {
            links += 1;
            if let Err(why) = check_link(page, &target, &mut headings) {
                let page = page.strip_prefix(root).unwrap().display();
                broken.push(format!("{page}: ({target}): {why}"));
            }
        }
    }
    assert!(
        links > 100,
        "only {links} links found: is the parser blind?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The link check itself finds a missing file, a missing heading (in
/// another page and in its own), and passes the links that lead somewhere,
/// links in code and external links.
#[test]
fn the_link_check_finds_missing_files_and_headings() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        dir.path().join("other.md"),
        "# Other\n\n## Traces (OpenTelemetry)\n\n## Limits and memory\n\n## Limits and memory\n\n```sh\n# Not a heading\n```\n",
    )
    .unwrap();
    std::fs::write(
        &page,
        "# Page: the `first` one\n\n[ok](other.md#traces-opentelemetry), [ok](other.md#limits-and-memory-1),\n\
         [ok](#page-the-first-one), [ok](other.md \"title\"), [ok](https://example.com/nowhere.md#x),\n\
         `[code](nowhere.md)` and ![img](./other.md).\n\n```sh\n[in a block](nowhere.md)\n```\n\n\
         [gone](missing.md), [no heading](other.md#not-a-heading), [no heading\nhere](#limits-and-memory),\n\
         [not a heading](other.md#limits-and-memory-2).\n",
    )
    .unwrap();
    let mut headings = HashMap::new();
    let broken: Vec<String> = markdown_links(&std::fs::read_to_string(&page).unwrap())
        .into_iter()
        .filter(|t| check_link(&page, t, &mut headings).is_err())
        .collect();
    assert_eq!(
        broken,
        [
            "missing.md",
            "other.md#not-a-heading",
            "#limits-and-memory",
            "other.md#limits-and-memory-2"
        ]
    );
}

/// The targets of the inline links and images of a markdown text, outside
/// fenced code blocks and code spans.
fn markdown_links(text: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~");
        if fence {
            fenced = !fenced;
        }
        if !fence && !fenced {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    let mut links = Vec::new();
    for paragraph in prose.split("\n\n") {
        let text = without_code_spans(paragraph);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    depth < 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            let target = target.trim_start_matches('<').trim_end_matches('>');
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_owned());
            }
        }
    }
    links
}

/// `text` with its code spans (a run of backticks to the next run of the
/// same length) removed.
fn without_code_spans(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('`') {
        out.push_str(&rest[..at]);
        let run = rest[at..].len() - rest[at..].trim_start_matches('`').len();
        let after = &rest[at + run..];
        let closing = after.char_indices().map(|(i, _)| i).find(|&i| {
            after[i..].starts_with(&"`".repeat(run))
                && !after[i + run..].starts_with('`')
                && (i == 0 || !after[..i].ends_with('`'))
        });
        match closing {
            Some(i) => rest = &after[i + run..],
            None => {
                out.push_str(&rest[at..at + run]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the link `target` of the page `from` leads to a file, and to a
/// heading when it names an anchor in a markdown file. `headings` caches
/// each markdown file's anchors.
fn check_link(
    from: &Path,
    target: &str,
    headings: &mut HashMap<PathBuf, Vec<String>>,
) -> Result<(), String> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Err(format!("no file {}", file.display()));
    }
    if anchor.is_empty() || file.extension().is_none_or(|e| e != "md") {
        return Ok(());
    }
    let anchors = headings
        .entry(file.clone())
        .or_insert_with(|| heading_anchors(&std::fs::read_to_string(&file).unwrap_or_default()));
    if anchors.iter().any(|a| a == anchor) {
        Ok(())
    } else {
        Err(format!(
            "no heading of {} has the anchor #{anchor}",
            file.display()
        ))
    }
}

/// The anchors GitHub gives the headings of a markdown text: the heading's
/// text (a link's text without its target) lowercased, spaces as `-`, every
/// character but letters, digits, `-` and `_` dropped; a repeated anchor
/// gets `-1`, `-2`, ….
fn heading_anchors(text: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.len() - line.trim_start_matches('#').len();
        if fenced || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let mut title = line[hashes..].trim().to_owned();
        while let Some(open) = title.find("](") {
            let close = title[open..]
                .find(')')
                .map_or(title.len() - 1, |c| open + c);
            title.replace_range(open + 1..=close, "");
        }
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        anchors.push(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    anchors
}
