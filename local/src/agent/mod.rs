//! The node agent: the kubelet stand-in of the local cluster.
//!
//! [`run`] registers the Node, keeps its Lease and Ready condition fresh, and realizes
//! every pod bound to the node as a network namespace wired to the node namespace
//! ([`netns`]), running the servers its agnhost containers ask for ([`agnhost`],
//! [`servers`]) and reporting pod status back.

pub mod netns;
pub mod servers;

pub use crate::agent_config::AgentConfig;

/// Renders an error with all its causes, `outer: inner: innermost`.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
