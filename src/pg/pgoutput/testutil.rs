//! Hand-built pgoutput messages for tests (the wire format, written out
//! byte by byte).

use bytes::{BufMut, Bytes, BytesMut};

/// A cell to encode.
#[derive(Clone, Copy, Debug)]
pub(crate) enum C<'a> {
    N,
    U,
    T(&'a str),
    B(&'a [u8]),
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

pub(crate) fn tuple(b: &mut BytesMut, cells: &[C<'_>]) {
    b.put_i16(cells.len() as i16);
    for c in cells {
        match c {
            C::N => b.put_u8(b'n'),
            C::U => b.put_u8(b'u'),
            C::T(s) => {
                b.put_u8(b't');
                b.put_i32(s.len() as i32);
                b.put_slice(s.as_bytes());
            }
            C::B(v) => {
                b.put_u8(b'b');
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
}

pub(crate) fn begin(final_lsn: u64, ts: i64, xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(final_lsn);
    b.put_i64(ts);
    b.put_u32(xid);
    b.freeze()
}

pub(crate) fn commit(commit_lsn: u64, end_lsn: u64, ts: i64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(commit_lsn);
    b.put_u64(end_lsn);
    b.put_i64(ts);
    b.freeze()
}

pub(crate) fn origin(lsn: u64, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'O');
    b.put_u64(lsn);
    cstr(&mut b, name);
    b.freeze()
}

pub(crate) fn type_msg(oid: u32, ns: &str, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'Y');
    b.put_u32(oid);
    cstr(&mut b, ns);
    cstr(&mut b, name);
    b.freeze()
}

/// Columns: (key flag, name, type oid, typmod).
pub(crate) fn relation(
    id: u32,
    ns: &str,
    name: &str,
    ident: u8,
    cols: &[(bool, &str, u32, i32)],
) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(id);
    cstr(&mut b, ns);
    cstr(&mut b, name);
    b.put_u8(ident);
    b.put_i16(cols.len() as i16);
    for (key, n, oid, typmod) in cols {
        b.put_u8(u8::from(*key));
        cstr(&mut b, n);
        b.put_u32(*oid);
        b.put_i32(*typmod);
    }
    b.freeze()
}

pub(crate) fn insert(rel: u32, new: &[C<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(rel);
    b.put_u8(b'N');
    tuple(&mut b, new);
    b.freeze()
}

/// `old`: (b'K' or b'O', cells).
pub(crate) fn update(rel: u32, old: Option<(u8, &[C<'_>])>, new: &[C<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'U');
    b.put_u32(rel);
    if let Some((kind, cells)) = old {
        b.put_u8(kind);
        tuple(&mut b, cells);
    }
    b.put_u8(b'N');
    tuple(&mut b, new);
    b.freeze()
}

pub(crate) fn delete(rel: u32, kind: u8, old: &[C<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_u32(rel);
    b.put_u8(kind);
    tuple(&mut b, old);
    b.freeze()
}

pub(crate) fn truncate(options: u8, ids: &[u32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_i32(ids.len() as i32);
    b.put_u8(options);
    for id in ids {
        b.put_u32(*id);
    }
    b.freeze()
}

pub(crate) fn message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'M');
    b.put_u8(u8::from(transactional));
    b.put_u64(lsn);
    cstr(&mut b, prefix);
    b.put_i32(content.len() as i32);
    b.put_slice(content);
    b.freeze()
}
