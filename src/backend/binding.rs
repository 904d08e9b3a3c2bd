//! How a context is bound where the KMS's algorithm has no associated data
//! (RSA-OAEP, AES key wrap): the SHA-256 of its canonical encoding is put
//! before the plaintext inside the sealed block, which authenticates every
//! byte of it, and decryption compares it (in constant time) before
//! returning the rest. Another context, none, or a tampered ciphertext is
//! then the one opaque `decryption_failed`, exactly as with AAD.

use super::{Context, Error, canonical_context};
use aws_lc_rs::{constant_time, digest};
use zeroize::Zeroizing;

/// Bytes of the binding.
const BINDING: usize = 32;

/// `SHA-256(canonical context) ‖ plaintext`.
pub fn bind(context: &Context, plaintext: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(BINDING + plaintext.len()));
    out.extend_from_slice(digest::digest(&digest::SHA256, &canonical_context(context)).as_ref());
    out.extend_from_slice(plaintext);
    out
}

/// The plaintext after the binding of `context`, or the opaque failure when
/// the ciphertext was made with another context.
pub fn unbind(context: &Context, opened: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let (binding, plaintext) = opened
        .split_at_checked(BINDING)
        .ok_or_else(Error::decryption_failed)?;
    let want = digest::digest(&digest::SHA256, &canonical_context(context));
    constant_time::verify_slices_are_equal(binding, want.as_ref())
        .map_err(|_| Error::decryption_failed())?;
    Ok(Zeroizing::new(plaintext.to_vec()))
}

/// The largest plaintext RSA-OAEP with SHA-256 of a `bits` key takes after
/// the binding: k − 2·32 − 2 − 32 bytes.
pub fn rsa_oaep_limit(bits: u16) -> usize {
    (usize::from(bits) / 8).saturating_sub(2 * 32 + 2 + BINDING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ErrorKind;

    #[test]
    fn a_bound_context_must_match() {
        let a = Context::from([("tenant".to_owned(), "a".to_owned())]);
        let b = Context::from([("tenant".to_owned(), "b".to_owned())]);
        let sealed = bind(&a, b"secret");
        assert_eq!(
            unbind(&a, &sealed).expect("same context").as_slice(),
            b"secret"
        );
        for wrong in [&b, &Context::new()] {
            assert_eq!(
                unbind(wrong, &sealed).err().map(|e| e.kind),
                Some(ErrorKind::DecryptionFailed)
            );
        }
        assert_eq!(
            unbind(&a, &sealed[..20]).err().map(|e| e.kind),
            Some(ErrorKind::DecryptionFailed)
        );
        assert_eq!(rsa_oaep_limit(2048), 158);
    }
}
