//! The `vault` backend: HashiCorp Vault or OpenBao transit, through
//! `vaultrs` (rustls).
//!
//! The sidecar logs in with one of four auth methods (a token file, AppRole,
//! Kubernetes or JWT with the pod's projected service-account token), keeps
//! its token renewed in the background at ~2/3 of its TTL and logs in again
//! when renewal is impossible, fails or nears the max TTL. Requests never
//! wait on a login: they use the current token. Vault answers 403 both to a
//! token its policy does not cover and to one it no longer accepts (revoked,
//! expired, or forgotten by a restarted dev server), so a refused call asks
//! Vault about the token (`lookup-self`): a policy denial stays `forbidden`;
//! a rejected token is dropped — the call is `unauthenticated`, the backend
//! not ready — and the background task logs in again at once.
//!
//! `vaultrs` serves the calls it models fully (logins, token lookup and
//! renewal, `sys/health`, encrypt, decrypt, HMAC, verify HMAC, rotate);
//! reading a key, sign/verify and datakey go through small endpoints of our
//! own on vaultrs's executor, because vaultrs's types lack the `hmac` key
//! type, `latest_version`, `salt_length` and datakey's `associated_data`.
//!
//! Versions: transit prefixes ciphertexts, signatures and MACs with
//! `vault:vN:`. Our API shows `N` as the version and never the prefix: a
//! ciphertext is `N` (u32, big-endian) followed by the decoded transit
//! ciphertext, and verify/decrypt rebuild the prefix.

use super::{
    AbortOnDrop, Backend, Context, DataKey, Error, ErrorKind, KeyMetadata, KeyRef, Origin,
    Plaintext, PublicKey, Sealed, SignOptions, Signature, Verified, VersionInfo, canonical_context,
};
use crate::config::{VaultAuth, VaultBackendConfig};
use crate::crypto::{self, Algorithm, Purpose, SignInput, SignatureFormat};
use crate::metrics::Metrics;
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

/// How long a key's type and versions are reused for request decisions.
const KEY_INFO_TTL: Duration = Duration::from_secs(300);
/// How often a `token` method's file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(5);
/// Where the `kubernetes` method finds the pod's token by default.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Vault / OpenBao transit.
pub struct VaultBackend {
    mount: String,
    session: Arc<Session>,
    keys: Mutex<HashMap<String, (Instant, Arc<KeyInfo>)>>,
    /// Stops the renewal loop when the backend goes.
    _renewer: AbortOnDrop,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.session.base.settings.address.as_str())
            .field("mount", &self.mount)
            .field("auth", &self.session.auth.method())
            .finish_non_exhaustive()
    }
}

impl VaultBackend {
    pub async fn new(
        name: &str,
        config: &VaultBackendConfig,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let base = base_client(config, timeout)?;
        let session = Arc::new(Session {
            backend: name.to_owned(),
            base,
            auth: config.auth.clone(),
            current: RwLock::new(None),
            last_error: RwLock::new(None),
            rejected: RwLock::new(None),
            suspect: Notify::new(),
            metrics,
        });
        // Log in at once when Vault answers quickly, so a normal start is
        // ready at once; the loop takes over either way.
        let first = tokio::time::timeout(Duration::from_secs(5), session.login()).await;
        match first {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => session.failed(&why),
            Err(_) => session.failed("the first login timed out after 5s"),
        }
        let renewer = tokio::spawn(renew_loop(session.clone()));
        Ok(Self {
            mount: config.mount.trim_matches('/').to_owned(),
            session,
            keys: Mutex::new(HashMap::new()),
            _renewer: AbortOnDrop(renewer.abort_handle()),
        })
    }
}

/// The token-less client: address, TLS, namespace and timeout, from the
/// config with `VAULT_ADDR`, `VAULT_CACERT`, `VAULT_NAMESPACE` as defaults.
fn base_client(config: &VaultBackendConfig, timeout: Duration) -> Result<VaultClient, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let address = config
        .address
        .clone()
        .or_else(|| env("VAULT_ADDR"))
        .ok_or("`address` is not set and neither is VAULT_ADDR")?;
    // vaultrs panics on a bad URL: check it first.
    crate::config::check_vault_address(&address).map_err(|why| format!("address {why}"))?;
    url::Url::parse(&address).map_err(|e| format!("address is not a URL: {e}"))?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(&address)
        .token("")
        .timeout(Some(timeout))
        // TLS is always verified (VAULT_SKIP_VERIFY is ignored), and the
        // client certificate comes from the config only.
        .verify(true)
        .identity(None);
    let ca_file = config
        .ca_file
        .clone()
        .or_else(|| env("VAULT_CACERT").map(PathBuf::from));
    settings.ca_certs(
        ca_file
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    if let Some(namespace) = config.namespace.clone().or_else(|| env("VAULT_NAMESPACE")) {
        settings.set_namespace(namespace);
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut pem = Zeroizing::new(read(cert)?);
        pem.extend_from_slice(&Zeroizing::new(read(key)?));
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("client certificate and key: {e}"))?;
        settings.identity(Some(identity));
    }
    let settings = settings.build().map_err(|e| e.to_string())?;
    VaultClient::new(settings).map_err(|e| format!("cannot build the Vault client: {e}"))
}

/// The login state shared by requests and the renewal loop.
struct Session {
    backend: String,
    /// No token: used to log in and for `sys/health`.
    base: VaultClient,
    auth: VaultAuth,
    current: RwLock<Option<Arc<Token>>>,
    /// Why the last login or renewal failed (never a token).
    last_error: RwLock<Option<String>>,
    /// Why Vault rejected the last token (revoked, expired), until a login
    /// succeeds.
    rejected: RwLock<Option<String>>,
    /// Woken when Vault rejected the token: log in again at once.
    suspect: Notify,
    metrics: Arc<Metrics>,
}

/// A Vault token and the client that sends it.
struct Token {
    client: VaultClient,
    obtained: Instant,
    /// TTL at login or last renewal; zero for a token that never expires.
    ttl: Duration,
    expires: Option<SystemTime>,
    renewable: bool,
    /// Renewal was capped by the max TTL: log in again next time.
    near_max: bool,
    /// SHA-256 of the token file the token came from (`token` method).
    file_digest: Option<Vec<u8>>,
    /// What Vault said of the token after a refused call; one check at a time.
    checked: tokio::sync::Mutex<Checked>,
}

/// Vault's word on a token after a refused call.
#[derive(Clone, Copy)]
enum Checked {
    Never,
    /// Good by a `lookup-self` sent at this instant: a refusal received
    /// before it was the policy's.
    Valid(Instant),
    /// Vault no longer accepts it.
    Rejected,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.client.settings.token.zeroize();
        self.client.middle.token.zeroize();
    }
}

impl Token {
    fn valid(&self) -> bool {
        self.expires.is_none_or(|e| e > SystemTime::now())
    }

    /// When to renew or log in again: at 2/3 of the TTL.
    fn refresh_at(&self) -> Option<Instant> {
        (!self.ttl.is_zero()).then(|| self.obtained + self.ttl.mul_f64(2.0 / 3.0))
    }
}

impl Session {
    /// The current token if it has not expired.
    fn valid(&self) -> Option<Arc<Token>> {
        let current = self.current.read().expect("never poisoned").clone()?;
        current.valid().then_some(current)
    }

    /// The current token, or why there is none.
    fn token(&self) -> Result<Arc<Token>, Error> {
        self.valid().ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!("no valid Vault token: {}", self.why_no_token()),
            )
        })
    }

    /// Why there is no token: the rejection of the last one and the failure
    /// of the logins since (never a token).
    fn why_no_token(&self) -> String {
        let rejected = self.rejected.read().expect("never poisoned").clone();
        let failed = self.last_error.read().expect("never poisoned").clone();
        match (rejected, failed) {
            (Some(r), Some(f)) => format!(
                "Vault rejected the token as invalid, expired or revoked ({r}), and logging in again failed: {f}"
            ),
            (Some(r), None) => format!(
                "Vault rejected the token as invalid, expired or revoked ({r}); logging in again"
            ),
            (None, Some(f)) => f,
            (None, None) => "not logged in yet".to_owned(),
        }
    }

    /// A client like the base one, sending `token`.
    fn client_with(&self, token: &str) -> VaultClient {
        let base = &self.base;
        VaultClient {
            http: rustify::clients::reqwest::Client::new(&base.http.base, base.http.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_owned(),
                ..base.middle.clone()
            },
            settings: vaultrs::client::VaultClientSettings {
                token: token.to_owned(),
                ..base.settings.clone()
            },
        }
    }

    /// Logs in with the configured method (re-reading its files) and makes
    /// the new token current.
    async fn login(&self) -> Result<Arc<Token>, String> {
        let method = self.auth.method();
        let mount = |m: &Option<String>| m.clone().unwrap_or_else(|| method.to_owned());
        let obtained = Instant::now();
        let (client, ttl, renewable, file_digest) = match &self.auth {
            VaultAuth::Token(t) => {
                let token = read_secret(&t.token_file)?;
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
                let client = self.client_with(&token);
                let info = vaultrs::token::lookup_self(&client).await.map_err(|e| {
                    let file = t.token_file.display();
                    match status_of(&e) {
                        Some(401 | 403) => format!(
                            "the token in {file} is invalid, expired or revoked: {}",
                            describe(&e)
                        ),
                        _ => format!("cannot check the token in {file}: {}", describe(&e)),
                    }
                })?;
                let renewable = info.renewable.unwrap_or(false);
                (client, info.ttl, renewable, Some(digest.as_ref().to_vec()))
            }
            VaultAuth::Approle(a) => {
                let role_id = read_secret(&a.role_id_file)?;
                let secret_id = read_secret(&a.secret_id_file)?;
                let auth = vaultrs::auth::approle::login(
                    &self.base,
                    &mount(&a.mount),
                    &role_id,
                    &secret_id,
                )
                .await
                .map_err(|e| format!("AppRole login failed: {}", describe(&e)))?;
                self.adopt(auth)
            }
            VaultAuth::Kubernetes(r) => {
                let file = r
                    .token_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_TOKEN));
                let jwt = read_secret(&file)?;
                let auth =
                    vaultrs::auth::kubernetes::login(&self.base, &mount(&r.mount), &r.role, &jwt)
                        .await
                        .map_err(|e| {
                            format!(
                                "Kubernetes login as role `{}` failed: {}",
                                r.role,
                                describe(&e)
                            )
                        })?;
                self.adopt(auth)
            }
            VaultAuth::Jwt(r) => {
                let file = r.token_file.clone().unwrap_or_default();
                let jwt = read_secret(&file)?;
                let auth = vaultrs::auth::oidc::login(
                    &self.base,
                    &mount(&r.mount),
                    &jwt,
                    Some(r.role.clone()),
                )
                .await
                .map_err(|e| format!("JWT login as role `{}` failed: {}", r.role, describe(&e)))?;
                self.adopt(auth)
            }
        };
        let ttl = Duration::from_secs(ttl);
        let token = Arc::new(Token {
            client,
            obtained,
            ttl,
            expires: (!ttl.is_zero()).then(|| SystemTime::now() + ttl),
            renewable,
            near_max: false,
            file_digest,
            checked: tokio::sync::Mutex::new(Checked::Never),
        });
        tracing::info!(backend = %self.backend, method, ttl = ?ttl, renewable, "logged in to Vault");
        Ok(self.install(token))
    }

    /// The client, TTL and renewability of a login's answer, the token
    /// moved out of it so that it is wiped after use.
    fn adopt(&self, mut auth: vaultrs::api::AuthInfo) -> (VaultClient, u64, bool, Option<Vec<u8>>) {
        let token = Zeroizing::new(std::mem::take(&mut auth.client_token));
        auth.accessor.zeroize();
        (
            self.client_with(&token),
            auth.lease_duration,
            auth.renewable,
            None,
        )
    }

    /// Renews the current token; a TTL shorter than asked means the max TTL
    /// is near, so the next refresh logs in again.
    async fn renew(&self, token: &Token) -> Result<Arc<Token>, String> {
        let auth = vaultrs::token::renew_self(&token.client, None)
            .await
            .map_err(|e| format!("token renewal failed: {}", describe(&e)))?;
        let ttl = Duration::from_secs(auth.lease_duration);
        let renewed = Arc::new(Token {
            client: self.client_with(&token.client.settings.token),
            obtained: Instant::now(),
            ttl,
            expires: (!ttl.is_zero()).then(|| SystemTime::now() + ttl),
            renewable: auth.renewable,
            near_max: ttl < token.ttl,
            file_digest: token.file_digest.clone(),
            checked: tokio::sync::Mutex::new(Checked::Never),
        });
        drop(auth);
        tracing::debug!(backend = %self.backend, ttl = ?ttl, "renewed the Vault token");
        Ok(self.install(renewed))
    }

    fn install(&self, token: Arc<Token>) -> Arc<Token> {
        let mut current = self.current.write().expect("never poisoned");
        *current = Some(token.clone());
        *self.last_error.write().expect("never poisoned") = None;
        *self.rejected.write().expect("never poisoned") = None;
        drop(current);
        let unix = token
            .expires
            .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics
            .credential_expiry
            .with_label_values(&[&self.backend])
            .set(unix);
        self.metrics
            .credential_refresh
            .with_label_values(&[&self.backend, "ok"])
            .inc();
        token
    }

    fn failed(&self, why: &str) {
        self.metrics
            .credential_refresh
            .with_label_values(&[&self.backend, "error"])
            .inc();
        tracing::warn!(backend = %self.backend, error = why, "Vault login or renewal failed; keeping the current token while it is valid");
        *self.last_error.write().expect("never poisoned") = Some(why.to_owned());
    }

    /// Whether the `token` method's file now holds another token.
    fn token_file_changed(&self, token: &Token) -> bool {
        let VaultAuth::Token(t) = &self.auth else {
            return false;
        };
        match read_secret(&t.token_file) {
            Ok(now) => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, now.as_bytes());
                token.file_digest.as_deref() != Some(digest.as_ref())
            }
            Err(_) => false,
        }
    }

    /// Whether Vault still accepts `token`, after it refused a call made
    /// with it at `refused` (a revocation is final, so a `lookup-self` sent
    /// after the refusal decides it, and concurrent refusals share one).
    /// When the lookup cannot be made the token is kept; a rejected token is
    /// dropped (see [`Self::reject`]).
    async fn still_valid(&self, token: &Arc<Token>, refused: Instant) -> bool {
        let mut checked = token.checked.lock().await;
        match *checked {
            Checked::Rejected => return false,
            Checked::Valid(sent) if sent >= refused => return true,
            Checked::Valid(_) | Checked::Never => {}
        }
        let sent = Instant::now();
        match vaultrs::token::lookup_self(&token.client).await {
            Ok(_) => {
                *checked = Checked::Valid(sent);
                true
            }
            Err(e) if matches!(status_of(&e), Some(401 | 403)) => {
                *checked = Checked::Rejected;
                self.reject(token, &describe(&e));
                false
            }
            Err(e) => {
                tracing::debug!(backend = %self.backend, error = %describe(&e), "cannot check the Vault token; keeping it");
                true
            }
        }
    }

    /// Drops `token` if it is still the current one: calls are then
    /// `unauthenticated` and the backend not ready, saying why, until a
    /// login succeeds; the renewal loop is woken to log in at once.
    fn reject(&self, token: &Arc<Token>, why: &str) {
        let mut current = self.current.write().expect("never poisoned");
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, token)) {
            return;
        }
        *current = None;
        *self.rejected.write().expect("never poisoned") = Some(why.to_owned());
        // Only failures of the logins from now on explain the state.
        *self.last_error.write().expect("never poisoned") = None;
        drop(current);
        tracing::warn!(backend = %self.backend, error = why, "Vault rejected the token as invalid, expired or revoked; logging in again");
        self.suspect.notify_one();
    }
}

/// What woke the renewal loop.
enum Wake {
    Due,
    Suspect,
    Poll,
}

/// Keeps a valid token: renews at 2/3 of its TTL, logs in again when it
/// cannot renew, when renewal fails or nears the max TTL, at once when a
/// refused call finds the token rejected ([`Session::still_valid`]), or when
/// the `token` method's file changes. A failure keeps the current token while
/// it is valid and retries with exponential backoff (1–30 s, jittered).
async fn renew_loop(session: Arc<Session>) {
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut retry = backoff();
    let mut failing = session.valid().is_none();
    let poll = matches!(session.auth, VaultAuth::Token(_));
    loop {
        let current = session.valid();
        let due = match (&current, failing) {
            (_, true) => Some(Instant::now() + retry.next().unwrap_or(Duration::from_secs(30))),
            (None, false) => Some(Instant::now()),
            (Some(t), false) => t.refresh_at(),
        };
        let wake = tokio::select! {
            () = sleep_until(due) => Wake::Due,
            () = session.suspect.notified() => Wake::Suspect,
            () = tokio::time::sleep(TOKEN_FILE_POLL), if poll => Wake::Poll,
        };
        let result = match (wake, current) {
            (Wake::Due, Some(t)) if t.renewable && !t.near_max => match session.renew(&t).await {
                Ok(t) => Ok(t),
                Err(why) => {
                    tracing::info!(backend = %session.backend, error = %why, "logging in again");
                    session.login().await
                }
            },
            (Wake::Due, _) => session.login().await,
            // Woken for a token that has been replaced since: check the new one.
            (Wake::Suspect, Some(t)) if session.still_valid(&t, Instant::now()).await => continue,
            (Wake::Suspect, _) => session.login().await,
            (Wake::Poll, Some(t)) if !session.token_file_changed(&t) => continue,
            (Wake::Poll, _) => session.login().await,
        };
        match result {
            Ok(_) => {
                failing = false;
                retry = backoff();
            }
            Err(why) => {
                failing = true;
                session.failed(&why);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A secret from a file (token, role id, secret id), trimmed; it must be one
/// line of visible ASCII, as HTTP headers and JSON need.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, String> {
    let raw = Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let text = std::str::from_utf8(&raw)
        .map(str::trim)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| format!("{} does not hold a single-line token", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The HTTP status of a Vault error answer, if it was one.
fn status_of(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// A Vault error for logs and callers: its status and Vault's own messages
/// (which name paths and reasons, never tokens or data), or the transport
/// failure.
fn describe(err: &ClientError) -> String {
    match err {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("HTTP {code}"),
        ClientError::APIError { code, errors } => {
            // Vault wraps several errors as "N errors occurred:\n\t* …".
            let lines: Vec<&str> = errors
                .iter()
                .flat_map(|e| e.lines())
                .map(|l| l.trim().trim_start_matches("* "))
                .filter(|l| !l.is_empty() && !l.ends_with("occurred:"))
                .collect();
            let joined: String = lines.join("; ").chars().take(300).collect();
            format!("HTTP {code}: {joined}")
        }
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                format!("HTTP {code}")
            }
            other => {
                // The transport error (refused, timed out, TLS) is deepest.
                let mut cause: &dyn std::error::Error = other;
                let mut text = other.to_string();
                while let Some(next) = cause.source() {
                    text = next.to_string();
                    cause = next;
                }
                text
            }
        },
        other => other.to_string(),
    }
}

/// Whether the error is a timeout of the HTTP call.
fn timed_out(err: &ClientError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return r.is_timeout();
        }
        if let Some(rustify::errors::ClientError::RequestError { source, .. }) =
            e.downcast_ref::<rustify::errors::ClientError>()
        {
            cause = Some(source.as_ref());
            continue;
        }
        cause = e.source();
    }
    false
}

/// One transit call of our own (for what vaultrs does not model), executed by
/// vaultrs with its token and namespace middleware.
struct Call<R> {
    path: String,
    method: RequestMethod,
    body: Option<Zeroizing<Vec<u8>>>,
    _response: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    fn get(path: String) -> Self {
        Self {
            path,
            method: RequestMethod::GET,
            body: None,
            _response: PhantomData,
        }
    }

    fn post(path: String, body: &serde_json::Value) -> Self {
        Self {
            path,
            method: RequestMethod::POST,
            body: Some(Zeroizing::new(
                serde_json::to_vec(body).expect("a JSON value always serializes"),
            )),
            _response: PhantomData,
        }
    }
}

#[async_trait]
impl<R: DeserializeOwned + Send + Sync> Endpoint for Call<R> {
    type Response = R;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.as_ref().map(|b| b.to_vec()))
    }
}

/// What `GET {mount}/keys/{name}` says about a key.
#[derive(Debug, Deserialize)]
struct KeyData {
    #[serde(rename = "type")]
    key_type: String,
    latest_version: u32,
    #[serde(default)]
    min_decryption_version: u32,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    exportable: bool,
    #[serde(default, alias = "imported")]
    imported_key: bool,
    /// Seconds (Vault ≥ 1.10); 0 when off.
    #[serde(default)]
    auto_rotate_period: u64,
    /// Absent for HMAC keys.
    #[serde(default)]
    keys: BTreeMap<String, KeyVersion>,
}

/// One version: its creation time (symmetric keys) or its public key.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeyVersion {
    Symmetric(i64),
    Asymmetric {
        creation_time: String,
        #[serde(default)]
        public_key: String,
    },
}

/// A key's facts, as requests need them.
#[derive(Debug)]
struct KeyInfo {
    algorithm: Algorithm,
    data: KeyData,
}

impl KeyInfo {
    fn version_created(&self, version: u32) -> Option<SystemTime> {
        match self.data.keys.get(&version.to_string())? {
            KeyVersion::Symmetric(unix) => {
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs((*unix).max(0) as u64))
            }
            KeyVersion::Asymmetric { creation_time, .. } => {
                humantime::parse_rfc3339_weak(creation_time.trim_end_matches('Z'))
                    .or_else(|_| humantime::parse_rfc3339(creation_time))
                    .ok()
            }
        }
    }

    /// Versions that still verify, decrypt and unwrap, newest first.
    fn usable_versions(&self) -> impl Iterator<Item = u32> + '_ {
        let oldest = self.data.min_decryption_version.max(1);
        (oldest..=self.data.latest_version).rev()
    }
}

/// Runs `check` on `version` if the caller named one, else on every version
/// that still verifies, newest first; the first that passes is the answer
/// (`valid: false` names the version asked for, or the newest).
async fn first_valid<F, Fut>(
    info: &KeyInfo,
    version: Option<&str>,
    mut check: F,
) -> Result<Verified, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let versions: Vec<u32> = match version {
        Some(v) => vec![parse_version(v)?],
        None => info.usable_versions().collect(),
    };
    for &v in &versions {
        if check(v).await? {
            return Ok(Verified {
                valid: true,
                version: v.to_string(),
            });
        }
    }
    let reported = versions
        .first()
        .copied()
        .unwrap_or(info.data.latest_version);
    Ok(Verified {
        valid: false,
        version: reported.to_string(),
    })
}

/// Our algorithm for a transit key type.
fn algorithm_of(key_type: &str) -> Option<Algorithm> {
    Some(match key_type {
        "ecdsa-p256" => Algorithm::EcdsaP256Sha256,
        "ecdsa-p384" => Algorithm::EcdsaP384Sha384,
        "ed25519" => Algorithm::Ed25519,
        "rsa-2048" => Algorithm::RsaPssSha256 { bits: 2048 },
        "rsa-3072" => Algorithm::RsaPssSha256 { bits: 3072 },
        "rsa-4096" => Algorithm::RsaPssSha256 { bits: 4096 },
        "aes256-gcm96" => Algorithm::Aes256Gcm,
        "hmac" => Algorithm::HmacSha256,
        _ => return None,
    })
}

/// `vault:vN:payload` → (N, payload).
fn split_versioned(text: &str) -> Option<(u32, &str)> {
    let rest = text.strip_prefix("vault:v")?;
    let (version, payload) = rest.split_once(':')?;
    Some((version.parse().ok()?, payload))
}

/// Our ciphertext: the version, then the transit ciphertext bytes.
fn seal_ciphertext(text: &str) -> Result<Sealed, Error> {
    let (version, payload) = split_versioned(text).ok_or_else(malformed)?;
    let bytes = B64.decode(payload).map_err(|_| malformed())?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(Sealed {
        bytes: out,
        version: version.to_string(),
    })
}

/// Our ciphertext as transit's `vault:vN:…` string.
fn open_ciphertext(bytes: &[u8]) -> Result<String, Error> {
    if bytes.len() <= 4 {
        return Err(Error::decryption_failed());
    }
    let (version, payload) = bytes.split_at(4);
    let version = u32::from_be_bytes(version.try_into().expect("four bytes"));
    Ok(format!("vault:v{version}:{}", B64.encode(payload)))
}

fn malformed() -> Error {
    Error::new(ErrorKind::Backend, "Vault returned a malformed value")
}

/// A version string from the API as a transit version number.
fn parse_version(version: &str) -> Result<u32, Error> {
    version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidRequest,
            "`version` must be a transit key version number (1, 2, …)",
        )
    })
}

/// The transit hash name for an algorithm's digest.
fn hash_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EcdsaP384Sha384 => "sha2-384",
        _ => "sha2-256",
    }
}

/// Sign/verify parameters for a key, the algorithm the caller asked for and
/// the input: ECDSA and RSA inputs are hashed here and sent prehashed (the
/// digest is what is signed either way, and it keeps requests small);
/// Ed25519 signs the message.
fn sign_params(
    key: KeyRef<'_>,
    info: &KeyInfo,
    input: SignInput<'_>,
    options: SignOptions,
) -> Result<(Algorithm, serde_json::Value), Error> {
    super::require_purpose(key, info.algorithm, Purpose::Sign, "sign or verify")?;
    let algorithm = match (info.algorithm, options.algorithm) {
        (Algorithm::RsaPssSha256 { bits }, Some(Algorithm::RsaPkcs1Sha256 { bits: b }))
            if b == bits =>
        {
            Algorithm::RsaPkcs1Sha256 { bits }
        }
        (own, Some(asked)) if asked != own => {
            return Err(Error::unsupported(format!(
                "key `{}` is {own}: it does not sign with {asked}",
                key.alias
            )));
        }
        (own, _) => own,
    };
    let mut params = serde_json::json!({});
    let input = match (algorithm.digest(), input) {
        (None, SignInput::Message(m)) => B64.encode(m),
        (None, SignInput::Digest(_)) => {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                crypto::BadInput::DigestNotSupported.to_string(),
            ));
        }
        (Some(alg), input) => {
            let digest = match input {
                SignInput::Message(m) => aws_lc_rs::digest::digest(alg, m),
                SignInput::Digest(d) => crypto::import_digest(algorithm, d)
                    .map_err(|e| Error::new(ErrorKind::InvalidRequest, e.to_string()))?,
            };
            params["prehashed"] = true.into();
            params["hash_algorithm"] = hash_name(algorithm).into();
            B64.encode(digest.as_ref())
        }
    };
    params["input"] = input.into();
    match algorithm {
        Algorithm::RsaPssSha256 { .. } => {
            params["signature_algorithm"] = "pss".into();
            params["salt_length"] = "hash".into();
        }
        Algorithm::RsaPkcs1Sha256 { .. } => {
            params["signature_algorithm"] = "pkcs1v15".into();
        }
        Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384
            if options.format == SignatureFormat::Raw =>
        {
            params["marshaling_algorithm"] = "jws".into();
        }
        _ => {}
    }
    Ok((algorithm, params))
}

/// Encodes a signature as transit wants it back (JWS marshaling is
/// unpadded base64url).
fn versioned_signature(version: u32, signature: &[u8], params: &serde_json::Value) -> String {
    let encoded = if params["marshaling_algorithm"] == "jws" {
        B64URL.encode(signature)
    } else {
        B64.encode(signature)
    };
    format!("vault:v{version}:{encoded}")
}

/// Transit's answer carrying a versioned value (`signature`, `hmac`, …).
#[derive(Deserialize)]
struct SignatureData {
    signature: String,
}

#[derive(Deserialize)]
struct ValidData {
    valid: bool,
}

#[derive(Deserialize)]
struct DataKeyData {
    ciphertext: String,
    plaintext: Zeroizing<String>,
}

impl VaultBackend {
    fn path(&self, op: &str, key: KeyRef<'_>) -> String {
        format!("{}/{op}/{}", self.mount, key.id)
    }

    /// Runs a Vault call with the current token and maps its error
    /// (retries and the circuit breaker are the shared layer's,
    /// [`super::resilient`]). A refusal (401/403) is `forbidden` while Vault
    /// still accepts the token, `unauthenticated` when it no longer does.
    async fn call<T, F, Fut>(&self, key: KeyRef<'_>, op: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Arc<Token>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let token = self.session.token()?;
        match f(token.clone()).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                let refused = matches!(status_of(&e), Some(401 | 403));
                let rejected = refused && !self.session.still_valid(&token, Instant::now()).await;
                Err(self.error(key, op, &e, rejected))
            }
        }
    }

    /// Our error for a Vault one (SPEC §4), logged with Vault's reasons;
    /// `rejected`: Vault no longer accepts the token the call was made with.
    fn error(&self, key: KeyRef<'_>, op: &str, err: &ClientError, rejected: bool) -> Error {
        let detail = describe(err);
        let status = status_of(err);
        let kind = match status {
            Some(400) if op == "decrypt" => ErrorKind::DecryptionFailed,
            Some(400) if detail.contains("not found") => ErrorKind::KeyNotFound,
            Some(400) => ErrorKind::InvalidRequest,
            Some(401 | 403) if rejected => ErrorKind::Unauthenticated,
            Some(401 | 403) => ErrorKind::Forbidden,
            Some(404) => ErrorKind::KeyNotFound,
            Some(429) => ErrorKind::Throttled,
            Some(500) => ErrorKind::Backend,
            Some(501..=599) => ErrorKind::Unavailable,
            Some(_) => ErrorKind::Backend,
            None if timed_out(err) => ErrorKind::Timeout,
            None if matches!(
                err,
                ClientError::RestClientError {
                    source: rustify::errors::ClientError::RequestError { .. }
                }
            ) =>
            {
                ErrorKind::Unavailable
            }
            None => ErrorKind::Backend,
        };
        tracing::warn!(key.alias = key.alias, op, error = %detail, "Vault call failed");
        match kind {
            ErrorKind::DecryptionFailed => Error::decryption_failed(),
            ErrorKind::KeyNotFound => Error::key_not_found(key),
            ErrorKind::Unauthenticated => Error::new(
                kind,
                format!(
                    "Vault {op} for key `{}`: Vault rejected the sidecar's token as invalid, expired or revoked ({detail}); it is logging in again",
                    key.alias
                ),
            ),
            _ => {
                let mut error = Error::new(
                    kind,
                    format!("Vault {op} for key `{}`: {detail}", key.alias),
                );
                if matches!(status, Some(500..=599)) {
                    error.retryable = true;
                }
                error
            }
        }
    }

    /// The key's type and versions, cached for a few minutes.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        if let Some((at, info)) = self.keys.lock().expect("never poisoned").get(key.id)
            && at.elapsed() < KEY_INFO_TTL
        {
            return Ok(info.clone());
        }
        let path = self.path("keys", key);
        let data: KeyData = self
            .call(key, "read key", |t| async move {
                vaultrs::api::exec_with_result(&t.client, Call::<KeyData>::get(path)).await
            })
            .await?;
        let algorithm = algorithm_of(&data.key_type).ok_or_else(|| {
            Error::unsupported(format!(
                "key `{}` is a transit `{}` key, which kms-sidecar does not support (ecdsa-p256, ecdsa-p384, ed25519, rsa-2048/3072/4096, aes256-gcm96, hmac)",
                key.alias, data.key_type
            ))
        })?;
        let info = Arc::new(KeyInfo { algorithm, data });
        self.keys
            .lock()
            .expect("never poisoned")
            .insert(key.id.to_owned(), (Instant::now(), info.clone()));
        Ok(info)
    }

    fn forget(&self, key: KeyRef<'_>) {
        self.keys.lock().expect("never poisoned").remove(key.id);
    }

    /// [`Self::info`], refusing keys not made for `purpose`.
    async fn info_for(
        &self,
        key: KeyRef<'_>,
        purpose: Purpose,
        what: &str,
    ) -> Result<Arc<KeyInfo>, Error> {
        let info = self.info(key).await?;
        super::require_purpose(key, info.algorithm, purpose, what)?;
        Ok(info)
    }

    /// How a context binds to a key: derived keys derive from it (`context`),
    /// others authenticate it as AEAD associated data.
    fn bind_context(info: &KeyInfo, context: &Context) -> (Option<String>, Option<String>) {
        let encoded = B64.encode(canonical_context(context));
        if info.data.derived {
            (Some(encoded), None)
        } else {
            (None, Some(encoded))
        }
    }

    async fn verify_version(
        &self,
        key: KeyRef<'_>,
        version: u32,
        signature: &[u8],
        params: &serde_json::Value,
    ) -> Result<bool, Error> {
        let mut body = params.clone();
        body["signature"] = versioned_signature(version, signature, params).into();
        let path = self.path("verify", key);
        let data: ValidData = self
            .call(key, "verify", |t| {
                let call = Call::<ValidData>::post(path, &body);
                async move { vaultrs::api::exec_with_result(&t.client, call).await }
            })
            .await?;
        Ok(data.valid)
    }

    async fn verify_mac_version(
        &self,
        key: KeyRef<'_>,
        version: u32,
        message: &str,
        mac: &[u8],
    ) -> Result<bool, Error> {
        let hmac = format!("vault:v{version}:{}", B64.encode(mac));
        let data = self
            .call(key, "verify hmac", |t| async move {
                vaultrs::transit::data::verify(
                    &t.client,
                    &self.mount,
                    key.id,
                    message,
                    Some(
                        vaultrs::api::transit::requests::VerifySignedDataRequest::builder()
                            .hmac(hmac)
                            .hash_algorithm(vaultrs::api::transit::HashAlgorithm::Sha2_256),
                    ),
                )
                .await
            })
            .await?;
        Ok(data.valid)
    }
}

#[async_trait]
impl Backend for VaultBackend {
    fn kind(&self) -> &'static str {
        "vault"
    }

    /// A valid token and `sys/health` (no transit call): sealed, not
    /// initialised or standby nodes are unavailable.
    async fn health(&self) -> Result<(), Error> {
        self.session.token()?;
        // sys/health answers unwrapped, and with non-200 codes for states
        // (vaultrs's own health type wants fields OpenBao does not send).
        let base = &self.session.base;
        // sys/health lives in the root namespace only.
        let root = EndpointMiddleware {
            namespace: None,
            ..base.middle.clone()
        };
        let answer = Call::<serde_json::Value>::get("sys/health".into())
            .with_middleware(&root)
            .exec(&base.http)
            .await;
        let problem = match answer {
            Ok(_) => return Ok(()),
            Err(rustify::errors::ClientError::ServerResponseError { code, .. }) => match code {
                // A performance standby serves reads and forwards writes.
                473 => return Ok(()),
                503 => "Vault is sealed".to_owned(),
                501 => "Vault is not initialized".to_owned(),
                429 => "the Vault node is a standby: point `address` at the active node or its load balancer".to_owned(),
                472 => "the Vault node is a disaster-recovery secondary".to_owned(),
                other => format!("Vault health check answered HTTP {other}"),
            },
            Err(e) => format!(
                "Vault health check failed: {}",
                describe(&ClientError::RestClientError { source: e })
            ),
        };
        Err(Error::new(ErrorKind::Unavailable, problem))
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        self.forget(key);
        let info = self.info(key).await?;
        let data = &info.data;
        let versions: Vec<VersionInfo> = (1..=data.latest_version)
            .map(|v| VersionInfo {
                version: v.to_string(),
                created: info.version_created(v),
                enabled: v >= data.min_decryption_version,
            })
            .collect();
        let created = versions.first().and_then(|v| v.created);
        let details = BTreeMap::from([
            ("mount".to_owned(), self.mount.clone()),
            ("transit_type".to_owned(), data.key_type.clone()),
            ("derived".to_owned(), data.derived.to_string()),
            ("exportable".to_owned(), data.exportable.to_string()),
            (
                "min_decryption_version".to_owned(),
                data.min_decryption_version.to_string(),
            ),
        ]);
        Ok(KeyMetadata {
            algorithm: info.algorithm,
            current_version: data.latest_version.to_string(),
            versions,
            created,
            origin: if data.imported_key {
                Origin::External
            } else {
                Origin::Software
            },
            rotation_period: (data.auto_rotate_period > 0)
                .then(|| Duration::from_secs(data.auto_rotate_period)),
            details,
        })
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let mut info = self
            .info_for(key, Purpose::Sign, "export a public key")
            .await?;
        let version = match version {
            Some(v) => parse_version(v)?,
            None => info.data.latest_version,
        };
        if version > info.data.latest_version {
            // Rotated elsewhere since we looked.
            self.forget(key);
            info = self.info(key).await?;
        }
        let Some(KeyVersion::Asymmetric { public_key, .. }) =
            info.data.keys.get(&version.to_string())
        else {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                format!("key `{}` has no version {version}", key.alias),
            ));
        };
        let spki_der = if info.algorithm == Algorithm::Ed25519 {
            // Transit returns the raw 32-byte Ed25519 key.
            let raw = B64.decode(public_key).map_err(|_| malformed())?;
            if raw.len() != 32 {
                return Err(malformed());
            }
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(&raw);
            der
        } else {
            pem::parse(public_key.as_bytes())
                .map_err(|_| malformed())?
                .into_contents()
        };
        Ok(PublicKey {
            spki_der,
            algorithm: info.algorithm,
            version: version.to_string(),
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        options: SignOptions,
    ) -> Result<Signature, Error> {
        let info = self.info(key).await?;
        let (algorithm, params) = sign_params(key, &info, input, options)?;
        let path = self.path("sign", key);
        let data: SignatureData = self
            .call(key, "sign", |t| {
                let call = Call::<SignatureData>::post(path, &params);
                async move { vaultrs::api::exec_with_result(&t.client, call).await }
            })
            .await?;
        let (version, encoded) = split_versioned(&data.signature).ok_or_else(malformed)?;
        let bytes = if params["marshaling_algorithm"] == "jws" {
            B64URL.decode(encoded)
        } else {
            B64.decode(encoded)
        }
        .map_err(|_| malformed())?;
        Ok(Signature {
            bytes,
            algorithm,
            version: version.to_string(),
        })
    }

    fn verifies(&self) -> bool {
        true
    }

    /// Transit's verify; without a version, every version that still
    /// verifies is tried, newest first.
    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        options: SignOptions,
        version: Option<&str>,
    ) -> Result<Verified, Error> {
        let info = self.info(key).await?;
        let format = match options.format {
            // The caller did not say: tell by the length.
            SignatureFormat::Der => crypto::guess_format(info.algorithm, signature),
            raw => raw,
        };
        let options = SignOptions { format, ..options };
        let (_, params) = sign_params(key, &info, input, options)?;
        first_valid(&info, version, |v| {
            self.verify_version(key, v, signature, &params)
        })
        .await
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        let info = self.info_for(key, Purpose::Encrypt, "encrypt").await?;
        let (derivation, associated) = Self::bind_context(&info, context);
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let data = self
            .call(key, "encrypt", |t| async move {
                let mut options = vaultrs::api::transit::requests::EncryptDataRequest::builder();
                if let Some(c) = derivation {
                    options.context(c);
                }
                if let Some(a) = associated {
                    options.associated_data(a);
                }
                vaultrs::transit::data::encrypt(
                    &t.client,
                    &self.mount,
                    key.id,
                    &encoded,
                    Some(&mut options),
                )
                .await
            })
            .await?;
        seal_ciphertext(&data.ciphertext)
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Plaintext, Error> {
        let info = self.info_for(key, Purpose::Encrypt, "decrypt").await?;
        let (derivation, associated) = Self::bind_context(&info, context);
        let ciphertext = open_ciphertext(ciphertext)?;
        let mut data = self
            .call(key, "decrypt", |t| async move {
                let mut options = vaultrs::api::transit::requests::DecryptDataRequest::builder();
                if let Some(c) = derivation {
                    options.context(c);
                }
                if let Some(a) = associated {
                    options.associated_data(a);
                }
                {
                    vaultrs::transit::data::decrypt(
                        &t.client,
                        &self.mount,
                        key.id,
                        &ciphertext,
                        Some(&mut options),
                    )
                    .await
                }
            })
            .await?;
        let plaintext = B64.decode(&data.plaintext).map_err(|_| malformed());
        data.plaintext.zeroize();
        Ok(Plaintext(Zeroizing::new(plaintext?)))
    }

    /// `datakey/plaintext`, bound to the context like [`Backend::encrypt`]
    /// binds it, so that [`Backend::decrypt`] unwraps it.
    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        bits: u32,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let info = self
            .info_for(key, Purpose::Encrypt, "wrap data keys")
            .await?;
        let (derivation, associated) = Self::bind_context(&info, context);
        let mut body = serde_json::json!({ "bits": bits });
        if let Some(c) = derivation {
            body["context"] = c.into();
        }
        if let Some(a) = associated {
            body["associated_data"] = a.into();
        }
        let path = self.path("datakey/plaintext", key);
        let data: DataKeyData = self
            .call(key, "datakey", |t| {
                let call = Call::<DataKeyData>::post(path, &body);
                async move { vaultrs::api::exec_with_result(&t.client, call).await }
            })
            .await?;
        let plaintext = Zeroizing::new(
            B64.decode(data.plaintext.as_bytes())
                .map_err(|_| malformed())?,
        );
        if plaintext.len() * 8 != bits as usize {
            return Err(malformed());
        }
        let sealed = seal_ciphertext(&data.ciphertext)?;
        Ok(DataKey {
            plaintext: Plaintext(plaintext),
            encrypted: sealed.bytes,
            version: sealed.version,
        })
    }

    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        self.info_for(key, Purpose::Mac, "compute MACs").await?;
        let encoded = Zeroizing::new(B64.encode(message));
        let data = self
            .call(key, "hmac", |t| async move {
                vaultrs::transit::generate::hmac(
                    &t.client,
                    &self.mount,
                    key.id,
                    &encoded,
                    Some(
                        vaultrs::api::transit::requests::GenerateHmacRequest::builder()
                            .algorithm(vaultrs::api::transit::HashAlgorithm::Sha2_256),
                    ),
                )
                .await
            })
            .await?;
        let (version, encoded) = split_versioned(&data.hmac).ok_or_else(malformed)?;
        Ok(Sealed {
            bytes: B64.decode(encoded).map_err(|_| malformed())?,
            version: version.to_string(),
        })
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        version: Option<&str>,
    ) -> Result<Verified, Error> {
        let info = self.info_for(key, Purpose::Mac, "verify MACs").await?;
        let encoded = Zeroizing::new(B64.encode(message));
        first_valid(&info, version, |v| {
            self.verify_mac_version(key, v, &encoded, mac)
        })
        .await
    }

    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        self.info(key).await?;
        self.call(key, "rotate", |t| async move {
            vaultrs::transit::key::rotate(&t.client, &self.mount, key.id).await
        })
        .await?;
        self.forget(key);
        Ok(self.info(key).await?.data.latest_version.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_values_round_trip() {
        assert_eq!(split_versioned("vault:v12:AAAA"), Some((12, "AAAA")));
        assert_eq!(split_versioned("vault:vx:AAAA"), None);
        assert_eq!(split_versioned("AAAA"), None);
        let sealed = seal_ciphertext("vault:v3:AQID").unwrap();
        assert_eq!(sealed.version, "3");
        assert_eq!(sealed.bytes, [0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(open_ciphertext(&sealed.bytes).unwrap(), "vault:v3:AQID");
        assert!(open_ciphertext(&[0, 0, 0, 1]).is_err());
    }

    #[test]
    fn secrets_from_files_are_one_trimmed_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "s.abc123\n").unwrap();
        assert_eq!(read_secret(&path).unwrap().as_str(), "s.abc123");
        std::fs::write(&path, "a\nb").unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(!err.contains("a\nb"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(read_secret(&path).is_err());
    }

    #[test]
    fn transit_key_types() {
        assert_eq!(algorithm_of("ecdsa-p384"), Some(Algorithm::EcdsaP384Sha384));
        assert_eq!(
            algorithm_of("rsa-3072"),
            Some(Algorithm::RsaPssSha256 { bits: 3072 })
        );
        assert_eq!(algorithm_of("chacha20-poly1305"), None);
    }
}
