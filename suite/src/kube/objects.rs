//! Kubernetes objects of the worlds: dummy pods serving what the model says, Services, the npa
//! world's StatefulSets. Every naming rule for realized objects lives here.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{Value, json};

use crate::case::ObjectRef;
use crate::world::{ModelPod, Protocol, ServedPort};

/// Label on everything a run creates: the run's id.
pub const LABEL_RUN: &str = "netpol-conformance.io/run";
/// Label on everything a trial creates: the trial's suffix.
pub const LABEL_TRIAL: &str = "netpol-conformance.io/trial";
/// Annotation the local cluster's node agent puts on pods: their network namespace.
pub use netpol_local::agent::pods::NETNS_ANNOTATION;

/// The Service of an upstream-world pod: `s-<namespace>-<pod>`.
pub fn service_name(namespace: &str, pod: &str) -> String {
    format!("s-{namespace}-{pod}")
}

fn serve_container(name: String, image: &str, port: &ServedPort, host_ip_env: bool) -> Value {
    let p = port.port.to_string();
    let (command, env): (Vec<&str>, Vec<Value>) = match port.protocol {
        Protocol::Tcp => (
            vec![
                "/agnhost",
                "serve-hostname",
                "--tcp",
                "--http=false",
                "--port",
                &p,
            ],
            vec![],
        ),
        Protocol::Udp if host_ip_env => (
            // The host-network form: netexec answers UDP on the node's address, as upstream's
            // centaur pods do.
            vec!["/agnhost", "netexec", "--udp-listen-addresses=$(HOST_IP)"],
            vec![
                json!({"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}),
            ],
        ),
        Protocol::Udp => (
            vec![
                "/agnhost",
                "serve-hostname",
                "--udp",
                "--http=false",
                "--port",
                &p,
            ],
            vec![],
        ),
        Protocol::Sctp => (
            vec!["/agnhost", "porter"],
            vec![json!({"name": format!("SERVE_SCTP_PORT_{p}"), "value": "foo"})],
        ),
    };
    let mut command: Vec<String> = command.into_iter().map(String::from).collect();
    if host_ip_env && port.protocol == Protocol::Udp {
        command.extend([
            format!("--udp-port={p}"),
            format!("--http-port={}", port.port + 1),
        ]);
    }
    let mut container_port =
        json!({"containerPort": port.port, "protocol": port.protocol.as_str()});
    if let Some(name) = &port.name {
        container_port["name"] = json!(name);
    }
    json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "ports": [container_port],
    })
}

fn client_container(name: &str, image: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/agnhost", "pause"],
    })
}

fn served(pod: &ModelPod, sctp: bool) -> impl Iterator<Item = &ServedPort> {
    pod.ports
        .iter()
        .filter(move |p| sctp || p.protocol != Protocol::Sctp)
}

/// The container probes are executed in.
pub fn probe_container(pod: &ModelPod) -> String {
    match &pod.statefulset {
        Some(ss) => format!("{ss}-client"),
        None => match pod.ports.first() {
            Some(p) => format!("cont-{}-{}", p.port, p.protocol.lower()),
            None => "client".into(),
        },
    }
}

/// Where a pod (or a StatefulSet's pods) may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChoice {
    /// Wherever the scheduler puts it.
    Any,
    /// On this node.
    Node(String),
    /// Spread over these nodes, one replica per node as far as they go.
    Spread(Vec<String>),
}

impl NodeChoice {
    /// The pod spec fields that say it: a required node affinity on the node names (what
    /// DaemonSets use; no label needed) and, to spread, a topology spread over hostnames.
    fn apply(&self, spec: &mut Value, labels: &BTreeMap<String, String>) {
        let names = match self {
            NodeChoice::Any => return,
            NodeChoice::Node(n) => vec![n.clone()],
            NodeChoice::Spread(nodes) => nodes.clone(),
        };
        // A field selector takes one node name; terms are ORed, so one term per node.
        let terms: Vec<Value> = names
            .iter()
            .map(|n| json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}))
            .collect();
        spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms
        }}});
        if let NodeChoice::Spread(_) = self {
            spec["topologySpreadConstraints"] = json!([{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": labels},
            }]);
        }
    }
}

/// A standalone dummy pod: one container per served port (`cont-<port>-<proto>`), or a single
/// `client` container when it serves nothing. SCTP servers only where SCTP works.
pub fn pod(model: &ModelPod, image: &str, sctp: bool, run_id: &str, node: &NodeChoice) -> Pod {
    let mut containers: Vec<Value> = served(model, sctp)
        .map(|p| {
            serve_container(
                format!("cont-{}-{}", p.port, p.protocol.lower()),
                image,
                p,
                false,
            )
        })
        .collect();
    if containers.is_empty() {
        containers.push(client_container("client", image));
    }
    let mut labels = model.labels.clone();
    labels.insert(LABEL_RUN.into(), run_id.into());
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": containers,
        "nodeSelector": {"kubernetes.io/os": "linux"},
    });
    node.apply(&mut spec, &model.labels);
    serde_json::from_value(json!({
        "metadata": {"name": model.pod_name, "labels": labels},
        "spec": spec,
    }))
    .expect("pod literal")
}

/// The Service of an upstream-world pod: one port per served port and protocol.
pub fn service(model: &ModelPod, namespace: &str, sctp: bool, run_id: &str) -> Service {
    let ports: Vec<Value> = served(model, sctp)
        .map(|p| {
            json!({
                "name": format!("service-port-{}-{}", p.protocol.lower(), p.port),
                "protocol": p.protocol.as_str(),
                "port": p.port,
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": service_name(namespace, &model.pod_name),
            "labels": {LABEL_RUN: run_id},
        },
        "spec": {"selector": model.labels, "ports": ports},
    }))
    .expect("service literal")
}

/// A StatefulSet of the npa world, shaped like network-policy-api's base manifests: a client
/// container and one server container per port, host-networked for the forbidden forest.
pub fn statefulset(
    name: &str,
    model: &ModelPod,
    replicas: i32,
    image: &str,
    sctp: bool,
    run_id: &str,
    node: &NodeChoice,
) -> StatefulSet {
    let mut containers = vec![client_container(&format!("{name}-client"), image)];
    for p in served(model, sctp) {
        let cname = if model.host_network {
            format!("{name}-{}-{}", p.port, p.protocol.lower())
        } else {
            format!("{name}-{}", p.port)
        };
        containers.push(serve_container(cname, image, p, model.host_network));
    }
    let mut labels = model.labels.clone();
    labels.insert(LABEL_RUN.into(), run_id.into());
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "hostNetwork": model.host_network,
        "containers": containers,
        "nodeSelector": {"kubernetes.io/os": "linux"},
    });
    node.apply(&mut spec, &model.labels);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL_RUN: run_id}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": model.labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": spec,
            }
        }
    }))
    .expect("statefulset literal")
}

/// A merge patch that sets and removes labels.
pub fn label_patch(set: &BTreeMap<String, String>, remove: &[String]) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in set {
        labels.insert(k.clone(), json!(v));
    }
    for k in remove {
        labels.insert(k.clone(), Value::Null);
    }
    json!({"metadata": {"labels": labels}})
}

/// The kind, name and namespace an object to be created or updated carries (empty strings
/// where it has none: the API server names what is missing).
pub fn object_ref(obj: &Value) -> ObjectRef {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    ObjectRef {
        kind: text(&obj["kind"]),
        name: text(&obj["metadata"]["name"]),
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
    }
}

/// The pod's IP, once it has one.
pub fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Running, Ready and with an IP.
pub fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `ns/name: phase=Pending, Ready=False (reason: message)` for error messages.
pub fn pod_condition_summary(pod: &Pod) -> String {
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("?"),
        pod.metadata.name.as_deref().unwrap_or("?")
    );
    let Some(status) = &pod.status else {
        return format!("{name}: no status yet (not scheduled?)");
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            let why = [c.reason.as_deref(), c.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            if why.is_empty() {
                format!("Ready={}", c.status)
            } else {
                format!("Ready={} ({why})", c.status)
            }
        })
        .unwrap_or_else(|| "no Ready condition".into());
    format!(
        "{name}: phase={}, {ready}",
        status.phase.as_deref().unwrap_or("Unknown")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::WorldKind;

    #[test]
    fn upstream_pod_has_a_container_per_port_and_protocol() {
        let world = WorldKind::Upstream.model();
        let a = world.pod("x/a").unwrap();
        let pod = pod(a, "agnhost:test", false, "r1", &NodeChoice::Any);
        let containers = &pod.spec.as_ref().unwrap().containers;
        let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["cont-80-tcp", "cont-80-udp", "cont-81-tcp", "cont-81-udp"]
        );
        let port = &containers[1].ports.as_ref().unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("serve-80-udp"));
        assert_eq!(port.protocol.as_deref(), Some("UDP"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["pod"], "a");
        assert_eq!(probe_container(a), "cont-80-tcp");
        let with_sctp = super::pod(a, "agnhost:test", true, "r1", &NodeChoice::Any);
        assert_eq!(with_sctp.spec.unwrap().containers.len(), 6);
    }

    #[test]
    fn npa_statefulsets_follow_the_base_manifests() {
        let world = WorldKind::Npa.model();
        let g = world.pod("gryffindor/0").unwrap();
        let ss = statefulset("harry-potter", g, 2, "img", false, "r1", &NodeChoice::Any);
        let spec = ss.spec;
        let containers = spec.template.spec.unwrap().containers;
        assert_eq!(containers[0].name, "harry-potter-client");
        assert!(containers.iter().any(|c| c.name == "harry-potter-53"
            && c.ports.as_ref().unwrap()[0].name.as_deref() == Some("dns")));
        let f = world.pod("forbidden-forrest/0").unwrap();
        let ss = statefulset("centaur", f, 2, "img", false, "r1", &NodeChoice::Any);
        let tmpl = ss.spec.template.spec.unwrap();
        assert_eq!(tmpl.host_network, Some(true));
        let udp = tmpl
            .containers
            .iter()
            .find(|c| c.name == "centaur-34347-udp")
            .unwrap();
        assert!(
            udp.command
                .as_ref()
                .unwrap()
                .contains(&"--udp-port=34347".to_string())
        );
    }

    #[test]
    fn label_patch_sets_and_removes() {
        let set = BTreeMap::from([("ns2".to_string(), "updated".to_string())]);
        let patch = label_patch(&set, &["old".to_string()]);
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {"ns2": "updated", "old": null}}})
        );
    }

    #[test]
    fn placement_pins_a_pod_to_its_node_and_spreads_replicas() {
        let world = WorldKind::Upstream.model();
        let a = world.pod("x/a").unwrap();
        let pinned = pod(a, "img", false, "r1", &NodeChoice::Node("n1".into()));
        let spec = serde_json::to_value(pinned.spec.unwrap()).unwrap();
        assert_eq!(
            spec.pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0"),
            Some(&json!({"key": "metadata.name", "operator": "In", "values": ["n1"]}))
        );
        assert!(spec.get("topologySpreadConstraints").is_none());
        let npa = WorldKind::Npa.model();
        let g = npa.pod("gryffindor/0").unwrap();
        let spread = NodeChoice::Spread(vec!["n0".into(), "n1".into()]);
        let ss = statefulset("harry-potter", g, 2, "img", false, "r1", &spread);
        let tmpl = serde_json::to_value(ss.spec.template.spec.unwrap()).unwrap();
        assert_eq!(
            tmpl.pointer("/topologySpreadConstraints/0/labelSelector/matchLabels"),
            Some(&json!({"conformance-house": "gryffindor"}))
        );
        assert_eq!(
            tmpl.pointer("/topologySpreadConstraints/0/whenUnsatisfiable"),
            Some(&json!("DoNotSchedule"))
        );
        let any = pod(a, "img", false, "r1", &NodeChoice::Any);
        assert!(any.spec.unwrap().affinity.is_none());
    }
}
