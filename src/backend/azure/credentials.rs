//! Entra ID access tokens for Key Vault, kept fresh by the shared
//! [`Refresher`]: each refresh asks a *new* SDK credential (workload
//! identity, managed identity or client secret) for a token, so the SDK's
//! own token cache never hands back the token being replaced, and the
//! projected service-account token (or the secret file) is read again at
//! every token request. [`Refreshed`] is the `TokenCredential` the
//! `KeyClient` is given: it answers with the refresher's current token and
//! never calls Entra itself, so requests never wait on a login.

use crate::backend::credentials::{Fresh, Handle, NotReady, RefreshError, Source};
use crate::config::{AzureCredential, AzureResolved, Env, SecretFrom};
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientMethodOptions, ClientOptions, RetryOptions, Transport};
use azure_core::time::OffsetDateTime;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// An access token: wiped on drop, never printed.
pub(super) struct Token {
    secret: Zeroizing<String>,
    expires_on: OffsetDateTime,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_on", &self.expires_on)
            .finish_non_exhaustive()
    }
}

/// Where tokens come from: which SDK credential, for which scope.
pub(super) struct Login {
    kind: AzureCredential,
    scope: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
    authority_host: Option<String>,
    token_file: Option<PathBuf>,
    secret: Option<SecretFrom>,
    /// Where `AZURE_CLIENT_SECRET` is read, at every token request.
    env: Arc<dyn Env>,
    /// The HTTP client every SDK credential of this backend shares.
    transport: Transport,
}

impl Login {
    /// The login of the backend's settings as resolved with the standard
    /// `AZURE_*` variables, checked now, so that a missing one fails at
    /// start.
    pub(super) fn new(
        resolved: &AzureResolved,
        env: Arc<dyn Env>,
        scope: String,
        transport: Transport,
    ) -> Result<Self, String> {
        let login = Self {
            kind: resolved.credential,
            scope,
            tenant_id: resolved.tenant_id.clone(),
            client_id: resolved.client_id.clone(),
            authority_host: resolved.authority_host.clone(),
            token_file: (resolved.identity_token.as_ref()).map(|t| t.path.clone()),
            secret: resolved.client_secret.clone(),
            env,
            transport,
        };
        let needs: &[(&str, bool)] = match login.kind {
            AzureCredential::WorkloadIdentity => &[
                ("tenant_id (or AZURE_TENANT_ID)", login.tenant_id.is_some()),
                ("client_id (or AZURE_CLIENT_ID)", login.client_id.is_some()),
                (
                    "token_file (or AZURE_FEDERATED_TOKEN_FILE)",
                    login.token_file.is_some(),
                ),
            ],
            AzureCredential::ClientSecret => &[
                ("tenant_id (or AZURE_TENANT_ID)", login.tenant_id.is_some()),
                ("client_id (or AZURE_CLIENT_ID)", login.client_id.is_some()),
                (
                    "client_secret_file (or AZURE_CLIENT_SECRET)",
                    login.secret.is_some(),
                ),
            ],
            AzureCredential::ManagedIdentity => &[],
        };
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "credential `{}` needs {}",
                login.kind_name(),
                missing.join(", ")
            ));
        }
        Ok(login)
    }

    fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Options of an SDK credential: our HTTP client, no SDK retries (the
    /// refresher retries with backoff), the authority host if configured
    /// (else the SDK reads `AZURE_AUTHORITY_HOST`).
    fn client_options(&self) -> ClientOptions {
        let mut options = ClientOptions {
            transport: Some(self.transport.clone()),
            retry: RetryOptions::none(),
            ..Default::default()
        };
        if let Some(host) = &self.authority_host {
            let mut custom = azure_core::cloud::CustomConfiguration::default();
            custom.authority_host = host.clone();
            options.cloud = Some(Arc::new(custom.into()));
        }
        options
    }

    /// A new SDK credential (none of its caches outlives one refresh).
    async fn credential(&self) -> Result<Arc<dyn TokenCredential>, String> {
        let client_options = self.client_options();
        let tenant = || self.tenant_id.clone().unwrap_or_default();
        let client = || self.client_id.clone().unwrap_or_default();
        let built: azure_core::Result<Arc<dyn TokenCredential>> = match self.kind {
            AzureCredential::WorkloadIdentity => ClientAssertionCredential::new(
                tenant(),
                client(),
                ProjectedToken(self.token_file.clone().unwrap_or_default()),
                Some(ClientAssertionCredentialOptions { client_options }),
            )
            .map(|c| c as Arc<dyn TokenCredential>),
            AzureCredential::ClientSecret => {
                let secret = self.client_secret().await?;
                ClientSecretCredential::new(
                    &tenant(),
                    client(),
                    Secret::new(secret.to_string()),
                    Some(ClientSecretCredentialOptions { client_options }),
                )
                .map(|c| c as Arc<dyn TokenCredential>)
            }
            AzureCredential::ManagedIdentity => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: self.client_id.clone().map(UserAssignedId::ClientId),
                    client_options,
                }))
                .map(|c| c as Arc<dyn TokenCredential>)
            }
        };
        built.map_err(|e| super::errors::describe(&e))
    }

    /// The client secret: the file's content (read now), else
    /// `AZURE_CLIENT_SECRET`.
    async fn client_secret(&self) -> Result<Zeroizing<String>, String> {
        match &self.secret {
            Some(SecretFrom::File { file: path }) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(Zeroizing::new(text.trim().to_owned()))
            }
            Some(SecretFrom::Env { env: var }) => (self.env.var(var))
                .map(Zeroizing::new)
                .ok_or_else(|| format!("{var} is not set")),
            None => Err("AZURE_CLIENT_SECRET is not set".to_owned()),
        }
    }
}

#[async_trait]
impl Source for Login {
    type Credential = Token;

    async fn refresh(&self, _current: Option<&Token>) -> Result<Fresh<Token>, RefreshError> {
        let credential = self.credential().await?;
        let token = credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| {
                format!(
                    "{} token for {}: {}",
                    self.kind_name(),
                    self.scope,
                    super::errors::describe(&e)
                )
            })?;
        let expires = SystemTime::UNIX_EPOCH
            + Duration::from_secs(token.expires_on.unix_timestamp().max(0) as u64);
        Ok(Fresh {
            credential: Token {
                secret: Zeroizing::new(token.token.secret().to_owned()),
                expires_on: token.expires_on,
            },
            expires: Some(expires),
        })
    }
}

/// The projected service-account token, read at every token request
/// (kubelet replaces it well before it expires).
#[derive(Debug)]
struct ProjectedToken(PathBuf);

#[async_trait]
impl ClientAssertion for ProjectedToken {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let text = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "cannot read the federated token file {}: {e}",
                    self.0.display()
                ),
            )
        })?;
        Ok(text.trim().to_owned())
    }
}

/// The `TokenCredential` of the `KeyClient`: the refresher's current token,
/// or — when there is none yet (start, or just rejected) — the one a
/// refresh started now brings. The scope Key Vault's authentication
/// challenge asks for must be exactly the one the token is for: a vault
/// answering for another resource gets no token. (This replaces the SDK's
/// own check, that the vault's host ends with the resource's host, which
/// cannot hold for a vault reached by IP address.)
#[derive(Debug)]
pub(super) struct Refreshed {
    pub(super) handle: Handle<Token>,
    pub(super) scope: String,
}

#[async_trait]
impl TokenCredential for Refreshed {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if scopes != [self.scope.as_str()] {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                format!(
                    "Key Vault asked for a token for `{}`, but the backend's tokens are for `{}`: set `scope` to the vault's resource",
                    scopes.join(" "),
                    self.scope
                ),
            ));
        }
        let token = self.handle.refreshed().await.map_err(|why| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                why.to_string(),
            )
        })?;
        Ok(AccessToken::new(
            Secret::new(token.secret.to_string()),
            token.expires_on,
        ))
    }
}

/// The message of a call made without a valid token.
pub(super) fn not_ready(why: &NotReady) -> String {
    format!("the sidecar has no valid Entra ID token for Key Vault: {why}")
}
