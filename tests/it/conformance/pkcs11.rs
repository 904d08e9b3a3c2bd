//! The conformance suite on the `pkcs11` backend, against SoftHSM2: a
//! private token directory, a token initialized with `softhsm2-util`, the
//! suite's keys made with `pkcs11-tool` (label = alias, `CKA_ID` 01), the
//! user PIN in a file; `missing` is a label the token does not have, `down`
//! a second backend on a token label no slot holds; a key is revoked by
//! destroying its object (`pkcs11-tool --delete-object`).

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Setup, aliases_of};
use crate::harness::{HsmKey, SoftHsm};
use std::sync::Arc;

pub const BACKEND: Backend = Backend {
    name: "pkcs11",
    server: "SoftHSM2 (apt `softhsm2`), keys made with OpenSC's `pkcs11-tool`, the PIN in a file",
    lacks: &[(
        Cap::Key(KeyType::RsaOaep),
        "the pkcs11 backend encrypts with AES keys (CKM_AES_GCM); it offers no RSA encryption keys",
    )],
};

fn kind(key: KeyType) -> HsmKey {
    match key {
        KeyType::Ecdsa => HsmKey::EcP256,
        KeyType::Rsa => HsmKey::Rsa2048,
        KeyType::Ed25519 => HsmKey::Ed25519,
        KeyType::Aes => HsmKey::Aes256,
        KeyType::Hmac => HsmKey::Hmac,
        KeyType::RsaOaep => unreachable!("declared lacking"),
    }
}

async fn start() -> Env {
    let hsm = SoftHsm::start("conformance");
    let aliases: Vec<_> = aliases_of(&BACKEND).collect();
    for (alias, key) in &aliases {
        hsm.create_key(kind(*key), alias, "01");
    }
    hsm.create_key(HsmKey::Rsa2048, "pkcs1", "01");
    let down = hsm.backend().replace(
        "token_label: \"conformance\"",
        "token_label: \"no-such-token\"",
    );
    let hsm = Arc::new(hsm);
    let server = hsm.clone();
    // A token has no disabled state that every token honours: an operator
    // revokes a key by destroying its object (C_DestroyObject).
    let disable: Disable = Box::new(move || {
        let hsm = server.clone();
        Box::pin(async move {
            hsm.tool(&["--delete-object", "--type", "secrkey", "--label", "aes"]);
        })
    });
    let setup = Setup {
        backend: hsm.backend(),
        down: Some(down),
        keys: aliases
            .iter()
            .map(|(alias, _)| (*alias, format!("key: {alias}")))
            .collect(),
        missing: Some("key: missing".into()),
        pkcs1: Some("key: pkcs1, algorithm: rsa-pkcs1-2048-sha256".into()),
        disable: Some(disable),
        env: hsm.env(),
        secrets: vec![hsm.pin.clone()],
        server: Box::new(hsm),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
