//! The local cluster's prober: connect from inside a pod's network namespace, the way
//! agnhost's `connect` subcommand does in a real pod.
//!
//! [`connect`] hands the probe to a worker thread that lives inside the source network
//! namespace (one worker per namespace, created on first use, gone after
//! [`WORKER_IDLE`] without work). Each worker runs a single-threaded tokio runtime, so
//! many probes from the same namespace run concurrently and a probe that times out does
//! not hold up the others. Sockets are created on the worker thread and therefore in its
//! namespace; no tokio worker thread of the caller ever calls `setns`.
//!
//! Outcomes follow agnhost `connect`:
//! - TCP: the handshake completes → [`ProbeResult::Connected`]; a reset or an ICMP
//!   rejection → [`ProbeResult::Refused`]; nothing before the deadline →
//!   [`ProbeResult::Timeout`].
//! - UDP: sends `hostname\n` and needs a non-empty reply before the deadline; an ICMP
//!   port unreachable → [`ProbeResult::Refused`].
//! - SCTP: where the kernel has no SCTP the socket cannot be created and the result is
//!   [`ProbeResult::Unsupported`] with the reason; never a pass.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, mpsc as std_mpsc};
use std::time::Duration;

use nix::errno::Errno;
use tokio::sync::{mpsc, oneshot};

/// How long a namespace worker stays alive without probes before its thread exits (and
/// stops pinning the namespace).
pub const WORKER_IDLE: Duration = Duration::from_secs(10);

/// The payload a UDP (and SCTP) probe sends, as agnhost `connect` does.
pub const UDP_REQUEST: &[u8] = b"hostname\n";

pub use netpol_api::{Protocol, UnknownProtocol};

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The connection was established (UDP: a non-empty reply arrived).
    Connected,
    /// Nothing came back before the deadline (a silent drop).
    Timeout,
    /// The destination or the path actively rejected the connection (TCP reset, ICMP
    /// port/host unreachable or administratively prohibited).
    Refused,
    /// This machine cannot run the probe at all (e.g. the kernel has no SCTP); a skip
    /// with this reason, never a pass.
    Unsupported(String),
    /// The probe itself failed (entering the namespace, creating the socket, …).
    Error(String),
}

impl ProbeResult {
    /// True only for [`ProbeResult::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, ProbeResult::Connected)
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Connected => f.write_str("CONNECTED"),
            ProbeResult::Timeout => f.write_str("TIMEOUT"),
            ProbeResult::Refused => f.write_str("REFUSED"),
            ProbeResult::Unsupported(why) => write!(f, "UNSUPPORTED: {why}"),
            ProbeResult::Error(why) => write!(f, "ERROR: {why}"),
        }
    }
}

/// Connects from inside the network namespace at `netns` (e.g. `/run/netns/npc-1a2b3c4d`)
/// to `target` and reports what happened, waiting at most about `timeout`.
///
/// Blocking: it parks the calling thread until the answer comes (any thread may call
/// it, but async code should use [`connect_async`] rather than block a runtime worker).
pub fn connect(
    netns: &Path,
    target: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> ProbeResult {
    // `futures`' executor, not `blocking_recv`, which panics inside a runtime context: the
    // future only waits for the worker's answer.
    futures::executor::block_on(connect_async(netns, target, protocol, timeout))
}

/// [`connect`] for async callers: the probe runs on the namespace's worker thread and
/// this future only waits for its answer.
pub async fn connect_async(
    netns: &Path,
    target: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> ProbeResult {
    match submit(netns, target, protocol, timeout) {
        Ok(rx) => rx
            .await
            .unwrap_or_else(|_| ProbeResult::Error(worker_gone(netns))),
        Err(result) => result,
    }
}

/// Stops the worker for `netns`, if any, once its in-flight probes finish, so it no longer
/// keeps that namespace alive (call it when a namespace is being deleted).
pub fn forget(netns: &Path) {
    pool().lock().expect("probe pool lock").remove(netns);
}

fn worker_gone(netns: &Path) -> String {
    format!(
        "the probe worker for {} stopped before answering",
        netns.display()
    )
}

struct Job {
    target: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    reply: oneshot::Sender<ProbeResult>,
}

/// A live worker thread inside one namespace.
struct Worker {
    /// `(st_dev, st_ino)` of the namespace file when the worker entered it; a namespace
    /// recreated under the same path gets a fresh worker.
    identity: (u64, u64),
    jobs: mpsc::UnboundedSender<Job>,
    /// Distinguishes this worker from a later one under the same path.
    serial: u64,
}

type Pool = Mutex<HashMap<PathBuf, Worker>>;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

fn identity(netns: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(netns)?;
    Ok((meta.dev(), meta.ino()))
}

fn submit(
    netns: &Path,
    target: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> Result<oneshot::Receiver<ProbeResult>, ProbeResult> {
    let id = identity(netns).map_err(|e| {
        ProbeResult::Error(format!(
            "reading network namespace {} failed: {e}",
            netns.display()
        ))
    })?;
    let (reply, rx) = oneshot::channel();
    let mut job = Job {
        target,
        protocol,
        timeout,
        reply,
    };
    let mut workers = pool().lock().expect("probe pool lock");
    if let Some(worker) = workers.get(netns)
        && worker.identity == id
    {
        match worker.jobs.send(job) {
            Ok(()) => return Ok(rx),
            // The worker exited between its idle check and now; start a new one.
            Err(mpsc::error::SendError(back)) => job = back,
        }
    }
    let worker = spawn_worker(netns, id).map_err(ProbeResult::Error)?;
    worker
        .jobs
        .send(job)
        .map_err(|_| ProbeResult::Error(worker_gone(netns)))?;
    workers.insert(netns.to_path_buf(), worker);
    Ok(rx)
}

fn spawn_worker(netns: &Path, identity: (u64, u64)) -> Result<Worker, String> {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (jobs, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
    let path = netns.to_path_buf();
    let name = format!("probe-{}", short_name(netns));
    std::thread::Builder::new()
        .name(name)
        .spawn(move || worker_main(path, serial, rx, ready_tx))
        .map_err(|e| format!("starting a probe thread failed: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| format!("the probe thread for {} died", netns.display()))??;
    Ok(Worker {
        identity,
        jobs,
        serial,
    })
}

fn short_name(netns: &Path) -> String {
    let name = netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Thread names are cut at 15 bytes by the kernel; keep the distinctive tail.
    name.chars()
        .rev()
        .take(9)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

fn worker_main(
    netns: PathBuf,
    serial: u64,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    let setup = || -> Result<tokio::runtime::Runtime, String> {
        let file = std::fs::File::open(&netns)
            .map_err(|e| format!("opening network namespace {} failed: {e}", netns.display()))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering network namespace {} failed: {e}", netns.display()))?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building the probe runtime failed: {e}"))
    };
    let runtime = match setup() {
        Ok(rt) => {
            let _ = ready.send(Ok(()));
            rt
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut running = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        running.spawn(async move {
                            let result = probe_here(job.target, job.protocol, job.timeout).await;
                            let _ = job.reply.send(result);
                        });
                    }
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(WORKER_IDLE), if running.is_empty() => {
                    // Leave only if no job slipped in: senders hold the pool lock while
                    // sending, so checking under it is race-free.
                    let mut workers = pool().lock().expect("probe pool lock");
                    if jobs.is_empty() {
                        if workers.get(&netns).is_some_and(|w| w.serial == serial) {
                            workers.remove(&netns);
                        }
                        break;
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    });
}

/// Runs one probe on the current thread's namespace. Must run on a worker's runtime.
async fn probe_here(target: SocketAddr, protocol: Protocol, timeout: Duration) -> ProbeResult {
    match protocol {
        Protocol::Tcp => probe_tcp(target, timeout).await,
        Protocol::Udp => probe_udp(target, timeout).await,
        Protocol::Sctp => probe_sctp(target, timeout).await,
    }
}

/// Maps a connect/receive error to the probe outcome.
fn classify(op: &str, target: SocketAddr, err: &io::Error) -> ProbeResult {
    match err.raw_os_error().map(Errno::from_raw) {
        Some(
            Errno::ECONNREFUSED
            | Errno::EHOSTUNREACH
            | Errno::EHOSTDOWN
            | Errno::EACCES
            | Errno::EPERM,
        ) => ProbeResult::Refused,
        Some(Errno::ETIMEDOUT) => ProbeResult::Timeout,
        _ => ProbeResult::Error(format!("{op} {target} failed: {err}")),
    }
}

async fn probe_tcp(target: SocketAddr, timeout: Duration) -> ProbeResult {
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => return ProbeResult::Error(format!("creating a TCP socket failed: {e}")),
    };
    match tokio::time::timeout(timeout, socket.connect(target)).await {
        Ok(Ok(_stream)) => ProbeResult::Connected,
        Ok(Err(e)) => classify("TCP connect to", target, &e),
        Err(_) => ProbeResult::Timeout,
    }
}

async fn probe_udp(target: SocketAddr, timeout: Duration) -> ProbeResult {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(bind)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .and_then(tokio::net::UdpSocket::from_std);
    let socket = match socket {
        Ok(s) => s,
        Err(e) => return ProbeResult::Error(format!("creating a UDP socket failed: {e}")),
    };
    // A connected UDP socket receives ICMP errors (port unreachable → ECONNREFUSED).
    if let Err(e) = socket.connect(target).await {
        return classify("UDP connect to", target, &e);
    }
    let exchange = async {
        socket.send(UDP_REQUEST).await?;
        let mut buf = [0u8; 2048];
        loop {
            let n = socket.recv(&mut buf).await?;
            if n > 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => ProbeResult::Connected,
        Ok(Err(e)) => classify("UDP exchange with", target, &e),
        Err(_) => ProbeResult::Timeout,
    }
}

/// Whether an errno from `socket()` means "this kernel has no such protocol".
pub(crate) fn is_unsupported_protocol(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EPROTONOSUPPORT | Errno::ESOCKTNOSUPPORT | Errno::EAFNOSUPPORT | Errno::EPROTOTYPE
    )
}

/// The reason given when SCTP sockets cannot be created.
pub(crate) fn sctp_unsupported(errno: Errno) -> String {
    format!(
        "SCTP is not supported by this kernel (socket(IPPROTO_SCTP): {})",
        errno.desc()
    )
}

/// Creates a non-blocking SCTP stream socket for `target`'s address family.
pub(crate) fn sctp_socket(target: SocketAddr) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    let family = match target {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
}

#[allow(unsafe_code)] // registers an SCTP socket with tokio's reactor; SAFETY at the block
async fn probe_sctp(target: SocketAddr, timeout: Duration) -> ProbeResult {
    use nix::sys::socket::{SockaddrStorage, connect, getsockopt, sockopt};
    use std::os::fd::AsRawFd;
    let fd = match sctp_socket(target) {
        Ok(fd) => fd,
        Err(errno) if is_unsupported_protocol(errno) => {
            return ProbeResult::Unsupported(sctp_unsupported(errno));
        }
        Err(errno) => {
            return ProbeResult::Error(format!("creating an SCTP socket failed: {errno}"));
        }
    };
    let addr = SockaddrStorage::from(target);
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => return ProbeResult::Connected,
        Err(Errno::EINPROGRESS) => {}
        Err(errno) => return classify("SCTP connect to", target, &io::Error::from(errno)),
    }
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, with the same
    // descriptor, until the AsyncFd drops it.
    let afd = match unsafe { tokio::io::unix::AsyncFd::register(fd) } {
        Ok(afd) => afd,
        Err(e) => return ProbeResult::Error(format!("registering the SCTP socket failed: {e}")),
    };
    let wait = async {
        let mut guard = afd.writable().await?;
        guard.retain_ready();
        let err = getsockopt(afd.get_ref(), sockopt::SocketError).map_err(io::Error::from)?;
        if err == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(err))
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => ProbeResult::Connected,
        Ok(Err(e)) => classify("SCTP connect to", target, &e),
        Err(_) => ProbeResult::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_refused_timeout_or_error() {
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let refused = io::Error::from_raw_os_error(Errno::ECONNREFUSED as i32);
        assert_eq!(classify("x", target, &refused), ProbeResult::Refused);
        let unreachable = io::Error::from_raw_os_error(Errno::EHOSTUNREACH as i32);
        assert_eq!(classify("x", target, &unreachable), ProbeResult::Refused);
        let timed_out = io::Error::from_raw_os_error(Errno::ETIMEDOUT as i32);
        assert_eq!(classify("x", target, &timed_out), ProbeResult::Timeout);
        let other = io::Error::from_raw_os_error(Errno::ENETUNREACH as i32);
        match classify("TCP connect to", target, &other) {
            ProbeResult::Error(msg) => {
                assert!(msg.starts_with("TCP connect to 10.0.0.1:80 failed"));
            }
            r => panic!("unexpected {r:?}"),
        }
    }

    #[test]
    fn missing_namespace_is_an_error_naming_it() {
        let r = connect(
            Path::new("/run/netns/npt-does-not-exist"),
            "127.0.0.1:1".parse().unwrap(),
            Protocol::Tcp,
            Duration::from_millis(10),
        );
        match r {
            ProbeResult::Error(msg) => assert!(msg.contains("npt-does-not-exist"), "{msg}"),
            r => panic!("unexpected {r:?}"),
        }
    }
}
