//! The netns prober: connects from inside the source pod's network namespace on this machine
//! (the local cluster's pods, whose namespace path the kubelet annotates).
//!
//! Its probes are cheap (a socket on the namespace's worker thread), so it retries each probe
//! on its own: a probe whose outcome is not the wanted one yet is sent again after a short
//! pause, while the other probes of the step go on. A step is then judged from the moment each
//! of its pairs reached its wanted state, not from the end of a pass that waited out a
//! connect timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use netpol_local::probe::{ProbeResult, connect_async};

use super::{ConnectTimes, Prober, Retry, Settled, Settling, Wanted};
use crate::backend::ProbeJob;
use crate::reachability::{BlockKind, Outcome};
use netpol_local::agent::pods::NETNS_ANNOTATION;

/// Linux's initial TCP retransmission timeout: a connection that took longer had its first SYN
/// lost (dropped by a policy on its way out, say) and is no sample of how long the path takes.
const FIRST_RETRANSMIT: Duration = Duration::from_secs(1);

/// The netns prober of the local cluster.
#[derive(Default)]
pub struct NetnsProber {
    /// Probes at once, when probing in a pool.
    pub parallelism: usize,
    /// How long its connections took.
    pub times: ConnectTimes,
}

impl NetnsProber {
    /// A prober running `parallelism` probes at once in a pool.
    pub fn new(parallelism: usize) -> NetnsProber {
        NetnsProber {
            parallelism,
            times: ConnectTimes::default(),
        }
    }

    /// One probe; a connection's duration becomes a sample of the path when `sample` is set
    /// (first probes only: a retry may wait less than the job's timeout, which would censor
    /// the slow end of the path).
    async fn probe_async(&self, job: &ProbeJob, sample: bool) -> Outcome {
        let Some(netns) = &job.from.netns else {
            return Outcome::Error(format!(
                "pod {}/{} has no network namespace annotation ({NETNS_ANNOTATION})",
                job.from.namespace, job.from.name
            ));
        };
        let target = std::net::SocketAddr::new(job.to_ip, job.port);
        let started = Instant::now();
        let result = connect_async(Path::new(netns), target, job.protocol, job.timeout).await;
        match result {
            ProbeResult::Connected => {
                let took = started.elapsed();
                if sample && took < FIRST_RETRANSMIT {
                    self.times.record(took);
                }
                Outcome::Connected
            }
            ProbeResult::Timeout => Outcome::Blocked(BlockKind::Timeout),
            ProbeResult::Refused => Outcome::Blocked(BlockKind::Refused),
            ProbeResult::Unsupported(why) => Outcome::Error(format!("unsupported: {why}")),
            ProbeResult::Error(e) => Outcome::Error(e),
        }
    }
}

impl NetnsProber {
    /// Probes every job once, side by side; what connects is a sample of the path.
    pub async fn measure(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        futures::future::join_all(jobs.iter().map(|j| self.probe_async(j, true))).await
    }
}

impl Prober for NetnsProber {
    fn probe(&self, job: &ProbeJob) -> Outcome {
        futures::executor::block_on(self.probe_async(job, true))
    }
    fn parallelism(&self) -> usize {
        self.parallelism
    }
    fn name(&self) -> &'static str {
        "netns"
    }
    fn connect_times(&self) -> Option<&ConnectTimes> {
        Some(&self.times)
    }
    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        // Every probe waits on its namespace's worker thread; this thread only waits for the
        // answers and keeps the pauses, so one small runtime of its own serves all of them.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let err = Outcome::Error(format!("no runtime for the probes: {e}"));
                let failed = Settled {
                    first_took: Duration::ZERO,
                    first: err.clone(),
                    last: err,
                    matched_at: None,
                    probes: 0,
                };
                return Settling {
                    jobs: vec![failed; jobs.len()],
                    calls: 0,
                };
            }
        };
        rt.block_on(super::settle_each(
            jobs,
            wanted,
            retry,
            |job, sample| async move { self.probe_async(&job, sample).await },
        ))
    }
}
