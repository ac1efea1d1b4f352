//! One segment file: naming, listing, and reading it record by record.
//!
//! Invariant: a [`SegmentReader`] never reads past the extent it is given
//! (the part of the file known to be written), holds one record in memory at
//! a time plus a fixed read buffer, and checks every record's CRC.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::format::{
    self, decode_header_body, decode_header_prefix, decode_record, decode_record_header,
    FormatError, SegmentHeader, RECORD_HEADER_LEN, SEG_PREFIX_LEN,
};
use super::record::Entry;

const READ_BUFFER: usize = 64 * 1024;

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format::segment_file_name(seq))
}

/// Sequence numbers of the segment files in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(seq) = e
            .file_name()
            .to_str()
            .and_then(format::parse_segment_file_name)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// fsync a directory so that file creations, renames and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("at byte {offset}: {err}")]
    Format { offset: u64, err: FormatError },
}

/// Sequential reader of one segment.
pub struct SegmentReader {
    pub seq: u64,
    pub header: SegmentHeader,
    file: BufReader<File>,
    /// File offset of the next record.
    pos: u64,
    /// Readable extent of the file.
    limit: u64,
    /// Log index of the next record.
    index: u64,
}

impl SegmentReader {
    /// Opens the segment and reads its header. `limit`: how far the file may
    /// be read (`None`: its current length).
    pub fn open(path: &Path, limit: Option<u64>) -> Result<SegmentReader, SegmentError> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let limit = limit.unwrap_or(file_len).min(file_len);
        let mut file = BufReader::with_capacity(READ_BUFFER, file);
        let bad = |err| SegmentError::Format { offset: 0, err };
        if limit < SEG_PREFIX_LEN as u64 {
            return Err(bad(FormatError::Truncated("segment header")));
        }
        let mut prefix = [0u8; SEG_PREFIX_LEN];
        file.read_exact(&mut prefix)?;
        let (body_len, crc) = decode_header_prefix(&prefix).map_err(bad)?;
        let header_len = SEG_PREFIX_LEN as u64 + body_len as u64;
        if header_len > limit {
            return Err(bad(FormatError::Truncated("segment header")));
        }
        let mut body = vec![0u8; body_len as usize];
        file.read_exact(&mut body)?;
        let header = decode_header_body(Bytes::from(body), crc).map_err(bad)?;
        Ok(SegmentReader {
            seq: header.seq,
            index: header.first_index,
            header,
            file,
            pos: header_len,
            limit,
        })
    }

    /// File offset of the next record (the valid length read so far).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Log index of the next record.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Extends the readable extent (the writer appended more).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = self.limit.max(limit);
    }

    /// The next record, or `None` at the end of the readable extent. On a
    /// format error the reader stays at the bad record's offset.
    pub fn next_record(&mut self) -> Result<Option<Entry>, SegmentError> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let offset = self.pos;
        let bad = |err| SegmentError::Format { offset, err };
        if self.limit - self.pos < RECORD_HEADER_LEN as u64 {
            return Err(bad(FormatError::Truncated("record header")));
        }
        let mut hb = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact(&mut hb)?;
        let h = decode_record_header(&hb).map_err(bad)?;
        let available = self.limit - self.pos - RECORD_HEADER_LEN as u64;
        if h.len as u64 > available {
            // Undo the header read so the reader still points at this record.
            self.file.seek_relative(-(RECORD_HEADER_LEN as i64))?;
            return Err(bad(FormatError::BadLength(h.len as u64)));
        }
        let mut payload = vec![0u8; h.len as usize];
        self.file.read_exact(&mut payload)?;
        match decode_record(h, Bytes::from(payload)) {
            Ok(e) => {
                self.pos += RECORD_HEADER_LEN as u64 + h.len as u64;
                self.index += 1;
                Ok(Some(e))
            }
            Err(err) => {
                self.file
                    .seek_relative(-(RECORD_HEADER_LEN as i64 + h.len as i64))?;
                Err(bad(err))
            }
        }
    }
}
