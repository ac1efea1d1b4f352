import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WebSocket } from "ws";
import { PgsatClient, type ChangeEvent, type PgsatClientOptions, type Status, type WebSocketConstructor, type WebSocketLike } from "../src/client.js";
import { MessageType } from "../src/framing.js";
import { ErrorCode, type StartReplicationReq } from "../src/gen/pgsat_pb.js";
import { MemoryStore } from "../src/store.js";
import { FakeServer, until, wireRow, type FakeConn } from "./fake-server.js";

const todosRel = {
  relationId: 1,
  schema: "public",
  table: "todos",
  columns: [
    { name: "id", typeOid: 23, typeName: "int4", primaryKey: true },
    { name: "title", typeOid: 25, typeName: "text" },
    { name: "done", typeOid: 16, typeName: "bool" },
  ],
};

let server: FakeServer;
let clients: PgsatClient[] = [];

beforeEach(async () => {
  server = await FakeServer.start();
});

afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  await server.stop();
});

function makeClient(extra: Partial<PgsatClientOptions> = {}): { client: PgsatClient; tokens: string[]; statuses: Status[] } {
  const tokens: string[] = [];
  let n = 0;
  const client = new PgsatClient({
    url: server.url,
    getToken: async () => {
      n += 1;
      const t = `token-${n}`;
      tokens.push(t);
      return t;
    },
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    backoff: { initialMs: 5, maxMs: 20 },
    ackIntervalMs: 5,
    ...extra,
  });
  const statuses: Status[] = [];
  client.onStatus((s) => statuses.push(s));
  clients.push(client);
  return { client, tokens, statuses };
}

/** Auth + start on a fresh connection; returns the StartReplicationReq. */
async function handshake(conn: FakeConn, expiresAt = 0n): Promise<StartReplicationReq> {
  const auth = await conn.expect(MessageType.AuthReq);
  conn.send(MessageType.AuthResp, { id: auth.id, userId: "u1", serverId: "s", expiresAt });
  return conn.expect(MessageType.StartReplicationReq);
}

/** Serves an initial snapshot of todos rows, ending at `lsn`. */
function serveSnapshot(conn: FakeConn, lsn: bigint, rows: (string | null)[][], viewId = "view-1"): void {
  conn.send(MessageType.StartReplicationResp, { lsn: 0n, viewId });
  conn.send(MessageType.Relation, todosRel);
  conn.send(MessageType.SnapshotRows, { relationId: 1, rows: rows.map((r) => wireRow(r)) });
  conn.send(MessageType.SnapshotEnd, { lsn, rows: BigInt(rows.length), viewId });
}

function sendTxn(conn: FakeConn, lsn: bigint, ...rows: (string | null)[][]): void {
  conn.send(MessageType.OpLog, {
    ops: [
      { op: { case: "begin", value: { xid: 1, commitLsn: lsn } } },
      ...rows.map((r) => ({ op: { case: "insert" as const, value: { relationId: 1, row: wireRow(r) } } })),
      { op: { case: "commit", value: { lsn } } },
    ],
  });
}

/** Waits for an AckReq acknowledging `lsn` (earlier acks of lower positions may come first). */
async function expectAck(conn: FakeConn, lsn: bigint): Promise<void> {
  for (;;) {
    const ack = await conn.expect(MessageType.AckReq);
    expect(ack.lsn).toBeLessThanOrEqual(lsn);
    if (ack.lsn === lsn) return;
  }
}

function titles(client: PgsatClient): string[] {
  return (client.getTable("todos")?.rows ?? []).map((r) => String(r["title"]));
}

/** Connects and brings the client live with a snapshot of one row at lsn 100. */
async function live(client: PgsatClient): Promise<FakeConn> {
  await client.connect();
  const conn = await server.accept();
  await handshake(conn);
  serveSnapshot(conn, 100n, [["1", "first", "f"]]);
  await client.waitFor("live");
  return conn;
}

describe("PgsatClient session", () => {
  it("authenticates, starts with a snapshot of the asked tables, then applies live transactions", async () => {
    const { client, tokens, statuses } = makeClient({ tables: ["todos"] });
    const events: ChangeEvent[] = [];
    client.onChange("todos", (e) => events.push(e));
    await client.connect();
    const conn = await server.accept();
    const auth = await conn.expect(MessageType.AuthReq);
    expect(auth.token).toBe(tokens[0]);
    expect(auth.id).not.toBe("");
    conn.send(MessageType.AuthResp, { id: auth.id, userId: "u1" });
    const start = await conn.expect(MessageType.StartReplicationReq);
    expect(start).toMatchObject({ lsn: 0n, tables: ["todos"], snapshot: true, viewId: "" });
    conn.send(MessageType.StartReplicationResp, { lsn: 0n, viewId: "view-1" });
    await until(() => client.status === "syncing", "syncing");
    conn.send(MessageType.Relation, todosRel);
    conn.send(MessageType.SnapshotRows, { relationId: 1, rows: [wireRow(["1", "a", "f"])] });
    conn.send(MessageType.SnapshotRows, { relationId: 1, rows: [wireRow(["2", "b", "t"])] });
    conn.send(MessageType.SnapshotEnd, { lsn: 100n, rows: 2n, viewId: "view-1" });
    await client.waitFor("live");
    expect(statuses).toEqual(["connecting", "syncing", "live"]);
    expect(client.getTable("public.todos")?.rows).toEqual([
      { id: 1, title: "a", done: false },
      { id: 2, title: "b", done: true },
    ]);
    expect(client.lsn).toBe(100n);
    expect(client.viewId).toBe("view-1");
    expect(events).toEqual([{ table: "public.todos", lsn: 100n, changes: [{ op: "reset" }] }]);

    sendTxn(conn, 110n, ["3", "c", "f"]);
    await until(() => client.lsn === 110n, "lsn 110");
    expect(titles(client)).toEqual(["a", "b", "c"]);
    expect(events[1]).toEqual({ table: "public.todos", lsn: 110n, changes: [{ op: "insert", key: "3", row: { id: 3, title: "c", done: false } }] });
    expect(client.getRow("todos", 3)).toEqual({ id: 3, title: "c", done: false });
    // A snapshot's byKey (built when first read) has its keys and rows, also when the table changed since.
    const older = client.getTable("todos");
    sendTxn(conn, 115n, ["4", "d", "f"]);
    await until(() => client.lsn === 115n, "lsn 115");
    expect([...(older?.byKey ?? [])]).toEqual([
      ["1", { id: 1, title: "a", done: false }],
      ["2", { id: 2, title: "b", done: true }],
      ["3", { id: 3, title: "c", done: false }],
    ]);
    expect(older?.byKey.get("3")).toBe(older?.rows[2]);
    expect([...(client.getTable("todos")?.byKey.keys() ?? [])]).toEqual(["1", "2", "3", "4"]);
    expect(client.getRow("todos", 4)).toEqual({ id: 4, title: "d", done: false });

    // Acknowledged after applying.
    await expectAck(conn, 115n);
  });

  it("starts from the head without snapshot: false and resumes from StartReplicationResp.lsn", async () => {
    const { client } = makeClient({ snapshot: false });
    await client.connect();
    const conn = await server.accept();
    const start = await handshake(conn);
    expect(start).toMatchObject({ lsn: 0n, snapshot: false });
    conn.send(MessageType.StartReplicationResp, { lsn: 500n });
    await client.waitFor("live");
    expect(client.lsn).toBe(500n);
    conn.kill();
    const conn2 = await server.accept();
    expect(await handshake(conn2)).toMatchObject({ lsn: 500n, snapshot: false });
  });

  it("with snapshot: false and startLsn, an empty replica starts after that position, later resumes from its own", async () => {
    const { client } = makeClient({ snapshot: false, startLsn: 300n });
    await client.connect();
    const conn = await server.accept();
    expect(await handshake(conn)).toMatchObject({ lsn: 300n, snapshot: false });
    conn.send(MessageType.StartReplicationResp, { lsn: 300n });
    await client.waitFor("live");
    expect(client.lsn).toBe(300n);
    conn.send(MessageType.Relation, todosRel);
    sendTxn(conn, 400n, ["1", "a", "f"]);
    await until(() => client.lsn === 400n, "lsn 400");
    conn.kill();
    const conn2 = await server.accept();
    expect(await handshake(conn2)).toMatchObject({ lsn: 400n, snapshot: false });
  });

  it("takes ws's Buffers without a copy, and keeps \"arraybuffer\" on a WebSocket that turns unknown binary types into \"blob\"", async () => {
    const seen: string[] = [];
    // Like undici's WebSocket (Node 22's global): an unknown binaryType becomes "blob".
    class StrictWebSocket implements WebSocketLike {
      private readonly ws: WebSocket;
      constructor(url: string) {
        this.ws = new WebSocket(url);
        this.ws.on("message", () => seen.push(this.ws.binaryType));
      }
      get binaryType(): string {
        return this.ws.binaryType;
      }
      set binaryType(t: string) {
        this.ws.binaryType = (t === "arraybuffer" || t === "blob" ? t : "blob") as "arraybuffer";
      }
      get readyState(): number {
        return this.ws.readyState;
      }
      send(data: Uint8Array): void {
        this.ws.send(data);
      }
      close(code?: number, reason?: string): void {
        this.ws.close(code, reason);
      }
      set onopen(f: WebSocketLike["onopen"]) {
        this.ws.onopen = f as never;
      }
      set onmessage(f: WebSocketLike["onmessage"]) {
        this.ws.onmessage = f as never;
      }
      set onclose(f: WebSocketLike["onclose"]) {
        this.ws.onclose = f as never;
      }
      set onerror(f: WebSocketLike["onerror"]) {
        this.ws.onerror = f as never;
      }
      get onopen(): WebSocketLike["onopen"] {
        return this.ws.onopen as never;
      }
      get onmessage(): WebSocketLike["onmessage"] {
        return this.ws.onmessage as never;
      }
      get onclose(): WebSocketLike["onclose"] {
        return this.ws.onclose as never;
      }
      get onerror(): WebSocketLike["onerror"] {
        return this.ws.onerror as never;
      }
    }
    for (const [WS, want] of [
      [WebSocket, "nodebuffer"],
      [StrictWebSocket, "arraybuffer"],
    ] as const) {
      seen.length = 0;
      const { client } = makeClient({ WebSocket: WS as unknown as WebSocketConstructor });
      const conn = await live(client);
      sendTxn(conn, 110n, ["2", "second", "t"]);
      await until(() => client.lsn === 110n, "lsn 110");
      expect(titles(client)).toEqual(["first", "second"]);
      if (WS === StrictWebSocket) expect(new Set(seen)).toEqual(new Set([want]));
      else expect((client as unknown as { conn: { ws: { binaryType: string } } }).conn.ws.binaryType).toBe(want);
      client.close();
    }
  });

  it("a listener added while live gets the next transactions' changes; one removed stops getting them", async () => {
    const { client } = makeClient();
    const conn = await live(client);
    sendTxn(conn, 110n, ["2", "unheard", "f"]);
    await until(() => client.lsn === 110n, "lsn 110");
    const events: ChangeEvent[] = [];
    const off = client.onChange("todos", (e) => events.push(e));
    sendTxn(conn, 120n, ["3", "heard", "f"]);
    await until(() => client.lsn === 120n, "lsn 120");
    expect(events).toEqual([{ table: "public.todos", lsn: 120n, changes: [{ op: "insert", key: "3", row: { id: 3, title: "heard", done: false } }] }]);
    off();
    sendTxn(conn, 130n, ["4", "unheard again", "f"]);
    await until(() => client.lsn === 130n, "lsn 130");
    expect(events).toHaveLength(1);
    expect(titles(client)).toEqual(["first", "unheard", "heard", "unheard again"]);
  });

  it("answers the server's PingReq with its applied position", async () => {
    const { client } = makeClient();
    const conn = await live(client);
    conn.send(MessageType.PingReq, {});
    const pong = await conn.expect(MessageType.PingResp, { skip: [MessageType.AckReq] });
    expect(pong.lsn).toBe(100n);
  });

  it("getSnapshot is stable until a change, and unchanged tables keep their object", async () => {
    const { client } = makeClient();
    let notified = 0;
    client.subscribe(() => notified++);
    const conn = await live(client);
    const s1 = client.getSnapshot();
    expect(client.getSnapshot()).toBe(s1);
    expect(s1.status).toBe("live");
    conn.send(MessageType.Relation, { ...todosRel, relationId: 2, table: "other" });
    sendTxn(conn, 110n, ["2", "second", "f"]);
    await until(() => client.lsn === 110n, "lsn 110");
    const before = notified;
    const s2 = client.getSnapshot();
    expect(s2).not.toBe(s1);
    expect(s2.tables["public.todos"]?.rows).toHaveLength(2);
    expect(client.getSnapshot()).toBe(s2);
    // A change of another table leaves todos' snapshot object as it was.
    conn.send(MessageType.OpLog, {
      ops: [
        { op: { case: "begin", value: { commitLsn: 120n } } },
        { op: { case: "insert", value: { relationId: 2, row: wireRow(["1", "x", "t"]) } } },
        { op: { case: "commit", value: { lsn: 120n } } },
      ],
    });
    await until(() => client.lsn === 120n, "lsn 120");
    const s3 = client.getSnapshot();
    expect(s3).not.toBe(s2);
    expect(s3.tables["public.todos"]).toBe(s2.tables["public.todos"]);
    expect(s3.tables["public.other"]?.rows).toEqual([{ id: 1, title: "x", done: true }]);
    expect(notified).toBeGreaterThan(before);
  });
});

describe("PgsatClient reconnect and resume", () => {
  it("resumes from the last applied Commit.lsn and view_id, discarding a transaction cut by the disconnect", async () => {
    const { client, statuses } = makeClient();
    const conn = await live(client);
    sendTxn(conn, 110n, ["2", "second", "f"]);
    await until(() => client.lsn === 110n, "lsn 110");
    // A transaction starts but the server dies before its Commit.
    conn.send(MessageType.OpLog, {
      ops: [
        { op: { case: "begin", value: { commitLsn: 120n } } },
        { op: { case: "insert", value: { relationId: 1, row: wireRow(["3", "cut", "f"]) } } },
      ],
    });
    conn.kill();
    const conn2 = await server.accept();
    const start = await handshake(conn2);
    expect(start).toMatchObject({ lsn: 110n, snapshot: false, viewId: "view-1" });
    expect(titles(client)).toEqual(["first", "second"]);
    expect(statuses).toContain("offline");
    // The server redelivers the whole transaction: applied exactly once.
    conn2.send(MessageType.StartReplicationResp, { lsn: 110n, viewId: "view-1" });
    conn2.send(MessageType.Relation, todosRel);
    sendTxn(conn2, 120n, ["3", "whole", "f"]);
    await until(() => client.lsn === 120n, "lsn 120");
    expect(titles(client)).toEqual(["first", "second", "whole"]);
    expect(client.status).toBe("live");
  });

  it("restarts the snapshot from scratch when the connection drops before SnapshotEnd", async () => {
    const { client } = makeClient();
    await client.connect();
    const conn = await server.accept();
    await handshake(conn);
    conn.send(MessageType.StartReplicationResp, { lsn: 0n, viewId: "v" });
    conn.send(MessageType.Relation, todosRel);
    conn.send(MessageType.SnapshotRows, { relationId: 1, rows: [wireRow(["1", "partial", "f"])] });
    await until(() => client.status === "syncing", "syncing");
    conn.kill();
    const conn2 = await server.accept();
    expect(await handshake(conn2)).toMatchObject({ lsn: 0n, snapshot: true });
    expect(client.getTable("todos")).toBeUndefined();
    serveSnapshot(conn2, 200n, [["1", "full", "f"]]);
    await client.waitFor("live");
    expect(titles(client)).toEqual(["full"]);
  });

  it("reconnects after a frame that does not decode, and after a text message", async () => {
    const { client } = makeClient({ onError: () => undefined });
    const conn = await live(client);
    conn.sendRaw(new Uint8Array([99, 1, 2]));
    await conn.waitClosed();
    expect(client.error?.code).toBe("PROTOCOL");
    const conn2 = await server.accept();
    expect(await handshake(conn2)).toMatchObject({ lsn: 100n });
    conn2.send(MessageType.StartReplicationResp, { lsn: 100n });
    await client.waitFor("live");
    conn2.sendRaw("hello");
    await conn2.waitClosed();
    const conn3 = await server.accept();
    expect(await handshake(conn3)).toMatchObject({ lsn: 100n });
  });

  it("retries with backoff when getToken fails", async () => {
    let calls = 0;
    const { client } = makeClient({
      onError: () => undefined,
      getToken: async () => {
        calls += 1;
        if (calls < 3) throw new Error("no session yet");
        return "good";
      },
    });
    await client.connect();
    const conn = await server.accept();
    const auth = await conn.expect(MessageType.AuthReq);
    expect(auth.token).toBe("good");
    expect(calls).toBe(3);
  });
});

describe("PgsatClient error codes", () => {
  const fatal = [ErrorCode.AUTH_FAILED, ErrorCode.USER_NOT_FOUND, ErrorCode.USER_DELETED, ErrorCode.PRINCIPAL_CHANGED, ErrorCode.TABLE_NOT_READABLE];
  for (const code of fatal) {
    it(`${ErrorCode[code]} stops with status error`, async () => {
      const { client } = makeClient();
      const conn = await live(client);
      conn.send(MessageType.ErrorResp, { code, message: "no" });
      await until(() => client.status === "error", "status error");
      expect(client.error).toEqual({ code: ErrorCode[code], message: "no" });
      await conn.waitClosed();
      // Nothing is scheduled: no reconnect, no refresh.
      expect(client["reconnectTimer"]).toBeNull();
      expect(client["refreshTimer"]).toBeNull();
      expect(client.getSnapshot().status).toBe("error");
      // The replica stays readable.
      expect(titles(client)).toEqual(["first"]);
    });
  }

  it("AUTH_FAILED on the first AuthReq stops with status error", async () => {
    const { client } = makeClient();
    await client.connect();
    const conn = await server.accept();
    await conn.expect(MessageType.AuthReq);
    conn.send(MessageType.ErrorResp, { code: ErrorCode.AUTH_FAILED, message: "bad signature" });
    conn.close();
    await expect(client.waitFor("live")).rejects.toThrow(/AUTH_FAILED bad signature/);
    expect(client.status).toBe("error");
  });

  const reconnecting = [
    ErrorCode.SLOW_CONSUMER,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.INTERNAL,
    ErrorCode.INVALID_REQUEST,
    ErrorCode.FRAME_TOO_LARGE,
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.AUTH_TIMEOUT,
    ErrorCode.REPLICATION_ALREADY_STARTED,
    ErrorCode.REPLICATION_NOT_STARTED,
  ];
  for (const code of reconnecting) {
    it(`${ErrorCode[code]} reconnects and resumes from the last applied position`, async () => {
      const { client, statuses } = makeClient();
      const conn = await live(client);
      sendTxn(conn, 110n, ["2", "second", "f"]);
      await until(() => client.lsn === 110n, "lsn 110");
      conn.send(MessageType.ErrorResp, { code, message: "bye" });
      await conn.waitClosed();
      const conn2 = await server.accept();
      expect(await handshake(conn2)).toMatchObject({ lsn: 110n, snapshot: false, viewId: "view-1" });
      expect(statuses.slice(-2)).toEqual(["offline", "connecting"]);
      expect(titles(client)).toEqual(["first", "second"]);
      conn2.send(MessageType.StartReplicationResp, { lsn: 110n, viewId: "view-1" });
      await client.waitFor("live");
      expect(client.error).toBeNull();
    });
  }

  for (const code of [ErrorCode.BEHIND_WINDOW, ErrorCode.RESYNC_REQUIRED]) {
    it(`${ErrorCode[code]} clears the replica and starts again with a snapshot`, async () => {
      const { client } = makeClient();
      const events: ChangeEvent[] = [];
      client.onChange("todos", (e) => events.push(e));
      const conn = await live(client);
      conn.send(MessageType.ErrorResp, { code, message: "resync" });
      await until(() => client.getTable("todos") === undefined, "replica cleared");
      expect(client.lsn).toBe(0n);
      expect(client.viewId).toBe("");
      expect(events.at(-1)?.changes).toEqual([{ op: "reset" }]);
      const conn2 = await server.accept();
      expect(await handshake(conn2)).toMatchObject({ lsn: 0n, snapshot: true, viewId: "" });
      serveSnapshot(conn2, 300n, [["9", "fresh", "t"]], "view-2");
      await client.waitFor("live");
      expect(titles(client)).toEqual(["fresh"]);
      expect(client.viewId).toBe("view-2");
    });
  }

  it("TOKEN_EXPIRED pauses, refreshes the token on the same connection, and resumes", async () => {
    const { client, tokens, statuses } = makeClient();
    const conn = await live(client);
    conn.send(MessageType.ErrorResp, { code: ErrorCode.TOKEN_EXPIRED, message: "expired" });
    const refresh = await conn.expect(MessageType.AuthReq, { skip: [MessageType.AckReq] });
    expect(refresh.token).toBe(tokens[1]);
    expect(client.status).toBe("paused");
    conn.send(MessageType.AuthResp, { id: refresh.id, userId: "u1" });
    await client.waitFor("live");
    expect(statuses.slice(-2)).toEqual(["paused", "live"]);
    expect(server.conns).toHaveLength(1);
    // The stream continues on the same connection.
    sendTxn(conn, 130n, ["5", "after refresh", "f"]);
    await until(() => client.lsn === 130n, "lsn 130");
  });

  it("TOKEN_EXPIRED at auth (then close) reconnects with a new token", async () => {
    const { client, tokens } = makeClient();
    await client.connect();
    const conn = await server.accept();
    await conn.expect(MessageType.AuthReq);
    conn.send(MessageType.ErrorResp, { code: ErrorCode.TOKEN_EXPIRED, message: "expired" });
    conn.close();
    const conn2 = await server.accept();
    const auth = await conn2.expect(MessageType.AuthReq);
    expect(auth.token).toBe(tokens.at(-1));
    expect(tokens.length).toBeGreaterThanOrEqual(2);
  });
});

describe("PgsatClient token refresh scheduling", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("sends a new AuthReq before expires_at on the live connection", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
    const t0 = Date.UTC(2030, 0, 1);
    vi.setSystemTime(t0);
    const { client, tokens } = makeClient({ refreshBeforeMs: 30_000, pingIntervalMs: 0, ackIntervalMs: 1_000_000 });
    await client.connect();
    const conn = await server.accept();
    await handshake(conn, BigInt(t0 + 120_000) * 1000n);
    serveSnapshot(conn, 100n, []);
    await client.waitFor("live");
    expect(tokens).toHaveLength(1);

    // expires in 120 s, refresh 30 s before: at +90 s.
    await vi.advanceTimersByTimeAsync(89_999);
    expect(tokens).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(tokens).toHaveLength(2);
    const refresh = await conn.expect(MessageType.AuthReq);
    expect(refresh.token).toBe("token-2");

    // New token lives 10 s: refreshed at half its life (5 s), not 30 s before.
    conn.send(MessageType.AuthResp, { id: refresh.id, userId: "u1", expiresAt: BigInt(Date.now() + 10_000) * 1000n });
    await until(() => client["refreshTimer"] !== null, "refresh rescheduled");
    await vi.advanceTimersByTimeAsync(4_999);
    expect(tokens).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(tokens).toHaveLength(3);
    await conn.expect(MessageType.AuthReq);
    expect(client.status).toBe("live");
  });

  it("does not schedule a refresh when the token does not expire (expires_at 0)", async () => {
    const { client } = makeClient();
    await live(client);
    expect(client["refreshTimer"]).toBeNull();
  });
});

describe("PgsatClient persistence", () => {
  it("a new client on the same store shows the stored rows at once and resumes from the stored lsn and view_id", async () => {
    const store = new MemoryStore();
    const { client } = makeClient({ persistence: store });
    const conn = await live(client);
    sendTxn(conn, 110n, ["2", "second", "f"]);
    await until(() => client.lsn === 110n, "lsn 110");
    await client.flush();
    await expectAck(conn, 110n);
    client.close();

    const { client: reloaded } = makeClient({ persistence: store });
    await reloaded.connect();
    expect(titles(reloaded)).toEqual(["first", "second"]);
    expect(reloaded.lsn).toBe(110n);
    const conn2 = await server.accept();
    expect(await handshake(conn2)).toMatchObject({ lsn: 110n, snapshot: false, viewId: "view-1" });
    conn2.send(MessageType.StartReplicationResp, { lsn: 110n, viewId: "view-1" });
    conn2.send(MessageType.Relation, todosRel);
    conn2.send(MessageType.OpLog, {
      ops: [
        { op: { case: "begin", value: { commitLsn: 120n } } },
        { op: { case: "update", value: { relationId: 1, row: wireRow(["1", "FIRST", "t"]) } } },
        { op: { case: "delete", value: { relationId: 1, oldRow: wireRow(["2", null, null]) } } },
        { op: { case: "commit", value: { lsn: 120n } } },
      ],
    });
    await until(() => reloaded.lsn === 120n, "lsn 120");
    await reloaded.flush();
    const stored = await store.load();
    expect(stored?.lsn).toBe(120n);
    expect(stored?.tables[0]?.rows).toEqual([["1", { id: 1, title: "FIRST", done: true }]]);
  });

  it("a resync clears the store", async () => {
    const store = new MemoryStore();
    const { client } = makeClient({ persistence: store });
    const conn = await live(client);
    await client.flush();
    expect((await store.load())?.lsn).toBe(100n);
    conn.send(MessageType.ErrorResp, { code: ErrorCode.RESYNC_REQUIRED, message: "rules changed" });
    await until(() => client.lsn === 0n, "cleared");
    await client.flush();
    const s = await store.load();
    expect(s?.lsn ?? 0n).toBe(0n);
    expect(s?.tables.flatMap((t) => t.rows) ?? []).toEqual([]);
  });
});
