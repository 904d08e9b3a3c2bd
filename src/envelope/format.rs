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
//! context`. Nonces are `00 00 00 ‖ segment index (u64 BE) ‖ last flag`: the
//! key is unique per message, so the index alone keeps nonces unique, and the
//! last flag stops truncation and extension.
//!
//! Algorithm 1 seals the whole plaintext as one segment (index 0, last).
//! Algorithm 2 (streaming) cuts it into 64 KiB segments; every segment but the
//! last holds exactly 64 KiB, the last 0 to 64 KiB, each followed by its tag.

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

/// How the body is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlgorithmId {
    /// One AES-256-GCM segment; HKDF-SHA256 per-message key and commitment.
    Aes256GcmHkdfSha256 = 1,
    /// 64 KiB AES-256-GCM segments; same key derivation.
    Aes256GcmHkdfSha256Segments64K = 2,
}

impl AlgorithmId {
    fn from_byte(b: u8) -> Result<Self, DecryptError> {
        match b {
            1 => Ok(AlgorithmId::Aes256GcmHkdfSha256),
            2 => Ok(AlgorithmId::Aes256GcmHkdfSha256Segments64K),
            _ => Err(DecryptError),
        }
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
        let mut aad = prefix.clone();
        aad.extend_from_slice(context);
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
        let mut aad = prefix.to_vec();
        aad.extend_from_slice(context);
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

/// Seals a whole message held in memory (algorithm 1).
pub fn seal(dek: &[u8], header: Header, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let (mut sealer, mut out) = Sealer::new(
        dek,
        Header {
            algorithm: AlgorithmId::Aes256GcmHkdfSha256,
            ..header
        },
        context,
    );
    out.reserve(plaintext.len() + TAG);
    sealer.seal(plaintext, true, &mut out);
    out
}

/// Opens a whole envelope held in memory, of either algorithm.
pub fn open(
    dek: &[u8],
    envelope: &[u8],
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let (header, n) = Header::parse(envelope)?.ok_or(DecryptError)?;
    let mut opener = Opener::new(dek, &header, &envelope[..n], context)?;
    let mut body = Zeroizing::new(envelope[n..].to_vec());
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    match header.algorithm {
        AlgorithmId::Aes256GcmHkdfSha256 => out.extend_from_slice(opener.open(&mut body, true)?),
        AlgorithmId::Aes256GcmHkdfSha256Segments64K => {
            let mut rest: &mut [u8] = &mut body;
            loop {
                let last = rest.len() <= SEGMENT + TAG;
                let (segment, tail) =
                    rest.split_at_mut(if last { rest.len() } else { SEGMENT + TAG });
                out.extend_from_slice(opener.open(segment, last)?);
                if last {
                    break;
                }
                rest = tail;
            }
        }
    }
    Ok(out)
}
