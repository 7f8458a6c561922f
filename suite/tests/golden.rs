//! Golden files: the trial list (trial names are an interface), and each report renderer.
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the files after an intended change; review the diff.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use netpol_conformance::backend::TargetInfo;
use netpol_conformance::case::load_embedded;
use netpol_conformance::plan::plan_all;
use netpol_conformance::report::{
    self, Progress, RunReport, SkippedStep, StepReport, StepResult, TrialOutcome, TrialReport,
};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendered output at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (UPDATE_GOLDEN=1 rewrites it after an intended change)",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn trial_names_are_pinned() {
    let plans = plan_all(&load_embedded().expect("the table loads")).expect("the table plans");
    let names: Vec<&str> = plans.iter().map(|p| p.trial.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "trials are listed in name order");
    let listing: String = names.iter().map(|n| format!("{n}: test\n")).collect();
    golden("trials.txt", &listing);
}

/// 2026-01-02T03:04:05Z plus `ms` milliseconds: fixed times keep the goldens stable.
fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045) + Duration::from_millis(ms)
}

fn sample_report() -> RunReport {
    let tables = "reachability: correct:70, incorrect:2, errors:0, result=false\nexpected:\n-   x/a x/b\nx/a   ?   X\nx/b   X   ?\n\nobserved:\n-   x/a x/b\nx/a   ?   .\nx/b   .   ?\n\ncomparison:\n-   x/a x/b\nx/a   ?   X\nx/b   X   ?\n";
    let step = |result: StepResult, tables: Option<&str>| StepReport {
        index: 1,
        name: None,
        probe: "TCP/80".into(),
        result,
        correct: if tables.is_some() { 70 } else { 72 },
        wrong: if tables.is_some() { 2 } else { 0 },
        errors: 0,
        calls: 9,
        flaky: if tables.is_some() {
            vec![]
        } else {
            vec!["y/a -> x/a".into()]
        },
        tables: tables.map(String::from),
        rerun: if tables.is_some() {
            vec!["netpol-conformance probe --netns /run/netns/npc-1 10.244.0.2:80 --protocol tcp --timeout 1".into()]
        } else {
            vec![]
        },
    };
    let mut started = 0;
    let mut trial = |name: &str, outcome: TrialOutcome, steps: Vec<StepReport>| TrialReport {
        trial: format!("upstream::ingress::{name}"),
        name: format!("should {name}"),
        classname: "netpol-conformance.upstream.ingress".into(),
        outcome,
        started: {
            started += 1500;
            at(started)
        },
        duration: Duration::from_millis(1500),
        steps,
        log: "create NetworkPolicy deny-all\n".into(),
        preflight: Some(Duration::from_millis(250)),
    };
    RunReport {
        suite_version: "0.1.0".into(),
        target: TargetInfo {
            target: "local".into(),
            kubernetes_version: "v1.37.2".into(),
            implementation: "netpol-enforcer".into(),
        },
        hostname: "ci-runner-7".into(),
        trials: vec![
            trial(
                "pass",
                TrialOutcome::Passed,
                vec![step(StepResult::Passed, None)],
            ),
            trial(
                "fail",
                TrialOutcome::Failed {
                    message: "step 1 (TCP/80) had wrong results".into(),
                },
                vec![step(StepResult::Failed, Some(tables))],
            ),
            trial(
                "error",
                TrialOutcome::Error {
                    message: "creating world upstream: pod x/a never became Ready".into(),
                },
                vec![],
            ),
            trial(
                "skip",
                TrialOutcome::NotSupported {
                    reason: "SCTP: SCTP is not supported by this kernel".into(),
                },
                vec![],
            ),
            trial(
                "partial",
                TrialOutcome::Partial {
                    skipped: vec![SkippedStep {
                        index: 2,
                        probe: "SCTP/80".into(),
                        reason: "SCTP: exempted with --exempt-features".into(),
                    }],
                },
                vec![
                    step(StepResult::Passed, None),
                    StepReport {
                        index: 2,
                        probe: "SCTP/80".into(),
                        result: StepResult::Skipped {
                            reason: "SCTP: exempted with --exempt-features".into(),
                        },
                        correct: 0,
                        calls: 0,
                        flaky: vec![],
                        ..step(StepResult::Passed, None)
                    },
                ],
            ),
        ],
        aborted: None,
        started: at(0),
        duration: Duration::from_secs(12),
    }
}

#[test]
fn junit_matches_its_golden_file() {
    let xml = report::junit(&sample_report());
    golden("junit.xml", &xml);
    // What Sonobuoy's junit processing keys on.
    assert!(xml.contains("<failure message=\"step 1 (TCP/80) had wrong results\""));
    assert!(xml.contains("<error message=\"creating world upstream"));
    assert!(xml.contains("<skipped message=\"SCTP: SCTP is not supported by this kernel\""));
    // A partial trial is never a plain pass: skipped, with the steps it left out named.
    assert!(xml.contains(
        "<skipped message=\"partial: the steps that ran passed; skipped step 2 (SCTP/80): SCTP"
    ));
    assert!(xml.contains("name=\"skipped-steps\" value=\"2 SCTP/80\""));
    assert!(xml.contains("name=\"preflight-seconds\" value=\"0.250\""));
    assert!(xml.contains("tests=\"5\""));
}

#[test]
fn every_testcase_says_when_where_and_how_long() {
    let xml = report::junit(&sample_report());
    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suite = &parsed.test_suites[0];
    assert_eq!(
        suite.extra.get("hostname").map(|h| h.as_str()),
        Some("ci-runner-7")
    );
    assert_eq!(
        suite.timestamp.unwrap().to_rfc3339(),
        "2026-01-02T03:04:05+00:00"
    );
    assert_eq!(suite.test_cases.len(), 5);
    for (i, case) in suite.test_cases.iter().enumerate() {
        let ts = case
            .timestamp
            .unwrap_or_else(|| panic!("{} has no timestamp", case.name.as_str()));
        // Trial i started 1.5 s after trial i-1 (sample_report's clock).
        let expected = chrono::DateTime::<chrono::Utc>::from(at(1500 * (i as u64 + 1)));
        assert_eq!(ts, expected, "{}", case.name.as_str());
        assert_eq!(
            case.time,
            Some(Duration::from_millis(1500)),
            "{}",
            case.name.as_str()
        );
        assert_eq!(
            case.extra.get("hostname").map(|h| h.as_str()),
            Some("ci-runner-7"),
            "{}",
            case.name.as_str()
        );
    }
}

#[test]
fn an_aborted_run_is_one_error_in_junit_and_in_the_summary() {
    let mut r = sample_report();
    r.trials.truncate(2);
    r.aborted = Some("the run was interrupted".into());
    r.duration = Duration::from_secs(7);
    let xml = report::junit(&r);
    assert!(xml.contains("<error message=\"the run was interrupted\" type=\"aborted\""));
    assert!(r.has_failures());
    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suite = &parsed.test_suites[0];
    let abort = suite
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == report::ABORT_CASE)
        .expect("the abort case");
    // The run as one case: from the run's start, for as long as it ran, on this host.
    assert_eq!(
        abort.timestamp,
        Some(chrono::DateTime::<chrono::Utc>::from(at(0)).into())
    );
    assert_eq!(abort.time, Some(Duration::from_secs(7)));
    assert_eq!(
        abort.extra.get("hostname").map(|h| h.as_str()),
        Some("ci-runner-7")
    );
    // Counted the same way by both renderers: one passed, one failed, one error (the abort).
    let c = r.counts();
    assert_eq!((c.passed, c.failed, c.errors), (1, 1, 1));
    assert_eq!(
        (suite.tests, suite.failures, suite.errors, suite.skipped),
        (
            3,
            c.failed,
            c.errors,
            c.skipped + c.not_supported + c.partial
        )
    );
    let summary = report::summary(&r);
    assert!(
        summary.ends_with("1 passed, 2 failed, 0 skipped (1 errors, 0 not supported, 0 partial)\n"),
        "{summary}"
    );
}

#[test]
fn summary_matches_its_golden_file() {
    golden("summary.txt", &report::summary(&sample_report()));
}

#[test]
fn sonobuoy_results_end_with_done_naming_the_junit_file() {
    let dir = std::env::temp_dir().join(format!("netpol-sonobuoy-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = report::write_sonobuoy(&sample_report(), &dir).unwrap();
    let done = std::fs::read_to_string(dir.join("done")).unwrap();
    assert_eq!(done, path.display().to_string());
    assert!(PathBuf::from(&done).is_absolute());
    let xml = std::fs::read_to_string(&path).unwrap();
    assert_eq!(xml, report::junit(&sample_report()));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["done", "junit.xml"],
        "no other *.xml or stray files"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn progress_is_posted_as_sonobuoy_expects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("}") {
            let n = conn.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8(buf).unwrap()
    });
    let progress = Progress {
        msg: "PASSED upstream::ingress::pass".into(),
        total: 4,
        completed: 1,
        failures: vec!["upstream::ingress::fail".into()],
        errors: vec![],
    };
    report::post_progress(port, &progress).unwrap();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /progress HTTP/1.1\r\n"),
        "{request}"
    );
    let body = request.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["total"], 4);
    assert_eq!(json["completed"], 1);
    assert_eq!(json["failures"][0], "upstream::ingress::fail");
    assert_eq!(json["msg"], "PASSED upstream::ingress::pass");
}
