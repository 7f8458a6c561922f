//! The boundary between the harness and a cluster: objects in, realized names and IPs out; probe
//! jobs in, outcomes out.
//!
//! [`Cluster`] is implemented by the Kubernetes API backend (any CNI, and the local cluster);
//! [`Prober`](crate::probe::Prober) by the exec prober (real clusters) and the netns prober
//! (local cluster). The in-memory double in [`fake`] serves only the harness's own tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::case::{Feature, ObjectRef};
use crate::reachability::Outcome;
use crate::translate::Resolve;
use crate::world::{Protocol, World};

/// What the run is pointed at, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    /// `local` or the kubeconfig context / server.
    pub target: String,
    /// The API server's version (`v1.37.2`).
    pub kubernetes_version: String,
    /// The policy implementation, if known (`netpol-enforcer`, `none`, a CNI name).
    pub implementation: String,
    /// How the probes were carried out (`exec`, `netns`, `exec+netns`; `none` before any).
    pub prober: String,
    /// How the nodes run pods: `kubelet` (real kubelets) or `emulated` (the local cluster's
    /// network-namespace pods), read from the Nodes.
    pub runtime: String,
    /// The nodes' container runtimes as they report them (`containerd://2.4.2`).
    pub container_runtime: String,
    /// Where the bundled enforcer runs: `daemonset` (the `enforcer/deploy/` DaemonSet found
    /// on the cluster), `process` (one per node of the local cluster), `none`, or `unknown`
    /// (policy is the CNI's business).
    pub enforcer: String,
    /// Execs the run opened into its pods, counted as they happened (0 where probes did not
    /// go through exec); beside each step's `probe calls`, which the prober plans.
    pub execs: usize,
    /// The p99.9 of how long the run's connections took, where the prober timed them alone
    /// (the measured path a local run derives its connect timeout from), and how many there
    /// were.
    pub connect_p999: Option<(std::time::Duration, usize)>,
    /// Where the worlds' pods went: `spread over 2 nodes`, `same-node over 2 nodes`, ….
    pub placement: String,
}

/// What the target can do, decided once before the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Features the target supports.
    pub features: BTreeSet<Feature>,
    /// Features the target lacks, with the reason (e.g. "SCTP is not supported by this kernel").
    pub missing: BTreeMap<Feature, String>,
    /// Policy kinds whose API the target serves.
    pub kinds: BTreeSet<String>,
}

/// A pod as realized for one trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealizedPod {
    /// Model name (`x/a`).
    pub model: String,
    /// Realized namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod IP (the node's for host-network pods).
    pub ip: IpAddr,
    /// Service ClusterIP, where the world has Services.
    pub service_ip: Option<IpAddr>,
    /// The container probes are executed in.
    pub container: String,
    /// Network namespace path (local cluster only).
    pub netns: Option<String>,
    /// The node the pod runs on, where known.
    pub node: Option<String>,
}

impl RealizedWorld {
    /// Whether the pods `from` and `to` run on different nodes; `None` where either node is not
    /// known (the external host, a target that does not say).
    pub fn cross_node(&self, from: &str, to: &str) -> Option<bool> {
        let node = |m: &str| self.pods.get(m).and_then(|p| p.node.as_deref());
        Some(node(from)? != node(to)?)
    }
}

/// Labels to set and labels to remove on one object.
#[derive(Debug, Clone, Copy)]
pub struct LabelChange<'a> {
    /// Labels to add or change.
    pub set: &'a BTreeMap<String, String>,
    /// Label keys to remove.
    pub remove: &'a [String],
}

/// Where a world's pods go on a target with two or more schedulable nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Pods alternate between the nodes, so every step probes both same-node and cross-node
    /// pairs.
    #[default]
    Spread,
    /// Every pod on one node (host-network pods that serve fixed host ports excepted: two of
    /// them cannot share a node).
    SameNode,
    /// Spread, and only the cross-node pairs are judged.
    CrossNode,
}

impl Placement {
    /// `spread`, `same-node`, `cross-node`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::SameNode => "same-node",
            Placement::CrossNode => "cross-node",
        }
    }
}

/// A world as realized for one trial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RealizedWorld {
    /// The run's suffix for namespace names.
    pub suffix: String,
    /// Model namespace → realized name.
    pub namespaces: BTreeMap<String, String>,
    /// Model pod → realized pod.
    pub pods: BTreeMap<String, RealizedPod>,
    /// Node InternalIPs, in node order.
    pub node_ips: Vec<IpAddr>,
    /// The external host, where the target has one.
    pub external_ip: Option<IpAddr>,
}

impl Resolve for RealizedWorld {
    fn namespace(&self, model: &str) -> Option<String> {
        self.namespaces.get(model).cloned()
    }
    fn pod_ip(&self, model: &str) -> Option<IpAddr> {
        self.pods.get(model).map(|p| p.ip)
    }
    fn node_ip(&self, index: usize) -> Option<IpAddr> {
        self.node_ips.get(index).copied()
    }
    fn external_ip(&self) -> Option<IpAddr> {
        self.external_ip
    }
}

/// One probe to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeJob {
    /// The source pod.
    pub from: RealizedPod,
    /// Destination model name (for reports).
    pub to_model: String,
    /// Destination address.
    pub to_ip: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Connect timeout.
    pub timeout: Duration,
}

impl ProbeJob {
    /// The command a person can run to repeat this probe by hand.
    pub fn rerun_command(&self) -> String {
        let target = std::net::SocketAddr::new(self.to_ip, self.port);
        match &self.from.netns {
            Some(netns) => format!(
                "netpol-conformance probe --netns {netns} {target} --protocol {} --timeout {}",
                self.protocol.lower(),
                self.timeout.as_secs().max(1)
            ),
            None => format!(
                "kubectl exec {} -c {} -n {} -- /agnhost connect {target} --timeout={}s --protocol={}",
                self.from.name,
                self.from.container,
                self.from.namespace,
                self.timeout.as_secs().max(1),
                self.protocol.lower()
            ),
        }
    }
}

/// What a backend failure came from, kept as it came (a Kubernetes API error, a JSON or I/O
/// error, or a message the backend wrote), so a caller can still ask what it was.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of the target or of the transport, never a policy verdict.
///
/// Its text includes the cause, which is kept typed in the error (see [`BackendError::cause`]
/// and [`BackendError::api_status`]) rather than repeated by [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The world could not be created or did not become ready.
    #[error("creating world {world}: {message}")]
    World {
        /// Which world.
        world: String,
        /// What happened.
        message: String,
    },
    /// An object could not be applied.
    #[error("{operation} {kind} {name}: {cause}")]
    Object {
        /// `create`, `update`, `patch`, `delete`.
        operation: String,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// What the API (or the client) said.
        cause: Cause,
    },
    /// Anything else, named by operation.
    #[error("{operation}: {cause}")]
    Other {
        /// The operation.
        operation: String,
        /// What happened.
        cause: Cause,
    },
}

impl BackendError {
    /// The underlying error, where the failure has one.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            BackendError::World { .. } => None,
            BackendError::Object { cause, .. } | BackendError::Other { cause, .. } => {
                Some(cause.as_ref())
            }
        }
    }

    /// The HTTP status the API server answered with, where the failure is an API error: a
    /// 409 Conflict is the object's state, a 500 the server's.
    pub fn api_status(&self) -> Option<u16> {
        match self.cause()?.downcast_ref::<kube::Error>()? {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        }
    }
}

/// A cluster the suite creates worlds and policies in.
pub trait Cluster: Send + Sync {
    /// What the run is pointed at.
    fn info(&self) -> TargetInfo;
    /// What the target can do.
    fn capabilities(&self) -> Capabilities;
    /// Creates a world's namespaces, pods and Services and waits until they are ready.
    /// Namespace names get `suffix`; everything created carries the run's labels.
    fn create_world(&self, world: &World, suffix: &str) -> Result<RealizedWorld, BackendError>;
    /// Creates objects (placeholders already resolved, namespaces realized).
    fn create(&self, objects: &[Value]) -> Result<(), BackendError>;
    /// Replaces objects.
    fn update(&self, objects: &[Value]) -> Result<(), BackendError>;
    /// JSON-patches one object (namespace realized).
    fn patch(&self, target: &ObjectRef, ops: &[Value]) -> Result<(), BackendError>;
    /// Deletes objects (namespaces realized); absent objects are not an error.
    fn delete(&self, targets: &[ObjectRef]) -> Result<(), BackendError>;
    /// Deletes every NetworkPolicy in these namespaces.
    fn delete_all_network_policies(&self, namespaces: &[String]) -> Result<(), BackendError>;
    /// Sets and removes labels on the namespace `ns` (its realized name).
    fn label_namespace(&self, ns: &str, change: LabelChange<'_>) -> Result<(), BackendError>;
    /// Sets and removes labels on a pod.
    fn label_pod(&self, pod: &RealizedPod, change: LabelChange<'_>) -> Result<(), BackendError>;
    /// Deletes and recreates pods; returns them as realized again (new IPs).
    fn recreate_pods(
        &self,
        world: &World,
        realized: &RealizedWorld,
        pods: &[String],
    ) -> Result<Vec<RealizedPod>, BackendError>;
    /// Deletes pods and waits until they are gone; they stay in `realized`, so probes of them
    /// now fail.
    fn delete_pods(&self, realized: &RealizedWorld, pods: &[String]) -> Result<(), BackendError>;
    /// Deletes everything a world's creation made, waiting until it is gone.
    fn delete_world(&self, realized: &RealizedWorld) -> Result<(), BackendError>;
    /// Ends a trial's use of its world. With `reusable` (the trial left the world's pods and
    /// labels as it found them, see `runner::reusable`) a backend may remove only the trial's
    /// own objects and hand the world to a later trial of the same world from
    /// [`Cluster::create_world`], as upstream's suite reuses its namespaces; the later trial's
    /// pre-flight then proves every pair connects again before its first policy. The default
    /// deletes the world.
    fn release_world(
        &self,
        world: &World,
        realized: &RealizedWorld,
        reusable: bool,
    ) -> Result<(), BackendError> {
        let _ = (world, reusable);
        self.delete_world(realized)
    }
    /// Takes the cluster-wide turn of trials with cluster-scoped policies: other runs on the
    /// same cluster wait for it (the default: a cluster only this run uses).
    fn lock_cluster_scope(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Gives the turn back.
    fn unlock_cluster_scope(&self) {}
    /// Carries out probes, as many at once as the prober allows; one outcome per job, in order.
    fn probe(&self, jobs: &[ProbeJob]) -> Vec<Outcome>;
    /// How many transport calls (execs, netns probes) [`Cluster::probe`] makes for these jobs.
    fn probe_calls(&self, jobs: &[ProbeJob]) -> usize {
        jobs.len()
    }
    /// Probes every job, then again each one whose outcome is not `wanted` yet, until it is or
    /// the retry deadline passes (see [`crate::probe::Prober::probe_until`]). The default works
    /// in passes over [`Cluster::probe`].
    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        let (probe, calls) = (
            |b: &[ProbeJob]| self.probe(b),
            |b: &[ProbeJob]| self.probe_calls(b),
        );
        settle_in_passes(probe, calls, jobs, wanted, retry)
    }
    /// The `q`-quantile of how long the connections probed so far took, and how many there
    /// were; `None` where the prober cannot time a connection alone (an exec around it).
    fn connect_quantile(&self, _q: f64) -> Option<(std::time::Duration, usize)> {
        None
    }
    /// End of run: deletes the worlds its trials shared and those left idle for reuse (the
    /// default: a cluster that keeps none).
    fn delete_shared_worlds(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// End of run: withdraws the run's presence on the cluster (its lock and leases).
    fn retire(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Deletes what runs of this suite left behind (`netpol-conformance cleanup`), naming each
    /// object removed (the default: a cluster where runs leave nothing).
    fn cleanup_leftovers(&self, which: Leftovers<'_>) -> Result<Vec<String>, BackendError> {
        let _ = which;
        Ok(Vec::new())
    }
}

/// Whose leftovers [`Cluster::cleanup_leftovers`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers<'a> {
    /// One run's.
    Run(&'a str),
    /// Those of every run whose run lease is gone or expired: never a live run's.
    Dead,
    /// Every run's, live ones included.
    All,
}

pub mod fake;
mod settle;

pub use settle::{Retry, Settled, Settling, Wanted, settle_in_passes};
