//! Real-node tests (tier 3): `up --runtime kubelet` brings up two nodes each running
//! containerd + runc, a kubelet and kube-proxy; pods on both nodes reach each other by pod IP
//! and through a Service; `kubectl exec` and `kubectl logs` work through the apiserver; and
//! `down` leaves the host as it found it: no process, network namespace, mount, cgroup,
//! iptables/nft table or kernel tunable changed — also when the process that ran `up` was
//! SIGKILLed.
//!
//! A `harness = false` test: `main` calls [`netpol_local::maybe_run_role`] first, because the
//! cluster re-executes this binary (the namespace-entering wrapper, the fabric proxy).
//!
//! Skips with the reason when not root, when the control plane is missing (as
//! tests/cluster.rs), or when the node binaries or images are missing (hack/node-binaries.sh,
//! hack/node-images.sh). `NETPOL_REQUIRE_LOCAL=1` turns the first two into failures; the
//! third only with `NETPOL_SETUP_NODES=1` too, since only then does hack/setup.sh provide the
//! node binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use netpol_local::cluster::{self, Cluster, Runtime, UpOptions};
use netpol_local::kubelet::{self, host};

/// Makes this binary a child that brings a cluster up, prints `READY` and waits to be killed.
const CHILD_ENV: &str = "NPC_REAL_NODES_CHILD";
const INSTANCE: &str = "rn";
const STATE_DIR: &str = "/run/netpol-conformance/real-nodes-test";
const TEST_NS: &str = "npc-real-nodes";

/// Named waits of this test.
struct Waits {
    pods_ready: Duration,
    child_ready: Duration,
}

const WAITS: Waits = Waits {
    pods_ready: Duration::from_secs(120),
    child_ready: Duration::from_secs(300),
};

fn main() -> ExitCode {
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
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
    args.test_threads = Some(1);
    let skip = match skip_reason() {
        Ok(()) => None,
        Err((reason, required)) => {
            if required {
                eprintln!("the real nodes cannot run but are required: {reason}");
                return ExitCode::FAILURE;
            }
            eprintln!("skipped: {reason}");
            Some(reason)
        }
    };
    let trials = vec![
        Trial::test(
            "real_nodes::pods_exec_services_then_down_restores_the_host",
            pods_exec_services_then_down_restores_the_host,
        ),
        Trial::test("real_nodes::down_after_sigkill_restores_the_host", || {
            down_after_sigkill_restores_the_host()
        }),
    ]
    .into_iter()
    .map(|t| t.with_ignored_flag(skip.is_some()))
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Why the test cannot run, and whether that is a failure.
fn skip_reason() -> Result<(), (String, bool)> {
    let flag = |name: &str| std::env::var(name).as_deref() == Ok("1");
    let required = flag("NETPOL_REQUIRE_LOCAL");
    if !cluster::is_root() {
        return Err(("real nodes need root".into(), required));
    }
    if let Err(e) = cluster::find_bin_dir() {
        return Err((e.to_string(), required));
    }
    let setup_nodes = flag("NETPOL_SETUP_NODES");
    if let Err(e) = kubelet::find_node_bin_dir() {
        return Err((e.to_string(), required && setup_nodes));
    }
    if let Err(e) = kubelet::find_images_dir() {
        return Err((e.to_string(), required && setup_nodes));
    }
    Ok(())
}

fn opts() -> UpOptions {
    UpOptions {
        state_dir: PathBuf::from(STATE_DIR),
        nodes: 2,
        instance: INSTANCE.into(),
        runtime: Runtime::Kubelet,
        enforcer_daemonset: false,
        ..Default::default()
    }
}

/// What `down` must restore.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostSnapshot {
    netns: BTreeSet<String>,
    mount_points: BTreeSet<String>,
    /// Top-level cgroups of every hierarchy.
    cgroups: BTreeSet<PathBuf>,
    nft_tables: BTreeSet<String>,
    /// Tables and chains of the host's iptables-save (IPv4 and IPv6).
    iptables: BTreeSet<String>,
    sysctls: BTreeMap<String, String>,
    /// Processes running a node binary or runc, or marked as the test cluster's.
    node_processes: BTreeSet<i32>,
    /// Paths real nodes use that must not appear on the host.
    fixed_paths: BTreeSet<String>,
}

fn lines_of(program: &str, args: &[&str]) -> BTreeSet<String> {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn snapshot() -> HostSnapshot {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount_points = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .collect();
    let mut cgroups = BTreeSet::new();
    for h in host::cgroup_hierarchies() {
        cgroups.extend(host::child_dirs(&h));
    }
    let mut iptables: BTreeSet<String> = BTreeSet::new();
    for save in ["iptables-save", "ip6tables-save"] {
        iptables.extend(
            lines_of(save, &[])
                .into_iter()
                .filter(|l| l.starts_with('*') || l.starts_with(':'))
                // Packet counters change on their own.
                .map(|l| l.split(" [").next().unwrap_or(&l).to_string()),
        );
    }
    let mut keys: Vec<&str> = host::KUBELET_TUNABLES.to_vec();
    keys.extend([
        "net/ipv4/ip_forward",
        "net/ipv4/conf/all/route_localnet",
        "net/bridge/bridge-nf-call-iptables",
    ]);
    let sysctls = host::read_sysctls(&keys)
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    let bin_dir = kubelet::find_node_bin_dir().ok();
    let mark = format!("{}={STATE_DIR}", cluster::OWNER_ENV);
    let any_mark = format!("{}=", cluster::OWNER_ENV);
    let node_processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    // Ours by mark; a node binary without any mark too (another cluster's
                    // processes carry their own mark and are not ours).
                    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    let mut vars = env.split(|b| *b == 0);
                    if vars.clone().any(|kv| kv == mark.as_bytes()) {
                        return true;
                    }
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                    let node_binary = bin_dir.as_ref().is_some_and(|d| exe.starts_with(d))
                        || exe == Path::new("/usr/sbin/runc");
                    node_binary && !vars.any(|kv| kv.starts_with(any_mark.as_bytes()))
                })
                .collect()
        })
        .unwrap_or_default();
    let fixed_paths = [
        "/var/lib/kubelet",
        "/var/lib/containerd",
        "/var/lib/cni",
        "/var/log/pods",
        "/var/log/containers",
        "/run/containerd",
        "/run/nri",
        "/opt/containerd",
        "/etc/cni/net.d",
    ]
    .iter()
    .filter(|p| Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    HostSnapshot {
        netns: netpol_local::fabric::list_netns().into_iter().collect(),
        mount_points,
        cgroups,
        nft_tables: lines_of("nft", &["list", "tables"]),
        iptables,
        sysctls,
        node_processes,
        fixed_paths,
    }
}

/// Panics with every difference between two snapshots.
fn assert_restored(before: &HostSnapshot, after: &HostSnapshot) -> Result<(), Failed> {
    fn diff<T: Ord + std::fmt::Debug>(what: &str, a: &BTreeSet<T>, b: &BTreeSet<T>) -> Vec<String> {
        let mut out = Vec::new();
        // Only additions: something else on the host (another cluster) may go meanwhile.
        let added: Vec<&T> = b.difference(a).collect();
        if !added.is_empty() {
            out.push(format!("{what} left behind: {added:?}"));
        }
        out
    }
    let mut problems = Vec::new();
    problems.extend(diff("network namespaces", &before.netns, &after.netns));
    problems.extend(diff(
        "mount points",
        &before.mount_points,
        &after.mount_points,
    ));
    problems.extend(diff("cgroups", &before.cgroups, &after.cgroups));
    problems.extend(diff("nft tables", &before.nft_tables, &after.nft_tables));
    problems.extend(diff("iptables chains", &before.iptables, &after.iptables));
    problems.extend(diff(
        "node processes",
        &before.node_processes,
        &after.node_processes,
    ));
    problems.extend(diff("fixed paths", &before.fixed_paths, &after.fixed_paths));
    if before.sysctls != after.sysctls {
        problems.push(format!(
            "sysctls changed: before {:?}, after {:?}",
            before.sysctls, after.sysctls
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

fn kubectl(c: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<String, Failed> {
    let kubeconfig = c.kubeconfig.display().to_string();
    let args = [&["--kubeconfig", kubeconfig.as_str()][..], args].concat();
    netpol_enforcer::command::run(c.kubectl(), &args, stdin)
        .map_err(|e| netpol_local::error_chain(&e).into())
}

fn pod_manifest(name: &str, node: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TEST_NS, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "agnhost",
                "image": kubelet::AGNHOST_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["netexec", "--http-port=8080"],
                "ports": [{"containerPort": 8080}],
            }],
        },
    })
    .to_string()
}

/// Two pods on two nodes, a Service, probes by pod IP and ClusterIP, exec and logs.
fn exercise(c: &Cluster) -> Result<(), Failed> {
    for (node, cidr) in c.node_names.iter().zip(&c.pod_cidrs) {
        let got = kubectl(
            c,
            &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"],
            None,
        )?;
        if got.trim() != cidr.to_string() {
            return Err(format!("{node} has podCIDR {got:?}, not {cidr}").into());
        }
    }
    kubectl(c, &["create", "namespace", TEST_NS], None)?;
    let started = Instant::now();
    for (name, node) in [("a", &c.node_names[0]), ("b", &c.node_names[1])] {
        kubectl(c, &["apply", "-f", "-"], Some(&pod_manifest(name, node)))?;
    }
    let timeout = format!("--timeout={}s", WAITS.pods_ready.as_secs());
    kubectl(
        c,
        &[
            "-n",
            TEST_NS,
            "wait",
            "--for=condition=Ready",
            "pod/a",
            "pod/b",
            &timeout,
        ],
        None,
    )?;
    eprintln!("two pods Ready in {:?}", started.elapsed());
    kubectl(
        c,
        &[
            "-n",
            TEST_NS,
            "expose",
            "pod",
            "b",
            "--port=80",
            "--target-port=8080",
        ],
        None,
    )?;
    let b_ip = kubectl(
        c,
        &[
            "-n",
            TEST_NS,
            "get",
            "pod",
            "b",
            "-o",
            "jsonpath={.status.podIP}",
        ],
        None,
    )?;
    let svc_ip = kubectl(
        c,
        &[
            "-n",
            TEST_NS,
            "get",
            "svc",
            "b",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    )?;
    for target in [format!("{b_ip}:8080"), format!("{svc_ip}:80")] {
        // kube-proxy may program the Service a moment after it is created.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = kubectl(
                c,
                &[
                    "-n",
                    TEST_NS,
                    "exec",
                    "a",
                    "--",
                    "/agnhost",
                    "connect",
                    &target,
                    "--timeout=3s",
                ],
                None,
            );
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("a → {target}: {e:?}").into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
    let hostname = kubectl(
        c,
        &["-n", TEST_NS, "exec", "b", "--", "sh", "-c", "hostname"],
        None,
    )?;
    if hostname.trim() != "b" {
        return Err(format!("exec hostname in b said {hostname:?}").into());
    }
    kubectl(c, &["-n", TEST_NS, "logs", "b"], None)?;
    Ok(())
}

fn pods_exec_services_then_down_restores_the_host() -> Result<(), Failed> {
    let _ = cluster::down(Path::new(STATE_DIR));
    let before = snapshot();
    let started = Instant::now();
    let guard = cluster::ClusterGuard::up(&opts()).map_err(|e| format!("up: {e:?}"))?;
    eprintln!("local up --runtime kubelet took {:?}", started.elapsed());
    let during = snapshot();
    let result = exercise(&guard.cluster);
    let c = guard.disarm();
    let report = cluster::down(&c.state_dir).map_err(|e| format!("down: {e}"))?;
    result?;
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    if during.cgroups == before.cgroups || during.node_processes.is_empty() {
        return Err("the snapshot saw no trace of the running nodes; it proves nothing".into());
    }
    assert_restored(&before, &snapshot())
}

fn child_up() -> ExitCode {
    match cluster::up(&opts()) {
        Ok(_) => {
            println!("READY");
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("child up failed: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn down_after_sigkill_restores_the_host() -> Result<(), Failed> {
    let _ = cluster::down(Path::new(STATE_DIR));
    let before = snapshot();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == "READY" {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(WAITS.child_ready).is_ok();
    let status = cluster::status(Path::new(STATE_DIR)).ok();
    if ready && let Some(kc) = status.as_ref().and_then(|s| s.kubeconfig.clone()) {
        // A running pod, so shims and containers outlive the kill too.
        let c = Cluster {
            kubeconfig: kc,
            ..cluster_stub()
        };
        let _ = kubectl(&c, &["create", "namespace", TEST_NS], None);
        let _ = kubectl(
            &c,
            &["apply", "-f", "-"],
            Some(&pod_manifest("a", "npc-node-0")),
        );
        let _ = kubectl(
            &c,
            &[
                "-n",
                TEST_NS,
                "wait",
                "--for=condition=Ready",
                "pod/a",
                "--timeout=60s",
            ],
            None,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let report = cluster::down(Path::new(STATE_DIR)).map_err(|e| format!("down: {e}"))?;
    if !ready {
        return Err("the child never reported READY".into());
    }
    if !report.errors.is_empty() {
        return Err(format!("down reported errors:\n{report}").into());
    }
    assert_restored(&before, &snapshot())
}

/// A `Cluster` holding only what `kubectl` needs (the bin dir), for the SIGKILL trial.
fn cluster_stub() -> Cluster {
    Cluster {
        kubeconfig: PathBuf::new(),
        server: String::new(),
        node_names: Vec::new(),
        node_ips: Vec::new(),
        pod_cidrs: Vec::new(),
        external_host_ip: std::net::Ipv4Addr::UNSPECIFIED,
        external_netns: PathBuf::new(),
        node_netns: Vec::new(),
        bin_dir: cluster::find_bin_dir().unwrap_or_default(),
        state_dir: PathBuf::from(STATE_DIR),
        enforced: false,
        runtime: Runtime::Kubelet,
    }
}
