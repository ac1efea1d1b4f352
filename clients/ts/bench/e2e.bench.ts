// End-to-end benchmark (issue 11): 1,000,000 rows (10,000 transactions of
// 100 rows, ~200-byte rows) committed to a real PostgreSQL, logged by the real
// pgsat, then streamed from the same position over WebSocket to
//   - the Rust client (`pgsat tail`, which decodes every row and prints it as JSON), and
//   - this package's PgsatClient applying them into its in-memory replica,
// in the same run. Prints rows/s of each and the ratio.
// Run: npm run bench:e2e  (builds nothing; needs target/debug/pgsat or PGSAT_BIN —
// use a release build for meaningful Rust numbers: PGSAT_BIN=../../target/release/pgsat).
// TXNS=1000 for a quick run.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { it } from "vitest";
import { WebSocket } from "ws";
import { PgsatClient, type WebSocketConstructor } from "../src/index.js";
import { PGSAT_BIN, Pgsat, Postgres, teardown, token, waitUntil } from "../test/integration/harness.js";

const TXNS = Number(process.env.TXNS ?? 10_000);
const PER = 100;
const ROWS = TXNS * PER;

interface Run {
  /** Wall-clock seconds from start until the last row was received. */
  secs: number;
  /** CPU seconds (user + system) the client process used meanwhile. */
  cpu: number;
}

/** utime + stime of a process, in seconds (Linux /proc; 100 ticks per second). */
function procCpu(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function rustTail(url: string, fromLsn: bigint): Promise<Run> {
  const t0 = performance.now();
  const p = spawn(PGSAT_BIN, ["tail", "--url", url, "--token", token("alice"), "--from-lsn", String(fromLsn)], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { PATH: process.env.PATH ?? "", LOG_LEVEL: "warn" },
  });
  let lines = 0;
  await new Promise<void>((resolve, reject) => {
    p.on("exit", (code) => reject(new Error(`pgsat tail exited ${code} after ${lines} lines`)));
    p.stdout.on("data", (d: Buffer) => {
      for (let i = d.indexOf(10); i !== -1; i = d.indexOf(10, i + 1)) lines++;
      if (lines >= TXNS) resolve();
    });
  });
  const secs = (performance.now() - t0) / 1000;
  const cpu = procCpu(p.pid as number);
  p.removeAllListeners("exit");
  p.kill("SIGKILL");
  return { secs, cpu };
}

/** BENCH_PROFILE=1: CPU-profiles a TS run and prints the top functions by self time. */
async function profiled<T>(f: () => Promise<T>): Promise<T> {
  if (process.env.BENCH_PROFILE !== "1") return f();
  const { Session } = await import("node:inspector/promises");
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.start");
  const out = await f();
  const { profile } = await session.post("Profiler.stop");
  if (process.env.BENCH_PROFILE_OUT) (await import("node:fs")).writeFileSync(process.env.BENCH_PROFILE_OUT, JSON.stringify(profile));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  (profile.samples ?? []).forEach((id, i) => {
    const n = byId.get(id);
    if (n === undefined) return;
    const k = `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber}`;
    self.set(k, (self.get(k) ?? 0) + (profile.timeDeltas?.[i] ?? 0));
  });
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(`${((v / total) * 100).toFixed(1)}% ${k}`);
  session.disconnect();
  return out;
}

async function tsClient(url: string, fromLsn: bigint): Promise<Run> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const c = new PgsatClient({
    url,
    getToken: async () => token("alice"),
    snapshot: false,
    startLsn: fromLsn,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    pingIntervalMs: 0,
  });
  let rows = 0;
  let watchdog: ReturnType<typeof setInterval> | undefined;
  const done = new Promise<void>((resolve, reject) => {
    c.onChange("bench", (ev) => {
      rows += ev.changes.length;
      if (rows >= ROWS) resolve();
    });
    // A run that stops making progress fails with what the client knows,
    // instead of hanging until the test timeout.
    let seen = -1;
    watchdog = setInterval(() => {
      if (rows === seen) {
        reject(
          new Error(
            `stalled at ${rows} of ${ROWS} rows: status ${c.status}, lsn ${c.lsn}, ` +
              `replica rows ${c.getTable("bench")?.rows.length ?? "none"}, error ${JSON.stringify(c.error ?? null)}`,
          ),
        );
      }
      seen = rows;
    }, 30_000);
  });
  await c.connect();
  try {
    await done;
  } finally {
    clearInterval(watchdog);
  }
  const secs = (performance.now() - t0) / 1000;
  const used = process.cpuUsage(cpu0);
  const n = c.getTable("bench")?.rows.length ?? 0;
  c.close();
  if (n !== ROWS) throw new Error(`replica has ${n} rows, want ${ROWS}`);
  return { secs, cpu: (used.user + used.system) / 1e6 };
}

it(
  `e2e: ${ROWS} rows into the replica vs the Rust client`,
  async () => {
    try {
      const pg = await Postgres.start();
      pg.sql(`
        CREATE TABLE users (id text PRIMARY KEY);
        INSERT INTO users VALUES ('alice');
        CREATE TABLE bench (id bigint PRIMARY KEY, owner text NOT NULL, qty int NOT NULL, done boolean NOT NULL, note text NOT NULL);
      `);
      const pgsat = await Pgsat.start(pg, { env: { WINDOW_MAX_BYTES: "4GiB", CLIENT_MAX_LAG_BYTES: "4GiB" } });
      // The starting position: the head before any bench row (a resumable position for both clients).
      const probe = new PgsatClient({ url: pgsat.wsUrl, getToken: async () => token("alice"), snapshot: false, WebSocket: WebSocket as unknown as WebSocketConstructor });
      await probe.connect();
      await probe.waitFor("live");
      const from = probe.lsn;
      probe.close();

      const t = performance.now();
      const script: string[] = [];
      for (let i = 0; i < TXNS; i++) {
        const a = i * PER + 1;
        script.push(
          `INSERT INTO bench SELECT g, 'user-' || (g % 100), g % 1000, g % 2 = 0, repeat(md5(g::text), 5) FROM generate_series(${a}, ${a + PER - 1}) g;`,
        );
      }
      pg.sql(script.join("\n"));
      const end = pg.sql("SELECT pg_current_wal_lsn() - '0/0'");
      await waitUntil(
        "pgsat to log every row",
        () => BigInt(pg.sql("SELECT coalesce(max(confirmed_flush_lsn - '0/0'), 0) FROM pg_replication_slots")) >= BigInt(end),
        300_000,
      );
      const avg = pg.sql("SELECT avg(pg_column_size(b.*))::int FROM bench b");
      console.log(`setup: ${ROWS} rows (avg ${avg} bytes/row) committed and logged in ${((performance.now() - t) / 1000).toFixed(1)} s`);

      // Rust twice (the first also warms the OS cache of pgsat's log), TS twice; best of each.
      const rust = [await rustTail(pgsat.wsUrl, from)];
      const ts = [await tsClient(pgsat.wsUrl, from)];
      rust.push(await rustTail(pgsat.wsUrl, from));
      ts.push(await profiled(() => tsClient(pgsat.wsUrl, from)));
      const best = (runs: Run[]): Run => runs.reduce((a, b) => (b.secs < a.secs ? b : a));
      const r = best(rust);
      const s = best(ts);
      const fmt = (n: number): string => Math.round(n).toLocaleString("en");
      const line = (name: string, runs: Run[]): string =>
        `${name}: ${runs.map((x) => `${x.secs.toFixed(2)} s (cpu ${x.cpu.toFixed(2)} s)`).join(", ")} -> best ${fmt(ROWS / best(runs).secs)} rows/s, ` +
        `${fmt(ROWS / best(runs).cpu)} rows per CPU-second`;
      console.log(line("rust client (pgsat tail, ws)", rust));
      console.log(line("ts client (PgsatClient + replica, ws)", ts));
      console.log(
        `ratio ts/rust: ${(r.secs / s.secs).toFixed(2)}x wall-clock, ${(r.cpu / s.cpu).toFixed(2)}x CPU  (targets: >= 0.3x and >= 300,000 rows/s)`,
      );
    } finally {
      teardown();
    }
  },
  900_000,
);
