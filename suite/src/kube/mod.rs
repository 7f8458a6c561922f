//! The Kubernetes API backend: creates worlds through the API of any cluster (and of the local
//! cluster), applies policies, and probes through a [`Prober`]: `kubectl exec`-style exec into
//! the agnhost pods on real clusters, the netns prober on the local cluster.
//!
//! Here: [`KubeCluster`], its options, and what it detects when it connects. Its [`Cluster`]
//! implementation is in `cluster.rs`, world creation and deletion in `world.rs`, removing what
//! earlier runs left behind in `cleanup.rs`, the client in [`client`], the run lease and
//! cluster lock in [`lease`].
//!
//! [`Cluster`]: crate::backend::Cluster

mod cleanup;
pub mod client;
mod cluster;
pub mod lease;
mod objects;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::runtime::Handle;

use crate::backend::{BackendError, Capabilities, Cause, RealizedWorld, TargetInfo};
use crate::probe::Prober;

pub use client::KubeConfigSource;
pub use objects::{LABEL_RUN, LABEL_TRIAL, NETNS_ANNOTATION};

/// Named waits of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeTimeouts {
    /// Pods of a world Running and Ready with IPs.
    pub world_ready: Duration,
    /// Namespaces and objects gone after deletion.
    pub delete: Duration,
    /// Pod labels visible after an update.
    pub label: Duration,
}

impl Default for KubeTimeouts {
    fn default() -> Self {
        KubeTimeouts {
            world_ready: Duration::from_secs(300),
            delete: Duration::from_secs(180),
            label: Duration::from_secs(30),
        }
    }
}

/// Options of the backend.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The run's id, put on everything created (label [`LABEL_RUN`]).
    pub run_id: String,
    /// The agnhost image for dummy pods.
    pub image: String,
    /// Whether Services get probed (false on the local cluster: no kube-proxy).
    pub services: bool,
    /// Node addresses, when known (local cluster).
    pub node_ips: Vec<IpAddr>,
    /// The external host, when the target has one.
    pub external_ip: Option<IpAddr>,
    /// Waits.
    pub timeouts: KubeTimeouts,
    /// Wait for another run's cluster lock (`false`: fail at once, naming the holder).
    pub wait_for_lock: bool,
    /// Where the bundled enforcer runs, when the caller knows (the local cluster); `None`
    /// looks for its DaemonSet on the cluster.
    pub enforcer: Option<String>,
    /// Where the worlds' pods go.
    pub placement: crate::backend::Placement,
    /// Time connections between a new world's pods from inside their network namespaces on
    /// this machine (the local cluster's real nodes): the path the connect timeout follows.
    pub measure_path: bool,
}

/// A cluster reached through the Kubernetes API.
pub struct KubeCluster {
    rt: Handle,
    client: Client,
    prober: Box<dyn Prober>,
    opts: KubeOptions,
    info: TargetInfo,
    caps: Capabilities,
    /// The nodes pods may be placed on (Ready, schedulable, Linux, untainted), by name.
    nodes: Vec<String>,
    /// Times the path between pods where [`KubeOptions::measure_path`] asks for it.
    path: crate::probe::netns::NetnsProber,
    /// Worlds with upstream namespace names are created once per run and shared by its trials.
    shared: Mutex<BTreeMap<String, RealizedWorld>>,
    /// Worlds a trial released as it found them, by world definition, for the next trial of the
    /// same world (deleted at the end of the run with the shared ones).
    idle: Mutex<Vec<(String, RealizedWorld)>>,
    /// This run's run lease and cluster lock.
    leases: lease::Leases,
}

pub use crate::backend::Leftovers;

/// The cluster-scoped policy kinds.
const CLUSTER_SCOPED: [&str; 3] = [
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
];

/// The API resource of a policy kind.
pub fn resource_of(kind: &str) -> Option<(ApiResource, bool)> {
    let (group, version, namespaced) = match kind {
        "NetworkPolicy" => ("networking.k8s.io", "v1", true),
        "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
            ("policy.networking.k8s.io", "v1alpha1", false)
        }
        "ClusterNetworkPolicy" => ("policy.networking.k8s.io", "v1alpha2", false),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}ies", kind.to_ascii_lowercase().trim_end_matches('y'));
    Some((ApiResource::from_gvk_with_plural(&gvk, &plural), namespaced))
}

fn api_err(operation: &str, kind: &str, name: &str, e: impl Into<Cause>) -> BackendError {
    BackendError::Object {
        operation: operation.into(),
        kind: kind.into(),
        name: name.into(),
        cause: e.into(),
    }
}

fn other(operation: impl Into<String>, e: impl Into<Cause>) -> BackendError {
    BackendError::Other {
        operation: operation.into(),
        cause: e.into(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubeCluster {
    /// Connects, and detects what the target can do.
    pub fn new(
        rt: Handle,
        client: Client,
        prober: Box<dyn Prober>,
        opts: KubeOptions,
        target: String,
        implementation: String,
        mut caps: Capabilities,
    ) -> Result<KubeCluster, BackendError> {
        let version = rt.block_on(client.apiserver_version()).map_err(|e| {
            other(
                "reading the API server version (is the cluster reachable?)",
                e,
            )
        })?;
        for kind in [
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy",
        ] {
            let (ar, _) = resource_of(kind).expect("known kind");
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            match rt.block_on(api.list(&ListParams::default().limit(1))) {
                Ok(_) => {
                    caps.kinds.insert(kind.to_string());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(other(
                        format!("checking whether the cluster serves {kind}"),
                        e,
                    ));
                }
            }
        }
        caps.kinds.insert("NetworkPolicy".into());
        let (runtime, container_runtime) = rt.block_on(node_runtime(&client));
        let nodes = rt.block_on(schedulable_nodes(&client));
        let placement = match (nodes.len(), opts.placement) {
            (0 | 1, _) => format!(
                "{} ({} schedulable node: every pair is same-node)",
                opts.placement.as_str(),
                nodes.len()
            ),
            (n, p) => format!("{} over {n} nodes", p.as_str()),
        };
        let enforcer = match opts.enforcer.clone() {
            Some(e) => e,
            None => rt.block_on(enforcer_daemonset(&client)),
        };
        // Nobody named the implementation, but the bundled enforcer's DaemonSet is there.
        let implementation = if implementation == "unknown" && enforcer.starts_with("daemonset") {
            "netpol-enforcer (DaemonSet)".to_string()
        } else {
            implementation
        };
        Ok(KubeCluster {
            info: TargetInfo {
                target,
                kubernetes_version: version.git_version,
                implementation,
                prober: String::new(),
                runtime,
                container_runtime,
                enforcer,
                execs: 0,
                connect_p999: None,
                placement,
            },
            leases: lease::Leases::new(client.clone(), &opts.run_id),
            rt,
            client,
            prober,
            opts,
            caps,
            nodes,
            path: crate::probe::netns::NetnsProber::new(32),
            shared: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Announces the run on the cluster (its run lease), so other runs and `cleanup` can tell
    /// its objects from a dead run's.
    pub fn announce(&self) -> Result<(), BackendError> {
        self.rt.block_on(self.leases.announce())
    }

    /// Ends the run's presence on the cluster: releases the lock and deletes its leases.
    pub(super) fn retire_leases(&self) -> Result<(), BackendError> {
        self.rt.block_on(self.leases.retire())
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn dynamic(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>, BackendError> {
        let (ar, namespaced) = resource_of(kind).ok_or_else(|| {
            other(
                format!("using kind {kind}"),
                "not a policy kind this suite knows",
            )
        })?;
        Ok(match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (true, None) => {
                return Err(other(
                    format!("using {kind}"),
                    "a namespaced kind needs a namespace",
                ));
            }
            (false, _) => Api::all_with(self.client.clone(), &ar),
        })
    }
}

/// The nodes pods may be placed on: Ready, not cordoned, Linux, without NoSchedule or
/// NoExecute taints; by name. A cluster that will not list its Nodes gives none, and the
/// scheduler places the pods.
async fn schedulable_nodes(client: &Client) -> Vec<String> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let Ok(list) = api.list(&ListParams::default()).await else {
        return Vec::new();
    };
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            let linux = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/os"))
                .is_none_or(|os| os == "linux");
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = spec
                .taints
                .iter()
                .flatten()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
            linux && ready && !spec.unschedulable.unwrap_or(false) && !tainted
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    names
}

/// The local cluster's emulated nodes report this container runtime.
const EMULATED_RUNTIME: &str = "netpol-local://";

/// How the nodes run pods, from their `containerRuntimeVersion`: (`kubelet` or `emulated`,
/// the distinct runtime versions). A cluster that will not list its Nodes gives `unknown`.
async fn node_runtime(client: &Client) -> (String, String) {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nodes = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => return ("unknown".into(), format!("listing nodes: {e}")),
    };
    let versions: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
        .map(|i| i.container_runtime_version.clone())
        .collect();
    let runtime = if versions.is_empty() {
        "unknown"
    } else if versions.iter().all(|v| v.starts_with(EMULATED_RUNTIME)) {
        "emulated"
    } else {
        "kubelet"
    };
    (
        runtime.into(),
        versions.into_iter().collect::<Vec<_>>().join(", "),
    )
}

/// `daemonset` when the cluster runs the bundled enforcer's DaemonSet (`enforcer/deploy/`,
/// found by its `app.kubernetes.io/name` label) with every pod ready, `daemonset (n/m ready)`
/// when not all are, else `unknown`: policy is then the CNI's own business.
async fn enforcer_daemonset(client: &Client) -> String {
    let api: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::all(client.clone());
    let params = ListParams::default().labels("app.kubernetes.io/name=netpol-enforcer");
    match api.list(&params).await {
        Ok(list) => match list.items.first().and_then(|d| d.status.as_ref()) {
            Some(s) if s.number_ready == s.desired_number_scheduled => "daemonset".into(),
            Some(s) => format!(
                "daemonset ({}/{} ready)",
                s.number_ready, s.desired_number_scheduled
            ),
            None => "unknown".into(),
        },
        Err(e) => format!("unknown (listing DaemonSets: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason,
            "message": format!("networkpolicies \"deny\" {reason}"),
        }))
        .expect("a Status");
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn an_api_failure_keeps_its_status_and_says_what_the_server_said() {
        let conflict = api_err(
            "create",
            "NetworkPolicy",
            "deny",
            api_error(409, "AlreadyExists"),
        );
        let internal = api_err(
            "create",
            "NetworkPolicy",
            "deny",
            api_error(500, "InternalError"),
        );
        assert_eq!(conflict.api_status(), Some(409));
        assert_eq!(internal.api_status(), Some(500));
        let text = conflict.to_string();
        assert!(text.starts_with("create NetworkPolicy deny: "), "{text}");
        assert!(text.contains("AlreadyExists"), "{text}");
        // The cause is in the text once, not again as a source.
        assert_eq!(crate::plan::error_chain(&conflict), text);
    }

    #[test]
    fn a_failure_of_our_own_has_no_api_status() {
        let e = other("deleting namespace x", "still present after 60s");
        assert_eq!(e.api_status(), None);
        assert_eq!(
            e.to_string(),
            "deleting namespace x: still present after 60s"
        );
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = api_err("patch", "NetworkPolicy", "deny", json);
        assert_eq!(e.api_status(), None);
        assert!(e.cause().unwrap().is::<serde_json::Error>());
    }
}
