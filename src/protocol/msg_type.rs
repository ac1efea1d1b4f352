//! The one-byte message type that tags every frame (protocol.md, "Message
//! types").
//!
//! Invariant: the numbers are the contract's and never change; a byte that is
//! not listed here is not a message type (`from_u8` returns `None`).

use std::fmt;

/// Frame type byte. Types 0–11 are version 1; 12 and 13 are version 1.1.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    ErrorResp = 0,
    AuthReq = 1,
    AuthResp = 2,
    StartReplicationReq = 3,
    StartReplicationResp = 4,
    StopReplicationReq = 5,
    StopReplicationResp = 6,
    PingReq = 7,
    PingResp = 8,
    Relation = 9,
    OpLog = 10,
    AckReq = 11,
    SnapshotRows = 12,
    SnapshotEnd = 13,
}

impl MsgType {
    /// Every type, in numeric order.
    pub const ALL: [MsgType; 14] = [
        MsgType::ErrorResp,
        MsgType::AuthReq,
        MsgType::AuthResp,
        MsgType::StartReplicationReq,
        MsgType::StartReplicationResp,
        MsgType::StopReplicationReq,
        MsgType::StopReplicationResp,
        MsgType::PingReq,
        MsgType::PingResp,
        MsgType::Relation,
        MsgType::OpLog,
        MsgType::AckReq,
        MsgType::SnapshotRows,
        MsgType::SnapshotEnd,
    ];

    /// The type for a byte read off the wire; `None` for an unknown byte
    /// (14–255: reserved or invalid).
    pub fn from_u8(b: u8) -> Option<MsgType> {
        Self::ALL.get(b as usize).copied()
    }

    /// The byte written on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The contract's name of the message.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::ErrorResp => "ErrorResp",
            MsgType::AuthReq => "AuthReq",
            MsgType::AuthResp => "AuthResp",
            MsgType::StartReplicationReq => "StartReplicationReq",
            MsgType::StartReplicationResp => "StartReplicationResp",
            MsgType::StopReplicationReq => "StopReplicationReq",
            MsgType::StopReplicationResp => "StopReplicationResp",
            MsgType::PingReq => "PingReq",
            MsgType::PingResp => "PingResp",
            MsgType::Relation => "Relation",
            MsgType::OpLog => "OpLog",
            MsgType::AckReq => "AckReq",
            MsgType::SnapshotRows => "SnapshotRows",
            MsgType::SnapshotEnd => "SnapshotEnd",
        }
    }

    /// May a client send this type? (PingReq/PingResp go both ways.)
    pub fn sent_by_client(self) -> bool {
        matches!(
            self,
            MsgType::AuthReq
                | MsgType::StartReplicationReq
                | MsgType::StopReplicationReq
                | MsgType::PingReq
                | MsgType::PingResp
                | MsgType::AckReq
        )
    }

    /// May the server send this type? (PingReq/PingResp go both ways.)
    pub fn sent_by_server(self) -> bool {
        matches!(
            self,
            MsgType::ErrorResp
                | MsgType::AuthResp
                | MsgType::StartReplicationResp
                | MsgType::StopReplicationResp
                | MsgType::PingReq
                | MsgType::PingResp
                | MsgType::Relation
                | MsgType::OpLog
                | MsgType::SnapshotRows
                | MsgType::SnapshotEnd
        )
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_contracts() {
        let expected = [
            (0, "ErrorResp"),
            (1, "AuthReq"),
            (2, "AuthResp"),
            (3, "StartReplicationReq"),
            (4, "StartReplicationResp"),
            (5, "StopReplicationReq"),
            (6, "StopReplicationResp"),
            (7, "PingReq"),
            (8, "PingResp"),
            (9, "Relation"),
            (10, "OpLog"),
            (11, "AckReq"),
            (12, "SnapshotRows"),
            (13, "SnapshotEnd"),
        ];
        for (n, name) in expected {
            let t = MsgType::from_u8(n).unwrap();
            assert_eq!(t.as_u8(), n);
            assert_eq!(t.name(), name);
        }
        for n in 14..=255u8 {
            assert_eq!(MsgType::from_u8(n), None, "byte {n}");
        }
    }

    #[test]
    fn directions_match_the_table() {
        for t in MsgType::ALL {
            // Every type has a sender; only the pings have two.
            assert!(t.sent_by_client() || t.sent_by_server(), "{t}");
            let both = t.sent_by_client() && t.sent_by_server();
            assert_eq!(
                both,
                matches!(t, MsgType::PingReq | MsgType::PingResp),
                "{t}"
            );
        }
        assert!(MsgType::AckReq.sent_by_client());
        assert!(!MsgType::AckReq.sent_by_server());
        assert!(!MsgType::OpLog.sent_by_client());
        assert!(!MsgType::ErrorResp.sent_by_client());
    }
}
