//! What a trial can disturb beyond its own pods, decided from its objects: the run uses it to
//! let trials run side by side wherever none can change what another one probes.
//!
//! A NetworkPolicy lives in its trial's own namespaces and selects only pods there, so trials
//! that create nothing else run beside anything. A cluster-scoped policy (AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy, ClusterNetworkPolicy) applies to every pod its `subject`
//! selects, in any namespace: such trials take turns, and one whose subject could select a
//! namespace or pod of another trial's world runs alone. "Could select" is decided against the
//! labels every other trial of the run can give its namespaces and pods (the world models and
//! every relabel step), so a selector counts as confined only when one of its requirements no
//! other world can meet.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Action, Plan};

/// The label the API server gives every namespace: its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How a trial must be scheduled beside the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// It touches only its own namespaces: it runs beside any trial.
    Own,
    /// It creates cluster-scoped policies or uses a world shared by several trials, but
    /// nothing it creates can select another world's pods: it takes turns with the other
    /// such trials, while trials of [`Scope::Own`] go on beside it.
    Turns,
    /// A cluster-scoped policy of it could select pods of another trial's world: it runs
    /// alone.
    Alone {
        /// Which object, and why.
        reason: String,
    },
}

impl Scope {
    /// `own`, `turns` or `alone`, for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Own => "own",
            Scope::Turns => "turns",
            Scope::Alone { .. } => "alone",
        }
    }
}

/// The labels one world can carry during a run: on its namespaces and on its pods.
#[derive(Debug, Default, Clone)]
struct Labels {
    namespaces: BTreeSet<(String, String)>,
    pods: BTreeSet<(String, String)>,
}

impl Labels {
    fn of(plan: &Plan) -> Labels {
        let mut labels = Labels::default();
        for ns in &plan.world.namespaces {
            labels.namespaces.extend(ns.labels.clone());
        }
        for pod in &plan.world.pods {
            labels.pods.extend(pod.labels.clone());
        }
        for step in &plan.steps {
            match &step.action {
                Action::LabelNamespace { set, .. } => labels.namespaces.extend(set.clone()),
                Action::LabelPod { set, .. } => labels.pods.extend(set.clone()),
                _ => {}
            }
        }
        labels
    }

    fn extend(&mut self, other: &Labels) {
        self.namespaces.extend(other.namespaces.iter().cloned());
        self.pods.extend(other.pods.iter().cloned());
    }
}

/// The scope of every plan, in order, judged against the other plans of the same run.
pub fn scopes(plans: &[Plan]) -> Vec<Scope> {
    let labels: Vec<Labels> = plans.iter().map(Labels::of).collect();
    plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            // Every world but this trial's own: the shared world's other trials use the same
            // namespaces (and take turns with it anyway).
            let mut foreign = Labels::default();
            for (j, other) in plans.iter().enumerate() {
                let same_world = j == i || (plan.world.is_shared() && other.world == plan.world);
                if !same_world {
                    foreign.extend(&labels[j]);
                }
            }
            scope(plan, &foreign)
        })
        .collect()
}

fn scope(plan: &Plan, foreign: &Labels) -> Scope {
    let own_namespaces: BTreeSet<&str> = plan
        .world
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let mut cluster_scoped = false;
    for object in plan.objects() {
        let kind = object["kind"].as_str().unwrap_or_default();
        if kind == "NetworkPolicy" {
            continue;
        }
        cluster_scoped = true;
        let name = object["metadata"]["name"].as_str().unwrap_or("?");
        if let Err(why) = confined(&object["spec"]["subject"], foreign, &own_namespaces) {
            return Scope::Alone {
                reason: format!("{kind} {name}: its subject {why}"),
            };
        }
    }
    if cluster_scoped || plan.world.is_shared() {
        Scope::Turns
    } else {
        Scope::Own
    }
}

/// Whether a subject (`{namespaces: …}` or `{pods: {namespaceSelector, podSelector}}`) can
/// select only the trial's own pods; `Err` says why not.
fn confined(
    subject: &Value,
    foreign: &Labels,
    own_namespaces: &BTreeSet<&str>,
) -> Result<(), String> {
    if let Some(selector) = subject.get("namespaces") {
        return if confines(selector, &foreign.namespaces, own_namespaces) {
            Ok(())
        } else {
            Err("can select namespaces of other trials".into())
        };
    }
    if let Some(pods) = subject.get("pods") {
        let by_namespace = pods
            .get("namespaceSelector")
            .is_some_and(|s| confines(s, &foreign.namespaces, own_namespaces));
        let by_pod = pods
            .get("podSelector")
            .is_some_and(|s| confines(s, &foreign.pods, &BTreeSet::new()));
        return if by_namespace || by_pod {
            Ok(())
        } else {
            Err("can select pods of other trials".into())
        };
    }
    Err("is neither `namespaces` nor `pods`".into())
}

/// Whether a label selector has a requirement that no label set in `foreign` meets (all its
/// requirements must hold, so one that cannot is enough). `kubernetes.io/metadata.name` equal
/// to a `${ns:…}` placeholder of one of the trial's own namespaces names that namespace alone.
fn confines(
    selector: &Value,
    foreign: &BTreeSet<(String, String)>,
    own_namespaces: &BTreeSet<&str>,
) -> bool {
    let foreign_keys: BTreeSet<&str> = foreign.iter().map(|(k, _)| k.as_str()).collect();
    let unmet = |key: &str, value: &str| {
        if key == NAMESPACE_NAME_LABEL {
            return own_placeholder(value, own_namespaces);
        }
        !foreign.contains(&(key.to_string(), value.to_string()))
    };
    let by_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_some_and(|labels| {
            labels
                .iter()
                .any(|(k, v)| v.as_str().is_some_and(|v| unmet(k, v)))
        });
    let by_expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_some_and(|exprs| {
            exprs.iter().any(|e| {
                let key = e["key"].as_str().unwrap_or_default();
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e["operator"].as_str() {
                    Some("In") => values.iter().all(|v| unmet(key, v)),
                    Some("Exists") => key != NAMESPACE_NAME_LABEL && !foreign_keys.contains(key),
                    _ => false,
                }
            })
        });
    by_labels || by_expressions
}

/// Whether `value` is `${ns:<model>}` for one of the trial's own namespaces.
fn own_placeholder(value: &str, own_namespaces: &BTreeSet<&str>) -> bool {
    value
        .strip_prefix("${ns:")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|model| own_namespaces.contains(model))
}

/// How many trials of each scope a run has, for the start-of-run line.
pub fn describe(scopes: &[Scope]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in scopes {
        let key = match s {
            Scope::Own => "in their own namespaces",
            Scope::Turns => "taking turns with cluster-scoped policies",
            Scope::Alone { .. } => "alone",
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
