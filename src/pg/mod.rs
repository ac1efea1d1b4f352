//! PostgreSQL side: the replication connection, the pure `pgoutput` decoder,
//! slot and publication management, relation metadata from the catalog.

pub mod catalog;
pub mod conn;
pub mod identity;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod slot;
pub mod sql;
pub mod tls;

pub use conn::PgError;
