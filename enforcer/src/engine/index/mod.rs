//! The verdict index: an immutable [`Snapshot`] of the cluster and its policies, laid out so that
//! [`decide`](super::decide) answers with a few lookups, and the phases that build it.
//!
//! The store's writer holds trimmed records ([`PodRecord`], [`NodeRecord`]) and compiled
//! policies ([`super::policy`]) and hands them over as [`Sources`]; [`Snapshot::build`] runs the
//! phases in order, each in its own module:
//!
//! 1. `address`: namespaces, pods and nodes placed in the snapshot, the address index and
//!    the pod ranges;
//! 2. `subjects`: label indexes, and the policies that select each pod, per tier and direction;
//! 3. `blocks`: each pod's policy lists expanded into one block of [`RuleRef`] entries,
//!    resolving every rule's peers to sets (`peers`) on the way.
//!
//! This module only reads the engine's own types: nothing here knows about the writer.
//!
//! # Layout
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
//!   ([`Sources::pod_ranges`], the enforcer's `--pod-cidr`) and every node's
//!   `spec.podCIDRs`, merged. An address in them that the address index does not know is most
//!   likely a pod the watch has not reported yet ([`Snapshot::is_unknown_pod_address`]).
//!
//! A verdict therefore costs two hash lookups plus a scan of the two pods' blocks, with a
//! membership test for each entry whose ports fit the connection. Rebuilding costs O(pods +
//! namespaces + Σ candidates per policy + Σ members per distinct peer + Σ rule entries per
//! distinct policy set), paid by the writer.

mod address;
mod blocks;
mod peers;
mod records;
mod rules;
mod subjects;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::policy::{ClusterPolicy, Direction, Netpol};
use super::selector::Labels;
use crate::flow::Protocol;

pub use peers::{Network, PeerMatch, in_bits, in_members};
pub use records::{NodeRecord, PodRecord};
pub use rules::{PORT_NAME_UNINTERNED, RuleRef, protocol_bit};

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

/// Where a [`RuleRef`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index of the policy in its tier's list ([`Snapshot::admin`], [`Snapshot::baseline`] or
    /// [`Snapshot::netpols`]).
    pub policy: u32,
    /// Index of the rule in the policy's list for the direction.
    pub rule: u32,
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

    /// The ranges pod addresses come from, merged: the writer's own ([`Sources::pod_ranges`],
    /// the enforcer's `--pod-cidr`) and every node's `spec.podCIDRs`.
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
}

/// What a snapshot is built from: the writer's records and compiled policies. Each list is in
/// the writer's order (by key); the order of pods, namespaces and nodes becomes their index in
/// the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Pod ranges given to the writer (the nodes' own `spec.podCIDRs` are added).
    pub pod_ranges: &'a [IpNet],
    /// Namespaces the writer has seen, with their labels.
    pub namespaces: &'a [(&'a str, &'a Labels)],
    /// Pods.
    pub pods: &'a [&'a Arc<PodRecord>],
    /// Nodes.
    pub nodes: &'a [&'a Arc<NodeRecord>],
    /// NetworkPolicies.
    pub netpols: &'a [Arc<Netpol>],
    /// Admin and baseline policies of every kind (ANP, BANP, CNP), in any order.
    pub cluster_policies: &'a [Arc<ClusterPolicy>],
}

impl Snapshot {
    /// Builds the snapshot numbered `generation` from the writer's records and policies.
    pub fn build(sources: Sources<'_>, generation: u64) -> Snapshot {
        let placed = address::place(sources, generation);
        let (admin, baseline) = subjects::tiers(sources.cluster_policies);
        let netpols = sources.netpols.to_vec();
        let (selected, resolved, origins) = {
            let subjects = subjects::Subjects::new(&placed.snap, &placed.ns_pods);
            let per_pod = subjects.per_pod(&admin, &baseline, &netpols);
            let mut blocks =
                blocks::Blocks::new(&subjects, &admin, &baseline, &netpols, &placed.port_names);
            let selected = blocks.per_pod(per_pod);
            let (resolved, origins) = blocks.finish();
            (selected, resolved, origins)
        };
        let mut snap = placed.snap;
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
