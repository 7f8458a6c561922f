//! Cross-check of the embedded case table against data taken from the references.
//!
//! The YAML cases state upstream's *expectation calls* (upstream NetworkPolicy e2e) or upstream's *subtests*
//! (network-policy-api conformance); the fixtures in `tests/fixtures/` hold the *results* the references list
//! for them (Appendix A of each report). The table goes through the suite's own loader and planner and is
//! compared with the fixtures through the plan's JSON form, pair by pair; a mismatch names the trial, the
//! step and the pair. The fixtures are never edited to make this pass.
//!
//! Run: `cargo test -p netpol-conformance --test table`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde_json::Value;

const UPSTREAM_FIXTURE: &str = include_str!("fixtures/upstream-classic-denied.txt");
const NPA_FIXTURE: &str = include_str!("fixtures/npa-probes.csv");
const TUTORIAL_FIXTURE: &str = include_str!("fixtures/tutorial-stated.txt");

/// The first host-network port (HNP0) of the npa world; `HNPi` = this + i.
const HOST_NETWORK_PORT_START: u32 = 34345;

/// The model pods of the upstream world, in model order.
const UPSTREAM_PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

// ---------------------------------------------------------------------------------------------------------
// The plan, read through its JSON form.

/// One planned trial.
struct Trial {
    trial: String,
    id: String,
    name: String,
    source: String,
    features: Vec<String>,
    world: String,
    api_version: Option<String>,
    probes: Vec<Probe>,
}

/// One planned probe step (one port and protocol).
struct Probe {
    index: u64,
    name: Option<String>,
    port: u32,
    protocol: String,
    pairs: Vec<Pair>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Pair {
    from: String,
    to: String,
    allowed: bool,
}

fn field<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("plan JSON: {ctx} has no field {key:?}: {v}"))
}

fn string(v: &Value, key: &str, ctx: &str) -> String {
    field(v, key, ctx)
        .as_str()
        .unwrap_or_else(|| panic!("plan JSON: {ctx}.{key} is not a string: {v}"))
        .to_owned()
}

fn opt_string(v: &Value, key: &str, ctx: &str) -> Option<String> {
    match v.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("plan JSON: {ctx}.{key} is neither null nor a string: {other}"),
    }
}

fn array<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a [Value] {
    field(v, key, ctx)
        .as_array()
        .unwrap_or_else(|| panic!("plan JSON: {ctx}.{key} is not an array: {v}"))
}

fn load_plan() -> Vec<Trial> {
    let cases = netpol_conformance::case::load_embedded()
        .unwrap_or_else(|e| panic!("the embedded case table does not load: {e}"));
    let plan = netpol_conformance::plan::plan_json(&cases);
    if let Some(error) = plan.get("error") {
        panic!("the embedded case table does not plan: {error}");
    }
    array(&plan, "cases", "plan")
        .iter()
        .map(|c| {
            let trial = string(c, "trial", "case");
            let ctx = trial.as_str();
            let probes = array(c, "steps", ctx)
                .iter()
                .filter(|s| s.get("action").and_then(Value::as_str) == Some("probe"))
                .map(|s| {
                    let index = field(s, "index", ctx)
                        .as_u64()
                        .unwrap_or_else(|| panic!("{ctx}: step index is not a number: {s}"));
                    let port = field(s, "port", ctx)
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or_else(|| {
                            panic!("{ctx}: step {index}: port is not a number: {s}")
                        });
                    let pairs = array(s, "pairs", ctx)
                        .iter()
                        .map(|p| Pair {
                            from: string(p, "from", ctx),
                            to: string(p, "to", ctx),
                            allowed: match string(p, "expect", ctx).as_str() {
                                "allowed" => true,
                                "blocked" => false,
                                other => panic!("{ctx}: step {index}: expect is {other:?}"),
                            },
                        })
                        .collect();
                    Probe {
                        index,
                        name: opt_string(s, "name", ctx),
                        port,
                        protocol: string(s, "protocol", ctx),
                        pairs,
                    }
                })
                .collect();
            Trial {
                id: string(c, "id", ctx),
                name: string(c, "name", ctx),
                source: string(c, "source", ctx),
                features: array(c, "features", ctx)
                    .iter()
                    .map(|f| {
                        f.as_str()
                            .unwrap_or_else(|| panic!("{ctx}: feature {f}"))
                            .to_owned()
                    })
                    .collect(),
                world: string(c, "world", ctx),
                api_version: opt_string(c, "api_version", ctx),
                probes,
                trial,
            }
        })
        .collect()
}

fn by_source<'a>(plan: &'a [Trial], source: &str) -> Vec<&'a Trial> {
    plan.iter().filter(|t| t.source == source).collect()
}

/// Panics with every collected mismatch, one per line.
fn assert_no_mismatches(what: &str, mismatches: &[String]) {
    if !mismatches.is_empty() {
        let mut msg = format!(
            "{} mismatches between the {what} and its fixture:\n",
            mismatches.len()
        );
        for m in mismatches {
            let _ = writeln!(msg, "  {m}");
        }
        panic!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The whole table.

#[test]
fn trial_names_are_unique_and_follow_the_scheme() {
    let plan = load_plan();
    let mut seen = BTreeSet::new();
    for t in &plan {
        assert!(
            seen.insert(t.trial.clone()),
            "trial {} appears twice",
            t.trial
        );
        assert!(
            t.trial.starts_with(&format!("{}::", t.source))
                && t.trial.contains(&format!("::{}", t.id)),
            "trial name {} does not carry source {} and id {}",
            t.trial,
            t.source,
            t.id
        );
    }
}

#[test]
fn no_probe_lists_a_self_pair_or_an_empty_pair_list() {
    let plan = load_plan();
    for t in &plan {
        for p in &t.probes {
            assert!(
                !p.pairs.is_empty(),
                "{} step {}: probe with no pairs",
                t.trial,
                p.index
            );
            for pair in &p.pairs {
                assert_ne!(
                    pair.from, pair.to,
                    "{} step {}: self pair {}",
                    t.trial, p.index, pair.from
                );
            }
        }
    }
}

#[test]
fn probes_of_the_external_host_need_the_feature() {
    let plan = load_plan();
    for t in &plan {
        let names_external = t
            .probes
            .iter()
            .flat_map(|p| &p.pairs)
            .any(|pair| pair.from.starts_with("external/") || pair.to.starts_with("external/"));
        assert_eq!(
            names_external,
            t.features.iter().any(|f| f == "ExternalHost"),
            "{}: probing external/* and declaring ExternalHost must go together",
            t.trial
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Upstream NetworkPolicy e2e against Appendix A's classic 9-pod grid.

/// One line of `upstream-classic-denied.txt`: one validated matrix.
struct DeniedStep {
    line: usize,
    test: String,
    context: String,
    name: String,
    step: String,
    denied: BTreeSet<(String, String)>,
}

impl DeniedStep {
    /// `TCP/80` from a label such as `TCP/80 (after allow-81 policy)`.
    fn signature(&self) -> &str {
        self.step.split(' ').next().unwrap_or_default()
    }
}

fn upstream_fixture() -> Vec<DeniedStep> {
    let mut out = Vec::new();
    for (i, line) in UPSTREAM_FIXTURE.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            f.len(),
            6,
            "upstream fixture line {}: expected 6 fields",
            i + 1
        );
        let denied: BTreeSet<(String, String)> = if f[5] == "-" {
            BTreeSet::new()
        } else {
            f[5].split(',')
                .map(|p| {
                    let (from, to) = p.split_once("->").unwrap_or_else(|| {
                        panic!("upstream fixture line {}: bad pair {p:?}", i + 1)
                    });
                    (from.to_owned(), to.to_owned())
                })
                .collect()
        };
        let count: usize = f[4].parse().expect("count");
        assert_eq!(
            denied.len(),
            count,
            "upstream fixture line {}: count column disagrees with the list",
            i + 1
        );
        out.push(DeniedStep {
            line: i + 1,
            test: f[0].to_owned(),
            context: f[1].to_owned(),
            name: f[2].to_owned(),
            step: f[3].to_owned(),
            denied,
        });
    }
    out
}

/// The fixture's matrices grouped by test label, in file order.
fn upstream_fixture_tests(fixture: &[DeniedStep]) -> Vec<(String, Vec<&DeniedStep>)> {
    let mut tests: Vec<(String, Vec<&DeniedStep>)> = Vec::new();
    for s in fixture {
        match tests.last_mut() {
            Some((label, steps)) if *label == s.test => steps.push(s),
            _ => tests.push((s.test.clone(), vec![s])),
        }
    }
    tests
}

fn signature(probes: &[Probe]) -> Vec<String> {
    probes
        .iter()
        .map(|p| format!("{}/{}", p.protocol, p.port))
        .collect()
}

#[test]
fn upstream_counts() {
    let plan = load_plan();
    let upstream = by_source(&plan, "upstream");
    assert_eq!(upstream.len(), 48, "upstream tests");
    let only = |proto: &str| {
        upstream
            .iter()
            .filter(|t| !t.probes.is_empty() && t.probes.iter().all(|p| p.protocol == proto))
            .count()
    };
    assert_eq!(only("UDP"), 3, "UDP-context tests (every matrix UDP)");
    assert_eq!(only("SCTP"), 3, "SCTP-context tests (every matrix SCTP)");
    assert_eq!(
        upstream.len() - only("UDP") - only("SCTP"),
        42,
        "TCP-context tests"
    );
    let matrices: usize = upstream.iter().map(|t| t.probes.len()).sum();
    let fixture = upstream_fixture();
    assert_eq!(
        fixture.len(),
        65,
        "the reference counts 65 validation steps in 48 tests"
    );
    assert_eq!(matrices, fixture.len(), "planned upstream matrices");
    for t in &upstream {
        assert_eq!(t.world, "upstream", "{}: world", t.trial);
        assert_eq!(t.api_version, None, "{}: api_version", t.trial);
        let mut indexes = BTreeSet::new();
        for p in &t.probes {
            assert!(
                indexes.insert(p.index),
                "{}: matrix step {} was split",
                t.trial,
                p.index
            );
        }
    }
}

#[test]
fn upstream_matches_the_classic_grid() {
    let plan = load_plan();
    let upstream = by_source(&plan, "upstream");
    let fixture = upstream_fixture();
    let all_pairs: BTreeSet<(String, String)> = UPSTREAM_PODS
        .iter()
        .flat_map(|f| {
            UPSTREAM_PODS
                .iter()
                .map(move |t| (f.to_string(), t.to_string()))
        })
        .filter(|(f, t)| f != t)
        .collect();
    let mut mismatches = Vec::new();
    let mut matched: HashMap<String, &str> = HashMap::new();
    for trial in &upstream {
        let sig = signature(&trial.probes);
        let candidates: Vec<(String, Vec<&DeniedStep>)> = upstream_fixture_tests(&fixture)
            .into_iter()
            .filter(|(_, steps)| steps[0].name == trial.name)
            .collect();
        let Some((label, steps)) = candidates.iter().find(|(_, steps)| {
            steps
                .iter()
                .map(|s| s.signature().to_owned())
                .collect::<Vec<_>>()
                == sig
        }) else {
            let known: Vec<String> = candidates
                .iter()
                .map(|(l, s)| {
                    format!(
                        "{l}: {:?}",
                        s.iter().map(|s| s.signature()).collect::<Vec<_>>()
                    )
                })
                .collect();
            mismatches.push(format!(
                "{}: no fixture test named {:?} with matrices {sig:?} (fixture has {known:?})",
                trial.trial, trial.name
            ));
            continue;
        };
        if let Some(other) = matched.insert(label.clone(), &trial.trial) {
            mismatches.push(format!(
                "fixture test {label} matches both {other} and {}",
                trial.trial
            ));
        }
        // The Ginkgo context decides the protocol features.
        let context = steps[0].context.as_str();
        let has = |f: &str| trial.features.iter().any(|x| x == f);
        let probes_udp = trial.probes.iter().any(|p| p.protocol == "UDP");
        let feature_ok = match context {
            "udp" => has("UDP") && !has("SCTP"),
            "sctp" => has("SCTP") && !has("UDP"),
            _ => !has("SCTP") && has("UDP") == probes_udp,
        };
        if !feature_ok {
            mismatches.push(format!(
                "{}: features {:?} do not fit context {context}",
                trial.trial, trial.features
            ));
        }
        for (probe, step) in trial.probes.iter().zip(steps) {
            let at = format!(
                "{} step {} ({}, fixture line {})",
                trial.trial, probe.index, step.step, step.line
            );
            let planned: BTreeSet<(String, String)> = probe
                .pairs
                .iter()
                .map(|p| (p.from.clone(), p.to.clone()))
                .collect();
            if planned != all_pairs || planned.len() != probe.pairs.len() {
                mismatches.push(format!(
                    "{at}: the matrix does not list the 72 non-self pairs exactly once"
                ));
            }
            for pair in &probe.pairs {
                let key = (pair.from.clone(), pair.to.clone());
                let want_allowed = !step.denied.contains(&key);
                if pair.allowed != want_allowed {
                    mismatches.push(format!(
                        "{at}: {} -> {} planned {}, fixture {}",
                        pair.from,
                        pair.to,
                        verdict(pair.allowed),
                        verdict(want_allowed)
                    ));
                }
            }
        }
    }
    for (label, steps) in upstream_fixture_tests(&fixture) {
        if !matched.contains_key(&label) {
            mismatches.push(format!(
                "fixture test {label} ({:?}) has no case",
                steps[0].name
            ));
        }
    }
    assert_no_mismatches("upstream table", &mismatches);
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "blocked" }
}

// ---------------------------------------------------------------------------------------------------------
// network-policy-api conformance against Appendix A's probe table.

/// One row of `npa-probes.csv`.
struct NpaRow {
    line: usize,
    cnp_test: String,
    anp_banp_test: String,
    subtest: u32,
    from: String,
    to: String,
    protocol: String,
    port: u32,
    allowed: bool,
}

/// `G0` → `gryffindor/0`: the npa world's model pod.
fn npa_pod(abbrev: &str, line: usize) -> String {
    let (house, ordinal) = abbrev.split_at(1);
    let house = match house {
        "G" => "gryffindor",
        "S" => "slytherin",
        "H" => "hufflepuff",
        "R" => "ravenclaw",
        "F" => "forbidden-forrest",
        other => panic!("npa fixture line {line}: unknown house {other:?}"),
    };
    format!("{house}/{ordinal}")
}

fn npa_fixture() -> Vec<NpaRow> {
    let mut lines = NPA_FIXTURE.lines().enumerate();
    let (_, header) = lines.next().expect("npa fixture header");
    assert_eq!(
        header,
        "cnp_test,anp_banp_test,subtest,step,client,server,proto,port,expect_connect,head_only"
    );
    lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = i + 1;
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 10, "npa fixture line {line}: expected 10 fields");
            let port = match f[7].strip_prefix("HNP") {
                Some(i) => HOST_NETWORK_PORT_START + i.parse::<u32>().expect("HNP index"),
                None => f[7]
                    .parse()
                    .unwrap_or_else(|_| panic!("npa fixture line {line}: port {:?}", f[7])),
            };
            NpaRow {
                line,
                cnp_test: f[0].to_owned(),
                anp_banp_test: f[1].to_owned(),
                subtest: f[2].parse().expect("subtest"),
                from: npa_pod(f[4], line),
                to: npa_pod(f[5], line),
                protocol: f[6].to_owned(),
                port,
                allowed: match f[8] {
                    "true" => true,
                    "false" => false,
                    other => panic!("npa fixture line {line}: expect_connect {other:?}"),
                },
            }
        })
        .collect()
}

#[test]
fn npa_counts() {
    let plan = load_plan();
    let npa = by_source(&plan, "npa");
    assert_eq!(npa.len(), 48, "npa trials (24 scenarios × 2 API versions)");
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &npa {
        assert_eq!(t.world, "npa", "{}: world", t.trial);
        let v = t
            .api_version
            .as_deref()
            .unwrap_or_else(|| panic!("{}: npa trial without api_version", t.trial));
        assert!(
            t.trial.ends_with(&format!("::{v}")),
            "{}: trial name does not end in ::{v}",
            t.trial
        );
        versions.entry(t.id.as_str()).or_default().push(v);
    }
    assert_eq!(versions.len(), 24, "npa scenarios");
    for (id, vs) in &versions {
        let mut vs = vs.clone();
        vs.sort_unstable();
        assert_eq!(vs, ["v1alpha1", "v1alpha2"], "{id}: API versions");
    }
    let fixture = npa_fixture();
    assert_eq!(fixture.len(), 301, "npa fixture rows");
    for version in ["v1alpha1", "v1alpha2"] {
        let probes: usize = npa
            .iter()
            .filter(|t| t.api_version.as_deref() == Some(version))
            .flat_map(|t| &t.probes)
            .map(|p| p.pairs.len())
            .sum();
        assert_eq!(
            probes, 301,
            "{version}: planned npa probes (incl. the namespace-relabel probes)"
        );
    }
}

/// Appendix A's probes of one test, by subtest in order.
fn npa_subtests<'a>(fixture: &'a [NpaRow], trial: &Trial) -> Vec<Vec<&'a NpaRow>> {
    let mut subtests: Vec<Vec<&NpaRow>> = Vec::new();
    let ours = |r: &NpaRow| match trial.api_version.as_deref() {
        Some("v1alpha1") => r.anp_banp_test == trial.name,
        _ => r.cnp_test == trial.name,
    };
    for r in fixture.iter().filter(|r| ours(r)) {
        match subtests.last_mut() {
            Some(rows) if rows[0].subtest == r.subtest => rows.push(r),
            _ => subtests.push(vec![r]),
        }
    }
    subtests
}

#[test]
fn npa_matches_the_probe_table() {
    let plan = load_plan();
    let fixture = npa_fixture();
    let mut mismatches = Vec::new();
    let mut covered = BTreeSet::new();
    for trial in by_source(&plan, "npa") {
        let subtests = npa_subtests(&fixture, trial);
        if subtests.is_empty() {
            mismatches.push(format!(
                "{}: no fixture rows for name {:?}",
                trial.trial, trial.name
            ));
            continue;
        }
        // YAML probe steps (same index) → subtests (consecutive steps with the same name).
        let mut yaml_steps: Vec<Vec<&Probe>> = Vec::new();
        for p in &trial.probes {
            match yaml_steps.last_mut() {
                Some(group) if group[0].index == p.index => group.push(p),
                _ => yaml_steps.push(vec![p]),
            }
        }
        let mut planned_subtests: Vec<Vec<Vec<&Probe>>> = Vec::new();
        for step in yaml_steps {
            if step[0].name.is_none() {
                mismatches.push(format!(
                    "{} step {}: probe step without a subtest name",
                    trial.trial, step[0].index
                ));
            }
            match planned_subtests.last_mut() {
                Some(sub) if sub[0][0].name == step[0].name => sub.push(step),
                _ => planned_subtests.push(vec![step]),
            }
        }
        if planned_subtests.len() != subtests.len() {
            mismatches.push(format!(
                "{}: {} named probe groups planned, fixture has {} subtests",
                trial.trial,
                planned_subtests.len(),
                subtests.len()
            ));
        }
        for (n, (planned, rows)) in planned_subtests.iter().zip(&subtests).enumerate() {
            let sub = format!(
                "{} subtest {} ({:?})",
                trial.trial,
                n + 1,
                planned[0][0].name.as_deref().unwrap_or("-")
            );
            let planned_len: usize = planned.iter().flatten().map(|p| p.pairs.len()).sum();
            if planned_len != rows.len() {
                mismatches.push(format!(
                    "{sub}: {planned_len} probes planned, fixture has {}",
                    rows.len()
                ));
                continue;
            }
            // Cut the subtest's rows into one segment per YAML probe step, then split each segment the way the
            // planner does: one probe per (protocol, port) in order of first appearance.
            let mut rest: &[&NpaRow] = rows;
            for step in planned {
                let len: usize = step.iter().map(|p| p.pairs.len()).sum();
                let (segment, tail) = rest.split_at(len);
                rest = tail;
                let mut groups: Vec<((&str, u32), Vec<&NpaRow>)> = Vec::new();
                for r in segment {
                    let key = (r.protocol.as_str(), r.port);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, g)) => g.push(r),
                        None => groups.push((key, vec![r])),
                    }
                }
                if groups.len() != step.len() {
                    mismatches.push(format!(
                        "{sub} step {}: {} planned probes, fixture rows need {} (one per protocol and port)",
                        step[0].index,
                        step.len(),
                        groups.len()
                    ));
                    continue;
                }
                for (probe, ((proto, port), rows)) in step.iter().zip(&groups) {
                    let at = format!(
                        "{sub} step {} {}/{}",
                        probe.index, probe.protocol, probe.port
                    );
                    if probe.protocol != *proto || probe.port != *port {
                        mismatches.push(format!("{at}: fixture has {proto}/{port} here"));
                        continue;
                    }
                    // The planner may order the pairs of one group its own way (e.g. by world order);
                    // within a group each (from, to) occurs once, so compare by pair.
                    let mut planned: BTreeMap<(&str, &str), bool> = BTreeMap::new();
                    for pair in &probe.pairs {
                        if planned
                            .insert((&pair.from, &pair.to), pair.allowed)
                            .is_some()
                        {
                            mismatches
                                .push(format!("{at}: {} -> {} planned twice", pair.from, pair.to));
                        }
                    }
                    for row in rows {
                        let Some(allowed) = planned.remove(&(row.from.as_str(), row.to.as_str()))
                        else {
                            mismatches.push(format!(
                                "{at}: {} -> {} (fixture line {}) is not planned here",
                                row.from, row.to, row.line
                            ));
                            continue;
                        };
                        covered.insert((trial.api_version.clone(), row.line));
                        if allowed != row.allowed {
                            mismatches.push(format!(
                                "{at}: {} -> {} planned {}, fixture line {} {}",
                                row.from,
                                row.to,
                                verdict(allowed),
                                row.line,
                                verdict(row.allowed)
                            ));
                        }
                    }
                    for (from, to) in planned.keys() {
                        mismatches.push(format!(
                            "{at}: {from} -> {to} is planned but not in the fixture"
                        ));
                    }
                }
            }
        }
    }
    for version in ["v1alpha1", "v1alpha2"] {
        for r in &fixture {
            if !covered.contains(&(Some(version.to_owned()), r.line)) {
                mismatches.push(format!(
                    "{version}: fixture line {} ({} subtest {}) is not planned",
                    r.line,
                    if version == "v1alpha1" {
                        &r.anp_banp_test
                    } else {
                        &r.cnp_test
                    },
                    r.subtest
                ));
            }
        }
    }
    assert_no_mismatches("npa table", &mismatches);
}

// ---------------------------------------------------------------------------------------------------------
// The tutorial.

#[test]
fn tutorial_says_what_the_tutorial_says() {
    let plan = load_plan();
    let tutorial = by_source(&plan, "tutorial");
    assert_eq!(tutorial.len(), 1, "tutorial cases");
    let t = tutorial[0];
    assert_eq!(t.world, "tutorial");
    assert_eq!(t.api_version, None);
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (i, line) in TUTORIAL_FIXTURE.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            f.len(),
            3,
            "tutorial fixture line {}: expected 3 fields",
            i + 1
        );
        let (pair, target) = f[1].rsplit_once(' ').expect("pair and PROTO/port");
        let (from, to) = pair.split_once(" -> ").expect("from -> to");
        let (protocol, port) = target.split_once('/').expect("PROTO/port");
        let port: u32 = port.parse().expect("port");
        let want = f[2] == "allowed";
        let prefix = format!("step {}:", f[0]);
        let found: Vec<bool> = t
            .probes
            .iter()
            .filter(|p| p.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
            .filter(|p| p.protocol == protocol && p.port == port)
            .flat_map(|p| &p.pairs)
            .filter(|p| p.from == from && p.to == to)
            .map(|p| p.allowed)
            .collect();
        checked += 1;
        match found.as_slice() {
            [allowed] if *allowed == want => {}
            [allowed] => mismatches.push(format!(
                "{} {prefix} {from} -> {to} {protocol}/{port}: planned {}, tutorial says {}",
                t.trial,
                verdict(*allowed),
                f[2]
            )),
            other => mismatches.push(format!(
                "{} {prefix} {from} -> {to} {protocol}/{port}: probed {} times, not once",
                t.trial,
                other.len()
            )),
        }
    }
    assert_eq!(checked, 15, "statements in the tutorial fixture");
    assert_no_mismatches("tutorial", &mismatches);
}

// ---------------------------------------------------------------------------------------------------------
// Declared features, read from the case files as written (the plan adds the features its probes imply).

/// Every string key anywhere below `v`, with the value under it.
fn walk<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                out.push((k.as_str(), x));
                walk(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

#[test]
fn declared_features_fit_what_each_case_uses() {
    let mut mismatches = Vec::new();
    let mut seen = 0;
    for (path, text) in netpol_conformance::case::embedded_files() {
        let cases: Vec<Value> = serde_saphyr::from_str(text)
            .unwrap_or_else(|e| panic!("{path}: not YAML the way the loader reads it: {e}"));
        for case in &cases {
            seen += 1;
            let id = case["id"].as_str().unwrap_or("?");
            let source = case["source"].as_str().unwrap_or("?");
            let declared: BTreeSet<&str> = case["features"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let steps = case["steps"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut keys = Vec::new();
            steps.iter().for_each(|s| walk(s, &mut keys));
            // Protocols probed: matrix probes name one; pair probes carry `PROTO/port` in each line.
            let mut probed = BTreeSet::new();
            for s in steps.iter().filter_map(|s| s.get("probe")) {
                if let Some(p) = s.get("protocol").and_then(Value::as_str) {
                    probed.insert(p.to_owned());
                }
                for line in s
                    .get("pairs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let proto = line.as_str().and_then(|l| l.split(' ').nth(3));
                    if let Some(proto) = proto.and_then(|p| p.split('/').next()) {
                        probed.insert(proto.to_owned());
                    }
                }
            }
            let only = |p: &str| probed.len() == 1 && probed.contains(p);
            let named_port = keys.iter().any(|(k, v)| {
                *k == "destinationNamedPort" || (*k == "port" && v.is_string() && source != "npa")
            });
            let mut want: BTreeSet<&str> = BTreeSet::new();
            match source {
                "upstream" => {
                    if probed.contains("UDP") {
                        want.insert("UDP");
                    }
                    if only("SCTP") {
                        want.insert("SCTP");
                    }
                    if named_port {
                        want.insert("NamedPort");
                    }
                    if keys.iter().any(|(k, _)| *k == "ipBlock") {
                        want.insert("CIDR");
                    }
                }
                "npa" => {
                    if only("SCTP") {
                        want.insert("SCTP");
                    }
                    if named_port {
                        want.insert("NamedPort");
                    }
                    if keys.iter().any(|(k, _)| *k == "nodes") {
                        want.insert("EgressNodePeers");
                    }
                }
                _ => {
                    let external = steps
                        .iter()
                        .filter_map(|s| s.get("probe")?.get("pairs")?.as_array())
                        .flatten()
                        .any(|l| l.as_str().is_some_and(|l| l.contains("external/")));
                    if external {
                        want.insert("ExternalHost");
                    }
                }
            }
            if declared != want {
                mismatches.push(format!(
                    "{path}: {id}: declares {declared:?}, uses {want:?}"
                ));
            }
        }
    }
    assert_eq!(seen, 48 + 24 + 1, "cases in the embedded files");
    assert_no_mismatches("declared features", &mismatches);
}
