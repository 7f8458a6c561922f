//! Pod address management: addresses from the node's pod CIDR.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Hands out pod addresses from the node's pod CIDR, never the network or broadcast
/// address, round-robin so a just-freed address is not reused at once.
#[derive(Debug, Clone)]
pub struct Allocator {
    cidr: ipnet::Ipv4Net,
    used: BTreeSet<Ipv4Addr>,
    next: u32,
}

impl Allocator {
    /// An allocator over `cidr` with nothing in use.
    pub fn new(cidr: ipnet::Ipv4Net) -> Self {
        Allocator {
            cidr,
            used: BTreeSet::new(),
            next: 0,
        }
    }

    fn hosts(&self) -> Vec<Ipv4Addr> {
        self.cidr.hosts().collect()
    }

    /// Marks `ip` as used (a re-adopted pod).
    pub fn claim(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// Frees `ip`.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// The next free address, if any.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let hosts = self.hosts();
        let n = u32::try_from(hosts.len()).ok()?;
        for step in 0..n {
            let i = (self.next + step) % n;
            let ip = hosts[i as usize];
            if !self.used.contains(&ip) {
                self.used.insert(ip);
                self.next = (i + 1) % n;
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_skips_network_broadcast_and_used_and_round_robins() {
        let mut a = Allocator::new("10.244.3.0/30".parse().unwrap());
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(a.allocate(), None, ".0 and .3 are never handed out");
        a.release(Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(10, 244, 3, 1)));

        let mut b = Allocator::new("10.244.0.0/24".parse().unwrap());
        b.claim(Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(b.allocate(), Some(Ipv4Addr::new(10, 244, 0, 2)));
        b.release(Ipv4Addr::new(10, 244, 0, 2));
        // Not reused right away.
        assert_eq!(b.allocate(), Some(Ipv4Addr::new(10, 244, 0, 3)));
    }
}
