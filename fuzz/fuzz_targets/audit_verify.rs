//! `audit verify` on arbitrary files: a verdict, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kms_sidecar::audit::verify_bytes("fuzz.jsonl", data, None);
    // Checkpoint lines are parsed and checked only with a key.
    let _ = kms_sidecar::audit::verify_bytes("fuzz.jsonl", data, Some(&[0x30; 91]));
});
