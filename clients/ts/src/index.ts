// Public entry point of @pgsat/client.
export {
  PgsatClient,
  type PgsatClientOptions,
  type Status,
  type ClientError,
  type ChangeEvent,
  type ClientSnapshot,
  type TableSnapshot,
  type WebSocketLike,
  type WebSocketConstructor,
} from "./client.js";
export { Replica, ProtocolError, qualify, rowKey, type Change, type Applied, type TableState } from "./replica.js";
export { MemoryStore, type ReplicaStore, type StoreBatch, type StoreOp, type StoredState, type StoredTable } from "./store.js";
export { IndexedDbStore, type IndexedDbStoreOptions } from "./indexeddb.js";
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { errorAction, errorCodeName, type ErrorAction } from "./policy.js";
export { decodeFrame, encodeFrame, frame, makeMessage, FrameError, MessageType, toBytes, type Frame, type FrameType, type FrameMessages } from "./framing.js";
export { decodeValue, decoderFor, parseBytea, type Value, type JsonValue, type Row, type ColumnInfo, type Int8Mode, type ValueOptions } from "./values.js";
export * as pb from "./gen/pgsat_pb.js";
export { ErrorCode } from "./gen/pgsat_pb.js";
