// The demo in headless Chromium against a real pgsat + Postgres started with
// the demo's read rules (sql/rules.toml, as `pgsat dev` loads them): alice's
// seed rows appear from the snapshot, no other user's row ever appears,
// changes show within 2 s, a SIGKILLed-and-restarted pgsat is
// recovered from without duplicates, a reload resumes from IndexedDB (shown
// while pgsat is down, so they can only come from the local copy), and
// changed rules (RESYNC_REQUIRED) lead to a fresh snapshot of the new view.
// Screenshots go to test-artifacts/ (gitignored).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Pgsat, Postgres, teardown, token, waitUntil } from "../../../clients/ts/test/integration/harness.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../..");
const REPO = resolve(ROOT, "../..");
const DIST = join(ROOT, "dist");
const ARTIFACTS = join(ROOT, "test-artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

let pg: Postgres;
let pgsat: Pgsat;
/** A copy of sql/rules.toml the test may change. */
let rulesFile = "";
let http: Server;
let browser: Browser | null = null;
let base = "";
const consoleLines: string[] = [];

const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };

function serve(dir: string): Promise<Server> {
  const s = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    let file = join(dir, path);
    if (!file.startsWith(dir) || !existsSync(file) || path.endsWith("/")) file = join(dir, "index.html");
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) => s.listen(0, "127.0.0.1", () => r(s)));
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_BIN)`);
  const build = spawnSync("npm", ["run", "build"], { cwd: ROOT, encoding: "utf8" });
  if (build.status !== 0) throw new Error(`npm run build failed: ${build.stdout}${build.stderr}`);
  pg = await Postgres.start();
  pg.sql(readFileSync(join(REPO, "sql/001_users.sql"), "utf8") + readFileSync(join(REPO, "sql/002_demo.sql"), "utf8"));
  rulesFile = join(pg.root, "rules.toml");
  writeFileSync(rulesFile, readFileSync(join(REPO, "sql/rules.toml"), "utf8"));
  pgsat = await Pgsat.start(pg, { env: { RULES_FILE: rulesFile } });
  http = await serve(DIST);
  const a = http.address();
  base = `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  http?.close();
  teardown();
});

interface Todo {
  id: number;
  title: string;
  done: boolean;
}

async function pageTodos(page: Page): Promise<Todo[]> {
  return page.$$eval("#todos li", (lis) =>
    lis.map((li) => ({ id: Number((li as HTMLElement).dataset.id), title: li.querySelector(".title")?.textContent ?? "", done: li.classList.contains("done") })),
  );
}

async function status(page: Page): Promise<string> {
  return (await page.getAttribute("#status", "data-status")) ?? "";
}

it("shows alice's todos live, survives a pgsat SIGKILL and resumes from IndexedDB after a reload", async () => {
  const page = await (browser as Browser).newPage();
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  const shot = (name: string): Promise<Buffer> => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
  try {
    // Every title ever rendered, to check no other user's row shows up even briefly.
    await page.addInitScript(() => {
      const seen: string[] = [];
      (window as unknown as { seenTitles: string[] }).seenTitles = seen;
      new MutationObserver(() => {
        for (const e of document.querySelectorAll("#todos li .title")) if (!seen.includes(e.textContent ?? "")) seen.push(e.textContent ?? "");
      }).observe(document, { subtree: true, childList: true, characterData: true });
    });
    const seenTitles = (): Promise<string[]> => page.evaluate(() => (window as unknown as { seenTitles: string[] }).seenTitles);
    const expected = (): Todo[] => pg.rows<Todo>("SELECT id, title, done FROM todos WHERE owner_id = 'alice' ORDER BY id");
    const others = (): string[] => pg.rows<{ title: string }>("SELECT title FROM todos WHERE owner_id <> 'alice'").map((r) => r.title);
    const same = async (): Promise<boolean> => JSON.stringify(await pageTodos(page)) === JSON.stringify(expected());

    // The seed rows (sql/002_demo.sql) predate pgsat's slot: only the snapshot can deliver them.
    const seed = expected();
    expect(seed.map((t) => t.title).sort()).toEqual(["Bread", "Milk", "Write the announcement"]);
    expect(others()).toContain("Collect feedback"); // carol's, in the seed too
    const alice = token("alice", 3600, { team_id: "red" }); // what `pgsat dev` mints
    await page.goto(`${base}/?url=${encodeURIComponent(pgsat.wsUrl)}&token=${encodeURIComponent(alice)}`);
    await waitUntil("the page to go live", async () => (await status(page)) === "live", 20_000, () => consoleLines.join("\n"));
    await waitUntil("alice's seed rows on the page", same, 10_000, () => JSON.stringify(expected()));
    expect((await pageTodos(page)).map((t) => t.title)).toEqual(seed.map((t) => t.title));
    expect(await page.getAttribute("#source", "data-restored-lsn")).toBe("0");
    expect((await page.textContent("#view")) ?? "").not.toBe("");

    const list = pg.sql("SELECT id FROM todo_lists WHERE owner_id = 'alice' ORDER BY id LIMIT 1");
    const bobList = pg.sql("INSERT INTO todo_lists (owner_id, team_id, title) VALUES ('bob', 'red', 'Bob''s list') RETURNING id");
    pg.sql(`
      INSERT INTO todos (list_id, owner_id, title) VALUES (${list}, 'alice', 'Buy coffee');
      INSERT INTO todos (list_id, owner_id, title, done) VALUES (${list}, 'alice', 'Call the plumber', true);
      INSERT INTO todos (list_id, owner_id, title) VALUES (${bobList}, 'bob', 'Not alice''s');
    `);
    await waitUntil("alice's new rows on the page", same, 5_000, () => JSON.stringify(expected()));

    // Changes in Postgres appear within 2 s.
    let t0 = Date.now();
    pg.sql(`
      INSERT INTO todos (list_id, owner_id, title) VALUES (${list}, 'alice', 'Water the plants');
      UPDATE todos SET done = true, title = 'Buy coffee (beans)' WHERE title = 'Buy coffee';
    `);
    await waitUntil("the insert and update on the page", same, 2_000);
    const latency = Date.now() - t0;
    expect(latency).toBeLessThan(2_000);
    await shot("todo-web-live");

    // pgsat is killed; rows committed while it is down arrive once it is back, once.
    await pgsat.kill("SIGKILL");
    await waitUntil("the page to notice", async () => (await status(page)) !== "live", 10_000);
    pg.sql(`
      INSERT INTO todos (list_id, owner_id, title) VALUES (${list}, 'alice', 'Written while pgsat was down');
      UPDATE todos SET done = NOT done WHERE title = 'Call the plumber';
    `);
    await pgsat.restart();
    await waitUntil("recovery after the restart", async () => (await status(page)) === "live" && (await same()), 20_000, () => consoleLines.join("\n"));
    const ids = (await pageTodos(page)).map((t) => t.id);
    expect(new Set(ids).size).toBe(ids.length);

    // Reload while pgsat is down: the rows can only come from IndexedDB.
    const before = await pageTodos(page);
    const lsnBefore = BigInt((await page.textContent("#lsn")) ?? "0");
    const viewBefore = (await page.textContent("#view")) ?? "";
    await waitUntil("the IndexedDB write", async () => page.evaluate(async () => {
      const c = (window as unknown as { pgsat: { flush(): Promise<void> } }).pgsat;
      await c.flush();
      return true;
    }), 5_000);
    await pgsat.kill("SIGKILL");
    await page.reload();
    await waitUntil("the restored copy", async () => (await page.getAttribute("#source", "data-restored-rows")) !== null, 10_000, () => consoleLines.join("\n"));
    expect(await page.getAttribute("#source", "data-restored-rows")).toBe(String(before.length));
    expect(BigInt((await page.getAttribute("#source", "data-restored-lsn")) ?? "0")).toBe(lsnBefore);
    expect(await page.getAttribute("#source", "data-restored-view")).toBe(viewBefore); // kept with the LSN
    expect(await pageTodos(page)).toEqual(before);
    expect(await status(page)).not.toBe("live");
    await shot("todo-web-offline-restored");
    pg.sql(`INSERT INTO todos (list_id, owner_id, title) VALUES (${list}, 'alice', 'After the reload');`);
    await pgsat.restart();
    t0 = Date.now();
    await waitUntil("resume after the reload", async () => (await status(page)) === "live" && (await same()), 20_000, () => consoleLines.join("\n"));
    const after = (await pageTodos(page)).map((t) => t.id);
    expect(new Set(after).size).toBe(after.length);
    expect(after.length).toBe(before.length + 1);
    await shot("todo-web");

    // The rules change (pgsat restarted with another file: only open todos):
    // the stored view is stale, RESYNC_REQUIRED, and the page shows a fresh snapshot.
    const viewOld = (await page.textContent("#view")) ?? "";
    await pgsat.kill("SIGKILL");
    writeFileSync(
      rulesFile,
      readFileSync(join(REPO, "sql/rules.toml"), "utf8").replace('read = "owner_id = auth.user_id"\n', 'read = "owner_id = auth.user_id AND done = false"\n'),
    );
    await pgsat.restart();
    const open = (): Todo[] => pg.rows<Todo>("SELECT id, title, done FROM todos WHERE owner_id = 'alice' AND NOT done ORDER BY id");
    await waitUntil(
      "a fresh snapshot of the new view",
      async () => (await status(page)) === "live" && JSON.stringify(await pageTodos(page)) === JSON.stringify(open()),
      20_000,
      () => consoleLines.join("\n"),
    );
    expect(open().length).toBeLessThan(expected().length);
    expect(await page.textContent("#info")).toContain("fresh snapshot");
    expect(await page.textContent("#view")).not.toBe(viewOld);
    await shot("todo-web-resynced");
    // No row of another user was ever rendered (bob's, same team, and carol's included).
    const seen = await seenTitles();
    expect(seen).toContain("Milk");
    for (const t of others()) expect(seen).not.toContain(t);
    console.log(`insert+update visible after ${latency} ms; resumed ${Date.now() - t0} ms after the restart`);
  } catch (e) {
    await shot("todo-web-failure").catch(() => undefined);
    console.error(consoleLines.join("\n"));
    throw e;
  } finally {
    await page.close();
  }
});
