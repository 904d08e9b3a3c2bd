//! The request of `POST /v1/keys/{name}/jwt` (`claims`, `header`, `ttl`)
//! up to what is signed (`service::jwt::prepare`): any bytes give a token
//! to sign or a clean `invalid_request`, at any reading of the clock, never
//! a panic; what is signed expires after `now` and within the 24 h cap, and
//! its header holds only `typ` and `cty` of the caller's.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kms_sidecar::api::{self, ApiError, parse_json};
use kms_sidecar::service::jwt::{self, MAX_TTL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the clock: today, the epoch, the last second
    // humantime can print, or the end of u64.
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let now = match selector % 4 {
        0 => 1_800_000_000,
        1 => 0,
        2 => 253_402_300_799,
        _ => u64::MAX - u64::from(selector),
    };
    let req = match parse_json::<api::JwtRequest>(json) {
        Ok(req) => req,
        Err(ApiError { message, .. }) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let unsigned = match jwt::prepare(req, "ES256", now) {
        Ok(unsigned) => unsigned,
        Err(ApiError { message, .. }) => {
            assert!(!message.is_empty() && message.len() < 1024, "{message}");
            return;
        }
    };
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&unsigned.claims).expect("base64url"))
            .expect("the claims are JSON");
    let exp = claims["exp"].as_u64().expect("exp is set");
    assert!(exp > now && exp - now <= MAX_TTL.as_secs(), "{exp} at {now}");
    assert!(claims["iat"].is_u64());
    assert!(!unsigned.expires_at.is_empty());
    assert!(unsigned.header.keys().all(|k| k == "typ" || k == "cty"));
});
