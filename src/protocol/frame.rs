//! Frame codecs: TCP frames (`u32` big-endian length + type byte + protobuf
//! body) and WebSocket messages (type byte + body, no length).
//!
//! Invariant: nothing is allocated or reserved for a declared length before
//! that length has been checked against the limit; a decoder error is final
//! for its connection (the caller answers and closes).
//!
//! # A worked example
//!
//! The server's answer to a ping when its newest commit is at LSN
//! `16/B374D848` (= `0x16B374D848` = 97_500_059_720) is `PingResp{lsn:
//! 0x16B374D848}`, type 8. Its protobuf body is field 1 as a varint: key byte
//! `08` (field 1 << 3 | wire type 0), then the value in little-endian groups
//! of 7 bits, high bit set on every byte but the last: `c8 b0 d3 9b eb 02`.
//! The body is 7 bytes, so the length (type byte + body) is 8:
//!
//! ```text
//! 00 00 00 08   length = 8, big-endian
//! 08            type   = 8 (PingResp)
//! 08            field 1, varint
//! c8 b0 d3 9b eb 02   97_500_059_720
//! ```
//!
//! On TCP those are the 12 bytes `00 00 00 08 08 08 c8 b0 d3 9b eb 02`; on
//! WebSocket the binary message is the same without the first four bytes:
//! `08 08 c8 b0 d3 9b eb 02`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::msg_type::MsgType;

/// Bytes of the TCP length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default `MAX_FRAME_BYTES` (1 MiB) for client → server frames.
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// One frame: its type byte (not yet checked against [`MsgType`]) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub body: Bytes,
}

impl Frame {
    /// Parses a WebSocket binary message (type byte + body), with the same
    /// limits as TCP: the length that counts is type byte + body.
    pub fn from_ws(payload: Bytes, max_frame: u32) -> Result<Frame, FrameError> {
        if payload.is_empty() {
            return Err(FrameError::Empty);
        }
        if payload.len() as u64 > max_frame as u64 {
            return Err(FrameError::TooLarge {
                len: payload.len().min(u32::MAX as usize) as u32,
                max: max_frame,
            });
        }
        let mut payload = payload;
        let ty = payload.get_u8();
        Ok(Frame { ty, body: payload })
    }

    /// This frame as a TCP frame (length prefix included).
    pub fn to_tcp(&self) -> Bytes {
        encode_raw_frame(self.ty, &self.body)
    }
}

/// What is wrong with a frame, or the stream under it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length 0: a frame holds at least its type byte")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes TCP frames, checking the declared length before waiting for or
/// reserving room for the body (mini-redis style: check, then parse).
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    /// Largest accepted length (type byte + body).
    pub max_frame: u32,
}

impl FrameDecoder {
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder { max_frame }
    }

    /// Checks the buffered bytes: `Ok(Some(len))` when a whole frame of
    /// declared length `len` is present, `Ok(None)` when more bytes are
    /// needed, an error when the declared length is refused.
    fn check(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() - LEN_PREFIX < len as usize {
            return Ok(None);
        }
        Ok(Some(len as usize))
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.check(src)? {
            Some(len) => {
                src.advance(LEN_PREFIX);
                let mut frame = src.split_to(len);
                let ty = frame.get_u8();
                Ok(Some(Frame {
                    ty,
                    body: frame.freeze(),
                }))
            }
            None => {
                // The length (if buffered) has been checked: reserve what the
                // rest of this frame needs, never more.
                if src.len() >= LEN_PREFIX {
                    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
                    src.reserve(LEN_PREFIX + len - src.len());
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

/// Writes already-encoded TCP frames (`Bytes` from [`encode_frame`]) as is.
impl Encoder<Bytes> for FrameDecoder {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Encodes `msg` as a complete TCP frame in one allocation.
pub fn encode_frame(ty: MsgType, msg: &impl prost::Message) -> Bytes {
    let body_len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + 1 + body_len);
    buf.put_u32((1 + body_len) as u32);
    buf.put_u8(ty.as_u8());
    // A BytesMut grows on demand, so encoding cannot run out of room.
    let encoded = msg.encode(&mut buf);
    debug_assert!(encoded.is_ok());
    debug_assert_eq!(buf.len(), LEN_PREFIX + 1 + body_len);
    buf.freeze()
}

/// A TCP frame from a raw type byte and body (tests, relaying).
pub fn encode_raw_frame(ty: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + 1 + body.len());
    buf.put_u32((1 + body.len()) as u32);
    buf.put_u8(ty);
    buf.put_slice(body);
    buf.freeze()
}

/// The WebSocket message for a TCP frame: the same bytes minus the length
/// prefix, without copying.
pub fn ws_payload(frame: &Bytes) -> Bytes {
    frame.slice(LEN_PREFIX.min(frame.len())..)
}

/// Walks concatenated TCP frames (as the log stores a transaction), yielding
/// each whole frame, prefix included, without copying. Stops at the first
/// malformed or incomplete frame (the log's frames are built by pgsat itself
/// and checksummed, so that means a bug; it is logged, never a panic).
pub fn split_frames(buf: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = buf.get(pos..)?;
        if rest.is_empty() {
            return None;
        }
        let prefix = rest.get(..LEN_PREFIX);
        let len = prefix.map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
        match len {
            Some(len) if len > 0 && rest.len() - LEN_PREFIX >= len => {
                let frame = buf.slice(pos..pos + LEN_PREFIX + len);
                pos += LEN_PREFIX + len;
                Some(frame)
            }
            _ => {
                tracing::error!(
                    offset = pos,
                    remaining = rest.len(),
                    "malformed concatenated frames; stopping"
                );
                pos = buf.len();
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pb;
    use rand::{Rng, SeedableRng};

    /// The worked example of the module documentation, byte for byte.
    #[test]
    fn worked_example_ping_resp() {
        let frame = encode_frame(MsgType::PingResp, &pb::PingResp { lsn: 0x16B374D848 });
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x08, 0x08, 0x08, 0xc8, 0xb0, 0xd3, 0x9b, 0xeb, 0x02,
        ];
        assert_eq!(&frame[..], expected);
        assert_eq!(&ws_payload(&frame)[..], &expected[4..]);
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(expected);
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.ty, 8);
        assert_eq!(
            <pb::PingResp as prost::Message>::decode(f.body)
                .unwrap()
                .lsn,
            97_500_059_720
        );
    }

    #[test]
    fn empty_body_has_length_one() {
        let frame = encode_frame(MsgType::PingReq, &pb::PingReq {});
        assert_eq!(&frame[..], &[0, 0, 0, 1, 7]);
        let mut buf = BytesMut::from(&frame[..]);
        let f = FrameDecoder::new(16).decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                ty: 7,
                body: Bytes::new()
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut wire = BytesMut::new();
        let frames = [
            encode_frame(MsgType::PingResp, &pb::PingResp { lsn: 42 }),
            encode_frame(MsgType::AckReq, &pb::AckReq { lsn: u64::MAX }),
            encode_frame(MsgType::StopReplicationReq, &pb::StopReplicationReq {}),
        ];
        for f in &frames {
            wire.extend_from_slice(f);
        }
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f.to_tcp());
            }
        }
        assert_eq!(got, frames);
        assert!(dec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn length_zero_is_refused() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 9, 9][..]);
        assert!(matches!(
            FrameDecoder::new(100).decode(&mut buf),
            Err(FrameError::Empty)
        ));
    }

    /// Only the 4-byte prefix is present: the decoder refuses at once,
    /// without waiting for the body and without reserving room for it.
    #[test]
    fn too_large_is_refused_before_the_body_arrives() {
        let max = 1024 * 1024;
        let mut buf = BytesMut::with_capacity(4);
        buf.put_u32(max + 1);
        let cap_before = buf.capacity();
        match FrameDecoder::new(max).decode(&mut buf) {
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!(len, max + 1);
                assert_eq!(m, max);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before, "nothing reserved");
        // u32::MAX as well.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::new(max).decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        // Exactly max is accepted (waits for the body).
        let mut buf = BytesMut::new();
        buf.put_u32(max);
        buf.put_u8(8);
        assert!(FrameDecoder::new(max).decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn reserves_only_what_the_frame_needs() {
        let mut buf = BytesMut::new();
        buf.put_u32(100);
        buf.put_u8(10);
        assert!(FrameDecoder::new(1000).decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 104);
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        let frame = encode_frame(MsgType::PingResp, &pb::PingResp { lsn: 7 });
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert!(matches!(
            FrameDecoder::new(100).decode_eof(&mut buf),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn ws_messages() {
        assert!(matches!(
            Frame::from_ws(Bytes::new(), 10),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            Frame::from_ws(Bytes::from(vec![1u8; 11]), 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        let f = Frame::from_ws(Bytes::from_static(&[8, 8, 1]), 10).unwrap();
        assert_eq!(f.ty, 8);
        assert_eq!(&f.body[..], &[8, 1]);
    }

    #[test]
    fn split_concatenated_frames() {
        let a = encode_frame(MsgType::OpLog, &pb::OpLog { ops: vec![] });
        let b = encode_frame(MsgType::PingResp, &pb::PingResp { lsn: 3 });
        let mut all = BytesMut::new();
        all.extend_from_slice(&a);
        all.extend_from_slice(&b);
        let all = all.freeze();
        let parts: Vec<Bytes> = split_frames(&all).collect();
        assert_eq!(parts, vec![a.clone(), b]);
        assert_eq!(split_frames(&Bytes::new()).count(), 0);
        // A torn tail stops the walk after the whole frames.
        let torn = all.slice(..all.len() - 1);
        assert_eq!(split_frames(&torn).collect::<Vec<_>>(), vec![a]);
        assert_eq!(split_frames(&Bytes::from_static(&[0, 0])).count(), 0);
        assert_eq!(
            split_frames(&Bytes::from_static(&[0, 0, 0, 0, 1])).count(),
            0
        );
    }

    #[test]
    fn random_byte_soup_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9a5a7);
        for _ in 0..5_000 {
            let n = rng.random_range(0..64);
            let mut soup: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && soup.len() >= 4 {
                // Plausible small lengths, to reach the body path too.
                let len = rng.random_range(0..40u32);
                soup[..4].copy_from_slice(&len.to_be_bytes());
            }
            let mut dec = FrameDecoder::new(32);
            let mut buf = BytesMut::from(&soup[..]);
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                let _ = crate::protocol::message::ClientMessage::decode(f.ty, f.body.clone());
                let _ = crate::protocol::message::ServerMessage::decode(f.ty, f.body);
            }
            let soup = Bytes::from(soup);
            let _ = split_frames(&soup).count();
            let _ = Frame::from_ws(soup, 32);
        }
    }
}
