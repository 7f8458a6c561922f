//! The network fabric: node namespaces and the external host, joined by a bridge that lives
//! in its own namespace. Nothing here touches the host's network namespace: every link is
//! created inside a namespace of ours (`ip -n`), and no namespace gets a default route.
//!
//! ```text
//!   npc-node-0 (eth0 172.30.254.10/24, ip_forward) ─┐
//!   npc-node-1 (eth0 172.30.254.11/24, ip_forward) ─┼─ npc-br0 in npc-fabric
//!   npc-ext    (eth0 172.30.254.100/24)            ─┘
//! ```
//!
//! Node N owns pod CIDR 10.244.N.0/24; every other node and the external host route it via
//! node N's address. The node agent adds one /32 route per pod in its node namespace.
//!
//! The plan ([`Plan::new`]) is pure; [`create`] realizes it with the `ip` command and
//! records each namespace before creating it, so an interrupted `up` is still undone.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use ipnet::Ipv4Net;

/// Namespace holding the bridge (plain instance).
pub const FABRIC_NETNS: &str = "npc-fabric";
/// The bridge inside [`FABRIC_NETNS`].
pub const BRIDGE: &str = "npc-br0";
/// The external host's namespace (plain instance).
pub const EXTERNAL_NETNS: &str = "npc-ext";
/// The fabric's subnet; it exists only inside our namespaces.
pub const FABRIC_PREFIX: [u8; 3] = [172, 30, 254];
/// The pod gateway every pod's default route points at (the node side of its veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Name of the fabric-facing link inside a node or the external host.
pub const UPLINK: &str = "eth0";

/// Errors realizing the fabric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `ip` command could not be run.
    #[error("running `{command}` failed")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The instance name is not `[a-z0-9]{1,8}`.
    #[error("invalid ${INSTANCE_ENV}={tag:?} (want 1 to 8 of [a-z0-9])")]
    Instance {
        /// The rejected value.
        tag: String,
    },
    /// An `ip` command exited non-zero.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One node in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Node name (`npc-node-<i>`).
    pub name: String,
    /// Its namespace name: the node name, or `npc-<instance>-node-<i>` for a named instance.
    pub netns: String,
    /// Its address on the fabric.
    pub ip: Ipv4Addr,
    /// Its pod CIDR (`10.244.<i>.0/24`).
    pub pod_cidr: Ipv4Net,
    /// The fabric side of its veth (in [`FABRIC_NETNS`]).
    pub fabric_link: String,
}

/// The whole fabric, computed from the node count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The namespace holding the bridge.
    pub fabric_netns: String,
    /// The external host's namespace.
    pub external_netns: String,
    /// The nodes.
    pub nodes: Vec<NodePlan>,
    /// The external host's address.
    pub external_ip: Ipv4Addr,
    /// The fabric side of the external host's veth.
    pub external_link: String,
}

/// Most nodes a fabric can hold (node addresses .10 to .99; pod CIDRs 10.244.0–89.0/24).
pub const MAX_NODES: usize = 90;

/// Environment variable naming a cluster instance: its namespaces become
/// `npc-<instance>-…`, so clusters of different instances can run side by side (e.g. a
/// test cluster next to a user's). Unset or empty: the plain names.
pub const INSTANCE_ENV: &str = "NETPOL_LOCAL_INSTANCE";

/// The namespace name of `base` (`fabric`, `ext`, `node-0`) in an instance.
pub fn instance_netns(instance: &str, base: &str) -> String {
    if instance.is_empty() {
        format!("npc-{base}")
    } else {
        format!("npc-{instance}-{base}")
    }
}

impl Plan {
    /// The plan for `nodes` nodes (1..=[`MAX_NODES`]) with the plain names.
    pub fn new(nodes: usize) -> Self {
        Self::for_instance(nodes, "")
    }

    /// The plan for `nodes` nodes of a named instance (see [`INSTANCE_ENV`]).
    pub fn for_instance(nodes: usize, instance: &str) -> Self {
        assert!(
            (1..=MAX_NODES).contains(&nodes),
            "node count must be 1..={MAX_NODES}"
        );
        let [a, b, c] = FABRIC_PREFIX;
        let nodes = (0..nodes)
            .map(|i| NodePlan {
                name: node_name(i),
                netns: instance_netns(instance, &format!("node-{i}")),
                ip: Ipv4Addr::new(a, b, c, 10 + i as u8),
                pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24)
                    .expect("/24 is a valid prefix"),
                fabric_link: format!("npc-fn{i}"),
            })
            .collect();
        Plan {
            fabric_netns: instance_netns(instance, "fabric"),
            external_netns: instance_netns(instance, "ext"),
            nodes,
            external_ip: Ipv4Addr::new(a, b, c, 100),
            external_link: "npc-fext".into(),
        }
    }

    /// Every `ip` invocation that builds the fabric, in order, each tagged with the namespace
    /// it creates (if any) so the caller can record it first.
    pub fn commands(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let fab = self.fabric_netns.as_str();
        let net = |ns: &str| Step::Netns(ns.to_string());
        let ip = |args: &[&str]| Step::Ip(args.iter().map(|s| s.to_string()).collect());
        steps.push(net(fab));
        steps.push(ip(&["-n", fab, "link", "set", "lo", "up"]));
        steps.push(ip(&["-n", fab, "link", "add", BRIDGE, "type", "bridge"]));
        steps.push(ip(&["-n", fab, "link", "set", BRIDGE, "up"]));
        let mut hosts: Vec<(String, String, Ipv4Addr)> = self
            .nodes
            .iter()
            .map(|n| (n.netns.clone(), n.fabric_link.clone(), n.ip))
            .collect();
        hosts.push((
            self.external_netns.clone(),
            self.external_link.clone(),
            self.external_ip,
        ));
        for (ns, link, addr) in &hosts {
            let cidr = format!("{addr}/24");
            steps.push(net(ns));
            steps.push(ip(&["-n", ns, "link", "set", "lo", "up"]));
            steps.push(Step::Link {
                netns: fab.to_string(),
                name: link.clone(),
            });
            steps.push(ip(&[
                "-n", fab, "link", "add", link, "type", "veth", "peer", "name", UPLINK, "netns", ns,
            ]));
            steps.push(ip(&[
                "-n", fab, "link", "set", link, "master", BRIDGE, "up",
            ]));
            steps.push(ip(&["-n", ns, "addr", "add", &cidr, "dev", UPLINK]));
            steps.push(ip(&["-n", ns, "link", "set", UPLINK, "up"]));
        }
        for (ns, _, _) in &hosts {
            for other in self.nodes.iter().filter(|n| &n.netns != ns) {
                let (dst, via) = (other.pod_cidr.to_string(), other.ip.to_string());
                steps.push(ip(&["-n", ns, "route", "add", &dst, "via", &via]));
            }
        }
        for n in &self.nodes {
            steps.push(Step::Forwarding(n.netns.clone()));
        }
        steps
    }
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("npc-node-{i}")
}

/// The path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// One step of building the fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create (and first record) this namespace.
    Netns(String),
    /// Record this link (created by the next step).
    Link {
        /// Its namespace.
        netns: String,
        /// Its name.
        name: String,
    },
    /// Run `ip` with these arguments.
    Ip(Vec<String>),
    /// Turn on IPv4 forwarding inside this namespace.
    Forwarding(String),
}

/// Runs `ip` with these arguments (for steps outside the plan, e.g. real nodes' additions).
pub fn ip(args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    run("ip", &args)
}

fn run(program: &str, args: &[String]) -> Result<()> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs the plan's steps. `record_netns` / `record_link` are called (and must persist the
/// record) before the object is created.
pub fn create(
    plan: &Plan,
    mut record_netns: impl FnMut(&str),
    mut record_link: impl FnMut(&str, &str),
) -> Result<()> {
    for step in plan.commands() {
        match step {
            Step::Netns(name) => {
                record_netns(&name);
                run("ip", &["netns".into(), "add".into(), name])?;
            }
            Step::Link { netns, name } => record_link(&netns, &name),
            Step::Ip(args) => run("ip", &args)?,
            Step::Forwarding(ns) => run(
                "ip",
                &[
                    "netns".into(),
                    "exec".into(),
                    ns,
                    "sysctl".into(),
                    "-qw".into(),
                    "net.ipv4.ip_forward=1".into(),
                ],
            )?,
        }
    }
    Ok(())
}

/// Names of all namespaces pinned under /run/netns.
pub fn list_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Deletes a link inside a namespace; a missing namespace or link is not an error.
pub fn delete_link(netns: &str, name: &str) -> Result<()> {
    if !netns_path(netns).exists() {
        return Ok(());
    }
    match run(
        "ip",
        &[
            "-n".into(),
            netns.into(),
            "link".into(),
            "del".into(),
            name.into(),
        ],
    ) {
        Err(Error::Failed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other,
    }
}

/// Unpins a namespace (as `ip netns del`); a missing one is not an error.
pub fn delete_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    match run("ip", &["netns".into(), "del".into(), name.into()]) {
        Err(Error::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        other => other,
    }
}

/// Names of the links in a namespace other than `lo` (empty if it cannot be read).
pub fn links_in(netns: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            let name = name.split('@').next()?.to_string();
            (name != "lo").then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_node_plan_addresses() {
        let plan = Plan::new(2);
        assert_eq!(plan.nodes[0].name, "npc-node-0");
        assert_eq!(plan.nodes[1].ip, Ipv4Addr::new(172, 30, 254, 11));
        assert_eq!(plan.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(plan.external_ip, Ipv4Addr::new(172, 30, 254, 100));
        for n in &plan.nodes {
            assert!(n.fabric_link.len() <= 15 && n.fabric_link.starts_with("npc"));
            assert!(!n.pod_cidr.contains(&plan.external_ip));
        }
    }

    #[test]
    fn namespaces_are_recorded_before_use_and_routes_cross() {
        let steps = Plan::new(2).commands();
        let pos = |want: &Step| steps.iter().position(|s| s == want).unwrap();
        let ip = |a: &str| Step::Ip(a.split(' ').map(String::from).collect());
        // Each namespace is created before any command names it.
        for ns in ["npc-fabric", "npc-node-0", "npc-node-1", "npc-ext"] {
            let created = pos(&Step::Netns(ns.into()));
            let first_use = steps
                .iter()
                .position(|s| matches!(s, Step::Ip(a) if a.iter().any(|x| x == ns)))
                .unwrap();
            assert!(created < first_use, "{ns} used before it is created");
        }
        pos(&ip(
            "-n npc-node-0 route add 10.244.1.0/24 via 172.30.254.11",
        ));
        pos(&ip(
            "-n npc-node-1 route add 10.244.0.0/24 via 172.30.254.10",
        ));
        pos(&ip("-n npc-ext route add 10.244.0.0/24 via 172.30.254.10"));
        pos(&Step::Forwarding("npc-node-1".into()));
        // No namespace gets a default route, and no command works in the host namespace.
        for s in &steps {
            if let Step::Ip(args) = s {
                assert_eq!(args[0], "-n", "host-namespace command: {args:?}");
                assert!(
                    !args.iter().any(|a| a == "default"),
                    "default route: {args:?}"
                );
            }
        }
        // Links are recorded before the command that creates them.
        let rec = pos(&Step::Link {
            netns: "npc-fabric".into(),
            name: "npc-fext".into(),
        });
        let made = steps
            .iter()
            .position(|s| matches!(s, Step::Ip(a) if a.contains(&"npc-fext".to_string()) && a.contains(&"add".to_string())))
            .unwrap();
        assert!(rec < made);
    }

    #[test]
    fn a_named_instance_prefixes_every_namespace() {
        let plan = Plan::for_instance(2, "t1");
        assert_eq!(plan.fabric_netns, "npc-t1-fabric");
        assert_eq!(plan.external_netns, "npc-t1-ext");
        assert_eq!(plan.nodes[1].netns, "npc-t1-node-1");
        assert_eq!(plan.nodes[1].name, "npc-node-1", "node names stay plain");
        let steps = plan.commands();
        assert!(steps.contains(&Step::Forwarding("npc-t1-node-0".into())));
        for s in &steps {
            if let Step::Netns(n) = s {
                assert!(n.starts_with("npc-t1-"), "{n}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "node count")]
    fn zero_nodes_is_refused() {
        Plan::new(0);
    }
}
