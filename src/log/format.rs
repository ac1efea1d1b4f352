//! On-disk format of the log: segment headers and records, with checksums.
//!
//! Invariant: every byte the log reads back from disk is checked (magic,
//! version, lengths against the file's extent, CRC32) before it is trusted;
//! a malformed input is a [`FormatError`], never a panic or an allocation
//! sized by an unchecked length.
//!
//! All integers are little-endian.
//!
//! Segment file `{seq:020}.seg`:
//! ```text
//! magic "PGSATSEG" (8) | version u32 (=1) | body_len u32 | body_crc u32 | body
//! body: seq u64 | first_index u64 | first_offset u64 | prev_lsn u64
//!       | system_id str | timeline u32 | database str | slot str
//!       | n_relations u32 | n × (relation_id u32 | frame bytes)
//!   (str/bytes = u32 length + bytes)
//! then records until the end of the file:
//! len u32 (payload length) | crc u32 (CRC32 of kind + payload) | kind u8 | payload
//!   kind 1 relation: relation_id u32 | frame
//!   kind 2 txn:      commit_lsn u64 | xid u32 | commit_time i64 | changes u32
//!                    | n_rel u32 | n_rel × relation_id u32 | frames
//! ```
//! `first_index` is the log-wide index of the segment's first record (every
//! record, relation or txn, takes one index), `first_offset` the logical byte
//! offset (sum of `TxnEntry::size()`) before it, `prev_lsn` the commit LSN of
//! the last transaction before it. The relation list is the definition of
//! every relation in force at the segment's start, so a segment is readable
//! on its own even after every older one was deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::record::{Entry, RelationEntry, TxnEntry};
use super::LogIdentity;

pub const SEG_MAGIC: [u8; 8] = *b"PGSATSEG";
pub const FORMAT_VERSION: u32 = 1;
/// Fixed prefix of a segment header before its body.
pub const SEG_PREFIX_LEN: usize = 8 + 4 + 4 + 4;
/// Upper bound of a segment header body (relation snapshot included).
pub const MAX_HEADER_BODY: u32 = 256 << 20;
/// `len u32 | crc u32 | kind u8`.
pub const RECORD_HEADER_LEN: usize = 9;
/// Largest record payload accepted (one transaction of up to ~1 GiB).
pub const MAX_RECORD_LEN: u64 = 1 << 30;
pub const KIND_RELATION: u8 = 1;
pub const KIND_TXN: u8 = 2;
/// Fixed part of a txn payload before the relation ids.
pub const TXN_FIXED_LEN: usize = 8 + 4 + 8 + 4 + 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("truncated ({0})")]
    Truncated(&'static str),
    #[error("bad magic (not a pgsat log segment)")]
    BadMagic,
    #[error("unsupported format version {0} (this pgsat reads version {FORMAT_VERSION})")]
    BadVersion(u32),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("length {0} out of bounds")]
    BadLength(u64),
    #[error("invalid text: {0}")]
    BadText(&'static str),
}

/// Header of one segment file.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
    pub first_offset: u64,
    pub prev_lsn: u64,
    pub identity: LogIdentity,
    /// Relations in force at the segment's start, by id.
    pub relations: BTreeMap<u32, Arc<RelationEntry>>,
}

pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// `Some(seq)` when `name` is a segment file name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub fn encode_header(h: &SegmentHeader) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&h.seq.to_le_bytes());
    body.extend_from_slice(&h.first_index.to_le_bytes());
    body.extend_from_slice(&h.first_offset.to_le_bytes());
    body.extend_from_slice(&h.prev_lsn.to_le_bytes());
    put_bytes(&mut body, h.identity.system_id.as_bytes());
    body.extend_from_slice(&h.identity.timeline.to_le_bytes());
    put_bytes(&mut body, h.identity.database.as_bytes());
    put_bytes(&mut body, h.identity.slot.as_bytes());
    body.extend_from_slice(&(h.relations.len() as u32).to_le_bytes());
    for (id, rel) in &h.relations {
        body.extend_from_slice(&id.to_le_bytes());
        put_bytes(&mut body, &rel.frame);
    }
    let mut out = Vec::with_capacity(SEG_PREFIX_LEN + body.len());
    out.extend_from_slice(&SEG_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses the fixed prefix; returns `(body_len, body_crc)`.
pub fn decode_header_prefix(p: &[u8; SEG_PREFIX_LEN]) -> Result<(u32, u32), FormatError> {
    if p[..8] != SEG_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::BadVersion(version));
    }
    let len = u32::from_le_bytes([p[12], p[13], p[14], p[15]]);
    if len > MAX_HEADER_BODY {
        return Err(FormatError::BadLength(len as u64));
    }
    let crc = u32::from_le_bytes([p[16], p[17], p[18], p[19]]);
    Ok((len, crc))
}

pub fn decode_header_body(body: Bytes, crc: u32) -> Result<SegmentHeader, FormatError> {
    if crc32fast::hash(&body) != crc {
        return Err(FormatError::BadChecksum);
    }
    let mut d = Dec(body);
    let seq = d.u64()?;
    let first_index = d.u64()?;
    let first_offset = d.u64()?;
    let prev_lsn = d.u64()?;
    let system_id = d.string()?;
    let timeline = d.u32()?;
    let database = d.string()?;
    let slot = d.string()?;
    let n = d.u32()?;
    let mut relations = BTreeMap::new();
    for _ in 0..n {
        let relation_id = d.u32()?;
        let frame = d.bytes()?;
        relations.insert(relation_id, Arc::new(RelationEntry { relation_id, frame }));
    }
    Ok(SegmentHeader {
        seq,
        first_index,
        first_offset,
        prev_lsn,
        identity: LogIdentity {
            system_id,
            timeline,
            database,
            slot,
        },
        relations,
    })
}

/// Bytes a transaction takes on disk, header included.
pub fn txn_record_len(t: &TxnEntry) -> u64 {
    (RECORD_HEADER_LEN + TXN_FIXED_LEN + 4 * t.relation_ids.len() + t.frames.len()) as u64
}

/// Bytes a relation takes on disk, header included.
pub fn relation_record_len(r: &RelationEntry) -> u64 {
    (RECORD_HEADER_LEN + 4 + r.frame.len()) as u64
}

fn finish_record(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn encode_txn(t: &TxnEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(KIND_TXN);
    out.extend_from_slice(&t.commit_lsn.to_le_bytes());
    out.extend_from_slice(&t.xid.to_le_bytes());
    out.extend_from_slice(&t.commit_time.to_le_bytes());
    out.extend_from_slice(&t.changes.to_le_bytes());
    out.extend_from_slice(&(t.relation_ids.len() as u32).to_le_bytes());
    for id in &t.relation_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&t.frames);
    finish_record(out, start);
}

pub fn encode_relation(r: &RelationEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(KIND_RELATION);
    out.extend_from_slice(&r.relation_id.to_le_bytes());
    out.extend_from_slice(&r.frame);
    finish_record(out, start);
}

/// A record header read from disk.
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub kind: u8,
}

pub fn decode_record_header(h: &[u8; RECORD_HEADER_LEN]) -> Result<RecordHeader, FormatError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let kind = h[8];
    if kind != KIND_RELATION && kind != KIND_TXN {
        return Err(FormatError::BadKind(kind));
    }
    if len as u64 > MAX_RECORD_LEN {
        return Err(FormatError::BadLength(len as u64));
    }
    Ok(RecordHeader { len, crc, kind })
}

/// Checks the CRC and decodes a record's payload (zero-copy for frames).
pub fn decode_record(h: RecordHeader, payload: Bytes) -> Result<Entry, FormatError> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[h.kind]);
    hasher.update(&payload);
    if hasher.finalize() != h.crc {
        return Err(FormatError::BadChecksum);
    }
    let mut d = Dec(payload);
    match h.kind {
        KIND_RELATION => {
            let relation_id = d.u32()?;
            Ok(Entry::Relation(Arc::new(RelationEntry {
                relation_id,
                frame: d.0,
            })))
        }
        KIND_TXN => {
            let commit_lsn = d.u64()?;
            let xid = d.u32()?;
            let commit_time = d.i64()?;
            let changes = d.u32()?;
            let n = d.u32()? as usize;
            if n.saturating_mul(4) > d.0.len() {
                return Err(FormatError::BadLength(n as u64));
            }
            let mut relation_ids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_ids.push(d.u32()?);
            }
            Ok(Entry::Txn(Arc::new(TxnEntry {
                commit_lsn,
                xid,
                commit_time,
                relation_ids,
                changes,
                frames: d.0,
            })))
        }
        k => Err(FormatError::BadKind(k)),
    }
}

/// Bounds-checked little-endian reader over a byte buffer.
struct Dec(Bytes);

impl Dec {
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated(what));
        }
        Ok(self.0.split_to(n))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4, "u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8, "u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self) -> Result<Bytes, FormatError> {
        let n = self.u32()? as usize;
        self.take(n, "bytes")
    }
    fn string(&mut self) -> Result<String, FormatError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| FormatError::BadText("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> LogIdentity {
        LogIdentity {
            system_id: "7300000000000000001".into(),
            timeline: 1,
            database: "app".into(),
            slot: "pgsat".into(),
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let mut relations = BTreeMap::new();
        relations.insert(
            7,
            Arc::new(RelationEntry {
                relation_id: 7,
                frame: Bytes::from_static(b"rel7"),
            }),
        );
        let h = SegmentHeader {
            seq: 3,
            first_index: 10,
            first_offset: 1000,
            prev_lsn: 99,
            identity: identity(),
            relations,
        };
        let enc = encode_header(&h);
        let mut prefix = [0u8; SEG_PREFIX_LEN];
        prefix.copy_from_slice(&enc[..SEG_PREFIX_LEN]);
        let (len, crc) = decode_header_prefix(&prefix).unwrap();
        assert_eq!(len as usize, enc.len() - SEG_PREFIX_LEN);
        let body = Bytes::copy_from_slice(&enc[SEG_PREFIX_LEN..]);
        assert_eq!(decode_header_body(body.clone(), crc).unwrap(), h);
        assert_eq!(
            decode_header_body(body, crc ^ 1),
            Err(FormatError::BadChecksum)
        );
        prefix[0] = b'X';
        assert_eq!(decode_header_prefix(&prefix), Err(FormatError::BadMagic));
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let t = TxnEntry {
            commit_lsn: 42,
            xid: 7,
            commit_time: -5,
            relation_ids: vec![1, 2],
            changes: 3,
            frames: Bytes::from_static(b"framesframes"),
        };
        let mut out = Vec::new();
        encode_txn(&t, &mut out);
        assert_eq!(out.len() as u64, txn_record_len(&t));
        let mut hb = [0u8; RECORD_HEADER_LEN];
        hb.copy_from_slice(&out[..RECORD_HEADER_LEN]);
        let h = decode_record_header(&hb).unwrap();
        let payload = Bytes::copy_from_slice(&out[RECORD_HEADER_LEN..]);
        match decode_record(h, payload.clone()).unwrap() {
            Entry::Txn(got) => assert_eq!(*got, t),
            e => panic!("unexpected {e:?}"),
        }
        let mut bad = payload.to_vec();
        bad[5] ^= 0x40;
        assert_eq!(
            decode_record(h, Bytes::from(bad)).unwrap_err(),
            FormatError::BadChecksum
        );
        // A forged relation count larger than the payload is refused.
        let mut forged = Vec::new();
        forged.extend_from_slice(&payload[..24]);
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[KIND_TXN]);
        hasher.update(&forged);
        let h2 = RecordHeader {
            len: forged.len() as u32,
            crc: hasher.finalize(),
            kind: KIND_TXN,
        };
        assert!(matches!(
            decode_record(h2, Bytes::from(forged)),
            Err(FormatError::BadLength(_))
        ));
        let r = RelationEntry {
            relation_id: 9,
            frame: Bytes::from_static(b"R"),
        };
        let mut out = Vec::new();
        encode_relation(&r, &mut out);
        assert_eq!(out.len() as u64, relation_record_len(&r));
        hb.copy_from_slice(&out[..RECORD_HEADER_LEN]);
        let h = decode_record_header(&hb).unwrap();
        match decode_record(h, Bytes::copy_from_slice(&out[RECORD_HEADER_LEN..])).unwrap() {
            Entry::Relation(got) => assert_eq!(*got, r),
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(segment_file_name(12), "00000000000000000012.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000012.seg"),
            Some(12)
        );
        assert_eq!(parse_segment_file_name("12.seg"), None);
    }
}
