//! The node agent: the kubelet stand-in of the local cluster.
//!
//! [`run`] registers the Node, keeps its Lease and Ready condition fresh ([`node`]), and
//! realizes every pod bound to the node ([`pods`]) as a network namespace wired to the
//! node namespace ([`netns`], addresses from [`ipam`]), running the servers its agnhost
//! containers ask for ([`agnhost`], [`servers`]), recording it ([`records`]) and reporting
//! its status ([`status`]).
//!
//! The agent runs in the host network namespace (it reaches the API server on loopback);
//! only dedicated threads enter node or pod namespaces.
//!
//! Tests, by tier: unit tests in each module (agnhost parsing, the lifecycle table,
//! records, addresses, status and node objects; no root); `tests/probe_netns.rs` (root:
//! wiring, servers and the prober in throwaway `npt-*` namespaces, with probe rates);
//! `tests/agent_apiserver.rs` (root + control-plane binaries: the agent against etcd and
//! kube-apiserver, restart, deletion, a pod burst; `-- --ignored` adds a 100 s run under
//! kube-controller-manager's node lifecycle controller).

pub mod agnhost;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod pods;
pub mod records;
pub mod servers;
pub mod status;

use std::time::Duration;

use anyhow::Context;

pub use crate::agent_config::AgentConfig;
pub use pods::NETNS_ANNOTATION;

/// How long the agent keeps trying to reach the API server at start.
pub const REGISTER_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the node agent until SIGTERM or SIGINT. Blocking: builds its own runtime. On exit
/// pods stay realized (namespaces, links, records) so a restarted agent re-adopts them.
pub fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    // Logs go to stderr (the cluster keeps them per agent); RUST_LOG overrides `info`.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the agent runtime failed")?;
    runtime.block_on(run_async(cfg))
}

/// A client for the API server named in `kubeconfig`.
pub async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {} failed", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {} failed", kubeconfig.display()))?;
    kube::Client::try_from(config).context("building the API client failed")
}

async fn run_async(cfg: AgentConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler failed")?;
    let mut int =
        signal(SignalKind::interrupt()).context("installing the SIGINT handler failed")?;
    serve(cfg, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping, pods stay realized"),
            _ = int.recv() => tracing::info!("SIGINT: stopping, pods stay realized"),
        }
    })
    .await
}

/// The agent until `shutdown` completes: registers the node, keeps it alive, realizes its
/// pods. On shutdown servers stop and pods stay realized (see [`run`]). Must run on a
/// runtime with the time and I/O drivers.
pub async fn serve(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = client_from(&cfg.kubeconfig).await?;
    let since = k8s_openapi::jiff::Timestamp::now();
    let deadline = tokio::time::Instant::now() + REGISTER_DEADLINE;
    loop {
        match node::register(&client, &cfg, since).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %error_chain(&e), "node registration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("the API server did not accept the node in time"),
        }
    }
    tracing::info!(node = %cfg.node_name, "node registered");

    let manager = pods::PodManager::new(client.clone(), cfg.clone())
        .context("loading the agent's pod records failed")?;
    let keep_alive = tokio::spawn(node::keep_alive(client.clone(), cfg.clone(), since));
    let watch = tokio::spawn(std::sync::Arc::clone(&manager).watch());
    shutdown.await;
    watch.abort();
    keep_alive.abort();
    manager.shutdown().await;
    Ok(())
}

pub(crate) use crate::error_chain;
