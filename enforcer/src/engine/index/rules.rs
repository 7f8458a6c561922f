//! Rule entries: one rule's port entry and peers in 16 bytes, as a pod's block lists them.

use crate::engine::policy::{Action, PortMatch, PortSpec};
use crate::flow::Protocol;

#[cfg(doc)]
use super::{PodEntry, Snapshot};

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
pub(super) struct PeerSpan {
    pub(super) start: u32,
    pub(super) count: u32,
}

/// Appends the rule's entries; `port_name` interns a named port's name (`None`: no pod has a
/// port of that name, so the entry can never match and is left out).
pub(super) fn rule_refs(
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
            });
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
