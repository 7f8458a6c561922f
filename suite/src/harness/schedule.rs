//! Which trials run at once. Every trial waits here for its turn according to its
//! [`Scope`]: trials in their own namespaces run side by side up to the run's concurrency;
//! trials with cluster-scoped policies (or on the shared world) take turns with each other,
//! one at a time, beside them; a trial whose policies could reach other worlds runs alone.
//!
//! While trials that take turns remain, one of the concurrency's slots is kept for them, so
//! the chain of cluster-scoped trials (the run's longest) never waits behind a full house of
//! namespace-scoped ones.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::plan::Scope;

/// The run's admission of trials.
pub(super) struct Schedule {
    /// Trials at once.
    slots: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Trials of [`Scope::Own`] running.
    own: usize,
    /// Whether a trial of [`Scope::Turns`] runs.
    turn: bool,
    /// Whether a trial of [`Scope::Alone`] runs.
    alone: bool,
    /// Trials of [`Scope::Alone`] waiting: nothing new starts before them.
    alone_waiting: usize,
    /// Trials of [`Scope::Turns`] that have not ended yet.
    turns_left: usize,
}

/// A running trial's place; dropping it lets the next trials in.
pub(super) struct Admitted<'a> {
    schedule: &'a Schedule,
    scope: Scope,
}

impl Schedule {
    /// A schedule for `slots` trials at once (at least one) where `turns` trials take turns.
    pub(super) fn new(slots: usize, turns: usize) -> Schedule {
        Schedule {
            slots: slots.max(1),
            state: Mutex::new(State {
                turns_left: turns,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a trial of this scope may run.
    pub(super) fn admit(&self, scope: &Scope) -> Admitted<'_> {
        let mut state = self.lock();
        if matches!(scope, Scope::Alone { .. }) {
            state.alone_waiting += 1;
        }
        loop {
            if self.may_start(&state, scope) {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        match scope {
            Scope::Own => state.own += 1,
            Scope::Turns => state.turn = true,
            Scope::Alone { .. } => {
                state.alone_waiting -= 1;
                state.alone = true;
            }
        }
        Admitted {
            schedule: self,
            scope: scope.clone(),
        }
    }

    /// A trial has ended, run or not (skipped, not supported): once no trial that takes turns
    /// is left, the slot kept for them serves the others.
    pub(super) fn ended(&self, scope: &Scope) {
        if *scope == Scope::Turns {
            let mut state = self.lock();
            state.turns_left = state.turns_left.saturating_sub(1);
            drop(state);
            self.changed.notify_all();
        }
    }

    fn may_start(&self, state: &State, scope: &Scope) -> bool {
        let running = state.own + usize::from(state.turn);
        match scope {
            _ if state.alone => false,
            Scope::Alone { .. } => running == 0,
            _ if state.alone_waiting > 0 => false,
            Scope::Turns => !state.turn && running < self.slots,
            Scope::Own => {
                let kept = usize::from(state.turns_left > 0 && self.slots > 1);
                running < self.slots && state.own < self.slots - kept
            }
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut state = self.schedule.lock();
        match self.scope {
            Scope::Own => state.own -= 1,
            Scope::Turns => state.turn = false,
            Scope::Alone { .. } => state.alone = false,
        }
        drop(state);
        self.schedule.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Runs `scopes` as trials on threads, each holding its place for a moment, and returns
    /// the most trials of each kind seen at once: (own, turns, alone, own beside alone).
    fn peaks(slots: usize, scopes: Vec<Scope>) -> (usize, usize, usize, usize) {
        let turns = scopes.iter().filter(|s| **s == Scope::Turns).count();
        let schedule = Arc::new(Schedule::new(slots, turns));
        let now: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let peak: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        std::thread::scope(|s| {
            for scope in scopes {
                let (schedule, now, peak) = (schedule.clone(), now.clone(), peak.clone());
                s.spawn(move || {
                    let i = match scope {
                        Scope::Own => 0,
                        Scope::Turns => 1,
                        Scope::Alone { .. } => 2,
                    };
                    let admitted = schedule.admit(&scope);
                    let n = now[i].fetch_add(1, Ordering::SeqCst) + 1;
                    peak[i].fetch_max(n, Ordering::SeqCst);
                    if i == 2 {
                        let beside = now[0].load(Ordering::SeqCst) + now[1].load(Ordering::SeqCst);
                        peak[3].fetch_max(beside, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    now[i].fetch_sub(1, Ordering::SeqCst);
                    drop(admitted);
                    schedule.ended(&scope);
                });
            }
        });
        let p = |i: usize| peak[i].load(Ordering::SeqCst);
        (p(0), p(1), p(2), p(3))
    }

    #[test]
    fn own_trials_fill_the_slots_but_one_kept_for_the_turns() {
        let schedule = Schedule::new(4, 2);
        let own: Vec<_> = (0..3).map(|_| schedule.admit(&Scope::Own)).collect();
        assert!(
            !schedule.may_start(&schedule.lock(), &Scope::Own),
            "the fourth slot is kept for trials that take turns"
        );
        let turn = schedule.admit(&Scope::Turns);
        assert!(
            !schedule.may_start(&schedule.lock(), &Scope::Turns),
            "one turn at a time"
        );
        drop(turn);
        schedule.ended(&Scope::Turns);
        let last_turn = schedule.admit(&Scope::Turns);
        drop(last_turn);
        schedule.ended(&Scope::Turns);
        assert!(
            schedule.may_start(&schedule.lock(), &Scope::Own),
            "with no turns left, every slot serves"
        );
        drop(own);
        let mut scopes = vec![Scope::Own; 12];
        scopes.extend(vec![Scope::Turns; 4]);
        let (own, turns, _, _) = peaks(4, scopes);
        assert!(own <= 4 && turns == 1, "{own} {turns}");
    }

    #[test]
    fn a_trial_that_reaches_other_worlds_runs_alone() {
        let alone = Scope::Alone {
            reason: "test".into(),
        };
        let mut scopes = vec![Scope::Own; 6];
        scopes.push(alone.clone());
        scopes.extend(vec![Scope::Turns; 2]);
        scopes.push(alone);
        let (_, _, alone, beside) = peaks(4, scopes);
        assert_eq!(alone, 1);
        assert_eq!(beside, 0, "nothing runs beside an alone trial");
    }

    #[test]
    fn one_slot_runs_everything_one_after_another() {
        let mut scopes = vec![Scope::Own; 3];
        scopes.extend(vec![Scope::Turns; 3]);
        let schedule = Schedule::new(1, 3);
        let first = schedule.admit(&Scope::Own);
        assert!(!schedule.may_start(&schedule.lock(), &Scope::Turns));
        drop(first);
        let turn = schedule.admit(&Scope::Turns);
        assert!(!schedule.may_start(&schedule.lock(), &Scope::Own));
        drop(turn);
        let (own, turns, _, _) = peaks(1, scopes);
        assert_eq!((own, turns), (1, 1));
    }

    #[test]
    fn a_turn_that_never_ran_frees_the_kept_slot() {
        let schedule = Schedule::new(2, 1);
        let _a = schedule.admit(&Scope::Own);
        assert!(!schedule.may_start(&schedule.lock(), &Scope::Own));
        schedule.ended(&Scope::Turns);
        assert!(schedule.may_start(&schedule.lock(), &Scope::Own));
    }
}
