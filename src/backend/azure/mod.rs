//! The `azure` backend: Azure Key Vault and Managed HSM, through the
//! official `azure_security_keyvault_keys` client and `azure_identity`
//! credentials (reqwest + rustls).
//!
//! The shared [`Refresher`] keeps an Entra ID access token fresh in the
//! background (`credentials.rs`); the `KeyClient` gets it through a
//! `TokenCredential` that never logs in itself, so requests never wait on
//! Entra. A call Key Vault answers 401 drops the token, waits for a new
//! one and is sent once more. The SDK's own retries are off: retries,
//! `Retry-After`, the timeout and the circuit breaker are the shared
//! layer's ([`super::resilient`]).
//!
//! Key Vault signs digests, so messages are hashed here; EC signatures come
//! back as raw `r‖s` and are turned into DER unless `format: raw`. Verify is
//! local, with the cached public key. RSA keys encrypt with RSA-OAEP-256 and
//! wrap data keys with `wrapKey`; `oct-HSM` keys (Managed HSM) encrypt with
//! A256GCM (the context as AAD) and wrap with A256KW. Where the algorithm
//! has no associated data (RSA-OAEP, A256KW) the context is bound inside
//! the sealed block (`keys.rs`). `metadata` always asks Key
//! Vault, so that the service's revalidation sees a disabled key at once;
//! what the operations need (the JWK, the current version) comes back with
//! the service's cached metadata ([`KeyRef::facts`]).

mod credentials;
mod errors;

use errors::Call;
mod keys;

use super::credentials::{Refresher, Schedule};
use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, DriverFacts, Error, ErrorKind, KeyMetadata,
    KeyRef, Origin, Plaintext, PublicKey, Rotate, Sealed, Signature, VersionInfo, WrappedBy,
};
use crate::config::AzureBackendConfig;
use crate::crypto::{self, Algorithm, SignInput, SignatureFormat};
use crate::metrics::Metrics;
use crate::telemetry;
use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    JsonWebKey, Key, KeyClientDecryptOptions, KeyClientEncryptOptions, KeyClientGetKeyOptions,
    KeyClientListKeyPropertiesOptions, KeyClientListKeyPropertiesVersionsOptions,
    KeyClientSignOptions, KeyClientWrapKeyOptions, KeyOperationParameters, KeyOperationResult,
    KeyProperties, KeyType, SignParameters, SignatureAlgorithm,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use credentials::{Login, Refreshed, Token};
use futures_util::{StreamExt, TryStreamExt};
use keys::{Blob, Made};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Azure Key Vault or Managed HSM.
pub struct AzureBackend {
    vault_url: String,
    client: KeyClient,
    /// The access token, refreshed in the background; dropping it stops
    /// the refresh.
    credentials: Refresher<Token>,
    /// `keys.*.algorithm` by alias (an RSA key may serve a signing and an
    /// encrypting alias).
    configured: HashMap<String, Algorithm>,
}

impl fmt::Debug for AzureBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBackend")
            .field("vault_url", &self.vault_url)
            .finish_non_exhaustive()
    }
}

/// What the calls need of a key, kept with its cached metadata.
struct KeyInfo {
    /// The public JWK of the current (or pinned) version.
    jwk: JsonWebKey,
    current: String,
}

/// The key's rotation policy, as far as it could be read.
struct Rotation {
    period: Option<Duration>,
    text: String,
}

impl AzureBackend {
    pub async fn new(
        ctx: &super::BuildContext<'_>,
        config: &AzureBackendConfig,
        resolved: &crate::config::AzureResolved,
    ) -> Result<Self, super::BuildError> {
        use super::BuildError::{Client, Setting};
        let (name, metrics): (&str, Arc<Metrics>) = (ctx.name, ctx.metrics.clone());
        crate::config::check_azure_vault_url(&config.vault_url).map_err(Setting)?;
        let vault_url = config.vault_url.trim_end_matches('/').to_owned();
        let scope = match &config.scope {
            Some(scope) => scope.clone(),
            None => default_scope(&vault_url).map_err(Setting)?,
        };
        let transport = Transport::new(azure_core::http::new_http_client(None));
        let login = Login::new(resolved, ctx.env.clone(), scope.clone(), transport.clone())
            .map_err(Setting)?;
        let credentials = Refresher::spawn(
            name,
            login,
            Schedule::within(config.credential_refresh),
            metrics,
        );
        let options = KeyClientOptions {
            client_options: ClientOptions {
                transport: Some(transport),
                retry: RetryOptions::none(),
                per_try_policies: vec![Arc::new(TraceContext)],
                ..Default::default()
            },
            // `Refreshed` checks the challenge's scope itself, exactly.
            verify_challenge_resource: Some(false),
            ..Default::default()
        };
        let credential = Refreshed {
            handle: credentials.handle(),
            scope,
        };
        let client = KeyClient::new(&vault_url, Arc::new(credential), Some(options))
            .map_err(|e| Client(format!("vault_url: {}", errors::describe(&e))))?;
        // Get a token at once when Entra answers quickly, so that a normal
        // start is ready at once; the refresher goes on either way.
        credentials.first_refresh(Duration::from_secs(5)).await;
        Ok(Self {
            vault_url,
            client,
            credentials,
            configured: (ctx.keys.iter())
                .filter_map(|(alias, k)| Some(((*alias).to_owned(), k.algorithm?)))
                .collect(),
        })
    }

    /// Runs a Key Vault call with the current token. A 401 drops the token
    /// (if still current), waits for a new one, and sends the call once
    /// more; other failures map to our errors.
    async fn call<T, F, Fut>(&self, key: KeyRef<'_>, op: Call, f: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        self.credentials
            .call_rejecting(f, |e| {
                errors::unauthorized(e).then(|| format!("Key Vault {op}: {}", errors::describe(e)))
            })
            .await
            .map_err(|why| Error::new(ErrorKind::Unavailable, credentials::not_ready(&why)))?
            .map_err(|e| errors::error(key, op, &e))
    }

    /// The key's facts, as cached with its metadata ([`KeyRef::facts`]),
    /// or asked of Key Vault.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        match key.facts() {
            Some(info) => Ok(info),
            None => Ok(self.get_key(key).await?.1),
        }
    }

    /// The key's metadata (versions, rotation policy) and facts (its JWK),
    /// asked of Key Vault.
    async fn get_key(&self, key: KeyRef<'_>) -> Result<(KeyMetadata, Arc<KeyInfo>), Error> {
        let (name, pinned) = keys::split_id(key.id);
        let got: Key = self
            .call(key, Call::GetKey, || async {
                let options = KeyClientGetKeyOptions {
                    key_version: pinned.map(str::to_owned),
                    ..Default::default()
                };
                self.client.get_key(name, Some(options)).await?.into_model()
            })
            .await?;
        let jwk = got
            .key
            .ok_or_else(|| errors::malformed("a key without `key`"))?;
        let current = jwk
            .kid
            .as_deref()
            .and_then(keys::version_of_kid)
            .ok_or_else(|| errors::malformed("a key without a versioned `kid`"))?
            .to_owned();
        let versions = self.versions(key, name).await?;
        let hsm = matches!(
            jwk.kty,
            Some(KeyType::EcHsm | KeyType::RsaHsm | KeyType::OctHsm)
        );
        let rotation = self.rotation(key, name).await;
        let mut details = BTreeMap::from([
            ("vault_url".to_owned(), self.vault_url.clone()),
            (
                "key_type".to_owned(),
                (jwk.kty.as_ref())
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
            ),
            ("rotation_policy".to_owned(), rotation.text),
        ]);
        if let Some(ops) = &jwk.key_ops {
            details.insert("key_ops".to_owned(), ops.join(","));
        }
        if !(got.attributes.as_ref())
            .and_then(|a| a.enabled)
            .unwrap_or(true)
        {
            details.insert("current_version_enabled".to_owned(), "false".into());
        }
        let info = Arc::new(KeyInfo { jwk, current });
        let metadata = KeyMetadata {
            algorithm: self.algorithm(key, &info)?,
            current_version: info.current.clone(),
            created: versions.first().and_then(|v| v.created),
            versions,
            origin: if hsm { Origin::Hsm } else { Origin::Software },
            rotation_period: rotation.period,
            details,
            driver: Some(DriverFacts::shared(info.clone())),
        };
        Ok((metadata, info))
    }

    /// The key's versions, page by page, oldest first.
    async fn versions(&self, key: KeyRef<'_>, name: &str) -> Result<Vec<VersionInfo>, Error> {
        let listed: Vec<KeyProperties> = self
            .call(key, Call::ListVersions, || async {
                let options = KeyClientListKeyPropertiesVersionsOptions {
                    maxresults: Some(25),
                    ..Default::default()
                };
                self.client
                    .list_key_properties_versions(name, Some(options))?
                    .try_collect()
                    .await
            })
            .await?;
        let mut versions: Vec<VersionInfo> = listed
            .iter()
            .filter_map(|p| {
                let version = keys::version_of_kid(p.kid.as_deref()?)?.to_owned();
                let attributes = p.attributes.as_ref();
                Some(VersionInfo {
                    version,
                    created: attributes.and_then(|a| a.created).map(system_time),
                    enabled: attributes.and_then(|a| a.enabled).unwrap_or(true),
                    state: None,
                })
            })
            .collect();
        versions.sort_by_key(|v| v.created);
        Ok(versions)
    }

    /// The rotation policy; one the identity may not read is reported as
    /// such rather than failing the metadata.
    async fn rotation(&self, key: KeyRef<'_>, name: &str) -> Rotation {
        let policy = self
            .call(key, Call::GetRotationPolicy, || async {
                self.client
                    .get_key_rotation_policy(name, None)
                    .await?
                    .into_model()
            })
            .await;
        let policy = match policy {
            Ok(p) => p,
            Err(e) => {
                return Rotation {
                    period: None,
                    text: format!("unreadable ({})", e.kind.label()),
                };
            }
        };
        let mut text = Vec::new();
        let mut period = None;
        for action in policy.lifetime_actions.iter().flatten() {
            let kind = action
                .action
                .as_ref()
                .and_then(|a| a.type_prop.as_ref())
                .map(|t| format!("{t:?}").to_lowercase())
                .unwrap_or_else(|| "?".into());
            let trigger = action.trigger.as_ref();
            if let Some(after) = trigger.and_then(|t| t.time_after_create.as_deref()) {
                text.push(format!("{kind} {after} after creation"));
                if kind == "rotate" {
                    period = iso_duration(after);
                }
            }
            if let Some(before) = trigger.and_then(|t| t.time_before_expiry.as_deref()) {
                text.push(format!("{kind} {before} before expiry"));
            }
        }
        if let Some(expiry) = policy.attributes.and_then(|a| a.expiry_time) {
            text.push(format!("new versions expire after {expiry}"));
        }
        Rotation {
            period,
            text: if text.is_empty() {
                "none".into()
            } else {
                text.join("; ")
            },
        }
    }

    /// The key's algorithm for this alias (its JWK, and for an RSA key the
    /// algorithm configured).
    fn algorithm(&self, key: KeyRef<'_>, info: &KeyInfo) -> Result<Algorithm, Error> {
        keys::algorithm_of(key, &info.jwk, self.configured.get(key.alias).copied())
    }

    /// Encrypts or wraps `plaintext` with the current (or pinned) version;
    /// the key's name as the answer's `kid` gives it.
    async fn seal(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
        wrap: bool,
    ) -> Result<(Sealed, String), Error> {
        let info = self.info(key).await?;
        let algorithm = self.algorithm(key, &info)?;
        let (name, pinned) = keys::split_id(key.id);
        let made = match (algorithm, wrap) {
            (Algorithm::RsaOaepSha256 { .. }, false) => Made::RsaEncrypt,
            (Algorithm::RsaOaepSha256 { .. }, true) => Made::RsaWrap,
            (_, false) => Made::AesGcm,
            (_, true) => Made::AesWrap,
        };
        if let (Algorithm::RsaOaepSha256 { bits }, Made::RsaEncrypt) = (algorithm, made)
            && plaintext.len() > super::binding::rsa_oaep_limit(bits)
        {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "key `{}` ({algorithm}) encrypts at most {} bytes: use `envelope` for larger data",
                    key.alias,
                    super::binding::rsa_oaep_limit(bits)
                ),
            ));
        }
        let value = if made.prefixed() {
            super::binding::bind(context, plaintext)
        } else {
            Zeroizing::new(plaintext.to_vec())
        };
        let aad = (made == Made::AesGcm).then(|| super::canonical_context(context));
        let op = if wrap { Call::WrapKey } else { Call::Encrypt };
        let result: KeyOperationResult = self
            .call(key, op, || async {
                let params = KeyOperationParameters {
                    algorithm: Some(made.algorithm()),
                    value: Some(value.to_vec()),
                    additional_authenticated_data: aad.clone(),
                    ..Default::default()
                };
                let body: RequestContent<KeyOperationParameters> = params.try_into()?;
                let version = pinned.map(str::to_owned);
                let answer = if wrap {
                    let options = KeyClientWrapKeyOptions {
                        key_version: version,
                        ..Default::default()
                    };
                    self.client.wrap_key(name, body, Some(options)).await?
                } else {
                    let options = KeyClientEncryptOptions {
                        key_version: version,
                        ..Default::default()
                    };
                    self.client.encrypt(name, body, Some(options)).await?
                };
                answer.into_model()
            })
            .await?;
        sealed_of(made, &result)
    }
}

/// Our ciphertext of Key Vault's answer to an encrypt or wrap made as
/// `made`, and the key's name as the answer's `kid` gives it.
fn sealed_of(made: Made, result: &KeyOperationResult) -> Result<(Sealed, String), Error> {
    let (name, version) = result_key(result)?;
    let ciphertext = result
        .result
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| errors::malformed("no ciphertext"))?;
    let (iv, tag) = match made {
        Made::AesGcm => (
            result.iv.as_deref().filter(|iv| iv.len() == 12),
            result
                .authentication_tag
                .as_deref()
                .filter(|t| t.len() == 16),
        ),
        _ => (Some(&[][..]), Some(&[][..])),
    };
    let (Some(iv), Some(tag)) = (iv, tag) else {
        return Err(errors::malformed(
            "an AES-GCM answer without a 12-byte iv and 16-byte tag",
        ));
    };
    let bytes = Blob {
        made,
        version: &version,
        iv,
        tag,
        ciphertext,
    }
    .seal();
    Ok((Sealed { bytes, version }, name))
}

/// The key name and version a key operation used, from its `kid`.
fn result_key(result: &KeyOperationResult) -> Result<(String, String), Error> {
    result
        .kid
        .as_deref()
        .and_then(keys::name_and_version_of_kid)
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .ok_or_else(|| errors::malformed("an answer without a versioned `kid`"))
}

/// The version a key operation used, from its `kid`.
fn result_version(result: &KeyOperationResult) -> Result<String, Error> {
    result_key(result).map(|(_, version)| version)
}

/// The token scope of a vault: `https://` + its host without the vault's
/// name + `/.default` (`myvault.vault.azure.net` → `vault.azure.net`), the
/// resource Key Vault names in its authentication challenge.
fn default_scope(vault_url: &str) -> Result<String, String> {
    let host = vault_url
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    match host.split_once('.') {
        Some((_, domain)) if !domain.is_empty() => Ok(format!("https://{domain}/.default")),
        _ => Err(format!(
            "vault_url: cannot tell the token scope from `{vault_url}`: set `scope`"
        )),
    }
}

fn system_time(t: azure_core::time::OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
}

/// An ISO 8601 duration (`P90D`, `P1Y6M`) as Key Vault rotation policies
/// give them, with months of 30 and years of 365 days.
fn iso_duration(text: &str) -> Option<Duration> {
    let parsed: Duration = iso8601::duration(text).ok()?.into();
    (!parsed.is_zero()).then_some(parsed)
}

#[async_trait]
impl Backend for AzureBackend {
    fn kind(&self) -> &'static str {
        "azure"
    }

    /// A valid token, and one page of one key listed (any identity that may
    /// use keys may list them). A throttled answer is a working vault.
    async fn health(&self) -> Result<(), Error> {
        let probe = KeyRef::new("(health check)", "-");
        self.call(probe, Call::ListKeys, || async {
            let options = KeyClientListKeyPropertiesOptions {
                maxresults: Some(1),
                ..Default::default()
            };
            let mut pages = self.client.list_key_properties(Some(options))?.into_pages();
            pages.next().await.transpose().map(|_| ())
        })
        .await
    }

    /// Always asked of Key Vault: the service's revalidation reads whether
    /// the key is enabled from here.
    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        Ok(self.get_key(key).await?.0)
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let info = self.info(key).await?;
        let algorithm = self.algorithm(key, &info)?;
        let jwk = match version {
            None => info.jwk.clone(),
            Some(v) if v == info.current => info.jwk.clone(),
            Some(v) => {
                let (name, _) = keys::split_id(key.id);
                let got: Key = self
                    .call(key, Call::GetKey, || async {
                        let options = KeyClientGetKeyOptions {
                            key_version: Some(v.to_owned()),
                            ..Default::default()
                        };
                        self.client.get_key(name, Some(options)).await?.into_model()
                    })
                    .await?;
                got.key
                    .ok_or_else(|| errors::malformed("a key without `key`"))?
            }
        };
        let version = jwk
            .kid
            .as_deref()
            .and_then(keys::version_of_kid)
            .unwrap_or(&info.current)
            .to_owned();
        Ok(PublicKey {
            spki_der: keys::spki_of(&jwk, algorithm)?,
            algorithm,
            version,
        })
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let alg = match algorithm {
            Algorithm::EcdsaP256Sha256 => SignatureAlgorithm::Es256,
            Algorithm::EcdsaP384Sha384 => SignatureAlgorithm::Es384,
            Algorithm::EcdsaP521Sha512 => SignatureAlgorithm::Es512,
            Algorithm::RsaPssSha256 { .. } => SignatureAlgorithm::Ps256,
            Algorithm::RsaPkcs1Sha256 { .. } => SignatureAlgorithm::Rs256,
            other => return Err(Error::unsupported(format!("a {other} key cannot sign"))),
        };
        let digest = match input {
            SignInput::Message(m) => keys::digest_of(algorithm, m)
                .ok_or_else(|| Error::unsupported("this algorithm signs messages only"))?
                .as_ref()
                .to_vec(),
            SignInput::Digest(d) => {
                crypto::import_digest(algorithm, d)?;
                d.to_vec()
            }
        };
        let (name, pinned) = keys::split_id(key.id);
        let result: KeyOperationResult = self
            .call(key, Call::Sign, || async {
                let params = SignParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(digest.clone()),
                };
                let options = KeyClientSignOptions {
                    key_version: pinned.map(str::to_owned),
                    ..Default::default()
                };
                self.client
                    .sign(name, params.try_into()?, Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        let version = result_version(&result)?;
        let bytes = result
            .result
            .ok_or_else(|| errors::malformed("no signature"))?;
        Ok(Signature {
            bytes,
            encoding: SignatureFormat::Raw,
            algorithm,
            version,
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        Ok(self.seal(key, plaintext, context, false).await?.0)
    }

    /// Key Vault's answer names the key and version that decrypted (`kid`).
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let info = self.info(key).await?;
        let algorithm = self.algorithm(key, &info)?;
        let blob = Blob::open(ciphertext)?;
        // A blob of the other kind of key is someone else's ciphertext.
        let rsa = matches!(algorithm, Algorithm::RsaOaepSha256 { .. });
        if rsa != matches!(blob.made, Made::RsaEncrypt | Made::RsaWrap) {
            return Err(Error::decryption_failed());
        }
        let (name, _) = keys::split_id(key.id);
        let op = if blob.made.wrapped() {
            Call::UnwrapKey
        } else {
            Call::Decrypt
        };
        let aad = (blob.made == Made::AesGcm).then(|| super::canonical_context(context));
        let result: KeyOperationResult = self
            .call(key, op, || async {
                let gcm = blob.made == Made::AesGcm;
                let params = KeyOperationParameters {
                    algorithm: Some(blob.made.algorithm()),
                    value: Some(blob.ciphertext.to_vec()),
                    iv: gcm.then(|| blob.iv.to_vec()),
                    authentication_tag: gcm.then(|| blob.tag.to_vec()),
                    additional_authenticated_data: aad.clone(),
                };
                let body: RequestContent<KeyOperationParameters> = params.try_into()?;
                let answer = if blob.made.wrapped() {
                    self.client
                        .unwrap_key(name, blob.version, body, None)
                        .await?
                } else {
                    self.client
                        .decrypt(
                            name,
                            blob.version,
                            body,
                            None::<KeyClientDecryptOptions<'_>>,
                        )
                        .await?
                };
                answer.into_model()
            })
            .await
            // The key exists (its facts were read): a version it lacks is
            // in another key's ciphertext.
            .map_err(|e| match e.kind {
                ErrorKind::KeyNotFound => Error::decryption_failed(),
                _ => e,
            })?;
        let (name, version) = result_key(&result)?;
        let opened = Zeroizing::new(
            result
                .result
                .ok_or_else(|| errors::malformed("no plaintext"))?,
        );
        let plaintext = if blob.made.prefixed() {
            super::binding::unbind(context, &opened)?
        } else {
            opened
        };
        Ok(Decrypted {
            plaintext: Plaintext(plaintext),
            by: WrappedBy::exactly(version, name),
        })
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let mut dek = Zeroizing::new(vec![0u8; size.bytes()]);
        aws_lc_rs::rand::fill(&mut dek)
            .map_err(|_| Error::new(ErrorKind::Backend, "no randomness for a data key"))?;
        let (sealed, name) = self.seal(key, &dek, context, true).await?;
        Ok(DataKey {
            plaintext: Plaintext(dek),
            encrypted: sealed.bytes,
            version: sealed.version,
            key_ref: name,
        })
    }

    fn rotator(&self) -> Option<&dyn Rotate> {
        Some(self)
    }
}

#[async_trait]
impl Rotate for AzureBackend {
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        let (name, pinned) = keys::split_id(key.id);
        if pinned.is_some() {
            return Err(Error::unsupported(format!(
                "key `{}` is pinned to a version: rotate the Key Vault key `{name}` instead",
                key.alias
            )));
        }
        let rotated: Key = self
            .call(key, Call::Rotate, || async {
                self.client.rotate_key(name, None).await?.into_model()
            })
            .await?;
        rotated
            .key
            .as_ref()
            .and_then(|k| k.kid.as_deref())
            .and_then(keys::version_of_kid)
            .map(str::to_owned)
            .ok_or_else(|| errors::malformed("a rotated key without a versioned `kid`"))
    }
}

/// Carries the request's trace on to Key Vault, which takes the W3C trace
/// context (`traceparent`, `tracestate`) as the Azure SDKs send it.
#[derive(Debug)]
struct TraceContext;

#[async_trait]
impl Policy for TraceContext {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        telemetry::inject(|name, value| request.insert_header(name, value));
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_the_vault_domain() {
        assert_eq!(
            default_scope("https://myvault.vault.azure.net").as_deref(),
            Ok("https://vault.azure.net/.default")
        );
        assert_eq!(
            default_scope("https://hsm.managedhsm.azure.net/").as_deref(),
            Ok("https://managedhsm.azure.net/.default")
        );
        assert_eq!(
            default_scope("https://127.0.0.1:8443").as_deref(),
            Ok("https://0.0.1/.default")
        );
        assert!(default_scope("https://localhost").is_err());
    }

    #[test]
    fn rotation_periods() {
        assert_eq!(iso_duration("P90D"), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            iso_duration("P1Y6M"),
            Some(Duration::from_secs(545 * 86_400))
        );
        assert_eq!(iso_duration("PT12H"), Some(Duration::from_secs(12 * 3_600)));
        assert_eq!(iso_duration("P0D"), None);
        assert_eq!(iso_duration("90D"), None);
    }
}
