//! `TupleData`: the column values of one row, as text, NULL or
//! unchanged-TOAST.
//!
//! Invariant: a [`Tuple`] is only built by [`Tuple::decode`], which has
//! walked and bounds-checked every cell, so iterating it never fails; values
//! are zero-copy slices of the message buffer.

use bytes::Bytes;

use super::reader::Reader;
use super::DecodeError;

/// One column value (owned, zero-copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// Unchanged TOASTed value ('u'): Postgres did not send it.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

/// One column value borrowed from its [`Tuple`] (the hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellRef<'a> {
    Null,
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// A validated `TupleData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    ncols: usize,
    /// The cells, from the first column's kind byte to the last value's end.
    raw: Bytes,
}

/// Kind of an old tuple in Update/Delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OldKind {
    /// 'K': replica identity key columns only (others NULL).
    Key,
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldKind,
    pub tuple: Tuple,
}

impl Tuple {
    /// Decodes `Int16 ncols` then the cells, checking every length.
    pub(crate) fn decode(buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.i16("tuple column count")?;
        // Each cell takes at least its kind byte.
        let ncols = r.count(n.into(), 1, "tuple column count")?;
        let start = r.pos();
        for _ in 0..ncols {
            match r.u8("cell kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = r.i32("value length")?;
                    let len = r.count(len.into(), 1, "value length")?;
                    r.take(len, "value")?;
                }
                other => {
                    return Err(r.invalid(format!("unknown tuple cell kind {:?}", other as char)))
                }
            }
        }
        Ok(Tuple {
            ncols,
            raw: buf.slice(start..r.pos()),
        })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.ncols
    }

    pub fn is_empty(&self) -> bool {
        self.ncols == 0
    }

    /// The cells in column order, borrowed.
    pub fn iter(&self) -> TupleIter<'_> {
        TupleIter {
            raw: &self.raw,
            pos: 0,
            left: self.ncols,
        }
    }

    /// The cells in column order, as zero-copy `Bytes`.
    pub fn cells(&self) -> Vec<Cell> {
        let base = self.raw.as_ptr() as usize;
        self.iter()
            .map(|c| match c {
                CellRef::Null => Cell::Null,
                CellRef::Unchanged => Cell::Unchanged,
                CellRef::Text(v) => Cell::Text(self.sub(base, v)),
                CellRef::Binary(v) => Cell::Binary(self.sub(base, v)),
            })
            .collect()
    }

    fn sub(&self, base: usize, v: &[u8]) -> Bytes {
        let start = v.as_ptr() as usize - base;
        self.raw.slice(start..start + v.len())
    }
}

/// Iterator over a [`Tuple`]'s cells. Stops early (never panics) should the
/// bytes be inconsistent, which [`Tuple::decode`] rules out.
pub struct TupleIter<'a> {
    raw: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = CellRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<CellRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let kind = *self.raw.get(self.pos)?;
        self.pos += 1;
        match kind {
            b'n' => Some(CellRef::Null),
            b'u' => Some(CellRef::Unchanged),
            _ => {
                let len: [u8; 4] = self.raw.get(self.pos..self.pos + 4)?.try_into().ok()?;
                let len = u32::from_be_bytes(len) as usize;
                let start = self.pos + 4;
                let v = self.raw.get(start..start.checked_add(len)?)?;
                self.pos = start + len;
                Some(if kind == b't' {
                    CellRef::Text(v)
                } else {
                    CellRef::Binary(v)
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

impl OldTuple {
    /// Reads the kind byte already consumed by the caller plus the tuple.
    pub(crate) fn decode(kind: u8, buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = match kind {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            other => {
                return Err(r.invalid(format!(
                    "expected old tuple 'K' or 'O', got {:?}",
                    other as char
                )))
            }
        };
        Ok(OldTuple {
            kind,
            tuple: Tuple::decode(buf, r)?,
        })
    }
}
