import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  OpLogSchema,
  RelationSchema,
  SnapshotEndSchema,
  SnapshotRowsSchema,
  type TransOp,
} from "../src/gen/pgsat_pb.js";
import { decodeFrame, decodeInFrame, frame, MessageType } from "../src/framing.js";
import { ProtocolError, Replica } from "../src/replica.js";
import { wireRow } from "./fake-server.js";

type OpInit = TransOp["op"];

const todos = create(RelationSchema, {
  relationId: 1,
  schema: "public",
  table: "todos",
  columns: [
    { name: "id", typeOid: 23, typeName: "int4", primaryKey: true },
    { name: "title", typeOid: 25, typeName: "text", nullable: true },
    { name: "body", typeOid: 25, typeName: "text", nullable: true },
    { name: "done", typeOid: 16, typeName: "bool" },
  ],
});

const pairs = create(RelationSchema, {
  relationId: 2,
  schema: "app",
  table: "pairs",
  columns: [
    { name: "a", typeOid: 23, typeName: "int4", primaryKey: true },
    { name: "b", typeOid: 25, typeName: "text", primaryKey: true },
    { name: "v", typeOid: 20, typeName: "int8" },
  ],
});

const logs = create(RelationSchema, {
  relationId: 3,
  schema: "public",
  table: "logs",
  columns: [
    { name: "msg", typeOid: 25, typeName: "text" },
    { name: "n", typeOid: 23, typeName: "int4" },
  ],
});

const begin = (lsn: bigint): OpInit => ({ case: "begin", value: { $typeName: "pgsat.v1.Begin", xid: 1, commitLsn: lsn, commitTime: 0n } });
const commit = (lsn: bigint): OpInit => ({ case: "commit", value: { $typeName: "pgsat.v1.Commit", lsn, commitTime: 0n } });
const ins = (rel: number, vals: (string | null)[]): OpInit => ({ case: "insert", value: { $typeName: "pgsat.v1.Insert", relationId: rel, row: wireRow(vals) } });
const upd = (rel: number, vals: (string | null)[], opts: { unchanged?: number[]; old?: (string | null)[] } = {}): OpInit => ({
  case: "update",
  value: {
    $typeName: "pgsat.v1.Update",
    relationId: rel,
    row: wireRow(vals, opts.unchanged),
    ...(opts.old === undefined ? {} : { oldRow: wireRow(opts.old) }),
  },
});
const del = (rel: number, old: (string | null)[]): OpInit => ({ case: "delete", value: { $typeName: "pgsat.v1.Delete", relationId: rel, oldRow: wireRow(old) } });
const trunc = (...ids: number[]): OpInit => ({ case: "truncate", value: { $typeName: "pgsat.v1.Truncate", relationIds: ids } });
const oplog = (...ops: OpInit[]) => create(OpLogSchema, { ops: ops.map((op) => ({ op })) });

function txn(r: Replica, lsn: bigint, ...ops: OpInit[]) {
  return r.onOpLog(oplog(begin(lsn), ...ops, commit(lsn)));
}

function rows(r: Replica, name: string) {
  return [...(r.tables.get(name)?.rows.values() ?? [])];
}

describe("replica", () => {
  it("applies insert, update and delete keyed by primary key, typed by the relation", () => {
    const r = new Replica();
    r.onRelation(todos);
    const applied = txn(r, 10n, ins(1, ["1", "a", "x", "f"]), ins(1, ["2", "b", null, "t"]));
    expect(applied).toHaveLength(1);
    expect(applied[0]?.lsn).toBe(10n);
    expect(r.lsn).toBe(10n);
    expect(rows(r, "public.todos")).toEqual([
      { id: 1, title: "a", body: "x", done: false },
      { id: 2, title: "b", body: null, done: true },
    ]);
    txn(r, 20n, upd(1, ["1", "A", "x", "t"]), del(1, ["2", null, null, null]));
    expect(rows(r, "public.todos")).toEqual([{ id: 1, title: "A", body: "x", done: true }]);
    expect(r.lsn).toBe(20n);
  });

  it("reports changes per table with keys and previous rows", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]));
    const [a] = txn(r, 20n, upd(1, ["1", "b", "x", "f"]), ins(1, ["2", "c", "y", "f"]), del(1, ["1", null, null, null]));
    expect(a?.changes.get("public.todos")).toEqual([
      { op: "update", key: "1", oldKey: "1", row: { id: 1, title: "b", body: "x", done: false }, old: { id: 1, title: "a", body: "x", done: false } },
      { op: "insert", key: "2", row: { id: 2, title: "c", body: "y", done: false } },
      { op: "delete", key: "1", old: { id: 1, title: "b", body: "x", done: false } },
    ]);
  });

  it("lists no changes for the tables wantChanges declines, and applies them all the same", () => {
    const r = new Replica();
    const asked: string[] = [];
    r.wantChanges = (t) => {
      asked.push(t);
      return t === "app.pairs";
    };
    r.onRelation(todos);
    r.onRelation(pairs);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]), ins(1, ["2", "b", "y", "f"]));
    const v = r.tables.get("public.todos")?.version ?? 0;
    const [a] = txn(r, 20n, upd(1, ["1", "A", "", "t"], { unchanged: [2] }), del(1, ["2", null, null, null]), ins(2, ["1", "x", "5"]), trunc(1), ins(1, ["3", "c", null, "f"]));
    expect(a?.changes.get("public.todos")).toEqual([]);
    expect(a?.changes.get("app.pairs")).toEqual([{ op: "insert", key: '["1","x"]', row: { a: 1, b: "x", v: 5n } }]);
    expect(r.tables.get("public.todos")?.version).toBe(v + 1);
    expect(rows(r, "public.todos")).toEqual([{ id: 3, title: "c", body: null, done: false }]);
    // asked once per table and transaction
    expect(asked).toEqual(["public.todos", "public.todos", "app.pairs"]);
  });

  it("keeps the previous value of unchanged-TOAST columns", () => {
    const r = new Replica();
    r.onRelation(todos);
    const big = "B".repeat(10_000);
    txn(r, 10n, ins(1, ["1", "a", big, "f"]));
    // body (column 2) not sent: empty value, unchanged bit set
    txn(r, 20n, upd(1, ["1", "renamed", "", "t"], { unchanged: [2] }));
    expect(rows(r, "public.todos")).toEqual([{ id: 1, title: "renamed", body: big, done: true }]);
    // a later update that does send the column replaces it
    txn(r, 30n, upd(1, ["1", "renamed", "small", "t"]));
    expect(rows(r, "public.todos")[0]?.body).toBe("small");
  });

  it("an update that changes the primary key removes the old key", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]), ins(1, ["2", "b", "y", "f"]));
    const [a] = txn(r, 20n, upd(1, ["5", "a", "", "f"], { old: ["1", null, null, null], unchanged: [2] }));
    expect([...(r.tables.get("public.todos")?.rows.keys() ?? [])].sort()).toEqual(["2", "5"]);
    expect(r.tables.get("public.todos")?.rows.get("5")).toEqual({ id: 5, title: "a", body: "x", done: false });
    expect(a?.changes.get("public.todos")?.[0]).toMatchObject({ op: "update", key: "5", oldKey: "1" });
  });

  it("keys by a composite primary key", () => {
    const r = new Replica();
    r.onRelation(pairs);
    txn(r, 10n, ins(2, ["1", "x", "10"]), ins(2, ["1", "y", "11"]), ins(2, ["2", "x", "12"]));
    txn(r, 20n, upd(2, ["1", "y", "99"]), del(2, ["2", "x", null]));
    expect(rows(r, "app.pairs")).toEqual([
      { a: 1, b: "x", v: 10n },
      { a: 1, b: "y", v: 99n },
    ]);
  });

  it("keys a table without primary key by all its columns (delete under REPLICA IDENTITY FULL)", () => {
    const r = new Replica();
    r.onRelation(logs);
    txn(r, 10n, ins(3, ["hello", "1"]), ins(3, ["hello", "2"]), ins(3, [null, "3"]));
    txn(r, 20n, del(3, ["hello", "1"]), upd(3, ["bye", "3"], { old: [null, "3"] }));
    expect(rows(r, "public.logs")).toEqual([
      { msg: "hello", n: 2 },
      { msg: "bye", n: 3 },
    ]);
  });

  it("truncate empties the named tables only", () => {
    const r = new Replica();
    r.onRelation(todos);
    r.onRelation(pairs);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]), ins(2, ["1", "x", "1"]));
    const [a] = txn(r, 20n, trunc(1), ins(1, ["7", "after", null, "f"]));
    expect(rows(r, "public.todos")).toEqual([{ id: 7, title: "after", body: null, done: false }]);
    expect(rows(r, "app.pairs")).toHaveLength(1);
    expect(a?.changes.get("public.todos")?.map((c) => c.op)).toEqual(["truncate", "insert"]);
  });

  it("applies a transaction split over several OpLog messages only at its Commit", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]));
    expect(r.onOpLog(oplog(begin(20n), ins(1, ["2", "b", "y", "f"])))).toEqual([]);
    expect(r.inTransaction).toBe(true);
    expect(r.onOpLog(oplog(upd(1, ["1", "A", "x", "f"]), del(1, ["2", null, null, null])))).toEqual([]);
    // nothing visible yet, position unchanged
    expect(rows(r, "public.todos")).toEqual([{ id: 1, title: "a", body: "x", done: false }]);
    expect(r.lsn).toBe(10n);
    const applied = r.onOpLog(oplog(commit(20n), begin(30n), ins(1, ["3", "c", "z", "t"]), commit(30n)));
    expect(applied.map((a) => a.lsn)).toEqual([20n, 30n]);
    expect(rows(r, "public.todos")).toEqual([
      { id: 1, title: "A", body: "x", done: false },
      { id: 3, title: "c", body: "z", done: true },
    ]);
    expect(r.lsn).toBe(30n);
  });

  it("drops an unfinished transaction on resetSession (a reconnect resumes before it)", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]));
    r.onOpLog(oplog(begin(20n), del(1, ["1", null, null, null])));
    r.resetSession();
    expect(r.inTransaction).toBe(false);
    expect(rows(r, "public.todos")).toHaveLength(1);
    expect(r.lsn).toBe(10n);
    // the next session must send the Relation again before using it
    expect(() => txn(r, 20n, del(1, ["1", null, null, null]))).toThrow(ProtocolError);
  });

  it("builds a snapshot aside and swaps it in at SnapshotEnd", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 5n, ins(1, ["99", "stale", null, "f"]));
    r.clear();
    r.beginSnapshot();
    r.onRelation(todos);
    r.onSnapshotRows(create(SnapshotRowsSchema, { relationId: 1, rows: [wireRow(["1", "a", "x", "f"]), wireRow(["2", "b", "y", "f"])] }));
    // a transaction that committed during the snapshot
    txn(r, 40n, upd(1, ["2", "B", "", "t"], { unchanged: [2] }));
    expect(r.tables.size).toBe(0);
    expect(r.lsn).toBe(0n);
    const a = r.onSnapshotEnd(create(SnapshotEndSchema, { lsn: 50n, rows: 2n, viewId: "v1" }));
    expect(a.whole).toBe(true);
    expect(a.changes.get("public.todos")).toEqual([{ op: "reset" }]);
    expect(r.lsn).toBe(50n);
    expect(r.viewId).toBe("v1");
    expect(rows(r, "public.todos")).toEqual([
      { id: 1, title: "a", body: "x", done: false },
      { id: 2, title: "B", body: "y", done: true },
    ]);
  });

  it("a snapshot interrupted by a reconnect leaves nothing behind", () => {
    const r = new Replica();
    r.beginSnapshot();
    r.onRelation(todos);
    r.onSnapshotRows(create(SnapshotRowsSchema, { relationId: 1, rows: [wireRow(["1", "a", "x", "f"])] }));
    r.resetSession();
    expect(r.snapshotting).toBe(false);
    expect(r.tables.size).toBe(0);
    expect(r.lsn).toBe(0n);
  });

  it("reshapes and re-keys rows when a Relation changes the table's columns", () => {
    const r = new Replica();
    r.onRelation(todos);
    txn(r, 10n, ins(1, ["1", "a", "x", "f"]));
    const changed = create(RelationSchema, {
      relationId: 1,
      schema: "public",
      table: "todos",
      columns: [
        { name: "id", typeOid: 23, typeName: "int4", primaryKey: true },
        { name: "title", typeOid: 25, typeName: "text" },
        { name: "done", typeOid: 16, typeName: "bool" },
        { name: "prio", typeOid: 23, typeName: "int4" },
      ],
    });
    const a = r.onRelation(changed);
    expect(a?.changes.get("public.todos")).toEqual([{ op: "reset" }]);
    expect(rows(r, "public.todos")).toEqual([{ id: 1, title: "a", done: false, prio: null }]);
    txn(r, 20n, ins(1, ["2", "b", "t", "5"]));
    expect(rows(r, "public.todos")[1]).toEqual({ id: 2, title: "b", done: true, prio: 5 });
  });

  it("rejects ops that break the protocol", () => {
    const r = new Replica();
    r.onRelation(todos);
    expect(() => r.onOpLog(oplog(ins(1, ["1", "a", "x", "f"])))).toThrow(/outside a transaction/);
    expect(() => r.onOpLog(oplog(commit(1n)))).toThrow(/Commit without Begin/);
    const r2 = new Replica();
    r2.onRelation(todos);
    expect(() => r2.onOpLog(oplog(begin(1n), ins(1, ["1", "a"])))).toThrow(/2 values, relation has 4 columns/);
    const r3 = new Replica();
    r3.onRelation(todos);
    const insWithUnchanged: OpInit = { case: "insert", value: { $typeName: "pgsat.v1.Insert", relationId: 1, row: wireRow(["1", "a", "", "f"], [2]) } };
    expect(() => r3.onOpLog(oplog(begin(1n), insWithUnchanged))).toThrow(/unchanged bit/);
    const r4 = new Replica();
    expect(() => r4.onSnapshotRows(create(SnapshotRowsSchema, { relationId: 1 }))).toThrow(/without a snapshot/);
  });
});

describe("row keys", () => {
  const big = create(RelationSchema, {
    relationId: 4,
    schema: "public",
    table: "big",
    columns: [
      { name: "id", typeOid: 20, typeName: "int8", primaryKey: true },
      { name: "v", typeOid: 25, typeName: "text" },
    ],
  });

  it("are rowKey's strings in rows and changes, for integer keys in and beyond the safe range", () => {
    const r = new Replica();
    r.onRelation(big);
    const huge = "9007199254740993"; // 2^53 + 1: no exact number
    const a = txn(r, 10n, ins(4, [huge, "a"]), ins(4, ["-5", "b"]), ins(4, ["0", "c"]));
    expect(a[0]?.changes.get("public.big")?.map((c) => (c.op === "insert" ? c.key : ""))).toEqual([huge, "-5", "0"]);
    const t = r.tables.get("public.big");
    const before = t?.rows;
    expect([...(before?.keys() ?? [])]).toEqual([huge, "-5", "0"]);
    expect(before?.get(huge)).toEqual({ id: 2n ** 53n + 1n, v: "a" });
    expect(t?.rows).toBe(before); // same Map until the table changes
    const b = txn(r, 20n, upd(4, ["7", "B"], { old: ["-5", null] }), del(4, [huge, null]), ins(4, ["0", "C"]));
    expect(b[0]?.changes.get("public.big")).toEqual([
      { op: "update", key: "7", row: { id: 7n, v: "B" }, oldKey: "-5", old: { id: -5n, v: "b" } },
      { op: "delete", key: huge, old: { id: 2n ** 53n + 1n, v: "a" } },
      { op: "update", key: "0", row: { id: 0n, v: "C" }, oldKey: "0", old: { id: 0n, v: "c" } },
    ]);
    expect([...(t?.rows.entries() ?? [])]).toEqual([
      ["0", { id: 0n, v: "C" }],
      ["7", { id: 7n, v: "B" }],
    ]);
    expect(before?.has("-5")).toBe(true); // the old Map is not updated
  });

  it("int8 as string and text keys that look like integers stay strings", () => {
    const r = new Replica({ int8: "string" });
    r.onRelation(big);
    txn(r, 10n, ins(4, ["12", "a"]));
    expect([...(r.tables.get("public.big")?.rows.keys() ?? [])]).toEqual(["12"]);
    const a = txn(r, 20n, del(4, ["12", null]));
    expect(a[0]?.changes.get("public.big")).toEqual([{ op: "delete", key: "12", old: { id: "12", v: "a" } }]);
  });

  it("load keys persisted rows by their key columns; assigning rows replaces them", () => {
    const r = new Replica();
    r.load([{ name: "public.big", columns: big.columns.map((c) => ({ ...c })), rows: [["3", { id: 3n, v: "x" }]] }], 5n, "");
    r.onRelation(big);
    const a = txn(r, 10n, del(4, ["3", null]));
    expect(a[0]?.changes.get("public.big")).toEqual([{ op: "delete", key: "3", old: { id: 3n, v: "x" } }]);
    const t = r.tables.get("public.big");
    if (t === undefined) throw new Error("table");
    t.rows = new Map([["whatever", { id: 4n, v: "y" }]]);
    expect([...t.rows]).toEqual([["4", { id: 4n, v: "y" }]]);
  });
});

describe("replica fed by the client's fast decoder (framing.decodeInFrame)", () => {
  it("applies OpLog and SnapshotRows exactly as from the pb messages, also with fields at their default (absent on the wire)", () => {
    const zero = create(RelationSchema, { ...todos, relationId: 0 });
    const frames = [
      frame(MessageType.OpLog, oplog(begin(10n), ins(0, ["1", "a", null, "f"]), ins(0, ["2", "b", "y", "t"]), ins(0, ["0", "", "", "f"]), commit(10n))),
      frame(MessageType.OpLog, oplog(begin(20n), upd(0, ["2", "B", "", "f"], { unchanged: [2] }), upd(0, ["3", "c", "z", "t"], { old: ["1", null, null, null] }))),
      frame(MessageType.OpLog, oplog(del(0, ["0", null, null, null]), commit(20n))),
      frame(MessageType.OpLog, oplog(begin(0n), trunc(0), commit(0n))),
    ];
    const snap = frame(MessageType.SnapshotRows, { relationId: 0, rows: [wireRow(["7", "s", null, "t"])] });
    const run = (decode: typeof decodeFrame | typeof decodeInFrame) => {
      const r = new Replica();
      r.onRelation(zero);
      const applied = [];
      const states = [];
      for (const f of frames) {
        const d = decode(f);
        if (d.type !== MessageType.OpLog) throw new Error("type");
        applied.push(...r.onOpLog(d.msg));
        states.push([...(r.tables.get("public.todos")?.rows ?? [])]);
      }
      r.beginSnapshot();
      r.onRelation(zero);
      const d = decode(snap);
      if (d.type !== MessageType.SnapshotRows) throw new Error("type");
      r.onSnapshotRows(d.msg);
      r.onSnapshotEnd(create(SnapshotEndSchema, { lsn: 30n }));
      states.push([...(r.tables.get("public.todos")?.rows ?? [])]);
      return { applied, states, lsn: r.lsn };
    };
    const fast = run(decodeInFrame);
    expect(fast).toEqual(run(decodeFrame));
    expect(fast.states[1]).toEqual(fast.states[0]);
    expect(fast.states[2]).toEqual([
      ["2", { id: 2, title: "B", body: "y", done: false }],
      ["3", { id: 3, title: "c", body: "z", done: true }],
    ]);
    expect(fast.states[3]).toEqual([]);
    expect(fast.states[4]).toEqual([["7", { id: 7, title: "s", body: null, done: true }]]);
    expect(fast.lsn).toBe(30n);
  });
});

describe("rowMaker", () => {
  it("builds rows with any column names, in column order, compiled or not", async () => {
    const { rowMaker } = await import("../src/replica.js");
    const names = ["id", 'we"ird', "back\\slash", "new\nline", "ünï", "constructor"];
    const row = rowMaker(names)([1, "a", "b", "c", null, true]);
    expect(Object.keys(row)).toEqual(names);
    expect(row).toEqual({ id: 1, 'we"ird': "a", "back\\slash": "b", "new\nline": "c", ünï: null, constructor: true });
    const dup = rowMaker(["a", "a"])([1, 2]);
    expect(dup).toEqual({ a: 2 });
  });
});
