//! Whole runs against the in-memory cluster: the command line's run (trials under libtest, the
//! JUnit report, the exit code) with the cluster given ready-made, so the harness is judged
//! end to end without a cluster. Each fault the verdict must not pass (no enforcement, servers
//! that never answer) is injected through the cluster's probe oracle.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use netpol_conformance::backend::ProbeJob;
use netpol_conformance::backend::fake::FakeCluster;
use netpol_conformance::cli::RunArgs;
use netpol_conformance::harness::run_on;
use netpol_conformance::reachability::{BlockKind, Outcome};
use netpol_conformance::target::Target;
use serde_json::Value;

const TRIAL: &str = "upstream::ingress::default-deny-ingress";

#[derive(Parser)]
struct Command {
    #[command(flatten)]
    run: RunArgs,
}

/// Runs `TRIAL` on a fake cluster answering with `oracle`; the exit code, the JUnit report and
/// the cluster's log of calls.
fn run(
    oracle: impl Fn(&ProbeJob, &[Value]) -> Outcome + Send + Sync + 'static,
) -> (ExitCode, String, Vec<String>) {
    let dir = tempfile_dir();
    let junit = dir.join("junit.xml");
    let args = Command::parse_from([
        "run",
        "--junit",
        junit.to_str().unwrap(),
        "--all-features",
        "--probe-target",
        "pod-ip",
        "--probe-timeout",
        "0.01",
        "--settle-timeout",
        "0.1",
        "--preflight-timeout",
        "0.1",
        "--test-threads",
        "1",
        "--exact",
        TRIAL,
    ])
    .run;
    let cluster = Arc::new(FakeCluster::new(Box::new(oracle)));
    let code = run_on(args, Target::given(cluster.clone(), true));
    let report = std::fs::read_to_string(&junit).expect("the run writes its JUnit report");
    std::fs::remove_dir_all(&dir).unwrap();
    let log = cluster.log.lock().unwrap().clone();
    (code, report, log)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "netpol-fake-run-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Enforces `deny-ingress` (every pod of namespace x denies ingress) once it exists; a pod's
/// probe of its own address never leaves it.
fn enforcing(job: &ProbeJob, objects: &[Value]) -> Outcome {
    let denied = objects
        .iter()
        .any(|o| o["metadata"]["name"] == "deny-ingress");
    if denied && job.to_model.starts_with("x/") && job.from.model != job.to_model {
        Outcome::Blocked(BlockKind::Timeout)
    } else {
        Outcome::Connected
    }
}

fn testcase(report: &str) -> &str {
    let start = report
        .find(&format!("name=\"{TRIAL}: "))
        .unwrap_or_else(|| panic!("no testcase {TRIAL} in\n{report}"));
    let rest = &report[start..];
    &rest[..rest.find("</testcase>").unwrap_or(rest.len())]
}

#[test]
fn an_enforcing_cluster_passes_and_the_run_cleans_up() {
    let (code, report, log) = run(enforcing);
    assert_eq!(code, ExitCode::SUCCESS, "{report}");
    let case = testcase(&report);
    assert!(
        !case.contains("<failure") && !case.contains("<error"),
        "{case}"
    );
    assert!(!case.contains("<skipped"), "{case}");
    assert!(
        log.iter().any(|l| l == "create NetworkPolicy deny-ingress"),
        "{log:?}"
    );
    assert!(
        log.last().unwrap().starts_with("delete_world"),
        "the trial's world is deleted at the end: {log:?}"
    );
}

#[test]
fn a_cluster_that_enforces_nothing_fails_the_run() {
    let (code, report, _) = run(|_, _| Outcome::Connected);
    assert_ne!(code, ExitCode::SUCCESS);
    let case = testcase(&report);
    assert!(case.contains("<failure"), "{case}");
}

#[test]
fn servers_that_never_answer_are_an_error_not_a_pass() {
    // Every probe times out: a deny-everything "cluster" would match every blocked cell, but
    // the pre-flight sees the world is not ready before any policy is applied.
    let (code, report, log) = run(|_, _| Outcome::Blocked(BlockKind::Timeout));
    assert_ne!(code, ExitCode::SUCCESS);
    let case = testcase(&report);
    assert!(
        case.contains("<error") && case.contains("world not ready"),
        "{case}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("create NetworkPolicy")),
        "no policy is applied to a world that is not ready: {log:?}"
    );
}

/// The in-memory cluster puts the upstream world's pods on two nodes, alternating in model
/// order (`x/a` on the first, `x/b` on the second, …): whether a pair crosses nodes.
fn crosses(from: &str, to: &str) -> bool {
    let order = [
        "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
    ];
    let at = |m: &str| order.iter().position(|p| *p == m).unwrap();
    at(from) % 2 != at(to) % 2
}

#[test]
fn a_failure_only_across_nodes_is_reported_as_such() {
    // Enforcement that only works on the node where both pods run: every leak crosses nodes.
    let (code, report, _) = run(|job, objects| {
        if crosses(&job.from.model, &job.to_model) {
            Outcome::Connected
        } else {
            enforcing(job, objects)
        }
    });
    assert_ne!(code, ExitCode::SUCCESS);
    let case = testcase(&report);
    assert!(case.contains("<failure"), "{case}");
    // x's pods are denied from the six pods of y and z and from their two neighbours in x:
    // of the 24 denied pairs, those whose source sits on the other node leak.
    let leaks = ["x/a", "x/b", "x/c"]
        .iter()
        .flat_map(|to| {
            [
                "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
            ]
            .into_iter()
            .filter(move |from| from != to && crosses(from, to))
        })
        .count();
    assert!(
        case.contains(&format!("all {leaks} wrong pairs are cross-node")),
        "{case}"
    );
    assert!(
        case.contains("placement (S same node, C cross-node)"),
        "{case}"
    );
    assert!(case.contains("name=\"cross-node-pairs\""), "{case}");
}
