//! Policies compiled from their API objects into the form [`super::decide`] evaluates.
//!
//! Compiling happens once, when the writer applies an object; each compiled policy is shared by
//! every snapshot until the object changes. Everything that can be resolved without knowing the
//! pods (selectors, CIDRs, port ranges, defaults) is resolved here; named ports are kept as names
//! because they resolve on the destination pod of each connection.

use std::sync::Arc;

use ipnet::IpNet;

use super::selector::Selector;
use crate::flow::{Flow, Protocol};

mod compile;

pub use compile::{compile_anp, compile_banp, compile_cnp, compile_netpol};

/// Which way a rule looks: ingress rules judge sources, egress rules destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic arriving at the subject pod.
    Ingress,
    /// Traffic leaving the subject pod.
    Egress,
}

impl Direction {
    /// Index for per-direction arrays.
    pub(crate) fn idx(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The API kind a compiled policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
    ClusterNetworkPolicy,
}

impl PolicyKind {
    /// The kind's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }
}

/// Names a policy object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// API kind.
    pub kind: PolicyKind,
    /// Namespace (NetworkPolicy only).
    pub namespace: Option<Arc<str>>,
    /// Object name.
    pub name: Arc<str>,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// A range of destination ports, optionally of one protocol, or a named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// `start..=end` of `protocol` (any protocol when `None`).
    Range {
        /// Protocol the range applies to.
        protocol: Option<Protocol>,
        /// First port.
        start: u16,
        /// Last port (inclusive).
        end: u16,
    },
    /// A container port name on the destination pod; the container port's number and protocol
    /// must equal the connection's, and `protocol` (if set) must too.
    Named {
        /// The container port name.
        name: String,
        /// The protocol the rule requires, if it names one.
        protocol: Option<Protocol>,
    },
    /// Matches nothing (an unparseable port in the API object).
    Nothing,
}

/// The destination ports a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of every protocol (no `ports`/`protocols` given).
    Any,
    /// Any of these.
    List(Vec<PortSpec>),
}

/// A container port of a pod, as named ports resolve against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl PortMatch {
    /// Whether the connection's destination port matches. `dst_ports` are the container ports of
    /// the destination pod (empty when the destination is not a pod).
    pub fn matches(&self, flow: &Flow, dst_ports: &[ContainerPort]) -> bool {
        match self {
            PortMatch::Any => true,
            PortMatch::List(specs) => specs.iter().any(|s| match s {
                PortSpec::Range {
                    protocol,
                    start,
                    end,
                } => {
                    protocol.is_none_or(|p| p == flow.protocol)
                        && (*start..=*end).contains(&flow.dst_port)
                }
                PortSpec::Named { name, protocol } => {
                    protocol.is_none_or(|p| p == flow.protocol)
                        && dst_ports.iter().any(|cp| {
                            cp.name.as_deref() == Some(name.as_str())
                                && cp.port == flow.dst_port
                                && cp.protocol == flow.protocol
                        })
                }
                PortSpec::Nothing => false,
            }),
        }
    }
}

/// Which namespaces a pod peer may live in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceMatch {
    /// Only the named namespace (a NetworkPolicy `podSelector`-only peer: the policy's own).
    Named(Arc<str>),
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// The other end of a connection, as a rule sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Everything, including addresses outside the cluster (an empty NetworkPolicy `from`/`to`).
    All,
    /// Non-host-network pods in matching namespaces whose labels match `pods`.
    Pods {
        /// Namespace constraint.
        namespaces: NamespaceMatch,
        /// Pod label selector.
        pods: Selector,
    },
    /// Addresses of nodes whose labels match.
    Nodes(Selector),
    /// Addresses inside `cidr` and outside every `except`.
    Network {
        /// The block.
        cidr: IpNet,
        /// Holes in the block.
        except: Vec<IpNet>,
    },
    /// Matches nothing: `domainNames` (not implemented; an Accept rule then matches nothing,
    /// which is the fail-closed reading) or a peer that failed to compile.
    Nothing,
}

/// What an admin or baseline rule does with a matching connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept (v1alpha1 `Allow`, v1alpha2 `Accept`).
    Accept,
    /// Drop.
    Deny,
    /// Skip the rest of the tier.
    Pass,
}

impl Action {
    /// Name as v1alpha2 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// One rule of an admin or baseline policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRule {
    /// Rule name, or `#<index>` when the rule has none.
    pub name: Arc<str>,
    /// The action.
    pub action: Action,
    /// Peers (any of them).
    pub peers: Vec<Peer>,
    /// Destination ports.
    pub ports: PortMatch,
}

/// The subject of an admin or baseline policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Every non-host-network pod in matching namespaces.
    Namespaces(Selector),
    /// Pods matching both selectors.
    Pods {
        /// Namespace selector.
        namespaces: Selector,
        /// Pod selector.
        pods: Selector,
    },
}

impl Subject {
    /// The namespace selector part.
    pub fn namespaces(&self) -> &Selector {
        match self {
            Subject::Namespaces(s) => s,
            Subject::Pods { namespaces, .. } => namespaces,
        }
    }

    /// The pod selector part (everything for `Namespaces`).
    pub fn pods(&self) -> Option<&Selector> {
        match self {
            Subject::Namespaces(_) => None,
            Subject::Pods { pods, .. } => Some(pods),
        }
    }
}

/// Whether a cluster policy sits before or after NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterTier {
    /// Before NetworkPolicy (ANP, CNP `tier: Admin`).
    Admin,
    /// After NetworkPolicy (BANP, CNP `tier: Baseline`).
    Baseline,
}

/// The priority a BaselineAdminNetworkPolicy sorts at among Baseline-tier ClusterNetworkPolicies:
/// the value the project's ANP/BANP → CNP mapping gives BANP `default`.
pub const BANP_PRIORITY: i32 = 10;

/// An AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// The object.
    pub id: PolicyRef,
    /// Tier.
    pub tier: ClusterTier,
    /// Priority inside the tier (lower first).
    pub priority: i32,
    /// Subject.
    pub subject: Subject,
    /// Rules per direction (`[ingress, egress]`), in order.
    pub rules: [Vec<ClusterRule>; 2],
}

impl ClusterPolicy {
    /// Total order of evaluation inside a tier: priority, then name, then kind.
    pub fn order_key(&self) -> (i32, &str, PolicyKind) {
        (self.priority, &self.id.name, self.id.kind)
    }
}

/// One ingress or egress rule of a NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetpolRule {
    /// Peers (any of them).
    pub peers: Vec<Peer>,
    /// Ports.
    pub ports: PortMatch,
}

/// A NetworkPolicy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netpol {
    /// The object.
    pub id: PolicyRef,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Selected pods inside the namespace.
    pub pod_selector: Selector,
    /// Rules per direction; `None` when `policyTypes` does not include the direction (the policy
    /// then neither isolates nor allows in that direction).
    pub rules: [Option<Vec<NetpolRule>>; 2],
}
