//! One trial of a run: skipped when there is no target or the run was interrupted, connected
//! to the target (once, for every trial), gated, run alone or beside others, and its report
//! handed to the collector.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Completion, Failed, Trial};

use super::schedule::Schedule;
use super::{Gate, gate};
use crate::collector::Collector;
use crate::features::Selection;
use crate::interrupt::Interrupt;
use crate::plan::{Plan, Scope};
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
    /// Which trials run at once.
    pub(super) schedule: Schedule,
    /// Numbers the trials' suffixes.
    pub(super) counter: AtomicUsize,
    pub(super) run_id: String,
    pub(super) features: Arc<Selection>,
    pub(super) keep: bool,
    pub(super) fresh_worlds: bool,
    pub(super) probe_target: ProbeTarget,
    pub(super) placement: crate::backend::Placement,
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
            // A timeout the user set is used as it is.
            timeouts.probe_connect = t;
            timeouts.derive_connect = None;
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
            placement: self.placement,
        }
    }
}

/// One libtest trial per plan, each with its scope.
pub(super) fn trials(plans: Vec<(Plan, Scope)>, shared: &Arc<Shared>) -> Vec<Trial> {
    plans
        .into_iter()
        .map(|(plan, scope)| {
            let shared = shared.clone();
            Trial::ignorable_test(plan.trial.clone(), move || {
                let result = run_trial(&plan, &scope, &shared);
                shared.schedule.ended(&scope);
                result
            })
        })
        .collect()
}

/// Runs one trial and records it, also when it never reaches the runner.
fn run_trial(plan: &Plan, scope: &Scope, shared: &Shared) -> Result<Completion, Failed> {
    let collector = &shared.collector;
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
    // Trials in their own namespaces run side by side; those with cluster-scoped policies
    // (or on the shared world) take turns, and beside other runs on the same cluster too.
    let _admitted = shared.schedule.admit(scope);
    if shared.interrupt.requested() {
        // Interrupted while it waited for its turn: it never starts.
        return record(TrialOutcome::Skipped {
            reason: "the run was interrupted".into(),
        });
    }
    // Shown as running once admitted, not while it waits for its turn.
    collector.started(&plan.trial);
    let cluster_scoped = *scope != Scope::Own;
    if cluster_scoped && let Err(e) = cluster.lock_cluster_scope() {
        return record(TrialOutcome::Error {
            message: e.to_string(),
        });
    }
    let opts = shared.run_options(local);
    let suffix = format!(
        "{}-{}",
        shared.run_id,
        shared.counter.fetch_add(1, Ordering::SeqCst)
    );
    let mut r = run_plan(
        &*cluster,
        &caps,
        plan,
        &suffix,
        &opts,
        shared.interrupt.flag(),
    );
    // A shared world (npa) outlives its trial and serves fixed host ports, so two
    // runs' copies cannot coexist: the lock is kept until the run deletes it.
    if cluster_scoped && !plan.world.is_shared() {
        cluster.unlock_cluster_scope();
    }
    if let Some(timing) = &mut r.timing {
        timing.scope = scope.as_str();
    }
    collector.record(r)
}
