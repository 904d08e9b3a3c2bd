//! The conformance suite on the `local` backend: software keys the sidecar
//! creates in a directory of the harness; a key is disabled with
//! `"disabled": true` in its file.

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Setup, aliases_of};
use serde_json::Value;

pub const BACKEND: Backend = Backend {
    name: "local",
    server: "none: key files in the sidecar's directory, created from the config's `algorithm`",
    lacks: &[
        (
            Cap::Key(KeyType::RsaOaep),
            "the local backend has no RSA encryption keys: it encrypts with aes-256-gcm",
        ),
        (
            Cap::AbsentKey,
            "the local backend refuses to start with a configured key it does not have (or creates it when `algorithm` is set)",
        ),
        (
            Cap::Unreachable,
            "the local backend has no network: its keys are files of its own",
        ),
    ],
};

async fn start() -> Env {
    // The key files in a directory of the harness's own, so that it can set
    // `"disabled": true` in one as an operator would.
    let files = tempfile::tempdir().expect("temp dir");
    let dir = files.path().join("keys");
    let aes = dir.join("aes.json");
    let disable: Disable = Box::new(move || {
        let aes = aes.clone();
        Box::pin(async move {
            let mut key: Value = serde_json::from_slice(&std::fs::read(&aes).unwrap()).unwrap();
            key["disabled"] = true.into();
            // Written in place: the file keeps its 0600 mode.
            std::fs::write(&aes, serde_json::to_vec(&key).unwrap()).unwrap();
        })
    });
    let keys = aliases_of(&BACKEND)
        .map(|(alias, key)| {
            (
                alias,
                format!("key: {alias}, algorithm: {}", key.algorithm()),
            )
        })
        .collect();
    let setup = Setup {
        backend: format!(r#"{{ type: local, dir: "{}" }}"#, dir.display()),
        down: None,
        keys,
        missing: None,
        pkcs1: Some("key: pkcs1, algorithm: rsa-pkcs1-2048-sha256".into()),
        disable: Some(disable),
        env: vec![],
        secrets: vec![],
        server: Box::new(files),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
