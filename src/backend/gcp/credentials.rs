//! Access tokens for Cloud KMS, held by the shared [`Refresher`].
//!
//! `google-cloud-auth` does the exchanges — STS for workload identity
//! federation (reading the projected token file at each exchange),
//! service-account impersonation, the metadata server — and renews its
//! token itself 4 minutes before expiry. It does not expose a token's
//! lifetime, so the refresher cannot schedule by it: it takes the library's
//! current token every [`POLL`] (a cache read, no network), which keeps the
//! token it hands out at most that much older than the library's. A token
//! Cloud KMS rejects (401) is dropped, and the refresh after it builds new
//! library credentials, so the next token comes from a new exchange; so
//! does the refresh after a failed one (the library keeps an error it deems
//! permanent, such as a refused subject token, for good).
//! [`Refreshed`] gives the KMS client the refresher's token: requests never
//! wait on an exchange.

use crate::backend::BuildError;
use crate::backend::credentials::{Fresh, Handle, RefreshError, Schedule, Source};
use crate::config::{GcpBackendConfig, GcpCredentials, GcpResolved};
use async_trait::async_trait;
use google_cloud_auth::credentials::{
    AccessTokenCredentials, CacheableResource, CredentialsProvider, EntityTag, external_account,
    mds, service_account,
};
use google_cloud_auth::errors::CredentialsError;
use http::{Extensions, HeaderMap, HeaderValue, header::AUTHORIZATION};
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use zeroize::Zeroizing;

/// How often the library's current token is taken.
const POLL: Duration = Duration::from_secs(5);

/// The scope of Cloud KMS calls.
const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

/// Taken every [`POLL`]; after a failure from 1 s doubling up to 30 s.
pub(super) const SCHEDULE: Schedule = Schedule {
    min: POLL,
    max: POLL,
    retry: Duration::from_secs(1),
    retry_max: Duration::from_secs(30),
};

/// An access token: wiped on drop, never printed.
pub(super) struct Token(Zeroizing<String>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Which library credentials, and the ones in use.
pub(super) struct Login {
    kind: Option<GcpCredentials>,
    file: Option<PathBuf>,
    sts_endpoint: Option<String>,
    /// The library's credentials, built anew after a rejected token.
    built: Mutex<Option<AccessTokenCredentials>>,
    /// Whether the last token handed out is still the current one: a
    /// refresh without a current token after one was handed out means it
    /// was rejected (or expired), so the library must start over.
    handed_out: Mutex<bool>,
}

impl Login {
    /// The login of `config`, its credentials file as resolved (`credentials_file`,
    /// else `GOOGLE_APPLICATION_CREDENTIALS`); a file that cannot be used fails
    /// the start.
    pub(super) fn new(
        config: &GcpBackendConfig,
        resolved: &GcpResolved,
    ) -> Result<Self, BuildError> {
        let file = resolved.credentials_file.clone();
        if matches!(
            config.credentials,
            Some(GcpCredentials::ExternalAccount | GcpCredentials::File)
        ) && file.is_none()
        {
            return Err(BuildError::Setting(
                "`credentials` needs `credentials_file` (or GOOGLE_APPLICATION_CREDENTIALS)".into(),
            ));
        }
        let login = Self {
            kind: config.credentials,
            file,
            sts_endpoint: config.sts_endpoint.clone(),
            built: Mutex::new(None),
            handed_out: Mutex::new(false),
        };
        // A credentials file that cannot be used fails the start.
        login.build().map_err(BuildError::Credentials)?;
        Ok(login)
    }

    /// New library credentials of the configured kind.
    fn build(&self) -> Result<AccessTokenCredentials, String> {
        let built = match self.kind {
            None => google_cloud_auth::credentials::Builder::default()
                .with_scopes([SCOPE])
                .build_access_token_credentials(),
            Some(GcpCredentials::Metadata) => mds::Builder::default()
                .with_scopes([SCOPE])
                .build_access_token_credentials(),
            Some(GcpCredentials::ExternalAccount | GcpCredentials::File) => {
                let json = self.file_json()?;
                let kind = json["type"].as_str().unwrap_or_default().to_owned();
                match (self.kind, kind.as_str()) {
                    (_, "external_account") => external_account::Builder::new(json)
                        .with_scopes([SCOPE])
                        .build_access_token_credentials(),
                    (Some(GcpCredentials::File), "service_account") => {
                        service_account::Builder::new(json)
                            .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                                SCOPE,
                            ]))
                            .build_access_token_credentials()
                    }
                    (_, other) => {
                        return Err(format!(
                            "{}: a credentials file of type `{other}` cannot be used here (external_account{})",
                            self.file_name(),
                            if self.kind == Some(GcpCredentials::File) {
                                ", service_account"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
        };
        built.map_err(|e| format!("credentials: {e}"))
    }

    fn file_name(&self) -> String {
        self.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// The credentials file as JSON, `token_url` replaced by `sts_endpoint`.
    /// Only its structure is ever reported, never its content.
    fn file_json(&self) -> Result<Value, String> {
        let path = self.file.as_ref().ok_or("no credentials file")?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let mut json: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not JSON (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        if let Some(sts) = &self.sts_endpoint
            && json["type"] == "external_account"
        {
            json["token_url"] = format!("{}/v1/token", sts.trim_end_matches('/')).into();
        }
        Ok(json)
    }
}

#[async_trait]
impl Source for Login {
    type Credential = Token;

    async fn refresh(&self, current: Option<&Token>) -> Result<Fresh<Token>, RefreshError> {
        let restart = current.is_none() && *self.handed_out.lock().expect("never poisoned");
        let credentials = {
            let mut built = self.built.lock().expect("never poisoned");
            if restart || built.is_none() {
                *built = Some(self.build()?);
            }
            built.clone().expect("just built")
        };
        let token = match credentials.access_token().await {
            Ok(token) => token,
            Err(e) => {
                // The library keeps a failure it deems permanent (a refused
                // subject token) for good: start over at the next refresh.
                *self.built.lock().expect("never poisoned") = None;
                return Err(format!("access token for Cloud KMS: {e}").into());
            }
        };
        *self.handed_out.lock().expect("never poisoned") = true;
        Ok(Fresh {
            credential: Token(Zeroizing::new(token.token)),
            // The library renews before expiry; the refresher takes its
            // token again every POLL.
            expires: None,
        })
    }
}

/// The KMS client's credentials: the refresher's current token (or the
/// one a refresh started now brings).
#[derive(Debug)]
pub(super) struct Refreshed(pub(super) Handle<Token>);

impl CredentialsProvider for Refreshed {
    async fn headers(
        &self,
        _extensions: Extensions,
    ) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        let token = self
            .0
            .refreshed()
            .await
            .map_err(|why| CredentialsError::from_msg(true, why.to_string()))?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.0.as_str())).map_err(|_| {
                CredentialsError::from_msg(false, "the access token is not a header value")
            })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        Ok(CacheableResource::New {
            entity_tag: EntityTag::new(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        Some("googleapis.com".into())
    }
}
