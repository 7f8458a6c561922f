//! Unit tests of loading and validating cases.

use super::*;

const MINIMAL: &str = SAMPLE_CASE;

fn load(text: &str) -> Result<Vec<Case>, LoadError> {
    load_files([("t.yaml".to_string(), text.to_string())])
}

#[test]
fn loads_a_minimal_case() {
    let cases = load(MINIMAL).unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].steps.len(), 2);
    assert_eq!(cases[0].origin, "t.yaml:2");
    assert!(matches!(cases[0].steps[1], Step::Probe(_)));
}

#[test]
fn bad_yaml_names_the_file_and_line() {
    let err = load("- id: [unclosed\n").unwrap_err().to_string();
    assert!(err.starts_with("t.yaml: "), "{err}");
    assert!(err.contains("line 1") || err.contains("1:"), "{err}");
}

#[test]
fn unknown_field_is_rejected_with_its_name() {
    let text = MINIMAL.replace("  area: ingress", "  area: ingress\n  colour: blue");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("t.yaml"), "{err}");
}

#[test]
fn duplicate_ids_are_rejected() {
    let text = format!("{MINIMAL}{}", MINIMAL.trim_start_matches('\n'));
    let err = load(&text).unwrap_err();
    assert!(
        matches!(err, LoadError::DuplicateId { ref id, .. } if id == "deny"),
        "{err}"
    );
    assert!(
        err.to_string().contains("first defined at t.yaml:2"),
        "{err}"
    );
}

#[test]
fn unknown_placeholder_is_rejected_with_line_and_field() {
    let text = MINIMAL.replace(
        "spec: {podSelector: {}",
        "spec: {x: \"${pod-ip:x/a}\", podSelector: {}",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("unknown placeholder `${pod-ip:x/a}`"), "{err}");
    assert!(
        err.contains("t.yaml:8: case `deny`: steps[0].create[0]"),
        "{err}"
    );
}

#[test]
fn placeholder_naming_an_unknown_pod_is_rejected() {
    let text = MINIMAL.replace(
        "spec: {podSelector: {}",
        "spec: {x: \"${ip:q/a}\", podSelector: {}",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("unknown pod `q/a`"), "{err}");
}

#[test]
fn unknown_pod_in_expectation_is_rejected() {
    let text = MINIMAL.replace("{from: {}, to: {ns: x}", "{from: {}, to: {ns: w}");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("steps[1].probe.expect[0].to.ns"), "{err}");
    assert!(err.contains("unknown namespace `w`"), "{err}");
}

#[test]
fn unknown_feature_is_rejected() {
    let text = MINIMAL.replace(
        "  world: upstream",
        "  world: upstream\n  features: [Telepathy]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("Telepathy"), "{err}");
}

#[test]
fn placeholders_parse() {
    let found = find_placeholders("${ns:y} ${cidr:x/b/24} ${host:x/a} ${node-ip:1} ${external-ip}");
    let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        found,
        [
            Placeholder::Namespace("y".into()),
            Placeholder::Cidr("x/b".into(), 24),
            Placeholder::Host("x/a".into()),
            Placeholder::NodeIp(1),
            Placeholder::ExternalIp,
        ]
    );
    let bad = |s: &str| find_placeholders(s).remove(0).unwrap_err();
    assert_eq!(
        bad("${cidr:x/b}"),
        PlaceholderError::PrefixLength("b".into())
    );
    assert!(matches!(bad("${ns:y"), PlaceholderError::Unterminated(_)));
    assert!(matches!(
        bad("${ns}"),
        PlaceholderError::NeedsArgument { .. }
    ));
    assert!(matches!(bad("${pod:x/a}"), PlaceholderError::Unknown(_)));
    assert_eq!(
        bad("${node-ip:two}"),
        PlaceholderError::NodeIndex("two".into())
    );
}

#[test]
fn pair_probe_lines_parse() {
    let p: PairProbe = "gryffindor/0 -> ravenclaw/1 udp/5353 blocked"
        .parse()
        .unwrap();
    assert_eq!(
        p,
        PairProbe {
            from: "gryffindor/0".into(),
            to: "ravenclaw/1".into(),
            protocol: Protocol::Udp,
            port: 5353,
            allowed: false
        }
    );
    let bad = |line: &str| line.parse::<PairProbe>().unwrap_err();
    assert_eq!(
        bad("a/0 -> b/0 TCP/80 maybe"),
        PairError::Verdict("maybe".into())
    );
    assert_eq!(bad("a/0 -> b/0 TCP/0 allowed"), PairError::Port("0".into()));
    assert_eq!(
        bad("a/0 -> b/0 ICMP/1 allowed"),
        PairError::Protocol("ICMP".into())
    );
    assert_eq!(
        bad("a/0 -> b/0 TCP80 allowed"),
        PairError::ProtoPort("TCP80".into())
    );
    assert!(matches!(bad("a/0 b/0 TCP/80 allowed"), PairError::Line(_)));
}

#[test]
fn pairs_write_back_as_they_read() {
    let p: PairProbe = "x/a -> y/b udp/53 allowed".parse().unwrap();
    assert_eq!(String::from(p), "x/a -> y/b UDP/53 allowed");
    let p: Pair = " x/a->y/b ".parse().unwrap();
    assert_eq!(String::from(p), "x/a -> y/b");
    assert!(matches!(
        "x/a -> y/b z/c".parse::<Pair>(),
        Err(PairError::Pair(_))
    ));
    assert!(matches!("-> y/b".parse::<Pair>(), Err(PairError::Pair(_))));
}

#[test]
fn a_malformed_pair_fails_the_load_with_its_text_and_line() {
    let text = MINIMAL.replace(
        "          - expect_peer: {from: {}, to: {ns: x}, allowed: false}",
        "          - blocked: [\"x/a -> x/b\", \"x/a x/c\"]",
    );
    let err = load(&text).unwrap_err();
    assert!(matches!(err, LoadError::Parse { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("`x/a x/c` is not a pair like `x/a -> x/b`"),
        "{err}"
    );
    assert!(err.contains("line 17 column 37"), "{err}");

    let text = MINIMAL.replace(
        "    - probe:\n        port: 80\n        protocol: TCP\n        expect:\n          - expect_peer: {from: {}, to: {ns: x}, allowed: false}",
        "    - probe:\n        pairs: [\"x/a -> x/b TCP/80 perhaps\"]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("`perhaps` is neither `allowed` nor `blocked`"),
        "{err}"
    );
}

#[test]
fn a_pair_naming_an_unknown_pod_names_its_field() {
    let text = MINIMAL.replace(
        "          - expect_peer: {from: {}, to: {ns: x}, allowed: false}",
        "          - blocked: [\"x/a -> x/q\"]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("steps[1].probe.expect[0]"), "{err}");
    assert!(err.contains("x/q"), "{err}");
}

#[test]
fn npa_cases_need_per_version_names_and_cluster_network_policies() {
    let text = r#"
- id: egress
  name: {v1alpha1: AdminNetworkPolicyEgressTCP, v1alpha2: CNPAdminTierEgressTCP}
  source: npa
  area: admin
  world: npa
  steps:
    - create:
        - apiVersion: policy.networking.k8s.io/v1alpha1
          kind: AdminNetworkPolicy
          metadata: {name: p}
          spec: {priority: 1, subject: {namespaces: {}}}
    - probe:
        pairs: [gryffindor/0 -> ravenclaw/0 TCP/80 allowed]
"#;
    let err = load(text).unwrap_err().to_string();
    assert!(err.contains("written as ClusterNetworkPolicy"), "{err}");
}
