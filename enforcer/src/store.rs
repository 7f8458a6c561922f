//! The policy store: one writer applies watch events and publishes immutable [`Snapshot`]s;
//! any number of readers (packet workers) take the current snapshot without blocking each other.
//!
//! # Data flow
//!
//! [`Writer::apply`] turns each Kubernetes object into a trimmed record (a pod keeps only its
//! labels, IPs, host-network flag and named container ports) or a compiled policy
//! ([`crate::engine::policy`]), so neither the writer nor any snapshot holds whole API objects.
//! [`Writer::publish`] builds a new [`Snapshot`] from those records when something changed and
//! swaps it in; readers holding the previous one keep using it until they drop it.
//!
//! # The index
//!
//! A snapshot answers, for a pod and a direction, "which rules can apply to you, in evaluation
//! order" without looking at policies that do not select the pod:
//!
//! - **Subject index, precomputed per pod.** When a snapshot is built, each policy's subject is
//!   resolved to pods once: candidate namespaces come from a `label=value → namespaces` index
//!   when the namespace selector requires such a pair (else every namespace), candidate pods from
//!   a per-namespace `label=value → pods` index when the pod selector requires one (else every
//!   pod of the namespace); each candidate is then checked against the full selectors. Admin and
//!   baseline policies are visited in evaluation order (priority, name, kind), so every per-pod
//!   list comes out sorted. NetworkPolicies are resolved the same way inside their namespace.
//! - **Rule references with port bounds.** Each pod's policy lists are expanded into flat
//!   [`RuleRef`] lists per tier and direction — one entry per port entry of each rule, carrying
//!   the protocol set and port bounds — so a verdict skips rules whose ports cannot match without
//!   touching the rule. Pods selected by the same policies share one list (`Arc`).
//! - **Address index.** `IP → pod` for pods that are not host-networked and not finished, and
//!   `IP → node` for node addresses (host-network pods share their node's address and are
//!   reached as the node).
//!
//! A verdict therefore costs two hash lookups plus the rules, of the policies selecting the two
//! pods involved, whose ports fit the connection. Rebuilding costs O(pods + namespaces +
//! Σ candidates per policy + Σ rule entries per distinct policy set), paid by the writer.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::{v1alpha1, v1alpha2};

use ipnet::IpNet;

use crate::engine::policy::{
    Action, ClusterPolicy, ClusterTier, ContainerPort, Direction, NamespaceMatch, Netpol, Peer,
    compile_anp, compile_banp, compile_cnp, compile_netpol,
};
use crate::engine::policy::{PortMatch, PortSpec};
use crate::engine::selector::{Labels, Selector};
use crate::flow::Protocol;

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

/// What the store keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Namespace name.
    pub namespace: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// Labels.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Phase Succeeded or Failed: its IPs may already belong to another pod.
    pub finished: bool,
    /// Container ports (named ones matter; all are kept small).
    pub ports: Vec<ContainerPort>,
}

impl PodRecord {
    /// Trims a pod to what verdicts need.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        let spec = pod.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    _ => return None,
                };
                Some(ContainerPort {
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol,
                })
            })
            .collect();
        PodRecord {
            namespace: pod
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default")
                .into(),
            name: pod.metadata.name.as_deref().unwrap_or_default().into(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            ports,
        }
    }
}

/// What the store keeps of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node name.
    pub name: Arc<str>,
    /// Labels.
    pub labels: Labels,
    /// Addresses from `status.addresses` that are IPs.
    pub addresses: Vec<IpAddr>,
}

impl NodeRecord {
    /// Trims a node to its name, labels and IP addresses.
    pub fn from_node(node: &Node) -> Self {
        NodeRecord {
            name: node.metadata.name.as_deref().unwrap_or_default().into(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        }
    }
}

/// A namespace as the snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Name.
    pub name: Arc<str>,
    /// Labels (empty for a namespace the store has not seen yet but pods refer to).
    pub labels: Labels,
}

/// A pod as the snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// The pod's record.
    pub record: Arc<PodRecord>,
    /// Index of its namespace in [`Snapshot::namespaces`].
    pub namespace: u32,
    /// Its named container ports, names interned ([`RuleRef::port_name`]).
    pub named_ports: Box<[NamedPort]>,
}

/// A named container port with its name interned for the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedPort {
    /// Interned name (never 0).
    pub name: u32,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One rule of a policy selecting a pod, laid out so that a verdict can test it without
/// touching the policy: port bounds, action and the rule's peers resolved to sets.
///
/// A rule with several port entries appears once per entry (consecutively, so evaluation order
/// is unchanged); the port pre-check (`protocols` bit set, `lo <= port <= hi`) is exact for
/// numbers and ranges and conservative for named ports, which are then checked on the rule.
/// Rules whose peers select nothing at all in the snapshot are left out: they cannot match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Index of the policy in its tier's list ([`Snapshot::admin`], [`Snapshot::baseline`] or
    /// [`Snapshot::netpols`]).
    pub policy: u32,
    /// Index of the rule in the policy's list for the direction.
    pub rule: u32,
    /// First of the rule's peers in [`Snapshot::peers`].
    pub peers: u32,
    /// How many peers the rule has there (any of them may match).
    pub peer_count: u16,
    /// Lowest destination port.
    pub lo: u16,
    /// Highest destination port.
    pub hi: u16,
    /// Bit set of protocols (`1 << Protocol as u8`).
    pub protocols: u8,
    /// 0 for a number or range entry, where passing [`may_match`](RuleRef::may_match) proves
    /// the ports match; otherwise the interned name of a named port, which must also be a
    /// [`PodEntry::named_ports`] entry of the destination pod with the connection's port and
    /// protocol.
    pub port_name: u32,
    /// The rule's action (admin and baseline tiers; `Accept` for NetworkPolicy rules).
    pub action: Action,
}

impl RuleRef {
    /// Whether a connection with this protocol and destination port may match the rule.
    #[inline]
    pub fn may_match(&self, protocol: Protocol, port: u16) -> bool {
        self.protocols & protocol_bit(protocol) != 0 && self.lo <= port && port <= self.hi
    }
}

/// The bit of a protocol in [`RuleRef::protocols`].
pub fn protocol_bit(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
        Protocol::Sctp => 4,
    }
}

/// Where one rule's peer list starts in [`Snapshot::peers`], and its length.
#[derive(Debug, Clone, Copy)]
struct PeerSpan {
    start: u32,
    count: u16,
}

/// Appends the rule's entries; `port_name` interns a named port's name (`None`: no pod has a
/// port of that name, so the entry can never match and is left out).
fn rule_refs(
    policy: u32,
    rule: u32,
    action: Action,
    peers: PeerSpan,
    ports: &PortMatch,
    port_name: impl Fn(&str) -> Option<u32>,
    out: &mut Vec<RuleRef>,
) {
    const ALL: u8 = 7;
    let mut push = |protocols, lo, hi, port_name| {
        out.push(RuleRef {
            policy,
            rule,
            peers: peers.start,
            peer_count: peers.count,
            lo,
            hi,
            protocols,
            port_name,
            action,
        })
    };
    match ports {
        PortMatch::Any => push(ALL, 0, u16::MAX, 0),
        PortMatch::List(specs) => {
            for spec in specs {
                match spec {
                    PortSpec::Range {
                        protocol,
                        start,
                        end,
                    } => push(protocol.map_or(ALL, protocol_bit), *start, *end, 0),
                    PortSpec::Named { name, protocol } => {
                        if let Some(id) = port_name(name) {
                            push(protocol.map_or(ALL, protocol_bit), 0, u16::MAX, id);
                        }
                    }
                    PortSpec::Nothing => {}
                }
            }
        }
    }
}

/// A set of pod or node indexes: a sorted list when small, a bit set when large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSet {
    /// Sorted, without duplicates.
    Sorted(Box<[u32]>),
    /// Bit `i` set when `i` is a member.
    Bits(Box<[u64]>),
}

impl IdSet {
    /// A set from sorted, distinct ids below `universe`, in whichever form is smaller.
    fn new(ids: Vec<u32>, universe: usize) -> IdSet {
        if ids.len() * 32 <= universe {
            return IdSet::Sorted(ids.into_boxed_slice());
        }
        let mut bits = vec![0u64; universe.div_ceil(64)];
        for id in ids {
            bits[id as usize / 64] |= 1 << (id % 64);
        }
        IdSet::Bits(bits.into_boxed_slice())
    }

    /// Whether `id` is a member.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        match self {
            IdSet::Sorted(ids) => match ids.len() {
                0..=8 => ids.contains(&id),
                _ => ids.binary_search(&id).is_ok(),
            },
            IdSet::Bits(bits) => bits
                .get(id as usize / 64)
                .is_some_and(|w| w & (1 << (id % 64)) != 0),
        }
    }
}

/// A rule's peer, resolved against the snapshot's pods and nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMatch {
    /// Any address.
    All,
    /// Pods whose indexes are in [`Snapshot::pod_sets`]`[i]`.
    Pods(u32),
    /// Nodes whose indexes are in [`Snapshot::node_sets`]`[i]`.
    Nodes(u32),
    /// Addresses in the block [`Snapshot::networks`]`[i]`.
    Network(u32),
}

/// An address block with holes (`ipBlock` / `networks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The block.
    pub cidr: IpNet,
    /// Holes in it.
    pub except: Box<[IpNet]>,
}

impl Network {
    /// Whether the address is in the block and in none of its holes.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// The rules that apply to one pod, per direction (`[ingress, egress]`), in evaluation order.
/// Pods selected by the same policies share the same lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicies {
    /// Admin-tier rules (policies in [`Snapshot::admin`]).
    pub admin: [Arc<[RuleRef]>; 2],
    /// Baseline-tier rules (policies in [`Snapshot::baseline`]).
    pub baseline: [Arc<[RuleRef]>; 2],
    /// Rules of the NetworkPolicies isolating the pod (policies in [`Snapshot::netpols`]).
    pub netpol_rules: [Arc<[RuleRef]>; 2],
    /// How many NetworkPolicies isolate the pod; non-zero means NetworkPolicy decides.
    pub isolated_by: [u32; 2],
}

/// Where an address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod (index into [`Snapshot::pods`]).
    Pod(u32),
    /// A node (index into [`Snapshot::nodes`]).
    Node(u32),
}

/// An immutable view of the cluster and its policies, indexed for [`crate::engine::decide`].
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increments with every published snapshot.
    pub generation: u64,
    /// Namespaces.
    pub namespaces: Vec<NamespaceEntry>,
    /// Pods (all, including host-network and finished ones).
    pub pods: Vec<PodEntry>,
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Admin-tier policies in evaluation order.
    pub admin: Vec<Arc<ClusterPolicy>>,
    /// Baseline-tier policies in evaluation order.
    pub baseline: Vec<Arc<ClusterPolicy>>,
    /// NetworkPolicies.
    pub netpols: Vec<Arc<Netpol>>,
    /// Per pod (parallel to `pods`): the policies selecting it.
    pub selected: Vec<PodPolicies>,
    /// The peers of every rule some pod's lists refer to ([`RuleRef::peers`]).
    pub peers: Vec<PeerMatch>,
    /// Pod sets that [`PeerMatch::Pods`] refers to.
    pub pod_sets: Vec<IdSet>,
    /// Node sets that [`PeerMatch::Nodes`] refers to.
    pub node_sets: Vec<IdSet>,
    /// Address blocks that [`PeerMatch::Network`] refers to.
    pub networks: Vec<Network>,
    by_ip: HashMap<IpAddr, Endpoint>,
    ns_by_name: HashMap<Arc<str>, u32>,
    pod_by_name: HashMap<(Arc<str>, Arc<str>), u32>,
}

impl Snapshot {
    /// Where an address leads, if it is a pod's or a node's.
    pub fn endpoint(&self, ip: IpAddr) -> Option<Endpoint> {
        self.by_ip.get(&ip).copied()
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceEntry> {
        self.ns_by_name
            .get(name)
            .map(|i| &self.namespaces[*i as usize])
    }

    /// A pod's index by namespace and name.
    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pod_by_name
            .get(&(Arc::from(namespace), Arc::from(name)))
            .copied()
    }

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
            .map(|o| Object::Namespace(Box::new(o)))
            .chain(pods.into_iter().map(|o| Object::Pod(Box::new(o))))
            .chain(nodes.into_iter().map(|o| Object::Node(Box::new(o))))
            .chain(
                netpols
                    .into_iter()
                    .map(|o| Object::NetworkPolicy(Box::new(o))),
            )
            .chain(
                anps.into_iter()
                    .map(|o| Object::AdminNetworkPolicy(Box::new(o))),
            )
            .chain(
                banps
                    .into_iter()
                    .map(|o| Object::BaselineAdminNetworkPolicy(Box::new(o))),
            )
            .chain(
                cnps.into_iter()
                    .map(|o| Object::ClusterNetworkPolicy(Box::new(o))),
            );
        for o in objects {
            state.apply(o);
        }
        state.build(1)
    }
}

/// Peers resolved while a snapshot is built.
#[derive(Default)]
struct Resolved {
    by_peer: HashMap<Peer, Option<PeerMatch>>,
    peers: Vec<PeerMatch>,
    pod_sets: Vec<IdSet>,
    node_sets: Vec<IdSet>,
    networks: Vec<Network>,
}

/// The writer's own state: trimmed records and compiled policies, keyed by object.
#[derive(Debug, Default)]
struct State {
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

    fn build(&self, generation: u64) -> Snapshot {
        let mut snap = Snapshot {
            generation,
            ..Default::default()
        };

        // Namespaces, with placeholders for namespaces only pods mention.
        for (name, labels) in &self.namespaces {
            let name: Arc<str> = name.as_str().into();
            snap.ns_by_name
                .insert(name.clone(), snap.namespaces.len() as u32);
            snap.namespaces.push(NamespaceEntry {
                name,
                labels: labels.clone(),
            });
        }
        let mut ns_pods: Vec<Vec<u32>> = vec![Vec::new(); snap.namespaces.len()];
        let mut port_names: HashMap<Box<str>, u32> = HashMap::new();
        for record in self.pods.values() {
            let ns = match snap.ns_by_name.get(&record.namespace) {
                Some(i) => *i,
                None => {
                    let i = snap.namespaces.len() as u32;
                    snap.ns_by_name.insert(record.namespace.clone(), i);
                    snap.namespaces.push(NamespaceEntry {
                        name: record.namespace.clone(),
                        labels: Labels::new(),
                    });
                    ns_pods.push(Vec::new());
                    i
                }
            };
            let idx = snap.pods.len() as u32;
            snap.pod_by_name
                .insert((record.namespace.clone(), record.name.clone()), idx);
            if !record.host_network && !record.finished {
                ns_pods[ns as usize].push(idx);
                for ip in &record.ips {
                    snap.by_ip.insert(*ip, Endpoint::Pod(idx));
                }
            }
            let named_ports = record
                .ports
                .iter()
                .filter_map(|p| {
                    let name = p.name.as_deref()?;
                    let next = port_names.len() as u32 + 1;
                    let id = *port_names.entry(name.into()).or_insert(next);
                    Some(NamedPort {
                        name: id,
                        port: p.port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            snap.pods.push(PodEntry {
                record: record.clone(),
                namespace: ns,
                named_ports,
            });
        }
        for node in self.nodes.values() {
            let idx = snap.nodes.len() as u32;
            for ip in &node.addresses {
                // A pod IP wins over a node address (they never legitimately coincide).
                snap.by_ip.entry(*ip).or_insert(Endpoint::Node(idx));
            }
            snap.nodes.push((**node).clone());
        }

        // Label indexes used to resolve subjects.
        let mut ns_by_label: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
        for (i, ns) in snap.namespaces.iter().enumerate() {
            for (k, v) in &ns.labels {
                ns_by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(i as u32);
            }
        }
        let mut pods_by_label: Vec<HashMap<(&str, &str), Vec<u32>>> =
            vec![HashMap::new(); snap.namespaces.len()];
        for (ns, pods) in ns_pods.iter().enumerate() {
            for p in pods {
                for (k, v) in &snap.pods[*p as usize].record.labels {
                    pods_by_label[ns]
                        .entry((k.as_str(), v.as_str()))
                        .or_default()
                        .push(*p);
                }
            }
        }
        let all_ns: Vec<u32> = (0..snap.namespaces.len() as u32).collect();
        let select = |ns_sel: &Selector,
                      pod_sel: Option<&Selector>,
                      ns_filter: Option<u32>,
                      out: &mut Vec<u32>| {
            out.clear();
            let namespaces: &[u32] = match (ns_filter, ns_sel.index_key()) {
                (Some(_), _) => &[],
                (None, Some(k)) => ns_by_label.get(&k).map(Vec::as_slice).unwrap_or(&[]),
                (None, None) => &all_ns,
            };
            let one = ns_filter.map(|n| [n]);
            let namespaces = one.as_ref().map(|o| &o[..]).unwrap_or(namespaces);
            for &ns in namespaces {
                if ns_filter.is_none() && !ns_sel.matches(&snap.namespaces[ns as usize].labels) {
                    continue;
                }
                let candidates: &[u32] = match pod_sel.and_then(Selector::index_key) {
                    Some(k) => pods_by_label[ns as usize]
                        .get(&k)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                    None => &ns_pods[ns as usize],
                };
                for &p in candidates {
                    if pod_sel.is_none_or(|s| s.matches(&snap.pods[p as usize].record.labels)) {
                        out.push(p);
                    }
                }
            }
        };

        let mut admin: Vec<Arc<ClusterPolicy>> = Vec::new();
        let mut baseline: Vec<Arc<ClusterPolicy>> = Vec::new();
        for p in self
            .anps
            .values()
            .chain(self.banps.values())
            .chain(self.cnps.values())
        {
            match p.tier {
                ClusterTier::Admin => admin.push(p.clone()),
                ClusterTier::Baseline => baseline.push(p.clone()),
            }
        }
        admin.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        baseline.sort_by(|a, b| a.order_key().cmp(&b.order_key()));

        let mut per_pod: Vec<[[Vec<u32>; 2]; 3]> = vec![Default::default(); snap.pods.len()];
        let mut scratch = Vec::new();
        for (tier, list) in [(0usize, &admin), (1, &baseline)] {
            for (i, p) in list.iter().enumerate() {
                select(p.subject.namespaces(), p.subject.pods(), None, &mut scratch);
                for &pod in &scratch {
                    for d in [Direction::Ingress, Direction::Egress] {
                        if !p.rules[d.idx()].is_empty() {
                            per_pod[pod as usize][tier][d.idx()].push(i as u32);
                        }
                    }
                }
            }
        }
        let netpols: Vec<Arc<Netpol>> = self.netpols.values().cloned().collect();
        for (i, np) in netpols.iter().enumerate() {
            let Some(&ns) = snap.ns_by_name.get(&np.namespace) else {
                continue;
            };
            select(
                &Selector::everything(),
                Some(&np.pod_selector),
                Some(ns),
                &mut scratch,
            );
            for &pod in &scratch {
                for d in [Direction::Ingress, Direction::Egress] {
                    if np.rules[d.idx()].is_some() {
                        per_pod[pod as usize][2][d.idx()].push(i as u32);
                    }
                }
            }
        }
        // Resolve peers to sets of pods, nodes or addresses, once per distinct peer and only for
        // rules some pod's lists reach; then expand each pod's policy lists into rule lists,
        // sharing identical lists between pods.
        let mut resolved = Resolved::default();
        let resolve = |peer: &Peer, resolved: &mut Resolved| -> Option<PeerMatch> {
            if let Some(hit) = resolved.by_peer.get(peer) {
                return *hit;
            }
            let found = match peer {
                Peer::All => Some(PeerMatch::All),
                Peer::Nothing => None,
                Peer::Network { cidr, except } => {
                    resolved.networks.push(Network {
                        cidr: *cidr,
                        except: except.clone().into_boxed_slice(),
                    });
                    Some(PeerMatch::Network(resolved.networks.len() as u32 - 1))
                }
                Peer::Nodes(sel) => {
                    let ids: Vec<u32> = (0..snap.nodes.len() as u32)
                        .filter(|n| sel.matches(&snap.nodes[*n as usize].labels))
                        .collect();
                    (!ids.is_empty()).then(|| {
                        resolved.node_sets.push(IdSet::new(ids, snap.nodes.len()));
                        PeerMatch::Nodes(resolved.node_sets.len() as u32 - 1)
                    })
                }
                Peer::Pods { namespaces, pods } => {
                    let mut ids = Vec::new();
                    match namespaces {
                        NamespaceMatch::Named(name) => {
                            if let Some(&ns) = snap.ns_by_name.get(name) {
                                select(&Selector::everything(), Some(pods), Some(ns), &mut ids);
                            }
                        }
                        NamespaceMatch::Selector(sel) => select(sel, Some(pods), None, &mut ids),
                    }
                    ids.sort_unstable();
                    (!ids.is_empty()).then(|| {
                        resolved.pod_sets.push(IdSet::new(ids, snap.pods.len()));
                        PeerMatch::Pods(resolved.pod_sets.len() as u32 - 1)
                    })
                }
            };
            resolved.by_peer.insert(peer.clone(), found);
            found
        };
        // A rule's peer list: `None` when no peer can match anything.
        let span = |peers: &[Peer], resolved: &mut Resolved| -> Option<PeerSpan> {
            let start = resolved.peers.len();
            for peer in peers {
                if let Some(m) = resolve(peer, resolved)
                    && !resolved.peers[start..].contains(&m)
                {
                    resolved.peers.push(m);
                }
            }
            let count = resolved.peers.len() - start;
            (count > 0).then(|| PeerSpan {
                start: start as u32,
                count: u16::try_from(count).unwrap_or(u16::MAX),
            })
        };
        let mut spans: HashMap<(usize, u32, usize, u32), Option<PeerSpan>> = HashMap::new();
        let mut cache: HashMap<(usize, usize, Vec<u32>), Arc<[RuleRef]>> = HashMap::new();
        let mut expand = |tier: usize, d: Direction, ids: &Vec<u32>| -> Arc<[RuleRef]> {
            if let Some(hit) = cache.get(&(tier, d.idx(), ids.clone())) {
                return hit.clone();
            }
            let mut refs = Vec::new();
            for &id in ids {
                let rules: Vec<(Action, &[Peer], &PortMatch)> = match tier {
                    0 | 1 => {
                        let list = if tier == 0 { &admin } else { &baseline };
                        list[id as usize].rules[d.idx()]
                            .iter()
                            .map(|r| (r.action, r.peers.as_slice(), &r.ports))
                            .collect()
                    }
                    _ => netpols[id as usize].rules[d.idx()]
                        .iter()
                        .flatten()
                        .map(|r| (Action::Accept, r.peers.as_slice(), &r.ports))
                        .collect(),
                };
                for (r, (action, peers, ports)) in rules.into_iter().enumerate() {
                    let key = (tier, id, d.idx(), r as u32);
                    let peers = match spans.get(&key) {
                        Some(s) => *s,
                        None => {
                            let s = span(peers, &mut resolved);
                            spans.insert(key, s);
                            s
                        }
                    };
                    if let Some(peers) = peers {
                        let name = |n: &str| port_names.get(n).copied();
                        rule_refs(id, r as u32, action, peers, ports, name, &mut refs);
                    }
                }
            }
            let refs: Arc<[RuleRef]> = refs.into();
            cache.insert((tier, d.idx(), ids.clone()), refs.clone());
            refs
        };
        let (i, e) = (Direction::Ingress, Direction::Egress);
        let selected: Vec<PodPolicies> = per_pod
            .into_iter()
            .map(|[a, b, n]| PodPolicies {
                admin: [expand(0, i, &a[0]), expand(0, e, &a[1])],
                baseline: [expand(1, i, &b[0]), expand(1, e, &b[1])],
                netpol_rules: [expand(2, i, &n[0]), expand(2, e, &n[1])],
                isolated_by: [n[0].len() as u32, n[1].len() as u32],
            })
            .collect();
        snap.selected = selected;
        snap.peers = resolved.peers;
        snap.pod_sets = resolved.pod_sets;
        snap.node_sets = resolved.node_sets;
        snap.networks = resolved.networks;
        snap.admin = admin;
        snap.baseline = baseline;
        snap.netpols = netpols;
        snap
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
        Writer {
            state: State::default(),
            shared: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            generation: 0,
            dirty: false,
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
