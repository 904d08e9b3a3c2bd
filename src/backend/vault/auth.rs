//! How the `vault` backend gets its token, as a source for the shared
//! [`Refresher`](crate::backend::credentials::Refresher): one of four auth
//! methods (a token file, AppRole, Kubernetes or JWT with the pod's
//! projected service-account token), their files read off the runtime again
//! at every login; renewal while the token is renewable and far from its max
//! TTL; and Vault's word on a token after a refused call (`lookup-self`).

use super::client::with_token;
use super::errors::{describe, status_of};
use crate::backend::credentials::{Fresh, Handle, NotReady, RefreshError, Schedule, Source};
use crate::backend::{Error, ErrorKind};
use crate::config::VaultAuth;
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use vaultrs::client::VaultClient;
use zeroize::{Zeroize, Zeroizing};

/// How often a `token` method's file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(5);

/// When the token is renewed or replaced: at ~70 % of its TTL, at least
/// once a day (a token without TTL too), at most every half second (below
/// Vault's shortest TTL, 1 s, so that a token near its max TTL is replaced
/// before it expires); after failures from 1 s doubling up to 30 s.
pub(super) const SCHEDULE: Schedule = Schedule {
    min: Duration::from_millis(500),
    max: Duration::from_secs(24 * 3600),
    retry: Duration::from_secs(1),
    retry_max: Duration::from_secs(30),
};

/// A Vault token and the client that sends it; wiped on drop.
pub(super) struct Token {
    pub(super) client: VaultClient,
    /// TTL at login or last renewal; zero for a token that never expires.
    ttl: Duration,
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
    /// A token just obtained, living `ttl` (zero: forever).
    fn fresh(
        client: VaultClient,
        ttl: Duration,
        renewable: bool,
        near_max: bool,
        file_digest: Option<Vec<u8>>,
    ) -> Fresh<Token> {
        Fresh {
            expires: (!ttl.is_zero()).then(|| SystemTime::now() + ttl),
            credential: Token {
                client,
                ttl,
                renewable,
                near_max,
                file_digest,
                checked: tokio::sync::Mutex::new(Checked::Never),
            },
        }
    }

    /// Whether Vault still accepts `token`, after it refused a call made
    /// with it at `refused` (a revocation is final, so a `lookup-self` sent
    /// after the refusal decides it, and concurrent refusals share one).
    /// When the lookup cannot be made the token is kept; a rejected token is
    /// dropped ([`Handle::reject`]): calls are then `unauthenticated` and
    /// the backend not ready, saying why, until a login succeeds.
    pub(super) async fn still_valid(
        self: &Arc<Self>,
        refused: Instant,
        credentials: &Handle<Token>,
    ) -> bool {
        let mut checked = self.checked.lock().await;
        match *checked {
            Checked::Rejected => return false,
            Checked::Valid(sent) if sent >= refused => return true,
            Checked::Valid(_) | Checked::Never => {}
        }
        let sent = Instant::now();
        match vaultrs::token::lookup_self(&self.client).await {
            Ok(_) => {
                *checked = Checked::Valid(sent);
                true
            }
            Err(e) if matches!(status_of(&e), Some(401 | 403)) => {
                *checked = Checked::Rejected;
                credentials.reject(self, &describe(&e));
                false
            }
            Err(e) => {
                tracing::debug!(backend = credentials.backend(), error = %describe(&e), "cannot check the Vault token; keeping it");
                true
            }
        }
    }
}

/// The `unauthenticated` error of a backend without a valid token, saying
/// why: the rejection of the last token and the failure of the logins since
/// (never a token).
pub(super) fn no_token(why: NotReady) -> Error {
    let why = match why {
        NotReady::NotYet => "not logged in yet".to_owned(),
        NotReady::Failed(failed) => failed,
        NotReady::Expired => "the token expired before it could be renewed".to_owned(),
        NotReady::Rejected {
            why,
            failed: Some(failed),
        } => format!(
            "Vault rejected the token as invalid, expired or revoked ({why}), and logging in again failed: {failed}"
        ),
        NotReady::Rejected { why, failed: None } => format!(
            "Vault rejected the token as invalid, expired or revoked ({why}); logging in again"
        ),
    };
    Error::new(
        ErrorKind::Unauthenticated,
        format!("no valid Vault token: {why}"),
    )
}

/// Logs in and renews: the refresher's source of Vault tokens.
pub(super) struct Login {
    backend: String,
    /// No token: used to log in.
    base: Arc<VaultClient>,
    auth: VaultAuth,
}

impl Login {
    pub(super) fn new(backend: &str, base: Arc<VaultClient>, auth: VaultAuth) -> Self {
        Self {
            backend: backend.to_owned(),
            base,
            auth,
        }
    }

    /// Logs in with the configured method, reading its files again.
    async fn login(&self) -> Result<Fresh<Token>, String> {
        let method = self.auth.method();
        let mount = |m: &Option<String>| m.clone().unwrap_or_else(|| method.to_owned());
        let (client, ttl, renewable, file_digest) = match &self.auth {
            VaultAuth::Token(t) => {
                let token = read_secret(&t.token_file).await?;
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
                let client = with_token(&self.base, &token);
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
                let role_id = read_secret(&a.role_id_file).await?;
                let secret_id = read_secret(&a.secret_id_file).await?;
                let auth = vaultrs::auth::approle::login(
                    self.base.as_ref(),
                    &mount(&a.mount),
                    &role_id,
                    &secret_id,
                )
                .await
                .map_err(|e| format!("AppRole login failed: {}", describe(&e)))?;
                self.adopt(auth)
            }
            VaultAuth::Kubernetes(r) => {
                let file = r.token_path();
                let jwt = read_secret(&file).await?;
                let auth = vaultrs::auth::kubernetes::login(
                    self.base.as_ref(),
                    &mount(&r.mount),
                    &r.role,
                    &jwt,
                )
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
                let file = r.token_path();
                let jwt = read_secret(&file).await?;
                let auth = vaultrs::auth::oidc::login(
                    self.base.as_ref(),
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
        tracing::info!(backend = %self.backend, method, ttl = ?ttl, renewable, "logged in to Vault");
        Ok(Token::fresh(client, ttl, renewable, false, file_digest))
    }

    /// The client, TTL and renewability of a login's answer, the token
    /// moved out of it so that it is wiped after use.
    fn adopt(&self, mut auth: vaultrs::api::AuthInfo) -> (VaultClient, u64, bool, Option<Vec<u8>>) {
        let token = Zeroizing::new(std::mem::take(&mut auth.client_token));
        auth.accessor.zeroize();
        (
            with_token(&self.base, &token),
            auth.lease_duration,
            auth.renewable,
            None,
        )
    }

    /// Renews the current token; a TTL shorter than asked means the max TTL
    /// is near, so the next refresh logs in again.
    async fn renew(&self, token: &Token) -> Result<Fresh<Token>, String> {
        let auth = vaultrs::token::renew_self(&token.client, None)
            .await
            .map_err(|e| format!("token renewal failed: {}", describe(&e)))?;
        let ttl = Duration::from_secs(auth.lease_duration);
        let client = with_token(&self.base, &token.client.settings.token);
        let renewed = Token::fresh(
            client,
            ttl,
            auth.renewable,
            ttl < token.ttl,
            token.file_digest.clone(),
        );
        drop(auth);
        tracing::debug!(backend = %self.backend, ttl = ?ttl, "renewed the Vault token");
        Ok(renewed)
    }

    /// Whether the `token` method's file now holds another token than
    /// `token` came from (an unreadable file: no).
    async fn token_file_changed(&self, token: &Token) -> bool {
        let VaultAuth::Token(t) = &self.auth else {
            return false;
        };
        match read_secret(&t.token_file).await {
            Ok(now) => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, now.as_bytes());
                token.file_digest.as_deref() != Some(digest.as_ref())
            }
            Err(_) => false,
        }
    }
}

/// Renews the current token while it is renewable and its max TTL is not
/// near (and, for the `token` method, its file still holds it); otherwise,
/// or when renewal fails, logs in again, re-reading the method's files.
#[async_trait]
impl Source for Login {
    type Credential = Token;

    async fn refresh(&self, current: Option<&Token>) -> Result<Fresh<Token>, RefreshError> {
        if let Some(token) = current
            && token.renewable
            && !token.near_max
            && !self.token_file_changed(token).await
        {
            match self.renew(token).await {
                Ok(renewed) => return Ok(renewed),
                Err(why) => {
                    tracing::info!(backend = %self.backend, error = %why, "logging in again");
                }
            }
        }
        Ok(self.login().await?)
    }

    /// The `token` method's file is watched for a new token.
    fn poll_every(&self) -> Option<Duration> {
        matches!(self.auth, VaultAuth::Token(_)).then_some(TOKEN_FILE_POLL)
    }

    async fn replaced(&self, current: &Token) -> bool {
        self.token_file_changed(current).await
    }
}

/// A secret from a file (token, role id, secret id), trimmed; it must be one
/// line of visible ASCII, as HTTP headers and JSON need.
async fn read_secret(path: &Path) -> Result<Zeroizing<String>, String> {
    let raw = Zeroizing::new(
        tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let text = std::str::from_utf8(&raw)
        .map(str::trim)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| format!("{} does not hold a single-line token", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_from_files_are_one_trimmed_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "s.abc123\n").unwrap();
        assert_eq!(read_secret(&path).await.unwrap().as_str(), "s.abc123");
        std::fs::write(&path, "a\nb").unwrap();
        let err = read_secret(&path).await.unwrap_err();
        assert!(!err.contains("a\nb"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(read_secret(&path).await.is_err());
    }
}
