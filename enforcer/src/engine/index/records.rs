//! The trimmed records a snapshot keeps of pods and nodes: what verdicts need and nothing more.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::engine::policy::ContainerPort;
use crate::engine::selector::Labels;
use crate::flow::Protocol;

/// What the store keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Namespace name.
    pub namespace: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// Labels.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Phase Succeeded or Failed: its IPs may already belong to another pod.
    pub finished: bool,
    /// Container ports (named ones matter; all are kept small).
    pub ports: Vec<ContainerPort>,
}

impl PodRecord {
    /// Trims a pod to what verdicts need.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        let spec = pod.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    _ => return None,
                };
                Some(ContainerPort {
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol,
                })
            })
            .collect();
        PodRecord {
            namespace: pod
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default")
                .into(),
            name: pod.metadata.name.as_deref().unwrap_or_default().into(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            ports,
        }
    }
}

/// What the store keeps of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node name.
    pub name: Arc<str>,
    /// Labels.
    pub labels: Labels,
    /// Addresses from `status.addresses` that are IPs.
    pub addresses: Vec<IpAddr>,
    /// The node's pod ranges (`spec.podCIDRs`, or `spec.podCIDR`): addresses its pods get.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeRecord {
    /// Trims a node to its name, labels, IP addresses and pod ranges.
    pub fn from_node(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut pod_cidrs: Vec<IpNet> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
            .filter_map(|c| c.parse::<IpNet>().ok())
            .map(|c| c.trunc())
            .collect();
        pod_cidrs.sort_unstable();
        pod_cidrs.dedup();
        NodeRecord {
            pod_cidrs,
            name: node.metadata.name.as_deref().unwrap_or_default().into(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        }
    }
}
