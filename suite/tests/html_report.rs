//! The HTML report: rendered from runs built out of the real plans (all 97 trials, and a
//! generated 2,000), checked as text, and — where Debian's `chromium` is installed — opened in
//! headless Chromium, whose DOM is asserted on (`--dump-dom`) and, with
//! `NETPOL_HTML_SCREENSHOT=<png>`, photographed. `NETPOL_REQUIRE_BROWSER=1` makes a missing
//! browser a failure (hack/html-report.sh sets both).
//!
//! The runs are synthetic: every probe observes its expectation except where a scenario below
//! breaks it (wrong cells, a refusal, probe errors, an exempted protocol, an undeclared feature, a
//! world that never became ready).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use netpol_conformance::backend::{ProbeJob, RealizedPod, TargetInfo};
use netpol_conformance::case::load_embedded;
use netpol_conformance::features::{Selection, trial_features};
use netpol_conformance::plan::{Action, Plan, plan_all};
use netpol_conformance::reachability::{
    BlockKind, Comparison, Observed, Outcome, TruthTables, Verdict,
};
use netpol_conformance::report::html::{self, listing_order};
use netpol_conformance::report::timing::TrialTiming;
use netpol_conformance::report::{
    PairCommand, RunReport, SkippedStep, StepGrids, StepReport, StepResult, TrialOutcome,
    TrialReport,
};
use netpol_conformance::world::Protocol;

/// 2026-01-02T03:04:05Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045)
}

/// A realized pod as a kind cluster would have it, for rerun commands.
fn pod(model: &str, i: usize) -> RealizedPod {
    let (ns, name) = model.split_once('/').unwrap_or(("default", model));
    RealizedPod {
        model: model.to_string(),
        namespace: format!("{ns}-r7f3a"),
        name: name.to_string(),
        ip: IpAddr::from([10, 244, (i / 200) as u8, (i % 200) as u8 + 10]),
        service_ip: None,
        container: "agnhost".into(),
        netns: None,
        node: Some(format!("node-{}", i % 2)),
    }
}

/// How a scenario changes what one probe step observes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Break {
    /// Two blocked pairs connect.
    Leak,
    /// A pair that must be dropped is refused instead.
    Refuse,
    /// Three pairs cannot be probed.
    ProbeErrors,
}

/// The trial's fate: `Break(n, how)` breaks the n-th probe step that can break that way (one
/// with a blocked pair to leak or refuse; any, for probe errors).
enum Scenario {
    Fine,
    Break(usize, Break),
    SkipProtocol(Protocol),
    NotSupported(String),
    WorldNotReady,
}

fn scenario(plan: &Plan, judged: &Selection) -> Scenario {
    if let Some(reason) = trial_features(plan).iter().find_map(|f| judged.reason(f)) {
        return Scenario::NotSupported(reason);
    }
    match plan.trial.as_str() {
        "npa::admin-tier::admin-gress::v1alpha2" => Scenario::Break(1, Break::Leak),
        "upstream::egress::deny-egress-pod-selector"
        | "upstream::ingress::default-deny-ingress" => Scenario::Break(0, Break::Leak),
        "npa::baseline-tier::baseline-egress-tcp::v1alpha1" => Scenario::Break(1, Break::Refuse),
        "upstream::named-port::named-port-ingress" => Scenario::Break(0, Break::ProbeErrors),
        "npa::admin-tier::admin-ingress-udp::v1alpha1" => Scenario::WorldNotReady,
        t if t.contains("sctp") => Scenario::NotSupported(
            "every probe step was skipped: SCTP: exempted with --exempt-features".into(),
        ),
        _ if plan.probes().any(|p| p.protocol == Protocol::Sctp) => {
            Scenario::SkipProtocol(Protocol::Sctp)
        }
        _ => Scenario::Fine,
    }
}

/// One trial of the synthetic run, stepping through the plan as the runner does: probe steps
/// observe their expectation unless broken; the first failing step ends the trial.
fn synthetic_trial(
    plan: &Plan,
    judged: &Selection,
    name: &str,
    started: SystemTime,
) -> TrialReport {
    let mut report = TrialReport {
        trial: name.to_string(),
        name: plan.name.clone(),
        classname: format!(
            "netpol-conformance.{}.{}",
            plan.case.source.as_str(),
            plan.case.area
        ),
        features: trial_features(plan),
        outcome: TrialOutcome::Passed,
        started,
        duration: Duration::from_millis(2000 + 37 * (name.len() as u64 % 40)),
        steps: vec![],
        log: format!(
            "world {} realized with suffix r7f3a\npre-flight: pairs connected with no policy in 0.4s\n",
            plan.world.kind.as_str()
        ),
        preflight: Some(Duration::from_millis(400)),
        timing: None,
    };
    let scenario = scenario(plan, judged);
    match &scenario {
        Scenario::NotSupported(reason) => {
            report.outcome = TrialOutcome::NotSupported {
                reason: reason.clone(),
            };
            report.log.clear();
            report.preflight = None;
            report.duration = Duration::ZERO;
            return report;
        }
        Scenario::WorldNotReady => {
            report.outcome = TrialOutcome::Error {
                message: "creating world npa: pod network-policy-conformance-hufflepuff-r7f3a/\
                          cedric-diggory-1 never became Ready (condition Ready=False)"
                    .into(),
            };
            report.log.clear();
            report.preflight = None;
            return report;
        }
        _ => {}
    }
    let mut probe_no = 0;
    let mut skipped = Vec::new();
    for step in &plan.steps {
        let Action::Probe(probe) = &step.action else {
            report
                .log
                .push_str(&format!("{} (step {})\n", step.action.name(), step.index));
            continue;
        };
        let label = format!("{}/{}", probe.protocol, probe.port);
        let mut s = StepReport {
            index: step.index,
            name: probe.name.clone(),
            probe: label.clone(),
            result: StepResult::Passed,
            correct: 0,
            wrong: 0,
            errors: 0,
            flaky: vec![],
            calls: 0,
            tables: None,
            rerun: vec![],
            grids: None,
            placement: None,
        };
        if matches!(scenario, Scenario::SkipProtocol(p) if p == probe.protocol) {
            let reason = "SCTP: exempted with --exempt-features".to_string();
            skipped.push(SkippedStep {
                index: step.index,
                probe: label,
                reason: reason.clone(),
            });
            s.result = StepResult::Skipped { reason };
            report.steps.push(s);
            continue;
        }
        let pods = probe.expected.pods().to_vec();
        let mut observed = Observed::new(pods.clone());
        for (from, to, allowed) in probe.expected.entries() {
            let o = if *allowed {
                Outcome::Connected
            } else {
                Outcome::Blocked(BlockKind::Timeout)
            };
            observed.set(from, to, o);
        }
        let blocked: Vec<(String, String)> = probe
            .expected
            .entries()
            .filter(|(_, _, a)| !**a)
            .map(|(f, t, _)| (f.to_string(), t.to_string()))
            .collect();
        let all: Vec<(String, String)> = probe
            .expected
            .entries()
            .map(|(f, t, _)| (f.to_string(), t.to_string()))
            .collect();
        let broken = match scenario {
            Scenario::Break(n, how) if how == Break::ProbeErrors || !blocked.is_empty() => {
                probe_no += 1;
                (n + 1 == probe_no).then_some(how)
            }
            _ => None,
        };
        match broken {
            Some(Break::Leak) => {
                for (f, t) in blocked.iter().take(2) {
                    observed.set(f, t, Outcome::Connected);
                }
            }
            Some(Break::Refuse) => {
                if let Some((f, t)) = blocked.first() {
                    observed.set(f, t, Outcome::Blocked(BlockKind::Refused));
                }
            }
            Some(Break::ProbeErrors) => {
                for (f, t) in all.iter().rev().take(3) {
                    observed.set(
                        f,
                        t,
                        Outcome::Error(format!(
                            "exec into {f}: container agnhost not found in pod (is it Running?)"
                        )),
                    );
                }
            }
            None => {}
        }
        let comparison = Comparison::new(&probe.expected, &observed, plan.block_rule);
        s.correct = comparison.correct;
        s.wrong = comparison.wrong;
        s.errors = comparison.errors;
        s.calls = all.len() + if broken.is_some() { 40 } else { 0 };
        let index: BTreeMap<&str, usize> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        let job = |f: &str, t: &str| ProbeJob {
            from: pod(f, index[f]),
            to_model: t.to_string(),
            to_ip: pod(t, index[t]).ip,
            port: probe.port,
            protocol: probe.protocol,
            timeout: Duration::from_secs(3),
        };
        s.result = StepResult::judged(&comparison);
        // Pods alternate between two nodes, in model order.
        let pods = probe.expected.pods().to_vec();
        let at = |m: &str| pods.iter().position(|p| p == m).unwrap_or(0);
        let mut cross_node = netpol_conformance::reachability::Table::new(pods.clone());
        for (f, t, _) in probe.expected.entries() {
            cross_node.set(f, t, at(f) % 2 != at(t) % 2);
        }
        let mut grids = StepGrids {
            expected: probe.expected.clone(),
            observed: observed.clone(),
            comparison: comparison.table.clone(),
            cross_node,
            rerun: vec![],
        };
        if !comparison.passed() {
            s.tables = Some(
                TruthTables {
                    expected: &probe.expected,
                    observed: &observed,
                    comparison: &comparison,
                    color: false,
                }
                .to_string(),
            );
            s.rerun = all
                .iter()
                .filter(|(f, t)| comparison.table.get(f, t) != Some(&Verdict::Match))
                .map(|(f, t)| job(f, t).rerun_command())
                .collect();
            grids.rerun = all
                .iter()
                .map(|(f, t)| PairCommand {
                    from: f.clone(),
                    to: t.clone(),
                    command: job(f, t).rerun_command(),
                })
                .collect();
        }
        s.grids = Some(grids);
        let result = s.result.clone();
        report.steps.push(s);
        match result {
            StepResult::Failed => {
                report.outcome = TrialOutcome::Failed {
                    message: format!("step {} ({label}) had wrong results", step.index),
                };
                return report;
            }
            StepResult::Error { message } => {
                report.outcome = TrialOutcome::Error {
                    message: format!("step {} ({label}): {message}", step.index),
                };
                return report;
            }
            _ => {}
        }
    }
    if !skipped.is_empty() {
        report.outcome = TrialOutcome::Partial { skipped };
    }
    report
}

fn judged() -> Selection {
    Selection::new(
        &["ClusterNetworkPolicyNamedPorts".into()],
        &["SCTP".into()],
        true,
    )
    .unwrap()
}

/// A run of `n` trials from the real plans (names repeat with a `::rep<k>` suffix past 97).
fn synthetic_run(n: usize) -> RunReport {
    let plans = plan_all(&load_embedded().unwrap()).unwrap();
    let judged = judged();
    let trials: Vec<TrialReport> = (0..n)
        .map(|i| {
            let plan = &plans[i % plans.len()];
            let name = if i < plans.len() {
                plan.trial.clone()
            } else {
                format!("{}::rep{}", plan.trial, i / plans.len())
            };
            synthetic_trial(
                plan,
                &judged,
                &name,
                t0() + Duration::from_millis(1500 * i as u64),
            )
        })
        .collect();
    let mut trials = trials;
    trials.sort_by(|a, b| a.trial.cmp(&b.trial));
    RunReport {
        suite_version: "0.1.0".into(),
        target: TargetInfo {
            target: "sample (synthetic run for docs and tests)".into(),
            kubernetes_version: "v1.37.2".into(),
            implementation: "example-cni".into(),
            ..Default::default()
        },
        hostname: "ci-runner-7".into(),
        trials,
        aborted: None,
        started: t0(),
        duration: Duration::from_secs(754),
        concurrency: 0,
        target_setup: None,
    }
}

/// The JSON the page embeds.
fn data(html: &str) -> serde_json::Value {
    let start = html
        .find("<script type=\"application/json\" id=\"data\">")
        .unwrap();
    let rest = &html[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(json).expect("embedded data is JSON")
}

fn out_dir() -> PathBuf {
    let dir = std::env::var_os("NETPOL_HTML_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("html-report"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_full_run_renders_summary_first_failures_first_and_nothing_fetched() {
    let run = synthetic_run(97);
    let c = run.counts();
    assert!(c.failed >= 3 && c.errors >= 2 && c.partial >= 1 && c.not_supported >= 1);
    let page = html::html(&run);
    // Self-contained: no external resource, and a policy forbidding any fetch.
    for needle in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "<link",
        "src=\"//",
    ] {
        assert!(
            !page.contains(needle),
            "the page fetches something: {needle}"
        );
    }
    assert!(
        page.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';")
    );
    // The summary comes before the trials and counts every outcome.
    let summary = page.find("id=\"summary\"").unwrap();
    assert!(summary < page.find("id=\"trials\"").unwrap());
    for (class, n) in [
        ("passed", c.passed),
        ("failed", c.failed),
        ("error", c.errors),
        ("skipped", c.skipped),
        ("not-supported", c.not_supported),
        ("partial", c.partial),
    ] {
        assert!(
            page.contains(&format!("data-outcome=\"{class}\" data-count=\"{n}\"")),
            "{class} {n}"
        );
    }
    assert!(page.contains("<tr data-area=\"npa.admin-tier\">"));
    assert!(page.contains("<dd id=\"kubernetes-version\">v1.37.2</dd>"));
    // Failures first, then errors; passes last.
    let d = data(&page);
    let words: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["o"].as_str().unwrap())
        .collect();
    assert_eq!(words.len(), 97);
    assert_eq!(words[0], "failed");
    let last_failure = words
        .iter()
        .rposition(|w| *w == "failed" || *w == "error")
        .unwrap();
    let first_pass = words.iter().position(|w| *w == "passed").unwrap();
    assert!(last_failure < first_pass);
    assert_eq!(
        listing_order(&run)[0].trial,
        d[0]["t"].as_str().unwrap(),
        "the page lists in listing_order"
    );
    // Every probed step carries its grids; a failing step's cells have rerun commands.
    let failing = d
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["t"] == "npa::admin-tier::admin-gress::v1alpha2")
        .unwrap();
    let steps = failing["steps"].as_array().unwrap();
    let bad = steps.iter().find(|s| s["r"] == "failed").unwrap();
    let g = &bad["g"];
    let k = g["pods"].as_array().unwrap().len();
    for key in ["e", "o", "c"] {
        assert_eq!(g[key].as_str().unwrap().chars().count(), k * k, "{key}");
    }
    let mismatches = g["c"].as_str().unwrap().matches('X').count();
    assert!(mismatches >= 1);
    assert_eq!(mismatches as u64, bad["bad"].as_u64().unwrap());
    assert!(!g["cmd"].as_object().unwrap().is_empty());
    let passed = steps.iter().find(|s| s["r"] == "passed").unwrap();
    assert!(passed["g"]["cmd"].as_object().unwrap().is_empty());
    // Probe errors keep their message per cell; a refusal is its own mark.
    let errored = d
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["t"] == "upstream::named-port::named-port-ingress")
        .unwrap();
    assert_eq!(errored["o"], "error");
    let det = errored["steps"][0]["g"]["det"].as_object().unwrap();
    assert_eq!(det.len(), 3);
    assert!(
        det.values()
            .all(|v| v.as_str().unwrap().contains("container agnhost not found"))
    );
    assert!(
        page.contains("\\u003c") || !page[page.find("id=\"data\"").unwrap()..].contains("</pre>")
    );
    std::fs::write(out_dir().join("report-97.html"), &page).unwrap();
}

#[test]
fn two_thousand_trials_render_and_stay_small() {
    // How fast belongs in a benchmark (BENCHMARKS.md), not here: this machine is noisy.
    let run = synthetic_run(2000);
    let page = html::html(&run);
    assert!(page.len() < 40 * 1024 * 1024, "{} bytes", page.len());
    assert_eq!(data(&page).as_array().unwrap().len(), 2000);
    std::fs::write(out_dir().join("report-2000.html"), &page).unwrap();
}

#[test]
fn markup_in_names_and_messages_cannot_escape_its_place() {
    let mut run = synthetic_run(3);
    run.trials[0].outcome = TrialOutcome::Failed {
        message: "</script><script>alert(1)</script>".into(),
    };
    run.target.implementation = "<b>cni</b>".into();
    let page = html::html(&run);
    assert!(!page.contains("<script>alert(1)"));
    assert!(page.contains("&lt;b&gt;cni&lt;/b&gt;"));
    assert_eq!(
        data(&page)[0]["m"],
        "</script><script>alert(1)</script>",
        "the data keeps the text exactly"
    );
}

#[test]
fn enforcement_latencies_are_summarized_and_shown_on_their_steps() {
    let mut run = synthetic_run(3);
    assert!(
        !html::html(&run).contains("id=\"latency\""),
        "no latencies, no section"
    );
    for (i, trial) in run.trials.iter_mut().enumerate() {
        let step = trial.steps.first().map(|s| s.index).unwrap_or(1);
        trial.timing = Some(TrialTiming {
            world_setup: Duration::from_millis(700),
            latencies: vec![(step, Duration::from_millis(1000 + 500 * i as u64))],
            ..Default::default()
        });
    }
    let page = html::html(&run);
    assert!(
        page.contains("id=\"latency-p50\" data-seconds=\"1.500\""),
        "{page}"
    );
    assert!(page.contains("id=\"latency-max\" data-seconds=\"2.000\""));
    assert!(page.contains("id=\"latency-samples\">3<"));
    let name = &run.trials[0].trial;
    let data = data(&page);
    let trial = data
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["t"] == name.as_str())
        .unwrap();
    assert_eq!(trial["ph"][0], 0.7);
    if !run.trials[0].steps.is_empty() {
        assert_eq!(trial["steps"][0]["lat"], 1.0);
    }
}

// ---- in a real browser ----

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let why = "no chromium in PATH (Debian: apt-get install chromium)";
        if std::env::var_os("NETPOL_REQUIRE_BROWSER").is_some() {
            panic!("NETPOL_REQUIRE_BROWSER=1 but {why}");
        }
        eprintln!("html_report browser checks: not run: {why}");
    }
    found
}

/// Runs headless Chromium on `page` (with a fragment) and returns what it printed.
fn headless(browser: &Path, page: &Path, fragment: &str, extra: &[&str]) -> String {
    let profile = tempdir("chromium-profile");
    let url = format!("file://{}{fragment}", page.display());
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempdir(what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

#[test]
fn headless_chromium_draws_the_grids_filters_and_shows_a_cell() {
    let Some(browser) = chromium() else { return };
    let run = synthetic_run(97);
    let path = out_dir().join("browser-97.html");
    std::fs::write(&path, html::html(&run)).unwrap();

    let dom = headless(&browser, &path, "", &["--dump-dom"]);
    assert_eq!(
        count(&dom, "<details class=\"trial "),
        97,
        "every trial listed"
    );
    let first = &dom[dom.find("<details class=\"trial ").unwrap()..];
    assert!(
        first.starts_with("<details class=\"trial failed\""),
        "{}",
        &first[..200]
    );
    // Failing trials are open with their three grids drawn, each cell with a hover text.
    let c = run.counts();
    assert!(count(&dom, "<figcaption>comparison</figcaption>") > c.failed);
    assert!(dom.contains("<td class=\"cell mismatch\""));
    assert!(
        dom.contains("<td class=\"cell refused wrong\""),
        "the refusal is marked"
    );
    assert!(dom.contains("<td class=\"cell error\""));
    assert!(
        dom.contains("title=\"x/a → x/b  TCP/80: expected "),
        "hover text"
    );
    assert!(dom.contains("97 of 97 trials shown"));
    // Passing trials are not drawn until opened: the page stays light.
    assert!(count(&dom, "<div class=\"body\">") < 30);

    // A filter in the address narrows the list.
    let dom = headless(&browser, &path, "#q=egress-sctp", &["--dump-dom"]);
    let matching = run
        .trials
        .iter()
        .filter(|t| t.trial.contains("egress-sctp"))
        .count();
    assert!(matching > 2);
    assert!(
        dom.contains(&format!("{matching} of 97 trials shown")),
        "filter"
    );
    assert_eq!(
        count(&dom, "<details class=\"trial ") - count(&dom, "hidden=\"\"><summary>"),
        matching
    );

    // Selecting a cell opens the detail panel with the pair and its rerun command: a pair the
    // broken upstream trial got wrong.
    let trial = run
        .trials
        .iter()
        .find(|t| t.trial == "upstream::ingress::default-deny-ingress")
        .unwrap();
    let step = trial
        .steps
        .iter()
        .find(|s| s.result == StepResult::Failed)
        .unwrap();
    let g = step.grids.as_ref().unwrap();
    let (from, to, _) = g
        .comparison
        .entries()
        .find(|(_, _, v)| **v == Verdict::Mismatch)
        .unwrap();
    let select = format!(
        "#select={}/{}/{from}/{to}&scroll=0",
        trial.trial, step.index
    );
    let select = select.as_str();
    let dom = headless(&browser, &path, select, &["--dump-dom"]);
    let panel = &dom[dom.find("<aside id=\"detail\"").unwrap()..];
    let panel = &panel[..panel.find("</aside>").unwrap()];
    assert!(!panel.starts_with("<aside id=\"detail\" hidden"), "{panel}");
    assert!(panel.contains(&format!("{from} → {to}")), "{panel}");
    assert!(panel.contains("NOT as expected"), "{panel}");
    let (_, source) = from.split_once('/').unwrap();
    assert!(
        panel.contains(&format!("kubectl exec {source} -c agnhost")),
        "{panel}"
    );
    assert!(
        dom.contains("cell allowed selected") || dom.contains("selected\""),
        "the cell is marked"
    );

    if let Some(png) = std::env::var_os("NETPOL_HTML_SCREENSHOT").map(PathBuf::from) {
        if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).unwrap();
        }
        // The README's picture: upstream's trials filtered in, the wrong cell's detail open.
        let shot = format!("--screenshot={}", png.display());
        let fragment = select.replacen("#select=", "#q=upstream&select=", 1);
        headless(
            &browser,
            &path,
            &fragment,
            &[&shot, "--window-size=1440,1900"],
        );
        let bytes = std::fs::read(&png).expect("the screenshot was written");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000);
    }
}

#[test]
fn headless_chromium_lists_two_thousand_trials() {
    let Some(browser) = chromium() else { return };
    let path = out_dir().join("browser-2000.html");
    std::fs::write(&path, html::html(&synthetic_run(2000))).unwrap();
    let dom = headless(&browser, &path, "#q=rep19", &["--dump-dom"]);
    assert_eq!(count(&dom, "<details class=\"trial "), 2000);
    let matching = (0..2000)
        .filter(|i| *i >= 97 && format!("::rep{}", i / 97).contains("rep19"))
        .count();
    assert!(
        dom.contains(&format!("{matching} of 2000 trials shown")),
        "filter over 2,000"
    );
}
