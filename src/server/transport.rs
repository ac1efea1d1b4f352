//! One client connection's bytes, TCP or WebSocket, behind one interface.
//!
//! Invariant: frames go out whole and in order. The session never awaits a
//! socket write inside its logic: it pushes whole frames onto an
//! [`OutQueue`] and drains it from a cancel-safe `select!` branch, so a client
//! that stops reading stalls only its own queue, never the session's reading
//! of client frames, its timers, or anyone else.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::FramedRead;

use crate::protocol::frame::{Frame, FrameDecoder, FrameError};
use crate::protocol::pb::ErrorCode;

/// Initial read buffer of a TCP session: small, so idle sessions stay cheap;
/// it grows to the frame being read (bounded by `MAX_FRAME_BYTES`).
const TCP_READ_BUFFER: usize = 256;

/// Whole frames waiting to be written, each a complete TCP frame
/// (`u32` length + type + body). WebSocket sends each minus its prefix.
#[derive(Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes not yet handed to the socket.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Puts bytes before everything queued: the tail of a transaction the
    /// direct lane began to write. Only while nothing of the queue's front
    /// frame has been written (the lane writes only to an empty queue).
    pub fn push_front(&mut self, bytes: Bytes) {
        self.bytes += bytes.len();
        self.frames.push_front(bytes);
    }
}

/// What reading the client produced.
pub enum Incoming {
    Frame(Frame),
    /// A frame that breaks the framing rules: answer with this error, close.
    Invalid {
        code: ErrorCode,
        message: String,
    },
    /// The client closed the connection (or it broke).
    Closed,
}

/// TLS over a client's TCP connection (`TLS_CERT_FILE`, see `server::tls`).
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A client connection's bytes: TCP, or TLS over it.
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// The reading half of a TCP-listener connection.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream>>),
}

/// The writing half of a TCP-listener connection.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream>>),
}

/// The same call on whichever stream a value holds.
macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::Tls($s) => $e,
        }
    };
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                either!(self, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

delegate_read!(ClientIo);
delegate_read!(ReadHalf);

macro_rules! delegate_write {
    () => {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            either!(self, s => Pin::new(s).poll_write(cx, buf))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            either!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
        }

        fn is_write_vectored(&self) -> bool {
            match self {
                Self::Plain(s) => s.is_write_vectored(),
                Self::Tls(s) => s.is_write_vectored(),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            either!(self, s => Pin::new(s).poll_flush(cx))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            either!(self, s => Pin::new(s).poll_shutdown(cx))
        }
    };
}

impl AsyncWrite for ClientIo {
    delegate_write!();
}

impl AsyncWrite for WriteHalf {
    delegate_write!();
}

pub enum Reader {
    Tcp(FramedRead<ReadHalf, FrameDecoder>),
    Ws(SplitStream<WebSocketStream<ClientIo>>),
}

pub enum Writer {
    Tcp {
        half: WriteHalf,
        /// Part of the front frame already written.
        written: usize,
        /// Bytes handed to TLS and not yet on the socket: the queue can be
        /// empty while they wait (never set on a plain connection, whose
        /// flush is immediate).
        unflushed: bool,
    },
    Ws {
        sink: SplitSink<WebSocketStream<ClientIo>, Message>,
        /// Messages handed to the sink and not yet flushed to the socket:
        /// the queue can be empty while the last of them still wait.
        unflushed: bool,
    },
}

pub fn tcp(stream: ClientIo, max_frame: u32) -> (Reader, Writer) {
    let (r, w) = match stream {
        ClientIo::Plain(s) => {
            let (r, w) = s.into_split();
            (ReadHalf::Plain(r), WriteHalf::Plain(w))
        }
        ClientIo::Tls(s) => {
            let (r, w) = tokio::io::split(s);
            (ReadHalf::Tls(r), WriteHalf::Tls(w))
        }
    };
    let reader = FramedRead::with_capacity(r, FrameDecoder::new(max_frame), TCP_READ_BUFFER);
    (
        Reader::Tcp(reader),
        Writer::Tcp {
            half: w,
            written: 0,
            unflushed: false,
        },
    )
}

pub fn ws(stream: WebSocketStream<ClientIo>) -> (Reader, Writer) {
    let (sink, stream) = stream.split();
    (
        Reader::Ws(stream),
        Writer::Ws {
            sink,
            unflushed: false,
        },
    )
}

impl Reader {
    /// Next client frame. Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        match self {
            Reader::Tcp(framed) => match framed.next().await {
                Some(Ok(frame)) => Incoming::Frame(frame),
                Some(Err(FrameError::Io(_))) | None => Incoming::Closed,
                Some(Err(e @ FrameError::TooLarge { .. })) => Incoming::Invalid {
                    code: ErrorCode::FrameTooLarge,
                    message: e.to_string(),
                },
                Some(Err(e)) => Incoming::Invalid {
                    code: ErrorCode::InvalidRequest,
                    message: e.to_string(),
                },
            },
            Reader::Ws(stream) => loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            return Incoming::Invalid {
                                code: ErrorCode::InvalidRequest,
                                message: "empty WebSocket message: a frame needs a type byte"
                                    .into(),
                            };
                        }
                        let ty = data[0];
                        return Incoming::Frame(Frame {
                            ty,
                            body: data.slice(1..),
                        });
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Incoming::Invalid {
                            code: ErrorCode::InvalidRequest,
                            message: "text WebSocket messages are not part of the protocol; \
                                      send binary"
                                .into(),
                        }
                    }
                    // Control frames are answered by tungstenite itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return Incoming::Closed,
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        return Incoming::Invalid {
                            code: ErrorCode::FrameTooLarge,
                            message: format!("WebSocket message too large: {e}"),
                        }
                    }
                    Some(Err(_)) => return Incoming::Closed,
                }
            },
        }
    }
}

impl Writer {
    /// Whether anything waits to be written or flushed: `drain` has work.
    pub fn has_pending(&self, queue: &OutQueue) -> bool {
        !queue.is_empty()
            || matches!(
                self,
                Writer::Ws {
                    unflushed: true,
                    ..
                } | Writer::Tcp {
                    unflushed: true,
                    ..
                }
            )
    }

    /// Whether this is a plain TCP connection (no TLS, no WebSocket): the
    /// only kind the direct lane writes to.
    pub fn is_plain_tcp(&self) -> bool {
        matches!(
            self,
            Writer::Tcp {
                half: WriteHalf::Plain(_),
                ..
            }
        )
    }

    /// A duplicate of the socket's descriptor for the direct lane (see
    /// direct.rs): plain TCP only — TLS and WebSocket frame their bytes in
    /// their own state. `None` also when the descriptor cannot be duplicated
    /// (out of descriptors): the session then serves itself.
    pub fn direct_socket(&self) -> Option<std::net::TcpStream> {
        use std::os::fd::AsFd;
        let Writer::Tcp {
            half: WriteHalf::Plain(half),
            ..
        } = self
        else {
            return None;
        };
        let fd = half.as_ref().as_fd().try_clone_to_owned().ok()?;
        Some(std::net::TcpStream::from(fd))
    }

    /// Writes queued frames until the queue is empty and flushed. Cancel-safe:
    /// progress is kept in `queue` and `self`, so dropping the future loses
    /// nothing.
    pub async fn drain(&mut self, queue: &mut OutQueue) -> io::Result<()> {
        poll_fn(|cx| self.poll_drain(cx, queue)).await
    }

    /// Writes what the socket takes now, without waiting: saves a turn of
    /// the session loop when the socket has room (the usual case). Errors
    /// are left for `drain`, which meets them again.
    pub fn try_drain(&mut self, queue: &mut OutQueue) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_drain(&mut cx, queue);
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>, queue: &mut OutQueue) -> Poll<io::Result<()>> {
        match self {
            Writer::Tcp {
                half,
                written,
                unflushed,
            } => {
                while !queue.frames.is_empty() {
                    // Gather several queued frames into one syscall.
                    let mut slices = [io::IoSlice::new(&[]); 16];
                    let mut n = 0;
                    for (i, f) in queue.frames.iter().take(slices.len()).enumerate() {
                        let part = if i == 0 { &f[*written..] } else { &f[..] };
                        slices[i] = io::IoSlice::new(part);
                        n += 1;
                    }
                    let wrote = ready!(Pin::new(&mut *half).poll_write_vectored(cx, &slices[..n]))?;
                    if wrote == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    queue.bytes -= wrote;
                    *unflushed = true;
                    let mut left = wrote;
                    while left > 0 {
                        let Some(f) = queue.frames.front() else { break };
                        let rest = f.len() - *written;
                        if left >= rest {
                            left -= rest;
                            *written = 0;
                            queue.frames.pop_front();
                        } else {
                            *written += left;
                            left = 0;
                        }
                    }
                }
                ready!(Pin::new(&mut *half).poll_flush(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
            Writer::Ws { sink, unflushed } => {
                while !queue.frames.is_empty() {
                    ready!(Pin::new(&mut *sink).poll_ready(cx)).map_err(ws_io)?;
                    let Some(mut frame) = queue.frames.pop_front() else {
                        break;
                    };
                    queue.bytes -= frame.len();
                    frame.advance(4);
                    Pin::new(&mut *sink)
                        .start_send(Message::Binary(frame))
                        .map_err(ws_io)?;
                    *unflushed = true;
                }
                ready!(Pin::new(&mut *sink).poll_flush(cx)).map_err(ws_io)?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Ends the connection politely (TCP FIN / WebSocket close frame).
    pub async fn close(&mut self) {
        match self {
            Writer::Tcp { half, .. } => {
                let _ = tokio::io::AsyncWriteExt::shutdown(half).await;
            }
            Writer::Ws { sink, .. } => {
                let _ = futures::SinkExt::close(sink).await;
            }
        }
    }
}

fn ws_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    /// A WebSocket pair over loopback TCP: our writer on the server side.
    async fn ws_pair() -> (
        Writer,
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(None)
                .max_frame_size(None);
            tokio_tungstenite::connect_async_with_config(
                format!("ws://{addr}/ws"),
                Some(config),
                false,
            )
            .await
            .unwrap()
            .0
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = tokio_tungstenite::accept_async(ClientIo::Plain(tcp))
            .await
            .unwrap();
        let (_, writer) = ws(server);
        (writer, client.await.unwrap())
    }

    /// When the last message went to the sink but the socket was full, the
    /// queue is empty and the writer still has work: the session keeps
    /// draining on `has_pending`, or the message's end would wait for the
    /// next one.
    #[tokio::test]
    async fn ws_writer_reports_an_unfinished_flush_with_an_empty_queue() {
        let (mut w, mut client) = ws_pair().await;
        let mut q = OutQueue::default();
        assert!(!w.has_pending(&q));
        // Far more than the socket buffers hold while the peer does not read.
        let body = vec![7u8; 32 << 20];
        q.push(raw_frame(b"small"));
        q.push(raw_frame(&body));
        w.try_drain(&mut q);
        assert!(q.is_empty(), "both messages were handed to the sink");
        assert!(w.has_pending(&q), "the flush is not done: work remains");
        let reader = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while sizes.len() < 2 {
                match client.next().await {
                    Some(Ok(Message::Binary(b))) => sizes.push(b.len()),
                    other => panic!("{other:?}"),
                }
            }
            sizes
        });
        tokio::time::timeout(Duration::from_secs(30), w.drain(&mut q))
            .await
            .expect("drained")
            .expect("no error");
        assert!(!w.has_pending(&q));
        let sizes = reader.await.unwrap();
        assert_eq!(sizes[1], 1 + body.len());
    }

    /// A raw frame (`u32` length, type byte, body): an OpLog of `body`.
    fn raw_frame(body: &[u8]) -> Bytes {
        let mut b = Vec::with_capacity(5 + body.len());
        b.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        b.push(crate::protocol::MsgType::OpLog as u8);
        b.extend_from_slice(body);
        Bytes::from(b)
    }
}
