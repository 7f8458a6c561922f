//! `policy.networking.k8s.io/v1alpha2`: ClusterNetworkPolicy (network-policy-api v0.2.0).
//!
//! One kind replaces the v1alpha1 pair: `tier: Admin` policies are evaluated before
//! NetworkPolicy, `tier: Baseline` policies after it; inside a tier, policies are ordered by
//! `priority` (lower first) and rules by list order. `Accept` and `Deny` are final, `Pass` skips
//! the rest of the tier.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::v1alpha1::NamespacedPod;

/// Spec of a ClusterNetworkPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    singular = "clusternetworkpolicy",
    shortname = "cnp",
    status = "ClusterNetworkPolicyStatus",
    derive = "PartialEq",
    annotation("policy.networking.k8s.io/bundle-version", "v0.2.0"),
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-sigs/network-policy-api/pull/30"
    ),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "ClusterNetworkPolicy: cluster-scoped network policy in the Admin or Baseline tier."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// The tier: `Admin` (before NetworkPolicy) or `Baseline` (after it).
    pub tier: Tier,
    /// Precedence inside the tier: 0..=1000, lower value evaluated first.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The pods this policy applies to.
    pub subject: ClusterNetworkPolicySubject,
    /// Ingress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub ingress: Vec<ClusterNetworkPolicyIngressRule>,
    /// Egress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub egress: Vec<ClusterNetworkPolicyEgressRule>,
}

/// Status of a ClusterNetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClusterNetworkPolicyStatus {
    /// Conditions reported by implementations.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The tier a ClusterNetworkPolicy belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Tier {
    /// Evaluated before NetworkPolicy.
    Admin,
    /// Evaluated after NetworkPolicy.
    Baseline,
}

/// Action of a ClusterNetworkPolicy rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ClusterNetworkPolicyRuleAction {
    /// Accept the connection (final for this direction).
    Accept,
    /// Drop the connection.
    Deny,
    /// Skip the remaining rules of this tier.
    Pass,
}

/// The subject: exactly one of `namespaces` or `pods`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ClusterNetworkPolicySubject {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// An ingress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressRule {
    /// Optional rule name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: ClusterNetworkPolicyRuleAction,
    /// Sources this rule matches (any of them).
    #[schemars(length(min = 1, max = 25))]
    pub from: Vec<ClusterNetworkPolicyIngressPeer>,
    /// Destination protocols/ports; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// An egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyEgressRule {
    /// Optional rule name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: ClusterNetworkPolicyRuleAction,
    /// Destinations this rule matches (any of them).
    #[schemars(length(min = 1, max = 25))]
    pub to: Vec<ClusterNetworkPolicyEgressPeer>,
    /// Destination protocols/ports; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// An ingress peer: exactly one of `namespaces` or `pods`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ClusterNetworkPolicyIngressPeer {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// An egress peer: exactly one of `namespaces`, `pods`, `nodes`, `networks`, `domainNames`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ClusterNetworkPolicyEgressPeer {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes selected by labels; matches node addresses (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (IPv4 or IPv6); also match in-cluster addresses inside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 43)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(c, isCIDR(c))", "message": "every network must be a CIDR"}]))]
    pub networks: Option<Vec<String>>,
    /// Fully qualified domain names, `*.` prefix allowed (experimental; `Accept` rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 253)))]
    pub domain_names: Option<Vec<String>>,
}

/// A protocol match: exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ClusterNetworkPolicyProtocol {
    /// TCP, optionally restricted to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    /// UDP, optionally restricted to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    /// SCTP, optionally restricted to a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    /// A container port name on the destination pod (its protocol and number must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// Ports of one protocol. The upstream CRD requires at least one property.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct ProtocolPorts {
    /// The destination port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A destination port: exactly one of `number` or `range`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Port {
    /// One port, 1..=65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub number: Option<i32>,
    /// An inclusive range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range with `start < end`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.start < self.end", "message": "start port must be smaller than end port"}]))]
pub struct PortRange {
    /// First port, 1..=65535.
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    /// Last port (inclusive), 1..=65535.
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}
