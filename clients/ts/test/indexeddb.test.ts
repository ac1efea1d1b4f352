import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { IndexedDbStore } from "../src/indexeddb.js";
import { MemoryStore, type ReplicaStore, type StoreBatch } from "../src/store.js";
import type { ColumnInfo } from "../src/values.js";

const cols: ColumnInfo[] = [
  { name: "id", typeOid: 20, typeName: "int8", primaryKey: true, nullable: false },
  { name: "data", typeOid: 17, typeName: "bytea", primaryKey: false, nullable: true },
];
const schemas = [
  { name: "public.a", columns: cols },
  { name: "public.b", columns: cols },
];

function batch(lsn: bigint, replace: boolean, ops: StoreBatch["ops"]): StoreBatch {
  return { lsn, viewId: `v${lsn}`, schemas, replace, ops };
}

let dbn = 0;
const stores: [string, () => ReplicaStore][] = [
  ["MemoryStore", () => new MemoryStore()],
  ["IndexedDbStore", () => new IndexedDbStore({ clientKey: "ws://x/ws#u1", dbName: `test-${++dbn}` })],
];

describe.each(stores)("%s", (_name, make) => {
  it("is empty at first", async () => {
    expect(await make().load()).toBeNull();
  });

  it("applies batches in order and loads rows, lsn and view_id back (bigint and bytes kept)", async () => {
    const s = make();
    await s.write(
      batch(10n, true, [
        { t: "put", table: "public.a", key: "1", row: { id: 1n, data: new Uint8Array([1, 2]) } },
        { t: "put", table: "public.a", key: "2", row: { id: 2n, data: null } },
        { t: "put", table: "public.b", key: "1", row: { id: 1n, data: null } },
      ]),
    );
    await s.write(
      batch(20n, false, [
        { t: "del", table: "public.a", key: "2" },
        { t: "truncate", table: "public.b" },
        { t: "put", table: "public.b", key: "9", row: { id: 9n, data: new Uint8Array([9]) } },
      ]),
    );
    const got = await s.load();
    expect(got?.lsn).toBe(20n);
    expect(got?.viewId).toBe("v20");
    expect(got?.tables.map((t) => t.name)).toEqual(["public.a", "public.b"]);
    expect(got?.tables[0]?.columns).toEqual(cols);
    expect(got?.tables[0]?.rows).toEqual([["1", { id: 1n, data: new Uint8Array([1, 2]) }]]);
    expect(got?.tables[1]?.rows).toEqual([["9", { id: 9n, data: new Uint8Array([9]) }]]);
  });

  it("replace drops every earlier row", async () => {
    const s = make();
    await s.write(batch(10n, true, [{ t: "put", table: "public.a", key: "1", row: { id: 1n, data: null } }]));
    await s.write(batch(30n, true, [{ t: "put", table: "public.b", key: "3", row: { id: 3n, data: null } }]));
    const got = await s.load();
    expect(got?.tables.flatMap((t) => t.rows.map(([k]) => `${t.name}/${k}`))).toEqual(["public.b/3"]);
  });

  it("clear forgets everything", async () => {
    const s = make();
    await s.write(batch(10n, true, [{ t: "put", table: "public.a", key: "1", row: { id: 1n, data: null } }]));
    await s.clear();
    expect(await s.load()).toBeNull();
  });
});

describe("IndexedDbStore", () => {
  it("keeps clients with different keys apart in one database", async () => {
    const a = new IndexedDbStore({ clientKey: "a", dbName: "shared" });
    const b = new IndexedDbStore({ clientKey: "b", dbName: "shared" });
    await a.write(batch(10n, true, [{ t: "put", table: "public.a", key: "1", row: { id: 1n, data: null } }]));
    await b.write(batch(20n, true, [{ t: "put", table: "public.a", key: "2", row: { id: 2n, data: null } }]));
    await b.write(batch(21n, true, []));
    await b.clear();
    const got = await a.load();
    expect(got?.lsn).toBe(10n);
    expect(got?.tables[0]?.rows.map(([k]) => k)).toEqual(["1"]);
    expect(await b.load()).toBeNull();
    // A second store object on the same key sees the data (a page reload).
    const again = new IndexedDbStore({ clientKey: "a", dbName: "shared" });
    expect((await again.load())?.lsn).toBe(10n);
    a.close();
    b.close();
    again.close();
  });

  it("reports a missing IndexedDB as an error, not a crash", async () => {
    const saved = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    delete (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    try {
      const s = new IndexedDbStore({ clientKey: "k" });
      await expect(s.load()).rejects.toThrow(/not available/);
    } finally {
      (globalThis as { indexedDB?: IDBFactory }).indexedDB = saved;
    }
  });
});
