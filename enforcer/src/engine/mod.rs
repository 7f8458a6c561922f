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
//!
//! # Unknown pod addresses
//!
//! An address inside a pod range ([`Snapshot::pod_ranges`]: the enforcer's `--pod-cidr` and
//! every node's `spec.podCIDRs`) that is no known pod's or node's is, almost always, a pod
//! created a moment ago that the watch has not reported yet. Nothing about it is known: as a
//! source its egress cannot be judged, as a destination its ingress cannot, and no peer check
//! against it (`namespaces`, `pods`, a NetworkPolicy selector) can be answered — judging it as
//! an address outside the cluster would skip its egress isolation and let it past an ingress
//! `Deny` aimed at its namespace. Such a flow gets [`Verdict::Unknown`] ([`Tier::Unknown`],
//! [`Reason::UnknownPodAddress`]), which a caller must never treat as accept: the dataplane
//! holds the packet and asks again with newer snapshots, then drops it.
//!
//! Two exceptions, where the answer cannot depend on who the address is:
//! - an end the packet path knows to be this node itself ([`LocalEnds`]: the source of a packet
//!   the node sends, the destination of one it receives) is a node address even when it lies in
//!   a pod range (a CNI's bridge or gateway address often does);
//! - a snapshot with no policy of any kind accepts every flow, so it accepts this one too.

pub mod index;
pub mod policy;
pub mod selector;

use std::fmt;
use std::net::IpAddr;

use crate::flow::Flow;
use index::{
    Endpoint, NamedPort, PORT_NAME_UNINTERNED, PeerMatch, RuleRef, Snapshot, in_bits, in_members,
};
use policy::{Action, ClusterPolicy, ContainerPort, Direction, PolicyRef, PortMatch};

/// Accept, drop, or cannot tell yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the connection through.
    Accept,
    /// Drop it silently.
    Drop,
    /// The snapshot cannot judge the connection: an end of it is an unknown pod address (see
    /// [Unknown pod addresses](self#unknown-pod-addresses)). Never to be taken as accept; ask
    /// again with a newer snapshot, or drop.
    Unknown,
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
    /// No tier was consulted: an end of the connection is an unknown pod address.
    Unknown,
}

impl Tier {
    /// `admin`, `networkpolicy`, `baseline`, `default` or `unknown_pod`, as used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::NetworkPolicy => "networkpolicy",
            Tier::Baseline => "baseline",
            Tier::Default => "default",
            Tier::Unknown => "unknown_pod",
        }
    }
}

/// The rule that decided, as a position in the snapshot that decided; its policy and name are
/// looked up only when asked for, so deciding touches no policy object.
#[derive(Clone, Copy)]
pub struct RuleId<'s> {
    snap: &'s Snapshot,
    tier: Tier,
    direction: Direction,
    origin: u32,
}

impl<'s> RuleId<'s> {
    fn origin(&self) -> index::Origin {
        self.snap.origins[self.origin as usize]
    }

    fn cluster_policy(&self) -> Option<&'s ClusterPolicy> {
        let list = match self.tier {
            Tier::Admin => &self.snap.admin,
            Tier::Baseline => &self.snap.baseline,
            Tier::NetworkPolicy | Tier::Default | Tier::Unknown => return None,
        };
        Some(&list[self.origin().policy as usize])
    }

    /// The policy the rule belongs to.
    pub fn policy(&self) -> &'s PolicyRef {
        match self.cluster_policy() {
            Some(p) => &p.id,
            None => &self.snap.netpols[self.origin().policy as usize].id,
        }
    }

    /// Index of the rule in the policy's ingress or egress list.
    pub fn index(&self) -> usize {
        self.origin().rule as usize
    }

    /// The rule's name (`#<index>` when it has none; NetworkPolicy rules have none).
    pub fn name(&self) -> std::borrow::Cow<'s, str> {
        match self.cluster_policy() {
            Some(p) => {
                std::borrow::Cow::Borrowed(&p.rules[self.direction.idx()][self.index()].name)
            }
            None => std::borrow::Cow::Owned(format!("#{}", self.index())),
        }
    }
}

impl PartialEq for RuleId<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.snap, other.snap)
            && (self.tier, self.direction, self.origin)
                == (other.tier, other.direction, other.origin)
    }
}

impl Eq for RuleId<'_> {}

impl fmt::Debug for RuleId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} of {}", self.name(), self.policy())
    }
}

/// Why a connection got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'s> {
    /// An admin or baseline rule matched.
    Rule {
        /// Direction judged.
        direction: Direction,
        /// The rule (its policy and name).
        rule: RuleId<'s>,
        /// Its action.
        action: Action,
    },
    /// A NetworkPolicy rule allowed the connection to or from an isolated pod.
    NetworkPolicyAllowed {
        /// Direction judged.
        direction: Direction,
        /// The rule (its policy and index).
        rule: RuleId<'s>,
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
    /// An end of the connection lies in a pod range but is no known pod or node, so the
    /// direction it is the subject of could not be judged (nor any peer check against it).
    UnknownPodAddress {
        /// The direction that could not be judged: `Egress` when the source is unknown (checked
        /// first), `Ingress` when the destination is.
        direction: Direction,
        /// The unknown address.
        address: IpAddr,
    },
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule {
                direction,
                rule,
                action,
            } => {
                write!(
                    f,
                    "{} rule {:?} ({}) of {}",
                    direction.as_str(),
                    rule.name(),
                    action.as_str(),
                    rule.policy()
                )
            }
            Reason::NetworkPolicyAllowed { direction, rule } => {
                write!(
                    f,
                    "{} rule #{} of {} allows",
                    direction.as_str(),
                    rule.index(),
                    rule.policy()
                )
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
            Reason::UnknownPodAddress { direction, address } => {
                let end = match direction {
                    Direction::Egress => "source",
                    Direction::Ingress => "destination",
                };
                write!(
                    f,
                    "{end} {address} is in a pod range but no known pod or node: {} not judged",
                    direction.as_str()
                )
            }
        }
    }
}

/// The verdict on one connection, with the tier and reason that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Which ends of a connection the packet path knows to be this node itself, whatever their
/// addresses: the source of a packet the node sends (netfilter `OUTPUT`), the destination of one
/// it receives (`INPUT`). Such an end is never an unknown pod address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalEnds {
    /// The node itself sent the packet.
    pub source: bool,
    /// The packet is delivered to the node itself.
    pub destination: bool,
}

/// Judges one connection (its first packet, after DNAT), knowing nothing beyond its addresses.
pub fn decide<'s>(snapshot: &'s Snapshot, flow: &Flow) -> Decision<'s> {
    decide_with(snapshot, flow, LocalEnds::default())
}

/// Judges one connection (its first packet, after DNAT), given which of its ends are this node.
pub fn decide_with<'s>(snapshot: &'s Snapshot, flow: &Flow, local: LocalEnds) -> Decision<'s> {
    let src = PeerView {
        ip: flow.src,
        endpoint: snapshot.endpoint(flow.src),
    };
    let dst = PeerView {
        ip: flow.dst,
        endpoint: snapshot.endpoint(flow.dst),
    };
    // Only an address the snapshot does not know can be an unknown pod's: known pods and nodes
    // skip this test entirely.
    let unresolved =
        (src.endpoint.is_none() && !local.source) || (dst.endpoint.is_none() && !local.destination);
    if unresolved && let Some(unknown) = unknown_end(snapshot, src, dst, local) {
        return unknown;
    }
    let dst_ports = Dst {
        pod: match dst.endpoint {
            Some(Endpoint::Pod(i)) => Some(&snapshot.pods[i as usize]),
            _ => None,
        },
    };
    // Start loading the destination's ingress rules now, so that the memory access overlaps the
    // egress judgement instead of following it.
    if let Some(Endpoint::Pod(i)) = dst.endpoint {
        prefetch(
            snapshot.selected[i as usize]
                .admin(Direction::Ingress)
                .as_ptr(),
        );
    }

    let egress = match src.endpoint {
        Some(Endpoint::Pod(i)) => Some(judge(snapshot, Direction::Egress, i, dst, flow, dst_ports)),
        _ => None,
    };
    if let Some(d) = &egress
        && d.verdict == Verdict::Drop
    {
        return *d;
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

/// The decision for a connection with an unknown pod address at an end not known to be this
/// node (the source first), unless the snapshot has no policy at all.
#[cold]
fn unknown_end<'s>(
    snapshot: &'s Snapshot,
    src: PeerView,
    dst: PeerView,
    local: LocalEnds,
) -> Option<Decision<'s>> {
    if snapshot.admin.is_empty() && snapshot.baseline.is_empty() && snapshot.netpols.is_empty() {
        return None;
    }
    let (direction, address) =
        if src.endpoint.is_none() && !local.source && snapshot.in_pod_range(src.ip) {
            (Direction::Egress, src.ip)
        } else if dst.endpoint.is_none() && !local.destination && snapshot.in_pod_range(dst.ip) {
            (Direction::Ingress, dst.ip)
        } else {
            return None;
        };
    Some(Decision {
        verdict: Verdict::Unknown,
        tier: Tier::Unknown,
        reason: Reason::UnknownPodAddress { direction, address },
    })
}

/// Asks the CPU to start loading the cache line at `p` (no effect where there is no such hint).
#[allow(unsafe_code)] // the x86 prefetch intrinsic; SAFETY at the block
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, even for a dangling address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn judge<'s>(
    snap: &'s Snapshot,
    direction: Direction,
    subject: u32,
    peer: PeerView,
    flow: &Flow,
    dst: Dst<'_>,
) -> Decision<'s> {
    let d = direction.idx();
    let selected = &snap.selected[subject as usize];

    if let Some(decision) = cluster_tier(
        snap,
        &snap.admin,
        selected.admin(direction),
        Tier::Admin,
        direction,
        peer,
        flow,
        dst,
    ) {
        return decision;
    }

    if selected.isolated_by[d] > 0 {
        for r in selected.netpol_rules(direction) {
            let ports = || {
                let origin = snap.origins[r.origin as usize];
                let np = &*snap.netpols[origin.policy as usize];
                &np.rules[d].as_deref().unwrap_or_default()[origin.rule as usize].ports
            };
            if !r.may_match(flow.protocol, flow.dst_port)
                || !named_port_matches(r, flow, dst, ports)
                || !peers_match(snap, r, peer)
            {
                continue;
            }
            return Decision {
                verdict: Verdict::Accept,
                tier: Tier::NetworkPolicy,
                reason: Reason::NetworkPolicyAllowed {
                    direction,
                    rule: RuleId {
                        snap,
                        tier: Tier::NetworkPolicy,
                        direction,
                        origin: r.origin,
                    },
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
        selected.baseline(direction),
        Tier::Baseline,
        direction,
        peer,
        flow,
        dst,
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
    dst: Dst<'_>,
) -> Option<Decision<'s>> {
    for r in refs {
        let ports = || {
            let origin = snap.origins[r.origin as usize];
            &policies[origin.policy as usize].rules[direction.idx()][origin.rule as usize].ports
        };
        if !r.may_match(flow.protocol, flow.dst_port)
            || !named_port_matches(r, flow, dst, ports)
            || !peers_match(snap, r, peer)
        {
            continue;
        }
        let verdict = match r.action() {
            Action::Accept => Verdict::Accept,
            Action::Deny => Verdict::Drop,
            Action::Pass => return None,
        };
        return Some(Decision {
            verdict,
            tier,
            reason: Reason::Rule {
                direction,
                rule: RuleId {
                    snap,
                    tier,
                    direction,
                    origin: r.origin,
                },
                action: r.action(),
            },
        });
    }
    None
}

/// For a named-port entry: whether the destination pod has a container port of that name with
/// the connection's number and protocol. Number and range entries pass.
/// `ports` gives the rule's own port match, needed only for a name that was not interned.
#[inline]
fn named_port_matches<'r>(
    r: &RuleRef,
    flow: &Flow,
    dst: Dst<'_>,
    ports: impl FnOnce() -> &'r PortMatch,
) -> bool {
    match r.port_name {
        0 => true,
        PORT_NAME_UNINTERNED => {
            let all: &[ContainerPort] = dst.pod.map_or(&[], |p| &p.record.ports);
            ports().matches(flow, all)
        }
        name => {
            let named: &[NamedPort] = dst.pod.map_or(&[], |p| &p.named_ports);
            named
                .iter()
                .any(|p| p.name == name && p.port == flow.dst_port && p.protocol == flow.protocol)
        }
    }
}

/// The destination, as named ports resolve against its container ports: read only when a rule
/// names a port, so most verdicts never touch the pod's entry.
#[derive(Clone, Copy)]
struct Dst<'a> {
    /// The destination pod, if it is one.
    pod: Option<&'a index::PodEntry>,
}

/// Whether any of the rule's resolved peers is the other end of the connection. Pod sets hold
/// only pods reachable by address (not host-networked, not finished), node sets node indexes;
/// address blocks and `All` match any address, pods' and nodes' included.
#[inline]
fn peers_match(snap: &Snapshot, r: &RuleRef, view: PeerView) -> bool {
    let peers = &snap.peers[r.peers as usize..][..r.peer_count as usize];
    peers.iter().any(|p| match *p {
        PeerMatch::All => true,
        PeerMatch::Pods { start, len } => match view.endpoint {
            Some(Endpoint::Pod(i)) => in_members(&snap.members, start, len, i),
            _ => false,
        },
        PeerMatch::PodBits { start } => match view.endpoint {
            Some(Endpoint::Pod(i)) => in_bits(&snap.bits, start, i),
            _ => false,
        },
        PeerMatch::Nodes { start, len } => match view.endpoint {
            Some(Endpoint::Node(n)) => in_members(&snap.members, start, len, n),
            _ => false,
        },
        PeerMatch::NodeBits { start } => match view.endpoint {
            Some(Endpoint::Node(n)) => in_bits(&snap.bits, start, n),
            _ => false,
        },
        PeerMatch::Network(n) => snap.networks[n as usize].contains(view.ip),
    })
}
