//! pgsat: a proxy beside PostgreSQL that reads every committed change through
//! logical replication (`pgoutput`), keeps it in its own durable log, and
//! streams it to authenticated clients over a Satellite-style binary protocol.
//!
//! The data path, one module per stage (see docs/ARCHITECTURE.md):
//! `pg` (replication connection, pgoutput decoder) → `ingest` (whole
//! transactions, encoded once as wire frames) → `log` (durable segments on
//! disk + in-memory cache) → `server` (sessions, one cursor each) → sockets.

pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod devpg;
pub mod error_text;
pub mod http;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod pki;
pub mod protocol;
pub mod replicator;
pub mod rules;
pub mod server;
pub mod telemetry;
