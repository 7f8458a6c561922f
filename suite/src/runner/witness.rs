//! Witnesses: a blocked observation counts only when its destination is shown alive in the same
//! step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::RunOptions;
use super::probe::{Member, describe};
use crate::backend::{Cluster, ProbeJob, RealizedWorld};
use crate::reachability::Outcome;

/// A blocked observation counts only when its destination is shown alive in the same step:
/// some source reached it on this port and protocol, or it answers a probe of its own address
/// from inside its own network namespace (traffic that never leaves the pod, so no policy
/// applies). Blocked cells of a destination that is not alive become errors.
///
/// The witness probes of every step of a group go out in one call; returns the calls made.
pub(super) fn witness_destinations(
    cluster: &dyn Cluster,
    realized: &RealizedWorld,
    members: &mut [Member<'_>],
    opts: &RunOptions,
) -> usize {
    let mut jobs: Vec<(usize, ProbeJob)> = Vec::new();
    let mut dead: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); members.len()];
    for (m, member) in members.iter().enumerate() {
        let mut suspects: BTreeSet<String> = BTreeSet::new();
        let mut alive: BTreeSet<String> = BTreeSet::new();
        for (_, to, o) in member.observed.entries() {
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
        for to in suspects.difference(&alive) {
            match realized.pods.get(to) {
                Some(pod) if !pod.container.is_empty() || pod.netns.is_some() => jobs.push((
                    m,
                    ProbeJob {
                        from: pod.clone(),
                        to_model: to.clone(),
                        to_ip: pod.ip,
                        port: member.probe.port,
                        protocol: member.probe.protocol,
                        timeout: opts.timeouts.probe_connect,
                    },
                )),
                Some(_) => {
                    // The external host: nothing to exec into. Its liveness was shown by the
                    // pre-flight, and it runs no policy.
                }
                None => {
                    dead[m].insert(to.clone(), "the pod was not realized".into());
                }
            }
        }
    }
    let batch: Vec<ProbeJob> = jobs.iter().map(|(_, j)| j.clone()).collect();
    // A witness that does not connect at once (a probe that failed on its way, a pod busy
    // starting its probe) is tried again within the settle time before its destination is
    // called not alive.
    let retry = opts
        .timeouts
        .retry(Instant::now() + opts.timeouts.probe_settle, None, false);
    let settling = cluster.probe_until(&batch, &|_, o| *o == Outcome::Connected, &retry);
    let calls = settling.calls;
    for ((m, job), settled) in jobs.iter().zip(settling.jobs) {
        members[*m].clock.probes += settled.probes;
        let outcome = settled.last;
        if outcome != Outcome::Connected {
            dead[*m].insert(
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
    for (member, dead) in members.iter_mut().zip(dead) {
        let pods = member.observed.pods().to_vec();
        for from in &pods {
            for (to, why) in &dead {
                if matches!(member.observed.get(from, to), Some(Outcome::Blocked(_))) {
                    member.observed.set(
                        from,
                        to,
                        Outcome::Error(format!(
                            "blocked, but destination {to} is not alive on {}/{}: {why}",
                            member.probe.protocol, member.probe.port
                        )),
                    );
                }
            }
        }
    }
    calls
}
