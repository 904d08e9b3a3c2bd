//! A small kms-sidecar client in Rust: signs a message over the Unix socket,
//! verifies the signature, then checks that a tampered message does not
//! verify.
//!
//! Start the sidecar in one terminal, then run the example from the same
//! directory in another:
//!
//! ```text
//! make run
//! cargo run --example client -- ecdsa-p256
//! ```
//!
//! The argument is a signing key alias of the sidecar's config (`ecdsa-p256`
//! when left out; the embedded default also has `ed25519` and `rsa-3072`).
//! The socket is `$KMS_SIDECAR_SOCKET`, or `./kms-sidecar.sock`. The process
//! exits non-zero when the sidecar cannot be reached or answers anything but
//! what is expected.
//!
//! The client is hyper's legacy pooled client with `hyperlocal`'s connector;
//! `hyperlocal::Uri` carries the socket path in the URI's host.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The sidecar's JSON API on one socket.
struct Sidecar {
    client: Client<UnixConnector, Full<Bytes>>,
    socket: PathBuf,
}

impl Sidecar {
    fn new(socket: PathBuf) -> Self {
        Self {
            client: Client::unix(),
            socket,
        }
    }

    /// Sends one request and returns the status and the JSON body (error
    /// answers are JSON too: `{"error":{"code","message",...}}`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Error> {
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(hyperlocal::Uri::new(&self.socket, path))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = self.client.request(req).await.map_err(|e| {
            // hyper-util's error says only "client error (Connect)"; the
            // cause (no such file, permission denied, ...) is its source.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            format!(
                "could not reach the sidecar on {}: {why} (is `make run` running?)",
                self.socket.display()
            )
        })?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "HTTP {status}: the body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, value))
    }

    /// A POST that must answer 200.
    async fn post_ok(&self, path: &str, body: &Value) -> Result<Value, Error> {
        match self.call(Method::POST, path, Some(body)).await? {
            (StatusCode::OK, v) => Ok(v),
            (status, v) => Err(format!(
                "POST {path}: HTTP {status}: {} ({})",
                v["error"]["code"].as_str().unwrap_or("?"),
                v["error"]["message"].as_str().unwrap_or("no message"),
            )
            .into()),
        }
    }

    /// Signs `message` with key `alias`: (signature base64, algorithm, version).
    async fn sign(&self, alias: &str, message: &[u8]) -> Result<(String, String, String), Error> {
        let v = self
            .post_ok(
                &format!("/v1/keys/{alias}/sign"),
                &json!({ "message": STANDARD.encode(message) }),
            )
            .await?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("sign: the answer has no `{name}`: {v}"))
        };
        Ok((field("signature")?, field("algorithm")?, field("version")?))
    }

    /// Asks the sidecar whether `signature` (base64) is valid for `message`.
    async fn verify(&self, alias: &str, message: &[u8], signature: &str) -> Result<bool, Error> {
        let v = self
            .post_ok(
                &format!("/v1/keys/{alias}/verify"),
                &json!({ "message": STANDARD.encode(message), "signature": signature }),
            )
            .await?;
        v["valid"]
            .as_bool()
            .ok_or_else(|| format!("verify: the answer has no boolean `valid`: {v}").into())
    }
}

async fn run(alias: &str, socket: PathBuf) -> Result<(), Error> {
    // The alias goes into the request path as is.
    if alias.is_empty()
        || !alias
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!("{alias:?} is not a key alias").into());
    }
    let sidecar = Sidecar::new(socket);
    let message = b"hello from examples/client.rs";
    let tampered = b"hello from examples/client.rs!";

    let (signature, algorithm, version) = sidecar.sign(alias, message).await?;
    println!("key:       {alias} ({algorithm}, version {version})");
    println!("message:   {:?}", String::from_utf8_lossy(message));
    println!("signature: {signature}");

    let valid = sidecar.verify(alias, message, &signature).await?;
    println!("verify the message:          valid: {valid}");
    if !valid {
        return Err("the signature does not verify for the message it was made for".into());
    }

    let valid = sidecar.verify(alias, tampered, &signature).await?;
    println!("verify a tampered message:   valid: {valid}");
    if valid {
        return Err("the signature verifies for a tampered message".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let alias = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ecdsa-p256".to_owned());
    let socket = std::env::var_os("KMS_SIDECAR_SOCKET")
        .map_or_else(|| PathBuf::from("./kms-sidecar.sock"), PathBuf::from);
    println!("sidecar:   {}", socket.display());
    match run(&alias, socket).await {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
