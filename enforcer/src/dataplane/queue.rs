//! One blocking OS thread per NFQUEUE (nfq 0.2.5 exposes no file descriptor to poll).
//!
//! Stopping a thread blocked in `recv(2)`: the stop flag is set, then the thread is sent a signal
//! whose handler does nothing and is installed without `SA_RESTART`, so `recv` returns `EINTR` and
//! the loop sees the flag. The signal is repeated until the thread has finished, which covers the
//! window between checking the flag and entering `recv`.
//!
//! Held packets (see [`super::hold`]) are judged again on the same thread: while it holds any, a
//! POSIX interval timer sends that thread the same signal every recheck interval, so an idle
//! `recv` returns and the loop rechecks; a tick that lands outside `recv` is simply late by one
//! interval. The timer is disarmed as soon as nothing is held, so an idle queue is never woken.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::{
    SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal, sigaction,
};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;

use super::hold::{Held, Settled};
use super::{
    Config, Error, Flag, Hook, Judge, Judgement, Undecided, Verdict, flag, flow_of, is_set,
    judge_flow, netns, record,
};
use crate::flow::Flow;
use crate::metrics::{Metrics, QueueErrorLabels, QueueLabels, UndecidedLabels};

/// The signal used to interrupt a blocked `recv`.
const WAKE: Signal = Signal::SIGUSR2;

extern "C" fn wake(_: nix::libc::c_int) {}

/// Install the no-op `WAKE` handler once per process.
#[allow(unsafe_code)] // installs a signal handler (sigaction); SAFETY at the block
pub(super) fn install_wake_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler is async-signal-safe (it does nothing) and replaces no handler the
        // program relies on; SIGUSR2 is reserved for this purpose in the enforcer.
        if let Err(err) = unsafe { sigaction(WAKE, &action) } {
            tracing::warn!(error = %err, "installing the queue wake-up handler");
        }
    });
}

pub(super) struct Worker {
    number: u16,
    stop: Flag,
    exited: Flag,
    thread: Pthread,
    handle: JoinHandle<()>,
}

/// Sets its flag when dropped: marks a queue thread as gone however it ends (panics included).
struct ExitGuard(Flag);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Context {
    number: u16,
    judge: Arc<dyn Judge>,
    metrics: Metrics,
    on_unjudgeable: Verdict,
    undecided: Undecided,
    max_held: usize,
    recheck_interval: Duration,
    stop: Flag,
}

impl Worker {
    /// Spawn the thread, enter the namespace, bind and configure the queue; return once the
    /// queue is bound (or with the reason it could not be).
    pub(super) fn spawn(
        number: u16,
        config: &Config,
        judge: Arc<dyn Judge>,
        metrics: Metrics,
    ) -> Result<Worker, Error> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Pthread, Error>>(1);
        let stop = flag();
        let exited = flag();
        let exit_guard = ExitGuard(exited.clone());
        let context = Context {
            number,
            judge,
            metrics,
            on_unjudgeable: config.on_unjudgeable,
            undecided: config.undecided,
            max_held: config.max_held,
            recheck_interval: config.recheck_interval,
            stop: stop.clone(),
        };
        let netns_path = config.netns.clone();
        let fail_open = config.rules.fail_open;
        let max_len = config.queue_max_len;
        let copy_range = config.copy_range;
        let nice = config.queue_thread_nice;
        // With CPU fanout the kernel picks queue `base + cpu % queues`: run this queue's thread
        // on exactly those CPUs.
        let pin = (config.rules.cpu_fanout && config.rules.queues > 1).then(|| {
            let index = usize::from(number - config.rules.queue_base);
            (index, usize::from(config.rules.queues))
        });
        let handle = std::thread::Builder::new()
            .name(format!("nfqueue-{number}"))
            .spawn(move || {
                let _exit = exit_guard;
                let opened = (|| {
                    if let Some(path) = &netns_path {
                        netns::enter(path)?;
                    }
                    open(number, fail_open, max_len, copy_range)
                })();
                if let Some(nice) = nice {
                    raise_priority(number, nice);
                }
                if let Some((index, queues)) = pin {
                    pin_to_cpus(number, index, queues);
                }
                match opened {
                    Ok(mut queue) => {
                        let _ = ready_tx.send(Ok(pthread_self()));
                        serve(&mut queue, &context);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .map_err(|_| Error::Thread { queue: number })?;
        match ready_rx.recv() {
            Ok(Ok(thread)) => Ok(Worker {
                number,
                stop,
                exited,
                thread,
                handle,
            }),
            Ok(Err(err)) => {
                let _ = handle.join();
                Err(err)
            }
            Err(_) => {
                let _ = handle.join();
                Err(Error::Thread { queue: number })
            }
        }
    }

    pub(super) fn exited_flag(&self) -> Flag {
        self.exited.clone()
    }

    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Interrupt the thread until it finishes, then join it. Gives up (leaving the thread) at
    /// `deadline`.
    pub(super) fn join(self, deadline: Instant) {
        self.request_stop();
        while !self.handle.is_finished() {
            if Instant::now() > deadline {
                tracing::warn!(queue = self.number, "queue thread did not stop in time");
                return;
            }
            // The thread is not joined yet, so its pthread_t is still valid.
            let _ = pthread_kill(self.thread, WAKE);
            std::thread::park_timeout(Duration::from_millis(20));
        }
        let _ = self.handle.join();
    }
}

/// Give this (queue) thread a nice value of its own, so that under CPU contention the thread every
/// new connection waits on is scheduled first. Lacking CAP_SYS_NICE only costs a log line.
#[allow(unsafe_code)] // setpriority on this thread's id; SAFETY at the block
fn raise_priority(number: u16, nice: i32) {
    // SAFETY: gettid and setpriority only read their integer arguments; on Linux PRIO_PROCESS
    // with a thread id sets that one thread's nice value.
    let result = unsafe {
        let tid = nix::libc::gettid();
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t, nice)
    };
    if result != 0 {
        tracing::info!(queue = number, nice, error = %std::io::Error::last_os_error(), "queue thread keeps the default priority");
    }
}

/// Restrict this thread to the CPUs whose packets go to queue `index` of `queues`.
fn pin_to_cpus(number: u16, index: usize, queues: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut set = nix::sched::CpuSet::new();
    for cpu in (0..cpus).filter(|cpu| cpu % queues == index) {
        if set.set(cpu).is_err() {
            return;
        }
    }
    if let Err(err) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        tracing::info!(queue = number, error = %err, "queue thread not pinned");
    }
}

fn open(number: u16, fail_open: bool, max_len: u32, copy_range: u16) -> Result<nfq::Queue, Error> {
    let err = |operation| {
        move |source| Error::Queue {
            queue: number,
            operation,
            source,
        }
    };
    let mut queue = nfq::Queue::open().map_err(err("open"))?;
    queue.bind(number).map_err(err("bind"))?;
    queue
        .set_copy_range(number, copy_range)
        .map_err(err("set_copy_range"))?;
    queue
        .set_queue_max_len(number, max_len)
        .map_err(err("set_queue_max_len"))?;
    queue
        .set_fail_open(number, fail_open)
        .map_err(err("set_fail_open"))?;
    // Whole GSO super-packets are fine: only the headers are copied, and the kernel need not
    // segment them first.
    queue
        .set_recv_gso(number, true)
        .map_err(err("set_recv_gso"))?;
    Ok(queue)
}

/// Wakes the queue thread out of `recv` every interval while armed.
struct Ticker {
    timer: Timer,
    interval: Duration,
    armed: bool,
}

impl Ticker {
    /// A disarmed timer that signals the calling thread.
    fn for_this_thread(interval: Duration) -> nix::Result<Ticker> {
        let event = SigEvent::new(SigevNotify::SigevThreadId {
            signal: WAKE,
            thread_id: nix::unistd::gettid().as_raw(),
            si_value: 0,
        });
        Ok(Ticker {
            timer: Timer::new(ClockId::CLOCK_MONOTONIC, event)?,
            interval,
            armed: false,
        })
    }

    /// Arm (ticking every interval) or disarm; whether the timer is now as asked.
    fn set(&mut self, armed: bool) -> bool {
        if armed == self.armed {
            return true;
        }
        let expiration = if armed {
            Expiration::Interval(TimeSpec::from_duration(self.interval))
        } else {
            // A zero one-shot expiration disarms the timer.
            Expiration::OneShot(TimeSpec::from_duration(Duration::ZERO))
        };
        match self.timer.set(expiration, TimerSetTimeFlags::empty()) {
            Ok(()) => {
                self.armed = armed;
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, armed, "setting the recheck timer");
                false
            }
        }
    }
}

/// What one queue thread keeps between packets: the packets it holds and the timer that wakes
/// it to judge them again.
struct Holding {
    held: Held<nfq::Message>,
    /// `None`: holding is off (`Undecided::Drop`) or no timer could be made.
    ticker: Option<Ticker>,
    next_recheck: Instant,
}

impl Holding {
    /// Makes room for one more undecided packet received at `received`, arming the timer for
    /// the first; otherwise the outcome to count for dropping it at once: `dropped` (holding is
    /// off or there is no timer) or `overflow` (the list is full).
    fn make_room(&mut self, received: Instant, interval: Duration) -> Result<(), &'static str> {
        let Some(ticker) = &mut self.ticker else {
            return Err("dropped");
        };
        if self.held.is_full() {
            return Err("overflow");
        }
        if self.held.is_empty() {
            if !ticker.set(true) {
                return Err("dropped");
            }
            self.next_recheck = received + interval;
        }
        Ok(())
    }

    fn new(context: &Context) -> Holding {
        let (limit, ticker) = match context.undecided {
            Undecided::Hold { limit } => {
                let ticker = Ticker::for_this_thread(context.recheck_interval)
                    .inspect_err(|err| {
                        tracing::warn!(
                            queue = context.number,
                            error = %err,
                            "no recheck timer: undecided packets are dropped at once"
                        );
                    })
                    .ok();
                (limit, ticker)
            }
            Undecided::Drop => (Duration::ZERO, None),
        };
        Holding {
            held: Held::new(limit, context.max_held),
            ticker,
            next_recheck: Instant::now(),
        }
    }
}

fn serve(queue: &mut nfq::Queue, context: &Context) {
    let mut holding = Holding::new(context);
    let mut failures: u32 = 0;
    while !is_set(&context.stop) {
        match queue.recv() {
            Ok(message) => {
                failures = 0;
                answer(queue, message, context, &mut holding);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                count_error(context, "recv");
                failures += 1;
                tracing::warn!(queue = context.number, error = %err, "receiving from queue");
                if failures > 10 {
                    // A persistent socket error: back off instead of spinning; stop still works
                    // because the wake signal interrupts the sleep's successor recv.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let now = Instant::now();
        if !holding.held.is_empty() && now >= holding.next_recheck {
            holding.next_recheck = now + context.recheck_interval;
            recheck(queue, context, &mut holding, now, false);
        }
    }
    // Packets already handed to us still get verdicts; held ones one last judgement.
    queue.set_nonblocking(true);
    while let Ok(message) = queue.recv() {
        answer(queue, message, context, &mut holding);
    }
    recheck(queue, context, &mut holding, Instant::now(), true);
    if let Err(err) = queue.unbind(context.number) {
        tracing::debug!(queue = context.number, error = %err, "unbinding queue");
    }
}

fn answer(queue: &mut nfq::Queue, message: nfq::Message, context: &Context, holding: &mut Holding) {
    let started = Instant::now();
    let hook = Hook::from_raw(message.get_hook());
    let flow = flow_of(message.get_payload(), &context.metrics);
    let judgement = judge(context, flow.as_ref(), hook);
    if judgement.verdict != Verdict::Hold {
        send(queue, message, judgement, started, context);
        return;
    }
    let refused = match holding.make_room(started, context.recheck_interval) {
        Ok(()) => holding
            .held
            .hold(message, flow, hook, started, judgement.tier)
            .err()
            .map(|message| (message, "overflow")),
        Err(outcome) => Some((message, outcome)),
    };
    match refused {
        None => {
            count_undecided(context, "held");
            set_held_gauge(context, holding.held.len());
        }
        Some((message, outcome)) => {
            count_undecided(context, outcome);
            let drop = Judgement {
                verdict: Verdict::Drop,
                tier: judgement.tier,
            };
            send(queue, message, drop, started, context);
        }
    }
}

/// Judge every held packet again; answer those decided or out of time.
fn recheck(
    queue: &mut nfq::Queue,
    context: &Context,
    holding: &mut Holding,
    now: Instant,
    last: bool,
) {
    if holding.held.is_empty() {
        return;
    }
    let settled = holding
        .held
        .recheck(now, last, |flow, hook| judge(context, flow, hook));
    for s in settled {
        settle(queue, s, context);
    }
    set_held_gauge(context, holding.held.len());
    if holding.held.is_empty()
        && let Some(ticker) = &mut holding.ticker
    {
        ticker.set(false);
    }
}

fn judge(context: &Context, flow: Option<&Flow>, hook: Hook) -> Judgement {
    judge_flow(flow, hook, context.judge.as_ref(), context.on_unjudgeable)
}

/// Answer a packet whose wait is over and count how it ended.
fn settle(queue: &mut nfq::Queue, settled: Settled<nfq::Message>, context: &Context) {
    count_undecided(context, settled.outcome.as_str());
    let started = settled.entry.received;
    send(
        queue,
        settled.entry.item,
        settled.judgement,
        started,
        context,
    );
}

/// Send a verdict (never accept for anything but [`Verdict::Accept`]) and count it.
fn send(
    queue: &mut nfq::Queue,
    mut message: nfq::Message,
    judgement: Judgement,
    started: Instant,
    context: &Context,
) {
    let judgement = match judgement.verdict {
        Verdict::Hold => Judgement {
            verdict: Verdict::Drop,
            ..judgement
        },
        _ => judgement,
    };
    message.set_verdict(match judgement.verdict {
        Verdict::Accept => nfq::Verdict::Accept,
        Verdict::Drop | Verdict::Hold => nfq::Verdict::Drop,
    });
    if let Err(err) = queue.verdict(message) {
        count_error(context, "verdict");
        tracing::warn!(queue = context.number, error = %err, "sending verdict");
    }
    record(&context.metrics, judgement, started);
}

fn count_undecided(context: &Context, outcome: &'static str) {
    context
        .metrics
        .undecided
        .get_or_create(&UndecidedLabels { outcome })
        .inc();
}

fn set_held_gauge(context: &Context, held: usize) {
    context
        .metrics
        .held
        .get_or_create(&QueueLabels {
            queue: context.number,
        })
        .set(held as i64);
}

fn count_error(context: &Context, operation: &'static str) {
    context
        .metrics
        .queue_errors
        .get_or_create(&QueueErrorLabels {
            queue: context.number,
            operation,
        })
        .inc();
}
