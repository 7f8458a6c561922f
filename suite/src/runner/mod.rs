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

use crate::backend::{BackendError, Capabilities, Cluster, LabelChange, RealizedWorld};
use crate::features::{self, Selection};
use crate::plan::{Action, Plan, PlannedStep, ProbePlan};
use crate::report::timing::TrialTiming;
use crate::report::{SkippedStep, StepReport, StepResult, TrialOutcome, TrialReport};

mod apply;
mod preflight;
mod probe;
#[cfg(test)]
mod tests;
mod timeouts;
mod witness;

use apply::apply;
use preflight::preflight;
use probe::{GroupClock, StepClock, probe_group, probe_label};
pub use timeouts::{DeriveConnect, Timeouts};

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
    /// Where the worlds' pods go; `cross-node` judges only the pairs that cross nodes.
    pub placement: crate::backend::Placement,
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
    let derived = derive_timeouts(cluster, opts, report);
    let opts = derived.as_ref().unwrap_or(opts);
    // When the last policy change's API call returned, until a probe group measures it.
    let mut changed: Option<Instant> = None;
    let mut steps = plan.steps.iter().peekable();
    while let Some(step) = steps.next() {
        if cancel.load(Ordering::SeqCst) {
            return TrialOutcome::Error {
                message: format!("interrupted before step {}", step.index),
            };
        }
        let Action::Probe(first) = &step.action else {
            let began = Instant::now();
            let result = apply(cluster, plan, realized, &step.action, report);
            changed = changes_policy(&step.action).then(Instant::now);
            if let Some(timing) = &mut report.timing {
                timing.apply += began.elapsed();
            }
            if let Err(e) = result {
                return TrialOutcome::Error {
                    message: format!("step {} ({}): {e}", step.index, step.action.name()),
                };
            }
            continue;
        };
        // Probe steps with nothing changed between them are probed side by side.
        let mut group = vec![(step.index, first)];
        while let Some(PlannedStep {
            index,
            action: Action::Probe(next),
        }) = steps.peek()
        {
            group.push((*index, next));
            steps.next();
        }
        let (judged, clock) = probe_group(cluster, caps, plan, realized, &group, opts);
        if let Some(timing) = &mut report.timing {
            record_probe_group(timing, &group, &judged, &clock, &mut changed);
        }
        let mut verdict = None;
        for ((_, probe), (step_report, _)) in group.iter().zip(judged) {
            verdict = verdict.or(step_verdict(probe, &step_report));
            report.steps.push(step_report);
        }
        if let Some(outcome) = verdict {
            return outcome;
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

/// The probe steps' timeouts where the run derives them from the path measured so far (this
/// pre-flight's connections included): `None` where they stay as they are. Records the
/// connect timeout in the trial's timing, and a derived one in its log.
fn derive_timeouts(
    cluster: &dyn Cluster,
    opts: &RunOptions,
    report: &mut TrialReport,
) -> Option<RunOptions> {
    let measured = cluster.connect_quantile(0.999);
    let connect = opts.timeouts.step_connect(measured);
    let reach = opts.timeouts.reach_connect(measured);
    if let Some(timing) = &mut report.timing {
        timing.probe_connect = connect;
    }
    if connect == opts.timeouts.probe_connect && reach.is_none() {
        return None;
    }
    report.log.push_str(&format!(
        "connect timeout {connect:?} (retries waiting for a connection: {reach:?}), \
         derived from the measured path\n"
    ));
    Some(RunOptions {
        timeouts: Timeouts {
            probe_connect: connect,
            probe_reach: reach,
            ..opts.timeouts.clone()
        },
        ..opts.clone()
    })
}

/// How a trial ends because of a step that failed or could not be judged; `None` for one that
/// passed or was skipped. A failure says where its wrong pairs ran.
fn step_verdict(probe: &ProbePlan, step: &StepReport) -> Option<TrialOutcome> {
    let (index, label) = (step.index, probe_label(probe));
    match &step.result {
        StepResult::Failed => {
            let placement = step
                .placement
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            Some(TrialOutcome::Failed {
                message: format!("step {index} ({label}) had wrong results{placement}"),
            })
        }
        StepResult::Error { message } => Some(TrialOutcome::Error {
            message: format!("step {index} ({label}): {message}"),
        }),
        StepResult::Passed | StepResult::Skipped { .. } => None,
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

/// Adds a group of probe steps to the trial's timing: its settle and probing time, its
/// counts and, for the first group that probed after a policy change with every step passing,
/// the enforcement latency from `changed` (taken: later groups after the same change do not
/// measure it again) to the start of the pass after which its last step matched. The latency
/// is recorded under the group's first step.
fn record_probe_group(
    timing: &mut TrialTiming,
    group: &[(usize, &ProbePlan)],
    judged: &[(StepReport, StepClock)],
    clock: &GroupClock,
    changed: &mut Option<Instant>,
) {
    timing.settle += clock.settle;
    timing.probing += clock.probing;
    let probed: Vec<(&ProbePlan, &StepReport, &StepClock)> = group
        .iter()
        .zip(judged)
        .filter(|(_, (_, c))| c.probed)
        .map(|((_, p), (r, c))| (*p, r, c))
        .collect();
    if probed.is_empty() {
        return;
    }
    timing.probe_groups += 1;
    if probed
        .iter()
        .any(|(p, _, _)| p.expected.entries().any(|(_, _, allowed)| !*allowed))
    {
        timing.deny_groups += 1;
    }
    for (probe, _, c) in &probed {
        timing.probe_steps += 1;
        if probe.expected.entries().any(|(_, _, allowed)| !*allowed) {
            timing.deny_steps += 1;
        }
        timing.probes += c.probes;
    }
    let matched: Option<Vec<Instant>> = probed
        .iter()
        .map(|(_, r, c)| {
            (r.result == StepResult::Passed)
                .then_some(c.matched_at)
                .flatten()
        })
        .collect();
    if let Some(at) = changed.take()
        && let Some(last) = matched.and_then(|m| m.into_iter().max())
    {
        timing
            .latencies
            .push((probed[0].1.index, last.saturating_duration_since(at)));
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
                cluster.label_namespace(
                    real,
                    LabelChange {
                        set: &put,
                        remove: &drop,
                    },
                )?;
            }
            Action::LabelPod { pod, set, remove } => {
                let (Some(model), Some(real)) = (plan.world.pod(pod), realized.pods.get(pod))
                else {
                    continue;
                };
                let (put, drop) = restore(&model.labels, set, remove);
                cluster.label_pod(
                    real,
                    LabelChange {
                        set: &put,
                        remove: &drop,
                    },
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}
