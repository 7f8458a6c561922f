//! The planner: a pure function from a case to ordered steps with concrete model names and the
//! expected reachability of every probed pair. Nothing here touches a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::case::{
    Case, CaseName, ExpectOp, Feature, ObjectRef, PortRef, Source, Step, parse_pair,
    parse_pair_probe,
};
use crate::reachability::{BlockRule, Expected};
use crate::render::{self, ApiVersion, RenderError};
use crate::world::{Protocol, World};

/// One planned step.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// Index of the step in the case file (pair probes split into several planned steps share it).
    pub index: usize,
    /// What to do.
    pub action: Action,
}

/// What a planned step does, with objects already rendered for the plan's API version.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create objects (placeholders still unresolved).
    Create(Vec<Value>),
    /// Replace objects.
    Update(Vec<Value>),
    /// JSON-patch one object.
    Patch {
        /// The object.
        target: ObjectRef,
        /// RFC 6902 operations.
        ops: Vec<Value>,
    },
    /// Delete objects.
    Delete(Vec<ObjectRef>),
    /// Delete every NetworkPolicy the case created.
    DeleteAllPolicies,
    /// Change a namespace's labels.
    LabelNamespace {
        /// Model namespace.
        namespace: String,
        /// Labels to add or change.
        set: BTreeMap<String, String>,
        /// Labels to remove.
        remove: Vec<String>,
    },
    /// Change a pod's labels.
    LabelPod {
        /// Model pod.
        pod: String,
        /// Labels to add or change.
        set: BTreeMap<String, String>,
        /// Labels to remove.
        remove: Vec<String>,
    },
    /// Delete and create pods again.
    RecreatePods(Vec<String>),
    /// Delete pods for good.
    DeletePods(Vec<String>),
    /// Probe and compare.
    Probe(ProbePlan),
}

impl Action {
    /// The key used in plans and reports (`create`, `probe`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Update(_) => "update",
            Action::Patch { .. } => "patch",
            Action::Delete(_) => "delete",
            Action::DeleteAllPolicies => "delete_all_policies",
            Action::LabelNamespace { .. } => "label_namespace",
            Action::LabelPod { .. } => "label_pod",
            Action::RecreatePods(_) => "recreate_pods",
            Action::DeletePods(_) => "delete_pods",
            Action::Probe(_) => "probe",
        }
    }
}

/// A probe matrix: one port and protocol, and the expected outcome of every probed pair.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePlan {
    /// The subtest's name, where the case gives one.
    pub name: Option<String>,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Expected outcomes; unset cells are not probed.
    pub expected: Expected,
}

/// A case planned for one trial.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Trial name: `<source>::<area>::<id>[::<api version>]`.
    pub trial: String,
    /// The case.
    pub case: Arc<Case>,
    /// The case's name for this rendering.
    pub name: String,
    /// For npa cases, the API version rendered.
    pub api_version: Option<ApiVersion>,
    /// The world's model.
    pub world: World,
    /// What counts as blocked.
    pub block_rule: BlockRule,
    /// Steps in order.
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Features the plan needs: the declared ones and those its probes imply.
    pub fn features(&self) -> BTreeSet<Feature> {
        let mut f = self.case.features.clone();
        for probe in self.probes() {
            match probe.protocol {
                Protocol::Udp => {
                    f.insert(Feature::Udp);
                }
                Protocol::Sctp => {
                    f.insert(Feature::Sctp);
                }
                Protocol::Tcp => {}
            }
            if probe
                .expected
                .entries()
                .any(|(_, to, _)| self.world.pod(to).is_some_and(|p| p.external))
            {
                f.insert(Feature::ExternalHost);
            }
        }
        f
    }

    /// Policy kinds the plan creates (each needs its API on the target).
    pub fn kinds(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Create(objs) | Action::Update(objs) => Some(objs),
                _ => None,
            })
            .flatten()
            .filter_map(|o| o.get("kind").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// The probe steps, in order.
    pub fn probes(&self) -> impl Iterator<Item = &ProbePlan> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Probe(p) => Some(p),
            _ => None,
        })
    }
}

/// A case that cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The v1alpha1 rendering failed.
    #[error("case {case}: step {step}")]
    Render {
        /// Case id.
        case: String,
        /// Step index.
        step: usize,
        /// Cause.
        #[source]
        source: RenderError,
    },
    /// A patch or delete names an object no earlier step created.
    #[error("case {case}: step {step}: {kind} `{name}` was not created by an earlier step")]
    UnknownObject {
        /// Case id.
        case: String,
        /// Step index.
        step: usize,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
}

/// Plans every case, in trial-name order.
pub fn plan_all(cases: &[Case]) -> Result<Vec<Plan>, PlanError> {
    let mut plans = Vec::new();
    for case in cases {
        plans.extend(plan_case(case)?);
    }
    plans.sort_by(|a, b| a.trial.cmp(&b.trial));
    Ok(plans)
}

/// Plans one case: one plan, or one per API version for npa cases.
pub fn plan_case(case: &Case) -> Result<Vec<Plan>, PlanError> {
    let case = Arc::new(case.clone());
    let base = format!("{}::{}::{}", case.source.as_str(), case.area, case.id);
    let block_rule = match case.source {
        Source::Npa => BlockRule::TimeoutOnly,
        _ => BlockRule::AnyFailure,
    };
    let world = case.world.model();
    match &case.name {
        CaseName::PerVersion { v1alpha1, v1alpha2 } => [
            (ApiVersion::V1alpha1, v1alpha1),
            (ApiVersion::V1alpha2, v1alpha2),
        ]
        .into_iter()
        .map(|(version, name)| {
            Ok(Plan {
                trial: format!("{base}::{}", version.as_str()),
                name: name.clone(),
                api_version: Some(version),
                steps: plan_steps(&case, &world, Some(version))?,
                case: case.clone(),
                world: world.clone(),
                block_rule,
            })
        })
        .collect(),
        CaseName::One(name) => Ok(vec![Plan {
            trial: base,
            name: name.clone(),
            api_version: None,
            steps: plan_steps(&case, &world, None)?,
            case: case.clone(),
            world,
            block_rule,
        }]),
    }
}

fn plan_steps(
    case: &Case,
    world: &World,
    version: Option<ApiVersion>,
) -> Result<Vec<PlannedStep>, PlanError> {
    let v1alpha1 = version == Some(ApiVersion::V1alpha1);
    // Tier of each ClusterNetworkPolicy created so far, for rendering patches and deletes.
    let mut tiers: BTreeMap<String, String> = BTreeMap::new();
    let mut steps = Vec::new();
    let render_err = |step, source| PlanError::Render {
        case: case.id.clone(),
        step,
        source,
    };
    for (index, step) in case.steps.iter().enumerate() {
        let rename =
            |r: &ObjectRef, tiers: &BTreeMap<String, String>| -> Result<ObjectRef, PlanError> {
                if !v1alpha1 || r.kind != "ClusterNetworkPolicy" {
                    return Ok(r.clone());
                }
                let tier = tiers.get(&r.name).ok_or_else(|| PlanError::UnknownObject {
                    case: case.id.clone(),
                    step: index,
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                })?;
                let (kind, name) =
                    render::v1alpha1_identity(tier, &r.name).map_err(|e| render_err(index, e))?;
                Ok(ObjectRef {
                    kind: kind.to_string(),
                    name,
                    namespace: None,
                })
            };
        let mut render_objs = |objs: &[Value]| -> Result<Vec<Value>, PlanError> {
            objs.iter()
                .map(|o| {
                    if let (Some(name), Some(tier)) = (
                        o.pointer("/metadata/name").and_then(Value::as_str),
                        render::cnp_tier(o),
                    ) {
                        tiers.insert(name.to_string(), tier.to_string());
                    }
                    if v1alpha1
                        && o.get("kind").and_then(Value::as_str) == Some("ClusterNetworkPolicy")
                    {
                        render::cnp_to_v1alpha1(o).map_err(|e| render_err(index, e))
                    } else {
                        Ok(o.clone())
                    }
                })
                .collect()
        };
        let push = |steps: &mut Vec<PlannedStep>, action| steps.push(PlannedStep { index, action });
        match step {
            Step::Create(objs) => {
                let objs = render_objs(objs)?;
                push(&mut steps, Action::Create(objs));
            }
            Step::Update(objs) => {
                let objs = render_objs(objs)?;
                push(&mut steps, Action::Update(objs));
            }
            Step::Patch(p) => {
                let target = ObjectRef {
                    kind: p.kind.clone(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                };
                let target = rename(&target, &tiers)?;
                let ops = if v1alpha1 && p.kind == "ClusterNetworkPolicy" {
                    render::patch_ops_to_v1alpha1(&p.name, &p.ops)
                        .map_err(|e| render_err(index, e))?
                } else {
                    p.ops.clone()
                };
                push(&mut steps, Action::Patch { target, ops });
            }
            Step::Delete(refs) => {
                let refs = refs
                    .iter()
                    .map(|r| rename(r, &tiers))
                    .collect::<Result<Vec<_>, _>>()?;
                push(&mut steps, Action::Delete(refs));
            }
            Step::DeleteAllPolicies(true) => push(&mut steps, Action::DeleteAllPolicies),
            Step::DeleteAllPolicies(false) => {}
            Step::LabelNamespace(l) => push(
                &mut steps,
                Action::LabelNamespace {
                    namespace: l.namespace.clone().unwrap_or_default(),
                    set: l.set.clone(),
                    remove: l.remove.clone(),
                },
            ),
            Step::LabelPod(l) => push(
                &mut steps,
                Action::LabelPod {
                    pod: l.pod.clone().unwrap_or_default(),
                    set: l.set.clone(),
                    remove: l.remove.clone(),
                },
            ),
            Step::RecreatePods(pods) => push(&mut steps, Action::RecreatePods(pods.clone())),
            Step::DeletePods(pods) => push(&mut steps, Action::DeletePods(pods.clone())),
            Step::Probe(p) => {
                if let Some(lines) = &p.pairs {
                    for probe in pair_probes(world, p.name.clone(), lines) {
                        push(&mut steps, Action::Probe(probe));
                    }
                } else {
                    let port = match p.port.as_ref() {
                        Some(PortRef::Number(n)) => *n,
                        Some(PortRef::Name(name)) => world.resolve_port(name).unwrap_or_default(),
                        None => 0,
                    };
                    push(
                        &mut steps,
                        Action::Probe(ProbePlan {
                            name: p.name.clone(),
                            port,
                            protocol: p.protocol.unwrap_or(Protocol::Tcp),
                            expected: matrix(world, p.expect.as_deref().unwrap_or(&[])),
                        }),
                    );
                }
            }
        }
    }
    Ok(steps)
}

/// Applies upstream's expectation calls in order over the world's pods, starting from
/// "everything allowed"; self pairs and the external host are never probed.
pub fn matrix(world: &World, ops: &[ExpectOp]) -> Expected {
    let pods: Vec<_> = world.pods.iter().filter(|p| !p.external).collect();
    let names: Vec<String> = pods.iter().map(|p| p.model_name()).collect();
    let mut t = Expected::new(names.clone());
    for from in &names {
        for to in &names {
            t.set(from, to, true);
        }
    }
    for op in ops {
        match op {
            ExpectOp::Expect(p) => t.set(&p.from, &p.to, p.allowed),
            ExpectOp::ExpectAllIngress(p) => {
                for from in &names {
                    t.set(from, &p.pod, p.allowed);
                }
            }
            ExpectOp::ExpectAllEgress(p) => {
                for to in &names {
                    t.set(&p.pod, to, p.allowed);
                }
            }
            ExpectOp::ExpectPeer(p) => {
                let matches = |sel: &crate::case::PeerSelector, model: &str| {
                    let (ns, pod) = model.split_once('/').unwrap_or((model, ""));
                    sel.ns.as_deref().is_none_or(|n| n == ns)
                        && sel.pod.as_deref().is_none_or(|q| q == pod)
                };
                for from in names.iter().filter(|m| matches(&p.from, m)) {
                    for to in names.iter().filter(|m| matches(&p.to, m)) {
                        t.set(from, to, p.allowed);
                    }
                }
            }
            ExpectOp::Blocked(pairs) | ExpectOp::Allowed(pairs) => {
                let allowed = matches!(op, ExpectOp::Allowed(_));
                for (from, to) in pairs.iter().filter_map(|p| parse_pair(p)) {
                    t.set(from, to, allowed);
                }
            }
        }
    }
    for name in &names {
        t.clear(name, name);
    }
    t
}

fn pair_probes(world: &World, name: Option<String>, lines: &[String]) -> Vec<ProbePlan> {
    let names = world.pod_names();
    let mut groups: Vec<ProbePlan> = Vec::new();
    for probe in lines.iter().filter_map(|l| parse_pair_probe(l).ok()) {
        let group = match groups
            .iter_mut()
            .position(|g| g.protocol == probe.protocol && g.port == probe.port)
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(ProbePlan {
                    name: name.clone(),
                    port: probe.port,
                    protocol: probe.protocol,
                    expected: Expected::new(names.clone()),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        if probe.from != probe.to {
            group.expected.set(&probe.from, &probe.to, probe.allowed);
        }
    }
    groups
}

/// The JSON form of plans: the stable external interface of `plan --json`.
pub fn plans_json(plans: &[Plan]) -> Value {
    let cases: Vec<Value> = plans.iter().map(plan_json_one).collect();
    json!({ "cases": cases })
}

/// Plans every case and renders the JSON form.
pub fn plan_json(cases: &[Case]) -> Value {
    match plan_all(cases) {
        Ok(plans) => plans_json(&plans),
        Err(e) => json!({ "error": error_chain(&e) }),
    }
}

fn plan_json_one(plan: &Plan) -> Value {
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|s| {
            let mut v = json!({ "index": s.index, "action": s.action.name() });
            match &s.action {
                Action::Probe(p) => {
                    v["name"] = json!(p.name);
                    v["port"] = json!(p.port);
                    v["protocol"] = json!(p.protocol.as_str());
                    v["pairs"] = Value::Array(
                        p.expected
                            .entries()
                            .map(|(from, to, allowed)| {
                                json!({"from": from, "to": to,
                                       "expect": if *allowed { "allowed" } else { "blocked" }})
                            })
                            .collect(),
                    );
                }
                Action::Create(objs) | Action::Update(objs) => {
                    v["objects"] = Value::Array(objs.clone());
                }
                Action::Patch { target, ops } => {
                    v["target"] = json!(target);
                    v["ops"] = Value::Array(ops.clone());
                }
                Action::Delete(refs) => v["objects"] = json!(refs),
                Action::LabelNamespace {
                    namespace,
                    set,
                    remove,
                } => {
                    v["namespace"] = json!(namespace);
                    v["set"] = json!(set);
                    v["remove"] = json!(remove);
                }
                Action::LabelPod { pod, set, remove } => {
                    v["pod"] = json!(pod);
                    v["set"] = json!(set);
                    v["remove"] = json!(remove);
                }
                Action::RecreatePods(pods) | Action::DeletePods(pods) => v["pods"] = json!(pods),
                Action::DeleteAllPolicies => {}
            }
            v
        })
        .collect();
    json!({
        "trial": plan.trial,
        "id": plan.case.id,
        "name": plan.name,
        "source": plan.case.source.as_str(),
        "area": plan.case.area,
        "features": plan.features().iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "world": plan.case.world.as_str(),
        "api_version": plan.api_version.map(ApiVersion::as_str),
        "steps": steps,
    })
}

/// An error with its causes, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::load_files;

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
}
