//! Pods bound to this node: realize each as a network namespace with its servers, report
//! its status, tear it down on deletion and confirm the deletion.
//!
//! The watch loop only decides ([`decide`], a pure table over what the agent holds and
//! what the API says); every setup or teardown runs in its own task (and the
//! namespace work on its own thread), so tens of pods created at once do not queue behind
//! each other. Realized pods are recorded ([`super::records`]); after a
//! restart the agent re-adopts a recorded pod whose namespace and link still exist
//! (restarting only its servers) and recreates it otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::ipam::Allocator;
use super::netns::{self, PodWiring};
use super::records::{
    self, PodRecord, destroy, host_link_name, load_records, remove_record, save_record,
};
use super::servers::{self, ServerSpec, Servers};
use super::status::pod_status;
use super::{AgentConfig, agnhost, error_chain};

/// Pod annotation holding the path of the pod's network namespace (host-network pods:
/// the node's).
pub const NETNS_ANNOTATION: &str = "local.netpol-conformance.io/netns";

/// How many times pod setup is tried before the agent gives up on the pod.
pub const SETUP_ATTEMPTS: u32 = 3;
/// Pause between setup attempts.
pub const SETUP_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between attempts to write a pod's status.
pub const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After [`SETUP_ATTEMPTS`] failures, how long until the pod is looked up and tried again.
pub const SETUP_BACKOFF: Duration = Duration::from_secs(5);

/// Errors of pod handling; each names the pod and the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod CIDR has no free address left.
    #[error("no free address in pod CIDR {cidr} for pod {pod}")]
    NoAddress {
        /// The node's pod CIDR.
        cidr: ipnet::Ipv4Net,
        /// `namespace/name`.
        pod: String,
    },
    /// Creating the namespace, its wiring or its servers failed.
    #[error("setting up pod {pod} failed")]
    Setup {
        /// `namespace/name`.
        pod: String,
        /// The cause.
        #[source]
        source: servers::Error,
    },
    /// A pod record or a recorded pod's kernel objects could not be handled.
    #[error(transparent)]
    Records(#[from] records::Error),
    /// An API call about the pod failed.
    #[error("{op} pod {pod} failed")]
    Api {
        /// What was being done.
        op: &'static str,
        /// `namespace/name`.
        pod: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("the {what} task for pod {pod} did not finish")]
    Join {
        /// Which task.
        what: &'static str,
        /// `namespace/name`.
        pod: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the agent holds for a pod when an event about it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Nothing.
    Absent,
    /// A record from before a restart, not yet re-adopted.
    Recorded,
    /// Setup is running.
    Starting,
    /// Realized and serving.
    Running,
    /// Teardown is running.
    Deleting,
}

/// What the API says about the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Exists, not being deleted.
    Live,
    /// Has a deletion timestamp: the agent must tear it down and confirm.
    Terminating,
    /// Gone from the API (or absent from a fresh listing).
    Gone,
}

/// What the agent does about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    Nothing,
    /// Create (or re-adopt) the pod.
    Realize,
    /// Let the running setup finish, then tear down.
    Doom,
    /// Tear down; with `confirm`, then delete the Pod with grace 0.
    Teardown {
        /// Whether the deletion is confirmed to the API afterwards.
        confirm: bool,
    },
}

/// The agent's whole pod lifecycle policy, as a table.
pub fn decide(known: Known, seen: Seen) -> Action {
    use {Known as K, Seen as S};
    match (known, seen) {
        (K::Absent | K::Recorded, S::Live) => Action::Realize,
        (K::Absent | K::Recorded | K::Running, S::Terminating) => {
            Action::Teardown { confirm: true }
        }
        (K::Recorded | K::Running, S::Gone) => Action::Teardown { confirm: false },
        (K::Starting, S::Terminating | S::Gone) => Action::Doom,
        (K::Starting | K::Running, S::Live) | (K::Deleting, _) | (K::Absent, S::Gone) => {
            Action::Nothing
        }
    }
}

/// The agent's view of one pod.
enum Slot {
    /// Setup is running; `doomed` if deletion was requested meanwhile.
    Starting { doomed: bool },
    /// Realized and serving.
    Running {
        record: PodRecord,
        servers: Option<Servers>,
    },
    /// Teardown is running.
    Deleting,
}

struct Inner {
    pods: HashMap<String, Slot>,
    /// Records found on disk at start that no pod has claimed yet.
    unclaimed: HashMap<String, PodRecord>,
    allocator: Allocator,
    /// UIDs listed since the last watch (re)start.
    listed: Option<HashSet<String>>,
}

/// Realizes the pods bound to one node.
pub struct PodManager {
    client: kube::Client,
    cfg: AgentConfig,
    inner: Mutex<Inner>,
}

/// `namespace/name` of a pod.
fn key_of(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl PodManager {
    /// A manager that knows the pods recorded under `cfg.state_dir` (to re-adopt them).
    pub fn new(client: kube::Client, cfg: AgentConfig) -> Result<Arc<Self>> {
        let mut allocator = Allocator::new(cfg.pod_cidr);
        let mut unclaimed = HashMap::new();
        for record in load_records(&cfg.state_dir)? {
            if !record.host_network {
                allocator.claim(record.ip);
            }
            unclaimed.insert(record.uid.clone(), record);
        }
        Ok(Arc::new(PodManager {
            client,
            cfg,
            inner: Mutex::new(Inner {
                pods: HashMap::new(),
                unclaimed,
                allocator,
                listed: None,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("pod manager lock")
    }

    /// Watches the pods bound to this node until the stream ends (it does not, short of
    /// the runtime shutting down); watch errors are logged and retried with backoff.
    pub async fn watch(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name));
        let mut events = watcher(pods, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.on_event(event),
                Err(e) => tracing::warn!(error = %error_chain(&e), "pod watch failed; retrying"),
            }
        }
    }

    fn on_event(self: &Arc<Self>, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.lock().listed = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let Some(listed) = self.lock().listed.as_mut() {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                self.on_pod(pod);
            }
            watcher::Event::Delete(pod) => self.on_gone(pod.uid().unwrap_or_default()),
            watcher::Event::InitDone => {
                let gone: Vec<String> = {
                    let mut inner = self.lock();
                    let listed = inner.listed.take().unwrap_or_default();
                    inner
                        .pods
                        .keys()
                        .chain(inner.unclaimed.keys())
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect()
                };
                for uid in gone {
                    self.on_gone(uid);
                }
            }
        }
    }

    /// A pod was added or changed.
    fn on_pod(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.uid() else { return };
        let seen = if pod.metadata.deletion_timestamp.is_some() {
            Seen::Terminating
        } else {
            Seen::Live
        };
        self.apply(uid, seen, Some(pod));
    }

    /// The pod is gone from the API (or was not listed after a (re)start).
    fn on_gone(self: &Arc<Self>, uid: String) {
        self.apply(uid, Seen::Gone, None);
    }

    /// Decides with [`decide`] and carries the decision out; `pod` is the API object when
    /// there is one.
    fn apply(self: &Arc<Self>, uid: String, seen: Seen, pod: Option<Pod>) {
        let mut inner = self.lock();
        let known = match inner.pods.get(&uid) {
            Some(Slot::Starting { .. }) => Known::Starting,
            Some(Slot::Running { .. }) => Known::Running,
            Some(Slot::Deleting) => Known::Deleting,
            None if inner.unclaimed.contains_key(&uid) => Known::Recorded,
            None => Known::Absent,
        };
        match decide(known, seen) {
            Action::Nothing => {}
            Action::Realize => {
                let Some(pod) = pod else { return };
                inner
                    .pods
                    .insert(uid.clone(), Slot::Starting { doomed: false });
                drop(inner);
                let me = Arc::clone(self);
                tokio::spawn(async move { me.realize(pod).await });
            }
            Action::Doom => {
                if let Some(Slot::Starting { doomed }) = inner.pods.get_mut(&uid) {
                    *doomed = true;
                }
            }
            Action::Teardown { confirm } => {
                let (record, servers) = match inner.pods.insert(uid.clone(), Slot::Deleting) {
                    Some(Slot::Running { record, servers }) => (Some(record), servers),
                    _ => (inner.unclaimed.remove(&uid), None),
                };
                drop(inner);
                let confirm = if confirm { pod } else { None };
                self.spawn_teardown(uid, record, servers, confirm);
            }
        }
    }

    fn spawn_teardown(
        self: &Arc<Self>,
        uid: String,
        record: Option<PodRecord>,
        servers: Option<Servers>,
        confirm: Option<Pod>,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.teardown(&uid, record, servers, confirm).await {
                tracing::error!(error = %error_chain(&e), "pod teardown failed");
            }
            me.lock().pods.remove(&uid);
        });
    }

    async fn teardown(
        &self,
        uid: &str,
        record: Option<PodRecord>,
        servers: Option<Servers>,
        confirm: Option<Pod>,
    ) -> Result<()> {
        let key = record
            .as_ref()
            .map(PodRecord::key)
            .or(confirm.as_ref().map(key_of))
            .unwrap_or_else(|| uid.to_string());
        if let Some(record) = record {
            let node_netns = self.cfg.node_netns.clone();
            let rec = record.clone();
            tokio::task::spawn_blocking(move || {
                drop(servers);
                destroy(&rec, &node_netns)
            })
            .await
            .map_err(|_| Error::Join {
                what: "teardown",
                pod: key.clone(),
            })??;
            if !record.host_network {
                self.lock().allocator.release(record.ip);
            }
            remove_record(&self.cfg.state_dir, uid)?;
            tracing::info!(pod = %key, "pod torn down");
        }
        if let Some(pod) = confirm {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(source) => {
                    return Err(Error::Api {
                        op: "confirming the deletion of",
                        pod: key,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    async fn realize(self: Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let key = key_of(&pod);
        let mut outcome = Err(Error::Join {
            what: "setup",
            pod: key.clone(),
        });
        for attempt in 1..=SETUP_ATTEMPTS {
            outcome = self.setup(&pod).await;
            match &outcome {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(pod = %key, attempt, error = %error_chain(e), "pod setup failed");
                }
            }
            if attempt < SETUP_ATTEMPTS {
                tokio::time::sleep(SETUP_RETRY).await;
            }
        }
        let Ok((record, servers)) = outcome else {
            // Forget it and try again later (like the kubelet, never give up on a pod
            // that still exists); an event about the pod meanwhile also retries.
            self.lock().pods.remove(&uid);
            let me = Arc::clone(&self);
            let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            tokio::spawn(async move {
                tokio::time::sleep(SETUP_BACKOFF).await;
                let api: Api<Pod> = Api::namespaced(me.client.clone(), &namespace);
                if let Ok(Some(current)) = api.get_opt(&name).await
                    && current.uid().as_deref() == Some(uid.as_str())
                {
                    me.on_pod(current);
                }
            });
            return;
        };
        let problems = problems_by_container(&pod, &servers);
        let ready = problems.is_empty();
        let servers = {
            let mut inner = self.lock();
            if matches!(inner.pods.get(&uid), Some(Slot::Starting { doomed: true })) {
                inner.pods.insert(uid.clone(), Slot::Deleting);
                Some(servers)
            } else {
                inner.pods.insert(
                    uid.clone(),
                    Slot::Running {
                        record: record.clone(),
                        servers: Some(servers),
                    },
                );
                None
            }
        };
        if let Some(servers) = servers {
            // Deleted while starting: tear down now; confirm if the API still has it.
            let current = Api::<Pod>::namespaced(self.client.clone(), &record.namespace)
                .get_opt(&record.name)
                .await
                .ok()
                .flatten()
                .filter(|p| p.uid().as_deref() == Some(uid.as_str()));
            if let Err(e) = self
                .teardown(&uid, Some(record), Some(servers), current)
                .await
            {
                tracing::error!(error = %error_chain(&e), "pod teardown failed");
            }
            self.lock().pods.remove(&uid);
            return;
        }
        // Retry transient API failures while the pod is still ours and running.
        let mut pause = SETUP_RETRY;
        loop {
            match self.report(&pod, &record, &problems).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %key, error = %error_chain(&e), "writing pod status failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REPORT_BACKOFF_MAX);
            if !matches!(self.lock().pods.get(&uid), Some(Slot::Running { .. })) {
                return;
            }
        }
        tracing::info!(pod = %key, ip = %record.ip, ready, "pod running");
    }

    /// Creates (or re-adopts) the pod's namespace and servers and records it.
    async fn setup(&self, pod: &Pod) -> Result<(PodRecord, Servers)> {
        let uid = pod.uid().unwrap_or_default();
        let key = key_of(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let specs: Vec<ServerSpec> = spec
            .containers
            .iter()
            .flat_map(agnhost::servers_for)
            .collect();
        let hostname = if host_network {
            self.cfg.node_name.clone()
        } else {
            spec.hostname.clone().unwrap_or_else(|| pod.name_any())
        };
        let adopted = self.lock().unclaimed.remove(&uid);
        let record = match adopted.clone() {
            Some(r) => r,
            None if host_network => PodRecord {
                uid: uid.clone(),
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                netns: self.cfg.node_netns.clone(),
                host_link: None,
                ip: self.cfg.node_ip,
                host_network: true,
            },
            None => {
                let ip = self.lock().allocator.allocate().ok_or(Error::NoAddress {
                    cidr: self.cfg.pod_cidr,
                    pod: key.clone(),
                })?;
                let (netns_path, host_link) = records::fresh_names(&uid, netns::exists);
                PodRecord {
                    uid: uid.clone(),
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    netns: netns_path,
                    host_link: Some(host_link),
                    ip,
                    host_network: false,
                }
            }
        };
        // Record before touching the kernel, so a crash leaves something to clean up.
        save_record(&self.cfg.state_dir, &record)?;
        let node_netns = self.cfg.node_netns.clone();
        let gateway = self.cfg.gateway;
        let node_ip = self.cfg.node_ip;
        let rec = record.clone();
        let is_adopted = adopted.is_some();
        let started = tokio::task::spawn_blocking(move || {
            if rec.host_network {
                return servers::spawn_in(&rec.netns, &hostname, &specs);
            }
            let link = rec
                .host_link
                .clone()
                .unwrap_or_else(|| host_link_name(&rec.uid));
            let intact = netns::exists(&rec.netns)
                && netns::link_exists(&node_netns, &link).unwrap_or(false);
            if is_adopted && intact {
                return servers::spawn_in(&rec.netns, &hostname, &specs);
            }
            // Leftovers of an earlier attempt or a broken adoption: start clean.
            crate::probe::forget(&rec.netns);
            let _ = netns::unwire_pod(&node_netns, &link);
            let _ = netns::remove(&rec.netns);
            let wiring = PodWiring {
                pod_netns: rec.netns.clone(),
                node_netns,
                host_link: link,
                pod_ip: rec.ip,
                gateway,
                node_ip: Some(node_ip),
            };
            servers::spawn_in_new_pod(&wiring, &hostname, &specs)
        })
        .await
        .map_err(|_| Error::Join {
            what: "setup",
            pod: key.clone(),
        })?;
        match started {
            Ok(servers) => Ok((record, servers)),
            Err(source) => {
                // Keep the record claimable for the next attempt.
                self.lock().unclaimed.insert(uid, record);
                Err(Error::Setup { pod: key, source })
            }
        }
    }

    /// Writes the netns annotation and the Running/Ready status.
    async fn report(
        &self,
        pod: &Pod,
        record: &PodRecord,
        problems: &BTreeMap<String, Vec<String>>,
    ) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &record.namespace);
        let key = record.key();
        api.patch(
            &record.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                NETNS_ANNOTATION: record.netns.display().to_string()
            }}})),
        )
        .await
        .map_err(|source| Error::Api {
            op: "annotating",
            pod: key.clone(),
            source,
        })?;
        let status = pod_status(pod, record, self.cfg.node_ip, problems, Timestamp::now());
        api.patch_status(&record.name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map(drop)
            .map_err(|source| Error::Api {
                op: "writing the status of",
                pod: key,
                source,
            })
    }

    /// Stops every pod's servers and leaves namespaces and records in place, so a
    /// restarted agent re-adopts them.
    pub async fn shutdown(&self) {
        let servers: Vec<Servers> = {
            let mut inner = self.lock();
            inner
                .pods
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Running { servers, .. } => servers.take(),
                    _ => None,
                })
                .collect()
        };
        let _ = tokio::task::spawn_blocking(move || drop(servers)).await;
    }
}

/// The servers that failed to bind, by the container that asked for them. The servers
/// were started from the containers' [`agnhost::servers_for`] in order, so statuses map
/// back one to one.
fn problems_by_container(pod: &Pod, servers: &Servers) -> BTreeMap<String, Vec<String>> {
    let mut statuses = servers.statuses().iter();
    let mut problems = BTreeMap::new();
    for container in pod.spec.iter().flat_map(|s| &s.containers) {
        for _ in agnhost::servers_for(container) {
            if let Some((_, servers::ServerStatus::Failed(why))) = statuses.next() {
                problems
                    .entry(container.name.clone())
                    .or_insert_with(Vec::new)
                    .push(why.clone());
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_table() {
        use {Action as A, Known as K, Seen as S};
        let confirm = A::Teardown { confirm: true };
        let quiet = A::Teardown { confirm: false };
        let table = [
            (K::Absent, S::Live, A::Realize),
            (K::Absent, S::Terminating, confirm),
            (K::Absent, S::Gone, A::Nothing),
            (K::Recorded, S::Live, A::Realize),
            (K::Recorded, S::Terminating, confirm),
            (K::Recorded, S::Gone, quiet),
            (K::Starting, S::Live, A::Nothing),
            (K::Starting, S::Terminating, A::Doom),
            (K::Starting, S::Gone, A::Doom),
            (K::Running, S::Live, A::Nothing),
            (K::Running, S::Terminating, confirm),
            (K::Running, S::Gone, quiet),
            (K::Deleting, S::Live, A::Nothing),
            (K::Deleting, S::Terminating, A::Nothing),
            (K::Deleting, S::Gone, A::Nothing),
        ];
        for (known, seen, want) in table {
            assert_eq!(decide(known, seen), want, "{known:?} + {seen:?}");
        }
    }
}
