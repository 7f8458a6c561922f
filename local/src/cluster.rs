//! Bringing the local cluster up and down.
//!
//! [`up`] creates, in order, recording each thing in the state file ([`crate::state`])
//! *before* waiting on it:
//! 1. the network fabric ([`crate::fabric`]): node namespaces, the external host, the bridge;
//! 2. the PKI ([`crate::pki`]) and kubeconfigs;
//! 3. etcd, kube-apiserver (then the project's CRDs), kube-controller-manager,
//!    kube-scheduler, all on 127.0.0.1 with free ports;
//! 4. the external host's servers (TCP 80, TCP+UDP 53), one node agent per node and, when
//!    asked, one `netpol-enforcer` per node;
//!
//! and returns once the cluster is ready: apiserver `/readyz`, every Node Ready, every CRD
//! Established, the `default` service account present, every enforcer's `/readyz`.
//!
//! With [`UpOptions::runtime`] = [`Runtime::Kubelet`] step 4 is different (private
//! submodule `real_nodes`, pieces in [`crate::kubelet`]): the fabric proxy, then per node
//! containerd (images imported), a kubelet and kube-proxy; the apiserver gets the kubelet
//! client certificate and an egress selector; with [`UpOptions::enforcer_daemonset`] the
//! enforcer runs as the DaemonSet of `enforcer/deploy/`. `down` additionally kills what
//! outlived containerd, removes the nodes' cgroup roots and restores the kernel tunables.
//!
//! [`down`] undoes everything from the state file alone, so it works after a killed run,
//! and sweeps what a crash could have left unrecorded (processes carrying the cluster's
//! owner mark in their environment, namespaces matching our names). [`status`] reports.
//!
//! This file holds `up` and its waits; the private submodules `commands` (control-plane
//! command lines), `binaries` (where executables are found), `teardown` ([`down`]) and
//! `status` ([`status()`]) hold the rest, re-exported here.
//!
//! Ctrl-C: spawned processes run in their own process groups, so a terminal's SIGINT reaches
//! only the caller. [`down_on_signal`] installs handlers for SIGINT/SIGTERM/SIGHUP that
//! down the cluster and exit; a [`ClusterGuard`] downs it on Drop (normal return, panics).
//! After a SIGKILL, `down` (e.g. `netpol-conformance local down`) cleans up from the state
//! file.
//!
//! Environment: `NETPOL_LOCAL_DIR` (state directory, default [`DEFAULT_STATE_DIR`]),
//! `NETPOL_LOCAL_INSTANCE` (namespace prefix, see [`UpOptions::instance`]),
//! `NETPOL_CONTROL_PLANE_DIR` / `NETPOL_CACHE_DIR` (control-plane binaries, as
//! hack/control-plane.sh), `NETPOL_ENFORCER_BIN`, `NETPOL_LOCAL_AGENT_BIN` (who runs the
//! agents; default the current executable), `NETPOL_LOCAL_KEEP_LOGS` (copy logs out on
//! `down`).
//!
//! Tests: unit tests need nothing; `local/tests/cluster.rs` (root and the control-plane
//! binaries, else it skips with the reason; `NETPOL_REQUIRE_LOCAL=1` makes that a failure)
//! brings real clusters up and down. `cargo run -p netpol-local --example local-cluster --
//! up|status|down` drives this module by hand.

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

use crate::agent_config::{AGENT_CONFIG_ENV, AgentConfig, ROLE_ENV, ROLE_NODE_AGENT};
use crate::fabric::{self, Plan};
use crate::pki::{self, Pki, PkiPaths};
use crate::procs::{self, Spec, Stopped};
pub use crate::state::Runtime;
use crate::state::{NodeRecord, Phase, ProcRecord, State};

mod binaries;
mod commands;
mod real_nodes;
mod status;
mod teardown;

use binaries::agent_program;
pub use binaries::{cached_bin_dir, find_bin_dir, locate_bin_dir, locate_enforcer};
pub use commands::{ControlPlane, enforcer_spec};
pub use status::{Status, status};
pub use teardown::{
    DownReport, down, is_cluster_netns, is_pod_netns_name, marked_processes, other_clusters,
    owned_processes,
};
use teardown::{down_unlocked, lock_parent};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/netpol-conformance/local";
/// Environment variable overriding the state directory.
pub const STATE_DIR_ENV: &str = "NETPOL_LOCAL_DIR";
/// Environment variable naming the enforcer binary.
pub const ENFORCER_BIN_ENV: &str = "NETPOL_ENFORCER_BIN";
/// Environment variable naming the binary that runs node agents (default: the current
/// executable, which must call [`crate::maybe_run_role`] first thing).
pub const AGENT_BIN_ENV: &str = "NETPOL_LOCAL_AGENT_BIN";
/// Environment variable naming a directory with the control-plane binaries.
pub const CONTROL_PLANE_DIR_ENV: &str = "NETPOL_CONTROL_PLANE_DIR";
/// Set on every process the cluster starts, to the state directory: `down` finds
/// processes a crash left unrecorded by it.
pub const OWNER_ENV: &str = "NETPOL_LOCAL_OWNER";
/// Environment variable naming a directory `down` copies the cluster's logs into (one
/// subdirectory per teardown) before removing the state directory; for CI artifacts.
pub const KEEP_LOGS_ENV: &str = "NETPOL_LOCAL_KEEP_LOGS";
/// Role value of the external host's server process.
pub const ROLE_EXTERNAL_HOST: &str = "external-host";
/// Environment variable carrying the external host's namespace path.
pub const EXTERNAL_NETNS_ENV: &str = "NETPOL_LOCAL_EXTERNAL_NETNS";
pub use crate::{ETCD_VERSION, K8S_VERSION};
/// The control-plane binaries a bin directory must hold.
pub const BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];
/// The service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The annotation a CRD in a protected (`*.k8s.io`) group must carry.
pub const API_APPROVED_ANNOTATION: &str = "api-approved.kubernetes.io";
/// Its value for the network-policy-api group: where the API was approved.
pub const API_APPROVED_VALUE: &str =
    "https://github.com/kubernetes-sigs/network-policy-api/pull/30";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "netpol-local";

/// Every wait of `up` and `down`, named.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// etcd answering `/health`.
    pub etcd: Duration,
    /// The apiserver's `/readyz` answering `ok`.
    pub apiserver: Duration,
    /// Every CRD Established.
    pub crds: Duration,
    /// Every Node Ready (the agents register them).
    pub nodes: Duration,
    /// The `default` service account in `default` (the controller manager creates it).
    pub service_account: Duration,
    /// Every enforcer's `/readyz`.
    pub enforcer: Duration,
    /// Between SIGTERM and SIGKILL, and after SIGKILL.
    pub stop_grace: Duration,
    /// How often conditions are polled.
    pub poll: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            etcd: Duration::from_secs(30),
            apiserver: Duration::from_secs(90),
            crds: Duration::from_secs(30),
            nodes: Duration::from_secs(60),
            service_account: Duration::from_secs(60),
            enforcer: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            poll: Duration::from_millis(200),
        }
    }
}

/// Errors of `up`, `down` and `status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No directory with all control-plane binaries was found.
    #[error(
        "locating the control-plane binaries failed: {reason} (set {CONTROL_PLANE_DIR_ENV} or run hack/control-plane.sh)"
    )]
    BinDir {
        /// What was tried.
        reason: String,
    },
    /// The cluster's namespaces already exist: another local cluster (another state
    /// directory) runs, or one was killed without `down`.
    #[error(
        "another local cluster holds network namespaces {netns:?} (running from {others:?}); run `local down` with its state directory first"
    )]
    Busy {
        /// The namespaces that exist.
        netns: Vec<String>,
        /// State directories of live clusters found by their processes.
        others: Vec<PathBuf>,
    },
    /// The node count is out of range.
    #[error("a local cluster has 1 to {} nodes, not {nodes}", fabric::MAX_NODES)]
    Nodes {
        /// The requested count.
        nodes: usize,
    },
    /// Not running as root.
    #[error("the local cluster needs root (it creates network namespaces)")]
    NotRoot,
    /// The enforcer binary was asked for but not found.
    #[error("locating the netpol-enforcer binary failed (tried {tried})")]
    EnforcerMissing {
        /// Paths tried.
        tried: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the state file failed.
    #[error("recording the cluster state failed")]
    State(#[from] crate::state::Error),
    /// Generating or writing the PKI failed.
    #[error("creating the cluster PKI failed")]
    Pki(#[from] crate::pki::Error),
    /// Building the network fabric failed.
    #[error("building the network fabric failed")]
    Fabric(#[from] crate::fabric::Error),
    /// Starting a process failed.
    #[error("starting a cluster process failed")]
    Process(#[from] crate::procs::Error),
    /// A Kubernetes API call failed.
    #[error("{op} failed")]
    Kube {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Loading the kubeconfig failed.
    #[error("loading kubeconfig {path} failed: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why (the kube error rendered; its type differs per stage).
        reason: String,
    },
    /// A process the cluster needs exited.
    #[error("{name} exited while waiting for {waiting_for}; last lines of {log}:\n{tail}")]
    Died {
        /// The process.
        name: String,
        /// What `up` was waiting for.
        waiting_for: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A readiness condition did not hold in time.
    #[error("waiting for {what} timed out after {after:?}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        after: Duration,
        /// The last observation, prefixed with ": " when present.
        detail: String,
    },
    /// Starting the helper thread or runtime failed.
    #[error("starting the cluster's async runtime failed")]
    Runtime(#[source] std::io::Error),
    /// The real nodes' binaries or images were not found.
    #[error("real nodes need their binaries and images")]
    NodeAssets(#[from] crate::kubelet::Error),
    /// A step of bringing a real node up failed (a command's own error in `detail`).
    #[error("{op} failed: {detail}")]
    Node {
        /// What was being done.
        op: String,
        /// What the command said.
        detail: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to bring the cluster up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpOptions {
    /// Where everything is recorded (default [`DEFAULT_STATE_DIR`], env [`STATE_DIR_ENV`]).
    pub state_dir: PathBuf,
    /// Number of nodes (default 2).
    pub nodes: usize,
    /// Run this `netpol-enforcer` binary on every node; `None`: no enforcement.
    pub enforcer: Option<PathBuf>,
    /// Pass `--fail-open` to the enforcers (emulated runtime; the DaemonSet's flags are its own).
    pub fail_open: bool,
    /// What runs the pods (default [`Runtime::Emulated`]).
    pub runtime: Runtime,
    /// Real nodes: deploy the enforcer as the DaemonSet of `enforcer/deploy/` with the
    /// locally built image (`enforcer` is for the emulated runtime and must be `None`).
    pub enforcer_daemonset: bool,
    /// Instance name (`[a-z0-9]{0,8}`, default from [`fabric::INSTANCE_ENV`], empty = the
    /// plain `npc-node-0`, `npc-fabric`, `npc-ext`): namespaces become `npc-<instance>-…`,
    /// so two clusters with different instances and state directories can coexist.
    pub instance: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            state_dir: default_state_dir(),
            nodes: 2,
            enforcer: None,
            fail_open: false,
            runtime: Runtime::Emulated,
            enforcer_daemonset: false,
            instance: std::env::var(fabric::INSTANCE_ENV).unwrap_or_default(),
        }
    }
}

/// The state directory from [`STATE_DIR_ENV`], else [`DEFAULT_STATE_DIR`].
pub fn default_state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// A running local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// Node names (= their namespace names).
    pub node_names: Vec<String>,
    /// Node addresses (InternalIP), in `node_names` order.
    pub node_ips: Vec<Ipv4Addr>,
    /// Pod CIDRs, in `node_names` order.
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
    /// The external host's address: "the internet" of egress cases (serves TCP 80 and
    /// TCP+UDP 53).
    pub external_host_ip: Ipv4Addr,
    /// The external host's namespace path.
    pub external_netns: PathBuf,
    /// Node namespace paths, in `node_names` order.
    pub node_netns: Vec<PathBuf>,
    /// The control-plane binaries (kubectl included).
    pub bin_dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Whether enforcers run on the nodes.
    pub enforced: bool,
    /// What runs the pods.
    pub runtime: Runtime,
}

impl Cluster {
    fn from_state(s: &State) -> Self {
        Cluster {
            kubeconfig: s.kubeconfig.clone(),
            server: format!("https://127.0.0.1:{}", s.apiserver_port),
            node_names: s.nodes.iter().map(|n| n.name.clone()).collect(),
            node_ips: s.nodes.iter().map(|n| n.ip).collect(),
            pod_cidrs: s.nodes.iter().map(|n| n.pod_cidr).collect(),
            external_host_ip: s.external_host_ip,
            external_netns: fabric::netns_path(&s.external_netns),
            node_netns: s
                .nodes
                .iter()
                .map(|n| fabric::netns_path(&n.netns))
                .collect(),
            bin_dir: s.bin_dir.clone(),
            state_dir: s.state_dir.clone(),
            enforced: s.nodes.iter().any(|n| n.enforcer_metrics.is_some()) || s.enforcer_daemonset,
            runtime: s.runtime,
        }
    }

    /// The path of `kubectl`.
    pub fn kubectl(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    /// The network namespace path of a node, by node name.
    pub fn netns_of(&self, node: &str) -> Option<&Path> {
        let i = self.node_names.iter().position(|n| n == node)?;
        self.node_netns.get(i).map(PathBuf::as_path)
    }

    /// A kube client for the admin kubeconfig (call inside a tokio runtime).
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }
}

/// Downs the cluster of its state directory when dropped (also on panic). Used for the
/// implicit cluster of a run that has no kubeconfig.
#[derive(Debug)]
pub struct ClusterGuard {
    /// The cluster.
    pub cluster: Cluster,
    armed: bool,
}

impl ClusterGuard {
    /// Brings a cluster up and guards it.
    pub fn up(opts: &UpOptions) -> Result<Self> {
        Ok(ClusterGuard {
            cluster: up(opts)?,
            armed: true,
        })
    }

    /// Keeps the cluster running after the guard is dropped.
    pub fn disarm(mut self) -> Cluster {
        self.armed = false;
        self.cluster.clone()
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = down(&self.cluster.state_dir)
        {
            eprintln!("netpol-local: tearing down the local cluster failed: {e}");
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP tear the cluster of `state_dir` down and then exit the
/// process (with 130, 143, 129). For runs that bring a cluster up implicitly: a terminal's
/// Ctrl-C reaches only the caller (cluster processes have their own process groups), and
/// the default action would end the caller without running any Drop.
///
/// Returns once the handlers are installed. Call it once, right after `up`.
pub fn down_on_signal(state_dir: &Path) -> Result<()> {
    let dir = state_dir.to_path_buf();
    let (installed_tx, installed_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("npc-local-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = installed_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let handlers = (|| {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::interrupt())?,
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::hangup())?,
                    ))
                })();
                let (mut int, mut term, mut hup) = match handlers {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = installed_tx.send(Err(e));
                        return;
                    }
                };
                let _ = installed_tx.send(Ok(()));
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                    _ = hup.recv() => 129,
                };
                eprintln!("netpol-local: interrupted; tearing the local cluster down");
                if let Err(e) = down(&dir) {
                    eprintln!("netpol-local: tearing the local cluster down failed: {e}");
                }
                std::process::exit(code);
            });
        })
        .map_err(Error::Runtime)?;
    installed_rx
        .recv()
        .map_err(|_| Error::Runtime(std::io::Error::other("signal thread died")))?
        .map_err(Error::Runtime)
}

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Brings the cluster up and returns once it is ready. If the state directory already
/// holds a ready cluster whose processes all run, returns it; a half-started or dead one is
/// torn down first. On failure everything created is torn down again.
pub fn up(opts: &UpOptions) -> Result<Cluster> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    let _lock = lock_parent(&opts.state_dir)?;
    if let Some(existing) = State::load(&opts.state_dir)? {
        if existing.phase == Phase::Ready && existing.processes.iter().all(procs::alive) {
            return Ok(Cluster::from_state(&existing));
        }
        tracing::info!(dir = %opts.state_dir.display(), "tearing down a stale local cluster");
        down_unlocked(&opts.state_dir)?;
    }
    let plan = plan_for(opts)?;
    let existing = fabric::list_netns();
    let taken: Vec<String> = plan_netns(&plan)
        .into_iter()
        .filter(|n| existing.contains(n))
        .collect();
    if !taken.is_empty() {
        return Err(Error::Busy {
            netns: taken,
            others: other_clusters(&opts.state_dir),
        });
    }
    let bin_dir = locate_bin_dir()?;
    let enforcer = match &opts.enforcer {
        Some(p) if p.is_file() => Some(p.clone()),
        Some(p) => {
            return Err(Error::EnforcerMissing {
                tried: p.display().to_string(),
            });
        }
        None => None,
    };
    let assets = match opts.runtime {
        Runtime::Kubelet => Some(real_nodes::NodeAssets::locate()?),
        Runtime::Emulated => None,
    };
    let agent = agent_program()?;
    let mut attempt = 1;
    loop {
        let state = RefCell::new(State::new(&opts.state_dir, &bin_dir));
        let result = bring_up(
            &state,
            opts,
            &plan,
            &bin_dir,
            enforcer.as_deref(),
            &agent,
            assets.as_ref(),
            Timeouts::default(),
        );
        match result {
            Ok(()) => {
                let mut s = state.borrow_mut();
                s.phase = Phase::Ready;
                s.save()?;
                return Ok(Cluster::from_state(&s));
            }
            Err(e) => {
                if let Err(down_err) = down_unlocked(&opts.state_dir) {
                    tracing::warn!(error = %down_err, "cleanup after a failed up failed");
                }
                // Free ports are picked by binding port 0 and closing; another process can
                // take one before our server binds it. Such a race is worth one retry.
                if attempt < UP_ATTEMPTS && lost_a_port_race(&e) {
                    tracing::warn!(error = %e, "a port was taken meanwhile; starting over");
                    attempt += 1;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// How often `up` starts over after losing a port race.
const UP_ATTEMPTS: u32 = 2;

/// Whether a failed `up` died because a picked port was taken in the meantime.
fn lost_a_port_race(e: &Error) -> bool {
    // Go says "bind: address already in use", Rust "Address already in use (os error 98)".
    matches!(e, Error::Died { tail, .. }
        if tail.to_ascii_lowercase().contains("address already in use"))
}

fn plan_for(opts: &UpOptions) -> Result<Plan> {
    let tag = &opts.instance;
    if !(tag.len() <= 8
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
    {
        return Err(Error::Fabric(fabric::Error::Instance { tag: tag.clone() }));
    }
    if !(1..=fabric::MAX_NODES).contains(&opts.nodes) {
        return Err(Error::Nodes { nodes: opts.nodes });
    }
    Ok(Plan::for_instance(opts.nodes, tag))
}

/// Every namespace name a plan creates.
fn plan_netns(plan: &Plan) -> Vec<String> {
    let mut names = vec![plan.fabric_netns.clone(), plan.external_netns.clone()];
    names.extend(plan.nodes.iter().map(|n| n.netns.clone()));
    names
}

fn save(state: &RefCell<State>) -> Result<()> {
    state.borrow().save().map_err(Error::from)
}

fn start(state: &RefCell<State>, spec: &Spec) -> Result<ProcRecord> {
    let mut spec = spec.clone();
    let owner = state.borrow().state_dir.display().to_string();
    spec.env.push((OWNER_ENV.into(), owner));
    let log_dir = state.borrow().state_dir.join("logs");
    let rec = procs::spawn(&spec, &log_dir)?;
    tracing::debug!(name = %rec.name, pid = rec.pid, cmd = %spec.display(), "started");
    state.borrow_mut().processes.push(rec.clone());
    save(state)?;
    Ok(rec)
}

#[allow(clippy::too_many_arguments)]
fn bring_up(
    state: &RefCell<State>,
    opts: &UpOptions,
    plan: &Plan,
    bin_dir: &Path,
    enforcer: Option<&Path>,
    agent: &Path,
    assets: Option<&real_nodes::NodeAssets>,
    t: Timeouts,
) -> Result<()> {
    let dir = opts.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        op: "creating the state directory",
        path: dir.clone(),
        source,
    })?;
    state.borrow_mut().runtime = opts.runtime;
    save(state)?;
    // Network first: it is cheap and the agents need it.
    build_fabric(state, opts, plan)?;
    let mut cp = write_credentials(state, &dir, bin_dir)?;
    let kubeconfig = cp.admin_kubeconfig();
    let proxy = match assets {
        Some(_) => {
            cp.real_nodes = true;
            real_nodes::prepare_control_plane(&cp, plan)?;
            Some(real_nodes::start_proxy(state, &cp, plan, agent, t)?)
        }
        None => None,
    };

    // etcd, then the apiserver.
    let etcd = start(state, &cp.etcd())?;
    wait_for("etcd /health", t.etcd, t.poll, &[&etcd], || match http_get(
        SocketAddr::from(([127, 0, 0, 1], cp.etcd_port)),
        "/health",
    ) {
        Ok((200, body)) if body.contains("true") => Ok(()),
        Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    })?;
    let apiserver = start(state, &cp.apiserver())?;
    block_on(async {
        let client = client_for(&kubeconfig).await?;
        let vital = [&etcd, &apiserver];
        wait_for_async(
            "kube-apiserver /readyz",
            t.apiserver,
            t.poll,
            &vital,
            || apiserver_readyz(client.clone()),
        )
        .await
    })??;
    // The controller manager exits if the apiserver does not answer yet, so it starts
    // now; its start-up (until the service-account controller creates `default/default`)
    // is most of `up`'s time, so it overlaps with everything that follows.
    let kcm = start(state, &cp.controller_manager())?;
    let sched = start(state, &cp.scheduler())?;
    block_on(async {
        let client = client_for(&kubeconfig).await?;
        install_crds(&client).await
    })??;

    if let (Some(assets), Some(proxy)) = (assets, proxy) {
        let nodes = real_nodes::start_nodes(state, opts, plan, &cp, agent, assets, t)?;
        let mut vital: Vec<&ProcRecord> = vec![&etcd, &apiserver, &kcm, &sched, &proxy];
        vital.extend(nodes.iter());
        wait_ready(&kubeconfig, plan, &[], &vital, t)?;
        real_nodes::set_pod_cidrs(&bin_dir.join("kubectl"), &kubeconfig, plan)?;
        if opts.enforcer_daemonset {
            real_nodes::deploy_enforcer(&bin_dir.join("kubectl"), &kubeconfig, &vital, t)?;
            state.borrow_mut().enforcer_daemonset = true;
            save(state)?;
        }
        return Ok(());
    }
    let nodes = start_nodes(state, opts, plan, agent, &kubeconfig, enforcer)?;
    let mut vital: Vec<&ProcRecord> = vec![&etcd, &apiserver, &kcm, &sched];
    vital.extend(nodes.processes.iter());
    vital.extend(nodes.enforcers.iter().map(|(r, _)| r));
    wait_ready(&kubeconfig, plan, &nodes.enforcers, &vital, t)
}

/// Records the nodes, then builds the fabric, recording each namespace and link first.
fn build_fabric(state: &RefCell<State>, opts: &UpOptions, plan: &Plan) -> Result<()> {
    {
        let mut s = state.borrow_mut();
        s.instance = opts.instance.clone();
        s.external_netns = plan.external_netns.clone();
        s.external_host_ip = plan.external_ip;
        for n in &plan.nodes {
            s.nodes.push(NodeRecord {
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.ip,
                pod_cidr: n.pod_cidr,
                agent_dir: opts.state_dir.join("nodes").join(&n.name),
                enforcer_metrics: None,
            });
        }
    }
    save(state)?;
    let record_error = RefCell::new(None);
    let record = |change: &dyn Fn(&mut State)| {
        change(&mut state.borrow_mut());
        if let Err(e) = state.borrow().save() {
            record_error.borrow_mut().get_or_insert(e);
        }
    };
    fabric::create(
        plan,
        |ns| record(&|s: &mut State| s.netns.push(ns.to_string())),
        |ns, link| {
            record(&|s: &mut State| {
                s.links.push(crate::state::LinkRecord {
                    netns: ns.into(),
                    name: link.into(),
                });
            });
        },
    )?;
    if let Some(e) = record_error.into_inner() {
        return Err(e.into());
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    procs::free_port().map_err(|source| Error::Io {
        op: "picking a free port on",
        path: PathBuf::from("127.0.0.1"),
        source,
    })
}

/// Generates the PKI, picks the control plane's ports and writes its kubeconfigs.
fn write_credentials(state: &RefCell<State>, dir: &Path, bin_dir: &Path) -> Result<ControlPlane> {
    let pki = Pki::generate()?.write(&dir.join("pki"))?;
    let cp = ControlPlane {
        real_nodes: false,
        bin_dir: bin_dir.to_path_buf(),
        state_dir: dir.to_path_buf(),
        pki: pki.clone(),
        etcd_port: free_port()?,
        etcd_peer_port: free_port()?,
        apiserver_port: free_port()?,
        controller_manager_port: free_port()?,
        scheduler_port: free_port()?,
    };
    let server = format!("https://127.0.0.1:{}", cp.apiserver_port);
    for (id, path) in [
        (pki::ADMIN, cp.admin_kubeconfig()),
        (pki::CONTROLLER_MANAGER, cp.controller_manager_kubeconfig()),
        (pki::SCHEDULER, cp.scheduler_kubeconfig()),
    ] {
        let (cert, key) = pki.client(&id);
        let text = pki::kubeconfig(&server, &pki.ca_cert, &cert, &key, id.common_name);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            op: "writing kubeconfig",
            path: path.clone(),
            source,
        })?;
    }
    {
        let mut s = state.borrow_mut();
        s.apiserver_port = cp.apiserver_port;
        s.etcd_port = cp.etcd_port;
        s.kubeconfig = cp.admin_kubeconfig();
    }
    save(state)?;
    Ok(cp)
}

/// What [`start_nodes`] started.
struct NodeProcesses {
    /// The external host and the node agents.
    processes: Vec<ProcRecord>,
    /// The enforcers with their metrics addresses.
    enforcers: Vec<(ProcRecord, SocketAddr)>,
}

/// Starts the external host's servers, one agent per node and, if asked, one enforcer per
/// node.
fn start_nodes(
    state: &RefCell<State>,
    opts: &UpOptions,
    plan: &Plan,
    agent: &Path,
    kubeconfig: &Path,
    enforcer: Option<&Path>,
) -> Result<NodeProcesses> {
    let mut ext = Spec::new("external-host", agent, vec![]);
    ext.env = vec![
        (ROLE_ENV.into(), ROLE_EXTERNAL_HOST.into()),
        (
            EXTERNAL_NETNS_ENV.into(),
            fabric::netns_path(&plan.external_netns)
                .display()
                .to_string(),
        ),
    ];
    let mut processes = vec![start(state, &ext)?];
    for n in &plan.nodes {
        let agent_dir = opts.state_dir.join("nodes").join(&n.name);
        std::fs::create_dir_all(&agent_dir).map_err(|source| Error::Io {
            op: "creating the agent directory",
            path: agent_dir.clone(),
            source,
        })?;
        let cfg = AgentConfig {
            node_name: n.name.clone(),
            node_netns: fabric::netns_path(&n.netns),
            node_ip: n.ip,
            pod_cidr: n.pod_cidr,
            gateway: fabric::POD_GATEWAY,
            kubeconfig: kubeconfig.to_path_buf(),
            state_dir: agent_dir,
        };
        let mut spec = Spec::new(format!("agent-{}", n.name), agent, vec![]);
        spec.env = vec![
            (ROLE_ENV.into(), ROLE_NODE_AGENT.into()),
            (AGENT_CONFIG_ENV.into(), cfg.to_env_value()),
        ];
        processes.push(start(state, &spec)?);
    }
    let mut enforcers = Vec::new();
    if let Some(program) = enforcer {
        for (i, n) in plan.nodes.iter().enumerate() {
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            state.borrow_mut().nodes[i].enforcer_metrics = Some(metrics);
            let spec = enforcer_spec(
                program,
                &n.name,
                &fabric::netns_path(&n.netns),
                kubeconfig,
                metrics,
                opts.fail_open,
            );
            enforcers.push((start(state, &spec)?, metrics));
        }
    }
    Ok(NodeProcesses {
        processes,
        enforcers,
    })
}

/// Waits for CRDs Established, every Node Ready, `default/default`, every enforcer's
/// `/readyz`; fails early when a vital process exits.
fn wait_ready(
    kubeconfig: &Path,
    plan: &Plan,
    enforcers: &[(ProcRecord, SocketAddr)],
    vital: &[&ProcRecord],
    t: Timeouts,
) -> Result<()> {
    let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    block_on(async {
        let client = client_for(kubeconfig).await?;
        wait_for_async("CRDs Established", t.crds, t.poll, vital, || {
            crds_established(client.clone())
        })
        .await?;
        wait_for_async("every Node Ready", t.nodes, t.poll, vital, || {
            nodes_ready(client.clone(), names.clone())
        })
        .await?;
        wait_for_async(
            "service account default/default",
            t.service_account,
            t.poll,
            vital,
            || {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                async move {
                    match api.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("not created yet".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    })??;
    for (rec, metrics) in enforcers {
        wait_for(
            &format!("{} /readyz", rec.name),
            t.enforcer,
            t.poll,
            vital,
            || match http_get(*metrics, "/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
                Err(e) => Err(e.to_string()),
            },
        )?;
    }
    Ok(())
}

/// The apiserver's `/readyz` answered `ok` (within 5 s).
async fn apiserver_readyz(client: kube::Client) -> Result<(), String> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("request timed out".into()),
    }
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let fail = |reason: String| Error::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        op: "building a client".into(),
        source,
    })
}

/// Installs (server-side applies) the project's CRDs: ANP and BANP v1alpha1, CNP v1alpha2.
async fn install_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for mut crd in netpol_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        // `*.k8s.io` groups are protected: the apiserver refuses a CRD without this
        // annotation. Added here if the types' CRDs do not carry it themselves.
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .entry(API_APPROVED_ANNOTATION.to_string())
            .or_insert_with(|| API_APPROVED_VALUE.to_string());
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| Error::Kube {
                op: format!("installing CRD {name}"),
                source,
            })?;
    }
    Ok(())
}

async fn crds_established(client: kube::Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in netpol_api::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        let got = api.get(&name).await.map_err(|e| format!("{name}: {e}"))?;
        let established = got
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !established {
            return Err(format!("{name} not Established"));
        }
    }
    Ok(())
}

async fn nodes_ready(client: kube::Client, names: Vec<String>) -> Result<(), String> {
    let api: Api<Node> = Api::all(client);
    let mut missing = Vec::new();
    for name in &names {
        let node = api
            .get_opt(name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let ready = node
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            missing.push(name.as_str());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not Ready: {}", missing.join(", ")))
    }
}

/// Runs a future to completion on a fresh thread with its own runtime, so callers inside
/// or outside a tokio runtime can use the blocking API.
fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("npc-local-rt".into())
            .spawn_scoped(scope, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Error::Runtime)?;
                Ok(rt.block_on(fut))
            })
            .map_err(Error::Runtime)?;
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check_alive(vital: &[&ProcRecord], waiting_for: &str) -> Result<()> {
    if let Some(dead) = vital.iter().find(|r| !procs::alive(r)) {
        return Err(Error::Died {
            name: dead.name.clone(),
            waiting_for: waiting_for.to_string(),
            log: dead.log.clone(),
            tail: log_tail(&dead.log, 20),
        });
    }
    Ok(())
}

fn timeout_error(what: &str, after: Duration, last: Option<String>) -> Error {
    Error::Timeout {
        what: what.to_string(),
        after,
        detail: last.map(|l| format!(": {l}")).unwrap_or_default(),
    }
}

/// Polls `check` until it passes, a vital process dies, or `within` passes.
fn wait_for(
    what: &str,
    within: Duration,
    poll: Duration,
    vital: &[&ProcRecord],
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<()> {
    let started = Instant::now();
    while !wait_turn(what, within, started, vital, check())? {
        std::thread::sleep(poll);
    }
    Ok(())
}

/// One turn of a readiness wait on `outcome`: `true` when ready, `false` to poll again, an
/// error when a vital process died or `within` has passed since `started`.
fn wait_turn(
    what: &str,
    within: Duration,
    started: Instant,
    vital: &[&ProcRecord],
    outcome: Result<(), String>,
) -> Result<bool> {
    let last = match outcome {
        Ok(()) => {
            tracing::info!(
                what,
                waited_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            return Ok(true);
        }
        Err(e) => e,
    };
    check_alive(vital, what)?;
    if started.elapsed() >= within {
        return Err(timeout_error(what, within, Some(last)));
    }
    Ok(false)
}

async fn wait_for_async<F, Fut>(
    what: &str,
    within: Duration,
    poll: Duration,
    vital: &[&ProcRecord],
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    while !wait_turn(what, within, started, vital, check().await)? {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET over plain TCP: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_http_response(&response).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

/// Splits an HTTP response into its status code and body.
pub fn parse_http_response(text: &str) -> Option<(u16, String)> {
    let status = text
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_response_parsing() {
        assert_eq!(
            parse_http_response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Some((200, "ok".into()))
        );
        assert_eq!(
            parse_http_response("HTTP/1.0 503 Service Unavailable\r\n\r\n"),
            Some((503, String::new()))
        );
        assert_eq!(parse_http_response("nonsense"), None);
    }

    #[test]
    fn only_a_taken_port_is_worth_a_retry() {
        let died = |tail: &str| Error::Died {
            name: "etcd".into(),
            waiting_for: "etcd /health".into(),
            log: "/x".into(),
            tail: tail.into(),
        };
        assert!(lost_a_port_race(&died(
            "listen tcp 127.0.0.1:40001: bind: address already in use"
        )));
        assert!(lost_a_port_race(&died(
            "Error: binding 127.0.0.1:9464: Address already in use (os error 98)"
        )));
        assert!(!lost_a_port_race(&died("panic: something else")));
        assert!(!lost_a_port_race(&Error::NotRoot));
    }
}
