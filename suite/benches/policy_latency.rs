//! Policy created → enforced, on the local cluster with the bundled enforcer: how long after the
//! API server accepts a NetworkPolicy does a probe between two pods flip?
//!
//! `cargo build --release -p netpol-enforcer && sudo cargo bench -p netpol-conformance --bench policy_latency [-- ITERATIONS]`
//!
//! Two pods (x/a on one node, x/b maybe on the other). Each iteration creates a deny-ingress
//! policy for x/b and polls TCP connects from x/a until one times out (flip to blocked), then
//! deletes it and polls until a connect succeeds (flip to allowed). A blocked probe costs its
//! timeout (10 ms) before it can be told from a slow one, so the "blocked" figure has 10 ms
//! granularity; the "allowed" flip is seen within about a millisecond.

use std::path::Path;
use std::time::{Duration, Instant};

use netpol_conformance::case::ObjectRef;
use netpol_conformance::target::{ConnectOptions, TargetSpec, connect};
use netpol_conformance::world::WorldKind;
use netpol_local::probe::{ProbeResult, Protocol, connect as probe};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn wait_until(netns: &Path, target: std::net::SocketAddr, want_connected: bool) -> Duration {
    let start = Instant::now();
    let timeout = Duration::from_millis(10);
    loop {
        let connected = matches!(
            probe(netns, target, Protocol::Tcp, timeout),
            ProbeResult::Connected
        );
        if connected == want_connected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the probe never flipped"
        );
        if connected {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[allow(unsafe_code)] // std::env::set_var before any thread starts; SAFETY at the block
fn main() -> std::process::ExitCode {
    // The local cluster runs its node agents by re-executing this binary.
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    if !netpol_local::cluster::is_root() {
        eprintln!("policy_latency: needs root for the local cluster; not run");
        return std::process::ExitCode::SUCCESS;
    }
    // SAFETY: set before any thread of this process reads the environment.
    unsafe {
        std::env::set_var("NETPOL_LOCAL_INSTANCE", "lat");
        std::env::set_var(
            "NETPOL_LOCAL_DIR",
            std::env::temp_dir().join(format!("netpol-latency-{}", std::process::id())),
        );
    }
    let target = connect(
        &TargetSpec::Local {
            enforcer: true,
            runtime: netpol_local::cluster::Runtime::Emulated,
        },
        &ConnectOptions::new("latency"),
    )
    .expect("local cluster");
    let cluster = target.cluster.clone();
    let world = WorldKind::Upstream.model();
    let realized = cluster.create_world(&world, "lat").expect("world");
    let a = &realized.pods["x/a"];
    let b = &realized.pods["x/b"];
    let netns = Path::new(a.netns.as_deref().expect("netns annotation"));
    let dst = std::net::SocketAddr::new(b.ip, 80);
    let ns = realized.namespaces["x"].clone();
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-b", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}
    });
    let target_ref = ObjectRef {
        kind: "NetworkPolicy".into(),
        name: "deny-b".into(),
        namespace: Some(ns.clone()),
    };
    wait_until(netns, dst, true);
    let (mut to_blocked, mut to_allowed) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        cluster
            .create(std::slice::from_ref(&policy))
            .expect("create");
        let api = t.elapsed();
        to_blocked.push(api + wait_until(netns, dst, false));
        let t = Instant::now();
        cluster
            .delete(std::slice::from_ref(&target_ref))
            .expect("delete");
        let api = t.elapsed();
        to_allowed.push(api + wait_until(netns, dst, true));
    }
    cluster.delete_world(&realized).expect("cleanup");
    drop(cluster);
    target.finish();
    to_blocked.sort();
    to_allowed.sort();
    println!("policy created -> enforced (probe blocked), {iterations} iterations:");
    println!(
        "  p50 {:?}  p99 {:?}  max {:?}",
        percentile(&to_blocked, 0.5),
        percentile(&to_blocked, 0.99),
        to_blocked.last().unwrap()
    );
    println!("policy deleted -> enforced (probe allowed), {iterations} iterations:");
    println!(
        "  p50 {:?}  p99 {:?}  max {:?}",
        percentile(&to_allowed, 0.5),
        percentile(&to_allowed, 0.99),
        to_allowed.last().unwrap()
    );
    std::process::ExitCode::SUCCESS
}
