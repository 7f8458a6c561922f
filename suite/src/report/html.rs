//! The HTML report: one self-contained file (inline style and script, no network fetches, a
//! Content-Security-Policy that forbids them) to open in a browser or attach to a CI run.
//!
//! The summary is static HTML: counts by outcome, then by source and area, the target, its
//! Kubernetes version and implementation. The trials follow, failing ones first, drawn by the
//! inline script from the run's data embedded as JSON, each trial's body only when it is opened
//! (the failing ones are open from the start), so a run of thousands of trials stays quick. Each
//! probe step shows its expected, observed and comparison grids as coloured cells (allowed,
//! blocked, refused, error, not probed); hovering a cell names the pair, port, protocol and
//! outcome, clicking it opens a panel with the detail and the command that reruns the probe.
//! A text box filters trials; the address's fragment can carry a filter
//! (`#q=egress`) or select a cell (`#select=<trial>/<step>/<from>/<to>`, which scrolls to it
//! unless `&scroll=0`), so a link can point at one failing pair. Grids show the sources and
//! destinations the step probed: the whole matrix of an upstream case, a few pods of a pair probe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::timing::TrialTiming;
use super::{RunReport, StepReport, StepResult, TrialOutcome, TrialReport};
use crate::reachability::{Comparison, Outcome, Table, expected_mark};

/// The order trials are listed in: failures first.
fn rank(outcome: &TrialOutcome) -> u8 {
    match outcome {
        TrialOutcome::Failed { .. } => 0,
        TrialOutcome::Error { .. } => 1,
        TrialOutcome::Partial { .. } => 2,
        TrialOutcome::NotSupported { .. } => 3,
        TrialOutcome::Skipped { .. } => 4,
        TrialOutcome::Passed => 5,
    }
}

/// `(source, area)` of a trial, from its classname `netpol-conformance.<source>.<area>`.
pub fn source_and_area(trial: &TrialReport) -> (&str, &str) {
    let rest = trial
        .classname
        .strip_prefix("netpol-conformance.")
        .unwrap_or(&trial.classname);
    rest.split_once('.').unwrap_or((rest, ""))
}

/// The trials in the order the report lists them: failed, error, partial, not supported,
/// skipped, passed; by name within each.
pub fn listing_order(report: &RunReport) -> Vec<&TrialReport> {
    let mut trials: Vec<&TrialReport> = report.trials.iter().collect();
    trials.sort_by(|a, b| {
        rank(&a.outcome)
            .cmp(&rank(&b.outcome))
            .then_with(|| a.trial.cmp(&b.trial))
    });
    trials
}

/// A trial as the script reads it (short keys keep a 2,000-trial report small).
#[derive(Serialize)]
struct TrialData<'a> {
    /// Trial name.
    t: &'a str,
    /// Upstream name.
    n: &'a str,
    src: &'a str,
    area: &'a str,
    /// Outcome word.
    o: &'static str,
    /// Outcome message.
    m: Option<String>,
    /// Seconds.
    d: f64,
    /// Start, RFC 3339.
    at: String,
    f: &'a [String],
    log: &'a str,
    /// Pre-flight seconds.
    pf: Option<f64>,
    /// Seconds of world set-up, settle, probing and teardown, when the runner ran the trial.
    ph: Option<[f64; 4]>,
    steps: Vec<StepData<'a>>,
}

#[derive(Serialize)]
struct StepData<'a> {
    i: usize,
    name: Option<&'a str>,
    /// `TCP/80`.
    p: &'a str,
    /// passed, failed, error, skipped.
    r: &'static str,
    /// The result with its message.
    rm: String,
    ok: usize,
    bad: usize,
    err: usize,
    calls: usize,
    flaky: &'a [String],
    /// Enforcement latency in seconds, for a step that followed a policy change.
    lat: Option<f64>,
    g: Option<GridData<'a>>,
}

/// A step's grids: one mark per cell, row by row (`pods.len()²` characters each); `?` is a
/// pair not probed.
#[derive(Serialize)]
struct GridData<'a> {
    pods: &'a [String],
    /// Expected: `.` allowed, `X` blocked.
    e: String,
    /// Observed: `.` connected, `X` timed out, `R` refused, `!` error.
    o: String,
    /// Comparison: `.` match, `X` mismatch, `!` error.
    c: String,
    /// Observed errors' messages, by cell.
    det: BTreeMap<usize, &'a str>,
    /// Rerun commands, by cell.
    cmd: BTreeMap<usize, &'a str>,
}

fn marks<T>(table: &Table<T>, pods: &[String], mark: impl Fn(&T) -> char) -> String {
    let mut out = String::with_capacity(pods.len() * pods.len());
    for from in pods {
        for to in pods {
            out.push(table.get(from, to).map(&mark).unwrap_or('?'));
        }
    }
    out
}

fn step_data<'a>(step: &'a StepReport, timing: Option<&TrialTiming>) -> StepData<'a> {
    let g = step.grids.as_ref().map(|g| {
        let pods = g.expected.pods();
        let index = |from: &str, to: &str| {
            let f = pods.iter().position(|p| p == from)?;
            let t = pods.iter().position(|p| p == to)?;
            Some(f * pods.len() + t)
        };
        let det = g
            .observed
            .entries()
            .filter_map(|(f, t, o)| match o {
                Outcome::Error(e) => Some((index(f, t)?, e.as_str())),
                _ => None,
            })
            .collect();
        let cmd = g
            .rerun
            .iter()
            .filter_map(|c| Some((index(&c.from, &c.to)?, c.command.as_str())))
            .collect();
        GridData {
            pods,
            e: marks(&g.expected, pods, expected_mark),
            o: marks(&g.observed, pods, Outcome::mark),
            c: marks(&g.comparison, pods, Comparison::mark),
            det,
            cmd,
        }
    });
    StepData {
        i: step.index,
        name: step.name.as_deref(),
        p: &step.probe,
        r: match step.result {
            StepResult::Passed => "passed",
            StepResult::Failed => "failed",
            StepResult::Error { .. } => "error",
            StepResult::Skipped { .. } => "skipped",
        },
        rm: step.result.to_string(),
        ok: step.correct,
        bad: step.wrong,
        err: step.errors,
        calls: step.calls,
        flaky: &step.flaky,
        lat: timing.and_then(|m| Some(m.latency(step.index)?.as_secs_f64())),
        g,
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The outcome columns of the summary, in order: (class, label).
const COLUMNS: &[(&str, &str)] = &[
    ("passed", "passed"),
    ("failed", "failed"),
    ("error", "error"),
    ("skipped", "skipped"),
    ("not-supported", "not supported"),
    ("partial", "partial"),
];

/// Renders the report.
pub fn html(report: &RunReport) -> String {
    let c = report.counts();
    let counts = [
        c.passed,
        c.failed,
        c.errors,
        c.skipped,
        c.not_supported,
        c.partial,
    ];
    let mut out = String::with_capacity(64 * 1024);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    );
    let _ = writeln!(
        out,
        "<title>netpol-conformance: {} passed, {} failed</title>",
        c.passed,
        c.failed + c.errors
    );
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
    // Header: what was tested.
    let target = if report.target.target.is_empty() {
        "no cluster contacted".to_string()
    } else {
        report.target.target.clone()
    };
    let _ = writeln!(
        out,
        "<header><h1>netpol-conformance report</h1><dl id=\"meta\">\
         <div><dt>target</dt><dd id=\"target\">{}</dd></div>\
         <div><dt>Kubernetes</dt><dd id=\"kubernetes-version\">{}</dd></div>\
         <div><dt>implementation</dt><dd id=\"implementation\">{}</dd></div>\
         <div><dt>suite</dt><dd>netpol-conformance {}</dd></div>\
         <div><dt>host</dt><dd>{}</dd></div>\
         <div><dt>started</dt><dd>{}</dd></div>\
         <div><dt>took</dt><dd>{}</dd></div></dl></header>",
        escape(&target),
        escape(or_dash(&report.target.kubernetes_version)),
        escape(or_dash(&report.target.implementation)),
        escape(&report.suite_version),
        escape(&report.hostname),
        rfc3339(report.started),
        crate::progress::short(report.duration)
    );
    if let Some(reason) = &report.aborted {
        let _ = writeln!(
            out,
            "<p id=\"aborted\" class=\"banner\">The run stopped early: {}</p>",
            escape(reason)
        );
    }
    // Summary: counts by outcome.
    out.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"counts\">");
    for ((class, label), n) in COLUMNS.iter().zip(counts) {
        let _ = write!(
            out,
            "<div class=\"count {class}\" data-outcome=\"{class}\" data-count=\"{n}\"><b>{n}</b> {label}</div>"
        );
    }
    out.push_str("</div>\n");
    areas_table(report, &mut out);
    out.push_str(&super::timing::html_section(report));
    // Controls, legend, the list and the detail panel.
    out.push_str(BODY);
    let data: Vec<TrialData> = listing_order(report)
        .into_iter()
        .map(|t| {
            let (src, area) = source_and_area(t);
            TrialData {
                t: &t.trial,
                n: &t.name,
                src,
                area,
                o: t.outcome.word(),
                m: t.outcome.message(),
                d: t.duration.as_secs_f64(),
                at: rfc3339(t.started),
                f: &t.features,
                log: &t.log,
                pf: t.preflight.map(|p| p.as_secs_f64()),
                ph: t.timing.as_ref().map(TrialTiming::phase_seconds),
                steps: t
                    .steps
                    .iter()
                    .map(|s| step_data(s, t.timing.as_ref()))
                    .collect(),
            }
        })
        .collect();
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "[]".into());
    // Inside <script>, `<` only ever occurs within JSON strings, where `\u003c` means the same.
    let _ = writeln!(
        out,
        "<script type=\"application/json\" id=\"data\">{}</script>",
        json.replace('<', "\\u003c")
    );
    let _ = writeln!(out, "<script>{SCRIPT}</script>\n</body>\n</html>");
    out
}

/// The summary's table of outcome counts by source and area, closing the summary section.
fn areas_table(report: &RunReport, out: &mut String) {
    let mut areas: BTreeMap<(&str, &str), [usize; 6]> = BTreeMap::new();
    for t in &report.trials {
        let row = areas.entry(source_and_area(t)).or_default();
        let col = match t.outcome {
            TrialOutcome::Passed => 0,
            TrialOutcome::Failed { .. } => 1,
            TrialOutcome::Error { .. } => 2,
            TrialOutcome::Skipped { .. } => 3,
            TrialOutcome::NotSupported { .. } => 4,
            TrialOutcome::Partial { .. } => 5,
        };
        row[col] += 1;
    }
    out.push_str("<table id=\"areas\"><thead><tr><th>source</th><th>area</th>");
    for (class, label) in COLUMNS {
        let _ = write!(out, "<th class=\"{class}\">{label}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for ((source, area), row) in &areas {
        let _ = write!(
            out,
            "<tr data-area=\"{}.{}\"><td>{}</td><td>{}</td>",
            escape(source),
            escape(area),
            escape(source),
            escape(area)
        );
        for ((class, _), n) in COLUMNS.iter().zip(row) {
            let zero = if *n == 0 { " zero" } else { "" };
            let _ = write!(out, "<td class=\"n {class}{zero}\">{n}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>\n");
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "—" } else { s }
}

/// Writes the report (creating its directory).
pub fn write_html(report: &RunReport, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, html(report))
}

const STYLE: &str = r#"
:root { --allowed:#2f9e44; --blocked:#c92a2a; --refused:#e8590c; --error:#7048e8; --none:#dee2e6;
  --match:#b2f2bb; --mismatch:#c92a2a; --bg:#fff; --fg:#212529; --muted:#868e96; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); margin: 0 1.5rem 4rem; }
header h1 { font-size: 1.4rem; margin: 1rem 0 .3rem; }
#meta, .latency { display: flex; flex-wrap: wrap; gap: .2rem 1.4rem; margin: 0; }
#meta div, .latency div { display: flex; gap: .35rem; } #meta dt, .latency dt { color: var(--muted); }
#meta dt::after, .latency dt::after { content: ":"; } #meta dd, .latency dd { margin: 0; }
h2 { font-size: 1.1rem; margin: 1rem 0 .4rem; }
.banner { background: #fff3bf; border: 1px solid #fab005; padding: .5rem .8rem; border-radius: 4px; }
.counts { display: flex; gap: .6rem; flex-wrap: wrap; }
.count { border-radius: 6px; padding: .4rem .8rem; background: #f1f3f5; border-left: 6px solid var(--none); }
.count b { font-size: 1.3rem; margin-right: .2rem; }
.passed { --c: var(--allowed); } .failed { --c: var(--blocked); } .error { --c: var(--error); }
.skipped, .not-supported { --c: #adb5bd; } .partial { --c: #f59f00; }
.count { border-left-color: var(--c); }
#areas { border-collapse: collapse; margin-top: .8rem; }
#areas th, #areas td { padding: .15rem .6rem; border-bottom: 1px solid #e9ecef; text-align: left; }
#areas td.n { text-align: right; font-variant-numeric: tabular-nums; color: var(--c); font-weight: 600; }
#areas td.zero { color: #ced4da; font-weight: 400; }
#controls { position: sticky; top: 0; background: var(--bg); padding: .6rem 0; z-index: 2;
  display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; border-bottom: 1px solid #e9ecef; }
#filter { width: 28rem; max-width: 100%; padding: .35rem .5rem; font: inherit; }
#legend { display: flex; gap: .6rem; align-items: center; color: var(--muted); flex-wrap: wrap; }
#legend span.cell { display: inline-block; width: 1.3rem; text-align: center; }
details.trial { border: 1px solid #e9ecef; border-left: 6px solid var(--c); border-radius: 4px; margin: .35rem 0; }
details.trial > summary { cursor: pointer; padding: .35rem .6rem; display: flex; gap: .6rem; align-items: baseline; flex-wrap: wrap; }
.badge { font-size: .75rem; font-weight: 700; text-transform: uppercase; color: #fff; background: var(--c); padding: 0 .4rem; border-radius: 3px; }
.upstream { color: var(--muted); } .dur { color: var(--muted); font-variant-numeric: tabular-nums; }
.msg { flex-basis: 100%; margin-left: 1.2rem; color: #495057; }
.body { padding: 0 .8rem .6rem; }
.step { margin: .6rem 0 1rem; }
.step h4 { margin: .2rem 0 .4rem; font-size: .95rem; }
details.step > summary { cursor: pointer; color: #495057; }
.r-failed h4, .r-error h4 { color: var(--blocked); }
.grids { display: flex; gap: 1.5rem; flex-wrap: wrap; align-items: flex-start; }
.grids figure { margin: 0; } .grids figcaption { font-weight: 600; margin-bottom: .2rem; }
table.grid { border-collapse: collapse; font: 12px/1 ui-monospace, monospace; }
table.grid th { font-weight: 400; color: var(--muted); padding: 2px 4px; white-space: nowrap; }
table.grid thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
td.cell { width: 20px; height: 20px; text-align: center; cursor: pointer; color: #fff; border: 1px solid #fff; }
.cell.allowed { background: var(--allowed); } .cell.blocked { background: var(--blocked); }
.cell.refused { background: var(--refused); } .cell.error { background: var(--error); }
.cell.none { background: var(--none); color: var(--muted); }
.cell.match { background: var(--match); color: #2b8a3e; } .cell.mismatch { background: var(--mismatch); }
#legend span.cell { color: #fff; border-radius: 2px; }
td.wrong { outline: 3px solid #fab005; outline-offset: -3px; }
td.selected { outline: 3px solid #1c7ed6; outline-offset: -3px; }
pre { background: #f8f9fa; padding: .5rem; overflow: auto; max-height: 24rem; }
#detail { position: fixed; right: 1rem; bottom: 1rem; width: 34rem; max-width: calc(100% - 2rem); background: #fff;
  border: 1px solid #adb5bd; border-radius: 6px; box-shadow: 0 4px 18px rgba(0,0,0,.18); padding: .6rem .9rem; z-index: 3; }
#detail h3 { margin: 0 0 .3rem; font-size: 1rem; }
#detail pre { white-space: pre-wrap; word-break: break-all; margin: .3rem 0; }
#detail button { font: inherit; }
#shown { color: var(--muted); }
"#;

const BODY: &str = r#"<section id="controls">
<input id="filter" type="search" placeholder="Filter trials: name, upstream name, message, feature" aria-label="filter">
<span id="shown"></span>
<span id="legend">cells:
<span class="cell allowed">.</span>allowed <span class="cell blocked">X</span>blocked
<span class="cell refused">R</span>refused <span class="cell error">!</span>error
<span class="cell none">?</span>not probed <span class="cell match">.</span>as expected
<span class="cell mismatch">X</span>not as expected</span>
</section>
<noscript><p class="banner">The trial list needs JavaScript; the summary above does not.</p></noscript>
<section id="trials"></section>
<aside id="detail" hidden></aside>
"#;

const SCRIPT: &str = r#"
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const list = document.getElementById("trials");
const OPEN_AT_START = 25;
const CLASS = {
  e: { ".": "allowed", "X": "blocked", "?": "none" },
  o: { ".": "allowed", "X": "blocked", "R": "refused", "!": "error", "?": "none" },
  c: { ".": "match", "X": "mismatch", "!": "error", "?": "none" },
};
const WORD = {
  e: { ".": "allowed", "X": "blocked", "?": "not probed" },
  o: { ".": "connected", "X": "blocked (timed out)", "R": "refused", "!": "probe error", "?": "not probed" },
  c: { ".": "as expected", "X": "NOT as expected", "!": "not judged (probe error)", "?": "not probed" },
};
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
function secs(s) { return s < 1 ? Math.round(s * 1000) + "ms" : s < 60 ? s.toFixed(1) + "s" : Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s"; }
function cellText(t, s, n) {
  const g = DATA[t].steps[s].g, k = g.pods.length, from = g.pods[Math.floor(n / k)], to = g.pods[n % k];
  let text = from + " \u2192 " + to + "  " + DATA[t].steps[s].p + ": expected " + WORD.e[g.e[n]] + ", observed " + WORD.o[g.o[n]];
  if (g.det[n]) text += " (" + g.det[n] + ")";
  return text + "; " + WORD.c[g.c[n]];
}
// Sources and destinations with at least one probed pair in the step (all of them for a full
// matrix; a few for pair probes).
function active(g) {
  const k = g.pods.length, rows = [], cols = [];
  for (let i = 0; i < k; i++) {
    let r = false, c = false;
    for (let j = 0; j < k; j++) { if (g.e[i * k + j] !== "?") r = true; if (g.e[j * k + i] !== "?") c = true; }
    if (r) rows.push(i); if (c) cols.push(i);
  }
  return [rows, cols];
}
function grid(kind, caption, g, t, s) {
  const k = g.pods.length, marks = g[kind], [rows, cols] = active(g);
  const head = el("tr", {}, el("th"));
  for (const c of cols) head.append(el("th", { scope: "col", text: g.pods[c] }));
  const body = el("tbody");
  for (const r of rows) {
    const row = el("tr", {}, el("th", { scope: "row", text: g.pods[r] }));
    for (const c of cols) {
      const n = r * k + c, m = marks[n];
      const cls = "cell " + CLASS[kind][m] + (kind !== "c" && g.c[n] === "X" ? " wrong" : "");
      row.append(el("td", { class: cls, "data-t": t, "data-s": s, "data-n": n, title: cellText(t, s, n), text: m }));
    }
    body.append(row);
  }
  return el("figure", {}, el("figcaption", { text: caption }), el("table", { class: "grid " + kind }, el("thead", {}, head), body));
}
function renderBody(t) {
  const d = DATA[t], body = el("div", { class: "body" });
  const facts = [d.src + "." + d.area, "started " + d.at, "took " + secs(d.d)];
  if (d.pf !== null) facts.push("pre-flight " + secs(d.pf));
  if (d.ph !== null) facts.push("set-up " + secs(d.ph[0]) + ", settle " + secs(d.ph[1]) + ", probing " + secs(d.ph[2]) + ", teardown " + secs(d.ph[3]));
  if (d.f.length) facts.push("features " + d.f.join(", "));
  body.append(el("p", { class: "facts", text: facts.join(" \u00b7 ") }));
  // A trial that did not pass shows its steps that did not pass; the others fold away.
  const focus = d.steps.some(st => st.r !== "passed");
  d.steps.forEach((st, s) => {
    const title = "step " + st.i + " " + st.p + (st.name ? " \u201c" + st.name + "\u201d" : "") + ": " + st.rm +
      " (correct " + st.ok + ", wrong " + st.bad + ", errors " + st.err + "; " + st.calls + " probe calls)" +
      (st.lat !== null ? "; enforced " + secs(st.lat) + " after the policy change" : "");
    const fold = focus && st.r === "passed";
    const box = fold ? el("details", { class: "step r-" + st.r, "data-step": st.i }, el("summary", { text: title }))
      : el("div", { class: "step r-" + st.r, "data-step": st.i }, el("h4", { text: title }));
    if (st.flaky.length) box.append(el("p", { text: "flaky (wrong at first, right later): " + st.flaky.join(", ") }));
    if (st.g) box.append(el("div", { class: "grids" },
      grid("e", "expected", st.g, t, s), grid("o", "observed", st.g, t, s), grid("c", "comparison", st.g, t, s)));
    body.append(box);
  });
  if (d.log) body.append(el("details", { class: "log" }, el("summary", { text: "log" }), el("pre", { text: d.log })));
  return body;
}
function openTrial(details) {
  if (!details.dataset.rendered) { details.append(renderBody(+details.dataset.i)); details.dataset.rendered = "1"; }
}
const rows = DATA.map((d, i) => {
  const sum = el("summary", {}, el("span", { class: "badge", text: d.o }), el("code", { text: d.t }),
    el("span", { class: "upstream", text: d.n }), el("span", { class: "dur", text: secs(d.d) }),
    d.m ? el("span", { class: "msg", text: d.m }) : null);
  const det = el("details", { class: "trial " + d.o, id: "trial-" + i, "data-i": i, "data-outcome": d.o }, sum);
  det.dataset.text = [d.t, d.n, d.src, d.area, d.o, d.m || "", d.f.join(" ")].join(" ").toLowerCase();
  det.addEventListener("toggle", () => { if (det.open) openTrial(det); });
  if (i < OPEN_AT_START && (d.o === "failed" || d.o === "error")) { det.open = true; openTrial(det); }
  return det;
});
list.append(...rows);
const filter = document.getElementById("filter"), shown = document.getElementById("shown");
function applyFilter() {
  const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
  let n = 0;
  for (const r of rows) {
    const hit = words.every(w => r.dataset.text.includes(w));
    r.hidden = !hit; if (hit) n++;
  }
  shown.textContent = n + " of " + rows.length + " trials shown";
}
filter.addEventListener("input", applyFilter);
const panel = document.getElementById("detail");
function showDetail(t, s, n) {
  const g = DATA[t].steps[s].g, k = g.pods.length;
  for (const c of document.querySelectorAll("td.selected")) c.classList.remove("selected");
  for (const c of document.querySelectorAll('td.cell[data-t="' + t + '"][data-s="' + s + '"][data-n="' + n + '"]')) {
    c.classList.add("selected");
    const fold = c.closest("details.step");
    if (fold) fold.open = true;
  }
  const cmd = g.cmd[n];
  panel.replaceChildren(...[
    el("h3", { text: g.pods[Math.floor(n / k)] + " \u2192 " + g.pods[n % k] + "  " + DATA[t].steps[s].p }),
    el("div", { text: DATA[t].t + ", step " + DATA[t].steps[s].i }),
    el("div", { class: "verdict", text: "expected " + WORD.e[g.e[n]] + "; observed " + WORD.o[g.o[n]] + "; " + WORD.c[g.c[n]] }),
    g.det[n] ? el("pre", { class: "probe-error", text: g.det[n] }) : null,
    cmd ? el("div", {}, el("b", { text: "rerun:" }), el("pre", { class: "rerun", text: cmd }),
      el("button", { type: "button", id: "copy", text: "copy" })) :
      el("p", { class: "rerun-none", text: "The step passed: rerun commands are kept for steps that did not." }),
    el("button", { type: "button", id: "close", text: "close" })].filter(Boolean));
  panel.hidden = false;
  const copy = document.getElementById("copy");
  if (copy) copy.addEventListener("click", () => {
    if (navigator.clipboard) navigator.clipboard.writeText(cmd).then(() => { copy.textContent = "copied"; }, () => {});
  });
  document.getElementById("close").addEventListener("click", () => { panel.hidden = true; });
}
list.addEventListener("click", e => {
  const c = e.target.closest("td.cell");
  if (c) showDetail(+c.dataset.t, +c.dataset.s, +c.dataset.n);
});
// #q=<filter>&select=<trial>/<step index>/<from>/<to>
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("q")) filter.value = hash.get("q");
applyFilter();
const sel = hash.get("select");
if (sel) {
  // <trial>/<step index>/<from>/<to>; model pods are `<namespace>/<name>`. The first step with
  // that index that probed the pair (pair probes split one case step by port).
  const p = sel.split("/"), from = p[2] + "/" + p[3], to = p[4] + "/" + p[5];
  const t = DATA.findIndex(d => d.t === p[0]);
  const s = t < 0 ? -1 : DATA[t].steps.findIndex(x => {
    if (String(x.i) !== p[1] || !x.g) return false;
    const f = x.g.pods.indexOf(from), d = x.g.pods.indexOf(to);
    return f >= 0 && d >= 0 && x.g.e[f * x.g.pods.length + d] !== "?";
  });
  if (s >= 0) {
    const g = DATA[t].steps[s].g, row = rows[t];
    row.hidden = false; row.open = true; openTrial(row);
    showDetail(t, s, g.pods.indexOf(from) * g.pods.length + g.pods.indexOf(to));
    if (hash.get("scroll") !== "0") row.scrollIntoView({ block: "start" });
  }
}
"#;
