// Protocol version 1 against the real pgsat binary and a real PostgreSQL:
// live changes, exact resume after SIGKILL + restart, token refresh.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { isDeepStrictEqual } from "node:util";
import { PgsatClient, type ChangeEvent, type Status } from "../../src/index.js";
import { ledgerTxns, Pgsat, Postgres, SCHEMA, sleep, teardown, token, waitUntil, testClients } from "./harness.js";

let pg: Postgres;
let pgsat: Pgsat;

beforeAll(async () => {
  pg = await Postgres.start();
  pg.sql(SCHEMA);
  pgsat = await Pgsat.start(pg);
}, 120_000);

afterEach(() => closeAll());

afterAll(() => teardown());

const { client, closeAll } = testClients(() => pgsat.wsUrl, { snapshot: false });

/** Records every ledger change the client reports and every status it goes through. */
function record(c: PgsatClient): { ledger: string[]; lsns: bigint[]; statuses: Status[] } {
  const r = { ledger: [] as string[], lsns: [] as bigint[], statuses: [] as Status[] };
  c.onChange("ledger", (ev: ChangeEvent) => {
    r.lsns.push(ev.lsn);
    for (const ch of ev.changes) r.ledger.push(ch.op === "insert" ? `insert ${String(ch.row.seq)}` : ch.op === "update" ? `update ${String(ch.row.seq)}` : ch.op);
  });
  c.onStatus((s) => r.statuses.push(s));
  return r;
}

function ledgerMax(): number {
  return Number(pg.sql("SELECT coalesce(max(seq), 0) FROM ledger"));
}

/** The exact event list of ledger inserts from..to, once each, in order. */
function inserts(from: number, to: number): string[] {
  const out: string[] = [];
  for (let i = from; i <= to; i++) out.push(`insert ${i}`);
  return out;
}

function strictlyIncreasing(xs: bigint[]): boolean {
  return xs.every((x, i) => i === 0 || x > (xs[i - 1] as bigint));
}

/** The items table in the database, in the replica's value types (int8 as string). */
function dbItems(): Record<string, unknown>[] {
  return pg
    .rows<Record<string, unknown>>("SELECT id::text AS id, owner, qty, done, meta, note FROM items ORDER BY id")
    .sort((a, b) => Number(a.id) - Number(b.id));
}

function replicaItems(c: PgsatClient): Record<string, unknown>[] {
  const rows = [...(c.getTable("items")?.rows ?? [])];
  return rows.map((r) => ({ id: r.id, owner: r.owner, qty: r.qty, done: r.done, meta: r.meta, note: r.note })).sort((a, b) => Number(a.id) - Number(b.id));
}

describe("pgsat v1 integration", () => {
  it("applies live inserts, updates, deletes and truncates so the replica equals the database", async () => {
    const c = client();
    const rec = record(c);
    await c.connect();
    await c.waitFor("live");
    const base = ledgerMax();
    pg.sql(`
      INSERT INTO items SELECT g, 'user-' || (g % 3), g * 10, g % 2 = 0, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)), repeat('x', g)
        FROM generate_series(1, 50) g;
      BEGIN;
      UPDATE items SET qty = qty + 1, done = NOT done WHERE id % 5 = 0;
      DELETE FROM items WHERE id % 7 = 0;
      INSERT INTO ledger VALUES (${base + 1}, 'multi-statement transaction');
      COMMIT;
      UPDATE items SET id = id + 1000 WHERE id = 1;
      UPDATE items SET meta = NULL, note = NULL WHERE id = 2;
      ${ledgerTxns(base + 2, base + 40)}
      BEGIN; TRUNCATE items; INSERT INTO items VALUES (7, 'after-truncate', 1, true, '{"x": [1, 2]}', 'é ✓'); COMMIT;
      INSERT INTO items SELECT g, 'late', g, false, NULL, 'n' FROM generate_series(100, 120) g;
      DELETE FROM items WHERE id BETWEEN 110 AND 115;
    `);
    const want = dbItems();
    await waitUntil("replica items equal the database", () => isDeepStrictEqual(replicaItems(c), want), 15_000, () =>
      JSON.stringify({ replica: replicaItems(c), db: want }),
    );
    await waitUntil("every ledger row", () => rec.ledger.length >= 40, 15_000, () => rec.ledger.join(","));
    expect(replicaItems(c)).toEqual(want);
    expect(rec.ledger).toEqual(inserts(base + 1, base + 40));
    expect(strictlyIncreasing(rec.lsns)).toBe(true);
    expect(c.status).toBe("live");
    // Types come from the Relation: int4 number, bool boolean, jsonb parsed, int8 as asked (string).
    const row = c.getRow("items", "7");
    expect(row).toEqual({ id: "7", owner: "after-truncate", qty: 1, done: true, meta: { x: [1, 2] }, note: "é ✓" });
  }, 60_000);

  it("resumes exactly after pgsat is SIGKILLed and restarted: no duplicate, no gap", async () => {
    const c = client();
    const rec = record(c);
    await c.connect();
    await c.waitFor("live");
    const from = ledgerMax() + 1;
    const to = from + 199;
    // One writer commits 200 transactions over ~4 s while pgsat dies and comes back.
    const writer = pg.sqlAsync(ledgerTxns(from, to, 20));
    await waitUntil("some rows streamed before the kill", () => rec.ledger.length >= 30, 15_000);
    await pgsat.kill("SIGKILL");
    const seenAtKill = rec.ledger.length;
    await waitUntil("the client notices the kill", () => c.status !== "live", 10_000);
    await sleep(700);
    await pgsat.restart();
    await writer;
    const n = to - from + 1;
    await waitUntil("every ledger row after the restart", () => rec.ledger.length >= n, 30_000, () => `${rec.ledger.length}/${n}, status ${c.status}`);
    await sleep(300); // a duplicate would arrive right after the last row
    expect(seenAtKill).toBeLessThan(n); // the kill really happened mid-stream
    expect(rec.statuses).toContain("offline");
    expect(rec.ledger).toEqual(inserts(from, to));
    expect(strictlyIncreasing(rec.lsns)).toBe(true);
    const table = c.getTable("ledger");
    const db = pg.rows<{ seq: number; note: string }>(`SELECT seq, note FROM ledger WHERE seq BETWEEN ${from} AND ${to} ORDER BY seq`);
    expect(table?.rows.filter((r) => Number(r.seq) >= from).map((r) => ({ seq: r.seq, note: r.note }))).toEqual(db);
    expect(c.status).toBe("live");
  }, 90_000);

  it("SIGTERM: the server says SHUTTING_DOWN after a whole transaction; the client reconnects to the restarted server and resumes exactly", async () => {
    const c = client();
    const rec = record(c);
    const codes: string[] = [];
    c.onStatus((_s, e) => {
      if (e !== null) codes.push(e.code);
    });
    await c.connect();
    await c.waitFor("live");
    const from = ledgerMax() + 1;
    const to = from + 99;
    const writer = pg.sqlAsync(ledgerTxns(from, to, 20));
    await waitUntil("some rows before the shutdown", () => rec.ledger.length >= 20, 15_000);
    await pgsat.kill("SIGTERM");
    await pgsat.restart();
    await writer;
    await waitUntil("every row", () => rec.ledger.length >= to - from + 1, 30_000, () => `${rec.ledger.length}, status ${c.status}`);
    await sleep(300);
    expect(codes).toContain("SHUTTING_DOWN");
    expect(rec.ledger).toEqual(inserts(from, to));
    expect(strictlyIncreasing(rec.lsns)).toBe(true);
  }, 60_000);

  it("a client that stopped resumes from its last Commit.lsn on a new connection (offline changes arrive once)", async () => {
    const { MemoryStore } = await import("../../src/index.js");
    const store = new MemoryStore();
    const a = client({ persistence: store });
    const recA = record(a);
    await a.connect();
    await a.waitFor("live");
    const from = ledgerMax() + 1;
    pg.sql(ledgerTxns(from, from + 9));
    await waitUntil("first 10 rows", () => recA.ledger.length >= 10, 15_000);
    await a.flush();
    a.close();
    pg.sql(ledgerTxns(from + 10, from + 29)); // committed while no client is connected
    const b = client({ persistence: store });
    const recB = record(b);
    await b.connect();
    expect(b.lsn).toBe(a.lsn); // loaded from the store
    await waitUntil("the 20 offline rows", () => recB.ledger.length >= 21, 15_000, () => recB.ledger.join(","));
    await sleep(300);
    expect(recA.ledger).toEqual(inserts(from, from + 9));
    // "reset": the table was loaded from the store; then exactly the 20 rows committed while offline.
    expect(recB.ledger).toEqual(["reset", ...inserts(from + 10, from + 29)]);
    expect(b.getTable("ledger")?.rows.length).toBe(30);
  }, 60_000);

  it("refreshes the token in-band before it expires: the stream never pauses, nothing is lost", async () => {
    let calls = 0;
    const c = client({
      // 4 s tokens (exp in whole seconds: 3-4 s left), refreshed 1.5-2 s before expiry.
      getToken: async () => {
        calls += 1;
        return token("alice", 4);
      },
      refreshBeforeMs: 2_000,
    });
    const rec = record(c);
    await c.connect();
    await c.waitFor("live");
    const from = ledgerMax() + 1;
    const to = from + 299;
    await pg.sqlAsync(ledgerTxns(from, to, 25)); // ~8 s: outlives two token lifetimes
    await waitUntil("every row", () => rec.ledger.length >= to - from + 1, 15_000);
    await sleep(300);
    expect(calls).toBeGreaterThanOrEqual(3); // the first token and at least two refreshes
    expect(rec.statuses).not.toContain("paused");
    expect(rec.statuses).not.toContain("offline");
    expect(rec.ledger).toEqual(inserts(from, to));
    expect(c.error).toBeNull();
  }, 60_000);

  it("TOKEN_EXPIRED pauses the stream; a late refresh resumes it exactly where it paused", async () => {
    let calls = 0;
    const c = client({
      getToken: async () => {
        calls += 1;
        if (calls === 1) return token("alice", 2);
        // The refresh comes too late: the token has expired and the server paused the stream.
        await sleep(3_500);
        return token("alice", 3600);
      },
      refreshBeforeMs: 1_000,
    });
    const rec = record(c);
    await c.connect();
    await c.waitFor("live");
    const from = ledgerMax() + 1;
    const to = from + 199;
    await pg.sqlAsync(ledgerTxns(from, to, 25)); // ~5 s, across the pause
    await waitUntil("every row", () => rec.ledger.length >= to - from + 1, 20_000, () => `${rec.ledger.length}, status ${c.status}`);
    await sleep(300);
    expect(rec.statuses).toContain("paused");
    expect(rec.statuses).not.toContain("offline"); // same connection, no reconnect
    expect(rec.statuses.at(-1)).toBe("live");
    expect(rec.ledger).toEqual(inserts(from, to));
  }, 60_000);

  it("an unknown user is refused and surfaced as a fatal error", async () => {
    const c = client({ getToken: async () => token("mallory") });
    await c.connect();
    await expect(c.waitFor("live")).rejects.toThrow(/USER_NOT_FOUND/);
    expect(c.status).toBe("error");
    expect(c.error?.code).toBe("USER_NOT_FOUND");
  }, 30_000);
});
