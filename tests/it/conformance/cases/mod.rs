//! The conformance cases: what every backend must answer, with the status
//! and error code `docs/api.md` documents. Each takes a running [`Env`] with the
//! suite's aliases; `every_case!` lists them once, with what they need.
//! The cases live by subject in `signatures.rs`, `symmetric.rs` (encryption,
//! data keys, envelopes, MACs), `lifecycle.rs` (metadata, rotation),
//! `revocation.rs` and `errors.rs`; the helpers they share are here.

mod errors;
mod jwt;
mod lifecycle;
mod revocation;
mod signatures;
mod symmetric;

pub use errors::*;
pub use jwt::*;
pub use lifecycle::*;
pub use revocation::*;
pub use signatures::*;
pub use symmetric::*;

use super::{Env, KeyType};
use crate::harness::{b64, openssl_verifies, unb64};
use bytes::Bytes;
use serde_json::{Value, json};

/// Every case, once, with the capabilities it needs ([`super::Cap`]): hands
/// the list to the macro named (`case_tests` makes a backend's tests,
/// `case_table` the `CASES` table).
macro_rules! every_case {
    ($($then:tt)*) => {
        $($then)*! {
            // ECDSA signatures.
            sign_verify_message: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            sign_verify_digest: [Can(Ecdsa, SignDigest), Can(Ecdsa, Verify)],
            sign_verify_raw: [Can(Ecdsa, SignRaw), Can(Ecdsa, Verify)],
            tampered_message_is_valid_false: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            signature_verifies_with_openssl: [Can(Ecdsa, Sign), Can(Ecdsa, PublicKey)],
            large_message_sign_verify: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            sign_batch_signs_every_item: [Can(Ecdsa, Sign), Can(Ecdsa, SignDigest), Can(Ecdsa, Verify)],
            signatures_are_low_s: [Can(Ecdsa, Sign), Can(Ecdsa, SignRaw), Can(Ecdsa, PublicKey)],
            verify_names_the_version_that_signed: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            verify_with_an_unknown_version_is_invalid_request: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            sign_with_an_algorithm_the_key_lacks_is_invalid_request: [Can(Ecdsa, Sign), Can(Rsa, Sign)],
            verify_with_an_algorithm_the_key_lacks_is_invalid_request: [Can(Ecdsa, Sign), Can(Ecdsa, Verify)],
            digest_of_the_wrong_length_is_invalid_request: [Can(Ecdsa, SignDigest), Can(Ecdsa, Verify)],
            // RSA and Ed25519 signatures.
            rsa_pss_sign_verify: [Can(Rsa, Sign), Can(Rsa, Verify), Can(Rsa, PublicKey)],
            rsa_digest_sign_verify: [Can(Rsa, SignDigest), Can(Rsa, Verify)],
            rsa_pkcs1_on_request: [Can(Rsa, SignPkcs1), Can(Rsa, Verify), Can(Rsa, PublicKey)],
            rsa_pkcs1_key_signs_pss_on_request: [Can(Rsa, SignPkcs1), Can(Rsa, Verify), Can(Rsa, PublicKey)],
            ed25519_sign_verify: [Can(Ed25519, Sign), Can(Ed25519, Verify), Can(Ed25519, PublicKey)],
            ed25519_digest_sign_is_operation_not_supported: [Can(Ed25519, Sign)],
            ed25519_digest_verify_is_operation_not_supported: [Can(Ed25519, Sign), Can(Ed25519, Verify)],
            // Public keys.
            public_key_pem_is_the_jwk_ec: [Can(Ecdsa, PublicKey)],
            public_key_pem_is_the_jwk_rsa: [Can(Rsa, PublicKey)],
            public_key_pem_is_the_jwk_ed25519: [Can(Ed25519, PublicKey)],
            // JWTs and the JWKS.
            jwt_ec_verifies_with_the_jwks: [Can(Ecdsa, Jwt)],
            jwt_rsa_verifies_with_the_jwks: [Can(Rsa, Jwt)],
            jwt_ed25519_verifies_with_the_jwks: [Can(Ed25519, Jwt)],
            jwt_rotation_keeps_old_tokens_verifiable: [Can(Ecdsa, Jwt), Can(Ecdsa, Rotate)],
            // Encryption.
            encrypt_decrypt_with_context: [Can(Aes, Encrypt)],
            decrypt_with_the_wrong_context_fails: [Can(Aes, Encrypt)],
            decrypt_without_the_context_fails: [Can(Aes, Encrypt)],
            decrypt_a_foreign_ciphertext_fails: [Can(Aes, Encrypt), ForeignCiphertext],
            decrypt_a_truncated_ciphertext_fails: [Can(Aes, Encrypt)],
            decrypt_a_tampered_ciphertext_fails: [Can(Aes, Encrypt)],
            datakey_256_unwraps_through_decrypt: [Can(Aes, DataKey), Can(Aes, Encrypt)],
            datakey_128_unwraps_through_decrypt: [Can(Aes, DataKey), Can(Aes, Encrypt)],
            datakey_with_bad_bits_is_invalid_request: [Can(Aes, DataKey)],
            envelope_json_round_trip: [Can(Aes, Envelope)],
            envelope_streamed_round_trip: [Can(Aes, Envelope)],
            envelope_grants_hold: [Can(Aes, Envelope), Can(Aes, Encrypt), Can(Aes, DataKey)],
            // RSA encryption.
            rsa_oaep_encrypt_binds_the_context: [Can(RsaOaep, Encrypt)],
            rsa_oaep_over_its_limit_is_payload_too_large: [Can(RsaOaep, Encrypt)],
            rsa_oaep_datakey_and_envelope: [Can(RsaOaep, DataKey), Can(RsaOaep, Envelope), Can(RsaOaep, Encrypt)],
            // MACs.
            mac_verify_mac: [Can(Hmac, Mac)],
            verify_mac_with_an_unknown_version_is_invalid_request: [Can(Hmac, Mac)],
            // Metadata.
            metadata_of_the_ec_key: [Can(Ecdsa, Metadata)],
            metadata_of_the_rsa_key: [Can(Rsa, Metadata)],
            metadata_of_the_ed25519_key: [Can(Ed25519, Metadata)],
            metadata_of_the_aes_key: [Can(Aes, Metadata)],
            metadata_of_the_rsa_oaep_key: [Can(RsaOaep, Metadata)],
            metadata_of_the_hmac_key: [Can(Hmac, Metadata)],
            // Rotation.
            rotate_ec_keeps_old_signatures: [Can(Ecdsa, Rotate), Can(Ecdsa, Sign), Can(Ecdsa, Verify), Can(Ecdsa, PublicKey)],
            rotate_rsa_keeps_old_signatures: [Can(Rsa, Rotate), Can(Rsa, Sign), Can(Rsa, Verify), Can(Rsa, PublicKey)],
            rotate_ed25519_keeps_old_signatures: [Can(Ed25519, Rotate), Can(Ed25519, Sign), Can(Ed25519, Verify), Can(Ed25519, PublicKey)],
            rotate_aes_keeps_old_ciphertexts: [Can(Aes, Rotate), Can(Aes, Encrypt), Can(Aes, Envelope)],
            rotate_aes_moves_to_a_new_version: [Can(Aes, Rotate), Can(Aes, Encrypt), Can(Aes, Envelope), Can(Aes, Metadata), RotationVersions],
            rotate_hmac_keeps_old_macs: [Can(Hmac, Rotate), Can(Hmac, Mac)],
            rewrap_moves_a_ciphertext_to_the_current_version: [Can(Aes, Rewrap), Can(Aes, Rotate), Can(Aes, Encrypt), RotationVersions],
            rewrap_refuses_a_wrong_context_or_a_tampered_ciphertext: [Can(Aes, Rewrap), Can(Aes, Encrypt)],
            envelope_rewrap_moves_the_data_key_and_keeps_the_body: [Can(Aes, Rewrap), Can(Aes, Envelope), Can(Aes, Rotate), RotationVersions],
            envelope_rewrap_refuses_a_wrong_context_or_a_tampered_data_key: [Can(Aes, Rewrap), Can(Aes, Envelope)],
            envelope_headers_name_the_version_and_key_that_unwrap: [Can(Aes, Envelope), Can(Aes, Rewrap), Can(Aes, Rotate)],
            rewrap_answers_a_wrong_context_as_a_tampered_ciphertext: [Can(Aes, Rewrap), Can(Aes, Encrypt), Can(Aes, Envelope)],
            // Revocation.
            a_disabled_key_is_refused_and_its_data_keys_dropped: [Can(Aes, Envelope), Revocation],
            // Errors.
            missing_key_is_key_not_found: [AbsentKey],
            unconfigured_alias_is_key_not_found: [],
            unreachable_backend_is_retryable_backend_unavailable: [Unreachable],
            sign_with_the_aes_key_is_operation_not_supported: [Can(Aes, Encrypt)],
            encrypt_with_the_ec_key_is_operation_not_supported: [Can(Ecdsa, Sign)],
            mac_with_the_aes_key_is_operation_not_supported: [Can(Aes, Encrypt)],
        }
    };
}
pub(crate) use every_case;

const MSG: &[u8] = b"transfer 10 EUR to bob";
const FORGED: &[u8] = b"transfer 99 EUR to bob";
const SECRET: &[u8] = b"card 4242 4242 4242 4242";

/// `openssl dgst` options for RSA-PSS with whatever salt length was used
/// (transit and the local backend use the hash length, moto the maximum).
const PSS: [&str; 4] = [
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:auto",
];

fn context() -> Value {
    json!({"tenant": "acme", "purpose": "conformance"})
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// `bytes` with one bit of its last byte flipped.
fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    *out.last_mut().expect("not empty") ^= 1;
    out
}

impl Env {
    async fn sign(&self, alias: &str, message: &[u8]) -> Value {
        self.ok(alias, "sign", json!({"message": b64(message)}))
            .await
    }

    /// The answer to verifying `signature` over `message` (every enabled
    /// version).
    async fn verify(&self, alias: &str, message: &[u8], signature: &Value) -> Value {
        self.ok(alias, "verify", verify_body(message, signature))
            .await
    }

    /// Whether `signature` over `message` verifies.
    async fn verifies(&self, alias: &str, message: &[u8], signature: &Value) -> bool {
        self.valid(alias, "verify", verify_body(message, signature))
            .await
    }

    async fn mac(&self, alias: &str, message: &[u8]) -> Value {
        self.ok(alias, "mac", json!({"message": b64(message)}))
            .await
    }

    /// The answer to verifying the MAC of `mac` (a `mac` answer) over `message`.
    async fn verify_mac(&self, alias: &str, message: &[u8], mac: &Value) -> Value {
        let body = json!({"message": b64(message), "mac": mac["mac"]});
        self.ok(alias, "verify-mac", body).await
    }

    async fn public_key(&self, alias: &str) -> Value {
        self.get_ok(&format!("/v1/keys/{alias}/public-key")).await
    }

    /// The PEM of `alias`'s current public key.
    async fn pem(&self, alias: &str) -> String {
        let pk = self.public_key(alias).await;
        pk["pem"].as_str().expect("`pem`").to_owned()
    }

    async fn metadata(&self, alias: &str) -> Value {
        self.get_ok(&format!("/v1/keys/{alias}")).await
    }

    async fn encrypt(&self, alias: &str, plaintext: &[u8], context: Value) -> Value {
        let body = json!({"plaintext": b64(plaintext), "context": context});
        self.ok(alias, "encrypt", body).await
    }

    /// The plaintext of `sealed` (an `encrypt` answer) with `context`.
    async fn decrypt(&self, alias: &str, sealed: &Value, context: Value) -> Vec<u8> {
        let body = json!({"ciphertext": sealed["ciphertext"], "context": context});
        unb64(&self.ok(alias, "decrypt", body).await["plaintext"])
    }

    /// Decrypting `ciphertext` (bytes) with `context` is 422 `decryption_failed`.
    async fn decryption_fails(&self, alias: &str, ciphertext: &[u8], context: Value) {
        let body = json!({"ciphertext": b64(ciphertext), "context": context});
        self.refused(alias, "decrypt", body, 422, "decryption_failed")
            .await;
    }

    /// An envelope of `plaintext` with `context`: the answer.
    async fn seal(&self, plaintext: &[u8], context: Value) -> Value {
        let body = json!({"plaintext": b64(plaintext), "context": context});
        self.ok("aes", "envelope/encrypt", body).await
    }

    /// The plaintext of `sealed` (an envelope answer, or the envelope as
    /// base64) with `context`.
    async fn open(&self, envelope: &Value, context: Value) -> Vec<u8> {
        let envelope = envelope.get("envelope").unwrap_or(envelope);
        let body = json!({"envelope": envelope, "context": context});
        unb64(&self.ok("aes", "envelope/decrypt", body).await["plaintext"])
    }

    /// [`Env::call`] answers 400 `invalid_request`.
    async fn invalid(&self, alias: &str, op: &str, body: Value) {
        self.refused(alias, op, body, 400, "invalid_request").await;
    }

    /// [`Env::call`] answers 422 `operation_not_supported`.
    async fn unsupported(&self, alias: &str, op: &str, body: Value) {
        self.refused(alias, op, body, 422, "operation_not_supported")
            .await;
    }

    /// A streamed envelope call (`application/octet-stream`, the context in
    /// `x-encryption-context`).
    async fn stream(&self, op: &str, body: Vec<u8>, context: &str) -> crate::harness::Resp {
        self.s
            .request(
                http::Method::POST,
                &format!("/v1/keys/aes/envelope/{op}"),
                &[
                    ("content-type", "application/octet-stream"),
                    ("x-encryption-context", context),
                ],
                Bytes::from(body),
            )
            .await
    }
}

/// A verify request's body.
fn verify_body(message: &[u8], signature: &Value) -> Value {
    json!({"message": b64(message), "signature": signature})
}

impl std::fmt::Display for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend.name)
    }
}

/// `version` is a non-empty string.
fn version(t: &Env, answer: &Value) -> String {
    answer["version"]
        .as_str()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{t}: no `version` string in {answer}"))
        .to_owned()
}
