//! Envelope format v1, byte by byte (documented in `docs/envelope-format.md`):
//!
//! ```text
//! "KSE1" | header length (u32 BE) | header | body
//! header = alias | key version | backend key ref | wrapped DEK   (each u16 BE length ‖ bytes)
//!        | message id (32) | key commitment (32) | algorithm id (1)
//! ```
//!
//! Per message, `HKDF-SHA256(ikm = DEK, salt = message id, info = "kms-sidecar
//! envelope v1")` yields 64 bytes: the AES-256-GCM key, then the commitment
//! stored in the header and checked (in constant time) before decrypting. The
//! AAD of every AEAD call is `"KSE1" ‖ header length ‖ header ‖ canonical
//! context` — for algorithms 5 and 6, `"KSE1" ‖ alias ‖ message id ‖ key
//! commitment ‖ algorithm id ‖ canonical context` (see [`Header::aad`]).
//! Nonces are `00 00 00 ‖ segment index (u64 BE) ‖ last flag`: the
//! key is unique per message, so the index alone keeps nonces unique, and the
//! last flag stops truncation and extension.
//!
//! Algorithms 3 and 1 seal the whole plaintext as one segment (index 0,
//! last). Algorithms 4 and 2 (streaming) cut it into 64 KiB segments; every
//! segment but the last holds exactly 64 KiB, the last 0 to 64 KiB, each
//! followed by its tag. 3 and 4 say the DEK was wrapped bound to the
//! envelope purpose (see [`super::wrapping_context`]); 1 and 2 are what
//! earlier releases made. 5 and 6 are 3 and 4 whose AAD leaves out the key
//! version, the backend key reference and the wrapped DEK, so that
//! `envelope/rewrap` can wrap the DEK again under a newer key version
//! without touching the body: the key commitment, which the AAD keeps,
//! still ties the body to exactly one DEK.

use aws_lc_rs::{aead, constant_time, hkdf, rand};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 4] = b"KSE1";
/// Plaintext bytes per segment of a streaming envelope.
pub const SEGMENT: usize = 64 * 1024;
/// AES-GCM tag length.
pub const TAG: usize = 16;
/// Largest header a decoder accepts.
pub const MAX_HEADER: usize = 64 * 1024;
const INFO: &[u8] = b"kms-sidecar envelope v1";

/// The one, deliberately opaque, decryption failure: never says which check
/// failed (malformed header, wrong key, commitment, tag, order, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed")]
pub struct DecryptError;

/// How the body is sealed, and how the DEK was wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlgorithmId {
    /// One AES-256-GCM segment; HKDF-SHA256 per-message key and commitment;
    /// the DEK wrapped with the plain context (earlier releases).
    Aes256GcmHkdfSha256 = 1,
    /// 64 KiB AES-256-GCM segments; otherwise as 1.
    Aes256GcmHkdfSha256Segments64K = 2,
    /// As 1, the DEK wrapped bound to the envelope purpose.
    BoundAes256GcmHkdfSha256 = 3,
    /// As 2, the DEK wrapped bound to the envelope purpose.
    BoundAes256GcmHkdfSha256Segments64K = 4,
    /// As 3, the wrapped DEK and its key version outside the AAD
    /// (rewrappable): what `envelope/encrypt` makes.
    RewrappableAes256GcmHkdfSha256 = 5,
    /// As 4, rewrappable like 5: what a streamed `envelope/encrypt` makes.
    RewrappableAes256GcmHkdfSha256Segments64K = 6,
}

impl AlgorithmId {
    fn from_byte(b: u8) -> Result<Self, DecryptError> {
        match b {
            1 => Ok(AlgorithmId::Aes256GcmHkdfSha256),
            2 => Ok(AlgorithmId::Aes256GcmHkdfSha256Segments64K),
            3 => Ok(AlgorithmId::BoundAes256GcmHkdfSha256),
            4 => Ok(AlgorithmId::BoundAes256GcmHkdfSha256Segments64K),
            5 => Ok(AlgorithmId::RewrappableAes256GcmHkdfSha256),
            6 => Ok(AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K),
            _ => Err(DecryptError),
        }
    }

    /// Whether the body is cut into 64 KiB segments (streaming).
    pub fn segmented(self) -> bool {
        matches!(
            self,
            AlgorithmId::Aes256GcmHkdfSha256Segments64K
                | AlgorithmId::BoundAes256GcmHkdfSha256Segments64K
                | AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K
        )
    }

    /// Whether the DEK was wrapped bound to the envelope purpose.
    pub fn purpose_bound(self) -> bool {
        !matches!(
            self,
            AlgorithmId::Aes256GcmHkdfSha256 | AlgorithmId::Aes256GcmHkdfSha256Segments64K
        )
    }

    /// Whether the wrapped DEK is outside the AAD, so that it can be
    /// replaced by another wrapping of the same DEK.
    pub fn rewrappable(self) -> bool {
        matches!(
            self,
            AlgorithmId::RewrappableAes256GcmHkdfSha256
                | AlgorithmId::RewrappableAes256GcmHkdfSha256Segments64K
        )
    }
}

/// The envelope header.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub alias: String,
    pub key_version: String,
    pub key_ref: String,
    pub wrapped_dek: Vec<u8>,
    pub message_id: [u8; 32],
    pub commitment: [u8; 32],
    pub algorithm: AlgorithmId,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("alias", &self.alias)
            .field("key_version", &self.key_version)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Header {
    /// `"KSE1" ‖ header length ‖ header`: the envelope's prefix, and the
    /// first part of every AAD.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(128 + self.wrapped_dek.len());
        for field in [
            self.alias.as_bytes(),
            self.key_version.as_bytes(),
            self.key_ref.as_bytes(),
            &self.wrapped_dek,
        ] {
            let len =
                u16::try_from(field.len()).expect("header fields are bounded well below 64 KiB");
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(field);
        }
        h.extend_from_slice(&self.message_id);
        h.extend_from_slice(&self.commitment);
        h.push(self.algorithm as u8);
        let mut out = Vec::with_capacity(8 + h.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out
    }

    /// The AAD of every segment: `prefix` (this header as encoded) ‖
    /// `context`; for a rewrappable algorithm, `"KSE1" ‖ alias (u16 length
    /// ‖ bytes) ‖ message id ‖ commitment ‖ algorithm id ‖ context`, which
    /// leaves out the fields a rewrap replaces.
    pub fn aad(&self, prefix: &[u8], context: &[u8]) -> Vec<u8> {
        let mut aad = if self.algorithm.rewrappable() {
            let mut aad = Vec::with_capacity(4 + 2 + self.alias.len() + 65 + context.len());
            aad.extend_from_slice(MAGIC);
            let len = u16::try_from(self.alias.len()).expect("aliases are short");
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(self.alias.as_bytes());
            aad.extend_from_slice(&self.message_id);
            aad.extend_from_slice(&self.commitment);
            aad.push(self.algorithm as u8);
            aad
        } else {
            let mut aad = Vec::with_capacity(prefix.len() + context.len());
            aad.extend_from_slice(prefix);
            aad
        };
        aad.extend_from_slice(context);
        aad
    }

    /// Parses the prefix at the start of `buf`. `Ok(None)`: more bytes are
    /// needed; `Ok(Some((header, n)))`: the prefix is the first `n` bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, DecryptError> {
        if buf.len() < 8 {
            return if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
                Ok(None)
            } else {
                Err(DecryptError)
            };
        }
        if &buf[..4] != MAGIC {
            return Err(DecryptError);
        }
        let len = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_HEADER {
            return Err(DecryptError);
        }
        let Some(mut h) = buf.get(8..8 + len) else {
            return Ok(None);
        };
        let mut field = || -> Result<Vec<u8>, DecryptError> {
            let n = u16::from_be_bytes(h.get(..2).ok_or(DecryptError)?.try_into().expect("2 bytes"))
                as usize;
            let value = h.get(2..2 + n).ok_or(DecryptError)?.to_vec();
            h = &h[2 + n..];
            Ok(value)
        };
        let text = |v: Vec<u8>| String::from_utf8(v).map_err(|_| DecryptError);
        let alias = text(field()?)?;
        let key_version = text(field()?)?;
        let key_ref = text(field()?)?;
        let wrapped_dek = field()?;
        if h.len() != 32 + 32 + 1 {
            return Err(DecryptError);
        }
        let header = Header {
            alias,
            key_version,
            key_ref,
            wrapped_dek,
            message_id: h[..32].try_into().expect("32 bytes"),
            commitment: h[32..64].try_into().expect("32 bytes"),
            algorithm: AlgorithmId::from_byte(h[64])?,
        };
        Ok(Some((header, 8 + len)))
    }
}

/// A fresh random message id.
pub fn new_message_id() -> [u8; 32] {
    let mut id = [0u8; 32];
    rand::fill(&mut id).expect("the system RNG does not fail");
    id
}

struct Okm;

impl hkdf::KeyType for Okm {
    fn len(&self) -> usize {
        64
    }
}

/// The per-message key and commitment derived from a DEK and a message id.
pub fn derive(dek: &[u8], message_id: &[u8; 32]) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, message_id)
        .extract(dek)
        .expand(&[INFO], Okm)
        .and_then(|o| o.fill(&mut okm[..]))
        .expect("64 bytes is a valid HKDF-SHA256 output length");
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut commitment = [0u8; 32];
    commitment.copy_from_slice(&okm[32..]);
    (key, commitment)
}

fn nonce(index: u64, last: bool) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    aead::Nonce::assume_unique_for_key(n)
}

/// Seals the segments of one message, in order.
pub struct Sealer {
    key: aead::LessSafeKey,
    aad: Vec<u8>,
    index: u64,
}

impl Sealer {
    /// A header for `dek` (wrapped as given) and the sealer of its body.
    /// Returns the envelope prefix (`"KSE1" ‖ length ‖ header`) to send first.
    pub fn new(dek: &[u8], mut header: Header, context: &[u8]) -> (Self, Vec<u8>) {
        let (key, commitment) = derive(dek, &header.message_id);
        header.commitment = commitment;
        let prefix = header.encode();
        let aad = header.aad(&prefix, context);
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &key[..])
                .expect("32 bytes is an AES-256 key"),
        );
        (Self { key, aad, index: 0 }, prefix)
    }

    /// Appends the sealed segment (ciphertext ‖ tag) to `out`.
    pub fn seal(&mut self, plaintext: &[u8], last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.index, last),
                aead::Aad::from(&self.aad[..]),
                &mut out[start..],
            )
            .expect("sealing within AES-GCM's limits does not fail");
        out.extend_from_slice(tag.as_ref());
        self.index += 1;
    }
}

/// Opens the segments of one message, in order; refuses anything after the
/// last one.
pub struct Opener {
    key: aead::LessSafeKey,
    aad: Vec<u8>,
    index: u64,
    finished: bool,
}

impl Opener {
    /// Checks the header's commitment against `dek` (before any decryption).
    pub fn new(
        dek: &[u8],
        header: &Header,
        prefix: &[u8],
        context: &[u8],
    ) -> Result<Self, DecryptError> {
        let (key, commitment) = derive(dek, &header.message_id);
        constant_time::verify_slices_are_equal(&commitment, &header.commitment)
            .map_err(|_| DecryptError)?;
        let aad = header.aad(prefix, context);
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &key[..]).map_err(|_| DecryptError)?,
        );
        Ok(Self {
            key,
            aad,
            index: 0,
            finished: false,
        })
    }

    /// Opens one sealed segment (ciphertext ‖ tag) in place; `last` says
    /// whether the caller saw the end of the input after it.
    pub fn open<'a>(
        &mut self,
        segment: &'a mut [u8],
        last: bool,
    ) -> Result<&'a mut [u8], DecryptError> {
        if self.finished || segment.len() < TAG || (!last && segment.len() != SEGMENT + TAG) {
            return Err(DecryptError);
        }
        let plain = self
            .key
            .open_in_place(
                nonce(self.index, last),
                aead::Aad::from(&self.aad[..]),
                segment,
            )
            .map_err(|_| DecryptError)?;
        self.index += 1;
        self.finished = last;
        Ok(plain)
    }

    pub fn finished(&self) -> bool {
        self.finished
    }
}

/// Seals a whole message held in memory in one segment (the header's
/// algorithm must be a one-segment one: 5, or 1 and 3 for tests of old
/// envelopes).
pub fn seal(dek: &[u8], header: Header, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    debug_assert!(!header.algorithm.segmented());
    let (mut sealer, mut out) = Sealer::new(dek, header, context);
    out.reserve(plaintext.len() + TAG);
    sealer.seal(plaintext, true, &mut out);
    out
}

/// Opens a whole envelope held in memory, of any algorithm.
pub fn open(
    dek: &[u8],
    envelope: &[u8],
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let (header, n) = Header::parse(envelope)?.ok_or(DecryptError)?;
    let mut opener = Opener::new(dek, &header, &envelope[..n], context)?;
    let mut body = Zeroizing::new(envelope[n..].to_vec());
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    if !header.algorithm.segmented() {
        out.extend_from_slice(opener.open(&mut body, true)?);
    } else {
        let mut rest: &mut [u8] = &mut body;
        loop {
            let last = rest.len() <= SEGMENT + TAG;
            let (segment, tail) = rest.split_at_mut(if last { rest.len() } else { SEGMENT + TAG });
            out.extend_from_slice(opener.open(segment, last)?);
            if last {
                break;
            }
            rest = tail;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/envelope-format.md`, read from the document.
    struct Vector {
        dek: Vec<u8>,
        message_id: [u8; 32],
        wrapped_dek: Vec<u8>,
        context: Vec<u8>,
        plaintext: Vec<u8>,
        key: Vec<u8>,
        commitment: Vec<u8>,
        envelope: Vec<u8>,
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The envelope of the block after `marker`.
    fn documented_envelope(marker: &str) -> Vec<u8> {
        let doc = include_str!("../../docs/envelope-format.md");
        let block = doc
            .split(marker)
            .nth(1)
            .and_then(|s| s.split("```text").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("docs/envelope-format.md has the block");
        let mut lines = block.lines().skip_while(|l| !l.starts_with("envelope:"));
        let mut hex = lines.next().expect("an envelope")["envelope:".len()..]
            .trim()
            .to_owned();
        hex.extend(lines.take_while(|l| l.starts_with(' ')).map(str::trim));
        unhex(&hex)
    }

    fn documented_vector() -> Vector {
        let doc = include_str!("../../docs/envelope-format.md");
        let block = doc
            .split("<!-- test-vector -->")
            .nth(1)
            .and_then(|s| s.split("```text").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("docs/envelope-format.md has a test-vector block");
        let field = |name: &str| -> String {
            let mut value = String::new();
            let mut lines = block
                .lines()
                .skip_while(|l| !l.starts_with(&format!("{name}:")));
            let first = lines
                .next()
                .unwrap_or_else(|| panic!("field {name} in the vector"));
            value.push_str(first[name.len() + 1..].trim());
            for l in lines.take_while(|l| l.starts_with(' ')) {
                value.push_str(l.trim());
            }
            value
        };
        Vector {
            dek: unhex(&field("dek")),
            message_id: unhex(&field("message id")).try_into().unwrap(),
            wrapped_dek: unhex(&field("wrapped dek")),
            context: field("context").into_bytes(),
            plaintext: field("plaintext").trim_matches('"').as_bytes().to_vec(),
            key: unhex(&field("message key")),
            commitment: unhex(&field("commitment")),
            envelope: unhex(&field("envelope")),
        }
    }

    fn header(v: &Vector, algorithm: AlgorithmId) -> Header {
        Header {
            alias: "pii".into(),
            key_version: "1".into(),
            key_ref: "pii".into(),
            wrapped_dek: v.wrapped_dek.clone(),
            message_id: v.message_id,
            commitment: [0; 32],
            algorithm,
        }
    }

    #[test]
    fn the_documented_vector_is_what_the_code_does() {
        let v = documented_vector();
        let (key, commitment) = derive(&v.dek, &v.message_id);
        assert_eq!(&key[..], &v.key[..]);
        assert_eq!(&commitment[..], &v.commitment[..]);
        let sealed = seal(
            &v.dek,
            header(&v, AlgorithmId::BoundAes256GcmHkdfSha256),
            &v.context,
            &v.plaintext,
        );
        assert_eq!(
            sealed, v.envelope,
            "sealing the vector's inputs gives its envelope"
        );
        assert_eq!(
            &open(&v.dek, &v.envelope, &v.context).unwrap()[..],
            &v.plaintext[..]
        );
    }

    #[test]
    fn every_flipped_bit_fails_opaquely() {
        let v = documented_vector();
        for i in 0..v.envelope.len() {
            for bit in [0x01, 0x80] {
                let mut bad = v.envelope.clone();
                bad[i] ^= bit;
                assert_eq!(
                    open(&v.dek, &bad, &v.context),
                    Err(DecryptError),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
        assert_eq!(
            open(&v.dek, &v.envelope, br#"{"tenant":"evil"}"#),
            Err(DecryptError)
        );
        assert_eq!(
            open(&[7u8; 32], &v.envelope, &v.context),
            Err(DecryptError),
            "another DEK fails the commitment"
        );
        for n in 0..v.envelope.len() {
            assert_eq!(
                open(&v.dek, &v.envelope[..n], &v.context),
                Err(DecryptError),
                "truncated to {n}"
            );
        }
        let mut extended = v.envelope.clone();
        extended.push(0);
        assert_eq!(open(&v.dek, &extended, &v.context), Err(DecryptError));
    }

    /// Algorithm 5: the body is sealed without the key version, backend key
    /// reference and wrapped DEK, so another wrapping of the same DEK can
    /// replace them; anything else that changes fails, and so does a DEK
    /// other than the one committed to, or another algorithm id.
    #[test]
    fn rewrappable_envelopes_keep_their_body_across_a_new_wrapping() {
        let v = documented_vector();
        let sealed = seal(
            &v.dek,
            header(&v, AlgorithmId::RewrappableAes256GcmHkdfSha256),
            &v.context,
            &v.plaintext,
        );
        assert_eq!(sealed, documented_envelope("<!-- test-vector-5 -->"));
        let (h, n) = Header::parse(&sealed).unwrap().unwrap();
        assert_eq!(h.algorithm, AlgorithmId::RewrappableAes256GcmHkdfSha256);
        assert_eq!(*open(&v.dek, &sealed, &v.context).unwrap(), v.plaintext);
        let rewrapped = |key_version: &str, key_ref: &str, wrapped: &[u8]| {
            let mut out = Header {
                key_version: key_version.into(),
                key_ref: key_ref.into(),
                wrapped_dek: wrapped.to_vec(),
                ..h.clone()
            }
            .encode();
            out.extend_from_slice(&sealed[n..]);
            out
        };
        let moved = rewrapped("7", "pii-v7", b"a longer wrapping under version 7");
        assert_eq!(*open(&v.dek, &moved, &v.context).unwrap(), v.plaintext);
        assert_eq!(&moved[moved.len() - (sealed.len() - n)..], &sealed[n..]);
        assert_eq!(
            open(&[7u8; 32], &moved, &v.context),
            Err(DecryptError),
            "a wrapping of another DEK fails the commitment"
        );
        // Every bit outside the replaceable fields counts.
        let replaceable = {
            let start = 8 + 2 + h.alias.len();
            start..start + 6 + h.key_version.len() + h.key_ref.len() + h.wrapped_dek.len()
        };
        for i in (0..sealed.len()).filter(|i| !replaceable.contains(i)) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&v.dek, &bad, &v.context),
                Err(DecryptError),
                "byte {i}"
            );
        }
        assert_eq!(
            open(&v.dek, &sealed, br#"{"tenant":"evil"}"#),
            Err(DecryptError)
        );
        // Algorithm 3 under the same inputs authenticates the whole header.
        let bound = seal(
            &v.dek,
            header(&v, AlgorithmId::BoundAes256GcmHkdfSha256),
            &v.context,
            &v.plaintext,
        );
        let (h3, n3) = Header::parse(&bound).unwrap().unwrap();
        let mut swapped = Header {
            key_version: "7".into(),
            ..h3.clone()
        }
        .encode();
        swapped.extend_from_slice(&bound[n3..]);
        assert_eq!(open(&v.dek, &swapped, &v.context), Err(DecryptError));
        // The algorithm id is authenticated both ways.
        for (from, to) in [(&sealed, 3u8), (&bound, 5u8)] {
            let mut bad = from.clone();
            let at = Header::parse(from).unwrap().unwrap().1 - 1;
            bad[at] = to;
            assert_eq!(open(&v.dek, &bad, &v.context), Err(DecryptError));
        }
    }

    fn segmented(v: &Vector, plaintext: &[u8]) -> (Vec<u8>, usize) {
        let (mut sealer, mut out) = Sealer::new(
            &v.dek,
            header(v, AlgorithmId::BoundAes256GcmHkdfSha256Segments64K),
            &v.context,
        );
        let prefix = out.len();
        let mut chunks = plaintext.chunks(SEGMENT).peekable();
        if chunks.peek().is_none() {
            sealer.seal(&[], true, &mut out);
        }
        while let Some(c) = chunks.next() {
            sealer.seal(c, chunks.peek().is_none(), &mut out);
        }
        (out, prefix)
    }

    #[test]
    fn segmented_envelopes_round_trip_and_refuse_reordering_truncation_and_extension() {
        let v = documented_vector();
        for size in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 17] {
            let plaintext: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let (env, _) = segmented(&v, &plaintext);
            assert_eq!(
                &open(&v.dek, &env, &v.context).unwrap()[..],
                &plaintext[..],
                "{size} bytes"
            );
        }
        let plaintext = vec![42u8; 3 * SEGMENT + 17];
        let (env, prefix) = segmented(&v, &plaintext);
        let seg = SEGMENT + TAG;
        let (head, body) = env.split_at(prefix);
        let segments: Vec<&[u8]> = body.chunks(seg).collect();
        assert_eq!(segments.len(), 4);
        let join = |parts: &[&[u8]]| [head, &parts.concat()].concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "swapped",
                join(&[segments[1], segments[0], segments[2], segments[3]]),
            ),
            (
                "duplicated",
                join(&[
                    segments[0],
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                ]),
            ),
            ("dropped", join(&[segments[0], segments[2], segments[3]])),
            (
                "truncated at a boundary",
                join(&[segments[0], segments[1], segments[2]]),
            ),
            (
                "last removed and a full one made last",
                join(&[segments[0], segments[1]]),
            ),
            ("extended", [env.clone(), vec![0u8; 20]].concat()),
            (
                "extended by a segment",
                join(&[
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    segments[3],
                ]),
            ),
        ];
        for (what, bad) in cases {
            assert_eq!(open(&v.dek, &bad, &v.context), Err(DecryptError), "{what}");
        }
    }

    #[test]
    fn headers_parse_incrementally() {
        let v = documented_vector();
        let prefix_len = 8 + u32::from_be_bytes(v.envelope[4..8].try_into().unwrap()) as usize;
        for n in 0..prefix_len {
            assert_eq!(
                Header::parse(&v.envelope[..n]),
                Ok(None),
                "{n} bytes are not enough"
            );
        }
        let (h, n) = Header::parse(&v.envelope).unwrap().unwrap();
        assert_eq!(n, prefix_len);
        assert_eq!(h.alias, "pii");
        assert_eq!(h.wrapped_dek, v.wrapped_dek);
        assert_eq!(Header::parse(b"XXXX"), Err(DecryptError));
        let mut huge = v.envelope.clone();
        huge[4..8].copy_from_slice(&(MAX_HEADER as u32 + 1).to_be_bytes());
        assert_eq!(Header::parse(&huge), Err(DecryptError));
    }
}
