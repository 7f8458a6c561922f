//! Collects the trials as they finish: the runner's [`TrialReport`] of each, as it comes,
//! becomes libtest's completion, a line of live progress, a Sonobuoy progress update and an
//! entry of the run's report.

use std::sync::{Arc, Mutex};

use libtest_mimic::{Completion, Failed};

use crate::progress::Live;
use crate::report::{self, Progress, TrialOutcome, TrialReport};

/// What the trials' threads hand their reports to.
pub struct Collector {
    reports: Mutex<Vec<TrialReport>>,
    progress: Mutex<Progress>,
    progress_port: Option<u16>,
    live: Option<Arc<Live>>,
}

impl Collector {
    /// A collector for `total` trials that posts Sonobuoy progress to `progress_port` (when
    /// given) and shows each trial on `live` (when given).
    pub fn new(total: usize, progress_port: Option<u16>, live: Option<Arc<Live>>) -> Collector {
        Collector {
            reports: Mutex::new(Vec::new()),
            progress: Mutex::new(Progress {
                total,
                ..Default::default()
            }),
            progress_port,
            live,
        }
    }

    /// A trial started.
    pub fn started(&self, trial: &str) {
        if let Some(live) = &self.live {
            live.started(trial);
        }
    }

    /// A trial finished (or never ran): its Sonobuoy progress is posted, it is shown, kept
    /// for the run's report, and its completion returned to libtest.
    pub fn record(&self, report: TrialReport) -> Result<Completion, Failed> {
        if let Some(port) = self.progress_port {
            let mut p = self.progress.lock().expect("progress lock");
            match &report.outcome {
                TrialOutcome::Failed { .. } | TrialOutcome::Error { .. } => {
                    p.failures.push(report.trial.clone());
                }
                _ => p.completed += 1,
            }
            p.msg = format!("{} {}", report.outcome.word().to_uppercase(), report.trial);
            if let Err(e) = report::post_progress(port, &p) {
                tracing::warn!("posting progress to localhost:{port}: {e}");
            }
        }
        let result = completion(&report);
        if let Some(live) = &self.live {
            live.finished(&report);
        }
        self.reports.lock().expect("reports lock").push(report);
        result
    }

    /// The reports collected so far, sorted by trial; the collector keeps none.
    pub fn take_reports(&self) -> Vec<TrialReport> {
        let mut trials = std::mem::take(&mut *self.reports.lock().expect("reports lock"));
        trials.sort_by(|a, b| a.trial.cmp(&b.trial));
        trials
    }
}

/// libtest's view of a trial: passed, failed (failures and errors, with the details), or
/// ignored with the reason (skipped, not supported, partial).
pub fn completion(report: &TrialReport) -> Result<Completion, Failed> {
    match &report.outcome {
        TrialOutcome::Passed => Ok(Completion::Completed),
        TrialOutcome::Failed { .. } | TrialOutcome::Error { .. } => Err(Failed::from(format!(
            "{}: {}\n{}",
            report.outcome.word(),
            report.outcome.message().unwrap_or_default(),
            report.details()
        ))),
        TrialOutcome::Skipped { .. }
        | TrialOutcome::NotSupported { .. }
        | TrialOutcome::Partial { .. } => Ok(Completion::ignored_with(
            report.outcome.message().unwrap_or_default(),
        )),
    }
}
