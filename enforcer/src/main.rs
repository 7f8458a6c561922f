//! `netpol-enforcer`: judges the first packet of every new connection on this node.
//!
//! watch (kube watchers, host network namespace) → store (snapshots) → engine (decide) →
//! dataplane (rules + NFQUEUE threads, inside `--netns` when given). See `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, ValueEnum};
use netpol_enforcer::dataplane::{
    self, BackendChoice, Dataplane, Family, Judge, RulesOnExit, StaticJudge, Undecided, Verdict,
};
use netpol_enforcer::http::{self, Health};
use netpol_enforcer::judge::EngineJudge;
use netpol_enforcer::metrics::Metrics;
use netpol_enforcer::store::Writer;
use netpol_enforcer::watch;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};

/// Reference NetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy / ClusterNetworkPolicy
/// enforcer. New TCP, UDP and SCTP connections are queued to userspace (NFQUEUE) after DNAT and
/// before SNAT (FORWARD, OUTPUT) and on INPUT; each first packet is judged against the cluster's
/// policies and accepted or dropped; the rest of an accepted connection stays in the kernel.
#[derive(Debug, Parser)]
#[command(name = "netpol-enforcer", version)]
struct Cli {
    /// Kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster service
    /// account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// Network namespace to enforce in (e.g. /run/netns/node-a). Only the rule installation and
    /// the queue threads enter it; the Kubernetes client stays in the process's namespace.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,

    /// Fail open: when no enforcer is bound (crash, upgrade) or the queue is full, packets are
    /// accepted unjudged, and a clean shutdown removes the rules. Without it (fail-closed), such
    /// packets are dropped and a clean shutdown leaves the rules, so new connections stay blocked
    /// until an enforcer runs again (use --cleanup to remove them).
    #[arg(long)]
    fail_open: bool,

    /// Number of queues; connections are spread over them by flow hash, one thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,

    /// First queue number. Queues are per network namespace, so enforcers in different
    /// namespaces may use the same numbers.
    #[arg(long, default_value_t = 100)]
    queue_base: u16,

    /// Choose the queue by the CPU that handles the packet (with one queue thread pinned to
    /// each group of CPUs) instead of by flow hash; use with --queues set to the CPU count.
    #[arg(long)]
    cpu_fanout: bool,

    /// Kernel queue length before the failure mode applies.
    #[arg(long, default_value_t = 1024)]
    queue_max_len: u32,

    /// Address for /metrics, /healthz and /readyz (host:port; port 0 picks one, logged at
    /// start). An empty value disables the server.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_addr: String,

    /// This node's name (for logs; defaults to $NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    /// Rule backend: nftables where the kernel has the queue statement, else iptables.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// IP families to install iptables rules for.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [FamilyArg::Ipv4, FamilyArg::Ipv6])]
    families: Vec<FamilyArg>,

    /// Verdict for queued packets that cannot be judged (parse errors, non-first fragments).
    /// Default: accept when --fail-open, drop otherwise.
    #[arg(long, value_enum)]
    on_unjudgeable: Option<VerdictArg>,

    /// Sockets of this uid on the node are not judged in OUTPUT (kubelet health probes run as
    /// root). Use --judge-all-uids to judge every local socket.
    #[arg(long, default_value_t = 0)]
    exempt_uid: u32,

    /// Judge node-originated connections of every uid (disables --exempt-uid).
    #[arg(long)]
    judge_all_uids: bool,

    /// Pod address range (repeatable or comma-separated). When given, only connections that
    /// involve a pod are queued — forwarded from or to a range, to the node from one, from the
    /// node to one — so the node's own traffic never waits on the enforcer (important with
    /// fail-closed). Without it every new connection is judged. These ranges and every Node's
    /// spec.podCIDRs are where unknown pods are recognised (see --unknown-pod).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pod_cidr: Vec<ipnet::IpNet>,

    /// A connection from or to an unknown pod — an address in a pod range (--pod-cidr, or a
    /// Node's spec.podCIDRs) that is no pod or node the enforcer knows yet, usually a pod created
    /// a moment ago — cannot be judged, and is never accepted unjudged: `hold` keeps its packet
    /// queued and judges it again as the watch reports more, up to --unknown-pod-hold-ms, then
    /// drops it; `drop` drops it at once (the client's retry is judged afresh). Ends that are this
    /// node itself (what it sends, what it receives) are never unknown, and a cluster without
    /// any policy accepts such connections as it does all others.
    #[arg(long, value_enum, default_value_t = UnknownPodArg::Hold)]
    unknown_pod: UnknownPodArg,

    /// How long --unknown-pod=hold keeps a packet waiting for its pod to become known, in
    /// milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    unknown_pod_hold_ms: u64,

    /// Conntrack mark bit(s) set on accepted connections (hex or decimal).
    #[arg(long, default_value = "0x200000", value_parser = parse_mark)]
    accept_mark: u32,

    /// How often to check that the rules are still installed (and reinstall them if someone
    /// flushed them), in seconds; 0 disables the check.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,

    /// Remove every rule a previous run installed (in --netns) and exit.
    #[arg(long)]
    cleanup: bool,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `netpol_enforcer=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,

    /// Test only: judge every flow the same way and do not talk to Kubernetes.
    #[arg(long, value_enum, hide = true)]
    static_verdict: Option<VerdictArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UnknownPodArg {
    Hold,
    Drop,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VerdictArg {
    Accept,
    Drop,
}

impl From<VerdictArg> for Verdict {
    fn from(v: VerdictArg) -> Self {
        match v {
            VerdictArg::Accept => Verdict::Accept,
            VerdictArg::Drop => Verdict::Drop,
        }
    }
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        Ok(0) => Err("the accept mark must have at least one bit set".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("not a mark: {e}")),
    }
}

impl Cli {
    fn dataplane_config(&self) -> dataplane::Config {
        let mut config = dataplane::Config::new(self.queue_base, self.queues, self.fail_open);
        config.netns = self.netns.clone();
        config.backend = match self.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Nftables => BackendChoice::Nftables,
            BackendArg::Iptables => BackendChoice::Iptables,
        };
        config.rules.families = self.families();
        config.rules.exempt_uid = (!self.judge_all_uids).then_some(self.exempt_uid);
        config.rules.accept_mark = self.accept_mark;
        config.rules.pod_cidrs = self.pod_cidr.clone();
        config.rules.cpu_fanout = self.cpu_fanout;
        config.queue_max_len = self.queue_max_len;
        if let Some(v) = self.on_unjudgeable {
            config.on_unjudgeable = v.into();
        }
        config.undecided = match self.unknown_pod {
            UnknownPodArg::Hold => Undecided::Hold {
                limit: Duration::from_millis(self.unknown_pod_hold_ms),
            },
            UnknownPodArg::Drop => Undecided::Drop,
        };
        config
    }

    fn families(&self) -> Vec<Family> {
        self.families
            .iter()
            .map(|f| match f {
                FamilyArg::Ipv4 => Family::V4,
                FamilyArg::Ipv6 => Family::V6,
            })
            .collect()
    }
}

/// SIGTERM or SIGINT.
async fn terminated() -> Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig or in-cluster configuration")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// Every `period`, put the rules back if someone removed them.
async fn keep_rules(dataplane: Arc<Dataplane>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once; the rules were just installed
    loop {
        tick.tick().await;
        let dp = dataplane.clone();
        match tokio::task::spawn_blocking(move || dp.ensure_rules()).await {
            Ok(Ok(true)) => tracing::warn!("rules were missing and have been reinstalled"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "checking rules"),
            Err(err) => tracing::error!(error = %err, "rule check task failed"),
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = cli.dataplane_config();
    let node = cli.node_name.clone().unwrap_or_else(|| "-".into());
    if cli.cleanup {
        let (netns, families) = (config.netns.clone(), config.rules.families.clone());
        tokio::task::spawn_blocking(move || dataplane::remove_rules(netns.as_deref(), &families))
            .await?
            .context("removing rules")?;
        tracing::info!(%node, "rules removed");
        return Ok(());
    }

    let metrics = Metrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Health::new();
    let mut server = None;
    if !cli.metrics_addr.is_empty() {
        let listener = http::bind(&cli.metrics_addr).await?;
        if let Some(addr) = http::local_addr(&listener) {
            tracing::info!(%addr, "metrics listening");
        }
        server = Some(tokio::spawn(http::serve(
            listener,
            Arc::new(registry),
            health.clone(),
        )));
    }

    let stop = terminated();
    tokio::pin!(stop);

    // The judge: static (tests) or the engine over watched state.
    let mut watcher = None;
    let judge: Arc<dyn Judge> = match cli.static_verdict {
        Some(v) => Arc::new(StaticJudge(v.into())),
        None => {
            let client = kube_client(cli.kubeconfig.as_ref()).await?;
            let writer = Writer::with_pod_ranges(cli.pod_cidr.clone());
            let reader = writer.reader();
            let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
            let mut task = tokio::spawn(watch::run(client, writer, synced_tx));
            tracing::info!(%node, "waiting for watchers to sync");
            tokio::select! {
                synced = synced_rx.wait_for(|s| *s) => { synced.map_err(|_| anyhow!("watchers stopped before syncing"))?; }
                ended = &mut task => return Err(anyhow!("watchers stopped before syncing: {ended:?}")),
                signal = &mut stop => { tracing::info!(signal = signal?, "stopping before start"); return Ok(()); }
            }
            watcher = Some(task);
            Arc::new(EngineJudge::new(reader))
        }
    };

    let dp_metrics = metrics.clone();
    let dataplane =
        tokio::task::spawn_blocking(move || Dataplane::start(config, judge, dp_metrics))
            .await?
            .context("starting the dataplane")?;
    health.set_alive_check(dataplane.liveness());
    let dataplane = Arc::new(dataplane);
    let resync = (cli.resync_seconds > 0).then(|| {
        tokio::spawn(keep_rules(
            dataplane.clone(),
            Duration::from_secs(cli.resync_seconds),
        ))
    });
    health.set_ready(true);
    tracing::info!(%node, backend = dataplane.backend().as_str(), fail_open = cli.fail_open, unknown_pod = ?cli.unknown_pod, "enforcing");

    let outcome: Result<()> = match watcher.as_mut() {
        Some(task) => tokio::select! {
            signal = &mut stop => { tracing::info!(signal = signal?, "shutting down"); Ok(()) }
            ended = task => Err(anyhow!("watchers stopped: {ended:?}")),
        },
        None => {
            let signal = (&mut stop).await?;
            tracing::info!(signal, "shutting down");
            Ok(())
        }
    };

    health.set_ready(false);
    if let Some(task) = resync {
        task.abort();
        let _ = task.await;
    }
    // A rule check already running on the blocking pool still holds a clone; it ends quickly.
    let mut shared = dataplane;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dataplane = loop {
        match Arc::try_unwrap(shared) {
            Ok(dataplane) => break dataplane,
            Err(still_shared) if tokio::time::Instant::now() < deadline => {
                shared = still_shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return Err(anyhow!("a rule check kept the dataplane busy at shutdown")),
        }
    };
    let rules = tokio::task::spawn_blocking(move || dataplane.shutdown())
        .await?
        .context("stopping the dataplane")?;
    match rules {
        RulesOnExit::Removed => tracing::info!("fail-open: rules removed"),
        RulesOnExit::Kept => {
            tracing::info!("fail-closed: rules kept, new connections blocked until restart");
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    outcome
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("netpol-enforcer: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> dataplane::Config {
        let cli = Cli::try_parse_from([&["netpol-enforcer"], args].concat()).expect("arguments");
        cli.dataplane_config()
    }

    #[test]
    fn unknown_pods_are_held_by_default_and_never_accepted() {
        assert_eq!(
            config(&[]).undecided,
            Undecided::Hold {
                limit: Duration::from_secs(2)
            }
        );
        assert_eq!(
            config(&["--unknown-pod-hold-ms", "300"]).undecided,
            Undecided::Hold {
                limit: Duration::from_millis(300)
            }
        );
        assert_eq!(
            config(&["--unknown-pod", "drop", "--fail-open"]).undecided,
            Undecided::Drop
        );
        for bad in [
            &["--unknown-pod", "accept"][..],
            &["--unknown-pod-hold-ms", "0"],
        ] {
            assert!(
                Cli::try_parse_from([&["netpol-enforcer"], bad].concat()).is_err(),
                "{bad:?}"
            );
        }
    }
}
