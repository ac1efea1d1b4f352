// Protocol 1.1 read rules (RULES_FILE) against the real pgsat binary: what a
// user's replica holds — after the snapshot, through live changes, across a
// RESYNC_REQUIRED — is exactly what its rule allows, checked against a SELECT
// with the rule's WHERE.
import { isDeepStrictEqual } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MemoryStore, PgsatClient, type ClientError, type Status } from "../../src/index.js";
import { join, Pgsat, Postgres, sleep, teardown, token, waitUntil, writeFileSync, testClients } from "./harness.js";

/** docs: alice's own, or her teams'. users and notes are not listed: sent to nobody. */
const RULES_A = `
[[table]]
name = "public.docs"
read = "owner = auth.user_id OR team IN auth.teams"
`;
const WHERE_A = (user: string, teams: string[]): string =>
  `owner = '${user}' OR team IN (${teams.length === 0 ? "NULL" : teams.map((t) => `'${t}'`).join(", ")})`;

/** A changed rules file: only the user's own docs. */
const RULES_B = `
[[table]]
name = "public.docs"
read = "owner = auth.user_id"
`;
const WHERE_B = (user: string): string => `owner = '${user}'`;

let pg: Postgres;
let pgsat: Pgsat;
let rulesPath: string;

beforeAll(async () => {
  pg = await Postgres.start();
  pg.sql(`
    CREATE TABLE users (id text PRIMARY KEY, name text NOT NULL);
    INSERT INTO users VALUES ('alice', 'Alice'), ('bob', 'Bob'), ('carol', 'Carol');
    CREATE TABLE docs (id bigint PRIMARY KEY, owner text NOT NULL, team text, title text NOT NULL);
    ALTER TABLE docs REPLICA IDENTITY FULL;
    CREATE TABLE notes (id int PRIMARY KEY, body text);
    -- Rows that exist before pgsat ever ran: only a snapshot can deliver them.
    INSERT INTO docs
      SELECT g, (ARRAY['alice', 'bob', 'carol'])[1 + g % 3], (ARRAY['red', 'blue', NULL])[1 + (g / 3) % 3], 'doc ' || g
      FROM generate_series(1, 900) g;
    INSERT INTO notes VALUES (1, 'nobody reads this');
  `);
  rulesPath = join(pg.root, "rules.toml");
  writeFileSync(rulesPath, RULES_A);
  pgsat = await Pgsat.start(pg, { env: { RULES_FILE: rulesPath } });
}, 120_000);

afterEach(() => closeAll());

afterAll(() => teardown());

const { client, closeAll } = testClients(() => pgsat.wsUrl, { getToken: async () => token("alice", 3600, { teams: ["red"] }), snapshot: true });

type Doc = { id: string; owner: string; team: string | null; title: string };

/** The rows `where` allows, as the database has them now. */
function allowed(where: string): Doc[] {
  return pg.rows<Doc>(`SELECT id::text AS id, owner, team, title FROM docs WHERE ${where}`).sort((a, b) => Number(a.id) - Number(b.id));
}

function replicaDocs(c: PgsatClient): Doc[] {
  return [...(c.getTable("docs")?.rows ?? [])]
    .map((r) => ({ id: r.id as string, owner: r.owner as string, team: r.team as string | null, title: r.title as string }))
    .sort((a, b) => Number(a.id) - Number(b.id));
}

/** Waits until the replica's docs equal `want()` (re-read each time), describing the difference on timeout. */
async function untilEqual(c: PgsatClient, want: () => Doc[], ms = 20_000): Promise<void> {
  let w = want();
  await waitUntil(
    "the replica's docs equal the allowed rows",
    () => {
      w = want();
      return isDeepStrictEqual(replicaDocs(c), w);
    },
    ms,
    () => {
      const got = replicaDocs(c);
      const gotIds = new Set(got.map((d) => d.id));
      const wantIds = new Set(w.map((d) => d.id));
      return JSON.stringify({
        got: got.length,
        want: w.length,
        extra: got.filter((d) => !wantIds.has(d.id)).slice(0, 5),
        missing: w.filter((d) => !gotIds.has(d.id)).slice(0, 5),
      });
    },
  );
}

/** Every doc row the client ever held (via change events) that `ok` rejects. */
function watchForbidden(c: PgsatClient, ok: (d: Doc) => boolean): Doc[] {
  const bad: Doc[] = [];
  c.onChange("docs", () => {
    for (const d of replicaDocs(c)) if (!ok(d)) bad.push(d);
  });
  return bad;
}

describe("pgsat 1.1 read rules (RULES_FILE)", () => {
  it("snapshot plus live stream holds exactly the rows the rule allows", async () => {
    const c = client();
    const bad = watchForbidden(c, (d) => d.owner === "alice" || d.team === "red");
    // Commits while the snapshot is taken: allowed and forbidden rows alike.
    const writer = pg.sqlAsync(
      Array.from({ length: 60 }, (_, i) => {
        const id = 2000 + i;
        return `INSERT INTO docs VALUES (${id}, '${["alice", "bob", "carol"][i % 3]}', ${["'red'", "'blue'", "NULL"][i % 3]}, 'live ${id}'); SELECT pg_sleep(0.01);`;
      }).join("\n"),
    );
    await c.connect();
    await c.waitFor("live");
    await writer;
    pg.sql(`
      UPDATE docs SET title = title || ' (edited)' WHERE id % 7 = 0;
      DELETE FROM docs WHERE id % 11 = 0;
      INSERT INTO docs VALUES (3000, 'bob', 'blue', 'not for alice'), (3001, 'bob', 'red', 'shared with red');
    `);
    await untilEqual(c, () => allowed(WHERE_A("alice", ["red"])));
    expect(replicaDocs(c).length).toBeGreaterThan(300);
    expect(bad).toEqual([]);
    // Tables the rules do not list never reach the client.
    expect(c.getTable("notes")).toBeUndefined();
    expect(c.getTable("users")).toBeUndefined();
  }, 60_000);

  it("an update moving a row out of the view removes it from the replica; moving in adds it", async () => {
    pg.sql(`
      INSERT INTO docs VALUES (4000, 'alice', NULL, 'will move out'), (4001, 'carol', 'blue', 'will move in');
    `);
    const c = client();
    await c.connect();
    await c.waitFor("live");
    await untilEqual(c, () => allowed(WHERE_A("alice", ["red"])));
    expect(c.getRow("docs", "4000")).toBeDefined();
    expect(c.getRow("docs", "4001")).toBeUndefined();

    pg.sql(`UPDATE docs SET owner = 'carol' WHERE id = 4000; UPDATE docs SET team = 'red', title = 'moved in' WHERE id = 4001;`);
    await waitUntil("4000 gone and 4001 present", () => c.getRow("docs", "4000") === undefined && c.getRow("docs", "4001") !== undefined, 10_000);
    expect(c.getRow("docs", "4001")).toMatchObject({ id: "4001", owner: "carol", team: "red", title: "moved in" });
    // An update of a row that stays outside the view does not bring it in; one inside still arrives.
    pg.sql(`UPDATE docs SET title = 'still carol''s' WHERE id = 4000; UPDATE docs SET title = 'back in' WHERE id = 4001;`);
    await waitUntil("4001 updated", () => c.getRow("docs", "4001")?.title === "back in", 10_000);
    expect(c.getRow("docs", "4000")).toBeUndefined();
    // And back: out again, in again.
    pg.sql(`UPDATE docs SET team = 'blue' WHERE id = 4001; UPDATE docs SET owner = 'alice' WHERE id = 4000;`);
    await waitUntil("4001 gone and 4000 back", () => c.getRow("docs", "4001") === undefined && c.getRow("docs", "4000") !== undefined, 10_000);
    expect(c.getRow("docs", "4000")).toMatchObject({ owner: "alice", title: "still carol's" });
    await untilEqual(c, () => allowed(WHERE_A("alice", ["red"])));
  }, 60_000);

  it("RESYNC_REQUIRED after pgsat restarts with changed rules: the client clears, snapshots again, ends equal to the new view", async () => {
    const store = new MemoryStore();
    const a = client({ persistence: store });
    await a.connect();
    await a.waitFor("live");
    await untilEqual(a, () => allowed(WHERE_A("alice", ["red"])));
    await a.flush();
    const oldView = a.viewId;
    expect(oldView).not.toBe("");
    a.close();

    // While the client is offline: new rules, and changes under them.
    await pgsat.kill();
    writeFileSync(rulesPath, RULES_B);
    try {
      await pgsat.restart();
      pg.sql(`INSERT INTO docs VALUES (5000, 'alice', 'red', 'new under B'), (5001, 'bob', 'red', 'red but not alice''s');`);

      const b = client({ persistence: store });
      const errors: (ClientError | null)[] = [];
      const statuses: Status[] = [];
      b.onStatus((s, e) => {
        statuses.push(s);
        errors.push(e);
      });
      await b.connect();
      // Loaded from the store: the old view's rows, team rows included.
      expect(replicaDocs(b).some((d) => d.owner !== "alice")).toBe(true);
      await waitUntil("a resync", () => errors.some((e) => e?.code === "RESYNC_REQUIRED"), 15_000, () => JSON.stringify({ statuses, errors }));
      await b.waitFor("live");
      await untilEqual(b, () => allowed(WHERE_B("alice")));
      expect(replicaDocs(b).every((d) => d.owner === "alice")).toBe(true);
      expect(statuses).toContain("syncing");
      expect(b.viewId).not.toBe("");
      expect(b.viewId).not.toBe(oldView);
      await b.flush();
      const stored = await store.load();
      expect(stored?.viewId).toBe(b.viewId);
      const storedDocs = stored?.tables.find((t) => t.name === "public.docs")?.rows ?? [];
      expect(storedDocs.length).toBe(allowed(WHERE_B("alice")).length);
    } finally {
      await pgsat.kill();
      writeFileSync(rulesPath, RULES_A);
      await pgsat.restart();
    }
  }, 90_000);

  it("a token refresh that changes a claim the rules use: RESYNC_REQUIRED, then a snapshot of the new view", async () => {
    let teams = ["red"];
    let calls = 0;
    const c = client({
      // Short-lived tokens so the client refreshes in-band within the test.
      getToken: async () => {
        calls += 1;
        return token("alice", 4, { teams });
      },
      refreshBeforeMs: 2_000,
    });
    const errors: (ClientError | null)[] = [];
    c.onStatus((_s, e) => errors.push(e));
    await c.connect();
    await c.waitFor("live");
    await untilEqual(c, () => allowed(WHERE_A("alice", ["red"])));
    const oldView = c.viewId;
    expect(c.getRow("docs", "5002")).toBeUndefined();
    pg.sql(`INSERT INTO docs VALUES (5002, 'carol', 'blue', 'blue team only');`);

    teams = ["blue"];
    const before = calls;
    await waitUntil("a refresh with the new claim", () => calls > before, 10_000);
    await waitUntil("a resync", () => errors.some((e) => e?.code === "RESYNC_REQUIRED"), 15_000, () => JSON.stringify(errors));
    await untilEqual(c, () => allowed(WHERE_A("alice", ["blue"])));
    expect(c.getRow("docs", "5002")).toBeDefined();
    expect(replicaDocs(c).some((d) => d.team === "red" && d.owner !== "alice")).toBe(false);
    expect(c.viewId).not.toBe(oldView);
    await sleep(10);
  }, 60_000);
});
