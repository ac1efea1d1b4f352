// Integration harness: a throwaway PostgreSQL (initdb in a temp dir, free
// port, wal_level=logical, run as `postgres` through runuser when root) and
// the real pgsat binary (PGSAT_BIN, default ../../target/debug/pgsat) in
// insecure mode on free ports.
// Invariant: everything a test starts is registered for teardown and stopped
// (pgsat killed, Postgres stopped immediately, temp dir removed) by
// `teardown()`, also when the test failed half-way.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, realpathSync, rmSync, writeFileSync, appendFileSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { WebSocket } from "ws";
import { PgsatClient, type PgsatClientOptions, type WebSocketConstructor } from "../../src/index.js";
const HERE = dirname(fileURLToPath(import.meta.url));
export const PGSAT_BIN = resolve(HERE, "../..", process.env.PGSAT_BIN ?? "../../target/debug/pgsat");

const cleanups: (() => void)[] = [];

/** Stops everything started since the last teardown (newest first). */
export function teardown(): void {
  while (cleanups.length > 0) {
    const f = cleanups.pop() as () => void;
    try {
      f();
    } catch (e) {
      console.error("teardown:", e);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `f` until it returns a truthy value; throws with `what` (and the last value's description) after `ms`. */
export async function waitUntil<T>(what: string, f: () => T | Promise<T>, ms = 15_000, describe?: () => string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${describe ? `: ${describe()}` : ""}`);
    await sleep(25);
  }
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a !== null ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

/** The directory holding initdb, pg_ctl, postgres and psql: PATH first, else the highest /usr/lib/postgresql/N/bin. */
export function findPgBin(): string {
  const need = ["initdb", "pg_ctl", "postgres", "psql"];
  const fromEnv = process.env.PGSAT_PG_BIN;
  if (fromEnv) return fromEnv;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const p = join(dir, "initdb");
    if (dir !== "" && existsSync(p)) {
      const real = dirname(realpathSync(p));
      if (need.every((n) => existsSync(join(real, n)))) return real;
    }
  }
  const root = "/usr/lib/postgresql";
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const dir = join(root, v, "bin");
      if (need.every((n) => existsSync(join(dir, n)))) return dir;
    }
  }
  throw new Error("PostgreSQL binaries (initdb, pg_ctl, postgres, psql) not found on PATH nor in /usr/lib/postgresql/*/bin: apt-get install -y postgresql");
}

function postgresIds(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const id = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const gid = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (id.status !== 0 || gid.status !== 0) throw new Error("running as root but there is no `postgres` OS user to run the server as");
  return { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

function run(cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A throwaway PostgreSQL cluster. */
export class Postgres {
  readonly bin = findPgBin();
  readonly root: string;
  readonly port: number;
  private readonly ids = postgresIds();

  private constructor(root: string, port: number) {
    this.root = root;
    this.port = port;
  }

  static async start(): Promise<Postgres> {
    const root = mkdtempSync(join("/tmp", "pgsat-ts-it-"));
    const pg = new Postgres(root, await freePort());
    cleanups.push(() => pg.destroy());
    pg.chown(root);
    pg.pgRun("initdb", ["-D", pg.dataDir, "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync", "--auth-local=trust", "--auth-host=trust"]);
    appendFileSync(
      join(pg.dataDir, "postgresql.conf"),
      [
        "",
        "listen_addresses = '127.0.0.1'",
        `unix_socket_directories = '${root}'`,
        `port = ${pg.port}`,
        "wal_level = logical",
        "max_wal_senders = 20",
        "max_replication_slots = 20",
        "shared_buffers = 32MB",
        "fsync = off",
        "log_min_messages = warning",
        "",
      ].join("\n"),
    );
    pg.pgRun("pg_ctl", ["-D", pg.dataDir, "-l", join(root, "server.log"), "-w", "-t", "60", "start"]);
    return pg;
  }

  get dataDir(): string {
    return join(this.root, "data");
  }

  /** The URL pgsat connects with (trust auth on 127.0.0.1). */
  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  private chown(path: string): void {
    if (this.ids !== null) chownSync(path, this.ids.uid, this.ids.gid);
  }

  private pgRun(program: string, args: string[]): string {
    const path = join(this.bin, program);
    return this.ids === null ? run(path, args, { cwd: this.root }) : run("runuser", ["-u", "postgres", "--", path, ...args], { cwd: this.root });
  }

  /** Runs SQL (one or more statements, each its own transaction unless grouped) and returns psql's unaligned output. */
  sql(text: string): string {
    return run(join(this.bin, "psql"), ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", this.root, "-p", String(this.port), "-U", "postgres", "-d", "postgres", "-f", "-"], {
      input: text,
    }).trim();
  }

  /** Runs SQL in a background psql (e.g. a writer with pg_sleep between commits); resolves when it exits 0. */
  sqlAsync(text: string): Promise<void> {
    const p = spawn(join(this.bin, "psql"), ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", this.root, "-p", String(this.port), "-U", "postgres", "-d", "postgres", "-f", "-"], {
      stdio: ["pipe", "ignore", "pipe"],
    });
    let err = "";
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    p.stdin.end(text);
    cleanups.push(() => {
      if (p.exitCode === null) p.kill("SIGKILL");
    });
    return new Promise((res, rej) => {
      p.on("exit", (code) => (code === 0 ? res() : rej(new Error(`psql exited ${code}: ${err}`))));
    });
  }

  /** Rows of a query as parsed JSON objects (`SELECT … ` wrapped in json_agg). */
  rows<T = Record<string, unknown>>(query: string): T[] {
    const out = this.sql(`SELECT coalesce(json_agg(q), '[]') FROM (${query}) q`);
    return JSON.parse(out) as T[];
  }

  destroy(): void {
    if (!existsSync(this.root)) return;
    try {
      this.pgRun("pg_ctl", ["-D", this.dataDir, "-w", "-t", "30", "-m", "immediate", "stop"]);
    } catch {
      // not running
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}

export interface PgsatOptions {
  env?: Record<string, string>;
}

/** The pgsat binary against `pg`, insecure mode, free ports, its log in the cluster's temp dir. */
export class Pgsat {
  proc: ChildProcess | null = null;
  readonly dataDir: string;
  private logFile: string;
  private starts = 0;

  private constructor(
    readonly pg: Postgres,
    public tcpPort: number,
    public wsPort: number,
    public httpPort: number,
    private readonly opts: PgsatOptions,
  ) {
    this.dataDir = join(pg.root, "pgsat-data");
    this.logFile = join(pg.root, "pgsat.log");
  }

  static async start(pg: Postgres, opts: PgsatOptions = {}): Promise<Pgsat> {
    if (!existsSync(PGSAT_BIN)) throw new Error(`pgsat binary not found at ${PGSAT_BIN} (set PGSAT_BIN, or run cargo build)`);
    const s = new Pgsat(pg, await freePort(), await freePort(), await freePort(), opts);
    cleanups.push(() => s.kill());
    // A port picked free can be taken (by any process's outgoing connection)
    // before pgsat binds it: pick others and start again, as the Rust harness does.
    for (let attempt = 1; ; attempt++) {
      try {
        await s.restart();
        return s;
      } catch (e) {
        if (attempt >= 5 || !String(e).includes("Address already in use")) throw e;
        s.tcpPort = await freePort();
        s.wsPort = await freePort();
        s.httpPort = await freePort();
      }
    }
  }

  get running(): boolean {
    const p = this.proc;
    return p !== null && p.exitCode === null && p.signalCode === null;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  get tcpUrl(): string {
    return `tcp://127.0.0.1:${this.tcpPort}`;
  }

  /** Starts the process (again, same ports, data dir and slot) and waits for /readyz. */
  async restart(): Promise<void> {
    if (this.running) throw new Error("pgsat is running");
    this.starts += 1;
    appendFileSync(this.logFile, `\n==== start ${this.starts}\n`);
    const env = {
      PATH: process.env.PATH ?? "",
      DATABASE_URL: this.pg.url,
      AUTH_MODE: "insecure",
      LISTEN_ADDR: `127.0.0.1:${this.tcpPort}`,
      WS_LISTEN_ADDR: `127.0.0.1:${this.wsPort}`,
      HTTP_LISTEN_ADDR: `127.0.0.1:${this.httpPort}`,
      DATA_DIR: this.dataDir,
      SERVER_ID: "pgsat-ts-it",
      LOG_LEVEL: "warn",
      ...this.opts.env,
    };
    const p = spawn(PGSAT_BIN, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    // Output that arrives after teardown removed the temp dir is dropped (not an error).
    const toLog = (d: Buffer): void => {
      try {
        appendFileSync(this.logFile, d);
      } catch {
        // the cluster's temp dir is gone
      }
    };
    p.stdout?.on("data", toLog);
    p.stderr?.on("data", toLog);
    this.proc = p;
    await waitUntil(
      "pgsat /readyz",
      async () => {
        if (p.exitCode !== null || p.signalCode !== null) throw new Error(`pgsat exited ${p.exitCode ?? p.signalCode}: ${this.log()}`);
        try {
          const r = await fetch(`http://127.0.0.1:${this.httpPort}/readyz`);
          return r.status === 200;
        } catch {
          return false;
        }
      },
      30_000,
      () => this.log(),
    );
  }

  /** SIGKILL (no goodbye to clients, no flush beyond what is already durable); waits for the exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.proc;
    if (p === null || !this.running) return;
    const exited = new Promise<void>((r) => p.once("exit", () => r()));
    p.kill(signal);
    await exited;
  }

  log(): string {
    try {
      return readFileSync(this.logFile, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }
}

/** An unsigned token (alg none) for insecure mode, valid for `ttlSec` seconds. */
export function token(userId: string, ttlSec = 3600, extra: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64({ iat: now, exp: now + ttlSec, user_id: userId, ...extra })}.`;
}

/** The demo-ish schema the tests use: users (pgsat's user check) and an append-only ledger plus a mutable table. */
export const SCHEMA = `
CREATE TABLE users (id text PRIMARY KEY, name text NOT NULL);
INSERT INTO users VALUES ('alice', 'Alice'), ('bob', 'Bob');
CREATE TABLE ledger (seq int PRIMARY KEY, note text NOT NULL);
CREATE TABLE items (
  id bigint PRIMARY KEY,
  owner text NOT NULL,
  qty int NOT NULL,
  done boolean NOT NULL DEFAULT false,
  meta jsonb,
  note text
);
`;

/** SQL for transactions `from..to` of the ledger, one row each, optionally sleeping `sleepMs` between commits. */
export function ledgerTxns(from: number, to: number, sleepMs = 0): string {
  const out: string[] = [];
  for (let i = from; i <= to; i++) {
    out.push(`INSERT INTO ledger VALUES (${i}, 'entry ${i}');`);
    if (sleepMs > 0) out.push(`SELECT pg_sleep(${sleepMs / 1000});`);
  }
  return out.join("\n");
}

export { spawn, writeFileSync, join };

/**
 * The clients of one test file: `client(opts)` builds one against the
 * current `url()` with the test defaults (Node's WebSocket, int8 as string,
 * fast backoff) plus the file's `defaults`; `closeAll()` closes every client
 * made so far (call it in afterEach).
 */
export function testClients(url: () => string, defaults: Partial<PgsatClientOptions>) {
  const made: PgsatClient[] = [];
  return {
    client(opts: Partial<PgsatClientOptions> = {}): PgsatClient {
      const c = new PgsatClient({
        url: url(),
        getToken: async () => token("alice"),
        int8: "string",
        WebSocket: WebSocket as unknown as WebSocketConstructor,
        backoff: { initialMs: 50, maxMs: 500 },
        ...defaults,
        ...opts,
      });
      made.push(c);
      return c;
    },
    closeAll(): void {
      for (const c of made.splice(0)) c.close();
    },
  };
}
