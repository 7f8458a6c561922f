//! The netfilter rules that send new connections to the enforcer's queues.
//!
//! Where packets are judged (both backends):
//! - `FORWARD` and `OUTPUT` at filter priority: after DNAT (PREROUTING/OUTPUT `dstnat`, so a
//!   Service's backend pod and target port are visible) and before SNAT (POSTROUTING `srcnat`,
//!   so the source is still the pod).
//! - `INPUT`: pod → node traffic, which never reaches `FORWARD`.
//!
//! What is queued: only packets of a *new* connection (`ctstate NEW`) carrying TCP, UDP or SCTP.
//! Established, related and reply packets never leave the kernel. Just before queueing, the
//! connection gets the *accepted* bit in its conntrack mark: a dropped first packet never
//! confirms its conntrack entry, so the mark only survives on connections that were accepted
//! (visible with `conntrack -L --mark 0x200000/0x200000`). A packet whose connection already
//! carries the bit is not queued again: conntrack calls every packet NEW until the first reply,
//! so without this a UDP stream with no answers, or a retransmitted SYN, would be judged per
//! packet. (Packets that arrive while the first one is still queued have no confirmed entry yet
//! and are judged too — the same verdict, one more queue trip.)
//!
//! Exempt: loopback (`lo` in `INPUT` and `OUTPUT`); node-local health probes (sockets owned by
//! the configured uid, root by default, in `OUTPUT`, as kubelet probes are); IPv6 neighbour
//! discovery and all other ICMP/ICMPv6, because only TCP, UDP and SCTP are queued (the engine's
//! [`Flow`](crate::flow::Flow) names no other protocol).
//!
//! Rules live in chains of our own (`NETPOL-ENFORCER-*` for iptables, table
//! `inet netpol-enforcer` for nftables), jumped to from the built-in chains, so installing is a
//! flush-and-refill of our chains and removing touches nothing else.

/// Which netfilter front end carries the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `nft` with the `queue` statement (needs the kernel's `nft_queue`).
    Nftables,
    /// `iptables`/`ip6tables` with `-j NFQUEUE` (xt target; works through nft_compat too).
    Iptables,
}

impl Backend {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// An IP family the iptables backend installs rules for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// Why rules could not be installed, detected or removed: the `nft` or `iptables` run that
/// failed.
pub use crate::command::Error;

/// What the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// First queue number.
    pub queue_base: u16,
    /// Number of queues (≥ 1); connections are spread over them by flow hash.
    pub queues: u16,
    /// Accept (instead of drop) when no process listens on the queue.
    pub fail_open: bool,
    /// The conntrack mark bit(s) given to accepted connections.
    pub accept_mark: u32,
    /// Sockets owned by this uid on the node are not judged in `OUTPUT` (health probes).
    pub exempt_uid: Option<u32>,
    /// IP families to cover (iptables backend; nftables covers both in one `inet` table).
    pub families: Vec<Family>,
    /// Pod address ranges. Empty: every new connection is judged. Otherwise only connections
    /// that involve a pod are: `FORWARD` from or to a range, `INPUT` from one, `OUTPUT` to one —
    /// so a node's own traffic (SSH, the kubelet) never depends on the enforcer.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Pick the queue by the CPU that handles the packet (`--queue-cpu-fanout`, nft `fanout`)
    /// instead of by flow hash; with one queue thread pinned per CPU, the wake-up stays local.
    pub cpu_fanout: bool,
}

/// Our iptables chain names: per hook, plus the shared judging chain.
pub const CHAIN_INPUT: &str = "NETPOL-ENFORCER-INPUT";
/// Jumped to from `FORWARD`.
pub const CHAIN_FORWARD: &str = "NETPOL-ENFORCER-FORWARD";
/// Jumped to from `OUTPUT`.
pub const CHAIN_OUTPUT: &str = "NETPOL-ENFORCER-OUTPUT";
/// Marks and queues; reached only for new TCP/UDP/SCTP connections.
pub const CHAIN_JUDGE: &str = "NETPOL-ENFORCER-JUDGE";
/// The nftables table name (family `inet`).
pub const NFT_TABLE: &str = "netpol-enforcer";

const HOOKS: [(&str, &str); 3] = [
    ("INPUT", CHAIN_INPUT),
    ("FORWARD", CHAIN_FORWARD),
    ("OUTPUT", CHAIN_OUTPUT),
];

impl RuleSpec {
    fn last_queue(&self) -> u16 {
        self.queue_base + self.queues.max(1) - 1
    }

    /// Address matches (each ending in a space) under which a hook queues: one empty match
    /// when no pod ranges are configured; none when none of them is of this family.
    fn iptables_selectors(&self, builtin: &str, family: Family) -> Vec<String> {
        if self.pod_cidrs.is_empty() {
            return vec![String::new()];
        }
        let directions: &[&str] = match builtin {
            "INPUT" => &["-s"],
            "OUTPUT" => &["-d"],
            _ => &["-s", "-d"],
        };
        let cidrs = self.pod_cidrs.iter().filter(|c| match family {
            Family::V4 => matches!(c, ipnet::IpNet::V4(_)),
            Family::V6 => matches!(c, ipnet::IpNet::V6(_)),
        });
        cidrs
            .flat_map(|cidr| directions.iter().map(move |d| format!("{d} {cidr} ")))
            .collect()
    }

    /// The nft rules that send a hook's new connections to `judge`.
    fn nft_selectors(&self, hook: &str) -> String {
        const JUMP: &str = "meta l4proto { tcp, udp, sctp } jump judge";
        if self.pod_cidrs.is_empty() {
            return format!("    {JUMP}\n");
        }
        let directions: &[&str] = match hook {
            "input" => &["saddr"],
            "output" => &["daddr"],
            _ => &["saddr", "daddr"],
        };
        let mut out = String::new();
        for (family, v4) in [("ip", true), ("ip6", false)] {
            let set: Vec<String> = self
                .pod_cidrs
                .iter()
                .filter(|c| matches!(c, ipnet::IpNet::V4(_)) == v4)
                .map(ToString::to_string)
                .collect();
            if set.is_empty() {
                continue;
            }
            for direction in directions {
                out += &format!("    {family} {direction} {{ {} }} {JUMP}\n", set.join(", "));
            }
        }
        out
    }

    /// The `iptables-restore --noflush` input for one family: declaring our chains flushes them,
    /// so applying it twice leaves one copy.
    pub fn iptables_restore(&self, family: Family) -> String {
        let mut out = String::from("*filter\n");
        for chain in [CHAIN_INPUT, CHAIN_FORWARD, CHAIN_OUTPUT, CHAIN_JUDGE] {
            out += &format!(":{chain} - [0:0]\n");
        }
        out += &format!("-A {CHAIN_INPUT} -i lo -j RETURN\n");
        out += &format!("-A {CHAIN_OUTPUT} -o lo -j RETURN\n");
        if let Some(uid) = self.exempt_uid {
            out += &format!("-A {CHAIN_OUTPUT} -m owner --uid-owner {uid} -j RETURN\n");
        }
        for (builtin, chain) in HOOKS {
            out += &format!("-A {chain} -m conntrack ! --ctstate NEW -j RETURN\n");
            for selector in self.iptables_selectors(builtin, family) {
                for proto in ["tcp", "udp", "sctp"] {
                    out += &format!("-A {chain} {selector}-p {proto} -j {CHAIN_JUDGE}\n");
                }
            }
        }
        let mark = self.accept_mark;
        // Already accepted (a UDP flow still waiting for its first reply is NEW to conntrack for
        // every datagram): stay in the kernel.
        out += &format!("-A {CHAIN_JUDGE} -m connmark --mark {mark:#x}/{mark:#x} -j RETURN\n");
        out += &format!("-A {CHAIN_JUDGE} -j CONNMARK --set-xmark {mark:#x}/{mark:#x}\n");
        let target = if self.queues <= 1 {
            format!("--queue-num {}", self.queue_base)
        } else if self.cpu_fanout {
            format!(
                "--queue-balance {}:{} --queue-cpu-fanout",
                self.queue_base,
                self.last_queue()
            )
        } else {
            format!("--queue-balance {}:{}", self.queue_base, self.last_queue())
        };
        let bypass = if self.fail_open {
            " --queue-bypass"
        } else {
            ""
        };
        out += &format!("-A {CHAIN_JUDGE} -j NFQUEUE {target}{bypass}\n");
        out += "COMMIT\n";
        out
    }

    /// The `nft -f -` input: replaces table `inet netpol-enforcer` atomically.
    pub fn nft_script(&self) -> String {
        let queue_to = if self.queues <= 1 {
            self.queue_base.to_string()
        } else {
            format!("{}-{}", self.queue_base, self.last_queue())
        };
        let flags = match (self.fail_open, self.cpu_fanout && self.queues > 1) {
            (true, true) => "flags bypass,fanout ",
            (true, false) => "flags bypass ",
            (false, true) => "flags fanout ",
            (false, false) => "",
        };
        let probe_exempt = self
            .exempt_uid
            .map(|uid| format!("    meta skuid {uid} return\n"))
            .unwrap_or_default();
        const NEW_ONLY: &str = "    ct state != new return\n";
        let (input, forward, output) = (
            self.nft_selectors("input"),
            self.nft_selectors("forward"),
            self.nft_selectors("output"),
        );
        format!(
            "table inet {NFT_TABLE} {{}}\n\
             delete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n\
             \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"lo\" return\n{NEW_ONLY}{input}  }}\n\
             \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n{NEW_ONLY}{forward}  }}\n\
             \x20 chain output {{\n    type filter hook output priority filter; policy accept;\n    oifname \"lo\" return\n{probe_exempt}{NEW_ONLY}{output}  }}\n\
             \x20 chain judge {{\n    ct mark and {mark:#x} == {mark:#x} return\n    ct mark set ct mark or {mark:#x}\n    queue {flags}to {queue_to}\n  }}\n\
             }}\n",
            mark = self.accept_mark,
        )
    }
}

/// Runs one `nft` or `iptables` command; its output is not needed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), Error> {
    crate::command::run(program, args, stdin).map(drop)
}

/// Whether the kernel accepts the nftables `queue` statement: add it in a throwaway table and
/// delete the table again. Must run inside the target network namespace.
pub fn nft_queue_supported() -> bool {
    let table = format!("npe-probe-{}", std::process::id());
    let script =
        format!("table inet {table} {{\n  chain probe {{\n    queue flags bypass to 0\n  }}\n}}\n");
    let supported = run("nft", &["-f", "-"], Some(&script)).is_ok();
    // The table exists only if the whole script was accepted; nothing to clean otherwise.
    if supported {
        let _ = run("nft", &["delete", "table", "inet", &table], None);
    }
    supported
}

/// Pick the backend: nftables where the `queue` statement works, iptables otherwise.
pub fn detect() -> Backend {
    if nft_queue_supported() {
        Backend::Nftables
    } else {
        Backend::Iptables
    }
}

/// Install (or refresh) the rules. Must run inside the target network namespace.
pub fn install(backend: Backend, spec: &RuleSpec) -> Result<(), Error> {
    match backend {
        Backend::Nftables => run("nft", &["-f", "-"], Some(&spec.nft_script())),
        Backend::Iptables => {
            for family in &spec.families {
                run(
                    family.restore(),
                    &["--noflush"],
                    Some(&spec.iptables_restore(*family)),
                )?;
                for (builtin, ours) in HOOKS {
                    let check = run(family.iptables(), &["-w", "-C", builtin, "-j", ours], None);
                    if check.is_err() {
                        run(
                            family.iptables(),
                            &["-w", "-I", builtin, "1", "-j", ours],
                            None,
                        )?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// Whether the rules [`install`] adds are still in place (jumps from the built-in chains and the
/// queue rule). Must run inside the target network namespace.
pub fn intact(backend: Backend, spec: &RuleSpec) -> bool {
    match backend {
        Backend::Nftables => {
            run("nft", &["list", "chain", "inet", NFT_TABLE, "judge"], None).is_ok()
        }
        Backend::Iptables => spec.families.iter().all(|family| {
            let ipt = family.iptables();
            let jumps = HOOKS
                .iter()
                .all(|(builtin, ours)| run(ipt, &["-w", "-C", builtin, "-j", ours], None).is_ok());
            let mut queue = vec!["-w", "-C", CHAIN_JUDGE, "-j", "NFQUEUE"];
            let (first, last) = (spec.queue_base.to_string(), spec.last_queue().to_string());
            let balance = format!("{first}:{last}");
            if spec.queues <= 1 {
                queue.extend(["--queue-num", &first]);
            } else {
                queue.extend(["--queue-balance", &balance]);
                if spec.cpu_fanout {
                    queue.push("--queue-cpu-fanout");
                }
            }
            if spec.fail_open {
                queue.push("--queue-bypass");
            }
            jumps && run(ipt, &queue, None).is_ok()
        }),
    }
}

/// Remove everything [`install`] added, for both backends (whichever is present). Missing rules
/// are not an error, so this also cleans up after a crash. Must run inside the target namespace.
pub fn remove(families: &[Family]) -> Result<(), Error> {
    // nftables: one table; absent is fine.
    if run("nft", &["list", "table", "inet", NFT_TABLE], None).is_ok() {
        run("nft", &["delete", "table", "inet", NFT_TABLE], None)?;
    }
    for family in families {
        let ipt = family.iptables();
        if run(ipt, &["-w", "-n", "-L", CHAIN_JUDGE], None).is_err() {
            continue;
        }
        for (builtin, ours) in HOOKS {
            // Delete every copy of the jump, however many a crashed run left.
            while run(ipt, &["-w", "-D", builtin, "-j", ours], None).is_ok() {}
        }
        for chain in [CHAIN_INPUT, CHAIN_FORWARD, CHAIN_OUTPUT, CHAIN_JUDGE] {
            run(ipt, &["-w", "-F", chain], None)?;
        }
        for chain in [CHAIN_INPUT, CHAIN_FORWARD, CHAIN_OUTPUT, CHAIN_JUDGE] {
            run(ipt, &["-w", "-X", chain], None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(queues: u16, fail_open: bool) -> RuleSpec {
        RuleSpec {
            queue_base: 100,
            queues,
            fail_open,
            accept_mark: 0x0020_0000,
            exempt_uid: Some(0),
            families: vec![Family::V4],
            pod_cidrs: vec![],
            cpu_fanout: false,
        }
    }

    #[test]
    fn iptables_rules_queue_only_new_tcp_udp_sctp() {
        let expected = "\
*filter
:NETPOL-ENFORCER-INPUT - [0:0]
:NETPOL-ENFORCER-FORWARD - [0:0]
:NETPOL-ENFORCER-OUTPUT - [0:0]
:NETPOL-ENFORCER-JUDGE - [0:0]
-A NETPOL-ENFORCER-INPUT -i lo -j RETURN
-A NETPOL-ENFORCER-OUTPUT -o lo -j RETURN
-A NETPOL-ENFORCER-OUTPUT -m owner --uid-owner 0 -j RETURN
-A NETPOL-ENFORCER-INPUT -m conntrack ! --ctstate NEW -j RETURN
-A NETPOL-ENFORCER-INPUT -p tcp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-INPUT -p udp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-INPUT -p sctp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-FORWARD -m conntrack ! --ctstate NEW -j RETURN
-A NETPOL-ENFORCER-FORWARD -p tcp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-FORWARD -p udp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-FORWARD -p sctp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-OUTPUT -m conntrack ! --ctstate NEW -j RETURN
-A NETPOL-ENFORCER-OUTPUT -p tcp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-OUTPUT -p udp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-OUTPUT -p sctp -j NETPOL-ENFORCER-JUDGE
-A NETPOL-ENFORCER-JUDGE -m connmark --mark 0x200000/0x200000 -j RETURN
-A NETPOL-ENFORCER-JUDGE -j CONNMARK --set-xmark 0x200000/0x200000
-A NETPOL-ENFORCER-JUDGE -j NFQUEUE --queue-balance 100:103 --queue-bypass
COMMIT
";
        assert_eq!(spec(4, true).iptables_restore(Family::V4), expected);
    }

    #[test]
    fn fail_closed_single_queue_has_no_bypass() {
        let mut s = spec(1, false);
        s.exempt_uid = None;
        let text = s.iptables_restore(Family::V4);
        assert!(text.contains("-j NFQUEUE --queue-num 100\n"), "{text}");
        assert!(!text.contains("bypass"));
        assert!(!text.contains("--uid-owner"));
    }

    #[test]
    fn nft_script_mirrors_the_iptables_rules() {
        let text = spec(2, true).nft_script();
        assert!(
            text.starts_with("table inet netpol-enforcer {}\ndelete table inet netpol-enforcer\n")
        );
        for hook in ["input", "forward", "output"] {
            assert!(
                text.contains(&format!(
                    "type filter hook {hook} priority filter; policy accept;"
                )),
                "{text}"
            );
        }
        assert!(text.contains("ct state != new return"));
        assert!(text.contains("meta l4proto { tcp, udp, sctp } jump judge"));
        assert!(text.contains("meta skuid 0 return"));
        assert!(text.contains(
            "ct mark and 0x200000 == 0x200000 return\n    ct mark set ct mark or 0x200000"
        ));
        assert!(text.contains("queue flags bypass to 100-101"), "{text}");
        assert!(!spec(1, false).nft_script().contains("bypass"));
        let mut fanout = spec(2, false);
        fanout.cpu_fanout = true;
        assert!(
            fanout
                .nft_script()
                .contains("queue flags fanout to 100-101")
        );
        assert!(
            fanout
                .iptables_restore(Family::V4)
                .contains("-j NFQUEUE --queue-balance 100:101 --queue-cpu-fanout\n")
        );
    }

    #[test]
    fn pod_ranges_limit_what_is_queued_per_hook_and_family() {
        let mut s = spec(1, false);
        s.pod_cidrs = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        let v4 = s.iptables_restore(Family::V4);
        assert!(v4.contains(
            "-A NETPOL-ENFORCER-INPUT -s 10.244.0.0/16 -p tcp -j NETPOL-ENFORCER-JUDGE\n"
        ));
        assert!(v4.contains(
            "-A NETPOL-ENFORCER-OUTPUT -d 10.244.0.0/16 -p udp -j NETPOL-ENFORCER-JUDGE\n"
        ));
        assert!(v4.contains(
            "-A NETPOL-ENFORCER-FORWARD -s 10.244.0.0/16 -p sctp -j NETPOL-ENFORCER-JUDGE\n"
        ));
        assert!(v4.contains(
            "-A NETPOL-ENFORCER-FORWARD -d 10.244.0.0/16 -p sctp -j NETPOL-ENFORCER-JUDGE\n"
        ));
        assert!(!v4.contains(
            "-d 10.244.0.0/16 -p tcp -j NETPOL-ENFORCER-JUDGE\n-A NETPOL-ENFORCER-INPUT"
        ));
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(
            !v4.contains("-A NETPOL-ENFORCER-INPUT -p tcp"),
            "no unrestricted rule: {v4}"
        );
        let v6 = s.iptables_restore(Family::V6);
        assert!(v6.contains(
            "-A NETPOL-ENFORCER-INPUT -s fd00:10::/64 -p tcp -j NETPOL-ENFORCER-JUDGE\n"
        ));
        assert!(!v6.contains("10.244"));
        // Only IPv4 ranges: the IPv6 rules queue nothing at all.
        s.pod_cidrs.truncate(1);
        assert!(
            !s.iptables_restore(Family::V6)
                .contains("-j NETPOL-ENFORCER-JUDGE")
        );
        let nft = s.nft_script();
        assert!(
            nft.contains("ip saddr { 10.244.0.0/16 } meta l4proto { tcp, udp, sctp } jump judge"),
            "{nft}"
        );
        assert!(
            nft.contains("ip daddr { 10.244.0.0/16 } meta l4proto"),
            "{nft}"
        );
        assert!(!nft.contains("ip6 "), "{nft}");
    }
}
