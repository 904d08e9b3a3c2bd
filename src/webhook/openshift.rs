//! Whether a pod's namespace is OpenShift's (issue 32 §2): OpenShift's
//! namespace controller gives every namespace the annotation
//! `openshift.io/sa.scc.uid-range` (`1000680000/10000`), the range its
//! `restricted-v2` SCC assigns uids from; such a pod's sidecar must not set
//! `runAsUser` ([`super::config::Config::openshift`]).
//!
//! Read as [`super::config_maps`] reads ConfigMaps: one metadata-only watch
//! of namespaces into a cache (no object content beyond names, labels and
//! annotations), a name missing from the cache looked up live (metadata
//! only, [`LOOKUP_TIMEOUT`]). When the webhook cannot tell (no credentials,
//! the API unreachable or refusing), the answer is `None` and the webhook's
//! `openshift` setting applies. Needs get/list/watch on namespaces (the
//! chart's ClusterRole). With `openshift: true` nothing is watched.

use super::config_maps::LOOKUP_TIMEOUT;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::fmt;
use tokio::task::JoinHandle;

/// The annotation that marks an OpenShift namespace.
pub const UID_RANGE: &str = "openshift.io/sa.scc.uid-range";

type Meta = PartialObjectMeta<Namespace>;

/// The namespace watch, when there is one (aborted on drop).
pub struct Namespaces {
    watch: Option<(Client, Store<Meta>, JoinHandle<()>)>,
}

impl fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaces")
            .field("watching", &self.watch.is_some())
            .finish()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Some((_, _, task)) = &self.watch {
            task.abort();
        }
    }
}

impl Namespaces {
    /// Nothing watched: every answer is `None`.
    pub fn off() -> Self {
        Self { watch: None }
    }

    /// Starts the watch, unless `configured` (every pod is OpenShift's
    /// already) or there are no credentials.
    pub async fn start(configured: bool) -> Self {
        if configured {
            tracing::info!("OpenShift mode for every pod (openshift: true)");
            return Self::off();
        }
        let Some(client) =
            super::config_maps::api_client("OpenShift namespaces are not detected").await
        else {
            return Self::off();
        };
        let (store, task) = watch(client.clone());
        Self {
            watch: Some((client, store, task)),
        }
    }

    /// Whether `namespace` is OpenShift's; `None` when the webhook cannot
    /// tell.
    pub async fn is_openshift(&self, namespace: &str) -> Option<bool> {
        let (client, store, _) = self.watch.as_ref()?;
        if namespace.is_empty() {
            return None;
        }
        let synced = store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        if synced && let Some(ns) = store.get(&ObjectRef::new(namespace)) {
            return Some(marked(&ns));
        }
        let api = Api::<Meta>::all(client.clone());
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(namespace)).await {
            Ok(Ok(Some(ns))) => Some(marked(&ns)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(pod.namespace = namespace, error = %e, "namespace lookup failed");
                None
            }
            Err(_) => {
                tracing::warn!(pod.namespace = namespace, "namespace lookup timed out");
                None
            }
        }
    }
}

fn marked(ns: &Meta) -> bool {
    ns.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(UID_RANGE))
}

/// One metadata-only watch of every namespace, into a cache.
fn watch(client: Client) -> (Store<Meta>, JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let api = Api::<Meta>::all(client);
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    tracing::info!("namespace watch listed");
                    failing = false;
                }
                Ok(_) => failing = false,
                Err(e) if failing => {
                    tracing::debug!(error = %e, "namespace watch still failing");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "namespace watch failed; retrying");
                    failing = true;
                }
            }
        }
    });
    (store, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_range_annotation_marks_openshift() {
        let mut ns = Meta::default();
        assert!(!marked(&ns));
        ns.metadata.annotations = Some([(UID_RANGE.into(), "1000680000/10000".into())].into());
        assert!(marked(&ns));
    }

    #[tokio::test]
    async fn without_a_watch_the_webhook_cannot_tell() {
        assert_eq!(Namespaces::off().is_openshift("apps").await, None);
    }
}
