//! The packet path: netfilter rules that queue new connections, and one thread per NFQUEUE that
//! parses each queued packet, asks a [`Judge`] and sends an explicit verdict.
//!
//! Start at [`Dataplane::start`]. Order of operations:
//! 1. each queue thread enters the configured network namespace (see [`netns`]), binds its queue
//!    and reports back — so a listener exists before any rule sends packets to it;
//! 2. the backend is chosen ([`rules::detect`]: nftables if its `queue` statement works, else
//!    iptables) and the rules are installed from a thread inside the namespace ([`rules`]);
//! 3. a statistics thread reads the kernel's per-queue counters into [`Metrics`].
//!
//! Failure behaviour (`fail_open` in [`RuleSpec`]):
//!
//! | situation | fail-open | fail-closed |
//! |---|---|---|
//! | no process bound to the queue (crash, SIGKILL, not started yet) | `--queue-bypass`: accepted unjudged | dropped |
//! | queue full (`queue_max_len` packets waiting) | `set_fail_open`: accepted | dropped |
//! | packet that cannot be judged (parse error, non-first fragment, non-TCP/UDP/SCTP) | [`Config::on_unjudgeable`], default accept | default drop |
//! | packet the judge cannot decide yet ([`Verdict::Hold`]: with the engine, an unknown pod address) | held, then dropped ([`Config::undecided`]) | the same |
//! | clean shutdown ([`Dataplane::shutdown`]) | rules removed: nothing stays queued | rules **kept**: new connections stay blocked until an enforcer binds again |
//!
//! Established connections are never queued, so a restart in either mode leaves them alone.
//!
//! Every queued packet gets an explicit verdict from this module; nfq's default verdict (accept)
//! is never relied on.
//!
//! # Held packets
//!
//! A judge that cannot decide yet answers [`Verdict::Hold`] (the engine does for a connection
//! from or to a pod it does not know yet). With [`Undecided::Hold`] the queue thread sets the
//! packet aside — its verdict simply is not sent, so the kernel keeps it queued — and goes on
//! serving the queue; a timer wakes the thread every [`Config::recheck_interval`] while it holds
//! anything, and each held packet is judged again (against the latest snapshot) until the judge
//! decides or [`Undecided::Hold::limit`] has passed, when it is dropped. At most
//! [`Config::max_held`] packets wait per queue (they occupy kernel queue slots); beyond that,
//! and with [`Undecided::Drop`], an undecided packet is dropped at once. A held packet is never
//! accepted without a judgement; at shutdown it gets one last judgement, else it is dropped.

mod hold;
pub mod netns;
mod queue;
pub mod rules;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use rules::{Backend, Family, RuleSpec};

use crate::flow::Flow;
use crate::metrics::{Metrics, UnjudgedLabels, VerdictLabels};
use crate::packet::{Parsed, parse};

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through (and, for a first packet, the whole connection).
    Accept,
    /// Drop it silently.
    Drop,
    /// Not decidable yet: keep the packet queued and ask again later, as [`Config::undecided`]
    /// says (see [Held packets](self#held-packets)); never sent to the kernel as such.
    Hold,
}

impl Verdict {
    /// `accept`, `drop` or `hold`, as used in metrics (a counted verdict is never `hold`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Hold => "hold",
        }
    }
}

/// The netfilter hook a packet was queued at, which tells whether this node is an end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `INPUT`: delivered to this node, so the destination is one of the node's addresses.
    Input,
    /// `FORWARD`: routed through the node; neither end is the node.
    Forward,
    /// `OUTPUT`: sent by the node itself, so the source is one of the node's addresses.
    Output,
    /// Another hook (the rules queue at none) or none known: nothing is assumed.
    Other,
}

impl Hook {
    /// From the kernel's hook number (`NF_INET_LOCAL_IN` = 1, `NF_INET_FORWARD` = 2,
    /// `NF_INET_LOCAL_OUT` = 3; the same for the iptables and the nftables `inet` hooks).
    pub fn from_raw(hook: u8) -> Hook {
        match hook {
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            _ => Hook::Other,
        }
    }
}

/// A verdict and the tier that decided it (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Accept or drop.
    pub verdict: Verdict,
    /// Which tier decided, e.g. `admin`, `networkpolicy`, `baseline`, `default`.
    pub tier: &'static str,
}

/// Decides about the first packet of a connection. Called from the queue threads, concurrently;
/// must not block. A held packet ([`Verdict::Hold`]) is asked about again, so the answer may
/// change as the judge learns more.
pub trait Judge: Send + Sync + 'static {
    /// Judge one flow, queued at `hook`.
    fn judge(&self, flow: &Flow, hook: Hook) -> Judgement;
}

/// A closure over the flow alone is a judge that ignores the hook.
impl<F> Judge for F
where
    F: Fn(&Flow) -> Judgement + Send + Sync + 'static,
{
    fn judge(&self, flow: &Flow, _hook: Hook) -> Judgement {
        self(flow)
    }
}

/// A judge that gives every flow the same verdict (tier `static`): for tests and benchmarks.
/// (`StaticJudge(Verdict::Hold)` never decides: every packet is held, then dropped.)
#[derive(Debug, Clone, Copy)]
pub struct StaticJudge(pub Verdict);

impl Judge for StaticJudge {
    fn judge(&self, _flow: &Flow, _hook: Hook) -> Judgement {
        Judgement {
            verdict: self.0,
            tier: "static",
        }
    }
}

/// Which rule backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// nftables if the kernel has the `queue` statement, iptables otherwise.
    Auto,
    /// Always nftables.
    Nftables,
    /// Always iptables.
    Iptables,
}

/// What becomes of a packet its judge cannot decide yet ([`Verdict::Hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// Keep it queued and judge it again every [`Config::recheck_interval`]; drop it if it is
    /// still undecided after `limit`.
    Hold {
        /// How long a packet may wait for a decision.
        limit: Duration,
    },
    /// Drop it at once.
    Drop,
}

/// How to run the dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    /// Network namespace to work in (`/run/netns/NAME`); `None` = the process's own.
    pub netns: Option<PathBuf>,
    /// Rule backend.
    pub backend: BackendChoice,
    /// Queues, failure mode, marks, exemptions.
    pub rules: RuleSpec,
    /// Verdict for queued packets the engine cannot judge: parse errors, non-first fragments and
    /// protocols other than TCP/UDP/SCTP (the rules queue only those three, so in practice this
    /// covers malformed packets).
    pub on_unjudgeable: Verdict,
    /// What becomes of packets the judge cannot decide yet.
    pub undecided: Undecided,
    /// How many undecided packets one queue holds at most; more are dropped at once.
    pub max_held: usize,
    /// How often held packets are judged again.
    pub recheck_interval: Duration,
    /// Kernel queue length before the failure mode applies.
    pub queue_max_len: u32,
    /// Bytes of each packet copied to userspace (headers only).
    pub copy_range: u16,
    /// How often the kernel's queue counters are read.
    pub stats_interval: Duration,
    /// Nice value for the queue threads (negative = scheduled ahead of ordinary work); `None`
    /// leaves them at the process's priority.
    pub queue_thread_nice: Option<i32>,
}

impl Config {
    /// Defaults for `queues` queues from `queue_base`: IPv4 and IPv6, every new connection
    /// (no pod ranges), root's sockets exempt, accept mark `0x200000`, unjudgeable packets follow
    /// the failure mode, undecided packets held up to [`DEFAULT_HOLD`] (at most 256 per queue,
    /// judged again every 10 ms).
    pub fn new(queue_base: u16, queues: u16, fail_open: bool) -> Self {
        Config {
            netns: None,
            backend: BackendChoice::Auto,
            rules: RuleSpec {
                queue_base,
                queues: queues.max(1),
                fail_open,
                accept_mark: 0x0020_0000,
                exempt_uid: Some(0),
                families: vec![Family::V4, Family::V6],
                pod_cidrs: Vec::new(),
                cpu_fanout: false,
            },
            on_unjudgeable: if fail_open {
                Verdict::Accept
            } else {
                Verdict::Drop
            },
            undecided: Undecided::Hold {
                limit: DEFAULT_HOLD,
            },
            max_held: 256,
            recheck_interval: Duration::from_millis(10),
            queue_max_len: 1024,
            copy_range: 256,
            stats_interval: Duration::from_secs(5),
            queue_thread_nice: Some(-10),
        }
    }

    fn queue_numbers(&self) -> std::ops::RangeInclusive<u16> {
        let base = self.rules.queue_base;
        base..=base + self.rules.queues.max(1) - 1
    }
}

/// How long an undecided packet is held by default: longer than the watch usually takes to
/// report a new pod, and than TCP's first SYN retransmission (1 s), so a held connection attempt
/// is always waiting when the pod becomes known.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);

/// Why the dataplane could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Entering the network namespace failed.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// Installing, detecting or removing rules failed.
    #[error("managing netfilter rules")]
    Rules(#[from] rules::Error),
    /// Opening, binding or configuring a queue failed.
    #[error("{operation} on NFQUEUE {queue}")]
    Queue {
        /// The queue number.
        queue: u16,
        /// What was being done (`open`, `bind`, `set_fail_open`, …).
        operation: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A queue thread could not be spawned or died before reporting.
    #[error("starting the thread for NFQUEUE {queue}")]
    Thread {
        /// The queue number.
        queue: u16,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Dataplane::shutdown`] did with the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesOnExit {
    /// Fail-open: the rules were removed.
    Removed,
    /// Fail-closed: the rules were left in place, so new connections stay blocked.
    Kept,
}

/// Judge one payload queued at `hook`: parse it, hand a flow to the judge, apply
/// `on_unjudgeable` otherwise, and count the outcome.
pub fn judge_payload(
    payload: &[u8],
    hook: Hook,
    judge: &dyn Judge,
    on_unjudgeable: Verdict,
    metrics: &Metrics,
) -> Judgement {
    judge_flow(
        flow_of(payload, metrics).as_ref(),
        hook,
        judge,
        on_unjudgeable,
    )
}

/// The flow a payload starts, or `None` (counted in `unjudged_total` by kind) when it cannot be
/// judged.
pub(crate) fn flow_of(payload: &[u8], metrics: &Metrics) -> Option<Flow> {
    let kind = match parse(payload) {
        Ok(Parsed::Flow(flow)) => return Some(flow),
        Ok(Parsed::Fragment { .. }) => "fragment",
        Ok(Parsed::Other { .. }) => "other_protocol",
        Err(_) => "parse_error",
    };
    metrics
        .unjudged
        .get_or_create(&UnjudgedLabels { kind })
        .inc();
    None
}

/// The judge's answer for a flow, or `on_unjudgeable` (tier `none`) when there is none.
pub(crate) fn judge_flow(
    flow: Option<&Flow>,
    hook: Hook,
    judge: &dyn Judge,
    on_unjudgeable: Verdict,
) -> Judgement {
    match flow {
        Some(flow) => judge.judge(flow, hook),
        None => Judgement {
            verdict: on_unjudgeable,
            tier: "none",
        },
    }
}

/// A running dataplane: queue threads bound, rules installed.
pub struct Dataplane {
    config: Config,
    backend: Backend,
    workers: Vec<queue::Worker>,
    stats: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    metrics: Metrics,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("backend", &self.backend)
            .field("queues", &self.config.queue_numbers())
            .field("netns", &self.config.netns)
            .finish()
    }
}

impl Dataplane {
    /// Bind the queues, install the rules, start counting. On error nothing is left running
    /// (rules that were partly installed are removed again).
    pub fn start(config: Config, judge: Arc<dyn Judge>, metrics: Metrics) -> Result<Dataplane> {
        queue::install_wake_handler();
        let mut dataplane = Dataplane {
            backend: Backend::Iptables,
            workers: Vec::new(),
            stats: None,
            metrics: metrics.clone(),
            config,
        };
        for number in dataplane.config.queue_numbers() {
            let worker =
                queue::Worker::spawn(number, &dataplane.config, judge.clone(), metrics.clone())?;
            dataplane.workers.push(worker);
        }
        let choice = dataplane.config.backend;
        let spec = dataplane.config.rules.clone();
        let backend = netns::run_in(dataplane.config.netns.as_deref(), || -> Result<Backend> {
            let backend = match choice {
                BackendChoice::Auto => rules::detect(),
                BackendChoice::Nftables => Backend::Nftables,
                BackendChoice::Iptables => Backend::Iptables,
            };
            if let Err(err) = rules::install(backend, &spec) {
                let _ = rules::remove(&spec.families);
                return Err(err.into());
            }
            Ok(backend)
        })?;
        dataplane.backend = backend;
        dataplane.stats = Some(dataplane.spawn_stats()?);
        Ok(dataplane)
    }

    fn spawn_stats(&self) -> Result<(mpsc::Sender<()>, JoinHandle<()>)> {
        let (stop, stopped) = mpsc::channel::<()>();
        let netns = self.config.netns.clone();
        let metrics = self.metrics.clone();
        let range = self.config.queue_numbers();
        let first_queue = *range.start();
        let interval = self.config.stats_interval;
        let handle = std::thread::Builder::new()
            .name("nfqueue-stats".into())
            .spawn(move || {
                if let Some(path) = &netns
                    && let Err(err) = netns::enter(path)
                {
                    tracing::warn!(error = %err, "queue statistics disabled");
                    return;
                }
                loop {
                    // /proc/thread-self/net follows this thread's network namespace.
                    match std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
                    {
                        Ok(text) => {
                            metrics.update_queue_stats(&text, range.clone());
                        }
                        Err(err) => tracing::debug!(error = %err, "reading queue statistics"),
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .map_err(|_| Error::Thread { queue: first_queue })?;
        Ok((stop, handle))
    }

    /// The backend that carries the rules.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True while every queue thread is serving.
    pub fn healthy(&self) -> bool {
        (self.liveness())()
    }

    /// A check that stays valid after the dataplane moves: true while every queue thread runs.
    pub fn liveness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let exited: Vec<Flag> = self
            .workers
            .iter()
            .map(queue::Worker::exited_flag)
            .collect();
        move || !exited.iter().any(is_set)
    }

    /// Re-apply the rules if any part is missing (someone flushed a table or deleted a jump).
    /// Returns whether they had to be reinstalled.
    pub fn ensure_rules(&self) -> Result<bool> {
        let spec = self.config.rules.clone();
        let backend = self.backend;
        netns::run_in(self.config.netns.as_deref(), || {
            if rules::intact(backend, &spec) {
                return Ok(false);
            }
            rules::install(backend, &spec)?;
            Ok(true)
        })
    }

    /// Stop serving. Fail-open removes the rules first (so nothing is queued to a process that is
    /// going away); fail-closed keeps them (new connections stay blocked until an enforcer binds
    /// the queues again). Packets already queued get their verdicts before the threads exit.
    pub fn shutdown(mut self) -> Result<RulesOnExit> {
        let outcome = if self.config.rules.fail_open {
            let families = self.config.rules.families.clone();
            netns::run_in(self.config.netns.as_deref(), || {
                rules::remove(&families).map_err(Error::from)
            })?;
            RulesOnExit::Removed
        } else {
            RulesOnExit::Kept
        };
        self.stop_threads();
        Ok(outcome)
    }

    fn stop_threads(&mut self) {
        for worker in &self.workers {
            worker.request_stop();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for worker in self.workers.drain(..) {
            worker.join(deadline);
        }
        if let Some((stop, handle)) = self.stats.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

/// Remove every rule the dataplane may have installed (both backends), e.g. after a fail-closed
/// shutdown. Runs inside `netns` when given.
pub fn remove_rules(netns: Option<&std::path::Path>, families: &[Family]) -> Result<()> {
    netns::run_in(netns, || rules::remove(families).map_err(Error::from))
}

impl Drop for Dataplane {
    /// Stops the threads if [`Dataplane::shutdown`] was not called; rules are left as they are.
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Count and answer: shared by every queue thread.
pub(crate) fn record(metrics: &Metrics, judgement: Judgement, started: Instant) {
    metrics
        .verdicts
        .get_or_create(&VerdictLabels {
            verdict: judgement.verdict.as_str(),
            tier: judgement.tier,
        })
        .inc();
    metrics.latency.observe(started.elapsed().as_secs_f64());
}

/// Used by [`queue`] to flag that a worker stopped by itself.
pub(crate) type Flag = Arc<AtomicBool>;

pub(crate) fn flag() -> Flag {
    Arc::new(AtomicBool::new(false))
}

pub(crate) fn is_set(flag: &Flag) -> bool {
    flag.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests;
