//! The `vault` backend: HashiCorp Vault or OpenBao transit, through
//! `vaultrs` (rustls).
//!
//! The sidecar logs in with one of four auth methods, and the shared
//! [`Refresher`] keeps its token renewed in the background at ~70 % of its
//! TTL, logging in again when renewal is impossible, fails or nears the max
//! TTL (`auth.rs`). Requests never wait on a login: they use the current
//! token. Vault answers 403 both to a token its policy does not cover and to
//! one it no longer accepts (revoked, expired, or forgotten by a restarted
//! dev server), so a refused call asks Vault about the token (`lookup-self`):
//! a policy denial stays `forbidden`; a rejected token is dropped — the call
//! is `unauthenticated`, the backend not ready — and the refresher logs in
//! again at once.
//!
//! `vaultrs` serves the calls it models fully (logins, token lookup and
//! renewal, encrypt, decrypt, HMAC, verify HMAC, rotate); reading a key,
//! sign/verify, datakey and `sys/health` go through small endpoints of our
//! own on vaultrs's executor (`client.rs`), because vaultrs's types lack the
//! `hmac` key type, `latest_version`, `salt_length` and datakey's
//! `associated_data`. Transit's formats are in `transit.rs`, Vault's errors
//! as ours in `errors.rs`.

mod auth;
mod client;
mod errors;
mod transit;

use super::credentials::{NotReady, Refresher};
use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, DriverFacts, Error, ErrorKind, KeyMetadata,
    KeyRef, Mac, Origin, Plaintext, PublicKey, Rotate, Sealed, Signature, Verify, VersionInfo,
    WrappedBy, canonical_context,
};
use crate::config::VaultBackendConfig;
use crate::crypto::{Algorithm, SignInput, SignatureFormat};
use crate::metrics::Metrics;
use async_trait::async_trait;
use auth::Token;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use client::Call;
use errors::{malformed, status_of};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use transit::{
    CiphertextData, DataKeyData, KeyData, KeyInfo, KeyVersion, PlaintextData, SignatureData,
    ValidData, algorithm_of, open_ciphertext, parse_version, seal_ciphertext, sign_params,
    split_versioned, wipe,
};
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

/// Vault / OpenBao transit.
pub struct VaultBackend {
    mount: String,
    /// No token: for `sys/health` (logins have their own handle).
    base: Arc<VaultClient>,
    auth_method: &'static str,
    /// The token, renewed in the background; dropping it stops the renewal.
    credentials: Refresher<Token>,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.base.settings.address.as_str())
            .field("mount", &self.mount)
            .field("auth", &self.auth_method)
            .finish_non_exhaustive()
    }
}

impl VaultBackend {
    pub async fn new(
        ctx: &super::BuildContext<'_>,
        config: &VaultBackendConfig,
        resolved: &crate::config::VaultResolved,
    ) -> Result<Self, super::BuildError> {
        let (name, metrics): (&str, Arc<Metrics>) = (ctx.name, ctx.metrics.clone());
        let base = Arc::new(client::base_client(config, resolved, ctx.timeout).await?);
        let login = auth::Login::new(name, base.clone(), config.auth.clone());
        let credentials = Refresher::spawn(name, login, auth::SCHEDULE, metrics);
        // Log in at once when Vault answers quickly, so that a normal start
        // is ready at once; the refresher goes on either way.
        credentials.first_refresh(Duration::from_secs(5)).await;
        Ok(Self {
            mount: resolved.mount.clone(),
            base,
            auth_method: config.auth.method(),
            credentials,
        })
    }

    fn path(&self, op: &str, key: KeyRef<'_>) -> String {
        format!("{}/{op}/{}", self.mount, key.id)
    }

    /// Runs a Vault call with the current token and maps its error
    /// (retries and the circuit breaker are the shared layer's,
    /// [`super::resilient`]). A refusal (401/403) is `forbidden` while Vault
    /// still accepts the token, `unauthenticated` when it no longer does.
    async fn call<T, F, Fut>(&self, key: KeyRef<'_>, op: errors::Call, f: F) -> Result<T, Error>
    where
        F: FnOnce(Arc<Token>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let token = match self.credentials.ready() {
            Ok(token) => token,
            Err(why) => return Err(self.without_token(why).await),
        };
        match f(token.clone()).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                let refused = matches!(status_of(&e), Some(401 | 403));
                let rejected =
                    refused && !token.still_valid(Instant::now(), &self.credentials).await;
                Err(errors::error(key, op, &e, rejected))
            }
        }
    }

    /// Why a call cannot be made without a valid token: Vault cannot be
    /// reached at all (503, retryable — whatever the last login said), or
    /// it can and the sidecar has no token it accepts (401).
    async fn without_token(&self, why: NotReady) -> Error {
        if matches!(why, NotReady::NotYet | NotReady::Failed(_))
            && let Err(e) = client::health(&self.base).await
            && matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
        {
            return e;
        }
        auth::no_token(why)
    }

    /// The key's type and versions, as cached with its metadata
    /// ([`KeyRef::facts`]), or asked of transit.
    async fn info(&self, key: KeyRef<'_>) -> Result<Arc<KeyInfo>, Error> {
        match key.facts() {
            Some(info) => Ok(info),
            None => self.read_key(key).await.map(Arc::new),
        }
    }

    /// The key's type and versions, asked of transit.
    async fn read_key(&self, key: KeyRef<'_>) -> Result<KeyInfo, Error> {
        let path = self.path("keys", key);
        let data: KeyData = self
            .call(key, errors::Call::ReadKey, |t| async move {
                client::exec(&t.client, Call::<KeyData>::get(path)).await
            })
            .await?;
        let algorithm = algorithm_of(&data.key_type).ok_or_else(|| {
            Error::unsupported(format!(
                "key `{}` is a transit `{}` key, which kms-sidecar does not support (ecdsa-p256, ecdsa-p384, ed25519, rsa-2048/3072/4096, aes256-gcm96, hmac)",
                key.alias, data.key_type
            ))
        })?;
        Ok(KeyInfo { algorithm, data })
    }

    /// A transit request `body` with `context` bound to the key: derived
    /// keys derive from it (`context`), others authenticate it as AEAD
    /// associated data (`associated_data`). An empty context binds nothing,
    /// as transit itself does without associated data, so that ciphertexts
    /// made by Vault's own clients and by the sidecar are the same.
    fn bind_context(
        info: &KeyInfo,
        context: &Context,
        body: serde_json::Value,
    ) -> serde_json::Value {
        if context.is_empty() && !info.data.derived {
            return body;
        }
        Self::bind_bytes(info, &canonical_context(context), body)
    }

    fn bind_bytes(info: &KeyInfo, bound: &[u8], mut body: serde_json::Value) -> serde_json::Value {
        let field = if info.data.derived {
            "context"
        } else {
            "associated_data"
        };
        body[field] = B64.encode(bound).into();
        body
    }

    /// Transit's `decrypt` of `body` (a `vault:vN:` ciphertext and what binds it).
    async fn transit_decrypt(
        &self,
        key: KeyRef<'_>,
        body: serde_json::Value,
    ) -> Result<PlaintextData, Error> {
        let path = self.path("decrypt", key);
        let call = Call::<PlaintextData>::post(path, &body);
        wipe(body);
        self.call(key, errors::Call::Decrypt, |t| async move {
            client::exec(&t.client, call).await
        })
        .await
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
        if let Err(why) = self.credentials.ready() {
            return Err(self.without_token(why).await);
        }
        client::health(&self.base).await
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        let info = Arc::new(self.read_key(key).await?);
        let data = &info.data;
        let versions: Vec<VersionInfo> = (1..=data.latest_version)
            .map(|v| VersionInfo {
                version: v.to_string(),
                created: info.version_created(v),
                enabled: v >= data.min_decryption_version,
                state: None,
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
            driver: Some(DriverFacts::shared(info)),
        })
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        let mut info = self.info(key).await?;
        let version = match version {
            Some(v) => parse_version(v)?,
            None => info.data.latest_version,
        };
        if version > info.data.latest_version {
            // Rotated elsewhere since we looked.
            info = Arc::new(self.read_key(key).await?);
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
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        let params = sign_params(algorithm, input)?;
        let path = self.path("sign", key);
        let data: SignatureData = self
            .call(key, errors::Call::Sign, |t| {
                let call = Call::<SignatureData>::post(path, &params);
                async move { client::exec(&t.client, call).await }
            })
            .await?;
        let (version, encoded) = split_versioned(&data.signature).ok_or_else(malformed)?;
        let bytes = B64.decode(encoded).map_err(|_| malformed())?;
        Ok(Signature {
            bytes,
            encoding: SignatureFormat::Der,
            algorithm,
            version: version.to_string(),
        })
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        let info = self.info(key).await?;
        let body = Self::bind_context(
            &info,
            context,
            serde_json::json!({ "plaintext": B64.encode(plaintext) }),
        );
        let path = self.path("encrypt", key);
        let call = Call::<CiphertextData>::post(path, &body);
        wipe(body);
        let data = self
            .call(key, errors::Call::Encrypt, |t| async move {
                client::exec(&t.client, call).await
            })
            .await?;
        seal_ciphertext(&data.ciphertext)
    }

    /// Transit's answer names no version: the version is the `N` of the
    /// ciphertext's `vault:vN:`, which transit decrypts with (under another
    /// version the AEAD fails), and the key the one in the path.
    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let info = self.info(key).await?;
        let (version, transit) = open_ciphertext(ciphertext)?;
        let body = |bound: Option<&[u8]>| {
            let body = serde_json::json!({ "ciphertext": transit });
            match bound {
                None => Self::bind_context(&info, context, body),
                Some(bytes) => Self::bind_bytes(&info, bytes, body),
            }
        };
        let mut data = match self.transit_decrypt(key, body(None)).await {
            // Sealed by an earlier kms-sidecar, which bound an empty
            // context as the associated data `{}`.
            Err(e) if e.kind == ErrorKind::DecryptionFailed && context.is_empty() => {
                let legacy = canonical_context(context);
                self.transit_decrypt(key, body(Some(&legacy))).await?
            }
            answered => answered?,
        };
        let plaintext = B64.decode(&data.plaintext).map_err(|_| malformed());
        data.plaintext.zeroize();
        Ok(Decrypted {
            plaintext: Plaintext(Zeroizing::new(plaintext?)),
            by: WrappedBy::exactly(version.to_string(), key.id),
        })
    }

    /// `datakey/plaintext`, bound to the context like [`Backend::encrypt`]
    /// binds it, so that [`Backend::decrypt`] unwraps it.
    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let info = self.info(key).await?;
        let body = Self::bind_context(&info, context, serde_json::json!({ "bits": size.bits() }));
        let path = self.path("datakey/plaintext", key);
        let data: DataKeyData = self
            .call(key, errors::Call::DataKey, |t| {
                let call = Call::<DataKeyData>::post(path, &body);
                async move { client::exec(&t.client, call).await }
            })
            .await?;
        let plaintext = Zeroizing::new(
            B64.decode(data.plaintext.as_bytes())
                .map_err(|_| malformed())?,
        );
        if plaintext.len() != size.bytes() {
            return Err(malformed());
        }
        let sealed = seal_ciphertext(&data.ciphertext)?;
        Ok(DataKey {
            plaintext: Plaintext(plaintext),
            encrypted: sealed.bytes,
            version: sealed.version,
            key_ref: key.id.to_owned(),
        })
    }

    /// Our ciphertext is transit's, its version first ([`open_ciphertext`]).
    fn transit_text(&self, ciphertext: &[u8]) -> Option<String> {
        open_ciphertext(ciphertext).ok().map(|(_, text)| text)
    }

    fn transit_ciphertext(&self, text: &str) -> Option<Result<Vec<u8>, Error>> {
        Some(seal_ciphertext(text).map(|sealed| sealed.bytes))
    }

    fn verifier(&self) -> Option<&dyn Verify> {
        Some(self)
    }

    fn macs(&self) -> Option<&dyn Mac> {
        Some(self)
    }

    fn rotator(&self) -> Option<&dyn Rotate> {
        Some(self)
    }
}

#[async_trait]
impl Verify for VaultBackend {
    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Algorithm,
        version: &str,
    ) -> Result<bool, Error> {
        let mut body = sign_params(algorithm, input)?;
        let signature = B64.encode(signature);
        body["signature"] = format!("vault:v{}:{signature}", parse_version(version)?).into();
        let path = self.path("verify", key);
        let data: ValidData = self
            .call(key, errors::Call::Verify, |t| {
                let call = Call::<ValidData>::post(path, &body);
                async move { client::exec(&t.client, call).await }
            })
            .await?;
        Ok(data.valid)
    }
}

#[async_trait]
impl Mac for VaultBackend {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        self.info(key).await?;
        let encoded = Zeroizing::new(B64.encode(message));
        let data = self
            .call(key, errors::Call::Hmac, |t| async move {
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
        version: &str,
    ) -> Result<bool, Error> {
        let message = Zeroizing::new(B64.encode(message));
        let hmac = format!("vault:v{}:{}", parse_version(version)?, B64.encode(mac));
        let data = self
            .call(key, errors::Call::VerifyHmac, |t| async move {
                vaultrs::transit::data::verify(
                    &t.client,
                    &self.mount,
                    key.id,
                    &message,
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
impl Rotate for VaultBackend {
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        self.info(key).await?;
        self.call(key, errors::Call::Rotate, |t| async move {
            vaultrs::transit::key::rotate(&t.client, &self.mount, key.id).await
        })
        .await?;
        Ok(self.read_key(key).await?.data.latest_version.to_string())
    }
}
