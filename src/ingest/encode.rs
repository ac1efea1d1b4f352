//! Hand-written protobuf encoding of `TransOp`s straight into a
//! transaction's frame buffer, split into OpLog frames.
//!
//! Invariant: the bytes written are exactly what prost would encode for the
//! same messages (fields in tag order, proto3 defaults omitted), and every
//! OpLog frame body stays ≤ [`MAX_FRAME_BODY`] unless one op alone is larger.
//!
//! An OpLog body is the concatenation of `field 1, length-delimited` TransOp
//! encodings, so ops are written one after the other, each encoded once,
//! with no intermediate `pb::TransOp` values. Sizes are computed first
//! (pass 1), then the bytes are written (pass 2).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::pg::pgoutput::{CellRef, Tuple};

/// Frame type byte of `Relation`.
pub const RELATION_FRAME_TYPE: u8 = 9;
/// Frame type byte of `OpLog`.
pub const OPLOG_FRAME_TYPE: u8 = 10;
/// Largest OpLog frame body the assembler builds (a single op larger than
/// this gets a frame of its own).
pub const MAX_FRAME_BODY: usize = 256 * 1024;

/// `u32` length + type byte.
const HDR: usize = 5;
/// Largest encoding of a Begin op inside an OpLog: OpLog key+len (2) +
/// TransOp key+len (2) + xid (1+5) + commit_lsn (1+10) + commit_time (1+10).
const BEGIN_ENTRY_MAX: usize = 2 + 2 + 6 + 11 + 11;
/// Largest Commit op: 2 + 2 + lsn (1+10) + commit_time (1+10).
const COMMIT_ENTRY_MAX: usize = 2 + 2 + 11 + 11;
/// Budget for the ops between Begin and Commit in one frame.
const MAX_OPS_PER_FRAME: usize = MAX_FRAME_BODY - BEGIN_ENTRY_MAX - COMMIT_ENTRY_MAX;
/// Room kept at the front of the buffer for the first frame's header and the
/// Begin op, which is only known at Commit (it carries the end LSN).
const FIRST_PREFIX: usize = HDR + BEGIN_ENTRY_MAX;
/// Memory a finished transaction may hold beyond a quarter of its length
/// (see [`FrameBuf::finish`]).
pub(crate) const SLACK: usize = 64;

// Keys (field << 3 | wire type); every field number here is < 16.
const LEN1: u8 = 0x0A;
const LEN2: u8 = 0x12;
const LEN3: u8 = 0x1A;
const VAR1: u8 = 0x08;
const VAR2: u8 = 0x10;
const VAR3: u8 = 0x18;
/// TransOp oneof keys.
pub(crate) const OP_INSERT: u8 = 0x1A;
pub(crate) const OP_UPDATE: u8 = 0x22;
pub(crate) const OP_DELETE: u8 = 0x2A;
pub(crate) const OP_TRUNCATE: u8 = 0x32;
const OP_BEGIN: u8 = 0x0A;
const OP_COMMIT: u8 = 0x12;

#[inline]
fn vlen(v: usize) -> usize {
    encoded_len_varint(v as u64)
}

/// Size of a length-delimited field holding `n` bytes (always present).
#[inline]
fn field(n: usize) -> usize {
    1 + vlen(n) + n
}

/// Size of a proto3 singular `bytes` field (omitted when empty).
#[inline]
fn opt_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        field(n)
    }
}

/// Size of a proto3 `uint32`/`uint64`/`int64` field (omitted when 0).
#[inline]
fn opt_varint(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

#[inline]
fn put_len(buf: &mut BytesMut, key: u8, n: usize) {
    buf.put_u8(key);
    encode_varint(n as u64, buf);
}

#[inline]
fn put_opt_varint(buf: &mut BytesMut, key: u8, v: u64) {
    if v != 0 {
        buf.put_u8(key);
        encode_varint(v, buf);
    }
}

/// A value that goes on the wire for one column.
#[derive(Clone, Copy)]
enum Val<'a> {
    Null,
    Unchanged,
    Text(&'a [u8]),
}

/// The binary-format value found in a row (pgsat requires text).
#[derive(Debug)]
pub(crate) struct BinaryCell {
    pub column: usize,
}

/// Unchanged TOAST is taken from the old full row when it has the value.
#[inline]
fn resolve<'a>(new: CellRef<'a>, fill: Option<CellRef<'a>>) -> Val<'a> {
    match new {
        CellRef::Text(v) | CellRef::Binary(v) => Val::Text(v),
        CellRef::Null => Val::Null,
        CellRef::Unchanged => match fill {
            Some(CellRef::Text(v)) => Val::Text(v),
            _ => Val::Unchanged,
        },
    }
}

/// Bitmaps of one planned row, reused from row to row.
#[derive(Default)]
pub(crate) struct RowPlan {
    nulls: Vec<u8>,
    unchanged: Vec<u8>,
    /// Encoded length of the `Row` message body.
    pub len: usize,
}

impl RowPlan {
    /// Pass 1: bitmaps and encoded length of `tuple` as a `Row`, with
    /// unchanged-TOAST cells filled from `fill` (the old full row) when it
    /// has them. `nulls` always has ⌈n/8⌉ bytes; `unchanged` is empty unless
    /// a bit is set.
    pub(crate) fn plan(&mut self, tuple: &Tuple, fill: Option<&Tuple>) -> Result<(), BinaryCell> {
        let nb = tuple.len().div_ceil(8);
        self.nulls.clear();
        self.nulls.resize(nb, 0);
        self.unchanged.clear();
        self.unchanged.resize(nb, 0);
        let mut any_unchanged = false;
        let mut values = 0usize;
        let mut fill_it = fill.map(Tuple::iter);
        for (i, cell) in tuple.iter().enumerate() {
            let f = fill_it.as_mut().and_then(Iterator::next);
            if let CellRef::Binary(_) = cell {
                return Err(BinaryCell { column: i });
            }
            let bit = 0x80u8 >> (i & 7);
            match resolve(cell, f) {
                Val::Text(v) => values += field(v.len()),
                Val::Null => {
                    self.nulls[i >> 3] |= bit;
                    values += 2;
                }
                Val::Unchanged => {
                    self.unchanged[i >> 3] |= bit;
                    any_unchanged = true;
                    values += 2;
                }
            }
        }
        if !any_unchanged {
            self.unchanged.clear();
        }
        self.len = opt_bytes(self.nulls.len()) + values + opt_bytes(self.unchanged.len());
        Ok(())
    }

    /// Pass 2: writes the `Row` body planned by [`RowPlan::plan`] with the
    /// same arguments.
    pub(crate) fn write(&self, buf: &mut BytesMut, tuple: &Tuple, fill: Option<&Tuple>) {
        if !self.nulls.is_empty() {
            put_len(buf, LEN1, self.nulls.len());
            buf.put_slice(&self.nulls);
        }
        let mut fill_it = fill.map(Tuple::iter);
        for cell in tuple.iter() {
            let f = fill_it.as_mut().and_then(Iterator::next);
            match resolve(cell, f) {
                Val::Text(v) => {
                    put_len(buf, LEN2, v.len());
                    buf.put_slice(v);
                }
                Val::Null | Val::Unchanged => buf.put_slice(&[LEN2, 0]),
            }
        }
        if !self.unchanged.is_empty() {
            put_len(buf, LEN3, self.unchanged.len());
            buf.put_slice(&self.unchanged);
        }
    }
}

/// Sizes of one row-change op: (`op` body length, OpLog entry length).
/// `first`/`second` are the planned `Row` lengths (second: Update's
/// `old_row`). Insert: (row). Update: (row, old_row?). Delete: (old_row).
pub(crate) fn row_op_sizes(
    relation_id: u32,
    first: usize,
    second: Option<usize>,
) -> (usize, usize) {
    let body = opt_varint(relation_id.into()) + field(first) + second.map_or(0, field);
    let transop = field(body);
    (body, field(transop))
}

/// Writes the OpLog entry header of a row-change op and its relation id;
/// the caller then writes its rows with [`put_row_header`] + [`RowPlan::write`].
pub(crate) fn put_row_op_header(buf: &mut BytesMut, op_key: u8, relation_id: u32, body: usize) {
    put_len(buf, LEN1, field(body));
    put_len(buf, op_key, body);
    put_opt_varint(buf, VAR1, relation_id.into());
}

/// Row field `n` (2 = `row`/Delete `old_row`, 3 = Update `old_row`).
pub(crate) fn put_row_header(buf: &mut BytesMut, field_no: u8, len: usize) {
    put_len(buf, (field_no << 3) | 2, len);
}

/// Sizes of a Truncate op: (packed ids length, Truncate body, entry).
pub(crate) fn truncate_sizes(ids: &[u32]) -> (usize, usize, usize) {
    let packed: usize = ids.iter().map(|&i| encoded_len_varint(i.into())).sum();
    let body = opt_bytes(packed);
    (packed, body, field(field(body)))
}

pub(crate) fn put_truncate(buf: &mut BytesMut, ids: &[u32], packed: usize, body: usize) {
    put_len(buf, LEN1, field(body));
    put_len(buf, OP_TRUNCATE, body);
    if packed > 0 {
        put_len(buf, LEN1, packed);
        for &i in ids {
            encode_varint(i.into(), buf);
        }
    }
}

fn begin_entry(out: &mut BytesMut, xid: u32, commit_lsn: u64, commit_time: i64) {
    let body = opt_varint(xid.into()) + opt_varint(commit_lsn) + opt_varint(commit_time as u64);
    put_len(out, LEN1, field(body));
    put_len(out, OP_BEGIN, body);
    put_opt_varint(out, VAR1, xid.into());
    put_opt_varint(out, VAR2, commit_lsn);
    put_opt_varint(out, VAR3, commit_time as u64);
}

fn commit_entry(out: &mut BytesMut, lsn: u64, commit_time: i64) {
    let body = opt_varint(lsn) + opt_varint(commit_time as u64);
    put_len(out, LEN1, field(body));
    put_len(out, OP_COMMIT, body);
    put_opt_varint(out, VAR1, lsn);
    put_opt_varint(out, VAR2, commit_time as u64);
}

/// A transaction's OpLog frames being written.
///
/// Layout: `[room for header + Begin][ops of frame 1][hdr][ops of frame 2]…`;
/// frame headers after the first are patched when their frame closes; the
/// first frame's header and Begin are written right-aligned into the room
/// at [`FrameBuf::finish`], and the unused front is skipped (no copy).
pub(crate) struct FrameBuf {
    buf: BytesMut,
    /// Header offset of the open frame; `None` while it is the first.
    hdr: Option<usize>,
    /// Op bytes in the open frame.
    frame_ops: usize,
    /// Op bytes of the first frame once it is closed.
    first_ops: usize,
    /// Where the op being written must end (checked in debug builds).
    expect_end: usize,
}

impl FrameBuf {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        let mut buf = BytesMut::with_capacity(cap.max(FIRST_PREFIX + 64));
        buf.put_bytes(0, FIRST_PREFIX);
        FrameBuf {
            buf,
            hdr: None,
            frame_ops: 0,
            first_ops: 0,
            expect_end: FIRST_PREFIX,
        }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    fn close_frame(&mut self) {
        match self.hdr {
            Some(h) => {
                // Fits: one pgoutput message is < 1 GiB (Postgres'
                // MaxAllocSize), and a frame holds ≤ 256 KiB or one op.
                let len = (1 + self.frame_ops) as u32;
                self.buf[h..h + 4].copy_from_slice(&len.to_be_bytes());
            }
            None => self.first_ops = self.frame_ops,
        }
    }

    /// Starts an op of `entry` bytes (a new frame first when it would
    /// overflow the open one) and returns the buffer to write exactly that
    /// many bytes into.
    pub(crate) fn op(&mut self, entry: usize) -> &mut BytesMut {
        debug_assert_eq!(self.buf.len(), self.expect_end, "previous op size mismatch");
        if self.frame_ops > 0 && self.frame_ops + entry > MAX_OPS_PER_FRAME {
            self.close_frame();
            self.hdr = Some(self.buf.len());
            self.buf.put_slice(&[0, 0, 0, 0, OPLOG_FRAME_TYPE]);
            self.frame_ops = 0;
        }
        self.frame_ops += entry;
        self.buf.reserve(entry);
        self.expect_end = self.buf.len() + entry;
        &mut self.buf
    }

    /// Appends Commit, writes the first frame's header and Begin, and returns
    /// the frames.
    pub(crate) fn finish(mut self, xid: u32, commit_lsn: u64, commit_time: i64) -> Bytes {
        debug_assert_eq!(self.buf.len(), self.expect_end, "last op size mismatch");
        // Commit never opens a frame of its own: its room is kept in
        // MAX_OPS_PER_FRAME.
        let before = self.buf.len();
        commit_entry(&mut self.buf, commit_lsn, commit_time);
        self.frame_ops += self.buf.len() - before;
        self.close_frame();

        let mut head = BytesMut::with_capacity(FIRST_PREFIX);
        head.put_bytes(0, HDR);
        begin_entry(&mut head, xid, commit_lsn, commit_time);
        let len = (head.len() - HDR + 1 + self.first_ops) as u32;
        head[..4].copy_from_slice(&len.to_be_bytes());
        head[4] = OPLOG_FRAME_TYPE;
        let start = FIRST_PREFIX - head.len();
        self.buf[start..FIRST_PREFIX].copy_from_slice(&head);
        let allocated = self.buf.capacity();
        self.buf.advance(start);
        let len = self.buf.len();
        // The log's cache holds these bytes for as long as CACHE_MAX_BYTES
        // allows and counts them at their length (`TxnEntry::size`): keep
        // the memory behind them within a quarter of that (the skipped
        // front included), or a cache of small transactions would hold
        // several times its limit. The copy is of a transaction that came
        // out much smaller than the running average predicted.
        if allocated - len > len / 4 + SLACK {
            Bytes::copy_from_slice(&self.buf)
        } else {
            self.buf.freeze()
        }
    }
}

/// A complete TCP frame: `u32` length (type byte + body) + type + body.
pub(crate) fn frame(ty: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HDR + body.len());
    b.put_u32((body.len() + 1) as u32);
    b.put_u8(ty);
    b.put_slice(body);
    b.freeze()
}
