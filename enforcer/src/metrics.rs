//! Prometheus metrics of the packet path, registered in one [`prometheus_client`] registry.
//!
//! All names carry the `netpol_enforcer_` prefix:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `verdicts_total` | counter | `verdict`, `tier` | packets judged, by result and by the tier that decided (`none` when the packet could not be judged) |
//! | `unjudged_total` | counter | `kind` | packets not given to the engine: `parse_error`, `fragment`, `other_protocol` |
//! | `undecided_total` | counter | `outcome` | packets the judge could not decide yet (with the engine: from or to an unknown pod address): `held` when set aside, then `released` (a later judgement decided; counted in `verdicts_total` too) or `expired` (dropped at the hold limit or at shutdown); `overflow` (dropped at once: too many held) or `dropped` (dropped at once: `--unknown-pod=drop`) |
//! | `held` | gauge | `queue` | packets held for a decision right now |
//! | `verdict_latency_seconds` | histogram | – | from receiving a packet to sending its verdict |
//! | `queue_errors_total` | counter | `queue`, `operation` | failed `recv` or `verdict` calls on a queue |
//! | `queue_kernel_dropped` | gauge | `queue` | packets the kernel dropped because the queue was full (`/proc/net/netfilter/nfnetlink_queue`) |
//! | `queue_user_dropped` | gauge | `queue` | packets the kernel could not deliver to us over netlink |
//! | `queue_waiting` | gauge | `queue` | packets waiting for a verdict right now |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `verdicts_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `accept` or `drop`.
    pub verdict: &'static str,
    /// The deciding tier as the judge names it (e.g. `admin`, `networkpolicy`, `baseline`,
    /// `default`), or `none` when the packet was not judged.
    pub tier: &'static str,
}

/// Labels of `unjudged_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnjudgedLabels {
    /// `parse_error`, `fragment` (non-first, no ports) or `other_protocol` (not TCP/UDP/SCTP).
    pub kind: &'static str,
}

/// Labels of `undecided_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UndecidedLabels {
    /// `held`, `released`, `expired`, `overflow` or `dropped`.
    pub outcome: &'static str,
}

/// Labels of the per-queue metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue number.
    pub queue: u16,
}

/// Labels of `queue_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueErrorLabels {
    /// The queue number.
    pub queue: u16,
    /// `recv` or `verdict`.
    pub operation: &'static str,
}

/// Every metric of the packet path. Cheap to share: each field is an `Arc` inside.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Packets judged.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Packets not handed to the engine.
    pub unjudged: Family<UnjudgedLabels, Counter>,
    /// Packets the judge could not decide yet, by what became of them.
    pub undecided: Family<UndecidedLabels, Counter>,
    /// Packets held right now, per queue.
    pub held: Family<QueueLabels, Gauge>,
    /// Receive-to-verdict time in seconds.
    pub latency: Histogram,
    /// Failed queue operations.
    pub queue_errors: Family<QueueErrorLabels, Counter>,
    /// Kernel drops because a queue was full.
    pub queue_kernel_dropped: Family<QueueLabels, Gauge>,
    /// Kernel failures to deliver to userspace.
    pub queue_user_dropped: Family<QueueLabels, Gauge>,
    /// Packets waiting for a verdict.
    pub queue_waiting: Family<QueueLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Metrics {
            verdicts: Family::default(),
            unjudged: Family::default(),
            undecided: Family::default(),
            held: Family::default(),
            // 1 µs … ~0.5 s, doubling.
            latency: Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
            queue_errors: Family::default(),
            queue_kernel_dropped: Family::default(),
            queue_user_dropped: Family::default(),
            queue_waiting: Family::default(),
        }
    }

    /// Register every metric under the `netpol_enforcer` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("netpol_enforcer");
        r.register(
            "verdicts",
            "Packets judged, by verdict and deciding tier",
            self.verdicts.clone(),
        );
        r.register(
            "unjudged",
            "Packets not handed to the engine, by reason",
            self.unjudged.clone(),
        );
        r.register(
            "undecided",
            "Packets the judge could not decide yet (unknown pod address), by outcome",
            self.undecided.clone(),
        );
        r.register(
            "held",
            "Packets held for a decision right now, by queue",
            self.held.clone(),
        );
        r.register(
            "verdict_latency_seconds",
            "Time from receiving a queued packet to sending its verdict",
            self.latency.clone(),
        );
        r.register(
            "queue_errors",
            "Failed recv or verdict calls, by queue",
            self.queue_errors.clone(),
        );
        r.register(
            "queue_kernel_dropped",
            "Packets the kernel dropped because the queue was full",
            self.queue_kernel_dropped.clone(),
        );
        r.register(
            "queue_user_dropped",
            "Packets the kernel failed to deliver to the enforcer",
            self.queue_user_dropped.clone(),
        );
        r.register(
            "queue_waiting",
            "Packets waiting in the queue for a verdict",
            self.queue_waiting.clone(),
        );
    }

    /// Parse one `/proc/net/netfilter/nfnetlink_queue` text and set the queue gauges for the
    /// queues in `range`. Returns the queues found.
    pub fn update_queue_stats(
        &self,
        proc_text: &str,
        range: std::ops::RangeInclusive<u16>,
    ) -> Vec<u16> {
        let mut found = Vec::new();
        for line in proc_text.lines() {
            // queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
            let fields: Vec<i64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            let [queue, _, waiting, _, _, kernel_dropped, user_dropped, ..] = fields[..] else {
                continue;
            };
            let Ok(queue) = u16::try_from(queue) else {
                continue;
            };
            if !range.contains(&queue) {
                continue;
            }
            let labels = QueueLabels { queue };
            self.queue_waiting.get_or_create(&labels).set(waiting);
            self.queue_kernel_dropped
                .get_or_create(&labels)
                .set(kernel_dropped);
            self.queue_user_dropped
                .get_or_create(&labels)
                .set(user_dropped);
            found.push(queue);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_stats_are_read_from_proc_format() {
        let m = Metrics::new();
        let text = "    0  12345     3     2   256     7     1    99  1\n   40  23456     0     2   256     0     5    12  1\n";
        assert_eq!(m.update_queue_stats(text, 40..=41), vec![40]);
        let q40 = QueueLabels { queue: 40 };
        assert_eq!(m.queue_user_dropped.get(&q40).map(|g| g.get()), Some(5));
        assert!(m.queue_waiting.get(&QueueLabels { queue: 0 }).is_none());
    }

    #[test]
    fn registered_metrics_render_with_prefix() {
        let m = Metrics::new();
        m.verdicts
            .get_or_create(&VerdictLabels {
                verdict: "drop",
                tier: "admin",
            })
            .inc();
        m.latency.observe(0.000_02);
        m.undecided
            .get_or_create(&UndecidedLabels {
                outcome: "released",
            })
            .inc();
        m.held.get_or_create(&QueueLabels { queue: 100 }).set(2);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("netpol_enforcer_verdicts_total{verdict=\"drop\",tier=\"admin\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("netpol_enforcer_verdict_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("netpol_enforcer_undecided_total{outcome=\"released\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("netpol_enforcer_held{queue=\"100\"} 2"),
            "{text}"
        );
    }
}
