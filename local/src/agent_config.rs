//! The configuration a node agent is started with.
//!
//! The cluster (`crate::cluster`) writes one [`AgentConfig`] per node as JSON into the
//! environment variable [`AGENT_CONFIG_ENV`] and re-executes the current binary with
//! [`ROLE_ENV`]`=node-agent`; [`crate::maybe_run_role`] reads it back and runs the agent.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Environment variable that selects a role for a re-executed binary (`node-agent`).
pub const ROLE_ENV: &str = "NETPOL_LOCAL_ROLE";
/// The value of [`ROLE_ENV`] that runs the node agent.
pub const ROLE_NODE_AGENT: &str = "node-agent";
/// Environment variable that carries the agent's [`AgentConfig`] as JSON.
pub const AGENT_CONFIG_ENV: &str = "NETPOL_LOCAL_AGENT_CONFIG";

/// Everything one node agent needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Name of the Kubernetes Node object the agent registers (e.g. `npc-node-0`).
    pub node_name: String,
    /// Path of the node's network namespace (e.g. `/run/netns/npc-node-0`).
    pub node_netns: PathBuf,
    /// The node's address on the fabric (its `InternalIP`).
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR (e.g. `10.244.0.0/24`); the agent sets it on the Node.
    pub pod_cidr: ipnet::Ipv4Net,
    /// The pod-side default gateway: the node side of every pod veth (`169.254.1.1`).
    pub gateway: Ipv4Addr,
    /// Kubeconfig the agent talks to the apiserver with.
    pub kubeconfig: PathBuf,
    /// Directory for the agent's own records (pods it created go to `state_dir/pods/*.json`).
    pub state_dir: PathBuf,
}

impl AgentConfig {
    /// Reads the configuration from [`AGENT_CONFIG_ENV`].
    pub fn from_env() -> Result<Self, AgentConfigError> {
        let raw = std::env::var(AGENT_CONFIG_ENV).map_err(|source| AgentConfigError::Missing {
            var: AGENT_CONFIG_ENV,
            source,
        })?;
        serde_json::from_str(&raw).map_err(|source| AgentConfigError::Parse { source })
    }

    /// The configuration as the JSON string put into [`AGENT_CONFIG_ENV`].
    pub fn to_env_value(&self) -> String {
        serde_json::to_string(self).expect("AgentConfig serializes to JSON")
    }
}

/// Errors reading an [`AgentConfig`].
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// The environment variable is unset or not UTF-8.
    #[error("reading agent configuration from ${var} failed")]
    Missing {
        /// The variable that was read.
        var: &'static str,
        /// Why it could not be read.
        #[source]
        source: std::env::VarError,
    },
    /// The variable does not hold a valid `AgentConfig` JSON document.
    #[error("parsing the agent configuration JSON failed")]
    Parse {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let cfg = AgentConfig {
            node_name: "npc-node-1".into(),
            node_netns: "/run/netns/npc-node-1".into(),
            node_ip: Ipv4Addr::new(172, 31, 250, 11),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            kubeconfig: "/run/netpol-conformance/local/kubeconfig".into(),
            state_dir: "/run/netpol-conformance/local/nodes/npc-node-1".into(),
        };
        let json = cfg.to_env_value();
        assert!(json.contains("\"pod_cidr\":\"10.244.1.0/24\""), "{json}");
        let back: AgentConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
