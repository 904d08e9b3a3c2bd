//! The `aws` backend: AWS KMS through `aws-sdk-kms` (rustls), in a primary
//! region and, for multi-region keys, replica regions to fail over to.
//!
//! - `client.rs`: one region's client, cached key facts and the KMS calls.
//! - `credentials.rs`: the credential chain (IRSA with its token file re-read
//!   at every refresh, EKS Pod Identity, environment, `assume_role`) as a
//!   source for the shared [`Refresher`].
//! - `errors.rs`: SDK errors and incomplete answers as our error kinds.

mod client;
mod credentials;
mod errors;

pub use client::MAX_ENCRYPT;

use super::credentials::{Refresher, Schedule};
use super::{
    Backend, Context, DataKey, DataKeySize, Decrypted, Error, ErrorKind, KeyMetadata, KeyRef,
    KeyStatus, Mac, PublicKey, Rewrap, Rewrapped, Rotate, Sealed, Signature, Verify,
};
use crate::config::AwsBackendConfig;
use crate::crypto::{Algorithm, SignInput};
use crate::metrics::Metrics;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_kms::config::{Credentials, Region};
use client::Regional;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// AWS KMS: a primary region and, for multi-region keys, replica regions to
/// fail over to.
pub struct AwsBackend {
    name: String,
    /// Primary first.
    regions: Vec<Regional>,
    /// The credentials every region's client signs with, refreshed in the
    /// background; dropping it stops the refresh.
    credentials: Refresher<Credentials>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let regions: Vec<_> = self.regions.iter().map(|r| r.region.as_str()).collect();
        f.debug_struct("AwsBackend")
            .field("regions", &regions)
            .finish_non_exhaustive()
    }
}

impl AwsBackend {
    pub async fn new(
        ctx: &super::BuildContext<'_>,
        config: &AwsBackendConfig,
        resolved: &crate::config::AwsResolved,
    ) -> Result<Self, super::BuildError> {
        let (name, metrics) = (ctx.name, ctx.metrics.clone());
        let region = RegionProviderChain::first_try(Region::new(config.region.clone()));
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let chain = credentials::chain(&sdk, config, resolved, ctx.env.clone())
            .await
            .map_err(super::BuildError::Credentials)?;
        let schedule = Schedule::within(config.credential_refresh);
        let credentials = Refresher::spawn(name, chain, schedule, metrics.clone());
        // Start with credentials when they come quickly, so that a normal
        // start is ready at once; the refresher goes on either way.
        credentials.first_refresh(Duration::from_secs(5)).await;
        let primary = (config.region.clone(), config.endpoint.clone());
        let replicas = config
            .replica_regions
            .iter()
            .map(|r| r.region_and_endpoint());
        let regions = std::iter::once(primary)
            .chain(replicas)
            .map(|(region, endpoint)| {
                let signer = credentials::RefreshedProvider(credentials.handle());
                Regional::new(&sdk, region, endpoint, signer)
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            regions,
            credentials,
            metrics,
        })
    }

    /// A key ARN a region reported, as the primary region names the key: a
    /// multi-Region key's replica answers for the same key as the primary.
    fn primary_arn(&self, arn: &str) -> String {
        self.regions[0].key_id(arn)
    }

    fn note_failover(&self, key: KeyRef<'_>, from: &str, to: &str, error: &Error) {
        self.metrics
            .backend_failovers
            .with_label_values(&[&self.name, from, to])
            .inc();
        tracing::warn!(backend = %self.name, key.alias = key.alias, from, to, error = %error, "failing over to a replica region");
    }
}

/// Runs a call in the primary region and, while it fails with a retryable
/// error (unreachable, throttled, timed out), in the next replica region,
/// with the key reference rewritten for that region.
macro_rules! failover {
    ($self:ident, $key:ident, |$r:ident, $k:ident| $call:expr) => {{
        let mut answer = None;
        for (i, $r) in $self.regions.iter().enumerate() {
            let id = $r.key_id($key.id);
            let $k = KeyRef { id: &id, ..$key };
            match $call.await {
                Err(e) if e.retryable && i + 1 < $self.regions.len() => {
                    $self.note_failover($key, &$r.region, &$self.regions[i + 1].region, &e);
                }
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        answer.expect("the last region always answers")
    }};
}

#[async_trait]
impl Backend for AwsBackend {
    fn kind(&self) -> &'static str {
        "aws"
    }

    /// Valid credentials from the background refresh; no KMS call.
    async fn health(&self) -> Result<(), Error> {
        match self.credentials.ready() {
            Ok(_) => Ok(()),
            Err(why) => Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("no valid AWS credentials: {why}"),
            )),
        }
    }

    async fn metadata(&self, key: KeyRef<'_>) -> Result<KeyMetadata, Error> {
        failover!(self, key, |r, k| r.metadata(k))
    }

    async fn key_status(&self, key: KeyRef<'_>) -> Result<KeyStatus, Error> {
        failover!(self, key, |r, k| r.key_status(k))
    }

    async fn public_key(&self, key: KeyRef<'_>, version: Option<&str>) -> Result<PublicKey, Error> {
        failover!(self, key, |r, k| r.public_key(k, version))
    }

    async fn sign(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        algorithm: Algorithm,
    ) -> Result<Signature, Error> {
        failover!(self, key, |r, k| r.sign(k, input, algorithm))
    }

    async fn encrypt(
        &self,
        key: KeyRef<'_>,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Sealed, Error> {
        failover!(self, key, |r, k| r.encrypt(k, plaintext, context))
    }

    async fn decrypt(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Decrypted, Error> {
        let (mut decrypted, _) = failover!(self, key, |r, k| r.decrypt(k, ciphertext, context))?;
        decrypted.by.key_ref = self.primary_arn(&decrypted.by.key_ref);
        Ok(decrypted)
    }

    async fn generate_data_key(
        &self,
        key: KeyRef<'_>,
        size: DataKeySize,
        context: &Context,
    ) -> Result<DataKey, Error> {
        let mut dk = failover!(self, key, |r, k| r.generate_data_key(k, size, context))?;
        dk.key_ref = self.primary_arn(&dk.key_ref);
        Ok(dk)
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

    fn rewrapper(&self) -> Option<&dyn Rewrap> {
        Some(self)
    }
}

#[async_trait]
impl Verify for AwsBackend {
    /// An AWS signing key has one key material: no version to choose.
    async fn verify(
        &self,
        key: KeyRef<'_>,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Algorithm,
        _version: &str,
    ) -> Result<bool, Error> {
        failover!(self, key, |r, k| r.verify(k, input, signature, algorithm))
    }
}

#[async_trait]
impl Mac for AwsBackend {
    async fn mac(&self, key: KeyRef<'_>, message: &[u8]) -> Result<Sealed, Error> {
        failover!(self, key, |r, k| r.mac(k, message))
    }

    async fn verify_mac(
        &self,
        key: KeyRef<'_>,
        message: &[u8],
        mac: &[u8],
        _version: &str,
    ) -> Result<bool, Error> {
        failover!(self, key, |r, k| r.verify_mac(k, message, mac))
    }
}

#[async_trait]
impl Rotate for AwsBackend {
    /// Rotation happens in the primary region (KMS replicates it).
    async fn rotate(&self, key: KeyRef<'_>) -> Result<String, Error> {
        self.regions[0].rotate(key).await
    }
}

#[async_trait]
impl Rewrap for AwsBackend {
    async fn rewrap(
        &self,
        key: KeyRef<'_>,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Rewrapped, Error> {
        let mut rewrapped = failover!(self, key, |r, k| r.rewrap(k, ciphertext, context))?;
        rewrapped.from.key_ref = self.primary_arn(&rewrapped.from.key_ref);
        Ok(rewrapped)
    }
}
