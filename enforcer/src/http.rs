//! The HTTP server for `/metrics`, `/healthz` and `/readyz`, on hyper's HTTP/1.1 server.
//!
//! - `/metrics`: the Prometheus text format of the registry.
//! - `/healthz`: 200 while the process can serve packets (every queue thread alive), else 503.
//! - `/readyz`: 200 once the watchers have synced and the rules are installed, else 503.
//!
//! `GET` (or `HEAD`) only; anything else is answered 404/405. hyper (already in the tree
//! through kube) does the protocol: keep-alive, pipelining, partial reads, header limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

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
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "metrics connection ended early");
            }
        });
    }
}

fn answer(
    request: &Request<Incoming>,
    registry: &Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        respond(request.method(), request.uri().path(), registry, health);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Status, content type and body for one request (hyper leaves the body out for `HEAD`).
pub fn respond(
    method: &Method,
    path: &str,
    registry: &Registry,
    health: &Health,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
    }
    let probe = |ok: bool, what: &str| {
        if ok {
            (StatusCode::OK, TEXT, "ok\n".to_owned())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not {what}\n"),
            )
        }
    };
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "encoding metrics failed\n".into(),
                ),
            }
        }
        "/healthz" => probe(health.is_alive(), "alive"),
        "/readyz" => probe(health.is_ready(), "ready"),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// The address actually bound (useful with port 0).
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn probes_follow_state() {
        let registry = Registry::default();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let health = Health::new();
        let status = |method: &Method, path: &str| respond(method, path, &registry, &health).0;
        assert_eq!(status(&Method::GET, "/healthz"), StatusCode::OK);
        health.set_alive_check(move || flag.load(Ordering::Acquire));
        assert_eq!(
            status(&Method::GET, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(status(&Method::GET, "/readyz"), StatusCode::OK);
        assert_eq!(status(&Method::HEAD, "/healthz"), StatusCode::OK);
        alive.store(false, Ordering::Release);
        assert_eq!(
            status(&Method::GET, "/healthz"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(&Method::POST, "/metrics"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::GET, "/nope"), StatusCode::NOT_FOUND);
    }

    /// Sends raw requests on one connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, requests: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(requests).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_and_head_over_tcp() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::new();
        metrics.register(&mut registry);
        metrics.latency.observe(0.001);
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = local_addr(&listener).expect("addr");
        let health = Health::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry), health.clone()));

        let response = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("netpol_enforcer_verdict_latency_seconds_count 1"),
            "{response}"
        );

        // Two requests on one kept-alive connection, a query string, and HEAD without a body.
        let response = exchange(
            addr,
            b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        server.abort();
        let (ready, alive) =
            response.split_at(response.find("HTTP/1.1 200").expect("second answer"));
        assert!(
            ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        assert!(ready.ends_with("not ready\n"), "{response}");
        assert!(alive.contains("content-length: 3\r\n"), "{response}");
        assert!(alive.ends_with("\r\n\r\n"), "HEAD has no body: {response}");
    }
}
