//! Phase 2: label indexes, and the policies that select each pod, per tier and direction.

use std::collections::HashMap;
use std::sync::Arc;

use super::Snapshot;
use crate::engine::policy::{ClusterPolicy, ClusterTier, Direction, Netpol};
use crate::engine::selector::Selector;

/// Per pod: the indexes of the policies selecting it, `[tier][direction]`, tiers admin (0),
/// baseline (1) and NetworkPolicy (2); each list in evaluation order.
pub(super) type PerPod = [[Vec<u32>; 2]; 3];

/// Splits the cluster-scoped policies into the admin and baseline tiers, each in evaluation
/// order.
pub(super) fn tiers(
    policies: &[Arc<ClusterPolicy>],
) -> (Vec<Arc<ClusterPolicy>>, Vec<Arc<ClusterPolicy>>) {
    let mut admin: Vec<Arc<ClusterPolicy>> = Vec::new();
    let mut baseline: Vec<Arc<ClusterPolicy>> = Vec::new();
    for p in policies {
        match p.tier {
            ClusterTier::Admin => admin.push(p.clone()),
            ClusterTier::Baseline => baseline.push(p.clone()),
        }
    }
    admin.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    baseline.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    (admin, baseline)
}

/// Label indexes over a placed snapshot, to resolve selectors to pods without visiting every
/// namespace or pod.
pub(super) struct Subjects<'s> {
    /// The snapshot (namespaces, pods and nodes placed).
    pub(super) snap: &'s Snapshot,
    /// Per namespace, the pods that selectors can match.
    ns_pods: &'s [Vec<u32>],
    ns_by_label: HashMap<(&'s str, &'s str), Vec<u32>>,
    pods_by_label: Vec<HashMap<(&'s str, &'s str), Vec<u32>>>,
    all_ns: Vec<u32>,
}

impl<'s> Subjects<'s> {
    /// Indexes namespaces and (per namespace) pods by each `label=value` they carry.
    pub(super) fn new(snap: &'s Snapshot, ns_pods: &'s [Vec<u32>]) -> Self {
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
        Subjects {
            snap,
            ns_pods,
            ns_by_label,
            pods_by_label,
            all_ns: (0..snap.namespaces.len() as u32).collect(),
        }
    }

    /// Puts into `out` the pods matching `pod_sel` (every pod when `None`) in the namespaces
    /// matching `ns_sel`, or only in namespace `ns_filter` when given; by namespace, then pod.
    pub(super) fn select(
        &self,
        ns_sel: &Selector,
        pod_sel: Option<&Selector>,
        ns_filter: Option<u32>,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let namespaces: &[u32] = match (ns_filter, ns_sel.index_key()) {
            (Some(_), _) => &[],
            (None, Some(k)) => self.ns_by_label.get(&k).map(Vec::as_slice).unwrap_or(&[]),
            (None, None) => &self.all_ns,
        };
        let one = ns_filter.map(|n| [n]);
        let namespaces = one.as_ref().map(|o| &o[..]).unwrap_or(namespaces);
        for &ns in namespaces {
            if ns_filter.is_none() && !ns_sel.matches(&self.snap.namespaces[ns as usize].labels) {
                continue;
            }
            let candidates: &[u32] = match pod_sel.and_then(Selector::index_key) {
                Some(k) => self.pods_by_label[ns as usize]
                    .get(&k)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
                None => &self.ns_pods[ns as usize],
            };
            for &p in candidates {
                if pod_sel.is_none_or(|s| s.matches(&self.snap.pods[p as usize].record.labels)) {
                    out.push(p);
                }
            }
        }
    }

    /// Per pod (parallel to the snapshot's pods): the policies selecting it that have rules
    /// (admin, baseline) or policy types (NetworkPolicy) for each direction.
    pub(super) fn per_pod(
        &self,
        admin: &[Arc<ClusterPolicy>],
        baseline: &[Arc<ClusterPolicy>],
        netpols: &[Arc<Netpol>],
    ) -> Vec<PerPod> {
        let mut per_pod: Vec<PerPod> = vec![Default::default(); self.snap.pods.len()];
        let mut scratch = Vec::new();
        for (tier, list) in [(0usize, admin), (1, baseline)] {
            for (i, p) in list.iter().enumerate() {
                self.select(p.subject.namespaces(), p.subject.pods(), None, &mut scratch);
                for &pod in &scratch {
                    for d in [Direction::Ingress, Direction::Egress] {
                        if !p.rules[d.idx()].is_empty() {
                            per_pod[pod as usize][tier][d.idx()].push(i as u32);
                        }
                    }
                }
            }
        }
        for (i, np) in netpols.iter().enumerate() {
            let Some(&ns) = self.snap.ns_by_name.get(&np.namespace) else {
                continue;
            };
            self.select(
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
        per_pod
    }
}
