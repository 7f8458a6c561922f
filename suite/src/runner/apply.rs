//! Placeholders and namespaces realized in a step's objects, and the steps that change the
//! cluster (everything but probes) applied.

use serde_json::Value;

use crate::backend::{BackendError, Cluster, LabelChange, RealizedWorld};
use crate::case::ObjectRef;
use crate::plan::{Action, Plan};
use crate::report::TrialReport;
use crate::translate::{self, ResolveError};

/// Why a step could not be carried out.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// Resolves placeholders, realizes the model namespace of a namespaced object, and labels it
/// with the trial, so the trial's cleanup finds it even in a world shared with other trials.
fn realize_object(obj: &Value, realized: &RealizedWorld) -> Result<Value, ResolveError> {
    let mut obj = translate::resolve(obj, realized)?;
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = Value::Object(Default::default());
    }
    obj["metadata"]["labels"][crate::kube::LABEL_TRIAL] = Value::String(realized.suffix.clone());
    if let Some(ns) = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
        && let Some(real) = realized.namespaces.get(&ns)
    {
        obj["metadata"]["namespace"] = Value::String(real.clone());
    }
    Ok(obj)
}

fn realize_ref(r: &ObjectRef, realized: &RealizedWorld) -> ObjectRef {
    ObjectRef {
        namespace: r.namespace.as_ref().map(|ns| {
            realized
                .namespaces
                .get(ns)
                .cloned()
                .unwrap_or_else(|| ns.clone())
        }),
        ..r.clone()
    }
}

pub(super) fn apply(
    cluster: &dyn Cluster,
    plan: &Plan,
    realized: &mut RealizedWorld,
    action: &Action,
    report: &mut TrialReport,
) -> Result<(), StepError> {
    let mut log = |s: String| {
        report.log.push_str(&s);
        report.log.push('\n');
    };
    match action {
        Action::Create(objs) | Action::Update(objs) => {
            let objs = objs
                .iter()
                .map(|o| realize_object(o, realized))
                .collect::<Result<Vec<_>, _>>()?;
            for o in &objs {
                log(format!(
                    "{} {}:\n{}",
                    action.name(),
                    o["kind"].as_str().unwrap_or("?"),
                    serde_json::to_string_pretty(o).unwrap_or_default()
                ));
            }
            if matches!(action, Action::Create(_)) {
                cluster.create(&objs)?;
            } else {
                cluster.update(&objs)?;
            }
        }
        Action::Patch { target, ops } => {
            let ops = ops
                .iter()
                .map(|o| translate::resolve(o, realized))
                .collect::<Result<Vec<_>, _>>()?;
            let target = realize_ref(target, realized);
            log(format!(
                "patch {} {}: {}",
                target.kind,
                target.name,
                serde_json::to_string(&ops).unwrap_or_default()
            ));
            cluster.patch(&target, &ops)?;
        }
        Action::Delete(refs) => {
            let refs: Vec<_> = refs.iter().map(|r| realize_ref(r, realized)).collect();
            for r in &refs {
                log(format!("delete {} {}", r.kind, r.name));
            }
            cluster.delete(&refs)?;
        }
        Action::DeleteAllPolicies => {
            let namespaces: Vec<String> = realized.namespaces.values().cloned().collect();
            log("delete every NetworkPolicy of the world".into());
            cluster.delete_all_network_policies(&namespaces)?;
        }
        Action::LabelNamespace {
            namespace,
            set,
            remove,
        } => {
            let real = realized
                .namespaces
                .get(namespace)
                .cloned()
                .unwrap_or_else(|| namespace.clone());
            log(format!(
                "label namespace {real}: set {set:?}, remove {remove:?}"
            ));
            cluster.label_namespace(&real, LabelChange { set, remove })?;
        }
        Action::LabelPod { pod, set, remove } => {
            let real = realized.pods.get(pod).ok_or_else(|| BackendError::Other {
                operation: format!("label pod {pod}"),
                cause: "the pod was not realized".into(),
            })?;
            log(format!(
                "label pod {}/{}: set {set:?}, remove {remove:?}",
                real.namespace, real.name
            ));
            cluster.label_pod(real, LabelChange { set, remove })?;
        }
        Action::DeletePods(pods) => {
            log(format!("delete pods {}", pods.join(", ")));
            cluster.delete_pods(realized, pods)?;
        }
        Action::RecreatePods(pods) => {
            log(format!("recreate pods {}", pods.join(", ")));
            for pod in cluster.recreate_pods(&plan.world, realized, pods)? {
                realized.pods.insert(pod.model.clone(), pod);
            }
        }
        Action::Probe(_) => unreachable!("probe steps are handled by probe_step"),
    }
    Ok(())
}
