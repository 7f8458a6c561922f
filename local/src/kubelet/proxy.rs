//! The `fabric-proxy` role: the one bridge between the host's loopback, where the control
//! plane listens, and the fabric, where the real nodes live. Both directions are plain byte
//! splices; TLS runs end to end through them.
//!
//! - **Nodes → apiserver**: a TCP listener on the fabric's control-plane address (inside the
//!   fabric namespace) whose connections are forwarded to the apiserver on the host's
//!   127.0.0.1. Kubelets and kube-proxy use it directly; pods reach it through the
//!   `kubernetes` Service, whose endpoint the apiserver advertises at that address.
//! - **apiserver → nodes**: a Unix socket speaking HTTP CONNECT, named by the apiserver's
//!   egress selector (`cluster`): exec, logs and port-forward reach the kubelets through it.
//!   It dials from inside the fabric namespace and only to the allowed networks.
//!
//! Connections are handled on their own threads; a thread that dials into the fabric enters
//! the fabric namespace first (namespaces are per thread, and a socket keeps the namespace it
//! was created in).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// Role value of the fabric proxy.
pub const ROLE_FABRIC_PROXY: &str = "fabric-proxy";
/// Environment variable carrying the [`FabricProxy`] JSON.
pub const FABRIC_PROXY_ENV: &str = "NETPOL_LOCAL_FABRIC_PROXY";
/// Longest CONNECT request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// How long a dial into the fabric may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricProxy {
    /// The fabric namespace.
    pub fabric_netns: PathBuf,
    /// Where nodes connect to reach the apiserver (inside the fabric namespace).
    pub listen: SocketAddrV4,
    /// The apiserver (in the proxy's own namespace: the host's loopback).
    pub upstream: SocketAddr,
    /// The HTTP CONNECT socket for the apiserver's egress selector.
    pub egress_socket: PathBuf,
    /// Networks the CONNECT side may dial.
    pub egress_allowed: Vec<Ipv4Net>,
}

impl FabricProxy {
    /// The JSON value of [`FABRIC_PROXY_ENV`].
    pub fn to_env_value(&self) -> String {
        serde_json::to_string(self).expect("FabricProxy serializes")
    }
}

/// Why a CONNECT request is refused (each becomes an HTTP error status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Not `CONNECT <ipv4>:<port> HTTP/1.x`.
    #[error("malformed CONNECT request: {0}")]
    Malformed(String),
    /// The target is outside the allowed networks.
    #[error("{0} is outside the networks this proxy serves")]
    Forbidden(SocketAddrV4),
}

/// Parses the head of an HTTP CONNECT request and checks its target against `allowed`.
pub fn parse_connect(head: &str, allowed: &[Ipv4Net]) -> Result<SocketAddrV4, ConnectError> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ConnectError::Malformed(line.to_string()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ConnectError::Malformed(line.to_string()));
    }
    let addr: SocketAddrV4 = target
        .parse()
        .map_err(|_| ConnectError::Malformed(format!("target {target:?} is not <ipv4>:<port>")))?;
    if !allowed.iter().any(|n| n.contains(addr.ip())) {
        return Err(ConnectError::Forbidden(addr));
    }
    Ok(addr)
}

/// Runs the proxy until the process is killed.
pub fn run() -> anyhow::Result<()> {
    let raw =
        std::env::var(FABRIC_PROXY_ENV).with_context(|| format!("reading ${FABRIC_PROXY_ENV}"))?;
    let cfg: FabricProxy =
        serde_json::from_str(&raw).with_context(|| format!("parsing ${FABRIC_PROXY_ENV}"))?;
    let host = File::open("/proc/thread-self/ns/net").context("opening the host namespace")?;
    let fabric = Arc::new(
        File::open(&cfg.fabric_netns)
            .with_context(|| format!("opening {}", cfg.fabric_netns.display()))?,
    );
    enter(&fabric)?;
    let listener = TcpListener::bind(cfg.listen);
    enter(&host)?;
    let listener = listener.with_context(|| format!("binding {} in the fabric", cfg.listen))?;
    let _ = std::fs::remove_file(&cfg.egress_socket);
    let egress = UnixListener::bind(&cfg.egress_socket)
        .with_context(|| format!("binding {}", cfg.egress_socket.display()))?;

    let upstream = cfg.upstream;
    std::thread::Builder::new()
        .name("to-apiserver".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("to-apiserver-conn".into())
                    .spawn(move || match TcpStream::connect(upstream) {
                        Ok(up) => splice(conn, up),
                        Err(e) => eprintln!("fabric-proxy: dialing the apiserver {upstream}: {e}"),
                    });
            }
        })
        .context("starting the apiserver forwarder")?;

    let allowed = Arc::new(cfg.egress_allowed.clone());
    for conn in egress.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fabric-proxy: accepting on the egress socket: {e}");
                continue;
            }
        };
        let (fabric, allowed) = (fabric.clone(), allowed.clone());
        let _ = std::thread::Builder::new()
            .name("to-fabric-conn".into())
            .spawn(move || {
                if let Err(e) = enter(&fabric).and_then(|()| serve_connect(conn, &allowed)) {
                    eprintln!("fabric-proxy: {e:#}");
                }
            });
    }
    Ok(())
}

fn enter(ns: &File) -> anyhow::Result<()> {
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("entering a namespace")
}

/// Reads the CONNECT head, dials, answers, splices. Runs inside the fabric namespace.
fn serve_connect(mut conn: UnixStream, allowed: &[Ipv4Net]) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            head.len() < MAX_HEAD,
            "CONNECT head longer than {MAX_HEAD} bytes"
        );
        if conn.read(&mut byte).context("reading a CONNECT request")? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = match parse_connect(&head, allowed) {
        Ok(t) => t,
        Err(e) => {
            let status = match e {
                ConnectError::Malformed(_) => "400 Bad Request",
                ConnectError::Forbidden(_) => "403 Forbidden",
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\n\r\n");
            return Err(e.into());
        }
    };
    let up = match TcpStream::connect_timeout(&target.into(), DIAL_TIMEOUT) {
        Ok(up) => up,
        Err(e) => {
            let _ = write!(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n");
            return Err(anyhow::Error::new(e).context(format!("dialing {target}")));
        }
    };
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .context("answering a CONNECT request")?;
    splice(conn, up);
    Ok(())
}

/// A connected stream the proxy splices to a TCP connection (TCP or a Unix socket).
trait Stream: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Stream for UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Copies both ways between `a` and `b` until each side has said all it has.
fn splice<A: Stream>(a: A, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.duplicate(), b.duplicate()) else {
        return;
    };
    let t = std::thread::spawn(move || copy_then_shutdown(a2, b2, TcpStream::shutdown_write));
    copy_then_shutdown(b, a, A::shutdown_write);
    let _ = t.join();
}

fn copy_then_shutdown<R: Read, W: Write>(
    mut from: R,
    mut to: W,
    shutdown: impl FnOnce(&W) -> std::io::Result<()>,
) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = shutdown(&to);
}

/// The control-plane address on the fabric: the bridge's own address in the fabric namespace.
pub fn control_plane_ip() -> Ipv4Addr {
    let [a, b, c] = crate::fabric::FABRIC_PREFIX;
    Ipv4Addr::new(a, b, c, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<Ipv4Net> {
        vec!["172.30.254.0/24".parse().unwrap()]
    }

    #[test]
    fn a_connect_to_a_node_is_accepted() {
        let head = "CONNECT 172.30.254.10:10250 HTTP/1.1\r\nHost: 172.30.254.10:10250\r\n\r\n";
        assert_eq!(
            parse_connect(head, &allowed()),
            Ok("172.30.254.10:10250".parse().unwrap())
        );
    }

    #[test]
    fn targets_outside_the_fabric_and_bad_heads_are_refused() {
        assert!(matches!(
            parse_connect("CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n", &allowed()),
            Err(ConnectError::Forbidden(_))
        ));
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "CONNECT npc-node-0:10250 HTTP/1.1\r\n\r\n",
            "CONNECT 172.30.254.10:10250 SPDY/3\r\n\r\n",
            "CONNECT 172.30.254.10:10250\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_connect(bad, &allowed()),
                    Err(ConnectError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_control_plane_sits_at_the_first_fabric_address() {
        assert_eq!(control_plane_ip(), Ipv4Addr::new(172, 30, 254, 1));
    }
}
