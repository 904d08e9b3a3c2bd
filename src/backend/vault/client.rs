//! The Vault client: the token-less base client (address, TLS, namespace,
//! timeout), clients that send a token, `sys/health`, and [`Call`], our own
//! calls (transit and health) sent on vaultrs's HTTP client by [`exec`].

use super::errors::{describe, status_of};
use crate::backend::{BuildError, Error, ErrorKind};
use crate::config::{VaultBackendConfig, VaultResolved};
use rustify::errors::ClientError as Rest;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

/// The token-less client: address, TLS, namespace and timeout, as
/// resolved from the config with `VAULT_ADDR`, `VAULT_CACERT`,
/// `VAULT_NAMESPACE` as defaults.
pub(super) async fn base_client(
    config: &VaultBackendConfig,
    resolved: &VaultResolved,
    timeout: Duration,
) -> Result<VaultClient, BuildError> {
    let address = (resolved.address.clone()).ok_or_else(|| {
        BuildError::Setting("`address` is not set and neither is VAULT_ADDR".into())
    })?;
    // vaultrs panics on a bad URL: check it first.
    crate::config::check_vault_address(&address)
        .map_err(|why| BuildError::Setting(format!("address {why}")))?;
    url::Url::parse(&address)
        .map_err(|e| BuildError::Setting(format!("address is not a URL: {e}")))?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(&address)
        .token("")
        .timeout(Some(timeout))
        // TLS is always verified (VAULT_SKIP_VERIFY is ignored), and the
        // client certificate comes from the config only.
        .verify(true)
        .identity(None);
    settings.ca_certs(
        (resolved.ca_file.iter())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    if let Some(namespace) = resolved.namespace.clone() {
        settings.set_namespace(namespace);
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let mut pem = read_file(cert).await.map_err(BuildError::Setting)?;
        pem.extend_from_slice(&read_file(key).await.map_err(BuildError::Setting)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| BuildError::Setting(format!("client certificate and key: {e}")))?;
        settings.identity(Some(identity));
    }
    let settings = settings
        .build()
        .map_err(|e| BuildError::Client(e.to_string()))?;
    VaultClient::new(settings)
        .map_err(|e| BuildError::Client(format!("cannot build the Vault client: {e}")))
}

/// A file's bytes, read off the runtime, wiped on drop.
async fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Zeroizing::new(bytes))
}

/// A client like `base`, sending `token`.
pub(super) fn with_token(base: &VaultClient, token: &str) -> VaultClient {
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

/// Whether the node serves: `sys/health` (no token, no transit call);
/// sealed, not initialised or standby nodes are unavailable.
pub(super) async fn health(base: &VaultClient) -> Result<(), Error> {
    // sys/health answers unwrapped, and with non-200 codes for states
    // (vaultrs's own health type wants fields OpenBao does not send).
    // sys/health lives in the root namespace only.
    let answer = send(base, Call::<()>::get("sys/health".into()), None)
        .await
        .and_then(|body| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .map(drop)
                .map_err(|e| unparsable(e, Some(String::from_utf8_lossy(&body).into_owned())))
        });
    let problem = match answer {
        Ok(()) => return Ok(()),
        Err(e) => match status_of(&e) {
            // A performance standby serves reads and forwards writes.
            Some(473) => return Ok(()),
            Some(503) => "Vault is sealed".to_owned(),
            Some(501) => "Vault is not initialized".to_owned(),
            Some(429) => "the Vault node is a standby: point `address` at the active node or its load balancer".to_owned(),
            Some(472) => "the Vault node is a disaster-recovery secondary".to_owned(),
            Some(other) => format!("Vault health check answered HTTP {other}"),
            None => format!("Vault health check failed: {}", describe(&e)),
        },
    };
    Err(Error::new(ErrorKind::Unavailable, problem))
}

/// Runs a transit call on vaultrs's HTTP client (its connection pool, TLS
/// and timeout) with the client's token and namespace, as vaultrs's
/// `exec_with_result` would and with its errors, but straight: rustify
/// re-parses the base URL, rebuilds the request and copies its body and
/// headers into new ones on every call — a third of the sidecar's own work
/// on a proxied sign (`docs/benchmarks.md`, "Instructions per request").
pub(super) async fn exec<R: DeserializeOwned>(
    client: &VaultClient,
    call: Call<R>,
) -> Result<R, ClientError> {
    let body = send(client, call, client.middle.namespace.as_deref()).await?;
    #[derive(serde::Deserialize)]
    struct Answer<R> {
        data: Option<R>,
    }
    // The answer is not quoted in the error: it may hold plaintext.
    let answer: Answer<R> = serde_json::from_slice(&body).map_err(|e| unparsable(e, None))?;
    answer.data.ok_or(ClientError::ResponseDataEmptyError)
}

/// Sends `call` with the client's token and `namespace`; the body of a 2xx
/// answer, else vaultrs's error for it: `APIError` with Vault's `errors`,
/// or the status alone.
async fn send<R>(
    client: &VaultClient,
    call: Call<R>,
    namespace: Option<&str>,
) -> Result<bytes::Bytes, ClientError> {
    let url = call.url(client);
    let mut request = client
        .http
        .http
        .request(call.method.clone(), url.clone())
        .header("X-Vault-Request", "true");
    if !client.middle.token.is_empty() {
        let mut token = reqwest::header::HeaderValue::from_str(&client.middle.token)
            .map_err(|e| rest(Rest::GenericError { source: e.into() }))?;
        token.set_sensitive(true);
        request = request.header("X-Vault-Token", token);
    }
    if let Some(namespace) = namespace {
        request = request.header("X-Vault-Namespace", namespace);
    }
    if let Some(mut body) = call.body {
        // Moved, not copied (rustify copied it).
        request = request.body(std::mem::take(&mut *body));
    }
    let response = request.send().await.map_err(|e| {
        rest(Rest::RequestError {
            source: e.into(),
            url: url.to_string(),
            method: call.method.to_string(),
        })
    })?;
    let code = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| rest(Rest::ResponseError { source: e.into() }))?;
    if (200..300).contains(&code) {
        return Ok(bytes);
    }
    // Vault's `{"errors": […]}` when it sends one (vaultrs's APIError).
    let content = String::from_utf8(bytes.to_vec()).ok();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    Err(
        match content.as_deref().map(serde_json::from_str::<Errors>) {
            Some(Ok(e)) => ClientError::APIError {
                code,
                errors: e.errors,
            },
            _ => rest(Rest::ServerResponseError { code, content }),
        },
    )
}

fn rest(source: Rest) -> ClientError {
    ClientError::RestClientError { source }
}

/// An answer that is not the JSON expected (`content`: what to quote of it).
fn unparsable(e: serde_json::Error, content: Option<String>) -> ClientError {
    rest(Rest::ResponseParseError {
        source: e.into(),
        content,
    })
}

/// One call of our own (for what vaultrs does not model), sent by [`exec`]
/// with the client's token and namespace.
pub(super) struct Call<R> {
    path: String,
    method: reqwest::Method,
    body: Option<Zeroizing<Vec<u8>>>,
    _response: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    pub(super) fn get(path: String) -> Self {
        Self {
            path,
            method: reqwest::Method::GET,
            body: None,
            _response: PhantomData,
        }
    }

    pub(super) fn post(path: String, body: &serde_json::Value) -> Self {
        Self {
            path,
            method: reqwest::Method::POST,
            body: Some(Zeroizing::new(
                serde_json::to_vec(body).expect("a JSON value always serializes"),
            )),
            _response: PhantomData,
        }
    }
}

impl<R> Call<R> {
    /// `{address}/v1/{path}`, as vaultrs's middleware makes it (the API
    /// version first, then any path of the address), without parsing it.
    fn url(&self, client: &VaultClient) -> reqwest::Url {
        let mut url = client.settings.address.clone();
        let base: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .clear()
                .push(&client.middle.version)
                .extend(base.iter().map(String::as_str))
                .extend(self.path.split('/').filter(|s| !s.is_empty()));
        }
        url
    }
}
