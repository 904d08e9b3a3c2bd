//! Whether the ConfigMaps an injection mounts exist in the pod's namespace
//! (issue 30, item 9): a pod whose config volume cannot mount waits in
//! `ContainerCreating` for ever, so the webhook refuses it instead.
//!
//! The webhook watches the names it knows (its config's `config_map` and
//! `gcp.credentials_config_map`) across namespaces through the Kubernetes
//! API: one metadata-only watch per name (`fieldSelector=metadata.name=N`,
//! which RBAC `resourceNames` can restrict; no config content is fetched or
//! cached). A name in the cache is found; a name missing from a synced cache
//! is looked up once more, live (`GET`, metadata only), so that a refusal
//! rests on the API server's own "not found", never on a lagging watch. When
//! it cannot tell (no cluster credentials, the watch not synced, the API
//! unreachable or refusing), the answer is [`Presence::Unknown`] and the pod
//! is injected with a warning; a name given by a pod annotation that the
//! webhook does not watch is [`Presence::NotWatched`] (injected, warned).
//!
//! The client comes from `KUBECONFIG` (or `~/.kube/config`), else the pod's
//! service account (in-cluster), as kube-rs infers it.

use super::Config;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus::IntGaugeVec;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a live lookup may take before the answer is "could not check"
/// (the API server waits for the whole review `timeoutSeconds`, 5 s by
/// default in the chart).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

type Meta = PartialObjectMeta<ConfigMap>;

/// What the webhook knows of one ConfigMap of the pod's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Found,
    /// The API server says it does not exist.
    Missing,
    /// A name the webhook does not watch (a pod annotation named it).
    NotWatched,
    Unknown(Unknown),
}

impl Presence {
    /// The label of `webhook_config_map_lookups_total{outcome}`.
    pub fn outcome(self) -> &'static str {
        match self {
            Presence::Found => "found",
            Presence::Missing => "missing",
            Presence::NotWatched => "not_watched",
            Presence::Unknown(_) => "unavailable",
        }
    }
}

/// Why the webhook could not tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Neither a kubeconfig nor the pod's service account.
    NoCredentials,
    /// The watch has not listed the ConfigMaps yet.
    NotSynced,
    /// The API server did not answer in time, or failed.
    Unreachable,
    /// The API server refused the lookup (RBAC).
    Forbidden,
    /// The review names no namespace.
    NoNamespace,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unknown::NoCredentials => "the webhook has no Kubernetes API credentials",
            Unknown::NotSynced => {
                "the webhook has not listed the ConfigMaps yet (the Kubernetes API may be unreachable)"
            }
            Unknown::Unreachable => "the Kubernetes API could not be reached",
            Unknown::Forbidden => {
                "the Kubernetes API refused the lookup (check the chart's ClusterRole)"
            }
            Unknown::NoNamespace => "the review names no namespace",
        })
    }
}

/// What to do with an injection after its ConfigMaps were looked up:
/// `Err` is the refusal (a missing ConfigMap), `Ok` the warnings to add.
pub fn verdict(namespace: &str, found: &[(String, Presence)]) -> Result<Vec<String>, String> {
    if let Some((name, _)) = found.iter().find(|(_, p)| *p == Presence::Missing) {
        return Err(format!(
            "ConfigMap {name} does not exist in namespace {namespace}, so the sidecar's volume could not mount and the pod would wait in ContainerCreating: create it there (the chart does for the namespaces in sidecar.namespaces) or name another with a pod annotation, then create the pod again"
        ));
    }
    Ok(found
        .iter()
        .filter_map(|(name, presence)| match presence {
            Presence::Found | Presence::Missing => None,
            Presence::NotWatched => Some(format!(
                "ConfigMap {name} (named by a pod annotation) was not checked, the webhook only watches the chart's names: if it does not exist in namespace {namespace}, the pod waits in ContainerCreating"
            )),
            Presence::Unknown(why) => Some(format!(
                "could not check that ConfigMap {name} exists in namespace {namespace} ({why}): if it does not, the pod waits in ContainerCreating"
            )),
        })
        .collect())
}

/// The watched ConfigMap names, their caches and the tasks filling them
/// (aborted on drop).
pub struct ConfigMaps {
    state: State,
}

impl fmt::Debug for ConfigMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched: Vec<&String> = match &self.state {
            State::Watching { stores, .. } => stores.keys().collect(),
            State::Off | State::NoClient => Vec::new(),
        };
        f.debug_struct("ConfigMaps")
            .field("watched", &watched)
            .finish_non_exhaustive()
    }
}

enum State {
    /// `check_config_maps: false`.
    Off,
    NoClient,
    Watching {
        client: Client,
        stores: BTreeMap<String, Store<Meta>>,
        tasks: Vec<JoinHandle<()>>,
    },
}

impl Drop for ConfigMaps {
    fn drop(&mut self) {
        if let State::Watching { tasks, .. } = &self.state {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// The webhook's Kubernetes API client, from `KUBECONFIG` (or
/// `~/.kube/config`), else the pod's service account, as kube-rs infers it;
/// `None`, with a warning saying what then goes `unchecked`, without one.
pub(super) async fn api_client(unchecked: &'static str) -> Option<Client> {
    match kube::Config::infer().await.map(Client::try_from) {
        Ok(Ok(client)) => Some(client),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, consequence = unchecked, "no Kubernetes API client");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, consequence = unchecked, "no Kubernetes API credentials");
            None
        }
    }
}

impl ConfigMaps {
    /// Lookups off: nothing is checked, nothing warned.
    pub fn off() -> Self {
        Self { state: State::Off }
    }

    /// Starts one watch per name `config` gives, unless lookups are off;
    /// `ready{config_map}` is set to 1 once that name's watch has listed.
    /// Without credentials every lookup answers [`Unknown::NoCredentials`].
    pub async fn start(config: &Config, ready: IntGaugeVec) -> Self {
        if !config.check_config_maps {
            tracing::info!("ConfigMap lookups are off (check_config_maps: false)");
            return Self::off();
        }
        let Some(client) = api_client("pods are injected without checking their ConfigMaps").await
        else {
            return Self {
                state: State::NoClient,
            };
        };
        let mut stores = BTreeMap::new();
        let mut tasks = Vec::new();
        for name in [&config.config_map, &config.gcp.credentials_config_map] {
            if stores.contains_key(name) {
                continue;
            }
            let (store, task) = watch(client.clone(), name, ready.clone());
            stores.insert(name.clone(), store);
            tasks.push(task);
        }
        Self {
            state: State::Watching {
                client,
                stores,
                tasks,
            },
        }
    }

    /// Looks up each of `names` in `namespace` (none when lookups are off).
    pub async fn check(&self, namespace: &str, names: &[String]) -> Vec<(String, Presence)> {
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let presence = match &self.state {
                State::Off => return Vec::new(),
                State::NoClient => Presence::Unknown(Unknown::NoCredentials),
                State::Watching { client, stores, .. } => match stores.get(name) {
                    None => Presence::NotWatched,
                    Some(_) if namespace.is_empty() => Presence::Unknown(Unknown::NoNamespace),
                    Some(store) => lookup(client, store, namespace, name).await,
                },
            };
            found.push((name.clone(), presence));
        }
        found
    }
}

/// The cache first; a miss is confirmed by the API server.
async fn lookup(client: &Client, store: &Store<Meta>, namespace: &str, name: &str) -> Presence {
    let synced = store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok());
    if !synced {
        return Presence::Unknown(Unknown::NotSynced);
    }
    if store.get(&ObjectRef::new(name).within(namespace)).is_some() {
        return Presence::Found;
    }
    let api = Api::<Meta>::namespaced(client.clone(), namespace);
    match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(Some(_))) => Presence::Found,
        Ok(Ok(None)) => Presence::Missing,
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
            tracing::warn!(config_map.namespace = namespace, config_map.name = name, error = %status.message, "ConfigMap lookup forbidden");
            Presence::Unknown(Unknown::Forbidden)
        }
        Ok(Err(e)) => {
            tracing::warn!(config_map.namespace = namespace, config_map.name = name, error = %e, "ConfigMap lookup failed");
            Presence::Unknown(Unknown::Unreachable)
        }
        Err(_) => {
            tracing::warn!(
                config_map.namespace = namespace,
                config_map.name = name,
                "ConfigMap lookup timed out"
            );
            Presence::Unknown(Unknown::Unreachable)
        }
    }
}

/// One metadata-only watch of `name` in every namespace, into a cache.
fn watch(client: Client, name: &str, ready: IntGaugeVec) -> (Store<Meta>, JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let api = Api::<Meta>::all(client);
    let selector = format!("metadata.name={name}");
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().fields(&selector)),
    )
    .default_backoff();
    let name = name.to_string();
    let gauge = ready.with_label_values(&[&name]);
    gauge.set(0);
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    gauge.set(1);
                    tracing::info!(config_map.name = %name, "ConfigMap watch listed");
                    failing = false;
                }
                Ok(_) => failing = false,
                // Logged once per outage, then at debug (the backoff retries).
                Err(e) if failing => {
                    tracing::debug!(config_map.name = %name, error = %e, "ConfigMap watch still failing");
                }
                Err(e) => {
                    tracing::warn!(config_map.name = %name, error = %e, "ConfigMap watch failed; retrying");
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

    fn names(found: &[(&str, Presence)]) -> Vec<(String, Presence)> {
        found.iter().map(|(n, p)| ((*n).to_string(), *p)).collect()
    }

    #[test]
    fn a_missing_config_map_refuses_and_names_it() {
        let why = verdict(
            "apps",
            &names(&[
                ("kms-sidecar", Presence::Found),
                ("kms-sidecar-gcp", Presence::Missing),
            ]),
        )
        .unwrap_err();
        assert!(why.contains("ConfigMap kms-sidecar-gcp"), "{why}");
        assert!(why.contains("namespace apps"), "{why}");
        assert!(why.contains("create it"), "{why}");
        // Missing wins over anything unknown.
        assert!(
            verdict(
                "apps",
                &names(&[
                    ("a", Presence::Unknown(Unknown::Unreachable)),
                    ("b", Presence::Missing)
                ])
            )
            .is_err()
        );
    }

    #[test]
    fn what_could_not_be_checked_is_injected_with_a_warning() {
        assert_eq!(
            verdict("apps", &names(&[("kms-sidecar", Presence::Found)])),
            Ok(vec![])
        );
        assert_eq!(verdict("apps", &[]), Ok(vec![]), "lookups off");
        let warnings = verdict(
            "apps",
            &names(&[
                ("kms-sidecar", Presence::Unknown(Unknown::Unreachable)),
                ("other", Presence::NotWatched),
            ]),
        )
        .unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].starts_with("could not check that ConfigMap kms-sidecar exists in namespace apps (the Kubernetes API could not be reached)"), "{}", warnings[0]);
        assert!(
            warnings[1].contains("ConfigMap other (named by a pod annotation) was not checked"),
            "{}",
            warnings[1]
        );
    }

    #[test]
    fn outcomes_are_a_bounded_set() {
        let all = [
            Presence::Found,
            Presence::Missing,
            Presence::NotWatched,
            Presence::Unknown(Unknown::NoCredentials),
            Presence::Unknown(Unknown::Forbidden),
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|p| p.outcome()).collect();
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            ["found", "missing", "not_watched", "unavailable"]
        );
    }

    #[tokio::test]
    async fn off_checks_nothing_and_without_credentials_everything_is_unknown() {
        let names = vec!["kms-sidecar".to_string()];
        assert!(ConfigMaps::off().check("apps", &names).await.is_empty());
        let none = ConfigMaps {
            state: State::NoClient,
        };
        assert_eq!(
            none.check("apps", &names).await,
            vec![(
                "kms-sidecar".to_string(),
                Presence::Unknown(Unknown::NoCredentials)
            )]
        );
    }
}
