//! The policy store: one writer applies watch events and publishes immutable [`Snapshot`]s;
//! any number of readers (packet workers) take the current snapshot without blocking each other.
//!
//! # Data flow
//!
//! [`Writer::apply`] turns each Kubernetes object into a trimmed record (a pod keeps only its
//! labels, IPs, host-network flag and named container ports: [`PodRecord`], [`NodeRecord`]) or a
//! compiled policy ([`crate::engine::policy`]), so neither the writer nor any snapshot holds
//! whole API objects. [`Writer::publish`] has the engine build a new [`Snapshot`] from those
//! records when something changed ([`Snapshot::build`]; the index and how it is laid out are
//! described in [`crate::engine::index`]) and swaps it in; readers holding the previous one keep
//! using it until they drop it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::{v1alpha1, v1alpha2};

use ipnet::IpNet;

use crate::engine::index::{NodeRecord, PodRecord, Sources};
use crate::engine::policy::{
    ClusterPolicy, Netpol, compile_anp, compile_banp, compile_cnp, compile_netpol,
};
use crate::engine::selector::Labels;

/// The snapshot readers get: the engine's verdict index, built by the writer.
pub use crate::engine::index::Snapshot;

/// A Kubernetes object the store understands.
#[derive(Debug, Clone)]
pub enum Object {
    /// A pod.
    Pod(Box<Pod>),
    /// A namespace.
    Namespace(Box<Namespace>),
    /// A node.
    Node(Box<Node>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// An AdminNetworkPolicy.
    AdminNetworkPolicy(Box<v1alpha1::AdminNetworkPolicy>),
    /// A BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicy(Box<v1alpha1::BaselineAdminNetworkPolicy>),
    /// A ClusterNetworkPolicy.
    ClusterNetworkPolicy(Box<v1alpha2::ClusterNetworkPolicy>),
}

/// The kinds the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Pods.
    Pod,
    /// Namespaces.
    Namespace,
    /// Nodes.
    Node,
    /// NetworkPolicies.
    NetworkPolicy,
    /// AdminNetworkPolicies.
    AdminNetworkPolicy,
    /// BaselineAdminNetworkPolicies.
    BaselineAdminNetworkPolicy,
    /// ClusterNetworkPolicies.
    ClusterNetworkPolicy,
}

/// A Kubernetes type the store holds: its [`Kind`] and its [`Object`] variant.
pub trait Stored {
    /// The kind of every object of this type.
    const KIND: Kind;
    /// The object in its variant.
    fn into_object(self) -> Object;
}

/// `Stored` for each type, named by its variant of both [`Object`] and [`Kind`].
macro_rules! stored {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Stored for $ty {
            const KIND: Kind = Kind::$variant;
            fn into_object(self) -> Object {
                Object::$variant(Box::new(self))
            }
        }
    )*};
}

stored!(
    Pod => Pod,
    Namespace => Namespace,
    Node => Node,
    NetworkPolicy => NetworkPolicy,
    v1alpha1::AdminNetworkPolicy => AdminNetworkPolicy,
    v1alpha1::BaselineAdminNetworkPolicy => BaselineAdminNetworkPolicy,
    v1alpha2::ClusterNetworkPolicy => ClusterNetworkPolicy,
);

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
            Object::BaselineAdminNetworkPolicy(_) => Kind::BaselineAdminNetworkPolicy,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        }
    }

    fn key(&self) -> Key {
        let meta = match self {
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::AdminNetworkPolicy(o) => &o.metadata,
            Object::BaselineAdminNetworkPolicy(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
        };
        Key {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// A change to feed the writer.
#[derive(Debug, Clone)]
pub enum Event {
    /// The object was created or changed.
    Apply(Object),
    /// The object was deleted.
    Delete(Object),
    /// The complete current set of one kind (after a list or relist): objects of that kind not in
    /// the set are forgotten.
    Replace(Kind, Vec<Object>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    namespace: Option<String>,
    name: String,
}

impl Snapshot {
    /// Builds a snapshot directly from objects (for tests, benchmarks and one-shot tools).
    pub fn from_objects(
        pods: Vec<Pod>,
        namespaces: Vec<Namespace>,
        nodes: Vec<Node>,
        netpols: Vec<NetworkPolicy>,
        anps: Vec<v1alpha1::AdminNetworkPolicy>,
        banps: Vec<v1alpha1::BaselineAdminNetworkPolicy>,
        cnps: Vec<v1alpha2::ClusterNetworkPolicy>,
    ) -> Snapshot {
        let mut state = State::default();
        let objects = namespaces
            .into_iter()
            .map(Stored::into_object)
            .chain(pods.into_iter().map(Stored::into_object))
            .chain(nodes.into_iter().map(Stored::into_object))
            .chain(netpols.into_iter().map(Stored::into_object))
            .chain(anps.into_iter().map(Stored::into_object))
            .chain(banps.into_iter().map(Stored::into_object))
            .chain(cnps.into_iter().map(Stored::into_object));
        for o in objects {
            state.apply(o);
        }
        state.build(1)
    }
}

/// The writer's own state: trimmed records and compiled policies, keyed by object.
#[derive(Debug, Default)]
struct State {
    /// Pod ranges given to the writer (beyond the nodes' own).
    pod_ranges: Vec<IpNet>,
    pods: BTreeMap<Key, Arc<PodRecord>>,
    namespaces: BTreeMap<String, Labels>,
    nodes: BTreeMap<String, Arc<NodeRecord>>,
    netpols: BTreeMap<Key, Arc<Netpol>>,
    anps: BTreeMap<String, Arc<ClusterPolicy>>,
    banps: BTreeMap<String, Arc<ClusterPolicy>>,
    cnps: BTreeMap<String, Arc<ClusterPolicy>>,
}

impl State {
    fn apply(&mut self, object: Object) {
        let key = object.key();
        match object {
            Object::Pod(p) => {
                self.pods.insert(key, Arc::new(PodRecord::from_pod(&p)));
            }
            Object::Namespace(n) => {
                self.namespaces
                    .insert(key.name, n.metadata.labels.clone().unwrap_or_default());
            }
            Object::Node(n) => {
                self.nodes
                    .insert(key.name, Arc::new(NodeRecord::from_node(&n)));
            }
            Object::NetworkPolicy(np) => {
                self.netpols.insert(key, Arc::new(compile_netpol(&np)));
            }
            Object::AdminNetworkPolicy(p) => {
                self.anps.insert(key.name, Arc::new(compile_anp(&p)));
            }
            Object::BaselineAdminNetworkPolicy(p) => {
                self.banps.insert(key.name, Arc::new(compile_banp(&p)));
            }
            Object::ClusterNetworkPolicy(p) => {
                self.cnps.insert(key.name, Arc::new(compile_cnp(&p)));
            }
        }
    }

    fn delete(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Pod => drop(self.pods.remove(key)),
            Kind::Namespace => drop(self.namespaces.remove(&key.name)),
            Kind::Node => drop(self.nodes.remove(&key.name)),
            Kind::NetworkPolicy => drop(self.netpols.remove(key)),
            Kind::AdminNetworkPolicy => drop(self.anps.remove(&key.name)),
            Kind::BaselineAdminNetworkPolicy => drop(self.banps.remove(&key.name)),
            Kind::ClusterNetworkPolicy => drop(self.cnps.remove(&key.name)),
        }
    }

    fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => self.pods.clear(),
            Kind::Namespace => self.namespaces.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::NetworkPolicy => self.netpols.clear(),
            Kind::AdminNetworkPolicy => self.anps.clear(),
            Kind::BaselineAdminNetworkPolicy => self.banps.clear(),
            Kind::ClusterNetworkPolicy => self.cnps.clear(),
        }
    }

    /// The snapshot numbered `generation` of the current state.
    fn build(&self, generation: u64) -> Snapshot {
        let namespaces: Vec<(&str, &Labels)> = self
            .namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels))
            .collect();
        let pods: Vec<&Arc<PodRecord>> = self.pods.values().collect();
        let nodes: Vec<&Arc<NodeRecord>> = self.nodes.values().collect();
        let netpols: Vec<Arc<Netpol>> = self.netpols.values().cloned().collect();
        let cluster_policies: Vec<Arc<ClusterPolicy>> = self
            .anps
            .values()
            .chain(self.banps.values())
            .chain(self.cnps.values())
            .cloned()
            .collect();
        Snapshot::build(
            Sources {
                pod_ranges: &self.pod_ranges,
                namespaces: &namespaces,
                pods: &pods,
                nodes: &nodes,
                netpols: &netpols,
                cluster_policies: &cluster_policies,
            },
            generation,
        )
    }
}

/// The only writer: applies events and publishes snapshots.
#[derive(Debug)]
pub struct Writer {
    state: State,
    shared: Arc<RwLock<Arc<Snapshot>>>,
    generation: u64,
    dirty: bool,
}

/// A cheap, cloneable handle to the latest published snapshot.
#[derive(Debug, Clone)]
pub struct Reader {
    shared: Arc<RwLock<Arc<Snapshot>>>,
}

impl Reader {
    /// The latest published snapshot. Holding it never blocks the writer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked between two statements that cannot leave
        // the `Arc` half-written; the value inside is still a complete snapshot.
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A writer with an empty store; its readers see an empty snapshot (generation 0) until the
    /// first [`publish`](Writer::publish).
    pub fn new() -> Self {
        Self::with_pod_ranges(Vec::new())
    }

    /// A writer whose snapshots count `ranges` as pod ranges, besides the nodes' own
    /// `spec.podCIDRs` (see [`Snapshot::is_unknown_pod_address`]). Its readers see an empty
    /// snapshot (generation 0) until the first [`publish`](Writer::publish).
    pub fn with_pod_ranges(ranges: Vec<IpNet>) -> Self {
        let ranges_empty = ranges.is_empty();
        Writer {
            state: State {
                pod_ranges: ranges,
                ..State::default()
            },
            shared: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            generation: 0,
            // The ranges alone are worth a snapshot.
            dirty: !ranges_empty,
        }
    }

    /// A reader of this writer's snapshots.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// Applies one event to the store. Nothing is visible to readers until [`publish`](Writer::publish).
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Apply(o) => self.state.apply(o),
            Event::Delete(o) => self.state.delete(o.kind(), &o.key()),
            Event::Replace(kind, objects) => {
                self.state.clear(kind);
                for o in objects.into_iter().filter(|o| o.kind() == kind) {
                    self.state.apply(o);
                }
            }
        }
        self.dirty = true;
    }

    /// Whether events were applied since the last publish.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Builds and publishes a snapshot if anything changed; returns the current snapshot.
    pub fn publish(&mut self) -> Arc<Snapshot> {
        if self.dirty {
            self.generation += 1;
            let snap = Arc::new(self.state.build(self.generation));
            *self.shared.write().unwrap_or_else(|e| e.into_inner()) = snap;
            self.dirty = false;
        }
        self.reader().snapshot()
    }
}
