//! Probe steps: the jobs of a step, probed with retries until they settle, destinations
//! witnessed alive, and the step's verdict, tables and rerun commands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{ProbeTarget, RunOptions};
use crate::backend::{Capabilities, Cluster, ProbeJob, RealizedWorld};
use crate::features;
use crate::plan::{Plan, ProbePlan};
use crate::reachability::{Comparison, Observed, Outcome, TruthTables, Verdict};
use crate::report::{StepReport, StepResult};
use crate::world::Protocol;

pub(super) fn probe_label(p: &ProbePlan) -> String {
    format!("{}/{}", p.protocol, p.port)
}

/// Whether a probe step runs: its protocol must be judged by the run and carried by the target.
/// A standard protocol the target cannot carry is an error, never a silent skip.
pub(super) fn step_gate(
    probe: &ProbePlan,
    caps: &Capabilities,
    opts: &RunOptions,
) -> Option<StepResult> {
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

/// An outcome in words, for error messages.
pub(super) fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Connected => "connected".into(),
        Outcome::Blocked(crate::reachability::BlockKind::Timeout) => "timed out".into(),
        Outcome::Blocked(crate::reachability::BlockKind::Refused) => "refused".into(),
        Outcome::Error(e) => format!("failed ({e})"),
    }
}

/// The probe of one pair: upstream worlds go through the destination's Service when asked.
pub(super) fn job(
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
    clock: &mut StepClock,
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
    clock.probes += jobs.len();
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

/// What a probe step's clock saw: how long it settled, when it first matched, how many probes
/// it made. A step that did not probe (gated, or its jobs could not be made) leaves it empty.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StepClock {
    /// Whether the step probed at all.
    pub probed: bool,
    /// Time spent after the first pass re-probing until the table matched or settling gave up.
    pub settle: Duration,
    /// The end of the first probe pass whose observed table matched the expectation.
    pub matched_at: Option<Instant>,
    /// Probes made, one per pair and pass, witness probes included.
    pub probes: usize,
}

/// Probes one step, retrying disagreeing probes until they settle, and judges it.
pub(super) fn probe_step(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    realized: &RealizedWorld,
    probe: &ProbePlan,
    index: usize,
    opts: &RunOptions,
) -> (StepReport, StepClock) {
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
    let mut clock = StepClock::default();
    if let Some(result) = step_gate(probe, caps, opts) {
        step.result = result;
        return (step, clock);
    }
    let jobs = match jobs_for(plan, realized, probe, opts) {
        Ok(jobs) => jobs,
        Err(message) => {
            step.result = StepResult::Error { message };
            return (step, clock);
        }
    };
    clock.probed = true;
    let (mut observed, first_wrong) = settle(
        cluster,
        plan,
        probe,
        &jobs,
        opts,
        &mut step.calls,
        &mut clock,
    );
    step.calls += witness_destinations(cluster, realized, probe, &mut observed, opts, &mut clock);
    let comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
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
    step.grids = Some(grids(probe, &observed, &comparison, &jobs));
    if !comparison.passed() {
        explain_failure(&mut step, probe, &observed, &comparison, &jobs, opts);
    }
    (step, clock)
}

/// Records each job's outcome in `observed`.
fn observe(observed: &mut Observed, jobs: &[ProbeJob], outcomes: Vec<Outcome>) {
    for (job, outcome) in jobs.iter().zip(outcomes) {
        observed.set(&job.from.model, &job.to_model, outcome);
    }
}

/// The pairs a comparison does not find as expected.
fn disagreeing(c: &Comparison) -> Vec<(String, String)> {
    c.table
        .entries()
        .filter(|(_, _, v)| **v != Verdict::Match)
        .map(|(f, t, _)| (f.to_string(), t.to_string()))
        .collect()
}

/// Probes every job, then retries only the disagreeing ones until they agree or the settle
/// deadline passes; still wrong, the whole matrix is probed once more. Returns what was
/// observed last and the pairs that disagreed at first; adds the probe calls made to `calls`,
/// and to `clock` the probes made, the time settling took and when a pass first matched.
fn settle(
    cluster: &dyn Cluster,
    plan: &Plan,
    probe: &ProbePlan,
    jobs: &[ProbeJob],
    opts: &RunOptions,
    calls: &mut usize,
    clock: &mut StepClock,
) -> (Observed, Vec<(String, String)>) {
    let mut observed = Observed::new(probe.expected.pods().to_vec());
    *calls += cluster.probe_calls(jobs);
    clock.probes += jobs.len();
    observe(&mut observed, jobs, cluster.probe(jobs));
    let first = Comparison::new(&probe.expected, &observed, plan.block_rule);
    let first_wrong = disagreeing(&first);
    let settling = Instant::now();
    let matched = |c: &Comparison, clock: &mut StepClock| {
        if c.passed() && clock.matched_at.is_none() {
            clock.matched_at = Some(Instant::now());
        }
    };
    matched(&first, clock);
    // Retry only the disagreeing probes until they agree or the deadline passes.
    let deadline = Instant::now() + opts.timeouts.probe_settle;
    let mut comparison = first;
    while !comparison.passed() && Instant::now() < deadline {
        std::thread::sleep(opts.timeouts.probe_retry_interval);
        let wrong = disagreeing(&comparison);
        let retry: Vec<ProbeJob> = jobs
            .iter()
            .filter(|j| {
                wrong
                    .iter()
                    .any(|(f, t)| *f == j.from.model && *t == j.to_model)
            })
            .cloned()
            .collect();
        *calls += cluster.probe_calls(&retry);
        clock.probes += retry.len();
        observe(&mut observed, &retry, cluster.probe(&retry));
        comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
        matched(&comparison, clock);
    }
    // Still wrong: probe the whole matrix once more, as upstream's second try does.
    if !comparison.passed() {
        let mut second = Observed::new(probe.expected.pods().to_vec());
        *calls += cluster.probe_calls(jobs);
        clock.probes += jobs.len();
        observe(&mut second, jobs, cluster.probe(jobs));
        matched(
            &Comparison::new(&probe.expected, &second, plan.block_rule),
            clock,
        );
        observed = second;
    }
    clock.settle = settling.elapsed();
    (observed, first_wrong)
}

/// The step's grids for the reports; every pair's rerun command when the step did not pass.
fn grids(
    probe: &ProbePlan,
    observed: &Observed,
    comparison: &Comparison,
    jobs: &[ProbeJob],
) -> crate::report::StepGrids {
    crate::report::StepGrids {
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
    }
}

/// A step that did not pass: its three truth tables, its probe errors and the commands that
/// rerun the pairs that went wrong.
fn explain_failure(
    step: &mut StepReport,
    probe: &ProbePlan,
    observed: &Observed,
    comparison: &Comparison,
    jobs: &[ProbeJob],
    opts: &RunOptions,
) {
    let mut tables = TruthTables {
        expected: &probe.expected,
        observed,
        comparison,
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
