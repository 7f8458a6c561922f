//! The local cluster: etcd and the Kubernetes control plane on loopback, nodes and pods as
//! network namespaces, one node agent per node.
//!
//! Start with [`cluster`]: [`cluster::up`] brings a cluster up and returns a
//! [`cluster::Cluster`] (kubeconfig, nodes, the external host), [`cluster::down`] tears it
//! down from its state file, [`cluster::status`] reports. Binaries that bring clusters up
//! must call [`maybe_run_role`] first thing in `main`: node agents and the external host are
//! the same executable re-run with a role in the environment.
//!
//! Modules: [`fabric`] (namespaces, bridge, routes), [`pki`] (certificates), [`procs`]
//! (process groups, PID + start time), [`state`] (the state file), [`agent`] (the node
//! agent), [`probe`] (connecting from inside a namespace).

pub mod agent;
pub mod agent_config;
pub mod cluster;
pub mod fabric;
pub mod pki;
pub mod probe;
pub mod procs;
pub mod state;

use std::process::ExitCode;

use agent_config::{AgentConfig, ROLE_ENV, ROLE_NODE_AGENT};

/// Runs the role named by `NETPOL_LOCAL_ROLE`, if any, and returns its exit code; `None`
/// when the variable is unset (the caller goes on with its own `main`).
///
/// Roles: `node-agent` (config JSON in `NETPOL_LOCAL_AGENT_CONFIG`) and `external-host`
/// (serves TCP 80 and TCP+UDP 53 in the namespace named by
/// `NETPOL_LOCAL_EXTERNAL_NETNS` until killed).
pub fn maybe_run_role() -> Option<ExitCode> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let result = match role.as_str() {
        ROLE_NODE_AGENT => AgentConfig::from_env()
            .map_err(anyhow::Error::from)
            .and_then(run_agent),
        cluster::ROLE_EXTERNAL_HOST => run_external_host(),
        other => Err(anyhow::anyhow!(
            "unknown {ROLE_ENV}={other:?} (expected {ROLE_NODE_AGENT} or {})",
            cluster::ROLE_EXTERNAL_HOST
        )),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netpol-local {role}: {e:#}");
            ExitCode::FAILURE
        }
    })
}

fn run_agent(cfg: AgentConfig) -> anyhow::Result<()> {
    agent::run(cfg)
}

/// The external host: the "internet" of egress cases. Serves until the process is killed.
fn run_external_host() -> anyhow::Result<()> {
    use agent::servers::ServerSpec;
    use probe::Protocol;
    let netns = std::env::var(cluster::EXTERNAL_NETNS_ENV)
        .map_err(|e| anyhow::anyhow!("reading ${}: {e}", cluster::EXTERNAL_NETNS_ENV))?;
    let specs = [
        ServerSpec::hostname(Protocol::Tcp, 80),
        ServerSpec::hostname(Protocol::Tcp, 53),
        ServerSpec::hostname(Protocol::Udp, 53),
    ];
    let servers = agent::servers::spawn_in(std::path::Path::new(&netns), "npc-ext", &specs)?;
    anyhow::ensure!(
        servers.all_up(),
        "external host servers failed to bind: {:?}",
        servers.statuses()
    );
    loop {
        // Killed by `down` (SIGTERM); nothing to do until then.
        std::thread::park();
    }
}
