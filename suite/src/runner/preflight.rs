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
