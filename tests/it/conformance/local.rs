//! The conformance suite on the `local` backend: software keys the sidecar
//! creates in its own directory.

use super::cases::every_case;
use super::{Backend, Cap, Env, KeyType, Setup, aliases_of};

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
    let keys = aliases_of(&BACKEND)
        .map(|(alias, key)| {
            (
                alias,
                format!("key: {alias}, algorithm: {}", key.algorithm()),
            )
        })
        .collect();
    let setup = Setup {
        backend: r#"{ type: local, dir: "{dir}/keys" }"#.into(),
        down: None,
        keys,
        missing: None,
        env: vec![],
        secrets: vec![],
        server: Box::new(()),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
