//! The pre-flight: before the first policy, every pair a trial probes must connect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::RunOptions;
use super::probe::{describe, job, step_gate};
use crate::backend::{Capabilities, Cluster, ProbeJob, RealizedWorld};
use crate::plan::Plan;
use crate::reachability::Outcome;
use crate::world::Protocol;

/// Before the first policy: every pair the trial will probe, on every port and protocol it
/// uses, must connect. A pair that does not is an infrastructure fault (a server that never
/// started, a broken route, a leftover policy), so the trial ends as an error naming the pairs.
pub(super) fn preflight(
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
    // The connect timeout the steps would get from the path measured so far (the target's own
    // before there is enough of it): a pair the trial before blocked costs no more here.
    let measured = cluster.connect_quantile(0.999);
    let connect = opts.timeouts.step_connect(measured);
    for job in &mut jobs {
        job.timeout = connect;
    }
    let started = Instant::now();
    // Each pair is retried on its own until it connects: a world handed on by the trial
    // before is clean as soon as the deletion of its policies is enforced.
    let retry = opts.timeouts.retry(
        started + opts.timeouts.preflight,
        opts.timeouts.reach_connect(measured),
        true,
    );
    let settling = cluster.probe_until(&jobs, &|_, o| *o == Outcome::Connected, &retry);
    let failing: Vec<(&ProbeJob, &Outcome)> = jobs
        .iter()
        .zip(&settling.jobs)
        .filter(|(_, s)| s.last != Outcome::Connected)
        .map(|(j, s)| (j, &s.last))
        .collect();
    if failing.is_empty() {
        return Ok(format!(
            "pre-flight: {} pairs connected with no policy in {:.1?} ({} probe calls)",
            jobs.len(),
            started.elapsed(),
            settling.calls
        ));
    }
    let listed: Vec<String> = failing
        .iter()
        .take(8)
        .map(|(j, o)| {
            format!(
                "{} → {} {}/{} {}",
                j.from.model,
                j.to_model,
                j.protocol,
                j.port,
                describe(o)
            )
        })
        .collect();
    let more = failing.len().saturating_sub(listed.len());
    Err(format!(
        "world not ready: {}{} after {:.0?} with no policy in place",
        listed.join(", "),
        if more > 0 {
            format!(" and {more} more pairs")
        } else {
            String::new()
        },
        opts.timeouts.preflight
    ))
}
