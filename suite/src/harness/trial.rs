//! One trial of a run: skipped when there is no target or the run was interrupted, connected
//! to the target (once, for every trial), gated, run alone or beside others, and its report
//! handed to the collector.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use libtest_mimic::{Completion, Failed, Trial};

use super::{Gate, gate};
use crate::collector::Collector;
use crate::features::Selection;
use crate::interrupt::Interrupt;
use crate::plan::Plan;
use crate::report::TrialOutcome;
use crate::runner::{ProbeTarget, RunOptions, Timeouts, report_for, run_plan};
use crate::target::{self, Target, TargetSpec, Unavailable};

/// The run's target once a trial (or the CLI, before any) has tried to connect.
pub(super) enum TargetState {
    Ready(Box<Target>),
    Failed(String),
}

/// What every trial of a run shares.
pub(super) struct Shared {
    /// `None` until the first connection attempt.
    pub(super) target: Mutex<Option<TargetState>>,
    pub(super) spec: Result<TargetSpec, Unavailable>,
    pub(super) connect_opts: target::ConnectOptions,
    /// Why every trial is skipped, if so.
    pub(super) unavailable: Option<String>,
    pub(super) collector: Collector,
    /// The run's interrupt: checked between trials and steps.
    pub(super) interrupt: Arc<Interrupt>,
    /// Held for writing by a trial that runs alone, for reading by the others.
    pub(super) exclusive: RwLock<()>,
    /// Numbers the trials' suffixes.
    pub(super) counter: AtomicUsize,
    pub(super) run_id: String,
    pub(super) features: Arc<Selection>,
    pub(super) keep: bool,
    pub(super) fresh_worlds: bool,
    pub(super) probe_target: ProbeTarget,
    pub(super) probe_timeout: Option<Duration>,
    pub(super) settle_timeout: Option<Duration>,
    pub(super) preflight_timeout: Option<Duration>,
    pub(super) color: bool,
}

impl Shared {
    /// The runner's options on a target: its default timeouts, with those given overriding.
    fn run_options(&self, local: bool) -> RunOptions {
        let mut timeouts = Timeouts::for_target(local);
        if let Some(t) = self.probe_timeout {
            timeouts.probe_connect = t;
        }
        if let Some(t) = self.settle_timeout {
            timeouts.probe_settle = t;
        }
        if let Some(t) = self.preflight_timeout {
            timeouts.preflight = t;
        }
        RunOptions {
            timeouts,
            probe_target: self.probe_target,
            color: self.color,
            keep: self.keep,
            fresh_worlds: self.fresh_worlds,
            features: self.features.clone(),
        }
    }
}

/// One libtest trial per plan.
pub(super) fn trials(plans: Vec<Plan>, shared: &Arc<Shared>) -> Vec<Trial> {
    plans
        .into_iter()
        .map(|plan| {
            let shared = shared.clone();
            Trial::ignorable_test(plan.trial.clone(), move || run_trial(&plan, &shared))
        })
        .collect()
}

/// Runs one trial and records it, also when it never reaches the runner.
fn run_trial(plan: &Plan, shared: &Shared) -> Result<Completion, Failed> {
    let collector = &shared.collector;
    collector.started(&plan.trial);
    let record = |outcome| collector.record(report_for(plan, outcome));
    if let Some(reason) = &shared.unavailable {
        return record(TrialOutcome::Skipped {
            reason: reason.clone(),
        });
    }
    if shared.interrupt.requested() {
        return record(TrialOutcome::Skipped {
            reason: "the run was interrupted".into(),
        });
    }
    // Connect once, on the first trial that needs the target.
    let (cluster, local) = {
        let mut slot = shared.target.lock().expect("target lock");
        if slot.is_none() {
            let spec = shared.spec.as_ref().expect("checked above");
            *slot = Some(match target::connect(spec, &shared.connect_opts) {
                Ok(t) => {
                    shared.interrupt.own_local(t.owned_local());
                    TargetState::Ready(Box::new(t))
                }
                Err(e) => TargetState::Failed(crate::plan::error_chain(&e)),
            });
        }
        match slot.as_ref().expect("just set") {
            TargetState::Ready(t) => (t.cluster.clone(), t.local),
            TargetState::Failed(e) => {
                return record(TrialOutcome::Error {
                    message: format!("no target: {e}"),
                });
            }
        }
    };
    let caps = cluster.capabilities();
    match gate(plan, &caps, &shared.features) {
        Gate::Run => {}
        Gate::NotSupported(reason) => return record(TrialOutcome::NotSupported { reason }),
        Gate::Error(message) => return record(TrialOutcome::Error { message }),
    }
    // Trials that touch cluster-scoped policies or shared namespaces run alone.
    let alone = plan.world.is_shared() || plan.kinds().iter().any(|k| k != "NetworkPolicy");
    let _shared_guard;
    let _alone_guard;
    if alone {
        _alone_guard = shared.exclusive.write().unwrap_or_else(|e| e.into_inner());
        // Other runs on the same cluster take turns with this one.
        if let Err(e) = cluster.lock_cluster_scope() {
            return record(TrialOutcome::Error {
                message: e.to_string(),
            });
        }
    } else {
        _shared_guard = shared.exclusive.read().unwrap_or_else(|e| e.into_inner());
    }
    let opts = shared.run_options(local);
    let suffix = format!(
        "{}-{}",
        shared.run_id,
        shared.counter.fetch_add(1, Ordering::SeqCst)
    );
    let r = run_plan(
        &*cluster,
        &caps,
        plan,
        &suffix,
        &opts,
        shared.interrupt.flag(),
    );
    // A shared world (npa) outlives its trial and serves fixed host ports, so two
    // runs' copies cannot coexist: the lock is kept until the run deletes it.
    if alone && !plan.world.is_shared() {
        cluster.unlock_cluster_scope();
    }
    collector.record(r)
}
