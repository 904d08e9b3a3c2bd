//! The optional TCP listener (`listen.probes`) for kubelet probes and
//! Prometheus: `/healthz`, `/readyz` and `/metrics` only, never key operations.

use crate::server::Live;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;

/// Serves probes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    live: Live,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "probe listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let live = live.clone();
        let svc = hyper::service::service_fn(move |req| {
            let served = live.load_full();
            async move { Ok::<_, Infallible>(served.probes.handle(req, None).await) }
        });
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "probe connection ended with an error");
            }
        });
    }
}
