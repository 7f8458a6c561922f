//! New TCP connections per second between two pod namespaces through a node namespace, with and
//! without the enforcer judging every SYN. Needs root (it builds `npe-` namespaces); otherwise it
//! prints why and exits 0.
//!
//! Run: `cargo bench -p netpol-enforcer --bench dataplane_connrate` (optional env:
//! `NPE_BENCH_SECS` per round, default 3; `NPE_BENCH_CLIENTS` client threads, default 4;
//! `NPE_BENCH_DEFAULT_PRIORITY` set: queue threads keep the default nice value;
//! `NPE_BENCH_ROUNDS` alternations, default 2; `NPE_BENCH_ROWS=0,6` only those rows, by index).
//!
//! Each round connects, exchanges one byte and closes with RST (SO_LINGER 0) so no TIME_WAIT
//! piles up; rounds alternate (baseline, enforcer, …) so drift hits both sides alike, and the
//! ratio is computed from rounds measured in the same run: the ratio of the means, and the
//! lowest and highest ratio of one round to the baseline round of the same alternation.
//!
//! First it prints a calibration figure: one same-CPU round trip between two threads (two
//! context switches and four syscalls), the kernel work a queued packet adds at the least. It
//! tells how far this machine's figures carry to another.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{B, Topology, in_ns, root_or_skip};
use netpol_enforcer::dataplane::{self, Dataplane, Judge, StaticJudge, Verdict};
use netpol_enforcer::judge::EngineJudge;
use netpol_enforcer::metrics::Metrics;
use netpol_enforcer::store::Writer;

/// Servers in pod b: `threads` threads share one listener; each waits in `poll(2)` (so a new
/// connection is taken at once, not after a sleep), accepts, echoes one byte and closes.
fn serve(
    ns: &str,
    port: u16,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let listener = in_ns(ns, || {
        std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = Arc::new(listener);
    (0..threads)
        .map(|_| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                use std::os::fd::AsFd;
                while !stop.load(Ordering::Acquire) {
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    if !matches!(poll(&mut fds, PollTimeout::from(50u8)), Ok(n) if n > 0) {
                        continue;
                    }
                    // Another thread may have taken it: accept is non-blocking.
                    let Ok((mut conn, _)) = listener.accept() else {
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    // A client that gave up must not stall this server thread for long.
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut b = [0u8; 1];
                    if conn.read_exact(&mut b).is_ok() {
                        let _ = conn.write_all(&b);
                    }
                }
            })
        })
        .collect()
}

/// Connections per second from pod a to pod b over `secs`, with `clients` threads, and the
/// number of connections that failed (connect or echo not done within its timeout).
fn measure(topology: &Topology, port: u16, secs: f64, clients: usize) -> (f64, u64) {
    let addr: SocketAddr = format!("{B}:{port}").parse().expect("addr");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (done, failed, ns) = (done.clone(), failed.clone(), topology.a.clone());
            std::thread::spawn(move || {
                let path = Topology::path(&ns);
                dataplane::netns::enter(&path).expect("enter pod a");
                while Instant::now() < deadline {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                        nix::sys::socket::setsockopt(
                            &s,
                            nix::sys::socket::sockopt::Linger,
                            &nix::libc::linger {
                                l_onoff: 1,
                                l_linger: 0,
                            },
                        )?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.write_all(b"x")?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b)
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let failed = failed.load(Ordering::Relaxed);
    (done.load(Ordering::Relaxed) as f64 / secs, failed)
}

/// Median time of one round trip between two threads pinned to the same CPU over a socket pair:
/// two context switches and four syscalls, as a userspace verdict costs at the least.
fn thread_round_trip() -> Duration {
    use std::os::unix::net::UnixStream;
    const TRIPS: usize = 20_000;
    let pin = || {
        let mut set = nix::sched::CpuSet::new();
        set.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to cpu 0");
    };
    let (mut near, mut far) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        pin();
        let mut b = [0u8; 1];
        while far.read_exact(&mut b).is_ok() && far.write_all(&b).is_ok() {}
    });
    let mut samples = Vec::with_capacity(TRIPS);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin();
                let mut b = [0u8; 1];
                for _ in 0..TRIPS {
                    let started = Instant::now();
                    near.write_all(&b).expect("write");
                    near.read_exact(&mut b).expect("read");
                    samples.push(started.elapsed());
                }
            })
            .join()
            .expect("round trips");
    });
    drop(near);
    echo.join().expect("echo thread");
    samples.sort_unstable();
    samples[TRIPS / 2]
}

/// kube-proxy's rule dropping packets conntrack finds invalid, inserted (`-I`) or deleted (`-D`).
fn conntrack_rule(op: &str) -> [&str; 10] {
    [
        "iptables",
        "-w",
        op,
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ]
}

fn main() {
    if !root_or_skip("dataplane_connrate") {
        return;
    }
    let secs: f64 = std::env::var("NPE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let clients: usize = std::env::var("NPE_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    eprintln!(
        "calibration: same-CPU thread round trip (2 context switches, 4 syscalls): {:.1} µs",
        thread_round_trip().as_secs_f64() * 1e6
    );
    let topology = Topology::new("bench");
    for ns in [&topology.a, &topology.b] {
        common::ns_output(
            ns,
            &["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&topology.b, 80, clients, stop.clone());
    let node = Topology::path(&topology.node);
    let start = |judge: Arc<dyn Judge>, queues: u16| {
        let mut config = dataplane::Config::new(100, queues, false);
        config.netns = Some(node.clone());
        if std::env::var("NPE_BENCH_DEFAULT_PRIORITY").is_ok() {
            config.queue_thread_nice = None;
        }
        Dataplane::start(config, judge, Metrics::new()).expect("dataplane")
    };
    let start_fanout = |judge: Arc<dyn Judge>| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u16);
        let mut config = dataplane::Config::new(100, cpus.max(2), false);
        config.netns = Some(node.clone());
        config.rules.cpu_fanout = true;
        Dataplane::start(config, judge, Metrics::new()).expect("dataplane")
    };
    let writer = Writer::new();
    // The real engine over an empty snapshot (no policies: default allow).
    let engine_judge: Arc<dyn Judge> = Arc::new(EngineJudge::new(writer.reader()));
    let static_judge: Arc<dyn Judge> = Arc::new(StaticJudge(Verdict::Accept));

    // Warm up conntrack, the ARP caches and the server.
    let _ = measure(&topology, 80, 0.5, clients);

    let mut rows: Vec<(&str, Vec<f64>, u64)> = vec![
        ("no enforcer", vec![], 0),
        (
            "no enforcer, conntrack on (kube-proxy's INVALID drop rule)",
            vec![],
            0,
        ),
        ("rules only (fail-open, nobody bound: bypass)", vec![], 0),
        ("enforcer, static judge, 1 queue", vec![], 0),
        ("enforcer, engine (empty snapshot), 1 queue", vec![], 0),
        ("enforcer, engine (empty snapshot), 2 queues", vec![], 0),
        (
            "enforcer, engine, 1 queue per CPU (fanout, pinned)",
            vec![],
            0,
        ),
    ];
    let rounds: usize = std::env::var("NPE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    // `NPE_BENCH_ROWS=0,6`: only these rows (by index), e.g. to profile one setup.
    let only: Option<Vec<usize>> = std::env::var("NPE_BENCH_ROWS")
        .ok()
        .map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    for round in 0..rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            if only.as_ref().is_some_and(|only| !only.contains(&i)) {
                continue;
            }
            let dp = match i {
                0 => None,
                1 => {
                    // What every node running kube-proxy has: conntrack tracking forwarded
                    // traffic, through kube-proxy's own `ctstate INVALID` rule.
                    common::ns_output(&topology.node, &conntrack_rule("-I"));
                    None
                }
                2 => {
                    // The kernel side alone: every SYN hits the rules and the bypassing queue.
                    let spec = dataplane::Config::new(100, 1, true).rules;
                    dataplane::netns::run_in(Some(&node), || {
                        dataplane::rules::install(dataplane::Backend::Iptables, &spec)
                            .map_err(dataplane::Error::from)
                    })
                    .expect("install rules");
                    None
                }
                3 => Some(start(static_judge.clone(), 1)),
                4 => Some(start(engine_judge.clone(), 1)),
                5 => Some(start(engine_judge.clone(), 2)),
                _ => Some(start_fanout(engine_judge.clone())),
            };
            let (rate, failed) = measure(&topology, 80, secs, clients);
            eprintln!(
                "round {round}: {:<45} {rate:>10.0} conn/s, {failed} failed",
                row.0
            );
            row.1.push(rate);
            row.2 += failed;
            if let Some(dp) = dp {
                let _ = dp.shutdown();
            }
            if i == 1 {
                common::ns_output(&topology.node, &conntrack_rule("-D"));
            } else if i > 1 {
                dataplane::remove_rules(
                    Some(&node),
                    &[dataplane::Family::V4, dataplane::Family::V6],
                )
                .expect("remove rules");
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // A ratio to a baseline row, or "—" when that row was not run.
    let ratio = |rates: &[f64], base: &[f64]| {
        if base.is_empty() {
            return "—".to_owned();
        }
        let per_round: Vec<f64> = rates.iter().zip(base).map(|(r, b)| r / b).collect();
        let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let high = per_round.iter().copied().fold(0.0, f64::max);
        format!("{:.2} ({low:.2}–{high:.2})", mean(rates) / mean(base))
    };
    println!(
        "| setup | conn/s (mean of {rounds} rounds × {secs} s, {clients} clients) | vs no enforcer (rounds) | vs conntrack on (rounds) | failed connections |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, rates, failed) in rows.iter().filter(|(_, rates, _)| !rates.is_empty()) {
        println!(
            "| {name} | {:.0} | {} | {} | {failed} |",
            mean(rates),
            ratio(rates, &rows[0].1),
            ratio(rates, &rows[1].1)
        );
    }
    stop.store(true, Ordering::Release);
    for server in servers {
        let _ = server.join();
    }
}
