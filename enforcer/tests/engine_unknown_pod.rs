//! The engine and a pod it does not know yet: an address in a pod range that is no known pod or
//! node gets `Verdict::Unknown` (never a judgement as if it came from outside the cluster), and
//! the same flow is judged by its policies once the pod is known.

mod engine_support;

use engine_support::*;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::v1alpha1;
use netpol_enforcer::engine::policy::Direction;
use netpol_enforcer::engine::{Decision, LocalEnds, Reason, Tier, Verdict, decide, decide_with};
use netpol_enforcer::flow::Protocol::Tcp;
use netpol_enforcer::store::{Event, Object, Snapshot, Writer};
use serde_json::json;

const CLIENT: &str = "10.244.0.5"; // x/client, on node n0
const SERVER: &str = "10.244.1.10"; // y/server app=server, on node n1
const NEW: &str = "10.244.0.9"; // a pod created a moment ago in x: not in the store yet
const GATEWAY: &str = "10.244.0.1"; // n0's CNI gateway address, inside its pod range
const N0: &str = "192.168.0.1";
const OUTSIDE_RANGES: &str = "10.9.9.9"; // in no pod range

fn namespaces() -> Vec<Namespace> {
    vec![namespace("x", &[]), namespace("y", &[])]
}

fn pods() -> Vec<Pod> {
    vec![
        pod("x", "client", &[("app", "client")], CLIENT, &[]),
        pod("y", "server", &[("app", "server")], SERVER, &[]),
    ]
}

fn nodes() -> Vec<Node> {
    vec![
        node_with_pod_cidrs("n0", N0, &["10.244.0.0/24"]),
        node_with_pod_cidrs("n1", "192.168.0.2", &["10.244.1.0/24"]),
    ]
}

/// Every pod in x is egress-isolated: it may reach app=server pods in y on TCP 80, nothing else.
fn egress_isolation() -> NetworkPolicy {
    netpol(
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
    )
}

fn snapshot(pods: Vec<Pod>, netpols: Vec<NetworkPolicy>) -> Snapshot {
    Snapshot::from_objects(pods, namespaces(), nodes(), netpols, vec![], vec![], vec![])
}

fn unknown(direction: Direction, address: &str) -> (Verdict, Tier, Reason<'static>) {
    (
        Verdict::Unknown,
        Tier::Unknown,
        Reason::UnknownPodAddress {
            direction,
            address: address.parse().unwrap(),
        },
    )
}

fn outcome<'s>(d: &Decision<'s>) -> (Verdict, Tier, Reason<'s>) {
    (d.verdict, d.tier, d.reason)
}

#[test]
fn a_new_pods_first_packet_is_unknown_not_judged_as_an_outside_address() {
    let snap = snapshot(pods(), vec![egress_isolation()]);
    let d = decide(&snap, &flow(NEW, SERVER, Tcp, 81));
    assert_eq!(outcome(&d), unknown(Direction::Egress, NEW));
    assert_eq!(
        d.reason.to_string(),
        "source 10.244.0.9 is in a pod range but no known pod or node: egress not judged"
    );
    // What the same packet got before: judged as an outside address, with no egress judgement
    // at all — accepted, although every pod in x may only reach port 80.
    let outside = decide(&snap, &flow(OUTSIDE_RANGES, SERVER, Tcp, 81));
    assert_eq!(
        (outside.verdict, outside.tier),
        (Verdict::Accept, Tier::Default)
    );
}

#[test]
fn once_the_pod_is_known_its_policies_judge_it() {
    let mut writer = Writer::new();
    let reader = writer.reader();
    let objects = namespaces()
        .into_iter()
        .map(|o| Object::Namespace(Box::new(o)))
        .chain(pods().into_iter().map(|o| Object::Pod(Box::new(o))))
        .chain(nodes().into_iter().map(|o| Object::Node(Box::new(o))))
        .chain([Object::NetworkPolicy(Box::new(egress_isolation()))]);
    for o in objects {
        writer.apply(Event::Apply(o));
    }
    writer.publish();
    let allowed = flow(NEW, SERVER, Tcp, 80);
    let denied = flow(NEW, SERVER, Tcp, 81);
    let before = reader.snapshot();
    assert_eq!(decide(&before, &allowed).verdict, Verdict::Unknown);
    assert_eq!(decide(&before, &denied).verdict, Verdict::Unknown);

    // The watch reports the pod.
    let new = pod("x", "new", &[("app", "client")], NEW, &[]);
    writer.apply(Event::Apply(Object::Pod(Box::new(new))));
    writer.publish();
    let after = reader.snapshot();
    let ok = decide(&after, &allowed);
    assert_eq!(
        (ok.verdict, ok.tier),
        (Verdict::Accept, Tier::NetworkPolicy)
    );
    let no = decide(&after, &denied);
    assert_eq!(
        outcome(&no),
        (
            Verdict::Drop,
            Tier::NetworkPolicy,
            Reason::NetworkPolicyIsolated {
                direction: Direction::Egress,
                policies: 1
            }
        )
    );
}

#[test]
fn an_unknown_destination_is_not_judged_either() {
    let snap = snapshot(pods(), vec![egress_isolation()]);
    // The server pod has moved to a new address the watch has not reported.
    let d = decide(&snap, &flow(SERVER, "10.244.1.77", Tcp, 80));
    assert_eq!(outcome(&d), unknown(Direction::Ingress, "10.244.1.77"));
    // Both ends unknown: the source is named.
    let d = decide(&snap, &flow(NEW, "10.244.1.77", Tcp, 80));
    assert_eq!(outcome(&d), unknown(Direction::Egress, NEW));
}

#[test]
fn an_unknown_source_cannot_slip_past_an_ingress_deny_aimed_at_its_namespace() {
    // Admin tier: nothing from namespace x may reach y.
    let anp: v1alpha1::AdminNetworkPolicy = from_json(json!({
        "metadata": {"name": "isolate-y"},
        "spec": {"priority": 1,
                 "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
                 "ingress": [{"name": "no-x", "action": "Deny",
                              "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]}
    }));
    let objects = |pods| {
        Snapshot::from_objects(
            pods,
            namespaces(),
            nodes(),
            vec![],
            vec![anp.clone()],
            vec![],
            vec![],
        )
    };
    let before = objects(pods());
    let f = flow(NEW, SERVER, Tcp, 80);
    assert_eq!(
        outcome(&decide(&before, &f)),
        unknown(Direction::Egress, NEW)
    );
    let mut with_new = pods();
    with_new.push(pod("x", "new", &[], NEW, &[]));
    let after = objects(with_new);
    let d = decide(&after, &f);
    assert_eq!(
        (d.verdict, d.tier),
        (Verdict::Drop, Tier::Admin),
        "{}",
        d.reason
    );
}

#[test]
fn this_nodes_own_ends_are_never_unknown() {
    let snap = snapshot(pods(), vec![egress_isolation()]);
    // n0 sends from its gateway address (OUTPUT), or receives on it (INPUT).
    let from_node = flow(GATEWAY, CLIENT, Tcp, 80);
    let to_node = flow(CLIENT, GATEWAY, Tcp, 53);
    assert_eq!(
        outcome(&decide(&snap, &from_node)),
        unknown(Direction::Egress, GATEWAY),
        "the address alone says nothing"
    );
    let sent = decide_with(
        &snap,
        &from_node,
        LocalEnds {
            source: true,
            destination: false,
        },
    );
    assert_eq!((sent.verdict, sent.tier), (Verdict::Accept, Tier::Default));
    let received = decide_with(
        &snap,
        &to_node,
        LocalEnds {
            source: false,
            destination: true,
        },
    );
    // The client is egress-isolated and the node is no allowed peer: judged, and dropped.
    assert_eq!(
        (received.verdict, received.tier),
        (Verdict::Drop, Tier::NetworkPolicy)
    );
    // Knowing the destination is local says nothing about an unknown source.
    let d = decide_with(
        &snap,
        &flow(NEW, GATEWAY, Tcp, 53),
        LocalEnds {
            source: false,
            destination: true,
        },
    );
    assert_eq!(outcome(&d), unknown(Direction::Egress, NEW));
}

#[test]
fn known_nodes_and_addresses_outside_the_pod_ranges_are_judged_as_before() {
    let mut nodes = nodes();
    // A node whose own address lies in a pod range.
    nodes.push(node_with_pod_cidrs("n2", "10.244.2.1", &["10.244.2.0/24"]));
    let snap = Snapshot::from_objects(
        pods(),
        namespaces(),
        nodes,
        vec![egress_isolation()],
        vec![],
        vec![],
        vec![],
    );
    let node = decide(&snap, &flow("10.244.2.1", SERVER, Tcp, 80));
    assert_eq!((node.verdict, node.tier), (Verdict::Accept, Tier::Default));
    let outside = decide(&snap, &flow(CLIENT, OUTSIDE_RANGES, Tcp, 80));
    assert_eq!(
        (outside.verdict, outside.tier),
        (Verdict::Drop, Tier::NetworkPolicy),
        "an outside address is no allowed peer of the isolated client"
    );
}

#[test]
fn without_any_policy_nothing_waits() {
    let snap = snapshot(pods(), vec![]);
    let d = decide(&snap, &flow(NEW, "10.244.1.77", Tcp, 80));
    assert_eq!(
        outcome(&d),
        (Verdict::Accept, Tier::Default, Reason::NoMatch),
        "every flow is accepted, whoever the address belongs to"
    );
}

#[test]
fn a_finished_pods_address_may_belong_to_a_new_pod_so_it_is_unknown() {
    let mut done = pod("x", "done", &[], NEW, &[]);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut pods = pods();
    pods.push(done);
    let snap = snapshot(pods, vec![egress_isolation()]);
    assert_eq!(
        outcome(&decide(&snap, &flow(NEW, SERVER, Tcp, 80))),
        unknown(Direction::Egress, NEW)
    );
}

#[test]
fn pod_ranges_come_from_the_writer_and_every_nodes_pod_cidrs() {
    let mut writer = Writer::with_pod_ranges(vec!["10.250.0.0/16".parse().unwrap()]);
    assert!(writer.is_dirty(), "the ranges alone make a snapshot");
    let first = writer.publish();
    assert_eq!(first.pod_ranges(), ["10.250.0.0/16".parse().unwrap()]);
    for n in nodes() {
        writer.apply(Event::Apply(Object::Node(Box::new(n))));
    }
    let snap = writer.publish();
    // n0's and n1's adjacent /24s merge into one /23.
    let ranges: Vec<String> = snap.pod_ranges().iter().map(|r| r.to_string()).collect();
    assert_eq!(ranges, ["10.244.0.0/23", "10.250.0.0/16"]);
    assert!(snap.is_unknown_pod_address(NEW.parse().unwrap()));
    assert!(snap.is_unknown_pod_address("10.250.3.4".parse().unwrap()));
    assert!(!snap.is_unknown_pod_address(OUTSIDE_RANGES.parse().unwrap()));
    assert!(
        !snap.is_unknown_pod_address(N0.parse().unwrap()),
        "not in a range"
    );
    // A node without pod ranges adds none; the spec's single podCIDR counts too.
    let mut only_single = node("n3", &[], "192.168.0.3");
    only_single.spec = Some(from_json(json!({"podCIDR": "10.251.0.0/24"})));
    writer.apply(Event::Apply(Object::Node(Box::new(only_single))));
    assert!(
        writer
            .publish()
            .is_unknown_pod_address("10.251.0.7".parse().unwrap())
    );
}
