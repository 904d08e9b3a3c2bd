//! A real OTLP trace receiver (`tests/servers/otlp_receiver.py`, decoding
//! with the official `opentelemetry-proto` definitions) on 127.0.0.1, for
//! one test: the spans the sidecar exported, and the bytes it sent.

use super::fakes::start_script;
use serde_json::Value;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Receiver {
    child: Child,
    dir: TempDir,
    /// OTLP/HTTP base URL (`http://127.0.0.1:PORT`).
    pub http: String,
    /// OTLP/gRPC endpoint (`http://127.0.0.1:PORT`).
    pub grpc: String,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_with(&[]).await
    }

    /// Both protocols over TLS, with this certificate and key (PEM).
    pub async fn start_tls(cert: &Path, key: &Path) -> Receiver {
        let tls = [Path::new("--tls-cert"), cert, Path::new("--tls-key"), key];
        Self::start_with(&tls).await
    }

    async fn start_with(args: &[&Path]) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/otlp_receiver.py");
        let needs = "Python's `opentelemetry-proto` and `grpcio` packages";
        let (child, dir, http) = start_script(&script, args, "the OTLP receiver", needs).await;
        let grpc = std::fs::read_to_string(dir.path().join("grpc"))
            .expect("the receiver writes `grpc` before `url`")
            .trim()
            .to_owned();
        Receiver {
            child,
            dir,
            http,
            grpc,
        }
    }

    /// Every span received so far, as the receiver decoded it.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }

    /// Waits up to 20 s for the spans received to satisfy `done`.
    pub async fn spans_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in 20s; spans received: {spans:#?}\nreceiver log:\n{}",
                std::fs::read_to_string(self.dir.path().join("fake.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The export requests' bytes, as received.
    pub fn raw(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("raw.bin")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
