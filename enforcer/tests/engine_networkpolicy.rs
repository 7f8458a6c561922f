//! NetworkPolicy checks of the engine beyond what the case table probes. The table's scenarios
//! are replayed against the engine by the suite (`suite/tests/engine_replay/`); these are the
//! few assertions the earlier transcription of upstream's scenarios made that no case does:
//! the protocol a named port resolves to, `endPort` ranges, and a label removed again.

mod engine_support;

use engine_support::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_enforcer::engine::{Verdict, decide};
use netpol_enforcer::flow::Protocol::{self, Tcp, Udp};
use netpol_enforcer::store::{Event, Kind, Object, Snapshot, Writer};
use serde_json::json;

const XA: &str = "10.0.1.1"; // x/a pod=a
const XB: &str = "10.0.1.2"; // x/b pod=b
const YA: &str = "10.0.2.1"; // y/a pod=a

/// A pod of upstream's grid: label `pod=<name>`, serving TCP and UDP on 80 and 81 with
/// container ports named `serve-<port>-<proto>`.
fn grid_pod(ns: &str, name: &str, ip: &str) -> Pod {
    let ports = [
        ("serve-80-tcp", 80, "TCP"),
        ("serve-80-udp", 80, "UDP"),
        ("serve-81-tcp", 81, "TCP"),
        ("serve-81-udp", 81, "UDP"),
    ];
    pod(ns, name, &[("pod", name)], ip, &ports)
}

fn writer(netpols: Vec<NetworkPolicy>) -> Writer {
    let mut w = Writer::new();
    w.apply(Event::Replace(
        Kind::Namespace,
        vec![
            Object::Namespace(Box::new(namespace("x", &[]))),
            Object::Namespace(Box::new(namespace("y", &[]))),
        ],
    ));
    for p in [
        grid_pod("x", "a", XA),
        grid_pod("x", "b", XB),
        grid_pod("y", "a", YA),
    ] {
        w.apply(Event::Apply(Object::Pod(Box::new(p))));
    }
    for np in netpols {
        w.apply(Event::Apply(Object::NetworkPolicy(Box::new(np))));
    }
    w
}

fn verdict(snap: &Snapshot, src: &str, dst: &str, protocol: Protocol, port: u16) -> Verdict {
    decide(snap, &flow(src, dst, protocol, port)).verdict
}

#[test]
fn a_named_port_allows_only_the_protocol_of_its_container_port() {
    let snap = writer(vec![netpol(
        "x",
        "allow-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    )])
    .publish();
    assert_eq!(verdict(&snap, YA, XA, Tcp, 81), Verdict::Accept);
    assert_eq!(verdict(&snap, YA, XA, Tcp, 80), Verdict::Drop);
    // The name resolves to TCP 81 only: UDP 81 is not allowed by it.
    assert_eq!(verdict(&snap, YA, XA, Udp, 81), Verdict::Drop);
}

#[test]
fn an_end_port_range_is_inclusive() {
    let snap = writer(vec![netpol(
        "x",
        "range",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
    )])
    .publish();
    assert_eq!(verdict(&snap, YA, XA, Tcp, 80), Verdict::Accept);
    assert_eq!(verdict(&snap, YA, XA, Tcp, 81), Verdict::Accept);
    assert_eq!(verdict(&snap, YA, XA, Tcp, 82), Verdict::Drop);
    assert_eq!(verdict(&snap, YA, XA, Udp, 80), Verdict::Drop);
}

#[test]
fn removing_the_namespace_label_a_policy_selects_restores_isolation() {
    let mut w = writer(vec![netpol(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
    )]);
    assert_eq!(verdict(&w.publish(), YA, XA, Tcp, 80), Verdict::Drop);
    w.apply(Event::Apply(Object::Namespace(Box::new(namespace(
        "y",
        &[("ns2", "updated")],
    )))));
    assert_eq!(verdict(&w.publish(), YA, XA, Tcp, 80), Verdict::Accept);
    w.apply(Event::Apply(Object::Namespace(Box::new(namespace(
        "y",
        &[],
    )))));
    let snap = w.publish();
    assert_eq!(verdict(&snap, YA, XA, Tcp, 80), Verdict::Drop);
    assert_eq!(verdict(&snap, XB, XA, Tcp, 80), Verdict::Drop);
}
