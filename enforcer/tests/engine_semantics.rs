//! Focused checks of the engine's rules, including the kube-network-policies deviations the
//! engine must not repeat (ingress-only isolation hiding baseline egress, `nodes` peers matching
//! the destination pod's node, named ports ignoring number and protocol).

mod engine_support;

use engine_support::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::{v1alpha1, v1alpha2};
use netpol_enforcer::engine::index::{Endpoint, PeerMatch};
use netpol_enforcer::engine::policy::{Action, Direction, PolicyKind};
use netpol_enforcer::engine::{Decision, Reason, Tier, Verdict, decide};
use netpol_enforcer::flow::Protocol::{self, Tcp, Udp};
use netpol_enforcer::store::{Event, Kind, Object, Snapshot, Writer};
use serde_json::{Value, json};

const A1: &str = "10.1.0.1"; // a/p1 app=web, ports web=8080/TCP
const A2: &str = "10.1.0.2"; // a/p2 app=db
const B1: &str = "10.2.0.1"; // b/p1 app=web
const NODE: &str = "192.168.0.1"; // node n1, also a/host (host network)
const OUTSIDE: &str = "8.8.8.8";

fn pods() -> Vec<Pod> {
    vec![
        pod("a", "p1", &[("app", "web")], A1, &[("web", 8080, "TCP")]),
        pod("a", "p2", &[("app", "db")], A2, &[]),
        pod("b", "p1", &[("app", "web")], B1, &[("web", 8080, "TCP")]),
        host_pod("a", "host", &[("app", "web")], NODE),
    ]
}

#[derive(Default)]
struct Policies {
    netpols: Vec<NetworkPolicy>,
    anps: Vec<Value>,
    banps: Vec<Value>,
    cnps: Vec<Value>,
}

fn snapshot(p: Policies) -> Snapshot {
    Snapshot::from_objects(
        pods(),
        vec![
            namespace("a", &[("team", "red")]),
            namespace("b", &[("team", "blue")]),
        ],
        vec![node("n1", &[("kubernetes.io/os", "linux")], NODE)],
        p.netpols,
        p.anps
            .into_iter()
            .map(from_json::<v1alpha1::AdminNetworkPolicy>)
            .collect(),
        p.banps
            .into_iter()
            .map(from_json::<v1alpha1::BaselineAdminNetworkPolicy>)
            .collect(),
        p.cnps
            .into_iter()
            .map(from_json::<v1alpha2::ClusterNetworkPolicy>)
            .collect(),
    )
}

fn anp(name: &str, priority: i32, subject: Value, ingress: Value, egress: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": {"priority": priority, "subject": subject, "ingress": ingress, "egress": egress}})
}

fn banp(subject: Value, ingress: Value, egress: Value) -> Value {
    json!({"metadata": {"name": "default"}, "spec": {"subject": subject, "ingress": ingress, "egress": egress}})
}

fn ns_sel(ns: &str) -> Value {
    json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns}}})
}

fn judge<'s>(
    snap: &'s Snapshot,
    src: &str,
    dst: &str,
    protocol: Protocol,
    port: u16,
) -> Decision<'s> {
    decide(snap, &flow(src, dst, protocol, port))
}

#[track_caller]
fn assert_verdict(d: &Decision, verdict: Verdict, tier: Tier) {
    assert_eq!((d.verdict, d.tier), (verdict, tier), "reason: {}", d.reason);
}

#[test]
fn no_policy_means_default_allow() {
    let snap = snapshot(Policies::default());
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Accept,
        Tier::Default,
    );
    assert_eq!(judge(&snap, A1, B1, Tcp, 80).reason, Reason::NoMatch);
}

#[test]
fn host_network_pods_are_never_subjects_and_are_reached_as_their_node() {
    // Deny all ingress into namespace a: the host-network pod in a is not a subject.
    let snap = snapshot(Policies {
        anps: vec![anp(
            "deny-into-a",
            1,
            ns_sel("a"),
            json!([{"action": "Deny", "from": [{"namespaces": {}}]}]),
            json!([]),
        )],
        ..Default::default()
    });
    assert_verdict(&judge(&snap, B1, A1, Tcp, 80), Verdict::Drop, Tier::Admin);
    assert_verdict(
        &judge(&snap, B1, NODE, Tcp, 80),
        Verdict::Accept,
        Tier::Default,
    );
    assert_eq!(
        snap.endpoint(NODE.parse().unwrap()),
        Some(Endpoint::Node(0))
    );
}

#[test]
fn unknown_sources_match_only_address_peers() {
    let only_pods = netpol(
        "a",
        "from-pods",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    let snap = snapshot(Policies {
        netpols: vec![only_pods.clone()],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, OUTSIDE, A1, Tcp, 80),
        Verdict::Drop,
        Tier::NetworkPolicy,
    );
    assert_verdict(
        &judge(&snap, B1, A1, Tcp, 80),
        Verdict::Accept,
        Tier::NetworkPolicy,
    );
    let block = netpol(
        "a",
        "from-world",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}),
    );
    let snap = snapshot(Policies {
        netpols: vec![block],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, OUTSIDE, A1, Tcp, 80),
        Verdict::Accept,
        Tier::NetworkPolicy,
    );
    // ipBlock also applies to pod addresses: b/p1 is inside the except.
    assert_verdict(
        &judge(&snap, B1, A1, Tcp, 80),
        Verdict::Drop,
        Tier::NetworkPolicy,
    );
    // The node address is matched by the block too.
    assert_verdict(
        &judge(&snap, NODE, A1, Tcp, 80),
        Verdict::Accept,
        Tier::NetworkPolicy,
    );
}

#[test]
fn ingress_only_isolation_still_reaches_baseline_egress() {
    let ingress_only = netpol(
        "a",
        "ingress-only",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
    );
    let snap = snapshot(Policies {
        netpols: vec![ingress_only],
        banps: vec![banp(
            ns_sel("a"),
            json!([]),
            json!([{"name": "no-b", "action": "Deny", "to": [ns_sel("b")]}]),
        )],
        ..Default::default()
    });
    let d = judge(&snap, A1, B1, Tcp, 80);
    assert_verdict(&d, Verdict::Drop, Tier::Baseline);
    assert!(
        matches!(d.reason, Reason::Rule { direction: Direction::Egress, rule, .. } if rule.name() == "no-b"),
        "{}",
        d.reason
    );
}

#[test]
fn v1alpha1_nodes_peer_matches_node_addresses_not_the_destination_pods_node() {
    let snap = snapshot(Policies {
        anps: vec![anp(
            "no-nodes",
            1,
            ns_sel("a"),
            json!([]),
            json!([{"action": "Deny", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}]}]),
        )],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, NODE, Tcp, 10250),
        Verdict::Drop,
        Tier::Admin,
    );
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Accept,
        Tier::Default,
    );
}

#[test]
fn named_ports_need_matching_number_and_protocol() {
    let snap = snapshot(Policies {
        anps: vec![anp(
            "web-only",
            1,
            ns_sel("b"),
            json!([{"action": "Allow", "from": [{"namespaces": {}}], "ports": [{"namedPort": "web"}]},
                   {"action": "Deny", "from": [{"namespaces": {}}]}]),
            json!([]),
        )],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 8080),
        Verdict::Accept,
        Tier::Admin,
    );
    assert_verdict(&judge(&snap, A1, B1, Tcp, 80), Verdict::Drop, Tier::Admin);
    assert_verdict(&judge(&snap, A1, B1, Udp, 8080), Verdict::Drop, Tier::Admin);
}

#[test]
fn named_port_to_a_non_pod_never_matches() {
    let egress = netpol(
        "a",
        "web-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}),
    );
    let snap = snapshot(Policies {
        netpols: vec![egress],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 8080),
        Verdict::Accept,
        Tier::NetworkPolicy,
    );
    assert_verdict(
        &judge(&snap, A1, OUTSIDE, Tcp, 8080),
        Verdict::Drop,
        Tier::NetworkPolicy,
    );
}

#[test]
fn admin_allow_overrides_networkpolicy_deny_and_both_directions_must_allow() {
    let deny_all = netpol(
        "b",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let allow = anp(
        "allow-a-to-b",
        1,
        ns_sel("b"),
        json!([{"action": "Allow", "from": [ns_sel("a")]}]),
        json!([]),
    );
    let snap = snapshot(Policies {
        netpols: vec![deny_all.clone()],
        anps: vec![allow],
        ..Default::default()
    });
    assert_verdict(&judge(&snap, A1, B1, Tcp, 80), Verdict::Accept, Tier::Admin);
    // Egress accepted by an admin Allow at the source does not skip ingress at the destination.
    let allow_out = anp(
        "allow-out",
        1,
        ns_sel("a"),
        json!([]),
        json!([{"action": "Allow", "to": [ns_sel("b")]}]),
    );
    let snap = snapshot(Policies {
        netpols: vec![deny_all],
        anps: vec![allow_out],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Drop,
        Tier::NetworkPolicy,
    );
}

#[test]
fn admin_order_is_priority_then_name_and_pass_skips_to_baseline() {
    let deny = |name: &str, prio| {
        anp(
            name,
            prio,
            ns_sel("b"),
            json!([{"name": "deny", "action": "Deny", "from": [ns_sel("a")]}]),
            json!([]),
        )
    };
    let pass = |name: &str, prio| {
        anp(
            name,
            prio,
            ns_sel("b"),
            json!([{"name": "pass", "action": "Pass", "from": [ns_sel("a")]}]),
            json!([]),
        )
    };
    let base_allow = banp(
        ns_sel("b"),
        json!([{"name": "allow", "action": "Allow", "from": [ns_sel("a")]}]),
        json!([]),
    );
    let snap = snapshot(Policies {
        anps: vec![deny("x", 5), pass("y", 5)],
        banps: vec![base_allow.clone()],
        ..Default::default()
    });
    assert_verdict(&judge(&snap, A1, B1, Tcp, 80), Verdict::Drop, Tier::Admin);
    let snap = snapshot(Policies {
        anps: vec![deny("z", 5), pass("y", 5)],
        banps: vec![base_allow.clone()],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Accept,
        Tier::Baseline,
    );
    let snap = snapshot(Policies {
        anps: vec![deny("a", 6), pass("b", 5)],
        banps: vec![base_allow],
        ..Default::default()
    });
    let d = judge(&snap, A1, B1, Tcp, 80);
    assert_verdict(&d, Verdict::Accept, Tier::Baseline);
    match d.reason {
        Reason::Rule {
            rule,
            action,
            direction,
        } => {
            assert_eq!(
                (
                    rule.policy().kind,
                    &*rule.policy().name,
                    &*rule.name(),
                    action,
                    direction
                ),
                (
                    PolicyKind::BaselineAdminNetworkPolicy,
                    "default",
                    "allow",
                    Action::Accept,
                    Direction::Ingress
                )
            );
        }
        other => panic!("unexpected reason {other}"),
    }
}

#[test]
fn baseline_tier_orders_by_priority_and_pass_ends_the_tier() {
    let cnp = |name: &str, prio: i32, action: &str| {
        json!({"metadata": {"name": name}, "spec": {"tier": "Baseline", "priority": prio, "subject": ns_sel("b"),
               "ingress": [{"name": action, "action": action, "from": [ns_sel("a")]}]}})
    };
    let snap = snapshot(Policies {
        cnps: vec![cnp("late-deny", 20, "Deny"), cnp("early-pass", 1, "Pass")],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Accept,
        Tier::Default,
    );
    let snap = snapshot(Policies {
        cnps: vec![cnp("late-deny", 20, "Deny"), cnp("early-pass", 30, "Pass")],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, B1, Tcp, 80),
        Verdict::Drop,
        Tier::Baseline,
    );
}

#[test]
fn domain_names_match_nothing_so_the_following_deny_applies() {
    let snap = snapshot(Policies {
        anps: vec![anp(
            "dns-only",
            1,
            ns_sel("a"),
            json!([]),
            json!([{"action": "Allow", "to": [{"domainNames": ["*.example.com"]}]},
                   {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]),
        )],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, A1, OUTSIDE, Tcp, 443),
        Verdict::Drop,
        Tier::Admin,
    );
}

#[test]
fn invalid_selector_selects_nothing() {
    let bad = netpol(
        "a",
        "bad",
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Sometimes", "values": ["web"]}]}, "policyTypes": ["Ingress"]}),
    );
    let snap = snapshot(Policies {
        netpols: vec![bad],
        ..Default::default()
    });
    assert_verdict(
        &judge(&snap, B1, A1, Tcp, 80),
        Verdict::Accept,
        Tier::Default,
    );
}

#[test]
fn finished_pods_and_dual_stack_addresses() {
    let mut done = pod("b", "done", &[("app", "job")], "10.2.0.9", &[]);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut dual = pod("b", "dual", &[("app", "web")], "10.2.0.7", &[]);
    dual.status.as_mut().unwrap().pod_ips = Some(vec![
        from_json(json!({"ip": "10.2.0.7"})),
        from_json(json!({"ip": "fd00::7"})),
    ]);
    let snap = Snapshot::from_objects(
        vec![done, dual],
        vec![namespace("b", &[])],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    assert_eq!(
        snap.endpoint("10.2.0.9".parse().unwrap()),
        None,
        "a finished pod's IP may be reused"
    );
    let v4 = snap.endpoint("10.2.0.7".parse().unwrap());
    assert!(matches!(v4, Some(Endpoint::Pod(_))));
    assert_eq!(snap.endpoint("fd00::7".parse().unwrap()), v4);
}

#[test]
fn readers_keep_their_snapshot_while_the_writer_publishes() {
    let mut w = Writer::new();
    let reader = w.reader();
    assert_eq!(reader.snapshot().generation, 0);
    w.apply(Event::Replace(
        Kind::Pod,
        pods()
            .into_iter()
            .map(|p| Object::Pod(Box::new(p)))
            .collect(),
    ));
    assert!(w.is_dirty());
    let first = w.publish();
    assert_eq!(first.generation, 1);
    assert!(!w.is_dirty());
    assert_eq!(
        w.publish().generation,
        1,
        "nothing changed, nothing rebuilt"
    );
    let held = reader.snapshot();
    w.apply(Event::Replace(
        Kind::Pod,
        vec![Object::Pod(Box::new(pods().remove(0)))],
    ));
    let second = w.publish();
    assert_eq!((held.pods.len(), second.pods.len()), (4, 1));
    assert_eq!(reader.snapshot().generation, 2);
    assert_eq!(
        second.endpoint(A2.parse().unwrap()),
        None,
        "replaced pods are gone"
    );
    assert!(
        held.endpoint(A2.parse().unwrap()).is_some(),
        "an old snapshot is immutable"
    );
}

#[test]
fn a_repeated_rule_condition_keeps_the_first_rules_verdict_and_reason() {
    // Two admin policies with the same ingress condition and opposite actions: the one earlier
    // in priority order decides, whichever copy the snapshot keeps.
    let rule = |name: &str, action: &str| {
        json!([{"name": name, "action": action, "from": [ns_sel("b")],
                "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}]}])
    };
    for (first, second, verdict) in [
        ("Deny", "Allow", Verdict::Drop),
        ("Allow", "Deny", Verdict::Accept),
    ] {
        let snap = snapshot(Policies {
            anps: vec![
                anp("early", 1, ns_sel("a"), rule("first", first), json!([])),
                anp("late", 2, ns_sel("a"), rule("second", second), json!([])),
            ],
            ..Default::default()
        });
        let d = judge(&snap, B1, A1, Tcp, 80);
        assert_verdict(&d, verdict, Tier::Admin);
        assert_eq!(
            d.reason.to_string(),
            format!(
                "ingress rule \"first\" ({}) of AdminNetworkPolicy early",
                if first == "Deny" { "Deny" } else { "Accept" }
            )
        );
        // Another port: neither copy applies.
        assert_verdict(
            &judge(&snap, B1, A1, Tcp, 81),
            Verdict::Accept,
            Tier::Default,
        );
    }
}

#[test]
fn peers_resolve_to_small_and_large_sets_alike() {
    // 70 pods in namespace "big" (more than a member list is kept for), 1 in "a": a peer that
    // selects most of them is stored as a bit set, one that selects one pod as a list.
    let mut pods = pods();
    for i in 0..70u8 {
        let app = if i == 7 { "odd" } else { "bulk" };
        pods.push(pod(
            "big",
            &format!("p{i}"),
            &[("app", app)],
            &format!("10.3.0.{}", i + 1),
            &[],
        ));
    }
    let snap = Snapshot::from_objects(
        pods,
        vec![
            namespace("a", &[]),
            namespace("b", &[]),
            namespace("big", &[]),
        ],
        vec![],
        vec![netpol(
            "a",
            "from-big",
            json!({"podSelector": {}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "big"}},
                           "podSelector": {"matchLabels": {"app": "bulk"}}}],
                 "ports": [{"port": 80}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "big"}},
                           "podSelector": {"matchLabels": {"app": "odd"}}}],
                 "ports": [{"port": 81}]}]}),
        )],
        vec![],
        vec![],
        vec![],
    );
    assert!(
        snap.peers
            .iter()
            .any(|p| matches!(p, PeerMatch::PodBits { .. }))
    );
    assert!(
        snap.peers
            .iter()
            .any(|p| matches!(p, PeerMatch::Pods { len: 1, .. }))
    );
    for i in 0..70u8 {
        let src = format!("10.3.0.{}", i + 1);
        let (on_80, on_81) = if i == 7 {
            (Verdict::Drop, Verdict::Accept)
        } else {
            (Verdict::Accept, Verdict::Drop)
        };
        assert_verdict(&judge(&snap, &src, A1, Tcp, 80), on_80, Tier::NetworkPolicy);
        assert_verdict(&judge(&snap, &src, A1, Tcp, 81), on_81, Tier::NetworkPolicy);
    }
    // Pods of other namespaces are in neither set.
    assert_verdict(
        &judge(&snap, B1, A1, Tcp, 80),
        Verdict::Drop,
        Tier::NetworkPolicy,
    );
}
