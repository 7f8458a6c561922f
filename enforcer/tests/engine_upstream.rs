//! The upstream Kubernetes NetworkPolicy e2e scenarios ("Netpol"), classic 9-pod grid: namespaces
//! x, y, z × pods a, b, c (labels `pod=<name>`, namespaces labelled only with
//! `kubernetes.io/metadata.name`). Each check builds the expectation with upstream's vocabulary
//! (applied in order, later calls overriding earlier ones), asserts the number of expected-denied
//! pairs equals the count in the reference's Appendix A (so the transcription is checked too),
//! and compares every non-loopback pair with `decide`.

mod engine_support;

use std::collections::BTreeMap;

use engine_support::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_enforcer::engine::{Verdict, decide};
use netpol_enforcer::flow::Protocol;
use netpol_enforcer::store::{Event, Object, Snapshot, Writer};
use serde_json::json;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const MDN: &str = "kubernetes.io/metadata.name";

fn ip(ns: &str, pod: &str) -> String {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap() + 1;
    let p = PODS.iter().position(|x| *x == pod).unwrap() + 1;
    format!("10.0.{n}.{p}")
}

fn world_pod(ns: &str, name: &str, extra: &[(&str, &str)]) -> Pod {
    let mut labels = vec![("pod", name)];
    labels.extend_from_slice(extra);
    let mut ports = Vec::new();
    for port in [80u16, 81] {
        for proto in ["tcp", "udp", "sctp"] {
            ports.push((format!("serve-{port}-{proto}"), port, proto.to_uppercase()));
        }
    }
    let ports: Vec<(&str, u16, &str)> = ports
        .iter()
        .map(|(n, p, pr)| (n.as_str(), *p, pr.as_str()))
        .collect();
    pod(ns, name, &labels, &ip(ns, name), &ports)
}

fn world() -> (Vec<Namespace>, Vec<Pod>) {
    let namespaces = NAMESPACES.iter().map(|n| namespace(n, &[])).collect();
    let pods = NAMESPACES
        .iter()
        .flat_map(|n| PODS.iter().map(move |p| world_pod(n, p, &[])))
        .collect();
    (namespaces, pods)
}

fn snapshot(netpols: Vec<NetworkPolicy>) -> Snapshot {
    let (ns, pods) = world();
    Snapshot::from_objects(pods, ns, vec![], netpols, vec![], vec![], vec![])
}

/// A writer holding the world plus `netpols`, for tests that mutate it.
fn writer(netpols: Vec<NetworkPolicy>) -> Writer {
    let (ns, pods) = world();
    let mut w = Writer::new();
    w.apply(Event::Replace(
        netpol_enforcer::store::Kind::Namespace,
        ns.into_iter()
            .map(|n| Object::Namespace(Box::new(n)))
            .collect(),
    ));
    for p in pods {
        w.apply(Event::Apply(Object::Pod(Box::new(p))));
    }
    for np in netpols {
        w.apply(Event::Apply(Object::NetworkPolicy(Box::new(np))));
    }
    w
}

/// A peer filter: `None` fields are wildcards.
#[derive(Clone, Copy)]
struct P(Option<&'static str>, Option<&'static str>);
const ANY: P = P(None, None);
fn ns(n: &'static str) -> P {
    P(Some(n), None)
}
fn at(n: &'static str, p: &'static str) -> P {
    P(Some(n), Some(p))
}

/// Upstream's `Reachability`: every pair starts allowed.
struct Reach(BTreeMap<(String, String), bool>);

impl Reach {
    fn new() -> Self {
        let mut m = BTreeMap::new();
        for fn_ in NAMESPACES {
            for fp in PODS {
                for tn in NAMESPACES {
                    for tp in PODS {
                        m.insert((format!("{fn_}/{fp}"), format!("{tn}/{tp}")), true);
                    }
                }
            }
        }
        Reach(m)
    }
    fn set(mut self, from: P, to: P, v: bool) -> Self {
        let ok = |p: P, s: &str| {
            let (n, pod) = s.split_once('/').unwrap();
            p.0.is_none_or(|x| x == n) && p.1.is_none_or(|x| x == pod)
        };
        for ((f, t), val) in self.0.iter_mut() {
            if ok(from, f) && ok(to, t) {
                *val = v;
            }
        }
        self
    }
    fn peer(self, from: P, to: P, v: bool) -> Self {
        self.set(from, to, v)
    }
    fn all_ingress(self, to: P, v: bool) -> Self {
        self.set(ANY, to, v)
    }
    fn all_egress(self, from: P, v: bool) -> Self {
        self.set(from, ANY, v)
    }
    fn expect(self, from: P, to: P, v: bool) -> Self {
        self.set(from, to, v)
    }

    /// Checks every non-loopback pair; `denied` is Appendix A's classic count.
    fn check(&self, snap: &Snapshot, protocol: Protocol, port: u16, denied: usize) {
        let expected_denied = self.0.iter().filter(|((f, t), v)| f != t && !**v).count();
        assert_eq!(
            expected_denied, denied,
            "expectation transcription: denied pairs"
        );
        let mut wrong = Vec::new();
        for ((f, t), v) in &self.0 {
            if f == t {
                continue;
            }
            let (fnn, fp) = f.split_once('/').unwrap();
            let (tn, tp) = t.split_once('/').unwrap();
            let d = decide(snap, &flow(&ip(fnn, fp), &ip(tn, tp), protocol, port));
            if (d.verdict == Verdict::Accept) != *v {
                wrong.push(format!(
                    "{f} -> {t}: expected {}, got {:?} ({})",
                    if *v { "allow" } else { "deny" },
                    d.verdict,
                    d.reason
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong of 72 ({protocol:?}/{port}):\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

fn pod_sel(pairs: &[(&str, &str)]) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| ((*k).into(), json!(v))).collect();
    json!({"matchLabels": m})
}

#[test]
fn t01_default_deny_ingress() {
    let snap = snapshot(vec![netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Tcp, 80, 24);
}

#[test]
fn t02_default_deny_all() {
    let snap = snapshot(vec![netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}),
    )]);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .peer(ns("x"), ANY, false)
        .check(&snap, Protocol::Tcp, 80, 42);
}

#[test]
fn t03_pod_selector_within_namespace() {
    let snap = snapshot(vec![netpol(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": pod_sel(&[("pod", "b")])}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .expect(at("x", "b"), at("x", "a"), true)
        .check(&snap, Protocol::Tcp, 80, 7);
}

#[test]
fn t04_allow_ingress_for_a_target() {
    let snap = snapshot(vec![
        netpol(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}),
        ),
        netpol(
            "x",
            "allow-all-to-a",
            json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}]}]}),
        ),
    ]);
    Reach::new()
        .all_ingress(at("x", "a"), true)
        .all_ingress(at("x", "b"), false)
        .all_ingress(at("x", "c"), false)
        .check(&snap, Protocol::Tcp, 80, 16);
}

#[test]
fn t06_namespace_selector() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": pod_sel(&[(MDN, "y")])}]}]}),
    )]);
    Reach::new()
        .peer(ns("x"), at("x", "a"), false)
        .peer(ns("z"), at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 80, 5);
}

#[test]
fn t09_pod_selector_or_namespace_selector() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-ns-y-match-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [
                   {"namespaceSelector": {"matchExpressions": [{"key": MDN, "operator": "NotIn", "values": ["x"]}]}},
                   {"podSelector": pod_sel(&[("pod", "b")])}]}]}),
    )]);
    Reach::new()
        .expect(at("x", "a"), at("x", "a"), false)
        .expect(at("x", "c"), at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 80, 1);
}

#[test]
fn t10_pod_selector_and_namespace_selector() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchExpressions": [{"key": MDN, "operator": "NotIn", "values": ["x"]}]},
                   "podSelector": pod_sel(&[("pod", "b")])}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .expect(at("y", "b"), at("x", "a"), true)
        .expect(at("z", "b"), at("x", "a"), true)
        .check(&snap, Protocol::Tcp, 80, 6);
}

fn ns_y_on_port(name: &str, protocol: &str, port: u16) -> NetworkPolicy {
    netpol(
        "x",
        name,
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": pod_sel(&[(MDN, "y")])}],
                            "ports": [{"protocol": protocol, "port": port}]}]}),
    )
}

#[test]
fn t14_ports() {
    let snap = snapshot(vec![ns_y_on_port(
        "allow-client-a-via-ns-selector",
        "TCP",
        81,
    )]);
    Reach::new()
        .peer(ns("x"), at("x", "a"), false)
        .peer(ns("y"), at("x", "a"), true)
        .peer(ns("z"), at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 81, 5);
}

#[test]
fn t15_stacked_policies_with_overlapping_pod_selectors() {
    let mut w = writer(vec![ns_y_on_port(
        "allow-client-a-via-ns-selector",
        "TCP",
        81,
    )]);
    let snap = w.publish();
    Reach::new()
        .peer(ns("x"), at("x", "a"), false)
        .peer(ns("y"), at("x", "a"), true)
        .peer(ns("z"), at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 81, 5);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 80, 8);
    w.apply(Event::Apply(Object::NetworkPolicy(Box::new(ns_y_on_port(
        "allow-client-a-via-ns-selector-80",
        "TCP",
        80,
    )))));
    let snap = w.publish();
    Reach::new()
        .peer(ns("x"), at("x", "a"), false)
        .peer(ns("z"), at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 80, 5);
}

#[test]
fn t17_ingress_on_one_named_port() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    )]);
    Reach::new().check(&snap, Protocol::Tcp, 81, 0);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Tcp, 80, 24);
    // The name resolves to TCP 81 only: UDP 81 is not allowed by it.
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Udp, 81, 24);
}

#[test]
fn t19_egress_on_one_named_port() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    )]);
    Reach::new().check(&snap, Protocol::Tcp, 80, 0);
    Reach::new()
        .peer(ns("x"), ANY, false)
        .check(&snap, Protocol::Tcp, 81, 24);
}

#[test]
fn t20_updated_policy() {
    let allow = netpol(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}),
    );
    let mut w = writer(vec![allow]);
    Reach::new().check(&w.publish(), Protocol::Tcp, 81, 0);
    let deny = netpol(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}),
    );
    w.apply(Event::Apply(Object::NetworkPolicy(Box::new(deny))));
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&w.publish(), Protocol::Tcp, 81, 24);
}

#[test]
fn t21_ingress_from_updated_namespace() {
    let mut w = writer(vec![netpol(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": pod_sel(&[("ns2", "updated")])}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 8);
    w.apply(Event::Apply(Object::Namespace(Box::new(namespace(
        "y",
        &[("ns2", "updated")],
    )))));
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .peer(ns("y"), ANY, true)
        .check(&w.publish(), Protocol::Tcp, 80, 5);
    // Removing the label again restores isolation.
    w.apply(Event::Apply(Object::Namespace(Box::new(namespace(
        "y",
        &[],
    )))));
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 8);
}

#[test]
fn t22_ingress_from_updated_pod() {
    let mut w = writer(vec![netpol(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": pod_sel(&[("pod", "b"), ("pod2", "updated")])}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 8);
    w.apply(Event::Apply(Object::Pod(Box::new(world_pod(
        "x",
        "b",
        &[("pod2", "updated")],
    )))));
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .expect(at("x", "b"), at("x", "a"), true)
        .check(&w.publish(), Protocol::Tcp, 80, 7);
}

#[test]
fn t23_deny_ingress_from_other_namespaces() {
    let snap = snapshot(vec![netpol(
        "x",
        "deny-empty-policy",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {"matchLabels": {}}}]}]}),
    )]);
    Reach::new()
        .peer(ns("y"), ns("x"), false)
        .peer(ns("z"), ns("x"), false)
        .check(&snap, Protocol::Tcp, 80, 18);
}

#[test]
fn t24_deny_ingress_to_updated_pod() {
    let mut w = writer(vec![netpol(
        "x",
        "deny-ingress-via-label-selector",
        json!({"podSelector": pod_sel(&[("target", "isolated")]), "policyTypes": ["Ingress"], "ingress": []}),
    )]);
    Reach::new().check(&w.publish(), Protocol::Tcp, 80, 0);
    w.apply(Event::Apply(Object::Pod(Box::new(world_pod(
        "x",
        "a",
        &[("target", "isolated")],
    )))));
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 8);
}

#[test]
fn t25_deny_egress_by_pod_selector() {
    let snap = snapshot(vec![netpol(
        "x",
        "deny-egress-pod-a",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"], "egress": []}),
    )]);
    Reach::new()
        .all_egress(at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 80, 8);
}

#[test]
fn t27_ingress_and_egress_together() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress", "Ingress"],
               "ingress": [{"from": [{"podSelector": pod_sel(&[("pod", "b")])}]}],
               "egress": [{"ports": [{"port": 80}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .expect(at("x", "b"), at("x", "a"), true)
        .check(&snap, Protocol::Tcp, 80, 7);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .all_egress(at("x", "a"), false)
        .expect(at("x", "b"), at("x", "a"), true)
        .check(&snap, Protocol::Tcp, 81, 15);
}

#[test]
fn t28_client_side_egress_deny_wins_over_server_allow() {
    let both = |ns_: &str, pod_: &str| json!({"namespaceSelector": pod_sel(&[(MDN, ns_)]), "podSelector": pod_sel(&[("pod", pod_)])});
    let snap = snapshot(vec![
        netpol(
            "x",
            "allow-to-ns-y-pod-a",
            json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"], "egress": [{"to": [both("y", "a")]}]}),
        ),
        netpol(
            "y",
            "allow-from-xa-on-ya-match-selector",
            json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"], "ingress": [{"from": [both("x", "a")]}]}),
        ),
        netpol(
            "y",
            "allow-from-xa-on-yb-match-selector",
            json!({"podSelector": pod_sel(&[("pod", "b")]), "policyTypes": ["Ingress"], "ingress": [{"from": [both("x", "a")]}]}),
        ),
    ]);
    Reach::new()
        .peer(at("x", "a"), ANY, false)
        .peer(ANY, at("y", "a"), false)
        .peer(at("x", "a"), at("y", "a"), true)
        .peer(ANY, at("y", "b"), false)
        .check(&snap, Protocol::Tcp, 80, 21);
}

#[test]
fn t30_any_port_on_a_protocol() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-ingress-by-proto",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
    )]);
    Reach::new().check(&snap, Protocol::Tcp, 80, 0);
    Reach::new()
        .peer(ANY, at("x", "a"), false)
        .check(&snap, Protocol::Udp, 80, 8);
}

#[test]
fn t33_stop_enforcing_after_delete() {
    let deny_all = netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}),
    );
    let mut w = writer(vec![deny_all.clone()]);
    Reach::new()
        .peer(ns("x"), ANY, false)
        .peer(ANY, ns("x"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 42);
    w.apply(Event::Delete(Object::NetworkPolicy(Box::new(deny_all))));
    Reach::new().check(&w.publish(), Protocol::Tcp, 80, 0);
}

#[test]
fn t34_egress_to_cidr_block() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/32", ip("y", "b"))}}]}]}),
    )]);
    Reach::new()
        .all_egress(at("x", "a"), false)
        .expect(at("x", "a"), at("y", "b"), true)
        .check(&snap, Protocol::Tcp, 80, 7);
}

#[test]
fn t35_t36_ipblock_except_then_updated_to_the_excepted_address() {
    // Classic form: the CIDR is written with host bits set ("<x/a IP>/4").
    let step1 = netpol(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/4", ip("x", "a")), "except": [format!("{}/32", ip("x", "b"))]}}]}]}),
    );
    let mut w = writer(vec![step1]);
    Reach::new()
        .expect(at("x", "a"), at("x", "b"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 1);
    let step2 = netpol(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/32", ip("x", "b"))}}]}]}),
    );
    w.apply(Event::Apply(Object::NetworkPolicy(Box::new(step2))));
    Reach::new()
        .all_egress(at("x", "a"), false)
        .expect(at("x", "a"), at("x", "b"), true)
        .check(&w.publish(), Protocol::Tcp, 80, 7);
}

#[test]
fn t37_ingress_and_egress_controlled_independently() {
    let egress = netpol(
        "x",
        "allow-egress-for-target",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"], "egress": [{}]}),
    );
    let mut w = writer(vec![egress]);
    Reach::new().check(&w.publish(), Protocol::Tcp, 80, 0);
    let deny = netpol(
        "x",
        "deny-ingress-via-label-selector",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"], "ingress": []}),
    );
    w.apply(Event::Apply(Object::NetworkPolicy(Box::new(deny))));
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&w.publish(), Protocol::Tcp, 80, 8);
}

#[test]
fn t38_sctp_is_not_tcp() {
    let snap = snapshot(vec![
        netpol(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}),
        ),
        netpol(
            "x",
            "allow-only-sctp-ingress-on-port-81",
            json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "SCTP", "port": 81}]}]}),
        ),
    ]);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Tcp, 81, 24);
    // And SCTP itself is allowed to x/a.
    Reach::new()
        .peer(ANY, ns("x"), false)
        .all_ingress(at("x", "a"), true)
        .check(&snap, Protocol::Sctp, 81, 16);
}

#[test]
fn t40_udp_only_policy_isolates_tcp() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-only-udp-ingress-on-port-81",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}),
    )]);
    Reach::new()
        .all_ingress(at("x", "a"), false)
        .check(&snap, Protocol::Tcp, 81, 8);
}

#[test]
fn t42_egress_namespace_selector_match_expressions() {
    let snap = snapshot(vec![netpol(
        "x",
        "allow-ns-y-match-selector-for-immutable-ns-label",
        json!({"podSelector": pod_sel(&[("pod", "a")]), "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": MDN, "operator": "NotIn", "values": ["y"]}]}}]}]}),
    )]);
    Reach::new()
        .peer(at("x", "a"), ns("y"), false)
        .check(&snap, Protocol::Tcp, 80, 3);
}

#[test]
fn u2_udp_ports_and_s1_sctp_default_deny() {
    let snap = snapshot(vec![ns_y_on_port(
        "allow-ingress-on-port-81-ns-x",
        "UDP",
        81,
    )]);
    Reach::new()
        .peer(ns("x"), at("x", "a"), false)
        .peer(ns("z"), at("x", "a"), false)
        .check(&snap, Protocol::Udp, 81, 5);
    let snap = snapshot(vec![netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}),
    )]);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Sctp, 80, 24);
}

#[test]
fn end_port_range_is_inclusive() {
    let snap = snapshot(vec![netpol(
        "x",
        "range",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
    )]);
    Reach::new().check(&snap, Protocol::Tcp, 80, 0);
    Reach::new().check(&snap, Protocol::Tcp, 81, 0);
    Reach::new()
        .peer(ANY, ns("x"), false)
        .check(&snap, Protocol::Tcp, 82, 24);
}
