//! A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`.
//!
//! - `/metrics`: the Prometheus text format of the registry.
//! - `/healthz`: 200 while the process can serve packets (every queue thread alive), else 503.
//! - `/readyz`: 200 once the watchers have synced and the rules are installed, else 503.
//!
//! One request per connection, `GET` (or `HEAD`) only; anything else is answered 404/405. This is
//! all a kubelet probe or a Prometheus scrape needs, and keeps a web framework out of the enforcer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listen address failed.
    #[error("binding the metrics address {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type AliveCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// What the probes report. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    alive: Arc<OnceLock<AliveCheck>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Health {
    /// Not ready, and alive until [`Health::set_alive_check`] installs a real check.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on `/healthz` asks `alive` (set once; later calls are ignored).
    pub fn set_alive_check(&self, alive: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.alive.set(Box::new(alive));
    }

    /// Mark ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether `/healthz` answers 200.
    pub fn is_alive(&self) -> bool {
        self.alive.get().is_none_or(|check| check())
    }
}

/// Bind `addr` (`host:port`; port 0 picks a free one).
pub async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Serve until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, health: Health) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a metrics connection");
                continue;
            }
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let handled =
                tokio::time::timeout(Duration::from_secs(10), handle(stream, &registry, &health))
                    .await;
            if !matches!(handled, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics connection ended early");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    health: &Health,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = respond(method, path, registry, health);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Status line, content type and body for one request.
pub fn respond(
    method: &str,
    path: &str,
    registry: &Registry,
    health: &Health,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "method not allowed\n".into(),
        );
    }
    let path = path.split('?').next().unwrap_or("");
    let probe = |ok: bool, what: &str| {
        if ok {
            ("200 OK", TEXT, "ok\n".to_owned())
        } else {
            ("503 Service Unavailable", TEXT, format!("not {what}\n"))
        }
    };
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    TEXT,
                    "encoding metrics failed\n".into(),
                ),
            }
        }
        "/healthz" => probe(health.is_alive(), "alive"),
        "/readyz" => probe(health.is_ready(), "ready"),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

/// The address actually bound (useful with port 0).
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_state() {
        let registry = Registry::default();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let health = Health::new();
        assert_eq!(respond("GET", "/healthz", &registry, &health).0, "200 OK");
        health.set_alive_check(move || flag.load(Ordering::Acquire));
        assert_eq!(
            respond("GET", "/readyz", &registry, &health).0,
            "503 Service Unavailable"
        );
        health.set_ready(true);
        assert_eq!(respond("GET", "/readyz", &registry, &health).0, "200 OK");
        assert_eq!(respond("GET", "/healthz", &registry, &health).0, "200 OK");
        alive.store(false, Ordering::Release);
        assert_eq!(
            respond("GET", "/healthz?verbose", &registry, &health).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            respond("POST", "/metrics", &registry, &health).0,
            "405 Method Not Allowed"
        );
        assert_eq!(
            respond("GET", "/nope", &registry, &health).0,
            "404 Not Found"
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_tcp() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::new();
        metrics.register(&mut registry);
        metrics.latency.observe(0.001);
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = local_addr(&listener).expect("addr");
        let server = tokio::spawn(serve(listener, Arc::new(registry), Health::new()));
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        server.abort();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("netpol_enforcer_verdict_latency_seconds_count 1"),
            "{response}"
        );
    }
}
