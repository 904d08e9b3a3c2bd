//! The conformance suite on the `aws` backend, against a moto server: the
//! keys are created there (one `CreateKey` each, concurrently), `missing` is
//! an alias moto does not have, `down` a second backend on 127.0.0.1:1; a key
//! is disabled with `DisableKey`.

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Op, Setup, aliases_of};
use crate::aws::{STATIC, create_key};
use crate::harness::Moto;
use aws_sdk_kms::types::{KeySpec, KeyUsageType};

const ROTATES_SYMMETRIC_ONLY: &str =
    "AWS KMS rotates only symmetric encryption keys on demand (RotateKeyOnDemand)";

pub const BACKEND: Backend = Backend {
    name: "aws",
    server: "moto (`python3 -m moto.server`), static credentials",
    lacks: &[
        (
            Cap::Key(KeyType::RsaOaep),
            "the aws backend does not offer RSA encryption keys (KMS RSAES_OAEP takes no encryption context)",
        ),
        (Cap::Key(KeyType::Ed25519), "AWS KMS has no Ed25519 keys"),
        (
            Cap::Can(KeyType::Rsa, Op::Jwt),
            "moto signs RSA-PSS with the longest salt; JWS PS256 needs a salt of the hash length, which AWS KMS itself uses",
        ),
        (Cap::Can(KeyType::Ecdsa, Op::Rotate), ROTATES_SYMMETRIC_ONLY),
        (Cap::Can(KeyType::Rsa, Op::Rotate), ROTATES_SYMMETRIC_ONLY),
        (Cap::Can(KeyType::Hmac, Op::Rotate), ROTATES_SYMMETRIC_ONLY),
        (
            Cap::ForeignCiphertext,
            "moto answers AccessDeniedException for another key's ciphertext (real KMS: IncorrectKeyException, which the backend maps to 422)",
        ),
        (
            Cap::RotationVersions,
            "moto keeps no key-material ids, so every version reads `1` (real KMS names versions by key-material id)",
        ),
    ],
};

fn spec(key: KeyType) -> (KeySpec, KeyUsageType) {
    match key {
        KeyType::Ecdsa => (KeySpec::EccNistP256, KeyUsageType::SignVerify),
        KeyType::Rsa => (KeySpec::Rsa2048, KeyUsageType::SignVerify),
        KeyType::Aes => (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt),
        KeyType::Hmac => (KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac),
        KeyType::Ed25519 | KeyType::RsaOaep => unreachable!("declared lacking"),
    }
}

async fn start() -> Env {
    let moto = Moto::start().await;
    let kms = moto.kms();
    let aliases: Vec<_> = aliases_of(&BACKEND).collect();
    let ids = futures_util::future::join_all(aliases.iter().map(|(_, key)| {
        let (spec, usage) = spec(*key);
        create_key(&kms, spec, usage)
    }))
    .await;
    let id_of = |alias: &str| {
        let at = aliases.iter().position(|(a, _)| *a == alias);
        ids[at.expect("a configured alias")].clone()
    };
    // AWS KMS RSA keys sign either padding: the alias names the `rsa` key.
    let pkcs1 = format!("key: \"{}\", algorithm: rsa-pkcs1-2048-sha256", id_of("rsa"));
    let aes = id_of("aes");
    let disable: Disable = Box::new(move || {
        let (kms, aes) = (kms.clone(), aes.clone());
        Box::pin(async move {
            kms.disable_key().key_id(aes).send().await.expect("DisableKey");
        })
    });
    let keys = aliases
        .iter()
        .zip(&ids)
        .map(|((alias, _), id)| (*alias, format!("key: \"{id}\"")))
        .collect();
    let region = "type: aws, region: us-east-1";
    let setup = Setup {
        backend: format!("{{ {region}, endpoint: \"{}\" }}", moto.url),
        down: Some(format!("{{ {region}, endpoint: \"http://127.0.0.1:1\" }}")),
        keys,
        missing: Some("key: alias/missing".into()),
        pkcs1: Some(pkcs1),
        disable: Some(disable),
        env: STATIC.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        secrets: vec![],
        server: Box::new(moto),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
