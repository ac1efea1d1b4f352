//! The TCP and WebSocket listeners. Both hand their connections to the same
//! session implementation.
//!
//! Invariant: at most `MAX_CONNECTIONS` sessions exist at once (one semaphore
//! shared by both listeners); after shutdown starts no connection is accepted.
//! With TLS configured every connection of both listeners is TLS: the
//! handshake runs in the connection's own task, within `AUTH_TIMEOUT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use super::transport::ClientIo;
use super::{session, transport, ServerCtx};
use crate::protocol::frame::encode_frame;
use crate::protocol::msg_type::MsgType;
use crate::protocol::pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Ws,
}

/// Accepts until shutdown. Each connection runs as its own task on `tasks`.
pub async fn accept_loop(
    ctx: Arc<ServerCtx>,
    listener: TcpListener,
    kind: Kind,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, max = ctx.config.max_connections, "connection refused: MAX_CONNECTIONS reached");
            tasks.spawn(refuse(ctx.clone(), stream, peer, kind));
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let Some(stream) =
                tls_handshake(&ctx, stream, peer, ctx.config.auth.auth_timeout).await
            else {
                return;
            };
            match kind {
                Kind::Tcp => {
                    let (r, w) = transport::tcp(stream, ctx.config.max_frame_bytes);
                    session::run(ctx, r, w, peer).await;
                }
                Kind::Ws => {
                    if let Some((r, w)) = ws_handshake(&ctx, stream, peer).await {
                        session::run(ctx, r, w, peer).await;
                    }
                }
            }
        });
    }
}

/// A connection over the limit gets `ErrorResp{INTERNAL}` naming the limit
/// — a frame on TCP, a binary message after the handshake on WebSocket —
/// and is closed; at most a second is spent on it.
async fn refuse(ctx: Arc<ServerCtx>, stream: TcpStream, peer: SocketAddr, kind: Kind) {
    let frame = encode_frame(
        MsgType::ErrorResp,
        &pb::ErrorResp {
            code: pb::ErrorCode::Internal as i32,
            message: format!(
                "connection limit reached (MAX_CONNECTIONS = {})",
                ctx.config.max_connections
            ),
            request_id: String::new(),
        },
    );
    let send = async {
        let Some(stream) = tls_handshake(&ctx, stream, peer, REFUSE_WITHIN).await else {
            return;
        };
        match kind {
            Kind::Tcp => {
                let mut stream = stream;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &frame).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            }
            Kind::Ws => {
                if let Some((_, mut w)) = ws_handshake(&ctx, stream, peer).await {
                    let mut q = transport::OutQueue::default();
                    q.push(frame);
                    let _ = w.drain(&mut q).await;
                    w.close().await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(REFUSE_WITHIN, send).await;
}

/// Most time spent on refusing a connection over the limit.
const REFUSE_WITHIN: Duration = Duration::from_secs(1);

/// With `TLS_CERT_FILE` set, the TLS handshake (within `within`); else the
/// plain stream. `None`: the handshake failed or took too long (counted in
/// `pgsat_tls_handshake_failures_total`); the connection is dropped.
async fn tls_handshake(
    ctx: &ServerCtx,
    stream: TcpStream,
    peer: SocketAddr,
    within: Duration,
) -> Option<ClientIo> {
    let Some(acceptor) = &ctx.tls else {
        return Some(ClientIo::Plain(stream));
    };
    let failed = |reason: &str| {
        ctx.metrics.tls_handshake_failures.inc();
        tracing::debug!(peer = %peer, reason, "TLS handshake failed");
    };
    match tokio::time::timeout(within, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(ClientIo::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            failed(&e.to_string());
            None
        }
        Err(_) => {
            failed("timed out");
            None
        }
    }
}

async fn ws_handshake(
    ctx: &ServerCtx,
    stream: ClientIo,
    peer: SocketAddr,
) -> Option<(transport::Reader, transport::Writer)> {
    let max = ctx.config.max_frame_bytes as usize;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    // The callback's signature is tungstenite's; its error type is theirs.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/ws" {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("pgsat speaks WebSocket on /ws".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    match tokio::time::timeout(ctx.config.auth.auth_timeout, handshake).await {
        Ok(Ok(ws)) => Some(transport::ws(ws)),
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "WebSocket handshake timed out");
            None
        }
    }
}
