//! The engine as the dataplane's [`Judge`]: store → engine → dataplane, joined in one place.
//!
//! Each packet reads the latest published snapshot; the hook it was queued at says which end is
//! this node ([`LocalEnds`]); the engine's [`Decision`] becomes a dataplane verdict, with
//! [`engine::Verdict::Unknown`] (an unknown pod address) becoming [`Verdict::Hold`], so the
//! packet waits for a newer snapshot instead of passing unjudged.

use crate::dataplane::{Hook, Judge, Judgement, Verdict};
use crate::engine::{self, Decision, LocalEnds};
use crate::flow::Flow;
use crate::store::Reader;

/// Judges with the engine over a store's latest snapshot.
#[derive(Debug, Clone)]
pub struct EngineJudge {
    reader: Reader,
}

impl EngineJudge {
    /// A judge reading `reader`'s snapshots.
    pub fn new(reader: Reader) -> Self {
        EngineJudge { reader }
    }
}

impl Judge for EngineJudge {
    fn judge(&self, flow: &Flow, hook: Hook) -> Judgement {
        let snapshot = self.reader.snapshot();
        let decision = engine::decide_with(&snapshot, flow, local_ends(hook));
        tracing::debug!(?flow, ?hook, verdict = ?decision.verdict, reason = %decision.reason, "judged");
        judgement(&decision)
    }
}

/// Which ends of a packet queued at `hook` are this node.
pub fn local_ends(hook: Hook) -> LocalEnds {
    LocalEnds {
        source: hook == Hook::Output,
        destination: hook == Hook::Input,
    }
}

/// The dataplane's verdict for an engine decision, tier named as in metrics.
pub fn judgement(decision: &Decision) -> Judgement {
    Judgement {
        verdict: match decision.verdict {
            engine::Verdict::Accept => Verdict::Accept,
            engine::Verdict::Drop => Verdict::Drop,
            engine::Verdict::Unknown => Verdict::Hold,
        },
        tier: decision.tier.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::Direction;
    use crate::engine::{Reason, Tier};

    #[test]
    fn an_unknown_pod_address_is_held_never_accepted() {
        let unknown = Decision {
            verdict: engine::Verdict::Unknown,
            tier: Tier::Unknown,
            reason: Reason::UnknownPodAddress {
                direction: Direction::Egress,
                address: "10.244.1.9".parse().unwrap(),
            },
        };
        assert_eq!(
            judgement(&unknown),
            Judgement {
                verdict: Verdict::Hold,
                tier: "unknown_pod"
            }
        );
        let allowed = Decision {
            verdict: engine::Verdict::Accept,
            tier: Tier::Default,
            reason: Reason::NoMatch,
        };
        assert_eq!(judgement(&allowed).verdict, Verdict::Accept);
        assert_eq!(judgement(&allowed).tier, "default");
    }

    #[test]
    fn output_means_the_source_is_this_node_and_input_the_destination() {
        assert_eq!(
            local_ends(Hook::Output),
            LocalEnds {
                source: true,
                destination: false
            }
        );
        assert_eq!(
            local_ends(Hook::Input),
            LocalEnds {
                source: false,
                destination: true
            }
        );
        assert_eq!(local_ends(Hook::Forward), LocalEnds::default());
        assert_eq!(local_ends(Hook::Other), LocalEnds::default());
    }
}
