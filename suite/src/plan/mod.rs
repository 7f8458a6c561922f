//! The planner: a pure function from a case to ordered steps with concrete model names and the
//! expected reachability of every probed pair. Nothing here touches a cluster.
//!
//! The JSON form of plans (`plan --json`) is in `json.rs`.

mod json;
pub mod scope;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use crate::case::{
    Case, CaseName, ExpectOp, Feature, ObjectRef, PairProbe, PatchStep, PortRef, ProbeStep, Source,
    Step,
};
use crate::reachability::{BlockRule, Expected};
use crate::translate::{self, ApiVersion, TranslateError};
use crate::world::{Protocol, World};

pub use json::{plan_json, plans_json};
pub use scope::{Scope, scopes};

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
        self.objects()
            .filter_map(|o| o.get("kind").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Every object the plan creates or replaces, in step order.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Create(objs) | Action::Update(objs) => Some(objs),
                _ => None,
            })
            .flatten()
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
        source: TranslateError,
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

/// Renders a case's objects and object references for one API version, remembering the tier of
/// each ClusterNetworkPolicy created so far: its v1alpha1 kind and name follow from the tier.
struct Renderer<'a> {
    /// The case's id, for errors.
    case: &'a str,
    /// Whether ClusterNetworkPolicies become v1alpha1 AdminNetworkPolicies.
    v1alpha1: bool,
    /// Tier of each ClusterNetworkPolicy created so far, for rendering patches and deletes.
    tiers: BTreeMap<String, String>,
}

impl Renderer<'_> {
    fn render_err(&self, step: usize, source: TranslateError) -> PlanError {
        PlanError::Render {
            case: self.case.to_string(),
            step,
            source,
        }
    }

    /// A reference to an object an earlier step created, in this rendering.
    fn rename(&self, index: usize, r: &ObjectRef) -> Result<ObjectRef, PlanError> {
        if !self.v1alpha1 || r.kind != "ClusterNetworkPolicy" {
            return Ok(r.clone());
        }
        let tier = self
            .tiers
            .get(&r.name)
            .ok_or_else(|| PlanError::UnknownObject {
                case: self.case.to_string(),
                step: index,
                kind: r.kind.clone(),
                name: r.name.clone(),
            })?;
        let (kind, name) =
            translate::v1alpha1_identity(tier, &r.name).map_err(|e| self.render_err(index, e))?;
        Ok(ObjectRef {
            kind: kind.to_string(),
            name,
            namespace: None,
        })
    }

    /// Objects to create or replace, in this rendering.
    fn objects(&mut self, index: usize, objs: &[Value]) -> Result<Vec<Value>, PlanError> {
        objs.iter()
            .map(|o| {
                if let (Some(name), Some(tier)) = (
                    o.pointer("/metadata/name").and_then(Value::as_str),
                    translate::cnp_tier(o),
                ) {
                    self.tiers.insert(name.to_string(), tier.to_string());
                }
                if self.v1alpha1
                    && o.get("kind").and_then(Value::as_str) == Some("ClusterNetworkPolicy")
                {
                    translate::cnp_to_v1alpha1(o).map_err(|e| self.render_err(index, e))
                } else {
                    Ok(o.clone())
                }
            })
            .collect()
    }

    /// A patch step, its target and operations in this rendering.
    fn patch(&self, index: usize, p: &PatchStep) -> Result<Action, PlanError> {
        let target = ObjectRef {
            kind: p.kind.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
        };
        let target = self.rename(index, &target)?;
        let ops = if self.v1alpha1 && p.kind == "ClusterNetworkPolicy" {
            translate::patch_ops_to_v1alpha1(&p.name, &p.ops)
                .map_err(|e| self.render_err(index, e))?
        } else {
            p.ops.clone()
        };
        Ok(Action::Patch { target, ops })
    }
}

fn plan_steps(
    case: &Case,
    world: &World,
    version: Option<ApiVersion>,
) -> Result<Vec<PlannedStep>, PlanError> {
    let mut renderer = Renderer {
        case: &case.id,
        v1alpha1: version == Some(ApiVersion::V1alpha1),
        tiers: BTreeMap::new(),
    };
    let mut steps = Vec::new();
    for (index, step) in case.steps.iter().enumerate() {
        for action in plan_step(&mut renderer, world, index, step)? {
            steps.push(PlannedStep { index, action });
        }
    }
    Ok(steps)
}

/// The actions of one step as written: none (`delete_all_policies: false`), one, or one per
/// protocol and port of a pair probe.
fn plan_step(
    renderer: &mut Renderer<'_>,
    world: &World,
    index: usize,
    step: &Step,
) -> Result<Vec<Action>, PlanError> {
    Ok(match step {
        Step::Create(objs) => vec![Action::Create(renderer.objects(index, objs)?)],
        Step::Update(objs) => vec![Action::Update(renderer.objects(index, objs)?)],
        Step::Patch(p) => vec![renderer.patch(index, p)?],
        Step::Delete(refs) => {
            let refs = refs
                .iter()
                .map(|r| renderer.rename(index, r))
                .collect::<Result<Vec<_>, _>>()?;
            vec![Action::Delete(refs)]
        }
        Step::DeleteAllPolicies(true) => vec![Action::DeleteAllPolicies],
        Step::DeleteAllPolicies(false) => vec![],
        Step::LabelNamespace(l) => vec![Action::LabelNamespace {
            namespace: l.namespace.clone().unwrap_or_default(),
            set: l.set.clone(),
            remove: l.remove.clone(),
        }],
        Step::LabelPod(l) => vec![Action::LabelPod {
            pod: l.pod.clone().unwrap_or_default(),
            set: l.set.clone(),
            remove: l.remove.clone(),
        }],
        Step::RecreatePods(pods) => vec![Action::RecreatePods(pods.clone())],
        Step::DeletePods(pods) => vec![Action::DeletePods(pods.clone())],
        Step::Probe(p) => probe_actions(world, p),
    })
}

/// A probe step's probes: one matrix, or the pair probe's lines grouped by protocol and port.
fn probe_actions(world: &World, p: &ProbeStep) -> Vec<Action> {
    if let Some(lines) = &p.pairs {
        return pair_probes(world, p.name.clone(), lines)
            .into_iter()
            .map(Action::Probe)
            .collect();
    }
    let port = match p.port.as_ref() {
        Some(PortRef::Number(n)) => *n,
        Some(PortRef::Name(name)) => world.resolve_port(name).unwrap_or_default(),
        None => 0,
    };
    vec![Action::Probe(ProbePlan {
        name: p.name.clone(),
        port,
        protocol: p.protocol.unwrap_or(Protocol::Tcp),
        expected: matrix(world, p.expect.as_deref().unwrap_or(&[])),
    })]
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
                for p in pairs {
                    t.set(&p.from, &p.to, allowed);
                }
            }
        }
    }
    for name in &names {
        t.clear(name, name);
    }
    t
}

fn pair_probes(world: &World, name: Option<String>, lines: &[PairProbe]) -> Vec<ProbePlan> {
    let names = world.pod_names();
    let mut groups: Vec<ProbePlan> = Vec::new();
    for probe in lines {
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

/// An error with its causes, `: `-separated (the local crate's, shared).
pub use netpol_local::error_chain;
