//! A step's structured grids (`StepReport::grids`, what the HTML report draws) hold the very
//! tables its text (`StepReport::tables`) renders, for steps that failed and passed alike.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use netpol_conformance::backend::Cluster;
use netpol_conformance::backend::fake::FakeCluster;
use netpol_conformance::case::load_embedded;
use netpol_conformance::features::Selection;
use netpol_conformance::plan::plan_all;
use netpol_conformance::reachability::{Comparison, Outcome, TruthTables, Verdict, expected_mark};
use netpol_conformance::report::StepResult;
use netpol_conformance::runner::{ProbeTarget, RunOptions, Timeouts, run_plan};

#[test]
fn a_real_run_plan_keeps_its_grids_equal_to_its_text_tables() {
    let plan = plan_all(&load_embedded().unwrap())
        .unwrap()
        .into_iter()
        .find(|p| p.trial == "upstream::ingress::default-deny-ingress")
        .unwrap();
    // No enforcement: every blocked expectation connects.
    let cluster = FakeCluster::new(Box::new(|_, _| Outcome::Connected));
    let caps = cluster.capabilities();
    let opts = RunOptions {
        placement: netpol_conformance::backend::Placement::Spread,
        timeouts: Timeouts {
            probe_settle: Duration::ZERO,
            probe_retry_first: Duration::ZERO,
            probe_retry_max: Duration::ZERO,
            derive_connect: None,
            probe_reach: None,
            ..Timeouts::for_target(true)
        },
        probe_target: ProbeTarget::PodIp,
        color: false,
        keep: false,
        fresh_worlds: false,
        features: Arc::new(Selection::all()),
    };
    let report = run_plan(&cluster, &caps, &plan, "g1", &opts, &AtomicBool::new(false));
    let step = report
        .steps
        .iter()
        .find(|s| s.result == StepResult::Failed)
        .expect("a failing step");
    let g = step.grids.as_ref().expect("the failing step has grids");
    let text = step.tables.as_deref().unwrap();
    // The text is exactly what the grids render.
    let comparison = Comparison::new(&g.expected, &g.observed, plan.block_rule);
    assert_eq!(comparison.table, g.comparison);
    let from_grids = TruthTables {
        expected: &g.expected,
        observed: &g.observed,
        comparison: &comparison,
        color: false,
    }
    .to_string();
    assert!(text.starts_with(&from_grids), "{text}\n---\n{from_grids}");
    assert!(text.contains(&g.expected.render(expected_mark)));
    assert_eq!(
        g.rerun.len(),
        g.expected.len(),
        "a failing step: every pair's command"
    );
    assert!(g.rerun.iter().all(|c| step.rerun.contains(&c.command)
        || g.comparison.get(&c.from, &c.to) == Some(&Verdict::Match)));
    // Steps that passed keep grids but no commands.
    for s in report
        .steps
        .iter()
        .filter(|s| s.result == StepResult::Passed)
    {
        assert!(s.grids.as_ref().unwrap().rerun.is_empty());
        assert!(s.tables.is_none());
    }
}
