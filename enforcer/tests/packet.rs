//! The NFQUEUE payload parser, tested with packets written out byte by byte.
//!
//! Every packet below starts at the IP header, as NFQUEUE delivers it. Checksums are zero: the
//! parser does not verify them (the kernel already has).

use std::net::IpAddr;

use netpol_enforcer::flow::{Flow, Protocol};
use netpol_enforcer::packet::{Layer, ParseError, Parsed, parse};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn flow(src: &str, sport: u16, dst: &str, dport: u16, protocol: Protocol) -> Parsed {
    Parsed::Flow(Flow {
        src: ip(src),
        dst: ip(dst),
        protocol,
        src_port: sport,
        dst_port: dport,
    })
}

/// IPv4 + TCP SYN, 10.0.1.5:40000 → 10.0.2.7:80.
#[rustfmt::skip]
const IPV4_TCP_SYN: [u8; 40] = [
    // --- IPv4 ---
    0x45,                   // version 4, IHL 5 (20 bytes)
    0x00,                   // DSCP/ECN
    0x00, 0x28,             // total length 40
    0x12, 0x34,             // identification
    0x40, 0x00,             // flags DF, fragment offset 0
    0x40,                   // TTL 64
    0x06,                   // protocol TCP
    0x00, 0x00,             // header checksum
    10, 0, 1, 5,            // source 10.0.1.5
    10, 0, 2, 7,            // destination 10.0.2.7
    // --- TCP ---
    0x9c, 0x40,             // source port 40000
    0x00, 0x50,             // destination port 80
    0x00, 0x00, 0x00, 0x01, // sequence number
    0x00, 0x00, 0x00, 0x00, // acknowledgement number
    0x50, 0x02,             // data offset 5, flags SYN
    0xfa, 0xf0,             // window
    0x00, 0x00,             // checksum
    0x00, 0x00,             // urgent pointer
];

#[test]
fn ipv4_tcp_syn() {
    assert_eq!(
        parse(&IPV4_TCP_SYN),
        Ok(flow("10.0.1.5", 40000, "10.0.2.7", 80, Protocol::Tcp))
    );
}

#[test]
fn ipv4_udp_after_options() {
    #[rustfmt::skip]
    let packet = [
        // --- IPv4 ---
        0x47,                   // version 4, IHL 7 (28 bytes: 8 bytes of options)
        0x00,                   // DSCP/ECN
        0x00, 0x24,             // total length 36
        0x00, 0x01,             // identification
        0x00, 0x00,             // no flags, fragment offset 0
        0x40,                   // TTL
        0x11,                   // protocol UDP
        0x00, 0x00,             // checksum
        192, 168, 0, 1,         // source 192.168.0.1
        192, 168, 0, 2,         // destination 192.168.0.2
        0x94, 0x04, 0x00, 0x00, // option: router alert (type 148, length 4)
        0x01, 0x01, 0x01, 0x00, // options: NOP, NOP, NOP, end of list
        // --- UDP ---
        0x00, 0x35,             // source port 53
        0x14, 0xe9,             // destination port 5353
        0x00, 0x08,             // length 8
        0x00, 0x00,             // checksum
    ];
    assert_eq!(
        parse(&packet),
        Ok(flow("192.168.0.1", 53, "192.168.0.2", 5353, Protocol::Udp))
    );
}

#[test]
fn ipv4_sctp_ports_come_from_the_common_header() {
    #[rustfmt::skip]
    let packet = [
        // --- IPv4 ---
        0x45, 0x00, 0x00, 0x20, // version 4, IHL 5, DSCP, total length 32
        0x00, 0x00, 0x40, 0x00, // identification, DF
        0x40, 0x84,             // TTL, protocol 132 (SCTP)
        0x00, 0x00,             // checksum
        10, 0, 0, 1,            // source 10.0.0.1
        10, 0, 0, 2,            // destination 10.0.0.2
        // --- SCTP common header ---
        0x23, 0x2b,             // source port 9003
        0x23, 0x2d,             // destination port 9005
        0xde, 0xad, 0xbe, 0xef, // verification tag
        0x00, 0x00, 0x00, 0x00, // checksum (CRC32c)
    ];
    assert_eq!(
        parse(&packet),
        Ok(flow("10.0.0.1", 9003, "10.0.0.2", 9005, Protocol::Sctp))
    );
}

#[test]
fn ipv4_icmp_is_other() {
    #[rustfmt::skip]
    let packet = [
        0x45, 0x00, 0x00, 0x1c, // version 4, IHL 5, total length 28
        0x00, 0x00, 0x00, 0x00, // identification, no flags
        0x40, 0x01,             // TTL, protocol 1 (ICMP)
        0x00, 0x00,             // checksum
        10, 0, 0, 1,            // source
        10, 0, 0, 2,            // destination
        0x08, 0x00, 0x00, 0x00, // echo request, code 0, checksum
        0x00, 0x01, 0x00, 0x01, // identifier, sequence
    ];
    assert_eq!(
        parse(&packet),
        Ok(Parsed::Other {
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            protocol: 1
        })
    );
}

#[test]
fn ipv4_first_fragment_has_ports_later_fragments_do_not() {
    let mut first = IPV4_TCP_SYN;
    first[6] = 0x20; // flags: more fragments (MF), offset 0
    first[7] = 0x00;
    assert_eq!(
        parse(&first),
        Ok(flow("10.0.1.5", 40000, "10.0.2.7", 80, Protocol::Tcp))
    );

    #[rustfmt::skip]
    let later = [
        0x45, 0x00, 0x00, 0x1c, // version 4, IHL 5, total length 28
        0x12, 0x34,             // identification
        0x00, 0xb9,             // no MF (last fragment), offset 185 (1480 bytes)
        0x40, 0x11,             // TTL, protocol UDP
        0x00, 0x00,             // checksum
        10, 0, 1, 5,            // source
        10, 0, 2, 7,            // destination
        0xaa, 0xbb, 0xcc, 0xdd, // payload data, not a UDP header
        0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(
        parse(&later),
        Ok(Parsed::Fragment {
            src: ip("10.0.1.5"),
            dst: ip("10.0.2.7"),
            protocol: 17
        })
    );
}

#[test]
fn ipv4_authentication_header_is_walked() {
    #[rustfmt::skip]
    let packet = [
        // --- IPv4 ---
        0x45, 0x00, 0x00, 0x34, // version 4, IHL 5, total length 52
        0x00, 0x00, 0x40, 0x00, // identification, DF
        0x40, 0x33,             // TTL, protocol 51 (AH)
        0x00, 0x00,             // checksum
        10, 0, 0, 1,            // source
        10, 0, 0, 2,            // destination
        // --- AH: 12 bytes of header + 12 bytes ICV = 24 bytes = (4 + 2) * 4 ---
        0x06,                   // next header TCP
        0x04,                   // payload length 4 (in 4-octet units, minus 2)
        0x00, 0x00,             // reserved
        0x00, 0x00, 0x01, 0x00, // SPI
        0x00, 0x00, 0x00, 0x01, // sequence number
        0x11, 0x11, 0x11, 0x11, // ICV
        0x22, 0x22, 0x22, 0x22, // ICV
        0x33, 0x33, 0x33, 0x33, // ICV
        // --- TCP (ports only; the rest is cut off by the copy range) ---
        0x04, 0xd2,             // source port 1234
        0x01, 0xbb,             // destination port 443
    ];
    assert_eq!(
        parse(&packet),
        Ok(flow("10.0.0.1", 1234, "10.0.0.2", 443, Protocol::Tcp))
    );
}

/// The 40-byte IPv6 fixed header, fd00::1 → fd00::2, with the given next header.
#[rustfmt::skip]
fn ipv6_header(next_header: u8, payload_len: u16) -> Vec<u8> {
    let len = payload_len.to_be_bytes();
    vec![
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow label 0
        len[0], len[1],         // payload length
        next_header,            // next header
        0x40,                   // hop limit 64
        0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source fd00::1
        0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination fd00::2
    ]
}

#[test]
fn ipv6_tcp() {
    let mut packet = ipv6_header(6, 20);
    #[rustfmt::skip]
    packet.extend_from_slice(&[
        0xc3, 0x50,             // source port 50000
        0x1f, 0x90,             // destination port 8080
        0, 0, 0, 1,             // sequence
        0, 0, 0, 0,             // ack
        0x50, 0x02, 0xff, 0xff, // data offset 5, SYN, window
        0, 0, 0, 0,             // checksum, urgent
    ]);
    assert_eq!(
        parse(&packet),
        Ok(flow("fd00::1", 50000, "fd00::2", 8080, Protocol::Tcp))
    );
}

#[test]
fn ipv6_walks_hop_by_hop_routing_and_destination_options() {
    let mut packet = ipv6_header(0, 8 + 24 + 16 + 8);
    #[rustfmt::skip]
    packet.extend_from_slice(&[
        // --- hop-by-hop options, 8 bytes ---
        43,                     // next header: routing
        0,                      // length 0 → 8 bytes
        0x05, 0x02, 0x00, 0x00, // router alert option (MLD)
        0x01, 0x00,             // PadN, 0 bytes
        // --- routing header (segment routing, one segment), 24 bytes ---
        60,                     // next header: destination options
        2,                      // length 2 → 24 bytes
        0x04,                   // routing type 4 (segment routing)
        0x00,                   // segments left 0
        0x00, 0x00, 0x00, 0x00, // last entry, flags, tag
        0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // segment fd00::2
        // --- destination options, 16 bytes ---
        17,                     // next header: UDP
        1,                      // length 1 → 16 bytes
        0x01, 0x0c,             // PadN, 12 bytes of padding
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // --- UDP ---
        0x00, 0x35,             // source port 53
        0x00, 0x35,             // destination port 53
        0x00, 0x08, 0x00, 0x00, // length, checksum
    ]);
    assert_eq!(
        parse(&packet),
        Ok(flow("fd00::1", 53, "fd00::2", 53, Protocol::Udp))
    );
}

#[test]
fn ipv6_fragment_header() {
    let mut first = ipv6_header(44, 16);
    #[rustfmt::skip]
    first.extend_from_slice(&[
        // --- fragment header ---
        6,                      // next header TCP
        0,                      // reserved
        0x00, 0x01,             // offset 0, M = 1 (more fragments)
        0xca, 0xfe, 0xba, 0xbe, // identification
        // --- TCP ports ---
        0x00, 0x16,             // source port 22
        0x30, 0x39,             // destination port 12345
        0, 0, 0, 0,
    ]);
    assert_eq!(
        parse(&first),
        Ok(flow("fd00::1", 22, "fd00::2", 12345, Protocol::Tcp))
    );

    let mut later = ipv6_header(44, 16);
    #[rustfmt::skip]
    later.extend_from_slice(&[
        6,                      // next header TCP
        0,                      // reserved
        0x05, 0xa8,             // offset 181 (1448 bytes), M = 0
        0xca, 0xfe, 0xba, 0xbe, // identification
        0xaa, 0xbb, 0xcc, 0xdd, // data, not a TCP header
        0, 0, 0, 0,
    ]);
    assert_eq!(
        parse(&later),
        Ok(Parsed::Fragment {
            src: ip("fd00::1"),
            dst: ip("fd00::2"),
            protocol: 6
        })
    );
}

#[test]
fn ipv6_authentication_header_then_sctp() {
    let mut packet = ipv6_header(51, 16 + 12);
    #[rustfmt::skip]
    packet.extend_from_slice(&[
        // --- AH, (2 + 2) * 4 = 16 bytes ---
        132,                    // next header SCTP
        2,                      // payload length 2
        0x00, 0x00,             // reserved
        0x00, 0x00, 0x00, 0x07, // SPI
        0x00, 0x00, 0x00, 0x01, // sequence
        0x44, 0x44, 0x44, 0x44, // ICV
        // --- SCTP common header ---
        0x23, 0x2b,             // source port 9003
        0x00, 0x50,             // destination port 80
        0x00, 0x00, 0x00, 0x00, // verification tag
        0x00, 0x00, 0x00, 0x00, // checksum
    ]);
    assert_eq!(
        parse(&packet),
        Ok(flow("fd00::1", 9003, "fd00::2", 80, Protocol::Sctp))
    );
}

#[test]
fn ipv6_icmp_and_no_next_header_are_other() {
    let mut neighbour_solicitation = ipv6_header(58, 8);
    #[rustfmt::skip]
    neighbour_solicitation.extend_from_slice(&[
        135, 0,                 // ICMPv6 type 135 (neighbour solicitation), code 0
        0x00, 0x00, 0, 0, 0, 0, // checksum, reserved
    ]);
    assert_eq!(
        parse(&neighbour_solicitation),
        Ok(Parsed::Other {
            src: ip("fd00::1"),
            dst: ip("fd00::2"),
            protocol: 58
        })
    );
    assert_eq!(
        parse(&ipv6_header(59, 0)),
        Ok(Parsed::Other {
            src: ip("fd00::1"),
            dst: ip("fd00::2"),
            protocol: 59
        })
    );
}

#[test]
fn empty_and_unknown_versions_are_errors() {
    assert_eq!(parse(&[]), Err(ParseError::Empty));
    assert_eq!(parse(&[0x55, 0, 0, 0]), Err(ParseError::Version(5)));
    assert_eq!(parse(&[0x00]), Err(ParseError::Version(0)));
}

#[test]
fn ipv4_header_length_below_twenty_is_rejected() {
    let mut packet = IPV4_TCP_SYN;
    packet[0] = 0x44; // IHL 4 = 16 bytes, invalid
    assert_eq!(parse(&packet), Err(ParseError::Ipv4HeaderLength(16)));
}

#[test]
fn ipv4_options_announced_but_missing() {
    let mut packet = IPV4_TCP_SYN[..20].to_vec();
    packet[0] = 0x4f; // IHL 15 = 60 bytes, only 20 present
    assert_eq!(
        parse(&packet),
        Err(ParseError::Truncated {
            layer: Layer::Ipv4,
            offset: 0,
            need: 60,
            have: 20
        })
    );
}

#[test]
fn transport_ports_cut_off() {
    // The TCP header is cut after the source port.
    assert_eq!(
        parse(&IPV4_TCP_SYN[..22]),
        Err(ParseError::Truncated {
            layer: Layer::Transport,
            offset: 20,
            need: 4,
            have: 2
        })
    );
    // Four bytes of TCP are enough: the ports are all a verdict needs.
    assert_eq!(
        parse(&IPV4_TCP_SYN[..24]),
        Ok(flow("10.0.1.5", 40000, "10.0.2.7", 80, Protocol::Tcp))
    );
}

#[test]
fn ipv6_extension_header_cut_off() {
    let mut packet = ipv6_header(60, 16);
    packet.extend_from_slice(&[17, 1, 0x01, 0x0c, 0, 0]); // dest opts claims 16 bytes, has 6
    assert_eq!(
        parse(&packet),
        Err(ParseError::Truncated {
            layer: Layer::Extension,
            offset: 40,
            need: 16,
            have: 6
        })
    );
}

#[test]
fn every_prefix_of_a_valid_packet_is_an_error_or_the_full_answer() {
    let full = parse(&IPV4_TCP_SYN);
    for len in 0..IPV4_TCP_SYN.len() {
        let got = parse(&IPV4_TCP_SYN[..len]);
        match len {
            0 => assert_eq!(got, Err(ParseError::Empty)),
            1..=19 => assert!(
                matches!(
                    got,
                    Err(ParseError::Truncated {
                        layer: Layer::Ipv4,
                        ..
                    })
                ),
                "len {len}: {got:?}"
            ),
            20..=23 => assert!(
                matches!(
                    got,
                    Err(ParseError::Truncated {
                        layer: Layer::Transport,
                        ..
                    })
                ),
                "len {len}: {got:?}"
            ),
            _ => assert_eq!(got, full, "len {len}"),
        }
    }
    let mut v6 = ipv6_header(6, 4);
    v6.extend_from_slice(&[0, 1, 0, 2]);
    for len in 1..40 {
        assert!(
            matches!(
                parse(&v6[..len]),
                Err(ParseError::Truncated {
                    layer: Layer::Ipv6,
                    ..
                })
            ),
            "IPv6 len {len}"
        );
    }
    assert_eq!(
        parse(&v6),
        Ok(flow("fd00::1", 1, "fd00::2", 2, Protocol::Tcp))
    );
}
