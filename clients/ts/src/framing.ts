// WebSocket framing of the pgsat protocol (protocol.md, "Transport and framing").
// Invariant: one binary WebSocket message is exactly `u8 type` + protobuf body,
// no length prefix; decodeFrame never returns a frame whose type byte is unknown
// or whose body did not decode — it throws FrameError instead.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  AckReqSchema,
  AuthReqSchema,
  AuthRespSchema,
  ErrorRespSchema,
  OpLogSchema,
  PingReqSchema,
  PingRespSchema,
  RelationSchema,
  SnapshotEndSchema,
  SnapshotRowsSchema,
  StartReplicationReqSchema,
  StartReplicationRespSchema,
  StopReplicationReqSchema,
  StopReplicationRespSchema,
  type AckReq,
  type AuthReq,
  type AuthResp,
  type ErrorResp,
  type OpLog,
  type PingReq,
  type PingResp,
  type Relation,
  type SnapshotEnd,
  type SnapshotRows,
  type StartReplicationReq,
  type StartReplicationResp,
  type StopReplicationReq,
  type StopReplicationResp,
} from "./gen/pgsat_pb.js";
import { OpLog as OpLogDecoder, SnapshotRows as SnapshotRowsDecoder } from "./gen/pgsat_ts_proto.js";
import type * as tsp from "./gen/pgsat_ts_proto.js";

/** Type byte of each message (protocol.md, "Message types"). */
export const MessageType = {
  ErrorResp: 0,
  AuthReq: 1,
  AuthResp: 2,
  StartReplicationReq: 3,
  StartReplicationResp: 4,
  StopReplicationReq: 5,
  StopReplicationResp: 6,
  PingReq: 7,
  PingResp: 8,
  Relation: 9,
  OpLog: 10,
  AckReq: 11,
  SnapshotRows: 12,
  SnapshotEnd: 13,
} as const;

/** The protobuf message carried by each type byte. */
export interface FrameMessages {
  0: ErrorResp;
  1: AuthReq;
  2: AuthResp;
  3: StartReplicationReq;
  4: StartReplicationResp;
  5: StopReplicationReq;
  6: StopReplicationResp;
  7: PingReq;
  8: PingResp;
  9: Relation;
  10: OpLog;
  11: AckReq;
  12: SnapshotRows;
  13: SnapshotEnd;
}

export type FrameType = keyof FrameMessages;

/** A decoded frame: the type byte and its message, as a discriminated union. */
export type Frame = { [K in FrameType]: { type: K; msg: FrameMessages[K] } }[FrameType];

const SCHEMAS: { [K in FrameType]: GenMessage<FrameMessages[K]> } = {
  0: ErrorRespSchema,
  1: AuthReqSchema,
  2: AuthRespSchema,
  3: StartReplicationReqSchema,
  4: StartReplicationRespSchema,
  5: StopReplicationReqSchema,
  6: StopReplicationRespSchema,
  7: PingReqSchema,
  8: PingRespSchema,
  9: RelationSchema,
  10: OpLogSchema,
  11: AckReqSchema,
  12: SnapshotRowsSchema,
  13: SnapshotEndSchema,
};

/** The frame could not be decoded: empty, unknown type byte, or a body that is not valid protobuf. */
export class FrameError extends Error {
  override readonly name = "FrameError";
}

const NO_UNKNOWN = { readUnknownFields: false } as const;

function isFrameType(n: number): n is FrameType {
  return Number.isInteger(n) && n >= 0 && n <= 13;
}

/** Builds the message of `type` from a partial init object. */
export function makeMessage<K extends FrameType>(
  type: K,
  init?: MessageInitShape<GenMessage<FrameMessages[K]>>,
): FrameMessages[K] {
  const schema = SCHEMAS[type] as GenMessage<FrameMessages[K]>;
  return create(schema, init) as FrameMessages[K];
}

/** Encodes `type` + protobuf body into one WebSocket binary message. */
export function encodeFrame<K extends FrameType>(type: K, msg: FrameMessages[K]): Uint8Array {
  const schema = SCHEMAS[type] as GenMessage<FrameMessages[K]>;
  const body = toBinary(schema, msg);
  const out = new Uint8Array(body.length + 1);
  out[0] = type;
  out.set(body, 1);
  return out;
}

/** Shorthand: build the message from `init` and encode it. */
export function frame<K extends FrameType>(
  type: K,
  init?: MessageInitShape<GenMessage<FrameMessages[K]>>,
): Uint8Array {
  return encodeFrame(type, makeMessage(type, init));
}

/** Decodes one WebSocket binary message. Throws FrameError on any malformed input. */
export function decodeFrame(data: Uint8Array): Frame {
  if (data.length === 0) throw new FrameError("empty frame");
  const type = data[0] as number;
  if (!isFrameType(type)) throw new FrameError(`unknown message type ${type}`);
  let msg: FrameMessages[FrameType];
  try {
    // Unknown fields (a newer server) are skipped, not kept: the client never re-encodes a server message.
    // The body as a plain Uint8Array view (no copy), also when `data` is a Buffer.
    const body = new Uint8Array(data.buffer, data.byteOffset + 1, data.byteLength - 1);
    msg = fromBinary(SCHEMAS[type] as GenMessage<FrameMessages[FrameType]>, body, NO_UNKNOWN);
  } catch (e) {
    throw new FrameError(`message type ${type}: body does not decode: ${(e as Error).message}`);
  }
  return { type, msg } as Frame;
}

/**
 * A frame as the client consumes it: like Frame, except that OpLog and
 * SnapshotRows (the hot path: every replicated row) are decoded by the
 * generated ts-proto decoders (src/gen/pgsat_ts_proto.ts) into plain objects,
 * much faster than fromBinary's reflection. Scalar fields absent from the wire
 * (at their default: 0, empty bytes) are undefined there
 * (noDefaultsForOptionals: no empty Uint8Array per row), and a known field with
 * an unexpected wire type is skipped rather than rejected. The Replica takes
 * both forms.
 */
export type InFrame =
  | Exclude<Frame, { type: 10 } | { type: 12 }>
  | { type: 10; msg: tsp.OpLog }
  | { type: 12; msg: tsp.SnapshotRows };

/** decodeFrame, with OpLog and SnapshotRows decoded on the fast path (InFrame). Throws FrameError on malformed input. */
export function decodeInFrame(data: Uint8Array): InFrame {
  const type = data[0];
  // Any other type (or an empty frame): decodeFrame, which never yields types 10 and 12 here.
  if (type !== MessageType.OpLog && type !== MessageType.SnapshotRows) return decodeFrame(data) as InFrame;
  try {
    const body = new Uint8Array(data.buffer, data.byteOffset + 1, data.byteLength - 1);
    return type === MessageType.OpLog ? { type, msg: OpLogDecoder.decode(body) } : { type, msg: SnapshotRowsDecoder.decode(body) };
  } catch (e) {
    throw new FrameError(`message type ${type}: body does not decode: ${(e as Error).message}`);
  }
}

/** Normalises what a WebSocket delivers (ArrayBuffer, typed array, Node Buffer) to bytes; a string is a protocol error. */
export function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) {
    // A subclass (Node's Buffer) is viewed as a plain Uint8Array: the decoder
    // takes a subarray per bytes field, which is much slower through Buffer's species.
    return data.constructor === Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) {
    // ws may deliver fragmented messages as Buffer[] when binaryType is "fragments".
    const parts = data.map((p) => toBytes(p));
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }
  if (typeof data === "string") throw new FrameError("text WebSocket message (the protocol is binary)");
  throw new FrameError(`unsupported WebSocket message data (${Object.prototype.toString.call(data)})`);
}
