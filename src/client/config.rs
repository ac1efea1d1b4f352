//! What a [`Client`](super::Client) needs to know: where to connect, how to
//! get a token, where to start, and how to retry.
//!
//! Invariant: every field has a safe default except `url` and the token
//! source; nothing here does I/O.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed future, `Send`, borrowing `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Supplies tokens: called at every connect and again before the current
/// token expires (in-band refresh), and when the server says TOKEN_EXPIRED.
pub trait TokenSource: Send + Sync {
    /// A token (a JWT), or why none can be had (fatal for the client).
    fn token(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// A fixed token.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// A token source from an async closure: `FnTokenSource(|| async { Ok(..) })`.
pub struct FnTokenSource<F>(pub F);

impl<F, Fut> TokenSource for FnTokenSource<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin((self.0)())
    }
}

/// Jittered exponential backoff between reconnect attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of a delay.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_retries: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_retries: None,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): the exponential
    /// delay capped at `max`, then jittered uniformly into [d/2, d].
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let frac = (random % 10_000) as f64 / 10_000.0;
        Duration::from_secs_f64(capped * (0.5 + 0.5 * frac))
    }
}

/// Configuration of a [`Client`](super::Client).
#[derive(Clone)]
pub struct ClientConfig {
    /// `tcp://host:port`, `ws://host:port/ws`, or in TLS `tls://host:port`,
    /// `wss://host:port/ws`.
    pub url: String,
    /// For `tls://` and `wss://`: a PEM file of the CA certificates to
    /// trust; `None`: the system's.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub token: Arc<dyn TokenSource>,
    /// Start after this commit LSN (0: from the server's current head, or
    /// with `snapshot`, from a snapshot).
    pub from_lsn: u64,
    /// Tables to subscribe to (`schema.table` or `table`); empty: all.
    pub tables: Vec<String>,
    /// Start with a snapshot of every readable row (protocol 1.1).
    pub snapshot: bool,
    /// The view id held from an earlier session (protocol 1.1).
    pub view_id: Option<String>,
    /// On RESYNC_REQUIRED (the read rules or the claims they use changed),
    /// hand out [`Event::Resync`](super::Event::Resync) and start over with
    /// a snapshot instead of failing (protocol 1.1).
    pub resync_with_snapshot: bool,
    pub reconnect: Backoff,
    /// Largest server frame accepted (type byte + body).
    pub max_frame: u32,
    /// Refresh the token this long before it expires (or at half its
    /// remaining life when that is shorter).
    pub refresh_margin: Duration,
    /// After this long without a frame, send PingReq; after twice as long,
    /// treat the connection as dead and reconnect. `None`: never.
    pub ping_interval: Option<Duration>,
    /// At most one AckReq per this interval (`ZERO`: one per transaction).
    pub ack_interval: Duration,
    /// Time allowed to connect and to get each handshake answer.
    pub handshake_timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: Arc<dyn TokenSource>) -> Self {
        ClientConfig {
            url: url.into(),
            tls_ca_file: None,
            token,
            from_lsn: 0,
            tables: Vec::new(),
            snapshot: false,
            view_id: None,
            resync_with_snapshot: true,
            reconnect: Backoff::default(),
            max_frame: 256 * 1024 * 1024,
            refresh_margin: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(30)),
            ack_interval: Duration::from_millis(200),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// A config with a fixed token.
    pub fn with_token(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self::new(url, Arc::new(StaticToken(token.into())))
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &"<token source>")
            .field("from_lsn", &self.from_lsn)
            .field("tables", &self.tables)
            .field("snapshot", &self.snapshot)
            .field("view_id", &self.view_id)
            .field("resync_with_snapshot", &self.resync_with_snapshot)
            .field("reconnect", &self.reconnect)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_retries: None,
        };
        assert_eq!(
            b.delay(0, 9_999),
            Duration::from_secs_f64(0.1 * (0.5 + 0.5 * 0.9999))
        );
        assert_eq!(b.delay(0, 0), Duration::from_millis(50));
        assert_eq!(b.delay(2, 0), Duration::from_millis(200));
        assert_eq!(b.delay(30, 0), Duration::from_millis(500));
        assert!(b.delay(1_000, u64::MAX) <= Duration::from_secs(1));
    }
}
