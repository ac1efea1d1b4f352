import { describe, expect, it } from "vitest";
import { decodeFrame, encodeFrame, frame, FrameError, makeMessage, MessageType, toBytes } from "../src/framing.js";
import { ErrorCode } from "../src/gen/pgsat_pb.js";
import { wireRow } from "./fake-server.js";

describe("framing", () => {
  it("puts the type byte first and the protobuf body after it, without a length prefix", () => {
    const bytes = frame(MessageType.AckReq, { lsn: 300n });
    // AckReq{lsn=300}: field 1 varint → 0x08 0xac 0x02
    expect([...bytes]).toEqual([11, 0x08, 0xac, 0x02]);
  });

  it("encodes an empty message as the type byte alone", () => {
    expect([...frame(MessageType.PingReq, {})]).toEqual([7]);
    expect([...frame(MessageType.StopReplicationReq, {})]).toEqual([5]);
  });

  it("round-trips every message type", () => {
    const cases = [
      frame(MessageType.ErrorResp, { code: ErrorCode.TOKEN_EXPIRED, message: "m", requestId: "r" }),
      frame(MessageType.AuthReq, { id: "a1", token: "t" }),
      frame(MessageType.AuthResp, { id: "a1", userId: "u", serverId: "s", expiresAt: 1_700_000_000_000_000n }),
      frame(MessageType.StartReplicationReq, { lsn: 2n ** 64n - 1n, tables: ["public.todos"], snapshot: true, viewId: "v" }),
      frame(MessageType.StartReplicationResp, { lsn: 5n, viewId: "v" }),
      frame(MessageType.StopReplicationReq, {}),
      frame(MessageType.StopReplicationResp, {}),
      frame(MessageType.PingReq, {}),
      frame(MessageType.PingResp, { lsn: 9n }),
      frame(MessageType.Relation, { relationId: 7, schema: "public", table: "t", columns: [{ name: "id", typeOid: 23, typeName: "int4", primaryKey: true }] }),
      frame(MessageType.OpLog, {
        ops: [
          { op: { case: "begin", value: { xid: 1, commitLsn: 10n, commitTime: 3n } } },
          { op: { case: "insert", value: { relationId: 7, row: wireRow(["1"]) } } },
          { op: { case: "commit", value: { lsn: 10n, commitTime: 3n } } },
        ],
      }),
      frame(MessageType.AckReq, { lsn: 10n }),
      frame(MessageType.SnapshotRows, { relationId: 7, rows: [wireRow(["1"]), wireRow([null])] }),
      frame(MessageType.SnapshotEnd, { lsn: 10n, rows: 2n, viewId: "v" }),
    ];
    cases.forEach((bytes, type) => {
      const f = decodeFrame(bytes);
      expect(f.type).toBe(type);
      expect(encodeFrame(f.type, f.msg as never)).toEqual(bytes);
    });
    const start = decodeFrame(cases[3] as Uint8Array);
    if (start.type !== MessageType.StartReplicationReq) throw new Error("type");
    expect(start.msg.lsn).toBe(2n ** 64n - 1n);
    expect(start.msg.tables).toEqual(["public.todos"]);
    const op = decodeFrame(cases[10] as Uint8Array);
    if (op.type !== MessageType.OpLog) throw new Error("type");
    expect(op.msg.ops.map((o) => o.op.case)).toEqual(["begin", "insert", "commit"]);
  });

  it("rejects an empty message, an unknown type byte and a body that does not decode", () => {
    expect(() => decodeFrame(new Uint8Array(0))).toThrow(FrameError);
    expect(() => decodeFrame(new Uint8Array([14]))).toThrow(/unknown message type 14/);
    expect(() => decodeFrame(new Uint8Array([255, 1, 2]))).toThrow(FrameError);
    // field 1 declared as length-delimited with a length beyond the end
    expect(() => decodeFrame(new Uint8Array([2, 0x0a, 0x50, 0x41]))).toThrow(FrameError);
  });

  it("accepts ArrayBuffer, typed arrays and Node Buffers, and rejects text", () => {
    const bytes = encodeFrame(MessageType.PingResp, makeMessage(MessageType.PingResp, { lsn: 1n }));
    expect(toBytes(bytes.slice().buffer)).toEqual(bytes);
    expect([...toBytes(Buffer.from(bytes))]).toEqual([...bytes]);
    const view = new DataView(bytes.buffer);
    expect(toBytes(view)).toEqual(bytes);
    expect(() => toBytes("hello")).toThrow(/text WebSocket message/);
  });

  it("views a Node Buffer (also one inside a larger pool) as a plain Uint8Array, and decodes plain bytes fields from it", () => {
    const bytes = frame(MessageType.SnapshotRows, { relationId: 3, rows: [{ values: [new Uint8Array([1, 2]), new Uint8Array([3])] }] });
    const pool = Buffer.alloc(bytes.length + 10);
    pool.set(bytes, 5);
    const buf = pool.subarray(5, 5 + bytes.length);
    const plain = toBytes(buf);
    expect(Object.getPrototypeOf(plain)).toBe(Uint8Array.prototype);
    expect(plain.buffer).toBe(pool.buffer);
    expect([...plain]).toEqual([...bytes]);
    for (const input of [plain, buf]) {
      const f = decodeFrame(input);
      if (f.type !== MessageType.SnapshotRows) throw new Error("wrong type");
      expect(f.msg.relationId).toBe(3);
      const values = f.msg.rows[0]?.values ?? [];
      expect(values.map((v) => [...v])).toEqual([[1, 2], [3]]);
      for (const v of values) expect(Object.getPrototypeOf(v)).toBe(Uint8Array.prototype);
    }
  });
});
