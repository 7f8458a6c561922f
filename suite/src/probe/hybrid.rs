//! The hybrid prober: from a network namespace on this machine where the source pod has one
//! (the local cluster reached through its kubeconfig), through exec everywhere else.

use crate::backend::{ProbeJob, Retry, Settling, Wanted};
use crate::reachability::Outcome;

use super::Prober;
use super::exec::ExecProber;
use super::netns::NetnsProber;

/// Probes pods that live in a network namespace on this machine (the local cluster reached
/// through its kubeconfig) from inside it, and every other pod through exec.
pub struct HybridProber {
    /// Probes pods elsewhere.
    pub exec: ExecProber,
    /// Probes pods in a network namespace on this machine.
    pub netns: NetnsProber,
    /// Whether some probe went through exec (for reports).
    pub used_exec: std::sync::atomic::AtomicBool,
    /// Whether some probe went from a network namespace (for reports).
    pub used_netns: std::sync::atomic::AtomicBool,
}

impl Prober for HybridProber {
    fn probe(&self, job: &ProbeJob) -> Outcome {
        if Self::is_local(job) {
            self.mark(true);
            self.netns.probe(job)
        } else {
            self.mark(false);
            self.exec.probe(job)
        }
    }
    fn parallelism(&self) -> usize {
        self.exec.parallelism
    }
    fn name(&self) -> &'static str {
        "exec or netns"
    }
    fn connect_times(&self) -> Option<&super::ConnectTimes> {
        // Exec probes cannot be timed alone; only a run that never exec'd has a measured path.
        (!self.used_exec.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| self.netns.connect_times())
            .flatten()
    }
    fn probe_all(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        let (local, remote): (Vec<usize>, Vec<usize>) =
            (0..jobs.len()).partition(|i| Self::is_local(&jobs[*i]));
        let pick = |idx: &[usize]| idx.iter().map(|i| jobs[*i].clone()).collect::<Vec<_>>();
        let mut out = vec![Outcome::Error("not probed".into()); jobs.len()];
        if !local.is_empty() {
            self.mark(true);
        }
        if !remote.is_empty() {
            self.mark(false);
        }
        for (idx, outcomes) in [
            (&local, self.netns.probe_all(&pick(&local))),
            (&remote, self.exec.probe_all(&pick(&remote))),
        ] {
            for (i, o) in idx.iter().zip(outcomes) {
                out[*i] = o;
            }
        }
        out
    }
    fn calls(&self, jobs: &[ProbeJob]) -> usize {
        let remote: Vec<ProbeJob> = jobs
            .iter()
            .filter(|j| !Self::is_local(j))
            .cloned()
            .collect();
        jobs.len() - remote.len() + self.exec.calls(&remote)
    }
    fn execs(&self) -> usize {
        self.exec.execs()
    }
    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        if !jobs.is_empty() && jobs.iter().all(Self::is_local) {
            self.mark(true);
            return self.netns.probe_until(jobs, wanted, retry);
        }
        if !jobs.is_empty() && !jobs.iter().any(Self::is_local) {
            self.mark(false);
            return self.exec.probe_until(jobs, wanted, retry);
        }
        super::in_passes(self, jobs, wanted, retry)
    }
    fn used(&self) -> String {
        let exec = self.used_exec.load(std::sync::atomic::Ordering::SeqCst);
        let netns = self.used_netns.load(std::sync::atomic::Ordering::SeqCst);
        match (exec, netns) {
            (true, true) => "exec+netns",
            (true, false) => "exec",
            (false, true) => "netns",
            (false, false) => "none",
        }
        .into()
    }
}

impl HybridProber {
    fn mark(&self, netns: bool) {
        let flag = if netns {
            &self.used_netns
        } else {
            &self.used_exec
        };
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_local(job: &ProbeJob) -> bool {
        job.from
            .netns
            .as_deref()
            .is_some_and(|p| std::path::Path::new(p).exists())
    }
}
