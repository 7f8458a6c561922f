//! Unit tests of the dataplane's judging and configuration (no root, no queue).

use super::*;
use crate::metrics::UnjudgedLabels;

fn counted(metrics: &Metrics, kind: &'static str) -> u64 {
    metrics
        .unjudged
        .get(&UnjudgedLabels { kind })
        .map_or(0, |c| c.get())
}

#[test]
fn unjudgeable_payloads_get_the_configured_verdict() {
    let metrics = Metrics::new();
    let judge = StaticJudge(Verdict::Accept);
    for on_unjudgeable in [Verdict::Accept, Verdict::Drop] {
        let got = judge_payload(
            &[0x45, 0x00],
            Hook::Forward,
            &judge,
            on_unjudgeable,
            &metrics,
        );
        assert_eq!(
            got,
            Judgement {
                verdict: on_unjudgeable,
                tier: "none"
            }
        );
    }
    assert_eq!(counted(&metrics, "parse_error"), 2);

    // ICMP echo: parses, but is not a flow the engine can judge.
    let mut icmp = [0u8; 28];
    icmp[0] = 0x45;
    icmp[9] = 1;
    let got = judge_payload(&icmp, Hook::Forward, &judge, Verdict::Drop, &metrics);
    assert_eq!(got.verdict, Verdict::Drop);
    assert_eq!(counted(&metrics, "other_protocol"), 1);
}

#[test]
fn flows_go_to_the_judge() {
    let metrics = Metrics::new();
    let judge = |flow: &Flow| Judgement {
        verdict: if flow.dst_port == 80 {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
        tier: "test",
    };
    let mut tcp = [0u8; 24];
    tcp[0] = 0x45;
    tcp[9] = 6;
    tcp[22..24].copy_from_slice(&80u16.to_be_bytes());
    let got = judge_payload(&tcp, Hook::Forward, &judge, Verdict::Drop, &metrics);
    assert_eq!(
        got,
        Judgement {
            verdict: Verdict::Accept,
            tier: "test"
        }
    );
    tcp[22..24].copy_from_slice(&81u16.to_be_bytes());
    assert_eq!(
        judge_payload(&tcp, Hook::Forward, &judge, Verdict::Accept, &metrics).verdict,
        Verdict::Drop
    );
    assert_eq!(counted(&metrics, "parse_error"), 0);
}

#[test]
fn judges_see_the_hook_and_kernel_hook_numbers_map_to_ends() {
    struct Hooked;
    impl Judge for Hooked {
        fn judge(&self, _flow: &Flow, hook: Hook) -> Judgement {
            Judgement {
                verdict: if hook == Hook::Output {
                    Verdict::Accept
                } else {
                    Verdict::Hold
                },
                tier: "test",
            }
        }
    }
    let mut tcp = [0u8; 24];
    tcp[0] = 0x45;
    tcp[9] = 6;
    let metrics = Metrics::new();
    let at = |hook| judge_payload(&tcp, hook, &Hooked, Verdict::Drop, &metrics).verdict;
    assert_eq!(at(Hook::Output), Verdict::Accept);
    assert_eq!(at(Hook::Forward), Verdict::Hold);
    assert_eq!(
        [0, 1, 2, 3, 4].map(Hook::from_raw),
        [
            Hook::Other,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Other
        ]
    );
}

#[test]
fn undecided_packets_are_held_by_default() {
    let config = Config::new(0, 1, true);
    assert_eq!(
        config.undecided,
        Undecided::Hold {
            limit: DEFAULT_HOLD
        }
    );
    assert!(config.max_held > 0 && config.max_held < config.queue_max_len as usize);
}

#[test]
fn default_unjudgeable_verdict_follows_the_failure_mode() {
    assert_eq!(Config::new(0, 1, true).on_unjudgeable, Verdict::Accept);
    assert_eq!(Config::new(0, 1, false).on_unjudgeable, Verdict::Drop);
    assert_eq!(Config::new(7, 3, false).queue_numbers(), 7..=9);
}
