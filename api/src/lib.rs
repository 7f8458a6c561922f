//! Types of the network-policy-api group `policy.networking.k8s.io`, written by hand.
//!
//! - [`v1alpha1`]: `AdminNetworkPolicy` and `BaselineAdminNetworkPolicy` as released in
//!   network-policy-api v0.1.7 (the last release of that API version).
//! - [`v1alpha2`]: `ClusterNetworkPolicy` as released in v0.2.0 (tiers `Admin` and `Baseline`).
//!
//! All kinds are cluster-scoped and carry a status with `conditions`. [`crds`] returns the three
//! CustomResourceDefinitions generated from these types; the schemas are structural (every node
//! has a type), "exactly one of" unions are expressed with `minProperties`/`maxProperties: 1`,
//! and the rules the upstream CRDs state in CEL that matter for safety (BANP singleton name,
//! CIDR syntax, port range order) are carried as `x-kubernetes-validations`.
//!
//! Start with [`v1alpha2::ClusterNetworkPolicySpec`] for the current API, or
//! [`v1alpha1::AdminNetworkPolicySpec`] for the older pair.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod v1alpha1;
pub mod v1alpha2;

/// The API group of every kind in this crate.
pub const GROUP: &str = "policy.networking.k8s.io";

/// The network-policy-api release whose v1alpha1 types this crate mirrors.
pub const V1ALPHA1_BUNDLE_VERSION: &str = "v0.1.7";

/// The network-policy-api release whose v1alpha2 types this crate mirrors.
pub const V1ALPHA2_BUNDLE_VERSION: &str = "v0.2.0";

/// The CRDs of all three kinds: AdminNetworkPolicy, BaselineAdminNetworkPolicy (v1alpha1) and
/// ClusterNetworkPolicy (v1alpha2), each with one served, stored version and a status subresource.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        v1alpha1::AdminNetworkPolicy::crd(),
        v1alpha1::BaselineAdminNetworkPolicy::crd(),
        v1alpha2::ClusterNetworkPolicy::crd(),
    ]
}

/// A transport protocol as the Kubernetes API spells it (`TCP`, `UDP`, `SCTP`).
///
/// Defaults to `TCP`, as the upstream port types do.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}
