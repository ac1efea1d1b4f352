//! PostgreSQL side: the replication connection, the pure `pgoutput` decoder,
//! slot and publication management.

pub mod catalog;
pub mod lsn;
pub mod pgoutput;
