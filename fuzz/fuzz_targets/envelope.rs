//! The envelope format (docs/envelope-format.md): arbitrary bytes never
//! open and never panic; a sealed envelope opens to its plaintext, and any
//! change to it (one flipped bit, a cut) fails to open.
#![no_main]

use kms_sidecar::envelope::format::{self, AlgorithmId, Header};
use libfuzzer_sys::fuzz_target;

const DEK: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary input as an envelope.
    let _ = Header::parse(data);
    let _ = format::open(&DEK, data, b"{}");

    // 2. Round trip, then a tampered copy.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (context, plaintext) = rest.split_at(rest.len().min(selector as usize % 16));
    let header = Header {
        alias: "fuzz".into(),
        key_version: "1".into(),
        key_ref: "fuzz".into(),
        wrapped_dek: vec![1, 2, 3],
        message_id: format::new_message_id(),
        commitment: [0; 32],
        algorithm: AlgorithmId::BoundAes256GcmHkdfSha256,
    };
    let sealed = format::seal(&DEK, header, context, plaintext);
    let opened = format::open(&DEK, &sealed, context).expect("a sealed envelope opens");
    assert_eq!(&opened[..], plaintext);
    let mut tampered = sealed.clone();
    let at = (selector as usize * 31) % tampered.len();
    tampered[at] ^= 1 << (selector % 8);
    assert!(
        format::open(&DEK, &tampered, context).is_err(),
        "a flipped bit opened"
    );
    assert!(
        format::open(&DEK, &sealed[..sealed.len() - 1], context).is_err(),
        "a cut opened"
    );
});
