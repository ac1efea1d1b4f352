//! The logical replication stream (CopyBoth after `START_REPLICATION`).
//!
//! Invariant: [`StreamReader::recv`] is cancel-safe — bytes already read stay
//! buffered in the reader, so it can sit in a `tokio::select!` next to timers
//! and other work without losing or splitting a message; XLogData payloads
//! are zero-copy slices of the read buffer. Reading and writing are separate
//! halves ([`ReplicationStream::split`]) so a standby status update can be
//! sent while a read is pending elsewhere.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::pg::conn::{parse_error_response, Cursor, FrameReader, PgError, ReplicationConn};
use crate::pg::lsn::{Lsn, PG_EPOCH_OFFSET_MICROS};

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    /// WAL data: for `pgoutput`, exactly one pgoutput message in `data`.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        /// Server clock, µs since the Postgres epoch (2000-01-01).
        send_time: i64,
        data: Bytes,
    },
    /// Primary keepalive. When `reply_requested`, answer with
    /// [`StatusWriter::send_status`] at once (the walsender otherwise times
    /// out after `wal_sender_timeout`, and a fast shutdown waits for it).
    Keepalive {
        wal_end: u64,
        send_time: i64,
        reply_requested: bool,
    },
}

/// `'name'` → `"name"` with embedded double quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `text` → `'text'` with embedded single quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The `START_REPLICATION` command for a `pgoutput` slot (proto_version 1).
pub fn start_replication_command(slot: &str, start_lsn: u64, publication: &str) -> String {
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
        quote_ident(slot),
        Lsn(start_lsn),
        quote_literal(&quote_ident(publication))
    )
}

impl ReplicationConn {
    /// Starts logical replication from `slot` at `start_lsn` (0 = from the
    /// slot's confirmed flush position) with `pgoutput` protocol 1 for
    /// `publication`, and waits for the server's CopyBothResponse.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start_lsn: u64,
        publication: &str,
    ) -> Result<ReplicationStream, PgError> {
        for (what, v) in [("slot", slot), ("publication", publication)] {
            if v.is_empty() || v.contains('\0') {
                return Err(PgError::Config(format!("{what} name {v:?} is not valid")));
            }
        }
        let cmd = start_replication_command(slot, start_lsn, publication);
        frontend::query(&cmd, &mut self.wbuf).map_err(|e| PgError::Config(e.to_string()))?;
        self.flush().await?;
        let mut error = None;
        loop {
            let f = self.reader.next().await?;
            match f.tag {
                b'W' => break,
                b'E' => error = Some(parse_error_response(&f.body)),
                b'Z' => {
                    return Err(error.unwrap_or_else(|| {
                        PgError::protocol("START_REPLICATION ended without starting a stream")
                    }))
                }
                b'N' | b'S' => {}
                t => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} in answer to START_REPLICATION",
                        t as char
                    )))
                }
            }
        }
        let ReplicationConn { reader, writer, .. } = self;
        Ok(ReplicationStream {
            reader: StreamReader {
                frames: reader,
                finished: false,
            },
            writer: StatusWriter {
                writer,
                wbuf: BytesMut::with_capacity(64),
            },
        })
    }
}

/// A running replication stream (both halves).
pub struct ReplicationStream {
    reader: StreamReader,
    writer: StatusWriter,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("finished", &self.reader.finished)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// See [`StreamReader::recv`]. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ReplMessage>, PgError> {
        self.reader.recv().await
    }

    /// See [`StatusWriter::send_status`]. Not cancel-safe.
    pub async fn send_status(
        &mut self,
        written: u64,
        flushed: u64,
        applied: u64,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        self.writer
            .send_status(written, flushed, applied, reply_requested)
            .await
    }

    /// Separate halves, e.g. a reader task and a status task.
    pub fn split(self) -> (StreamReader, StatusWriter) {
        (self.reader, self.writer)
    }

    /// Rejoins halves from [`split`](Self::split).
    pub fn unsplit(reader: StreamReader, writer: StatusWriter) -> ReplicationStream {
        ReplicationStream { reader, writer }
    }

    /// Ends the stream politely: CopyDone, drain what the server still sends
    /// until it is ready (at most 10 s), then Terminate.
    pub async fn close(self) -> Result<(), PgError> {
        let ReplicationStream {
            mut reader,
            mut writer,
        } = self;
        frontend::copy_done(&mut writer.wbuf);
        writer.flush().await?;
        let drain = async {
            loop {
                let f = reader.frames.next().await?;
                match f.tag {
                    b'Z' => return Ok(()),
                    b'E' => return Err(parse_error_response(&f.body)),
                    _ => {}
                }
            }
        };
        let res = match tokio::time::timeout(std::time::Duration::from_secs(10), drain).await {
            Ok(Err(PgError::Closed)) => Ok(()),
            Ok(r) => r,
            Err(_) => Err(PgError::protocol(
                "the server did not end the stream within 10 s of CopyDone",
            )),
        };
        frontend::terminate(&mut writer.wbuf);
        let _ = writer.flush().await;
        let _ = writer.writer.shutdown().await;
        res
    }
}

/// The reading half of a replication stream.
pub struct StreamReader {
    frames: FrameReader,
    finished: bool,
}

impl StreamReader {
    /// The next stream message; `Ok(None)` once the server ended the stream
    /// (CopyDone). An ErrorResponse is `PgError::Server` with its SQLSTATE;
    /// a dropped connection is `PgError::Closed`. Notices are skipped.
    ///
    /// Cancel-safe: dropping the future loses no data.
    pub async fn recv(&mut self) -> Result<Option<ReplMessage>, PgError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let f = self.frames.next().await?;
            match f.tag {
                b'd' => return parse_copy_data(f.body).map(Some),
                // CopyDone; or, on a fast shutdown, the walsender ends with
                // CommandComplete (no CopyDone) once everything it sent was
                // confirmed, then closes.
                b'c' | b'C' | b'Z' => {
                    self.finished = true;
                    return Ok(None);
                }
                b'E' => return Err(parse_error_response(&f.body)),
                b'N' | b'S' => {}
                t => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} in the replication stream",
                        t as char
                    )))
                }
            }
        }
    }

    /// Whether the server ended the stream.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

fn parse_copy_data(body: Bytes) -> Result<ReplMessage, PgError> {
    let mut c = Cursor::new(&body, "replication CopyData");
    match c.u8()? {
        b'w' => {
            let wal_start = c.u64()?;
            let wal_end = c.u64()?;
            let send_time = c.i64()?;
            let data = body.slice(25..);
            Ok(ReplMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            })
        }
        b'k' => {
            let wal_end = c.u64()?;
            let send_time = c.i64()?;
            let reply_requested = c.u8()? != 0;
            Ok(ReplMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        t => Err(PgError::protocol(format!(
            "unknown replication message type {:?}",
            t as char
        ))),
    }
}

/// The writing half: standby status updates.
pub struct StatusWriter {
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    wbuf: BytesMut,
}

impl StatusWriter {
    /// Sends a Standby Status Update (`'r'`): WAL positions written, flushed
    /// (the slot's confirmed flush position follows this one) and applied,
    /// with the current time. `reply_requested` asks the server for an
    /// immediate keepalive. Not cancel-safe (a partial write would corrupt
    /// the stream): do not race it in a `select!`.
    pub async fn send_status(
        &mut self,
        written: u64,
        flushed: u64,
        applied: u64,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let mut msg = [0u8; 34];
        encode_status(
            &mut msg,
            written,
            flushed,
            applied,
            pg_now_micros(),
            reply_requested,
        );
        self.wbuf.put_u8(b'd');
        self.wbuf.put_u32(4 + msg.len() as u32);
        self.wbuf.put_slice(&msg);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        let res = async {
            self.writer.write_all(&self.wbuf).await?;
            self.writer.flush().await
        }
        .await;
        self.wbuf.clear();
        res.map_err(PgError::from)
    }
}

fn encode_status(
    out: &mut [u8; 34],
    written: u64,
    flushed: u64,
    applied: u64,
    now: i64,
    reply: bool,
) {
    out[0] = b'r';
    out[1..9].copy_from_slice(&written.to_be_bytes());
    out[9..17].copy_from_slice(&flushed.to_be_bytes());
    out[17..25].copy_from_slice(&applied.to_be_bytes());
    out[25..33].copy_from_slice(&now.to_be_bytes());
    out[33] = reply as u8;
}

/// Now, in µs since the Postgres epoch.
pub fn pg_now_micros() -> i64 {
    crate::clock::unix_micros() - PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_quoting() {
        assert_eq!(
            start_replication_command("pgsat", 0x16_B374_D848, "pub"),
            "START_REPLICATION SLOT \"pgsat\" LOGICAL 16/B374D848 \
             (proto_version '1', publication_names '\"pub\"')"
        );
        assert_eq!(
            start_replication_command("s", 0, "a'b\"c"),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 \
             (proto_version '1', publication_names '\"a''b\"\"c\"')"
        );
    }

    #[test]
    fn copy_data_parsing() {
        let mut b = vec![b'w'];
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&2u64.to_be_bytes());
        b.extend_from_slice(&3i64.to_be_bytes());
        b.extend_from_slice(b"Bxyz");
        let m = parse_copy_data(Bytes::from(b)).unwrap();
        assert_eq!(
            m,
            ReplMessage::XLogData {
                wal_start: 1,
                wal_end: 2,
                send_time: 3,
                data: Bytes::from_static(b"Bxyz")
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&(-1i64).to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k.clone())).unwrap(),
            ReplMessage::Keepalive {
                wal_end: 9,
                send_time: -1,
                reply_requested: true
            }
        );
        // Truncations and unknown types are errors, never panics.
        for n in 0..k.len() {
            assert!(parse_copy_data(Bytes::copy_from_slice(&k[..n])).is_err());
        }
        assert!(parse_copy_data(Bytes::from_static(b"w1234")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"?")).is_err());
    }

    #[test]
    fn status_encoding() {
        let mut out = [0u8; 34];
        encode_status(&mut out, 1, 2, 3, 4, true);
        assert_eq!(out[0], b'r');
        assert_eq!(&out[9..17], &2u64.to_be_bytes());
        assert_eq!(&out[25..33], &4i64.to_be_bytes());
        assert_eq!(out[33], 1);
        assert!(pg_now_micros() > 0);
    }
}
