//! Kubernetes watchers feeding the store's writer.
//!
//! Pods, Namespaces, Nodes and NetworkPolicies are always watched. AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy and ClusterNetworkPolicy are watched only while API discovery
//! lists their resource: an absent CRD switches its watcher off (logged, and its objects are
//! forgotten), and a CRD that appears later is picked up at the next discovery poll. Discovery
//! is polled often while the enforcer starts (CRDs installed beside it are served a moment
//! after they are Established) and after a discovery error, rarely otherwise.
//!
//! The moving parts are split so the logic can be tested without a cluster:
//! - each watcher task turns `kube::runtime::watcher` events into [`Update`]s on one channel;
//! - [`Sync`] is a pure state machine stepping over those updates: it buffers a (re)list until
//!   it is complete and hands it to the writer as one [`Event::Replace`], forwards single
//!   changes, and knows which enabled kinds have finished their initial list;
//! - [`run`] owns the writer and the channel, publishes snapshots (coalescing bursts) and sets
//!   the readiness signal once every enabled kind is synced and published.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use netpol_api::{v1alpha1, v1alpha2};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{Event, Kind, Object, Stored, Writer};

/// Errors of the watch loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every watcher task ended, so no further updates can arrive.
    #[error("all watchers stopped")]
    WatchersStopped,
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What watchers report, per kind.
#[derive(Debug, Clone)]
pub enum Update {
    /// The kind is now watched (its CRD exists).
    Enabled(Kind),
    /// The kind is no longer watched (its CRD is gone); its objects are forgotten.
    Disabled(Kind),
    /// A (re)list of the kind starts.
    Init(Kind),
    /// An object of a (re)list in progress.
    InitApply(Object),
    /// The (re)list of the kind is complete.
    InitDone(Kind),
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
}

/// The kinds watched unconditionally.
pub const CORE_KINDS: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::Node, Kind::NetworkPolicy];

/// The CRD-backed kinds with their `group/version` and resource plural.
pub const CRD_KINDS: [(Kind, &str, &str); 3] = [
    (
        Kind::AdminNetworkPolicy,
        "policy.networking.k8s.io/v1alpha1",
        "adminnetworkpolicies",
    ),
    (
        Kind::BaselineAdminNetworkPolicy,
        "policy.networking.k8s.io/v1alpha1",
        "baselineadminnetworkpolicies",
    ),
    (
        Kind::ClusterNetworkPolicy,
        "policy.networking.k8s.io/v1alpha2",
        "clusternetworkpolicies",
    ),
];

/// Turns watcher updates into store events and tracks initial-list progress.
#[derive(Debug, Default)]
pub struct Sync {
    enabled: BTreeSet<Kind>,
    synced: BTreeSet<Kind>,
    buffers: BTreeMap<Kind, Vec<Object>>,
}

impl Sync {
    /// A state with the core kinds enabled and nothing synced.
    pub fn new() -> Self {
        Sync {
            enabled: CORE_KINDS.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Applies one update, feeding the writer where the store changes.
    pub fn step(&mut self, update: Update, writer: &mut Writer) {
        match update {
            Update::Enabled(kind) => {
                self.enabled.insert(kind);
                self.synced.remove(&kind);
            }
            Update::Disabled(kind) => {
                self.enabled.remove(&kind);
                self.synced.remove(&kind);
                self.buffers.remove(&kind);
                writer.apply(Event::Replace(kind, Vec::new()));
            }
            Update::Init(kind) => {
                self.buffers.insert(kind, Vec::new());
            }
            Update::InitApply(object) => {
                self.buffers.entry(object.kind()).or_default().push(object);
            }
            Update::InitDone(kind) => {
                let objects = self.buffers.remove(&kind).unwrap_or_default();
                writer.apply(Event::Replace(kind, objects));
                self.synced.insert(kind);
            }
            Update::Apply(object) => writer.apply(Event::Apply(object)),
            Update::Delete(object) => writer.apply(Event::Delete(object)),
        }
    }

    /// Whether a kind is watched.
    pub fn is_enabled(&self, kind: Kind) -> bool {
        self.enabled.contains(&kind)
    }

    /// Whether every enabled kind has completed its initial list.
    pub fn is_synced(&self) -> bool {
        self.enabled.iter().all(|k| self.synced.contains(k))
    }
}

/// Tunables of [`run_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How often API discovery is polled for the CRD-backed kinds.
    pub crd_poll: Duration,
    /// How often it is polled during `crd_settle` after the start and after a failed poll.
    pub crd_poll_fast: Duration,
    /// How long after the start discovery is polled every `crd_poll_fast`.
    pub crd_settle: Duration,
    /// How long changes are coalesced before a snapshot is published.
    pub publish_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crd_poll: Duration::from_secs(15),
            crd_poll_fast: Duration::from_millis(500),
            crd_settle: Duration::from_secs(30),
            publish_delay: Duration::from_millis(10),
        }
    }
}

/// Watches everything with default [`Options`]; see [`run_with`].
pub async fn run(client: Client, writer: Writer, synced: watch::Sender<bool>) -> Result<()> {
    run_with(client, writer, synced, Options::default()).await
}

/// Watches the cluster, feeds `writer`, publishes snapshots and reports readiness on `synced`
/// (true once every enabled kind has listed and that state is published). Runs until it is
/// cancelled; dropping the future aborts the watcher tasks it spawned.
pub async fn run_with(
    client: Client,
    mut writer: Writer,
    synced: watch::Sender<bool>,
    options: Options,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Update>(4096);
    let mut sync = Sync::new();
    let _core = AbortOnDrop(vec![
        spawn_watch::<Pod>(&client, &tx),
        spawn_watch::<Namespace>(&client, &tx),
        spawn_watch::<Node>(&client, &tx),
        spawn_watch::<NetworkPolicy>(&client, &tx),
    ]);
    let mut crd_tasks = AbortOnDropMap(BTreeMap::new());
    let mut absent_logged = BTreeSet::new();
    let started = Instant::now();
    let discovered = discover(
        &client,
        &mut sync,
        &mut writer,
        &mut crd_tasks.0,
        &mut absent_logged,
        &tx,
    )
    .await;
    let next_poll = |ok: bool| {
        let fast = !ok || started.elapsed() < options.crd_settle;
        Instant::now()
            + if fast {
                options.crd_poll_fast
            } else {
                options.crd_poll
            }
    };
    let mut poll_at = next_poll(discovered);
    let mut publish_at: Option<Instant> = None;
    // Readiness turns on at the first publish after every enabled kind has listed, and stays on
    // through later changes (it does not flap while single events wait to be published); it
    // turns off only when a kind is (re)enabled and has not listed yet.
    let mut was_synced = false;
    let mut awaiting_publish = false;
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { break };
                sync.step(update, &mut writer);
                // Drain what is already queued so a burst costs one publish.
                while let Ok(update) = rx.try_recv() {
                    sync.step(update, &mut writer);
                }
                if writer.is_dirty() && publish_at.is_none() {
                    publish_at = Some(Instant::now() + options.publish_delay);
                }
            }
            () = tokio::time::sleep_until(poll_at) => {
                let ok = discover(&client, &mut sync, &mut writer, &mut crd_tasks.0, &mut absent_logged, &tx).await;
                poll_at = next_poll(ok);
                if writer.is_dirty() && publish_at.is_none() {
                    publish_at = Some(Instant::now());
                }
            }
            () = sleep_until_opt(publish_at) => {
                publish_at = None;
                let snap = publish(&mut writer);
                awaiting_publish = false;
                tracing::debug!(generation = snap.generation, pods = snap.pods.len(), "published snapshot");
            }
        }
        let now_synced = sync.is_synced();
        if now_synced && !was_synced {
            awaiting_publish = writer.is_dirty();
        }
        was_synced = now_synced;
        let ready = now_synced && !awaiting_publish;
        synced.send_if_modified(|v| std::mem::replace(v, ready) != ready);
    }
    Err(Error::WatchersStopped)
}

/// Aborts the watcher tasks when the loop ends or its future is dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

struct AbortOnDropMap(BTreeMap<Kind, JoinHandle<()>>);

impl Drop for AbortOnDropMap {
    fn drop(&mut self) {
        self.0.values().for_each(JoinHandle::abort);
    }
}

/// Builds and publishes a snapshot. Building is CPU work (hundreds of milliseconds for ten
/// thousand pods and policies), so on a multi-threaded runtime it moves off the async workers.
fn publish(writer: &mut Writer) -> std::sync::Arc<crate::store::Snapshot> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| writer.publish()),
        _ => writer.publish(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls discovery for each CRD-backed kind and starts or stops its watcher to match.
async fn discover(
    client: &Client,
    sync: &mut Sync,
    writer: &mut Writer,
    tasks: &mut BTreeMap<Kind, JoinHandle<()>>,
    absent_logged: &mut BTreeSet<Kind>,
    tx: &mpsc::Sender<Update>,
) -> bool {
    let mut ok = true;
    for (kind, group_version, plural) in CRD_KINDS {
        let present = match client.list_api_group_resources(group_version).await {
            Ok(list) => list.resources.iter().any(|r| r.name == plural),
            // A group version not served (yet) is a bare 404 page, not a NotFound status.
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 404 => false,
            Err(e) => {
                tracing::warn!(?kind, %group_version, error = %e, "API discovery failed; keeping the current state");
                ok = false;
                continue;
            }
        };
        match (present, sync.is_enabled(kind)) {
            (true, false) => {
                absent_logged.remove(&kind);
                tracing::info!(?kind, "CRD present; watching");
                sync.step(Update::Enabled(kind), writer);
                let task = match kind {
                    Kind::AdminNetworkPolicy => {
                        spawn_watch::<v1alpha1::AdminNetworkPolicy>(client, tx)
                    }
                    Kind::BaselineAdminNetworkPolicy => {
                        spawn_watch::<v1alpha1::BaselineAdminNetworkPolicy>(client, tx)
                    }
                    _ => spawn_watch::<v1alpha2::ClusterNetworkPolicy>(client, tx),
                };
                tasks.insert(kind, task);
            }
            (false, true) => {
                tracing::info!(?kind, "CRD absent; watcher switched off");
                if let Some(t) = tasks.remove(&kind) {
                    t.abort();
                }
                sync.step(Update::Disabled(kind), writer);
            }
            (false, false) if absent_logged.insert(kind) => {
                tracing::info!(?kind, %group_version, "CRD not installed; kind switched off until it appears");
            }
            _ => {}
        }
    }
    ok
}

/// Watches every `K` in the cluster and sends what happens to them as updates of `K::KIND`.
fn spawn_watch<K>(client: &Client, tx: &mpsc::Sender<Update>) -> JoinHandle<()>
where
    K: Stored + Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (api, kind, tx) = (Api::<K>::all(client.clone()), K::KIND, tx.clone());
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let update = match item {
                Ok(watcher::Event::Init) => Update::Init(kind),
                Ok(watcher::Event::InitApply(o)) => Update::InitApply(o.into_object()),
                Ok(watcher::Event::InitDone) => Update::InitDone(kind),
                Ok(watcher::Event::Apply(o)) => Update::Apply(o.into_object()),
                Ok(watcher::Event::Delete(o)) => Update::Delete(o.into_object()),
                Err(e) => {
                    tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;

    fn ns(name: &str) -> Object {
        Object::Namespace(Box::new(Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    #[test]
    fn relist_is_buffered_then_replaces_and_marks_synced() {
        let mut writer = Writer::new();
        let reader = writer.reader();
        let mut sync = Sync::new();
        assert!(!sync.is_synced());
        sync.step(Update::Apply(ns("old")), &mut writer);
        writer.publish();
        assert!(reader.snapshot().namespace("old").is_some());

        sync.step(Update::Init(Kind::Namespace), &mut writer);
        sync.step(Update::InitApply(ns("a")), &mut writer);
        sync.step(Update::InitApply(ns("b")), &mut writer);
        writer.publish();
        assert!(
            reader.snapshot().namespace("a").is_none(),
            "a list in progress is not visible"
        );
        sync.step(Update::InitDone(Kind::Namespace), &mut writer);
        writer.publish();
        let snap = reader.snapshot();
        assert!(snap.namespace("a").is_some() && snap.namespace("b").is_some());
        assert!(
            snap.namespace("old").is_none(),
            "objects missing from the relist are forgotten"
        );
        assert!(!sync.is_synced(), "pods, nodes and netpols still listing");
        for k in [Kind::Pod, Kind::Node, Kind::NetworkPolicy] {
            sync.step(Update::Init(k), &mut writer);
            sync.step(Update::InitDone(k), &mut writer);
        }
        assert!(sync.is_synced());
    }

    #[test]
    fn enabling_a_crd_kind_unsyncs_until_listed_and_disabling_forgets_it() {
        let mut writer = Writer::new();
        let mut sync = Sync::new();
        for k in CORE_KINDS {
            sync.step(Update::InitDone(k), &mut writer);
        }
        assert!(sync.is_synced());
        sync.step(Update::Enabled(Kind::ClusterNetworkPolicy), &mut writer);
        assert!(!sync.is_synced());
        let cnp: v1alpha2::ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "p"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        }))
        .unwrap();
        sync.step(Update::Init(Kind::ClusterNetworkPolicy), &mut writer);
        sync.step(
            Update::InitApply(Object::ClusterNetworkPolicy(Box::new(cnp))),
            &mut writer,
        );
        sync.step(Update::InitDone(Kind::ClusterNetworkPolicy), &mut writer);
        assert!(sync.is_synced());
        assert_eq!(writer.publish().admin.len(), 1);
        sync.step(Update::Disabled(Kind::ClusterNetworkPolicy), &mut writer);
        assert!(
            sync.is_synced(),
            "a switched-off kind does not block readiness"
        );
        assert!(
            writer.publish().admin.is_empty(),
            "policies of a removed CRD are forgotten"
        );
    }
}
