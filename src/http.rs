//! The operations HTTP endpoint on `HTTP_LISTEN_ADDR`: `/metrics`
//! (Prometheus text), `/healthz`, `/readyz`.
//! Invariant: `/healthz` is 200 whenever the process can answer; `/readyz` is
//! 200 only while the replication stream is connected, the client listeners
//! accept and the log is healthy — otherwise 503 with a body naming every
//! missing condition.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// The conditions `/readyz` reports. Set by the modules that own them;
/// starts "not ready" for replication and listeners, "healthy" for the log.
#[derive(Debug)]
pub struct Readiness {
    replication_connected: AtomicBool,
    listeners_accepting: AtomicBool,
    log_healthy: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            replication_connected: AtomicBool::new(false),
            listeners_accepting: AtomicBool::new(false),
            log_healthy: AtomicBool::new(true),
        }
    }

    pub fn set_replication_connected(&self, v: bool) {
        self.replication_connected.store(v, Ordering::Relaxed);
    }

    pub fn set_listeners_accepting(&self, v: bool) {
        self.listeners_accepting.store(v, Ordering::Relaxed);
    }

    pub fn set_log_healthy(&self, v: bool) {
        self.log_healthy.store(v, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the list of what is missing.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.replication_connected.load(Ordering::Relaxed) {
            missing.push("replication stream not connected");
        }
        if !self.listeners_accepting.load(Ordering::Relaxed) {
            missing.push("listeners not accepting");
        }
        if !self.log_healthy.load(Ordering::Relaxed) {
            missing.push("log unhealthy");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The router, for embedding or testing without a socket.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, s.metrics.content_type())],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join("; ")),
        )
            .into_response(),
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes (then
/// in-flight requests finish and this returns).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 GET over a fresh connection → (status, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            head.to_ascii_lowercase().contains("content-length:"),
            "expected a sized body: {head}"
        );
        (status, body.to_string())
    }

    #[tokio::test]
    async fn endpoints() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let readiness = Arc::new(Readiness::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            metrics.clone(),
            readiness.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("replication stream not connected"), "{body}");
        assert!(body.contains("listeners not accepting"), "{body}");
        assert!(!body.contains("log"), "{body}");

        readiness.set_replication_connected(true);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(!body.contains("replication"), "{body}");
        readiness.set_listeners_accepting(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        readiness.set_log_healthy(false);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.trim()), (503, "not ready: log unhealthy"));
        readiness.set_log_healthy(true);
        readiness.set_replication_connected(false);
        assert_eq!(get(addr, "/readyz").await.0, 503);

        metrics.replication_transactions.inc_by(7);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let samples = exposition::parse(&body).unwrap();
        assert!(samples.len() > 20);
        for s in &samples {
            assert!(s.name.starts_with("pgsat_"), "{s:?}");
        }
        let txns = samples
            .iter()
            .find(|s| s.name == "pgsat_replication_transactions_total")
            .unwrap();
        assert_eq!(txns.value, 7.0);

        stop_tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("server stops after the shutdown signal")
            .unwrap()
            .unwrap();
    }
}
