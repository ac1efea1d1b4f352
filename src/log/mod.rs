//! pgsat's durable history of committed transactions.

pub mod record;

pub use record::{Entry, RelationEntry, TxnEntry};
