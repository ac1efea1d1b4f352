//! `pgsat tail`: prints each transaction as one JSON line (interface.md),
//! reconnecting and resuming from the last LSN.
//!
//! Invariant: one event is one or more complete lines on stdout, flushed
//! before the next event is read; a transaction is never split or repeated.
//!
//! Lines:
//! - transaction: `{"lsn":…,"xid":…,"commit_time":…,"changes":[…]}`, each change
//!   `{"op":"insert|update|delete","schema":…,"table":…,"row":{…},"old":{…}}`
//!   (`row`/`old` omitted when absent; values are Postgres text or null; a
//!   column whose unchanged TOASTed value was not sent is left out of `row`),
//!   or `{"op":"truncate","schema":…,"table":…}` per table;
//! - `--snapshot`: `{"op":"snapshot","schema":…,"table":…,"row":{…}}` per row,
//!   then `{"op":"snapshot_end","lsn":…,"rows":…,"view_id":…}`;
//!   `{"op":"snapshot_restart"}` when the connection dropped mid-snapshot
//!   (discard the snapshot lines so far; it starts over), and
//!   `{"op":"resync","reason":…}` when the server demands a fresh snapshot
//!   (BEHIND_WINDOW, RESYNC_REQUIRED): discard everything; a snapshot follows.

use std::io::Write;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::config::ClientConfig;
use super::error::ClientError;
use super::event::{Event, RowValues, Transaction, Value};
use super::session::Client;
use crate::protocol::pb::ErrorCode;

/// Arguments of `pgsat tail`.
#[derive(clap::Args, Clone, Debug)]
pub struct TailArgs {
    /// `tcp://host:port` or `ws://host:port/ws`; in TLS `tls://host:port`
    /// or `wss://host:port/ws`
    #[arg(long)]
    pub url: String,
    /// For tls:// and wss://: a PEM file of the CA certificates to trust
    /// (default: the system's).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A JWT accepted by the server.
    #[arg(long)]
    pub token: String,
    /// Start after this commit LSN (`X/Y` or a decimal number; 0: from the
    /// server's current head).
    #[arg(long, default_value = "0", value_parser = parse_lsn_arg)]
    pub from_lsn: u64,
    /// Only these tables (`schema.table` or `table`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Start with a snapshot of every readable row (protocol 1.1).
    #[arg(long)]
    pub snapshot: bool,
}

fn parse_lsn_arg(s: &str) -> Result<u64, String> {
    crate::cli::parse_lsn(s).map(|l| l.0)
}

struct RowJson<'a>(&'a RowValues);

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (name, v) in self.0 {
            match v {
                Value::Text(t) => m.serialize_entry(&**name, t)?,
                Value::Null => m.serialize_entry(&**name, &None::<&str>)?,
                Value::Unchanged => {}
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    op: &'static str,
    schema: &'a str,
    table: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<RowJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<RowJson<'a>>,
}

#[derive(Serialize)]
struct TxnJson<'a> {
    lsn: u64,
    xid: u32,
    commit_time: i64,
    changes: Vec<ChangeJson<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OtherJson<'a> {
    Snapshot {
        schema: &'a str,
        table: &'a str,
        row: RowJson<'a>,
    },
    SnapshotEnd {
        lsn: u64,
        rows: u64,
        view_id: &'a str,
    },
    SnapshotRestart,
    Resync {
        reason: &'a str,
    },
}

fn to_line<T: Serialize>(v: &T) -> String {
    // Serializing strings, numbers and maps with string keys cannot fail.
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

/// The JSON line of a transaction.
pub fn transaction_line(t: &Transaction) -> String {
    to_line(&TxnJson {
        lsn: t.lsn,
        xid: t.xid,
        commit_time: t.commit_time,
        changes: t
            .changes
            .iter()
            .map(|c| ChangeJson {
                op: c.op.as_str(),
                schema: &c.schema,
                table: &c.table,
                row: c.row.as_ref().map(RowJson),
                old: c.old.as_ref().map(RowJson),
            })
            .collect(),
    })
}

/// The lines printed for an event.
pub fn event_lines(ev: &Event) -> Vec<String> {
    match ev {
        Event::Transaction(t) => vec![transaction_line(t)],
        Event::SnapshotRows {
            schema,
            table,
            rows,
        } => rows
            .iter()
            .map(|r| {
                to_line(&OtherJson::Snapshot {
                    schema,
                    table,
                    row: RowJson(r),
                })
            })
            .collect(),
        Event::SnapshotEnd { lsn, rows, view_id } => vec![to_line(&OtherJson::SnapshotEnd {
            lsn: *lsn,
            rows: *rows,
            view_id,
        })],
        Event::SnapshotRestart => vec![to_line(&OtherJson::SnapshotRestart)],
        Event::Resync { .. } => vec![to_line(&OtherJson::Resync {
            reason: ErrorCode::ResyncRequired.as_str_name(),
        })],
    }
}

fn print_lines(out: &mut impl Write, lines: &[String]) -> std::io::Result<()> {
    for l in lines {
        out.write_all(l.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn needs_resync(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::BehindWindow | ErrorCode::ResyncRequired)
    )
}

/// Runs `pgsat tail` until Ctrl-C or a final error.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut config = ClientConfig::with_token(args.url.clone(), args.token.clone());
    config.from_lsn = args.from_lsn;
    config.tables = args.tables.clone();
    config.snapshot = args.snapshot;
    config.tls_ca_file = args.ca_file.clone();
    let mut stdout = std::io::stdout();
    tokio::select! {
        r = tail_loop(config, args.snapshot, &mut stdout) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

pub(crate) async fn tail_loop(
    mut config: ClientConfig,
    resync_with_snapshot: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // RESYNC_REQUIRED is handled by the client (Event::Resync) when asked.
    config.resync_with_snapshot = resync_with_snapshot;
    loop {
        let err = match Client::connect(config.clone()).await {
            Err(e) => e,
            Ok(mut client) => loop {
                match client.next_event().await {
                    Ok(ev) => print_lines(out, &event_lines(&ev))?,
                    Err(e) => break e,
                }
            },
        };
        if resync_with_snapshot && needs_resync(&err) {
            let reason = err.code().map(|c| c.as_str_name()).unwrap_or("");
            print_lines(out, &[to_line(&OtherJson::Resync { reason })])?;
            tracing::warn!(error = %err, "starting over with a snapshot");
            config.from_lsn = 0;
            config.snapshot = true;
            config.view_id = None;
            continue;
        }
        return Err(anyhow::Error::new(err).context(format!("pgsat tail {}", config.url)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::event::{Change, Op};
    use std::sync::Arc;

    fn row(cols: &[(&str, Value)]) -> RowValues {
        cols.iter()
            .map(|(n, v)| (Arc::<str>::from(*n), v.clone()))
            .collect()
    }

    #[test]
    fn transaction_golden_lines() {
        let t = Transaction {
            lsn: 97_500_059_720,
            xid: 771,
            commit_time: 1_700_000_000_123_456,
            changes: vec![
                Change {
                    op: Op::Insert,
                    schema: "public".into(),
                    table: "todos".into(),
                    row: Some(row(&[
                        ("id", Value::Text("1".into())),
                        ("title", Value::Text("say \"hi\"\n\\ ünïcødé ✓ 🦀".into())),
                        ("done", Value::Null),
                    ])),
                    old: None,
                },
                Change {
                    op: Op::Update,
                    schema: "public".into(),
                    table: "todos".into(),
                    row: Some(row(&[
                        ("id", Value::Text("1".into())),
                        ("body", Value::Unchanged),
                        ("done", Value::Text("t".into())),
                    ])),
                    old: Some(row(&[("id", Value::Text("1".into()))])),
                },
                Change {
                    op: Op::Delete,
                    schema: "app".into(),
                    table: "Weird \"Name\"".into(),
                    row: None,
                    old: Some(row(&[("id", Value::Text("2".into()))])),
                },
                Change {
                    op: Op::Truncate,
                    schema: "public".into(),
                    table: "logs".into(),
                    row: None,
                    old: None,
                },
            ],
        };
        assert_eq!(
            transaction_line(&t),
            concat!(
                r#"{"lsn":97500059720,"xid":771,"commit_time":1700000000123456,"changes":["#,
                r#"{"op":"insert","schema":"public","table":"todos","row":{"id":"1","title":"say \"hi\"\n\\ ünïcødé ✓ 🦀","done":null}},"#,
                r#"{"op":"update","schema":"public","table":"todos","row":{"id":"1","done":"t"},"old":{"id":"1"}},"#,
                r#"{"op":"delete","schema":"app","table":"Weird \"Name\"","old":{"id":"2"}},"#,
                r#"{"op":"truncate","schema":"public","table":"logs"}"#,
                "]}"
            )
        );
        let empty = Transaction {
            lsn: 1,
            xid: 2,
            commit_time: -3,
            changes: vec![],
        };
        assert_eq!(
            transaction_line(&empty),
            r#"{"lsn":1,"xid":2,"commit_time":-3,"changes":[]}"#
        );
    }

    #[test]
    fn snapshot_golden_lines() {
        let ev = Event::SnapshotRows {
            schema: "public".into(),
            table: "t".into(),
            rows: vec![
                row(&[("a", Value::Text("x".into())), ("b", Value::Null)]),
                row(&[
                    ("a", Value::Text("€".into())),
                    ("b", Value::Text("".into())),
                ]),
            ],
        };
        assert_eq!(
            event_lines(&ev),
            vec![
                r#"{"op":"snapshot","schema":"public","table":"t","row":{"a":"x","b":null}}"#,
                r#"{"op":"snapshot","schema":"public","table":"t","row":{"a":"€","b":""}}"#,
            ]
        );
        assert_eq!(
            event_lines(&Event::SnapshotEnd {
                lsn: 5,
                rows: 2,
                view_id: "v1".into()
            }),
            vec![r#"{"op":"snapshot_end","lsn":5,"rows":2,"view_id":"v1"}"#]
        );
        assert_eq!(
            event_lines(&Event::SnapshotRestart),
            vec![r#"{"op":"snapshot_restart"}"#]
        );
        assert_eq!(
            to_line(&OtherJson::Resync {
                reason: "BEHIND_WINDOW"
            }),
            r#"{"op":"resync","reason":"BEHIND_WINDOW"}"#
        );
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tail: TailArgs,
        }
        let c = Cli::try_parse_from([
            "tail",
            "--url",
            "tcp://h:1",
            "--token",
            "t",
            "--from-lsn",
            "42",
            "--tables",
            "a,public.b",
            "--snapshot",
        ])
        .unwrap();
        assert_eq!(c.tail.from_lsn, 42);
        assert_eq!(c.tail.tables, vec!["a", "public.b"]);
        assert!(c.tail.snapshot);
        let c = Cli::try_parse_from(["tail", "--url", "ws://h:1/ws", "--token", "t"]).unwrap();
        assert_eq!(c.tail.from_lsn, 0);
        assert!(c.tail.tables.is_empty());
        assert!(Cli::try_parse_from(["tail", "--url", "x"]).is_err());
    }
}
