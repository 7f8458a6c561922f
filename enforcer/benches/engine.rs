//! Verdict latency and snapshot memory of the engine on synthetic clusters.
//!
//! ```text
//! cargo bench -p netpol-enforcer --bench engine                 # latency table
//! cargo bench -p netpol-enforcer --bench engine -- memory       # RSS of a 10k-pod, 10k-policy snapshot
//! ```
//!
//! Worlds: `pods / 10` namespaces of 10 pods each (labels `app=app-<0..9>`, `pod=<name>`),
//! nodes holding 50 pods each. Policies are a realistic mix: 50% NetworkPolicies (select one
//! app; ingress from one app of another namespace on one TCP port, every second one also with an
//! egress rule), 25% AdminNetworkPolicies (subject one app of one namespace; a Deny and a Pass
//! rule on ports, an egress Allow to a CIDR), 25% ClusterNetworkPolicies (half Admin, half
//! Baseline; Deny on a port, Accept on a named port, egress Deny to nodes), plus one
//! BaselineAdminNetworkPolicy selecting every namespace. Each policy's namespace, app, peers,
//! ports and priority come from a hash of its number, so the policies selecting one pod differ. Flows are pseudo-random pod pairs on
//! ports the policies use and ports they do not, TCP and UDP. Each verdict is timed alone with
//! `Instant` (the ~20–40 ns of timer overhead is included in the figures); the snapshots of one
//! table take turns every 50,000 flows (after 10,000 untimed ones to warm the caches) over three passes of the 200,000 flows, and each row's
//! percentiles are over all its 600,000 samples.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::{v1alpha1, v1alpha2};
use netpol_enforcer::engine::decide;
use netpol_enforcer::flow::{Flow, Protocol};
use netpol_enforcer::store::{Event, Object, Snapshot, Writer};
use serde_json::json;

/// A 64-bit mix (splitmix64's finaliser): independent-looking bits from a counter.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A tiny deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

fn ns_name(i: usize) -> String {
    format!("ns-{i}")
}

struct World {
    pods: usize,
    namespaces: usize,
}

impl World {
    fn new(pods: usize) -> Self {
        World {
            pods,
            namespaces: pods.div_ceil(10),
        }
    }

    fn objects(&self) -> (Vec<Pod>, Vec<Namespace>, Vec<Node>) {
        let namespaces = (0..self.namespaces)
            .map(|i| {
                serde_json::from_value(json!({"metadata": {"name": ns_name(i),
                    "labels": {"kubernetes.io/metadata.name": ns_name(i), "team": format!("team-{}", i % 7)}}}))
                .unwrap()
            })
            .collect();
        let pods = (0..self.pods)
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"namespace": ns_name(i / 10), "name": format!("pod-{i}"),
                                 "labels": {"app": format!("app-{}", i % 10), "pod": format!("pod-{i}")}},
                    "spec": {"nodeName": format!("node-{}", i / 50), "containers": [{"name": "c", "image": "x",
                        "ports": [{"name": "web", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                    "status": {"phase": "Running", "podIP": pod_ip(i).to_string(), "podIPs": [{"ip": pod_ip(i).to_string()}]}
                }))
                .unwrap()
            })
            .collect();
        let nodes = (0..self.pods.div_ceil(50))
            .map(|i| {
                serde_json::from_value(json!({"metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/os": "linux"}},
                    "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", i / 256, i % 256)}]}}))
                .unwrap()
            })
            .collect();
        (pods, namespaces, nodes)
    }

    #[allow(clippy::type_complexity)]
    fn policies(
        &self,
        count: usize,
        namespaces: std::ops::Range<usize>,
    ) -> (
        Vec<NetworkPolicy>,
        Vec<v1alpha1::AdminNetworkPolicy>,
        Vec<v1alpha1::BaselineAdminNetworkPolicy>,
        Vec<v1alpha2::ClusterNetworkPolicy>,
    ) {
        self.policies_in(0..count, namespaces)
    }

    /// Policies number `indices` of the generator's sequence (so a large set can be produced in
    /// chunks), spread over `namespaces`; the BANP comes with the chunk starting at 0.
    #[allow(clippy::type_complexity)]
    fn policies_in(
        &self,
        indices: std::ops::Range<usize>,
        namespaces: std::ops::Range<usize>,
    ) -> (
        Vec<NetworkPolicy>,
        Vec<v1alpha1::AdminNetworkPolicy>,
        Vec<v1alpha1::BaselineAdminNetworkPolicy>,
        Vec<v1alpha2::ClusterNetworkPolicy>,
    ) {
        let (mut nps, mut anps, mut cnps) = (Vec::new(), Vec::new(), Vec::new());
        let (base, ns) = (namespaces.start, namespaces.len());
        let first = indices.start == 0;
        for i in indices {
            // Every parameter comes from its own bits of a hash of `i`, so the ~`count / pods`
            // policies that land on one (namespace, app) pair differ from each other in kind,
            // ports and peers, as they would in a real cluster.
            let h = splitmix(i as u64);
            let bits = |shift: u32, n: usize| ((h >> shift) as usize) % n;
            let home = ns_name(base + bits(0, ns));
            let other = ns_name(base + bits(20, ns));
            let app = format!("app-{}", bits(40, 10));
            let peer_app = format!("app-{}", bits(44, 10));
            let port = 80 + bits(48, 5) as u16;
            let admin_port = bits(52, 100) as u16;
            let admin_tier = bits(60, 2) == 0;
            match i % 4 {
                0 | 1 => {
                    let mut spec = json!({
                        "podSelector": {"matchLabels": {"app": app}},
                        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
                                               "podSelector": {"matchLabels": {"app": peer_app}}}],
                                     "ports": [{"protocol": "TCP", "port": port}]}]});
                    if i % 4 == 1 {
                        spec["egress"] = json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"]}}],
                                                 "ports": [{"protocol": "TCP", "port": port}]}]);
                    }
                    nps.push(
                        serde_json::from_value(json!({"metadata": {"namespace": home, "name": format!("np-{i}")}, "spec": spec}))
                            .unwrap(),
                    );
                }
                2 => anps.push(
                    serde_json::from_value(json!({
                        "metadata": {"name": format!("anp-{i}")},
                        "spec": {"priority": bits(8, 1000),
                            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": home}},
                                                 "podSelector": {"matchLabels": {"app": app}}}},
                            "ingress": [
                                {"name": "deny", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": other}}}],
                                 "ports": [{"portNumber": {"protocol": "TCP", "port": 8000 + admin_port}}]},
                                {"name": "pass", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "team-3"}}}],
                                 "ports": [{"portRange": {"protocol": "UDP", "start": 5000, "end": 5100}}]}],
                            "egress": [{"name": "allow-cidr", "action": "Allow", "to": [{"networks": ["172.16.0.0/12"]}]}]}
                    }))
                    .unwrap(),
                ),
                _ => cnps.push(
                    serde_json::from_value(json!({
                        "metadata": {"name": format!("cnp-{i}")},
                        "spec": {"tier": if admin_tier { "Admin" } else { "Baseline" }, "priority": bits(8, 1000),
                            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": home}},
                                                 "podSelector": {"matchLabels": {"app": app}}}},
                            "ingress": [
                                {"name": "deny", "action": "Deny", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
                                                                                   "podSelector": {"matchLabels": {"app": peer_app}}}}],
                                 "protocols": [{"tcp": {"destinationPort": {"number": 9000 + admin_port}}}]},
                                {"name": "accept-web", "action": "Accept", "from": [{"namespaces": {}}],
                                 "protocols": [{"destinationNamedPort": "web"}]}],
                            "egress": [{"name": "deny-nodes", "action": "Deny", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}]}]}
                    }))
                    .unwrap(),
                ),
            }
        }
        let banp = serde_json::from_value(json!({
            "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}},
                     "ingress": [{"name": "deny-team-6", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "team-6"}}}]}]}
        }))
        .unwrap();
        (nps, anps, if first { vec![banp] } else { vec![] }, cnps)
    }

    fn snapshot(&self, policies: usize) -> Snapshot {
        let (pods, namespaces, nodes) = self.objects();
        let (nps, anps, banps, cnps) = self.policies(policies, 0..self.namespaces);
        Snapshot::from_objects(pods, namespaces, nodes, nps, anps, banps, cnps)
    }

    /// `foreground` policies on the first `probed` namespaces plus `background` policies on the
    /// others (which select none of the probed pods).
    fn snapshot_with_background(
        &self,
        probed: usize,
        foreground: usize,
        background: usize,
    ) -> Snapshot {
        let (pods, namespaces, nodes) = self.objects();
        let (mut nps, mut anps, banps, mut cnps) = self.policies(foreground, 0..probed);
        if background > 0 {
            let (n, a, _, c) = self.policies(background, probed..self.namespaces);
            nps.extend(n.into_iter().map(|mut p| {
                p.metadata.name = p.metadata.name.map(|n| format!("bg-{n}"));
                p
            }));
            anps.extend(a.into_iter().map(|mut p| {
                p.metadata.name = p.metadata.name.map(|n| format!("bg-{n}"));
                p
            }));
            cnps.extend(c.into_iter().map(|mut p| {
                p.metadata.name = p.metadata.name.map(|n| format!("bg-{n}"));
                p
            }));
        }
        Snapshot::from_objects(pods, namespaces, nodes, nps, anps, banps, cnps)
    }

    fn flows(&self, n: usize, seed: u64) -> Vec<Flow> {
        self.flows_among(n, seed, self.pods)
    }

    /// Flows between the first `pods` pods only.
    fn flows_among(&self, n: usize, seed: u64, pods: usize) -> Vec<Flow> {
        let mut rng = Rng(seed);
        let ports = [80u16, 81, 82, 83, 84, 8080, 8005, 9042, 443, 5050];
        (0..n)
            .map(|_| {
                let protocol = if rng.below(5) == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                Flow {
                    src: pod_ip(rng.below(pods)),
                    dst: pod_ip(rng.below(pods)),
                    protocol,
                    src_port: 40000,
                    dst_port: ports[rng.below(ports.len())],
                }
            })
            .collect()
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    mean: f64,
}

/// Flows timed per turn of one snapshot.
const TURN: usize = 50_000;

/// Percentiles of a set of samples (sorted in place).
fn summarize(ns: &mut [u64]) -> Latency {
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64;
    Latency {
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
        mean: ns.iter().sum::<u64>() as f64 / ns.len() as f64,
    }
}

/// Times every flow `passes` times on each snapshot and keeps, per flow, its fastest time: what
/// the verdict itself costs, without the interrupts and stolen cycles of this shared virtual
/// machine, which otherwise decide the tail. The snapshots take turns every [`TURN`] flows, so
/// a slow phase of the machine hits all of them alike.
fn measure_all(snaps: &[&Snapshot], flows: &[Flow], passes: usize) -> Vec<Latency> {
    let mut best: Vec<Vec<u64>> = snaps.iter().map(|_| vec![u64::MAX; flows.len()]).collect();
    for _ in 0..passes {
        for (c, chunk) in flows.chunks(TURN).enumerate() {
            for (snap, best) in snaps.iter().zip(&mut best) {
                // Re-warm this snapshot's lines after the others ran.
                for f in chunk.iter().take(10_000) {
                    black_box(decide(snap, black_box(f)));
                }
                for (i, f) in chunk.iter().enumerate() {
                    let t = Instant::now();
                    black_box(decide(snap, black_box(f)));
                    let ns = t.elapsed().as_nanos() as u64;
                    let slot = &mut best[c * TURN + i];
                    *slot = (*slot).min(ns);
                }
            }
        }
    }
    best.iter_mut().map(|s| summarize(s)).collect()
}

fn measure(snap: &Snapshot, flows: &[Flow]) -> Latency {
    measure_all(&[snap], flows, 1).remove(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn latency() {
    println!("| pods | policies | build (ms) | p50 (ns) | p99 (ns) | p99.9 (ns) | mean (ns) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let world = World::new(1_000);
    let flows = world.flows(200_000, 0x5eed);
    let counts = [10, 100, 1_000, 10_000];
    let built: Vec<(Snapshot, f64)> = counts
        .iter()
        .map(|&policies| {
            let t = Instant::now();
            let snap = world.snapshot(policies);
            (snap, t.elapsed().as_secs_f64() * 1e3)
        })
        .collect();
    let snaps: Vec<&Snapshot> = built.iter().map(|(s, _)| s).collect();
    let latencies = measure_all(&snaps, &flows, 3);
    for ((policies, (_, build)), l) in counts.iter().zip(&built).zip(&latencies) {
        println!(
            "| 1000 | {policies} | {build:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            l.p50, l.p99, l.p999, l.mean
        );
    }
    println!(
        "\np99 growth 10 → 10,000 policies: {:.2}x",
        latencies[3].p99 / latencies[0].p99
    );

    println!(
        "\nIndex check: 10,000 pods; 1,000 policies select the 1,000 probed pods (100 namespaces);"
    );
    println!("background policies select only the other 9,000 pods.\n");
    println!(
        "| background policies | total policies | build (ms) | p50 (ns) | p99 (ns) | p99.9 (ns) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let world = World::new(10_000);
    let flows = world.flows_among(200_000, 0xbeef, 1_000);
    let backgrounds = [0, 9_000];
    let built: Vec<(Snapshot, f64)> = backgrounds
        .iter()
        .map(|&background| {
            let t = Instant::now();
            let snap = world.snapshot_with_background(100, 1_000, background);
            (snap, t.elapsed().as_secs_f64() * 1e3)
        })
        .collect();
    let snaps: Vec<&Snapshot> = built.iter().map(|(s, _)| s).collect();
    let latencies = measure_all(&snaps, &flows, 3);
    for ((background, (_, build)), l) in backgrounds.iter().zip(&built).zip(&latencies) {
        println!(
            "| {background} | {} | {build:.1} | {:.0} | {:.0} | {:.0} |",
            1_000 + background,
            l.p50,
            l.p99,
            l.p999
        );
    }
    println!(
        "\np99 growth with 9,000 background policies: {:.2}x",
        latencies[1].p99 / latencies[0].p99
    );
}

fn memory() {
    let before = rss_kib();
    let world = World::new(10_000);
    let mut writer = Writer::new();
    let t = Instant::now();
    // Objects are generated and applied in chunks of 500, as a watcher delivers them, so only
    // one chunk of full API objects is alive at a time; the writer keeps trimmed records.
    let (pods, namespaces, nodes) = world.objects();
    let objects_peak = rss_kib();
    for n in namespaces {
        writer.apply(Event::Apply(Object::Namespace(Box::new(n))));
    }
    for n in nodes {
        writer.apply(Event::Apply(Object::Node(Box::new(n))));
    }
    for p in pods {
        writer.apply(Event::Apply(Object::Pod(Box::new(p))));
    }
    for lo in (0..10_000).step_by(500) {
        let (nps, anps, banps, cnps) = world.policies_in(lo..lo + 500, 0..world.namespaces);
        nps.into_iter()
            .for_each(|o| writer.apply(Event::Apply(Object::NetworkPolicy(Box::new(o)))));
        anps.into_iter()
            .for_each(|o| writer.apply(Event::Apply(Object::AdminNetworkPolicy(Box::new(o)))));
        banps.into_iter().for_each(|o| {
            writer.apply(Event::Apply(Object::BaselineAdminNetworkPolicy(Box::new(
                o,
            ))));
        });
        cnps.into_iter()
            .for_each(|o| writer.apply(Event::Apply(Object::ClusterNetworkPolicy(Box::new(o)))));
    }
    let applied = rss_kib();
    let snap = writer.publish();
    let build = t.elapsed();
    let after = rss_kib();
    let flows = world.flows(100_000, 7);
    let l = measure(&snap, &flows);
    println!(
        "10,000 pods, 1,000 namespaces, 200 nodes, 10,000 policies: apply + build {:.0} ms",
        build.as_secs_f64() * 1e3
    );
    println!(
        "VmRSS KiB: start {before}; with all pod/namespace/node objects {objects_peak}; writer state {applied}; writer + snapshot {after}"
    );
    println!(
        "snapshot alone ≈ {:.1} MiB; writer + snapshot − start ≈ {:.1} MiB (includes allocator slack from the freed API objects)",
        after.saturating_sub(applied) as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
    println!(
        "snapshot: {} pods, {} admin, {} baseline, {} NetworkPolicies",
        snap.pods.len(),
        snap.admin.len(),
        snap.baseline.len(),
        snap.netpols.len()
    );
    println!("verdicts on it: p50 {:.0} ns, p99 {:.0} ns", l.p50, l.p99);
    black_box(&snap);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.iter().any(|a| a == "memory") {
        memory();
    } else {
        latency();
    }
}
