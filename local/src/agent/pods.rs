//! Pods bound to this node: realize each as a network namespace with its servers, report
//! its status, tear it down on deletion and confirm the deletion.
//!
//! The watch loop only decides; every setup or teardown runs in its own task (and the
//! namespace work on its own thread), so tens of pods created at once do not queue behind
//! each other. Realized pods are recorded under `state_dir/pods/<uid>.json`; after a
//! restart the agent re-adopts a recorded pod whose namespace and link still exist
//! (restarting only its servers) and recreates it otherwise.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::netns::{self, PodWiring};
use super::servers::{self, ServerSpec, Servers};
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
    /// Removing the namespace or its link failed.
    #[error("tearing down pod {pod} failed")]
    Teardown {
        /// `namespace/name`.
        pod: String,
        /// The cause.
        #[source]
        source: netns::Error,
    },
    /// Reading or writing a pod record in the state directory failed.
    #[error("{op} pod record {path} failed")]
    Record {
        /// "reading", "writing" or "removing".
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A pod record is not valid JSON.
    #[error("parsing pod record {path} failed")]
    RecordParse {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
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

/// 8 hex digits derived from a pod UID (FNV-1a, 32 bit): stable across restarts.
pub fn uid_hash(uid: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The name of a pod's network namespace: `npc-<hash>`.
pub fn netns_name(uid: &str) -> String {
    format!("npc-{}", uid_hash(uid))
}

/// The node-side veth name of a pod: `npc<hash>` (11 bytes, under the 15-byte limit).
pub fn host_link_name(uid: &str) -> String {
    format!("npc{}", uid_hash(uid))
}

/// What the agent records about a realized pod, so `down` and a restarted agent can find
/// its kernel objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The pod's network namespace (the node's for host-network pods).
    pub netns: PathBuf,
    /// The node-side veth (none for host-network pods).
    pub host_link: Option<String>,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// Whether the pod shares the node's namespace.
    pub host_network: bool,
}

impl PodRecord {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The record files of a state directory.
pub fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pods")
}

/// Reads every pod record under `state_dir/pods`.
pub fn load_records(state_dir: &Path) -> Result<Vec<PodRecord>> {
    let dir = records_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Record {
                op: "reading",
                path: dir,
                source,
            });
        }
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Record {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        let record = serde_json::from_str(&text).map_err(|source| Error::RecordParse {
            path: path.clone(),
            source,
        })?;
        records.push(record);
    }
    records.sort_by(|a: &PodRecord, b| a.uid.cmp(&b.uid));
    Ok(records)
}

fn record_path(state_dir: &Path, uid: &str) -> PathBuf {
    records_dir(state_dir).join(format!("{uid}.json"))
}

fn save_record(state_dir: &Path, record: &PodRecord) -> Result<()> {
    let path = record_path(state_dir, &record.uid);
    let fail = |source| Error::Record {
        op: "writing",
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(records_dir(state_dir)).map_err(fail)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).expect("PodRecord serializes");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

fn remove_record(state_dir: &Path, uid: &str) -> Result<()> {
    let path = record_path(state_dir, uid);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Record {
            op: "removing",
            path,
            source,
        }),
    }
}

/// Removes a recorded pod's kernel objects (servers must already be stopped). Blocking;
/// also what `down` uses for pods whose agent is gone.
pub fn destroy(record: &PodRecord, node_netns: &Path) -> Result<()> {
    if record.host_network {
        return Ok(());
    }
    crate::probe::forget(&record.netns);
    let fail = |source| Error::Teardown {
        pod: record.key(),
        source,
    };
    if let Some(link) = &record.host_link
        && netns::exists(node_netns)
    {
        netns::unwire_pod(node_netns, link).map_err(fail)?;
    }
    netns::remove(&record.netns).map_err(fail)
}

/// Hands out pod addresses from the node's pod CIDR, never the network or broadcast
/// address, round-robin so a just-freed address is not reused at once.
#[derive(Debug, Clone)]
pub struct Allocator {
    cidr: ipnet::Ipv4Net,
    used: BTreeSet<Ipv4Addr>,
    next: u32,
}

impl Allocator {
    /// An allocator over `cidr` with nothing in use.
    pub fn new(cidr: ipnet::Ipv4Net) -> Self {
        Allocator {
            cidr,
            used: BTreeSet::new(),
            next: 0,
        }
    }

    fn hosts(&self) -> Vec<Ipv4Addr> {
        self.cidr.hosts().collect()
    }

    /// Marks `ip` as used (a re-adopted pod).
    pub fn claim(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// Frees `ip`.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// The next free address, if any.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let hosts = self.hosts();
        let n = u32::try_from(hosts.len()).ok()?;
        for step in 0..n {
            let i = (self.next + step) % n;
            let ip = hosts[i as usize];
            if !self.used.contains(&ip) {
                self.used.insert(ip);
                self.next = (i + 1) % n;
                return Some(ip);
            }
        }
        None
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
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let mut inner = self.lock();
        match inner.pods.get_mut(&uid) {
            None if deleting => {
                // Never realized here (or realized before a restart): clean up and confirm.
                let record = inner.unclaimed.remove(&uid);
                inner.pods.insert(uid.clone(), Slot::Deleting);
                drop(inner);
                self.spawn_teardown(uid, record, None, Some(pod));
            }
            None => {
                inner
                    .pods
                    .insert(uid.clone(), Slot::Starting { doomed: false });
                drop(inner);
                let me = Arc::clone(self);
                tokio::spawn(async move { me.realize(pod).await });
            }
            Some(Slot::Starting { doomed }) => *doomed |= deleting,
            Some(slot @ Slot::Running { .. }) if deleting => {
                let Slot::Running { record, servers } = std::mem::replace(slot, Slot::Deleting)
                else {
                    unreachable!("matched Running")
                };
                drop(inner);
                self.spawn_teardown(uid, Some(record), servers, Some(pod));
            }
            Some(_) => {}
        }
    }

    /// The pod is gone from the API (or was never listed after a restart).
    fn on_gone(self: &Arc<Self>, uid: String) {
        let mut inner = self.lock();
        let unclaimed = inner.unclaimed.remove(&uid);
        match inner.pods.get_mut(&uid) {
            Some(Slot::Starting { doomed }) => *doomed = true,
            Some(slot @ Slot::Running { .. }) => {
                let Slot::Running { record, servers } = std::mem::replace(slot, Slot::Deleting)
                else {
                    unreachable!("matched Running")
                };
                drop(inner);
                self.spawn_teardown(uid, Some(record), servers, None);
            }
            Some(Slot::Deleting) => {}
            None => {
                if let Some(record) = unclaimed {
                    inner.pods.insert(uid.clone(), Slot::Deleting);
                    drop(inner);
                    self.spawn_teardown(uid, Some(record), None, None);
                }
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
                    tracing::warn!(pod = %key, attempt, error = %error_chain(e), "pod setup failed")
                }
            }
            if attempt < SETUP_ATTEMPTS {
                tokio::time::sleep(SETUP_RETRY).await;
            }
        }
        let (record, servers) = match outcome {
            Ok(done) => done,
            Err(_) => {
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
            }
        };
        let ready = servers.all_up();
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
            match self.report(&pod, &record, ready).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %key, error = %error_chain(&e), "writing pod status failed; retrying")
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
                PodRecord {
                    uid: uid.clone(),
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    netns: netns::path_of(&netns_name(&uid)),
                    host_link: Some(host_link_name(&uid)),
                    ip,
                    host_network: false,
                }
            }
        };
        // Record before touching the kernel, so a crash leaves something to clean up.
        save_record(&self.cfg.state_dir, &record)?;
        let node_netns = self.cfg.node_netns.clone();
        let gateway = self.cfg.gateway;
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
    async fn report(&self, pod: &Pod, record: &PodRecord, ready: bool) -> Result<()> {
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
        let status = pod_status(pod, record, self.cfg.node_ip, ready, Timestamp::now());
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

/// The status the agent writes for a realized pod (a JSON merge patch body).
pub fn pod_status(
    pod: &Pod,
    record: &PodRecord,
    node_ip: Ipv4Addr,
    ready: bool,
    now: Timestamp,
) -> serde_json::Value {
    let time = serde_json::to_value(Time(now)).expect("Time serializes");
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| serde_json::to_value(t).expect("Time serializes"))
        .unwrap_or_else(|| time.clone());
    let flag = |b: bool| if b { "True" } else { "False" };
    let condition = |kind: &str, ok: bool| json!({"type": kind, "status": flag(ok), "lastProbeTime": null, "lastTransitionTime": time});
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = &record.uid;
    let containers: Vec<serde_json::Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("netpol-local://{uid}/{}", c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": time}},
            })
        })
        .collect();
    let init_containers: Vec<serde_json::Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("netpol-local://{uid}/{}", c.name),
                "ready": true,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": time, "finishedAt": time}},
            })
        })
        .collect();
    let ip = record.ip.to_string();
    json!({
        "status": {
            "phase": "Running",
            "hostIP": node_ip.to_string(),
            "hostIPs": [{"ip": node_ip.to_string()}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "qosClass": "BestEffort",
            "conditions": [
                condition("PodReadyToStartContainers", true),
                condition("Initialized", true),
                condition("Ready", ready),
                condition("ContainersReady", ready),
                condition("PodScheduled", true),
            ],
            "containerStatuses": containers,
            "initContainerStatuses": init_containers,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    #[test]
    fn names_are_short_stable_and_prefixed() {
        let uid = "0b9c7e4e-1f8a-4c7e-9a51-2a3f0c1d2e3f";
        assert_eq!(uid_hash(uid), uid_hash(uid));
        assert_ne!(uid_hash(uid), uid_hash("another-uid"));
        assert_eq!(uid_hash(uid).len(), 8);
        assert!(netns_name(uid).starts_with("npc-"));
        assert!(host_link_name(uid).starts_with("npc"));
        assert!(host_link_name(uid).len() <= 15);
        // FNV-1a of the empty string is the offset basis.
        assert_eq!(uid_hash(""), "811c9dc5");
    }

    #[test]
    fn allocator_skips_network_broadcast_and_used_and_round_robins() {
        let mut a = Allocator::new("10.244.3.0/30".parse().unwrap());
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(a.allocate(), None, ".0 and .3 are never handed out");
        a.release(Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 1)));

        let mut b = Allocator::new("10.244.0.0/24".parse().unwrap());
        b.claim(Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(b.allocate(), Some(Ipv4Addr::new(10, 244, 0, 2)));
        b.release(Ipv4Addr::new(10, 244, 0, 2));
        // Not reused right away.
        assert_eq!(b.allocate(), Some(Ipv4Addr::new(10, 244, 0, 3)));
    }

    #[test]
    fn records_round_trip_through_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("npt-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = PodRecord {
            uid: "u1".into(),
            namespace: "x".into(),
            name: "a".into(),
            netns: "/run/netns/npc-00000000".into(),
            host_link: Some("npc00000000".into()),
            ip: Ipv4Addr::new(10, 244, 0, 9),
            host_network: false,
        };
        assert!(load_records(&dir).unwrap().is_empty());
        save_record(&dir, &record).unwrap();
        assert_eq!(load_records(&dir).unwrap(), vec![record]);
        remove_record(&dir, "u1").unwrap();
        remove_record(&dir, "u1").unwrap();
        assert!(load_records(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_is_running_with_ips_conditions_and_container_statuses() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "cont-80-tcp".into(),
                    image: Some("agnhost".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = PodRecord {
            uid: "u".into(),
            namespace: "x".into(),
            name: "a".into(),
            netns: "/run/netns/npc-1".into(),
            host_link: None,
            ip: Ipv4Addr::new(10, 244, 0, 5),
            host_network: false,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), true, now);
        let status: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.244.0.5");
        assert_eq!(status.host_ip.as_deref(), Some("172.31.0.1"));
        let conds = status.conditions.unwrap();
        for kind in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
            let c = conds.iter().find(|c| c.type_ == kind).unwrap();
            assert_eq!(c.status, "True", "{kind}");
        }
        let cs = &status.container_statuses.unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());

        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), false, now);
        let status: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
    }
}
