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
use crate::store::{Endpoint, NamedPort, PeerMatch, RuleRef, Snapshot};
use policy::{Action, ClusterPolicy, Direction, PolicyRef};

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

/// Why a connection got its verdict. It borrows the policy from the snapshot that decided, so
/// deciding copies no names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason<'s> {
    /// An admin or baseline rule matched.
    Rule {
        /// Direction judged.
        direction: Direction,
        /// The policy.
        policy: &'s PolicyRef,
        /// Rule name (or `#index`).
        rule: &'s str,
        /// Its action.
        action: Action,
    },
    /// A NetworkPolicy rule allowed the connection to or from an isolated pod.
    NetworkPolicyAllowed {
        /// Direction judged.
        direction: Direction,
        /// The policy.
        policy: &'s PolicyRef,
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

impl fmt::Display for Reason<'_> {
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
pub struct Decision<'s> {
    /// Accept or drop.
    pub verdict: Verdict,
    /// The tier that decided.
    pub tier: Tier,
    /// Why.
    pub reason: Reason<'s>,
}

impl Decision<'_> {
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
struct PeerView {
    ip: IpAddr,
    endpoint: Option<Endpoint>,
}

/// Judges one connection (its first packet, after DNAT).
pub fn decide<'s>(snapshot: &'s Snapshot, flow: &Flow) -> Decision<'s> {
    let src = PeerView {
        ip: flow.src,
        endpoint: snapshot.endpoint(flow.src),
    };
    let dst = PeerView {
        ip: flow.dst,
        endpoint: snapshot.endpoint(flow.dst),
    };
    let dst_ports: &[NamedPort] = match dst.endpoint {
        Some(Endpoint::Pod(i)) => &snapshot.pods[i as usize].named_ports,
        _ => &[],
    };

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

fn judge<'s>(
    snap: &'s Snapshot,
    direction: Direction,
    subject: u32,
    peer: PeerView,
    flow: &Flow,
    dst_ports: &[NamedPort],
) -> Decision<'s> {
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
            if !r.may_match(flow.protocol, flow.dst_port)
                || !named_port_matches(r, flow, dst_ports)
                || !peers_match(snap, r, peer)
            {
                continue;
            }
            let np = &*snap.netpols[r.policy as usize];
            return Decision {
                verdict: Verdict::Accept,
                tier: Tier::NetworkPolicy,
                reason: Reason::NetworkPolicyAllowed {
                    direction,
                    policy: &np.id,
                    rule: r.rule as usize,
                },
            };
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
fn cluster_tier<'s>(
    snap: &'s Snapshot,
    policies: &'s [std::sync::Arc<ClusterPolicy>],
    refs: &[RuleRef],
    tier: Tier,
    direction: Direction,
    peer: PeerView,
    flow: &Flow,
    dst_ports: &[NamedPort],
) -> Option<Decision<'s>> {
    for r in refs {
        if !r.may_match(flow.protocol, flow.dst_port)
            || !named_port_matches(r, flow, dst_ports)
            || !peers_match(snap, r, peer)
        {
            continue;
        }
        let policy = &*policies[r.policy as usize];
        let rule = &policy.rules[direction.idx()][r.rule as usize];
        let verdict = match r.action {
            Action::Accept => Verdict::Accept,
            Action::Deny => Verdict::Drop,
            Action::Pass => return None,
        };
        return Some(Decision {
            verdict,
            tier,
            reason: Reason::Rule {
                direction,
                policy: &policy.id,
                rule: &rule.name,
                action: r.action,
            },
        });
    }
    None
}

/// For a named-port entry: whether the destination pod has a container port of that name with
/// the connection's number and protocol. Number and range entries pass.
#[inline]
fn named_port_matches(r: &RuleRef, flow: &Flow, dst_ports: &[NamedPort]) -> bool {
    r.port_name == 0
        || dst_ports.iter().any(|p| {
            p.name == r.port_name && p.port == flow.dst_port && p.protocol == flow.protocol
        })
}

/// Whether any of the rule's resolved peers is the other end of the connection. Pod sets hold
/// only pods reachable by address (not host-networked, not finished), node sets node indexes;
/// address blocks and `All` match any address, pods' and nodes' included.
#[inline]
fn peers_match(snap: &Snapshot, r: &RuleRef, view: PeerView) -> bool {
    let peers = &snap.peers[r.peers as usize..][..usize::from(r.peer_count)];
    peers.iter().any(|p| match *p {
        PeerMatch::All => true,
        PeerMatch::Pods(set) => match view.endpoint {
            Some(Endpoint::Pod(i)) => snap.pod_sets[set as usize].contains(i),
            _ => false,
        },
        PeerMatch::Nodes(set) => match view.endpoint {
            Some(Endpoint::Node(n)) => snap.node_sets[set as usize].contains(n),
            _ => false,
        },
        PeerMatch::Network(n) => snap.networks[n as usize].contains(view.ip),
    })
}
