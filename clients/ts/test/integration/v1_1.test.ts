// Protocol version 1.1 (initial sync, view_id) against the real pgsat binary.
// No skip path: the server implements 1.1, and a skip would hide a regression.
import { isDeepStrictEqual } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  MemoryStore,
  PgsatClient,
  type ClientError,
  type Status,
} from "../../src/index.js";
import { ledgerTxns, Pgsat, Postgres, SCHEMA, sleep, teardown, token, waitUntil, testClients } from "./harness.js";

let pg: Postgres;
let pgsat: Pgsat;

beforeAll(async () => {
  pg = await Postgres.start();
  pg.sql(SCHEMA);
  // Rows that exist before pgsat ever ran: only a snapshot can deliver them.
  pg.sql(`
    INSERT INTO items SELECT g, 'user-' || (g % 3), g, g % 2 = 0, jsonb_build_object('g', g), repeat('y', g % 50) FROM generate_series(1, 2000) g;
    ${ledgerTxns(1, 20)}
  `);
  pgsat = await Pgsat.start(pg);
}, 120_000);

afterEach(() => closeAll());

afterAll(() => teardown());

const { client, closeAll } = testClients(() => pgsat.wsUrl, { snapshot: true });

function dbState(): { items: unknown[]; ledger: unknown[] } {
  return {
    items: pg.rows("SELECT id::text AS id, owner, qty, done, meta, note FROM items").sort((a, b) => Number(a.id) - Number(b.id)),
    ledger: pg.rows("SELECT seq, note FROM ledger").sort((a, b) => Number(a.seq) - Number(b.seq)),
  };
}

function replicaState(c: PgsatClient): { items: unknown[]; ledger: unknown[] } {
  const items = [...(c.getTable("items")?.rows ?? [])]
    .map((r) => ({ id: r.id, owner: r.owner, qty: r.qty, done: r.done, meta: r.meta, note: r.note }))
    .sort((a, b) => Number(a.id) - Number(b.id));
  const ledger = [...(c.getTable("ledger")?.rows ?? [])].map((r) => ({ seq: r.seq, note: r.note })).sort((a, b) => Number(a.seq) - Number(b.seq));
  return { items, ledger };
}

describe("pgsat 1.1 integration (snapshot, view_id)", () => {
  it("a snapshot taken while transactions commit, then live changes, equals the database", async () => {
    const c = client();
    const statuses: Status[] = [];
    c.onStatus((s) => statuses.push(s));
    const writer = pg.sqlAsync(`
      ${ledgerTxns(21, 120, 10)}
      UPDATE items SET qty = -qty WHERE id % 10 = 0;
      DELETE FROM items WHERE id > 1990;
    `);
    await c.connect();
    await c.waitFor("live");
    await writer;
    pg.sql(`${ledgerTxns(121, 130)} INSERT INTO items VALUES (5000, 'late', 1, true, NULL, NULL);`);
    const want = dbState();
    await waitUntil("replica equals the database", () => isDeepStrictEqual(replicaState(c), want), 20_000, () =>
      JSON.stringify({ items: replicaState(c).items.length, ledger: replicaState(c).ledger.length, wantItems: want.items.length, wantLedger: want.ledger.length }),
    );
    expect(statuses).toContain("syncing");
    expect(c.lsn).toBeGreaterThan(0n);
  }, 60_000);

  it("RESYNC_REQUIRED (a stale view_id) clears the replica and snapshots again to the right state", async () => {
    const store = new MemoryStore();
    const a = client({ persistence: store });
    await a.connect();
    await a.waitFor("live");
    await a.flush();
    a.close();
    // Same position, but a view the server never issued, and a row that does not exist.
    const held = await store.load();
    expect(held).not.toBeNull();
    await store.write({
      lsn: a.lsn,
      viewId: `${a.viewId}-stale`,
      schemas: held?.tables.map((t) => ({ name: t.name, columns: t.columns })) ?? [],
      replace: false,
      ops: [{ t: "put", table: "public.items", key: "999999", row: { id: "999999", owner: "ghost", qty: 0, done: false, meta: null, note: null } }],
    });
    pg.sql(ledgerTxns(1001, 1010));
    const b = client({ persistence: store });
    const errors: (ClientError | null)[] = [];
    const statuses: Status[] = [];
    b.onStatus((s, e) => {
      statuses.push(s);
      errors.push(e);
    });
    await b.connect();
    expect(b.getRow("items", "999999")).toBeDefined(); // loaded from the store
    await waitUntil("a resync", () => errors.some((e) => e?.code === "RESYNC_REQUIRED"), 15_000, () => JSON.stringify({ statuses, errors }));
    await b.waitFor("live");
    const want = dbState();
    await waitUntil("replica equals the database", () => isDeepStrictEqual(replicaState(b), want), 20_000);
    expect(b.getRow("items", "999999")).toBeUndefined();
    expect(statuses).toContain("syncing");
    expect(b.viewId).not.toBe(`${a.viewId}-stale`);
    await b.flush();
    const stored = await store.load();
    expect(stored?.viewId).toBe(b.viewId);
    expect(stored?.tables.find((t) => t.name === "public.items")?.rows.some(([k]) => k === "999999")).toBe(false);
    await sleep(10);
  }, 60_000);
});
