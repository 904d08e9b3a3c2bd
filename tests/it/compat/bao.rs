//! OpenBao's own CLI, `bao` (the binary the harness runs as the server),
//! as a shell script uses it: `bao write|read|list -format=json` with
//! `VAULT_ADDR=unix://…`. It runs the scenario of `tests/clients/README.md`
//! against the three targets; [`bao_answers_have_openbaos_shape`] runs a
//! fixed set of commands against OpenBao and against the sidecar and wants
//! the same JSON keys, exit codes and HTTP status classes from both.

use super::{Running, STEPS, Target};
use crate::harness::{b64, bao_binary};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[tokio::test]
async fn bao_against_openbao() {
    scenario(Target::OpenBao).await;
}

#[tokio::test]
async fn bao_against_sidecar_local() {
    scenario(Target::Local).await;
}

#[tokio::test]
async fn bao_against_sidecar_vault() {
    scenario(Target::Vault).await;
}

const MESSAGE: &str = "the quick brown fox";

/// The CLI pointed at one target, with the contract's environment only
/// (the CLI also reads `BAO_*`, `VAULT_NAMESPACE`, `~/.vault-token`, …).
#[derive(Clone)]
struct Cli {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// What one command gave.
struct Answer {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new(running: &Running) -> Cli {
        Cli {
            bin: bao_binary(),
            env: running.client_env(&running.unix_addr()),
        }
    }

    /// `bao <command> -format=json <path> <key=value…>`, with `body` as the
    /// JSON request on stdin (the `-` argument) when there is one.
    fn run(
        &self,
        command: &str,
        path: &str,
        fields: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(self.env.clone())
            .args([command, "-format=json"]);
        if command == "write" && fields.is_empty() && body.is_none() {
            cmd.arg("-force");
        }
        cmd.arg(path)
            .args(fields.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if body.is_some() {
            cmd.arg("-");
        }
        let mut child = cmd.spawn().expect("the bao CLI runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(body) = body {
            stdin
                .write_all(body.to_string().as_bytes())
                .expect("write stdin");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("the bao CLI ends");
        Answer {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn write(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.run("write", path, fields, None)
    }

    fn write_json(&self, path: &str, body: Value) -> Answer {
        self.run("write", path, &[], Some(body))
    }

    fn read(&self, path: &str) -> Answer {
        self.run("read", path, &[], None)
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    /// The HTTP status the CLI reports for an API error (`Code: 403.`).
    fn status(&self) -> Option<u16> {
        let at = self.stderr.find("Code: ")? + 6;
        self.stderr.get(at..at + 3)?.parse().ok()
    }

    /// `data` of a successful answer.
    fn data(&self) -> Result<Value, String> {
        if self.code != 0 {
            return Err(format!("exit {}: {}", self.code, self.stderr));
        }
        match self.json() {
            Value::Object(mut o) if o.get("data").is_some_and(Value::is_object) => {
                Ok(o.remove("data").expect("data"))
            }
            _ => Err(format!("no data in {}", self.stdout)),
        }
    }

    /// `data.<name>` of a successful answer, a string.
    fn text(&self, name: &str) -> Result<String, String> {
        let data = self.data()?;
        data[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no string data.{name} in {data}"))
    }

    /// `data.valid` of a verify, a boolean.
    fn valid(&self) -> Result<bool, String> {
        let data = self.data()?;
        data["valid"]
            .as_bool()
            .ok_or_else(|| format!("no boolean data.valid in {data}"))
    }
}

fn check(holds: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if holds { Ok(()) } else { Err(why()) }
}

/// The scenario, step by step, each step a few CLI commands.
struct Scenario {
    cli: Cli,
    /// Step 1's ciphertext, rewrapped in step 8.
    first: String,
}

async fn scenario(target: Target) {
    let running = Running::start(target).await;
    let mut s = Scenario {
        cli: Cli::new(&running),
        first: String::new(),
    };
    tokio::task::spawn_blocking(move || {
        for step in STEPS {
            let done = match step {
                "encrypt-decrypt" => s.encrypt_decrypt(),
                "batch" => s.batch(),
                "sign-verify-ecdsa" => s.sign_verify("ec", &[]),
                "sign-verify-rsa-pss" => s.sign_verify("rsa", &[("signature_algorithm", "pss")]),
                "sign-verify-rsa-pkcs1v15" => {
                    s.sign_verify("rsa", &[("signature_algorithm", "pkcs1v15")])
                }
                "hmac" => s.hmac(),
                "datakey" => s.datakey(),
                "rotate-rewrap" => s.rotate_rewrap(),
                "read-key" => s.read_key(),
                "denied" => s.denied(),
                other => Err(format!("no such step {other}")),
            };
            if let Err(why) = done {
                panic!("bao against {target:?}: FAIL: {step}: {why}");
            }
        }
    })
    .await
    .expect("the scenario ends");
}

impl Scenario {
    fn decrypts_to(&self, ciphertext: &str, plaintext: &str) -> Result<(), String> {
        let back = self
            .cli
            .write("transit/decrypt/aes", &[("ciphertext", ciphertext)])
            .text("plaintext")?;
        check(back == plaintext, || {
            format!("{ciphertext} decrypts to {back}, not {plaintext}")
        })
    }

    fn encrypt_decrypt(&mut self) -> Result<(), String> {
        let ct = self
            .cli
            .write("transit/encrypt/aes", &[("plaintext", &b64(MESSAGE))])
            .text("ciphertext")?;
        check(ct.starts_with("vault:v1:"), || format!("ciphertext {ct}"))?;
        self.decrypts_to(&ct, &b64(MESSAGE))?;
        self.first = ct;
        Ok(())
    }

    /// `data.batch_results[*].<field>` of a batch with no item in error.
    fn batch_results(answer: Answer, field: &str) -> Result<Vec<String>, String> {
        let data = answer.data()?;
        let items = data["batch_results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        items
            .iter()
            .map(
                |item| match (item[field].as_str(), item["error"].as_str()) {
                    (Some(v), None | Some("")) => Ok(v.to_owned()),
                    _ => Err(format!("batch result without {field}: {item}")),
                },
            )
            .collect()
    }

    fn batch(&self) -> Result<(), String> {
        let plaintexts: Vec<String> = ["one", "two", "three"].into_iter().map(b64).collect();
        let input: Vec<Value> = plaintexts.iter().map(|p| json!({"plaintext": p})).collect();
        let encrypted = self
            .cli
            .write_json("transit/encrypt/aes", json!({"batch_input": input}));
        let cts = Self::batch_results(encrypted, "ciphertext")?;
        let input: Vec<Value> = cts.iter().map(|c| json!({"ciphertext": c})).collect();
        let decrypted = self
            .cli
            .write_json("transit/decrypt/aes", json!({"batch_input": input}));
        let back = Self::batch_results(decrypted, "plaintext")?;
        check(back == plaintexts, || format!("decrypted {back:?}"))
    }

    /// Verify of `value` (`field`: signature or hmac) says valid for the
    /// message and not valid for another one.
    fn verifies(
        &self,
        key: &str,
        field: &str,
        value: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), String> {
        for (message, want) in [(MESSAGE, true), ("another message", false)] {
            let input = b64(message);
            let mut fields = vec![("input", input.as_str()), (field, value)];
            fields.extend_from_slice(extra);
            let valid = self
                .cli
                .write(&format!("transit/verify/{key}"), &fields)
                .valid()?;
            check(valid == want, || {
                format!("verify of {message:?} says valid={valid}")
            })?;
        }
        Ok(())
    }

    fn sign_verify(&self, key: &str, algorithm: &[(&str, &str)]) -> Result<(), String> {
        let input = b64(MESSAGE);
        let mut params = vec![("hash_algorithm", "sha2-256")];
        params.extend_from_slice(algorithm);
        let mut fields = vec![("input", input.as_str())];
        fields.extend_from_slice(&params);
        let sig = self
            .cli
            .write(&format!("transit/sign/{key}"), &fields)
            .text("signature")?;
        check(sig.starts_with("vault:v1:"), || format!("signature {sig}"))?;
        self.verifies(key, "signature", &sig, &params)
    }

    fn hmac(&self) -> Result<(), String> {
        let input = b64(MESSAGE);
        let fields = [("algorithm", "sha2-256"), ("input", input.as_str())];
        let mac = self.cli.write("transit/hmac/mac", &fields).text("hmac")?;
        check(mac.starts_with("vault:v1:"), || format!("hmac {mac}"))?;
        self.verifies("mac", "hmac", &mac, &[("hash_algorithm", "sha2-256")])
    }

    fn datakey(&self) -> Result<(), String> {
        let made = self.cli.write("transit/datakey/plaintext/aes", &[]);
        let key = made.text("plaintext")?;
        let bytes = STANDARD
            .decode(&key)
            .map_err(|e| format!("plaintext {key}: {e}"))?;
        check(bytes.len() == 32, || {
            format!("a {}-byte data key", bytes.len())
        })?;
        self.decrypts_to(&made.text("ciphertext")?, &key)?;
        let wrapped = self.cli.write("transit/datakey/wrapped/aes", &[]);
        wrapped.text("ciphertext")?;
        let plaintext = wrapped.data()?["plaintext"].clone();
        check(plaintext.is_null(), || {
            format!("datakey/wrapped gave {plaintext}")
        })
    }

    fn rotate_rewrap(&self) -> Result<(), String> {
        self.cli.write("transit/keys/aes/rotate", &[]).data()?;
        let latest = self.cli.read("transit/keys/aes").data()?["latest_version"].clone();
        check(latest == json!(2), || format!("latest_version {latest}"))?;
        let ct = self
            .cli
            .write("transit/rewrap/aes", &[("ciphertext", &self.first)])
            .text("ciphertext")?;
        check(ct.starts_with("vault:v2:"), || format!("rewrapped {ct}"))?;
        self.decrypts_to(&ct, &b64(MESSAGE))
    }

    fn read_key(&self) -> Result<(), String> {
        let data = self.cli.read("transit/keys/ec").data()?;
        check(data["type"] == "ecdsa-p256", || {
            format!("type {}", data["type"])
        })?;
        let pem = data["keys"]["1"]["public_key"].as_str().unwrap_or_default();
        check(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
                && pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
            || {
                format!(
                    "keys[\"1\"].public_key is not a PEM public key: {}",
                    data["keys"]
                )
            },
        )
    }

    fn denied(&self) -> Result<(), String> {
        let answer = self
            .cli
            .write("transit/encrypt/secret", &[("plaintext", &b64(MESSAGE))]);
        check(answer.code == 2 && answer.status() == Some(403), || {
            format!(
                "exit {}, not 2 with Code: 403: {}{}",
                answer.code, answer.stdout, answer.stderr
            )
        })
    }
}

/// What the shape test compares of one command's answer: the exit code,
/// the HTTP status class of an error (`4xx`), and every JSON path of the
/// output with its type (`data.batch_results[].ciphertext: string`).
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    code: i32,
    status_class: Option<String>,
    paths: BTreeSet<String>,
}

fn shape(answer: &Answer) -> Shape {
    let mut paths = BTreeSet::new();
    if !answer.stdout.trim().is_empty() {
        match serde_json::from_str::<Value>(&answer.stdout) {
            Ok(v) => collect_paths("", &v, &mut paths),
            Err(_) => {
                paths.insert("(not JSON)".to_owned());
            }
        }
    }
    Shape {
        code: answer.code,
        status_class: answer.status().map(|s| format!("{}xx", s / 100)),
        paths,
    }
}

/// `path: type` for `value` and, recursively, for what it holds (the items
/// of an array under `path[]`).
fn collect_paths(path: &str, value: &Value, into: &mut BTreeSet<String>) {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(items) => {
            for item in items {
                collect_paths(&format!("{path}[]"), item, into);
            }
            "array"
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let at = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                collect_paths(&at, field, into);
            }
            "object"
        }
    };
    into.insert(format!(
        "{}: {kind}",
        if path.is_empty() { "." } else { path }
    ));
}

/// The fixed commands of the shape test, in order, with their answers.
fn shape_commands(cli: &Cli) -> Vec<(&'static str, Answer)> {
    let mut out = Vec::new();
    let message = b64(MESSAGE);
    let encrypted = cli.write("transit/encrypt/aes", &[("plaintext", &message)]);
    let ct = encrypted.text("ciphertext").unwrap_or_default();
    out.push(("encrypt", encrypted));
    out.push((
        "decrypt",
        cli.write("transit/decrypt/aes", &[("ciphertext", &ct)]),
    ));
    let batch = json!({"batch_input": [{"plaintext": message}, {"plaintext": b64("two")}]});
    out.push((
        "batch encrypt",
        cli.write_json("transit/encrypt/aes", batch),
    ));
    let signed = cli.write(
        "transit/sign/ec",
        &[("input", &message), ("hash_algorithm", "sha2-256")],
    );
    let sig = signed.text("signature").unwrap_or_default();
    out.push(("sign", signed));
    let verify = [
        ("input", message.as_str()),
        ("signature", &sig),
        ("hash_algorithm", "sha2-256"),
    ];
    out.push(("verify", cli.write("transit/verify/ec", &verify)));
    let hmac = [("input", message.as_str()), ("algorithm", "sha2-256")];
    out.push(("hmac", cli.write("transit/hmac/mac", &hmac)));
    out.push((
        "datakey plaintext",
        cli.write("transit/datakey/plaintext/aes", &[]),
    ));
    out.push(("rotate", cli.write("transit/keys/aes/rotate", &[])));
    out.push((
        "rewrap",
        cli.write("transit/rewrap/aes", &[("ciphertext", &ct)]),
    ));
    out.push(("read key aes", cli.read("transit/keys/aes")));
    out.push(("read key ec", cli.read("transit/keys/ec")));
    out.push(("list keys", cli.run("list", "transit/keys", &[], None)));
    out.push(("unsupported path", cli.write("transit/unheard-of/aes", &[])));
    let garbage = [("ciphertext", "vault:v1:garbage")];
    out.push(("bad request", cli.write("transit/decrypt/aes", &garbage)));
    out.push((
        "denied key",
        cli.write("transit/encrypt/secret", &[("plaintext", &message)]),
    ));
    out
}

/// For each command of [`shape_commands`], the sidecar (`local` backend)
/// gives the CLI what OpenBao gives it: the same exit code, HTTP status
/// class and JSON paths with their types (the values differ: ciphertexts,
/// times, request ids). Nothing is left out of the comparison. The
/// unsupported path is one neither serves, which the app token may write
/// (`transit/+/aes`), so that OpenBao's answer is its own "unsupported path"
/// and not the 403 of its policy.
#[tokio::test]
async fn bao_answers_have_openbaos_shape() {
    let (openbao, sidecar) = tokio::join!(
        Running::start(Target::OpenBao),
        Running::start(Target::Local)
    );
    let (want, got) = (Cli::new(&openbao), Cli::new(&sidecar));
    let (want, got) =
        tokio::task::spawn_blocking(move || (shape_commands(&want), shape_commands(&got)))
            .await
            .expect("the commands end");
    let mut differences = Vec::new();
    for ((name, openbao), (_, sidecar)) in want.iter().zip(&got) {
        let (w, g) = (shape(openbao), shape(sidecar));
        if w != g {
            let missing: Vec<_> = w.paths.difference(&g.paths).collect();
            let extra: Vec<_> = g.paths.difference(&w.paths).collect();
            differences.push(format!(
                "{name}: exit {} vs {}, status {:?} vs {:?}, missing {missing:?}, extra {extra:?}\n  OpenBao said: {}{}\n  the sidecar said: {}{}",
                w.code, g.code, w.status_class, g.status_class,
                openbao.stdout, openbao.stderr, sidecar.stdout, sidecar.stderr
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
