//! The runner against the in-memory cluster: outcomes, tables, pre-flight, witnesses, reuse.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use serde_json::Value;

use super::*;
use crate::backend::ProbeJob;
use crate::backend::fake::FakeCluster;
use crate::case::{Feature, load_files};
use crate::plan::plan_all;
use crate::reachability::{BlockKind, Outcome};

const CASE: &str = crate::case::SAMPLE_CASE;

fn plan() -> Plan {
    plan_all(&load_files([("t.yaml".into(), CASE.into())]).unwrap())
        .unwrap()
        .remove(0)
}

fn opts() -> RunOptions {
    RunOptions {
        placement: crate::backend::Placement::Spread,
        timeouts: Timeouts {
            probe_connect: Duration::from_millis(10),
            probe_settle: Duration::from_millis(50),
            probe_retry_first: Duration::from_millis(1),
            probe_retry_max: Duration::from_millis(5),
            derive_connect: None,
            probe_reach: None,
            preflight: Duration::from_millis(50),
        },
        probe_target: ProbeTarget::PodIp,
        color: false,
        keep: false,
        fresh_worlds: false,
        features: Arc::new(Selection::all()),
    }
}

/// An oracle that enforces "deny ingress into namespace x" once the policy exists. A pod's
/// probe of its own address never leaves it, so no policy applies.
fn deny_x(job: &ProbeJob, objects: &[Value]) -> Outcome {
    let policy = objects.iter().any(|o| o["metadata"]["name"] == "deny-all");
    if policy && job.to_model.starts_with("x/") && job.from.model != job.to_model {
        Outcome::Blocked(BlockKind::Timeout)
    } else {
        Outcome::Connected
    }
}

#[test]
fn a_conforming_cluster_passes_and_the_world_is_cleaned_up() {
    let cluster = FakeCluster::new(Box::new(deny_x));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s1",
        &opts(),
        &AtomicBool::new(false),
    );
    assert_eq!(report.outcome, TrialOutcome::Passed, "{}", report.details());
    assert_eq!(report.steps[0].correct, 72);
    let log = cluster.log.lock().unwrap().clone();
    assert_eq!(log.first().unwrap(), "create_world upstream s1");
    assert_eq!(log[1], "create NetworkPolicy deny-all");
    assert_eq!(log.last().unwrap(), "delete_world s1");
}

#[test]
fn the_namespace_is_realized_in_created_objects() {
    let cluster = FakeCluster::new(Box::new(deny_x));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s9",
        &opts(),
        &AtomicBool::new(false),
    );
    assert!(
        report.log.contains("\"namespace\": \"upstream-x-s9\""),
        "{}",
        report.log
    );
}

#[test]
fn no_enforcement_fails_with_three_tables_and_rerun_commands() {
    let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s2",
        &opts(),
        &AtomicBool::new(false),
    );
    assert!(matches!(report.outcome, TrialOutcome::Failed { .. }));
    let step = &report.steps[0];
    assert_eq!(step.wrong, 24);
    let tables = step.tables.as_deref().unwrap();
    assert!(
        tables.contains("expected:")
            && tables.contains("observed:")
            && tables.contains("comparison:")
    );
    assert_eq!(step.rerun.len(), 24);
    assert!(
        cluster
            .log
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .starts_with("delete_world")
    );
}

#[test]
fn probe_errors_are_errors_not_drops() {
    // y/b's container goes away once the policy exists (after the pre-flight).
    let cluster = FakeCluster::new(Box::new(|j, o| {
        if j.from.model == "y/b" && !o.is_empty() {
            Outcome::Error("exec failed: container not found".into())
        } else {
            deny_x(j, o)
        }
    }));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s3",
        &opts(),
        &AtomicBool::new(false),
    );
    assert!(
        matches!(report.outcome, TrialOutcome::Error { .. }),
        "{:?}",
        report.outcome
    );
    assert!(
        report
            .details()
            .contains("exec failed: container not found")
    );
}

#[test]
fn first_try_mismatches_that_settle_are_recorded_as_flaky() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let cluster = FakeCluster::new(Box::new(move |j, o| {
        // The first probe of y/a -> x/a after the pre-flight's slips through, as if the
        // policy were still propagating.
        if j.from.model == "y/a"
            && j.to_model == "x/a"
            && counter.fetch_add(1, Ordering::SeqCst) == 1
        {
            Outcome::Connected
        } else {
            deny_x(j, o)
        }
    }));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s4",
        &opts(),
        &AtomicBool::new(false),
    );
    assert_eq!(report.outcome, TrialOutcome::Passed);
    assert_eq!(report.steps[0].flaky, ["y/a -> x/a"]);
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_world_that_never_gets_ready_is_an_error_naming_the_pod() {
    let mut cluster = FakeCluster::new(Box::new(deny_x));
    cluster.fail_world = true;
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s5",
        &opts(),
        &AtomicBool::new(false),
    );
    let TrialOutcome::Error { message } = report.outcome else {
        panic!()
    };
    assert!(message.contains("pod x/a never became Ready"), "{message}");
}

#[test]
fn interruption_stops_before_the_next_step_and_still_cleans_up() {
    let cluster = FakeCluster::new(Box::new(deny_x));
    let caps = cluster.capabilities();
    let report = run_plan(
        &cluster,
        &caps,
        &plan(),
        "s6",
        &opts(),
        &AtomicBool::new(true),
    );
    assert!(
        matches!(report.outcome, TrialOutcome::Error { ref message } if message.contains("interrupted"))
    );
    assert!(
        cluster
            .log
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .starts_with("delete_world")
    );
}

fn run(cluster: &FakeCluster, caps: &Capabilities, plan: &Plan, opts: &RunOptions) -> TrialReport {
    run_plan(cluster, caps, plan, "t", opts, &AtomicBool::new(false))
}

fn plan_of(text: &str) -> Plan {
    plan_all(&load_files([("t.yaml".into(), text.into())]).unwrap())
        .unwrap()
        .remove(0)
}

#[test]
fn only_trials_that_touched_policies_and_labels_leave_a_reusable_world() {
    let plans = crate::plan::plan_all(&crate::case::load_embedded().unwrap()).unwrap();
    let by_action = |action: &str| {
        plans
            .iter()
            .find(|p| p.steps.iter().any(|s| s.action.name() == action))
            .unwrap_or_else(|| panic!("no trial does {action}"))
    };
    let passed = TrialOutcome::Passed;
    assert!(reusable(by_action("label_pod"), &passed));
    assert!(reusable(by_action("label_namespace"), &passed));
    let policies_only = &plan();
    for action in [
        Action::RecreatePods(vec!["x/a".into()]),
        Action::DeletePods(vec!["x/a".into()]),
    ] {
        let mut p = plan();
        let mut step = p.steps[0].clone();
        step.action = action;
        p.steps.push(step);
        assert!(
            !reusable(&p, &passed),
            "{}",
            p.steps.last().unwrap().action.name()
        );
    }
    assert!(reusable(policies_only, &passed));
    let failed = TrialOutcome::Failed {
        message: "wrong".into(),
    };
    let error = TrialOutcome::Error {
        message: "gone".into(),
    };
    assert!(
        !reusable(policies_only, &failed),
        "a failed trial's world is suspect"
    );
    assert!(!reusable(policies_only, &error));
}

#[test]
fn a_protocol_the_target_cannot_carry_is_an_error_unless_exempted() {
    let plan = plan_of(&CASE.replace("protocol: TCP", "protocol: SCTP"));
    let cluster = FakeCluster::new(Box::new(deny_x));
    let mut caps = cluster.capabilities();
    caps.missing
        .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
    let report = run(&cluster, &caps, &plan, &opts());
    let TrialOutcome::Error { message } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        message.contains("SCTP is a standard feature, but this target cannot carry it")
            && message.contains("--exempt-features SCTP"),
        "{message}"
    );
    let mut exempt = opts();
    exempt.features = Arc::new(Selection::new(&[], &["SCTP".into()], true).unwrap());
    let report = run(&cluster, &caps, &plan, &exempt);
    assert_eq!(
        report.steps[0].result,
        StepResult::Skipped {
            reason: "SCTP: exempted with --exempt-features (SCTP is not supported by this kernel)"
                .into()
        }
    );
    // Its only probe step skipped: the trial as a whole is not supported, never passed.
    assert!(
        matches!(report.outcome, TrialOutcome::NotSupported { .. }),
        "{:?}",
        report.outcome
    );
}

#[test]
fn a_trial_with_skipped_steps_is_partial_not_passed() {
    let two_steps = format!(
        "{CASE}    - probe:\n        port: 80\n        protocol: SCTP\n        expect:\n          - expect_peer: {{from: {{}}, to: {{ns: x}}, allowed: false}}\n"
    );
    let plan = plan_of(&two_steps);
    let cluster = FakeCluster::new(Box::new(deny_x));
    let mut caps = cluster.capabilities();
    caps.missing
        .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
    let mut exempt = opts();
    exempt.features = Arc::new(Selection::new(&[], &["SCTP".into()], true).unwrap());
    let report = run(&cluster, &caps, &plan, &exempt);
    let TrialOutcome::Partial { skipped } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        (skipped[0].index, skipped[0].probe.as_str()),
        (2, "SCTP/80")
    );
    assert!(
        skipped[0].reason.starts_with("SCTP: exempted"),
        "{skipped:?}"
    );
    assert_eq!(report.steps[0].result, StepResult::Passed);
    let junit = crate::report::junit(&crate::report::RunReport {
        trials: vec![report],
        ..Default::default()
    });
    assert!(
        junit.contains(
            "<skipped message=\"partial: the steps that ran passed; skipped step 2 (SCTP/80): SCTP: exempted"
        ),
        "{junit}"
    );
    assert!(
        junit.contains("name=\"skipped-steps\" value=\"2 SCTP/80\""),
        "{junit}"
    );
}

#[test]
fn a_pair_that_does_not_connect_before_any_policy_is_a_world_not_ready_error() {
    // y/b's server on x/a is unreachable from the start (say, a broken route).
    let cluster = FakeCluster::new(Box::new(|j, o| {
        if j.from.model == "y/b" && j.to_model == "x/a" {
            Outcome::Blocked(BlockKind::Refused)
        } else {
            deny_x(j, o)
        }
    }));
    let caps = cluster.capabilities();
    let report = run(&cluster, &caps, &plan(), &opts());
    let TrialOutcome::Error { message } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        message.starts_with("world not ready: y/b → x/a TCP/80 refused after"),
        "{message}"
    );
    assert!(
        report.steps.is_empty(),
        "no step runs on a world that is not ready"
    );
    assert!(report.preflight.is_some());
    let log = cluster.log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|l| l.starts_with("create NetworkPolicy")),
        "no policy is applied: {log:?}"
    );
    assert_eq!(log.last().unwrap(), "delete_world t");
}

#[test]
fn a_blocked_pair_to_a_dead_destination_is_an_error_not_a_match() {
    // x/a's server dies once the policy exists: every probe of it fails, its own included.
    let cluster = FakeCluster::new(Box::new(|j, o| {
        let policy = o.iter().any(|p| p["metadata"]["name"] == "deny-all");
        if policy && j.to_model == "x/a" {
            Outcome::Blocked(BlockKind::Refused)
        } else {
            deny_x(j, o)
        }
    }));
    let caps = cluster.capabilities();
    let report = run(&cluster, &caps, &plan(), &opts());
    assert!(
        matches!(report.outcome, TrialOutcome::Error { .. }),
        "{:?}",
        report.outcome
    );
    let step = &report.steps[0];
    // The 8 pairs into x/a are errors; the other 16 expected-blocked pairs still match.
    assert_eq!((step.correct, step.wrong, step.errors), (64, 0, 8));
    assert!(
        report
            .details()
            .contains("blocked, but destination x/a is not alive on TCP/80: its own probe of"),
        "{}",
        report.details()
    );
}

#[test]
fn a_live_destination_needs_no_extra_probe_when_some_source_reached_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let cluster = FakeCluster::new(Box::new(move |j, o| {
        if j.from.model == j.to_model {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        deny_x(j, o)
    }));
    let caps = cluster.capabilities();
    let report = run(&cluster, &caps, &plan(), &opts());
    assert_eq!(report.outcome, TrialOutcome::Passed, "{}", report.details());
    // Nobody reaches x/a, x/b, x/c: each proves itself alive with one probe of its own.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.steps[0].calls, 72 + 3);
}

#[test]
fn a_shared_world_gets_its_labels_back_even_when_the_trial_fails() {
    let plan = crate::plan::plan_all(&crate::case::load_embedded().unwrap())
        .unwrap()
        .into_iter()
        .find(|p| p.trial == "npa::admin-tier::admin-egress-inline-cidr-peers::v1alpha2")
        .unwrap();
    assert!(plan.world.is_shared());
    // Nothing is enforced: the first probe step fails, before the relabel steps run.
    let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
    let caps = cluster.capabilities();
    let report = run(&cluster, &caps, &plan, &opts());
    assert!(matches!(report.outcome, TrialOutcome::Failed { .. }));
    let log = cluster.log.lock().unwrap().clone();
    let restore = log
        .iter()
        .rev()
        .find(|l| l.starts_with("label_namespace"))
        .expect("labels restored");
    assert_eq!(
        restore,
        "label_namespace network-policy-conformance-slytherin-t {\"conformance-house\": \"slytherin\"} -[]"
    );
    assert_eq!(log.last().unwrap(), "delete_world t");
}

/// Like [`deny_x`], but enforcement lags: the policy takes effect `lag` after the first probe
/// that sees it (right after its create call returned, as the pre-flight ran before it).
fn deny_x_after(lag: Duration) -> impl Fn(&ProbeJob, &[Value]) -> Outcome + Send + Sync {
    let seen: Mutex<Option<Instant>> = Mutex::new(None);
    move |job, objects| {
        if objects.is_empty() {
            return Outcome::Connected;
        }
        let first = *seen.lock().unwrap().get_or_insert_with(Instant::now);
        if first.elapsed() < lag {
            Outcome::Connected
        } else {
            deny_x(job, objects)
        }
    }
}

#[test]
fn enforcement_latency_is_measured_from_the_change_to_the_first_matching_pass() {
    let lag = Duration::from_millis(150);
    let cluster = FakeCluster::new(Box::new(deny_x_after(lag)));
    let caps = cluster.capabilities();
    let mut opts = opts();
    opts.timeouts.probe_settle = Duration::from_secs(5);
    let report = run(&cluster, &caps, &plan(), &opts);
    assert_eq!(report.outcome, TrialOutcome::Passed, "{}", report.details());
    let timing = report.timing.as_ref().unwrap();
    let step = report.steps[0].index;
    let [(index, latency)] = timing.latencies[..] else {
        panic!("{:?}", timing.latencies)
    };
    assert_eq!(index, step);
    // Never less than the lag; at most the lag plus a retry interval and some scheduling.
    assert!(latency >= lag, "{latency:?}");
    assert!(latency < lag + Duration::from_millis(150), "{latency:?}");
    // The retries waited the lag out: that is settling, not probing.
    assert!(
        timing.settle >= lag - Duration::from_millis(10),
        "{timing:?}"
    );
    // Settling ends with the pass that matched, which starts at the latency's end.
    assert!(
        timing.settle <= latency + Duration::from_millis(20),
        "{timing:?}"
    );
    assert_eq!((timing.probe_steps, timing.deny_steps), (1, 1));
    assert_eq!(timing.probe_connect, Duration::from_millis(10));
    // 72 pairs once, the 24 denied pairs per retry pass, then one witness probe for each of
    // x's three pods (blocked from everywhere else).
    let retries = timing.probes - 72 - 3;
    assert!(
        retries > 0 && retries.is_multiple_of(24),
        "{} probes",
        timing.probes
    );
    let phases = timing.world_setup
        + report.preflight.unwrap()
        + timing.apply
        + timing.settle
        + timing.probing
        + timing.teardown;
    assert!(
        phases <= report.duration,
        "{timing:?} {:?}",
        report.duration
    );
}

#[test]
fn a_step_that_never_matches_records_no_latency() {
    let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
    let caps = cluster.capabilities();
    let report = run(&cluster, &caps, &plan(), &opts());
    assert!(matches!(report.outcome, TrialOutcome::Failed { .. }));
    let timing = report.timing.as_ref().unwrap();
    assert!(timing.latencies.is_empty(), "{timing:?}");
    assert_eq!((timing.probe_steps, timing.deny_steps), (1, 1));
    // It kept retrying until the settle deadline.
    assert!(timing.settle >= opts().timeouts.probe_settle, "{timing:?}");
}

#[test]
fn only_the_first_step_after_a_change_measures_it_and_skipped_steps_do_not_count() {
    let steps = format!(
        "{CASE}    - probe:\n        port: 80\n        protocol: SCTP\n        expect:\n          - expect_peer: {{from: {{}}, to: {{ns: x}}, allowed: false}}\n    - probe:\n        port: 81\n        protocol: TCP\n        expect:\n          - expect_peer: {{from: {{}}, to: {{ns: x}}, allowed: false}}\n    - delete_all_policies: true\n    - probe:\n        port: 81\n        protocol: TCP\n        expect: []\n"
    );
    let plan = plan_of(&steps);
    let cluster = FakeCluster::new(Box::new(deny_x));
    let mut caps = cluster.capabilities();
    caps.missing
        .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
    let mut exempt = opts();
    exempt.features = Arc::new(Selection::new(&[], &["SCTP".into()], true).unwrap());
    let report = run(&cluster, &caps, &plan, &exempt);
    assert!(
        matches!(report.outcome, TrialOutcome::Partial { .. }),
        "{}",
        report.details()
    );
    let timing = report.timing.as_ref().unwrap();
    // The SCTP step was skipped; the last step, after the policy is gone, expects everything
    // allowed. The first probe step after each change measures it; TCP/81 after TCP/80 does not.
    assert_eq!(
        (timing.probe_steps, timing.deny_steps),
        (3, 2),
        "{timing:?}"
    );
    let steps: Vec<usize> = timing.latencies.iter().map(|(i, _)| *i).collect();
    let probed: Vec<usize> = report.steps.iter().map(|s| s.index).collect();
    assert_eq!(probed.len(), 4);
    assert_eq!(steps, [probed[0], probed[3]]);
}

#[test]
fn trials_that_never_reach_the_runner_carry_no_timing() {
    assert_eq!(report_for(&plan(), TrialOutcome::Passed).timing, None);
}
