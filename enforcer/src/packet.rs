//! Parse an NFQUEUE payload into the [`Flow`] the engine judges.
//!
//! NFQUEUE hands userspace the packet starting at the network header (IPv4 or IPv6); there is no
//! link-layer header. [`parse`] reads only what a verdict needs — addresses, transport protocol and
//! ports — and never trusts a length field beyond the bytes actually present, because the queue is
//! configured with a small copy range and the kernel may hand over a truncated packet.
//!
//! Three outcomes besides an error:
//! - [`Parsed::Flow`]: TCP, UDP or SCTP with both ports;
//! - [`Parsed::Fragment`]: a non-first fragment, which carries no transport header and so no
//!   ports (with conntrack loaded the kernel reassembles before the filter hooks, so the enforcer
//!   should never see one; the caller still decides what to do with it);
//! - [`Parsed::Other`]: a transport the engine cannot name (ICMP, ESP, "no next header", …).
//!
//! IPv6 extension headers (hop-by-hop, routing, fragment, destination options, authentication
//! header) are walked; IPv4 options are skipped via the header length, and an IPv4 AH is walked too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flow::{Flow, Protocol};

/// IP protocol numbers the parser knows about.
mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// The header a truncation or malformation was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The IPv4 header (fixed part or options).
    Ipv4,
    /// The IPv6 fixed header.
    Ipv6,
    /// An IPv6 extension header or an authentication header.
    Extension,
    /// The first four bytes of the TCP, UDP or SCTP header (the ports).
    Transport,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Extension => "extension",
            Layer::Transport => "transport",
        })
    }
}

/// Why a payload could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The payload has no bytes at all.
    #[error("parsing packet: payload is empty")]
    Empty,
    /// The version nibble is neither 4 nor 6.
    #[error("parsing packet: IP version {0} is neither 4 nor 6")]
    Version(u8),
    /// The IPv4 IHL field is below 5 (20 bytes).
    #[error("parsing IPv4 header: header length {0} bytes is below the minimum of 20")]
    Ipv4HeaderLength(usize),
    /// A header needs more bytes than the payload has.
    #[error("parsing {layer} header: truncated, need {need} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Which header.
        layer: Layer,
        /// Offset of the header in the payload.
        offset: usize,
        /// Bytes the header needs from `offset`.
        need: usize,
        /// Bytes present from `offset`.
        have: usize,
    },
}

/// Result alias for [`parse`].
pub type Result<T, E = ParseError> = std::result::Result<T, E>;

/// What a payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A TCP, UDP or SCTP packet with both ports.
    Flow(Flow),
    /// A non-first fragment: the addresses are known but the ports are in another packet.
    Fragment {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// The protocol the fragment belongs to.
        protocol: u8,
    },
    /// A transport the engine cannot judge (ICMP, ICMPv6, ESP, no next header, …).
    Other {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// The IP protocol number after any extension headers.
        protocol: u8,
    },
}

/// Parse a payload that starts at the IP header.
pub fn parse(packet: &[u8]) -> Result<Parsed> {
    let first = *packet.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => parse_ipv4(packet),
        6 => parse_ipv6(packet),
        v => Err(ParseError::Version(v)),
    }
}

/// `need` bytes starting at `offset`, or a truncation error naming `layer`.
fn take(packet: &[u8], layer: Layer, offset: usize, need: usize) -> Result<&[u8]> {
    let have = packet.len().saturating_sub(offset);
    if have < need {
        return Err(ParseError::Truncated {
            layer,
            offset,
            need,
            have,
        });
    }
    Ok(&packet[offset..offset + need])
}

fn parse_ipv4(packet: &[u8]) -> Result<Parsed> {
    let fixed = take(packet, Layer::Ipv4, 0, 20)?;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::Ipv4HeaderLength(header_len));
    }
    // Options, if any, must be present even though they are skipped.
    take(packet, Layer::Ipv4, 0, header_len)?;
    let fragment_offset = u16::from_be_bytes([fixed[6], fixed[7]]) & 0x1fff;
    let protocol = fixed[9];
    let src = IpAddr::V4(Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]));
    if fragment_offset != 0 {
        return Ok(Parsed::Fragment { src, dst, protocol });
    }
    let (protocol, offset) = if protocol == proto::AH {
        skip_ah(packet, header_len)?
    } else {
        (protocol, header_len)
    };
    transport(packet, offset, src, dst, protocol)
}

fn parse_ipv6(packet: &[u8]) -> Result<Parsed> {
    let fixed = take(packet, Layer::Ipv6, 0, 40)?;
    let mut next = fixed[6];
    let src = IpAddr::V6(ipv6_at(&fixed[8..24]));
    let dst = IpAddr::V6(ipv6_at(&fixed[24..40]));
    let mut offset = 40;
    // Every extension header is at least 8 bytes long, so this loop ends within len/8 steps.
    loop {
        match next {
            proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS => {
                // Next Header (1), Hdr Ext Len in 8-octet units not counting the first 8 (1), data.
                let head = take(packet, Layer::Extension, offset, 2)?;
                let len = (usize::from(head[1]) + 1) * 8;
                take(packet, Layer::Extension, offset, len)?;
                next = head[0];
                offset += len;
            }
            proto::FRAGMENT => {
                // Next Header (1), reserved (1), offset (13 bits) + res (2) + M (1), identification (4).
                let head = take(packet, Layer::Extension, offset, 8)?;
                let fragment_offset = u16::from_be_bytes([head[2], head[3]]) >> 3;
                next = head[0];
                offset += 8;
                if fragment_offset != 0 {
                    return Ok(Parsed::Fragment {
                        src,
                        dst,
                        protocol: next,
                    });
                }
            }
            proto::AH => {
                (next, offset) = skip_ah(packet, offset)?;
            }
            _ => return transport(packet, offset, src, dst, next),
        }
    }
}

/// Skip an authentication header (RFC 4302) at `offset`: its length field counts 4-octet units
/// minus 2. Returns the next protocol and the offset after the header.
fn skip_ah(packet: &[u8], offset: usize) -> Result<(u8, usize)> {
    let head = take(packet, Layer::Extension, offset, 2)?;
    let len = (usize::from(head[1]) + 2) * 4;
    take(packet, Layer::Extension, offset, len)?;
    Ok((head[0], offset + len))
}

fn ipv6_at(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    Ipv6Addr::from(octets)
}

/// TCP, UDP and SCTP all start with source port then destination port, big-endian.
fn transport(packet: &[u8], offset: usize, src: IpAddr, dst: IpAddr, number: u8) -> Result<Parsed> {
    let protocol = match number {
        proto::TCP => Protocol::Tcp,
        proto::UDP => Protocol::Udp,
        proto::SCTP => Protocol::Sctp,
        // ICMP, ICMPv6, ESP, "no next header" (59) and anything else: no ports to read.
        _ => {
            return Ok(Parsed::Other {
                src,
                dst,
                protocol: number,
            });
        }
    };
    let ports = take(packet, Layer::Transport, offset, 4)?;
    Ok(Parsed::Flow(Flow {
        src,
        dst,
        protocol,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    }))
}
