//! Worlds: the namespaces, pods, labels and served ports a case runs against, described in the
//! abstract (model names such as `x/a` or `gryffindor/0`) with no Kubernetes detail.
//!
//! Every naming rule that turns a model name into a realized one lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use netpol_api::Protocol;

/// Which world a case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorldKind {
    /// Kubernetes' NetworkPolicy e2e grid: x/y/z × a/b/c.
    Upstream,
    /// network-policy-api conformance: five houses, two pods each.
    Npa,
    /// The NetworkPolicy tutorial: frontend, backend, monitoring, DNS and the internet.
    Tutorial,
}

impl WorldKind {
    /// The lower-case name used in case files.
    pub fn as_str(self) -> &'static str {
        match self {
            WorldKind::Upstream => "upstream",
            WorldKind::Npa => "npa",
            WorldKind::Tutorial => "tutorial",
        }
    }

    /// The model of this world.
    pub fn model(self) -> World {
        match self {
            WorldKind::Upstream => upstream(),
            WorldKind::Npa => npa(),
            WorldKind::Tutorial => tutorial(),
        }
    }
}

/// A port a pod serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedPort {
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The container port's name, if it has one (named ports resolve against it).
    pub name: Option<String>,
}

/// A namespace of a world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelNamespace {
    /// Model name (`x`, `gryffindor`).
    pub name: String,
    /// Labels the suite sets (the API server adds `kubernetes.io/metadata.name`).
    pub labels: BTreeMap<String, String>,
    /// Upstream's name for the namespace (npa: `network-policy-conformance-<house>`). Such a
    /// world is created once per run and shared by its trials; its namespaces are realized as
    /// `<upstream name>-<run id>` so two runs, or a leftover of a killed one, never collide.
    pub upstream_name: Option<String>,
}

/// A pod of a world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelPod {
    /// Model namespace.
    pub namespace: String,
    /// Model pod name within the namespace (`a`, `0`).
    pub name: String,
    /// The Kubernetes pod name (`a`, `harry-potter-0`).
    pub pod_name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Served ports.
    pub ports: Vec<ServedPort>,
    /// Whether the pod shares its node's network namespace.
    pub host_network: bool,
    /// For StatefulSet-managed pods, the StatefulSet's name.
    pub statefulset: Option<String>,
    /// Whether this "pod" is the external host rather than a Kubernetes pod.
    pub external: bool,
}

impl ModelPod {
    /// The model name `<namespace>/<name>`.
    pub fn model_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number a named port resolves to on this pod, for a protocol.
    pub fn named_port(&self, name: &str) -> Option<&ServedPort> {
        self.ports.iter().find(|p| p.name.as_deref() == Some(name))
    }
}

/// A world: namespaces and pods in model order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct World {
    /// Which world.
    pub kind: WorldKind,
    /// Namespaces in model order.
    pub namespaces: Vec<ModelNamespace>,
    /// Pods in model order (namespace order, then pod order).
    pub pods: Vec<ModelPod>,
}

impl World {
    /// Model names of every pod, in model order.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(ModelPod::model_name).collect()
    }

    /// The pod with this model name.
    pub fn pod(&self, model: &str) -> Option<&ModelPod> {
        self.pods.iter().find(|p| p.model_name() == model)
    }

    /// The namespace with this model name.
    pub fn namespace(&self, model: &str) -> Option<&ModelNamespace> {
        self.namespaces.iter().find(|n| n.name == model)
    }

    /// The realized name of a model namespace for a trial with this suffix (for shared
    /// worlds, the run id).
    ///
    /// Namespaces with an upstream name get `<upstream name>-<suffix>`; the others
    /// `<world>-<model>-<suffix>`, so concurrent trials and runs never share a namespace.
    pub fn realized_namespace(&self, model: &str, suffix: &str) -> String {
        match self
            .namespace(model)
            .and_then(|n| n.upstream_name.as_deref())
        {
            Some(base) => format!("{base}-{suffix}"),
            None => format!("{}-{model}-{suffix}", self.kind.as_str()),
        }
    }

    /// Whether the world is created once per run and shared by its trials.
    pub fn is_shared(&self) -> bool {
        self.namespaces.iter().any(|n| n.upstream_name.is_some())
    }

    /// Resolves a port given by number or by container port name (looked up on every pod).
    pub fn resolve_port(&self, port: &str) -> Option<u16> {
        if let Ok(n) = port.parse::<u16>() {
            return Some(n);
        }
        self.pods
            .iter()
            .find_map(|p| p.named_port(port))
            .map(|p| p.port)
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first port of the host-network ports the npa world's forbidden-forrest pods serve.
pub const NPA_HOST_PORT_BASE: u16 = 34345;

fn upstream() -> World {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for ns in ["x", "y", "z"] {
        namespaces.push(ModelNamespace {
            name: ns.into(),
            labels: BTreeMap::new(),
            upstream_name: None,
        });
        for pod in ["a", "b", "c"] {
            let mut ports = Vec::new();
            for port in [80u16, 81] {
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    ports.push(ServedPort {
                        port,
                        protocol,
                        name: Some(format!("serve-{port}-{}", protocol.lower())),
                    });
                }
            }
            pods.push(ModelPod {
                namespace: ns.into(),
                name: pod.into(),
                pod_name: pod.into(),
                labels: labels(&[("pod", pod)]),
                ports,
                host_network: false,
                statefulset: None,
                external: false,
            });
        }
    }
    World {
        kind: WorldKind::Upstream,
        namespaces,
        pods,
    }
}

/// The houses of the npa world with their StatefulSet names, in model order.
pub const NPA_HOUSES: [(&str, &str); 5] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
    ("forbidden-forrest", "centaur"),
];

fn npa() -> World {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for (house, statefulset) in NPA_HOUSES {
        let host_network = house == "forbidden-forrest";
        namespaces.push(ModelNamespace {
            name: house.into(),
            labels: labels(&[("conformance-house", house)]),
            upstream_name: Some(format!("network-policy-conformance-{house}")),
        });
        let ports = if host_network {
            let hnp = |i: u16| NPA_HOST_PORT_BASE + i;
            vec![
                served(hnp(0), Protocol::Tcp, Some(format!("web-{}", hnp(0)))),
                served(hnp(1), Protocol::Tcp, Some(format!("web-{}", hnp(1)))),
                served(hnp(2), Protocol::Udp, Some(format!("dns-{}", hnp(2)))),
                served(hnp(4), Protocol::Udp, Some(format!("dns-{}", hnp(4)))),
                served(hnp(6), Protocol::Sctp, None),
                served(hnp(7), Protocol::Sctp, None),
            ]
        } else {
            vec![
                served(80, Protocol::Tcp, Some("web".into())),
                served(8080, Protocol::Tcp, None),
                served(53, Protocol::Udp, Some("dns".into())),
                served(5353, Protocol::Udp, None),
                served(9003, Protocol::Sctp, None),
                served(9005, Protocol::Sctp, None),
            ]
        };
        for ordinal in 0..2 {
            pods.push(ModelPod {
                namespace: house.into(),
                name: ordinal.to_string(),
                pod_name: format!("{statefulset}-{ordinal}"),
                labels: labels(&[("conformance-house", house)]),
                ports: ports.clone(),
                host_network,
                statefulset: Some(statefulset.into()),
                external: false,
            });
        }
    }
    World {
        kind: WorldKind::Npa,
        namespaces,
        pods,
    }
}

fn served(port: u16, protocol: Protocol, name: Option<String>) -> ServedPort {
    ServedPort {
        port,
        protocol,
        name,
    }
}

fn tutorial() -> World {
    let ns = |name: &str, l: &[(&str, &str)]| ModelNamespace {
        name: name.into(),
        labels: labels(l),
        upstream_name: None,
    };
    let pod = |namespace: &str, name: &str, l: &[(&str, &str)], ports: Vec<ServedPort>| ModelPod {
        namespace: namespace.into(),
        name: name.into(),
        pod_name: name.into(),
        labels: labels(l),
        ports,
        host_network: false,
        statefulset: None,
        external: false,
    };
    World {
        kind: WorldKind::Tutorial,
        namespaces: vec![
            ns("default", &[]),
            ns("monitoring", &[]),
            ns("kube-system", &[]),
            ns("external", &[]),
        ],
        pods: vec![
            pod("default", "frontend", &[("app", "frontend")], vec![]),
            pod(
                "default",
                "backend",
                &[("app", "backend")],
                vec![served(8080, Protocol::Tcp, Some("http".into()))],
            ),
            pod("monitoring", "monitoring", &[("app", "monitoring")], vec![]),
            pod("monitoring", "other", &[("app", "other")], vec![]),
            pod(
                "kube-system",
                "coredns",
                &[("k8s-app", "kube-dns")],
                vec![
                    served(53, Protocol::Udp, Some("dns".into())),
                    served(53, Protocol::Tcp, Some("dns-tcp".into())),
                ],
            ),
            ModelPod {
                external: true,
                ..pod(
                    "external",
                    "internet",
                    &[],
                    vec![served(80, Protocol::Tcp, None)],
                )
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_world_is_the_classic_grid() {
        let w = WorldKind::Upstream.model();
        assert_eq!(
            w.pod_names(),
            [
                "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"
            ]
        );
        let a = w.pod("x/a").unwrap();
        assert_eq!(a.named_port("serve-81-udp").unwrap().port, 81);
        assert_eq!(w.resolve_port("serve-80-tcp"), Some(80));
        assert_eq!(w.realized_namespace("y", "k3f9"), "upstream-y-k3f9");
    }

    #[test]
    fn npa_world_has_upstream_names_with_the_run_id_and_host_network_centaurs() {
        let w = WorldKind::Npa.model();
        assert_eq!(w.pods.len(), 10);
        assert!(w.is_shared());
        assert_eq!(
            w.realized_namespace("gryffindor", "k3f9"),
            "network-policy-conformance-gryffindor-k3f9"
        );
        let f1 = w.pod("forbidden-forrest/1").unwrap();
        assert!(f1.host_network);
        assert_eq!(f1.pod_name, "centaur-1");
        assert_eq!(f1.ports.len(), 6);
        assert_eq!(
            w.pod("gryffindor/0")
                .unwrap()
                .named_port("dns")
                .unwrap()
                .port,
            53
        );
    }
}
