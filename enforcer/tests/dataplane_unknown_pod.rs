//! Privileged: a new pod's first packet races the store update, with real NFQUEUE verdicts.
//!
//! Pod a (10.77.1.2) sits in namespace `x`, which a NetworkPolicy isolates for egress: its pods
//! may reach `app=server` pods in `y` on TCP 80 and nothing else. Pod b (10.77.2.2) is that
//! server. The node's pod range (its Node's `spec.podCIDRs`) is 10.77.0.0/16. Before the fix, a
//! packet from a before the store knew it was judged as if from outside the cluster: no egress
//! judgement, b has no ingress policy, so accepted (tier `default`). Each test starts the
//! dataplane with the engine in the node namespace, connects from a while the store does not
//! know it, and checks with a SYN counter inside b that nothing reached b until the store knew
//! a, and that the verdict then is the policy's. Skips (printing why) when not root; fails
//! instead when `NETPOL_REQUIRE_LOCAL=1`.

mod common;
mod engine_support;

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use engine_support::{namespace, netpol, node_with_pod_cidrs, pod};
use netpol_enforcer::dataplane::{self, Dataplane, Undecided};
use netpol_enforcer::judge::EngineJudge;
use netpol_enforcer::metrics::{Metrics, QueueLabels, UndecidedLabels, VerdictLabels};
use netpol_enforcer::store::{Event, Object, Writer};
use serde_json::json;

const QUEUE: u16 = 100;
/// Long enough that a packet delivered by mistake would have been seen at b.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a count may lag behind what the client saw: a verdict is counted just after it is
/// sent, and the server records a connection just after accepting it.
const COUNTED: Duration = Duration::from_secs(2);

/// The store as the watch would fill it, minus the pods a test leaves out.
struct Cluster {
    writer: Writer,
}

impl Cluster {
    /// Namespaces x and y, the node with its pod range and addresses, the egress policy of x;
    /// pod b only if `server_known`.
    fn new(server_known: bool) -> Cluster {
        let mut writer = Writer::new();
        let mut node = node_with_pod_cidrs("n", "10.77.1.1", &["10.77.0.0/16"]);
        let addresses = json!([
            {"type": "InternalIP", "address": "10.77.1.1"},
            {"type": "InternalIP", "address": "10.77.2.1"}
        ]);
        node.status.as_mut().unwrap().addresses =
            Some(serde_json::from_value(addresses).expect("addresses"));
        let policy = netpol(
            "x",
            "egress-to-server",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                            "podSelector": {"matchLabels": {"app": "server"}}}],
                    "ports": [{"protocol": "TCP", "port": 80}]
                }]
            }),
        );
        let objects = [
            Object::Namespace(Box::new(namespace("x", &[]))),
            Object::Namespace(Box::new(namespace("y", &[]))),
            Object::Node(Box::new(node)),
            Object::NetworkPolicy(Box::new(policy)),
        ];
        for o in objects {
            writer.apply(Event::Apply(o));
        }
        let mut cluster = Cluster { writer };
        if server_known {
            cluster.learn(Cluster::server());
        } else {
            cluster.writer.publish();
        }
        cluster
    }

    fn client() -> Object {
        Object::Pod(Box::new(pod("x", "new", &[("app", "client")], A, &[])))
    }

    fn server() -> Object {
        Object::Pod(Box::new(pod("y", "server", &[("app", "server")], B, &[])))
    }

    /// The watch reports a pod: applied and published. Returns the instant just before, when
    /// no snapshot knew the pod yet: anything let through on its behalf earlier was unjudged.
    fn learn(&mut self, pod: Object) -> Instant {
        let before = Instant::now();
        self.writer.apply(Event::Apply(pod));
        self.writer.publish();
        before
    }

    /// The watch reports a pod gone.
    fn forget(&mut self, pod: Object) {
        self.writer.apply(Event::Delete(pod));
        self.writer.publish();
    }
}

fn start(topology: &Topology, cluster: &Cluster, undecided: Undecided) -> (Dataplane, Metrics) {
    let mut config = dataplane::Config::new(QUEUE, 1, false);
    config.netns = Some(Topology::path(&topology.node));
    config.undecided = undecided;
    let metrics = Metrics::new();
    let judge = Arc::new(EngineJudge::new(cluster.writer.reader()));
    let dp = Dataplane::start(config, judge, metrics.clone()).expect("starting the dataplane");
    (dp, metrics)
}

fn held_now(m: &Metrics) -> i64 {
    m.held
        .get(&QueueLabels { queue: QUEUE })
        .map_or(0, |g| g.get())
}

fn undecided(m: &Metrics, outcome: &'static str) -> u64 {
    m.undecided
        .get(&UndecidedLabels { outcome })
        .map_or(0, |c| c.get())
}

fn verdicts(m: &Metrics, verdict: &'static str, tier: &'static str) -> u64 {
    m.verdicts
        .get(&VerdictLabels { verdict, tier })
        .map_or(0, |c| c.get())
}

/// Counts the SYNs to `port` that arrive inside pod `ns` (a rule with no target, in its INPUT).
struct SynCounter {
    ns: String,
    port: u16,
}

impl SynCounter {
    fn install(ns: &str, port: u16) -> SynCounter {
        let port_s = port.to_string();
        let rule = [
            "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", &port_s,
        ];
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(rule)
            .output()
            .expect("iptables");
        assert!(out.status.success(), "{out:?}");
        SynCounter {
            ns: ns.to_owned(),
            port,
        }
    }

    fn count(&self) -> u64 {
        let listing = ns_output(&self.ns, &["iptables", "-w", "-nvx", "-L", "INPUT"]);
        let needle = format!("tcp dpt:{} flags:0x17/0x02", self.port);
        listing
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no SYN counter for {} in {listing}", self.port))
    }
}

/// A TCP listener in pod b that records when it accepts each connection.
struct Server {
    accepted: Arc<Mutex<Vec<Instant>>>,
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16) -> Server {
        let listener = in_ns(ns, || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (log, l) = (accepted.clone(), listener.try_clone().expect("clone"));
        let thread = std::thread::spawn(move || {
            let mut open = Vec::new();
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                log.lock().expect("log").push(Instant::now());
                open.push(conn);
            }
        });
        Server {
            accepted,
            listener,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().expect("log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // shutdown(2) on a listening socket wakes the blocked accept.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect from pod `ns` on a thread; the result and when it came.
fn connect_later(
    ns: &str,
    to: &'static str,
    port: u16,
    timeout: Duration,
) -> JoinHandle<(std::io::Result<TcpStream>, Instant)> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let r = connect(&ns, to, port, timeout);
        (r, Instant::now())
    })
}

#[test]
fn a_new_pods_first_packet_waits_for_the_store_then_gets_the_policys_verdict() {
    if !root_or_skip("a_new_pods_first_packet_waits_for_the_store_then_gets_the_policys_verdict") {
        return;
    }
    let topology = Topology::new("unk");
    let (_s80, _s81) = (
        Server::start(&topology.b, 80),
        Server::start(&topology.b, 81),
    );
    let (syn80, syn81) = (
        SynCounter::install(&topology.b, 80),
        SynCounter::install(&topology.b, 81),
    );
    let mut cluster = Cluster::new(true);
    let limit = Duration::from_secs(10);
    let (dp, m) = start(&topology, &cluster, Undecided::Hold { limit });

    // Allowed by the policy once known: held while unknown, then accepted.
    let pending = connect_later(&topology.a, B, 80, Duration::from_secs(8));
    assert!(
        wait_until(Duration::from_secs(3), || held_now(&m) >= 1),
        "the first SYN is held"
    );
    std::thread::sleep(SETTLE);
    assert_eq!(syn80.count(), 0, "nothing reached b while a was unknown");
    assert!(!pending.is_finished(), "the connection is still waiting");
    let known_at = cluster.learn(Cluster::client());
    let (result, done_at) = pending.join().expect("connect thread");
    let _stream = result.expect("accepted once the policy could judge it");
    assert!(done_at >= known_at);
    assert!(syn80.count() >= 1);
    assert!(undecided(&m, "released") >= 1);
    assert!(wait_until(COUNTED, || verdicts(
        &m,
        "accept",
        "networkpolicy"
    ) >= 1));

    // Denied by the policy once known: held while unknown, then dropped.
    cluster.forget(Cluster::client());
    let pending = connect_later(&topology.a, B, 81, Duration::from_secs(3));
    let released = undecided(&m, "released");
    assert!(
        wait_until(Duration::from_secs(3), || held_now(&m) >= 1),
        "the first SYN is held"
    );
    std::thread::sleep(SETTLE);
    cluster.learn(Cluster::client());
    assert!(
        wait_until(Duration::from_secs(1), || undecided(&m, "released")
            > released),
        "the held SYN is judged as soon as the pod is known"
    );
    let (result, _) = pending.join().expect("connect thread");
    let err = result.expect_err("port 81 is not allowed to pods in x");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(syn81.count(), 0, "no SYN to 81 ever reached b");
    assert!(wait_until(COUNTED, || verdicts(
        &m,
        "drop",
        "networkpolicy"
    ) >= 1));

    assert_eq!(
        verdicts(&m, "accept", "default"),
        0,
        "nothing from a was accepted without its egress judgement"
    );
    assert_eq!(undecided(&m, "expired"), 0);
    assert!(wait_until(Duration::from_secs(1), || held_now(&m) == 0));
    drop(dp);
}

#[test]
fn racing_the_store_update_never_lets_the_first_packet_through_unjudged() {
    if !root_or_skip("racing_the_store_update_never_lets_the_first_packet_through_unjudged") {
        return;
    }
    let topology = Topology::new("race");
    let server = Server::start(&topology.b, 80);
    let mut cluster = Cluster::new(true);
    let limit = Duration::from_secs(10);
    let (dp, m) = start(&topology, &cluster, Undecided::Hold { limit });

    // The store learns the pod at varying moments around its first packet.
    let delays_ms = [0u64, 1, 2, 5, 10, 20, 50, 100];
    let mut streams = Vec::new();
    for (round, delay) in delays_ms.into_iter().enumerate() {
        cluster.forget(Cluster::client());
        let pending = connect_later(&topology.a, B, 80, Duration::from_secs(8));
        std::thread::sleep(Duration::from_millis(delay));
        let known_at = cluster.learn(Cluster::client());
        let (result, _) = pending.join().expect("connect thread");
        streams.push(result.unwrap_or_else(|e| panic!("round {round} ({delay} ms): {e}")));
        assert!(
            wait_until(COUNTED, || server.accepted().len() > round),
            "round {round}: b saw the connection"
        );
        let accepted = server.accepted();
        assert_eq!(accepted.len(), round + 1, "one connection per round");
        assert!(
            accepted[round] >= known_at,
            "round {round} ({delay} ms): b accepted the connection before the store knew a"
        );
    }
    let rounds = delays_ms.len() as u64;
    assert!(
        wait_until(COUNTED, || verdicts(&m, "accept", "networkpolicy")
            >= rounds),
        "every round was accepted by the NetworkPolicy"
    );
    assert_eq!(
        verdicts(&m, "accept", "networkpolicy"),
        rounds,
        "one judgement per connection"
    );
    assert_eq!(
        verdicts(&m, "accept", "default"),
        0,
        "no accept without the egress judgement"
    );
    assert!(
        undecided(&m, "released") >= 1,
        "at least the later rounds were held"
    );
    drop(dp);
}

#[test]
fn a_pod_still_unknown_at_the_hold_limit_is_dropped_and_drop_mode_does_not_wait() {
    if !root_or_skip("a_pod_still_unknown_at_the_hold_limit_is_dropped_and_drop_mode_does_not_wait")
    {
        return;
    }
    let topology = Topology::new("exp");
    let _server = Server::start(&topology.b, 80);
    let syn = SynCounter::install(&topology.b, 80);
    let cluster = Cluster::new(true);

    let limit = Duration::from_millis(300);
    let (dp, m) = start(&topology, &cluster, Undecided::Hold { limit });
    // Long enough for the SYN's first retransmission (after 1 s) to be held and expire too.
    let err = connect(&topology.a, B, 80, Duration::from_millis(2500))
        .expect_err("a stays unknown, so its SYNs are dropped");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(
        wait_until(Duration::from_secs(2), || held_now(&m) == 0),
        "every held SYN leaves by its limit"
    );
    assert!(
        undecided(&m, "expired") >= 2,
        "the SYN and its retransmission"
    );
    assert_eq!(undecided(&m, "released"), 0);
    assert!(wait_until(COUNTED, || verdicts(&m, "drop", "unknown_pod") >= 2));
    assert_eq!(syn.count(), 0);
    drop(dp);

    let (dp, m) = start(&topology, &cluster, Undecided::Drop);
    let err = connect(&topology.a, B, 80, Duration::from_millis(800)).expect_err("dropped at once");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(undecided(&m, "dropped") >= 1);
    assert_eq!(undecided(&m, "held"), 0, "drop mode never holds");
    assert_eq!(syn.count(), 0);
    drop(dp);
}

#[test]
fn a_connection_to_a_pod_not_known_yet_waits_for_its_ingress_judgement() {
    if !root_or_skip("a_connection_to_a_pod_not_known_yet_waits_for_its_ingress_judgement") {
        return;
    }
    let topology = Topology::new("dst");
    let _server = Server::start(&topology.b, 80);
    let syn = SynCounter::install(&topology.b, 80);
    let mut cluster = Cluster::new(false);
    cluster.learn(Cluster::client());
    let (dp, m) = start(
        &topology,
        &cluster,
        Undecided::Hold {
            limit: Duration::from_secs(10),
        },
    );
    let pending = connect_later(&topology.a, B, 80, Duration::from_secs(8));
    assert!(
        wait_until(Duration::from_secs(3), || held_now(&m) >= 1),
        "held"
    );
    std::thread::sleep(SETTLE);
    assert_eq!(syn.count(), 0, "nothing reached b while b was unknown");
    cluster.learn(Cluster::server());
    let (result, _) = pending.join().expect("connect thread");
    result.expect("b is an allowed peer of x once known");
    assert!(wait_until(COUNTED, || verdicts(
        &m,
        "accept",
        "networkpolicy"
    ) >= 1));
    drop(dp);
}
