//! Pure decoder of PostgreSQL's `pgoutput` logical replication messages,
//! protocol version 1 (one file per message kind).
//!
//! Invariant: [`decode`] never panics and never allocates from an unchecked
//! length; malformed bytes are a [`DecodeError`]. Tuple values are zero-copy
//! slices of the input buffer.

mod begin;
mod commit;
mod delete;
mod insert;
mod message;
mod origin;
pub(crate) mod reader;
mod relation;
mod truncate;
mod tuple;
mod type_msg;
mod update;

use bytes::Bytes;

pub use begin::Begin;
pub use commit::Commit;
pub use delete::Delete;
pub use insert::Insert;
pub use message::LogicalMessage;
pub use origin::Origin;
pub use relation::{Column, Relation, ReplicaIdentity};
pub use truncate::Truncate;
pub use tuple::{Cell, CellRef, OldKind, OldTuple, Tuple, TupleIter};
pub use type_msg::TypeMsg;
pub use update::Update;

use reader::Reader;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutput {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    /// Logical decoding message (`pg_logical_emit_message`); callers skip it.
    Message(LogicalMessage),
}

/// Malformed pgoutput bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput: empty message")]
    Empty,
    #[error("pgoutput: unknown message tag {tag:?} (0x{byte:02x})")]
    UnknownTag { tag: char, byte: u8 },
    #[error(
        "pgoutput: unsupported message tag {tag:?} (protocol v2+ streaming/two-phase; pgsat uses proto_version 1)"
    )]
    Unsupported { tag: char },
    #[error("pgoutput {msg}: truncated at offset {offset} reading {field} (need {need} bytes, {have} left)")]
    Truncated {
        msg: &'static str,
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("pgoutput {msg}: at offset {offset}: {detail}")]
    Invalid {
        msg: &'static str,
        offset: usize,
        detail: String,
    },
}

/// Decodes one pgoutput message (the payload of an `XLogData` CopyData).
pub fn decode(buf: &Bytes) -> Result<PgOutput, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    Ok(match tag {
        b'B' => PgOutput::Begin(Begin::decode(&mut Reader::new(buf, 1, "Begin"))?),
        b'C' => PgOutput::Commit(Commit::decode(&mut Reader::new(buf, 1, "Commit"))?),
        b'O' => PgOutput::Origin(Origin::decode(&mut Reader::new(buf, 1, "Origin"))?),
        b'R' => PgOutput::Relation(Relation::decode(&mut Reader::new(buf, 1, "Relation"))?),
        b'Y' => PgOutput::Type(TypeMsg::decode(&mut Reader::new(buf, 1, "Type"))?),
        b'I' => PgOutput::Insert(Insert::decode(buf, &mut Reader::new(buf, 1, "Insert"))?),
        b'U' => PgOutput::Update(Update::decode(buf, &mut Reader::new(buf, 1, "Update"))?),
        b'D' => PgOutput::Delete(Delete::decode(buf, &mut Reader::new(buf, 1, "Delete"))?),
        b'T' => PgOutput::Truncate(Truncate::decode(&mut Reader::new(buf, 1, "Truncate"))?),
        b'M' => PgOutput::Message(LogicalMessage::decode(
            buf,
            &mut Reader::new(buf, 1, "Message"),
        )?),
        b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported { tag: tag as char })
        }
        _ => {
            return Err(DecodeError::UnknownTag {
                tag: tag as char,
                byte: tag,
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
