//! What Vault's clients ask besides transit: their token
//! (`auth/token/lookup-self`), `sys/health`, `sys/seal-status`, and the
//! "unsupported path" of every transit path not offered.

use super::answer_with;
use crate::api::{ApiError, Code};
use crate::policy::Caller;
use crate::server::reply::{Reply, json};
use crate::server::routes::Routes;
use crate::service::Service;
use http::StatusCode;

/// Any other path under the mount.
pub(in crate::server) async fn unsupported(_: &Service, _: &Caller) -> Result<Reply, ApiError> {
    Err(ApiError::new(
        Code::NotFound,
        "unsupported path: kms-sidecar serves transit's encrypt, decrypt, rewrap, datakey, sign, verify, hmac and keys (read, list, rotate); see docs/vault-transit.md",
    ))
}

/// `auth/token/lookup-self`, which clients call to check their token: the
/// caller is the peer, whatever token it sends.
pub(in crate::server) async fn token_lookup(
    _: &Service,
    caller: &Caller,
) -> Result<Reply, ApiError> {
    let data = serde_json::json!({
        "accessor": "",
        "creation_time": 0,
        "creation_ttl": 0,
        "display_name": format!("kms-sidecar-uid-{}", caller.uid),
        "entity_id": "",
        "expire_time": null,
        "explicit_max_ttl": 0,
        "id": "",
        "meta": { "uid": caller.uid.to_string() },
        "num_uses": 0,
        "orphan": true,
        "path": "",
        "policies": ["kms-sidecar"],
        "renewable": false,
        "ttl": 0,
        "type": "service",
    });
    Ok(answer_with("token", &data))
}

/// `sys/health`: 200 while the sidecar is ready, else 503 as a sealed
/// Vault answers.
pub(in crate::server) async fn health(routes: &Routes) -> Reply {
    let (ready, _) = routes.service().readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({
            "initialized": true,
            "sealed": !ready,
            "standby": false,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "version": concat!("kms-sidecar ", env!("CARGO_PKG_VERSION")),
            "cluster_name": "kms-sidecar",
            "cluster_id": "",
        }),
    )
}

/// `sys/seal-status`: sealed while the sidecar is not ready.
pub(in crate::server) async fn seal_status(routes: &Routes) -> Reply {
    let (ready, _) = routes.service().readiness().await;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "type": "shamir",
            "initialized": true,
            "sealed": !ready,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": concat!("kms-sidecar ", env!("CARGO_PKG_VERSION")),
            "build_date": "",
            "migration": false,
            "recovery_seal": false,
            "storage_type": "kms-sidecar",
        }),
    )
}
