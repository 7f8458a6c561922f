//! The JUnit rendering of a run report (via quick-junit): suite properties naming the target,
//! one testcase per trial with its timing and placement properties, and an aborted run as one
//! `<error>`.

use std::path::Path;
use std::time::SystemTime;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{ABORT_CASE, RunReport, StepResult, TrialOutcome, placement, timing};

/// A report time as quick-junit takes it (UTC).
fn junit_time(t: SystemTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from(t)
}

/// Renders JUnit XML. Every testcase, the abort case included, carries `timestamp`, `time` and
/// `hostname`; an abort is an `<error>` (an infrastructure fault, as [`RunReport::counts`]
/// counts it), so the summary's and JUnit's counts agree.
pub fn junit(report: &RunReport) -> String {
    let mut junit = Report::new("netpol-conformance");
    let mut suite = TestSuite::new("netpol-conformance");
    for (name, value) in [
        ("target", report.target.target.as_str()),
        (
            "kubernetes-version",
            report.target.kubernetes_version.as_str(),
        ),
        ("implementation", report.target.implementation.as_str()),
        ("prober", report.target.prober.as_str()),
        ("runtime", report.target.runtime.as_str()),
        (
            "container-runtime",
            report.target.container_runtime.as_str(),
        ),
        ("enforcer", report.target.enforcer.as_str()),
        ("execs", report.target.execs.to_string().as_str()),
        ("placement", report.target.placement.as_str()),
        ("suite-version", report.suite_version.as_str()),
    ] {
        suite.add_property(Property::new(name, value));
    }
    for (name, value) in timing::suite_properties(report) {
        suite.add_property(Property::new(name, value));
    }
    suite
        .extra
        .insert("hostname".into(), report.hostname.as_str().into());
    for t in &report.trials {
        let status = match &t.outcome {
            TrialOutcome::Passed => TestCaseStatus::success(),
            TrialOutcome::Failed { message } => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(message.as_str());
                s.set_type("policy mismatch");
                s.set_description(t.details());
                s
            }
            TrialOutcome::Error { message } => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(message.as_str());
                s.set_type("infrastructure");
                s.set_description(t.details());
                s
            }
            TrialOutcome::Skipped { reason } | TrialOutcome::NotSupported { reason } => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(reason.as_str());
                s.set_type(t.outcome.word());
                s
            }
            TrialOutcome::Partial { .. } => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(t.outcome.message().unwrap_or_default());
                s.set_type("partial");
                s.set_description(t.details());
                s
            }
        };
        let mut case = TestCase::new(format!("{}: {}", t.trial, t.name), status);
        case.set_classname(t.classname.as_str());
        case.set_timestamp(junit_time(t.started));
        case.set_time(t.duration);
        case.extra
            .insert("hostname".into(), report.hostname.as_str().into());
        if matches!(t.outcome, TrialOutcome::Passed) && !t.steps.is_empty() {
            case.set_system_out(t.details());
        }
        for (name, value) in timing::case_properties(t)
            .into_iter()
            .chain(placement::case_properties(t))
        {
            case.add_property(Property::new(name, value));
        }
        let skipped_steps: Vec<String> = t
            .steps
            .iter()
            .filter(|s| matches!(s.result, StepResult::Skipped { .. }))
            .map(|s| format!("{} {}", s.index, s.probe))
            .collect();
        if !skipped_steps.is_empty() {
            case.add_property(Property::new("skipped-steps", skipped_steps.join(", ")));
        }
        suite.add_test_case(case);
    }
    if let Some(reason) = &report.aborted {
        // The run itself as one case: from its start for as long as it ran.
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_message(reason.as_str());
        s.set_type("aborted");
        let mut case = TestCase::new(ABORT_CASE, s);
        case.set_classname("netpol-conformance");
        case.set_timestamp(junit_time(report.started));
        case.set_time(report.duration);
        case.extra
            .insert("hostname".into(), report.hostname.as_str().into());
        suite.add_test_case(case);
    }
    suite.set_timestamp(junit_time(report.started));
    suite.set_time(report.duration);
    junit.set_timestamp(junit_time(report.started));
    junit.set_time(report.duration);
    junit.add_test_suite(suite);
    junit
        .to_string()
        .unwrap_or_else(|e| format!("<!-- rendering JUnit failed: {e} -->\n"))
}

/// Writes the JUnit file (creating its directory).
pub fn write_junit(report: &RunReport, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, junit(report))
}
