//! Snapshot reader (protocol 1.1 initial sync): every row of a set of
//! published tables, read in one `REPEATABLE READ READ ONLY` transaction on
//! an ordinary connection, encoded as `SnapshotRows` frames.
//!
//! Invariants:
//! - Values are exactly what pgoutput sends: the type's output function,
//!   under the same session settings as the replication connection
//!   (`DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=postgres`,
//!   `extra_float_digits=3`). `COPY … TO STDOUT` (text) writes the output
//!   function's text with `\`-escapes, which [`decode_copy_field`] undoes.
//! - Columns are the Relation's: every column with `attnum > 0`, not dropped,
//!   not generated (restricted to the publication's column list when it has
//!   one), in `attnum` order; the Relation frame built here is byte-identical
//!   to the one ingest builds from pgoutput + catalog.
//! - Memory is bounded: `COPY` is consumed as a stream (tokio-postgres stops
//!   reading the socket while a row is not taken), rows are encoded into one
//!   frame of at most ~[`ROWS_FRAME_BODY`] bytes (a single larger row gets a
//!   frame of its own) and handed to a bounded channel whose receiver paces
//!   the whole read.
//! - [`TxSnapshot::saw`] answers exactly whether the snapshot sees a
//!   committed transaction's effects, from its 32-bit `Begin.xid` (the epoch
//!   is taken from the snapshot's `xmax`; transactions that reach the log
//!   around a snapshot are within 2^31 of it).
//!
//! The caller chooses the tables and their row filters (`None` = every row;
//! a table the session may not read is simply not passed).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{pin_mut, TryStreamExt};
use prost::encoding::{encode_varint, encoded_len_varint};
use tokio::sync::{mpsc, Semaphore};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::pg::sql::SqlConfig;

use crate::auth::users::quote_ident;
use crate::protocol::frame::encode_frame;
use crate::protocol::msg_type::MsgType;
use crate::protocol::pb;

/// Snapshots read at the same time, server-wide (each holds one Postgres
/// connection and one open transaction); more wait for a permit.
pub const MAX_CONCURRENT_SNAPSHOTS: usize = 4;

/// Target body size of one `SnapshotRows` frame.
pub const ROWS_FRAME_BODY: usize = 256 * 1024;

/// Frame type byte of `SnapshotRows`.
const SNAPSHOT_ROWS_TYPE: u8 = 12;
/// u32 length + type byte.
const HDR: usize = 5;

/// The server-wide limit on concurrent snapshots.
pub fn permits() -> Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS
        .get_or_init(|| Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOTS)))
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("snapshot: {0}")]
    Connect(#[from] crate::pg::PgError),
    #[error("table {0:?} is not published")]
    NotPublished(String),
    #[error("snapshot: unexpected answer from Postgres: {0}")]
    Protocol(String),
    /// The receiver of the rows went away (the client disconnected).
    #[error("snapshot cancelled")]
    Cancelled,
}

/// `pg_current_snapshot()` of the snapshot transaction, 64-bit xids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// In progress at the snapshot (sorted).
    pub xip: Vec<u64>,
}

impl TxSnapshot {
    /// Parses the text form `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Result<TxSnapshot, SnapshotError> {
        let bad = || SnapshotError::Protocol(format!("pg_snapshot {text:?}"));
        let mut parts = text.trim().split(':');
        let xmin = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xip_text = parts.next().ok_or_else(bad)?;
        if parts.next().is_some() || xmin > xmax {
            return Err(bad());
        }
        let mut xip = Vec::new();
        for x in xip_text.split(',').filter(|s| !s.is_empty()) {
            xip.push(x.parse::<u64>().map_err(|_| bad())?);
        }
        xip.sort_unstable();
        Ok(TxSnapshot { xmin, xmax, xip })
    }

    /// The 64-bit xid nearest to `xmax` whose low 32 bits are `xid`.
    pub fn widen(&self, xid: u32) -> u64 {
        let diff = xid.wrapping_sub(self.xmax as u32) as i32 as i64;
        (self.xmax as i64 + diff).max(0) as u64
    }

    /// Does the snapshot see the effects of this committed transaction?
    /// Below `xmin`: finished before it (committed ones are seen). At or
    /// above `xmax`: not yet started. Between: seen unless in progress.
    pub fn saw(&self, xid: u32) -> bool {
        let x = self.widen(xid);
        if x < self.xmin {
            return true;
        }
        if x >= self.xmax {
            return false;
        }
        self.xip.binary_search(&x).is_err()
    }
}

/// One table of a snapshot: its Relation (as sent to clients) and the
/// columns read, in the Relation's order.
#[derive(Clone, Debug)]
pub struct SnapshotTable {
    pub relation_id: u32,
    pub schema: String,
    pub name: String,
    /// `r` (table) or `p` (partitioned): how to read it.
    relkind: i8,
    pub columns: Vec<String>,
    /// Complete `Relation` frame (type 9).
    pub relation_frame: Bytes,
}

impl SnapshotTable {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// What a snapshot produces, in order: the Relations, then rows.
#[derive(Clone, Debug)]
pub enum SnapshotItem {
    Relation {
        relation_id: u32,
        frame: Bytes,
    },
    /// A complete `SnapshotRows` frame (type 12) holding `rows` rows.
    Rows {
        frame: Bytes,
        rows: u64,
    },
}

/// An ordinary connection holding one snapshot transaction. Dropping it
/// closes the connection (and so the transaction).
pub struct SnapshotConn {
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
}

impl Drop for SnapshotConn {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

/// The session settings pgsat pins on its replication connection, so that
/// output functions write the same text in both.
const PINNED_SETTINGS: &str = "SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
     SET client_encoding = 'UTF8'; SET statement_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

/// Published tables, optionally narrowed to `only`, each with its columns.
/// `$2`: attnames filter supported (PG ≥ 15 column lists).
const TABLES_SQL: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::\"char\"
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
WHERE pt.pubname = $1
ORDER BY n.nspname, c.relname";

const COLUMNS_SQL: &str = "\
SELECT a.attname::text,
       a.atttypid,
       COALESCE(format_type(a.atttypid, a.atttypmod), '') AS type_name,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey)) AS primary_key,
       NOT a.attnotnull AS nullable
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum";

/// PG ≥ 15: the publication's column list for a table (NULL = all).
const COLUMN_LIST_SQL: &str = "\
SELECT pt.attnames::text[] FROM pg_catalog.pg_publication_tables pt
WHERE pt.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3";

impl SnapshotConn {
    /// Connects and pins the output settings.
    pub async fn connect(mut cfg: SqlConfig) -> Result<SnapshotConn, SnapshotError> {
        cfg.application_name("pgsat-snapshot");
        let (client, conn_task) = cfg.connect("snapshot", false).await?;
        let c = SnapshotConn { client, conn_task };
        c.client.batch_execute(PINNED_SETTINGS).await?;
        Ok(c)
    }

    /// Opens the snapshot transaction. Returns the snapshot and
    /// `pg_current_wal_insert_lsn()` read right after it was taken: every
    /// transaction the snapshot sees has a commit record ending at or
    /// before that LSN, so every commit ending after it is not seen.
    pub async fn begin(&mut self) -> Result<(TxSnapshot, u64), SnapshotError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        self.take_snapshot().await
    }

    /// As [`begin`](Self::begin), but first locks the tables of
    /// `publication` (narrowed to `only` when not empty, and to those
    /// `read(schema, table)` says will be read) in ACCESS SHARE mode, before
    /// the snapshot is taken (LOCK TABLE takes none).
    ///
    /// Why: TRUNCATE is not MVCC-safe. Without the lock, a TRUNCATE that
    /// commits after the snapshot but before a table's rows are read
    /// empties that table for the snapshot too, although the snapshot did
    /// not see it: the rows are missing from the snapshot, and the changes
    /// streamed between `SnapshotEnd.lsn` and the TRUNCATE's commit refer
    /// to rows the client never got. With the lock a TRUNCATE (or other
    /// ACCESS EXCLUSIVE DDL) of a table being read waits for the snapshot
    /// to finish — as it does for pg_dump. A table added to the
    /// publication between the listing and the lock is read unlocked.
    pub async fn begin_locked(
        &mut self,
        publication: &str,
        only: &[String],
        read: &(dyn Fn(&str, &str) -> bool + Sync),
    ) -> Result<(TxSnapshot, u64), SnapshotError> {
        let rows = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        let mut names = Vec::with_capacity(rows.len());
        for r in &rows {
            let schema: String = r.try_get(0)?;
            let table: String = r.try_get(1)?;
            let wanted = only.is_empty()
                || only.iter().any(|w| match w.split_once('.') {
                    Some((s, t)) => s == schema && t == table,
                    None => schema == "public" && *w == table,
                });
            if wanted && read(&schema, &table) {
                names.push(format!("{}.{}", quote_ident(&schema), quote_ident(&table)));
            }
        }
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        if !names.is_empty() {
            self.client
                .batch_execute(&format!(
                    "LOCK TABLE {} IN ACCESS SHARE MODE",
                    names.join(", ")
                ))
                .await?;
        }
        self.take_snapshot().await
    }

    async fn take_snapshot(&mut self) -> Result<(TxSnapshot, u64), SnapshotError> {
        // First statement: takes the transaction snapshot, then reads the
        // WAL insert position.
        let msgs = self
            .client
            .simple_query(
                "SELECT pg_current_snapshot()::text, (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::text",
            )
            .await?;
        let row = msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| SnapshotError::Protocol("no snapshot row".into()))?;
        let snap = TxSnapshot::parse(row.get(0).unwrap_or(""))?;
        let lsn_text = row.get(1).unwrap_or("");
        let lsn = lsn_text
            .parse::<u64>()
            .map_err(|_| SnapshotError::Protocol(format!("WAL position {lsn_text:?}")))?;
        Ok((snap, lsn))
    }

    /// The tables of `publication` (inside the snapshot transaction, so
    /// their definitions are those of the snapshot), narrowed to `only`
    /// when it is not empty (`schema.table`, or `table` for `public`);
    /// a name in `only` that is not published is `NotPublished`.
    pub async fn tables(
        &self,
        publication: &str,
        only: &[String],
    ) -> Result<Vec<SnapshotTable>, SnapshotError> {
        let rows = self.client.query(TABLES_SQL, &[&publication]).await?;
        let mut all = Vec::with_capacity(rows.len());
        for r in &rows {
            let oid: u32 = r.try_get(0)?;
            let schema: String = r.try_get(1)?;
            let name: String = r.try_get(2)?;
            let relkind: i8 = r.try_get(3)?;
            all.push((oid, schema, name, relkind));
        }
        let chosen: Vec<_> = if only.is_empty() {
            all
        } else {
            let mut v = Vec::new();
            for want in only {
                let (s, t) = match want.split_once('.') {
                    Some((s, t)) => (s, t),
                    None => ("public", want.as_str()),
                };
                let found = all.iter().find(|(_, sch, n, _)| sch == s && n == t);
                match found {
                    Some(f) if !v.iter().any(|x: &(u32, String, String, i8)| x.0 == f.0) => {
                        v.push(f.clone())
                    }
                    Some(_) => {}
                    None => return Err(SnapshotError::NotPublished(want.clone())),
                }
            }
            v
        };
        let column_lists = self.server_version().await? >= 150_000;
        let mut out = Vec::with_capacity(chosen.len());
        for (oid, schema, name, relkind) in chosen {
            let list: Option<Vec<String>> = if column_lists {
                self.client
                    .query_opt(COLUMN_LIST_SQL, &[&publication, &schema, &name])
                    .await?
                    .map(|r| r.try_get::<_, Option<Vec<String>>>(0))
                    .transpose()?
                    .flatten()
            } else {
                None
            };
            let cols = self.client.query(COLUMNS_SQL, &[&oid]).await?;
            let mut columns = Vec::with_capacity(cols.len());
            let mut pb_cols = Vec::with_capacity(cols.len());
            for c in &cols {
                let col_name: String = c.try_get(0)?;
                if list.as_ref().is_some_and(|l| !l.contains(&col_name)) {
                    continue;
                }
                pb_cols.push(pb::Column {
                    name: col_name.clone(),
                    type_oid: c.try_get(1)?,
                    type_name: c.try_get(2)?,
                    primary_key: c.try_get(3)?,
                    nullable: c.try_get(4)?,
                });
                columns.push(col_name);
            }
            let relation_frame = encode_frame(
                MsgType::Relation,
                &pb::Relation {
                    relation_id: oid,
                    schema: schema.clone(),
                    table: name.clone(),
                    columns: pb_cols,
                },
            );
            out.push(SnapshotTable {
                relation_id: oid,
                schema,
                name,
                relkind,
                columns,
                relation_frame,
            });
        }
        Ok(out)
    }

    async fn server_version(&self) -> Result<i32, SnapshotError> {
        let row = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Streams every row of `table` matching `filter` (an SQL boolean
    /// expression over its columns; `None` = every row) into `out` as
    /// `SnapshotRows` frames. Returns the number of rows.
    pub async fn copy_rows<T: From<SnapshotItem>>(
        &self,
        table: &SnapshotTable,
        filter: Option<&str>,
        out: &mpsc::Sender<T>,
    ) -> Result<u64, SnapshotError> {
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
        let qualified = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        // ONLY: an inheritance parent's children are published (and read)
        // on their own. A partitioned table (published via its root) holds
        // no rows itself: it is read whole.
        let only = if table.relkind == b'p' as i8 {
            ""
        } else {
            "ONLY "
        };
        let sql = if filter.is_none() && table.relkind == b'r' as i8 && !cols.is_empty() {
            // The fastest form; COPY of a table never includes children.
            format!("COPY {qualified} ({}) TO STDOUT", cols.join(", "))
        } else {
            // (A table without columns: its rows are empty lines.)
            format!(
                "COPY (SELECT {} FROM {only}{qualified} WHERE ({})) TO STDOUT",
                cols.join(", "),
                filter.unwrap_or("true")
            )
        };
        let stream = self.client.copy_out(sql.as_str()).await?;
        pin_mut!(stream);
        let mut enc = RowsEncoder::new(table.relation_id, table.columns.len());
        let mut carry = BytesMut::new();
        let mut total = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            // Postgres sends one row per CopyData; tolerate any split.
            let data: &[u8] = if carry.is_empty() {
                &chunk
            } else {
                carry.extend_from_slice(&chunk);
                &carry
            };
            let mut rest = data;
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                enc.push_line(&rest[..nl])?;
                rest = &rest[nl + 1..];
                if enc.body_len() >= ROWS_FRAME_BODY {
                    let (frame, rows) = enc.take();
                    total += rows;
                    send(out, SnapshotItem::Rows { frame, rows }).await?;
                }
            }
            let left = rest.to_vec();
            carry.clear();
            carry.extend_from_slice(&left);
        }
        if !carry.is_empty() {
            return Err(SnapshotError::Protocol(
                "COPY data ends inside a row".into(),
            ));
        }
        if enc.rows > 0 {
            let (frame, rows) = enc.take();
            total += rows;
            send(out, SnapshotItem::Rows { frame, rows }).await?;
        }
        Ok(total)
    }

    /// Ends the snapshot transaction, then commits one empty transaction
    /// with an xid so that the WAL moves past the snapshot's position even
    /// on an idle server (the replication stream then reports having
    /// passed it, which lets `SnapshotEnd` go out promptly).
    pub async fn finish(self) -> Result<(), SnapshotError> {
        self.client.batch_execute("COMMIT").await?;
        self.client
            .batch_execute("SELECT pg_catalog.pg_current_xact_id()")
            .await?;
        Ok(())
    }
}

async fn send<T: From<SnapshotItem>>(
    out: &mpsc::Sender<T>,
    item: SnapshotItem,
) -> Result<(), SnapshotError> {
    out.send(T::from(item))
        .await
        .map_err(|_| SnapshotError::Cancelled)
}

/// Undoes `COPY TO` text escaping of one field: `\b \f \n \r \t \v \\`, and
/// the forms COPY never writes but its grammar has (`\NNN` octal, `\xHH`,
/// any other `\c` = `c`). `\N` alone (NULL) is handled by the caller.
pub fn decode_copy_field(field: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 >= field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0C),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0B),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + (field[i] - b'0') as u32;
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = hex(field[i]);
                i += 1;
                if i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + hex(field[i]);
                    i += 1;
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Builds `SnapshotRows` frames row by row, in place: the frame header and
/// `relation_id` first, then each row as field 2 (`Row`: `nulls` bitmap of
/// ⌈n/8⌉ bytes, most significant bit first, then one `values` entry per
/// column, empty for NULL) — the same bytes prost writes.
pub struct RowsEncoder {
    relation_id: u32,
    ncols: usize,
    buf: BytesMut,
    rows: u64,
    nulls: Vec<u8>,
    vals: Vec<u8>,
    scratch: Vec<u8>,
}

impl RowsEncoder {
    pub fn new(relation_id: u32, ncols: usize) -> RowsEncoder {
        let mut e = RowsEncoder {
            relation_id,
            ncols,
            buf: BytesMut::new(),
            rows: 0,
            nulls: Vec::with_capacity(ncols.div_ceil(8)),
            vals: Vec::new(),
            scratch: Vec::new(),
        };
        e.start_frame();
        e
    }

    fn start_frame(&mut self) {
        self.buf = BytesMut::with_capacity(ROWS_FRAME_BODY + 64 * 1024);
        self.buf.put_bytes(0, HDR);
        self.buf.put_u8(0x08);
        encode_varint(self.relation_id as u64, &mut self.buf);
        self.rows = 0;
    }

    /// Body bytes so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - HDR
    }

    /// Rows in the frame being built.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds one row given as a COPY text line (without its newline).
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), SnapshotError> {
        let nb = self.ncols.div_ceil(8);
        self.nulls.clear();
        self.nulls.resize(nb, 0);
        self.vals.clear();
        let mut n = 0usize;
        // A row of a table without columns is an empty line.
        let skip = self.ncols == 0 && line.is_empty();
        for field in line.split(|&b| b == b'\t').filter(|_| !skip) {
            if n >= self.ncols {
                return Err(SnapshotError::Protocol(format!(
                    "COPY row has more than {} columns",
                    self.ncols
                )));
            }
            if field == b"\\N" {
                self.nulls[n >> 3] |= 0x80 >> (n & 7);
                self.vals.extend_from_slice(&[0x12, 0]);
            } else if field.contains(&b'\\') {
                self.scratch.clear();
                decode_copy_field(field, &mut self.scratch);
                put_bytes_field(&mut self.vals, &self.scratch);
            } else {
                put_bytes_field(&mut self.vals, field);
            }
            n += 1;
        }
        if n != self.ncols {
            return Err(SnapshotError::Protocol(format!(
                "COPY row has {n} columns, expected {}",
                self.ncols
            )));
        }
        let nulls_len = if nb == 0 {
            0
        } else {
            1 + encoded_len_varint(nb as u64) + nb
        };
        let row_len = nulls_len + self.vals.len();
        self.buf.put_u8(0x12);
        encode_varint(row_len as u64, &mut self.buf);
        if nb > 0 {
            self.buf.put_u8(0x0A);
            encode_varint(nb as u64, &mut self.buf);
            self.buf.put_slice(&self.nulls);
        }
        self.buf.put_slice(&self.vals);
        self.rows += 1;
        Ok(())
    }

    /// The frame built so far and its row count; starts a new one.
    pub fn take(&mut self) -> (Bytes, u64) {
        let rows = self.rows;
        let mut buf = std::mem::take(&mut self.buf);
        let body = (buf.len() - HDR + 1) as u32;
        buf[0..4].copy_from_slice(&body.to_be_bytes());
        buf[4] = SNAPSHOT_ROWS_TYPE;
        self.start_frame();
        (buf.freeze(), rows)
    }
}

fn put_bytes_field(out: &mut Vec<u8>, v: &[u8]) {
    out.push(0x12);
    let mut n = v.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn snapshot_parse_and_visibility() {
        let s = TxSnapshot::parse("100:110:102,105").unwrap();
        assert_eq!(s.xip, vec![102, 105]);
        assert!(s.saw(99));
        assert!(s.saw(100));
        assert!(s.saw(101));
        assert!(!s.saw(102));
        assert!(!s.saw(105));
        assert!(s.saw(109));
        assert!(!s.saw(110));
        assert!(!s.saw(200));
        assert!(TxSnapshot::parse("5:3:").is_err());
        assert!(TxSnapshot::parse("x:3:").is_err());
        assert!(TxSnapshot::parse("1:3").is_err());
        assert_eq!(TxSnapshot::parse("7:7:").unwrap().xip, Vec::<u64>::new());
    }

    #[test]
    fn epoch_wraparound() {
        // xmax just past an epoch boundary: 32-bit xids from before the wrap
        // are old (seen), after it new.
        let base = 3u64 << 32;
        let s = TxSnapshot {
            xmin: base - 10,
            xmax: base + 5,
            xip: vec![base - 3, base + 2],
        };
        assert_eq!(s.widen(u32::MAX), base - 1);
        assert_eq!(s.widen(4), base + 4);
        assert!(s.saw(u32::MAX - 20)); // below xmin
        assert!(s.saw(u32::MAX)); // base-1, finished
        assert!(!s.saw((base - 3) as u32)); // in progress
        assert!(!s.saw(2));
        assert!(s.saw(3));
        assert!(!s.saw(5)); // xmax
        assert!(!s.saw(1000));
    }

    #[test]
    fn copy_escapes() {
        let mut out = Vec::new();
        decode_copy_field(br"a\tb\nc\\d\re\bf\fg\vh\101\x42", &mut out);
        assert_eq!(out, b"a\tb\nc\\d\re\x08f\x0cg\x0bhAB");
    }

    #[test]
    fn rows_frame_is_prost_encoding() {
        let mut e = RowsEncoder::new(16384, 3);
        e.push_line(b"1\t\\N\tx\\ty").unwrap();
        e.push_line("2\t\t€".as_bytes()).unwrap();
        assert!(e.push_line(b"1\t2").is_err());
        let (frame, rows) = e.take();
        assert_eq!(rows, 2);
        let want = pb::SnapshotRows {
            relation_id: 16384,
            rows: vec![
                pb::Row {
                    nulls: Bytes::from_static(&[0x40]),
                    values: vec![
                        Bytes::from_static(b"1"),
                        Bytes::new(),
                        Bytes::from_static(b"x\ty"),
                    ],
                    unchanged: Bytes::new(),
                },
                pb::Row {
                    nulls: Bytes::from_static(&[0]),
                    values: vec![Bytes::from_static(b"2"), Bytes::new(), Bytes::from("€")],
                    unchanged: Bytes::new(),
                },
            ],
        };
        let expect = encode_frame(MsgType::SnapshotRows, &want);
        assert_eq!(frame, expect);
        let decoded = pb::SnapshotRows::decode(&frame[5..]).unwrap();
        assert_eq!(decoded, want);
    }
}
