//! YAML round-trips of realistic manifests (shapes taken from the network-policy-api
//! conformance manifests) and rejection of values the API does not allow.

use netpol_api::Protocol;
use netpol_api::v1alpha1::{
    AdminNetworkPolicy, AdminNetworkPolicyRuleAction, BaselineAdminNetworkPolicy,
    BaselineAdminNetworkPolicyRuleAction,
};
use netpol_api::v1alpha2::{ClusterNetworkPolicy, ClusterNetworkPolicyRuleAction, Tier};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn manifest(name: &str) -> String {
    let path = format!("{}/tests/manifests/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Parses `yaml` as `T`, serializes it back, and checks nothing was lost or added by comparing
/// both as generic JSON values.
fn round_trip<T: DeserializeOwned + Serialize>(yaml: &str) -> T {
    let typed: T = serde_saphyr::from_str(yaml).expect("manifest parses as the typed object");
    let generic: serde_json::Value = serde_saphyr::from_str(yaml).expect("manifest parses as YAML");
    let back = serde_json::to_value(&typed).expect("typed object serializes");
    assert_eq!(back, generic, "round-trip changed the object");
    // And through YAML text once more.
    let text = serde_saphyr::to_string(&typed).expect("typed object serializes to YAML");
    let again: serde_json::Value = serde_saphyr::from_str(&text).expect("emitted YAML parses");
    assert_eq!(
        again, generic,
        "YAML emitted by serde-saphyr differs:\n{text}"
    );
    typed
}

#[test]
fn anp_egress_tcp_round_trips() {
    let anp: AdminNetworkPolicy = round_trip(&manifest("anp-egress-tcp.yaml"));
    assert_eq!(anp.spec.priority, 6);
    assert_eq!(anp.spec.egress.len(), 7);
    assert_eq!(
        anp.spec.egress[2].action,
        AdminNetworkPolicyRuleAction::Pass
    );
    let port = anp.spec.egress[3].ports.as_ref().unwrap()[0]
        .port_number
        .as_ref()
        .unwrap();
    assert_eq!((port.protocol, port.port), (Protocol::Tcp, 80));
    assert!(anp.spec.ingress.is_empty());
}

#[test]
fn anp_with_nodes_networks_domains_and_status_round_trips() {
    let anp: AdminNetworkPolicy = round_trip(&manifest("anp-node-and-cidr.yaml"));
    let deny = &anp.spec.egress[2];
    assert_eq!(deny.to.len(), 3);
    assert_eq!(
        deny.to[2].networks.as_deref(),
        Some(&["0.0.0.0/0".to_string(), "::/0".to_string()][..])
    );
    let range = anp.spec.egress[1].ports.as_ref().unwrap()[0]
        .port_range
        .as_ref()
        .unwrap();
    assert_eq!(
        (range.protocol, range.start, range.end),
        (Protocol::Udp, 34347, 34348)
    );
    assert_eq!(
        anp.spec.egress[3].ports.as_ref().unwrap()[0]
            .named_port
            .as_deref(),
        Some("web")
    );
    assert_eq!(anp.status.as_ref().unwrap().conditions[0].type_, "Ready");
}

#[test]
fn banp_round_trips() {
    let banp: BaselineAdminNetworkPolicy = round_trip(&manifest("banp-default.yaml"));
    assert_eq!(banp.metadata.name.as_deref(), Some("default"));
    assert_eq!(
        banp.spec.ingress[1].action,
        BaselineAdminNetworkPolicyRuleAction::Deny
    );
    assert_eq!(banp.spec.ingress[1].ports.as_ref().unwrap().len(), 3);
}

#[test]
fn cnp_admin_and_baseline_round_trip() {
    let admin: ClusterNetworkPolicy = round_trip(&manifest("cnp-gress-rules.yaml"));
    assert_eq!(admin.spec.tier, Tier::Admin);
    assert_eq!(
        admin.spec.ingress[2].action,
        ClusterNetworkPolicyRuleAction::Pass
    );
    let protocols = admin.spec.ingress[1].protocols.as_ref().unwrap();
    assert_eq!(
        protocols[2]
            .sctp
            .as_ref()
            .unwrap()
            .destination_port
            .as_ref()
            .unwrap()
            .number,
        Some(9003)
    );
    let range = admin.spec.egress[0].protocols.as_ref().unwrap()[0]
        .tcp
        .as_ref()
        .unwrap();
    assert_eq!(
        range
            .destination_port
            .as_ref()
            .unwrap()
            .range
            .as_ref()
            .unwrap()
            .end,
        34346
    );
    let baseline: ClusterNetworkPolicy = round_trip(&manifest("cnp-baseline-default.yaml"));
    assert_eq!(
        (baseline.spec.tier, baseline.spec.priority),
        (Tier::Baseline, 10)
    );
}

#[test]
fn port_protocol_defaults_to_tcp() {
    let yaml = "portNumber:\n  port: 80\n";
    let port: netpol_api::v1alpha1::AdminNetworkPolicyPort = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(port.port_number.unwrap().protocol, Protocol::Tcp);
}

#[test]
fn unknown_enum_values_are_rejected() {
    let anp = manifest("anp-egress-tcp.yaml").replacen("action: Allow", "action: Accept", 1);
    let err = serde_saphyr::from_str::<AdminNetworkPolicy>(&anp)
        .expect_err("Accept is not a v1alpha1 action");
    assert!(
        err.to_string().contains("Accept"),
        "error names the bad value: {err}"
    );

    let banp = manifest("banp-default.yaml").replacen("action: Deny", "action: Pass", 1);
    assert!(
        serde_saphyr::from_str::<BaselineAdminNetworkPolicy>(&banp).is_err(),
        "BANP has no Pass"
    );

    let cnp = manifest("cnp-gress-rules.yaml").replacen("tier: Admin", "tier: Developer", 1);
    assert!(
        serde_saphyr::from_str::<ClusterNetworkPolicy>(&cnp).is_err(),
        "unknown tier"
    );

    let cnp = manifest("cnp-gress-rules.yaml").replacen("action: Accept", "action: Allow", 1);
    assert!(
        serde_saphyr::from_str::<ClusterNetworkPolicy>(&cnp).is_err(),
        "Allow was renamed Accept"
    );

    let proto = manifest("banp-default.yaml").replacen("protocol: UDP", "protocol: ICMP", 1);
    assert!(
        serde_saphyr::from_str::<BaselineAdminNetworkPolicy>(&proto).is_err(),
        "unknown protocol"
    );
}
