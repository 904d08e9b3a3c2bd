//! Wire types of API v1 (SPEC §4) and the error body with its stable codes.
//! Pure serde: no IO, no backend calls.

mod error;
pub mod transit;

pub use error::{ApiError, Code, batch_len, parse_json};

use crate::backend::{Context, VersionInfo};
use crate::crypto::{Algorithm, Purpose, SignatureFormat};
use crate::policy::Op;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// Binary input: standard base64 in JSON, decoded into a buffer that is
/// zeroized on drop and never printed.
pub struct B64(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B64({} bytes, redacted)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = B64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a standard base64 string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<B64, E> {
                base64_simd::STANDARD
                    .decode_to_vec(s)
                    .map(|v| B64(Zeroizing::new(v)))
                    .map_err(|_| E::custom("is not valid standard base64"))
            }
        }
        d.deserialize_str(V)
    }
}

/// Standard base64 of output bytes.
pub fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// Binary output, sent as standard base64. The answers of the hot routes
/// hold their bytes in these and encode them straight into the body
/// ([`Answer::to_json`]); `Zeroizing<Vec<u8>>` for plaintext. Never printed.
pub struct B64Out<T = Vec<u8>>(pub T);

impl<T: AsRef<[u8]>> fmt::Debug for B64Out<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B64Out({} bytes, redacted)", self.0.as_ref().len())
    }
}

impl<T: AsRef<[u8]>> Serialize for B64Out<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(b64(self.0.as_ref())))
    }
}

/// A JSON object written into one buffer: base64 fields encoded in place
/// (base64 never needs escaping), other values through `serde_json`.
pub struct JsonObject(Vec<u8>);

impl JsonObject {
    /// Room for the base64 of `binary` bytes; names and short values fit in
    /// what is added.
    pub fn new(binary: usize) -> Self {
        let encoded = base64_simd::STANDARD.encoded_length(binary);
        let mut buf = Vec::with_capacity(encoded + 128);
        buf.push(b'{');
        Self(buf)
    }

    /// `name` is one of our field names: plain ASCII, no escaping needed.
    fn name(&mut self, name: &'static str) {
        if !matches!(self.0.last(), Some(b'{' | b'[')) {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    pub fn b64(self, name: &'static str, bytes: &[u8]) -> Self {
        self.text(name, "", bytes, &base64_simd::STANDARD)
    }

    /// `prefix` (plain ASCII, no escaping needed) and the base64 of `bytes`
    /// in `alphabet`: transit's `vault:v1:…`.
    pub fn text(
        mut self,
        name: &'static str,
        prefix: &str,
        bytes: &[u8],
        alphabet: &base64_simd::Base64,
    ) -> Self {
        self.name(name);
        self.0.push(b'"');
        self.0.extend_from_slice(prefix.as_bytes());
        // Amortized growth (a batch writes many), then the encoder's exact
        // reservation finds the room there.
        self.0.reserve(alphabet.encoded_length(bytes.len()) + 1);
        alphabet.encode_append(bytes, &mut self.0);
        self.0.push(b'"');
        self
    }

    /// An object as the value of `name`, its fields written by `fields`.
    pub fn object(mut self, name: &'static str, fields: impl FnOnce(Self) -> Self) -> Self {
        self.name(name);
        self.0.push(b'{');
        let mut o = fields(self);
        o.0.push(b'}');
        o
    }

    /// An array of objects as the value of `name`, one per item, the
    /// fields of each written by `fields`.
    pub fn objects<T>(
        mut self,
        name: &'static str,
        items: impl IntoIterator<Item = T>,
        fields: impl Fn(Self, T) -> Self,
    ) -> Self {
        self.name(name);
        self.0.push(b'[');
        for item in items {
            if self.0.last() != Some(&b'[') {
                self.0.push(b',');
            }
            self.0.push(b'{');
            self = fields(self, item);
            self.0.push(b'}');
        }
        self.0.push(b']');
        self
    }

    pub fn value<T: Serialize + ?Sized>(mut self, name: &'static str, value: &T) -> Self {
        self.name(name);
        serde_json::to_writer(&mut self.0, value).expect("API values always serialize");
        self
    }

    /// The object and a newline (so that `curl` output ends its line).
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"}\n");
        self.0
    }
}

/// An encryption context as a JSON object of strings. A key sent twice is
/// refused: JSON parsers disagree on which value wins, so a context must
/// mean one thing.
pub fn unique_context<'de, D: Deserializer<'de>>(d: D) -> Result<Context, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Context;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context, A::Error> {
            let mut context = Context::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if context.insert(k, v).is_some() {
                    return Err(de::Error::custom(
                        "a key appears more than once; send each key once",
                    ));
                }
            }
            Ok(context)
        }
    }
    d.deserialize_map(V)
}

/// A whole body or header that is an encryption context.
#[derive(Debug)]
pub struct ContextObject(pub Context);

impl<'de> Deserialize<'de> for ContextObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        unique_context(d).map(ContextObject)
    }
}

/// A key version in a request: `"2"` or `2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionArg(pub String);

impl<'de> Deserialize<'de> for VersionArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VersionArg;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key version (string or number)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VersionArg, E> {
                Ok(VersionArg(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<VersionArg, E> {
                if s.is_empty() || s.len() > 128 {
                    return Err(E::custom("must be 1 to 128 characters"));
                }
                Ok(VersionArg(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /v1/keys/{name}/sign`: exactly one of `message` and `digest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub message: Option<B64>,
    pub digest: Option<B64>,
    pub algorithm: Option<Algorithm>,
    pub format: Option<SignatureFormat>,
}

#[derive(Debug, Serialize)]
pub struct SignResponse {
    pub signature: B64Out,
    pub algorithm: Algorithm,
    pub key: String,
    pub version: String,
}

/// `POST /v1/keys/{name}/sign-batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBatchRequest {
    pub items: Vec<SignItem>,
    pub algorithm: Option<Algorithm>,
    pub format: Option<SignatureFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignItem {
    pub message: Option<B64>,
    pub digest: Option<B64>,
}

#[derive(Debug, Serialize)]
pub struct SignBatchResponse {
    pub signatures: Vec<String>,
    pub algorithm: Algorithm,
    pub key: String,
    pub version: String,
}

/// `POST /v1/keys/{name}/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub message: Option<B64>,
    pub digest: Option<B64>,
    pub signature: B64,
    pub version: Option<VersionArg>,
    pub algorithm: Option<Algorithm>,
    /// ECDSA: `der` or `raw`; guessed from the length when absent.
    pub format: Option<SignatureFormat>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub valid: bool,
    pub version: String,
}

/// `POST /v1/keys/{name}/encrypt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    pub plaintext: B64,
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
}

#[derive(Debug, Serialize)]
pub struct EncryptResponse {
    pub ciphertext: B64Out,
    pub version: String,
}

/// `POST /v1/keys/{name}/decrypt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub ciphertext: B64,
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
}

/// `POST /v1/keys/{name}/flush`.
#[derive(Debug, Serialize)]
pub struct FlushResponse {
    pub key: String,
    pub flushed: bool,
}

impl Answer for FlushResponse {}

/// `POST /v1/keys/{name}/jwt`: the claims of a JWT the key signs; `header`
/// may set `typ` and `cty` of the JOSE header (`alg` and `kid` are the
/// sidecar's; `service::jwt::prepare` checks all three fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequest {
    pub claims: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub header: serde_json::Map<String, serde_json::Value>,
    pub ttl: Option<crate::config::Duration>,
}

/// A signed JWT (a bearer credential: never printed).
#[derive(Serialize)]
pub struct JwtResponse {
    pub jwt: String,
    pub kid: String,
    pub alg: &'static str,
    pub expires_at: String,
    /// The key version that signed (for the audit log).
    #[serde(skip)]
    pub version: String,
}

impl fmt::Debug for JwtResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtResponse")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Answer for JwtResponse {
    fn version(&self) -> Option<&str> {
        Some(&self.version)
    }
}

/// `GET /v1/jwks`, `GET /.well-known/jwks.json`: RFC 7517 keys.
#[derive(Debug, Serialize)]
pub struct Jwks {
    pub keys: Vec<serde_json::Value>,
}

impl Answer for Jwks {}

/// `POST /v1/jwt/verify`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtVerifyRequest {
    pub jwt: String,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl fmt::Debug for JwtVerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifyRequest")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Whether a JWT verified: its `kid`, and its header and claims when it
/// did; why not when it did not.
#[derive(Debug, Serialize)]
pub struct JwtVerifyResponse {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Answer for JwtVerifyResponse {}

/// `POST /v1/keys/{name}/rewrap`: a ciphertext of `encrypt` and its context;
/// answered with an [`EncryptResponse`] under the current version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapRequest {
    pub ciphertext: B64,
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
}

/// Holds plaintext: zeroized on drop, never printed.
#[derive(Debug, Serialize)]
pub struct DecryptResponse {
    pub plaintext: B64Out<Zeroizing<Vec<u8>>>,
}

/// `POST /v1/keys/{name}/envelope/encrypt` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeEncryptRequest {
    pub plaintext: B64,
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
}

#[derive(Debug, Serialize)]
pub struct EnvelopeEncryptResponse {
    pub envelope: B64Out,
    /// The key version that wrapped the data key.
    pub version: String,
}

/// `POST /v1/keys/{name}/envelope/decrypt` (JSON); answered with a
/// [`DecryptResponse`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeDecryptRequest {
    pub envelope: B64,
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
}

/// `POST /v1/keys/{name}/encrypt-batch`, `decrypt-batch`,
/// `envelope/encrypt-batch` and `envelope/decrypt-batch`: the single
/// operation's request once per item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<T> {
    pub items: Vec<T>,
}

/// One result per item, in the items' order: the item's answer, or its own
/// error (one item's failure fails no other).
#[derive(Debug, Serialize)]
pub struct BatchResponse<T> {
    pub items: Vec<BatchItem<T>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BatchItem<T> {
    Done(T),
    Failed { error: ItemError },
}

/// An item's error: the code, message and retryability a single call
/// would have answered.
#[derive(Debug, Serialize)]
pub struct ItemError {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl<T> From<Result<T, ApiError>> for BatchItem<T> {
    fn from(result: Result<T, ApiError>) -> Self {
        match result {
            Ok(v) => BatchItem::Done(v),
            Err(e) => BatchItem::Failed {
                error: ItemError {
                    code: e.code.as_str(),
                    message: e.message,
                    retryable: e.retryable,
                },
            },
        }
    }
}

impl<T: Serialize> Answer for BatchResponse<T> {}

/// `POST /v1/keys/{name}/datakey`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    #[serde(default, deserialize_with = "unique_context")]
    pub context: Context,
    #[serde(default = "default_bits")]
    pub bits: u32,
}

fn default_bits() -> u32 {
    256
}

#[derive(Serialize)]
pub struct DataKeyResponse {
    pub plaintext_key: Zeroizing<String>,
    pub encrypted_key: String,
    pub version: String,
}

impl fmt::Debug for DataKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyResponse")
            .field("plaintext_key", &"<redacted>")
            .field("version", &self.version)
            .finish()
    }
}

/// `POST /v1/keys/{name}/mac`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacRequest {
    pub message: B64,
}

#[derive(Debug, Serialize)]
pub struct MacResponse {
    pub mac: String,
    pub version: String,
}

/// `POST /v1/keys/{name}/verify-mac`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyMacRequest {
    pub message: B64,
    pub mac: B64,
    pub version: Option<VersionArg>,
}

/// `POST /v1/keys/{name}/rotate` takes no body (or `{}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {}

#[derive(Debug, Serialize)]
pub struct RotateResponse {
    pub key: String,
    pub version: String,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize)]
pub struct KeyList {
    pub keys: Vec<KeySummary>,
}

#[derive(Debug, Serialize)]
pub struct KeySummary {
    pub name: String,
    pub backend: String,
    pub algorithm: Option<Algorithm>,
    pub ops: Vec<Op>,
    pub version: Option<String>,
    /// Why algorithm and version are missing, when the backend did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/keys/{name}`.
#[derive(Debug, Serialize)]
pub struct KeyMetadataResponse {
    pub name: String,
    pub backend: String,
    pub backend_type: &'static str,
    pub backend_key: String,
    pub algorithm: Algorithm,
    pub purpose: Purpose,
    pub ops: Vec<Op>,
    pub current_version: String,
    pub versions: Vec<VersionInfo>,
    /// Absent when the backend does not say (transit HMAC keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub rotation: Rotation,
    pub origin: crate::backend::Origin,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
}

/// Rotation status of a key.
#[derive(Debug, Serialize)]
pub struct Rotation {
    /// Whether a rotation period is set (in config or in the backend).
    pub enabled: bool,
    /// The rotation period in seconds.
    pub period_seconds: Option<u64>,
    /// When the current version was created (if the backend says).
    pub last: Option<String>,
    /// When the current version is due for rotation.
    pub next: Option<String>,
    pub should_rotate: bool,
}

/// `GET /v1/keys/{name}/public-key`.
#[derive(Debug, Serialize)]
pub struct PublicKeyResponse {
    pub pem: String,
    pub jwk: serde_json::Value,
    pub algorithm: Algorithm,
    pub version: String,
}

/// `GET /healthz`, and `GET /readyz` on the TCP probe port (the status
/// alone).
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub backends: std::collections::BTreeMap<String, BackendHealth>,
    /// The audit log's state, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditHealth>,
    /// `lost` while another process holds the socket's path and the
    /// sidecar could not take it back; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<&'static str>,
}

/// Whether the audit log's last write succeeded.
#[derive(Debug, Clone, Serialize)]
pub struct AuditHealth {
    /// `ok` or `error`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lines that could not be written since the start.
    pub lost_lines: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendHealth {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since this state was checked.
    pub checked_seconds_ago: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let req: EncryptRequest =
            parse_json(br#"{"plaintext": "dG9wIHNlY3JldCBwbGFpbnRleHQ="}"#).unwrap();
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("dG9w") && !shown.contains("top secret"),
            "{shown}"
        );
        assert!(shown.contains("redacted"), "{shown}");
        let resp = DecryptResponse {
            plaintext: B64Out(Zeroizing::new(b"top secret".to_vec())),
        };
        let shown = format!("{resp:?}");
        assert!(!shown.contains("dG9w") && !shown.contains("top"), "{shown}");
        let dk = DataKeyResponse {
            plaintext_key: Zeroizing::new("a2V5a2V5a2V5".into()),
            encrypted_key: "x".into(),
            version: "1".into(),
        };
        assert!(!format!("{dk:?}").contains("a2V5"));
        let p = crate::backend::Plaintext(Zeroizing::new(b"top secret".to_vec()));
        assert_eq!(format!("{p:?}"), "Plaintext(10 bytes, redacted)");
    }

    /// The SIMD base64 of the hot routes reads and writes exactly what the
    /// base64 crate's standard engine does: padded, canonical, nothing else.
    #[test]
    fn base64_is_the_standard_engines() {
        use base64::Engine;
        let reference = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| {
            serde_json::from_value::<B64>(serde_json::Value::String(s.into())).map(|b| b.0.to_vec())
        };
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 151 + 17) as u8).collect();
            let text = reference.encode(&bytes);
            assert_eq!(b64(&bytes), text, "{len} bytes");
            assert_eq!(decode(&text).unwrap(), bytes, "{len} bytes");
            let object = JsonObject::new(len).b64("x", &bytes);
            assert_eq!(object.0, format!("{{\"x\":\"{text}\"").into_bytes());
        }
        // Missing padding, non-zero trailing bits, the URL-safe alphabet,
        // whitespace, a lone character: refused by both.
        for bad in [
            "QQ", "QR==", "QUI", "QUJ=", "-_8=", "QU I=", "QUI=\n", "Q", "QQ=",
        ] {
            assert!(reference.decode(bad).is_err(), "{bad:?} (reference)");
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    /// The hot answers write their JSON by hand: it must be what serde writes.
    #[test]
    fn hand_written_answers_are_what_serde_writes() {
        fn same<T: Answer>(answer: T) {
            let mut expected = serde_json::to_vec(&answer).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        for len in [0usize, 1, 2, 3, 4, 1024, 1025] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            same(SignResponse {
                signature: B64Out(bytes.clone()),
                algorithm: Algorithm::EcdsaP256Sha256,
                key: "a \"quoted\" \\ key\u{1}".into(),
                version: "v\n1".into(),
            });
            same(EncryptResponse {
                ciphertext: B64Out(bytes.clone()),
                version: "1".into(),
            });
            same(EnvelopeEncryptResponse {
                envelope: B64Out(bytes.clone()),
                version: "projects/p/keys/k/cryptoKeyVersions/2".into(),
            });
            same(DecryptResponse {
                plaintext: B64Out(Zeroizing::new(bytes)),
            });
        }
    }

    #[test]
    fn a_context_key_sent_twice_is_refused() {
        let e = parse_json::<EncryptRequest>(
            br#"{"plaintext": "", "context": {"tenant": "a", "tenant": "b"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, crate::api::Code::InvalidRequest);
        assert!(
            e.message.starts_with("field `context`") && e.message.contains("more than once"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("tenant"), "{}", e.message);
        let ok =
            parse_json::<EncryptRequest>(br#"{"plaintext": "", "context": {"a": "1", "b": "2"}}"#)
                .unwrap();
        assert_eq!(ok.context.len(), 2);
        assert!(parse_json::<ContextObject>(br#"{"a":"1","a":"1"}"#).is_err());
    }
}

/// An API answer: the key version it names (for the audit log) and its
/// JSON body. The answers of the hot routes write their body into one
/// buffer ([`JsonObject`]); the unit tests check it is what serde writes.
pub trait Answer: Serialize {
    fn version(&self) -> Option<&str> {
        None
    }

    /// The JSON body, newline-terminated.
    fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        serde_json::to_writer(&mut body, self).expect("API types always serialize");
        body.push(b'\n'); // so that `curl` output ends its line
        body
    }
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Answer for $t {
            fn version(&self) -> Option<&str> {
                Some(&self.version)
            }
        }
    )*};
}

versioned!(
    SignBatchResponse,
    VerifyResponse,
    DataKeyResponse,
    MacResponse,
    RotateResponse,
    PublicKeyResponse
);

impl Answer for KeyMetadataResponse {
    fn version(&self) -> Option<&str> {
        Some(&self.current_version)
    }
}

impl Answer for SignResponse {
    fn version(&self) -> Option<&str> {
        Some(&self.version)
    }

    fn to_json(&self) -> Vec<u8> {
        JsonObject::new(self.signature.0.len())
            .b64("signature", &self.signature.0)
            .value("algorithm", &self.algorithm)
            .value("key", &self.key)
            .value("version", &self.version)
            .finish()
    }
}

impl Answer for EncryptResponse {
    fn version(&self) -> Option<&str> {
        Some(&self.version)
    }

    fn to_json(&self) -> Vec<u8> {
        JsonObject::new(self.ciphertext.0.len())
            .b64("ciphertext", &self.ciphertext.0)
            .value("version", &self.version)
            .finish()
    }
}

impl Answer for EnvelopeEncryptResponse {
    fn version(&self) -> Option<&str> {
        Some(&self.version)
    }

    fn to_json(&self) -> Vec<u8> {
        JsonObject::new(self.envelope.0.len())
            .b64("envelope", &self.envelope.0)
            .value("version", &self.version)
            .finish()
    }
}

impl Answer for DecryptResponse {
    fn to_json(&self) -> Vec<u8> {
        JsonObject::new(self.plaintext.0.len())
            .b64("plaintext", &self.plaintext.0)
            .finish()
    }
}
