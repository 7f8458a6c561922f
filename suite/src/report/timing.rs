//! Where a trial's time went, and how long enforcement took to catch up with a policy change:
//! the runner records a [`TrialTiming`] per trial; this module summarizes the run's enforcement
//! latencies ([`LatencySummary`], nearest-rank percentiles) and renders both for the JUnit
//! properties, the terminal summary and the HTML report.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{RunReport, TrialReport};

/// Where one trial's time went, and what it probed. The phases follow each other, so with the
/// gaps between them (bookkeeping, microseconds) they add up to the trial's duration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrialTiming {
    /// How the trial was scheduled beside others: `own` (its own namespaces), `turns` (took
    /// turns with the other cluster-scoped trials) or `alone`; empty where not known.
    pub scope: &'static str,
    /// Creating (or taking over) the world: namespaces, pods, Services, up to their IPs.
    pub world_setup: Duration,
    /// Carrying out the steps that change the cluster (the API calls, until they return).
    pub apply: Duration,
    /// In probe steps, re-probing pairs that disagreed after the first pass, until the
    /// observed table matched or the settle deadline passed (the whole-matrix second try
    /// included).
    pub settle: Duration,
    /// In probe steps, everything but settling: the first pass over every pair and the
    /// witness probes of blocked destinations.
    pub probing: Duration,
    /// Putting labels back and releasing (deleting or handing on) the world.
    pub teardown: Duration,
    /// The connect timeout each probe was given.
    pub probe_connect: Duration,
    /// Probe steps that probed (steps skipped by a feature gate are not counted).
    pub probe_steps: usize,
    /// Of those, the steps whose expectation has at least one blocked pair: each waits out at
    /// least one connect timeout.
    pub deny_steps: usize,
    /// Groups of probe steps probed side by side (steps with nothing changed between them).
    pub probe_groups: usize,
    /// Of those, the groups with a blocked pair: each waits out at least one connect timeout.
    pub deny_groups: usize,
    /// Probes the probe steps made (one per pair and pass, witness probes included; the
    /// pre-flight's are not counted).
    pub probes: usize,
    /// Enforcement latency of each policy change, by the index of the first probe step after
    /// it: from the change's API call returning to the start of the probe pass after which
    /// every step of that group matched its expectation. Recorded only for groups that passed;
    /// the resolution is the pause between retries (milliseconds at first), since a pass
    /// whose probes were all sent after the change took effect matches.
    pub latencies: Vec<(usize, Duration)>,
}

impl TrialTiming {
    /// Seconds of world set-up, settle, probing and teardown, in that order.
    pub fn phase_seconds(&self) -> [f64; 4] {
        [self.world_setup, self.settle, self.probing, self.teardown].map(|d| d.as_secs_f64())
    }

    /// The enforcement latency recorded for step `index`, if any.
    pub fn latency(&self, index: usize) -> Option<Duration> {
        self.latencies
            .iter()
            .find(|(step, _)| *step == index)
            .map(|(_, d)| *d)
    }
}

/// The run's enforcement latencies over every trial, by nearest rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many step latencies there were.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

/// The `p`th percentile (0 < p ≤ 100) of `sorted` (ascending) by nearest rank: the smallest
/// value with at least p % of the values at or below it. `None` for no values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl LatencySummary {
    /// The summary of `samples` in any order; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<LatencySummary> {
        samples.sort();
        Some(LatencySummary {
            samples: samples.len(),
            p50: percentile(&samples, 50.0)?,
            p99: percentile(&samples, 99.0)?,
            max: *samples.last()?,
        })
    }

    /// The summary of every step latency the run's trials recorded.
    pub fn of_run(report: &RunReport) -> Option<LatencySummary> {
        LatencySummary::of(
            report
                .trials
                .iter()
                .filter_map(|t| t.timing.as_ref())
                .flat_map(|t| t.latencies.iter().map(|(_, d)| *d))
                .collect(),
        )
    }

    /// `enforcement latency: p50 1.02 s, p99 3.40 s, max 3.40 s (12 steps after a policy
    /// change)`.
    pub fn line(&self) -> String {
        format!(
            "enforcement latency: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} steps after a policy change)",
            self.p50.as_secs_f64(),
            self.p99.as_secs_f64(),
            self.max.as_secs_f64(),
            self.samples
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// A trial's JUnit testcase properties: `preflight-seconds` when the pre-flight ran, then, for
/// a trial the runner ran, its phases, counts and step latencies
/// (`enforcement-latency-seconds`: `<step>=<seconds>` comma-separated).
pub fn case_properties(t: &TrialReport) -> Vec<(&'static str, String)> {
    let mut props = Vec::new();
    if let Some(preflight) = t.preflight {
        props.push(("preflight-seconds", secs(preflight)));
    }
    let Some(timing) = &t.timing else {
        return props;
    };
    if !timing.scope.is_empty() {
        props.push(("scope", timing.scope.to_string()));
    }
    props.extend([
        ("world-setup-seconds", secs(timing.world_setup)),
        ("apply-seconds", secs(timing.apply)),
        ("settle-seconds", secs(timing.settle)),
        ("probing-seconds", secs(timing.probing)),
        ("teardown-seconds", secs(timing.teardown)),
        ("probe-connect-seconds", secs(timing.probe_connect)),
        ("probe-steps", timing.probe_steps.to_string()),
        ("deny-steps", timing.deny_steps.to_string()),
        ("probe-groups", timing.probe_groups.to_string()),
        ("deny-groups", timing.deny_groups.to_string()),
        ("probes", timing.probes.to_string()),
    ]);
    if !timing.latencies.is_empty() {
        let steps: Vec<String> = timing
            .latencies
            .iter()
            .map(|(step, d)| format!("{step}={}", secs(*d)))
            .collect();
        props.push(("enforcement-latency-seconds", steps.join(",")));
    }
    props
}

/// The run's JUnit suite properties: the trial concurrency (when known) and the latency
/// summary (when there were latencies).
pub fn suite_properties(report: &RunReport) -> Vec<(&'static str, String)> {
    let mut props = Vec::new();
    if report.concurrency > 0 {
        props.push(("trial-concurrency", report.concurrency.to_string()));
    }
    if let Some(setup) = report.target_setup {
        props.push(("target-setup-seconds", secs(setup)));
    }
    if let Some((p999, samples)) = report.target.connect_p999 {
        props.extend([
            (
                "path-connect-p999-seconds",
                format!("{:.4}", p999.as_secs_f64()),
            ),
            ("path-connect-samples", samples.to_string()),
        ]);
    }
    if let Some(s) = LatencySummary::of_run(report) {
        props.extend([
            ("enforcement-latency-samples", s.samples.to_string()),
            ("enforcement-latency-p50-seconds", secs(s.p50)),
            ("enforcement-latency-p99-seconds", secs(s.p99)),
            ("enforcement-latency-max-seconds", secs(s.max)),
        ]);
    }
    props
}

/// The HTML report's enforcement-latency section; empty when the run recorded no latency.
pub fn html_section(report: &RunReport) -> String {
    let Some(s) = LatencySummary::of_run(report) else {
        return String::new();
    };
    let mut out = String::from(
        "<section id=\"latency\"><h2>Enforcement latency</h2><p>From a policy change's API \
         call returning to the start of the first probe pass that matched, over the probe steps \
         that followed a change and passed.</p><dl class=\"latency\">",
    );
    for (id, label, d) in [
        ("p50", "p50", s.p50),
        ("p99", "p99", s.p99),
        ("max", "max", s.max),
    ] {
        let _ = write!(
            out,
            "<div><dt>{label}</dt><dd id=\"latency-{id}\" data-seconds=\"{}\">{:.2} s</dd></div>",
            secs(d),
            d.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "<div><dt>steps</dt><dd id=\"latency-samples\">{}</dd></div></dl></section>",
        s.samples
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[ms(7)], 50.0), Some(ms(7)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        // Two values: the median is the lower (rank ceil(1.0) = 1), p99 the upper.
        assert_eq!(percentile(&[ms(1), ms(9)], 50.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(1), ms(9)], 99.0), Some(ms(9)));
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(ms(50)));
        assert_eq!(percentile(&hundred, 99.0), Some(ms(99)));
        assert_eq!(percentile(&hundred, 100.0), Some(ms(100)));
        // With fewer than 100 values p99 is the largest.
        let ten: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(percentile(&ten, 99.0), Some(ms(10)));
        assert_eq!(percentile(&ten, 50.0), Some(ms(5)));
    }

    #[test]
    fn summary_sorts_its_samples() {
        assert_eq!(LatencySummary::of(vec![]), None);
        let s = LatencySummary::of(vec![ms(300), ms(100), ms(900), ms(200), ms(500)]).unwrap();
        assert_eq!(
            s,
            LatencySummary {
                samples: 5,
                p50: ms(300),
                p99: ms(900),
                max: ms(900),
            }
        );
        assert_eq!(
            s.line(),
            "enforcement latency: p50 0.30 s, p99 0.90 s, max 0.90 s (5 steps after a policy change)"
        );
    }
}
