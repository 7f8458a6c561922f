//! The servers a pod's agnhost containers would run, run by the agent instead, inside
//! the pod's network namespace.
//!
//! One thread per pod (or per [`spawn_in`] call) enters the namespace, binds every
//! requested socket, reports which ones are bound, and serves them on a single-threaded
//! runtime until its [`Servers`] handle is dropped.
//!
//! Behaviour follows agnhost: a raw TCP server writes its reply (the pod's hostname for
//! `serve-hostname`) and closes; a UDP server answers every datagram; an HTTP server
//! answers every request with its reply; `netexec` answers `hostname`, `echo <text>` and
//! `clientip` over UDP and `/hostname`, `/echo?msg=`, `/clientip`, `/` over HTTP. SCTP
//! servers are skipped with a reason where the kernel has no SCTP.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::probe::Protocol;

/// How long an HTTP server waits for a request head before answering anyway.
pub const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer of UDP servers, so a burst of probes is not dropped by the kernel.
pub const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Pause after a failed `accept` before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What a server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The pod's hostname (its name), as `serve-hostname` does.
    Hostname,
    /// A fixed text, as `porter` does with the value of its `SERVE_*_PORT_*` variable.
    Text(String),
}

/// How a server talks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// TCP/SCTP: write the reply on accept and close; UDP: answer each datagram with it.
    Raw(Reply),
    /// HTTP over TCP: answer every request with the reply as body.
    Http(Reply),
    /// agnhost `netexec`: a small command protocol (UDP) or HTTP endpoints (TCP).
    Netexec,
}

/// One listening socket a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port, bound on all addresses of the namespace.
    pub port: u16,
    /// What it answers.
    pub mode: Mode,
}

impl ServerSpec {
    /// A raw server answering with the hostname (`serve-hostname --tcp|--udp`).
    pub fn hostname(protocol: Protocol, port: u16) -> Self {
        ServerSpec {
            protocol,
            port,
            mode: Mode::Raw(Reply::Hostname),
        }
    }
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Whether one server came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// Bound and serving.
    Bound,
    /// Skipped because this machine cannot serve it (e.g. no SCTP in the kernel).
    Unsupported(String),
    /// Binding failed (e.g. the port is taken).
    Failed(String),
}

/// Errors starting a server thread.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Starting the thread failed.
    #[error("starting the server thread for {what} failed")]
    Thread {
        /// Which namespace or pod.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The preparation step (entering or creating the namespace) failed.
    #[error("preparing the namespace for {what} failed: {reason}")]
    Prepare {
        /// Which namespace or pod.
        what: String,
        /// The preparation's error, rendered with its causes.
        reason: String,
    },
    /// The thread died before reporting.
    #[error("the server thread for {what} died while starting")]
    Died {
        /// Which namespace or pod.
        what: String,
    },
}

/// Running servers; dropping the handle stops them and waits for the thread to leave.
#[derive(Debug)]
pub struct Servers {
    statuses: Vec<(ServerSpec, ServerStatus)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    /// Each requested server with whether it came up, in request order.
    pub fn statuses(&self) -> &[(ServerSpec, ServerStatus)] {
        &self.statuses
    }

    /// True if no server failed to bind (unsupported ones do not count as failures).
    pub fn all_up(&self) -> bool {
        !self
            .statuses
            .iter()
            .any(|(_, s)| matches!(s, ServerStatus::Failed(_)))
    }

    /// Stops the servers and waits for their thread to exit.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts `specs` inside the existing namespace at `netns`, answering with `hostname`
/// where the reply is the hostname. Returns once every socket is bound (or has failed).
pub fn spawn_in(netns: &Path, hostname: &str, specs: &[ServerSpec]) -> Result<Servers, Error> {
    let path = netns.to_path_buf();
    spawn_with(
        netns.display().to_string(),
        move || super::netns::enter(&path).map_err(|e| crate::agent::error_chain(&e)),
        hostname,
        specs,
    )
}

/// Creates the pod namespace `wiring.pod_netns`, wires it to the node
/// ([`super::netns::wire_pod_here`]) and starts `specs` in it, all on the pod's own thread.
/// On failure nothing is left behind (namespace unpinned, veth deleted).
pub fn spawn_in_new_pod(
    wiring: &super::netns::PodWiring,
    hostname: &str,
    specs: &[ServerSpec],
) -> Result<Servers, Error> {
    let w = wiring.clone();
    spawn_with(
        wiring.pod_netns.display().to_string(),
        move || {
            let result = super::netns::create_here(&w.pod_netns)
                .and_then(|()| super::netns::wire_pod_here(&w));
            result.map_err(|e| {
                let _ = super::netns::remove(&w.pod_netns);
                let _ = super::netns::unwire_pod(&w.node_netns, &w.host_link);
                crate::agent::error_chain(&e)
            })
        },
        hostname,
        specs,
    )
}

/// Starts a server thread that first runs `prepare` (which puts the thread into the right
/// namespace, possibly creating and wiring it), then binds `specs` and serves.
pub(crate) fn spawn_with<P>(
    what: String,
    prepare: P,
    hostname: &str,
    specs: &[ServerSpec],
) -> Result<Servers, Error>
where
    P: FnOnce() -> Result<(), String> + Send + 'static,
{
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<Vec<ServerStatus>, String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let hostname = hostname.to_string();
    let owned_specs = specs.to_vec();
    let thread = std::thread::Builder::new()
        .name("servers".into())
        .spawn(move || {
            if let Err(e) = prepare() {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("building the server runtime failed: {e}")));
                    return;
                }
            };
            runtime.block_on(serve(hostname, owned_specs, ready_tx, stop_rx));
        })
        .map_err(|source| Error::Thread {
            what: what.clone(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(statuses)) => Ok(Servers {
            statuses: specs.iter().cloned().zip(statuses).collect(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(reason)) => {
            let _ = thread.join();
            Err(Error::Prepare { what, reason })
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::Died { what })
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
    Sctp(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
}

#[allow(unsafe_code)] // registers an SCTP socket with tokio's reactor; SAFETY at the block
fn bind(spec: &ServerSpec) -> Result<Listener, ServerStatus> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, spec.port));
    let failed = |e: &dyn fmt::Display| ServerStatus::Failed(format!("binding {spec} failed: {e}"));
    match spec.protocol {
        Protocol::Tcp => {
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| failed(&e))?;
            socket.set_reuseaddr(true).map_err(|e| failed(&e))?;
            socket.bind(addr).map_err(|e| failed(&e))?;
            socket
                .listen(1024)
                .map(Listener::Tcp)
                .map_err(|e| failed(&e))
        }
        Protocol::Udp => std::net::UdpSocket::bind(addr)
            .and_then(|s| {
                // Room for bursts of probes; best effort (needs CAP_NET_ADMIN).
                let _ = nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::RcvBufForce,
                    &UDP_RECEIVE_BUFFER,
                );
                // Learn each datagram's destination, to answer from it.
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
                    .map_err(std::io::Error::from)?;
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            })
            .map(Listener::Udp)
            .map_err(|e| failed(&e)),
        Protocol::Sctp => {
            use nix::sys::socket::{Backlog, SockaddrStorage, bind, listen, setsockopt, sockopt};
            use std::os::fd::AsRawFd;
            let fd = match crate::probe::sctp_socket(addr) {
                Ok(fd) => fd,
                Err(errno) if crate::probe::is_unsupported_protocol(errno) => {
                    return Err(ServerStatus::Unsupported(crate::probe::sctp_unsupported(
                        errno,
                    )));
                }
                Err(errno) => return Err(failed(&errno)),
            };
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| failed(&e))?;
            bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| failed(&e))?;
            listen(&fd, Backlog::new(128).map_err(|e| failed(&e))?).map_err(|e| failed(&e))?;
            // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, with the
            // same descriptor, until the AsyncFd drops it.
            unsafe { tokio::io::unix::AsyncFd::register(fd) }
                .map(Listener::Sctp)
                .map_err(|e| failed(&e))
        }
    }
}

async fn serve(
    hostname: String,
    specs: Vec<ServerSpec>,
    ready: std_mpsc::Sender<Result<Vec<ServerStatus>, String>>,
    stop: oneshot::Receiver<()>,
) {
    let mut statuses = Vec::with_capacity(specs.len());
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        match bind(&spec) {
            Ok(listener) => {
                statuses.push(ServerStatus::Bound);
                tasks.spawn(run_listener(listener, spec.mode, hostname.clone()));
            }
            Err(status) => {
                if let ServerStatus::Unsupported(why) | ServerStatus::Failed(why) = &status {
                    tracing::warn!(server = %spec, reason = %why, "server not started");
                }
                statuses.push(status);
            }
        }
    }
    let _ = ready.send(Ok(statuses));
    let _ = stop.await;
    tasks.shutdown().await;
}

fn reply_text(reply: &Reply, hostname: &str) -> String {
    match reply {
        Reply::Hostname => hostname.to_string(),
        Reply::Text(t) => t.clone(),
    }
}

#[allow(unsafe_code)] // takes ownership of accept(2)'s descriptor; SAFETY at the block
async fn run_listener(listener: Listener, mode: Mode, hostname: String) {
    match listener {
        Listener::Tcp(l) => {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((stream, peer)) = accepted else {
                            // E.g. out of descriptors: give in-flight connections a moment.
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                            continue;
                        };
                        let mode = mode.clone();
                        let hostname = hostname.clone();
                        conns.spawn(serve_tcp(stream, peer, mode, hostname));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }
        Listener::Udp(socket) => {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            let mut buf = vec![0u8; 65536];
            loop {
                let received = socket
                    .async_io(tokio::io::Interest::READABLE, || {
                        recv_with_dst(fd, &mut buf)
                    })
                    .await;
                let Ok((n, peer, dst)) = received else {
                    continue;
                };
                let answer = match &mode {
                    Mode::Raw(reply) | Mode::Http(reply) => reply_text(reply, &hostname),
                    Mode::Netexec => netexec_udp(&buf[..n], SocketAddr::V4(peer), &hostname),
                };
                let _ = socket
                    .async_io(tokio::io::Interest::WRITABLE, || {
                        send_from(fd, answer.as_bytes(), peer, dst)
                    })
                    .await;
            }
        }
        Listener::Sctp(fd) => loop {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match nix::sys::socket::accept(fd.get_ref().as_raw_fd()) {
                Ok(conn) => {
                    // SAFETY: accept returned a fresh descriptor that nothing else owns.
                    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                    let text = match &mode {
                        Mode::Raw(r) | Mode::Http(r) => reply_text(r, &hostname),
                        Mode::Netexec => hostname.clone(),
                    };
                    let _ = nix::unistd::write(&conn, text.as_bytes());
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(_) => {}
            }
        },
    }
}

/// Receives one datagram and the address it was sent to (from `IP_PKTINFO`).
fn recv_with_dst(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddrV4, Option<Ipv4Addr>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let dst = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
            }
            _ => None,
        })
    });
    let peer = msg
        .address
        .map(|a| std::net::SocketAddrV4::new(a.ip(), a.port()))
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, peer, dst))
}

/// Sends `data` to `peer` with `src` as source address when known, so a server bound to
/// all addresses answers from the address it was asked at (on a node namespace the route
/// back to a pod would otherwise pick the gateway address of the pod's veth).
fn send_from(
    fd: std::os::fd::RawFd,
    data: &[u8],
    peer: std::net::SocketAddrV4,
    src: Option<Ipv4Addr>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
    let info = src.map(|src| nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    });
    let cmsgs: Vec<ControlMessage<'_>> = info.iter().map(ControlMessage::Ipv4PacketInfo).collect();
    sendmsg(
        fd,
        &[std::io::IoSlice::new(data)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&SockaddrIn::from(peer)),
    )
    .map_err(std::io::Error::from)
}

async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mode: Mode,
    hostname: String,
) {
    match mode {
        Mode::Raw(reply) => {
            let _ = stream
                .write_all(reply_text(&reply, &hostname).as_bytes())
                .await;
        }
        Mode::Http(reply) => {
            let _ = read_request_head(&mut stream).await;
            let body = reply_text(&reply, &hostname);
            let _ = stream.write_all(http_response(200, &body).as_bytes()).await;
        }
        Mode::Netexec => {
            let head = read_request_head(&mut stream).await;
            let path = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/")
                .to_string();
            let (status, body) = netexec_http(&path, peer, &hostname);
            let _ = stream
                .write_all(http_response(status, &body).as_bytes())
                .await;
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads until the end of an HTTP request head, EOF, or [`HTTP_READ_TIMEOUT`].
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 16 * 1024 {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(HTTP_READ_TIMEOUT, read).await;
    String::from_utf8_lossy(&head).into_owned()
}

fn http_response(status: u16, body: &str) -> String {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The answer of agnhost `netexec`'s UDP server to one datagram.
pub fn netexec_udp(request: &[u8], peer: SocketAddr, hostname: &str) -> String {
    let text = String::from_utf8_lossy(request);
    let text = text.trim();
    let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
    match command {
        "hostname" => hostname.to_string(),
        "echo" => rest.to_string(),
        "clientip" => peer.to_string(),
        _ => format!("unknown command {command:?}"),
    }
}

/// The status and body of agnhost `netexec`'s HTTP server for one request path.
pub fn netexec_http(path: &str, peer: SocketAddr, hostname: &str) -> (u16, String) {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    match route {
        "/hostname" => (200, hostname.to_string()),
        "/clientip" => (200, peer.to_string()),
        "/echo" => {
            let msg = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("msg="))
                .unwrap_or("");
            (200, msg.replace('+', " "))
        }
        "/healthz" | "/readyz" => (200, "ok".to_string()),
        "/" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (200, format!("NOW: {}", now.as_secs()))
        }
        _ => (404, format!("404 page not found: {route}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.244.0.7:40000".parse().unwrap()
    }

    #[test]
    fn netexec_udp_commands() {
        assert_eq!(netexec_udp(b"hostname\n", peer(), "a"), "a");
        assert_eq!(netexec_udp(b"echo hi there\n", peer(), "a"), "hi there");
        assert_eq!(netexec_udp(b"clientip", peer(), "a"), "10.244.0.7:40000");
        assert!(netexec_udp(b"nope", peer(), "a").starts_with("unknown command"));
    }

    #[test]
    fn netexec_http_endpoints() {
        assert_eq!(netexec_http("/hostname", peer(), "b"), (200, "b".into()));
        assert_eq!(
            netexec_http("/echo?msg=hello+you", peer(), "b"),
            (200, "hello you".into())
        );
        assert_eq!(netexec_http("/clientip", peer(), "b").1, "10.244.0.7:40000");
        assert!(netexec_http("/", peer(), "b").1.starts_with("NOW: "));
        assert_eq!(netexec_http("/nope", peer(), "b").0, 404);
    }

    #[test]
    fn http_response_has_length_and_body() {
        let r = http_response(200, "pod-a");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 5\r\n"));
        assert!(r.ends_with("\r\n\r\npod-a"));
    }
}
