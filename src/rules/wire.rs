//! Reading a stored transaction's OpLog frames op by op (without decoding
//! into messages), and writing filtered transactions from those op bytes.
//!
//! A stored transaction is one or more TCP frames `u32 len, 10, OpLog`; an
//! OpLog body is the concatenation of `0x0A len TransOp` entries; a TransOp
//! is one oneof field. Invariant: a kept op is copied byte for byte; only
//! Begin/Commit, an Update turned into Insert/Delete, and a Truncate with
//! fewer ids are written anew, exactly as prost would encode them.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use crate::ingest::{MAX_FRAME_BODY, OPLOG_FRAME_TYPE};

/// The op kinds of a TransOp (its oneof field number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Begin,
    Commit,
    Insert,
    Update,
    Delete,
    Truncate,
}

/// One column of a stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// Unchanged TOAST value (not sent by Postgres).
    Unchanged,
    /// Text value: a range of the transaction's frame bytes.
    Text(Range<usize>),
}

/// A stored row: its `Row` message bytes and its cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRef {
    pub bytes: Range<usize>,
    pub cells: Vec<Cell>,
}

/// One op of a stored transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRef {
    pub kind: OpKind,
    /// The whole OpLog entry (`0x0A len TransOp`).
    pub entry: Range<usize>,
    pub relation_id: u32,
    /// Insert/Update: the new row; Delete: the old row.
    pub row: Option<RowRef>,
    /// Update: the old row, when Postgres sent one.
    pub old_row: Option<RowRef>,
    pub truncate_ids: Vec<u32>,
}

/// A stored transaction split into ops.
#[derive(Clone, Debug)]
pub struct ParsedTxn {
    pub frames: Bytes,
    pub xid: u32,
    pub commit_time: i64,
    pub commit_lsn: u64,
    /// Row changes and truncates, in order (Begin and Commit left out).
    pub ops: Vec<OpRef>,
}

#[derive(Debug, thiserror::Error)]
#[error("stored transaction is malformed: {0}")]
pub struct WireError(pub &'static str);

struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Rd<'a> {
    fn new(buf: &'a [u8], r: Range<usize>) -> Self {
        Rd {
            buf,
            pos: r.start,
            end: r.end,
        }
    }
    fn done(&self) -> bool {
        self.pos >= self.end
    }
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut s = self
            .buf
            .get(self.pos..self.end)
            .ok_or(WireError("out of bounds"))?;
        let before = s.len();
        let v = decode_varint(&mut s).map_err(|_| WireError("bad varint"))?;
        self.pos += before - s.len();
        Ok(v)
    }
    /// A length-delimited field's contents.
    fn len_delim(&mut self) -> Result<Range<usize>, WireError> {
        let n = self.varint()? as usize;
        let start = self.pos;
        let end = start.checked_add(n).ok_or(WireError("length overflow"))?;
        if end > self.end {
            return Err(WireError("field past its end"));
        }
        self.pos = end;
        Ok(start..end)
    }
    /// (field number, wire type).
    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }
    fn skip(&mut self, wt: u8) -> Result<(), WireError> {
        match wt {
            0 => {
                self.varint()?;
            }
            2 => {
                self.len_delim()?;
            }
            1 => self.pos += 8,
            5 => self.pos += 4,
            _ => return Err(WireError("unknown wire type")),
        }
        if self.pos > self.end {
            return Err(WireError("field past its end"));
        }
        Ok(())
    }
}

fn parse_row(buf: &[u8], r: Range<usize>) -> Result<RowRef, WireError> {
    let mut rd = Rd::new(buf, r.clone());
    let mut nulls = 0..0;
    let mut unchanged = 0..0;
    let mut values = Vec::new();
    while !rd.done() {
        match rd.key()? {
            (1, 2) => nulls = rd.len_delim()?,
            (2, 2) => values.push(rd.len_delim()?),
            (3, 2) => unchanged = rd.len_delim()?,
            (_, wt) => rd.skip(wt)?,
        }
    }
    let bit = |bm: &Range<usize>, i: usize| {
        buf.get(bm.clone())
            .and_then(|b| b.get(i / 8))
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    };
    let cells = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if bit(&nulls, i) {
                Cell::Null
            } else if bit(&unchanged, i) {
                Cell::Unchanged
            } else {
                Cell::Text(v)
            }
        })
        .collect();
    Ok(RowRef { bytes: r, cells })
}

/// Splits a stored transaction into its ops.
pub fn parse_txn(frames: &Bytes) -> Result<ParsedTxn, WireError> {
    let buf: &[u8] = frames;
    let mut out = ParsedTxn {
        frames: frames.clone(),
        xid: 0,
        commit_time: 0,
        commit_lsn: 0,
        ops: Vec::new(),
    };
    let mut pos = 0usize;
    while pos < buf.len() {
        let hdr = buf.get(pos..pos + 5).ok_or(WireError("truncated frame"))?;
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if hdr[4] != OPLOG_FRAME_TYPE || len == 0 {
            return Err(WireError("not an OpLog frame"));
        }
        let end = pos + 4 + len;
        if end > buf.len() {
            return Err(WireError("frame past the end"));
        }
        let mut rd = Rd::new(buf, pos + 5..end);
        while !rd.done() {
            let entry_start = rd.pos;
            let (f, wt) = rd.key()?;
            if (f, wt) != (1, 2) {
                rd.skip(wt)?;
                continue;
            }
            let transop = rd.len_delim()?;
            let entry = entry_start..rd.pos;
            let mut t = Rd::new(buf, transop);
            let (field, wt) = t.key()?;
            if wt != 2 {
                return Err(WireError("TransOp field is not a message"));
            }
            let body = t.len_delim()?;
            let mut b = Rd::new(buf, body);
            let kind = match field {
                1 => OpKind::Begin,
                2 => OpKind::Commit,
                3 => OpKind::Insert,
                4 => OpKind::Update,
                5 => OpKind::Delete,
                6 => OpKind::Truncate,
                _ => return Err(WireError("unknown TransOp")),
            };
            let mut op = OpRef {
                kind,
                entry,
                relation_id: 0,
                row: None,
                old_row: None,
                truncate_ids: Vec::new(),
            };
            while !b.done() {
                let (n, wt) = b.key()?;
                match (kind, n, wt) {
                    (OpKind::Begin, 1, 0) => out.xid = b.varint()? as u32,
                    (OpKind::Begin, 3, 0) => out.commit_time = b.varint()? as i64,
                    (OpKind::Commit, 1, 0) => out.commit_lsn = b.varint()?,
                    (OpKind::Insert | OpKind::Update | OpKind::Delete, 1, 0) => {
                        op.relation_id = b.varint()? as u32
                    }
                    (OpKind::Insert | OpKind::Update | OpKind::Delete, 2, 2) => {
                        op.row = Some(parse_row(buf, b.len_delim()?)?)
                    }
                    (OpKind::Update, 3, 2) => op.old_row = Some(parse_row(buf, b.len_delim()?)?),
                    (OpKind::Truncate, 1, 2) => {
                        let mut ids = Rd::new(buf, b.len_delim()?);
                        while !ids.done() {
                            op.truncate_ids.push(ids.varint()? as u32);
                        }
                    }
                    (OpKind::Truncate, 1, 0) => op.truncate_ids.push(b.varint()? as u32),
                    (_, _, wt) => b.skip(wt)?,
                }
            }
            if !matches!(kind, OpKind::Begin | OpKind::Commit) {
                out.ops.push(op);
            }
        }
        pos = end;
    }
    Ok(out)
}

/// One op of a filtered transaction: stored bytes or newly written.
pub enum OutOp {
    Stored(Range<usize>),
    New(Bytes),
}

fn field_len(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

fn opt_varint_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

fn put_opt_varint(b: &mut BytesMut, key: u8, v: u64) {
    if v != 0 {
        b.put_u8(key);
        encode_varint(v, b);
    }
}

fn put_len(b: &mut BytesMut, key: u8, n: usize) {
    b.put_u8(key);
    encode_varint(n as u64, b);
}

/// An Insert (`op_key` 0x1A) or Delete (0x2A) entry of `row_bytes`.
pub fn row_op(op_key: u8, relation_id: u32, row_bytes: &[u8]) -> Bytes {
    let body = opt_varint_len(relation_id.into()) + field_len(row_bytes.len());
    let transop = field_len(body);
    let mut b = BytesMut::with_capacity(field_len(transop));
    put_len(&mut b, 0x0A, transop);
    put_len(&mut b, op_key, body);
    put_opt_varint(&mut b, 0x08, relation_id.into());
    put_len(&mut b, 0x12, row_bytes.len());
    b.put_slice(row_bytes);
    b.freeze()
}

pub const INSERT_KEY: u8 = 0x1A;
pub const DELETE_KEY: u8 = 0x2A;

/// A Truncate entry of `ids`.
pub fn truncate_op(ids: &[u32]) -> Bytes {
    let packed: usize = ids.iter().map(|&i| encoded_len_varint(i.into())).sum();
    let body = if packed == 0 { 0 } else { field_len(packed) };
    let mut b = BytesMut::with_capacity(field_len(field_len(body)));
    put_len(&mut b, 0x0A, field_len(body));
    put_len(&mut b, 0x32, body);
    if packed > 0 {
        put_len(&mut b, 0x0A, packed);
        for &i in ids {
            encode_varint(i.into(), &mut b);
        }
    }
    b.freeze()
}

fn begin_op(b: &mut BytesMut, xid: u32, lsn: u64, time: i64) {
    let body = opt_varint_len(xid.into()) + opt_varint_len(lsn) + opt_varint_len(time as u64);
    put_len(b, 0x0A, field_len(body));
    put_len(b, 0x0A, body);
    put_opt_varint(b, 0x08, xid.into());
    put_opt_varint(b, 0x10, lsn);
    put_opt_varint(b, 0x18, time as u64);
}

fn commit_op(b: &mut BytesMut, lsn: u64, time: i64) {
    let body = opt_varint_len(lsn) + opt_varint_len(time as u64);
    put_len(b, 0x0A, field_len(body));
    put_len(b, 0x12, body);
    put_opt_varint(b, 0x08, lsn);
    put_opt_varint(b, 0x10, time as u64);
}

/// Writes a whole transaction (Begin, `ops`, Commit) as OpLog frames of at
/// most [`MAX_FRAME_BODY`] body bytes (one op alone may be larger).
/// Returns (frames, number of frames).
pub fn assemble(p: &ParsedTxn, ops: &[OutOp]) -> (Bytes, usize) {
    let bytes_of = |o: &OutOp| -> usize {
        match o {
            OutOp::Stored(r) => r.len(),
            OutOp::New(b) => b.len(),
        }
    };
    let total: usize = ops.iter().map(bytes_of).sum();
    let mut out = BytesMut::with_capacity(total + 64 + 5 * (1 + total / MAX_FRAME_BODY));
    let mut begin = BytesMut::with_capacity(40);
    begin_op(&mut begin, p.xid, p.commit_lsn, p.commit_time);
    let mut commit = BytesMut::with_capacity(40);
    commit_op(&mut commit, p.commit_lsn, p.commit_time);
    let mut frames = 1usize;
    let mut hdr = out.len();
    out.put_slice(&[0, 0, 0, 0, OPLOG_FRAME_TYPE]);
    out.put_slice(&begin);
    let mut in_frame = begin.len();
    let budget = MAX_FRAME_BODY - commit.len();
    for o in ops {
        let n = bytes_of(o);
        if in_frame > 0 && in_frame + n > budget {
            let len = (1 + in_frame) as u32;
            out[hdr..hdr + 4].copy_from_slice(&len.to_be_bytes());
            hdr = out.len();
            out.put_slice(&[0, 0, 0, 0, OPLOG_FRAME_TYPE]);
            in_frame = 0;
            frames += 1;
        }
        match o {
            OutOp::Stored(r) => out.put_slice(&p.frames[r.clone()]),
            OutOp::New(b) => out.put_slice(b),
        }
        in_frame += n;
    }
    out.put_slice(&commit);
    in_frame += commit.len();
    let len = (1 + in_frame) as u32;
    out[hdr..hdr + 4].copy_from_slice(&len.to_be_bytes());
    (out.freeze(), frames)
}
