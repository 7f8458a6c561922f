//! Unit tests of the planner and of the JSON form of plans.

use super::*;
use crate::case::load_files;
use serde_json::json;

fn denied_pairs(probe: &ProbePlan) -> Vec<String> {
    probe
        .expected
        .entries()
        .filter(|(_, _, allowed)| !**allowed)
        .map(|(f, t, _)| format!("{f}->{t}"))
        .collect()
}

fn plan_text(text: &str) -> Vec<Plan> {
    let cases = load_files([("t.yaml".to_string(), text.to_string())]).unwrap();
    plan_all(&cases).unwrap()
}

#[test]
fn later_expectations_override_earlier_ones() {
    let plans = plan_text(
        r#"
- id: t
  name: t
  source: user
  area: a
  world: upstream
  steps:
    - probe:
        port: 80
        protocol: TCP
        expect:
          - expect_all_ingress: {pod: x/a, allowed: false}
          - expect: {from: x/b, to: x/a, allowed: true}
          - expect_peer: {from: {ns: z}, to: {ns: x, pod: a}, allowed: true}
          - blocked: [z/c -> x/a]
"#,
    );
    let probe = plans[0].probes().next().unwrap();
    assert_eq!(probe.expected.len(), 72);
    assert_eq!(
        denied_pairs(probe),
        ["x/c->x/a", "y/a->x/a", "y/b->x/a", "y/c->x/a", "z/c->x/a"]
    );
}

#[test]
fn pair_probes_split_by_protocol_and_port_in_order() {
    let plans = plan_text(
        r#"
- id: t
  name: {v1alpha1: AdminNetworkPolicyT, v1alpha2: CNPAdminTierT}
  source: npa
  area: admin
  world: npa
  steps:
    - create:
        - apiVersion: policy.networking.k8s.io/v1alpha2
          kind: ClusterNetworkPolicy
          metadata: {name: base}
          spec: {tier: Baseline, priority: 10, subject: {namespaces: {}},
                 egress: [{action: Accept, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}]}
    - patch:
        kind: ClusterNetworkPolicy
        name: base
        ops: [{op: replace, path: /spec/egress/0/action, value: Deny}]
    - probe:
        name: sub
        pairs:
          - gryffindor/0 -> ravenclaw/0 TCP/80 allowed
          - gryffindor/1 -> ravenclaw/0 UDP/53 blocked
          - gryffindor/1 -> ravenclaw/1 TCP/80 blocked
"#,
    );
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].trial, "npa::admin::t::v1alpha1");
    assert_eq!(plans[0].name, "AdminNetworkPolicyT");
    let probes: Vec<_> = plans[0].probes().collect();
    assert_eq!(probes.len(), 2);
    assert_eq!((probes[0].protocol, probes[0].port), (Protocol::Tcp, 80));
    assert_eq!(probes[0].expected.len(), 2);
    assert_eq!(plans[0].block_rule, BlockRule::TimeoutOnly);
    let Action::Create(objs) = &plans[0].steps[0].action else {
        panic!()
    };
    assert_eq!(objs[0]["kind"], "BaselineAdminNetworkPolicy");
    let Action::Patch { target, ops } = &plans[0].steps[1].action else {
        panic!()
    };
    assert_eq!(target.kind, "BaselineAdminNetworkPolicy");
    assert_eq!(target.name, "default");
    assert_eq!(ops[0]["path"], "/spec/egress/0/action");
    let Action::Patch { target, .. } = &plans[1].steps[1].action else {
        panic!()
    };
    assert_eq!(target.kind, "ClusterNetworkPolicy");
    assert!(plans[0].features().contains(&Feature::Udp));
    assert_eq!(
        plans[0].kinds(),
        BTreeSet::from(["BaselineAdminNetworkPolicy".to_string()])
    );
}

#[test]
fn json_lists_every_pair() {
    let plans = plan_text(
        r#"
- id: t
  name: t
  source: user
  area: a
  world: upstream
  steps:
    - probe: {port: serve-81-udp, protocol: UDP}
"#,
    );
    let v = plans_json(&plans);
    let step = &v["cases"][0]["steps"][0];
    assert_eq!(step["port"], 81);
    assert_eq!(step["protocol"], "UDP");
    assert_eq!(step["pairs"].as_array().unwrap().len(), 72);
    assert_eq!(v["cases"][0]["features"], json!(["UDP"]));
}

#[test]
fn every_table_trial_runs_beside_others_or_takes_turns() {
    let plans = table();
    let scopes = super::scopes(&plans);
    for (plan, scope) in plans.iter().zip(&scopes) {
        let expected = if plan.world.is_shared() {
            Scope::Turns
        } else {
            Scope::Own
        };
        assert_eq!(*scope, expected, "{}", plan.trial);
    }
}

#[test]
fn a_cluster_scoped_subject_that_can_reach_other_worlds_runs_alone() {
    let mut plans = table();
    let npa = plans
        .iter()
        .position(|p| p.trial.starts_with("npa::") && p.trial.ends_with("v1alpha1"))
        .unwrap();
    // Any namespace at all: the upstream worlds' too.
    let everything = serde_json::json!({"namespaces": {}});
    // A label an upstream trial gives a namespace of its world.
    let upstream_label = serde_json::json!({"namespaces": {"matchLabels": {"ns2": "updated"}}});
    // Another world's namespace by name.
    let by_name = serde_json::json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "${ns:x}"}}});
    // Confined by a label only the npa world has, even beside a broad pod selector.
    let house = serde_json::json!({"pods": {
        "namespaceSelector": {"matchExpressions": [{"key": "conformance-house", "operator": "Exists"}]},
        "podSelector": {}
    }});
    for (subject, alone) in [
        (everything, true),
        (upstream_label, true),
        (by_name, true),
        (house, false),
    ] {
        let step = plans[npa]
            .steps
            .iter_mut()
            .find_map(|s| match &mut s.action {
                Action::Create(objects) => Some(objects),
                _ => None,
            })
            .unwrap();
        step[0]["spec"]["subject"] = subject.clone();
        let scope = super::scopes(&plans).swap_remove(npa);
        assert_eq!(
            matches!(scope, Scope::Alone { .. }),
            alone,
            "{subject}: {scope:?}"
        );
    }
}

fn table() -> Vec<Plan> {
    plan_all(&crate::case::load_embedded().unwrap()).unwrap()
}
