//! Privileged tests (tier 2): pod wiring, agnhost-like servers and the prober, in
//! throwaway network namespaces named `npt-*` (never `npc-*`, so a running local cluster
//! is never touched). No API server is needed. Without root every test prints why it
//! skips and passes vacuously.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netpol_local::agent::netns::{self, PodWiring};
use netpol_local::agent::servers::{self, Mode, Reply, ServerSpec, ServerStatus};
use netpol_local::probe::{self, ProbeResult, Protocol};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        eprintln!("skipped: privileged test needs root (network namespaces, veth, iptables)");
        false
    }
}

/// A namespace pinned at /run/netns/<name>; removed (with the prober's worker) on drop.
struct NsGuard {
    path: PathBuf,
}

impl NsGuard {
    fn create(name: &str) -> NsGuard {
        let path = netns::path_of(name);
        // A leftover from an aborted run would make creation fail.
        let _ = netns::remove(&path);
        let p = path.clone();
        std::thread::spawn(move || netns::create_here(&p))
            .join()
            .expect("namespace thread")
            .expect("create namespace");
        NsGuard { path }
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        probe::forget(&self.path);
        let _ = netns::remove(&self.path);
    }
}

/// A node namespace with ip_forward on and `lo` up.
fn node(name: &str) -> NsGuard {
    let guard = NsGuard::create(name);
    ip_in(name, &["link", "set", "lo", "up"]);
    sh_in(name, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    guard
}

fn ip_in(ns: &str, args: &[&str]) {
    sh_in(ns, "ip", args);
}

/// Runs `cmd args` inside `ns` and returns its stdout.
fn out_in(ns: &str, cmd: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .expect("run ip netns exec");
    assert!(out.status.success(), "{cmd} {args:?} in {ns} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_in(ns: &str, cmd: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod namespace wired to `node`; the pod namespace guard drops last.
struct Pod {
    servers: Option<servers::Servers>,
    ip: Ipv4Addr,
    ns: NsGuard,
}

fn pod(
    node: &NsGuard,
    name: &str,
    host_link: &str,
    ip: Ipv4Addr,
    node_ip: Option<Ipv4Addr>,
    specs: &[ServerSpec],
) -> Pod {
    let path = netns::path_of(name);
    let _ = netns::remove(&path);
    let wiring = PodWiring {
        pod_netns: path.clone(),
        node_netns: node.path.clone(),
        host_link: host_link.to_string(),
        pod_ip: ip,
        gateway: GATEWAY,
        node_ip,
    };
    let started = Instant::now();
    let servers = servers::spawn_in_new_pod(&wiring, name, specs).expect("pod comes up");
    eprintln!(
        "pod {name}: namespace + wiring + servers in {:?}",
        started.elapsed()
    );
    Pod {
        servers: Some(servers),
        ip,
        ns: NsGuard { path },
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.servers.take();
    }
}

fn probe(from: &Path, ip: Ipv4Addr, port: u16, proto: Protocol, ms: u64) -> ProbeResult {
    probe::connect(
        from,
        SocketAddr::from((ip, port)),
        proto,
        Duration::from_millis(ms),
    )
}

fn specs() -> Vec<ServerSpec> {
    vec![
        ServerSpec::hostname(Protocol::Tcp, 80),
        ServerSpec::hostname(Protocol::Udp, 53),
        ServerSpec {
            protocol: Protocol::Tcp,
            port: 8080,
            mode: Mode::Http(Reply::Text("foo".into())),
        },
        ServerSpec::hostname(Protocol::Sctp, 9003),
        ServerSpec {
            protocol: Protocol::Tcp,
            port: 8081,
            mode: Mode::Netexec,
        },
        ServerSpec {
            protocol: Protocol::Udp,
            port: 8081,
            mode: Mode::Netexec,
        },
    ]
}

#[test]
fn pods_connect_refuse_and_time_out() {
    if !is_root() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let node = node(&format!("npt-{tag}-n1"));
    let a = pod(
        &node,
        &format!("npt-{tag}-a"),
        &format!("npt{tag}a"),
        Ipv4Addr::new(10, 250, 0, 2),
        None,
        &[],
    );
    let b = pod(
        &node,
        &format!("npt-{tag}-b"),
        &format!("npt{tag}b"),
        Ipv4Addr::new(10, 250, 0, 3),
        None,
        &specs(),
    );

    let statuses = b.servers.as_ref().unwrap().statuses().to_vec();
    assert_eq!(statuses[0].1, ServerStatus::Bound);
    assert_eq!(statuses[1].1, ServerStatus::Bound);
    assert_eq!(statuses[2].1, ServerStatus::Bound);

    // The wiring: eth0 holds the /32 and the on-link default route, IPv6 is off on both
    // ends, the host side answers ARP for the gateway by proxy.
    let b_ns = format!("npt-{tag}-b");
    let node_ns = format!("npt-{tag}-n1");
    let host_link = format!("npt{tag}b");
    assert!(out_in(&b_ns, "ip", &["-4", "addr", "show", "dev", "eth0"]).contains("10.250.0.3/32"));
    let routes = out_in(&b_ns, "ip", &["route", "show", "default"]);
    assert!(
        routes.contains("via 169.254.1.1 dev eth0") && routes.contains("onlink"),
        "{routes}"
    );
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(
            out_in(&b_ns, "ip", &["-6", "addr", "show", "dev", "eth0"]).trim(),
            ""
        );
        assert_eq!(
            out_in(&node_ns, "ip", &["-6", "addr", "show", "dev", &host_link]).trim(),
            ""
        );
    }
    let proxy = out_in(
        &node_ns,
        "sysctl",
        &["-n", &format!("net.ipv4.conf.{host_link}.proxy_arp")],
    );
    assert_eq!(proxy.trim(), "1");
    let node_routes = out_in(&node_ns, "ip", &["route", "show", "10.250.0.3"]);
    assert!(
        node_routes.contains(&format!("dev {host_link}")),
        "{node_routes}"
    );

    // TCP and UDP get through; closed ports are refused, not timed out.
    assert_eq!(
        probe(&a.ns.path, b.ip, 80, Protocol::Tcp, 2000),
        ProbeResult::Connected
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 8080, Protocol::Tcp, 2000),
        ProbeResult::Connected
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 53, Protocol::Udp, 2000),
        ProbeResult::Connected
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 81, Protocol::Tcp, 2000),
        ProbeResult::Refused
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 54, Protocol::Udp, 2000),
        ProbeResult::Refused
    );
    // Reverse direction: b has no server for a, a refuses.
    assert_eq!(
        probe(&b.ns.path, a.ip, 80, Protocol::Tcp, 2000),
        ProbeResult::Refused
    );

    // The UDP server answers with the pod's hostname, the HTTP one with its text.
    let b_name = format!("npt-{tag}-b");
    let reply = udp_exchange(&a.ns.path, SocketAddr::from((b.ip, 53)), b"hostname\n");
    assert_eq!(reply, b_name);
    let raw = tcp_exchange(&a.ns.path, SocketAddr::from((b.ip, 80)), b"");
    assert_eq!(raw, b_name, "serve-hostname --tcp writes the hostname");
    let http = tcp_exchange(
        &a.ns.path,
        SocketAddr::from((b.ip, 8080)),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    assert!(
        http.starts_with("HTTP/1.1 200 OK\r\n") && http.ends_with("\r\n\r\nfoo"),
        "{http}"
    );
    let netexec = tcp_exchange(
        &a.ns.path,
        SocketAddr::from((b.ip, 8081)),
        b"GET /hostname HTTP/1.1\r\n\r\n",
    );
    assert!(netexec.ends_with(&format!("\r\n\r\n{b_name}")), "{netexec}");
    let echo = udp_exchange(&a.ns.path, SocketAddr::from((b.ip, 8081)), b"echo hi");
    assert_eq!(echo, "hi");
    let client = udp_exchange(&a.ns.path, SocketAddr::from((b.ip, 8081)), b"clientip");
    assert!(client.starts_with(&format!("{}:", a.ip)), "{client}");

    // A silent drop in the node's FORWARD chain turns both into timeouts.
    let node_name = format!("npt-{tag}-n1");
    sh_in(
        &node_name,
        "iptables",
        &["-w", "-I", "FORWARD", "-d", &b.ip.to_string(), "-j", "DROP"],
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 80, Protocol::Tcp, 300),
        ProbeResult::Timeout
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 53, Protocol::Udp, 300),
        ProbeResult::Timeout
    );
    sh_in(
        &node_name,
        "iptables",
        &["-w", "-D", "FORWARD", "-d", &b.ip.to_string(), "-j", "DROP"],
    );
    assert_eq!(
        probe(&a.ns.path, b.ip, 80, Protocol::Tcp, 2000),
        ProbeResult::Connected
    );

    // SCTP: either the kernel has it (then the server is bound and the probe connects) or
    // both sides say so, never a pass.
    match &statuses[3].1 {
        ServerStatus::Unsupported(why) => {
            assert!(
                why.starts_with("SCTP is not supported by this kernel"),
                "{why}"
            );
            match probe(&a.ns.path, b.ip, 9003, Protocol::Sctp, 1000) {
                ProbeResult::Unsupported(r) => {
                    assert!(r.starts_with("SCTP is not supported by this kernel"), "{r}");
                }
                r => panic!("SCTP probe on a kernel without SCTP gave {r:?}"),
            }
        }
        ServerStatus::Bound => {
            assert_eq!(
                probe(&a.ns.path, b.ip, 9003, Protocol::Sctp, 2000),
                ProbeResult::Connected
            );
        }
        ServerStatus::Failed(e) => panic!("SCTP server failed: {e}"),
    }

    // Tearing the pod down stops its servers and removes its link from the node.
    let host_link = format!("npt{tag}b");
    assert!(netns::link_exists(&node.path, &host_link).unwrap());
    drop(b);
    netns::unwire_pod(&node.path, &host_link).unwrap();
    assert!(!netns::link_exists(&node.path, &host_link).unwrap());
    // Unwiring twice is fine.
    netns::unwire_pod(&node.path, &host_link).unwrap();
    drop(a);
}

/// Sends `request` over TCP from inside `ns` and returns everything the server sends
/// back before closing.
fn tcp_exchange(ns: &Path, target: SocketAddr, request: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let ns = ns.to_path_buf();
    netns::run_in(&ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        Ok(out)
    })
    .unwrap()
}

/// Sends one datagram from inside `ns` and returns the reply text.
fn udp_exchange(ns: &Path, target: SocketAddr, request: &'static [u8]) -> String {
    let ns = ns.to_path_buf();
    netns::run_in(&ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect(target).unwrap();
        s.send(request).unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap();
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

#[test]
fn servers_in_existing_namespace_and_probe_rate() {
    if !is_root() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let node = node(&format!("npt-{tag}-n2"));
    let node_name = format!("npt-{tag}-n2");
    let node_ip = Ipv4Addr::new(172, 31, 98, 1);
    ip_in(
        &node_name,
        &["addr", "add", &format!("{node_ip}/32"), "dev", "lo"],
    );
    let c_ip = Ipv4Addr::new(10, 250, 1, 2);
    let c = pod(
        &node,
        &format!("npt-{tag}-c"),
        &format!("npt{tag}c"),
        c_ip,
        Some(node_ip),
        &[ServerSpec {
            protocol: Protocol::Udp,
            port: 8081,
            mode: Mode::Netexec,
        }],
    );
    // Traffic from the node namespace (host-network pods) reaches pods from the node IP.
    let seen_as = udp_exchange(&node.path, SocketAddr::from((c_ip, 8081)), b"clientip");
    assert!(seen_as.starts_with(&format!("{node_ip}:")), "{seen_as}");
    // Servers started separately in an existing namespace (what the cluster does for its
    // external host): here the node namespace itself, reached at the gateway address.
    let on_node = servers::spawn_in(
        &node.path,
        "node",
        &[
            ServerSpec::hostname(Protocol::Tcp, 80),
            ServerSpec::hostname(Protocol::Udp, 53),
        ],
    )
    .unwrap();
    assert!(on_node.all_up());
    // A host-network UDP server answers from the address it was asked at, not from the
    // route's preferred source (the gateway below checks the opposite case).
    assert_eq!(
        probe(&c.ns.path, node_ip, 53, Protocol::Udp, 2000),
        ProbeResult::Connected
    );
    assert_eq!(
        probe(&c.ns.path, node_ip, 80, Protocol::Tcp, 2000),
        ProbeResult::Connected
    );

    // The blocking call also works from inside a runtime (it only parks the thread).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inside = rt.block_on(async {
        probe::connect(
            &c.ns.path,
            SocketAddr::from((GATEWAY, 80)),
            Protocol::Tcp,
            Duration::from_secs(2),
        )
    });
    assert_eq!(inside, ProbeResult::Connected);
    assert_eq!(
        probe(&c.ns.path, GATEWAY, 80, Protocol::Tcp, 2000),
        ProbeResult::Connected
    );
    assert_eq!(
        probe(&c.ns.path, GATEWAY, 53, Protocol::Udp, 2000),
        ProbeResult::Connected
    );

    // Throughput: many probes from one namespace, at most IN_FLIGHT at a time (a burst
    // of thousands of simultaneous UDP datagrams would overflow the server's receive
    // buffer, which is the kernel dropping them, not the prober failing).
    const IN_FLIGHT: usize = 200;
    let n = 2000;
    let started = Instant::now();
    let from = c.ns.path.clone();
    let results: Vec<ProbeResult> = rt.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|i| {
                let (proto, port) = if i % 2 == 0 {
                    (Protocol::Tcp, 80)
                } else {
                    (Protocol::Udp, 53)
                };
                let from = from.clone();
                async move {
                    probe::connect_async(
                        &from,
                        SocketAddr::from((GATEWAY, port)),
                        proto,
                        Duration::from_secs(3),
                    )
                    .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await
    });
    let elapsed = started.elapsed();
    let connected = results.iter().filter(|r| r.is_connected()).count();
    eprintln!(
        "{n} probes (TCP+UDP) in {elapsed:?}: {:.0} probes/s, {connected} connected",
        n as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        connected,
        n,
        "{:?}",
        results.iter().find(|r| !r.is_connected())
    );

    // The blocking API as the suite uses it: a pool of threads, one probe each at a time.
    const THREADS: usize = 16;
    const PER_THREAD: usize = 100;
    let started = Instant::now();
    let connected: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let from = c.ns.path.clone();
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .filter(|_| {
                            probe::connect(
                                &from,
                                SocketAddr::from((GATEWAY, 80)),
                                Protocol::Tcp,
                                Duration::from_secs(3),
                            )
                            .is_connected()
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let elapsed = started.elapsed();
    eprintln!(
        "{} blocking TCP probes from {THREADS} threads in {elapsed:?}: {:.0} probes/s",
        THREADS * PER_THREAD,
        (THREADS * PER_THREAD) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(connected, THREADS * PER_THREAD);

    // Stopping the servers closes the ports.
    on_node.stop();
    assert_eq!(
        probe(&c.ns.path, GATEWAY, 80, Protocol::Tcp, 2000),
        ProbeResult::Refused
    );
    drop(c);
}
