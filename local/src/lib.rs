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
//! agent), [`probe`] (connecting from inside a namespace), [`kubelet`] (real nodes: kubelet,
//! containerd and kube-proxy per node).

/// The pinned versions hack/control-plane.sh caches by default.
pub const K8S_VERSION: &str = "v1.37.2";
/// The pinned etcd version.
pub const ETCD_VERSION: &str = "v3.6.16";

pub mod agent;
pub mod agent_config;
pub mod cluster;
pub mod fabric;
pub mod kubelet;
pub mod pki;
pub mod probe;
pub mod procs;
pub mod state;

use std::process::ExitCode;

use agent_config::{AgentConfig, ROLE_ENV, ROLE_NODE_AGENT};

/// Runs the role named by `NETPOL_LOCAL_ROLE`, if any, and returns its exit code; `None`
/// when the variable is unset (the caller goes on with its own `main`).
///
/// Roles: `node-agent` (config JSON in `NETPOL_LOCAL_AGENT_CONFIG`), `external-host`
/// (serves TCP 80 and TCP+UDP 53 in the namespace named by
/// `NETPOL_LOCAL_EXTERNAL_NETNS` until killed), and for real nodes `ns-exec`
/// ([`kubelet::nsexec`]) and `fabric-proxy` ([`kubelet::proxy`]).
pub fn maybe_run_role() -> Option<ExitCode> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let result = match role.as_str() {
        ROLE_NODE_AGENT => AgentConfig::from_env()
            .map_err(anyhow::Error::from)
            .and_then(run_agent),
        cluster::ROLE_EXTERNAL_HOST => run_external_host(),
        kubelet::nsexec::ROLE_NS_EXEC => kubelet::nsexec::run(),
        kubelet::proxy::ROLE_FABRIC_PROXY => kubelet::proxy::run(),
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

/// Renders an error with all its causes, `outer: inner: innermost` (the one copy; the suite
/// uses it too).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A boolean environment variable, spelled as people spell them: `1`, `true`, `yes`, `on` are
/// true; `0`, `false`, `no`, `off` and the empty string false (any case). Unset is `None`;
/// anything else is an error naming the variable.
pub fn env_flag(name: &str) -> Result<Option<bool>, String> {
    parse_flag(name, std::env::var(name).ok().as_deref())
}

fn parse_flag(name: &str, value: Option<&str>) -> Result<Option<bool>, String> {
    let Some(value) = value else { return Ok(None) };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
        other => Err(format!(
            "{name}={other}: not a boolean (use 1/0, true/false or yes/no)"
        )),
    }
}

/// Whether `NETPOL_REQUIRE_LOCAL` asks for a missing privilege or binary to be a failure
/// rather than a skip. An unreadable value panics: it is a test-tier switch.
pub fn local_required() -> bool {
    env_flag("NETPOL_REQUIRE_LOCAL")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or(false)
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn boolean_env_vars_accept_the_usual_spellings() {
        for (value, want) in [
            ("1", Some(true)),
            ("yes", Some(true)),
            ("TRUE", Some(true)),
            ("on", Some(true)),
            ("0", Some(false)),
            ("no", Some(false)),
            ("false", Some(false)),
            ("", Some(false)),
        ] {
            assert_eq!(super::parse_flag("X", Some(value)), Ok(want), "{value}");
        }
        assert_eq!(super::parse_flag("X", None), Ok(None));
        let e = super::parse_flag("NETPOL_X", Some("maybe")).unwrap_err();
        assert_eq!(
            e,
            "NETPOL_X=maybe: not a boolean (use 1/0, true/false or yes/no)"
        );
    }
}
