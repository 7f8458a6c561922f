//! The GitHub Actions job summary: a markdown section appended to `$GITHUB_STEP_SUMMARY` with the
//! counts and, for each failing trial, its message, its non-passing steps' truth tables and the
//! commands to rerun their probes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::{RunReport, StepResult, TrialOutcome};

/// GitHub refuses a step summary above 1 MiB; stay well below it.
pub const LIMIT: usize = 900 * 1024;

/// `&`, `<`, `>` escaped, for text outside code blocks.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Drops ANSI colour sequences (tables are coloured when the run's stderr was a terminal).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The markdown for one run, at most [`LIMIT`] bytes: failing trials past the limit are counted,
/// not shown.
pub fn markdown(report: &RunReport) -> String {
    let c = report.counts();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### netpol-conformance {}: {} passed, {} failed, {} skipped\n",
        escape(&report.suite_version),
        c.passed,
        c.failed + c.errors,
        c.skipped + c.not_supported + c.partial
    );
    if !report.target.target.is_empty() {
        let _ = writeln!(
            out,
            "Target `{}` · Kubernetes {} · implementation {} · {} trials in {}\n",
            report.target.target.replace('`', "'"),
            escape(&report.target.kubernetes_version),
            escape(&report.target.implementation),
            report.trials.len(),
            crate::progress::short(report.duration)
        );
    }
    let _ = writeln!(
        out,
        "| passed | failed | errors | skipped | not supported | partial |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {} |\n",
        c.passed, c.failed, c.errors, c.skipped, c.not_supported, c.partial
    );
    if let Some(reason) = &report.aborted {
        let _ = writeln!(out, "**Aborted:** {}\n", escape(reason));
    }
    let failing: Vec<_> = report
        .trials
        .iter()
        .filter(|t| {
            matches!(
                t.outcome,
                TrialOutcome::Failed { .. } | TrialOutcome::Error { .. }
            )
        })
        .collect();
    if failing.is_empty() {
        return out;
    }
    let _ = writeln!(out, "#### Failing trials\n");
    for (shown, t) in failing.iter().enumerate() {
        let mut section = String::new();
        let _ = writeln!(
            section,
            "<details><summary><b>{}</b> <code>{}</code> ({}): {}</summary>\n",
            t.outcome.word().to_uppercase(),
            escape(&t.trial),
            escape(&t.name),
            escape(&t.outcome.message().unwrap_or_default())
        );
        for step in t
            .steps
            .iter()
            .filter(|s| !matches!(s.result, StepResult::Passed))
        {
            let _ = writeln!(
                section,
                "step {} {}{}: {} (correct {}, wrong {}, errors {})\n",
                step.index,
                escape(&step.probe),
                step.name
                    .as_deref()
                    .map(|n| format!(" \"{}\"", escape(n)))
                    .unwrap_or_default(),
                escape(&step.result.to_string()),
                step.correct,
                step.wrong,
                step.errors
            );
            if let Some(tables) = &step.tables {
                let _ = writeln!(section, "````text\n{}\n````\n", plain(tables).trim_end());
            }
            if !step.rerun.is_empty() {
                let _ = writeln!(
                    section,
                    "rerun:\n\n````sh\n{}\n````\n",
                    step.rerun.join("\n")
                );
            }
        }
        section.push_str("</details>\n\n");
        if out.len() + section.len() > LIMIT {
            let _ = writeln!(
                out,
                "… and {} more failing trials: see the JUnit report.",
                failing.len() - shown
            );
            break;
        }
        out.push_str(&section);
    }
    out
}

/// Appends the run's markdown to the summary file (GitHub creates it per step).
pub fn append_step_summary(report: &RunReport, path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(markdown(report).as_bytes())
}
