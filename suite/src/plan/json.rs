//! The JSON form of plans: the stable external interface of `plan --json`.

use serde_json::{Value, json};

use super::{Action, Plan, error_chain, plan_all};
use crate::case::Case;
use crate::translate::ApiVersion;

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
