//! Detection of removed users: rows of the users table deleted, or whose id
//! changed, in a transaction.
//!
//! Invariant: an id is reported only when the old row's id column is present
//! in the stream (the id is part of the replica identity: primary key, or
//! REPLICA IDENTITY FULL); otherwise Postgres does not send it and nothing
//! can be reported.

use crate::pg::pgoutput::{CellRef, Relation, Tuple};

/// The table whose rows are the users (`AUTH_USERS_TABLE`,
/// `AUTH_USERS_ID_COLUMN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsersTable {
    pub schema: String,
    pub table: String,
    pub id_column: String,
}

impl UsersTable {
    /// From the settings: `table` may be `schema.table`; unqualified means
    /// `public`. (Quoted identifiers containing dots are not supported.)
    pub fn from_setting(table: &str, id_column: &str) -> Self {
        let (schema, table) = table.split_once('.').unwrap_or(("public", table));
        UsersTable {
            schema: schema.to_owned(),
            table: table.to_owned(),
            id_column: id_column.to_owned(),
        }
    }

    /// Index of the id column when `rel` is the users table.
    pub(crate) fn id_column_of(&self, rel: &Relation) -> Option<usize> {
        if rel.namespace != self.schema || rel.name != self.table {
            return None;
        }
        rel.columns.iter().position(|c| c.name == self.id_column)
    }
}

/// Users removed by one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovedUsers {
    /// Ids of deleted rows, and old ids of rows whose id changed, in stream
    /// order (may repeat).
    pub ids: Vec<String>,
    /// The users table was truncated: every user is gone.
    pub all: bool,
}

impl RemovedUsers {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.all
    }
}

fn cell(t: &Tuple, i: usize) -> Option<CellRef<'_>> {
    t.iter().nth(i)
}

/// Old id of a deleted users row.
pub(crate) fn deleted_id(old: &Tuple, col: usize) -> Option<String> {
    match cell(old, col)? {
        CellRef::Text(v) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    }
}

/// Old id of an updated users row whose id changed.
pub(crate) fn changed_id(old: &Tuple, new: &Tuple, col: usize) -> Option<String> {
    let CellRef::Text(o) = cell(old, col)? else {
        return None;
    };
    match cell(new, col)? {
        CellRef::Text(n) if n == o => None,
        CellRef::Unchanged => None,
        _ => Some(String::from_utf8_lossy(o).into_owned()),
    }
}
