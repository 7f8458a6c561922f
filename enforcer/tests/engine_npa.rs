//! The network-policy-api conformance scenarios, judged by the engine alone.
//!
//! World: the five houses (`network-policy-conformance-<house>`, label `conformance-house`),
//! two pods each with named ports `web` (TCP 80) and `dns` (UDP 53); forbidden-forrest's two
//! pods are host-networked on two nodes labelled `kubernetes.io/os=linux`. Policies are written
//! once in ClusterNetworkPolicy (v1alpha2) form, as in the upstream HEAD manifests, and also
//! rendered to AdminNetworkPolicy / BaselineAdminNetworkPolicy (v1alpha1) with the project's
//! mapping. Every probe of the suite's `tests/fixtures/npa-probes.csv` (the reference's Appendix A probe table, all
//! 24 tests, patches applied in order) is checked against `decide`, for both API versions.

mod engine_support;

use std::collections::BTreeMap;

use engine_support::*;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_api::{v1alpha1, v1alpha2};
use netpol_enforcer::engine::{Verdict, decide};
use netpol_enforcer::store::Snapshot;
use serde_json::{Value, json};

const HOUSES: [&str; 5] = [
    "gryffindor",
    "slytherin",
    "hufflepuff",
    "ravenclaw",
    "forbidden-forrest",
];
const HNP_START: u16 = 34345;

fn ns_name(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

fn house_of(abbrev: &str) -> (&'static str, usize) {
    let (h, i) = abbrev.split_at(1);
    let house = match h {
        "G" => "gryffindor",
        "S" => "slytherin",
        "H" => "hufflepuff",
        "R" => "ravenclaw",
        "F" => "forbidden-forrest",
        other => panic!("unknown house {other}"),
    };
    (house, i.parse().unwrap())
}

fn node_ip(i: usize) -> String {
    format!("172.18.0.{}", 10 + i)
}

/// The IP of a pod by its abbreviation (`G0`, `F1`, …): host-network pods have their node's.
fn ip(abbrev: &str) -> String {
    let (house, i) = house_of(abbrev);
    if house == "forbidden-forrest" {
        return node_ip(i);
    }
    let h = HOUSES.iter().position(|x| *x == house).unwrap() + 1;
    format!("10.244.{h}.{}", 10 + i)
}

fn pods() -> Vec<Pod> {
    let sts = [
        ("gryffindor", "harry-potter"),
        ("slytherin", "draco-malfoy"),
        ("hufflepuff", "cedric-diggory"),
        ("ravenclaw", "luna-lovegood"),
    ];
    let mut out = Vec::new();
    for (house, ss) in sts {
        for i in 0..2 {
            let abbrev = format!("{}{i}", &house[..1].to_uppercase());
            out.push(pod(
                &ns_name(house),
                &format!("{ss}-{i}"),
                &[("conformance-house", house)],
                &ip(&abbrev),
                &[("web", 80, "TCP"), ("dns", 53, "UDP")],
            ));
        }
    }
    for i in 0..2 {
        out.push(host_pod(
            &ns_name("forbidden-forrest"),
            &format!("centaur-{i}"),
            &[("conformance-house", "forbidden-forrest")],
            &node_ip(i),
        ));
    }
    out
}

fn nodes() -> Vec<Node> {
    (0..2)
        .map(|i| {
            node(
                &format!("node-{i}"),
                &[("kubernetes.io/os", "linux")],
                &node_ip(i),
            )
        })
        .collect()
}

/// Everything a scenario step needs; patches mutate it.
struct Scenario {
    cnps: Vec<Value>,
    netpols: Vec<NetworkPolicy>,
    /// `conformance-house` label per namespace name.
    house_labels: BTreeMap<String, String>,
}

impl Scenario {
    fn new(cnps: Vec<Value>, netpols: Vec<NetworkPolicy>) -> Self {
        let house_labels = HOUSES.iter().map(|h| (ns_name(h), h.to_string())).collect();
        Scenario {
            cnps,
            netpols,
            house_labels,
        }
    }

    fn cnp(&mut self, name: &str) -> &mut Value {
        self.cnps
            .iter_mut()
            .find(|c| c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no policy {name}"))
    }

    fn namespaces(&self) -> Vec<Namespace> {
        self.house_labels
            .iter()
            .map(|(n, h)| namespace(n, &[("conformance-house", h)]))
            .collect()
    }

    fn snapshot(&self, version: Version) -> Snapshot {
        let (mut anps, mut banps, mut cnps) = (Vec::new(), Vec::new(), Vec::new());
        for c in &self.cnps {
            match version {
                Version::V1alpha2 => {
                    cnps.push(from_json::<v1alpha2::ClusterNetworkPolicy>(c.clone()))
                }
                Version::V1alpha1 => {
                    let v = to_v1alpha1(c);
                    if v["kind"] == "AdminNetworkPolicy" {
                        anps.push(from_json::<v1alpha1::AdminNetworkPolicy>(v));
                    } else {
                        banps.push(from_json::<v1alpha1::BaselineAdminNetworkPolicy>(v));
                    }
                }
            }
        }
        Snapshot::from_objects(
            pods(),
            self.namespaces(),
            nodes(),
            self.netpols.clone(),
            anps,
            banps,
            cnps,
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Version {
    V1alpha1,
    V1alpha2,
}

/// Renders a v1alpha2 ClusterNetworkPolicy as the v1alpha1 object the project maps it from:
/// tier Admin → AdminNetworkPolicy (same priority), tier Baseline → BaselineAdminNetworkPolicy
/// (no priority), Accept → Allow, `protocols` → `ports`.
fn to_v1alpha1(cnp: &Value) -> Value {
    let mut v = cnp.clone();
    v["apiVersion"] = json!("policy.networking.k8s.io/v1alpha1");
    let spec = v["spec"].as_object_mut().unwrap();
    let tier = spec.remove("tier").unwrap();
    if tier == "Baseline" {
        spec.remove("priority");
        v["kind"] = json!("BaselineAdminNetworkPolicy");
    } else {
        v["kind"] = json!("AdminNetworkPolicy");
    }
    for dir in ["ingress", "egress"] {
        for rule in v["spec"]
            .get_mut(dir)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if rule["action"] == "Accept" {
                rule["action"] = json!("Allow");
            }
            let Some(protocols) = rule.as_object_mut().unwrap().remove("protocols") else {
                continue;
            };
            let ports: Vec<Value> = protocols
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    if let Some(name) = p.get("destinationNamedPort") {
                        return json!({"namedPort": name});
                    }
                    let (proto, ports) = p.as_object().unwrap().iter().next().unwrap();
                    let proto = proto.to_uppercase();
                    let dp = &ports["destinationPort"];
                    match dp.get("number") {
                        Some(n) => json!({"portNumber": {"protocol": proto, "port": n}}),
                        None => json!({"portRange": {"protocol": proto, "start": dp["range"]["start"], "end": dp["range"]["end"]}}),
                    }
                })
                .collect();
            rule["ports"] = json!(ports);
        }
    }
    v
}

// ---- policy builders (v1alpha2 form) ----

const MDN: &str = "kubernetes.io/metadata.name";

fn ns_by_name(house: &str) -> Value {
    json!({"namespaces": {"matchLabels": {MDN: ns_name(house)}}})
}

fn house_pods(house: &str) -> Value {
    json!({"pods": {"namespaceSelector": {"matchLabels": {"conformance-house": house}},
                    "podSelector": {"matchLabels": {"conformance-house": house}}}})
}

fn linux_nodes() -> Value {
    json!({"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}})
}

/// `tcp:80`, `udp:53-54` → a v1alpha2 protocol entry.
fn protocol(spec: &str) -> Value {
    let (p, port) = spec.split_once(':').unwrap();
    match port.split_once('-') {
        Some((s, e)) => {
            json!({p: {"destinationPort": {"range": {"start": s.parse::<u16>().unwrap(), "end": e.parse::<u16>().unwrap()}}}})
        }
        None => json!({p: {"destinationPort": {"number": port.parse::<u16>().unwrap()}}}),
    }
}

fn rule(dir: &str, name: &str, action: &str, peers: Vec<Value>, ports: &[&str]) -> Value {
    let peer_key = if dir == "ingress" { "from" } else { "to" };
    let mut r = json!({"name": name, "action": action, peer_key: peers});
    if !ports.is_empty() {
        r["protocols"] = json!(ports.iter().map(|p| protocol(p)).collect::<Vec<_>>());
    }
    r
}

/// The rule lists of the per-protocol conformance manifests: all of house `a`, house `b` at some
/// ports, house `c` at some ports then everything else. Admin policies carry the `Pass` rules.
fn ordered_rules(
    dir: &str,
    a: &str,
    b: &str,
    b_ports: &[&str],
    c: &str,
    c_ports: &[&str],
    admin: bool,
) -> Vec<Value> {
    let (to, from) = if dir == "ingress" {
        ("from", "from")
    } else {
        ("to", "to")
    };
    let _ = from;
    let mut rules = vec![
        rule(
            dir,
            &format!("allow-{to}-{a}-everything"),
            "Accept",
            vec![ns_by_name(a)],
            &[],
        ),
        rule(
            dir,
            &format!("deny-{to}-{a}-everything"),
            "Deny",
            vec![ns_by_name(a)],
            &[],
        ),
    ];
    if admin {
        rules.push(rule(
            dir,
            &format!("pass-{to}-{a}-everything"),
            "Pass",
            vec![ns_by_name(a)],
            &[],
        ));
    }
    rules.push(rule(
        dir,
        &format!("deny-{to}-{b}-at-ports"),
        "Deny",
        vec![ns_by_name(b)],
        b_ports,
    ));
    if admin {
        rules.push(rule(
            dir,
            &format!("pass-{to}-{b}-at-ports"),
            "Pass",
            vec![ns_by_name(b)],
            b_ports,
        ));
    }
    rules.push(rule(
        dir,
        &format!("allow-{to}-{c}-at-ports"),
        "Accept",
        vec![ns_by_name(c)],
        c_ports,
    ));
    rules.push(rule(
        dir,
        &format!("deny-{to}-{c}-everything-else"),
        "Deny",
        vec![ns_by_name(c)],
        &[],
    ));
    rules
}

fn cnp(
    name: &str,
    tier: &str,
    priority: i32,
    subject: Value,
    ingress: Vec<Value>,
    egress: Vec<Value>,
) -> Value {
    let mut spec = json!({"tier": tier, "priority": priority, "subject": subject});
    if !ingress.is_empty() {
        spec["ingress"] = json!(ingress);
    }
    if !egress.is_empty() {
        spec["egress"] = json!(egress);
    }
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": spec})
}

fn subject_ns(house: &str) -> Value {
    json!({"namespaces": {"matchLabels": {MDN: ns_name(house)}}})
}

fn subject_label(house: &str) -> Value {
    json!({"namespaces": {"matchLabels": {"conformance-house": house}}})
}

/// The single-direction per-protocol policy: `(direction, subject, a, b, b_ports, c, c_ports, admin priority)`.
fn single(kind: &str, admin: bool) -> Value {
    let (dir, subject, a, b, bp, c, cp, prio): (
        &str,
        &str,
        &str,
        &str,
        &[&str],
        &str,
        &[&str],
        i32,
    ) = match kind {
        "egress-tcp" => (
            "egress",
            "gryffindor",
            "ravenclaw",
            "slytherin",
            &["tcp:80"],
            "hufflepuff",
            &["tcp:8080"],
            6,
        ),
        "egress-udp" => (
            "egress",
            "hufflepuff",
            "ravenclaw",
            "slytherin",
            &["udp:5353"],
            "gryffindor",
            &["udp:53"],
            7,
        ),
        "egress-sctp" => (
            "egress",
            "ravenclaw",
            "gryffindor",
            "slytherin",
            &["sctp:9003"],
            "hufflepuff",
            &["sctp:9003"],
            8,
        ),
        "ingress-tcp" => (
            "ingress",
            "gryffindor",
            "ravenclaw",
            "slytherin",
            &["tcp:80"],
            "hufflepuff",
            &["tcp:80"],
            3,
        ),
        "ingress-udp" => (
            "ingress",
            "hufflepuff",
            "ravenclaw",
            "slytherin",
            &["udp:5353"],
            "gryffindor",
            &["udp:53"],
            4,
        ),
        "ingress-sctp" => (
            "ingress",
            "ravenclaw",
            "gryffindor",
            "slytherin",
            &["sctp:9003"],
            "hufflepuff",
            &["sctp:9003"],
            5,
        ),
        other => panic!("unknown policy {other}"),
    };
    let rules = ordered_rules(dir, a, b, bp, c, cp, admin);
    let (ingress, egress) = if dir == "ingress" {
        (rules, vec![])
    } else {
        (vec![], rules)
    };
    if admin {
        cnp(kind, "Admin", prio, subject_ns(subject), ingress, egress)
    } else {
        cnp(
            "default",
            "Baseline",
            10,
            subject_ns(subject),
            ingress,
            egress,
        )
    }
}

fn gress(admin: bool) -> Value {
    let slyth = ["tcp:80", "udp:53", "sctp:9003"];
    let ingress = ordered_rules(
        "ingress",
        "ravenclaw",
        "slytherin",
        &slyth,
        "hufflepuff",
        &["tcp:80", "udp:5353", "sctp:9003"],
        admin,
    );
    let egress = ordered_rules(
        "egress",
        "ravenclaw",
        "slytherin",
        &slyth,
        "hufflepuff",
        &["tcp:8080", "udp:5353", "sctp:9003"],
        admin,
    );
    if admin {
        cnp(
            "gress-rules",
            "Admin",
            15,
            subject_ns("gryffindor"),
            ingress,
            egress,
        )
    } else {
        cnp(
            "default",
            "Baseline",
            10,
            subject_ns("gryffindor"),
            ingress,
            egress,
        )
    }
}

fn hnp(i: u16) -> String {
    (HNP_START + i).to_string()
}

fn networks_everything() -> Value {
    json!({"networks": ["0.0.0.0/0", "::/0"]})
}

type Patch = Box<dyn Fn(&mut Scenario)>;

/// Patches keyed by the `(subtest, step)` before which they apply.
type Patches = Vec<((u32, u32), Patch)>;

fn swap(policy: &'static str, dir: &'static str, i: usize, j: usize) -> Patch {
    Box::new(move |s| {
        s.cnp(policy)["spec"][dir]
            .as_array_mut()
            .unwrap()
            .swap(i, j)
    })
}

fn set_protocols(policy: &'static str, dir: &'static str, i: usize, v: Value) -> Patch {
    Box::new(move |s| s.cnp(policy)["spec"][dir][i]["protocols"] = v.clone())
}

fn relabel(house: &'static str, label: &'static str) -> Patch {
    Box::new(move |s| {
        s.house_labels.insert(ns_name(house), label.to_string());
    })
}

fn prepend_pod_ip_accept(policy: &'static str) -> Patch {
    Box::new(move |s| {
        let r = json!({"name": "allow-egress-to-specific-podIPs", "action": "Accept",
                       "to": [{"networks": [format!("{}/32", ip("R0")), format!("{}/32", ip("H0"))]}]});
        s.cnp(policy)["spec"]["egress"]
            .as_array_mut()
            .unwrap()
            .insert(0, r);
    })
}

/// The scenario and its patches, keyed by `(subtest, step)` before which they apply.
fn scenario(test: &str) -> (Scenario, Patches) {
    let rotations = |p: &'static str, dirs: &'static [&'static str]| {
        let mut v: Patches = Vec::new();
        for d in dirs {
            v.push(((3, 1), swap(p, d, 0, 1)));
            v.push(((5, 1), swap(p, d, 0, 2)));
            v.push(((6, 1), swap(p, d, 3, 4)));
        }
        v
    };
    let base_swaps = |dirs: &'static [&'static str]| -> Patches {
        dirs.iter()
            .map(|d| -> ((u32, u32), Patch) { ((3, 1), swap("default", d, 0, 1)) })
            .collect()
    };
    let inline_cidr = |admin: bool| {
        let rules = vec![
            rule(
                "egress",
                "allow-egress-to-slytherin",
                "Accept",
                vec![house_pods("slytherin")],
                &[],
            ),
            rule(
                "egress",
                "deny-egress-to-internet",
                "Deny",
                vec![networks_everything()],
                &[],
            ),
        ];
        let name = if admin {
            "inline-cidr-as-peers-example"
        } else {
            "default"
        };
        let p = if admin {
            cnp(name, "Admin", 85, house_pods("gryffindor"), vec![], rules)
        } else {
            cnp(
                name,
                "Baseline",
                10,
                subject_ns("gryffindor"),
                vec![],
                rules,
            )
        };
        let patches: Patches = vec![
            ((1, 10), relabel("slytherin", "denied-namespace-label")),
            ((1, 13), relabel("slytherin", "slytherin")),
            ((2, 1), prepend_pod_ip_accept(name)),
        ];
        (Scenario::new(vec![p], vec![]), patches)
    };
    match test {
        "CNPAdminTierEgressNamedPort" => (
            Scenario::new(vec![single("egress-tcp", true)], vec![]),
            vec![(
                (1, 1),
                set_protocols(
                    "egress-tcp",
                    "egress",
                    5,
                    json!([{"destinationNamedPort": "web"}]),
                ),
            )],
        ),
        "CNPAdminTierIngressNamedPort" => (
            Scenario::new(vec![single("ingress-udp", true)], vec![]),
            vec![(
                (1, 1),
                set_protocols(
                    "ingress-udp",
                    "ingress",
                    5,
                    json!([{"destinationNamedPort": "dns"}]),
                ),
            )],
        ),
        "CNPAdminTierEgressTCP" => (
            Scenario::new(vec![single("egress-tcp", true)], vec![]),
            rotations("egress-tcp", &["egress"]),
        ),
        "CNPAdminTierEgressUDP" => (
            Scenario::new(vec![single("egress-udp", true)], vec![]),
            rotations("egress-udp", &["egress"]),
        ),
        "CNPAdminTierEgressSCTP" => (
            Scenario::new(vec![single("egress-sctp", true)], vec![]),
            rotations("egress-sctp", &["egress"]),
        ),
        "CNPAdminTierIngressTCP" => (
            Scenario::new(vec![single("ingress-tcp", true)], vec![]),
            rotations("ingress-tcp", &["ingress"]),
        ),
        "CNPAdminTierIngressUDP" => (
            Scenario::new(vec![single("ingress-udp", true)], vec![]),
            rotations("ingress-udp", &["ingress"]),
        ),
        "CNPAdminTierIngressSCTP" => (
            Scenario::new(vec![single("ingress-sctp", true)], vec![]),
            rotations("ingress-sctp", &["ingress"]),
        ),
        "CNPAdminTierGress" => (
            Scenario::new(vec![gress(true)], vec![]),
            rotations("gress-rules", &["egress", "ingress"]),
        ),
        "CNPAdminTierEgressNodePeers" => {
            let egress = vec![
                rule(
                    "egress",
                    "allow-egress-to-HNP0-on-nodes",
                    "Accept",
                    vec![linux_nodes()],
                    &[&format!("tcp:{}", hnp(0))],
                ),
                rule(
                    "egress",
                    "pass-egress-to-HNP2-on-nodes",
                    "Pass",
                    vec![linux_nodes()],
                    &[&format!("udp:{}", hnp(2))],
                ),
                rule(
                    "egress",
                    "deny-egress-to-slytherin-and-nodes-and-internet",
                    "Deny",
                    vec![
                        house_pods("slytherin"),
                        linux_nodes(),
                        networks_everything(),
                    ],
                    &[],
                ),
            ];
            (
                Scenario::new(
                    vec![cnp(
                        "node-and-cidr-as-peers-example",
                        "Admin",
                        75,
                        house_pods("gryffindor"),
                        vec![],
                        egress,
                    )],
                    vec![],
                ),
                vec![],
            )
        }
        "CNPAdminTierEgressInlineCIDRPeers" => inline_cidr(true),
        "CNPBaselineTierEgressInlineCIDRPeers" => inline_cidr(false),
        "CNPAdminTierIntegration" => {
            let deny_in = vec![rule(
                "ingress",
                "deny-all-ingress-from-slytherin",
                "Deny",
                vec![json!({"namespaces": {"matchLabels": {"conformance-house": "slytherin"}}})],
                &[],
            )];
            let deny_out = vec![rule(
                "egress",
                "deny-all-egress-to-slytherin",
                "Deny",
                vec![json!({"namespaces": {"matchLabels": {"conformance-house": "slytherin"}}})],
                &[],
            )];
            let np = netpol(
                &ns_name("gryffindor"),
                "allow-gress-from-to-slytherin-to-gryffindor",
                json!({"podSelector": null, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}}}]}],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}}}]}]}),
            );
            let s = Scenario::new(
                vec![
                    cnp(
                        "pass-example",
                        "Admin",
                        10,
                        subject_label("gryffindor"),
                        deny_in.clone(),
                        deny_out.clone(),
                    ),
                    cnp(
                        "default",
                        "Baseline",
                        10,
                        subject_label("gryffindor"),
                        deny_in,
                        deny_out,
                    ),
                ],
                vec![np],
            );
            let patches: Patches = vec![
                (
                    (3, 1),
                    Box::new(|s: &mut Scenario| {
                        s.cnp("pass-example")["spec"]["ingress"][0]["action"] = json!("Pass")
                    }),
                ),
                (
                    (4, 1),
                    Box::new(|s: &mut Scenario| {
                        s.cnp("pass-example")["spec"]["egress"][0]["action"] = json!("Pass")
                    }),
                ),
                ((5, 1), Box::new(|s: &mut Scenario| s.netpols.clear())),
            ];
            (s, patches)
        }
        "CNPAdminTierPriorityField" => {
            let from = vec![house_pods("slytherin")];
            let s = Scenario::new(
                vec![
                    cnp(
                        "priority-50-example",
                        "Admin",
                        50,
                        house_pods("gryffindor"),
                        vec![rule(
                            "ingress",
                            "deny-all-ingress-from-slytherin",
                            "Deny",
                            from.clone(),
                            &[],
                        )],
                        vec![rule(
                            "egress",
                            "deny-all-egress-to-slytherin",
                            "Deny",
                            from.clone(),
                            &[],
                        )],
                    ),
                    cnp(
                        "old-priority-60-new-priority-40-example",
                        "Admin",
                        60,
                        house_pods("gryffindor"),
                        vec![rule(
                            "ingress",
                            "pass-all-ingress-from-slytherin",
                            "Pass",
                            from.clone(),
                            &[],
                        )],
                        vec![rule(
                            "egress",
                            "pass-all-egress-to-slytherin",
                            "Pass",
                            from.clone(),
                            &[],
                        )],
                    ),
                    cnp(
                        "default",
                        "Baseline",
                        10,
                        house_pods("gryffindor"),
                        vec![rule(
                            "ingress",
                            "allow-all-ingress-from-slytherin",
                            "Accept",
                            from.clone(),
                            &[],
                        )],
                        vec![rule(
                            "egress",
                            "allow-all-egress-to-slytherin",
                            "Accept",
                            from,
                            &[],
                        )],
                    ),
                ],
                vec![],
            );
            let patches: Patches = vec![(
                (3, 1),
                Box::new(|s: &mut Scenario| {
                    s.cnp("old-priority-60-new-priority-40-example")["spec"]["priority"] = json!(40)
                }),
            )];
            (s, patches)
        }
        "CNPBaselineTierEgressNamedPort" => (
            Scenario::new(vec![single("egress-udp", false)], vec![]),
            vec![(
                (1, 1),
                set_protocols(
                    "default",
                    "egress",
                    3,
                    json!([{"destinationNamedPort": "dns"}]),
                ),
            )],
        ),
        "CNPBaselineTierIngressNamedPort" => (
            Scenario::new(vec![single("ingress-tcp", false)], vec![]),
            vec![(
                (1, 1),
                set_protocols(
                    "default",
                    "ingress",
                    3,
                    json!([{"destinationNamedPort": "web"}]),
                ),
            )],
        ),
        "CNPBaselineTierEgressNodePeers" => {
            let egress = vec![
                rule(
                    "egress",
                    "allow-egress-to-HNP0-on-nodes",
                    "Accept",
                    vec![linux_nodes()],
                    &[&format!("tcp:{}-{}", hnp(0), hnp(1))],
                ),
                rule(
                    "egress",
                    "deny-egress-to-nodes-and-internet",
                    "Deny",
                    vec![linux_nodes(), networks_everything()],
                    &[],
                ),
            ];
            (
                Scenario::new(
                    vec![cnp(
                        "default",
                        "Baseline",
                        10,
                        subject_ns("gryffindor"),
                        vec![],
                        egress,
                    )],
                    vec![],
                ),
                vec![],
            )
        }
        "CNPBaselineTierEgressTCP" => (
            Scenario::new(vec![single("egress-tcp", false)], vec![]),
            base_swaps(&["egress"]),
        ),
        "CNPBaselineTierEgressUDP" => (
            Scenario::new(vec![single("egress-udp", false)], vec![]),
            base_swaps(&["egress"]),
        ),
        "CNPBaselineTierEgressSCTP" => (
            Scenario::new(vec![single("egress-sctp", false)], vec![]),
            base_swaps(&["egress"]),
        ),
        "CNPBaselineTierIngressTCP" => (
            Scenario::new(vec![single("ingress-tcp", false)], vec![]),
            base_swaps(&["ingress"]),
        ),
        "CNPBaselineTierIngressUDP" => (
            Scenario::new(vec![single("ingress-udp", false)], vec![]),
            base_swaps(&["ingress"]),
        ),
        "CNPBaselineTierIngressSCTP" => (
            Scenario::new(vec![single("ingress-sctp", false)], vec![]),
            base_swaps(&["ingress"]),
        ),
        "CNPBaselineTierGress" => (
            Scenario::new(vec![gress(false)], vec![]),
            base_swaps(&["egress", "ingress"]),
        ),
        other => panic!("no scenario for {other}"),
    }
}

struct Probe {
    subtest: u32,
    step: u32,
    client: String,
    server: String,
    proto: String,
    port: u16,
    expect: bool,
}

fn probes(test: &str) -> Vec<Probe> {
    let csv = include_str!("../../suite/tests/fixtures/npa-probes.csv");
    let rows: Vec<Probe> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[0] == test)
        .map(|f| Probe {
            subtest: f[2].parse().unwrap(),
            step: f[3].parse().unwrap(),
            client: f[4].into(),
            server: f[5].into(),
            proto: f[6].into(),
            port: match f[7].strip_prefix("HNP") {
                Some(i) => HNP_START + i.parse::<u16>().unwrap(),
                None => f[7].parse().unwrap(),
            },
            expect: f[8] == "true",
        })
        .collect();
    assert!(!rows.is_empty(), "no probes for {test}");
    rows
}

fn run(test: &str, version: Version) {
    let (mut scenario, patches) = scenario(test);
    let mut failures = Vec::new();
    let rows = probes(test);
    for p in &rows {
        for (_, patch) in patches.iter().filter(|(at, _)| *at == (p.subtest, p.step)) {
            patch(&mut scenario);
        }
        let snap = scenario.snapshot(version);
        let d = decide(
            &snap,
            &flow(&ip(&p.client), &ip(&p.server), proto(&p.proto), p.port),
        );
        if (d.verdict == Verdict::Accept) != p.expect {
            failures.push(format!(
                "{test} {version:?} subtest {} step {}: {}→{} {}/{} expected {}, got {:?} ({})",
                p.subtest,
                p.step,
                p.client,
                p.server,
                p.proto,
                p.port,
                if p.expect { "connect" } else { "drop" },
                d.verdict,
                d.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} probes wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

macro_rules! npa_tests {
    ($($fn:ident => $name:literal,)*) => {$(
        #[test]
        fn $fn() {
            run($name, Version::V1alpha2);
            run($name, Version::V1alpha1);
        }
    )*};
}

npa_tests! {
    admin_egress_named_port => "CNPAdminTierEgressNamedPort",
    admin_egress_node_peers => "CNPAdminTierEgressNodePeers",
    admin_egress_inline_cidr_peers => "CNPAdminTierEgressInlineCIDRPeers",
    admin_egress_sctp => "CNPAdminTierEgressSCTP",
    admin_egress_tcp => "CNPAdminTierEgressTCP",
    admin_egress_udp => "CNPAdminTierEgressUDP",
    admin_gress => "CNPAdminTierGress",
    admin_ingress_sctp => "CNPAdminTierIngressSCTP",
    admin_ingress_tcp => "CNPAdminTierIngressTCP",
    admin_ingress_udp => "CNPAdminTierIngressUDP",
    admin_ingress_named_port => "CNPAdminTierIngressNamedPort",
    admin_integration => "CNPAdminTierIntegration",
    admin_priority_field => "CNPAdminTierPriorityField",
    baseline_egress_named_port => "CNPBaselineTierEgressNamedPort",
    baseline_egress_node_peers => "CNPBaselineTierEgressNodePeers",
    baseline_ingress_named_port => "CNPBaselineTierIngressNamedPort",
    baseline_egress_inline_cidr_peers => "CNPBaselineTierEgressInlineCIDRPeers",
    baseline_egress_sctp => "CNPBaselineTierEgressSCTP",
    baseline_egress_tcp => "CNPBaselineTierEgressTCP",
    baseline_egress_udp => "CNPBaselineTierEgressUDP",
    baseline_gress => "CNPBaselineTierGress",
    baseline_ingress_sctp => "CNPBaselineTierIngressSCTP",
    baseline_ingress_tcp => "CNPBaselineTierIngressTCP",
    baseline_ingress_udp => "CNPBaselineTierIngressUDP",
}

#[test]
fn every_test_in_the_probe_table_is_covered() {
    let csv = include_str!("../../suite/tests/fixtures/npa-probes.csv");
    let mut names: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    names.dedup();
    assert_eq!(names.len(), 24);
    assert_eq!(
        csv.lines().count() - 1,
        301,
        "HEAD probe table has 301 rows"
    );
    for n in names {
        let _ = scenario(n);
    }
}
