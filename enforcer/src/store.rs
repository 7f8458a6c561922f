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
//! - **Rule entries, one block per pod.** Each pod's policy lists are expanded into 16-byte
//!   [`RuleRef`] entries — one per port entry of each rule, carrying the protocols, port bounds,
//!   action, interned port name and where the rule's peers are — laid out in one block per pod
//!   (six lists: admin, NetworkPolicy and baseline, per direction). A verdict reads the block
//!   sequentially and touches a policy object only to explain its reason, on demand. Pods
//!   selected by the same policies share the block. An entry whose condition equals an earlier
//!   one's in the same list is dropped (the earlier one always decides first), as is a rule whose
//!   peers select nothing.
//! - **Peers resolved to sets.** Every distinct peer of a rule some pod's block refers to is
//!   resolved once per snapshot: pod and node selectors to sorted member lists (small sets) or
//!   bit sets (large ones) in two pools, address blocks to a table. A peer check is then a
//!   membership test, with no label or string comparison.
//! - **Address index.** `IP → pod` for pods that are not host-networked and not finished, and
//!   `IP → node` for node addresses (host-network pods share their node's address and are
//!   reached as the node).
//! - **Pod ranges.** The ranges pod addresses come from: those the writer was given
//!   ([`Writer::with_pod_ranges`], the enforcer's `--pod-cidr`) and every node's
//!   `spec.podCIDRs`, merged. An address in them that the address index does not know is most
//!   likely a pod the watch has not reported yet ([`Snapshot::is_unknown_pod_address`]).
//!
//! A verdict therefore costs two hash lookups plus a scan of the two pods' blocks, with a
//! membership test for each entry whose ports fit the connection. Rebuilding costs O(pods +
//! namespaces + Σ candidates per policy + Σ members per distinct peer + Σ rule entries per
//! distinct policy set), paid by the writer.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The node's pod ranges (`spec.podCIDRs`, or `spec.podCIDR`): addresses its pods get.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeRecord {
    /// Trims a node to its name, labels, IP addresses and pod ranges.
    pub fn from_node(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut pod_cidrs: Vec<IpNet> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
            .filter_map(|c| c.parse::<IpNet>().ok())
            .map(|c| c.trunc())
            .collect();
        pod_cidrs.sort_unstable();
        pod_cidrs.dedup();
        NodeRecord {
            pod_cidrs,
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
    pub name: u16,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One rule of a policy selecting a pod, laid out so that a verdict can test it without
/// touching the policy: port bounds, action and the rule's peers resolved to sets, in 16 bytes.
///
/// A rule with several port entries appears once per entry (consecutively, so evaluation order
/// is unchanged), and a rule with more than 255 peers once per 255 of them; the port pre-check
/// (protocol bit set, `lo <= port <= hi`) is exact for numbers and ranges, and named ports are
/// then checked against the destination pod's ports. Rules whose peers select nothing at all in
/// the snapshot are left out: they cannot match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Index in [`Snapshot::origins`]: the policy and rule this entry comes from.
    pub origin: u32,
    /// First of the rule's peers in [`Snapshot::peers`].
    pub peers: u32,
    /// Lowest destination port.
    pub lo: u16,
    /// Highest destination port.
    pub hi: u16,
    /// 0 for a number or range entry, where passing [`may_match`](RuleRef::may_match) proves
    /// the ports match; [`PORT_NAME_UNINTERNED`] for a named port whose name did not fit the
    /// interning table (compared as a string on the rule); otherwise the interned name, which
    /// must also be a [`PodEntry::named_ports`] entry of the destination pod with the
    /// connection's port and protocol.
    pub port_name: u16,
    /// How many peers the entry has in [`Snapshot::peers`] (any of them may match).
    pub peer_count: u8,
    /// Protocol bits ([`protocol_bit`]) in bits 0–2, the action in bits 3–4.
    flags: u8,
}

/// [`RuleRef::port_name`] of a named port compared as a string (more than 65,534 distinct port
/// names in one snapshot).
pub const PORT_NAME_UNINTERNED: u16 = u16::MAX;

/// Where a [`RuleRef`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index of the policy in its tier's list ([`Snapshot::admin`], [`Snapshot::baseline`] or
    /// [`Snapshot::netpols`]).
    pub policy: u32,
    /// Index of the rule in the policy's list for the direction.
    pub rule: u32,
}

impl RuleRef {
    /// Whether a connection with this protocol and destination port may match the rule.
    #[inline]
    pub fn may_match(&self, protocol: Protocol, port: u16) -> bool {
        self.flags & protocol_bit(protocol) != 0 && self.lo <= port && port <= self.hi
    }

    /// Bit set of the protocols the entry applies to.
    pub fn protocols(&self) -> u8 {
        self.flags & 7
    }

    /// The rule's action (admin and baseline tiers; `Accept` for NetworkPolicy rules).
    #[inline]
    pub fn action(&self) -> Action {
        match self.flags >> 3 {
            0 => Action::Accept,
            1 => Action::Deny,
            _ => Action::Pass,
        }
    }
}

fn flags(protocols: u8, action: Action) -> u8 {
    let action = match action {
        Action::Accept => 0,
        Action::Deny => 1,
        Action::Pass => 2,
    };
    protocols | action << 3
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
    count: u32,
}

/// Appends the rule's entries; `port_name` interns a named port's name (`None`: no pod has a
/// port of that name, so the entry can never match and is left out).
fn rule_refs(
    origin: u32,
    action: Action,
    peers: PeerSpan,
    ports: &PortMatch,
    port_name: impl Fn(&str) -> Option<u16>,
    out: &mut Vec<RuleRef>,
) {
    const ALL: u8 = 7;
    let mut push = |protocols, lo, hi, port_name| {
        let end = peers.start + peers.count;
        for start in (peers.start..end).step_by(usize::from(u8::MAX)) {
            out.push(RuleRef {
                origin,
                peers: start,
                lo,
                hi,
                port_name,
                peer_count: (end - start).min(u32::from(u8::MAX)) as u8,
                flags: flags(protocols, action),
            })
        }
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

/// A rule's peer, resolved against the snapshot's pods and nodes. Member lists and bit sets
/// live in two pools of the snapshot ([`Snapshot::members`], [`Snapshot::bits`]), so the sets
/// a verdict consults sit close together in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerMatch {
    /// Any address.
    All,
    /// Pods whose indexes are `members[start..start + len]` (sorted).
    Pods {
        /// First member.
        start: u32,
        /// Number of members.
        len: u32,
    },
    /// Pods whose bits are set in `bits[start..]` (one bit per pod of the snapshot).
    PodBits {
        /// First word.
        start: u32,
    },
    /// Nodes whose indexes are `members[start..start + len]` (sorted).
    Nodes {
        /// First member.
        start: u32,
        /// Number of members.
        len: u32,
    },
    /// Nodes whose bits are set in `bits[start..]` (one bit per node of the snapshot).
    NodeBits {
        /// First word.
        start: u32,
    },
    /// Addresses in the block [`Snapshot::networks`]`[i]`.
    Network(u32),
}

/// Whether `id` is among the sorted `members[start..start + len]`.
#[inline]
pub fn in_members(members: &[u32], start: u32, len: u32, id: u32) -> bool {
    let list = &members[start as usize..][..len as usize];
    if list.len() <= 8 {
        list.contains(&id)
    } else {
        list.binary_search(&id).is_ok()
    }
}

/// Whether bit `id` is set in the bit set starting at `bits[start]`.
#[inline]
pub fn in_bits(bits: &[u64], start: u32, id: u32) -> bool {
    bits.get(start as usize + id as usize / 64)
        .is_some_and(|w| w & (1 << (id % 64)) != 0)
}

/// Stores a set of sorted, distinct ids below `universe` in whichever form is smaller: a member
/// list (`true`, start, length) or a bit set (`false`, start of its words).
fn store_set(
    ids: &[u32],
    universe: usize,
    members: &mut Vec<u32>,
    bits: &mut Vec<u64>,
) -> (bool, u32, u32) {
    if ids.len() * 32 <= universe {
        let start = members.len() as u32;
        members.extend_from_slice(ids);
        return (true, start, ids.len() as u32);
    }
    let start = bits.len();
    bits.resize(start + universe.div_ceil(64), 0);
    for &id in ids {
        bits[start + id as usize / 64] |= 1 << (id % 64);
    }
    (false, start as u32, 0)
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

/// The rules that apply to one pod, in evaluation order, laid out in one block so a verdict reads
/// them sequentially: ingress admin, ingress NetworkPolicy, ingress baseline, then the same for
/// egress. Pods selected by the same policies share the block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicies {
    rules: Arc<[RuleRef]>,
    /// End of each of the six lists in `rules`.
    ends: [u32; 6],
    /// How many NetworkPolicies isolate the pod per direction (`[ingress, egress]`); non-zero
    /// means NetworkPolicy decides.
    pub isolated_by: [u32; 2],
}

impl PodPolicies {
    fn list(&self, slot: usize) -> &[RuleRef] {
        let start = if slot == 0 { 0 } else { self.ends[slot - 1] };
        &self.rules[start as usize..self.ends[slot] as usize]
    }

    /// Admin-tier rules for a direction (policies in [`Snapshot::admin`]).
    pub fn admin(&self, d: Direction) -> &[RuleRef] {
        self.list(d.idx() * 3)
    }

    /// Rules of the NetworkPolicies isolating the pod in a direction (policies in
    /// [`Snapshot::netpols`]).
    pub fn netpol_rules(&self, d: Direction) -> &[RuleRef] {
        self.list(d.idx() * 3 + 1)
    }

    /// Baseline-tier rules for a direction (policies in [`Snapshot::baseline`]).
    pub fn baseline(&self, d: Direction) -> &[RuleRef] {
        self.list(d.idx() * 3 + 2)
    }
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
    /// Where each [`RuleRef`] comes from ([`RuleRef::origin`]).
    pub origins: Vec<Origin>,
    /// The peers of every rule some pod's lists refer to ([`RuleRef::peers`]).
    pub peers: Vec<PeerMatch>,
    /// Member lists of the pod and node sets ([`PeerMatch::Pods`], [`PeerMatch::Nodes`]).
    pub members: Vec<u32>,
    /// Words of the bit sets ([`PeerMatch::PodBits`], [`PeerMatch::NodeBits`]).
    pub bits: Vec<u64>,
    /// Address blocks that [`PeerMatch::Network`] refers to.
    pub networks: Vec<Network>,
    by_ip: HashMap<IpAddr, Endpoint>,
    /// Pod ranges, merged (few entries: one per contiguous block).
    pod_ranges: Vec<IpNet>,
    ns_by_name: HashMap<Arc<str>, u32>,
    pod_by_name: HashMap<(Arc<str>, Arc<str>), u32>,
}

impl Snapshot {
    /// Where an address leads, if it is a pod's or a node's.
    pub fn endpoint(&self, ip: IpAddr) -> Option<Endpoint> {
        self.by_ip.get(&ip).copied()
    }

    /// The ranges pod addresses come from, merged: the writer's own ([`Writer::with_pod_ranges`])
    /// and every node's `spec.podCIDRs`.
    pub fn pod_ranges(&self) -> &[IpNet] {
        &self.pod_ranges
    }

    /// Whether `ip` lies in a pod range but is no known pod's or node's address: usually a pod
    /// created a moment ago whose address the watch has not delivered yet (or a finished pod's
    /// address handed to a new pod). Nothing about such an address is known — its namespace,
    /// labels, or the policies that select it.
    pub fn is_unknown_pod_address(&self, ip: IpAddr) -> bool {
        !self.by_ip.contains_key(&ip) && self.in_pod_range(ip)
    }

    /// Whether `ip` lies in a pod range.
    #[inline]
    pub fn in_pod_range(&self, ip: IpAddr) -> bool {
        self.pod_ranges.iter().any(|r| r.contains(&ip))
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

/// A rule while a snapshot is built: tier slot, policy index, direction index, rule index.
type RuleKey = (usize, u32, usize, u32);

/// Peers resolved while a snapshot is built.
#[derive(Default)]
struct Resolved {
    by_peer: HashMap<Peer, Option<PeerMatch>>,
    spans: HashMap<Vec<PeerMatch>, PeerSpan>,
    peers: Vec<PeerMatch>,
    members: Vec<u32>,
    bits: Vec<u64>,
    networks: Vec<Network>,
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
        let mut port_names: HashMap<Box<str>, u16> = HashMap::new();
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
                    let id = match port_names.get(name) {
                        Some(id) => *id,
                        None => {
                            let next = port_names.len() + 1;
                            let id = u16::try_from(next)
                                .ok()
                                .filter(|id| *id != PORT_NAME_UNINTERNED)?;
                            port_names.insert(name.into(), id);
                            id
                        }
                    };
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
        let ranges: Vec<IpNet> = self
            .pod_ranges
            .iter()
            .chain(self.nodes.values().flat_map(|n| &n.pod_cidrs))
            .map(IpNet::trunc)
            .collect();
        snap.pod_ranges = IpNet::aggregate(&ranges);

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
                        let r = &mut *resolved;
                        match store_set(&ids, snap.nodes.len(), &mut r.members, &mut r.bits) {
                            (true, start, len) => PeerMatch::Nodes { start, len },
                            (false, start, _) => PeerMatch::NodeBits { start },
                        }
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
                        let r = &mut *resolved;
                        match store_set(&ids, snap.pods.len(), &mut r.members, &mut r.bits) {
                            (true, start, len) => PeerMatch::Pods { start, len },
                            (false, start, _) => PeerMatch::PodBits { start },
                        }
                    })
                }
            };
            resolved.by_peer.insert(peer.clone(), found);
            found
        };
        // A rule's peer list: `None` when no peer can match anything.
        // Equal lists (after resolving, sorting and dropping duplicates) share one span, so two
        // rules with the same peers carry the same span.
        let span = |peers: &[Peer], resolved: &mut Resolved| -> Option<PeerSpan> {
            let mut list: Vec<PeerMatch> =
                peers.iter().filter_map(|p| resolve(p, resolved)).collect();
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                return None;
            }
            if let Some(hit) = resolved.spans.get(&list) {
                return Some(*hit);
            }
            let found = PeerSpan {
                start: resolved.peers.len() as u32,
                count: list.len() as u32,
            };
            resolved.peers.extend_from_slice(&list);
            resolved.spans.insert(list, found);
            Some(found)
        };
        // (tier, policy, direction, rule) → its peer span and origin.
        let mut spans: HashMap<RuleKey, (Option<PeerSpan>, u32)> = HashMap::new();
        let mut origins: Vec<Origin> = Vec::new();
        let names_full = port_names.len() >= usize::from(PORT_NAME_UNINTERNED - 1);
        // A name no pod carries cannot match (`None`), unless the table overflowed.
        let name = |n: &str| {
            port_names
                .get(n)
                .copied()
                .or(names_full.then_some(PORT_NAME_UNINTERNED))
        };
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
                    let (peers, origin) = *spans.entry(key).or_insert_with(|| {
                        origins.push(Origin {
                            policy: id,
                            rule: r as u32,
                        });
                        (span(peers, &mut resolved), origins.len() as u32 - 1)
                    });
                    if let Some(peers) = peers {
                        rule_refs(origin, action, peers, ports, name, &mut refs);
                    }
                }
            }
            // An entry whose condition (peers, protocols, ports) equals an earlier one's can never
            // decide: whenever it would match, the earlier one matched first and decided or
            // passed. Dropping it keeps every verdict and reason.
            let mut seen = HashSet::new();
            refs.retain(|r| {
                seen.insert((
                    r.peers,
                    r.peer_count,
                    r.protocols(),
                    r.lo,
                    r.hi,
                    r.port_name,
                ))
            });
            let refs: Arc<[RuleRef]> = refs.into();
            cache.insert((tier, d.idx(), ids.clone()), refs.clone());
            refs
        };
        let (i, e) = (Direction::Ingress, Direction::Egress);
        let mut blocks: HashMap<([usize; 6], [u32; 2]), PodPolicies> = HashMap::new();
        let selected: Vec<PodPolicies> = per_pod
            .into_iter()
            .map(|[a, b, n]| {
                let lists = [
                    expand(0, i, &a[0]),
                    expand(2, i, &n[0]),
                    expand(1, i, &b[0]),
                    expand(0, e, &a[1]),
                    expand(2, e, &n[1]),
                    expand(1, e, &b[1]),
                ];
                let isolated_by = [n[0].len() as u32, n[1].len() as u32];
                // Lists are shared by content, so equal pointers mean equal lists.
                let key = (lists.each_ref().map(|l| l.as_ptr() as usize), isolated_by);
                let block = blocks.entry(key).or_insert_with(|| {
                    let mut rules = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
                    let mut ends = [0u32; 6];
                    for (end, list) in ends.iter_mut().zip(&lists) {
                        rules.extend_from_slice(list);
                        *end = rules.len() as u32;
                    }
                    PodPolicies {
                        rules: rules.into(),
                        ends,
                        isolated_by,
                    }
                });
                block.clone()
            })
            .collect();
        snap.selected = selected;
        snap.origins = origins;
        snap.peers = resolved.peers;
        snap.members = resolved.members;
        snap.bits = resolved.bits;
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
