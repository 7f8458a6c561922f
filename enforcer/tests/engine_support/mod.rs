//! Builders shared by the engine tests: objects from JSON, worlds, flows.
#![allow(dead_code)]

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_enforcer::flow::{Flow, Protocol};
use serde_json::{Value, json};

/// Deserializes a JSON value into a typed object, naming the value on failure.
pub fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad test object {v}: {e}"))
}

/// A namespace with the automatic `kubernetes.io/metadata.name` label plus `labels`.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    from_json(json!({"metadata": {"name": name, "labels": l}}))
}

/// A running pod with one IP and the given container ports `(name, port, protocol)`.
pub fn pod(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: &str,
    ports: &[(&str, u16, &str)],
) -> Pod {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
        .collect();
    from_json(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
}

/// A host-network pod on a node (its IP is the node's).
pub fn host_pod(ns: &str, name: &str, labels: &[(&str, &str)], node_ip: &str) -> Pod {
    let mut p = pod(ns, name, labels, node_ip, &[]);
    p.spec.as_mut().unwrap().host_network = Some(true);
    p
}

/// A node with labels and one InternalIP.
pub fn node(name: &str, labels: &[(&str, &str)], ip: &str) -> Node {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    from_json(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
    }))
}

/// A node with labels, one InternalIP and its pod ranges (`spec.podCIDRs`).
pub fn node_with_pod_cidrs(name: &str, ip: &str, pod_cidrs: &[&str]) -> Node {
    let mut n = node(name, &[], ip);
    n.spec = Some(from_json(
        json!({"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs}),
    ));
    n
}

/// A NetworkPolicy in `ns` from its spec.
pub fn netpol(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    from_json(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
}

/// A flow between two addresses.
pub fn flow(src: &str, dst: &str, protocol: Protocol, dst_port: u16) -> Flow {
    Flow {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse::<IpAddr>().unwrap(),
        protocol,
        src_port: 40000,
        dst_port,
    }
}
