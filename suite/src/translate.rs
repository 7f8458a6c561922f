//! Translating a case's objects into what a target takes: network-policy-api scenarios written
//! as v1alpha2 ClusterNetworkPolicy are rendered as v1alpha1 AdminNetworkPolicy /
//! BaselineAdminNetworkPolicy (at planning), and placeholders are replaced by values known only
//! at run time (at apply).

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::case::{Placeholder, scan_placeholders};

/// The API version a network-policy-api scenario is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// AdminNetworkPolicy / BaselineAdminNetworkPolicy (network-policy-api v0.1.x).
    V1alpha1,
    /// ClusterNetworkPolicy (network-policy-api v0.2+).
    V1alpha2,
}

impl ApiVersion {
    /// `v1alpha1` / `v1alpha2`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1alpha1 => "v1alpha1",
            ApiVersion::V1alpha2 => "v1alpha2",
        }
    }
}

/// A ClusterNetworkPolicy that cannot be expressed in v1alpha1.
#[derive(Debug, thiserror::Error)]
#[error("rendering {what} for v1alpha1: {message}")]
pub struct TranslateError {
    /// What was being rendered.
    pub what: String,
    /// Why it cannot be.
    pub message: String,
}

fn err(what: &str, message: impl Into<String>) -> TranslateError {
    TranslateError {
        what: what.to_string(),
        message: message.into(),
    }
}

/// The tier of a ClusterNetworkPolicy object (`Admin` / `Baseline`).
pub fn cnp_tier(obj: &Value) -> Option<&str> {
    obj.pointer("/spec/tier").and_then(Value::as_str)
}

/// The v1alpha1 kind and name a ClusterNetworkPolicy of this tier and name becomes.
pub fn v1alpha1_identity(tier: &str, name: &str) -> Result<(&'static str, String), TranslateError> {
    match tier {
        "Admin" => Ok(("AdminNetworkPolicy", name.to_string())),
        "Baseline" => Ok(("BaselineAdminNetworkPolicy", "default".to_string())),
        other => Err(err(name, format!("unknown tier `{other}`"))),
    }
}

/// Renders a whole ClusterNetworkPolicy as an AdminNetworkPolicy (tier Admin, same name and
/// priority) or as the BaselineAdminNetworkPolicy `default` (tier Baseline, no priority).
pub fn cnp_to_v1alpha1(obj: &Value) -> Result<Value, TranslateError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let tier = cnp_tier(obj).ok_or_else(|| err(name, "spec.tier is missing"))?;
    let (kind, new_name) = v1alpha1_identity(tier, name)?;
    let spec = obj
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| err(name, "spec is missing"))?;
    let mut out = Map::new();
    for (key, value) in spec {
        match key.as_str() {
            "tier" => {}
            "priority" if kind == "BaselineAdminNetworkPolicy" => {}
            "ingress" | "egress" => {
                out.insert(key.clone(), rules_to_v1alpha1(name, value)?);
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let mut metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    metadata["name"] = Value::String(new_name);
    Ok(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": out,
    }))
}

fn rules_to_v1alpha1(what: &str, rules: &Value) -> Result<Value, TranslateError> {
    let rules = rules
        .as_array()
        .ok_or_else(|| err(what, "rules are not a list"))?;
    rules
        .iter()
        .map(|r| rule_to_v1alpha1(what, r))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn rule_to_v1alpha1(what: &str, rule: &Value) -> Result<Value, TranslateError> {
    let rule = rule
        .as_object()
        .ok_or_else(|| err(what, "a rule is not an object"))?;
    let mut out = Map::new();
    for (key, value) in rule {
        match key.as_str() {
            "action" => {
                out.insert(key.clone(), action_to_v1alpha1(what, value)?);
            }
            "protocols" => {
                out.insert("ports".into(), protocols_to_v1alpha1(what, value)?);
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(Value::Object(out))
}

fn action_to_v1alpha1(what: &str, action: &Value) -> Result<Value, TranslateError> {
    match action.as_str() {
        Some("Accept") => Ok(json!("Allow")),
        Some(a @ ("Deny" | "Pass")) => Ok(json!(a)),
        _ => Err(err(what, format!("unknown action {action}"))),
    }
}

fn protocols_to_v1alpha1(what: &str, protocols: &Value) -> Result<Value, TranslateError> {
    let list = protocols
        .as_array()
        .ok_or_else(|| err(what, "protocols is not a list"))?;
    list.iter()
        .map(|p| protocol_to_v1alpha1(what, p))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn protocol_to_v1alpha1(what: &str, p: &Value) -> Result<Value, TranslateError> {
    if let Some(name) = p.get("destinationNamedPort") {
        return Ok(json!({"namedPort": name}));
    }
    for (key, proto) in [("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")] {
        let Some(body) = p.get(key) else { continue };
        let port = body.get("destinationPort");
        if let Some(number) = port.and_then(|d| d.get("number")) {
            return Ok(json!({"portNumber": {"protocol": proto, "port": number}}));
        }
        if let Some(range) = port.and_then(|d| d.get("range")) {
            return Ok(json!({"portRange": {
                "protocol": proto, "start": range.get("start"), "end": range.get("end")
            }}));
        }
        if port.is_none() {
            // "every port of this protocol" has no v1alpha1 spelling but the full range.
            return Ok(json!({"portRange": {"protocol": proto, "start": 1, "end": 65535}}));
        }
    }
    Err(err(what, format!("cannot render protocol {p}")))
}

/// Renders JSON Patch operations written against a ClusterNetworkPolicy for its v1alpha1 form:
/// `protocols` paths become `ports`, and values are rendered by what the path points at.
pub fn patch_ops_to_v1alpha1(what: &str, ops: &[Value]) -> Result<Vec<Value>, TranslateError> {
    ops.iter()
        .map(|op| {
            let mut op = op.clone();
            let original_path = op.get("path").and_then(Value::as_str).map(str::to_string);
            for key in ["path", "from"] {
                if let Some(path) = op.get(key).and_then(Value::as_str) {
                    let rendered = path_to_v1alpha1(what, path)?;
                    op[key] = Value::String(rendered);
                }
            }
            if let (Some(path), Some(value)) = (original_path, op.get("value").cloned()) {
                op["value"] = value_to_v1alpha1(what, &path, &value)?;
            }
            Ok(op)
        })
        .collect()
}

fn path_to_v1alpha1(what: &str, path: &str) -> Result<String, TranslateError> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.contains(&"tier") {
        return Err(err(
            what,
            format!("patching `{path}` has no v1alpha1 equivalent"),
        ));
    }
    Ok(segments
        .iter()
        .map(|s| if *s == "protocols" { "ports" } else { s })
        .collect::<Vec<_>>()
        .join("/"))
}

/// Renders a value about to be written at `path` (a CNP path).
fn value_to_v1alpha1(what: &str, path: &str, value: &Value) -> Result<Value, TranslateError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_index = |s: &str| s == "-" || s.parse::<usize>().is_ok();
    match segments.as_slice() {
        ["spec", "ingress" | "egress"] => rules_to_v1alpha1(what, value),
        ["spec", "ingress" | "egress", i] if is_index(i) => rule_to_v1alpha1(what, value),
        [.., "protocols"] => protocols_to_v1alpha1(what, value),
        [.., "protocols", i] if is_index(i) => protocol_to_v1alpha1(what, value),
        [.., "action"] => action_to_v1alpha1(what, value),
        _ => Ok(value.clone()),
    }
}

/// What placeholders resolve to in one run.
pub trait Resolve {
    /// Realized name of a model namespace.
    fn namespace(&self, model: &str) -> Option<String>;
    /// IP of a model pod.
    fn pod_ip(&self, model: &str) -> Option<IpAddr>;
    /// InternalIP of the N-th node.
    fn node_ip(&self, index: usize) -> Option<IpAddr>;
    /// Address of the external host.
    fn external_ip(&self) -> Option<IpAddr>;
}

/// A placeholder that has no value in this run.
#[derive(Debug, thiserror::Error)]
#[error("placeholder `{placeholder}` has no value in this run: {reason}")]
pub struct ResolveError {
    /// The placeholder text.
    pub placeholder: String,
    /// Why.
    pub reason: String,
}

/// Replaces every placeholder in every string of `value`.
pub fn resolve(value: &Value, ctx: &dyn Resolve) -> Result<Value, ResolveError> {
    Ok(match value {
        Value::String(s) => Value::String(resolve_str(s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((resolve_str(k, ctx)?, resolve(v, ctx)?)))
                .collect::<Result<_, ResolveError>>()?,
        ),
        other => other.clone(),
    })
}

/// Replaces every placeholder in one string.
pub fn resolve_str(s: &str, ctx: &dyn Resolve) -> Result<String, ResolveError> {
    let found = scan_placeholders(s);
    if found.is_empty() {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (range, parsed) in found {
        out.push_str(&s[last..range.start]);
        let text = &s[range.clone()];
        let fail = |reason: &str| ResolveError {
            placeholder: text.to_string(),
            reason: reason.to_string(),
        };
        let placeholder = parsed.map_err(|e| fail(&e.to_string()))?;
        let value = match &placeholder {
            Placeholder::Namespace(ns) => {
                ctx.namespace(ns).ok_or_else(|| fail("no such namespace"))?
            }
            Placeholder::Ip(pod) => ctx
                .pod_ip(pod)
                .ok_or_else(|| fail("the pod has no IP"))?
                .to_string(),
            Placeholder::Host(pod) => {
                let ip = ctx.pod_ip(pod).ok_or_else(|| fail("the pod has no IP"))?;
                let len = if ip.is_ipv4() { 32 } else { 128 };
                format!("{ip}/{len}")
            }
            Placeholder::Cidr(pod, len) => {
                let ip = ctx.pod_ip(pod).ok_or_else(|| fail("the pod has no IP"))?;
                let net = match ip {
                    IpAddr::V4(_) => ipnet::IpNet::new(ip, *len),
                    IpAddr::V6(_) => ipnet::IpNet::new(ip, len + 96),
                }
                .map_err(|e| fail(&e.to_string()))?;
                net.trunc().to_string()
            }
            Placeholder::NodeIp(i) => ctx
                .node_ip(*i)
                .ok_or_else(|| fail("no such node"))?
                .to_string(),
            Placeholder::ExternalIp => ctx
                .external_ip()
                .ok_or_else(|| fail("this target has no external host"))?
                .to_string(),
        };
        out.push_str(&value);
        last = range.end;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnp(tier: &str) -> Value {
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "egress-tcp"},
            "spec": {
                "tier": tier,
                "priority": 6,
                "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
                "egress": [
                    {"name": "allow", "action": "Accept", "to": [{"namespaces": {}}]},
                    {"name": "deny-80", "action": "Deny", "to": [{"namespaces": {}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                   {"udp": {"destinationPort": {"range": {"start": 1, "end": 9}}}},
                                   {"destinationNamedPort": "web"},
                                   {"sctp": {}}]}
                ]
            }
        })
    }

    #[test]
    fn admin_tier_becomes_an_admin_network_policy() {
        let out = cnp_to_v1alpha1(&cnp("Admin")).unwrap();
        assert_eq!(out["kind"], "AdminNetworkPolicy");
        assert_eq!(out["apiVersion"], "policy.networking.k8s.io/v1alpha1");
        assert_eq!(out["metadata"]["name"], "egress-tcp");
        assert_eq!(out["spec"]["priority"], 6);
        assert!(out["spec"].get("tier").is_none());
        assert_eq!(out["spec"]["egress"][0]["action"], "Allow");
        assert_eq!(
            out["spec"]["egress"][1]["ports"],
            json!([
                {"portNumber": {"protocol": "TCP", "port": 80}},
                {"portRange": {"protocol": "UDP", "start": 1, "end": 9}},
                {"namedPort": "web"},
                {"portRange": {"protocol": "SCTP", "start": 1, "end": 65535}},
            ])
        );
    }

    #[test]
    fn baseline_tier_becomes_the_default_banp() {
        let out = cnp_to_v1alpha1(&cnp("Baseline")).unwrap();
        assert_eq!(out["kind"], "BaselineAdminNetworkPolicy");
        assert_eq!(out["metadata"]["name"], "default");
        assert!(out["spec"].get("priority").is_none());
    }

    #[test]
    fn patches_follow_the_rendering() {
        let ops = vec![
            json!({"op": "move", "from": "/spec/egress/1", "path": "/spec/egress/0"}),
            json!({"op": "replace", "path": "/spec/egress/0/protocols",
                   "value": [{"destinationNamedPort": "web"}]}),
            json!({"op": "add", "path": "/spec/egress/0",
                   "value": {"name": "n", "action": "Accept", "to": [{"networks": ["${host:x/a}"]}]}}),
        ];
        let out = patch_ops_to_v1alpha1("p", &ops).unwrap();
        assert_eq!(out[0]["from"], "/spec/egress/1");
        assert_eq!(out[1]["path"], "/spec/egress/0/ports");
        assert_eq!(out[1]["value"], json!([{"namedPort": "web"}]));
        assert_eq!(out[2]["value"]["action"], "Allow");
        let bad = [json!({"op": "replace", "path": "/spec/tier", "value": "Admin"})];
        assert!(patch_ops_to_v1alpha1("p", &bad).is_err());
    }

    struct Ctx;
    impl Resolve for Ctx {
        fn namespace(&self, model: &str) -> Option<String> {
            Some(format!("{model}-1234"))
        }
        fn pod_ip(&self, model: &str) -> Option<IpAddr> {
            (model == "x/b").then(|| "10.244.1.7".parse().unwrap())
        }
        fn node_ip(&self, _: usize) -> Option<IpAddr> {
            None
        }
        fn external_ip(&self) -> Option<IpAddr> {
            Some("192.0.2.10".parse().unwrap())
        }
    }

    #[test]
    fn placeholders_resolve() {
        let v = json!({"ns": "${ns:y}", "list": ["${host:x/b}", "${cidr:x/b/16}", "ip ${ip:x/b}!"],
                       "ext": "${external-ip}"});
        let out = resolve(&v, &Ctx).unwrap();
        assert_eq!(
            out,
            json!({"ns": "y-1234", "list": ["10.244.1.7/32", "10.244.0.0/16", "ip 10.244.1.7!"],
                   "ext": "192.0.2.10"})
        );
        let err = resolve(&json!("${ip:x/a}"), &Ctx).unwrap_err();
        assert!(err.to_string().contains("`${ip:x/a}`"), "{err}");
        assert!(resolve(&json!("${node-ip:0}"), &Ctx).is_err());
    }
}
