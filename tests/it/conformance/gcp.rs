//! The conformance suite on the `gcp` backend, against the Cloud KMS
//! contract fake (`tests/fakes/gcp_kms.py`): workload identity federation
//! with service-account impersonation (the fake's external-account file),
//! the suite's keys created in the fake's key ring; `missing` is a key the
//! ring does not have, `down` a second backend on 127.0.0.1:1; a key is
//! disabled with `cryptoKeyVersions.patch` on its version.

use super::cases::every_case;
use super::{Backend, Cap, Disable, Env, KeyType, Op, Setup, aliases_of};
use crate::harness::Fake;
use serde_json::{Value, json};
use std::sync::Arc;

pub const BACKEND: Backend = Backend {
    name: "gcp",
    server: "the Cloud KMS contract fake (`tests/fakes/gcp_kms.py`, `make fake-gcp`), workload identity federation with impersonation",
    lacks: &[
        (
            Cap::Can(KeyType::Rsa, Op::SignPkcs1),
            "a Cloud KMS RSA key signs with the one padding its algorithm names (RSA_SIGN_PSS_* or RSA_SIGN_PKCS1_*)",
        ),
    ],
};

fn spec(key: KeyType) -> Value {
    let (purpose, algorithm) = match key {
        KeyType::Ecdsa => ("ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"),
        KeyType::Rsa => ("ASYMMETRIC_SIGN", "RSA_SIGN_PSS_2048_SHA256"),
        KeyType::Aes => ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"),
        KeyType::RsaOaep => ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA256"),
        KeyType::Hmac => ("MAC", "HMAC_SHA256"),
        KeyType::Ed25519 => ("ASYMMETRIC_SIGN", "EC_SIGN_ED25519"),
    };
    json!({"purpose": purpose, "algorithm": algorithm})
}

async fn start() -> Env {
    let fake = Fake::gcp().await;
    let aliases: Vec<_> = aliases_of(&BACKEND).collect();
    let server = &fake;
    futures_util::future::join_all(
        aliases
            .iter()
            .map(|(alias, key)| async move { server.create_key(alias, spec(*key)).await }),
    )
    .await;
    // A Cloud KMS key's algorithm names its padding.
    let pkcs1 = json!({"purpose": "ASYMMETRIC_SIGN", "algorithm": "RSA_SIGN_PKCS1_2048_SHA256"});
    fake.create_key("pkcs1", pkcs1).await;
    let secrets = vec![std::fs::read_to_string(fake.path("subject-token")).expect("the subject token")];
    let fake = Arc::new(fake);
    let server = fake.clone();
    // cryptoKeyVersions.patch (cloud.google.com/kms/docs/reference/rest/v1/
    // projects.locations.keyRings.cryptoKeys.cryptoKeyVersions/patch):
    // `PATCH …/cryptoKeyVersions/1?updateMask=state` `{"state": "DISABLED"}`,
    // the primary (and only) version of the `aes` key.
    let disable: Disable = Box::new(move || {
        let fake = server.clone();
        Box::pin(async move {
            let token = fake.gcp_access_token().await;
            let path = "/v1/projects/fake-project/locations/global/keyRings/fake-ring/cryptoKeys/aes/cryptoKeyVersions/1?updateMask=state";
            let body = json!({"state": "DISABLED"});
            fake.call_api("PATCH", path, &token, body).await;
        })
    });
    let setup = Setup {
        backend: fake.gcp_backend(""),
        down: Some(
            r#"{ type: gcp, project: fake-project, location: global, key_ring: fake-ring, endpoint: "http://127.0.0.1:1" }"#
                .into(),
        ),
        keys: aliases
            .iter()
            .map(|(alias, _)| (*alias, format!("key: {alias}")))
            .collect(),
        missing: Some("key: missing".into()),
        pkcs1: Some("key: pkcs1".into()),
        disable: Some(disable),
        // Application Default Credentials: the impersonating external account.
        env: fake
            .env()
            .into_iter()
            .filter(|(k, _)| *k == "GOOGLE_APPLICATION_CREDENTIALS")
            .collect(),
        secrets,
        server: Box::new(fake),
    };
    Env::start(&BACKEND, setup).await
}

every_case!(crate::conformance::case_tests);
