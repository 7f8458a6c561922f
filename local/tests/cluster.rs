//! Local-cluster tests (tier 3): a real etcd + control plane on loopback, node agents, the
//! fabric; `up`, kubectl, a StatefulSet across both nodes, TCP/UDP probes, namespace
//! deletion, server-side validation, `down`, and cleanup after the runner is SIGKILLed.
//!
//! A `harness = false` test: `main` calls [`netpol_local::maybe_run_role`] first, because
//! the cluster re-executes this binary as its node agents and external host.
//!
//! Skips (printing why) when not root or when the control-plane binaries are not found,
//! unless `NETPOL_REQUIRE_LOCAL=1`, which turns a skip into a failure. Trials share one
//! cluster and run in order on one thread; a guard downs it on exit, panics included.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use netpol_local::cluster::{self, Cluster, UpOptions};
use netpol_local::probe::{self, ProbeResult, Protocol};

/// Environment variable that makes this binary a child that brings a cluster up, prints
/// `READY`, and waits to be killed.
const CHILD_ENV: &str = "NPC_CLUSTER_TEST_CHILD";
const NETNS_ANNOTATION: &str = "local.netpol-conformance.io/netns";
const TEST_NS: &str = "npc-cluster-test";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// Named waits of this test.
struct Waits {
    pods_ready: Duration,
    namespace_gone: Duration,
    probe: Duration,
    child_ready: Duration,
    policy_applied: Duration,
    child_down: Duration,
}

const WAITS: Waits = Waits {
    pods_ready: Duration::from_secs(90),
    namespace_gone: Duration::from_secs(90),
    probe: Duration::from_secs(3),
    child_ready: Duration::from_secs(240),
    policy_applied: Duration::from_secs(30),
    child_down: Duration::from_secs(60),
};

fn main() -> ExitCode {
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
    // Phase timings of `up` (RUST_LOG overrides).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("netpol_local::cluster=info")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_up();
    }
    let mut args = Arguments::from_args();
    // One shared cluster, steps in order.
    args.test_threads = Some(1);
    let skip = skip_reason();
    if let Some(reason) = &skip {
        if netpol_local::local_required() {
            eprintln!("NETPOL_REQUIRE_LOCAL=1 but the local cluster cannot run: {reason}");
            return ExitCode::FAILURE;
        }
        eprintln!("skipped: {reason} (set NETPOL_REQUIRE_LOCAL=1 to make this a failure)");
    }
    let ctx = Arc::new(Ctx::new());
    let trials = trials(&ctx)
        .into_iter()
        .map(|t| t.with_ignored_flag(skip.is_some()))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Whatever happened, leave nothing behind.
    if skip.is_none() {
        let _ = cluster::down(&ctx.state_dir);
    }
    if let Some(times) = ctx.times.lock().unwrap().as_ref() {
        eprintln!("local cluster start times: {times}");
    }
    conclusion.exit_code()
}

fn skip_reason() -> Option<String> {
    if !cluster::is_root() {
        return Some("the local cluster needs root (network namespaces)".into());
    }
    if let Err(e) = cluster::find_bin_dir() {
        return Some(e.to_string());
    }
    None
}

/// Shared between trials.
struct Ctx {
    state_dir: PathBuf,
    /// The cluster instance: env `NETPOL_LOCAL_INSTANCE`, default `t`, so the test's
    /// namespaces (`npc-t-*`) never collide with a user's plain local cluster.
    instance: String,
    cluster: Mutex<Option<Cluster>>,
    before: Mutex<Option<Snapshot>>,
    /// Namespaces of every pod the test saw (down must remove them).
    seen_pod_netns: Mutex<BTreeSet<PathBuf>>,
    times: Mutex<Option<String>>,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn new() -> Self {
        Ctx {
            state_dir: std::env::var_os(cluster::STATE_DIR_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/netpol-conformance/local-test")),
            instance: std::env::var(netpol_local::fabric::INSTANCE_ENV)
                .ok()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "t".into()),
            cluster: Mutex::new(None),
            before: Mutex::new(None),
            seen_pod_netns: Mutex::new(BTreeSet::new()),
            times: Mutex::new(None),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        }
    }

    fn opts(&self) -> UpOptions {
        UpOptions {
            state_dir: self.state_dir.clone(),
            instance: self.instance.clone(),
            ..UpOptions::default()
        }
    }

    fn cluster(&self) -> Result<Cluster, Failed> {
        self.cluster
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "the cluster is not up (an earlier step failed)".into())
    }
}

/// What the host looks like: namespaces, host links, our processes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
}

fn snapshot() -> Snapshot {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| Some(l.split(':').nth(1)?.trim().split('@').next()?.to_string()))
        .collect();
    Snapshot {
        netns: netpol_local::fabric::list_netns().into_iter().collect(),
        links,
    }
}

/// Processes that belong to a cluster in `state_dir`: the owner mark in their environment
/// or the state directory on their command line.
fn cluster_processes(state_dir: &Path) -> Vec<(i32, String)> {
    let dir = state_dir.display().to_string();
    let me = std::process::id() as i32;
    let mut found: Vec<(i32, String)> = cluster::owned_processes(state_dir)
        .into_iter()
        .map(|p| (p, "owner mark".to_string()))
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&dir) && !found.iter().any(|(p, _)| *p == pid) {
            found.push((pid, cmd));
        }
    }
    found
}

fn check_clean(ctx: &Ctx, before: &Snapshot) -> Result<(), Failed> {
    // Other clusters (other instances) may come and go meanwhile: judge only namespaces
    // that are ours by name or that our pods used.
    let now = snapshot();
    let seen = ctx.seen_pod_netns.lock().unwrap().clone();
    let new_netns: Vec<_> = now
        .netns
        .difference(&before.netns)
        .filter(|n| {
            cluster::is_cluster_netns(n, &ctx.instance)
                || seen.contains(&netpol_local::fabric::netns_path(n))
        })
        .collect();
    let new_links: Vec<_> = now.links.difference(&before.links).collect();
    let procs = cluster_processes(&ctx.state_dir);
    if !new_netns.is_empty() || !new_links.is_empty() || !procs.is_empty() {
        return Err(format!(
            "left behind: netns {new_netns:?}, host links {new_links:?}, processes {procs:?}"
        )
        .into());
    }
    if ctx.state_dir.exists() {
        return Err(format!("state dir {} still exists", ctx.state_dir.display()).into());
    }
    Ok(())
}

fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Ctx) -> Result<(), Failed>| {
        let ctx = Arc::clone(ctx);
        Trial::test(format!("local_cluster::{name}"), move || f(&ctx))
    };
    let mut trials = vec![
        t("a01_cold_up_reaches_ready", cold_up),
        t("a02_up_again_returns_the_running_cluster", up_again),
        t("a03_kubectl_works_with_the_kubeconfig", kubectl_works),
        t(
            "a04_statefulset_pods_ready_on_both_nodes",
            statefulset_ready,
        ),
        t(
            "a05_tcp_udp_probes_across_nodes_and_to_the_external_host",
            probes_connect,
        ),
        t(
            "a05b_no_namespace_has_a_route_out_of_the_cluster",
            no_route_out,
        ),
        t(
            "a06_invalid_networkpolicy_rejected_on_server_dry_run",
            dry_run_rejects,
        ),
        t("a07_namespace_deletion_completes", namespace_deletion),
        t("a08_down_leaves_nothing", down_leaves_nothing),
        t("a09_warm_up_then_down", warm_up_then_down),
        t(
            "a10_down_after_sigkilled_runner_leaves_nothing",
            sigkill_cleanup,
        ),
        t("a12_sigint_to_the_runner_downs_the_cluster", sigint_cleanup),
        t(
            "a13_down_after_runner_killed_mid_up_leaves_nothing",
            killed_mid_up,
        ),
    ];
    // The enforced run needs the netpol-enforcer binary (cargo build -p netpol-enforcer).
    let enforced = t(
        "a11_enforcer_per_node_ready_and_enforcing",
        enforced_cluster,
    );
    match cluster::locate_enforcer() {
        Ok(_) => trials.push(enforced),
        Err(e) => {
            eprintln!("a11 skipped: {e}");
            trials.push(enforced.with_ignored_flag(true));
        }
    }
    trials
}

fn cold_up(ctx: &Ctx) -> Result<(), Failed> {
    let taken: Vec<String> = netpol_local::fabric::list_netns()
        .into_iter()
        .filter(|n| cluster::is_cluster_netns(n, &ctx.instance))
        .collect();
    if !taken.is_empty() {
        return Err(format!(
            "namespaces of instance {:?} exist already: {taken:?}; another test run holds them \
             (or run `netpol-conformance local down` with NETPOL_LOCAL_DIR={})",
            ctx.instance,
            ctx.state_dir.display()
        )
        .into());
    }
    *ctx.before.lock().unwrap() = Some(snapshot());
    let started = Instant::now();
    let c = cluster::up(&ctx.opts()).map_err(|e| format!("up: {:#}", anyhow::Error::from(e)))?;
    let cold = started.elapsed();
    *ctx.times.lock().unwrap() = Some(format!("cold {:.1}s", cold.as_secs_f64()));
    eprintln!("cold up: {:.1}s", cold.as_secs_f64());
    assert_eq!(c.node_names, ["npc-node-0", "npc-node-1"]);
    assert!(c.kubeconfig.is_file());
    let st = cluster::status(&ctx.state_dir).map_err(|e| e.to_string())?;
    if !st.healthy() {
        return Err(format!("status after up is not healthy:\n{st}").into());
    }
    *ctx.cluster.lock().unwrap() = Some(c);
    Ok(())
}

fn up_again(ctx: &Ctx) -> Result<(), Failed> {
    let first = ctx.cluster()?;
    let started = Instant::now();
    let again =
        cluster::up(&ctx.opts()).map_err(|e| format!("second up: {:#}", anyhow::Error::from(e)))?;
    assert_eq!(again, first, "a second up must return the running cluster");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idempotent up took {:?}",
        started.elapsed()
    );
    Ok(())
}

fn kubectl(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(c.kubectl())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_ok(c: &Cluster, args: &[&str]) -> Result<String, Failed> {
    let out = kubectl(c, args);
    if !out.status.success() {
        return Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl_works(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    let nodes = kubectl_ok(&c, &["get", "nodes", "-o", "name"])?;
    assert_eq!(nodes.trim(), "node/npc-node-0\nnode/npc-node-1");
    let crds = kubectl_ok(&c, &["get", "crd", "-o", "name"])?;
    for kind in [
        "adminnetworkpolicies.policy.networking.k8s.io",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "clusternetworkpolicies.policy.networking.k8s.io",
    ] {
        assert!(crds.contains(kind), "CRD {kind} missing from {crds}");
    }
    kubectl_ok(&c, &["get", "serviceaccount", "default", "-n", "default"])?;
    Ok(())
}

fn statefulset_manifest() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": TEST_NS},
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "affinity": {"podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [{
                            "labelSelector": {"matchLabels": {"app": "web"}},
                            "topologyKey": "kubernetes.io/hostname",
                        }],
                    }},
                    "containers": [{
                        "name": "agnhost",
                        "image": AGNHOST,
                        "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                        "ports": [
                            {"containerPort": 8080, "protocol": "TCP"},
                            {"containerPort": 8081, "protocol": "UDP"},
                        ],
                    }],
                },
            },
        },
    })
}

fn apply(c: &Cluster, doc: &serde_json::Value) -> Result<(), Failed> {
    let mut child = Command::new(c.kubectl())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl apply: {e}"))?;
    serde_json::to_writer(child.stdin.take().unwrap(), doc).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// (name, node, ip, netns) of each Ready pod of the StatefulSet.
type PodInfo = (String, String, Ipv4Addr, PathBuf);

fn ready_pods(ctx: &Ctx, c: &Cluster) -> Result<Vec<PodInfo>, String> {
    ctx.rt.block_on(async {
        let client = c.client().await.map_err(|e| e.to_string())?;
        let pods: Api<Pod> = Api::namespaced(client, TEST_NS);
        let list = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for p in list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.and_then(|ip| ip.parse().ok());
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let netns = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NETNS_ANNOTATION).cloned());
            match (ready, ip, node, netns) {
                (true, Some(ip), Some(node), Some(netns)) => {
                    out.push((name, node, ip, PathBuf::from(netns)));
                }
                state => return Err(format!("{name} not ready: {state:?}")),
            }
        }
        if out.len() != 2 {
            return Err(format!("{} ready pods, want 2", out.len()));
        }
        out.sort();
        ctx.seen_pod_netns
            .lock()
            .unwrap()
            .extend(out.iter().map(|p| p.3.clone()));
        Ok(out)
    })
}

fn statefulset_ready(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    apply(
        &c,
        &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEST_NS}}),
    )?;
    apply(&c, &statefulset_manifest())?;
    let deadline = Instant::now() + WAITS.pods_ready;
    let pods = loop {
        match ready_pods(ctx, &c) {
            Ok(p) => break p,
            Err(e) if Instant::now() >= deadline => {
                let listing = kubectl(&c, &["get", "pods", "-n", TEST_NS, "-o", "wide"]);
                return Err(format!(
                    "pods not ready after {:?}: {e}\n{}",
                    WAITS.pods_ready,
                    String::from_utf8_lossy(&listing.stdout)
                )
                .into());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 2, "pods must land on both nodes: {pods:?}");
    for (name, node, ip, _) in &pods {
        let i = c.node_names.iter().position(|n| n == node).unwrap();
        assert!(
            c.pod_cidrs[i].contains(ip),
            "{name} on {node} has {ip}, outside {}",
            c.pod_cidrs[i]
        );
    }
    Ok(())
}

fn probes_connect(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    let pods = ready_pods(ctx, &c)?;
    let mut failures = Vec::new();
    let mut check = |from: &PodInfo, to: SocketAddr, proto: Protocol| {
        let r = probe::connect(&from.3, to, proto, WAITS.probe);
        if r != ProbeResult::Connected {
            failures.push(format!("{} -> {to}/{proto}: {r:?}", from.0));
        }
    };
    for (a, b) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
        check(a, SocketAddr::from((b.2, 8080)), Protocol::Tcp);
        check(a, SocketAddr::from((b.2, 8081)), Protocol::Udp);
        check(a, SocketAddr::from((c.external_host_ip, 80)), Protocol::Tcp);
        check(a, SocketAddr::from((c.external_host_ip, 53)), Protocol::Udp);
        check(a, SocketAddr::from((c.external_host_ip, 53)), Protocol::Tcp);
    }
    // A closed port is refused, not connected: the probes can fail.
    let closed = probe::connect(
        &pods[0].3,
        SocketAddr::from((pods[1].2, 9)),
        Protocol::Tcp,
        WAITS.probe,
    );
    if closed == ProbeResult::Connected {
        failures.push(format!("port 9 on {} connected", pods[1].0));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}

/// Nothing in the cluster can reach the host's uplink: the nodes, the external host and the
/// fabric have no route to an address outside the fabric and pod CIDRs, and a pod's only way
/// out is its node (default route via the gateway). Asked with `ip route get` (no packet
/// is sent); TEST-NET-1 stands for any outside address.
fn no_route_out(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    let route = |ns: &Path, to: &str| {
        let name = ns.file_name().unwrap().to_string_lossy().into_owned();
        let out = Command::new("ip")
            .args(["-n", &name, "route", "get", to])
            .output()
            .unwrap();
        (
            name,
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let mut problems = Vec::new();
    let fabric = netpol_local::fabric::netns_path(&netpol_local::fabric::instance_netns(
        &ctx.instance,
        "fabric",
    ));
    let mut dead_ends: Vec<PathBuf> = c.node_netns.clone();
    dead_ends.push(c.external_netns.clone());
    dead_ends.push(fabric);
    for ns in &dead_ends {
        let (name, ok, text) = route(ns, "192.0.2.1");
        if ok {
            problems.push(format!("{name} routes outside: {text}"));
        }
    }
    for ns in c.node_netns.iter().chain([&c.external_netns]) {
        let (name, ok, _) = route(ns, &c.external_host_ip.to_string());
        if !ok {
            problems.push(format!("{name} has no route to the external host"));
        }
    }
    for pod in ready_pods(ctx, &c)? {
        let (name, ok, text) = route(&pod.3, "192.0.2.1");
        if ok && !text.contains("via 169.254.1.1") {
            problems.push(format!("pod {name} leaves other than via its node: {text}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

fn dry_run_rejects(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "bad-cidr", "namespace": "default"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
        },
    }))
    .unwrap();
    let good: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "good-cidr", "namespace": "default"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
        },
    }))
    .unwrap();
    ctx.rt.block_on(async {
        let client = c.client().await.map_err(|e| e.to_string())?;
        let api: Api<NetworkPolicy> = Api::namespaced(client, "default");
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry, &good)
            .await
            .map_err(|e| format!("a valid policy was rejected: {e}"))?;
        match api.create(&dry, &np).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {
                assert!(
                    s.message.contains("cidr"),
                    "unexpected message: {}",
                    s.message
                );
                Ok(())
            }
            other => Err(format!("bad CIDR was not rejected with 422: {other:?}").into()),
        }
    })
}

fn namespace_deletion(ctx: &Ctx) -> Result<(), Failed> {
    let c = ctx.cluster()?;
    let pod_netns: Vec<PathBuf> = ready_pods(ctx, &c)
        .map(|p| p.into_iter().map(|p| p.3).collect())
        .unwrap_or_default();
    ctx.rt.block_on(async {
        let client = c.client().await.map_err(|e| e.to_string())?;
        let api: Api<Namespace> = Api::all(client);
        api.delete(TEST_NS, &DeleteParams::default())
            .await
            .map_err(|e| format!("deleting namespace {TEST_NS}: {e}"))?;
        let deadline = Instant::now() + WAITS.namespace_gone;
        loop {
            match api.get_opt(TEST_NS).await {
                Ok(None) => break,
                Ok(Some(ns)) if Instant::now() >= deadline => {
                    return Err(format!(
                        "namespace still there after {:?}: {:?}",
                        WAITS.namespace_gone, ns.status
                    ));
                }
                Err(e) => return Err(e.to_string()),
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        Ok::<_, String>(())
    })?;
    // The agents tear the pods' namespaces down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod_netns.iter().any(|p| p.exists()) {
        if Instant::now() >= deadline {
            return Err(format!("pod namespaces left: {pod_netns:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn down_leaves_nothing(ctx: &Ctx) -> Result<(), Failed> {
    let before = ctx
        .before
        .lock()
        .unwrap()
        .clone()
        .ok_or("no snapshot from before up")?;
    let report = cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    *ctx.cluster.lock().unwrap() = None;
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    check_clean(ctx, &before)?;
    // A second down is a no-op.
    let again = cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    assert!(!again.had_state && again.errors.is_empty(), "{again}");
    Ok(())
}

fn warm_up_then_down(ctx: &Ctx) -> Result<(), Failed> {
    let before = snapshot();
    let started = Instant::now();
    let c =
        cluster::up(&ctx.opts()).map_err(|e| format!("warm up: {:#}", anyhow::Error::from(e)))?;
    let warm = started.elapsed();
    eprintln!("warm up: {:.1}s", warm.as_secs_f64());
    if let Some(t) = ctx.times.lock().unwrap().as_mut() {
        t.push_str(&format!(", warm {:.1}s", warm.as_secs_f64()));
    }
    kubectl_ok(&c, &["get", "nodes"])?;
    let started = Instant::now();
    cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    eprintln!("down: {:.1}s", started.elapsed().as_secs_f64());
    check_clean(ctx, &before)
}

/// Child mode: bring a cluster up, say READY, wait to be killed.
fn child_up() -> ExitCode {
    let opts = Ctx::new().opts();
    match cluster::up(&opts) {
        Ok(_) => {
            if std::env::var(CHILD_ENV).as_deref() == Ok("signal")
                && let Err(e) = cluster::down_on_signal(&opts.state_dir)
            {
                println!("FAILED {e}");
                return ExitCode::FAILURE;
            }
            println!("READY");
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            println!("FAILED {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// Kills the child on drop (if a step fails before the SIGKILL).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigkill_cleanup(ctx: &Ctx) -> Result<(), Failed> {
    let before = snapshot();
    let mut child = spawn_child(ctx, "up")?;
    // A pod, so its namespace (created by an agent that dies too) must be found by down.
    let bin_dir = cluster::find_bin_dir().map_err(|e| e.to_string())?;
    let kc = ctx.state_dir.join("kubeconfig");
    let kubectl = |args: &[&str]| {
        Command::new(bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .output()
            .expect("running kubectl")
    };
    let out = kubectl(&[
        "run",
        "orphan",
        "-n",
        "default",
        "--image",
        AGNHOST,
        "--restart=Never",
        "--",
        "netexec",
        "--http-port=8080",
    ]);
    assert!(out.status.success(), "kubectl run: {out:?}");
    let jsonpath = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        NETNS_ANNOTATION.replace('.', "\\.")
    );
    let deadline = Instant::now() + WAITS.pods_ready;
    let pod_netns = loop {
        let out = kubectl(&["get", "pod", "orphan", "-n", "default", "-o", &jsonpath]);
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() && Path::new(&path).exists() {
            break PathBuf::from(path);
        }
        if Instant::now() >= deadline {
            return Err(format!("pod orphan never got a namespace: {out:?}").into());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    child.0.kill().map_err(|e| format!("SIGKILL: {e}"))?;
    child.0.wait().unwrap();
    // The cluster outlives its runner: its processes are in their own groups.
    let orphans = cluster_processes(&ctx.state_dir);
    assert!(
        orphans.len() >= 5,
        "expected the orphaned cluster's processes, found {orphans:?}"
    );
    assert!(pod_netns.exists(), "the pod namespace vanished before down");
    ctx.seen_pod_netns.lock().unwrap().insert(pod_netns.clone());
    let report = cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    assert!(
        !pod_netns.exists(),
        "down left the pod namespace {}",
        pod_netns.display()
    );
    check_clean(ctx, &before)
}

/// Starts this binary as a child runner in `mode` and waits for its `READY`.
fn spawn_child(ctx: &Ctx, mode: &str) -> Result<ChildGuard, Failed> {
    let exe = std::env::current_exe().unwrap();
    let mut child = ChildGuard(
        Command::new(exe)
            .env(CHILD_ENV, mode)
            .env(cluster::STATE_DIR_ENV, &ctx.state_dir)
            .env(netpol_local::fabric::INSTANCE_ENV, &ctx.instance)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning the child runner: {e}"))?,
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(WAITS.child_ready) {
        Ok(l) if l == "READY" => Ok(child),
        other => Err(format!("child runner did not come up: {other:?}").into()),
    }
}

/// SIGKILLs the runner while `up` waits for the apiserver (namespaces and some processes
/// exist, the cluster is not ready), then checks `down` still leaves nothing.
fn killed_mid_up(ctx: &Ctx) -> Result<(), Failed> {
    let before = snapshot();
    let exe = std::env::current_exe().unwrap();
    let mut child = ChildGuard(
        Command::new(exe)
            .env(CHILD_ENV, "up")
            .env(cluster::STATE_DIR_ENV, &ctx.state_dir)
            .env(netpol_local::fabric::INSTANCE_ENV, &ctx.instance)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning the child runner: {e}"))?,
    );
    let deadline = Instant::now() + WAITS.child_ready;
    loop {
        let state = netpol_local::state::State::load(&ctx.state_dir)
            .ok()
            .flatten();
        if state.is_some_and(|s| s.processes.iter().any(|p| p.name == "kube-apiserver")) {
            break;
        }
        if Instant::now() >= deadline {
            return Err("the runner never started the apiserver".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().map_err(|e| format!("SIGKILL: {e}"))?;
    child.0.wait().unwrap();
    assert!(
        !cluster_processes(&ctx.state_dir).is_empty(),
        "the half-started cluster's processes should outlive the runner"
    );
    let report = cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    check_clean(ctx, &before)
}

fn sigint_cleanup(ctx: &Ctx) -> Result<(), Failed> {
    let before = snapshot();
    let mut child = spawn_child(ctx, "signal")?;
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
        .map_err(|e| format!("SIGINT: {e}"))?;
    let deadline = Instant::now() + WAITS.child_down;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(format!("runner still alive {:?} after SIGINT", WAITS.child_down).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after SIGINT: {status:?}"
    );
    check_clean(ctx, &before)
}

fn enforced_cluster(ctx: &Ctx) -> Result<(), Failed> {
    let enforcer = cluster::locate_enforcer().map_err(|e| e.to_string())?;
    let before = snapshot();
    let opts = UpOptions {
        enforcer: Some(enforcer),
        ..ctx.opts()
    };
    let started = Instant::now();
    let c = cluster::up(&opts).map_err(|e| format!("enforced up: {:#}", anyhow::Error::from(e)))?;
    eprintln!("enforced up: {:.1}s", started.elapsed().as_secs_f64());
    *ctx.cluster.lock().unwrap() = Some(c.clone());
    assert!(c.enforced);
    let st = cluster::status(&ctx.state_dir).map_err(|e| e.to_string())?;
    let enforcers = st
        .processes
        .iter()
        .filter(|p| p.0.starts_with("enforcer-"))
        .count();
    assert_eq!(enforcers, 2, "one enforcer per node:\n{st}");
    assert!(st.healthy(), "{st}");
    // Without policies everything is allowed; a default-deny ingress policy blocks.
    statefulset_ready(ctx)?;
    let pods = ready_pods(ctx, &c)?;
    let target = SocketAddr::from((pods[1].2, 8080));
    let r = probe::connect(&pods[0].3, target, Protocol::Tcp, WAITS.probe);
    assert_eq!(r, ProbeResult::Connected, "before any policy");
    apply(
        &c,
        &serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-ingress", "namespace": TEST_NS},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }),
    )?;
    let deadline = Instant::now() + WAITS.policy_applied;
    loop {
        let r = probe::connect(&pods[0].3, target, Protocol::Tcp, WAITS.probe);
        if r == ProbeResult::Timeout {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "deny-all ingress not enforced after {:?}: {r:?}",
                WAITS.policy_applied
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = cluster::down(&ctx.state_dir).map_err(|e| e.to_string())?;
    *ctx.cluster.lock().unwrap() = None;
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    check_clean(ctx, &before)
}
