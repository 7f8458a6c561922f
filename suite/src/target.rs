//! Choosing and connecting the target: a cluster through a kubeconfig (or in-cluster config),
//! or the local cluster brought up for the run and torn down after it.

use std::path::PathBuf;
use std::sync::Arc;

use netpol_local::cluster::Runtime as NodeRuntime;
use tokio::runtime::Runtime;

use crate::backend::{BackendError, Capabilities, Cluster};
use crate::case::Feature;
use crate::kube::client::{client_for, client_from_kubeconfig};
use crate::kube::{KubeCluster, KubeOptions, KubeTimeouts};
use crate::probe::exec::ExecProber;
use crate::probe::hybrid::HybridProber;
use crate::probe::netns::NetnsProber;

/// The agnhost image the dummy pods run on real clusters.
pub const AGNHOST_IMAGE: &str = netpol_local::kubelet::AGNHOST_IMAGE;

pub use crate::kube::KubeConfigSource;

/// Where the run goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A cluster through a kubeconfig or the in-cluster configuration.
    Kube {
        /// Where the configuration comes from.
        source: KubeConfigSource,
        /// The kubeconfig context (`--context`); the current context when `None`.
        context: Option<String>,
    },
    /// The local cluster, with or without the bundled enforcer.
    Local {
        /// Run `netpol-enforcer` on every node (real nodes: as the DaemonSet of
        /// `enforcer/deploy/`).
        enforcer: bool,
        /// What runs its pods: real kubelets (the default, probed through the kube backend
        /// exactly as any other cluster) or the emulated node agents.
        runtime: NodeRuntime,
    },
}

impl TargetSpec {
    /// A kubeconfig file, current context.
    pub fn kubeconfig(path: PathBuf) -> TargetSpec {
        TargetSpec::Kube {
            source: KubeConfigSource::File(path),
            context: None,
        }
    }

    /// One line saying what the run is pointed at, printed before anything else.
    pub fn describe(&self) -> String {
        let context = |c: &Option<String>| match c {
            Some(c) => format!("context {c}"),
            None => "current context".to_string(),
        };
        match self {
            TargetSpec::Kube {
                source: KubeConfigSource::File(p),
                context: c,
            } => format!("kubeconfig {} ({})", p.display(), context(c)),
            TargetSpec::Kube {
                source: KubeConfigSource::Default,
                context: c,
            } => format!("{} ({})", default_kubeconfig_name(), context(c)),
            TargetSpec::Kube {
                source: KubeConfigSource::InCluster,
                ..
            } => "the in-cluster service account".into(),
            TargetSpec::Local { enforcer, runtime } => format!(
                "the local cluster ({}), {}",
                match runtime {
                    NodeRuntime::Kubelet => "real nodes: kubelet + containerd",
                    NodeRuntime::Emulated => "emulated nodes",
                },
                match (enforcer, runtime) {
                    (false, _) => "without an enforcer",
                    (true, NodeRuntime::Kubelet) => "with the enforcer DaemonSet",
                    (true, NodeRuntime::Emulated) => "with the bundled enforcer",
                }
            ),
        }
    }
}

/// How the user asked for a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// `--kubeconfig` / `NETPOL_KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--in-cluster`.
    pub in_cluster: bool,
    /// `--local`: the local cluster even where a kubeconfig exists.
    pub local: bool,
    /// Sonobuoy plugin mode: the run is in a pod.
    pub plugin: bool,
    /// Run the bundled enforcer on the local cluster.
    pub enforcer: bool,
    /// What runs the local cluster's pods (`--runtime`).
    pub runtime: NodeRuntime,
}

/// Why no target can be had; the harness reports it as a skip reason or an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

fn default_kubeconfig_name() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => format!("$KUBECONFIG ({k})"),
        _ => "~/.kube/config".into(),
    }
}

/// Whether kubectl would find a kubeconfig: `$KUBECONFIG` naming an existing file, or
/// `~/.kube/config`.
fn default_kubeconfig_exists() -> bool {
    match std::env::var_os("KUBECONFIG") {
        Some(k) if !k.is_empty() => std::env::split_paths(&k).any(|p| p.is_file()),
        _ => std::env::var_os("HOME")
            .is_some_and(|h| std::path::Path::new(&h).join(".kube/config").is_file()),
    }
}

/// Decides the target from the options and the environment, without connecting, in kubectl's
/// order: `--kubeconfig`, then the in-cluster configuration (only when asked for, or in plugin
/// mode), then `$KUBECONFIG` / `~/.kube/config`; the local cluster when none exists, or with
/// `--local`.
pub fn choose(choice: &Choice) -> Result<TargetSpec, Unavailable> {
    if choice.local {
        if choice.kubeconfig.is_some() || choice.in_cluster {
            return Err(Unavailable(
                "--local cannot be combined with --kubeconfig or --in-cluster".into(),
            ));
        }
    } else if let Some(path) = &choice.kubeconfig {
        return Ok(TargetSpec::Kube {
            source: KubeConfigSource::File(path.clone()),
            context: choice.context.clone(),
        });
    } else if choice.in_cluster
        || (choice.plugin && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())
    {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return Err(Unavailable(
                "no target: --in-cluster was asked for, but KUBERNETES_SERVICE_HOST is not set: \
                 this is not a pod"
                    .into(),
            ));
        }
        return Ok(TargetSpec::Kube {
            source: KubeConfigSource::InCluster,
            context: None,
        });
    } else if default_kubeconfig_exists() {
        return Ok(TargetSpec::Kube {
            source: KubeConfigSource::Default,
            context: choice.context.clone(),
        });
    }
    if choice.context.is_some() {
        return Err(Unavailable(format!(
            "--context needs a kubeconfig, and none was found (--kubeconfig, {})",
            default_kubeconfig_name()
        )));
    }
    if !netpol_local::cluster::is_root() {
        return Err(Unavailable(
            "no target: no kubeconfig was found, and the local cluster needs root (network \
             namespaces, iptables); run as root, or point the suite at a cluster with \
             --kubeconfig / NETPOL_KUBECONFIG / KUBECONFIG"
                .into(),
        ));
    }
    Ok(TargetSpec::Local {
        enforcer: choice.enforcer,
        runtime: choice.runtime,
    })
}

/// What a local cluster of this runtime needs that is not built yet (nothing is built here):
/// the control-plane binaries, and for real nodes the node binaries and images.
pub fn local_binaries_missing(runtime: NodeRuntime) -> Option<String> {
    if netpol_local::cluster::find_bin_dir().is_err() {
        return Some(
            "the local cluster's control-plane binaries are not built (run hack/control-plane.sh)"
                .into(),
        );
    }
    if runtime == NodeRuntime::Kubelet {
        use netpol_local::kubelet::{find_images_dir, find_node_bin_dir};
        if let Err(e) = find_node_bin_dir().and_then(|_| find_images_dir()) {
            return Some(format!(
                "the local cluster's real nodes are not set up: {e} (or run on emulated nodes: \
                 NETPOL_LOCAL_RUNTIME=emulated)"
            ));
        }
    }
    None
}

/// A connected target.
pub struct Target {
    /// The cluster.
    pub cluster: Arc<dyn Cluster>,
    /// Timeout defaults depend on this.
    pub local: bool,
    /// Tears the local cluster down when dropped.
    guard: Option<netpol_local::cluster::ClusterGuard>,
    /// The runtime the backend blocks on (none for a target given ready-made); dropped last.
    _rt: Option<Arc<Runtime>>,
}

impl Target {
    /// A target the caller connected itself (the in-memory cluster of the harness's tests, or a
    /// cluster an embedding program built); `local` picks the local cluster's default timeouts.
    pub fn given(cluster: Arc<dyn Cluster>, local: bool) -> Target {
        Target {
            cluster,
            local,
            guard: None,
            _rt: None,
        }
    }

    /// Tears down what the run created: shared worlds, then the local cluster if the run owns it.
    pub fn finish(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.guard.is_some() {
            // A local cluster this run brought up goes as a whole, with every world and lease
            // in it: deleting them one by one first would only wait for namespaces to go.
            drop(self.guard.take());
            return problems;
        }
        if let Err(e) = self.cluster.delete_shared_worlds() {
            problems.push(format!("deleting shared worlds: {e}"));
        }
        if let Err(e) = self.cluster.retire() {
            problems.push(format!("retiring the run's leases: {e}"));
        }
        drop(self.guard.take());
        problems
    }

    /// The state directory of the local cluster this run brought up and tears down when it ends
    /// (`None`: a cluster it found running, or no local cluster), for the interrupt's last resort.
    pub fn owned_local(&self) -> Option<PathBuf> {
        self.guard.as_ref().map(|g| g.cluster.state_dir.clone())
    }
}

fn sctp_in_kernel() -> Result<(), String> {
    // socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails where the kernel has no SCTP.
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .map(drop)
    .map_err(|e| format!("SCTP is not supported by this kernel ({e})"))
}

/// Why the suite could not connect to its target. The text says what was being done; the
/// cause is the [`std::error::Error::source`] (print it with [`crate::plan::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting in the environment is not valid (`NETPOL_SCTP`, `NETPOL_EXEC_BATCH`).
    #[error("{0}")]
    Setting(String),
    /// The async runtime the backend blocks on did not start.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The bundled enforcer binary was not found.
    #[error("the bundled enforcer")]
    Enforcer(#[source] netpol_local::cluster::Error),
    /// The local cluster did not come up.
    #[error("bringing up the local cluster")]
    LocalCluster(#[source] netpol_local::cluster::Error),
    /// The cluster's API: building the client, or what the backend detects when it connects.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The run's announcement (its lease) could not be written.
    #[error("announcing the run on the cluster")]
    Announce(#[source] BackendError),
}

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The run's id (labels, leases).
    pub run_id: String,
    /// On a real cluster, decide SCTP support with one probe between two pods (only worth it
    /// when some selected case probes SCTP).
    pub preflight_sctp: bool,
    /// Wait for another run's cluster lock instead of failing at once.
    pub wait_for_lock: bool,
    /// Where the worlds' pods go.
    pub placement: crate::backend::Placement,
}

impl ConnectOptions {
    /// Options for a run with this id that needs no SCTP decision and waits for locks.
    pub fn new(run_id: &str) -> ConnectOptions {
        ConnectOptions {
            run_id: run_id.into(),
            preflight_sctp: false,
            wait_for_lock: true,
            placement: crate::backend::Placement::Spread,
        }
    }
}

/// Connects to the target: for the local cluster, brings it up first (as the run's own).
/// `preflight_sctp`: on a real cluster, decide SCTP support with one probe between two pods
/// (only worth it when some selected case probes SCTP).
/// The run is announced on the cluster (its run lease) before this returns.
pub fn connect(spec: &TargetSpec, connect: &ConnectOptions) -> Result<Target, ConnectError> {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?,
    );
    match spec {
        TargetSpec::Local { enforcer, runtime } => connect_local(*enforcer, *runtime, connect, rt),
        TargetSpec::Kube { source, context } => {
            let client = rt.block_on(client_for(source, context.as_deref()))?;
            let kube = KubeTarget {
                name: spec.describe(),
                implementation: std::env::var("NETPOL_IMPLEMENTATION")
                    .unwrap_or_else(|_| "unknown".into()),
                sctp: None,
                local: false,
            };
            kube_target(kube, client, connect, rt, None)
        }
    }
}

/// Brings up the local cluster (or finds the one `local up` started) and connects to it: real
/// nodes through the kube backend exactly as any other cluster, emulated nodes with probes from
/// inside the pods' network namespaces.
fn connect_local(
    enforcer: bool,
    runtime: NodeRuntime,
    connect: &ConnectOptions,
    rt: Arc<Runtime>,
) -> Result<Target, ConnectError> {
    let real = runtime == NodeRuntime::Kubelet;
    let enforcer_bin = if enforcer && !real {
        Some(netpol_local::cluster::locate_enforcer().map_err(ConnectError::Enforcer)?)
    } else {
        None
    };
    let opts = netpol_local::cluster::UpOptions {
        enforcer: enforcer_bin,
        runtime,
        enforcer_daemonset: enforcer && real,
        ..Default::default()
    };
    // A cluster that is already up (`local up`) is used and left running; one the run brings up
    // itself is torn down when the run ends.
    let existed = netpol_local::cluster::status(&opts.state_dir).is_ok_and(|s| s.healthy());
    let guard =
        netpol_local::cluster::ClusterGuard::up(&opts).map_err(ConnectError::LocalCluster)?;
    let local = guard.cluster.clone();
    let guard = if existed {
        guard.disarm();
        None
    } else {
        Some(guard)
    };
    if local.runtime != runtime {
        eprintln!(
            "netpol-conformance: the local cluster already up at {} has {} nodes; using it",
            local.state_dir.display(),
            local.runtime.as_str()
        );
    }
    let client = rt.block_on(client_from_kubeconfig(Some(&local.kubeconfig)))?;
    if local.runtime == NodeRuntime::Kubelet {
        let kube = KubeTarget {
            name: format!("local ({}, real nodes)", local.server),
            implementation: if local.enforced {
                "netpol-enforcer (DaemonSet)".into()
            } else {
                "none (no enforcer)".into()
            },
            // Real pods share this machine's kernel: what it cannot carry is known without a
            // probe.
            sctp: Some(sctp_in_kernel()),
            local: true,
        };
        return kube_target(kube, client, connect, rt, guard);
    }
    // Only what the target can physically carry goes here; which policy features are judged is
    // the run's declared selection (crate::features), never assumed.
    let mut caps = Capabilities::default();
    match sctp_in_kernel() {
        Ok(()) => {
            caps.features.insert(Feature::Sctp);
        }
        Err(reason) => {
            caps.missing.insert(Feature::Sctp, reason);
        }
    }
    caps.features.insert(Feature::ExternalHost);
    let cluster = KubeCluster::new(
        rt.handle().clone(),
        client,
        Box::new(NetnsProber::new(32)),
        KubeOptions {
            run_id: connect.run_id.clone(),
            image: AGNHOST_IMAGE.into(),
            services: false,
            node_ips: local.node_ips.iter().map(|ip| (*ip).into()).collect(),
            external_ip: Some(local.external_host_ip.into()),
            timeouts: KubeTimeouts::default(),
            wait_for_lock: connect.wait_for_lock,
            enforcer: Some(if local.enforced { "process" } else { "none" }.into()),
            placement: connect.placement,
            measure_path: false,
        },
        format!("local ({})", local.server),
        if local.enforced {
            "netpol-enforcer".into()
        } else {
            "none (no enforcer)".into()
        },
        caps,
    )?;
    cluster.announce().map_err(ConnectError::Announce)?;
    Ok(Target {
        cluster: Arc::new(cluster),
        local: true,
        guard,
        _rt: Some(rt),
    })
}

/// What differs between the clusters the kube backend connects to.
struct KubeTarget {
    /// The target's name in reports.
    name: String,
    /// The implementation's name in reports.
    implementation: String,
    /// Whether SCTP works, where that is known without a probe (the local cluster's real nodes
    /// share this machine's kernel); `None`: `NETPOL_SCTP`, else one probe between two pods.
    sctp: Option<Result<(), String>>,
    /// The local cluster's real nodes: its pods' network namespaces are on this machine, so the
    /// path between them is measured from inside them (never a verdict: the probes still go
    /// through exec) and the connect timeout follows it, as on the emulated nodes.
    local: bool,
}

/// A cluster through the kube backend: agnhost pods, Services, probes through exec; real
/// clusters keep upstream's timeouts.
fn kube_target(
    kube: KubeTarget,
    client: ::kube::Client,
    connect: &ConnectOptions,
    rt: Arc<Runtime>,
    guard: Option<netpol_local::cluster::ClusterGuard>,
) -> Result<Target, ConnectError> {
    let mut caps = Capabilities::default();
    caps.missing.insert(
        Feature::ExternalHost,
        "this target has no external host the suite may probe".into(),
    );
    // NETPOL_SCTP=0 / 1 decides without the pre-flight probe.
    let sctp = match netpol_local::env_flag("NETPOL_SCTP").map_err(ConnectError::Setting)? {
        Some(true) => Some(Ok(())),
        Some(false) => Some(Err("SCTP switched off with NETPOL_SCTP=0".to_string())),
        None => kube.sctp,
    };
    let decided = sctp.is_some();
    match sctp {
        Some(Ok(())) => {
            caps.features.insert(Feature::Sctp);
        }
        Some(Err(reason)) => {
            caps.missing.insert(Feature::Sctp, reason);
        }
        None => {}
    }
    let prober = HybridProber {
        exec: ExecProber::new(
            rt.handle().clone(),
            client.clone(),
            16,
            netpol_local::env_flag("NETPOL_EXEC_BATCH")
                .map_err(ConnectError::Setting)?
                .unwrap_or(true),
        ),
        netns: NetnsProber::new(32),
        used_exec: Default::default(),
        used_netns: Default::default(),
    };
    let mut cluster = KubeCluster::new(
        rt.handle().clone(),
        client,
        Box::new(prober),
        KubeOptions {
            run_id: connect.run_id.clone(),
            image: std::env::var("NETPOL_AGNHOST_IMAGE").unwrap_or_else(|_| AGNHOST_IMAGE.into()),
            services: true,
            node_ips: Vec::new(),
            external_ip: None,
            timeouts: KubeTimeouts::default(),
            wait_for_lock: connect.wait_for_lock,
            enforcer: None,
            placement: connect.placement,
            measure_path: kube.local,
        },
        kube.name,
        kube.implementation,
        caps,
    )?;
    if !decided && connect.preflight_sctp {
        cluster.preflight_sctp();
    }
    cluster.announce().map_err(ConnectError::Announce)?;
    Ok(Target {
        cluster: Arc::new(cluster),
        local: kube.local,
        guard,
        _rt: Some(rt),
    })
}
