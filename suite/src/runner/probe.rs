//! Probe steps: the jobs of a step, probed with retries until they settle, destinations
//! witnessed alive, and the step's verdict, tables and rerun commands.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use super::witness::witness_destinations;
use super::{ProbeTarget, RunOptions};
use crate::backend::{Capabilities, Cluster, Placement, ProbeJob, RealizedWorld};
use crate::features;
use crate::plan::{Plan, ProbePlan};
use crate::reachability::{
    Comparison, CrossNode, Observed, Outcome, TruthTables, Verdict, placement_mark, verdict,
    wrong_placement,
};
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

/// What a probe step's clock saw: when it matched and how many probes it made. A step
/// that did not probe (gated, or its jobs could not be made) leaves it empty.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StepClock {
    /// Whether the step probed at all.
    pub probed: bool,
    /// When the probe was sent after which the step's observed table matched its expectation
    /// (the latest of its pairs' first matching probes).
    pub matched_at: Option<Instant>,
    /// Probes made, one per pair and pass, witness probes included.
    pub probes: usize,
}

/// Where a group of probe steps spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GroupClock {
    /// The first pass over every pair of every step, and the witness probes.
    pub probing: Duration,
    /// Re-probing pairs that disagreed after the first pass, until every step matched or
    /// settling gave up (the whole-matrix second try included).
    pub settle: Duration,
}

/// One step of a group while it is probed.
pub(super) struct Member<'a> {
    /// The step's pairs (only the cross-node ones under `--placement cross-node`).
    pub(super) probe: Cow<'a, ProbePlan>,
    jobs: Vec<ProbeJob>,
    /// What each pair did, as last probed.
    pub(super) observed: Observed,
    comparison: Option<Comparison>,
    first_wrong: Vec<(String, String)>,
    /// The step's clock.
    pub(super) clock: StepClock,
    report: StepReport,
}

impl Member<'_> {
    fn passed(&self) -> bool {
        self.comparison.as_ref().is_some_and(Comparison::passed)
    }
}

/// Probe steps that follow each other with nothing changed between them are one group: their
/// pairs are probed side by side, so the group waits out one connect timeout where its steps
/// one after another would wait out one each. Each step keeps its own
/// expectation, retries, witnesses and verdict. Returns each step's report and clock, in
/// order, and the group's clock.
pub(super) fn probe_group(
    cluster: &dyn Cluster,
    caps: &Capabilities,
    plan: &Plan,
    realized: &RealizedWorld,
    steps: &[(usize, &ProbePlan)],
    opts: &RunOptions,
) -> (Vec<(StepReport, StepClock)>, GroupClock) {
    let mut done: Vec<Option<(StepReport, StepClock)>> = vec![None; steps.len()];
    let mut slots = Vec::new();
    let mut group: Vec<Member<'_>> = Vec::new();
    for (slot, (index, probe)) in steps.iter().enumerate() {
        let mut report = StepReport {
            index: *index,
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
            placement: None,
        };
        if let Some(result) = step_gate(probe, caps, opts) {
            report.result = result;
            done[slot] = Some((report, StepClock::default()));
            continue;
        }
        let probe = judged_pairs(probe, realized, opts);
        let pods = probe.expected.pods().to_vec();
        match jobs_for(plan, realized, &probe, opts) {
            Ok(jobs) => {
                slots.push(slot);
                group.push(Member {
                    probe,
                    jobs,
                    observed: Observed::new(pods),
                    comparison: None,
                    first_wrong: Vec::new(),
                    clock: StepClock {
                        probed: true,
                        ..StepClock::default()
                    },
                    report,
                });
            }
            Err(message) => {
                report.result = StepResult::Error { message };
                done[slot] = Some((report, StepClock::default()));
            }
        }
    }
    let mut clock = GroupClock::default();
    if !group.is_empty() {
        let started = Instant::now();
        let calls = settle(cluster, plan, &mut group, opts, &mut clock);
        let witness_calls = witness_destinations(cluster, realized, &mut group, opts);
        clock.probing = started.elapsed().saturating_sub(clock.settle);
        for (n, (slot, member)) in slots.into_iter().zip(group).enumerate() {
            // The group's probe calls are counted once, on its first step that probed.
            let calls = if n == 0 { calls + witness_calls } else { 0 };
            done[slot] = Some(judge(member, plan, realized, opts, calls));
        }
    }
    let judged = done
        .into_iter()
        .map(|d| d.expect("every step of the group is judged"))
        .collect();
    (judged, clock)
}

/// A step's verdict from what it observed last.
fn judge(
    mut member: Member<'_>,
    plan: &Plan,
    realized: &RealizedWorld,
    opts: &RunOptions,
    calls: usize,
) -> (StepReport, StepClock) {
    let probe = member.probe.as_ref();
    let comparison = Comparison::new(&probe.expected, &member.observed, plan.block_rule);
    let step = &mut member.report;
    step.calls = calls;
    step.flaky = member
        .first_wrong
        .iter()
        .filter(|(f, t)| comparison.table.get(f, t) == Some(&Verdict::Match))
        .map(|(f, t)| format!("{f} -> {t}"))
        .collect();
    step.correct = comparison.correct;
    step.wrong = comparison.wrong;
    step.errors = comparison.errors;
    step.result = StepResult::judged(&comparison);
    let cross_node = cross_node(probe, realized);
    step.placement = wrong_placement(&comparison, &cross_node);
    step.grids = Some(grids(
        probe,
        &member.observed,
        &comparison,
        cross_node,
        &member.jobs,
    ));
    if !comparison.passed() {
        explain_failure(
            step,
            probe,
            &member.observed,
            &comparison,
            &member.jobs,
            opts,
        );
    }
    (member.report, member.clock)
}

/// Probes `jobs` (each tagged with the member it belongs to) once each, in one call, and
/// records the outcomes in their members; returns the calls made.
fn pass(
    cluster: &dyn Cluster,
    plan: &Plan,
    members: &mut [Member<'_>],
    jobs: Vec<(usize, ProbeJob)>,
) -> usize {
    let (owners, batch): (Vec<usize>, Vec<ProbeJob>) = jobs.into_iter().unzip();
    let calls = cluster.probe_calls(&batch);
    let outcomes = cluster.probe(&batch);
    for ((m, job), outcome) in owners.iter().zip(&batch).zip(outcomes) {
        let member = &mut members[*m];
        member.observed.set(&job.from.model, &job.to_model, outcome);
        member.clock.probes += 1;
    }
    for member in members.iter_mut() {
        member.comparison = Some(Comparison::new(
            &member.probe.expected,
            &member.observed,
            plan.block_rule,
        ));
    }
    calls
}

/// Probes every job of every member and probes again each one whose outcome disagrees with its
/// expectation, on its own and after a pause that starts short and doubles, until it agrees or
/// the settle deadline passes (enforcement usually takes milliseconds; the moment the probe
/// that first agreed was sent is the pair's enforcement time). A step still wrong then has its
/// whole matrix probed once more, afresh, as upstream's second try does. Returns the probe
/// calls made; records in `clock` how long settling took after the first probes.
fn settle(
    cluster: &dyn Cluster,
    plan: &Plan,
    members: &mut [Member<'_>],
    opts: &RunOptions,
    clock: &mut GroupClock,
) -> usize {
    let tagged: Vec<(usize, ProbeJob)> = members
        .iter()
        .enumerate()
        .flat_map(|(m, member)| member.jobs.iter().map(move |j| (m, j.clone())))
        .collect();
    let expected: Vec<Option<bool>> = tagged
        .iter()
        .map(|(m, j)| {
            members[*m]
                .probe
                .expected
                .get(&j.from.model, &j.to_model)
                .copied()
        })
        .collect();
    let rule = plan.block_rule;
    let wanted = |i: usize, o: &Outcome| {
        expected[i].is_some_and(|allowed| verdict(allowed, Some(o), rule) == Verdict::Match)
    };
    // A pair that should connect waits no longer than a retry would for its first probe too: a
    // connection is one whatever the timeout, and one the change has not let through yet costs
    // the short wait, not the full timeout. (Pairs still wrong when settling ends are probed
    // again with the full timeout below.)
    let started = Instant::now();
    let retry = opts.timeouts.retry(
        started + opts.timeouts.probe_settle,
        opts.timeouts.probe_reach,
        false,
    );
    let batch: Vec<ProbeJob> = tagged
        .iter()
        .enumerate()
        .map(|(i, (_, j))| retry.again(i, j, &wanted))
        .collect();
    let settling = cluster.probe_until(&batch, &wanted, &retry);
    let mut calls = settling.calls;
    let mut first_done = started;
    let mut matched: Vec<Option<Instant>> = vec![Some(started); members.len()];
    for (i, ((m, job), settled)) in tagged.iter().zip(settling.jobs).enumerate() {
        let member = &mut members[*m];
        member
            .observed
            .set(&job.from.model, &job.to_model, settled.last);
        member.clock.probes += settled.probes;
        if !wanted(i, &settled.first) {
            member
                .first_wrong
                .push((job.from.model.clone(), job.to_model.clone()));
        }
        first_done = first_done.max(started + settled.first_took);
        matched[*m] = match (matched[*m], settled.matched_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    for (member, at) in members.iter_mut().zip(matched) {
        member.comparison = Some(Comparison::new(
            &member.probe.expected,
            &member.observed,
            rule,
        ));
        if member.passed() {
            member.clock.matched_at = at;
        }
    }
    // Still wrong: probe the whole matrix of those steps once more, afresh.
    let wrong: Vec<usize> = (0..members.len())
        .filter(|m| !members[*m].passed())
        .collect();
    if !wrong.is_empty() {
        let again: Vec<(usize, ProbeJob)> = wrong
            .iter()
            .flat_map(|m| members[*m].jobs.iter().map(move |j| (*m, j.clone())))
            .collect();
        for m in &wrong {
            let pods = members[*m].probe.expected.pods().to_vec();
            members[*m].observed = Observed::new(pods);
        }
        let sent = Instant::now();
        calls += pass(cluster, plan, members, again);
        for m in &wrong {
            if members[*m].passed() {
                members[*m].clock.matched_at = Some(sent);
            }
        }
    }
    clock.settle = first_done.elapsed();
    calls
}

/// Which of a step's pairs cross nodes.
fn cross_node(probe: &ProbePlan, realized: &RealizedWorld) -> CrossNode {
    let mut table = CrossNode::new(probe.expected.pods().to_vec());
    for (from, to, _) in probe.expected.entries() {
        if let Some(cross) = realized.cross_node(from, to) {
            table.set(from, to, cross);
        }
    }
    table
}

/// The pairs of a step the run judges: all of them, or with `--placement cross-node` only
/// those whose pods run on different nodes (a pair whose placement is not known stays).
fn judged_pairs<'a>(
    probe: &'a ProbePlan,
    realized: &RealizedWorld,
    opts: &RunOptions,
) -> Cow<'a, ProbePlan> {
    if opts.placement != Placement::CrossNode {
        return Cow::Borrowed(probe);
    }
    let mut only = probe.clone();
    for (from, to, _) in probe.expected.entries() {
        if realized.cross_node(from, to) == Some(false) {
            only.expected.clear(from, to);
        }
    }
    Cow::Owned(only)
}

/// The step's grids for the reports; every pair's rerun command when the step did not pass.
fn grids(
    probe: &ProbePlan,
    observed: &Observed,
    comparison: &Comparison,
    cross_node: CrossNode,
    jobs: &[ProbeJob],
) -> crate::report::StepGrids {
    crate::report::StepGrids {
        expected: probe.expected.clone(),
        observed: observed.clone(),
        comparison: comparison.table.clone(),
        cross_node,
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
    if let Some(grids) = &step.grids
        && !grids.cross_node.is_empty()
    {
        tables.push_str("\nplacement (S same node, C cross-node):\n");
        tables.push_str(&grids.cross_node.render(placement_mark));
    }
    if let Some(placement) = &step.placement {
        tables.push_str(&format!("\n{placement}\n"));
    }
    step.tables = Some(tables);
    step.rerun = jobs
        .iter()
        .filter(|j| comparison.table.get(&j.from.model, &j.to_model) != Some(&Verdict::Match))
        .map(ProbeJob::rerun_command)
        .collect();
}
