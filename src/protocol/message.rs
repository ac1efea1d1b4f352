//! Typed messages per direction: what a client may send ([`ClientMessage`]),
//! what a server may send ([`ServerMessage`]), and the errors that make a
//! frame unacceptable.
//!
//! Invariant: decoding never panics; every refused frame yields a
//! [`ProtocolError`] whose [`code`](ProtocolError::code) is what the server
//! answers with (`INVALID_REQUEST` or `FRAME_TOO_LARGE`) before closing.

use bytes::Bytes;
use prost::Message;

use super::frame::{encode_frame, FrameError};
use super::msg_type::MsgType;
use super::pb;
use super::pb::ErrorCode;

/// Why a frame cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown message type {0} (known types are 0-13)")]
    UnknownType(u8),
    #[error("message type {0} is sent by the server only")]
    ServerOnly(MsgType),
    #[error("message type {0} is sent by clients only")]
    ClientOnly(MsgType),
    #[error("body of {ty} does not decode: {source}")]
    BadBody {
        ty: MsgType,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("text WebSocket messages are not part of the protocol; send binary messages")]
    TextMessage,
}

impl ProtocolError {
    /// The error code a server answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Frame(FrameError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }

    /// The complete `ErrorResp` TCP frame answering this error.
    pub fn to_error_frame(&self) -> Bytes {
        error_frame(self.code(), &self.to_string(), "")
    }
}

fn body<M: Message + Default>(ty: MsgType, body: Bytes) -> Result<M, ProtocolError> {
    M::decode(body).map_err(|source| ProtocolError::BadBody { ty, source })
}

/// A message a client sends.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    Auth(pb::AuthReq),
    StartReplication(pb::StartReplicationReq),
    StopReplication,
    PingReq,
    PingResp(pb::PingResp),
    Ack(pb::AckReq),
}

impl ClientMessage {
    /// Decodes a frame received from a client.
    pub fn decode(ty: u8, body_bytes: Bytes) -> Result<ClientMessage, ProtocolError> {
        let t = MsgType::from_u8(ty).ok_or(ProtocolError::UnknownType(ty))?;
        Ok(match t {
            MsgType::AuthReq => ClientMessage::Auth(body(t, body_bytes)?),
            MsgType::StartReplicationReq => ClientMessage::StartReplication(body(t, body_bytes)?),
            MsgType::StopReplicationReq => {
                body::<pb::StopReplicationReq>(t, body_bytes)?;
                ClientMessage::StopReplication
            }
            MsgType::PingReq => {
                body::<pb::PingReq>(t, body_bytes)?;
                ClientMessage::PingReq
            }
            MsgType::PingResp => ClientMessage::PingResp(body(t, body_bytes)?),
            MsgType::AckReq => ClientMessage::Ack(body(t, body_bytes)?),
            other => return Err(ProtocolError::ServerOnly(other)),
        })
    }

    pub fn msg_type(&self) -> MsgType {
        match self {
            ClientMessage::Auth(_) => MsgType::AuthReq,
            ClientMessage::StartReplication(_) => MsgType::StartReplicationReq,
            ClientMessage::StopReplication => MsgType::StopReplicationReq,
            ClientMessage::PingReq => MsgType::PingReq,
            ClientMessage::PingResp(_) => MsgType::PingResp,
            ClientMessage::Ack(_) => MsgType::AckReq,
        }
    }

    /// This message as a complete TCP frame.
    pub fn to_frame(&self) -> Bytes {
        let t = self.msg_type();
        match self {
            ClientMessage::Auth(m) => encode_frame(t, m),
            ClientMessage::StartReplication(m) => encode_frame(t, m),
            ClientMessage::StopReplication => encode_frame(t, &pb::StopReplicationReq {}),
            ClientMessage::PingReq => encode_frame(t, &pb::PingReq {}),
            ClientMessage::PingResp(m) => encode_frame(t, m),
            ClientMessage::Ack(m) => encode_frame(t, m),
        }
    }
}

/// A message a server sends.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    Error(pb::ErrorResp),
    Auth(pb::AuthResp),
    StartReplication(pb::StartReplicationResp),
    StopReplication,
    PingReq,
    PingResp(pb::PingResp),
    Relation(pb::Relation),
    OpLog(pb::OpLog),
    SnapshotRows(pb::SnapshotRows),
    SnapshotEnd(pb::SnapshotEnd),
}

impl ServerMessage {
    /// Decodes a frame received from a server.
    pub fn decode(ty: u8, body_bytes: Bytes) -> Result<ServerMessage, ProtocolError> {
        let t = MsgType::from_u8(ty).ok_or(ProtocolError::UnknownType(ty))?;
        Ok(match t {
            MsgType::ErrorResp => ServerMessage::Error(body(t, body_bytes)?),
            MsgType::AuthResp => ServerMessage::Auth(body(t, body_bytes)?),
            MsgType::StartReplicationResp => ServerMessage::StartReplication(body(t, body_bytes)?),
            MsgType::StopReplicationResp => {
                body::<pb::StopReplicationResp>(t, body_bytes)?;
                ServerMessage::StopReplication
            }
            MsgType::PingReq => {
                body::<pb::PingReq>(t, body_bytes)?;
                ServerMessage::PingReq
            }
            MsgType::PingResp => ServerMessage::PingResp(body(t, body_bytes)?),
            MsgType::Relation => ServerMessage::Relation(body(t, body_bytes)?),
            MsgType::OpLog => ServerMessage::OpLog(body(t, body_bytes)?),
            MsgType::SnapshotRows => ServerMessage::SnapshotRows(body(t, body_bytes)?),
            MsgType::SnapshotEnd => ServerMessage::SnapshotEnd(body(t, body_bytes)?),
            other => return Err(ProtocolError::ClientOnly(other)),
        })
    }

    pub fn msg_type(&self) -> MsgType {
        match self {
            ServerMessage::Error(_) => MsgType::ErrorResp,
            ServerMessage::Auth(_) => MsgType::AuthResp,
            ServerMessage::StartReplication(_) => MsgType::StartReplicationResp,
            ServerMessage::StopReplication => MsgType::StopReplicationResp,
            ServerMessage::PingReq => MsgType::PingReq,
            ServerMessage::PingResp(_) => MsgType::PingResp,
            ServerMessage::Relation(_) => MsgType::Relation,
            ServerMessage::OpLog(_) => MsgType::OpLog,
            ServerMessage::SnapshotRows(_) => MsgType::SnapshotRows,
            ServerMessage::SnapshotEnd(_) => MsgType::SnapshotEnd,
        }
    }

    /// This message as a complete TCP frame.
    pub fn to_frame(&self) -> Bytes {
        let t = self.msg_type();
        match self {
            ServerMessage::Error(m) => encode_frame(t, m),
            ServerMessage::Auth(m) => encode_frame(t, m),
            ServerMessage::StartReplication(m) => encode_frame(t, m),
            ServerMessage::StopReplication => encode_frame(t, &pb::StopReplicationResp {}),
            ServerMessage::PingReq => encode_frame(t, &pb::PingReq {}),
            ServerMessage::PingResp(m) => encode_frame(t, m),
            ServerMessage::Relation(m) => encode_frame(t, m),
            ServerMessage::OpLog(m) => encode_frame(t, m),
            ServerMessage::SnapshotRows(m) => encode_frame(t, m),
            ServerMessage::SnapshotEnd(m) => encode_frame(t, m),
        }
    }
}

/// A complete `ErrorResp` TCP frame.
pub fn error_frame(code: ErrorCode, message: &str, request_id: &str) -> Bytes {
    encode_frame(
        MsgType::ErrorResp,
        &pb::ErrorResp {
            code: code as i32,
            message: message.to_owned(),
            request_id: request_id.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{FrameDecoder, DEFAULT_MAX_FRAME};
    use bytes::BytesMut;
    use rand::{Rng, SeedableRng};
    use tokio_util::codec::Decoder;

    fn row() -> pb::Row {
        pb::Row {
            nulls: Bytes::from_static(&[0b0100_0000]),
            values: vec![Bytes::from_static(b"1"), Bytes::new(), Bytes::from("é\"x")],
            unchanged: Bytes::new(),
        }
    }

    fn client_messages() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Auth(pb::AuthReq {
                id: "a1".into(),
                token: "t.o.k".into(),
            }),
            ClientMessage::StartReplication(pb::StartReplicationReq {
                lsn: 0x16B374D848,
                tables: vec!["public.todos".into(), "items".into()],
                snapshot: true,
                view_id: "v1".into(),
            }),
            ClientMessage::StopReplication,
            ClientMessage::PingReq,
            ClientMessage::PingResp(pb::PingResp { lsn: 9 }),
            ClientMessage::Ack(pb::AckReq { lsn: u64::MAX }),
        ]
    }

    fn server_messages() -> Vec<ServerMessage> {
        use pb::trans_op::Op;
        vec![
            ServerMessage::Error(pb::ErrorResp {
                code: ErrorCode::SlowConsumer as i32,
                message: "too slow".into(),
                request_id: "r".into(),
            }),
            ServerMessage::Auth(pb::AuthResp {
                id: "a1".into(),
                user_id: "u".into(),
                server_id: "s".into(),
                expires_at: 1_700_000_000_000_000,
            }),
            ServerMessage::StartReplication(pb::StartReplicationResp {
                lsn: 5,
                view_id: "v".into(),
            }),
            ServerMessage::StopReplication,
            ServerMessage::PingReq,
            ServerMessage::PingResp(pb::PingResp { lsn: 1 }),
            ServerMessage::Relation(pb::Relation {
                relation_id: 16384,
                schema: "public".into(),
                table: "todos".into(),
                columns: vec![pb::Column {
                    name: "id".into(),
                    type_oid: 23,
                    type_name: "int4".into(),
                    primary_key: true,
                    nullable: false,
                }],
            }),
            ServerMessage::OpLog(pb::OpLog {
                ops: vec![
                    pb::TransOp {
                        op: Some(Op::Begin(pb::Begin {
                            xid: 7,
                            commit_lsn: 100,
                            commit_time: -3,
                        })),
                    },
                    pb::TransOp {
                        op: Some(Op::Insert(pb::Insert {
                            relation_id: 1,
                            row: Some(row()),
                        })),
                    },
                    pb::TransOp {
                        op: Some(Op::Update(pb::Update {
                            relation_id: 1,
                            row: Some(row()),
                            old_row: Some(row()),
                        })),
                    },
                    pb::TransOp {
                        op: Some(Op::Delete(pb::Delete {
                            relation_id: 1,
                            old_row: Some(row()),
                        })),
                    },
                    pb::TransOp {
                        op: Some(Op::Truncate(pb::Truncate {
                            relation_ids: vec![1, 2],
                        })),
                    },
                    pb::TransOp {
                        op: Some(Op::Commit(pb::Commit {
                            lsn: 120,
                            commit_time: 4,
                        })),
                    },
                ],
            }),
            ServerMessage::SnapshotRows(pb::SnapshotRows {
                relation_id: 1,
                rows: vec![row(), row()],
            }),
            ServerMessage::SnapshotEnd(pb::SnapshotEnd {
                lsn: 77,
                rows: 2,
                view_id: "v".into(),
            }),
        ]
    }

    fn decode_one(frame: &Bytes) -> (u8, Bytes) {
        let mut buf = BytesMut::from(&frame[..]);
        let f = FrameDecoder::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        (f.ty, f.body)
    }

    #[test]
    fn every_client_message_round_trips() {
        let msgs = client_messages();
        let mut seen: Vec<MsgType> = msgs.iter().map(|m| m.msg_type()).collect();
        seen.sort_by_key(|t| t.as_u8());
        let all_client: Vec<MsgType> = MsgType::ALL
            .into_iter()
            .filter(|t| t.sent_by_client())
            .collect();
        assert_eq!(seen, all_client);
        for m in msgs {
            let (ty, body) = decode_one(&m.to_frame());
            assert_eq!(ty, m.msg_type().as_u8());
            assert_eq!(ClientMessage::decode(ty, body).unwrap(), m);
        }
    }

    #[test]
    fn every_server_message_round_trips() {
        let msgs = server_messages();
        let mut seen: Vec<MsgType> = msgs.iter().map(|m| m.msg_type()).collect();
        seen.sort_by_key(|t| t.as_u8());
        let all_server: Vec<MsgType> = MsgType::ALL
            .into_iter()
            .filter(|t| t.sent_by_server())
            .collect();
        assert_eq!(seen, all_server);
        for m in msgs {
            let (ty, body) = decode_one(&m.to_frame());
            assert_eq!(ServerMessage::decode(ty, body).unwrap(), m);
        }
    }

    #[test]
    fn unknown_type_is_invalid_request() {
        for ty in [14u8, 63, 64, 200, 255] {
            let e = ClientMessage::decode(ty, Bytes::new()).unwrap_err();
            assert!(matches!(e, ProtocolError::UnknownType(t) if t == ty));
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
            assert!(e.to_string().contains(&ty.to_string()));
        }
    }

    #[test]
    fn server_only_type_from_client_is_invalid_request() {
        for t in MsgType::ALL.into_iter().filter(|t| !t.sent_by_client()) {
            let e = ClientMessage::decode(t.as_u8(), Bytes::new()).unwrap_err();
            assert!(matches!(e, ProtocolError::ServerOnly(x) if x == t), "{t}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
            assert!(e.to_string().contains(t.name()));
        }
        for t in MsgType::ALL.into_iter().filter(|t| !t.sent_by_server()) {
            let e = ServerMessage::decode(t.as_u8(), Bytes::new()).unwrap_err();
            assert!(matches!(e, ProtocolError::ClientOnly(x) if x == t), "{t}");
        }
    }

    #[test]
    fn garbage_bodies_are_invalid_request() {
        // Field 1 declared length-delimited with a length past the end;
        // a truncated varint; wire type 7 (invalid).
        let garbage: [&[u8]; 3] = [&[0x0a, 0x10, 0x41], &[0x08, 0xff], &[0x0f]];
        for g in garbage {
            let e = ClientMessage::decode(MsgType::AuthReq.as_u8(), Bytes::copy_from_slice(g))
                .unwrap_err();
            assert!(matches!(e, ProtocolError::BadBody { .. }), "{e:?}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
            assert!(e.to_string().contains("AuthReq"), "{e}");
        }
        // Invalid UTF-8 in a string field.
        let e = ClientMessage::decode(1, Bytes::from_static(&[0x0a, 0x01, 0xff])).unwrap_err();
        assert!(matches!(e, ProtocolError::BadBody { .. }));
    }

    #[test]
    fn too_large_maps_to_frame_too_large() {
        let e = ProtocolError::from(FrameError::TooLarge { len: 9, max: 8 });
        assert_eq!(e.code(), ErrorCode::FrameTooLarge);
        let (ty, body) = decode_one(&e.to_error_frame());
        match ServerMessage::decode(ty, body).unwrap() {
            ServerMessage::Error(r) => {
                assert_eq!(r.code(), ErrorCode::FrameTooLarge);
                assert!(r.message.contains("9 bytes"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ProtocolError::from(FrameError::Empty).code(),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn error_frame_carries_code_message_and_id() {
        let f = error_frame(ErrorCode::AuthRequired, "send AuthReq first", "req-1");
        let (ty, body) = decode_one(&f);
        assert_eq!(ty, 0);
        let ServerMessage::Error(r) = ServerMessage::decode(ty, body).unwrap() else {
            panic!()
        };
        assert_eq!(r.code(), ErrorCode::AuthRequired);
        assert_eq!(r.message, "send AuthReq first");
        assert_eq!(r.request_id, "req-1");
    }

    #[test]
    fn random_bodies_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let ty: u8 = rng.random_range(0..20);
            let n = rng.random_range(0..48);
            let body: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let body = Bytes::from(body);
            if let Err(e) = ClientMessage::decode(ty, body.clone()) {
                let c = e.code();
                assert!(c == ErrorCode::InvalidRequest || c == ErrorCode::FrameTooLarge);
                let _ = e.to_error_frame();
            }
            let _ = ServerMessage::decode(ty, body);
        }
    }
}
