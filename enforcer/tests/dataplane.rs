//! Privileged dataplane tests: real netfilter rules and NFQUEUE inside throwaway namespaces.
//!
//! Each test builds pod a ⇄ node ⇄ pod b (see `common`), starts the dataplane in the node
//! namespace the way `--netns` does, and sends real TCP/UDP between the pods. They skip (with a
//! printed reason) when not run as root.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use netpol_enforcer::dataplane::{self, Dataplane, Judgement, Verdict};
use netpol_enforcer::flow::{Flow, Protocol};
use netpol_enforcer::metrics::Metrics;

/// A judge that drops TCP/UDP port 81, accepts the rest, and records every flow it sees.
fn recording_judge() -> (Arc<Mutex<Vec<Flow>>>, Arc<dyn dataplane::Judge>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let judge = move |flow: &Flow| {
        log.lock().expect("judge log").push(*flow);
        Judgement {
            verdict: if flow.dst_port == 81 {
                Verdict::Drop
            } else {
                Verdict::Accept
            },
            tier: "test",
        }
    };
    (seen, Arc::new(judge))
}

fn start(topology: &Topology, judge: Arc<dyn dataplane::Judge>, fail_open: bool) -> Dataplane {
    let mut config = dataplane::Config::new(100, 2, fail_open);
    config.netns = Some(Topology::path(&topology.node));
    Dataplane::start(config, judge, Metrics::new()).expect("starting the dataplane")
}

const QUICK: Duration = Duration::from_secs(2);
const DROPPED: Duration = Duration::from_millis(800);

#[test]
fn accept_and_drop_by_judgement() {
    if !root_or_skip("accept_and_drop_by_judgement") {
        return;
    }
    let topology = Topology::new("ad");
    let _echo = Echo::start(&topology.b, 80);
    let _echo81 = Echo::start(&topology.b, 81);
    let (seen, judge) = recording_judge();
    let dp = start(&topology, judge, false);

    let mut ok = connect(&topology.a, B, 80, QUICK).expect("port 80 is accepted");
    round_trip(&mut ok, b"hello").expect("echo on an accepted connection");

    let dropped = connect(&topology.a, B, 81, DROPPED);
    let err = dropped.expect_err("port 81 is dropped");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "a drop is silent, not a refusal"
    );

    let flows = seen.lock().expect("log").clone();
    assert!(
        flows
            .iter()
            .any(|f| f.dst_port == 80 && f.protocol == Protocol::Tcp)
    );
    // A dropped SYN never confirms its conntrack entry, so retransmissions are judged again.
    assert!(flows.iter().filter(|f| f.dst_port == 81).count() >= 1);
    assert_eq!(
        dp.backend(),
        dataplane::Backend::Iptables,
        "this kernel has no nft queue"
    );
    drop(dp);
}

#[test]
fn one_judgement_per_connection_and_replies_stay_in_kernel() {
    if !root_or_skip("one_judgement_per_connection_and_replies_stay_in_kernel") {
        return;
    }
    let topology = Topology::new("once");
    let _echo = Echo::start(&topology.b, 80);
    let (seen, judge) = recording_judge();
    let dp = start(&topology, judge, false);

    let mut conns = Vec::new();
    for i in 0..5u8 {
        let mut c = connect(&topology.a, B, 80, QUICK).expect("connect");
        for j in 0..20u8 {
            round_trip(&mut c, &[i, j, 42]).expect("echo");
        }
        conns.push(c);
    }
    let udp = udp_client(&topology.a, B, 80);
    for i in 0..10u8 {
        udp.send(&[i]).expect("udp send");
        let mut buf = [0u8; 8];
        assert_eq!(udp.recv(&mut buf).expect("udp echo"), 1);
    }

    let flows = seen.lock().expect("log").clone();
    let tcp: Vec<_> = flows
        .iter()
        .filter(|f| f.protocol == Protocol::Tcp)
        .collect();
    let udp_flows: Vec<_> = flows
        .iter()
        .filter(|f| f.protocol == Protocol::Udp)
        .collect();
    assert_eq!(
        tcp.len(),
        5,
        "exactly one judgement per TCP connection: {flows:?}"
    );
    assert_eq!(
        udp_flows.len(),
        1,
        "exactly one judgement per UDP flow: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .all(|f| f.src.to_string() == A && f.dst.to_string() == B),
        "replies (b → a) are never judged: {flows:?}"
    );
    // Accepted connections carry the accept bit in their conntrack mark.
    let marked = ns_output(
        &topology.node,
        &["conntrack", "-L", "--mark", "0x200000/0x200000"],
    );
    assert!(marked.contains(&format!("dst={B}")), "conntrack: {marked}");
    drop(dp);
}

#[test]
fn same_queue_numbers_in_two_node_namespaces() {
    if !root_or_skip("same_queue_numbers_in_two_node_namespaces") {
        return;
    }
    let one = Topology::new("q1");
    let two = Topology::new("q2");
    let _e1 = Echo::start(&one.b, 80);
    let _e2 = Echo::start(&two.b, 81);
    let accept = Arc::new(dataplane::StaticJudge(Verdict::Accept));
    let drop_all = Arc::new(dataplane::StaticJudge(Verdict::Drop));
    let dp1 = start(&one, accept, false);
    let dp2 = start(&two, drop_all, false);
    connect(&one.a, B, 80, QUICK).expect("node one's enforcer accepts");
    connect(&two.a, B, 81, DROPPED).expect_err("node two's enforcer drops");
    connect(&one.a, B, 80, QUICK).expect("still accepted on node one");
    drop((dp1, dp2));
}

#[test]
fn clean_shutdown_removes_rules_only_when_fail_open() {
    if !root_or_skip("clean_shutdown_removes_rules_only_when_fail_open") {
        return;
    }
    let topology = Topology::new("sd");
    let rules = || ns_output(&topology.node, &["iptables", "-S"]);
    let dp = start(
        &topology,
        Arc::new(dataplane::StaticJudge(Verdict::Accept)),
        true,
    );
    assert!(
        rules().contains("--queue-bypass"),
        "fail-open uses --queue-bypass"
    );
    assert_eq!(
        dp.shutdown().expect("shutdown"),
        dataplane::RulesOnExit::Removed
    );
    assert!(!rules().contains("NETPOL-ENFORCER"), "{}", rules());

    let dp = start(
        &topology,
        Arc::new(dataplane::StaticJudge(Verdict::Accept)),
        false,
    );
    assert!(
        !rules().contains("--queue-bypass"),
        "fail-closed has no bypass"
    );
    assert_eq!(
        dp.shutdown().expect("shutdown"),
        dataplane::RulesOnExit::Kept
    );
    assert!(rules().contains("NETPOL-ENFORCER-JUDGE"));
    // Installing again over kept rules leaves a single jump per hook.
    let dp = start(
        &topology,
        Arc::new(dataplane::StaticJudge(Verdict::Accept)),
        false,
    );
    assert_eq!(
        rules()
            .matches("-A FORWARD -j NETPOL-ENFORCER-FORWARD")
            .count(),
        1
    );
    // Someone deletes our jump from FORWARD: the periodic check puts the rules back, once.
    let node = topology.node.as_str();
    let deleted = ns_output(
        node,
        &["iptables", "-D", "FORWARD", "-j", "NETPOL-ENFORCER-FORWARD"],
    );
    assert!(
        !rules().contains("-A FORWARD -j NETPOL-ENFORCER-FORWARD"),
        "{deleted}"
    );
    assert!(
        dp.ensure_rules().expect("check rules"),
        "missing jump is reinstalled"
    );
    assert!(rules().contains("-A FORWARD -j NETPOL-ENFORCER-FORWARD"));
    assert!(
        !dp.ensure_rules().expect("check rules"),
        "intact rules are left alone"
    );
    drop(dp);
    dataplane::remove_rules(
        Some(&Topology::path(&topology.node)),
        &[dataplane::Family::V4, dataplane::Family::V6],
    )
    .expect("cleanup");
    assert!(!rules().contains("NETPOL-ENFORCER"));
}

/// The real binary, with a static judge, in the node namespace. Killed on drop.
struct Enforcer {
    child: Child,
    addr: String,
}

impl Enforcer {
    fn spawn(topology: &Topology, verdict: &str, fail_open: bool) -> Enforcer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netpol-enforcer"));
        cmd.arg("--netns")
            .arg(Topology::path(&topology.node))
            .args([
                "--static-verdict",
                verdict,
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-level",
                "info",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if fail_open {
            cmd.arg("--fail-open");
        }
        let mut child = cmd.spawn().expect("spawning netpol-enforcer");
        // The first log line names the metrics address.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(i) = line.find("addr=") {
                    let _ = tx.send(
                        line[i + 5..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_owned(),
                    );
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("enforcer logged its metrics address");
        let e = Enforcer { child, addr };
        assert!(
            wait_until(Duration::from_secs(20), || e
                .get("/readyz")
                .starts_with("HTTP/1.1 200")),
            "enforcer became ready"
        );
        e
    }

    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return String::new();
        };
        let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigkill_fail_open_accepts_fail_closed_drops() {
    if !root_or_skip("sigkill_fail_open_accepts_fail_closed_drops") {
        return;
    }
    let topology = Topology::new("kill");
    let _echo = Echo::start(&topology.b, 80);

    let open = Enforcer::spawn(&topology, "accept", true);
    connect(&topology.a, B, 80, QUICK).expect("accepted while running");
    // The verdict is counted right after it is sent, so poll rather than read once.
    let counted = "verdicts_total{verdict=\"accept\",tier=\"static\"} 1";
    assert!(
        wait_until(QUICK, || open.get("/metrics").contains(counted)),
        "{}",
        open.get("/metrics")
    );
    open.kill();
    connect(&topology.a, B, 80, QUICK).expect("fail-open: accepted with no enforcer bound");

    let closed = Enforcer::spawn(&topology, "accept", false);
    let mut established = connect(&topology.a, B, 80, QUICK).expect("accepted while running");
    closed.kill();
    let err = connect(&topology.a, B, 80, DROPPED)
        .expect_err("fail-closed: dropped with no enforcer bound");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    round_trip(&mut established, b"still here").expect("established flows are never queued");

    // A restart binds the queues again: new connections are judged, the old one lives on.
    let restarted = Enforcer::spawn(&topology, "accept", false);
    connect(&topology.a, B, 80, QUICK).expect("accepted after restart");
    round_trip(&mut established, b"after restart").expect("established flow survives the restart");
    let status = restarted.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // Fail-closed clean shutdown keeps the rules: still blocked.
    connect(&topology.a, B, 80, DROPPED).expect_err("fail-closed: rules kept after SIGTERM");
}

#[test]
fn ipv6_connections_are_judged_and_neighbour_discovery_is_not() {
    if !root_or_skip("ipv6_connections_are_judged_and_neighbour_discovery_is_not") {
        return;
    }
    let topology = Topology::new("v6");
    let _echo = Echo::start(&topology.b, 80);
    let _echo81 = Echo::start(&topology.b, 81);
    let (seen, judge) = recording_judge();
    let dp = start(&topology, judge, false);

    // Neighbour discovery (ICMPv6) is never queued, so the accepted connection can resolve
    // its next hops at all.
    let mut ok = connect(&topology.a, B6, 80, QUICK).expect("IPv6 port 80 is accepted");
    round_trip(&mut ok, b"six").expect("echo over IPv6");
    let err = connect(&topology.a, B6, 81, DROPPED).expect_err("IPv6 port 81 is dropped");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

    let flows = seen.lock().expect("log").clone();
    let to_80: Vec<_> = flows.iter().filter(|f| f.dst_port == 80).collect();
    assert_eq!(to_80.len(), 1, "{flows:?}");
    assert_eq!(to_80[0].src.to_string(), A6);
    assert_eq!(to_80[0].dst.to_string(), B6);
    drop(dp);
}

/// CRC32c (Castagnoli, reflected, polynomial 0x82F63B78), as SCTP's checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn crc32c_matches_the_rfc_3720_check_value() {
    // RFC 3720 B.4: 32 bytes of zeros.
    assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
}

#[test]
#[allow(unsafe_code)] // a raw SCTP socket through libc; SAFETY at the blocks
fn sctp_init_is_judged_with_its_ports() {
    if !root_or_skip("sctp_init_is_judged_with_its_ports") {
        return;
    }
    // This kernel has no SCTP sockets, but conntrack and the iptables match know SCTP: send a
    // hand-made INIT through a raw socket (the kernel adds the IPv4 header).
    let topology = Topology::new("sctp");
    let (seen, judge) = recording_judge();
    let dp = start(&topology, judge, false);

    #[rustfmt::skip]
    let mut init = vec![
        // --- SCTP common header ---
        0x13, 0x88,             // source port 5000
        0x23, 0x2b,             // destination port 9003
        0x00, 0x00, 0x00, 0x00, // verification tag 0 (INIT)
        0x00, 0x00, 0x00, 0x00, // checksum, filled in below
        // --- INIT chunk ---
        0x01, 0x00, 0x00, 0x14, // type 1 (INIT), flags 0, length 20
        0x12, 0x34, 0x56, 0x78, // initiate tag
        0x00, 0x01, 0x00, 0x00, // advertised receiver window
        0x00, 0x0a, 0x00, 0x0a, // outbound streams 10, inbound streams 10
        0x00, 0x00, 0x00, 0x01, // initial TSN
    ];
    // The CRC32c is stored little-endian (RFC 4960 appendix B).
    let sum = crc32c(&init);
    init[8..12].copy_from_slice(&sum.to_le_bytes());

    let sent = in_ns(&topology.a, || -> std::io::Result<()> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_RAW, 132) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let to = nix::sys::socket::SockaddrIn::new(10, 77, 2, 2, 0);
        nix::sys::socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &init,
            &to,
            nix::sys::socket::MsgFlags::empty(),
        )?;
        Ok(())
    });
    sent.expect("sending the SCTP INIT");

    let sctp = || {
        seen.lock()
            .expect("log")
            .iter()
            .find(|f| f.protocol == Protocol::Sctp)
            .copied()
    };
    assert!(
        wait_until(QUICK, || sctp().is_some()),
        "the INIT was queued and judged"
    );
    let flow = sctp().expect("sctp flow");
    assert_eq!((flow.src_port, flow.dst_port), (5000, 9003));
    assert_eq!(
        (flow.src.to_string(), flow.dst.to_string()),
        (A.to_owned(), B.to_owned())
    );
    drop(dp);
}

#[test]
fn pod_ranges_leave_other_traffic_unqueued() {
    if !root_or_skip("pod_ranges_leave_other_traffic_unqueued") {
        return;
    }
    let topology = Topology::new("cidr");
    let _pod = Echo::start(&topology.b, 80);
    let _node = Echo::start(&topology.node, 90);
    // Only pod b's range is a pod range; a judge that drops everything it is asked about.
    let mut config = dataplane::Config::new(100, 1, false);
    config.netns = Some(Topology::path(&topology.node));
    config.rules.pod_cidrs = vec!["10.77.2.0/24".parse().expect("cidr")];
    let (seen, _) = recording_judge();
    let log = seen.clone();
    let drop_all = move |flow: &Flow| {
        log.lock().expect("log").push(*flow);
        Judgement {
            verdict: Verdict::Drop,
            tier: "test",
        }
    };
    let dp = Dataplane::start(config, Arc::new(drop_all), Metrics::new()).expect("dataplane");

    // a → node: the source is outside every pod range, so INPUT does not queue it.
    connect(&topology.a, "10.77.1.1", 90, QUICK).expect("traffic not involving a pod range");
    // a → b: the destination is in a pod range, so FORWARD queues it and the judge drops it.
    connect(&topology.a, B, 80, DROPPED).expect_err("traffic to a pod range is judged");
    let flows = seen.lock().expect("log").clone();
    assert!(flows.iter().all(|f| f.dst.to_string() == B), "{flows:?}");
    assert!(!flows.is_empty());
    drop(dp);
}

#[test]
fn nft_script_is_accepted_by_nft_apart_from_the_queue_statement() {
    if !root_or_skip("nft_script_is_accepted_by_nft_apart_from_the_queue_statement") {
        return;
    }
    // This kernel lacks nft_queue, so the nftables backend cannot run here; check everything else
    // in the script against the real nft and kernel, with the queue statement swapped for a
    // counter, and that detection picks iptables.
    let topology = Topology::new("nft");
    let mut config = dataplane::Config::new(100, 2, true);
    config.rules.pod_cidrs = vec![
        "10.77.0.0/16".parse().expect("cidr"),
        "fd77::/32".parse().expect("cidr"),
    ];
    let script = config.rules.nft_script();
    let queue_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("queue "))
        .expect("a queue statement");
    let without_queue = script.replace(queue_line, "    counter");
    let applied = in_ns(&topology.node, || {
        use std::io::Write;
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(without_queue.as_bytes())
            .expect("write script");
        child.wait_with_output().expect("nft output")
    });
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let listed = ns_output(
        &topology.node,
        &["nft", "list", "table", "inet", "netpol-enforcer"],
    );
    assert!(
        listed.contains("type filter hook forward priority filter"),
        "{listed}"
    );
    assert!(listed.contains("ip6 daddr fd77::/32"), "{listed}");
    let detected = in_ns(&topology.node, dataplane::rules::detect);
    assert_eq!(detected, dataplane::Backend::Iptables);
}

#[test]
fn accepted_udp_without_replies_is_judged_once() {
    if !root_or_skip("accepted_udp_without_replies_is_judged_once") {
        return;
    }
    // b:99 receives but never answers, so conntrack keeps calling the flow NEW; the accept mark
    // is what keeps it out of the queue after the first judgement. (b:98 likewise.)
    let topology = Topology::new("udp1");
    let _sinks = in_ns(&topology.b, || {
        let bind = |port: u16| std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind sink");
        (bind(99), bind(98))
    });
    let (seen, judge) = recording_judge();
    let mut config = dataplane::Config::new(100, 1, false); // one FIFO queue: order is kept
    config.netns = Some(Topology::path(&topology.node));
    let dp = Dataplane::start(config, judge, Metrics::new()).expect("dataplane");
    let count = |port: u16| {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|f| f.dst_port == port)
            .count()
    };

    let silent = udp_client(&topology.a, B, 99);
    silent.send(b"first").expect("send");
    assert!(
        wait_until(QUICK, || count(99) == 1),
        "first datagram judged"
    );
    for _ in 0..5 {
        silent.send(b"more").expect("send");
    }
    // A sentinel on another flow, sent after them through the same queue: once it is judged,
    // anything of the silent flow that was queued would have been judged before it.
    udp_client(&topology.a, B, 98)
        .send(b"sentinel")
        .expect("send");
    assert!(wait_until(QUICK, || count(98) == 1), "sentinel judged");
    assert_eq!(
        count(99),
        1,
        "later datagrams of the accepted flow stayed in the kernel"
    );
    drop(dp);
}
