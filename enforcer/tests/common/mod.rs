//! Throwaway network namespaces for the privileged dataplane tests and benchmark.
//!
//! Two "pod" namespaces hang off one "node" namespace by veth pairs; the node forwards between
//! them (ip_forward is switched on in the node namespace only). Every name starts with `npe-`
//! (never the local cluster's `npc-`) and carries the process id, so parallel tests and runs do
//! not collide. Dropping a [`Topology`] deletes its namespaces, also when a test panics.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netpol_enforcer::dataplane::netns;

/// True when running as root; otherwise prints why the test is skipped — or, when
/// `NETPOL_REQUIRE_LOCAL` is set (`1`, `true`, `yes`), fails, so a run meant to cover every tier
/// cannot pass by skipping this one.
pub fn root_or_skip(test: &str) -> bool {
    const WHY: &str = "needs root to create network namespaces and netfilter rules";
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = std::env::var("NETPOL_REQUIRE_LOCAL")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    assert!(
        !required,
        "{test}: NETPOL_REQUIRE_LOCAL is set, but it {WHY}"
    );
    eprintln!("skipping {test}: {WHY} (set NETPOL_REQUIRE_LOCAL=1 to make this a failure)");
    false
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run inside a namespace.
pub fn ns_output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {args:?} in {ns}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// node ⇄ pod a (10.77.1.2) and pod b (10.77.2.2).
pub struct Topology {
    /// The node namespace name.
    pub node: String,
    /// Pod a's namespace name.
    pub a: String,
    /// Pod b's namespace name.
    pub b: String,
}

/// Pod a's address.
pub const A: &str = "10.77.1.2";
/// Pod b's address.
pub const B: &str = "10.77.2.2";
/// Pod a's IPv6 address.
pub const A6: &str = "fd77:1::2";
/// Pod b's IPv6 address.
pub const B6: &str = "fd77:2::2";

impl Topology {
    /// Create the three namespaces; `tag` names the test (keep it short).
    pub fn new(tag: &str) -> Topology {
        let id = std::process::id();
        let t = Topology {
            node: format!("npe-{tag}-{id}-n"),
            a: format!("npe-{tag}-{id}-a"),
            b: format!("npe-{tag}-{id}-b"),
        };
        for ns in [&t.node, &t.a, &t.b] {
            // A leftover from a crashed run with the same pid would make `add` fail.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            // No duplicate address detection on any interface (link-local ones included), so
            // IPv6 neighbour discovery works as soon as the links are up.
            for conf in ["all", "default"] {
                let key = format!("net.ipv6.conf.{conf}.accept_dad=0");
                sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &key]);
            }
        }
        let node = t.node.as_str();
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh(&["ip", "netns", "exec", node, "sysctl", "-qw", key]);
        }
        for (pod, side, v4, v6) in [
            (t.a.as_str(), "va", "10.77.1", "fd77:1:"),
            (t.b.as_str(), "vb", "10.77.2", "fd77:2:"),
        ] {
            let (node_v4, pod_v4) = (format!("{v4}.1/24"), format!("{v4}.2/24"));
            let (node_v6, pod_v6) = (format!("{v6}:1/64"), format!("{v6}:2/64"));
            let (gw_v4, gw_v6) = (format!("{v4}.1"), format!("{v6}:1"));
            let veth = [
                "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ];
            sh(&[&["ip", "-n", node][..], &veth[..]].concat());
            sh(&["ip", "-n", node, "addr", "add", &node_v4, "dev", side]);
            // No duplicate address detection, so the IPv6 addresses are usable at once.
            sh(&[
                "ip", "-n", node, "addr", "add", &node_v6, "dev", side, "nodad",
            ]);
            sh(&["ip", "-n", node, "link", "set", side, "up"]);
            sh(&["ip", "-n", pod, "addr", "add", &pod_v4, "dev", "eth0"]);
            sh(&[
                "ip", "-n", pod, "addr", "add", &pod_v6, "dev", "eth0", "nodad",
            ]);
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", pod, "route", "add", "default", "via", &gw_v4]);
            sh(&[
                "ip", "-n", pod, "-6", "route", "add", "default", "via", &gw_v6,
            ]);
        }
        // Carrier comes up asynchronously (linkwatch); routes are unusable until it has.
        for (ns, dev) in [(node, "va"), (node, "vb"), (&t.a, "eth0"), (&t.b, "eth0")] {
            let up = wait_until(Duration::from_secs(5), || {
                Command::new("ip")
                    .args(["-n", ns, "link", "show", "dev", dev])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("LOWER_UP"))
            });
            assert!(up, "{dev} in {ns} has no carrier");
        }
        t
    }

    /// `/run/netns/<name>`.
    pub fn path(ns: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{ns}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Run `f` on a thread inside namespace `ns` (sockets made there stay in that namespace).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Topology::path(ns);
    netns::run_in(Some(&path), || Ok::<T, netns::Error>(f())).expect("entering namespace")
}

/// A TCP and UDP echo server on `port` in a namespace; stops when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    tcp: TcpListener,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    /// Listen on [::]:`port` (TCP and UDP, IPv4 and IPv6) inside `ns`.
    pub fn start(ns: &str, port: u16) -> Echo {
        let (tcp, udp) = in_ns(ns, || {
            // `::` with IPV6_V6ONLY off (the Linux default) serves IPv4 and IPv6.
            let tcp = TcpListener::bind(("::", port)).expect("bind tcp");
            let udp = UdpSocket::bind(("::", port)).expect("bind udp");
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let listener = tcp.try_clone().expect("clone listener");
        let tcp_thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("udp timeout");
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !udp_stop.load(Ordering::Acquire) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            stop,
            tcp,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // shutdown(2) on a listening socket wakes the blocked accept.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.tcp.as_fd()),
            nix::sys::socket::Shutdown::Both,
        );
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connect from namespace `ns` to `to` (IPv4 or IPv6), within `timeout`.
pub fn connect(ns: &str, to: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let ip: std::net::IpAddr = to.parse().expect("address");
    let addr = SocketAddr::new(ip, port);
    in_ns(ns, || TcpStream::connect_timeout(&addr, timeout))
}

/// Send `message` and read the echo back.
pub fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, message);
    Ok(())
}

/// A UDP socket in `ns`, connected to `to:port`.
pub fn udp_client(ns: &str, to: &str, port: u16) -> UdpSocket {
    in_ns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind udp client");
        s.connect((to, port)).expect("connect udp");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("udp timeout");
        s
    })
}

/// Poll `condition` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
