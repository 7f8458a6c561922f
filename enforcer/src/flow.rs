//! The facts about a connection's first packet that a verdict depends on.
//!
//! The packet parser produces a [`Flow`]; the engine judges one. Keeping this type apart lets the
//! engine be tested with no packets and the parser with no policies.

use std::net::IpAddr;

/// A transport protocol that NetworkPolicy and the network-policy-api can name.
///
/// The same three as [`netpol_api::Protocol`], kept apart so that the fuzz target can compile
/// this file with no dependencies; the engine converts when it compiles policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

/// The first packet of a connection, after DNAT: source and destination address, protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (the pod or node actually reached, after any service DNAT).
    pub dst: IpAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}
