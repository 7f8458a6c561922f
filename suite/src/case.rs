//! Cases: the scenario table as data. Parsing, validation and the embedded table.
//!
//! A case file is a YAML sequence of cases (format: `cases/README.md`). Loading checks everything that
//! can be checked without a cluster — known fields, known features, model names, placeholders,
//! pair syntax, unique ids — and every error names the file, the line and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::world::{Protocol, World, WorldKind};

/// Where a case came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Kubernetes' NetworkPolicy e2e tests.
    Upstream,
    /// network-policy-api conformance tests.
    Npa,
    /// The NetworkPolicy tutorial.
    Tutorial,
    /// A user's own case (`--cases DIR`).
    User,
}

impl Source {
    /// The lower-case name used in trial names.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Npa => "npa",
            Source::Tutorial => "tutorial",
            Source::User => "user",
        }
    }
}

/// A capability a case needs from the target beyond plain TCP NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Feature {
    /// UDP probes.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP connectivity between pods.
    #[serde(rename = "SCTP")]
    Sctp,
    /// Policies that name container ports.
    NamedPort,
    /// network-policy-api `nodes` egress peers.
    EgressNodePeers,
    /// ipBlock / networks peers built from pod IPs.
    #[serde(rename = "CIDR")]
    Cidr,
    /// A host outside the pod network that probes can reach.
    ExternalHost,
}

impl Feature {
    /// Every feature, for error messages.
    pub const ALL: [Feature; 6] = [
        Feature::Udp,
        Feature::Sctp,
        Feature::NamedPort,
        Feature::EgressNodePeers,
        Feature::Cidr,
        Feature::ExternalHost,
    ];

    /// The spelling used in case files.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Udp => "UDP",
            Feature::Sctp => "SCTP",
            Feature::NamedPort => "NamedPort",
            Feature::EgressNodePeers => "EgressNodePeers",
            Feature::Cidr => "CIDR",
            Feature::ExternalHost => "ExternalHost",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A case's display name: one, or one per network-policy-api version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CaseName {
    /// The same name everywhere.
    One(String),
    /// upstream's release-0.1 name and its HEAD name.
    PerVersion {
        /// Name of the AdminNetworkPolicy / BaselineAdminNetworkPolicy rendering.
        v1alpha1: String,
        /// Name of the ClusterNetworkPolicy rendering.
        v1alpha2: String,
    },
}

/// A reference to an object by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Kind (`NetworkPolicy`, `ClusterNetworkPolicy`, …).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Model namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A JSON Patch applied to an object the case created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchStep {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Model namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// RFC 6902 operations.
    pub ops: Vec<Value>,
}

/// Label changes on a namespace or a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    /// Model namespace (for `label_namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Model pod (for `label_pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Labels to add or change.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A side of `expect_peer`: an empty field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSelector {
    /// Model namespace.
    #[serde(default)]
    pub ns: Option<String>,
    /// Pod name within the namespace.
    #[serde(default)]
    pub pod: Option<String>,
}

/// One pair with an expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairExpectation {
    /// Source model pod.
    pub from: String,
    /// Destination model pod.
    pub to: String,
    /// Whether the connection must succeed.
    pub allowed: bool,
}

/// A pod-wide expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodExpectation {
    /// Model pod.
    pub pod: String,
    /// Whether connections must succeed.
    pub allowed: bool,
}

/// `expect_peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerExpectation {
    /// Sources.
    pub from: PeerSelector,
    /// Destinations.
    pub to: PeerSelector,
    /// Whether connections must succeed.
    pub allowed: bool,
}

/// One entry of an expectation list, in upstream's vocabulary. Later entries override earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectOp {
    /// `Expect(from, to, v)`.
    Expect(PairExpectation),
    /// `ExpectAllIngress(pod, v)`.
    ExpectAllIngress(PodExpectation),
    /// `ExpectAllEgress(pod, v)`.
    ExpectAllEgress(PodExpectation),
    /// `ExpectPeer(from, to, v)`.
    ExpectPeer(PeerExpectation),
    /// These pairs are blocked (`"y/a -> x/a"`).
    Blocked(Vec<String>),
    /// These pairs are allowed.
    Allowed(Vec<String>),
}

/// A probe step as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStep {
    /// The subtest's name, where upstream has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matrix probe: the port (number or container port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// Matrix probe: the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Matrix probe: expectations, starting from "all allowed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<ExpectOp>>,
    /// Pair probe: `"<from> -> <to> <PROTO>/<port> allowed|blocked"` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<Vec<String>>,
}

/// A port by number or by container port name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// One step of a case as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Create objects.
    Create(Vec<Value>),
    /// Replace objects.
    Update(Vec<Value>),
    /// JSON-patch one object.
    Patch(PatchStep),
    /// Delete objects.
    Delete(Vec<ObjectRef>),
    /// Delete every NetworkPolicy the case created.
    DeleteAllPolicies(bool),
    /// Change namespace labels.
    LabelNamespace(LabelChange),
    /// Change pod labels.
    LabelPod(LabelChange),
    /// Delete and create pods again.
    RecreatePods(Vec<String>),
    /// Delete pods for good (a fault a case injects: probes of them must then error).
    DeletePods(Vec<String>),
    /// Probe and compare.
    Probe(ProbeStep),
}

impl Step {
    /// The step's key in case files.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Create(_) => "create",
            Step::Update(_) => "update",
            Step::Patch(_) => "patch",
            Step::Delete(_) => "delete",
            Step::DeleteAllPolicies(_) => "delete_all_policies",
            Step::LabelNamespace(_) => "label_namespace",
            Step::LabelPod(_) => "label_pod",
            Step::RecreatePods(_) => "recreate_pods",
            Step::DeletePods(_) => "delete_pods",
            Step::Probe(_) => "probe",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    id: String,
    name: CaseName,
    source: Source,
    area: String,
    #[serde(default)]
    features: Vec<Feature>,
    world: WorldKind,
    #[serde(default)]
    description: Option<String>,
    steps: Vec<Spanned<Step>>,
}

/// A validated case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    /// Stable unique id.
    pub id: String,
    /// upstream's name(s).
    pub name: CaseName,
    /// Where it came from.
    pub source: Source,
    /// The middle part of the trial name.
    pub area: String,
    /// Declared features.
    pub features: BTreeSet<Feature>,
    /// The world it runs in.
    pub world: WorldKind,
    /// Free text.
    pub description: Option<String>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Where it was loaded from (`upstream/ingress.yaml:12`).
    pub origin: String,
}

/// A problem found while loading cases.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not valid YAML or does not fit the case format.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What the YAML parser said (with line and column).
        message: String,
    },
    /// A case is well-formed YAML but not a valid case.
    #[error("{file}:{line}: case `{id}`: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The line of the case or step.
        line: u64,
        /// The case id.
        id: String,
        /// The field at fault (`steps[3].probe.pairs[1]`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two cases share an id.
    #[error("{file}:{line}: duplicate case id `{id}` (first defined at {first})")]
    DuplicateId {
        /// The file of the second definition.
        file: String,
        /// Its line.
        line: u64,
        /// The id.
        id: String,
        /// Where the first one is.
        first: String,
    },
    /// A case directory could not be read.
    #[error("reading case directory {path}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The table embedded in the binary: `(path relative to cases/, contents)`.
pub fn embedded_files() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/embedded_cases.rs"))
}

/// Loads and validates the embedded table.
pub fn load_embedded() -> Result<Vec<Case>, LoadError> {
    load_files(
        embedded_files()
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string())),
    )
}

/// Reads every `*.yaml` / `*.yml` file below `dir` (sorted) as `(display path, contents)`.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            Ok((path.display().to_string(), text))
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses and validates files; ids must be unique across all of them.
pub fn load_files(
    files: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Case>, LoadError> {
    let mut cases = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in files {
        let docs: Vec<Spanned<CaseDoc>> =
            serde_saphyr::from_str(&text).map_err(|e| LoadError::Parse {
                file: file.clone(),
                message: e.to_string(),
            })?;
        for doc in docs {
            let line = doc.referenced.line();
            let case = validate(&file, line, doc.value)?;
            if let Some(first) = seen.get(&case.id) {
                return Err(LoadError::DuplicateId {
                    file,
                    line,
                    id: case.id,
                    first: first.clone(),
                });
            }
            seen.insert(case.id.clone(), case.origin.clone());
            cases.push(case);
        }
    }
    Ok(cases)
}

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

    fn pair(&self, field: &str, text: &str) -> Result<(), LoadError> {
        let (from, to) = parse_pair(text)
            .ok_or_else(|| self.err(field, format!("`{text}` is not a pair like `x/a -> x/b`")))?;
        self.pod(field, from)?;
        self.pod(field, to)
    }

    fn placeholders(&self, field: &str, value: &Value) -> Result<(), LoadError> {
        match value {
            Value::String(s) => {
                for p in find_placeholders(s) {
                    let p = p.map_err(|m| self.err(field, m))?;
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
                for (i, line) in pairs.iter().enumerate() {
                    let f = format!("{field}.pairs[{i}]");
                    let probe = parse_pair_probe(line).map_err(|m| self.err(&f, m))?;
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

fn validate(file: &str, line: u64, doc: CaseDoc) -> Result<Case, LoadError> {
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

/// Splits `"x/a -> x/b"`.
pub fn parse_pair(text: &str) -> Option<(&str, &str)> {
    let (from, to) = text.split_once("->")?;
    let (from, to) = (from.trim(), to.trim());
    (!from.is_empty() && !to.is_empty() && !to.contains(' ')).then_some((from, to))
}

/// One line of a pair probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairProbe {
    /// Source model pod.
    pub from: String,
    /// Destination model pod.
    pub to: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
    /// Whether it must connect.
    pub allowed: bool,
}

/// Parses `"gryffindor/0 -> ravenclaw/0 TCP/80 allowed"`.
pub fn parse_pair_probe(line: &str) -> Result<PairProbe, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [from, "->", to, proto_port, verdict] = words.as_slice() else {
        return Err(format!(
            "`{line}` is not `<from> -> <to> <PROTO>/<port> allowed|blocked`"
        ));
    };
    let (proto, port) = proto_port
        .split_once('/')
        .ok_or_else(|| format!("`{proto_port}` is not `<PROTO>/<port>`"))?;
    let protocol: Protocol = proto
        .parse()
        .map_err(|_| format!("unknown protocol `{proto}`"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a port number"))?;
    let allowed = match *verdict {
        "allowed" => true,
        "blocked" => false,
        other => return Err(format!("`{other}` is neither `allowed` nor `blocked`")),
    };
    Ok(PairProbe {
        from: from.to_string(),
        to: to.to_string(),
        protocol,
        port,
        allowed,
    })
}

/// A value known only at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `${ns:x}`.
    Namespace(String),
    /// `${ip:x/b}`.
    Ip(String),
    /// `${host:x/b}`.
    Host(String),
    /// `${cidr:x/b/16}`.
    Cidr(String, u8),
    /// `${node-ip:0}`.
    NodeIp(usize),
    /// `${external-ip}`.
    ExternalIp,
}

/// Finds every `${…}` in a string, parsed, with its byte range.
pub fn find_placeholders(s: &str) -> Vec<Result<Placeholder, String>> {
    scan_placeholders(s).into_iter().map(|(_, p)| p).collect()
}

/// Like [`find_placeholders`] with the byte range of each.
pub fn scan_placeholders(s: &str) -> Vec<(std::ops::Range<usize>, Result<Placeholder, String>)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(start) = s[rest..].find("${").map(|i| i + rest) {
        let Some(end) = s[start..].find('}').map(|i| i + start) else {
            out.push((
                start..s.len(),
                Err(format!("unterminated placeholder in `{s}`")),
            ));
            break;
        };
        out.push((start..end + 1, parse_placeholder(&s[start + 2..end])));
        rest = end + 1;
    }
    out
}

fn parse_placeholder(body: &str) -> Result<Placeholder, String> {
    let (kind, arg) = body.split_once(':').unwrap_or((body, ""));
    let need_arg = |what: &str| {
        if arg.is_empty() {
            Err(format!("`${{{body}}}` needs {what}"))
        } else {
            Ok(arg.to_string())
        }
    };
    match kind {
        "ns" => Ok(Placeholder::Namespace(need_arg("a model namespace")?)),
        "ip" => Ok(Placeholder::Ip(need_arg("a model pod")?)),
        "host" => Ok(Placeholder::Host(need_arg("a model pod")?)),
        "cidr" => {
            let arg = need_arg("<ns>/<pod>/<prefix length>")?;
            let (pod, len) = arg
                .rsplit_once('/')
                .ok_or_else(|| format!("`${{{body}}}` is not `${{cidr:<ns>/<pod>/<len>}}`"))?;
            let len = len
                .parse::<u8>()
                .map_err(|_| format!("`{len}` is not a prefix length"))?;
            Ok(Placeholder::Cidr(pod.to_string(), len))
        }
        "node-ip" => need_arg("a node index")?
            .parse()
            .map(Placeholder::NodeIp)
            .map_err(|_| format!("`{arg}` is not a node index")),
        "external-ip" if arg.is_empty() => Ok(Placeholder::ExternalIp),
        _ => Err(format!(
            "unknown placeholder `${{{body}}}` (known: ns, ip, host, cidr, node-ip, external-ip)"
        )),
    }
}

/// A one-step upstream case (default deny ingress into x) shared by unit tests.
#[cfg(test)]
pub(crate) const SAMPLE_CASE: &str = r#"
- id: deny
  name: "should support a 'default-deny-ingress' policy"
  source: upstream
  area: ingress
  world: upstream
  steps:
    - create:
        - apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: deny-all, namespace: x}
          spec: {podSelector: {}, policyTypes: [Ingress], ingress: []}
    - probe:
        port: 80
        protocol: TCP
        expect:
          - expect_peer: {from: {}, to: {ns: x}, allowed: false}
"#;

#[cfg(test)]
mod tests {
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
        let found =
            find_placeholders("${ns:y} ${cidr:x/b/24} ${host:x/a} ${node-ip:1} ${external-ip}");
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
        assert!(find_placeholders("${cidr:x/b}")[0].is_err());
        assert!(find_placeholders("${ns:y")[0].is_err());
    }

    #[test]
    fn pair_probe_lines_parse() {
        let p = parse_pair_probe("gryffindor/0 -> ravenclaw/1 udp/5353 blocked").unwrap();
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
        assert!(parse_pair_probe("a/0 -> b/0 TCP/80 maybe").is_err());
        assert!(parse_pair_probe("a/0 -> b/0 TCP/0 allowed").is_err());
        assert!(parse_pair_probe("a/0 b/0 TCP/80 allowed").is_err());
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
}
