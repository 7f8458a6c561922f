//! `policy.networking.k8s.io/v1alpha1`: AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (network-policy-api v0.1.7).
//!
//! Semantics in one paragraph: an AdminNetworkPolicy (ANP) selects subject pods and applies its
//! ingress/egress rules in list order; policies are ordered by `priority` (lower first). `Allow`
//! and `Deny` are final, `Pass` hands the connection to NetworkPolicy and then to the
//! BaselineAdminNetworkPolicy (BANP, a singleton named `default`), whose rules are `Allow` or
//! `Deny`. Host-network pods are never subjects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::Protocol;

/// Spec of an AdminNetworkPolicy: a prioritised set of rules for the selected subject.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    singular = "adminnetworkpolicy",
    shortname = "anp",
    status = "AdminNetworkPolicyStatus",
    derive = "PartialEq",
    annotation("policy.networking.k8s.io/bundle-version", "v0.1.7"),
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-sigs/network-policy-api/pull/30"
    ),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "AdminNetworkPolicy: cluster-scoped, prioritised network policy evaluated before NetworkPolicy."
)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// Precedence among AdminNetworkPolicies: 0..=1000, lower value evaluated first.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The pods this policy applies to.
    pub subject: AdminNetworkPolicySubject,
    /// Ingress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<AdminNetworkPolicyIngressRule>,
    /// Egress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<AdminNetworkPolicyEgressRule>,
}

/// Status of an AdminNetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AdminNetworkPolicyStatus {
    /// Conditions reported by implementations.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Spec of the BaselineAdminNetworkPolicy, the cluster's single default (`default`) policy
/// evaluated after NetworkPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "BaselineAdminNetworkPolicy",
    plural = "baselineadminnetworkpolicies",
    singular = "baselineadminnetworkpolicy",
    shortname = "banp",
    status = "BaselineAdminNetworkPolicyStatus",
    derive = "PartialEq",
    annotation("policy.networking.k8s.io/bundle-version", "v0.1.7"),
    annotation("api-approved.kubernetes.io", "https://github.com/kubernetes-sigs/network-policy-api/pull/30"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name == 'default'")
        .message("Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster"),
    doc = "BaselineAdminNetworkPolicy: the cluster-wide default policy, singleton named `default`."
)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicySpec {
    /// The pods this policy applies to.
    pub subject: AdminNetworkPolicySubject,
    /// Ingress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<BaselineAdminNetworkPolicyIngressRule>,
    /// Egress rules, evaluated in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<BaselineAdminNetworkPolicyEgressRule>,
}

/// Status of a BaselineAdminNetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BaselineAdminNetworkPolicyStatus {
    /// Conditions reported by implementations.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The subject of an (A|BA)NP: exactly one of `namespaces` or `pods`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicySubject {
    /// All pods in the namespaces selected by this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by a namespace and a pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods selected by both a namespace selector and a pod selector (empty selector = all).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Selects namespaces by their labels.
    pub namespace_selector: LabelSelector,
    /// Selects pods by their labels within the selected namespaces.
    pub pod_selector: LabelSelector,
}

/// Action of an AdminNetworkPolicy rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AdminNetworkPolicyRuleAction {
    /// Allow the connection, skipping NetworkPolicy and the baseline.
    Allow,
    /// Drop the connection.
    Deny,
    /// Skip the remaining admin rules; NetworkPolicy and then the baseline decide.
    Pass,
}

/// Action of a BaselineAdminNetworkPolicy rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BaselineAdminNetworkPolicyRuleAction {
    /// Allow the connection.
    Allow,
    /// Drop the connection.
    Deny,
}

/// An ANP ingress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyIngressRule {
    /// Optional rule name (at most 100 characters), reported in verdict reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: AdminNetworkPolicyRuleAction,
    /// Sources this rule matches (any of them).
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports on the subject; absent = all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An ANP egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyEgressRule {
    /// Optional rule name (at most 100 characters), reported in verdict reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: AdminNetworkPolicyRuleAction,
    /// Destinations this rule matches (any of them).
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<AdminNetworkPolicyEgressPeer>,
    /// Destination ports; absent = all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// A BANP ingress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyIngressRule {
    /// Optional rule name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// Sources this rule matches (any of them).
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports on the subject; absent = all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// A BANP egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyEgressRule {
    /// Optional rule name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What to do with matching connections.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// Destinations this rule matches (any of them).
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<BaselineAdminNetworkPolicyEgressPeer>,
    /// Destination ports; absent = all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An ingress peer: exactly one of `namespaces` or `pods`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyIngressPeer {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// An ANP egress peer: exactly one of `namespaces`, `pods`, `nodes`, `networks`, `domainNames`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyEgressPeer {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes selected by labels; matches the addresses in `node.status.addresses` (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (IPv4 or IPv6); also match pod and node addresses inside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 43)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(c, isCIDR(c))", "message": "every network must be a CIDR"}]))]
    pub networks: Option<Vec<String>>,
    /// Fully qualified domain names, `*.` prefix allowed (experimental; `Allow` rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 253)))]
    pub domain_names: Option<Vec<String>>,
}

/// A BANP egress peer: exactly one of `namespaces`, `pods`, `nodes`, `networks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct BaselineAdminNetworkPolicyEgressPeer {
    /// All pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes selected by labels; matches the addresses in `node.status.addresses` (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 43)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(c, isCIDR(c))", "message": "every network must be a CIDR"}]))]
    pub networks: Option<Vec<String>>,
}

/// A port selector: exactly one of `portNumber`, `namedPort`, `portRange`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyPort {
    /// One port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<Port>,
    /// A container port name, resolved on the destination pod (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    /// An inclusive range of ports and a protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// One destination port and its protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Protocol; defaults to TCP.
    #[serde(default)]
    pub protocol: Protocol,
    /// Port number, 1..=65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// An inclusive port range (`start < end`) and its protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.start < self.end", "message": "Start port must be less than End port"}]))]
pub struct PortRange {
    /// Protocol; defaults to TCP.
    #[serde(default)]
    pub protocol: Protocol,
    /// First port, 1..=65535.
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    /// Last port (inclusive), 1..=65535.
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}
