//! Config parsing and validation: any text gives a config or a clear error,
//! never a panic.
#![no_main]

use kms_sidecar::config::Config;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env: BTreeMap<String, String> = BTreeMap::new();
        if let Ok(config) = Config::parse(text, "fuzz.yaml", &env) {
            let _ = config.to_yaml();
        }
    }
});
