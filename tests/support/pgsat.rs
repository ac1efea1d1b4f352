//! The real `pgsat` binary as a subprocess (so tests can SIGKILL and SIGTERM
//! it), and a raw protocol client written from protocol.md alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgsat::protocol::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PgServer;

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A running pgsat process.
pub struct Pgsat {
    child: Option<Child>,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    log_path: PathBuf,
}

impl Pgsat {
    /// Starts pgsat against `pg` in insecure auth mode (tests mint unsigned
    /// tokens) with `extra` environment on top, and waits for /readyz.
    pub fn start(pg: &PgServer, data_dir: &Path, extra: &[(&str, &str)]) -> Pgsat {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), pg.url()),
            ("AUTH_MODE".into(), "insecure".into()),
            ("DATA_DIR".into(), data_dir.display().to_string()),
            ("LOG_LEVEL".into(), "info".into()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut p = Pgsat {
            child: None,
            tcp: free_addr(),
            ws: free_addr(),
            http: free_addr(),
            data_dir: data_dir.to_path_buf(),
            env,
            log_path: data_dir.join("pgsat-test.log"),
        };
        // A port picked free can be taken (by any process's outgoing
        // connection) before pgsat binds it: pick others and start again.
        for _ in 0..5 {
            p.spawn();
            match p.try_wait_ready(Duration::from_secs(60)) {
                Ok(()) => return p,
                Err(out) if out.contains("Address already in use") => {
                    p.kill();
                    let _ = std::fs::remove_file(&p.log_path);
                    p.tcp = free_addr();
                    p.ws = free_addr();
                    p.http = free_addr();
                }
                Err(out) => panic!("{out}"),
            }
        }
        panic!("pgsat could not bind free ports:\n{}", p.output());
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        // PGSAT_BIN: another build of pgsat (benches compare two builds).
        let bin =
            std::env::var_os("PGSAT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pgsat").into());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", self.tcp.to_string())
            .env("WS_LISTEN_ADDR", self.ws.to_string())
            .env("HTTP_LISTEN_ADDR", self.http.to_string())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn pgsat"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The process's output so far (for assertion messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn wait_ready(&mut self, within: Duration) {
        if let Err(e) = self.try_wait_ready(within) {
            panic!("{e}");
        }
    }

    /// Waits for `/readyz`; `Err` (with the process output) when it exited
    /// or was not ready in time.
    fn try_wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "pgsat exited during start-up ({status}):\n{}",
                        self.output()
                    ));
                }
            }
            if matches!(http_get(self.http, "/readyz"), Some((200, _))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pgsat not ready within {within:?}:\n{}",
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (deadline) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("pgsat did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again with the same ports, data dir and environment.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready(Duration::from_secs(60));
    }

    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of one series of `/metrics`, written as Prometheus prints
    /// it (`name` or `name{label="v",…}`); panics when it is not there.
    #[allow(dead_code)]
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        pgsat::metrics::exposition::parse(&text)
            .expect("/metrics parses")
            .into_iter()
            .find(|s| {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let full = if labels.is_empty() {
                    s.name.clone()
                } else {
                    format!("{}{{{}}}", s.name, labels.join(","))
                };
                full == series
            })
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }
}

impl Drop for Pgsat {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh Postgres with `schema` applied, and pgsat (insecure auth) on it
/// with `extra` environment: how most tests start.
#[allow(dead_code)]
pub async fn start_with_schema(
    schema: &str,
    extra: &[(&str, &str)],
) -> (PgServer, tempfile::TempDir, Pgsat) {
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(schema)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&pg, dir.path(), extra);
    (pg, dir, p)
}

/// Minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// An unsigned (alg none) JWT for insecure mode.
pub fn insecure_token(user_id: &str, ttl_secs: i64) -> String {
    insecure_token_with(user_id, ttl_secs, serde_json::Value::Null)
}

/// As [`insecure_token`], with the claims of the `extra` object added.
pub fn insecure_token_with(user_id: &str, ttl_secs: i64, extra: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut claims = serde_json::json!({"user_id": user_id, "iat": now, "exp": now + ttl_secs});
    if let (Some(c), serde_json::Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64.encode(claims.to_string()))
}

/// A frame as the contract defines it: type byte + protobuf body.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub ty: u8,
    pub body: Bytes,
}

impl RawFrame {
    pub fn error(&self) -> Option<pb::ErrorResp> {
        (self.ty == 0).then(|| pb::ErrorResp::decode(self.body.clone()).expect("ErrorResp"))
    }

    /// The frame decoded by its type byte (protocol.md's table); a body
    /// that does not decode fails the test.
    #[allow(dead_code)]
    pub fn decoded(&self) -> Decoded {
        let body = self.body.clone();
        match self.ty {
            0 => Decoded::Error(pb::ErrorResp::decode(body).expect("ErrorResp")),
            9 => Decoded::Relation(pb::Relation::decode(body).expect("Relation")),
            10 => Decoded::OpLog,
            12 => Decoded::SnapshotRows(pb::SnapshotRows::decode(body).expect("SnapshotRows")),
            13 => Decoded::SnapshotEnd(pb::SnapshotEnd::decode(body).expect("SnapshotEnd")),
            ty => Decoded::Other(ty),
        }
    }
}

/// A server frame by type, as the snapshot readers of the tests take it.
#[allow(dead_code)]
pub enum Decoded {
    Error(pb::ErrorResp),
    Relation(pb::Relation),
    /// Left to a [`TxnReader`], which reassembles transactions across frames.
    OpLog,
    SnapshotRows(pb::SnapshotRows),
    SnapshotEnd(pb::SnapshotEnd),
    Other(u8),
}

/// A raw protocol client, written from the contract rather than from the
/// server's codec: length-prefixed frames over TCP, or one binary message
/// per frame over WebSocket ([`RawClient::connect_ws`]).
pub struct RawClient {
    conn: Conn,
    buf: BytesMut,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The transport under a [`RawClient`]: the same frames, TCP-framed or one
/// per binary WebSocket message.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Ws(Box<WsStream>),
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        Self::try_connect(addr).await.expect("connect")
    }

    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true).ok();
        Ok(RawClient {
            conn: Conn::Tcp(stream),
            buf: BytesMut::new(),
        })
    }

    /// A client of the WebSocket listener (`ws://addr/ws`): every method
    /// works as over TCP (`send_bytes` sends the bytes as one message).
    #[allow(dead_code)]
    pub async fn connect_ws(addr: SocketAddr) -> RawClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("WebSocket connect");
        RawClient {
            conn: Conn::Ws(Box::new(ws)),
            buf: BytesMut::new(),
        }
    }

    /// A client with a tiny socket receive buffer: one that stops reading
    /// blocks the server's writes early, whatever the kernel's autotuning.
    pub async fn connect_small_buffer(addr: SocketAddr) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        RawClient {
            conn: Conn::Tcp(stream),
            buf: BytesMut::new(),
        }
    }

    /// This end's address (the `peer` the server sees).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Tcp(s) => s.local_addr(),
            Conn::Ws(ws) => match ws.get_ref() {
                tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr(),
                _ => unreachable!("ws:// only"),
            },
        }
        .expect("local addr")
    }

    pub async fn send(&mut self, ty: u8, msg: &impl Message) {
        let body = msg.encode_to_vec();
        self.send_raw(ty, &body).await;
    }

    pub async fn send_raw(&mut self, ty: u8, body: &[u8]) {
        let mut out = BytesMut::with_capacity(5 + body.len());
        if matches!(self.conn, Conn::Tcp(_)) {
            out.put_u32(1 + body.len() as u32);
        }
        out.put_u8(ty);
        out.put_slice(body);
        match &mut self.conn {
            Conn::Tcp(stream) => stream.write_all(&out).await.expect("write"),
            Conn::Ws(ws) => {
                use futures::SinkExt;
                let msg = tokio_tungstenite::tungstenite::Message::Binary(out.freeze());
                ws.send(msg).await.expect("WebSocket send");
            }
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Tcp(stream) => {
                let _ = stream.write_all(bytes).await;
            }
            Conn::Ws(ws) => {
                use futures::SinkExt;
                let msg =
                    tokio_tungstenite::tungstenite::Message::Binary(Bytes::copy_from_slice(bytes));
                let _ = ws.send(msg).await;
            }
        }
    }

    /// Next frame, or None when the server closed the connection.
    pub async fn recv_timeout(&mut self, within: Duration) -> Option<RawFrame> {
        tokio::time::timeout(within, self.recv())
            .await
            .expect("no frame in time")
    }

    pub async fn recv(&mut self) -> Option<RawFrame> {
        let stream = match &mut self.conn {
            Conn::Tcp(stream) => stream,
            Conn::Ws(ws) => return ws_recv(ws).await,
        };
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                assert!(len >= 1, "server sent a zero-length frame");
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let mut frame = self.buf.split_to(len).freeze();
                    let ty = frame.get_u8();
                    return Some(RawFrame { ty, body: frame });
                }
            }
            // Room for whole frames: an empty BytesMut reads 64 bytes at a
            // time (a syscall, and a reallocation, each).
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            let n = stream.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// True when the server closes the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// AuthReq → expects AuthResp.
    pub async fn auth(&mut self, token: &str) -> pb::AuthResp {
        self.send(
            1,
            &pb::AuthReq {
                id: "a1".into(),
                token: token.into(),
            },
        )
        .await;
        let f = self
            .recv_timeout(Duration::from_secs(10))
            .await
            .expect("auth answer");
        assert_eq!(f.ty, 2, "expected AuthResp, got {:?}", f.error());
        pb::AuthResp::decode(f.body).expect("AuthResp")
    }

    /// Reads frames until `n` whole transactions arrived; every frame must be
    /// a Relation or an OpLog, each within 10 s.
    pub async fn read_txns(&mut self, r: &mut TxnReader, n: usize) -> Vec<Txn> {
        self.read_txns_within(r, n, Duration::from_secs(10)).await
    }

    /// As [`RawClient::read_txns`], each frame within `within`.
    pub async fn read_txns_within(
        &mut self,
        r: &mut TxnReader,
        n: usize,
        within: Duration,
    ) -> Vec<Txn> {
        let mut out = Vec::new();
        while out.len() < n {
            let f = self.recv_timeout(within).await.expect("stream frame");
            assert!(
                f.ty == 9 || f.ty == 10,
                "unexpected frame {} {:?}",
                f.ty,
                f.error()
            );
            out.extend(r.feed(&f));
        }
        out
    }

    /// Sends `req` and returns the StartReplicationResp, or the ErrorResp
    /// the server answered with.
    #[allow(dead_code)]
    pub async fn start_req(
        &mut self,
        req: pb::StartReplicationReq,
    ) -> Result<pb::StartReplicationResp, pb::ErrorResp> {
        self.start_req_within(req, Duration::from_secs(15)).await
    }

    async fn start_req_within(
        &mut self,
        req: pb::StartReplicationReq,
        within: Duration,
    ) -> Result<pb::StartReplicationResp, pb::ErrorResp> {
        self.send(3, &req).await;
        let f = self.recv_timeout(within).await.expect("start answer");
        match f.error() {
            Some(e) => Err(e),
            None => {
                assert_eq!(f.ty, 4, "expected StartReplicationResp");
                Ok(pb::StartReplicationResp::decode(f.body).expect("StartReplicationResp"))
            }
        }
    }

    pub async fn start(&mut self, lsn: u64) -> pb::StartReplicationResp {
        let req = pb::StartReplicationReq {
            lsn,
            ..Default::default()
        };
        match self.start_req_within(req, Duration::from_secs(10)).await {
            Ok(resp) => resp,
            Err(e) => panic!("expected StartReplicationResp, got {e:?}"),
        }
    }
}

/// The next binary message as a frame (type byte + body); None once the
/// server closed. Anything but a binary message from the server is a
/// protocol violation.
async fn ws_recv(ws: &mut WsStream) -> Option<RawFrame> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await? {
            Ok(Message::Binary(mut b)) => {
                assert!(!b.is_empty(), "server sent an empty WebSocket message");
                let ty = b.get_u8();
                return Some(RawFrame { ty, body: b });
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(other) => panic!("server sent a non-binary WebSocket message: {other:?}"),
        }
    }
}

/// A transaction as a client reassembles it from OpLog frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    pub xid: u32,
    pub lsn: u64,
    pub ops: Vec<pb::trans_op::Op>,
}

/// Reassembles transactions from a frame stream; Relations are collected.
#[derive(Default)]
pub struct TxnReader {
    pub relations: std::collections::HashMap<u32, pb::Relation>,
    pub relation_frames: usize,
    current: Option<Txn>,
}

impl TxnReader {
    /// Feeds one frame; returns the transactions it completed. Panics on a
    /// protocol violation (an op outside Begin…Commit, an unknown relation).
    pub fn feed(&mut self, f: &RawFrame) -> Vec<Txn> {
        let mut done = Vec::new();
        match f.ty {
            9 => {
                let r = pb::Relation::decode(f.body.clone()).expect("Relation");
                self.relation_frames += 1;
                self.relations.insert(r.relation_id, r);
            }
            10 => {
                let log = pb::OpLog::decode(f.body.clone()).expect("OpLog");
                for op in log.ops {
                    let op = op.op.expect("TransOp.op set");
                    match op {
                        pb::trans_op::Op::Begin(b) => {
                            assert!(self.current.is_none(), "Begin inside a transaction");
                            self.current = Some(Txn {
                                xid: b.xid,
                                lsn: b.commit_lsn,
                                ops: Vec::new(),
                            });
                        }
                        pb::trans_op::Op::Commit(c) => {
                            let mut t = self.current.take().expect("Commit without Begin");
                            assert_eq!(t.lsn, c.lsn, "Begin.commit_lsn = Commit.lsn");
                            t.lsn = c.lsn;
                            done.push(t);
                        }
                        other => {
                            let rel = match &other {
                                pb::trans_op::Op::Insert(i) => Some(i.relation_id),
                                pb::trans_op::Op::Update(u) => Some(u.relation_id),
                                pb::trans_op::Op::Delete(d) => Some(d.relation_id),
                                _ => None,
                            };
                            if let Some(rel) = rel {
                                assert!(
                                    self.relations.contains_key(&rel),
                                    "op on relation {rel} before its Relation"
                                );
                            }
                            self.current
                                .as_mut()
                                .expect("op outside a transaction")
                                .ops
                                .push(other);
                        }
                    }
                }
            }
            _ => {}
        }
        done
    }

    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }
}

/// Text value of column `i` of a row (None = NULL).
pub fn cell(row: &pb::Row, i: usize) -> Option<String> {
    let null = row
        .nulls
        .get(i / 8)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
    if null {
        None
    } else {
        Some(String::from_utf8(row.values[i].to_vec()).expect("utf8"))
    }
}

/// Runs `pgsat serve` (insecure auth, ports picked by the OS) with `env`
/// on top until it exits on its own: its exit code and stderr.
#[allow(dead_code)]
pub fn run_to_exit(pg: &PgServer, data: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsat"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", pg.url())
        .env("AUTH_MODE", "insecure")
        .env("DATA_DIR", data.display().to_string())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("WS_LISTEN_ADDR", "127.0.0.1:0")
        .env("HTTP_LISTEN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgsat did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
