//! Phase 3: each pod's policy lists expanded into one block of [`RuleRef`] entries, resolving the
//! peers of every rule reached on the way; pods with the same lists share lists and blocks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::peers::Resolved;
use super::rules::{PeerSpan, rule_refs};
use super::subjects::{PerPod, Subjects};
use super::{Origin, PORT_NAME_UNINTERNED, PodPolicies, RuleRef};
use crate::engine::policy::{Action, ClusterPolicy, Direction, Netpol, Peer, PortMatch};

/// A rule while a snapshot is built: tier slot, policy index, direction index, rule index.
type RuleKey = (usize, u32, usize, u32);

/// The expansion of policy lists into rule lists, with what it has resolved and laid out so far.
pub(super) struct Blocks<'a> {
    subjects: &'a Subjects<'a>,
    admin: &'a [Arc<ClusterPolicy>],
    baseline: &'a [Arc<ClusterPolicy>],
    netpols: &'a [Arc<Netpol>],
    port_names: &'a HashMap<Box<str>, u16>,
    /// The interning table overflowed: a name not in it may still be some pod's.
    names_full: bool,
    resolved: Resolved,
    /// Each rule reached: its peer span and origin.
    spans: HashMap<RuleKey, (Option<PeerSpan>, u32)>,
    origins: Vec<Origin>,
    /// Rule lists by (tier, direction, policy list), so equal lists are one allocation.
    cache: HashMap<(usize, usize, Vec<u32>), Arc<[RuleRef]>>,
}

impl<'a> Blocks<'a> {
    /// Nothing expanded yet.
    pub(super) fn new(
        subjects: &'a Subjects<'a>,
        admin: &'a [Arc<ClusterPolicy>],
        baseline: &'a [Arc<ClusterPolicy>],
        netpols: &'a [Arc<Netpol>],
        port_names: &'a HashMap<Box<str>, u16>,
    ) -> Self {
        Blocks {
            subjects,
            admin,
            baseline,
            netpols,
            port_names,
            names_full: port_names.len() >= usize::from(PORT_NAME_UNINTERNED - 1),
            resolved: Resolved::default(),
            spans: HashMap::new(),
            origins: Vec::new(),
            cache: HashMap::new(),
        }
    }

    /// Each pod's block (parallel to `per_pod`): its six lists laid end to end, shared between
    /// pods whose lists are the same.
    pub(super) fn per_pod(&mut self, per_pod: Vec<PerPod>) -> Vec<PodPolicies> {
        let (i, e) = (Direction::Ingress, Direction::Egress);
        let mut blocks: HashMap<([usize; 6], [u32; 2]), PodPolicies> = HashMap::new();
        per_pod
            .into_iter()
            .map(|[a, b, n]| {
                let lists = [
                    self.expand(0, i, &a[0]),
                    self.expand(2, i, &n[0]),
                    self.expand(1, i, &b[0]),
                    self.expand(0, e, &a[1]),
                    self.expand(2, e, &n[1]),
                    self.expand(1, e, &b[1]),
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
            .collect()
    }

    /// The resolved peers and the origins of every entry.
    pub(super) fn finish(self) -> (Resolved, Vec<Origin>) {
        (self.resolved, self.origins)
    }

    /// The rules of the policies `ids` of one tier (0 admin, 1 baseline, 2 NetworkPolicy) for a
    /// direction, in order, as entries.
    fn expand(&mut self, tier: usize, d: Direction, ids: &[u32]) -> Arc<[RuleRef]> {
        if let Some(hit) = self.cache.get(&(tier, d.idx(), ids.to_vec())) {
            return hit.clone();
        }
        let (admin, baseline, netpols) = (self.admin, self.baseline, self.netpols);
        let (port_names, names_full) = (self.port_names, self.names_full);
        // A name no pod carries cannot match (`None`), unless the table overflowed.
        let name = |n: &str| {
            port_names
                .get(n)
                .copied()
                .or(names_full.then_some(PORT_NAME_UNINTERNED))
        };
        let mut refs = Vec::new();
        for &id in ids {
            let rules: Vec<(Action, &[Peer], &PortMatch)> = match tier {
                0 | 1 => {
                    let list = if tier == 0 { admin } else { baseline };
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
                let (peers, origin) = *self.spans.entry(key).or_insert_with(|| {
                    self.origins.push(Origin {
                        policy: id,
                        rule: r as u32,
                    });
                    (
                        self.resolved.span(peers, self.subjects),
                        self.origins.len() as u32 - 1,
                    )
                });
                if let Some(peers) = peers {
                    rule_refs(origin, action, peers, ports, name, &mut refs);
                }
            }
        }
        // An entry whose condition (peers, protocols, ports) equals an earlier one's can never
        // decide: whenever it would match, the earlier one matched first and decided or passed.
        // Dropping it keeps every verdict and reason.
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
        self.cache
            .insert((tier, d.idx(), ids.to_vec()), refs.clone());
        refs
    }
}
