//! The local cluster: etcd and the Kubernetes control plane on loopback, nodes and pods as
//! network namespaces, one node agent per node.

pub mod agent;
pub mod agent_config;
pub mod probe;
