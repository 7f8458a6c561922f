//! Probers: how one probe (or a batch of them) from a source pod to a destination is carried
//! out, and the bounded pool they run on. [`exec::ExecProber`] execs into the agnhost pods
//! through the API server (real clusters), [`netns::NetnsProber`] connects from inside the
//! pod's network namespace on this machine (the local cluster), [`hybrid::HybridProber`] picks
//! per probe.

pub mod exec;
pub mod hybrid;
pub mod netns;
pub mod session;

use std::time::Instant;

use crate::backend::{ProbeJob, Retry, Settled, Settling, Wanted, settle_in_passes};
use crate::reachability::Outcome;

/// How probes are carried out.
pub trait Prober: Send + Sync {
    /// One probe; blocking. Outcomes are tri-state; transport faults are `Error`.
    fn probe(&self, job: &ProbeJob) -> Outcome;
    /// How many probes may run at once.
    fn parallelism(&self) -> usize;
    /// A short name for reports (`exec`, `netns`).
    fn name(&self) -> &'static str;
    /// Many probes, outcomes in job order. The default runs [`Prober::probe`] on a pool.
    fn probe_all(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        run_pool(self, jobs)
    }
    /// How many calls to the transport (execs, netns probes) [`Prober::probe_all`] makes.
    fn calls(&self, jobs: &[ProbeJob]) -> usize {
        jobs.len()
    }
    /// What actually carried the run's probes so far, for reports; [`Prober::name`] unless the
    /// prober picks per probe.
    fn used(&self) -> String {
        self.name().into()
    }
    /// Execs this prober has opened so far (0 for probers that do not exec).
    fn execs(&self) -> usize {
        0
    }
    /// How long the connections it made took, where the prober can time a connection alone
    /// (not an exec around it).
    fn connect_times(&self) -> Option<&ConnectTimes> {
        None
    }
    /// Probes every job, then probes again each one whose outcome is not `wanted` yet, until
    /// it is or the retry deadline passes. The default works in passes over
    /// [`Prober::probe_all`]: after each pass, the jobs still unwanted are probed again.
    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        in_passes(self, jobs, wanted, retry)
    }
}

/// [`Prober::probe_until`] for probers whose probes are cheap and run side by side: every job
/// is probed, and each one whose outcome is not wanted yet again on its own, after a pause that
/// starts at `retry.first` and doubles, until it is wanted or the deadline passes. `probe` gets
/// the job as it is to be probed and whether its connection is a sample of the path (a first
/// probe where [`Retry::sample`] says so).
pub async fn settle_each<F, Fut>(
    jobs: &[ProbeJob],
    wanted: &Wanted<'_>,
    retry: &Retry,
    probe: F,
) -> Settling
where
    F: Fn(ProbeJob, bool) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let jobs = futures::future::join_all(
        jobs.iter()
            .enumerate()
            .map(|(i, j)| settle_one(i, j.clone(), wanted, retry, &probe)),
    )
    .await;
    let calls = jobs.iter().map(|s| s.probes).sum();
    Settling { jobs, calls }
}

/// One job of [`settle_each`].
async fn settle_one<F, Fut>(
    i: usize,
    job: ProbeJob,
    wanted: &Wanted<'_>,
    retry: &Retry,
    probe: &F,
) -> Settled
where
    F: Fn(ProbeJob, bool) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let mut pause = retry.first;
    let again = retry.again(i, &job, wanted);
    let sent = Instant::now();
    let first = probe(job, retry.sample).await;
    let mut settled = Settled {
        first_took: sent.elapsed(),
        matched_at: wanted(i, &first).then_some(sent),
        last: first.clone(),
        first,
        probes: 1,
    };
    while settled.matched_at.is_none() && Instant::now() < retry.deadline {
        tokio::time::sleep(pause).await;
        pause = retry.next(pause);
        let sent = Instant::now();
        settled.last = probe(again.clone(), false).await;
        settled.probes += 1;
        if wanted(i, &settled.last) {
            settled.matched_at = Some(sent);
        }
    }
    settled
}

/// [`settle_in_passes`] over a prober's own [`Prober::probe_all`] and [`Prober::calls`].
pub fn in_passes<P: Prober + ?Sized>(
    prober: &P,
    jobs: &[ProbeJob],
    wanted: &Wanted<'_>,
    retry: &Retry,
) -> Settling {
    let (probe, calls) = (
        |b: &[ProbeJob]| prober.probe_all(b),
        |b: &[ProbeJob]| prober.calls(b),
    );
    settle_in_passes(probe, calls, jobs, wanted, retry)
}

/// The durations of the connections a prober made: the measured path a local run derives its
/// connect timeout from.
#[derive(Debug, Default)]
pub struct ConnectTimes {
    samples: std::sync::Mutex<Vec<std::time::Duration>>,
}

impl ConnectTimes {
    /// Records one connection's duration.
    pub fn record(&self, took: std::time::Duration) {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took);
    }

    /// The `q`-quantile (0 < q ≤ 1, nearest rank) of the durations so far and how many there
    /// are; `None` before the first.
    pub fn quantile(&self, q: f64) -> Option<(std::time::Duration, usize)> {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        samples.sort_unstable();
        let rank = (q * samples.len() as f64).ceil() as usize;
        let value = *samples.get(rank.clamp(1, samples.len().max(1)) - 1)?;
        Some((value, samples.len()))
    }
}

/// Runs blocking probes on a bounded rayon pool of their own (probers block on exec or on
/// netns threads, so they stay off the async runtime); outcomes come back in job order.
pub fn run_pool<P: Prober + ?Sized>(prober: &P, jobs: &[ProbeJob]) -> Vec<Outcome> {
    use rayon::prelude::*;
    let width = prober.parallelism().clamp(1, jobs.len().max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(width)
        .thread_name(|i| format!("probe-{i}"))
        .build();
    match pool {
        // One job per task (`with_max_len(1)`): probes block for up to a connect timeout, so
        // idle workers must take single jobs rather than wait behind a split range.
        Ok(pool) => pool.install(|| {
            jobs.par_iter()
                .with_max_len(1)
                .map(|job| prober.probe(job))
                .collect()
        }),
        Err(e) => jobs
            .iter()
            .map(|_| Outcome::Error(format!("no probe worker threads: {e}")))
            .collect(),
    }
}
