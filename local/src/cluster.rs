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
//! [`down`] undoes everything from the state file alone, so it works after a killed run,
//! and sweeps what a crash could have left unrecorded (processes carrying the cluster's
//! owner mark in their environment, namespaces matching our names). [`status`] reports.
//!
//! Ctrl-C: spawned processes run in their own process groups, so a terminal's SIGINT reaches
//! only the caller. [`down_on_signal`] installs handlers for SIGINT/SIGTERM/SIGHUP that
//! down the cluster and exit; a [`ClusterGuard`] downs it on Drop (normal return, panics).
//! After a SIGKILL, `down` (e.g. `netpol-conformance local down`) cleans up from the state
//! file.

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
use crate::state::{NodeRecord, Phase, ProcRecord, State};

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
/// Role value of the external host's server process.
pub const ROLE_EXTERNAL_HOST: &str = "external-host";
/// Environment variable carrying the external host's namespace path.
pub const EXTERNAL_NETNS_ENV: &str = "NETPOL_LOCAL_EXTERNAL_NETNS";
/// The pinned versions hack/control-plane.sh caches by default.
pub const K8S_VERSION: &str = "v1.37.2";
/// The pinned etcd version.
pub const ETCD_VERSION: &str = "v3.6.16";
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
    /// Pass `--fail-open` to the enforcers.
    pub fail_open: bool,
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
            enforced: s.nodes.iter().any(|n| n.enforcer_metrics.is_some()),
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
            })
        })
        .map_err(Error::Runtime)?;
    installed_rx
        .recv()
        .map_err(|_| Error::Runtime(std::io::Error::other("signal thread died")))?
        .map_err(Error::Runtime)
}

// ---------------------------------------------------------------------------------------
// Locating binaries

/// Where hack/control-plane.sh caches the binaries by default.
pub fn cached_bin_dir() -> Option<PathBuf> {
    let root = match std::env::var_os("NETPOL_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("netpol-conformance"),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/netpol-conformance"),
        },
    };
    Some(root.join(format!(
        "control-plane/k8s-{}-etcd-{}",
        std::env::var("NETPOL_K8S_VERSION").unwrap_or_else(|_| K8S_VERSION.into()),
        std::env::var("NETPOL_ETCD_VERSION").unwrap_or_else(|_| ETCD_VERSION.into()),
    )))
}

fn has_all_binaries(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    BINARIES.iter().all(|b| {
        std::fs::metadata(dir.join(b))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Finds the control-plane binaries without building them: [`CONTROL_PLANE_DIR_ENV`], then
/// hack/control-plane.sh's cache.
pub fn find_bin_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os(CONTROL_PLANE_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_all_binaries(&dir) {
            return Ok(dir);
        }
        tried.push(format!("${CONTROL_PLANE_DIR_ENV}={}", dir.display()));
    }
    if let Some(dir) = cached_bin_dir() {
        if has_all_binaries(&dir) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(Error::BinDir {
        reason: format!("none of {} holds {}", tried.join(", "), BINARIES.join(", ")),
    })
}

/// Finds the control-plane binaries, running hack/control-plane.sh (which may build them
/// once) when they are not found and the script is in the source tree this was built from
/// or the current directory.
pub fn locate_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = find_bin_dir() {
        return Ok(dir);
    }
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/control-plane.sh"),
        PathBuf::from("hack/control-plane.sh"),
    ];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        return find_bin_dir();
    };
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| Error::Io {
            op: "running",
            path: script.clone(),
            source,
        })?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && has_all_binaries(&dir) {
        Ok(dir)
    } else {
        Err(Error::BinDir {
            reason: format!("{} exited with {}", script.display(), out.status),
        })
    }
}

/// Finds `netpol-enforcer`: [`ENFORCER_BIN_ENV`], else next to the current executable or
/// in its parent directory (cargo puts test binaries in target/debug/deps, binaries in
/// target/debug).
pub fn locate_enforcer() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENFORCER_BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("netpol-enforcer");
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p);
        }
    }
    Err(Error::EnforcerMissing {
        tried: tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn agent_program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|source| Error::Io {
        op: "finding the current executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Command lines (pure, unit-tested)

/// Ports and paths the control-plane command lines are built from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The binaries.
    pub bin_dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The PKI files.
    pub pki: PkiPaths,
    /// etcd client port.
    pub etcd_port: u16,
    /// etcd peer port.
    pub etcd_peer_port: u16,
    /// apiserver secure port.
    pub apiserver_port: u16,
    /// controller manager secure port.
    pub controller_manager_port: u16,
    /// scheduler secure port.
    pub scheduler_port: u16,
}

fn arg(k: &str, v: impl fmt::Display) -> String {
    format!("--{k}={v}")
}

impl ControlPlane {
    /// The controller manager's kubeconfig.
    pub fn controller_manager_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("controller-manager.kubeconfig")
    }

    /// The scheduler's kubeconfig.
    pub fn scheduler_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("scheduler.kubeconfig")
    }

    /// The admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// etcd: one member on loopback, data under the state directory.
    pub fn etcd(&self) -> Spec {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        Spec::new(
            "etcd",
            self.bin_dir.join("etcd"),
            vec![
                arg("name", "npc"),
                arg("data-dir", self.state_dir.join("etcd").display()),
                arg("listen-client-urls", &client),
                arg("advertise-client-urls", &client),
                arg("listen-peer-urls", &peer),
                arg("initial-advertise-peer-urls", &peer),
                arg("initial-cluster", format!("npc={peer}")),
                arg("initial-cluster-state", "new"),
                // A throwaway cluster on tmpfs: durability buys nothing.
                arg("unsafe-no-fsync", true),
                arg("log-level", "warn"),
            ],
        )
    }

    /// kube-apiserver on 127.0.0.1.
    pub fn apiserver(&self) -> Spec {
        let p = &self.pki;
        Spec::new(
            "kube-apiserver",
            self.bin_dir.join("kube-apiserver"),
            vec![
                arg(
                    "etcd-servers",
                    format!("http://127.0.0.1:{}", self.etcd_port),
                ),
                arg("bind-address", "127.0.0.1"),
                arg("advertise-address", "127.0.0.1"),
                // The `kubernetes` Service's endpoints would have to be the loopback
                // address, which Endpoints validation rejects; nothing here routes to
                // Services anyway (no kube-proxy).
                arg("endpoint-reconciler-type", "none"),
                arg("secure-port", self.apiserver_port),
                arg("tls-cert-file", p.apiserver_cert.display()),
                arg("tls-private-key-file", p.apiserver_key.display()),
                arg("client-ca-file", p.ca_cert.display()),
                arg("service-cluster-ip-range", SERVICE_CIDR),
                arg(
                    "service-account-issuer",
                    "https://kubernetes.default.svc.cluster.local",
                ),
                arg("service-account-key-file", p.sa_public.display()),
                arg("service-account-signing-key-file", p.sa_private.display()),
                arg("authorization-mode", "Node,RBAC"),
                arg(
                    "enable-admission-plugins",
                    "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,\
                     NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,\
                     ResourceQuota",
                ),
                arg("allow-privileged", true),
                arg("profiling", false),
                arg("v", 1),
            ],
        )
    }

    /// kube-controller-manager with every controller, signing service-account tokens.
    pub fn controller_manager(&self) -> Spec {
        let p = &self.pki;
        let kc = self.controller_manager_kubeconfig();
        Spec::new(
            "kube-controller-manager",
            self.bin_dir.join("kube-controller-manager"),
            vec![
                arg("kubeconfig", kc.display()),
                arg("authentication-kubeconfig", kc.display()),
                arg("authorization-kubeconfig", kc.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", self.controller_manager_port),
                arg("service-account-private-key-file", p.sa_private.display()),
                arg("root-ca-file", p.ca_cert.display()),
                arg("cluster-signing-cert-file", p.ca_cert.display()),
                arg("cluster-signing-key-file", p.ca_key.display()),
                arg("use-service-account-credentials", true),
                arg("controllers", "*"),
                // The node agents set spec.podCIDR themselves.
                arg("allocate-node-cidrs", false),
                arg("service-cluster-ip-range", SERVICE_CIDR),
                arg("leader-elect", false),
                arg("profiling", false),
                arg("v", 1),
            ],
        )
    }

    /// kube-scheduler.
    pub fn scheduler(&self) -> Spec {
        let kc = self.scheduler_kubeconfig();
        Spec::new(
            "kube-scheduler",
            self.bin_dir.join("kube-scheduler"),
            vec![
                arg("kubeconfig", kc.display()),
                arg("authentication-kubeconfig", kc.display()),
                arg("authorization-kubeconfig", kc.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", self.scheduler_port),
                arg("leader-elect", false),
                arg("profiling", false),
                arg("v", 1),
            ],
        )
    }
}

/// The enforcer's command line for one node.
pub fn enforcer_spec(
    program: &Path,
    node: &str,
    netns: &Path,
    kubeconfig: &Path,
    metrics: SocketAddr,
    fail_open: bool,
) -> Spec {
    let mut args = vec![
        "--netns".to_string(),
        netns.display().to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--node-name".into(),
        node.into(),
        "--metrics-addr".into(),
        metrics.to_string(),
    ];
    if fail_open {
        args.push("--fail-open".into());
    }
    Spec::new(format!("enforcer-{node}"), program, args)
}

// ---------------------------------------------------------------------------------------
// up

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
    matches!(e, Error::Died { tail, .. } if tail.contains("address already in use"))
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

fn bring_up(
    state: &RefCell<State>,
    opts: &UpOptions,
    plan: &Plan,
    bin_dir: &Path,
    enforcer: Option<&Path>,
    agent: &Path,
    t: Timeouts,
) -> Result<()> {
    let dir = opts.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        op: "creating the state directory",
        path: dir.clone(),
        source,
    })?;
    save(state)?;

    // Network first: it is cheap and the agents need it.
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
                agent_dir: dir.join("nodes").join(&n.name),
                enforcer_metrics: None,
            });
        }
    }
    save(state)?;
    let mut record_error = None;
    fabric::create(
        plan,
        |ns| {
            state.borrow_mut().netns.push(ns.to_string());
            if let Err(e) = state.borrow().save() {
                record_error.get_or_insert(e);
            }
        },
        |ns, link| {
            state.borrow_mut().links.push(crate::state::LinkRecord {
                netns: ns.into(),
                name: link.into(),
            });
        },
    )?;
    if let Some(e) = record_error {
        return Err(e.into());
    }
    save(state)?;

    // PKI and kubeconfigs.
    let pki = Pki::generate()?.write(&dir.join("pki"))?;
    let free = || {
        procs::free_port().map_err(|source| Error::Io {
            op: "picking a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
    };
    let cp = ControlPlane {
        bin_dir: bin_dir.to_path_buf(),
        state_dir: dir.clone(),
        pki: pki.clone(),
        etcd_port: free()?,
        etcd_peer_port: free()?,
        apiserver_port: free()?,
        controller_manager_port: free()?,
        scheduler_port: free()?,
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
    let kubeconfig = cp.admin_kubeconfig();
    block_on(async {
        let client = client_for(&kubeconfig).await?;
        wait_for_async(
            "kube-apiserver /readyz",
            t.apiserver,
            t.poll,
            &[&etcd, &apiserver],
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .expect("static request");
                    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
                        .await
                    {
                        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
                        Ok(Ok(body)) => Err(body),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("request timed out".into()),
                    }
                }
            },
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

    // The external host, node agents, enforcers.
    let mut ext_spec = Spec::new("external-host", agent, vec![]);
    ext_spec.env = vec![
        (ROLE_ENV.into(), ROLE_EXTERNAL_HOST.into()),
        (
            EXTERNAL_NETNS_ENV.into(),
            fabric::netns_path(&plan.external_netns)
                .display()
                .to_string(),
        ),
    ];
    let ext = start(state, &ext_spec)?;
    let mut agents = Vec::new();
    for n in &plan.nodes {
        let agent_dir = dir.join("nodes").join(&n.name);
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
            kubeconfig: kubeconfig.clone(),
            state_dir: agent_dir,
        };
        let mut spec = Spec::new(format!("agent-{}", n.name), agent, vec![]);
        spec.env = vec![
            (ROLE_ENV.into(), ROLE_NODE_AGENT.into()),
            (AGENT_CONFIG_ENV.into(), cfg.to_env_value()),
        ];
        agents.push(start(state, &spec)?);
    }
    let mut enforcers = Vec::new();
    if let Some(program) = enforcer {
        for (i, n) in plan.nodes.iter().enumerate() {
            let metrics = SocketAddr::from(([127, 0, 0, 1], free()?));
            state.borrow_mut().nodes[i].enforcer_metrics = Some(metrics);
            let spec = enforcer_spec(
                program,
                &n.name,
                &fabric::netns_path(&n.netns),
                &kubeconfig,
                metrics,
                opts.fail_open,
            );
            enforcers.push((start(state, &spec)?, metrics));
        }
    }

    // Readiness.
    let mut vital: Vec<&ProcRecord> = vec![&etcd, &apiserver, &kcm, &sched, &ext];
    vital.extend(agents.iter());
    vital.extend(enforcers.iter().map(|(r, _)| r));
    let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    block_on(async {
        let client = client_for(&kubeconfig).await?;
        wait_for_async("CRDs Established", t.crds, t.poll, &vital, || {
            crds_established(client.clone())
        })
        .await?;
        wait_for_async("every Node Ready", t.nodes, t.poll, &vital, || {
            nodes_ready(client.clone(), names.clone())
        })
        .await?;
        wait_for_async(
            "service account default/default",
            t.service_account,
            t.poll,
            &vital,
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
    for (rec, metrics) in &enforcers {
        wait_for(
            &format!("{} /readyz", rec.name),
            t.enforcer,
            t.poll,
            &vital,
            || match http_get(*metrics, "/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
                Err(e) => Err(e.to_string()),
            },
        )?;
    }
    Ok(())
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
    let deadline = started + within;
    loop {
        let last = match check() {
            Ok(()) => {
                tracing::info!(
                    what,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "ready"
                );
                return Ok(());
            }
            Err(e) => e,
        };
        check_alive(vital, what)?;
        if Instant::now() >= deadline {
            return Err(timeout_error(what, within, Some(last)));
        }
        std::thread::sleep(poll);
    }
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
    let deadline = started + within;
    loop {
        let last = match check().await {
            Ok(()) => {
                tracing::info!(
                    what,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "ready"
                );
                return Ok(());
            }
            Err(e) => e,
        };
        check_alive(vital, what)?;
        if Instant::now() >= deadline {
            return Err(timeout_error(what, within, Some(last)));
        }
        tokio::time::sleep(poll).await;
    }
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

// ---------------------------------------------------------------------------------------
// down

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Whether a state file was found.
    pub had_state: bool,
    /// Recorded processes and how each ended.
    pub processes: Vec<(String, Stopped)>,
    /// Unrecorded processes found by their owner mark and killed.
    pub swept_processes: Vec<i32>,
    /// Namespaces removed (recorded, pods and swept).
    pub netns_removed: Vec<String>,
    /// Things that could not be undone (each rendered with its cause).
    pub errors: Vec<String>,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.had_state {
            writeln!(f, "no state file found; swept leftovers only")?;
        }
        for (name, how) in &self.processes {
            writeln!(f, "process {name}: {how:?}")?;
        }
        if !self.swept_processes.is_empty() {
            writeln!(f, "unrecorded processes killed: {:?}", self.swept_processes)?;
        }
        if !self.netns_removed.is_empty() {
            writeln!(
                f,
                "network namespaces removed: {}",
                self.netns_removed.join(", ")
            )?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

fn render(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Live processes carrying an [`OWNER_ENV`] mark, with the state directory it names.
pub fn marked_processes() -> Vec<(i32, PathBuf)> {
    let prefix = format!("{OWNER_ENV}=");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let owner = env
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))?;
            let owner = PathBuf::from(String::from_utf8_lossy(owner).into_owned());
            let start_time = procs::start_time(pid)?;
            let rec = ProcRecord {
                name: String::new(),
                pid,
                start_time,
                log: PathBuf::new(),
            };
            procs::alive(&rec).then_some((pid, owner))
        })
        .collect()
}

/// PIDs of live processes whose environment carries `OWNER_ENV=<state_dir>`.
pub fn owned_processes(state_dir: &Path) -> Vec<i32> {
    marked_processes()
        .into_iter()
        .filter(|(_, owner)| owner == state_dir)
        .map(|(pid, _)| pid)
        .collect()
}

/// State directories of other live local clusters (processes marked with another owner).
pub fn other_clusters(state_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = marked_processes()
        .into_iter()
        .map(|(_, owner)| owner)
        .filter(|owner| owner != state_dir)
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Namespace names recorded by the node agents under `<dir>/pods/*.json` (a `netns` field
/// holding a path or a name).
fn recorded_pod_netns(agent_dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for dir in agent_dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("pods")) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(ns) = v.get("netns").and_then(|n| n.as_str()) {
                let name = Path::new(ns)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(ns);
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Whether a namespace name is one the fixed naming of `instance` produces (fabric,
/// external host, nodes).
pub fn is_cluster_netns(name: &str, instance: &str) -> bool {
    let base = if instance.is_empty() {
        name.strip_prefix("npc-")
    } else {
        name.strip_prefix("npc-")
            .and_then(|r| r.strip_prefix(instance))
            .and_then(|r| r.strip_prefix('-'))
    };
    let Some(base) = base else {
        return false;
    };
    base == "fabric"
        || base == "ext"
        || base
            .strip_prefix("node-")
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a namespace name has the shape of a pod namespace (`npc-` + 8 hex digits).
pub fn is_pod_netns_name(name: &str) -> bool {
    name.strip_prefix("npc-")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Tears the cluster of `state_dir` down: processes (TERM, then KILL), recorded links,
/// pod namespaces, node/fabric/external namespaces, mounts, the state directory. Works from
/// the state file alone and is idempotent; also sweeps leftovers a crash could have left
/// unrecorded.
pub fn down(state_dir: &Path) -> Result<DownReport> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    let _lock = lock_parent(state_dir)?;
    down_unlocked(state_dir)
}

/// Serializes `up` and `down` of state directories under the same parent (two runs that
/// bring up the same cluster at once would otherwise tear each other's halves down): an
/// exclusive `flock` on the parent directory, released on drop.
fn lock_parent(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let parent = state_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let fail = |source| Error::Io {
        op: "locking",
        path: parent.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(fail)?;
    let dir = std::fs::File::open(parent).map_err(fail)?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| fail(errno.into()))
}

fn down_unlocked(state_dir: &Path) -> Result<DownReport> {
    let t = Timeouts::default();
    let mut report = DownReport::default();
    let state = match State::load(state_dir) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(render(&e));
            None
        }
    };
    report.had_state = state.is_some();

    // Processes: TERM all at once (agents and enforcers first in the list's reverse), then
    // finish each.
    if let Some(s) = &state {
        let recs: Vec<ProcRecord> = s.processes.iter().rev().cloned().collect();
        let running: Vec<bool> = recs.iter().map(procs::alive).collect();
        procs::signal_all(&recs, nix::sys::signal::Signal::SIGTERM);
        for (rec, was_running) in recs.iter().zip(running) {
            let how = match procs::stop(rec, t.stop_grace) {
                // It went with the SIGTERM sent to all just before.
                Stopped::NotRunning if was_running => Stopped::Terminated,
                how => how,
            };
            if how == Stopped::Survived {
                report
                    .errors
                    .push(format!("{} (pid {}) survived SIGKILL", rec.name, rec.pid));
            }
            report.processes.push((rec.name.clone(), how));
        }
    }
    for pid in owned_processes(state_dir) {
        let rec = ProcRecord {
            name: format!("unrecorded-{pid}"),
            pid,
            start_time: procs::start_time(pid).unwrap_or_default(),
            log: PathBuf::new(),
        };
        // An unrecorded process may not lead its own group: signal it alone.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if procs::stop(&rec, t.stop_grace) == Stopped::Survived {
            report.errors.push(format!("unrecorded pid {pid} survived"));
        }
        report.swept_processes.push(pid);
    }

    // Pod namespaces first (their veths die with them), then links, then our namespaces.
    let agent_dirs: Vec<PathBuf> = match &state {
        Some(s) => s.nodes.iter().map(|n| n.agent_dir.clone()).collect(),
        None => std::fs::read_dir(state_dir.join("nodes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut doomed: Vec<String> = recorded_pod_netns(&agent_dirs);
    if let Some(s) = &state {
        for l in s.links.iter().rev() {
            if let Err(e) = fabric::delete_link(&l.netns, &l.name) {
                report.errors.push(render(&e));
            }
        }
        doomed.extend(s.netns.iter().rev().cloned());
    }
    // Last resort: our fixed names, and pod-shaped namespaces left without links (their
    // node side is gone, so no live cluster owns them).
    let existing = fabric::list_netns();
    let others = other_clusters(state_dir);
    let instance = match &state {
        Some(s) => s.instance.clone(),
        None => std::env::var(fabric::INSTANCE_ENV).unwrap_or_default(),
    };
    if others.is_empty() {
        for name in &existing {
            if is_cluster_netns(name, &instance) && !doomed.contains(name) {
                doomed.push(name.clone());
            }
        }
    } else {
        tracing::info!(
            ?others,
            "another local cluster runs; not sweeping unrecorded namespaces"
        );
    }
    for name in &doomed {
        if existing.contains(name) {
            match fabric::delete_netns(name) {
                Ok(()) => report.netns_removed.push(name.clone()),
                Err(e) => report.errors.push(render(&e)),
            }
        }
    }
    // Pod-shaped namespaces without links: their node side is gone. Only when no other
    // cluster runs, since one of its pods could be between namespace and veth creation.
    for name in fabric::list_netns() {
        if others.is_empty() && is_pod_netns_name(&name) && fabric::links_in(&name).is_empty() {
            match fabric::delete_netns(&name) {
                Ok(()) => report.netns_removed.push(name),
                Err(e) => report.errors.push(render(&e)),
            }
        }
    }
    if let Some(s) = &state {
        for m in &s.mounts {
            match nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => report
                    .errors
                    .push(format!("unmounting {}: {e}", m.display())),
            }
        }
    }
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report
            .errors
            .push(format!("removing {}: {e}", state_dir.display())),
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// status

/// What `status` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The state directory.
    pub state_dir: PathBuf,
    /// `None`: no cluster recorded there.
    pub phase: Option<Phase>,
    /// The admin kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// Each recorded process and whether it runs.
    pub processes: Vec<(String, i32, bool)>,
    /// Each recorded namespace and whether it exists.
    pub netns: Vec<(String, bool)>,
    /// Whether the apiserver answered `/readyz` with `ok` (None when not asked).
    pub apiserver_ready: Option<bool>,
    /// The external host's address.
    pub external_host_ip: Option<Ipv4Addr>,
}

impl Status {
    /// True when the cluster is recorded ready and everything recorded is present.
    pub fn healthy(&self) -> bool {
        self.phase == Some(Phase::Ready)
            && self.processes.iter().all(|p| p.2)
            && self.netns.iter().all(|n| n.1)
            && self.apiserver_ready != Some(false)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(phase) = self.phase else {
            return writeln!(f, "no local cluster in {}", self.state_dir.display());
        };
        let verdict = if self.healthy() {
            "healthy"
        } else {
            "degraded"
        };
        writeln!(
            f,
            "local cluster in {}: {phase:?}, {verdict}",
            self.state_dir.display()
        )?;
        if let Some(kc) = &self.kubeconfig {
            writeln!(f, "kubeconfig: {}", kc.display())?;
        }
        if let Some(ready) = self.apiserver_ready {
            writeln!(
                f,
                "apiserver /readyz: {}",
                if ready { "ok" } else { "failing" }
            )?;
        }
        if let Some(ip) = self.external_host_ip {
            writeln!(f, "external host: {ip}")?;
        }
        for (name, pid, up) in &self.processes {
            writeln!(
                f,
                "  {:<28} pid {pid:<8} {}",
                name,
                if *up { "running" } else { "GONE" }
            )?;
        }
        for (name, present) in &self.netns {
            writeln!(
                f,
                "  netns {:<22} {}",
                name,
                if *present { "present" } else { "GONE" }
            )?;
        }
        Ok(())
    }
}

/// Reports the cluster recorded in `state_dir` (asks the apiserver's `/readyz` when it
/// runs).
pub fn status(state_dir: &Path) -> Result<Status> {
    let Some(s) = State::load(state_dir)? else {
        return Ok(Status {
            state_dir: state_dir.to_path_buf(),
            phase: None,
            kubeconfig: None,
            processes: Vec::new(),
            netns: Vec::new(),
            apiserver_ready: None,
            external_host_ip: None,
        });
    };
    let processes: Vec<(String, i32, bool)> = s
        .processes
        .iter()
        .map(|p| (p.name.clone(), p.pid, procs::alive(p)))
        .collect();
    let existing = fabric::list_netns();
    let netns = s
        .netns
        .iter()
        .map(|n| (n.clone(), existing.contains(n)))
        .collect();
    let apiserver_running = processes.iter().any(|p| p.0 == "kube-apiserver" && p.2);
    let apiserver_ready = if apiserver_running {
        let kubeconfig = s.kubeconfig.clone();
        let ready = block_on(async move {
            let Ok(client) = client_for(&kubeconfig).await else {
                return false;
            };
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            matches!(
                tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await,
                Ok(Ok(body)) if body.trim() == "ok"
            )
        })?;
        Some(ready)
    } else {
        Some(false)
    };
    Ok(Status {
        state_dir: state_dir.to_path_buf(),
        phase: Some(s.phase),
        kubeconfig: Some(s.kubeconfig.clone()),
        processes,
        netns,
        apiserver_ready,
        external_host_ip: Some(s.external_host_ip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> ControlPlane {
        ControlPlane {
            bin_dir: "/k8s/bin".into(),
            state_dir: "/run/npc".into(),
            pki: PkiPaths::in_dir(Path::new("/run/npc/pki")),
            etcd_port: 2379,
            etcd_peer_port: 2380,
            apiserver_port: 6443,
            controller_manager_port: 10257,
            scheduler_port: 10259,
        }
    }

    #[test]
    fn control_plane_listens_on_loopback_only() {
        let cp = cp();
        for spec in [
            cp.etcd(),
            cp.apiserver(),
            cp.controller_manager(),
            cp.scheduler(),
        ] {
            for a in &spec.args {
                let listens = [
                    "--bind-address",
                    "--listen-",
                    "--advertise-",
                    "--etcd-servers",
                ]
                .iter()
                .any(|p| a.starts_with(p));
                if listens {
                    assert!(a.contains("127.0.0.1"), "{}: {a}", spec.name);
                }
            }
        }
    }

    #[test]
    fn apiserver_command_line() {
        let spec = cp().apiserver();
        assert_eq!(spec.program, Path::new("/k8s/bin/kube-apiserver"));
        for want in [
            "--etcd-servers=http://127.0.0.1:2379",
            "--secure-port=6443",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            "--client-ca-file=/run/npc/pki/ca.crt",
            "--service-account-key-file=/run/npc/pki/sa.pub",
            "--service-account-signing-key-file=/run/npc/pki/sa.key",
        ] {
            assert!(
                spec.args.iter().any(|a| a == want),
                "missing {want}: {spec:?}"
            );
        }
    }

    #[test]
    fn controller_manager_command_line() {
        let spec = cp().controller_manager();
        for want in [
            "--kubeconfig=/run/npc/controller-manager.kubeconfig",
            "--service-account-private-key-file=/run/npc/pki/sa.key",
            "--root-ca-file=/run/npc/pki/ca.crt",
            "--use-service-account-credentials=true",
            "--controllers=*",
            "--allocate-node-cidrs=false",
        ] {
            assert!(
                spec.args.iter().any(|a| a == want),
                "missing {want}: {spec:?}"
            );
        }
    }

    #[test]
    fn enforcer_command_line() {
        let spec = enforcer_spec(
            Path::new("/t/netpol-enforcer"),
            "npc-node-1",
            Path::new("/run/netns/npc-node-1"),
            Path::new("/run/npc/kubeconfig"),
            "127.0.0.1:9999".parse().unwrap(),
            true,
        );
        assert_eq!(
            spec.display(),
            "/t/netpol-enforcer --netns /run/netns/npc-node-1 --kubeconfig /run/npc/kubeconfig \
             --node-name npc-node-1 --metrics-addr 127.0.0.1:9999 --fail-open"
        );
        assert_eq!(spec.name, "enforcer-npc-node-1");
    }

    #[test]
    fn netns_name_classes() {
        assert!(is_cluster_netns("npc-node-0", ""));
        assert!(is_cluster_netns("npc-node-12", ""));
        assert!(is_cluster_netns("npc-fabric", ""));
        assert!(is_cluster_netns("npc-ext", ""));
        assert!(!is_cluster_netns("npc-node-", ""));
        assert!(!is_cluster_netns("npc-node-x", ""));
        assert!(!is_cluster_netns("npc-1a2b3c4d", ""));
        assert!(!is_cluster_netns("npc-t-node-0", ""));
        assert!(is_cluster_netns("npc-t-node-0", "t"));
        assert!(is_cluster_netns("npc-t-ext", "t"));
        assert!(!is_cluster_netns("npc-node-0", "t"));
        assert!(!is_cluster_netns("npc-tt-fabric", "t"));
        assert!(is_pod_netns_name("npc-1a2b3c4d"));
        assert!(!is_pod_netns_name("npc-1a2b3c4"));
        assert!(!is_pod_netns_name("npc-fabric"));
    }

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
    fn pod_netns_records_are_read_by_path_or_name() {
        let dir = std::env::temp_dir().join(format!("npc-podrec-{}", std::process::id()));
        let pods = dir.join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::write(
            pods.join("a.json"),
            r#"{"netns":"/run/netns/npc-0000abcd"}"#,
        )
        .unwrap();
        std::fs::write(pods.join("b.json"), r#"{"netns":"npc-1111abcd","uid":"x"}"#).unwrap();
        std::fs::write(pods.join("c.json"), "not json").unwrap();
        let mut got = recorded_pod_netns(std::slice::from_ref(&dir));
        got.sort();
        assert_eq!(got, vec!["npc-0000abcd", "npc-1111abcd"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_parent_lock_excludes_a_second_holder_until_dropped() {
        let parent = std::env::temp_dir().join(format!("npc-lock-{}", std::process::id()));
        let state_dir = parent.join("cluster");
        let held = lock_parent(&state_dir).unwrap();
        let try_again = || {
            let dir = std::fs::File::open(&parent).unwrap();
            nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        };
        assert!(!try_again(), "a second exclusive lock succeeded while held");
        drop(held);
        assert!(try_again(), "the lock was not released on drop");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn status_and_down_report_render_what_matters() {
        let st = Status {
            state_dir: "/run/npc".into(),
            phase: Some(Phase::Ready),
            kubeconfig: Some("/run/npc/kubeconfig".into()),
            processes: vec![
                ("etcd".into(), 10, true),
                ("kube-apiserver".into(), 11, false),
            ],
            netns: vec![("npc-node-0".into(), true)],
            apiserver_ready: Some(false),
            external_host_ip: Some(Ipv4Addr::new(172, 30, 254, 100)),
        };
        assert!(!st.healthy(), "a dead apiserver is not healthy");
        let text = st.to_string();
        assert!(text.contains("Ready, degraded"), "{text}");
        assert!(
            text.contains("kube-apiserver") && text.contains("GONE"),
            "{text}"
        );
        assert!(text.contains("172.30.254.100"), "{text}");
        let report = DownReport {
            had_state: false,
            processes: vec![("etcd".into(), Stopped::Killed)],
            swept_processes: vec![42],
            netns_removed: vec!["npc-ext".into()],
            errors: vec!["boom".into()],
        };
        let text = report.to_string();
        for want in [
            "no state file",
            "etcd: Killed",
            "[42]",
            "npc-ext",
            "error: boom",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
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
        assert!(!lost_a_port_race(&died("panic: something else")));
        assert!(!lost_a_port_race(&Error::NotRoot));
    }

    #[test]
    fn status_of_an_empty_dir_says_no_cluster() {
        let dir = std::env::temp_dir().join(format!("npc-status-{}", std::process::id()));
        let s = status(&dir).unwrap();
        assert_eq!(s.phase, None);
        assert!(!s.healthy());
        assert!(s.to_string().starts_with("no local cluster"), "{s}");
    }
}
