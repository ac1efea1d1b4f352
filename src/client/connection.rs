//! One connection to a pgsat server, TCP or WebSocket (each optionally in
//! TLS: `tls://`, `wss://`), behind one interface:
//! send a [`ClientMessage`], receive a [`ServerMessage`].
//!
//! Invariant: nothing else in the client touches bytes on the wire; a TCP
//! frame and a WebSocket message carry the same type byte + body, checked
//! against the same size limit before anything is allocated for them.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Framed;

use super::config::BoxFuture;
use super::error::ClientError;
use crate::protocol::{
    ws_payload, ClientMessage, Frame, FrameDecoder, ProtocolError, ServerMessage,
};

/// Any byte stream a connection can run over (a socket, or an in-memory
/// pipe in tests).
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// Opens connections; the client calls it at start and at every reconnect.
pub trait Connector: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ClientError>>;
}

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://host:port`, or `tls://host:port` (`tls`: the frames inside TLS)
    Tcp { host: String, port: u16, tls: bool },
    /// `ws://host:port/path`, or `wss://host:port/path`
    Ws {
        host: String,
        port: u16,
        url: String,
        tls: bool,
    },
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let host = u
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match u.scheme() {
            scheme @ ("tcp" | "tls") => {
                let port = u
                    .port()
                    .ok_or_else(|| bad(&format!("{scheme}:// needs a port")))?;
                Ok(Endpoint::Tcp {
                    host,
                    port,
                    tls: scheme == "tls",
                })
            }
            scheme @ ("ws" | "wss") => {
                let port =
                    u.port_or_known_default()
                        .unwrap_or(if scheme == "wss" { 443 } else { 80 });
                Ok(Endpoint::Ws {
                    host,
                    port,
                    url: url.to_owned(),
                    tls: scheme == "wss",
                })
            }
            other => Err(bad(&format!(
                "scheme {other:?} is not supported; use tcp://host:port, tls://host:port, \
                 ws://host:port/ws or wss://host:port/ws"
            ))),
        }
    }

    fn host_port_tls(&self) -> (&str, u16, bool) {
        match self {
            Endpoint::Tcp { host, port, tls }
            | Endpoint::Ws {
                host, port, tls, ..
            } => (host, *port, *tls),
        }
    }
}

/// Connects to the URL of a [`ClientConfig`](super::ClientConfig).
pub struct UrlConnector {
    pub endpoint: Endpoint,
    pub max_frame: u32,
    /// For `tls://` and `wss://` (see [`UrlConnector::new`]).
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl UrlConnector {
    /// A connector for `url`; for `tls://` and `wss://` trusting the roots
    /// of `ca_file`, else the system's.
    pub fn new(
        url: &str,
        max_frame: u32,
        ca_file: Option<&std::path::Path>,
    ) -> Result<UrlConnector, ClientError> {
        let endpoint = Endpoint::parse(url)?;
        let tls = if endpoint.host_port_tls().2 {
            Some(super::tls::connector(ca_file)?)
        } else {
            None
        };
        Ok(UrlConnector {
            endpoint,
            max_frame,
            tls,
        })
    }
}

impl Connector for UrlConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ClientError>> {
        Box::pin(async move {
            let (host, port, tls) = self.endpoint.host_port_tls();
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            match (&self.tls, tls) {
                (Some(connector), true) => {
                    let stream = super::tls::handshake(connector, host, stream).await?;
                    self.over(stream).await
                }
                (None, true) => Err(ClientError::Tls(
                    "a tls:// or wss:// URL needs a connector made by UrlConnector::new".into(),
                )),
                (_, false) => self.over(stream).await,
            }
        })
    }
}

impl UrlConnector {
    /// The endpoint's framing over a connected byte stream.
    async fn over(&self, io: impl Io + 'static) -> Result<Connection, ClientError> {
        match &self.endpoint {
            Endpoint::Tcp { .. } => Ok(Connection::tcp(io, self.max_frame)),
            Endpoint::Ws { url, .. } => Connection::ws(io, url, self.max_frame).await,
        }
    }
}

enum Transport {
    Tcp(Framed<Box<dyn Io>, FrameDecoder>),
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

/// A live connection.
pub struct Connection {
    transport: Transport,
    max_frame: u32,
}

impl Connection {
    /// Length-prefixed frames over a byte stream.
    pub fn tcp(io: impl Io + 'static, max_frame: u32) -> Connection {
        let io: Box<dyn Io> = Box::new(io);
        Connection {
            transport: Transport::Tcp(Framed::new(io, FrameDecoder::new(max_frame))),
            max_frame,
        }
    }

    /// WebSocket client handshake for `url` over a byte stream, then binary
    /// messages.
    pub async fn ws(
        io: impl Io + 'static,
        url: &str,
        max_frame: u32,
    ) -> Result<Connection, ClientError> {
        let io: Box<dyn Io> = Box::new(io);
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(max_frame as usize))
            .max_frame_size(Some(max_frame as usize));
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, io, Some(cfg))
            .await
            .map_err(|e| ClientError::Transport(format!("WebSocket handshake: {e}")))?;
        Ok(Connection {
            transport: Transport::Ws(Box::new(ws)),
            max_frame,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.send_frame(msg.to_frame()).await
    }

    /// Sends one complete TCP frame (WebSocket: without its prefix).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ClientError> {
        match &mut self.transport {
            Transport::Tcp(f) => f.send(frame).await.map_err(ClientError::from),
            Transport::Ws(ws) => ws
                .send(WsMessage::Binary(ws_payload(&frame)))
                .await
                .map_err(|e| ClientError::Transport(e.to_string())),
        }
    }

    /// The next frame; `Ok(None)` when the server closed the connection
    /// cleanly between frames. Cancel-safe.
    pub async fn recv_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        match &mut self.transport {
            Transport::Tcp(f) => match f.next().await {
                Some(Ok(frame)) => Ok(Some(frame)),
                Some(Err(e)) => Err(e.into()),
                None => Ok(None),
            },
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                    Some(Ok(WsMessage::Binary(b))) => {
                        return Ok(Some(Frame::from_ws(b, self.max_frame)?))
                    }
                    Some(Ok(WsMessage::Text(_))) => return Err(ProtocolError::TextMessage.into()),
                    Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Ok(_)) => continue, // ping/pong: handled by tungstenite
                }
            },
        }
    }

    /// The next server message; `Ok(None)` when the server closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        match self.recv_frame().await? {
            Some(f) => Ok(Some(ServerMessage::decode(f.ty, f.body)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:5133").unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 5133,
                tls: false,
            }
        );
        assert_eq!(
            Endpoint::parse("tls://db.example:5133").unwrap(),
            Endpoint::Tcp {
                host: "db.example".into(),
                port: 5133,
                tls: true,
            }
        );
        assert_eq!(
            Endpoint::parse("ws://localhost:5134/ws").unwrap(),
            Endpoint::Ws {
                host: "localhost".into(),
                port: 5134,
                url: "ws://localhost:5134/ws".into(),
                tls: false,
            }
        );
        assert_eq!(
            Endpoint::parse("wss://sync.example/ws").unwrap(),
            Endpoint::Ws {
                host: "sync.example".into(),
                port: 443,
                url: "wss://sync.example/ws".into(),
                tls: true,
            }
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:1").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 1,
                tls: false,
            }
        );
        for bad in ["tcp://host", "tls://host", "http://h:1", "nonsense", ""] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(e, ClientError::InvalidUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_ca_file_is_a_tls_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        for ca in [&missing, &junk] {
            let e = UrlConnector::new("tls://h:1", 1024, Some(ca))
                .err()
                .unwrap();
            assert!(matches!(e, ClientError::Tls(_)), "{}: {e}", ca.display());
            assert!(!e.is_retryable());
        }
        // Plain URLs never read the CA file.
        assert!(UrlConnector::new("tcp://h:1", 1024, Some(&missing)).is_ok());
    }
}
