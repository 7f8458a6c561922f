//! Compiling API objects (NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy,
//! ClusterNetworkPolicy) into the policies of [`super`]: selectors, CIDRs, port ranges and
//! defaults resolved once; ANP, BANP and CNP through one rule-list compiler and one peer-field
//! type, so the three API shapes cannot drift apart.

use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netpol_api::{v1alpha1, v1alpha2};

use super::{
    Action, BANP_PRIORITY, ClusterPolicy, ClusterRule, ClusterTier, NamespaceMatch, Netpol,
    NetpolRule, Peer, PolicyKind, PolicyRef, PortMatch, PortSpec, Subject,
};
use crate::engine::selector::Selector;
use crate::flow::Protocol;

fn protocol_from_str(s: Option<&str>) -> Option<Protocol> {
    match s.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn api_protocol(p: netpol_api::Protocol) -> Protocol {
    match p {
        netpol_api::Protocol::Tcp => Protocol::Tcp,
        netpol_api::Protocol::Udp => Protocol::Udp,
        netpol_api::Protocol::Sctp => Protocol::Sctp,
    }
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

fn range(protocol: Option<Protocol>, start: i32, end: i32) -> PortSpec {
    match (port_u16(start), port_u16(end)) {
        (Some(start), Some(end)) if start <= end => PortSpec::Range {
            protocol,
            start,
            end,
        },
        _ => PortSpec::Nothing,
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn network_peer(cidr: &str, except: &[String]) -> Peer {
    let Some(cidr) = parse_cidr(cidr) else {
        return Peer::Nothing;
    };
    let mut holes = Vec::with_capacity(except.len());
    for e in except {
        match parse_cidr(e) {
            Some(n) => holes.push(n),
            // An unparseable hole would otherwise widen the block: drop the whole peer.
            None => return Peer::Nothing,
        }
    }
    Peer::Network {
        cidr,
        except: holes,
    }
}

fn np_port(p: &NetworkPolicyPort) -> PortSpec {
    let Some(protocol) = protocol_from_str(p.protocol.as_deref()) else {
        return PortSpec::Nothing;
    };
    match &p.port {
        None => PortSpec::Range {
            protocol: Some(protocol),
            start: 1,
            end: u16::MAX,
        },
        Some(IntOrString::Int(n)) => range(Some(protocol), *n, p.end_port.unwrap_or(*n)),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => range(Some(protocol), n, p.end_port.unwrap_or(n)),
            Err(_) => PortSpec::Named {
                name: name.clone(),
                protocol: Some(protocol),
            },
        },
    }
}

fn np_peer(policy_ns: &Arc<str>, p: &NetworkPolicyPeer) -> Peer {
    if let Some(block) = &p.ip_block {
        return network_peer(&block.cidr, block.except.as_deref().unwrap_or_default());
    }
    match (&p.namespace_selector, &p.pod_selector) {
        (None, None) => Peer::Nothing,
        (None, Some(pods)) => Peer::Pods {
            namespaces: NamespaceMatch::Named(policy_ns.clone()),
            pods: Selector::compile(pods),
        },
        (Some(ns), pods) => Peer::Pods {
            namespaces: namespace_match(ns),
            pods: Selector::compile_opt(pods.as_ref()),
        },
    }
}

fn np_rule(
    policy_ns: &Arc<str>,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> NetpolRule {
    let peers = match peers {
        None => vec![Peer::All],
        Some(p) if p.is_empty() => vec![Peer::All],
        Some(p) => p.iter().map(|p| np_peer(policy_ns, p)).collect(),
    };
    let ports = match ports {
        None => PortMatch::Any,
        Some(p) if p.is_empty() => PortMatch::Any,
        Some(p) => PortMatch::List(p.iter().map(np_port).collect()),
    };
    NetpolRule { peers, ports }
}

/// Compiles a NetworkPolicy. Default `policyTypes`: Ingress, plus Egress when egress rules exist.
pub fn compile_netpol(np: &NetworkPolicy) -> Netpol {
    let namespace: Arc<str> = np.metadata.namespace.as_deref().unwrap_or("default").into();
    let name: Arc<str> = np.metadata.name.as_deref().unwrap_or_default().into();
    let spec = np.spec.clone().unwrap_or_default();
    let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec!["Ingress".to_string()];
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            t.push("Egress".to_string());
        }
        t
    });
    let ingress = types.iter().any(|t| t == "Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .map(|r| np_rule(&namespace, r.from.as_ref(), r.ports.as_ref()))
            .collect()
    });
    let egress = types.iter().any(|t| t == "Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .map(|r| np_rule(&namespace, r.to.as_ref(), r.ports.as_ref()))
            .collect()
    });
    Netpol {
        id: PolicyRef {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace.clone()),
            name,
        },
        namespace,
        pod_selector: Selector::compile_opt(spec.pod_selector.as_ref()),
        rules: [ingress, egress],
    }
}

fn rule_name(name: Option<&String>, index: usize) -> Arc<str> {
    match name {
        Some(n) if !n.is_empty() => n.as_str().into(),
        _ => format!("#{index}").into(),
    }
}

/// A namespace selector; one that only requires `kubernetes.io/metadata.name` (the API server
/// sets it to the name on every namespace) becomes a name comparison.
fn namespace_match(s: &LabelSelector) -> NamespaceMatch {
    let sel = Selector::compile(s);
    match sel.only_equals() {
        Some(("kubernetes.io/metadata.name", name)) => NamespaceMatch::Named(name.into()),
        _ => NamespaceMatch::Selector(sel),
    }
}

fn namespaced_pod(p: &v1alpha1::NamespacedPod) -> Peer {
    Peer::Pods {
        namespaces: namespace_match(&p.namespace_selector),
        pods: Selector::compile(&p.pod_selector),
    }
}

fn namespaces_peer(s: &LabelSelector) -> Peer {
    Peer::Pods {
        namespaces: namespace_match(s),
        pods: Selector::everything(),
    }
}

/// The fields of one "exactly one of" peer object of an admin or baseline policy rule, in either
/// API version; a field the type lacks stays `None`.
#[derive(Default)]
struct PeerFields<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a v1alpha1::NamespacedPod>,
    nodes: Option<&'a LabelSelector>,
    networks: Option<&'a Vec<String>>,
    domain_names: Option<&'a Vec<String>>,
}

impl PeerFields<'_> {
    /// The peers; several fields set (which the CRD forbids) or none compile to [`Peer::Nothing`]
    /// for that object, and so do domain names, which an enforcer judging addresses cannot match.
    fn compile(&self) -> Vec<Peer> {
        let set = [
            self.namespaces.is_some(),
            self.pods.is_some(),
            self.nodes.is_some(),
            self.networks.is_some(),
            self.domain_names.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return vec![Peer::Nothing];
        }
        if let Some(s) = self.namespaces {
            return vec![namespaces_peer(s)];
        }
        if let Some(p) = self.pods {
            return vec![namespaced_pod(p)];
        }
        if let Some(s) = self.nodes {
            return vec![Peer::Nodes(Selector::compile(s))];
        }
        if let Some(n) = self.networks {
            return n.iter().map(|c| network_peer(c, &[])).collect();
        }
        vec![Peer::Nothing]
    }
}

/// A subject given as exactly one of `namespaces` or `pods` (both API versions); anything else
/// selects nothing.
fn subject(namespaces: Option<&LabelSelector>, pods: Option<&v1alpha1::NamespacedPod>) -> Subject {
    match (namespaces, pods) {
        (Some(ns), None) => Subject::Namespaces(Selector::compile(ns)),
        (None, Some(p)) => Subject::Pods {
            namespaces: Selector::compile(&p.namespace_selector),
            pods: Selector::compile(&p.pod_selector),
        },
        _ => Subject::Namespaces(Selector::nothing()),
    }
}

/// A peer object of an admin or baseline policy rule, in either API version.
trait PeerObject {
    /// Its peers.
    fn peers(&self) -> Vec<Peer>;
}

/// Implements [`PeerObject`] for a peer type from the [`PeerFields`] it has.
macro_rules! peer_object {
    ($type:ty: $($field:ident),+) => {
        impl PeerObject for $type {
            fn peers(&self) -> Vec<Peer> {
                let mut fields = PeerFields::default();
                $(fields.$field = self.$field.as_ref();)+
                fields.compile()
            }
        }
    };
}

peer_object!(v1alpha1::AdminNetworkPolicyIngressPeer: namespaces, pods);
peer_object!(v1alpha1::AdminNetworkPolicyEgressPeer: namespaces, pods, nodes, networks, domain_names);
peer_object!(v1alpha1::BaselineAdminNetworkPolicyEgressPeer: namespaces, pods, nodes, networks);
peer_object!(v1alpha2::ClusterNetworkPolicyIngressPeer: namespaces, pods);
peer_object!(v1alpha2::ClusterNetworkPolicyEgressPeer: namespaces, pods, nodes, networks, domain_names);

/// What [`cluster_rules`] needs of one rule: its name, action, peer objects and ports.
type RuleParts<'r, P> = (Option<&'r String>, Action, &'r [P], PortMatch);

/// Compiles one direction's rules, in order; a rule without a name is called by its index.
fn cluster_rules<R, P: PeerObject>(
    rules: &[R],
    parts: impl for<'r> Fn(&'r R) -> RuleParts<'r, P>,
) -> Vec<ClusterRule> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let (name, action, peers, ports) = parts(rule);
            ClusterRule {
                name: rule_name(name, i),
                action,
                peers: peers.iter().flat_map(PeerObject::peers).collect(),
                ports,
            }
        })
        .collect()
}

/// The identity of a cluster-scoped policy object.
fn cluster_policy_ref(kind: PolicyKind, name: Option<&str>) -> PolicyRef {
    PolicyRef {
        kind,
        namespace: None,
        name: name.unwrap_or_default().into(),
    }
}

fn v1alpha1_ports(ports: Option<&Vec<v1alpha1::AdminNetworkPolicyPort>>) -> PortMatch {
    let Some(ports) = ports else {
        return PortMatch::Any;
    };
    PortMatch::List(
        ports
            .iter()
            .map(|p| match (&p.port_number, &p.named_port, &p.port_range) {
                (Some(n), None, None) => range(Some(api_protocol(n.protocol)), n.port, n.port),
                (None, Some(name), None) => PortSpec::Named {
                    name: name.clone(),
                    protocol: None,
                },
                (None, None, Some(r)) => range(Some(api_protocol(r.protocol)), r.start, r.end),
                _ => PortSpec::Nothing,
            })
            .collect(),
    )
}

fn v1alpha1_action(a: v1alpha1::AdminNetworkPolicyRuleAction) -> Action {
    match a {
        v1alpha1::AdminNetworkPolicyRuleAction::Allow => Action::Accept,
        v1alpha1::AdminNetworkPolicyRuleAction::Deny => Action::Deny,
        v1alpha1::AdminNetworkPolicyRuleAction::Pass => Action::Pass,
    }
}

fn banp_action(a: v1alpha1::BaselineAdminNetworkPolicyRuleAction) -> Action {
    match a {
        v1alpha1::BaselineAdminNetworkPolicyRuleAction::Allow => Action::Accept,
        v1alpha1::BaselineAdminNetworkPolicyRuleAction::Deny => Action::Deny,
    }
}

/// Compiles an AdminNetworkPolicy.
pub fn compile_anp(anp: &v1alpha1::AdminNetworkPolicy) -> ClusterPolicy {
    let spec = &anp.spec;
    let ingress = cluster_rules(&spec.ingress, |r| {
        let ports = v1alpha1_ports(r.ports.as_ref());
        (
            r.name.as_ref(),
            v1alpha1_action(r.action),
            &r.from[..],
            ports,
        )
    });
    let egress = cluster_rules(&spec.egress, |r| {
        let ports = v1alpha1_ports(r.ports.as_ref());
        (r.name.as_ref(), v1alpha1_action(r.action), &r.to[..], ports)
    });
    ClusterPolicy {
        id: cluster_policy_ref(PolicyKind::AdminNetworkPolicy, anp.metadata.name.as_deref()),
        tier: ClusterTier::Admin,
        priority: spec.priority,
        subject: subject(spec.subject.namespaces.as_ref(), spec.subject.pods.as_ref()),
        rules: [ingress, egress],
    }
}

/// Compiles a BaselineAdminNetworkPolicy (sorted at [`BANP_PRIORITY`] in the Baseline tier).
pub fn compile_banp(banp: &v1alpha1::BaselineAdminNetworkPolicy) -> ClusterPolicy {
    let spec = &banp.spec;
    let ingress = cluster_rules(&spec.ingress, |r| {
        let ports = v1alpha1_ports(r.ports.as_ref());
        (r.name.as_ref(), banp_action(r.action), &r.from[..], ports)
    });
    let egress = cluster_rules(&spec.egress, |r| {
        let ports = v1alpha1_ports(r.ports.as_ref());
        (r.name.as_ref(), banp_action(r.action), &r.to[..], ports)
    });
    ClusterPolicy {
        id: cluster_policy_ref(
            PolicyKind::BaselineAdminNetworkPolicy,
            banp.metadata.name.as_deref(),
        ),
        tier: ClusterTier::Baseline,
        priority: BANP_PRIORITY,
        subject: subject(spec.subject.namespaces.as_ref(), spec.subject.pods.as_ref()),
        rules: [ingress, egress],
    }
}

fn v1alpha2_ports(protocols: Option<&Vec<v1alpha2::ClusterNetworkPolicyProtocol>>) -> PortMatch {
    let Some(protocols) = protocols else {
        return PortMatch::Any;
    };
    let one = |protocol: Protocol, ports: &v1alpha2::ProtocolPorts| match &ports.destination_port {
        None => PortSpec::Range {
            protocol: Some(protocol),
            start: 1,
            end: u16::MAX,
        },
        Some(v1alpha2::Port {
            number: Some(n),
            range: None,
        }) => range(Some(protocol), *n, *n),
        Some(v1alpha2::Port {
            number: None,
            range: Some(r),
        }) => range(Some(protocol), r.start, r.end),
        Some(_) => PortSpec::Nothing,
    };
    PortMatch::List(
        protocols
            .iter()
            .map(
                |p| match (&p.tcp, &p.udp, &p.sctp, &p.destination_named_port) {
                    (Some(t), None, None, None) => one(Protocol::Tcp, t),
                    (None, Some(u), None, None) => one(Protocol::Udp, u),
                    (None, None, Some(s), None) => one(Protocol::Sctp, s),
                    (None, None, None, Some(name)) => PortSpec::Named {
                        name: name.clone(),
                        protocol: None,
                    },
                    _ => PortSpec::Nothing,
                },
            )
            .collect(),
    )
}

fn v1alpha2_action(a: v1alpha2::ClusterNetworkPolicyRuleAction) -> Action {
    match a {
        v1alpha2::ClusterNetworkPolicyRuleAction::Accept => Action::Accept,
        v1alpha2::ClusterNetworkPolicyRuleAction::Deny => Action::Deny,
        v1alpha2::ClusterNetworkPolicyRuleAction::Pass => Action::Pass,
    }
}

/// Compiles a ClusterNetworkPolicy.
pub fn compile_cnp(cnp: &v1alpha2::ClusterNetworkPolicy) -> ClusterPolicy {
    let spec = &cnp.spec;
    let ingress = cluster_rules(&spec.ingress, |r| {
        let ports = v1alpha2_ports(r.protocols.as_ref());
        (
            r.name.as_ref(),
            v1alpha2_action(r.action),
            &r.from[..],
            ports,
        )
    });
    let egress = cluster_rules(&spec.egress, |r| {
        let ports = v1alpha2_ports(r.protocols.as_ref());
        (r.name.as_ref(), v1alpha2_action(r.action), &r.to[..], ports)
    });
    ClusterPolicy {
        id: cluster_policy_ref(
            PolicyKind::ClusterNetworkPolicy,
            cnp.metadata.name.as_deref(),
        ),
        tier: match spec.tier {
            v1alpha2::Tier::Admin => ClusterTier::Admin,
            v1alpha2::Tier::Baseline => ClusterTier::Baseline,
        },
        priority: spec.priority,
        subject: subject(spec.subject.namespaces.as_ref(), spec.subject.pods.as_ref()),
        rules: [ingress, egress],
    }
}
