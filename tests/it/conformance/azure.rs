//! The conformance suite on the `azure` backend, against the Key Vault
//! contract fake (`tests/fakes/azure_keyvault.py`): workload identity with
//! the fake's federated token, the suite's keys created in the fake (EC
//! P-256, RSA 2048 for signing and one for RSA-OAEP, `oct-HSM` AES keys as on
//! a Managed HSM); `missing` is a key the vault does not have, `down` a
//! second backend on 127.0.0.1:1; a key is disabled with Key Vault's Update
//! Key.

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Setup, aliases_of};
use crate::harness::Fake;
use serde_json::{Value, json};
use std::sync::Arc;

pub const BACKEND: Backend = Backend {
    name: "azure",
    server: "the Key Vault contract fake (`tests/fakes/azure_keyvault.py`, `make fake-azure`), workload identity",
    lacks: &[
        (Cap::Key(KeyType::Ed25519), "Key Vault has no Ed25519 keys"),
        (
            Cap::Key(KeyType::Hmac),
            "Key Vault has no HMAC keys (Managed HSM's `oct-HSM` HS256 keys are not offered by the backend)",
        ),
    ],
};

fn spec(key: KeyType) -> Value {
    match key {
        KeyType::Ecdsa => json!({"kty": "EC", "crv": "P-256"}),
        KeyType::Rsa => json!({"kty": "RSA", "key_size": 2048, "key_ops": ["sign", "verify"]}),
        KeyType::RsaOaep => json!({
            "kty": "RSA", "key_size": 2048,
            "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        }),
        KeyType::Aes => json!({"kty": "oct-HSM", "key_size": 256}),
        KeyType::Ed25519 | KeyType::Hmac => unreachable!("declared lacking"),
    }
}

async fn start() -> Env {
    let fake = Fake::azure().await;
    let aliases: Vec<_> = aliases_of(&BACKEND).collect();
    let server = &fake;
    futures_util::future::join_all(
        aliases
            .iter()
            .map(|(alias, key)| async move { server.create_key(alias, spec(*key)).await }),
    )
    .await;
    let env = fake.env();
    let secrets = vec![
        std::fs::read_to_string(fake.path("federated-token")).expect("the federated token"),
        std::fs::read_to_string(fake.path("client-secret")).expect("the client secret"),
    ];
    let fake = Arc::new(fake);
    let server = fake.clone();
    // Update Key (learn.microsoft.com/rest/api/keyvault/keys/update-key):
    // `PATCH {vault}/keys/{name}/{version}` `{"attributes": {"enabled": false}}`
    // on the current version, which Get Key names in its `kid`.
    let disable: Disable = Box::new(move || {
        let fake = server.clone();
        Box::pin(async move {
            let token = fake.azure_access_token().await;
            let key = fake
                .call_api("GET", "/keys/aes?api-version=7.5", &token, Value::Null)
                .await;
            let kid = key["key"]["kid"].as_str().expect("a kid");
            let version = kid.rsplit('/').next().expect("a versioned kid");
            let body = json!({"attributes": {"enabled": false}});
            let path = format!("/keys/aes/{version}?api-version=7.5");
            fake.call_api("PATCH", &path, &token, body).await;
        })
    });
    let setup = Setup {
        backend: fake.azure_backend(""),
        down: Some(r#"{ type: azure, vault_url: "https://127.0.0.1:1" }"#.into()),
        keys: aliases
            .iter()
            .map(|(alias, _)| (*alias, format!("key: {alias}")))
            .collect(),
        missing: Some("key: missing".into()),
        pkcs1: Some("key: rsa, algorithm: rsa-pkcs1-2048-sha256".into()),
        disable: Some(disable),
        env,
        secrets,
        server: Box::new(fake),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
