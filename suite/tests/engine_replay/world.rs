//! The synthetic cluster a plan is replayed in: a deterministic address layout for a world's
//! pods and nodes, the placeholders resolved over it, and the Kubernetes objects the engine's
//! store consumes, shaped as the suite's backends create them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use netpol_conformance::kube::LABEL_RUN;
use netpol_conformance::translate::Resolve;
use netpol_conformance::world::{ModelPod, World};
use netpol_enforcer::store::Object;
use serde_json::{Value, json};

/// The realized-name suffix and run id of every replayed trial.
pub const SUFFIX: &str = "replay";

/// Nodes of the synthetic cluster, as the local cluster has by default.
const NODES: u8 = 2;

/// The external host (`external/internet`): outside every pod and node range.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// The InternalIP of node `i`.
fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, 10 + i)
}

/// Names, addresses and labels of one replayed world, changed by the steps that relabel and
/// recreate pods.
pub struct Layout {
    world: World,
    /// Model namespace → realized name.
    namespaces: BTreeMap<String, String>,
    /// Model namespace → its current labels (without `kubernetes.io/metadata.name`).
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Model pod → its current address.
    ips: BTreeMap<String, IpAddr>,
    /// Model pod → its current labels.
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Pod addresses handed out so far (a recreated pod gets a new one, as on a cluster).
    allocated: u8,
}

impl Layout {
    /// The world as created: model labels, pods spread over the nodes in model order,
    /// host-network pods at their node's address.
    pub fn new(world: &World) -> Self {
        let mut layout = Layout {
            world: world.clone(),
            namespaces: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            ips: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            allocated: 0,
        };
        for ns in &world.namespaces {
            let realized = world.realized_namespace(&ns.name, SUFFIX);
            layout.namespaces.insert(ns.name.clone(), realized);
            layout
                .namespace_labels
                .insert(ns.name.clone(), ns.labels.clone());
        }
        let mut host_ordinal = 0;
        for pod in &world.pods {
            let ip = if pod.external {
                IpAddr::V4(EXTERNAL_IP)
            } else if pod.host_network {
                host_ordinal += 1;
                IpAddr::V4(node_ip((host_ordinal - 1) % NODES))
            } else {
                layout.allocate()
            };
            layout.ips.insert(pod.model_name(), ip);
            layout
                .pod_labels
                .insert(pod.model_name(), pod.labels.clone());
        }
        layout
    }

    /// The next pod address: `10.244.<node>.<n>`, nodes taken in turn.
    fn allocate(&mut self) -> IpAddr {
        self.allocated += 1;
        let n = self.allocated;
        IpAddr::V4(Ipv4Addr::new(10, 244, n % NODES, n))
    }

    /// The world replayed.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The realized name of a model namespace.
    pub fn realized(&self, model: &str) -> Option<&str> {
        self.namespaces.get(model).map(String::as_str)
    }

    /// The current address of a model pod.
    pub fn ip(&self, model: &str) -> Option<IpAddr> {
        self.ips.get(model).copied()
    }

    /// The model pod, when it is a Kubernetes pod (not the external host).
    fn pod(&self, model: &str) -> Option<&ModelPod> {
        self.world.pod(model).filter(|p| !p.external)
    }

    /// Sets and removes labels of a model namespace; its object as changed.
    pub fn label_namespace(
        &mut self,
        model: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Option<Object> {
        let labels = self.namespace_labels.get_mut(model)?;
        relabel(labels, set, remove);
        Some(Object::Namespace(Box::new(self.namespace(model)?)))
    }

    /// Sets and removes labels of a model pod; its object as changed.
    pub fn label_pod(
        &mut self,
        model: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Option<Object> {
        relabel(self.pod_labels.get_mut(model)?, set, remove);
        Some(Object::Pod(Box::new(self.pod_object(model)?)))
    }

    /// Recreates a model pod as the backends do: the model's labels, a new address (host-network
    /// pods keep their node's). Returns the pod to delete and the pod created.
    pub fn recreate(&mut self, model: &str) -> Option<(Object, Object)> {
        let old = self.pod_object(model)?;
        let pod = self.pod(model)?.clone();
        if !pod.host_network {
            let ip = self.allocate();
            self.ips.insert(model.to_string(), ip);
        }
        self.pod_labels
            .insert(model.to_string(), pod.labels.clone());
        let new = self.pod_object(model)?;
        Some((Object::Pod(Box::new(old)), Object::Pod(Box::new(new))))
    }

    /// Everything a world's creation makes that the store watches: namespaces (the external
    /// host's is never created), pods and nodes.
    pub fn objects(&self) -> Vec<Object> {
        let namespaces = self
            .world
            .namespaces
            .iter()
            .filter_map(|ns| self.namespace(&ns.name))
            .map(|n| Object::Namespace(Box::new(n)));
        let pods = self
            .world
            .pods
            .iter()
            .filter_map(|p| self.pod_object(&p.model_name()))
            .map(|p| Object::Pod(Box::new(p)));
        let nodes = (0..NODES).map(|i| Object::Node(Box::new(node(i))));
        namespaces.chain(pods).chain(nodes).collect()
    }

    /// A namespace as the API server has it: the suite's labels plus `kubernetes.io/metadata.name`.
    fn namespace(&self, model: &str) -> Option<Namespace> {
        if self
            .world
            .pods
            .iter()
            .any(|p| p.external && p.namespace == model)
        {
            return None;
        }
        let name = self.realized(model)?;
        let mut labels = self.namespace_labels.get(model)?.clone();
        labels.insert(LABEL_RUN.into(), SUFFIX.into());
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        Some(typed(json!({"metadata": {"name": name, "labels": labels}})))
    }

    /// A running pod as the suite's worlds serve it: one container per served port, each with
    /// its container port (and its name, where the model names it).
    pub fn pod_object(&self, model: &str) -> Option<Pod> {
        let pod = self.pod(model)?;
        let ip = self.ip(model)?.to_string();
        let mut labels = self.pod_labels.get(model)?.clone();
        labels.insert(LABEL_RUN.into(), SUFFIX.into());
        let containers: Vec<Value> = pod
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                json!({"name": format!("cont-{}-{}", p.port, p.protocol.lower()),
                       "image": "agnhost", "ports": [port]})
            })
            .collect();
        Some(typed(json!({
            "metadata": {"namespace": self.realized(&pod.namespace)?, "name": pod.pod_name,
                         "labels": labels},
            "spec": {"containers": containers, "hostNetwork": pod.host_network},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })))
    }
}

impl Resolve for Layout {
    fn namespace(&self, model: &str) -> Option<String> {
        self.realized(model).map(str::to_string)
    }
    fn pod_ip(&self, model: &str) -> Option<IpAddr> {
        self.ip(model)
    }
    fn node_ip(&self, index: usize) -> Option<IpAddr> {
        u8::try_from(index)
            .ok()
            .filter(|i| *i < NODES)
            .map(|i| IpAddr::V4(node_ip(i)))
    }
    fn external_ip(&self) -> Option<IpAddr> {
        Some(IpAddr::V4(EXTERNAL_IP))
    }
}

fn relabel(
    labels: &mut BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) {
    labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    for key in remove {
        labels.remove(key);
    }
}

/// Node `i`, labelled as the local cluster's node agents register it, with its pod range.
fn node(i: u8) -> Node {
    let name = format!("node-{i}");
    typed(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux",
                                              "kubernetes.io/hostname": name}},
        "spec": {"podCIDR": format!("10.244.{i}.0/24"), "podCIDRs": [format!("10.244.{i}.0/24")]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()},
                                 {"type": "Hostname", "address": name}]},
    }))
}

/// A typed object from a literal this file builds.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("replay object {v}: {e}"))
}

/// A policy object of a plan (placeholders resolved, namespace realized) as the store's object.
pub fn policy(v: &Value) -> Result<Object, String> {
    Ok(match v["kind"].as_str().unwrap_or_default() {
        "NetworkPolicy" => Object::NetworkPolicy(Box::new(parse(v)?)),
        "AdminNetworkPolicy" => Object::AdminNetworkPolicy(Box::new(parse(v)?)),
        "BaselineAdminNetworkPolicy" => Object::BaselineAdminNetworkPolicy(Box::new(parse(v)?)),
        "ClusterNetworkPolicy" => Object::ClusterNetworkPolicy(Box::new(parse(v)?)),
        other => {
            return Err(format!(
                "kind `{other}` is no policy kind the engine watches"
            ));
        }
    })
}

/// A typed policy object, or what its deserializer says about it.
fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone())
        .map_err(|e| format!("{} {}: {e}", v["kind"], v["metadata"]["name"]))
}
