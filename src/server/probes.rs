//! The probes' answers (`/healthz`, `/readyz`, `/metrics`,
//! `/.well-known/jwks.json`), served on the socket and on the probe
//! listener; who may ask on the socket is declared in
//! [`super::endpoints`].

use super::reply::{Reply, json};
use super::routes::Routes;
use crate::api;
use crate::config::KeyLabels;
use http::StatusCode;

/// `/healthz`: the process answers.
pub(super) async fn healthz(_: &Routes, _on_socket: bool) -> Reply {
    json(StatusCode::OK, &api::Health { status: "ok" })
}

/// `/readyz`: the backends, the audit log (where it fails closed) and the
/// socket. The probe listener answers anyone who reaches it: the status
/// only, no backend names, files or errors (the socket has the reasons).
pub(super) async fn readyz(routes: &Routes, on_socket: bool) -> Reply {
    let svc = routes.service();
    let (mut ready, mut body) = svc.readiness().await;
    if let Some(audit) = routes.audit() {
        let health = audit.health();
        ready &= health.status == "ok" || !audit.fails_closed();
        body.audit = Some(health);
    }
    if svc.metrics().socket_bound.get() != 1 {
        ready = false;
        body.socket = Some("lost");
    }
    body.status = if ready { "ready" } else { "not_ready" };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !on_socket {
        return json(
            status,
            &api::Health {
                status: body.status,
            },
        );
    }
    json(status, &body)
}

/// `/metrics`: on the socket (callers granted `metrics`) with key aliases,
/// on the probe listener as `metrics.key_labels` says.
pub(super) async fn metrics(routes: &Routes, on_socket: bool) -> Reply {
    let svc = routes.service();
    let labels = if on_socket {
        KeyLabels::Alias
    } else {
        svc.key_labels()
    };
    Reply::metrics(svc.metrics().encode(labels))
}

/// `/.well-known/jwks.json` (probe listener only): the keys of
/// `jwks.public`, for anyone who reaches it.
pub(super) async fn public_jwks(routes: &Routes, _on_socket: bool) -> Reply {
    json(StatusCode::OK, &routes.service().public_jwks().await)
}
