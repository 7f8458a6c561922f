//! The vocabulary of probing until the outcomes settle, shared by the [`super::Cluster`]
//! boundary and the probers behind it: which outcome a probe waits for ([`Wanted`]), how it is
//! retried ([`Retry`]), what its probes came to ([`Settled`], [`Settling`]), and retrying in
//! passes over a batch prober ([`settle_in_passes`]).

use std::time::{Duration, Instant};

use super::ProbeJob;
use crate::reachability::Outcome;

/// Whether the outcome of job `i` is the one the caller waits for.
pub type Wanted<'a> = dyn Fn(usize, &Outcome) -> bool + Sync + 'a;

/// How probes whose outcome is not yet the wanted one are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// No retry starts after this.
    pub deadline: Instant,
    /// The pause before the first retry; it doubles with every retry.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// The connect timeout of a retry whose wanted outcome is a connection, where shorter than
    /// the job's own (a connection is one whatever the timeout; only the wait for the next try
    /// shortens). First probes keep the job's timeout.
    pub reach_timeout: Option<Duration>,
    /// Whether the first probes are samples of the path (the pre-flight's: every pair waits for
    /// a connection with the full timeout, so the slow end of the path is not cut off).
    pub sample: bool,
}

impl Retry {
    /// The pause after `pause`.
    pub fn next(&self, pause: Duration) -> Duration {
        (pause * 2).min(self.max)
    }

    /// Job `i` as it is probed again: with [`Retry::reach_timeout`] where it waits for a
    /// connection.
    pub fn again(&self, i: usize, job: &ProbeJob, wanted: &Wanted<'_>) -> ProbeJob {
        let mut job = job.clone();
        if let Some(t) = self.reach_timeout
            && wanted(i, &Outcome::Connected)
        {
            job.timeout = job.timeout.min(t);
        }
        job
    }
}

/// What one job's probes came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The first probe's outcome.
    pub first: Outcome,
    /// How long the first probe took.
    pub first_took: Duration,
    /// The last probe's outcome.
    pub last: Outcome,
    /// When the first probe with the wanted outcome was sent: the job's state was the wanted
    /// one from then on, as far as the probes can tell.
    pub matched_at: Option<Instant>,
    /// Probes made for the job.
    pub probes: usize,
}

/// What [`super::Cluster::probe_until`] came to: one [`Settled`] per job, in job order, and the
/// transport calls made.
#[derive(Debug, Clone, Default)]
pub struct Settling {
    /// Per job.
    pub jobs: Vec<Settled>,
    /// Execs or netns probes made.
    pub calls: usize,
}

/// [`super::Cluster::probe_until`] in passes: every job, then after each pass the jobs whose outcome is
/// not wanted yet, with a pause between passes that starts at `retry.first` and doubles, the
/// pass's own duration counted against it. For probers that batch (one exec per source pod).
pub fn settle_in_passes(
    probe_all: impl Fn(&[ProbeJob]) -> Vec<Outcome>,
    calls: impl Fn(&[ProbeJob]) -> usize,
    jobs: &[ProbeJob],
    wanted: &Wanted<'_>,
    retry: &Retry,
) -> Settling {
    let mut out = Settling::default();
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    let mut pause = retry.first;
    let mut first_pass = true;
    loop {
        let batch: Vec<ProbeJob> = pending
            .iter()
            .map(|i| {
                if first_pass {
                    jobs[*i].clone()
                } else {
                    retry.again(*i, &jobs[*i], wanted)
                }
            })
            .collect();
        let sent = Instant::now();
        out.calls += calls(&batch);
        let outcomes = probe_all(&batch);
        let took = sent.elapsed();
        let mut still = Vec::new();
        for (i, outcome) in pending.iter().zip(outcomes) {
            let hit = wanted(*i, &outcome);
            if first_pass {
                out.jobs.push(Settled {
                    first_took: took,
                    first: outcome.clone(),
                    last: outcome,
                    matched_at: hit.then_some(sent),
                    probes: 1,
                });
            } else {
                let s = &mut out.jobs[*i];
                s.probes += 1;
                s.last = outcome;
                if hit {
                    s.matched_at = Some(sent);
                }
            }
            if !hit {
                still.push(*i);
            }
        }
        first_pass = false;
        pending = still;
        if pending.is_empty() || Instant::now() >= retry.deadline {
            return out;
        }
        std::thread::sleep(pause.saturating_sub(took));
        pause = retry.next(pause);
    }
}
