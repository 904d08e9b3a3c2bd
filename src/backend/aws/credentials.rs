//! Where the `aws` backend's credentials come from, as a source for the
//! shared [`Refresher`](crate::backend::credentials::Refresher):
//! `aws-config`'s standard chain — IRSA (`AWS_ROLE_ARN` and
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, the token re-read at every refresh), EKS
//! Pod Identity, environment, profile files — or [`WebIdentity`] against a
//! configured `sts_endpoint`, optionally chained into an `assume_role`. The
//! KMS clients sign with what the refresher holds ([`RefreshedProvider`]).

use crate::backend::credentials::{Fresh, Handle, RefreshError, Source};
use crate::config::{AwsBackendConfig, AwsResolved, Env};
use async_trait::async_trait;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::future::ProvideCredentials as CredentialsFuture;
use aws_sdk_kms::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// The provider chain the refresher asks: the default chain (or
/// [`WebIdentity`]), under an `assume_role` when configured.
pub(super) async fn chain(
    sdk: &aws_config::SdkConfig,
    config: &AwsBackendConfig,
    resolved: &AwsResolved,
    env: Arc<dyn Env>,
) -> Result<Chain, String> {
    let mut source = match WebIdentity::resolved(sdk, resolved) {
        Some(web_identity) => Some(SharedCredentialsProvider::new(web_identity)),
        None => sdk.credentials_provider(),
    };
    if let Some(role) = &config.assume_role {
        let mut sts = sdk.clone().into_builder();
        if let Some(endpoint) = &config.sts_endpoint {
            sts = sts.endpoint_url(endpoint);
        }
        let mut provider = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
            .configure(&sts.build())
            .session_name(
                role.session_name
                    .clone()
                    .unwrap_or_else(|| "kms-sidecar".into()),
            );
        if let Some(id) = &role.external_id {
            provider = provider.external_id(id);
        }
        source = match source {
            Some(base) => Some(SharedCredentialsProvider::new(
                provider.build_from_provider(base).await,
            )),
            None => Some(SharedCredentialsProvider::new(provider.build().await)),
        };
    }
    let source = source.ok_or("no AWS credentials provider could be configured")?;
    Ok(Chain { source, env })
}

/// The provider chain as the refresher's source: every refresh asks it
/// anew (a web identity re-reads its token file). The environment names
/// the tokens to cut out of its errors.
pub(super) struct Chain {
    source: SharedCredentialsProvider,
    env: Arc<dyn Env>,
}

#[async_trait]
impl Source for Chain {
    type Credential = Credentials;

    async fn refresh(
        &self,
        _current: Option<&Credentials>,
    ) -> Result<Fresh<Credentials>, RefreshError> {
        let credentials = match self.source.provide_credentials().await {
            Ok(c) => c,
            Err(e) => {
                let message = aws_sdk_kms::error::DisplayErrorContext(&e).to_string();
                return Err(RefreshError(
                    without_tokens(message, self.env.as_ref()).await,
                ));
            }
        };
        Ok(Fresh {
            expires: credentials.expiry(),
            credential: credentials,
        })
    }
}

/// A provider error with the tokens the chain reads cut out. Provider errors
/// name no keys, but aws-config quotes the content of a token it cannot use
/// (Pod Identity's token file with a trailing newline, say: its
/// `InvalidAuthToken` error holds the whole token).
async fn without_tokens(mut message: String, env: &dyn Env) -> String {
    let mut tokens = Vec::new();
    for file in [
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        if let Some(path) = env.var(file)
            && let Ok(token) = tokio::fs::read_to_string(path).await
        {
            tokens.push(zeroize::Zeroizing::new(token));
        }
    }
    if let Some(token) = env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        tokens.push(zeroize::Zeroizing::new(token));
    }
    for token in &tokens {
        for t in [token.as_str(), token.trim()] {
            if t.len() >= 8 && message.contains(t) {
                message = message.replace(t, "<token>");
            }
        }
    }
    message
}

/// IRSA's web-identity exchange with a configured `sts_endpoint` (aws-config's
/// own provider takes a custom STS endpoint only from the environment). The
/// projected token is read from its file at every exchange and never kept.
struct WebIdentity {
    sts: aws_sdk_sts::Client,
    role_arn: String,
    token_file: std::path::PathBuf,
    session_name: String,
}

impl fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebIdentity")
            .field("role_arn", &self.role_arn)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WebIdentity {
    /// Set up when `sts_endpoint` is configured and the pod has IRSA's
    /// `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` (as resolved).
    fn resolved(sdk: &aws_config::SdkConfig, resolved: &AwsResolved) -> Option<Self> {
        let endpoint = resolved.sts_endpoint.as_ref()?;
        let role_arn = resolved.role_arn.clone()?;
        let token_file = resolved.identity_token.as_ref()?.path.clone();
        let session_name = resolved.role_session_name.clone();
        let sts = aws_sdk_sts::config::Builder::from(sdk)
            .endpoint_url(endpoint)
            .build();
        Some(Self {
            sts: aws_sdk_sts::Client::from_conf(sts),
            role_arn,
            token_file,
            session_name,
        })
    }

    async fn exchange(&self) -> Result<Credentials, CredentialsError> {
        let token = Zeroizing::new(tokio::fs::read_to_string(&self.token_file).await.map_err(
            |e| {
                CredentialsError::provider_error(format!(
                    "reading {}: {e}",
                    self.token_file.display()
                ))
            },
        )?);
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.role_arn)
            .role_session_name(&self.session_name)
            .web_identity_token(token.trim())
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(
                    aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        let c = out
            .credentials()
            .ok_or_else(|| CredentialsError::provider_error("STS returned no credentials"))?;
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            SystemTime::try_from(*c.expiration()).ok(),
            "kms-sidecar-web-identity",
        ))
    }
}

impl ProvideCredentials for WebIdentity {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        CredentialsFuture::new(self.exchange())
    }
}

/// What the KMS clients sign with: the refresher's credentials, so that
/// requests never wait on STS or the token file — unless there are none
/// (not loaded yet, or expired), when the request waits for a refresh.
#[derive(Clone)]
pub(super) struct RefreshedProvider(pub(super) Handle<Credentials>);

impl fmt::Debug for RefreshedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshedProvider")
    }
}

impl ProvideCredentials for RefreshedProvider {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        if let Some(current) = self.0.current() {
            return CredentialsFuture::ready(Ok((*current).clone()));
        }
        CredentialsFuture::new(async move {
            match self.0.refreshed().await {
                Ok(fresh) => Ok((*fresh).clone()),
                Err(why) => Err(CredentialsError::not_loaded(why.to_string())),
            }
        })
    }
}
