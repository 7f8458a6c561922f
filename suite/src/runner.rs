//! Runs one plan against a cluster: realize the world, apply each step, probe with retries,
//! compare, and always clean up. Workers only return outcomes; this module alone decides.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{BackendError, Capabilities, Cluster, ProbeJob, RealizedWorld};
use crate::case::ObjectRef;
use crate::features::{self, Selection};
use crate::plan::{Action, Plan, ProbePlan};
use crate::reachability::{Comparison, Observed, Outcome, TruthTables, Verdict};
use crate::render::{self, ResolveError};
use crate::report::{SkippedStep, StepReport, StepResult, TrialOutcome, TrialReport};
use crate::world::Protocol;

/// Every wait the runner makes, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// One probe's connect timeout.
    pub probe_connect: Duration,
    /// How long probes that disagree with their expectation are retried.
    pub probe_settle: Duration,
    /// Pause between retries of disagreeing probes.
    pub probe_retry_interval: Duration,
    /// How long the pre-flight waits for every pair of a trial to connect with no policy.
    pub preflight: Duration,
}

impl Timeouts {
    /// Defaults for a target: the local cluster answers fast; real clusters get upstream's 3 s.
    pub fn for_target(local: bool) -> Timeouts {
        Timeouts {
            probe_connect: if local {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3)
            },
            probe_settle: Duration::from_secs(10),
            probe_retry_interval: Duration::from_millis(500),
            preflight: Duration::from_secs(30),
        }
    }
}

/// Where probes of upstream worlds go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeTarget {
    /// The destination's Service ClusterIP where it has one (upstream's default).
    Service,
    /// The destination pod's IP.
    PodIp,
}

/// Options for running plans.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Waits.
    pub timeouts: Timeouts,
    /// Service or pod IP.
    pub probe_target: ProbeTarget,
    /// Color truth tables.
    pub color: bool,
    /// Leave the world in place after the trial (debugging).
    pub keep: bool,
    /// Never hand a world to a later trial (`--fresh-worlds`).
    pub fresh_worlds: bool,
    /// The features the run judges.
    pub features: Arc<Selection>,
}

/// Why a step could not be carried out.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// Runs a plan and returns its report. Never panics on cluster faults; they become errors.
pub fn run_plan(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    suffix: &str,
    opts: &RunOptions,
    cancel: &AtomicBool,
) -> TrialReport {
    let started = Instant::now();
    let mut report = TrialReport {
        trial: plan.trial.clone(),
        name: plan.name.clone(),
        classname: format!(
            "netpol-conformance.{}.{}",
            plan.case.source.as_str(),
            plan.case.area
        ),
        features: features::trial_features(plan),
        outcome: TrialOutcome::Passed,
        started: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        steps: Vec::new(),
        log: String::new(),
        preflight: None,
    };
    let realized = match cluster.create_world(&plan.world, suffix) {
        Ok(r) => r,
        Err(e) => {
            report.outcome = TrialOutcome::Error {
                message: e.to_string(),
            };
            report.duration = started.elapsed();
            return report;
        }
    };
    report.log.push_str(&format!(
        "world {} realized with suffix {suffix}\n",
        plan.world.kind.as_str()
    ));
    let mut realized = realized;
    let outcome = run_steps(
        cluster,
        caps,
        plan,
        &mut realized,
        opts,
        cancel,
        &mut report,
    );
    report.outcome = outcome;
    // A shared world outlives the trial, and so may one a later trial reuses: put back every
    // label the trial changed, also after a failure, so the next trial finds the world as
    // upstream describes it.
    let mut reusable = reusable(plan, &report.outcome) && !opts.keep && !opts.fresh_worlds;
    if (plan.world.is_shared() || reusable)
        && !opts.keep
        && let Err(e) = restore_labels(cluster, plan, &realized)
    {
        reusable = false;
        report
            .log
            .push_str(&format!("restoring labels failed: {e}\n"));
        if matches!(report.outcome, TrialOutcome::Passed) {
            report.outcome = TrialOutcome::Error {
                message: format!("restoring labels failed: {e}"),
            };
        }
    }
    if opts.keep {
        report.log.push_str("--keep: the world was left in place\n");
    } else if let Err(e) = cluster.release_world(&plan.world, &realized, reusable) {
        report.log.push_str(&format!("cleanup failed: {e}\n"));
        if matches!(report.outcome, TrialOutcome::Passed) {
            report.outcome = TrialOutcome::Error {
                message: format!("cleanup failed: {e}"),
            };
        }
    }
    report.duration = started.elapsed();
    report
}

fn run_steps(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    realized: &mut RealizedWorld,
    opts: &RunOptions,
    cancel: &AtomicBool,
    report: &mut TrialReport,
) -> TrialOutcome {
    let started = Instant::now();
    let preflight = preflight(cluster, caps, plan, realized, opts);
    report.preflight = Some(started.elapsed());
    match preflight {
        Ok(summary) => {
            report.log.push_str(&summary);
            report.log.push('\n');
        }
        Err(message) => return TrialOutcome::Error { message },
    }
    for step in &plan.steps {
        if cancel.load(Ordering::SeqCst) {
            return TrialOutcome::Error {
                message: format!("interrupted before step {}", step.index),
            };
        }
        let result = match &step.action {
            Action::Probe(probe) => {
                let step_report =
                    probe_step(cluster, caps, plan, realized, probe, step.index, opts);
                let result = step_report.result.clone();
                report.steps.push(step_report);
                match result {
                    StepResult::Failed => {
                        return TrialOutcome::Failed {
                            message: format!(
                                "step {} ({}) had wrong results",
                                step.index,
                                probe_label(probe)
                            ),
                        };
                    }
                    StepResult::Error { message } => {
                        return TrialOutcome::Error {
                            message: format!(
                                "step {} ({}): {message}",
                                step.index,
                                probe_label(probe)
                            ),
                        };
                    }
                    StepResult::Passed | StepResult::Skipped { .. } => Ok(()),
                }
            }
            action => apply(cluster, plan, realized, action, report),
        };
        if let Err(e) = result {
            return TrialOutcome::Error {
                message: format!("step {} ({}): {e}", step.index, step.action.name()),
            };
        }
    }
    let skipped: Vec<SkippedStep> = report
        .steps
        .iter()
        .filter_map(|s| match &s.result {
            StepResult::Skipped { reason } => Some(SkippedStep {
                index: s.index,
                probe: s.probe.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect();
    if skipped.is_empty() {
        TrialOutcome::Passed
    } else if skipped.len() == report.steps.len() {
        TrialOutcome::NotSupported {
            reason: format!("every probe step was skipped: {}", skipped[0].reason),
        }
    } else {
        TrialOutcome::Partial { skipped }
    }
}

/// Sets every label key a trial's relabel steps touch back to the world model's value (or
/// removes it where the model has none).
/// Policy kinds: what a trial may create, change and delete and still leave its world reusable.
const POLICY_KINDS: [&str; 4] = [
    "NetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
];

/// Whether a trial leaves its world as it found it once its own objects are gone and its label
/// changes are undone: it only touched policies and labels (no pod recreated or deleted, no
/// other object made), and it did not end in a failure or an error, after which nobody can say
/// what state the world is in.
pub fn reusable(plan: &Plan, outcome: &TrialOutcome) -> bool {
    let policy = |kind: &str| POLICY_KINDS.contains(&kind);
    let only_policies = plan.steps.iter().all(|step| match &step.action {
        Action::Create(objects) | Action::Update(objects) => objects
            .iter()
            .all(|o| policy(o["kind"].as_str().unwrap_or_default())),
        Action::Patch { target, .. } => policy(&target.kind),
        Action::Delete(targets) => targets.iter().all(|t| policy(&t.kind)),
        Action::RecreatePods(_) | Action::DeletePods(_) => false,
        Action::DeleteAllPolicies
        | Action::LabelNamespace { .. }
        | Action::LabelPod { .. }
        | Action::Probe(_) => true,
    });
    only_policies
        && !matches!(
            outcome,
            TrialOutcome::Failed { .. } | TrialOutcome::Error { .. }
        )
}

fn restore_labels(
    cluster: &dyn Cluster,
    plan: &Plan,
    realized: &RealizedWorld,
) -> Result<(), BackendError> {
    let restore =
        |model: &BTreeMap<String, String>, set: &BTreeMap<String, String>, remove: &[String]| {
            let mut put = BTreeMap::new();
            let mut drop = Vec::new();
            for key in set.keys().chain(remove) {
                match model.get(key) {
                    Some(v) => {
                        put.insert(key.clone(), v.clone());
                    }
                    None => drop.push(key.clone()),
                }
            }
            (put, drop)
        };
    for step in &plan.steps {
        match &step.action {
            Action::LabelNamespace {
                namespace,
                set,
                remove,
            } => {
                let (Some(model), Some(real)) = (
                    plan.world.namespace(namespace),
                    realized.namespaces.get(namespace),
                ) else {
                    continue;
                };
                let (put, drop) = restore(&model.labels, set, remove);
                cluster.label_namespace(real, &put, &drop)?;
            }
            Action::LabelPod { pod, set, remove } => {
                let (Some(model), Some(real)) = (plan.world.pod(pod), realized.pods.get(pod))
                else {
                    continue;
                };
                let (put, drop) = restore(&model.labels, set, remove);
                cluster.label_pod(real, &put, &drop)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn probe_label(p: &ProbePlan) -> String {
    format!("{}/{}", p.protocol, p.port)
}

/// Whether a probe step runs: its protocol must be judged by the run and carried by the target.
/// A standard protocol the target cannot carry is an error, never a silent skip.
fn step_gate(probe: &ProbePlan, caps: &Capabilities, opts: &RunOptions) -> Option<StepResult> {
    let (name, feature) = features::step_feature(probe.protocol)?;
    if let Some(reason) = opts.features.reason(name) {
        let why = caps
            .missing
            .get(&feature)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Some(StepResult::Skipped {
            reason: format!("{reason}{why}"),
        });
    }
    caps.missing.get(&feature).map(|r| StepResult::Error {
        message: format!(
            "{name} is a standard feature, but this target cannot carry it: {r}; \
             exempt it with --exempt-features {name} to judge the rest"
        ),
    })
}

/// Before the first policy: every pair the trial will probe, on every port and protocol it
/// uses, must connect. A pair that does not is an infrastructure fault (a server that never
/// started, a broken route, a leftover policy), so the trial ends as an error naming the pairs.
fn preflight(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    realized: &RealizedWorld,
    opts: &RunOptions,
) -> Result<String, String> {
    let mut pairs: BTreeMap<(u16, Protocol), BTreeSet<(String, String)>> = BTreeMap::new();
    for probe in plan.probes() {
        if step_gate(probe, caps, opts).is_some() {
            continue;
        }
        pairs
            .entry((probe.port, probe.protocol))
            .or_default()
            .extend(
                probe
                    .expected
                    .entries()
                    .map(|(f, t, _)| (f.to_string(), t.to_string())),
            );
    }
    let mut jobs = Vec::new();
    for ((port, protocol), set) in &pairs {
        for (from, to) in set {
            jobs.push(job(plan, realized, from, to, *port, *protocol, opts)?);
        }
    }
    if jobs.is_empty() {
        return Ok("pre-flight: nothing to probe".into());
    }
    let started = Instant::now();
    let deadline = started + opts.timeouts.preflight;
    let mut outcomes = cluster.probe(&jobs);
    let mut calls = cluster.probe_calls(&jobs);
    loop {
        let failing: Vec<usize> = (0..jobs.len())
            .filter(|i| outcomes[*i] != Outcome::Connected)
            .collect();
        if failing.is_empty() {
            return Ok(format!(
                "pre-flight: {} pairs connected with no policy in {:.1?} ({calls} probe calls)",
                jobs.len(),
                started.elapsed()
            ));
        }
        if Instant::now() >= deadline {
            let listed: Vec<String> = failing
                .iter()
                .take(8)
                .map(|i| {
                    let j = &jobs[*i];
                    format!(
                        "{} → {} {}/{} {}",
                        j.from.model,
                        j.to_model,
                        j.protocol,
                        j.port,
                        describe(&outcomes[*i])
                    )
                })
                .collect();
            let more = failing.len().saturating_sub(listed.len());
            return Err(format!(
                "world not ready: {}{} after {:.0?} with no policy in place",
                listed.join(", "),
                if more > 0 {
                    format!(" and {more} more pairs")
                } else {
                    String::new()
                },
                opts.timeouts.preflight
            ));
        }
        std::thread::sleep(opts.timeouts.probe_retry_interval);
        let retry: Vec<ProbeJob> = failing.iter().map(|i| jobs[*i].clone()).collect();
        calls += cluster.probe_calls(&retry);
        for (i, o) in failing.iter().zip(cluster.probe(&retry)) {
            outcomes[*i] = o;
        }
    }
}

/// An outcome in words, for error messages.
fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Connected => "connected".into(),
        Outcome::Blocked(crate::reachability::BlockKind::Timeout) => "timed out".into(),
        Outcome::Blocked(crate::reachability::BlockKind::Refused) => "refused".into(),
        Outcome::Error(e) => format!("failed ({e})"),
    }
}

/// The probe of one pair: upstream worlds go through the destination's Service when asked.
fn job(
    plan: &Plan,
    realized: &RealizedWorld,
    from: &str,
    to: &str,
    port: u16,
    protocol: Protocol,
    opts: &RunOptions,
) -> Result<ProbeJob, String> {
    let src = realized
        .pods
        .get(from)
        .ok_or_else(|| format!("pod {from} was not realized"))?;
    let dst = realized
        .pods
        .get(to)
        .ok_or_else(|| format!("pod {to} was not realized"))?;
    let use_service = opts.probe_target == ProbeTarget::Service
        && plan.world.kind == crate::world::WorldKind::Upstream;
    let to_ip = match (use_service, dst.service_ip) {
        (true, Some(ip)) => ip,
        _ => dst.ip,
    };
    Ok(ProbeJob {
        from: src.clone(),
        to_model: to.to_string(),
        to_ip,
        port,
        protocol,
        timeout: opts.timeouts.probe_connect,
    })
}

fn jobs_for(
    plan: &Plan,
    realized: &RealizedWorld,
    probe: &ProbePlan,
    opts: &RunOptions,
) -> Result<Vec<ProbeJob>, String> {
    probe
        .expected
        .entries()
        .map(|(from, to, _)| job(plan, realized, from, to, probe.port, probe.protocol, opts))
        .collect()
}

/// A blocked observation counts only when its destination is shown alive in the same step:
/// some source reached it on this port and protocol, or it answers a probe of its own address
/// from inside its own network namespace (traffic that never leaves the pod, so no policy
/// applies). Blocked cells of a destination that is not alive become errors.
/// Returns the probe calls made.
fn witness_destinations(
    cluster: &dyn Cluster,
    realized: &RealizedWorld,
    probe: &ProbePlan,
    observed: &mut Observed,
    opts: &RunOptions,
) -> usize {
    let mut suspects: BTreeSet<String> = BTreeSet::new();
    let mut alive: BTreeSet<String> = BTreeSet::new();
    for (_, to, o) in observed.entries() {
        match o {
            Outcome::Connected => {
                alive.insert(to.to_string());
            }
            Outcome::Blocked(_) => {
                suspects.insert(to.to_string());
            }
            Outcome::Error(_) => {}
        }
    }
    let mut jobs = Vec::new();
    let mut dead: BTreeMap<String, String> = BTreeMap::new();
    for to in suspects.difference(&alive) {
        match realized.pods.get(to) {
            Some(pod) if !pod.container.is_empty() || pod.netns.is_some() => jobs.push(ProbeJob {
                from: pod.clone(),
                to_model: to.clone(),
                to_ip: pod.ip,
                port: probe.port,
                protocol: probe.protocol,
                timeout: opts.timeouts.probe_connect,
            }),
            Some(_) => {
                // The external host: nothing to exec into. Its liveness was shown by the
                // pre-flight, and it runs no policy.
            }
            None => {
                dead.insert(to.clone(), "the pod was not realized".into());
            }
        }
    }
    let calls = cluster.probe_calls(&jobs);
    for (job, outcome) in jobs.iter().zip(cluster.probe(&jobs)) {
        if outcome != Outcome::Connected {
            dead.insert(
                job.to_model.clone(),
                format!(
                    "its own probe of {}:{} {}",
                    job.to_ip,
                    job.port,
                    describe(&outcome)
                ),
            );
        }
    }
    if dead.is_empty() {
        return calls;
    }
    let pods = observed.pods().to_vec();
    for from in &pods {
        for (to, why) in &dead {
            if matches!(observed.get(from, to), Some(Outcome::Blocked(_))) {
                observed.set(
                    from,
                    to,
                    Outcome::Error(format!(
                        "blocked, but destination {to} is not alive on {}/{}: {why}",
                        probe.protocol, probe.port
                    )),
                );
            }
        }
    }
    calls
}

fn probe_step(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    realized: &RealizedWorld,
    probe: &ProbePlan,
    index: usize,
    opts: &RunOptions,
) -> StepReport {
    let mut step = StepReport {
        index,
        name: probe.name.clone(),
        probe: probe_label(probe),
        result: StepResult::Passed,
        correct: 0,
        wrong: 0,
        errors: 0,
        flaky: Vec::new(),
        calls: 0,
        tables: None,
        rerun: Vec::new(),
        grids: None,
    };
    if let Some(result) = step_gate(probe, caps, opts) {
        step.result = result;
        return step;
    }
    let jobs = match jobs_for(plan, realized, probe, opts) {
        Ok(jobs) => jobs,
        Err(message) => {
            step.result = StepResult::Error { message };
            return step;
        }
    };
    let mut observed = Observed::new(probe.expected.pods().to_vec());
    let record = |observed: &mut Observed, jobs: &[ProbeJob], outcomes: Vec<Outcome>| {
        for (job, outcome) in jobs.iter().zip(outcomes) {
            observed.set(&job.from.model, &job.to_model, outcome);
        }
    };
    step.calls += cluster.probe_calls(&jobs);
    record(&mut observed, &jobs, cluster.probe(&jobs));
    let first = Comparison::new(&probe.expected, &observed, plan.block_rule);
    let wrong_at_first = |c: &Comparison| -> Vec<(String, String)> {
        c.table
            .entries()
            .filter(|(_, _, v)| **v != Verdict::Match)
            .map(|(f, t, _)| (f.to_string(), t.to_string()))
            .collect()
    };
    let first_wrong = wrong_at_first(&first);
    // Retry only the disagreeing probes until they agree or the deadline passes.
    let deadline = Instant::now() + opts.timeouts.probe_settle;
    let mut comparison = first;
    while !comparison.passed() && Instant::now() < deadline {
        std::thread::sleep(opts.timeouts.probe_retry_interval);
        let wrong = wrong_at_first(&comparison);
        let retry: Vec<ProbeJob> = jobs
            .iter()
            .filter(|j| {
                wrong
                    .iter()
                    .any(|(f, t)| *f == j.from.model && *t == j.to_model)
            })
            .cloned()
            .collect();
        step.calls += cluster.probe_calls(&retry);
        record(&mut observed, &retry, cluster.probe(&retry));
        comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
    }
    // Still wrong: probe the whole matrix once more, as upstream's second try does.
    if !comparison.passed() {
        let mut second = Observed::new(probe.expected.pods().to_vec());
        step.calls += cluster.probe_calls(&jobs);
        record(&mut second, &jobs, cluster.probe(&jobs));
        observed = second;
    }
    step.calls += witness_destinations(cluster, realized, probe, &mut observed, opts);
    comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
    step.flaky = first_wrong
        .iter()
        .filter(|(f, t)| comparison.table.get(f, t) == Some(&Verdict::Match))
        .map(|(f, t)| format!("{f} -> {t}"))
        .collect();
    step.correct = comparison.correct;
    step.wrong = comparison.wrong;
    step.errors = comparison.errors;
    step.result = if comparison.passed() {
        StepResult::Passed
    } else if comparison.wrong > 0 {
        StepResult::Failed
    } else {
        StepResult::Error {
            message: format!("{} probes could not be judged", comparison.errors),
        }
    };
    step.grids = Some(crate::report::StepGrids {
        expected: probe.expected.clone(),
        observed: observed.clone(),
        comparison: comparison.table.clone(),
        rerun: if comparison.passed() {
            Vec::new()
        } else {
            jobs.iter()
                .map(|j| crate::report::PairCommand {
                    from: j.from.model.clone(),
                    to: j.to_model.clone(),
                    command: j.rerun_command(),
                })
                .collect()
        },
    });
    if !comparison.passed() {
        let mut tables = TruthTables {
            expected: &probe.expected,
            observed: &observed,
            comparison: &comparison,
            color: opts.color,
        }
        .to_string();
        let errors: Vec<String> = observed
            .entries()
            .filter_map(|(f, t, o)| match o {
                Outcome::Error(e) => Some(format!("  {f} -> {t}: {e}")),
                _ => None,
            })
            .collect();
        if !errors.is_empty() {
            tables.push_str("\nprobe errors:\n");
            tables.push_str(&errors.join("\n"));
        }
        step.tables = Some(tables);
        step.rerun = jobs
            .iter()
            .filter(|j| comparison.table.get(&j.from.model, &j.to_model) != Some(&Verdict::Match))
            .map(ProbeJob::rerun_command)
            .collect();
    }
    step
}

/// Resolves placeholders, realizes the model namespace of a namespaced object, and labels it
/// with the trial, so the trial's cleanup finds it even in a world shared with other trials.
fn realize_object(obj: &Value, realized: &RealizedWorld) -> Result<Value, ResolveError> {
    let mut obj = render::resolve(obj, realized)?;
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

fn apply(
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
                .map(|o| render::resolve(o, realized))
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
            cluster.label_namespace(&real, set, remove)?;
        }
        Action::LabelPod { pod, set, remove } => {
            let real = realized.pods.get(pod).ok_or_else(|| BackendError::Other {
                operation: format!("label pod {pod}"),
                message: "the pod was not realized".into(),
            })?;
            log(format!(
                "label pod {}/{}: set {set:?}, remove {remove:?}",
                real.namespace, real.name
            ));
            cluster.label_pod(real, set, remove)?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::backend::fake::FakeCluster;
    use crate::case::{Feature, load_files};
    use crate::plan::plan_all;
    use crate::reachability::BlockKind;

    const CASE: &str = crate::case::SAMPLE_CASE;

    fn plan() -> Plan {
        plan_all(&load_files([("t.yaml".into(), CASE.into())]).unwrap())
            .unwrap()
            .remove(0)
    }

    fn opts() -> RunOptions {
        RunOptions {
            timeouts: Timeouts {
                probe_connect: Duration::from_millis(10),
                probe_settle: Duration::from_millis(50),
                probe_retry_interval: Duration::from_millis(5),
                preflight: Duration::from_millis(50),
            },
            probe_target: ProbeTarget::PodIp,
            color: false,
            keep: false,
            fresh_worlds: false,
            features: Arc::new(Selection::all()),
        }
    }

    /// An oracle that enforces "deny ingress into namespace x" once the policy exists. A pod's
    /// probe of its own address never leaves it, so no policy applies.
    fn deny_x(job: &ProbeJob, objects: &[Value]) -> Outcome {
        let policy = objects.iter().any(|o| o["metadata"]["name"] == "deny-all");
        if policy && job.to_model.starts_with("x/") && job.from.model != job.to_model {
            Outcome::Blocked(BlockKind::Timeout)
        } else {
            Outcome::Connected
        }
    }

    #[test]
    fn a_conforming_cluster_passes_and_the_world_is_cleaned_up() {
        let cluster = FakeCluster::new(Box::new(deny_x));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s1",
            &opts(),
            &AtomicBool::new(false),
        );
        assert_eq!(report.outcome, TrialOutcome::Passed, "{}", report.details());
        assert_eq!(report.steps[0].correct, 72);
        let log = cluster.log.lock().unwrap().clone();
        assert_eq!(log.first().unwrap(), "create_world upstream s1");
        assert_eq!(log[1], "create NetworkPolicy deny-all");
        assert_eq!(log.last().unwrap(), "delete_world s1");
    }

    #[test]
    fn the_namespace_is_realized_in_created_objects() {
        let cluster = FakeCluster::new(Box::new(deny_x));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s9",
            &opts(),
            &AtomicBool::new(false),
        );
        assert!(
            report.log.contains("\"namespace\": \"upstream-x-s9\""),
            "{}",
            report.log
        );
    }

    #[test]
    fn no_enforcement_fails_with_three_tables_and_rerun_commands() {
        let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s2",
            &opts(),
            &AtomicBool::new(false),
        );
        assert!(matches!(report.outcome, TrialOutcome::Failed { .. }));
        let step = &report.steps[0];
        assert_eq!(step.wrong, 24);
        let tables = step.tables.as_deref().unwrap();
        assert!(
            tables.contains("expected:")
                && tables.contains("observed:")
                && tables.contains("comparison:")
        );
        assert_eq!(step.rerun.len(), 24);
        assert!(
            cluster
                .log
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .starts_with("delete_world")
        );
    }

    #[test]
    fn probe_errors_are_errors_not_drops() {
        // y/b's container goes away once the policy exists (after the pre-flight).
        let cluster = FakeCluster::new(Box::new(|j, o| {
            if j.from.model == "y/b" && !o.is_empty() {
                Outcome::Error("exec failed: container not found".into())
            } else {
                deny_x(j, o)
            }
        }));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s3",
            &opts(),
            &AtomicBool::new(false),
        );
        assert!(
            matches!(report.outcome, TrialOutcome::Error { .. }),
            "{:?}",
            report.outcome
        );
        assert!(
            report
                .details()
                .contains("exec failed: container not found")
        );
    }

    #[test]
    fn first_try_mismatches_that_settle_are_recorded_as_flaky() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let cluster = FakeCluster::new(Box::new(move |j, o| {
            // The first probe of y/a -> x/a after the pre-flight's slips through, as if the
            // policy were still propagating.
            if j.from.model == "y/a"
                && j.to_model == "x/a"
                && counter.fetch_add(1, Ordering::SeqCst) == 1
            {
                Outcome::Connected
            } else {
                deny_x(j, o)
            }
        }));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s4",
            &opts(),
            &AtomicBool::new(false),
        );
        assert_eq!(report.outcome, TrialOutcome::Passed);
        assert_eq!(report.steps[0].flaky, ["y/a -> x/a"]);
        assert!(calls.load(Ordering::SeqCst) >= 2);
    }

    #[test]
    fn a_world_that_never_gets_ready_is_an_error_naming_the_pod() {
        let mut cluster = FakeCluster::new(Box::new(deny_x));
        cluster.fail_world = true;
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s5",
            &opts(),
            &AtomicBool::new(false),
        );
        let TrialOutcome::Error { message } = report.outcome else {
            panic!()
        };
        assert!(message.contains("pod x/a never became Ready"), "{message}");
    }

    #[test]
    fn interruption_stops_before_the_next_step_and_still_cleans_up() {
        let cluster = FakeCluster::new(Box::new(deny_x));
        let caps = cluster.capabilities();
        let report = run_plan(
            &cluster,
            &caps,
            &plan(),
            "s6",
            &opts(),
            &AtomicBool::new(true),
        );
        assert!(
            matches!(report.outcome, TrialOutcome::Error { ref message } if message.contains("interrupted"))
        );
        assert!(
            cluster
                .log
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .starts_with("delete_world")
        );
    }

    fn run(
        cluster: &FakeCluster,
        caps: &Capabilities,
        plan: &Plan,
        opts: &RunOptions,
    ) -> TrialReport {
        run_plan(cluster, caps, plan, "t", opts, &AtomicBool::new(false))
    }

    fn plan_of(text: &str) -> Plan {
        plan_all(&load_files([("t.yaml".into(), text.into())]).unwrap())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn only_trials_that_touched_policies_and_labels_leave_a_reusable_world() {
        let plans = crate::plan::plan_all(&crate::case::load_embedded().unwrap()).unwrap();
        let by_action = |action: &str| {
            plans
                .iter()
                .find(|p| p.steps.iter().any(|s| s.action.name() == action))
                .unwrap_or_else(|| panic!("no trial does {action}"))
        };
        let passed = TrialOutcome::Passed;
        assert!(reusable(by_action("label_pod"), &passed));
        assert!(reusable(by_action("label_namespace"), &passed));
        let policies_only = &plan();
        for action in [
            Action::RecreatePods(vec!["x/a".into()]),
            Action::DeletePods(vec!["x/a".into()]),
        ] {
            let mut p = plan();
            let mut step = p.steps[0].clone();
            step.action = action;
            p.steps.push(step);
            assert!(
                !reusable(&p, &passed),
                "{}",
                p.steps.last().unwrap().action.name()
            );
        }
        assert!(reusable(policies_only, &passed));
        let failed = TrialOutcome::Failed {
            message: "wrong".into(),
        };
        let error = TrialOutcome::Error {
            message: "gone".into(),
        };
        assert!(
            !reusable(policies_only, &failed),
            "a failed trial's world is suspect"
        );
        assert!(!reusable(policies_only, &error));
    }

    #[test]
    fn a_protocol_the_target_cannot_carry_is_an_error_unless_exempted() {
        let plan = plan_of(&CASE.replace("protocol: TCP", "protocol: SCTP"));
        let cluster = FakeCluster::new(Box::new(deny_x));
        let mut caps = cluster.capabilities();
        caps.missing
            .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
        let report = run(&cluster, &caps, &plan, &opts());
        let TrialOutcome::Error { message } = &report.outcome else {
            panic!("{:?}", report.outcome)
        };
        assert!(
            message.contains("SCTP is a standard feature, but this target cannot carry it")
                && message.contains("--exempt-features SCTP"),
            "{message}"
        );
        let mut exempt = opts();
        exempt.features = Arc::new(Selection::new(&[], &["SCTP".into()], true).unwrap());
        let report = run(&cluster, &caps, &plan, &exempt);
        assert_eq!(
            report.steps[0].result,
            StepResult::Skipped {
                reason:
                    "SCTP: exempted with --exempt-features (SCTP is not supported by this kernel)"
                        .into()
            }
        );
        // Its only probe step skipped: the trial as a whole is not supported, never passed.
        assert!(
            matches!(report.outcome, TrialOutcome::NotSupported { .. }),
            "{:?}",
            report.outcome
        );
    }

    #[test]
    fn a_trial_with_skipped_steps_is_partial_not_passed() {
        let two_steps = format!(
            "{CASE}    - probe:\n        port: 80\n        protocol: SCTP\n        expect:\n          - expect_peer: {{from: {{}}, to: {{ns: x}}, allowed: false}}\n"
        );
        let plan = plan_of(&two_steps);
        let cluster = FakeCluster::new(Box::new(deny_x));
        let mut caps = cluster.capabilities();
        caps.missing
            .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
        let mut exempt = opts();
        exempt.features = Arc::new(Selection::new(&[], &["SCTP".into()], true).unwrap());
        let report = run(&cluster, &caps, &plan, &exempt);
        let TrialOutcome::Partial { skipped } = &report.outcome else {
            panic!("{:?}", report.outcome)
        };
        assert_eq!(skipped.len(), 1);
        assert_eq!(
            (skipped[0].index, skipped[0].probe.as_str()),
            (2, "SCTP/80")
        );
        assert!(
            skipped[0].reason.starts_with("SCTP: exempted"),
            "{skipped:?}"
        );
        assert_eq!(report.steps[0].result, StepResult::Passed);
        let junit = crate::report::junit(&crate::report::RunReport {
            trials: vec![report],
            ..Default::default()
        });
        assert!(
            junit.contains(
                "<skipped message=\"partial: the steps that ran passed; skipped step 2 (SCTP/80): SCTP: exempted"
            ),
            "{junit}"
        );
        assert!(
            junit.contains("name=\"skipped-steps\" value=\"2 SCTP/80\""),
            "{junit}"
        );
    }

    #[test]
    fn a_pair_that_does_not_connect_before_any_policy_is_a_world_not_ready_error() {
        // y/b's server on x/a is unreachable from the start (say, a broken route).
        let cluster = FakeCluster::new(Box::new(|j, o| {
            if j.from.model == "y/b" && j.to_model == "x/a" {
                Outcome::Blocked(BlockKind::Refused)
            } else {
                deny_x(j, o)
            }
        }));
        let caps = cluster.capabilities();
        let report = run(&cluster, &caps, &plan(), &opts());
        let TrialOutcome::Error { message } = &report.outcome else {
            panic!("{:?}", report.outcome)
        };
        assert!(
            message.starts_with("world not ready: y/b → x/a TCP/80 refused after"),
            "{message}"
        );
        assert!(
            report.steps.is_empty(),
            "no step runs on a world that is not ready"
        );
        assert!(report.preflight.is_some());
        let log = cluster.log.lock().unwrap().clone();
        assert!(
            !log.iter().any(|l| l.starts_with("create NetworkPolicy")),
            "no policy is applied: {log:?}"
        );
        assert_eq!(log.last().unwrap(), "delete_world t");
    }

    #[test]
    fn a_blocked_pair_to_a_dead_destination_is_an_error_not_a_match() {
        // x/a's server dies once the policy exists: every probe of it fails, its own included.
        let cluster = FakeCluster::new(Box::new(|j, o| {
            let policy = o.iter().any(|p| p["metadata"]["name"] == "deny-all");
            if policy && j.to_model == "x/a" {
                Outcome::Blocked(BlockKind::Refused)
            } else {
                deny_x(j, o)
            }
        }));
        let caps = cluster.capabilities();
        let report = run(&cluster, &caps, &plan(), &opts());
        assert!(
            matches!(report.outcome, TrialOutcome::Error { .. }),
            "{:?}",
            report.outcome
        );
        let step = &report.steps[0];
        // The 8 pairs into x/a are errors; the other 16 expected-blocked pairs still match.
        assert_eq!((step.correct, step.wrong, step.errors), (64, 0, 8));
        assert!(
            report
                .details()
                .contains("blocked, but destination x/a is not alive on TCP/80: its own probe of"),
            "{}",
            report.details()
        );
    }

    #[test]
    fn a_live_destination_needs_no_extra_probe_when_some_source_reached_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let cluster = FakeCluster::new(Box::new(move |j, o| {
            if j.from.model == j.to_model {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            deny_x(j, o)
        }));
        let caps = cluster.capabilities();
        let report = run(&cluster, &caps, &plan(), &opts());
        assert_eq!(report.outcome, TrialOutcome::Passed, "{}", report.details());
        // Nobody reaches x/a, x/b, x/c: each proves itself alive with one probe of its own.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(report.steps[0].calls, 72 + 3);
    }

    #[test]
    fn a_shared_world_gets_its_labels_back_even_when_the_trial_fails() {
        let plan = crate::plan::plan_all(&crate::case::load_embedded().unwrap())
            .unwrap()
            .into_iter()
            .find(|p| p.trial == "npa::admin-tier::admin-egress-inline-cidr-peers::v1alpha2")
            .unwrap();
        assert!(plan.world.is_shared());
        // Nothing is enforced: the first probe step fails, before the relabel steps run.
        let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
        let caps = cluster.capabilities();
        let report = run(&cluster, &caps, &plan, &opts());
        assert!(matches!(report.outcome, TrialOutcome::Failed { .. }));
        let log = cluster.log.lock().unwrap().clone();
        let restore = log
            .iter()
            .rev()
            .find(|l| l.starts_with("label_namespace"))
            .expect("labels restored");
        assert_eq!(
            restore,
            "label_namespace network-policy-conformance-slytherin-t {\"conformance-house\": \"slytherin\"} -[]"
        );
        assert_eq!(log.last().unwrap(), "delete_world t");
    }
}
