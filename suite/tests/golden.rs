//! Golden files: the trial list (trial names are an interface), and each report renderer.
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the files after an intended change; review the diff.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use netpol_conformance::backend::TargetInfo;
use netpol_conformance::case::load_embedded;
use netpol_conformance::features::{Selection, trial_features};
use netpol_conformance::plan::plan_all;
use netpol_conformance::report::timing::TrialTiming;
use netpol_conformance::report::{
    self, Progress, RunReport, SkippedStep, StepReport, StepResult, TrialOutcome, TrialReport, npa,
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
        grids: None,
        placement: tables.map(|_| "all 2 wrong pairs are cross-node".into()),
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
        features: vec![],
        outcome,
        started: {
            started += 1500;
            at(started)
        },
        duration: Duration::from_millis(1500),
        steps,
        log: "create NetworkPolicy deny-all\n".into(),
        preflight: Some(Duration::from_millis(250)),
        timing: None,
    };
    let mut run = RunReport {
        suite_version: "0.1.0".into(),
        target: TargetInfo {
            target: "local".into(),
            kubernetes_version: "v1.37.2".into(),
            implementation: "netpol-enforcer".into(),
            prober: "netns".into(),
            runtime: "emulated".into(),
            container_runtime: "netpol-local://0.1.0".into(),
            enforcer: "process".into(),
            execs: 0,
            connect_p999: Some((Duration::from_micros(2500), 4000)),
            placement: "spread over 2 nodes".into(),
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
        concurrency: 4,
        target_setup: None,
    };
    // The passing trial followed a policy change: where its time went and how long
    // enforcement took.
    run.trials[0].timing = Some(TrialTiming {
        world_setup: Duration::from_millis(600),
        apply: Duration::from_millis(20),
        settle: Duration::from_millis(300),
        probing: Duration::from_millis(200),
        teardown: Duration::from_millis(100),
        probe_connect: Duration::from_secs(1),
        probe_steps: 1,
        deny_steps: 1,
        probe_groups: 1,
        deny_groups: 1,
        scope: "own",
        probes: 81,
        latencies: vec![(1, Duration::from_millis(1250))],
    });
    run
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
    assert!(xml.contains("name=\"world-setup-seconds\" value=\"0.600\""));
    assert!(xml.contains("name=\"deny-steps\" value=\"1\""));
    assert!(xml.contains("name=\"enforcement-latency-seconds\" value=\"1=1.250\""));
    assert!(xml.contains("name=\"enforcement-latency-p50-seconds\" value=\"1.250\""));
    assert!(xml.contains("name=\"trial-concurrency\" value=\"4\""));
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
fn sonobuoy_results_end_with_done_naming_the_results_directory() {
    let dir = std::env::temp_dir().join(format!("netpol-sonobuoy-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = report::write_sonobuoy(&sample_report(), &dir).unwrap();
    let done = std::fs::read_to_string(dir.join("done")).unwrap();
    // The directory, absolute: Sonobuoy's worker tars a directory it is given, so the HTML
    // report (and the entrypoint's log) travel with the JUnit file.
    assert_eq!(PathBuf::from(&done), std::path::absolute(&dir).unwrap());
    assert_eq!(path, dir.join("junit.xml"));
    let xml = std::fs::read_to_string(&path).unwrap();
    assert_eq!(xml, report::junit(&sample_report()));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["done", "junit.xml", "report.html"],
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

/// A run of the 48 network-policy-api trials on an implementation that declares only
/// ClusterNetworkPolicyNamedPorts, on a kernel without SCTP (exempted): outcomes follow the
/// gate's rules, plus one failure, one error and one interrupted trial.
fn npa_run() -> (RunReport, Selection) {
    let judged = Selection::new(
        &["ClusterNetworkPolicyNamedPorts".into()],
        &["SCTP".into()],
        false,
    )
    .unwrap();
    let plans = plan_all(&load_embedded().unwrap()).unwrap();
    let trials = plans
        .iter()
        .filter(|p| p.trial.starts_with("npa::"))
        .map(|p| {
            let features = trial_features(p);
            let sctp = p
                .probes()
                .filter(|s| s.protocol == netpol_conformance::world::Protocol::Sctp)
                .count();
            let outcome = match p.name.as_str() {
                "CNPAdminTierGress" => TrialOutcome::Failed {
                    message: "step 3 (TCP/80) had wrong results".into(),
                },
                "AdminNetworkPolicyEgressUDP" => TrialOutcome::Error {
                    message: "step 2 (UDP/53): exec into gryffindor/0 failed".into(),
                },
                "BaselineAdminNetworkPolicyIngressTCP" => TrialOutcome::Skipped {
                    reason: "the run was interrupted".into(),
                },
                _ => match features.iter().find_map(|f| judged.reason(f)) {
                    Some(reason) => TrialOutcome::NotSupported { reason },
                    None if sctp == p.probes().count() && sctp > 0 => TrialOutcome::NotSupported {
                        reason: "every probe step was skipped: SCTP: exempted".into(),
                    },
                    None if sctp > 0 => TrialOutcome::Partial {
                        skipped: vec![SkippedStep {
                            index: 1,
                            probe: "SCTP/9003".into(),
                            reason: "SCTP: exempted with --exempt-features".into(),
                        }],
                    },
                    None => TrialOutcome::Passed,
                },
            };
            TrialReport {
                trial: p.trial.clone(),
                name: p.name.clone(),
                classname: format!("netpol-conformance.npa.{}", p.case.area),
                features,
                outcome,
                started: at(0),
                duration: Duration::from_secs(3),
                steps: vec![],
                log: String::new(),
                preflight: None,
                timing: None,
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(trials.len(), 48);
    let run = RunReport {
        suite_version: "0.1.0".into(),
        target: TargetInfo {
            target: "kind-kind".into(),
            kubernetes_version: "v1.35.0".into(),
            implementation: "kube-network-policies".into(),
            ..Default::default()
        },
        hostname: "ci-runner-7".into(),
        trials,
        aborted: None,
        started: at(0),
        duration: Duration::from_secs(754),
        concurrency: 0,
        target_setup: None,
    };
    (run, judged)
}

fn implementation() -> npa::Implementation {
    npa::ReportArgs {
        report_output: Some("report.yaml".into()),
        organization: Some("kubernetes".into()),
        project: Some("kube-network-policies".into()),
        url: Some("https://github.com/kubernetes-sigs/kube-network-policies".into()),
        implementation_version: Some("v1.1.1".into()),
        contact: vec![
            "@example/maintainers".into(),
            "https://example.com/issues".into(),
        ],
        additional_info: Some("https://example.com/ci/runs/1".into()),
    }
    .implementation()
    .unwrap()
    .unwrap()
}

#[test]
fn conformance_report_matches_its_golden_file() {
    let (run, judged) = npa_run();
    let yaml = npa::render(&npa::conformance_report(&run, &judged, &implementation()));
    golden("conformance-report.yaml", &yaml);
}

/// upstream's field names (network-policy-api `conformance/apis/v1alpha1`: conformancereport.go,
/// profilereport.go, statistics.go, result.go): (key, required).
const REPORT_FIELDS: &[(&str, bool)] = &[
    ("apiVersion", true),
    ("kind", true),
    ("implementation", true),
    ("date", true),
    ("networkPolicyV2APIVersion", true),
    ("profiles", true),
];
const IMPLEMENTATION_FIELDS: &[(&str, bool)] = &[
    ("organization", true),
    ("project", true),
    ("url", true),
    ("version", true),
    ("contact", true),
    ("additionalInformation", true),
];
const PROFILE_FIELDS: &[(&str, bool)] =
    &[("name", true), ("standard", true), ("experimental", false)];
const STATUS_FIELDS: &[(&str, bool)] = &[
    ("result", true),
    ("summary", true),
    ("statistics", true),
    ("skippedTests", false),
    ("failedTests", false),
];
const EXPERIMENTAL_ONLY_FIELDS: &[(&str, bool)] =
    &[("supportedFeatures", false), ("unsupportedFeatures", false)];
const STATISTICS_FIELDS: &[(&str, bool)] = &[("Passed", true), ("Skipped", true), ("Failed", true)];

/// Checks an object's keys against a field list: none unknown, every required one present.
fn fields<'a>(
    what: &str,
    value: &'a serde_json::Value,
    lists: &[&[(&str, bool)]],
) -> &'a serde_json::Map<String, serde_json::Value> {
    let map = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {value}"));
    let known: Vec<(&str, bool)> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    for key in map.keys() {
        assert!(
            known.iter().any(|(k, _)| k == key),
            "{what} has `{key}`, which upstream's ConformanceReport has not"
        );
    }
    for (key, required) in known {
        assert!(!required || map.contains_key(key), "{what} lacks `{key}`");
    }
    map
}

fn names(v: Option<&serde_json::Value>) -> Vec<&str> {
    v.map(|v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn conformance_report_reads_back_with_upstreams_fields_and_rules() {
    let (run, judged) = npa_run();
    let yaml = npa::render(&npa::conformance_report(&run, &judged, &implementation()));
    let doc: serde_json::Value = serde_saphyr::from_str(&yaml).expect("the report is YAML");
    let top = fields("the report", &doc, &[REPORT_FIELDS]);
    assert_eq!(top["apiVersion"], "policy.networking.k8s.io/v1alpha1");
    assert_eq!(top["kind"], "ConformanceReport");
    assert_eq!(top["networkPolicyV2APIVersion"], "v0.2.0");
    // A string that YAML 1.1 readers (Go's) would otherwise take for a timestamp: quoted.
    assert!(
        yaml.contains("date: '2026-01-02T03:16:39Z'")
            || yaml.contains("date: \"2026-01-02T03:16:39Z\""),
        "{yaml}"
    );
    let date = top["date"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(date).is_ok(), "{date}");
    let implementation = fields(
        "implementation",
        &top["implementation"],
        &[IMPLEMENTATION_FIELDS],
    );
    assert_eq!(names(implementation.get("contact")).len(), 2);

    let mut seen = Vec::new();
    for profile in top["profiles"].as_array().unwrap() {
        let p = fields("a profile", profile, &[PROFILE_FIELDS]);
        let name = p["name"].as_str().unwrap();
        seen.push(name);
        let mut levels = vec![(
            "standard",
            fields(
                &format!("{name}.standard"),
                &p["standard"],
                &[STATUS_FIELDS],
            ),
        )];
        if let Some(e) = p.get("experimental") {
            levels.push((
                "experimental",
                fields(
                    &format!("{name}.experimental"),
                    e,
                    &[STATUS_FIELDS, EXPERIMENTAL_ONLY_FIELDS],
                ),
            ));
        }
        for (level, status) in levels {
            let what = format!("{name}.{level}");
            let stats = fields(
                &format!("{what}.statistics"),
                &status["statistics"],
                &[STATISTICS_FIELDS],
            );
            let count = |k: &str| {
                stats[k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{what}.{k} is a count"))
            };
            let (failed, skipped) = (
                names(status.get("failedTests")),
                names(status.get("skippedTests")),
            );
            assert_eq!(failed.len() as u64, count("Failed"), "{what}");
            assert_eq!(skipped.len() as u64, count("Skipped"), "{what}");
            let result = status["result"].as_str().unwrap();
            let expected = if count("Failed") > 0 {
                "failure"
            } else if count("Skipped") > 0 {
                "partial"
            } else {
                "success"
            };
            assert_eq!(result, expected, "{what}");
            // Short names are upstream's test names for the profile's API version.
            let prefix = if name == "ClusterNetworkPolicy" {
                "CNP"
            } else {
                name
            };
            for t in failed.iter().chain(&skipped) {
                assert!(t.starts_with(prefix), "{what}: {t}");
            }
        }
    }
    assert_eq!(
        seen,
        [
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy"
        ]
    );

    // The outcomes, level by level.
    let profile = |name: &str| {
        doc["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let cnp = profile("ClusterNetworkPolicy");
    assert_eq!(
        names(cnp["standard"].get("failedTests")),
        ["CNPAdminTierGress"]
    );
    // Partial trials (their SCTP steps exempted) count as skipped: the level is not a pass.
    assert_eq!(
        names(cnp["standard"].get("skippedTests")),
        [
            "CNPAdminTierEgressInlineCIDRPeers",
            "CNPBaselineTierEgressInlineCIDRPeers",
            "CNPBaselineTierGress"
        ]
    );
    // Not supported (the 4 SCTP-only trials, the 2 of the undeclared EgressNodePeers): in no
    // statistic. The 4 NamedPorts trials count at the experimental level, the rest standard.
    let stats = &cnp["standard"]["statistics"];
    let counted = stats["Passed"].as_u64().unwrap()
        + stats["Failed"].as_u64().unwrap()
        + stats["Skipped"].as_u64().unwrap();
    assert_eq!(counted, 24 - 4 - 2 - 4, "{stats}");
    let experimental = &cnp["experimental"];
    assert_eq!(experimental["statistics"]["Passed"], 4);
    assert_eq!(
        names(experimental.get("supportedFeatures")),
        ["ClusterNetworkPolicyNamedPorts"]
    );
    assert_eq!(
        names(experimental.get("unsupportedFeatures")),
        ["ClusterNetworkPolicyEgressNodePeers"]
    );
    // No experimental v1alpha1 feature was declared: as upstream, no experimental level at all.
    let anp = profile("AdminNetworkPolicy");
    assert!(anp.get("experimental").is_none());
    assert_eq!(
        names(anp["standard"].get("failedTests")),
        ["AdminNetworkPolicyEgressUDP"]
    );
    // Integration and PriorityField need both v1alpha1 kinds: in neither profile.
    assert!(!yaml.contains("AdminNetworkPolicyIntegration") && !yaml.contains("PriorityField"));
    let banp = profile("BaselineAdminNetworkPolicy");
    assert_eq!(banp["standard"]["result"], "partial");
}

#[test]
fn github_step_summary_matches_its_golden_file() {
    let md = report::github::markdown(&sample_report());
    golden("step-summary.md", &md);
    // Failing and erroring trials with their tables and rerun commands; passing ones not.
    assert!(md.contains("<b>FAILED</b> <code>upstream::ingress::fail</code>"));
    assert!(md.contains("<b>ERROR</b> <code>upstream::ingress::error</code>"));
    assert!(!md.contains("upstream::ingress::pass"));
    assert!(md.contains("comparison:\n-   x/a x/b\nx/a   ?   X\n"));
    assert!(md.contains("netpol-conformance probe --netns /run/netns/npc-1"));
}

#[test]
fn github_step_summary_is_plain_and_stays_under_githubs_limit() {
    let mut r = sample_report();
    let failing = r.trials[1].clone();
    r.trials[1].steps[0].tables =
        Some("comparison:\n-   x/a\nx/a   \x1b[31mX\x1b[0m\n".to_string());
    // 3,000 failing trials with large tables: far above 1 MiB if all were shown.
    for i in 0..3000 {
        let mut t = failing.clone();
        t.trial = format!("user::bulk::t{i:04}");
        t.steps[0].tables = Some("x".repeat(2000));
        r.trials.push(t);
    }
    let md = report::github::markdown(&r);
    assert!(!md.contains('\x1b'), "colour codes are dropped");
    assert!(md.contains("x/a   X\n"));
    assert!(md.len() <= report::github::LIMIT, "{}", md.len());
    let shown = md.matches("<b>FAILED</b>").count();
    assert!(shown > 100 && shown < 3001, "{shown}");
    assert!(
        md.contains(&format!(
            "… and {} more failing trials: see the JUnit report.",
            3001 - shown
        )),
        "{}",
        &md[md.len() - 200..]
    );
}
