//! Cases: the scenario table as data. Parsing, validation and the embedded table.
//!
//! A case file is a YAML sequence of cases (format: `cases/README.md`). Loading checks everything that
//! can be checked without a cluster — known fields, known features, model names, placeholders,
//! pair syntax, unique ids — and every error names the file, the line and the field.
//!
//! Here the types of a case as written and as loaded; reading files and the embedded table in
//! `load.rs`, validation in `check.rs`, the syntax of pair lines and placeholders in `pair.rs`.

mod check;
mod load;
mod pair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::world::{Protocol, WorldKind};

pub use check::POLICY_KINDS;
pub use load::{embedded_files, load_embedded, load_files, read_dir};
pub use pair::{
    Pair, PairError, PairProbe, Placeholder, PlaceholderError, find_placeholders, scan_placeholders,
};

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
    Blocked(Vec<Pair>),
    /// These pairs are allowed.
    Allowed(Vec<Pair>),
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
    pub pairs: Option<Vec<PairProbe>>,
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
    /// `--cases` names something that is not a directory.
    #[error("--cases {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// `--cases` names a directory without case files.
    #[error("--cases {}: no *.yaml files", .0.display())]
    NoCaseFiles(PathBuf),
    /// A case of a user directory claims to be one of the table's.
    #[error("{origin}: case `{id}` is a user case; its source must be `user`")]
    NotUserSource {
        /// Where it was loaded from.
        origin: String,
        /// The case id.
        id: String,
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
