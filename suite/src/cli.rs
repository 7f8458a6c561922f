//! The command line: the clap types of every subcommand, the options of a run and the parsers
//! of their values. [`crate::harness`] acts on them.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::backend::Placement;
use crate::report;
use crate::runner::ProbeTarget;

/// netpol-conformance: NetworkPolicy, AdminNetworkPolicy and ClusterNetworkPolicy conformance.
#[derive(Debug, Parser)]
#[command(name = "netpol-conformance", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List the trials, one per line (`<name>: test`), as `cargo test -- --list` does.
    List(SelectArgs),
    /// Show what each selected case does and expects: truth tables, or JSON with --json.
    Plan(PlanArgs),
    /// Run the selected cases against a cluster (the local cluster when no kubeconfig is given).
    Run(Box<RunArgs>),
    /// Manage the local cluster: `up`, `down`, `status`.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Repeat one probe of the local cluster by hand: connect from inside a network namespace.
    Probe {
        /// The source pod's network namespace (`/run/netns/npc-…`).
        #[arg(long)]
        netns: PathBuf,
        /// Destination `ip:port`.
        target: std::net::SocketAddr,
        /// tcp, udp or sctp.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// Connect timeout in seconds.
        #[arg(long, default_value_t = 1)]
        timeout: u64,
    },
    /// Delete namespaces, policies and leases that runs which are gone left behind (by label
    /// and run lease); a live run's objects are never touched unless asked for.
    Cleanup {
        /// Kubeconfig of the cluster (default: $KUBECONFIG / ~/.kube/config, else the local
        /// cluster, if it is up).
        #[arg(long, env = "NETPOL_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context.
        #[arg(long, env = "NETPOL_CONTEXT")]
        context: Option<String>,
        /// Only this run's objects (its id is the `netpol-conformance.io/run` label).
        #[arg(long, conflicts_with = "all")]
        run: Option<String>,
        /// Every run's objects, live runs included.
        #[arg(long)]
        all: bool,
    },
    /// Print the Sonobuoy plugin definition for `sonobuoy run --plugin`, as shipped in
    /// plugin/netpol-conformance.yaml or with another image or service account.
    SonobuoyPlugin {
        /// The suite image the plugin runs (default: the released image the file names).
        #[arg(long)]
        image: Option<String>,
        /// Run the plugin pod as this service account of Sonobuoy's namespace instead of
        /// Sonobuoy's own; `netpol-conformance` is the least-privilege one plugin/rbac.yaml
        /// creates (apply it first, then `sonobuoy run --skip-preflight=existingnamespace`).
        #[arg(long)]
        service_account: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LocalCommand {
    /// Start etcd, the control plane, two nodes, their agents and (by default) enforcers.
    Up {
        /// Do not run netpol-enforcer on the nodes (the "no policy support" baseline).
        #[arg(long)]
        no_enforcer: bool,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Run the enforcers with --fail-open (emulated runtime).
        #[arg(long)]
        fail_open: bool,
        /// What runs the pods: `kubelet` (real kubelet + containerd + kube-proxy per node, the
        /// enforcer as the DaemonSet of enforcer/deploy/) or `emulated` (node agents, pods as
        /// network namespaces: fast to start, cheap pods).
        #[arg(
            long,
            env = "NETPOL_LOCAL_RUNTIME",
            value_enum,
            default_value_t = LocalRuntime::Kubelet
        )]
        runtime: LocalRuntime,
    },
    /// Stop everything `up` started and remove every namespace, link and file it made.
    Down,
    /// Show what is running.
    Status,
}

/// `local up --runtime`, `run --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalRuntime {
    /// Node agents; pods are network namespaces.
    Emulated,
    /// Real kubelet + containerd + runc + kube-proxy per node.
    Kubelet,
}

impl From<LocalRuntime> for netpol_local::cluster::Runtime {
    fn from(r: LocalRuntime) -> Self {
        match r {
            LocalRuntime::Emulated => netpol_local::cluster::Runtime::Emulated,
            LocalRuntime::Kubelet => netpol_local::cluster::Runtime::Kubelet,
        }
    }
}

/// Selecting cases.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Only trials whose name contains this (or equals it, with --exact).
    pub filter: Option<String>,
    /// Match FILTER exactly.
    #[arg(long)]
    pub exact: bool,
    /// Also load the cases in this directory (same format as cases/; source `user`).
    #[arg(long, env = "NETPOL_CASES")]
    pub cases: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    /// Print JSON (the stable, machine-readable form).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of a run; the libtest flags (FILTER, --exact, --skip, --ignored, --list,
/// --test-threads, --format, …) come from libtest-mimic.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write a JUnit report here (also written when the run aborts early).
    #[arg(long, env = "NETPOL_JUNIT")]
    pub junit: Option<PathBuf>,
    /// Write the HTML report here: one self-contained file (also written as report.html into
    /// the Sonobuoy results directory).
    #[arg(long, env = "NETPOL_HTML")]
    pub html: Option<PathBuf>,
    /// Sonobuoy plugin mode: results into $SONOBUOY_RESULTS_DIR, then the `done` file.
    #[arg(long)]
    pub sonobuoy: bool,
    /// Run against the cluster of this kubeconfig (default, as kubectl: $KUBECONFIG, then
    /// ~/.kube/config; the local cluster when there is none).
    #[arg(long, env = "NETPOL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, env = "NETPOL_CONTEXT")]
    pub context: Option<String>,
    /// Use the pod's service account (implied in Sonobuoy plugin mode).
    #[arg(long, env = "NETPOL_IN_CLUSTER", value_parser = BoolishValueParser::new())]
    pub in_cluster: bool,
    /// Run on the local cluster even where a kubeconfig exists.
    #[arg(long, env = "NETPOL_LOCAL", value_parser = BoolishValueParser::new())]
    pub local: bool,
    /// One probe's connect timeout in seconds (default: 1 on the local cluster, 3 elsewhere,
    /// as upstream).
    #[arg(long, env = "NETPOL_PROBE_TIMEOUT", value_parser = seconds)]
    pub probe_timeout: Option<std::time::Duration>,
    /// How long probes that disagree with their expectation are retried, in seconds (10).
    #[arg(long, env = "NETPOL_SETTLE_TIMEOUT", value_parser = seconds)]
    pub settle_timeout: Option<std::time::Duration>,
    /// How long the all-allowed pre-flight waits for every pair to connect, in seconds (30).
    #[arg(long, env = "NETPOL_PREFLIGHT_TIMEOUT", value_parser = seconds)]
    pub preflight_timeout: Option<std::time::Duration>,
    /// Fail at once, naming the holder, when another run holds the cluster lock for trials
    /// with cluster-scoped policies (default: wait for it).
    #[arg(long, env = "NETPOL_NO_WAIT", value_parser = BoolishValueParser::new())]
    pub no_wait: bool,
    /// Probe upstream cases through the destination's Service (default) or its pod IP.
    #[arg(
        long,
        env = "NETPOL_PROBE_TARGET",
        value_enum,
        default_value = "service"
    )]
    pub probe_target: ProbeTarget,
    /// Where the worlds' pods go on a target with two or more schedulable nodes: `spread`
    /// (alternating, so every step probes same-node and cross-node pairs), `same-node` (all on
    /// one node) or `cross-node` (spread, and only cross-node pairs judged).
    #[arg(long, env = "NETPOL_PLACEMENT", value_enum, default_value = "spread")]
    pub placement: Placement,
    /// Also load the cases in this directory.
    #[arg(long, env = "NETPOL_CASES")]
    pub cases: Option<PathBuf>,
    /// Leave each trial's namespaces and policies in place (debugging).
    #[arg(long, env = "NETPOL_KEEP", value_parser = BoolishValueParser::new())]
    pub keep: bool,
    /// Give every trial fresh namespaces and pods instead of handing a world that a trial left
    /// as it found it to the next trial of the same world (for comparison and debugging).
    #[arg(long, env = "NETPOL_FRESH_WORLDS", value_parser = BoolishValueParser::new())]
    pub fresh_worlds: bool,
    /// Local cluster only: run without the bundled enforcer (deny expectations then fail).
    #[arg(long, env = "NETPOL_NO_ENFORCER", value_parser = BoolishValueParser::new())]
    pub no_enforcer: bool,
    /// Local cluster only: what runs its pods. `kubelet`: real kubelet + containerd nodes, the
    /// enforcer as its DaemonSet, probes through exec (the code path of any other cluster);
    /// `emulated`: node agents, pods as network namespaces (fast, for iterating).
    #[arg(
        long,
        env = "NETPOL_LOCAL_RUNTIME",
        value_enum,
        default_value_t = LocalRuntime::Kubelet
    )]
    pub runtime: LocalRuntime,
    /// Only cases whose trial or upstream name matches this regex (as Sonobuoy's E2E_FOCUS).
    #[arg(long, env = "E2E_FOCUS")]
    pub focus: Option<String>,
    /// Leave out cases whose trial or upstream name matches this regex (as E2E_SKIP).
    #[arg(long = "e2e-skip", env = "E2E_SKIP")]
    pub e2e_skip: Option<String>,
    /// Experimental features the implementation declares, comma-separated (upstream's names,
    /// e.g. ClusterNetworkPolicyNamedPorts); standard features are always judged.
    #[arg(long, env = "NETPOL_SUPPORTED_FEATURES", value_delimiter = ',')]
    pub supported_features: Vec<String>,
    /// Features not to judge, comma-separated (e.g. SCTP on a kernel without it): their trials
    /// and steps are reported as skipped, with the reason.
    #[arg(long, env = "NETPOL_EXEMPT_FEATURES", value_delimiter = ',')]
    pub exempt_features: Vec<String>,
    /// Judge every feature, experimental ones included (the local cluster's default: the
    /// bundled enforcer implements them all).
    #[arg(long, env = "NETPOL_ALL_FEATURES", value_parser = BoolishValueParser::new())]
    pub all_features: bool,
    #[command(flatten)]
    pub(crate) npa_report: report::npa::ReportArgs,
    #[command(flatten)]
    pub(crate) harness: libtest_mimic::Arguments,
}

/// Who is calling: the CLI turns "no target" into an error; `cargo test` into skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `netpol-conformance run`.
    Cli,
    /// `cargo test --test conformance`.
    CargoTest,
}

/// Parses a duration given in seconds (`3`, `0.5`).
fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}
