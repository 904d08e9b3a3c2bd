//! Every route's JSON request parsing: any bytes give a value or a clean
//! `invalid_request`, never a panic, and errors never quote the input.
#![no_main]

use kms_sidecar::api::{self, ApiError, parse_json};
use libfuzzer_sys::fuzz_target;

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
    if let Err(ApiError { message, .. }) = parse_json::<T>(data) {
        assert!(!message.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    check::<api::SignRequest>(data);
    check::<api::SignBatchRequest>(data);
    check::<api::VerifyRequest>(data);
    check::<api::EncryptRequest>(data);
    check::<api::DecryptRequest>(data);
    check::<api::EnvelopeEncryptRequest>(data);
    check::<api::EnvelopeDecryptRequest>(data);
    check::<api::DataKeyRequest>(data);
    check::<api::MacRequest>(data);
    check::<api::VerifyMacRequest>(data);
    check::<api::RotateRequest>(data);
    check::<api::JwtRequest>(data);
    check::<api::JwtVerifyRequest>(data);
});
