//! The node agent against a real API server (tiers 2–3): etcd + kube-apiserver on
//! loopback (no scheduler or controllers: pods are bound by `spec.nodeName`), one node
//! namespace `npt-<pid>-node`, the agent in-process.
//!
//! Checks: node registration (Ready, labels, InternalIP, podCIDR) and its Lease; pods
//! realized with status, IPs and the netns annotation; TCP/UDP probes between pods and to
//! a host-network pod; an agent restart re-adopting pods with the same IPs; deletion torn
//! down and confirmed; the time for a burst of pods to become Ready.
//!
//! Skips (printing why) without root or without the control-plane binaries.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use netpol_local::agent::{self, AgentConfig, NETNS_ANNOTATION, netns, node, records};
use netpol_local::probe::{self, ProbeResult, Protocol};
use serde_json::json;

const NODE: &str = "npt-agent-node";
const NS: &str = "default";

/// Named waits of this test.
const APISERVER_READY: Duration = Duration::from_secs(90);
const POD_READY: Duration = Duration::from_secs(30);
const POD_GONE: Duration = Duration::from_secs(30);
const PROBE: Duration = Duration::from_secs(2);
/// Pods created at once in the burst step; `NPT_AGENT_BURST` overrides it (e.g. 200 to
/// measure).
const BURST: usize = 30;

fn burst() -> usize {
    std::env::var("NPT_AGENT_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BURST)
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    netpol_local::cluster::find_bin_dir()
        .err()
        .map(|e| format!("no control-plane binaries: {e}"))
}

/// Processes and directories that go away on drop, panics included.
struct Env {
    children: Vec<Child>,
    dir: PathBuf,
    node_netns: PathBuf,
    state_dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Pods the agent left behind, then the node namespace.
        for record in records::load_records(&self.state_dir).unwrap_or_default() {
            let _ = records::destroy(&record, &self.node_netns);
        }
        probe::forget(&self.node_netns);
        let _ = netns::remove(&self.node_netns);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd + kube-apiserver (+ kube-controller-manager if asked), admin kubeconfig returned.
fn start_control_plane(
    dir: &Path,
    env: &mut Env,
    port_offset: u16,
    controller_manager: bool,
) -> PathBuf {
    let bin = netpol_local::cluster::find_bin_dir().unwrap();
    let base = 30000 + (std::process::id() % 3000) as u16 * 6 + port_offset;
    let (etcd_client, etcd_peer, api) = (base, base + 1, base + 2);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("sa.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("sa.pub"), key.public_key_pem()).unwrap();
    let token = format!(
        "t{:x}{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{token},admin,admin,system:masters\n"),
    )
    .unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let etcd = Command::new(bin.join("etcd"))
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .arg(format!(
            "--listen-client-urls=http://127.0.0.1:{etcd_client}"
        ))
        .arg(format!(
            "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
        ))
        .arg(format!(
            "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
        ))
        .stdout(Stdio::null())
        .stderr(log("etcd.log"))
        .spawn()
        .unwrap();
    env.children.push(etcd);
    let apiserver = Command::new(bin.join("kube-apiserver"))
        .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={api}"))
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .arg("--token-auth-file")
        .arg(dir.join("tokens.csv"))
        .args([
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
        ])
        .arg("--service-account-key-file")
        .arg(dir.join("sa.pub"))
        .arg("--service-account-signing-key-file")
        .arg(dir.join("sa.key"))
        .args([
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
        ])
        .stdout(Stdio::null())
        .stderr(log("apiserver.log"))
        .spawn()
        .unwrap();
    env.children.push(apiserver);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{api}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: admin\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    if controller_manager {
        let kcm = Command::new(bin.join("kube-controller-manager"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--secure-port=0",
                "--controllers=*",
                "--allocate-node-cidrs=false",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
            ])
            .arg("--service-account-private-key-file")
            .arg(dir.join("sa.key"))
            .stdout(Stdio::null())
            .stderr(log("controller-manager.log"))
            .spawn()
            .unwrap();
        env.children.push(kcm);
    }
    kubeconfig
}

fn node_netns(name: &str, node_ip: Ipv4Addr) -> PathBuf {
    let path = netns::path_of(name);
    let _ = netns::remove(&path);
    let p = path.clone();
    std::thread::spawn(move || netns::create_here(&p))
        .join()
        .unwrap()
        .unwrap();
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{node_ip}/32"), "dev", "lo"],
    ] {
        let ok = Command::new("ip")
            .args(["netns", "exec", name, "ip"])
            .args(&args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip {args:?}");
    }
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    path
}

/// The agent on its own thread and runtime; stops (pods stay realized) on drop.
struct AgentThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl AgentThread {
    fn start(cfg: AgentConfig) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agent::serve(cfg, async move {
                let _ = rx.await;
            }))
        });
        AgentThread {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.shutdown().expect("agent exits cleanly");
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("agent thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_manifest(name: &str, host_network: bool, containers: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"pod": name}},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": host_network,
            "automountServiceAccountToken": false,
            "containers": containers,
        }
    }))
    .unwrap()
}

fn serve_hostname(name: &str, proto: &str, port: u16) -> serde_json::Value {
    json!({
        "name": name,
        "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
        "command": ["/agnhost", "serve-hostname", format!("--{proto}"), "--http=false", "--port", port.to_string()],
    })
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pod is Ready; returns its IP and netns annotation.
async fn ready(api: &Api<Pod>, name: &str) -> (Ipv4Addr, PathBuf) {
    poll(&format!("pod {name} Ready"), POD_READY, || async {
        let p = api.get_opt(name).await.ok().flatten()?;
        if !is_ready(&p) {
            return None;
        }
        let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
        let ns = p
            .metadata
            .annotations
            .as_ref()?
            .get(NETNS_ANNOTATION)?
            .clone();
        Some((ip, PathBuf::from(ns)))
    })
    .await
}

fn probe_from(ns: &Path, ip: Ipv4Addr, port: u16, proto: Protocol) -> ProbeResult {
    probe::connect(ns, SocketAddr::from((ip, port)), proto, PROBE)
}

/// Control plane, node namespace and agent configuration for one test; `label` and
/// `port_offset` keep tests of one binary apart.
fn setup(
    label: &str,
    port_offset: u16,
    controller_manager: bool,
) -> (Env, AgentConfig, tokio::runtime::Runtime, kube::Client) {
    let tag = format!("{}{label}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("npt-agent-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let node_ip = Ipv4Addr::new(172, 31, 99, 1);
    let mut env = Env {
        children: Vec::new(),
        dir: dir.clone(),
        node_netns: netns::path_of(&format!("npt-{tag}-node")),
        state_dir: dir.join("state"),
    };
    let kubeconfig = start_control_plane(&dir, &mut env, port_offset, controller_manager);
    node_netns(&format!("npt-{tag}-node"), node_ip);
    let cfg = AgentConfig {
        node_name: NODE.into(),
        node_netns: env.node_netns.clone(),
        node_ip,
        pod_cidr: "10.244.200.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        kubeconfig: kubeconfig.clone(),
        state_dir: env.state_dir.clone(),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let client = agent::client_from(&kubeconfig).await.unwrap();
        poll("the API server", APISERVER_READY, || {
            let client = client.clone();
            async move { client.apiserver_version().await.ok() }
        })
        .await;
        // No controller-manager here: make the service account admission needs.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        poll("the default service account", APISERVER_READY, || {
            let sas = sas.clone();
            let sa = sa.clone();
            async move {
                match sas.create(&PostParams::default(), &sa).await {
                    Ok(_) => Some(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await;
        client
    });
    (env, cfg, rt, client)
}

#[test]
fn agent_registers_node_realizes_pods_readopts_and_confirms_deletion() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let (env, cfg, rt, client) = setup("a", 0, false);
    let node_ip = cfg.node_ip;

    let agent = AgentThread::start(cfg.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    rt.block_on(async {
        let node = poll("node Ready", POD_READY, || async {
            let n = nodes.get_opt(NODE).await.ok().flatten()?;
            let ready = n.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(n)
        })
        .await;
        let labels = node.metadata.labels.clone().unwrap();
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/hostname"], NODE);
        assert_eq!(node.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.200.0/24"));
        let addrs = node.status.as_ref().unwrap().addresses.clone().unwrap();
        assert!(addrs.iter().any(|a| a.type_ == "InternalIP" && a.address == node_ip.to_string()));
        let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
        let lease = poll("the node lease", POD_READY, || async { leases.get_opt(NODE).await.ok().flatten() }).await;
        assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(NODE));

        for pod in [
            pod_manifest("a", false, json!([
                serve_hostname("c80", "tcp", 80),
                serve_hostname("c53", "udp", 53),
                {"name": "nx", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                 "args": ["netexec", "--http-port=8082", "--udp-port=8083"]},
            ])),
            pod_manifest("b", false, json!([{
                "name": "porter", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                "command": ["/agnhost", "porter"],
                "env": [{"name": "SERVE_TCP_PORT_81", "value": "foo"}, {"name": "SERVE_SCTP_PORT_9003", "value": "foo"}],
            }])),
            pod_manifest(
                "h",
                true,
                json!([
                    serve_hostname("c8080", "tcp", 8080),
                    serve_hostname("c5353", "udp", 5353)
                ]),
            ),
            pod_manifest("g", false, json!([serve_hostname("c80", "tcp", 80)])),
        ] {
            pods_api.create(&PostParams::default(), &pod).await.unwrap();
        }
    });
    let (a_ip, a_ns) = rt.block_on(ready(&pods_api, "a"));
    let (b_ip, b_ns) = rt.block_on(ready(&pods_api, "b"));
    let (h_ip, h_ns) = rt.block_on(ready(&pods_api, "h"));
    let (_, g_ns) = rt.block_on(ready(&pods_api, "g"));

    // A second host-network pod on the same port cannot bind: Running but not Ready, and
    // the Ready condition says why.
    rt.block_on(async {
        let clash = pod_manifest("h2", true, json!([serve_hostname("c8080", "tcp", 8080)]));
        pods_api
            .create(&PostParams::default(), &clash)
            .await
            .unwrap();
        let message = poll("pod h2 reported not ready", POD_READY, || async {
            let p = pods_api.get_opt("h2").await.ok().flatten()?;
            let ready = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(ready.message.unwrap_or_default())
        })
        .await;
        assert!(
            message.contains("c8080: binding 8080/TCP failed"),
            "{message}"
        );
        pods_api
            .delete("h2", &DeleteParams::default())
            .await
            .unwrap();
        poll("pod h2 gone", POD_GONE, || async {
            matches!(pods_api.get_opt("h2").await, Ok(None)).then_some(())
        })
        .await;
    });
    assert!(cfg.pod_cidr.contains(&a_ip) && cfg.pod_cidr.contains(&b_ip) && a_ip != b_ip);
    assert_eq!(h_ip, node_ip, "host-network pods get the node's address");
    assert_eq!(
        h_ns, env.node_netns,
        "host-network pods live in the node namespace"
    );
    assert!(
        a_ns.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("npc-")
    );

    assert_eq!(
        probe_from(&a_ns, b_ip, 81, Protocol::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        probe_from(&b_ns, a_ip, 53, Protocol::Udp),
        ProbeResult::Connected
    );
    assert_eq!(
        probe_from(&b_ns, a_ip, 80, Protocol::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        probe_from(&a_ns, b_ip, 80, Protocol::Tcp),
        ProbeResult::Refused
    );
    assert_eq!(
        probe_from(&a_ns, h_ip, 8080, Protocol::Tcp),
        ProbeResult::Connected
    );
    // UDP to a host-network pod on the same node: answered from the node IP.
    assert_eq!(
        probe_from(&a_ns, h_ip, 5353, Protocol::Udp),
        ProbeResult::Connected
    );
    // And the other way: a host-network pod reaches a pod from the node IP.
    let seen_as = netns::run_in(&h_ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(PROBE)).unwrap();
        s.connect(SocketAddr::from((a_ip, 8083))).unwrap();
        s.send(b"clientip").unwrap();
        let mut buf = [0u8; 128];
        let n = s.recv(&mut buf).unwrap();
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap();
    assert!(seen_as.starts_with(&format!("{node_ip}:")), "{seen_as}");
    assert!(matches!(
        probe_from(&a_ns, b_ip, 9003, Protocol::Sctp),
        ProbeResult::Unsupported(_) | ProbeResult::Connected
    ));

    // Restart: servers stop with the agent, namespaces stay; the new agent re-adopts.
    agent.stop();
    assert_eq!(
        probe_from(&a_ns, b_ip, 81, Protocol::Tcp),
        ProbeResult::Refused
    );
    assert!(netns::exists(&a_ns));
    // A pod force-deleted while the agent is down is cleaned up after the restart.
    rt.block_on(async {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        pods_api.delete("g", &now).await.unwrap();
    });
    assert!(netns::exists(&g_ns));
    let agent = AgentThread::start(cfg.clone());
    rt.block_on(poll(
        "pod g's namespace removed after restart",
        POD_GONE,
        || async { (!netns::exists(&g_ns)).then_some(()) },
    ));
    assert!(
        records::load_records(&cfg.state_dir)
            .unwrap()
            .iter()
            .all(|r| r.name != "g")
    );
    rt.block_on(poll("servers back after restart", POD_READY, || async {
        let target = SocketAddr::from((b_ip, 81));
        probe::connect_async(&a_ns, target, Protocol::Tcp, PROBE)
            .await
            .is_connected()
            .then_some(())
    }));
    let (a_ip2, a_ns2) = rt.block_on(ready(&pods_api, "a"));
    assert_eq!(
        (a_ip2, &a_ns2),
        (a_ip, &a_ns),
        "re-adopted pod keeps its address and namespace"
    );

    // Deletion with the default grace period: torn down and confirmed by the agent.
    let started = Instant::now();
    rt.block_on(async {
        pods_api
            .delete("a", &DeleteParams::default())
            .await
            .unwrap();
        poll("pod a gone", POD_GONE, || async {
            matches!(pods_api.get_opt("a").await, Ok(None)).then_some(())
        })
        .await;
    });
    eprintln!("pod deletion confirmed in {:?}", started.elapsed());
    assert!(!netns::exists(&a_ns), "the pod namespace is removed");
    assert!(
        records::load_records(&cfg.state_dir)
            .unwrap()
            .iter()
            .all(|r| r.name != "a")
    );

    let burst = burst();
    // A burst of pods, as a StatefulSet-heavy scenario creates them.
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..burst {
            let pod = pod_manifest(
                &format!("burst-{i}"),
                false,
                json!([serve_hostname("c", "tcp", 80)]),
            );
            pods_api.create(&PostParams::default(), &pod).await.unwrap();
        }
        for i in 0..burst {
            ready(&pods_api, &format!("burst-{i}")).await;
        }
    });
    eprintln!("{burst} pods created and Ready in {:?}", started.elapsed());
    // Deleted right after creation, likely while its setup runs: still torn down.
    rt.block_on(async {
        let pod = pod_manifest("quick", false, json!([serve_hostname("c", "tcp", 80)]));
        let created = pods_api.create(&PostParams::default(), &pod).await.unwrap();
        pods_api
            .delete("quick", &DeleteParams::default())
            .await
            .unwrap();
        poll("pod quick gone", POD_GONE, || async {
            matches!(pods_api.get_opt("quick").await, Ok(None)).then_some(())
        })
        .await;
        let uid = created.metadata.uid.unwrap();
        let ns = netns::path_of(&records::netns_name(&uid));
        poll("pod quick's namespace removed", POD_GONE, || async {
            (!netns::exists(&ns)).then_some(())
        })
        .await;
    });
    let (ip, _) = rt.block_on(ready(&pods_api, &format!("burst-{}", burst - 1)));
    assert_eq!(
        probe_from(&b_ns, ip, 80, Protocol::Tcp),
        ProbeResult::Connected
    );
    rt.block_on(async {
        for i in 0..burst {
            pods_api
                .delete(&format!("burst-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        for name in ["b", "h"] {
            pods_api
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        poll("all pods gone", POD_GONE, || async {
            pods_api
                .list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        })
        .await;
    });
    assert!(
        records::load_records(&cfg.state_dir).unwrap().is_empty(),
        "every record removed"
    );
    agent.stop();
    drop(env);
}

/// How long the node must stay Ready under the node lifecycle controller: longer than its
/// grace period (50 s) plus a lease duration.
const STAYS_READY: Duration = Duration::from_secs(100);

#[test]
#[ignore = "slow (~2 min): run with --ignored to watch the node lifecycle controller"]
fn node_stays_ready_under_the_node_lifecycle_controller() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let (mut env, cfg, rt, client) = setup("k", 3, true);
    // The controller-manager is really running: its serviceaccount controller fills a
    // new namespace.
    rt.block_on(async {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let ns = serde_json::from_value(json!({"metadata": {"name": "npt-kcm-check"}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "npt-kcm-check");
        poll(
            "kube-controller-manager to create a service account",
            APISERVER_READY,
            || async { sas.get_opt("default").await.ok().flatten() },
        )
        .await;
    });
    let agent = AgentThread::start(cfg.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    rt.block_on(async {
        while started.elapsed() < STAYS_READY {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Some(node) = nodes.get_opt(NODE).await.unwrap() else {
                continue;
            };
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
                .expect("Ready condition");
            assert_eq!(
                ready.status, "True",
                "node went {} ({:?}: {:?})",
                ready.status, ready.reason, ready.message
            );
            // The controller may taint a brand-new node until it has seen it Ready.
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if started.elapsed() > Duration::from_secs(15) {
                assert!(taints.is_empty(), "node tainted: {taints:?}");
            }
        }
    });
    // A deleted Node comes back at the next status heartbeat.
    rt.block_on(async {
        nodes.delete(NODE, &DeleteParams::default()).await.unwrap();
        poll("the node deleted", POD_GONE, || async {
            matches!(nodes.get_opt(NODE).await, Ok(None)).then_some(())
        })
        .await;
        poll(
            "the node registered again",
            node::STATUS_HEARTBEAT + POD_READY,
            || async { nodes.get_opt(NODE).await.ok().flatten() },
        )
        .await;
    });
    let kcm = env.children.last_mut().unwrap();
    assert!(
        kcm.try_wait().unwrap().is_none(),
        "kube-controller-manager exited during the test"
    );
    eprintln!("node stayed Ready for {STAYS_READY:?} under kube-controller-manager");
    agent.stop();
    drop(env);
}
