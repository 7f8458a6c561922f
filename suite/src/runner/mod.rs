//! Runs one plan against a cluster: realize the world, apply each step, probe with retries,
//! compare, and always clean up. Workers only return outcomes; this module alone decides.
//!
//! [`run_plan`] drives a trial through its steps here; the all-allowed pre-flight is in
//! `preflight`, probe steps (jobs, retries, witnesses, verdicts) in `probe`, and the steps that
//! change the cluster in `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{BackendError, Capabilities, Cluster, RealizedWorld};
use crate::features::{self, Selection};
use crate::plan::{Action, Plan, ProbePlan};
use crate::report::timing::TrialTiming;
use crate::report::{SkippedStep, StepReport, StepResult, TrialOutcome, TrialReport};

mod apply;
mod preflight;
mod probe;
#[cfg(test)]
mod tests;

use apply::apply;
use preflight::preflight;
use probe::{StepClock, probe_label, probe_step};

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

/// The report of a trial of `plan` that has not run anything yet: `outcome`, started now, no
/// steps, no log. The runner fills it in; the harness records trials that never reach the
/// runner (skipped, not supported, no target) with it as it is.
pub(crate) fn report_for(plan: &Plan, outcome: TrialOutcome) -> TrialReport {
    TrialReport {
        trial: plan.trial.clone(),
        name: plan.name.clone(),
        classname: format!(
            "netpol-conformance.{}.{}",
            plan.case.source.as_str(),
            plan.case.area
        ),
        features: features::trial_features(plan),
        outcome,
        started: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        steps: Vec::new(),
        log: String::new(),
        preflight: None,
        timing: None,
    }
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
    let mut report = report_for(plan, TrialOutcome::Passed);
    let mut timing = TrialTiming {
        probe_connect: opts.timeouts.probe_connect,
        ..Default::default()
    };
    let created = cluster.create_world(&plan.world, suffix);
    timing.world_setup = started.elapsed();
    report.timing = Some(timing);
    let realized = match created {
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
    let teardown = Instant::now();
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
    if let Some(timing) = &mut report.timing {
        timing.teardown = teardown.elapsed();
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
    // When the last policy change's API call returned, until a probe step measures it.
    let mut changed: Option<Instant> = None;
    for step in &plan.steps {
        if cancel.load(Ordering::SeqCst) {
            return TrialOutcome::Error {
                message: format!("interrupted before step {}", step.index),
            };
        }
        let result = match &step.action {
            Action::Probe(probe) => {
                let began = Instant::now();
                let (step_report, clock) =
                    probe_step(cluster, caps, plan, realized, probe, step.index, opts);
                if let Some(timing) = &mut report.timing {
                    record_probe_step(timing, probe, &step_report, &clock, began, &mut changed);
                }
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
            action => {
                let began = Instant::now();
                let result = apply(cluster, plan, realized, action, report);
                changed = changes_policy(action).then(Instant::now);
                if let Some(timing) = &mut report.timing {
                    timing.apply += began.elapsed();
                }
                result
            }
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

/// Whether an action can change what policy allows: policy objects and labels (which select
/// pods and namespaces) do; deleting or recreating pods does not, and a probe after it
/// measures the pods' return, not enforcement.
fn changes_policy(action: &Action) -> bool {
    !matches!(
        action,
        Action::RecreatePods(_) | Action::DeletePods(_) | Action::Probe(_)
    )
}

/// Adds a probe step to the trial's timing: its settle and probing time, its counts and, for
/// the first step that probed after a policy change and passed, the enforcement latency from
/// `changed` (taken: later steps after the same change do not measure it again) to its first
/// matching pass.
fn record_probe_step(
    timing: &mut TrialTiming,
    probe: &ProbePlan,
    step: &StepReport,
    clock: &StepClock,
    began: Instant,
    changed: &mut Option<Instant>,
) {
    let took = began.elapsed();
    timing.settle += clock.settle;
    timing.probing += took.saturating_sub(clock.settle);
    if !clock.probed {
        return;
    }
    timing.probe_steps += 1;
    if probe.expected.entries().any(|(_, _, allowed)| !*allowed) {
        timing.deny_steps += 1;
    }
    timing.probes += clock.probes;
    if let Some(at) = changed.take()
        && step.result == StepResult::Passed
        && let Some(matched) = clock.matched_at
    {
        timing
            .latencies
            .push((step.index, matched.saturating_duration_since(at)));
    }
}

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

/// Sets every label key a trial's relabel steps touch back to the world model's value (or
/// removes it where the model has none).
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
