//! Label selectors compiled once, matched many times.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod, namespace or node.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Requirement {
    /// `key == value` (from `matchLabels`, or `In` with one value).
    Equals(String, String),
    /// `key in (values)`.
    In(String, Vec<String>),
    /// `key notin (values)`; true when the key is absent.
    NotIn(String, Vec<String>),
    /// The key is present.
    Exists(String),
    /// The key is absent.
    DoesNotExist(String),
}

/// A compiled `LabelSelector`. The empty selector selects everything; a selector that failed to
/// compile (unknown operator, `In` without values) selects nothing, so a mistake never widens a
/// policy's reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    invalid: bool,
}

impl Selector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that selects nothing.
    pub fn nothing() -> Self {
        Selector {
            requirements: Vec::new(),
            invalid: true,
        }
    }

    /// Compiles a Kubernetes `LabelSelector`.
    pub fn compile(selector: &LabelSelector) -> Self {
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" if values.len() == 1 => Requirement::Equals(key, values[0].clone()),
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                _ => return Self::nothing(),
            };
            requirements.push(req);
        }
        Selector {
            requirements,
            invalid: false,
        }
    }

    /// Compiles an optional selector; `None` selects everything (as an absent `podSelector` does).
    pub fn compile_opt(selector: Option<&LabelSelector>) -> Self {
        selector.map(Self::compile).unwrap_or_default()
    }

    /// Whether the selector selects everything.
    pub fn selects_all(&self) -> bool {
        !self.invalid && self.requirements.is_empty()
    }

    /// Whether these labels are selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        if self.invalid {
            return false;
        }
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// A `key=value` pair every selected object must carry, if the selector has one. Indexes use
    /// it to visit only candidates that carry the pair instead of every object.
    pub fn index_key(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    /// The `(key, value)` when the selector is exactly one equality requirement.
    pub fn only_equals(&self) -> Option<(&str, &str)> {
        match (self.invalid, self.requirements.as_slice()) {
            (false, [Requirement::Equals(k, v)]) => Some((k.as_str(), v.as_str())),
            _ => None,
        }
    }

    /// Whether the selector can select anything at all.
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selects_everything_and_bad_operator_nothing() {
        let all = Selector::compile(&LabelSelector::default());
        assert!(all.selects_all() && all.matches(&labels(&[])));
        let bad = Selector::compile(&LabelSelector {
            match_expressions: Some(vec![expr("a", "Near", &["x"])]),
            ..Default::default()
        });
        assert!(!bad.matches(&labels(&[("a", "x")])));
    }

    #[test]
    fn operators() {
        let sel = Selector::compile(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                expr("tier", "In", &["a", "b"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        });
        assert_eq!(sel.index_key(), Some(("app", "web")));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "b"), ("team", "x")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "x")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "x"),
            ("env", "prod")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "x"),
            ("legacy", "1")
        ])));
    }
}
