//! The conformance suite: the same cases, black-box over the real socket,
//! against every backend, and the capability matrix of `docs/backends.md`
//! rendered from the declarations that decide what runs.
//!
//! - `cases/` holds the cases and `every_case!`, their one list, each with
//!   the capabilities it needs ([`Cap`]).
//! - One harness file per backend (`local.rs`, `aws.rs`, `vault.rs`) declares
//!   the backend's gaps ([`Backend::lacks`], each with its reason), starts its
//!   test server and a sidecar with the suite's aliases ([`ALIASES`], plus
//!   `env`/`dec`/`dk` with restricted ops, `missing` and `down`), and ends
//!   with one line, `every_case!(crate::conformance::case_tests)`, which makes
//!   a test `conformance::<backend>::<case>` of every case.
//! - A case needing a capability the backend lacks is left out by nextest's
//!   `default-filter` (rendered into `.config/nextest.toml` by `matrix.rs`),
//!   so nextest lists it as skipped; run on purpose, it says on stderr which
//!   capability and why, and returns. Every other case runs.
//! - `matrix.rs` renders the backends' declarations and the case list into
//!   `docs/backends.md`.
//!
//! Adding a backend: a harness file like `vault.rs`, and its name in
//! `backends!` below; `UPDATE_DOCS=1` then renders its column.

mod cases;
mod matrix;

/// Each backend's harness module, and [`BACKENDS`] in this order.
macro_rules! backends {
    ($($(#[$cfg:meta])* $name:ident),* $(,)?) => {
        $($(#[$cfg])* mod $name;)*

        /// Every backend the suite runs, in the order of the matrix's columns.
        pub const BACKENDS: &[&Backend] = &[$($(#[$cfg])* &$name::BACKEND),*];
    };
}

backends!(
    local,
    aws,
    #[cfg(feature = "vault")]
    vault,
    #[cfg(feature = "azure")]
    azure,
    #[cfg(feature = "gcp")]
    gcp,
    #[cfg(feature = "pkcs11")]
    pkcs11
);

use crate::harness::{Resp, Sidecar};
use cases::every_case;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// The kinds of key the suite's aliases stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ecdsa,
    Rsa,
    Ed25519,
    Aes,
    /// RSA encryption (RSA-OAEP-256), where the backend binds the context
    /// itself.
    RsaOaep,
    Hmac,
}

use KeyType::*;
use Op::*;

impl KeyType {
    const ALL: [KeyType; 6] = [Ecdsa, Rsa, Ed25519, Aes, RsaOaep, Hmac];

    fn title(self) -> &'static str {
        match self {
            Ecdsa => "ECDSA P-256",
            Rsa => "RSA 2048 (PSS)",
            Ed25519 => "Ed25519",
            Aes => "AES-256",
            RsaOaep => "RSA 2048 (OAEP)",
            Hmac => "HMAC-SHA-256",
        }
    }

    /// The sidecar's name for the algorithm of the suite's key of this type.
    pub fn algorithm(self) -> &'static str {
        match self {
            Ecdsa => "ecdsa-p256-sha256",
            Rsa => "rsa-pss-2048-sha256",
            Ed25519 => "ed25519",
            Aes => "aes-256-gcm",
            RsaOaep => "rsa-oaep-2048-sha256",
            Hmac => "hmac-sha256",
        }
    }

    /// What a key of this type can be asked to do: the matrix's rows.
    fn ops(self) -> &'static [Op] {
        match self {
            Ecdsa => &[
                Sign, SignDigest, SignRaw, Verify, PublicKey, Jwt, Rotate, Metadata,
            ],
            Rsa => &[
                Sign, SignDigest, SignPkcs1, Verify, PublicKey, Jwt, Rotate, Metadata,
            ],
            Ed25519 => &[Sign, Verify, PublicKey, Jwt, Rotate, Metadata],
            Aes => &[Encrypt, DataKey, Envelope, Rewrap, Rotate, Metadata],
            RsaOaep => &[Encrypt, DataKey, Envelope, Metadata],
            Hmac => &[Mac, Rotate, Metadata],
        }
    }
}

/// The operations of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sign,
    SignDigest,
    SignRaw,
    SignPkcs1,
    Verify,
    PublicKey,
    Jwt,
    Encrypt,
    DataKey,
    Envelope,
    Rewrap,
    Mac,
    Rotate,
    Metadata,
}

impl Op {
    fn title(self) -> &'static str {
        match self {
            Op::Sign => "sign a message",
            Op::SignDigest => "sign a digest",
            Op::SignRaw => "raw `r‖s` signatures",
            Op::SignPkcs1 => "the other padding on request (`algorithm`: PKCS#1 v1.5 ↔ PSS)",
            Op::Verify => "verify",
            Op::PublicKey => "public key (PEM, JWK)",
            Op::Jwt => "JWTs: sign, JWKS, verify",
            Op::Encrypt => "encrypt / decrypt",
            Op::DataKey => "data keys",
            Op::Envelope => "envelopes (JSON, streamed)",
            Op::Rewrap => "rewrap to the current version",
            Op::Mac => "mac / verify-mac",
            Op::Rotate => "rotate on demand",
            Op::Metadata => "metadata",
        }
    }
}

/// A capability a case may need of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Keys of this type at all (lacking it lacks every `Can` of the type).
    Key(KeyType),
    /// This operation on a key of this type.
    Can(KeyType, Op),
    /// A configured key the backend does not have (→ 404 `key_not_found`).
    AbsentKey,
    /// An endpoint that can be unreachable (→ 503 `backend_unavailable`).
    Unreachable,
    /// A ciphertext of another key is told apart from a refused permission
    /// (→ 422 `decryption_failed`).
    ForeignCiphertext,
    /// A rotation gives the key a new version that ciphertexts name.
    RotationVersions,
    /// The harness can disable the `aes` key in the backend's server, as an
    /// operator does there ([`Setup::disable`]): the sidecar refuses it (409)
    /// and drops its cached data keys within `cache.data_keys.revalidate` + 1 s.
    Revocation,
}

pub use Cap::*;

impl Cap {
    /// Every row of the matrix, in order.
    fn all() -> impl Iterator<Item = Cap> {
        KeyType::ALL
            .into_iter()
            .flat_map(|k| k.ops().iter().map(move |op| Can(k, *op)))
            .chain([
                AbsentKey,
                Unreachable,
                ForeignCiphertext,
                RotationVersions,
                Revocation,
            ])
    }

    /// The matrix's first two columns.
    fn cells(self) -> (&'static str, &'static str) {
        match self {
            Key(k) => (k.title(), "any"),
            Can(k, op) => (k.title(), op.title()),
            AbsentKey => ("any", "a configured key the backend does not have → 404"),
            Unreachable => ("any", "an unreachable endpoint → 503, retryable"),
            ForeignCiphertext => ("AES-256", "a ciphertext of another key → 422"),
            RotationVersions => ("AES-256", "a rotation moves ciphertexts to a new version"),
            Revocation => (
                "AES-256",
                "a key disabled in the KMS → 409, its data keys dropped within `revalidate` + 1 s",
            ),
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key(k) => write!(f, "{} keys", k.title()),
            Can(k, op) => write!(f, "{}: {}", k.title(), op.title()),
            other => f.write_str(other.cells().1),
        }
    }
}

/// A backend as the suite knows it: its name (the `backend_type` of its
/// keys' metadata, and the tests' module) and what it lacks. It has every
/// capability of the matrix it does not list, so a gap nobody declared
/// fails its cases instead of skipping them.
pub struct Backend {
    pub name: &'static str,
    /// What the harness runs it against, for the docs.
    pub server: &'static str,
    /// Each capability the backend lacks, and why.
    pub lacks: &'static [(Cap, &'static str)],
}

impl Backend {
    /// Why the backend lacks `cap` (a key type lacked lacks all its
    /// operations), or `None` when it has it.
    pub fn lacks(&self, cap: Cap) -> Option<&'static str> {
        self.lacks.iter().find_map(|(gap, why)| {
            let covers = *gap == cap || matches!((gap, cap), (Key(k), Can(c, _)) if *k == c);
            covers.then_some(*why)
        })
    }

    pub fn has(&self, key: KeyType) -> bool {
        self.lacks(Key(key)).is_none()
    }
}

/// The aliases every harness configures, on a key of the given type where
/// the backend has that type (`aes2`: a second AES key, for foreign
/// ciphertexts). Besides them: `env`, `dec`, `dk` (the `aes` key with ops
/// `envelope`, `decrypt`, `datakey` only), `missing` and `down`.
pub const ALIASES: [(&str, KeyType); 7] = [
    ("ec", Ecdsa),
    ("rsa", Rsa),
    ("ed", Ed25519),
    ("aes", Aes),
    ("aes2", Aes),
    ("rsaenc", RsaOaep),
    ("hmac", Hmac),
];

/// The aliases of [`ALIASES`] whose key type `backend` has.
pub fn aliases_of(backend: &Backend) -> impl Iterator<Item = (&'static str, KeyType)> + '_ {
    ALIASES.into_iter().filter(|(_, k)| backend.has(*k))
}

/// Disables the suite's `aes` key in the backend's server, the way an
/// operator does it there ([`Cap::Revocation`]).
pub type Disable = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// How often the suite's sidecars revalidate keys with cached data keys
/// (`cache.data_keys.revalidate`).
pub const REVALIDATE: Duration = Duration::from_secs(1);

/// What a harness started: the sidecar's config pieces and environment, and
/// the server to keep running.
pub struct Setup {
    /// The backend under test as a YAML flow map (`{ type: aws, … }`).
    pub backend: String,
    /// The same type of backend on an unreachable endpoint, where the
    /// backend has [`Cap::Unreachable`].
    pub down: Option<String>,
    /// How each alias of [`aliases_of`] names its key (`key: …`, and
    /// whatever else the backend needs).
    pub keys: Vec<(&'static str, String)>,
    /// How `missing` names a key the backend does not have, where it has
    /// [`Cap::AbsentKey`].
    pub missing: Option<String>,
    /// How `pkcs1` names an RSA 2048 signing key configured for PKCS#1 v1.5
    /// (`key: …, algorithm: rsa-pkcs1-2048-sha256`, or a key of that
    /// algorithm where the KMS fixes it), where the backend has RSA keys.
    pub pkcs1: Option<String>,
    /// Where the backend has [`Cap::Revocation`].
    pub disable: Option<Disable>,
    pub env: Vec<(&'static str, String)>,
    /// Values that must never reach the sidecar's log (tokens).
    pub secrets: Vec<String>,
    /// The test server (and its files), stopped after the sidecar.
    pub server: Box<dyn Any>,
}

impl Setup {
    /// The sidecar's config: the backend as `kms` (and `down`), the aliases,
    /// everything granted to this process's uid.
    fn config(&self) -> String {
        let aes = self.fields("aes");
        let mut keys: Vec<String> = self
            .keys
            .iter()
            .map(|(alias, fields)| format!("{alias}: {{ backend: kms, {fields}, ops: [\"*\"] }}"))
            .collect();
        for (alias, op) in [("env", "envelope"), ("dec", "decrypt"), ("dk", "datakey")] {
            keys.push(format!("{alias}: {{ backend: kms, {aes}, ops: [{op}] }}"));
        }
        if let Some(missing) = &self.missing {
            keys.push(format!("missing: {{ backend: kms, {missing} }}"));
        }
        if let Some(pkcs1) = &self.pkcs1 {
            keys.push(format!("pkcs1: {{ backend: kms, {pkcs1}, ops: [\"*\"] }}"));
        }
        let mut backends = vec![format!("kms: {}", self.backend)];
        if let Some(down) = &self.down {
            backends.push(format!("down: {down}"));
            keys.push(format!("down: {{ backend: down, {aes} }}"));
        }
        let indent =
            |lines: Vec<String>| -> String { lines.iter().map(|l| format!("  {l}\n")).collect() };
        format!(
            "backends:\n{}keys:\n{}callers:\n  - {{ uids: [{}], keys: [\"*\"], ops: [\"*\"] }}\ncache: {{ data_keys: {{ revalidate: {}s }} }}\n",
            indent(backends),
            indent(keys),
            nix::unistd::geteuid().as_raw(),
            REVALIDATE.as_secs()
        )
    }

    fn fields(&self, alias: &str) -> &str {
        self.keys
            .iter()
            .find(|(a, _)| *a == alias)
            .map(|(_, f)| f.as_str())
            .unwrap_or_else(|| panic!("the harness configures no `{alias}` key"))
    }
}

/// A backend under test: a sidecar with the suite's aliases, and the test
/// server behind it.
pub struct Env {
    pub s: Sidecar,
    pub backend: &'static Backend,
    disable: Option<Disable>,
    /// Dropped after the sidecar (fields drop in order).
    _server: Box<dyn Any>,
}

impl Env {
    /// Starts the sidecar for `setup`, after checking that the harness
    /// configured what `backend` declares and nothing it lacks.
    pub async fn start(backend: &'static Backend, setup: Setup) -> Env {
        let declared: Vec<&str> = aliases_of(backend).map(|(alias, _)| alias).collect();
        let configured: Vec<&str> = setup.keys.iter().map(|(alias, _)| *alias).collect();
        assert_eq!(
            configured, declared,
            "{}: the harness's aliases differ from the key types it declares",
            backend.name
        );
        for (given, cap, what) in [
            (setup.down.is_some(), Unreachable, "`down`"),
            (setup.missing.is_some(), AbsentKey, "`missing`"),
            (setup.disable.is_some(), Revocation, "`disable`"),
            (setup.pkcs1.is_some(), Key(Rsa), "`pkcs1`"),
        ] {
            assert_eq!(
                given,
                backend.lacks(cap).is_none(),
                "{}: {what} must be configured exactly when the backend has {cap:?}",
                backend.name
            );
        }
        let env: Vec<(&str, &str)> = setup.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let s = Sidecar::start_with_env(&setup.config(), &env).await;
        for secret in &setup.secrets {
            s.secret(secret.clone());
        }
        Env {
            s,
            backend,
            disable: setup.disable,
            _server: setup.server,
        }
    }

    /// Disables the `aes` key in the backend's server ([`Setup::disable`]).
    pub async fn disable_aes_key(&self) {
        let disable = self
            .disable
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the harness cannot disable a key", self.backend.name));
        disable().await;
    }

    /// POSTs `body` to `/v1/keys/{alias}/{op}`.
    pub async fn call(&self, alias: &str, op: &str, body: Value) -> Resp {
        self.s.post(&format!("/v1/keys/{alias}/{op}"), body).await
    }

    /// [`Self::call`], which must answer 200: the JSON.
    pub async fn ok(&self, alias: &str, op: &str, body: Value) -> Value {
        let r = self.call(alias, op, body).await;
        self.expect(&r, &format!("POST /v1/keys/{alias}/{op}"), 200, None)
    }

    /// [`Self::call`], which must answer `status` with error `code` (and a
    /// message, request id and `retryable`): the JSON.
    pub async fn refused(
        &self,
        alias: &str,
        op: &str,
        body: Value,
        status: u16,
        code: &str,
    ) -> Value {
        let r = self.call(alias, op, body).await;
        self.expect(
            &r,
            &format!("POST /v1/keys/{alias}/{op}"),
            status,
            Some(code),
        )
    }

    /// `valid` of a verify or verify-mac answer.
    pub async fn valid(&self, alias: &str, op: &str, body: Value) -> bool {
        let v = self.ok(alias, op, body).await;
        v["valid"]
            .as_bool()
            .unwrap_or_else(|| panic!("{}: `valid` is not a boolean: {v}", self.backend.name))
    }

    /// GETs `path`, which must answer 200: the JSON.
    pub async fn get_ok(&self, path: &str) -> Value {
        let r = self.s.get(path).await;
        self.expect(&r, &format!("GET {path}"), 200, None)
    }

    /// Checks an answer, saying which backend answered what to which
    /// request when it is not the expected one.
    pub fn expect(&self, r: &Resp, request: &str, status: u16, code: Option<&str>) -> Value {
        let got = if r.status == 200 {
            String::new()
        } else {
            r.code()
        };
        assert!(
            r.status == status && code.is_none_or(|c| c == got),
            "{}: {request} answered {} {got}, the suite expects {status} {}: {}",
            self.backend.name,
            r.status,
            code.unwrap_or(""),
            String::from_utf8_lossy(&r.body)
        );
        r.expect(status, code)
    }
}

/// What `case` needs, from the one list.
fn needs(case: &str) -> &'static [Cap] {
    CASES
        .iter()
        .find(|(name, _)| *name == case)
        .map(|(_, needs)| *needs)
        .unwrap_or_else(|| panic!("`{case}` is not in every_case!"))
}

/// Starts the backend for `case`, or says on stderr why the case is
/// skipped (a capability the backend lacks) and returns `None`.
pub async fn start_unless_skipped<F: Future<Output = Env>>(
    backend: &'static Backend,
    case: &str,
    start: impl FnOnce() -> F,
) -> Option<Env> {
    let gap = needs(case)
        .iter()
        .find_map(|cap| Some((cap, backend.lacks(*cap)?)));
    if let Some((cap, why)) = gap {
        eprintln!(
            "SKIPPED conformance::{}::{case}: it needs {cap}, which the {} backend lacks: {why}",
            backend.name, backend.name
        );
        return None;
    }
    Some(start().await)
}

/// The test of every case for the backend of the module it expands in (its
/// `BACKEND` and `async fn start() -> Env`). The capabilities are read from
/// [`CASES`] at run time.
macro_rules! case_tests {
    ($($case:ident: [$($need:expr),* $(,)?]),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            if let Some(env) =
                crate::conformance::start_unless_skipped(&BACKEND, stringify!($case), start).await
            {
                crate::conformance::cases::$case(&env).await;
            }
        }
    )*};
}
pub(crate) use case_tests;

/// `CASES`: every case's name and needs.
macro_rules! case_table {
    ($($case:ident: [$($need:expr),* $(,)?]),* $(,)?) => {
        /// Every case and the capabilities it needs.
        pub const CASES: &[(&str, &[Cap])] = &[$((stringify!($case), &[$($need),*])),*];
    };
}

every_case!(case_table);

/// The matrix shows every backend: it needs the full build.
#[cfg(feature = "vault")]
#[test]
fn the_capability_matrix_in_docs_is_current() {
    matrix::check_docs(BACKENDS);
}
