//! The netns prober: connects from inside the source pod's network namespace on this machine
//! (the local cluster's pods, whose namespace path the kubelet annotates).

use crate::backend::ProbeJob;
use crate::kube::NETNS_ANNOTATION;
use crate::reachability::Outcome;

use super::Prober;

/// The netns prober of the local cluster.
pub struct NetnsProber {
    /// Probes at once.
    pub parallelism: usize,
}

impl Prober for NetnsProber {
    fn probe(&self, job: &ProbeJob) -> Outcome {
        use netpol_local::probe::{ProbeResult, connect};
        let Some(netns) = &job.from.netns else {
            return Outcome::Error(format!(
                "pod {}/{} has no network namespace annotation ({NETNS_ANNOTATION})",
                job.from.namespace, job.from.name
            ));
        };
        let target = std::net::SocketAddr::new(job.to_ip, job.port);
        match connect(
            std::path::Path::new(netns),
            target,
            job.protocol,
            job.timeout,
        ) {
            ProbeResult::Connected => Outcome::Connected,
            ProbeResult::Timeout => Outcome::Blocked(crate::reachability::BlockKind::Timeout),
            ProbeResult::Refused => Outcome::Blocked(crate::reachability::BlockKind::Refused),
            ProbeResult::Unsupported(why) => Outcome::Error(format!("unsupported: {why}")),
            ProbeResult::Error(e) => Outcome::Error(e),
        }
    }
    fn parallelism(&self) -> usize {
        self.parallelism
    }
    fn name(&self) -> &'static str {
        "netns"
    }
}
