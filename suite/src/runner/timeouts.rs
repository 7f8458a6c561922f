//! Every wait the runner makes, named, and how the local cluster's connect timeout follows the
//! measured path.

use std::time::{Duration, Instant};

use crate::backend::Retry;

/// Every wait the runner makes, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// One probe's connect timeout.
    pub probe_connect: Duration,
    /// How long probes that disagree with their expectation are retried.
    pub probe_settle: Duration,
    /// The first pause before retrying disagreeing probes; it doubles on every retry.
    pub probe_retry_first: Duration,
    /// The longest pause between retries.
    pub probe_retry_max: Duration,
    /// How long the pre-flight waits for every pair of a trial to connect with no policy.
    pub preflight: Duration,
    /// The connect timeout of a retry that waits for a connection, where shorter than
    /// `probe_connect` (derived from the measured path, see [`DeriveConnect`]).
    pub probe_reach: Option<Duration>,
    /// Where the connect timeout is derived from the measured path (the local cluster, unless
    /// the user set one): the probe steps' timeout then follows the connections measured so
    /// far, the pre-flights' first of all, and `probe_connect` is only its ceiling (and the
    /// pre-flight's own timeout).
    pub derive_connect: Option<DeriveConnect>,
}

/// How a connect timeout follows the measured path: `multiple` × the p99.9 connect time of
/// the probes so far, never below `floor` nor above the target's timeout, once there are
/// `min_samples` of them.
///
/// A probe that waits for a connection (an allowed pair of a step; a retry of a pair that
/// should connect but has not yet, in the pre-flight or after a policy change) gets the
/// shorter `reach_multiple` × p99.9 (at least `reach_floor`): a connection is a connection
/// whatever the timeout, so a short one cannot pass anything; it only lets the next try come
/// sooner. A pair still wrong when settling ends is probed once more with the full timeout
/// before it is judged. The samples are the pre-flights' first probes, which every pair makes
/// with the full timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeriveConnect {
    /// The factor over the p99.9 connect time.
    pub multiple: u32,
    /// The shortest timeout it gives.
    pub floor: Duration,
    /// The factor for retries that wait for a connection.
    pub reach_multiple: u32,
    /// The shortest timeout of such a probe.
    pub reach_floor: Duration,
    /// Its timeout before enough of the path is measured (short waits for a connection are
    /// safe whatever the path; they only cost retries).
    pub reach_unmeasured: Duration,
    /// How many connections must have been measured first.
    pub min_samples: usize,
}

impl Timeouts {
    /// The connect timeout for a trial's probe steps: derived from `measured` (the p99.9 connect
    /// time and the number of samples) where the run derives it, else `probe_connect`.
    pub fn step_connect(&self, measured: Option<(Duration, usize)>) -> Duration {
        match (self.derive_connect, measured) {
            (Some(d), Some((p999, samples))) if samples >= d.min_samples => {
                (p999 * d.multiple).max(d.floor).min(self.probe_connect)
            }
            _ => self.probe_connect,
        }
    }

    /// The connect timeout of a retry that waits for a connection, where the run derives one
    /// (see [`DeriveConnect`]).
    pub fn reach_connect(&self, measured: Option<(Duration, usize)>) -> Option<Duration> {
        let d = self.derive_connect?;
        let reach = match measured {
            Some((p999, samples)) if samples >= d.min_samples => {
                (p999 * d.reach_multiple).max(d.reach_floor)
            }
            _ => d.reach_unmeasured,
        };
        Some(reach.min(self.probe_connect))
    }
}

impl Timeouts {
    /// How probes are retried until `deadline`: the run's pauses, with `reach_timeout` for
    /// retries that wait for a connection and `sample` where the first probes measure the path.
    pub fn retry(&self, deadline: Instant, reach_timeout: Option<Duration>, sample: bool) -> Retry {
        Retry {
            deadline,
            first: self.probe_retry_first,
            max: self.probe_retry_max,
            reach_timeout,
            sample,
        }
    }

    /// Defaults for a target: the local cluster answers fast; real clusters get upstream's 3 s.
    pub fn for_target(local: bool) -> Timeouts {
        Timeouts {
            probe_connect: if local {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3)
            },
            probe_settle: Duration::from_secs(10),
            probe_reach: None,
            derive_connect: local.then_some(DeriveConnect {
                multiple: 20,
                floor: Duration::from_millis(200),
                reach_multiple: 5,
                reach_floor: Duration::from_millis(20),
                reach_unmeasured: Duration::from_millis(100),
                min_samples: 20,
            }),
            probe_retry_first: Duration::from_millis(10),
            probe_retry_max: Duration::from_millis(50),
            preflight: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_connect_timeout_follows_the_measured_path_within_its_bounds() {
        let local = Timeouts::for_target(true);
        let ms = Duration::from_millis;
        // Too few samples: the target's own timeout, and a short wait for connections.
        assert_eq!(local.step_connect(Some((ms(5), 3))), ms(1000));
        assert_eq!(local.reach_connect(None), Some(ms(100)));
        // 20 × p99.9, at least 200 ms, at most the target's 1 s; 5 × p99.9, at least 20 ms.
        assert_eq!(local.step_connect(Some((ms(2), 500))), ms(200));
        assert_eq!(local.step_connect(Some((ms(16), 500))), ms(320));
        assert_eq!(local.step_connect(Some((ms(90), 500))), ms(1000));
        assert_eq!(local.reach_connect(Some((ms(2), 500))), Some(ms(20)));
        assert_eq!(local.reach_connect(Some((ms(16), 500))), Some(ms(80)));
        // A real cluster keeps upstream's 3 s and derives nothing.
        let real = Timeouts::for_target(false);
        assert_eq!(
            real.step_connect(Some((ms(2), 500))),
            Duration::from_secs(3)
        );
        assert_eq!(real.reach_connect(Some((ms(2), 500))), None);
    }
}
