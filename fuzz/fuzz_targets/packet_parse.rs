//! Fuzz the NFQUEUE payload parser: it must never panic, and what it returns must agree with the
//! bytes it was given.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;

// The enforcer's own source files, compiled into this crate: the parser needs only `Flow`, and
// depending on the whole enforcer would build its Kubernetes client with sanitizers for nothing.
#[path = "../../enforcer/src/flow.rs"]
#[allow(dead_code)]
mod flow;
#[path = "../../enforcer/src/packet.rs"]
mod packet;

use packet::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse(data) else { return };
    let (src, dst) = match parsed {
        Parsed::Flow(flow) => (flow.src, flow.dst),
        Parsed::Fragment { src, dst, .. } | Parsed::Other { src, dst, .. } => (src, dst),
    };
    // The address family always follows the version nibble, and both addresses share it.
    match data[0] >> 4 {
        4 => assert!(src.is_ipv4() && dst.is_ipv4()),
        6 => assert!(src.is_ipv6() && dst.is_ipv6()),
        v => panic!("version {v} parsed"),
    }
    // The addresses are read from their fixed offsets.
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
        assert_eq!(&s.octets()[..], &data[12..16]);
        assert_eq!(&d.octets()[..], &data[16..20]);
    }
    // Parsing is a pure function of the bytes.
    assert_eq!(parse(data), Ok(parsed));
});
