//! Runs one plan against a cluster: realize the world, apply each step, probe with retries,
//! compare, and always clean up. Workers only return outcomes; this module alone decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{BackendError, Capabilities, Cluster, ProbeJob, RealizedWorld};
use crate::case::{Feature, ObjectRef};
use crate::plan::{Action, Plan, ProbePlan};
use crate::reachability::{Comparison, Observed, Outcome, TruthTables, Verdict};
use crate::render::{self, ResolveError};
use crate::report::{StepReport, TrialOutcome, TrialReport};

/// Every wait the runner makes, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// One probe's connect timeout.
    pub probe_connect: Duration,
    /// How long probes that disagree with their expectation are retried.
    pub probe_settle: Duration,
    /// Pause between retries of disagreeing probes.
    pub probe_retry_interval: Duration,
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
        outcome: TrialOutcome::Passed,
        duration: Duration::ZERO,
        steps: Vec::new(),
        log: String::new(),
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
    if opts.keep {
        report.log.push_str("--keep: the world was left in place\n");
    } else if let Err(e) = cluster.delete_world(&realized) {
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
                let failed = step_report.result.clone();
                report.steps.push(step_report);
                match failed.as_str() {
                    "failed" => {
                        return TrialOutcome::Failed {
                            message: format!(
                                "step {} ({}) had wrong results",
                                step.index,
                                probe_label(probe)
                            ),
                        };
                    }
                    "error" => {
                        return TrialOutcome::Error {
                            message: format!(
                                "step {} ({}): probes could not be carried out",
                                step.index,
                                probe_label(probe)
                            ),
                        };
                    }
                    _ => Ok(()),
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
    TrialOutcome::Passed
}

fn probe_label(p: &ProbePlan) -> String {
    format!("{}/{}", p.protocol, p.port)
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

fn jobs_for(
    plan: &Plan,
    realized: &RealizedWorld,
    probe: &ProbePlan,
    opts: &RunOptions,
) -> Result<Vec<ProbeJob>, String> {
    let mut jobs = Vec::new();
    for (from, to, _) in probe.expected.entries() {
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
        jobs.push(ProbeJob {
            from: src.clone(),
            to_model: to.to_string(),
            to_ip,
            port: probe.port,
            protocol: probe.protocol,
            timeout: opts.timeouts.probe_connect,
        });
    }
    Ok(jobs)
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
        result: String::new(),
        correct: 0,
        wrong: 0,
        errors: 0,
        flaky: Vec::new(),
        calls: 0,
        tables: None,
        rerun: Vec::new(),
    };
    let needed = match probe.protocol {
        crate::world::Protocol::Sctp => Some(Feature::Sctp),
        crate::world::Protocol::Udp => Some(Feature::Udp),
        crate::world::Protocol::Tcp => None,
    };
    if let Some(reason) = needed.and_then(|f| caps.missing.get(&f)) {
        step.result = format!("skipped: {reason}");
        return step;
    }
    let jobs = match jobs_for(plan, realized, probe, opts) {
        Ok(jobs) => jobs,
        Err(e) => {
            step.result = "error".into();
            step.tables = Some(e);
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
        comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
    }
    step.flaky = first_wrong
        .iter()
        .filter(|(f, t)| comparison.table.get(f, t) == Some(&Verdict::Match))
        .map(|(f, t)| format!("{f} -> {t}"))
        .collect();
    step.correct = comparison.correct;
    step.wrong = comparison.wrong;
    step.errors = comparison.errors;
    step.result = if comparison.passed() {
        "passed".into()
    } else if comparison.wrong > 0 {
        "failed".into()
    } else {
        "error".into()
    };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::backend::fake::FakeCluster;
    use crate::case::load_files;
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
            },
            probe_target: ProbeTarget::PodIp,
            color: false,
            keep: false,
        }
    }

    /// An oracle that enforces "deny ingress into namespace x" once the policy exists.
    fn deny_x(job: &ProbeJob, objects: &[Value]) -> Outcome {
        let policy = objects.iter().any(|o| o["metadata"]["name"] == "deny-all");
        if policy && job.to_model.starts_with("x/") {
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
        let cluster = FakeCluster::new(Box::new(|j, o| {
            if j.from.model == "y/b" {
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
            // The first probe of y/a -> x/a slips through, as if the policy were still propagating.
            if j.from.model == "y/a"
                && j.to_model == "x/a"
                && counter.fetch_add(1, Ordering::SeqCst) == 0
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

    #[test]
    fn probes_of_a_missing_protocol_are_skipped_with_the_reason() {
        let text = CASE.replace("protocol: TCP", "protocol: SCTP");
        let plan = plan_all(&load_files([("t.yaml".into(), text)]).unwrap())
            .unwrap()
            .remove(0);
        let cluster = FakeCluster::new(Box::new(deny_x));
        let mut caps = cluster.capabilities();
        caps.missing
            .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
        let report = run_plan(
            &cluster,
            &caps,
            &plan,
            "s7",
            &opts(),
            &AtomicBool::new(false),
        );
        assert_eq!(
            report.steps[0].result,
            "skipped: SCTP is not supported by this kernel"
        );
    }
}
