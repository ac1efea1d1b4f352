//! The replication connection to Postgres: connection parameters, startup,
//! authentication and simple queries, on `postgres-protocol`.
//!
//! Invariant: every byte read from the server is framed by a length that is
//! checked before anything is allocated for it (at most [`MAX_MESSAGE_LEN`]),
//! every server message is parsed with bounds checks (a malformed one is a
//! [`PgError::Protocol`], never a panic), and the password never appears in
//! any `Debug`/`Display` output.
//!
//! TLS as libpq's `sslmode`/`sslrootcert` say (see [`super::tls`]; SCRAM
//! channel binding, `SCRAM-SHA-256-PLUS`, is not offered). Authentication
//! by trust, cleartext password, MD5 and SCRAM-SHA-256.
//!
//! The session is pinned to `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=postgres`, `extra_float_digits=3` and
//! `client_encoding=UTF8` in the startup packet, so the text form of values
//! sent by `pgoutput` is stable whatever the server's defaults.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pg::lsn::Lsn;
use crate::pg::tls::{self, ClientCert, Negotiated, RootCert, SslMode, TlsSettings};

/// Largest message accepted from the server (1 GiB, Postgres' own limit for
/// a single field). A longer length prefix is a protocol error.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Errors of the replication connection. [`PgError::is_transient`] tells a
/// caller whether reconnecting later may succeed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Bad connection parameters (URL); never transient.
    #[error("invalid database URL: {0}")]
    Config(String),
    /// Could not reach the server (DNS, refused, timeout while connecting).
    #[error("cannot connect to Postgres at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading from / writing to an established connection failed.
    #[error("Postgres connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Authentication failed or needs a method pgsat does not support.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("Postgres error {code}: {message}{}{}", .detail.as_deref().map(|d| format!(" (detail: {d})")).unwrap_or_default(), .hint.as_deref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Server {
        /// SQLSTATE, e.g. `42710`.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// The server sent something that does not follow the protocol.
    #[error("Postgres protocol error: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("Postgres closed the connection")]
    Closed,
    /// A configuration or state problem found by pgsat's own checks
    /// (wal_level, rights, slot state); the message says how to fix it.
    #[error("{0}")]
    Setup(String),
    /// TLS could not be set up as `sslmode` asks: the server refuses TLS,
    /// or its certificate fails the check. Not transient.
    #[error("Postgres TLS: {0}")]
    Tls(String),
}

impl PgError {
    /// Whether retrying (reconnecting after a backoff) may succeed: network
    /// trouble, a server shutting down or starting, too many connections, a
    /// slot still held by a previous walsender that has not exited yet.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. } | PgError::Io(_) | PgError::Closed => true,
            PgError::Server { code, .. } => {
                code.starts_with("08") // connection exception
                    || code.starts_with("53") // insufficient resources
                    || code.starts_with("57P") // admin/crash shutdown, cannot connect now
                    || code == "55006" // object_in_use: slot active in another (exiting) walsender
                    || code == "40001"
                    || code == "40P01"
            }
            PgError::Config(_)
            | PgError::Auth(_)
            | PgError::Protocol(_)
            | PgError::Setup(_)
            | PgError::Tls(_) => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> PgError {
        PgError::Protocol(msg.into())
    }
}

impl From<tokio_postgres::Error> for PgError {
    /// Server errors keep their SQLSTATE; a closed connection is `Closed`;
    /// anything else (I/O, timeouts) is treated as an I/O error (transient).
    fn from(e: tokio_postgres::Error) -> PgError {
        if let Some(db) = e.as_db_error() {
            return PgError::Server {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            };
        }
        if e.is_closed() {
            return PgError::Closed;
        }
        if let Some(cause) = tls::tls_cause(&e) {
            return PgError::Tls(format!("TLS handshake with the server failed: {cause}"));
        }
        // tokio-postgres' message names the step ("error connecting to
        // server"); the cause (refused, timed out) is in its sources.
        let msg = crate::error_text::one_line(&e);
        // tokio-postgres' TLS failures that carry no rustls error (the
        // server refusing TLS under sslmode=require) say so in the message.
        if msg.starts_with("error performing TLS handshake") {
            return PgError::Tls(msg);
        }
        PgError::Io(std::io::Error::other(msg))
    }
}

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// A directory holding the unix socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// Connection parameters, parsed from a `postgres://` URL.
///
/// Defaults: port 5432, user `postgres` (libpq would use the OS user name;
/// pgsat is configured by URL and picks the conventional superuser name),
/// database = the user name (as libpq), `application_name=pgsat`, connect
/// timeout 10 s. The password is kept out of `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub host: Host,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// `sslmode`, `sslrootcert`, `sslcert` + `sslkey`.
    pub tls: TlsSettings,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.target())
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_some() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("sslmode", &self.tls.mode.as_str())
            .field(
                "sslcert",
                &self.tls.client_cert.as_ref().map(|c| c.cert.display()),
            )
            .finish()
    }
}

impl fmt::Display for ConnParams {
    /// `postgres://user@host:port/db` — never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => {
                write!(
                    f,
                    "postgres://{}@[{}]:{}/{}",
                    self.user, h, self.port, self.dbname
                )
            }
            Host::Tcp(h) => write!(
                f,
                "postgres://{}@{}:{}/{}",
                self.user, h, self.port, self.dbname
            ),
            Host::Unix(p) => write!(
                f,
                "postgres://{}@/{}?host={}&port={}",
                self.user,
                self.dbname,
                p.display(),
                self.port
            ),
        }
    }
}

impl ConnParams {
    /// Parses `postgres://user:pass@host:port/db?param=value…` (also
    /// `postgresql://`). Userinfo and path are percent-decoded. Query
    /// parameters: `host` (a path starting with `/` selects a unix socket
    /// directory), `port`, `user`, `password`, `dbname`, `application_name`,
    /// `connect_timeout` (seconds), `sslmode` (libpq's six, default
    /// `prefer`), `sslrootcert` (a PEM file, or `system`), `sslcert` and
    /// `sslkey` (a client certificate and its key, both or neither). Any other
    /// parameter is an error, so a typo is not silently ignored.
    pub fn from_url(s: &str) -> Result<ConnParams, PgError> {
        let url = match url::Url::parse(s) {
            Ok(u) => u,
            // `postgres://user@/db?host=/socket/dir`: libpq accepts an empty
            // host; the url crate does not when there is a user. Parse with a
            // placeholder host and treat it as absent.
            Err(url::ParseError::EmptyHost) => {
                let fixed = s.replacen("@/", "@pgsat-empty-host/", 1);
                url::Url::parse(&fixed).map_err(|e| PgError::Config(format!("{e}")))?
            }
            Err(e) => return Err(PgError::Config(format!("{e}"))),
        };
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(PgError::Config(format!(
                "scheme must be postgres:// or postgresql://, not {}://",
                url.scheme()
            )));
        }
        let mut host = match url.host_str() {
            Some(h) if !h.is_empty() && h != "pgsat-empty-host" => {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                let h = percent_decode(h, "host")?;
                Some(if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h)
                })
            }
            _ => None,
        };
        let mut port = url.port();
        let mut user = if url.username().is_empty() {
            None
        } else {
            Some(percent_decode(url.username(), "user name")?)
        };
        let mut password = match url.password() {
            Some(p) => Some(percent_decode(p, "password")?),
            None => None,
        };
        let path = url.path().trim_start_matches('/');
        let mut dbname = if path.is_empty() {
            None
        } else {
            Some(percent_decode(path, "database name")?)
        };
        let mut application_name = "pgsat".to_string();
        let mut connect_timeout = Duration::from_secs(10);
        let mut tls = TlsSettings::default();
        let (mut sslcert, mut sslkey): (Option<PathBuf>, Option<PathBuf>) = (None, None);
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match &*k {
                "host" => {
                    host = Some(if v.starts_with('/') {
                        Host::Unix(PathBuf::from(v))
                    } else {
                        Host::Tcp(v)
                    })
                }
                "port" => {
                    port = Some(v.parse().map_err(|_| {
                        PgError::Config(format!("port {v:?} is not a number 1-65535"))
                    })?)
                }
                "user" => user = Some(v),
                "password" => password = Some(v),
                "dbname" => dbname = Some(v),
                "application_name" => application_name = v,
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| {
                        PgError::Config(format!("connect_timeout {v:?} is not a number of seconds"))
                    })?;
                    connect_timeout = Duration::from_secs(secs.max(1));
                }
                "sslmode" => tls.mode = SslMode::parse(&v)?,
                "sslrootcert" if v.is_empty() => {
                    return Err(PgError::Config("sslrootcert is empty".into()))
                }
                "sslrootcert" if v == "system" => tls.root_cert = Some(RootCert::System),
                "sslrootcert" => tls.root_cert = Some(RootCert::File(PathBuf::from(v))),
                "sslcert" | "sslkey" if v.is_empty() => {
                    return Err(PgError::Config(format!("{k} is empty")))
                }
                "sslcert" => sslcert = Some(PathBuf::from(v)),
                "sslkey" => sslkey = Some(PathBuf::from(v)),
                other => {
                    return Err(PgError::Config(format!(
                        "unknown URL parameter {other:?} (supported: host, port, user, password, \
                         dbname, application_name, connect_timeout, sslmode, sslrootcert, \
                         sslcert, sslkey)"
                    )))
                }
            }
        }
        tls.client_cert = match (sslcert, sslkey) {
            (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(PgError::Config(
                    "sslcert is set without sslkey (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(PgError::Config(
                    "sslkey is set without sslcert (the certificate it belongs to)".into(),
                ))
            }
        };
        let host = host.unwrap_or_else(|| Host::Tcp("localhost".into()));
        let port = port.unwrap_or(5432);
        if port == 0 {
            return Err(PgError::Config("port 0 is not valid".into()));
        }
        let user = user.unwrap_or_else(|| "postgres".into());
        let dbname = dbname.unwrap_or_else(|| user.clone());
        for (what, v) in [
            ("user", &user),
            ("dbname", &dbname),
            ("application_name", &application_name),
        ] {
            if v.contains('\0') {
                return Err(PgError::Config(format!("{what} contains a NUL byte")));
            }
        }
        if password.as_deref().is_some_and(|p| p.contains('\0')) {
            return Err(PgError::Config("password contains a NUL byte".into()));
        }
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            dbname,
            application_name,
            connect_timeout,
            tls,
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn set_password(&mut self, password: Option<String>) {
        self.password = password;
    }

    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(p) => format!("{}/.s.PGSQL.{}", p.display(), self.port),
        }
    }

    /// The same target for ordinary (non-replication) connections.
    pub fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, PgError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::Config(format!("bad percent-encoding in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgError::Config(format!("the {what} is not valid UTF-8")))
}

/// One backend message: its type byte and its body (without the length).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Reads length-framed backend messages. Cancel-safe: partial data stays in
/// `buf` between calls.
pub(crate) struct FrameReader {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
}

impl FrameReader {
    pub(crate) fn new(rd: Box<dyn AsyncRead + Send + Unpin>) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// A complete frame from the buffer, if there is one.
    fn try_frame(&mut self) -> Result<Option<Frame>, PgError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len < 4 {
            return Err(PgError::protocol(format!(
                "message {:?} with length {len} < 4",
                tag as char
            )));
        }
        if len > MAX_MESSAGE_LEN {
            return Err(PgError::protocol(format!(
                "message {:?} of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit",
                tag as char
            )));
        }
        if self.buf.len() < len + 1 {
            // Grow with the data actually arriving, not by the announced length.
            let missing = len + 1 - self.buf.len();
            self.buf.reserve(missing.min(1 << 20));
            return Ok(None);
        }
        let mut frame = self.buf.split_to(len + 1);
        frame.advance(5);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }

    /// The next frame. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(64 * 1024);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(PgError::Closed);
            }
        }
    }
}

/// Bounds-checked reader over a message body.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn short(&self) -> PgError {
        PgError::protocol(format!("{} message is truncated", self.what))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, PgError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, PgError> {
        Ok(self.u64()? as i64)
    }

    /// A NUL-terminated string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, PgError> {
        let end = self
            .buf
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| PgError::protocol(format!("{}: unterminated string", self.what)))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| PgError::protocol(format!("{}: string is not UTF-8", self.what)))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Parses an ErrorResponse (or NoticeResponse) body into `PgError::Server`.
pub(crate) fn parse_error_response(body: &[u8]) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    let mut rest = body;
    while let Some((&ty, tail)) = rest.split_first() {
        if ty == 0 {
            break;
        }
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match ty {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    if code.is_empty() {
        code = "XX000".into();
    }
    PgError::Server {
        code,
        message,
        detail,
        hint,
    }
}

/// Rows of a simple query, in text: `rows[i][j]` is column `j` of row `i`,
/// `None` for NULL.
pub type TextRows = Vec<Vec<Option<String>>>;

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (decimal text, as Postgres prints it).
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: u64,
    /// The database this connection is attached to (`replication=database`).
    pub dbname: Option<String>,
}

/// A connection opened with `replication=database`, ready for replication
/// commands. [`ReplicationConn::start_logical`] (in `replication.rs`) turns
/// it into a stream.
pub struct ReplicationConn {
    pub(crate) reader: FrameReader,
    pub(crate) writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub(crate) wbuf: BytesMut,
    server_params: HashMap<String, String>,
    backend_pid: Option<i32>,
}

impl fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl ReplicationConn {
    /// Connects (TCP with keepalive and TCP_NODELAY, or a unix socket),
    /// sends the startup packet and authenticates. The whole handshake is
    /// bounded by `params.connect_timeout`.
    pub async fn connect(params: &ConnParams) -> Result<ReplicationConn, PgError> {
        match tokio::time::timeout(params.connect_timeout, Self::connect_inner(params)).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Connect {
                target: params.target(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", params.connect_timeout),
                ),
            }),
        }
    }

    async fn connect_inner(params: &ConnParams) -> Result<ReplicationConn, PgError> {
        let connect_err = |source| PgError::Connect {
            target: params.target(),
            source,
        };
        let (rd, wr): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match &params.host {
            Host::Tcp(h) => {
                let addrs: Vec<_> = tokio::net::lookup_host((h.as_str(), params.port))
                    .await
                    .map_err(connect_err)?
                    .collect();
                let mut last = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "host name resolved to no address",
                );
                let mut stream = None;
                for a in addrs {
                    match tokio::net::TcpStream::connect(a).await {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let stream = stream.ok_or_else(|| connect_err(last))?;
                stream.set_nodelay(true).map_err(connect_err)?;
                let ka = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(30))
                    .with_interval(Duration::from_secs(10));
                #[cfg(any(target_os = "linux", target_os = "macos"))]
                let ka = ka.with_retries(3);
                socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&ka)
                    .map_err(connect_err)?;
                match tls::negotiate(stream, h, &params.tls).await? {
                    Negotiated::Plain(stream) => {
                        let (r, w) = stream.into_split();
                        (Box::new(r), Box::new(w))
                    }
                    Negotiated::Tls(stream) => {
                        let (r, w) = tokio::io::split(stream);
                        (Box::new(r), Box::new(w))
                    }
                }
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", params.port));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(connect_err)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut conn = ReplicationConn {
            reader: FrameReader::new(rd),
            writer: wr,
            wbuf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            backend_pid: None,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams) -> Result<(), PgError> {
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "3"),
        ];
        frontend::startup_message(startup, &mut self.wbuf)
            .map_err(|e| PgError::Config(e.to_string()))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        let password = || {
            params.password().ok_or_else(|| {
                PgError::Auth(format!(
                    "the server asks user {:?} for a password, but the URL has none",
                    params.user
                ))
            })
        };
        loop {
            let f = self.reader.next().await?;
            match f.tag {
                b'R' => {
                    let mut c = Cursor::new(&f.body, "Authentication");
                    match c.i32()? {
                        0 => {}
                        3 => {
                            let pw = password()?;
                            frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        5 => {
                            let pw = password()?;
                            let salt = c.bytes(4)?;
                            let hash = md5_hash(
                                params.user.as_bytes(),
                                pw.as_bytes(),
                                [salt[0], salt[1], salt[2], salt[3]],
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        10 => {
                            let mut mechs = Vec::new();
                            while !c.is_empty() {
                                let m = c.cstr()?;
                                if m.is_empty() {
                                    break;
                                }
                                mechs.push(m.to_string());
                            }
                            if !mechs.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(PgError::Auth(format!(
                                    "the server offers only SASL mechanism(s) {mechs:?}; pgsat \
                                     supports SCRAM-SHA-256 without channel binding (no TLS)"
                                )));
                            }
                            let pw = password()?;
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut self.wbuf,
                            )?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                PgError::protocol("SASL continue without a SASL exchange")
                            })?;
                            s.update(c.rest())
                                .map_err(|e| PgError::Auth(format!("SCRAM exchange: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                PgError::protocol("SASL final without a SASL exchange")
                            })?;
                            s.finish(c.rest()).map_err(|e| {
                                PgError::Auth(format!(
                                    "the server's SCRAM signature does not verify: {e}"
                                ))
                            })?;
                        }
                        2 => return Err(unsupported_auth("Kerberos V5")),
                        6 => return Err(unsupported_auth("SCM credentials")),
                        7 | 8 => return Err(unsupported_auth("GSSAPI")),
                        9 => return Err(unsupported_auth("SSPI")),
                        other => {
                            return Err(PgError::Auth(format!(
                                "unknown authentication request {other} from the server"
                            )))
                        }
                    }
                }
                b'E' => {
                    let err = parse_error_response(&f.body);
                    return Err(match err {
                        PgError::Server { code, message, .. }
                            if code == "28P01" || code == "28000" =>
                        {
                            PgError::Auth(format!("{message} (SQLSTATE {code})"))
                        }
                        other => other,
                    });
                }
                b'S' => {
                    let mut c = Cursor::new(&f.body, "ParameterStatus");
                    let k = c.cstr()?.to_string();
                    let v = c.cstr()?.to_string();
                    self.server_params.insert(k, v);
                }
                b'K' => {
                    let mut c = Cursor::new(&f.body, "BackendKeyData");
                    self.backend_pid = Some(c.i32()?);
                }
                b'N' => {}
                b'Z' => return Ok(()),
                b'v' => {
                    // NegotiateProtocolVersion: we ask for 3.0 with no `_pq_`
                    // options, so the server has nothing to negotiate down.
                    return Err(PgError::protocol(
                        "server sent NegotiateProtocolVersion for protocol 3.0",
                    ));
                }
                t => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} during startup",
                        t as char
                    )))
                }
            }
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), PgError> {
        self.writer.write_all(&self.wbuf).await?;
        self.writer.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// A server parameter reported at startup (`server_version`, …).
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.server_params.get(name).map(String::as_str)
    }

    /// The walsender's process id (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Runs one command with the simple query protocol (replication commands
    /// such as `CREATE_REPLICATION_SLOT`, or SQL) and returns all rows of its
    /// result sets in text. An ErrorResponse becomes `PgError::Server` after
    /// the connection is ready again, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<TextRows, PgError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| PgError::Config(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.reader.next().await?;
            match f.tag {
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'D' => rows.push(parse_data_row(&f.body)?),
                b'E' => error = Some(parse_error_response(&f.body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                b'H' | b'W' | b'G' => {
                    return Err(PgError::protocol(format!(
                        "simple_query: {sql:?} started a COPY; use start_logical for replication"
                    )))
                }
                t => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} in a query response",
                        t as char
                    )))
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = match rows.as_slice() {
            [row] if row.len() >= 4 => row,
            _ => {
                return Err(PgError::protocol(format!(
                    "IDENTIFY_SYSTEM returned {} rows, expected one of 4 columns",
                    rows.len()
                )))
            }
        };
        let need = |i: usize, what: &str| {
            row[i]
                .clone()
                .ok_or_else(|| PgError::protocol(format!("IDENTIFY_SYSTEM: {what} is NULL")))
        };
        let system_id = need(0, "systemid")?;
        let timeline = need(1, "timeline")?
            .parse::<u32>()
            .map_err(|e| PgError::protocol(format!("IDENTIFY_SYSTEM: timeline: {e}")))?;
        let xlogpos = need(2, "xlogpos")?
            .parse::<Lsn>()
            .map_err(|e| PgError::protocol(format!("IDENTIFY_SYSTEM: {e}")))?
            .0;
        Ok(SystemIdentity {
            system_id,
            timeline,
            xlogpos,
            dbname: row[3].clone(),
        })
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), PgError> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        self.writer.shutdown().await.ok();
        Ok(())
    }
}

fn unsupported_auth(what: &str) -> PgError {
    PgError::Auth(format!(
        "the server asks for {what} authentication, which pgsat does not support \
         (use scram-sha-256, md5, password or trust in pg_hba.conf)"
    ))
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    let mut c = Cursor::new(body, "DataRow");
    let n = c.i16()?;
    if n < 0 {
        return Err(PgError::protocol("DataRow with a negative column count"));
    }
    // Each column takes at least its 4-byte length: bound the allocation.
    if (n as usize) * 4 > c.rest().len() {
        return Err(PgError::protocol("DataRow column count exceeds its length"));
    }
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = c.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let b = c.bytes(len as usize)?;
            let s = std::str::from_utf8(b)
                .map_err(|_| PgError::protocol("DataRow value is not UTF-8"))?;
            row.push(Some(s.to_string()));
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_full() {
        let p =
            ConnParams::from_url("postgres://al%40ice:p%3Aw%2Fd@db.example:6543/my%20db").unwrap();
        assert_eq!(p.host, Host::Tcp("db.example".into()));
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "al@ice");
        assert_eq!(p.password(), Some("p:w/d"));
        assert_eq!(p.dbname, "my db");
        assert_eq!(p.application_name, "pgsat");
    }

    #[test]
    fn url_defaults() {
        let p = ConnParams::from_url("postgresql://localhost").unwrap();
        assert_eq!(p.port, 5432);
        assert_eq!(p.user, "postgres");
        assert_eq!(p.dbname, "postgres");
        assert_eq!(p.password(), None);
        let p = ConnParams::from_url("postgres://bob@h/").unwrap();
        assert_eq!(p.dbname, "bob");
    }

    #[test]
    fn url_params_and_unix_socket() {
        let p = ConnParams::from_url(
            "postgres://u@/db?host=/var/run/postgresql&port=5433&application_name=x&sslmode=disable",
        )
        .unwrap();
        assert_eq!(p.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(p.target(), "/var/run/postgresql/.s.PGSQL.5433");
        assert_eq!(p.application_name, "x");
        let p = ConnParams::from_url("postgres://u@[::1]:7/db").unwrap();
        assert_eq!(p.host, Host::Tcp("::1".into()));
        assert_eq!(p.target(), "[::1]:7");
    }

    #[test]
    fn url_errors() {
        for bad in [
            "mysql://x/y",
            "postgres://h/db?sslmode=required",
            "postgres://h/db?sslrootcert=",
            "postgres://h/db?sslcert=/c.pem",
            "postgres://h/db?sslkey=/k.pem",
            "postgres://h/db?sslcert=&sslkey=/k.pem",
            "postgres://h/db?sslcert=/c.pem&sslkey=",
            "postgres://h/db?bogus=1",
            "postgres://h/db?port=abc",
            "postgres://h:0/db",
            "postgres://u:%zz@h/db",
            "postgres://u:%ff@h/db",
            "not a url",
        ] {
            assert!(
                matches!(ConnParams::from_url(bad), Err(PgError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_tls_settings() {
        let p = ConnParams::from_url("postgres://h/db").unwrap();
        assert_eq!(p.tls, TlsSettings::default());
        assert_eq!(p.tls.mode, SslMode::Prefer, "libpq's default");
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            let p = ConnParams::from_url(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(p.tls.mode.as_str(), mode);
            assert_eq!(p.tls.root_cert, None);
        }
        let p = ConnParams::from_url("postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem")
            .unwrap();
        assert_eq!(p.tls.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        let p = ConnParams::from_url("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(p.tls.root_cert, Some(RootCert::System));
        assert!(format!("{p:?}").contains("prefer"));
        assert_eq!(p.tls.client_cert, None);
        let p = ConnParams::from_url("postgres://h/db?sslkey=/k.pem&sslcert=/c.pem").unwrap();
        assert_eq!(
            p.tls.client_cert,
            Some(ClientCert {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert!(format!("{p:?}").contains("/c.pem"));
        let e = ConnParams::from_url("postgres://h/db?sslcert=/c.pem").unwrap_err();
        assert!(
            e.to_string().contains("sslcert is set without sslkey"),
            "{e}"
        );
    }

    #[test]
    fn tls_config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        for (path, what) in [(&missing, "missing.pem"), (&junk, "junk.pem")] {
            let p = ConnParams::from_url(&format!(
                "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
                path.display()
            ))
            .unwrap();
            let err = p.tls.client_config().expect_err("a bad sslrootcert");
            assert!(matches!(err, PgError::Config(_)), "{err:?}");
            assert!(err.to_string().contains(what), "{err}");
        }
        // Nothing is loaded when TLS is never tried.
        let p = ConnParams::from_url(&format!(
            "postgres://h/db?sslmode=disable&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        assert!(p.tls.client_config().unwrap().is_none());
    }

    #[test]
    fn password_never_printed() {
        let p = ConnParams::from_url("postgres://u:sekrit@h/db").unwrap();
        assert!(!format!("{p:?}").contains("sekrit"));
        assert!(!format!("{p}").contains("sekrit"));
        let cfg = format!("{:?}", p.to_tokio_postgres());
        assert!(!cfg.contains("sekrit"), "{cfg}");
    }

    #[test]
    fn error_response_parsing() {
        let body = b"SERROR\0C42710\0Mslot exists\0Dsome detail\0\0";
        let e = parse_error_response(body);
        assert_eq!(e.code(), Some("42710"));
        assert!(e.to_string().contains("slot exists"));
        assert!(e.to_string().contains("42710"));
        assert!(!e.is_transient());
        assert!(parse_error_response(b"C57P01\0Mbye\0\0").is_transient());
        // Truncated garbage does not panic.
        let e = parse_error_response(b"C4");
        assert_eq!(e.code(), Some("4"));
    }

    #[test]
    fn data_row_bounds() {
        assert!(parse_data_row(&[0x7f, 0xff]).is_err());
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert_eq!(
            parse_data_row(&[0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'a']).unwrap(),
            vec![None, Some("a".into())]
        );
    }

    #[tokio::test]
    async fn frame_reader_limits_and_partial_reads() {
        // A length over the limit is refused before anything is allocated.
        let mut r = FrameReader::new(Box::new(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]));
        assert!(matches!(r.next().await, Err(PgError::Protocol(_))));
        let mut r = FrameReader::new(Box::new(&[b'd', 0, 0, 0, 2][..]));
        assert!(matches!(r.next().await, Err(PgError::Protocol(_))));
        // Two frames delivered in pieces.
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(Box::new(rx));
        let writer = tokio::spawn(async move {
            for chunk in [&[b'Z', 0, 0][..], &[0, 5, b'I'], &[b'c', 0, 0, 0, 4]] {
                tx.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let f = r.next().await.unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        let f = r.next().await.unwrap();
        assert_eq!((f.tag, f.body.len()), (b'c', 0));
        writer.await.unwrap();
        assert!(matches!(r.next().await, Err(PgError::Closed)));
    }
}
