import { describe, expect, it } from "vitest";
import { decodeFrame, decodeInFrame, encodeFrame, frame, FrameError, makeMessage, MessageType, toBytes } from "../src/framing.js";
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

  it("decodeInFrame: OpLog and SnapshotRows through the generated ts-proto decoder, with the fields decodeFrame gives; other types as decodeFrame", () => {
    const oplog = frame(MessageType.OpLog, {
      ops: [
        { op: { case: "begin", value: { xid: 1, commitLsn: 2n ** 64n - 1n, commitTime: 3n } } },
        { op: { case: "insert", value: { relationId: 7, row: wireRow(["1", null, ""]) } } },
        { op: { case: "update", value: { relationId: 7, row: wireRow(["1", "x", "y"], [2]), oldRow: wireRow(["0", null, null]) } } },
        { op: { case: "delete", value: { relationId: 0, oldRow: wireRow(["1", null, null]) } } },
        { op: { case: "truncate", value: { relationIds: [7, 8] } } },
        { op: { case: "commit", value: { lsn: 2n ** 64n - 1n, commitTime: 3n } } },
      ],
    });
    const fast = decodeInFrame(oplog);
    const slow = decodeFrame(oplog);
    if (fast.type !== MessageType.OpLog || slow.type !== MessageType.OpLog) throw new Error("type");
    expect(fast.msg.ops.length).toBe(slow.msg.ops.length);
    fast.msg.ops.forEach((o, i) => {
      const s = slow.msg.ops[i]?.op;
      expect(o.op?.$case).toBe(s?.case);
      // Fields at their default value are absent from the wire; ts-proto leaves them undefined (noDefaultsForOptionals).
      const { $typeName: _, ...want } = s?.value as unknown as Record<string, unknown>;
      const got = o.op?.value as unknown as Record<string, unknown>;
      for (const [k, v] of Object.entries(want)) {
        const g = got[k];
        if (v !== null && typeof v === "object" && "$typeName" in v) {
          const { $typeName: __, ...row } = v as Record<string, unknown>;
          const r = g as Record<string, unknown>;
          expect((r.values as Uint8Array[]).map((b) => [...b])).toEqual((row.values as Uint8Array[]).map((b) => [...b]));
          expect([...((r.nulls as Uint8Array | undefined) ?? [])]).toEqual([...(row.nulls as Uint8Array)]);
          expect([...((r.unchanged as Uint8Array | undefined) ?? [])]).toEqual([...(row.unchanged as Uint8Array)]);
        } else {
          expect(g ?? (typeof v === "bigint" ? 0n : typeof v === "number" ? 0 : v)).toEqual(v);
        }
      }
    });
    const rows = frame(MessageType.SnapshotRows, { relationId: 3, rows: [wireRow(["1"]), wireRow([null])] });
    const f = decodeInFrame(rows);
    if (f.type !== MessageType.SnapshotRows) throw new Error("type");
    expect(f.msg.relationId).toBe(3);
    expect(f.msg.rows.map((r) => r.values.map((v) => [...v]))).toEqual([[[0x31]], [[]]]);
    const ping = decodeInFrame(frame(MessageType.PingResp, { lsn: 9n }));
    expect(ping).toEqual(decodeFrame(frame(MessageType.PingResp, { lsn: 9n })));
  });

  it("decodeInFrame rejects what decodeFrame rejects: empty, unknown type, truncated OpLog and SnapshotRows bodies", () => {
    expect(() => decodeInFrame(new Uint8Array(0))).toThrow(FrameError);
    expect(() => decodeInFrame(new Uint8Array([14]))).toThrow(/unknown message type 14/);
    const oplog = frame(MessageType.OpLog, { ops: [{ op: { case: "insert", value: { relationId: 7, row: wireRow(["hello"]) } } }] });
    expect(() => decodeInFrame(oplog.subarray(0, oplog.length - 2))).toThrow(FrameError);
    expect(() => decodeInFrame(new Uint8Array([MessageType.SnapshotRows, 0x12, 0x50, 0x41]))).toThrow(/message type 12: body does not decode/);
  });
});
