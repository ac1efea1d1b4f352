//! PostgreSQL side: the replication connection, the pure `pgoutput` decoder,
//! slot and publication management.

pub mod conn;
pub mod lsn;
pub mod replication;
pub mod slot;
