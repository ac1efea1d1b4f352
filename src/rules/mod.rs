//! Read rules (protocol.md "Version 1.1 — read rules and initial sync"):
//! which rows of which tables each session may read.
//!
//! - [`file`]: the `RULES_FILE` TOML document, with positions for errors;
//! - [`expr`]: the `read` expression grammar (recursive descent);
//! - [`check`]: the start-up checks against the Postgres catalog;
//! - [`claims`]: a token's claims as compared texts;
//! - [`view`]: a session's [`View`] (rules + claims), its `view_id` and
//!   `where_sql` for snapshots;
//! - [`snapshot`]: the initial-sync reader (one REPEATABLE READ transaction);
//! - [`wire`] and [`filter`]: a stored transaction filtered for a view,
//!   assembled from the stored op bytes, shared through [`FilterCache`].
//!
//! Invariant: with rules on, a table not listed is sent to nobody; every
//! error in the file or against the catalog is one line naming the file
//! (and line) and stops start-up with exit code 2.

pub mod check;
pub mod claims;
pub mod expr;
pub mod file;
pub mod filter;
pub mod hash;
pub mod route;
pub mod snapshot;
pub mod view;
pub mod wire;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use file::{RulesFile, TableRule};
pub use filter::{FilterCache, Filtered, RelFilter, Subscription};
pub use view::{Pred, View};

/// A rules file or catalog check failed: exit code 2 at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("RULES_FILE {path}:{line}:{col}: {reason}")]
    File {
        path: String,
        line: usize,
        col: usize,
        reason: String,
    },
    #[error("RULES_FILE {path}:{line}: {reason}")]
    Catalog {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The loaded rules.
#[derive(Clone, Debug)]
pub struct Rules {
    pub file: RulesFile,
    /// Hash of the canonical content: part of every `view_id`.
    pub version: String,
}

impl Rules {
    /// Reads and parses `RULES_FILE` (not yet checked against the catalog).
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        Ok(Self::from_file(RulesFile::load(path)?))
    }

    pub fn from_file(file: RulesFile) -> Rules {
        let version = hash::stable_hash_hex(file.canonical().as_bytes());
        Rules { file, version }
    }

    /// Claim paths any rule uses, sorted, without duplicates.
    pub fn used_claims(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .file
            .tables
            .iter()
            .flat_map(|t| t.read.claims().into_iter().map(|p| p.to_vec()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether two claims objects give the same values for every claim the
    /// rules use (a token refresh that changes one ends the session).
    pub fn same_used_claims(&self, a: &serde_json::Value, b: &serde_json::Value) -> bool {
        self.used_claims()
            .iter()
            .all(|p| claims::lookup(a, p) == claims::lookup(b, p))
    }
}
