//! One typed run report, several renderers: a summary for people, JUnit (via quick-junit),
//! Sonobuoy's results directory with its `done` file and progress updates, and
//! network-policy-api's ConformanceReport ([`npa`]), the GitHub job summary ([`github`]) and a
//! self-contained HTML page ([`html`]).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::TargetInfo;
use crate::reachability::{Expected, Observed, Table, Verdict};

pub mod github;
pub mod html;
mod junit;
pub mod npa;
pub mod placement;
pub mod timing;

pub use junit::{junit, write_junit};

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum TrialOutcome {
    /// Every probe matched its expectation.
    Passed,
    /// Policy behaviour differed from the expectation.
    Failed {
        /// One line saying what differed.
        message: String,
    },
    /// The run could not judge the case (cluster, API or probe transport fault).
    Error {
        /// One line saying what broke.
        message: String,
    },
    /// Not run, with the reason (filtered by a runtime condition, interrupted, …).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Not run because the target lacks a feature the case needs.
    NotSupported {
        /// Which feature, and why the target lacks it.
        reason: String,
    },
    /// The steps that ran passed, but some were skipped (a protocol the run exempts): not a
    /// pass of the whole case.
    Partial {
        /// Each skipped step with its reason.
        skipped: Vec<SkippedStep>,
    },
}

/// A probe step a partial trial left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedStep {
    /// Index in the case file.
    pub index: usize,
    /// `SCTP/9003`.
    pub probe: String,
    /// Why.
    pub reason: String,
}

impl TrialOutcome {
    /// A short word: passed, failed, error, skipped, not-supported.
    pub fn word(&self) -> &'static str {
        match self {
            TrialOutcome::Passed => "passed",
            TrialOutcome::Failed { .. } => "failed",
            TrialOutcome::Error { .. } => "error",
            TrialOutcome::Skipped { .. } => "skipped",
            TrialOutcome::NotSupported { .. } => "not-supported",
            TrialOutcome::Partial { .. } => "partial",
        }
    }

    /// The one-line message of a non-pass: what differed, broke, or was left out.
    pub fn message(&self) -> Option<String> {
        match self {
            TrialOutcome::Passed => None,
            TrialOutcome::Failed { message } | TrialOutcome::Error { message } => {
                Some(message.clone())
            }
            TrialOutcome::Skipped { reason } => Some(reason.clone()),
            TrialOutcome::NotSupported { reason } => Some(format!("not supported: {reason}")),
            TrialOutcome::Partial { skipped } => {
                // One clause per reason: "steps 1, 3 (SCTP/9003): SCTP: exempted …".
                let mut reasons: Vec<(&str, Vec<String>)> = Vec::new();
                for s in skipped {
                    let step = format!("{} ({})", s.index, s.probe);
                    match reasons.iter_mut().find(|(r, _)| *r == s.reason) {
                        Some((_, steps)) => steps.push(step),
                        None => reasons.push((&s.reason, vec![step])),
                    }
                }
                let clauses: Vec<String> = reasons
                    .iter()
                    .map(|(reason, steps)| {
                        let word = if steps.len() == 1 { "step" } else { "steps" };
                        format!("{word} {}: {reason}", steps.join(", "))
                    })
                    .collect();
                Some(format!(
                    "partial: the steps that ran passed; skipped {}",
                    clauses.join("; ")
                ))
            }
        }
    }
}

/// How one probe step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum StepResult {
    /// Every pair matched.
    Passed,
    /// Some pair's behaviour differed from the expectation.
    Failed,
    /// Some pair could not be judged (probe transport, dead destination, missing protocol).
    Error {
        /// What broke.
        message: String,
    },
    /// Not probed: the run does not judge the step's protocol.
    Skipped {
        /// Why.
        reason: String,
    },
}

impl StepResult {
    /// A probed step's result from its comparison: passed when every pair matched, failed when
    /// some pair contradicts its expectation, an error when the rest could not be judged.
    pub fn judged(comparison: &crate::reachability::Comparison) -> StepResult {
        if comparison.passed() {
            StepResult::Passed
        } else if comparison.wrong > 0 {
            StepResult::Failed
        } else {
            StepResult::Error {
                message: format!("{} probes could not be judged", comparison.errors),
            }
        }
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepResult::Passed => f.write_str("passed"),
            StepResult::Failed => f.write_str("failed"),
            StepResult::Error { message } => write!(f, "error: {message}"),
            StepResult::Skipped { reason } => write!(f, "skipped: {reason}"),
        }
    }
}

/// What happened in one probe step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// Index in the case file.
    pub index: usize,
    /// The subtest's name, if any.
    pub name: Option<String>,
    /// `TCP/80`.
    pub probe: String,
    /// How it ended.
    pub result: StepResult,
    /// Pairs that matched.
    pub correct: usize,
    /// Pairs that did not.
    pub wrong: usize,
    /// Pairs whose probe failed.
    pub errors: usize,
    /// Pairs that were wrong at first and right later (recorded, not hidden).
    pub flaky: Vec<String>,
    /// Transport calls the step made (execs on real clusters, netns probes locally), retries
    /// included.
    pub calls: usize,
    /// Expected / observed / comparison tables, when the step did not pass.
    pub tables: Option<String>,
    /// Commands to repeat the failing probes by hand.
    pub rerun: Vec<String>,
    /// The same tables as values, for every step that probed (passed or not).
    pub grids: Option<StepGrids>,
    /// For a step with wrong pairs, where they ran (`all 12 wrong pairs are cross-node`).
    pub placement: Option<String>,
}

/// A probe step's tables as values: what [`StepReport::tables`] renders as text, for renderers
/// that draw cells (the HTML report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepGrids {
    /// What each pair should do.
    pub expected: Expected,
    /// What each pair did, as last probed.
    pub observed: Observed,
    /// Expected against observed, per pair.
    pub comparison: Table<Verdict>,
    /// Which probed pairs crossed nodes (unset where a node is not known).
    pub cross_node: Table<bool>,
    /// For a step that did not pass, the command that repeats each probed pair's probe by hand
    /// (every pair, matching ones too, to compare with); empty for a step that passed.
    pub rerun: Vec<PairCommand>,
}

/// The command that repeats one pair's probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairCommand {
    /// Source model pod.
    pub from: String,
    /// Destination model pod.
    pub to: String,
    /// The command.
    pub command: String,
}

/// One trial's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialReport {
    /// Trial name (`upstream::ingress::default-deny-ingress`).
    pub trial: String,
    /// The case's upstream name for this rendering.
    pub name: String,
    /// JUnit classname: `netpol-conformance.<source>.<area>`.
    pub classname: String,
    /// The feature names the trial needs ([`crate::features::trial_features`]): upstream's own
    /// for network-policy-api trials, which is how [`npa`] files them into profiles.
    pub features: Vec<String>,
    /// How it ended.
    pub outcome: TrialOutcome,
    /// When the trial began (gating and waiting for the cluster lock excluded).
    pub started: SystemTime,
    /// Wall time.
    pub duration: Duration,
    /// Probe steps.
    pub steps: Vec<StepReport>,
    /// Everything else worth reading (policies applied, waits, cleanup).
    pub log: String,
    /// Time the all-allowed pre-flight took, when it ran.
    pub preflight: Option<Duration>,
    /// Where the time went and the enforcement latencies, for a trial the runner ran.
    pub timing: Option<timing::TrialTiming>,
}

impl TrialReport {
    /// The body shown under a failure or error: the log, then each non-passing step's tables.
    pub fn details(&self) -> String {
        let mut out = self.log.clone();
        for step in &self.steps {
            let _ = writeln!(
                out,
                "step {} {}{}: {} (correct {}, wrong {}, errors {}; {} probe calls)",
                step.index,
                step.probe,
                step.name
                    .as_deref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default(),
                step.result,
                step.correct,
                step.wrong,
                step.errors,
                step.calls
            );
            if !step.flaky.is_empty() {
                let _ = writeln!(
                    out,
                    "  flaky (wrong at first, right later): {}",
                    step.flaky.join(", ")
                );
            }
            if let Some(tables) = &step.tables {
                out.push_str(tables);
                out.push('\n');
            }
            for cmd in &step.rerun {
                let _ = writeln!(out, "  rerun: {cmd}");
            }
        }
        out
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// The suite's version.
    pub suite_version: String,
    /// What was tested.
    pub target: TargetInfo,
    /// The machine the suite ran on (the plugin pod's name under Sonobuoy).
    pub hostname: String,
    /// Trials in name order.
    pub trials: Vec<TrialReport>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// When the run began.
    pub started: SystemTime,
    /// Wall time of the run.
    pub duration: Duration,
    /// How many trials ran at once (0: not known).
    pub concurrency: usize,
    /// How long connecting the target took before the first trial (a local cluster's bring-up
    /// included), where the run connected before its trials.
    pub target_setup: Option<Duration>,
}

impl Default for RunReport {
    /// An empty run that began now, on this machine.
    fn default() -> Self {
        RunReport {
            suite_version: String::new(),
            target: TargetInfo::default(),
            hostname: hostname(),
            trials: Vec::new(),
            aborted: None,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            concurrency: 0,
            target_setup: None,
        }
    }
}

/// This machine's host name (the kernel's), `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// Counts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Passed trials.
    pub passed: usize,
    /// Failed trials.
    pub failed: usize,
    /// Errored trials.
    pub errors: usize,
    /// Skipped trials.
    pub skipped: usize,
    /// Not-supported trials.
    pub not_supported: usize,
    /// Trials that passed the steps they ran but skipped others.
    pub partial: usize,
}

impl RunReport {
    /// Counts by outcome.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in &self.trials {
            match t.outcome {
                TrialOutcome::Passed => c.passed += 1,
                TrialOutcome::Failed { .. } => c.failed += 1,
                TrialOutcome::Error { .. } => c.errors += 1,
                TrialOutcome::Skipped { .. } => c.skipped += 1,
                TrialOutcome::NotSupported { .. } => c.not_supported += 1,
                TrialOutcome::Partial { .. } => c.partial += 1,
            }
        }
        if self.aborted.is_some() {
            c.errors += 1;
        }
        c
    }

    /// Whether anything failed or errored.
    pub fn has_failures(&self) -> bool {
        let c = self.counts();
        c.failed + c.errors > 0
    }
}

/// The JUnit name of the synthetic case that records an early abort.
pub const ABORT_CASE: &str = "netpol-conformance run";

/// Writes Sonobuoy's results into `dir`: `junit.xml` and the HTML report `report.html`, then
/// `done` naming the directory itself (written last, as the worker uploads whatever `done`
/// points to as soon as it appears). A directory in `done` makes Sonobuoy's worker tar the whole
/// of it, so the log the plugin's entrypoint keeps there and the HTML report reach the results
/// tarball beside the JUnit file; the plugin's `result-files` keeps the post-processing to
/// `junit.xml`. Returns the JUnit file's path.
pub fn write_sonobuoy(report: &RunReport, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let result = dir.join("junit.xml");
    write_junit(report, &result)?;
    html::write_html(report, &dir.join("report.html"))?;
    let absolute = std::path::absolute(dir)?;
    let done_tmp = dir.join(".done.tmp");
    std::fs::write(&done_tmp, absolute.display().to_string())?;
    std::fs::rename(&done_tmp, dir.join("done"))?;
    Ok(result)
}

/// One progress update for Sonobuoy's worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Latest message (`PASSED <trial>`).
    pub msg: String,
    /// Trials expected.
    pub total: usize,
    /// Trials passed so far.
    pub completed: usize,
    /// Failed trials so far.
    pub failures: Vec<String>,
    /// Errors so far.
    pub errors: Vec<String>,
}

/// POSTs a progress update to `localhost:<port>/progress`. Failures are returned, never fatal.
/// One blocking std-socket request by design: trial threads hold no async runtime (hyper's
/// client would need one), the peer is Sonobuoy's worker on loopback, only the status is read.
pub fn post_progress(port: u16, progress: &Progress) -> std::io::Result<()> {
    let body = serde_json::to_string(progress).map_err(std::io::Error::other)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "POST /progress HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut status)?;
    if !status.starts_with(b"HTTP/1.") || status[9] != b'2' {
        return Err(std::io::Error::other(format!(
            "progress endpoint answered {}",
            String::from_utf8_lossy(&status)
        )));
    }
    Ok(())
}

/// A summary for people: counts, then each failure and error with its first line.
pub fn summary(report: &RunReport) -> String {
    let c = report.counts();
    let mut out = String::new();
    if report.target.target.is_empty() {
        let _ = writeln!(
            out,
            "netpol-conformance {} (no cluster contacted)",
            report.suite_version
        );
    } else {
        let _ = writeln!(
            out,
            "netpol-conformance {} against {} (Kubernetes {}, {})",
            report.suite_version,
            report.target.target,
            report.target.kubernetes_version,
            report.target.implementation
        );
    }
    for t in &report.trials {
        match &t.outcome {
            TrialOutcome::Failed { message } => {
                let _ = writeln!(out, "  FAILED  {}: {message}", t.trial);
            }
            TrialOutcome::Error { message } => {
                let _ = writeln!(out, "  ERROR   {}: {message}", t.trial);
            }
            TrialOutcome::Partial { skipped } => {
                let _ = writeln!(
                    out,
                    "  PARTIAL {}: {} steps skipped",
                    t.trial,
                    skipped.len()
                );
            }
            _ => {}
        }
    }
    if let Some(reason) = &report.aborted {
        let _ = writeln!(out, "  ABORTED {reason}");
    }
    if let Some(latency) = timing::LatencySummary::of_run(report) {
        let _ = writeln!(out, "{}", latency.line());
    }
    if let Some((p999, samples)) = report.target.connect_p999 {
        let _ = writeln!(
            out,
            "measured path: p99.9 connect {:.1} ms over {samples} connections",
            p999.as_secs_f64() * 1000.0
        );
    }
    let _ = writeln!(
        out,
        "{} passed, {} failed, {} skipped ({} errors, {} not supported, {} partial)",
        c.passed,
        c.failed + c.errors,
        c.skipped + c.not_supported + c.partial,
        c.errors,
        c.not_supported,
        c.partial
    );
    out
}
