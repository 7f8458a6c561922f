//! Peers resolved to sets: member lists, bit sets and address blocks, built once per snapshot.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::engine::policy::{NamespaceMatch, Peer};
use crate::engine::selector::Selector;

use super::rules::PeerSpan;
use super::subjects::Subjects;

#[cfg(doc)]
use super::Snapshot;

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

/// Peers resolved while a snapshot is built: each distinct peer once, each distinct peer list
/// once; what ends up in the snapshot's `peers`, `members`, `bits` and `networks`.
#[derive(Default)]
pub(super) struct Resolved {
    by_peer: HashMap<Peer, Option<PeerMatch>>,
    spans: HashMap<Vec<PeerMatch>, PeerSpan>,
    pub(super) peers: Vec<PeerMatch>,
    pub(super) members: Vec<u32>,
    pub(super) bits: Vec<u64>,
    pub(super) networks: Vec<Network>,
}

impl Resolved {
    /// A peer as a set of pods, nodes or addresses; `None` when it matches nothing.
    fn resolve(&mut self, peer: &Peer, subjects: &Subjects<'_>) -> Option<PeerMatch> {
        if let Some(hit) = self.by_peer.get(peer) {
            return *hit;
        }
        let snap = subjects.snap;
        let found = match peer {
            Peer::All => Some(PeerMatch::All),
            Peer::Nothing => None,
            Peer::Network { cidr, except } => {
                self.networks.push(Network {
                    cidr: *cidr,
                    except: except.clone().into_boxed_slice(),
                });
                Some(PeerMatch::Network(self.networks.len() as u32 - 1))
            }
            Peer::Nodes(sel) => {
                let ids: Vec<u32> = (0..snap.nodes.len() as u32)
                    .filter(|n| sel.matches(&snap.nodes[*n as usize].labels))
                    .collect();
                (!ids.is_empty()).then(|| {
                    match store_set(&ids, snap.nodes.len(), &mut self.members, &mut self.bits) {
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
                            subjects.select(
                                &Selector::everything(),
                                Some(pods),
                                Some(ns),
                                &mut ids,
                            );
                        }
                    }
                    NamespaceMatch::Selector(sel) => {
                        subjects.select(sel, Some(pods), None, &mut ids);
                    }
                }
                ids.sort_unstable();
                (!ids.is_empty()).then(|| {
                    match store_set(&ids, snap.pods.len(), &mut self.members, &mut self.bits) {
                        (true, start, len) => PeerMatch::Pods { start, len },
                        (false, start, _) => PeerMatch::PodBits { start },
                    }
                })
            }
        };
        self.by_peer.insert(peer.clone(), found);
        found
    }

    /// A rule's peer list: `None` when no peer can match anything. Equal lists (after
    /// resolving, sorting and dropping duplicates) share one span, so two rules with the same
    /// peers carry the same span.
    pub(super) fn span(&mut self, peers: &[Peer], subjects: &Subjects<'_>) -> Option<PeerSpan> {
        let mut list: Vec<PeerMatch> = peers
            .iter()
            .filter_map(|p| self.resolve(p, subjects))
            .collect();
        list.sort_unstable();
        list.dedup();
        if list.is_empty() {
            return None;
        }
        if let Some(hit) = self.spans.get(&list) {
            return Some(*hit);
        }
        let found = PeerSpan {
            start: self.peers.len() as u32,
            count: list.len() as u32,
        };
        self.peers.extend_from_slice(&list);
        self.spans.insert(list, found);
        Some(found)
    }
}
