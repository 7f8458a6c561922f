//! The agent's Node: registration, the Lease in `kube-node-lease`, and the Ready
//! condition's heartbeat, so the node lifecycle controller keeps the node Ready and the
//! scheduler places pods on it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::AgentConfig;

/// Field manager the agent writes with.
pub const FIELD_MANAGER: &str = "netpol-local-agent";
/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often the Lease is renewed (the kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration written to the Lease (the kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the node's conditions get a fresh heartbeat.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(20);

/// Errors talking to the API server about the Node or its Lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or updating the Node object failed.
    #[error("registering node {node} failed")]
    Register {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Writing the Node's status failed.
    #[error("updating the status of node {node} failed")]
    Status {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Renewing the Lease failed.
    #[error("renewing the lease of node {node} failed")]
    Lease {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Kubernetes name of this machine's architecture.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node object the agent applies (metadata and spec).
pub fn node_manifest(cfg: &AgentConfig) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": {
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
                "kubernetes.io/hostname": cfg.node_name,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch(),
            },
        },
        "spec": {
            "podCIDR": cfg.pod_cidr.to_string(),
            "podCIDRs": [cfg.pod_cidr.to_string()],
        },
    })
}

/// The node status the agent writes: addresses, capacity, Ready and the pressure
/// conditions with `now` as heartbeat and `since` (when the agent registered) as their
/// transition time, and node info.
pub fn node_status(cfg: &AgentConfig, now: Timestamp, since: Timestamp) -> Value {
    let time = serde_json::to_value(Time(now)).expect("Time serializes");
    let since = serde_json::to_value(Time(since)).expect("Time serializes");
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": time,
            "lastTransitionTime": since,
        })
    };
    let resources =
        json!({"cpu": "8", "memory": "32Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": cfg.node_ip.to_string()},
                {"type": "Hostname", "address": cfg.node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "netpol-local node agent is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                condition("NetworkUnavailable", "False", "RouteCreated", "pods are wired by the node agent"),
            ],
            "nodeInfo": {
                "architecture": arch(),
                "bootID": "",
                "containerRuntimeVersion": "netpol-local://0.1.0",
                "kernelVersion": kernel,
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.37.2-netpol-local",
                "machineID": cfg.node_name,
                "operatingSystem": "linux",
                "osImage": "netpol-local network namespaces",
                "systemUUID": cfg.node_name,
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }
    })
}

/// The node's Lease as applied at `now`.
pub fn lease_manifest(cfg: &AgentConfig, now: Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": cfg.node_name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": cfg.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": serde_json::to_value(MicroTime(now)).expect("MicroTime serializes"),
        },
    })
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Creates or updates the Node and writes its status; `since` is when this agent came
/// up (the conditions' transition time).
pub async fn register(client: &kube::Client, cfg: &AgentConfig, since: Timestamp) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(&cfg.node_name, &apply(), &Patch::Apply(node_manifest(cfg)))
        .await
        .map_err(|source| Error::Register {
            node: cfg.node_name.clone(),
            source,
        })?;
    renew_lease(client, cfg).await?;
    write_status(client, cfg, since).await
}

/// Writes the node status with a fresh heartbeat.
pub async fn write_status(
    client: &kube::Client,
    cfg: &AgentConfig,
    since: Timestamp,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(node_status(cfg, Timestamp::now(), since)),
        )
        .await
        .map(drop)
        .map_err(|source| Error::Status {
            node: cfg.node_name.clone(),
            source,
        })
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &kube::Client, cfg: &AgentConfig) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    leases
        .patch(
            &cfg.node_name,
            &apply(),
            &Patch::Apply(lease_manifest(cfg, Timestamp::now())),
        )
        .await
        .map(drop)
        .map_err(|source| Error::Lease {
            node: cfg.node_name.clone(),
            source,
        })
}

/// Renews the Lease every [`LEASE_RENEW`] and refreshes the status every
/// [`STATUS_HEARTBEAT`], forever; failures are logged and retried on the next tick, and a
/// deleted Node is registered again.
pub async fn keep_alive(client: kube::Client, cfg: AgentConfig, since: Timestamp) {
    let mut lease = tokio::time::interval(LEASE_RENEW);
    let mut status = tokio::time::interval(STATUS_HEARTBEAT);
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = renew_lease(&client, &cfg).await {
                    tracing::warn!(error = %super::error_chain(&e), "lease renewal failed");
                }
            }
            _ = status.tick() => match write_status(&client, &cfg, since).await {
                Ok(()) => {}
                // Someone deleted the Node: register it again, as the kubelet does.
                Err(Error::Status { source: kube::Error::Api(s), .. }) if s.code == 404 => {
                    tracing::warn!(node = %cfg.node_name, "node object deleted; registering again");
                    if let Err(e) = register(&client, &cfg, since).await {
                        tracing::warn!(error = %super::error_chain(&e), "re-registering the node failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %super::error_chain(&e), "node status heartbeat failed");
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> AgentConfig {
        AgentConfig {
            node_name: "npc-node-1".into(),
            node_netns: "/run/netns/npc-node-1".into(),
            node_ip: Ipv4Addr::new(172, 31, 250, 11),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            kubeconfig: "/tmp/kubeconfig".into(),
            state_dir: "/tmp/state".into(),
        }
    }

    #[test]
    fn node_manifest_deserializes_as_a_node_with_labels_and_cidr() {
        let node: Node = serde_json::from_value(node_manifest(&cfg())).unwrap();
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/hostname"], "npc-node-1");
        assert_eq!(
            node.spec.unwrap().pod_cidr.as_deref(),
            Some("10.244.1.0/24")
        );
    }

    #[test]
    fn node_status_is_ready_with_internal_ip_and_capacity() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let since = Timestamp::from_second(1_799_999_000).unwrap();
        let v = node_status(&cfg(), now, since);
        let status: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(v["status"].clone()).unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        assert_eq!(ready.last_transition_time, Some(Time(since)));
        let addrs = status.addresses.unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "172.31.250.11")
        );
        assert!(status.allocatable.unwrap().contains_key("pods"));
    }

    #[test]
    fn lease_manifest_names_the_holder_and_renew_time() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let lease: Lease = serde_json::from_value(lease_manifest(&cfg(), now)).unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("npc-node-1"));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(lease.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
    }
}
