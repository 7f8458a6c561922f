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

/// A transport protocol as the Kubernetes API spells it (`TCP`, `UDP`, `SCTP`): in policy ports,
/// in the suite's probe matrix and in the local cluster's probes and servers.
///
/// Defaults to `TCP`, as the upstream port types do. Parsing ([`FromStr`](std::str::FromStr))
/// takes any case; [`Display`](std::fmt::Display) writes the Kubernetes spelling.
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
    PartialOrd,
    Ord,
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

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case spelling (agnhost's `--protocol` flag, object names).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is none of TCP, UDP, SCTP (the name as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProtocol(pub String);

impl std::fmt::Display for UnknownProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown protocol {:?} (expected TCP, UDP or SCTP)",
            self.0
        )
    }
}

impl std::error::Error for UnknownProtocol {}

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Protocol, UnknownProtocol};

    #[test]
    fn protocol_parses_any_case_and_writes_the_kubernetes_spelling() {
        for (text, proto, lower) in [
            ("tcp", Protocol::Tcp, "tcp"),
            ("UDP", Protocol::Udp, "udp"),
            ("Sctp", Protocol::Sctp, "sctp"),
        ] {
            let parsed: Protocol = text.parse().unwrap();
            assert_eq!(parsed, proto);
            assert_eq!(parsed.to_string(), text.to_ascii_uppercase());
            assert_eq!(parsed.lower(), lower);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{}\"", parsed.as_str()));
            assert_eq!(serde_json::from_str::<Protocol>(&json).unwrap(), parsed);
        }
        let err = "icmp".parse::<Protocol>().unwrap_err();
        assert_eq!(err, UnknownProtocol("icmp".into()));
        assert_eq!(
            err.to_string(),
            "unknown protocol \"icmp\" (expected TCP, UDP or SCTP)"
        );
        assert_eq!(Protocol::default(), Protocol::Tcp);
    }
}
