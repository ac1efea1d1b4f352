//! The Rust client of the pgsat protocol (`pgsat::client`): connects over
//! TCP or WebSocket, authenticates, starts replication from an LSN and hands
//! out whole, typed transactions; reconnects and resumes from the last
//! Commit.lsn by itself, and refreshes its token in band before it expires.
//!
//! Invariant: a caller sees every transaction after its start position
//! exactly once, in commit order, or an error saying why it cannot.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgsat::client::ClientError> {
//! use pgsat::client::{Client, ClientConfig, Event};
//! let mut config = ClientConfig::with_token("tcp://127.0.0.1:5133", "eyJ…");
//! config.from_lsn = 0;
//! let mut client = Client::connect(config).await?;
//! loop {
//!     if let Event::Transaction(t) = client.next_event().await? {
//!         println!("{} changes at {}", t.changes.len(), t.lsn);
//!     }
//! }
//! # }
//! ```

pub mod config;
pub mod connection;
pub mod error;
pub mod event;
pub mod session;
pub mod tail;
pub mod tls;

#[cfg(test)]
mod tests;

pub use config::{Backoff, ClientConfig, FnTokenSource, StaticToken, TokenSource};
pub use connection::{Connection, Connector, Endpoint, UrlConnector};
pub use error::ClientError;
pub use event::{Change, Event, Op, RelationInfo, RowValues, Transaction, Value};
pub use session::{Client, SessionInfo};
