//! Probers: how one probe (or a batch of them) from a source pod to a destination is carried
//! out, and the bounded pool they run on. [`exec::ExecProber`] execs into the agnhost pods
//! through the API server (real clusters), [`netns::NetnsProber`] connects from inside the
//! pod's network namespace on this machine (the local cluster), [`hybrid::HybridProber`] picks
//! per probe.

pub mod exec;
pub mod hybrid;
pub mod netns;

use crate::backend::ProbeJob;
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
