//! The policy brain: a pure function from a [`Snapshot`] and a [`Flow`] to a [`Decision`].
//!
//! # Semantics
//!
//! Each direction is judged on its own, and both must accept:
//! - **egress** for the source, when the source address is a (non-host-network) pod;
//! - **ingress** for the destination, when the destination address is such a pod.
//!
//! For one direction and its subject pod, tiers are consulted in this order:
//! 1. **Admin** (AdminNetworkPolicy and ClusterNetworkPolicy `tier: Admin`, by priority then
//!    name): the first rule whose peers and ports match decides; `Accept`/`Allow` and `Deny` are
//!    final, `Pass` skips the rest of the admin tier.
//! 2. **NetworkPolicy**: if any NetworkPolicy whose `policyTypes` include the direction selects
//!    the pod, the pod is isolated in that direction and the connection is accepted iff some rule
//!    of those policies matches; otherwise this tier says nothing. (A pod isolated only for
//!    ingress still reaches the baseline for egress.)
//! 3. **Baseline** (BaselineAdminNetworkPolicy and ClusterNetworkPolicy `tier: Baseline`, by
//!    priority then name; BANP sorts at priority [`policy::BANP_PRIORITY`]): first matching rule;
//!    `Pass` skips the rest of the tier.
//! 4. **Default**: accept.
//!
//! Peers: `namespaces`/`pods`/NetworkPolicy selectors match only non-host-network pods; `nodes`
//! matches node addresses (a host-network pod is reached at its node's address); `networks` and
//! `ipBlock` match any address, pods' and nodes' included. An address that is neither a pod nor
//! a node matches only address peers. Named ports resolve on the destination pod: a container
//! port with that name whose number and protocol equal the connection's. `domainNames` peers are
//! not implemented and match nothing, so an `Accept` rule using them accepts nothing.

pub mod policy;
pub mod selector;

use std::fmt;
use std::net::IpAddr;

use crate::flow::Flow;
use crate::store::{Endpoint, PodEntry, RuleRef, Snapshot};
use policy::{Action, ClusterPolicy, ContainerPort, Direction, NamespaceMatch, Peer, PolicyRef};

/// Accept or drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the connection through.
    Accept,
    /// Drop it silently.
    Drop,
}

/// The tier that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// An admin-tier rule (ANP, CNP Admin).
    Admin,
    /// NetworkPolicy isolation.
    NetworkPolicy,
    /// A baseline-tier rule (BANP, CNP Baseline).
    Baseline,
    /// No policy decided; the default is to accept.
    Default,
}

/// Why a connection got its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An admin or baseline rule matched.
    Rule {
        /// Direction judged.
        direction: Direction,
        /// The policy.
        policy: PolicyRef,
        /// Rule name (or `#index`).
        rule: std::sync::Arc<str>,
        /// Its action.
        action: Action,
    },
    /// A NetworkPolicy rule allowed the connection to or from an isolated pod.
    NetworkPolicyAllowed {
        /// Direction judged.
        direction: Direction,
        /// The policy.
        policy: PolicyRef,
        /// Index of the matching rule in the policy's ingress or egress list.
        rule: usize,
    },
    /// The pod is isolated in this direction and no NetworkPolicy rule allowed the connection.
    NetworkPolicyIsolated {
        /// Direction judged.
        direction: Direction,
        /// How many NetworkPolicies isolate the pod in this direction.
        policies: usize,
    },
    /// Nothing matched in any tier, for every direction judged.
    NoMatch,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule {
                direction,
                policy,
                rule,
                action,
            } => {
                write!(
                    f,
                    "{} rule {rule:?} ({}) of {policy}",
                    direction.as_str(),
                    action.as_str()
                )
            }
            Reason::NetworkPolicyAllowed {
                direction,
                policy,
                rule,
            } => {
                write!(f, "{} rule #{rule} of {policy} allows", direction.as_str())
            }
            Reason::NetworkPolicyIsolated {
                direction,
                policies,
            } => {
                write!(
                    f,
                    "{} isolated by {policies} NetworkPolicy(ies), no rule allows",
                    direction.as_str()
                )
            }
            Reason::NoMatch => f.write_str("no policy applies (default allow)"),
        }
    }
}

/// The verdict on one connection, with the tier and reason that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Accept or drop.
    pub verdict: Verdict,
    /// The tier that decided.
    pub tier: Tier,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    fn default_allow() -> Self {
        Decision {
            verdict: Verdict::Accept,
            tier: Tier::Default,
            reason: Reason::NoMatch,
        }
    }
}

/// The other end of the connection, as resolved in the snapshot.
#[derive(Clone, Copy)]
struct PeerView<'a> {
    ip: IpAddr,
    endpoint: Option<Endpoint>,
    pod: Option<&'a PodEntry>,
}

/// Judges one connection (its first packet, after DNAT).
pub fn decide(snapshot: &Snapshot, flow: &Flow) -> Decision {
    let view = |ip: IpAddr| {
        let endpoint = snapshot.endpoint(ip);
        let pod = match endpoint {
            Some(Endpoint::Pod(i)) => Some(&snapshot.pods[i as usize]),
            _ => None,
        };
        PeerView { ip, endpoint, pod }
    };
    let src = view(flow.src);
    let dst = view(flow.dst);
    let dst_ports: &[ContainerPort] = dst.pod.map(|p| p.record.ports.as_slice()).unwrap_or(&[]);

    let egress = match src.endpoint {
        Some(Endpoint::Pod(i)) => Some(judge(snapshot, Direction::Egress, i, dst, flow, dst_ports)),
        _ => None,
    };
    if let Some(d) = &egress
        && d.verdict == Verdict::Drop
    {
        return d.clone();
    }
    let ingress = match dst.endpoint {
        Some(Endpoint::Pod(i)) => {
            Some(judge(snapshot, Direction::Ingress, i, src, flow, dst_ports))
        }
        _ => None,
    };
    match (egress, ingress) {
        (_, Some(i)) if i.verdict == Verdict::Drop || i.tier != Tier::Default => i,
        (Some(e), _) => e,
        (None, Some(i)) => i,
        (None, None) => Decision::default_allow(),
    }
}

fn judge(
    snap: &Snapshot,
    direction: Direction,
    subject: u32,
    peer: PeerView<'_>,
    flow: &Flow,
    dst_ports: &[ContainerPort],
) -> Decision {
    let d = direction.idx();
    let selected = &snap.selected[subject as usize];

    if let Some(decision) = cluster_tier(
        snap,
        &snap.admin,
        &selected.admin[d],
        Tier::Admin,
        direction,
        peer,
        flow,
        dst_ports,
    ) {
        return decision;
    }

    if selected.isolated_by[d] > 0 {
        for r in selected.netpol_rules[d].iter() {
            if !r.may_match(flow.protocol, flow.dst_port) {
                continue;
            }
            let np = &snap.netpols[r.policy as usize];
            let rule = &np.rules[d].as_deref().unwrap_or_default()[r.rule as usize];
            if (r.exact || rule.ports.matches(flow, dst_ports))
                && rule.peers.iter().any(|p| peer_matches(snap, p, peer))
            {
                return Decision {
                    verdict: Verdict::Accept,
                    tier: Tier::NetworkPolicy,
                    reason: Reason::NetworkPolicyAllowed {
                        direction,
                        policy: np.id.clone(),
                        rule: r.rule as usize,
                    },
                };
            }
        }
        return Decision {
            verdict: Verdict::Drop,
            tier: Tier::NetworkPolicy,
            reason: Reason::NetworkPolicyIsolated {
                direction,
                policies: selected.isolated_by[d] as usize,
            },
        };
    }

    cluster_tier(
        snap,
        &snap.baseline,
        &selected.baseline[d],
        Tier::Baseline,
        direction,
        peer,
        flow,
        dst_ports,
    )
    .unwrap_or_else(Decision::default_allow)
}

/// Walks one tier's rules for the subject; `None` when nothing matched or a rule passed.
#[allow(clippy::too_many_arguments)]
fn cluster_tier(
    snap: &Snapshot,
    policies: &[std::sync::Arc<ClusterPolicy>],
    refs: &[RuleRef],
    tier: Tier,
    direction: Direction,
    peer: PeerView<'_>,
    flow: &Flow,
    dst_ports: &[ContainerPort],
) -> Option<Decision> {
    for r in refs {
        if !r.may_match(flow.protocol, flow.dst_port) {
            continue;
        }
        let policy = &policies[r.policy as usize];
        let rule = &policy.rules[direction.idx()][r.rule as usize];
        if !(r.exact || rule.ports.matches(flow, dst_ports))
            || !rule.peers.iter().any(|p| peer_matches(snap, p, peer))
        {
            continue;
        }
        let verdict = match rule.action {
            Action::Accept => Verdict::Accept,
            Action::Deny => Verdict::Drop,
            Action::Pass => return None,
        };
        return Some(Decision {
            verdict,
            tier,
            reason: Reason::Rule {
                direction,
                policy: policy.id.clone(),
                rule: rule.name.clone(),
                action: rule.action,
            },
        });
    }
    None
}

fn peer_matches(snap: &Snapshot, peer: &Peer, view: PeerView<'_>) -> bool {
    match peer {
        Peer::All | Peer::Network { .. } => peer.matches_ip(view.ip),
        Peer::Nothing => false,
        Peer::Nodes(sel) => match view.endpoint {
            Some(Endpoint::Node(n)) => sel.matches(&snap.nodes[n as usize].labels),
            _ => false,
        },
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = view.pod else { return false };
            let ns_ok = match namespaces {
                NamespaceMatch::Named(name) => {
                    *snap.namespaces[pod.namespace as usize].name == **name
                }
                NamespaceMatch::Selector(sel) => {
                    sel.matches(&snap.namespaces[pod.namespace as usize].labels)
                }
            };
            ns_ok && pods.matches(&pod.record.labels)
        }
    }
}
