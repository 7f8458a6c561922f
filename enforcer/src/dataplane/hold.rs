//! Packets the judge could not decide yet, waiting in arrival order until a later judgement
//! decides them or their time runs out.
//!
//! Pure bookkeeping, generic over the held item (an `nfq::Message` in the queue thread, a number
//! in the tests): it says which packets to answer and how; the queue thread sends the verdicts.
//! An undecided packet leaves only as decided by the judge or as a drop — never as an accept
//! the judge did not give.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Hook, Judgement, Verdict};
use crate::flow::Flow;

/// One held packet and what is needed to judge it again.
pub(super) struct Entry<M> {
    /// The packet (its kernel-side handle).
    pub(super) item: M,
    /// Its flow, parsed once (`None`: it could not be judged at all).
    pub(super) flow: Option<Flow>,
    /// The hook it was queued at.
    pub(super) hook: Hook,
    /// When it was received.
    pub(super) received: Instant,
    /// When it is dropped if still undecided.
    expires: Instant,
    /// The tier of the last (undecided) judgement, for the drop it gets on expiry.
    tier: &'static str,
}

/// How a held packet's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A later judgement decided it.
    Released,
    /// It was still undecided when its time ran out (or at shutdown): dropped.
    Expired,
}

impl Outcome {
    /// `released` or `expired`, as used in metrics.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Released => "released",
            Outcome::Expired => "expired",
        }
    }
}

/// A packet whose wait is over: its entry, the judgement to send (never [`Verdict::Hold`]) and
/// why.
pub(super) struct Settled<M> {
    /// The packet.
    pub(super) entry: Entry<M>,
    /// The verdict to send and the tier to count it under.
    pub(super) judgement: Judgement,
    /// Decided or expired.
    pub(super) outcome: Outcome,
}

/// The packets one queue holds.
pub(super) struct Held<M> {
    entries: VecDeque<Entry<M>>,
    limit: Duration,
    capacity: usize,
}

impl<M> Held<M> {
    /// Packets wait at most `limit`; at most `capacity` wait at once.
    pub(super) fn new(limit: Duration, capacity: usize) -> Self {
        Held {
            entries: VecDeque::new(),
            limit,
            capacity,
        }
    }

    /// How many packets wait.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether no more may wait.
    pub(super) fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Sets a packet aside until `received + limit`, remembering the tier of its undecided
    /// judgement; hands it back when `capacity` packets already wait.
    pub(super) fn hold(
        &mut self,
        item: M,
        flow: Option<Flow>,
        hook: Hook,
        received: Instant,
        tier: &'static str,
    ) -> Result<(), M> {
        if self.is_full() {
            return Err(item);
        }
        self.entries.push_back(Entry {
            item,
            flow,
            hook,
            received,
            expires: received + self.limit,
            tier,
        });
        Ok(())
    }

    /// Judges every held packet again at `now`: those `judge` decides leave with its judgement,
    /// those still undecided at or past their time leave as drops, the rest keep waiting in
    /// order. With `last` (shutdown) every undecided packet leaves as a drop.
    pub(super) fn recheck(
        &mut self,
        now: Instant,
        last: bool,
        mut judge: impl FnMut(Option<&Flow>, Hook) -> Judgement,
    ) -> Vec<Settled<M>> {
        let mut settled = Vec::new();
        for mut entry in std::mem::take(&mut self.entries) {
            let judgement = judge(entry.flow.as_ref(), entry.hook);
            if judgement.verdict != Verdict::Hold {
                settled.push(Settled {
                    entry,
                    judgement,
                    outcome: Outcome::Released,
                });
            } else if last || now >= entry.expires {
                let judgement = Judgement {
                    verdict: Verdict::Drop,
                    tier: judgement.tier,
                };
                settled.push(Settled {
                    entry,
                    judgement,
                    outcome: Outcome::Expired,
                });
            } else {
                entry.tier = judgement.tier;
                self.entries.push_back(entry);
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Protocol;

    fn flow(port: u16) -> Option<Flow> {
        Some(Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            protocol: Protocol::Tcp,
            src_port: 40000,
            dst_port: port,
        })
    }

    fn judged(verdict: Verdict) -> Judgement {
        Judgement {
            verdict,
            tier: if verdict == Verdict::Hold {
                "unknown_pod"
            } else {
                "networkpolicy"
            },
        }
    }

    /// (item, verdict, outcome) of each settled packet.
    fn summary(settled: Vec<Settled<u32>>) -> Vec<(u32, Verdict, Outcome)> {
        settled
            .into_iter()
            .map(|s| (s.entry.item, s.judgement.verdict, s.outcome))
            .collect()
    }

    #[test]
    fn held_packets_wait_until_decided_then_leave_with_the_new_judgement() {
        let t0 = Instant::now();
        let mut held = Held::new(Duration::from_secs(2), 8);
        held.hold(1, flow(80), Hook::Forward, t0, "unknown_pod")
            .unwrap();
        held.hold(2, flow(81), Hook::Forward, t0, "unknown_pod")
            .unwrap();
        // Still unknown: nothing leaves.
        let none = held.recheck(t0 + Duration::from_millis(10), false, |_, _| {
            judged(Verdict::Hold)
        });
        assert!(none.is_empty());
        assert_eq!(held.len(), 2);
        // The pod becomes known: port 80 is allowed, 81 is not; both leave, in order.
        let settled = held.recheck(t0 + Duration::from_millis(20), false, |f, _| {
            judged(if f.unwrap().dst_port == 80 {
                Verdict::Accept
            } else {
                Verdict::Drop
            })
        });
        assert_eq!(
            summary(settled),
            [
                (1, Verdict::Accept, Outcome::Released),
                (2, Verdict::Drop, Outcome::Released)
            ]
        );
        assert!(held.is_empty());
    }

    #[test]
    fn undecided_packets_are_dropped_when_their_time_runs_out_never_accepted() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(500);
        let mut held = Held::new(limit, 8);
        held.hold(1, flow(80), Hook::Forward, t0, "unknown_pod")
            .unwrap();
        held.hold(2, flow(80), Hook::Forward, t0 + limit / 2, "unknown_pod")
            .unwrap();
        let hold = |_: Option<&Flow>, _: Hook| judged(Verdict::Hold);
        assert!(held.recheck(t0 + limit / 2, false, hold).is_empty());
        let settled = held.recheck(t0 + limit, false, hold);
        let expired: Vec<_> = settled
            .iter()
            .map(|s| (s.entry.item, s.judgement, s.outcome))
            .collect();
        assert_eq!(
            expired,
            [(
                1,
                Judgement {
                    verdict: Verdict::Drop,
                    tier: "unknown_pod"
                },
                Outcome::Expired
            )]
        );
        assert_eq!(held.len(), 1, "the younger packet still waits");
        // Shutdown: one last judgement, still undecided, so dropped.
        assert_eq!(
            summary(held.recheck(t0 + limit, true, hold)),
            [(2, Verdict::Drop, Outcome::Expired)]
        );
    }

    #[test]
    fn a_decision_at_the_deadline_still_counts_and_the_list_is_bounded() {
        let t0 = Instant::now();
        let mut held = Held::new(Duration::from_millis(100), 2);
        held.hold(1, flow(80), Hook::Output, t0, "unknown_pod")
            .unwrap();
        held.hold(2, None, Hook::Forward, t0, "none").unwrap();
        assert_eq!(
            held.hold(3, flow(80), Hook::Forward, t0, "unknown_pod"),
            Err(3),
            "a full list hands the packet back"
        );
        // The judge sees each packet's own flow and hook.
        let mut seen = Vec::new();
        let settled = held.recheck(t0 + Duration::from_secs(1), false, |f, hook| {
            seen.push((f.map(|f| f.dst_port), hook));
            judged(if f.is_some() {
                Verdict::Accept
            } else {
                Verdict::Hold
            })
        });
        assert_eq!(seen, [(Some(80), Hook::Output), (None, Hook::Forward)]);
        assert_eq!(
            summary(settled),
            [
                (1, Verdict::Accept, Outcome::Released),
                (2, Verdict::Drop, Outcome::Expired)
            ]
        );
        assert!(held.is_empty() && !held.is_full());
        assert_eq!(Outcome::Released.as_str(), "released");
    }
}
