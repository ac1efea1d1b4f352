//! Read rules (protocol 1.1): not implemented yet; `snapshot` is the
//! initial-sync reader.

pub mod snapshot;
