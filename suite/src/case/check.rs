//! Validating a parsed case against its world: model names, placeholders, objects, pair
//! syntax, step shapes; every error names the file, the line and the field.

use serde_json::Value;

use super::pair::{Pair, find_placeholders};
use super::{
    Case, CaseDoc, CaseName, ExpectOp, LoadError, Placeholder, PortRef, ProbeStep, Source, Step,
};
use crate::world::World;

/// Kinds of policy objects a case may create.
pub const POLICY_KINDS: [(&str, &str); 4] = [
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1"),
    (
        "BaselineAdminNetworkPolicy",
        "policy.networking.k8s.io/v1alpha1",
    ),
    ("ClusterNetworkPolicy", "policy.networking.k8s.io/v1alpha2"),
];

struct Checker<'a> {
    file: &'a str,
    id: &'a str,
    world: World,
    line: u64,
}

impl Checker<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::Invalid {
            file: self.file.to_string(),
            line: self.line,
            id: self.id.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn pod(&self, field: &str, model: &str) -> Result<(), LoadError> {
        if self.world.pod(model).is_some() {
            return Ok(());
        }
        Err(self.err(
            field,
            format!(
                "unknown pod `{model}` in world {} (pods: {})",
                self.world.kind.as_str(),
                self.world.pod_names().join(", ")
            ),
        ))
    }

    fn namespace(&self, field: &str, model: &str) -> Result<(), LoadError> {
        if self.world.namespace(model).is_some() {
            return Ok(());
        }
        let known: Vec<_> = self
            .world
            .namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        Err(self.err(
            field,
            format!(
                "unknown namespace `{model}` in world {} (namespaces: {})",
                self.world.kind.as_str(),
                known.join(", ")
            ),
        ))
    }

    fn pair(&self, field: &str, pair: &Pair) -> Result<(), LoadError> {
        self.pod(field, &pair.from)?;
        self.pod(field, &pair.to)
    }

    fn placeholders(&self, field: &str, value: &Value) -> Result<(), LoadError> {
        match value {
            Value::String(s) => {
                for p in find_placeholders(s) {
                    let p = p.map_err(|e| self.err(field, e.to_string()))?;
                    self.placeholder(field, &p)?;
                }
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|v| self.placeholders(field, v)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                self.placeholders(field, &Value::String(k.clone()))?;
                self.placeholders(field, v)
            }),
            _ => Ok(()),
        }
    }

    fn placeholder(&self, field: &str, p: &Placeholder) -> Result<(), LoadError> {
        match p {
            Placeholder::Namespace(ns) => self.namespace(field, ns),
            Placeholder::Ip(pod) | Placeholder::Host(pod) => self.pod(field, pod),
            Placeholder::Cidr(pod, len) => {
                self.pod(field, pod)?;
                if *len > 32 {
                    return Err(self.err(field, format!("prefix length {len} is over 32")));
                }
                Ok(())
            }
            Placeholder::NodeIp(_) | Placeholder::ExternalIp => Ok(()),
        }
    }

    fn object(&self, field: &str, obj: &Value, source: Source) -> Result<(), LoadError> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let Some((_, want_api)) = POLICY_KINDS.iter().find(|(k, _)| *k == kind) else {
            let kinds: Vec<_> = POLICY_KINDS.iter().map(|(k, _)| *k).collect();
            return Err(self.err(
                format!("{field}.kind"),
                format!(
                    "unsupported kind `{kind}` (expected one of {})",
                    kinds.join(", ")
                ),
            ));
        };
        if api != *want_api {
            return Err(self.err(
                format!("{field}.apiVersion"),
                format!("{kind} is {want_api}, not `{api}`"),
            ));
        }
        if source == Source::Npa && kind.contains("AdminNetworkPolicy") {
            return Err(self.err(
                format!("{field}.kind"),
                "npa cases are written as ClusterNetworkPolicy and rendered for v1alpha1",
            ));
        }
        let meta = obj.get("metadata");
        if meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(self.err(format!("{field}.metadata.name"), "missing"));
        }
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        match (kind == "NetworkPolicy", ns) {
            (true, Some(ns)) => self.namespace(&format!("{field}.metadata.namespace"), ns)?,
            (true, None) => {
                return Err(self.err(
                    format!("{field}.metadata.namespace"),
                    "a NetworkPolicy needs its model namespace",
                ));
            }
            (false, Some(_)) => {
                return Err(self.err(
                    format!("{field}.metadata.namespace"),
                    format!("{kind} is cluster-scoped"),
                ));
            }
            (false, None) => {}
        }
        if obj.get("spec").is_none() {
            return Err(self.err(format!("{field}.spec"), "missing"));
        }
        self.placeholders(field, obj)
    }

    fn expect_op(&self, field: &str, op: &ExpectOp) -> Result<(), LoadError> {
        match op {
            ExpectOp::Expect(p) => {
                self.pod(&format!("{field}.from"), &p.from)?;
                self.pod(&format!("{field}.to"), &p.to)
            }
            ExpectOp::ExpectAllIngress(p) | ExpectOp::ExpectAllEgress(p) => {
                self.pod(&format!("{field}.pod"), &p.pod)
            }
            ExpectOp::ExpectPeer(p) => {
                for (side, sel) in [("from", &p.from), ("to", &p.to)] {
                    if let Some(ns) = &sel.ns {
                        self.namespace(&format!("{field}.{side}.ns"), ns)?;
                    }
                    if let (Some(ns), Some(pod)) = (&sel.ns, &sel.pod) {
                        self.pod(&format!("{field}.{side}.pod"), &format!("{ns}/{pod}"))?;
                    }
                }
                Ok(())
            }
            ExpectOp::Blocked(pairs) | ExpectOp::Allowed(pairs) => pairs
                .iter()
                .enumerate()
                .try_for_each(|(i, p)| self.pair(&format!("{field}[{i}]"), p)),
        }
    }

    fn step(&mut self, index: usize, step: &Step, source: Source) -> Result<(), LoadError> {
        let field = format!("steps[{index}].{}", step.action());
        match step {
            Step::Create(objs) | Step::Update(objs) => {
                if objs.is_empty() {
                    return Err(self.err(field, "lists no objects"));
                }
                for (i, obj) in objs.iter().enumerate() {
                    self.object(&format!("{field}[{i}]"), obj, source)?;
                }
            }
            Step::Patch(p) => {
                if let Some(ns) = &p.namespace {
                    self.namespace(&format!("{field}.namespace"), ns)?;
                }
                let ops = Value::Array(p.ops.clone());
                serde_json::from_value::<json_patch::Patch>(ops.clone()).map_err(|e| {
                    self.err(format!("{field}.ops"), format!("not a JSON Patch: {e}"))
                })?;
                self.placeholders(&field, &ops)?;
            }
            Step::Delete(refs) => {
                for (i, r) in refs.iter().enumerate() {
                    if let Some(ns) = &r.namespace {
                        self.namespace(&format!("{field}[{i}].namespace"), ns)?;
                    }
                }
            }
            Step::DeleteAllPolicies(_) => {}
            Step::LabelNamespace(l) => {
                let ns = l
                    .namespace
                    .as_deref()
                    .ok_or_else(|| self.err(format!("{field}.namespace"), "missing"))?;
                self.namespace(&format!("{field}.namespace"), ns)?;
                if l.pod.is_some() {
                    return Err(self.err(format!("{field}.pod"), "use label_pod for pods"));
                }
            }
            Step::LabelPod(l) => {
                let pod = l
                    .pod
                    .as_deref()
                    .ok_or_else(|| self.err(format!("{field}.pod"), "missing"))?;
                self.pod(&format!("{field}.pod"), pod)?;
                if l.namespace.is_some() {
                    return Err(self.err(
                        format!("{field}.namespace"),
                        "name the pod as <namespace>/<pod>",
                    ));
                }
            }
            Step::RecreatePods(pods) | Step::DeletePods(pods) => {
                for (i, p) in pods.iter().enumerate() {
                    self.pod(&format!("{field}[{i}]"), p)?;
                }
            }
            Step::Probe(p) => self.probe(&field, p)?,
        }
        Ok(())
    }

    fn probe(&self, field: &str, p: &ProbeStep) -> Result<(), LoadError> {
        match (&p.pairs, &p.port, &p.protocol) {
            (Some(pairs), None, None) => {
                if p.expect.is_some() {
                    return Err(self.err(
                        format!("{field}.expect"),
                        "a pair probe carries its expectations in `pairs`",
                    ));
                }
                if pairs.is_empty() {
                    return Err(self.err(format!("{field}.pairs"), "lists no pairs"));
                }
                for (i, probe) in pairs.iter().enumerate() {
                    let f = format!("{field}.pairs[{i}]");
                    self.pod(&f, &probe.from)?;
                    self.pod(&f, &probe.to)?;
                }
                Ok(())
            }
            (Some(_), _, _) => Err(self.err(
                format!("{field}.pairs"),
                "a pair probe names port and protocol per pair, not for the step",
            )),
            (None, Some(port), Some(_)) => {
                if let PortRef::Name(name) = port
                    && self.world.resolve_port(name).is_none()
                {
                    return Err(self.err(
                        format!("{field}.port"),
                        format!("no container port is named `{name}`"),
                    ));
                }
                for (i, op) in p.expect.iter().flatten().enumerate() {
                    self.expect_op(&format!("{field}.expect[{i}]"), op)?;
                }
                Ok(())
            }
            (None, None, _) => Err(self.err(
                format!("{field}.port"),
                "missing (a matrix probe needs port and protocol; a pair probe needs pairs)",
            )),
            (None, Some(_), None) => Err(self.err(format!("{field}.protocol"), "missing")),
        }
    }
}

pub(super) fn validate(file: &str, line: u64, doc: CaseDoc) -> Result<Case, LoadError> {
    let mut checker = Checker {
        file,
        id: &doc.id,
        world: doc.world.model(),
        line,
    };
    let id_ok = !doc.id.is_empty()
        && doc
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err(checker.err("id", "must match [a-z0-9-]+"));
    }
    if doc.area.is_empty() || doc.area.contains("::") || doc.area.contains(char::is_whitespace) {
        return Err(checker.err("area", "must be a non-empty word without `::`"));
    }
    match (&doc.name, doc.source) {
        (CaseName::PerVersion { .. }, Source::Npa) | (CaseName::One(_), _) => {}
        (CaseName::PerVersion { .. }, _) => {
            return Err(checker.err("name", "per-version names are for npa cases"));
        }
    }
    if let (CaseName::One(_), Source::Npa) = (&doc.name, doc.source) {
        return Err(checker.err("name", "npa cases give {v1alpha1: …, v1alpha2: …}"));
    }
    if doc.steps.is_empty() {
        return Err(checker.err("steps", "a case needs at least one step"));
    }
    if !doc.steps.iter().any(|s| matches!(s.value, Step::Probe(_))) {
        return Err(checker.err("steps", "a case needs at least one probe step"));
    }
    let mut steps = Vec::with_capacity(doc.steps.len());
    for (i, step) in doc.steps.into_iter().enumerate() {
        checker.line = step.referenced.line();
        checker.step(i, &step.value, doc.source)?;
        steps.push(step.value);
    }
    Ok(Case {
        origin: format!("{file}:{line}"),
        id: doc.id,
        name: doc.name,
        source: doc.source,
        area: doc.area,
        features: doc.features.into_iter().collect(),
        world: doc.world,
        description: doc.description,
        steps,
    })
}
