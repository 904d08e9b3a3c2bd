//! The webhook's TLS certificate, reloaded when its files change (as
//! cert-manager rotates the Secret the kubelet mounts): each handshake takes
//! the current certificate; a bad new pair is logged and the last good one
//! kept.

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the files are checked.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// What the files looked like when read: modification times and sizes.
    stamp: Stamp,
}

type Stamp = [(Option<SystemTime>, u64); 2];

impl ReloadingCert {
    /// Loads the pair once; an error here stops the webhook from starting.
    pub fn new(cert_path: &Path, key_path: &Path) -> Result<Self, String> {
        let stamp = stamp(cert_path, key_path);
        let key = load(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            current: RwLock::new(Loaded { key, stamp }),
        })
    }

    /// Reloads the pair if either file changed. `Ok(true)` when a new
    /// certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert_path, &self.key_path);
        if self.current.read().map(|c| c.stamp == now).unwrap_or(false) {
            return Ok(false);
        }
        let loaded = load(&self.cert_path, &self.key_path);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        // Whatever happens, do not retry the same files every poll.
        current.stamp = now;
        current.key = loaded?;
        Ok(true)
    }

    /// The TLS server config serving the current certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(current.key.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in the file",
            cert_path.display()
        ));
    }
    // The message of a key parse error never contains key material.
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("--tls-key {}: {e}", key_path.display()))?;
    let key = CertifiedKey::from_der(certs, key, &aws_lc_rs::default_provider())
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(Arc::new(key))
}
