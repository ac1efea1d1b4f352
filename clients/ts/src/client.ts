// PgsatClient: keeps a local replica of pgsat tables in sync over WebSocket.
// Invariant: at most one connection is current at a time; every event of a
// connection that is no longer current is ignored; the replica's position
// (lsn, view_id) only moves when a whole transaction or a whole snapshot has
// been applied, so any reconnect resumes exactly after what is visible.
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { decodeInFrame, frame, FrameError, MessageType, toBytes, type InFrame } from "./framing.js";
import { ErrorCode } from "./gen/pgsat_pb.js";
import { errorAction, errorCodeName } from "./policy.js";
import { keyString, mapKey, ProtocolError, qualify, Replica, type Applied, type Change, type RowKey, type Table } from "./replica.js";
import type { ReplicaStore, StoreBatch, StoreOp } from "./store.js";
import type { ColumnInfo, Int8Mode, Row } from "./values.js";

/** Connection status. `offline` also after close(). */
export type Status = "connecting" | "syncing" | "live" | "paused" | "offline" | "error";

/** The minimal WebSocket surface the client uses (browser WebSocket and the `ws` package both fit). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface PgsatClientOptions {
  /** WebSocket URL of pgsat, e.g. `ws://localhost:5134/ws` (`wss://…` when pgsat has TLS_CERT_FILE, or behind a TLS terminator). */
  url: string;
  /** Returns a valid token (JWT); called on every connect and before the token expires. */
  getToken: () => Promise<string>;
  /** Tables to replicate (`schema.table`, or `table` for `public`); empty/absent = every readable table. */
  tables?: string[];
  /** Start an empty replica with a snapshot of the current rows (default true); false = changes from now on only. */
  snapshot?: boolean;
  /**
   * With `snapshot: false`, where an empty replica starts: after this position (a Commit.lsn),
   * replaying what the server retains after it (version-1 servers have no snapshot). Default 0 = the server's head.
   */
  startLsn?: bigint;
  /** Where to persist the replica (e.g. IndexedDbStore); it is loaded by connect() and resumed from. */
  persistence?: ReplicaStore;
  /** WebSocket constructor (default `globalThis.WebSocket`; pass `ws`'s in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /** int8 values as `bigint` (default) or `string`. */
  int8?: Int8Mode;
  /** Refresh the token this long before it expires (default 30 000 ms; at most half its remaining life). */
  refreshBeforeMs?: number;
  /** Send AckReq at most this often (default 1 000 ms). */
  ackIntervalMs?: number;
  /** Give up on a connection that has not started replicating within this time (default 15 000 ms). */
  connectTimeoutMs?: number;
  /** Send PingReq this often and reconnect when nothing arrived for twice as long (default 30 000 ms; 0 = off). */
  pingIntervalMs?: number;
  /** Source of randomness for the backoff jitter (tests). */
  random?: () => number;
  /** Called with problems the client recovers from by itself (protocol errors, store failures, token callback errors). */
  onError?: (err: Error) => void;
}

/** The last error: `code` is an ErrorCode name (e.g. "AUTH_FAILED") or "TRANSPORT", "PROTOCOL", "TOKEN". */
export interface ClientError {
  code: string;
  message: string;
}

export interface ChangeEvent {
  /** `schema.table` */
  table: string;
  /** Position after the change (the Commit.lsn that carried it). */
  lsn: bigint;
  changes: Change[];
}

export interface TableSnapshot {
  name: string;
  columns: readonly ColumnInfo[];
  keyColumns: readonly string[];
  /** Rows in the order they were first inserted. */
  rows: readonly Row[];
  /** Rows by key (Change.key), as of this snapshot; built when first read. */
  readonly byKey: ReadonlyMap<string, Row>;
}

/** An immutable view of the client; the same object until something changes. */
export interface ClientSnapshot {
  status: Status;
  error: ClientError | null;
  lsn: bigint;
  viewId: string;
  tables: Readonly<Record<string, TableSnapshot>>;
}

interface Conn {
  ws: WebSocketLike;
  authId: string;
  refreshId: string | null;
  phase: "auth" | "starting" | "syncing" | "live";
  paused: boolean;
  snapshot: boolean;
  lastReceived: number;
  closed: boolean;
  /** An ErrorResp arrived on this connection (its close is then not a transport error). */
  gotError: boolean;
  /** TOKEN_EXPIRED count since the last accepted refresh (backs off repeated refreshes). */
  expired: number;
  /** A getToken() for a refresh on this connection is in flight. */
  refreshing: boolean;
}

const OPEN = 1;
const MAX_TIMER_MS = 2_147_483_647;

export class PgsatClient {
  private readonly opts: PgsatClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly replica: Replica;
  private conn: Conn | null = null;
  private stopped = true;
  private _status: Status = "offline";
  private _error: ClientError | null = null;
  private attempt = 0;
  private idSeq = 0;
  private forceSnapshot = false;
  /** Bumped whenever the current connection attempt is abandoned; async steps of older attempts stop. */
  private gen = 0;
  private dirty = false;

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;

  private durableLsn = 0n;
  private ackedLsn = 0n;
  private pending: StoreBatch | null = null;
  private writing: Promise<void> | null = null;
  private loaded: Promise<void> | null = null;

  private readonly statusListeners = new Set<(s: Status, e: ClientError | null) => void>();
  private readonly tableListeners = new Map<string, Set<(ev: ChangeEvent) => void>>();
  private readonly subscribers = new Set<() => void>();
  private snapshot: ClientSnapshot | null = null;
  private tableCache = new Map<string, { state: Table; version: number; snap: TableSnapshot }>();
  private onlineHandler: (() => void) | null = null;

  constructor(opts: PgsatClientOptions) {
    this.opts = opts;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) {
      throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package in Node < 22)");
    }
    this.WS = WS;
    this.replica = new Replica(opts.int8 === undefined ? {} : { int8: opts.int8 });
    // Changes are listed only for what reads them: the store (all of them) and onChange listeners.
    this.replica.wantChanges = (table) => opts.persistence !== undefined || (this.tableListeners.get(table)?.size ?? 0) > 0;
  }

  // ---- public API -------------------------------------------------------

  get status(): Status {
    return this._status;
  }

  /** The last error (fatal when status is "error"); null once live again. */
  get error(): ClientError | null {
    return this._error;
  }

  /** Last applied Commit.lsn (or SnapshotEnd.lsn); 0n = nothing applied yet. */
  get lsn(): bigint {
    return this.replica.lsn;
  }

  get viewId(): string {
    return this.replica.viewId;
  }

  /** Loads persisted state (if any) and starts connecting; resolves once loading is done. */
  connect(): Promise<void> {
    if (!this.stopped) return this.loaded ?? Promise.resolve();
    this.stopped = false;
    this._error = null;
    const store = this.opts.persistence;
    this.loaded = (async () => {
      if (store !== undefined && this.replica.lsn === 0n && this.replica.tables.size === 0) {
        try {
          const s = await store.load();
          if (s !== null && s.lsn > 0n) {
            this.replica.load(s.tables, s.lsn, s.viewId);
            this.durableLsn = s.lsn;
            this.invalidate();
            for (const t of s.tables) this.emit(t.name, s.lsn, [{ op: "reset" }]);
            this.notify();
          }
        } catch (e) {
          this.report(e);
        }
      }
      if (!this.stopped) this.open();
    })();
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    if (typeof g.addEventListener === "function" && this.onlineHandler === null) {
      this.onlineHandler = () => {
        if (!this.stopped && this.reconnectTimer !== null) {
          clearTimeout(this.reconnectTimer);
          this.reconnectTimer = null;
          this.open();
        }
      };
      g.addEventListener("online", this.onlineHandler);
    }
    return this.loaded;
  }

  /** Closes the connection and stops reconnecting (status "offline"). The replica stays readable. */
  close(): void {
    this.stopped = true;
    this.dropConn();
    this.clearTimer("reconnectTimer");
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    if (this.onlineHandler !== null && typeof g.removeEventListener === "function") {
      g.removeEventListener("online", this.onlineHandler);
    }
    this.onlineHandler = null;
    if (this._status !== "error") this.setStatus("offline");
  }

  /** Resolves when every applied change has been written to the persistence store. */
  async flush(): Promise<void> {
    while (this.writing !== null) await this.writing;
  }

  onStatus(cb: (s: Status, e: ClientError | null) => void): () => void {
    this.statusListeners.add(cb);
    return () => this.statusListeners.delete(cb);
  }

  /** Calls `cb` after each transaction (or snapshot, or resync) that changed `table` (`schema.table` or `table`). */
  onChange(table: string, cb: (ev: ChangeEvent) => void): () => void {
    const name = qualify(table);
    let set = this.tableListeners.get(name);
    if (set === undefined) {
      set = new Set();
      this.tableListeners.set(name, set);
    }
    set.add(cb);
    return () => set.delete(cb);
  }

  /** React `useSyncExternalStore` subscribe: `cb` runs after any change of data or status. */
  subscribe = (cb: () => void): (() => void) => {
    this.subscribers.add(cb);
    return () => {
      this.subscribers.delete(cb);
    };
  };

  /** React `useSyncExternalStore` getSnapshot: the same object until something changes. */
  getSnapshot = (): ClientSnapshot => {
    if (this.snapshot !== null) return this.snapshot;
    const tables: Record<string, TableSnapshot> = {};
    const cache = new Map<string, { state: Table; version: number; snap: TableSnapshot }>();
    for (const t of this.replica.tables.values()) {
      const c = this.tableCache.get(t.name);
      const entry =
        c !== undefined && c.state === t && c.version === t.version
          ? c
          : { state: t, version: t.version, snap: tableSnapshot(t) };
      cache.set(t.name, entry);
      tables[t.name] = entry.snap;
    }
    this.tableCache = cache;
    this.snapshot = Object.freeze({
      status: this._status,
      error: this._error,
      lsn: this.replica.lsn,
      viewId: this.replica.viewId,
      tables: Object.freeze(tables),
    });
    return this.snapshot;
  };

  /** One table's snapshot (same object until that table changes), or undefined. */
  getTable(table: string): TableSnapshot | undefined {
    return this.getSnapshot().tables[qualify(table)];
  }

  /** The row with these key values (primary-key columns in order), or undefined. */
  getRow(table: string, ...key: Row[string][]): Row | undefined {
    const t = this.replica.tables.get(qualify(table));
    if (t === undefined) return undefined;
    const probe: Row = {};
    t.keyColumns.forEach((c, i) => (probe[c] = key[i] ?? null));
    return t.keyed.get(mapKey(probe, t.keyColumns));
  }

  /** Resolves when the status becomes `status` (immediately if it is); rejects on "error" unless that is asked for. */
  waitFor(status: Status): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (s: Status): boolean => {
        if (s === status) {
          resolve();
          return true;
        }
        if (s === "error") {
          reject(new Error(`pgsat client error: ${this._error?.code ?? ""} ${this._error?.message ?? ""}`));
          return true;
        }
        return false;
      };
      if (check(this._status)) return;
      const off = this.onStatus((s) => {
        if (check(s)) off();
      });
    });
  }

  // ---- connection ---------------------------------------------------------

  private open(): void {
    if (this.stopped) return;
    this.dropConn();
    const gen = ++this.gen;
    this.setStatus(this._status === "paused" ? "paused" : "connecting");
    this.armConnectTimer();
    void (async () => {
      let token: string;
      try {
        token = await this.opts.getToken();
      } catch (e) {
        if (this.stopped || gen !== this.gen) return;
        this.report(e);
        this._error = { code: "TOKEN", message: errMessage(e) };
        this.scheduleReconnect();
        return;
      }
      if (this.stopped || gen !== this.gen) return;
      let ws: WebSocketLike;
      try {
        ws = new this.WS(this.opts.url);
      } catch (e) {
        this.report(e);
        this._error = { code: "TRANSPORT", message: errMessage(e) };
        this.scheduleReconnect();
        return;
      }
      ws.binaryType = "arraybuffer";
      // Node's `ws` can hand over the Buffer it received instead of copying each
      // message into a fresh ArrayBuffer. Browsers ignore the unknown value and
      // undici turns it into "blob", so it is read back and undone unless it took.
      try {
        ws.binaryType = "nodebuffer";
      } catch {
        // an implementation that rejects unknown values
      }
      if (ws.binaryType !== "nodebuffer") ws.binaryType = "arraybuffer";
      const c: Conn = {
        ws,
        authId: this.nextId(),
        refreshId: null,
        phase: "auth",
        paused: false,
        snapshot: false,
        lastReceived: Date.now(),
        closed: false,
        gotError: false,
        expired: 0,
        refreshing: false,
      };
      this.conn = c;
      ws.onopen = () => {
        if (this.conn !== c) return;
        this.send(c, frame(MessageType.AuthReq, { id: c.authId, token }));
      };
      ws.onmessage = (ev) => {
        if (this.conn !== c) return;
        c.lastReceived = Date.now();
        try {
          this.onFrame(c, decodeInFrame(toBytes(ev.data)));
        } catch (e) {
          // FrameError / ProtocolError: the server broke the contract; anything
          // else is a bug here. Either way the session's state is suspect:
          // start a new one from the last applied position.
          this.report(e);
          const code = e instanceof FrameError || e instanceof ProtocolError ? "PROTOCOL" : "INTERNAL";
          this._error = { code, message: errMessage(e) };
          this.reconnect();
        }
        this.notify();
      };
      ws.onerror = () => {
        // The close event follows and handles it.
      };
      ws.onclose = (ev) => {
        if (this.conn !== c) return;
        const reason = (ev as { reason?: string; code?: number } | undefined) ?? {};
        if (!c.gotError) {
          this._error = { code: "TRANSPORT", message: `connection closed${reason.code ? ` (${reason.code}${reason.reason ? ` ${reason.reason}` : ""})` : ""}` };
        }
        this.reconnect();
      };
    })();
  }

  private nextId(): string {
    this.idSeq += 1;
    return `auth-${this.idSeq}`;
  }

  private send(c: Conn, bytes: Uint8Array): void {
    if (c.closed || c.ws.readyState !== OPEN) return;
    try {
      c.ws.send(bytes);
    } catch (e) {
      this.report(e);
    }
  }

  /** Abandons the current connection (its events are ignored from now on). */
  private dropConn(): void {
    const c = this.conn;
    this.conn = null;
    this.gen += 1;
    this.ackedLsn = 0n;
    this.clearTimer("connectTimer");
    this.clearTimer("refreshTimer");
    this.clearTimer("ackTimer");
    if (this.pingTimer !== null) {
      clearInterval(this.pingTimer);
      this.pingTimer = null;
    }
    this.replica.resetSession();
    if (c === null) return;
    c.closed = true;
    c.ws.onmessage = null;
    c.ws.onopen = null;
    c.ws.onclose = null;
    c.ws.onerror = () => undefined;
    try {
      c.ws.close(1000);
    } catch {
      // already closing
    }
  }

  /** Drops the connection and retries after the backoff delay. */
  private reconnect(): void {
    this.dropConn();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    this.dropConn();
    this.clearTimer("reconnectTimer");
    const delay = backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
    this.attempt += 1;
    if (this._status !== "paused") this.setStatus("offline");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.open();
    }, delay);
  }

  private armConnectTimer(): void {
    this.clearTimer("connectTimer");
    const ms = this.opts.connectTimeoutMs ?? 15_000;
    if (ms <= 0) return;
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      this._error = { code: "TRANSPORT", message: `no replication started within ${ms} ms` };
      this.reconnect();
    }, ms);
  }

  private armPing(c: Conn): void {
    const ms = this.opts.pingIntervalMs ?? 30_000;
    if (ms <= 0 || this.pingTimer !== null) return;
    this.pingTimer = setInterval(() => {
      if (this.conn !== c) return;
      if (Date.now() - c.lastReceived > 2 * ms) {
        this._error = { code: "TRANSPORT", message: `nothing received for ${2 * ms} ms` };
        this.reconnect();
        return;
      }
      this.send(c, frame(MessageType.PingReq, {}));
    }, ms);
  }

  private clearTimer(name: "reconnectTimer" | "refreshTimer" | "connectTimer" | "ackTimer"): void {
    const t = this[name];
    if (t !== null) clearTimeout(t);
    this[name] = null;
  }

  // ---- protocol -----------------------------------------------------------

  private onFrame(c: Conn, f: InFrame): void {
    switch (f.type) {
      case MessageType.ErrorResp:
        this.onErrorResp(c, f.msg.code, f.msg.message);
        return;
      case MessageType.AuthResp: {
        if (f.msg.id === c.authId && c.phase === "auth") {
          c.phase = "starting";
          this.startReplication(c);
        } else if (f.msg.id === c.refreshId) {
          c.refreshId = null;
          c.expired = 0;
          if (c.paused) {
            c.paused = false;
            this.setStatus(c.phase === "live" ? "live" : c.phase === "syncing" ? "syncing" : "connecting");
          }
        }
        this.scheduleRefresh(c, f.msg.expiresAt);
        return;
      }
      case MessageType.StartReplicationResp: {
        if (c.phase !== "starting") throw new ProtocolError("unexpected StartReplicationResp");
        this.clearTimer("connectTimer");
        if (f.msg.viewId !== "") this.replica.viewId = f.msg.viewId;
        this.armPing(c);
        if (c.snapshot) {
          c.phase = "syncing";
          this.replica.beginSnapshot();
          this.setStatus(c.paused ? "paused" : "syncing");
        } else {
          if (this.replica.lsn === 0n) this.replica.lsn = f.msg.lsn;
          this.goLive(c);
        }
        return;
      }
      case MessageType.Relation: {
        const a = this.replica.onRelation(f.msg);
        if (a !== null) this.applied(c, a);
        return;
      }
      case MessageType.OpLog:
        for (const a of this.replica.onOpLog(f.msg)) this.applied(c, a);
        return;
      case MessageType.SnapshotRows:
        this.replica.onSnapshotRows(f.msg);
        return;
      case MessageType.SnapshotEnd: {
        const a = this.replica.onSnapshotEnd(f.msg);
        this.forceSnapshot = false;
        this.applied(c, a);
        this.goLive(c);
        return;
      }
      case MessageType.PingReq:
        this.send(c, frame(MessageType.PingResp, { lsn: this.replica.lsn }));
        return;
      case MessageType.PingResp:
      case MessageType.StopReplicationResp:
        return;
      default:
        throw new ProtocolError(`server sent client-only message type ${f.type}`);
    }
  }

  private startReplication(c: Conn): void {
    const tables = this.opts.tables ?? [];
    const wantSnapshot = this.opts.snapshot ?? true;
    if (this.replica.lsn > 0n && !this.forceSnapshot) {
      c.snapshot = false;
      this.send(c, frame(MessageType.StartReplicationReq, { lsn: this.replica.lsn, tables, snapshot: false, viewId: this.replica.viewId }));
    } else {
      c.snapshot = wantSnapshot || this.forceSnapshot;
      const lsn = c.snapshot ? 0n : (this.opts.startLsn ?? 0n);
      this.send(c, frame(MessageType.StartReplicationReq, { lsn, tables, snapshot: c.snapshot, viewId: "" }));
    }
  }

  private goLive(c: Conn): void {
    c.phase = "live";
    this.attempt = 0;
    this._error = null;
    this.setStatus(c.paused ? "paused" : "live");
  }

  private onErrorResp(c: Conn, code: ErrorCode, message: string): void {
    const name = errorCodeName(code);
    this._error = { code: name, message };
    c.gotError = true;
    switch (errorAction(code)) {
      case "refresh": {
        c.paused = true;
        this.setStatus("paused");
        this.clearTimer("refreshTimer");
        // A refresh that is answered TOKEN_EXPIRED again is retried with backoff.
        const n = c.expired++;
        const delay = n === 0 ? 0 : backoffDelay(n - 1, this.opts.backoff, this.opts.random);
        this.refreshTimer = setTimeout(() => {
          this.refreshTimer = null;
          void this.refresh(c);
        }, delay);
        return;
      }
      case "resync": {
        const a = this.replica.clear();
        this.forceSnapshot = true;
        this.dropConn();
        this.applied(null, a);
        this.notify();
        this.scheduleReconnect();
        return;
      }
      case "reconnect":
        this.reconnect();
        return;
      case "fatal":
        this.stopped = true;
        this.dropConn();
        this.clearTimer("reconnectTimer");
        this.setStatus("error");
        return;
    }
  }

  // ---- token refresh ---------------------------------------------------------

  private scheduleRefresh(c: Conn, expiresAtMicros: bigint): void {
    this.clearTimer("refreshTimer");
    if (expiresAtMicros <= 0n) return;
    const remaining = Number(expiresAtMicros / 1000n) - Date.now();
    const before = Math.min(this.opts.refreshBeforeMs ?? 30_000, Math.max(0, remaining) / 2);
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, remaining - before));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh(c);
    }, delay);
  }

  /** Gets a new token and sends it on the connection; retries with backoff while the connection lives. */
  private async refresh(c: Conn, attempt = 0): Promise<void> {
    if (c.refreshing) return;
    c.refreshing = true;
    let token: string | null = null;
    try {
      token = await this.opts.getToken();
    } catch (e) {
      this.report(e);
    } finally {
      c.refreshing = false;
    }
    if (this.conn !== c || c.closed) return;
    if (token === null) {
      this.refreshTimer = setTimeout(() => {
        this.refreshTimer = null;
        void this.refresh(c, attempt + 1);
      }, backoffDelay(attempt, this.opts.backoff, this.opts.random));
      return;
    }
    c.refreshId = this.nextId();
    this.send(c, frame(MessageType.AuthReq, { id: c.refreshId, token }));
  }

  // ---- applying and persisting -------------------------------------------------

  private applied(c: Conn | null, a: Applied): void {
    if (a.changes.size > 0 || a.whole) this.invalidate();
    for (const [table, changes] of a.changes) this.emit(table, a.lsn, changes);
    const store = this.opts.persistence;
    if (store === undefined) {
      this.durableLsn = a.lsn;
      if (c !== null) this.scheduleAck();
      return;
    }
    this.enqueue(this.batchFor(a));
  }

  private batchFor(a: Applied): StoreBatch {
    const schemas = [...this.replica.tables.values()].map((t) => ({ name: t.name, columns: t.columns }));
    const ops: StoreOp[] = [];
    const putAll = (t: Table): void => {
      for (const [key, row] of t.keyed) ops.push({ t: "put", table: t.name, key: keyString(key), row });
    };
    if (a.whole) {
      for (const t of this.replica.tables.values()) putAll(t);
      return { lsn: a.lsn, viewId: this.replica.viewId, schemas, replace: true, ops };
    }
    for (const [table, changes] of a.changes) {
      for (const ch of changes) {
        switch (ch.op) {
          case "insert":
            ops.push({ t: "put", table, key: ch.key, row: ch.row });
            break;
          case "update":
            if (ch.oldKey !== ch.key) ops.push({ t: "del", table, key: ch.oldKey });
            ops.push({ t: "put", table, key: ch.key, row: ch.row });
            break;
          case "delete":
            ops.push({ t: "del", table, key: ch.key });
            break;
          case "truncate":
            ops.push({ t: "truncate", table });
            break;
          case "reset": {
            ops.push({ t: "truncate", table });
            const t = this.replica.tables.get(table);
            if (t !== undefined) putAll(t);
            break;
          }
        }
      }
    }
    return { lsn: a.lsn, viewId: this.replica.viewId, schemas, replace: false, ops };
  }

  private enqueue(b: StoreBatch): void {
    const p = this.pending;
    if (p === null || b.replace) this.pending = b;
    else {
      for (const op of b.ops) p.ops.push(op);
      p.lsn = b.lsn;
      p.viewId = b.viewId;
      p.schemas = b.schemas;
    }
    if (this.writing === null) this.writing = this.drain();
  }

  private async drain(): Promise<void> {
    const store = this.opts.persistence;
    try {
      while (store !== undefined && this.pending !== null) {
        const b = this.pending;
        this.pending = null;
        try {
          await store.write(b);
          this.durableLsn = b.lsn;
          this.scheduleAck();
        } catch (e) {
          this.report(e);
        }
      }
    } finally {
      this.writing = null;
    }
  }

  private scheduleAck(): void {
    if (this.ackTimer !== null || this.conn === null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const c = this.conn;
      if (c === null || c.phase !== "live" || this.durableLsn <= this.ackedLsn) return;
      this.ackedLsn = this.durableLsn;
      this.send(c, frame(MessageType.AckReq, { lsn: this.durableLsn }));
    }, this.opts.ackIntervalMs ?? 1_000);
  }

  // ---- events -------------------------------------------------------------------

  private emit(table: string, lsn: bigint, changes: Change[]): void {
    const set = this.tableListeners.get(table);
    // An empty list: the table had no listener when the transaction was applied
    // (one added since then starts with the state that already includes it).
    if (set === undefined || set.size === 0 || changes.length === 0) return;
    const ev: ChangeEvent = { table, lsn, changes };
    for (const cb of [...set]) {
      try {
        cb(ev);
      } catch (e) {
        this.report(e);
      }
    }
  }

  private invalidate(): void {
    this.snapshot = null;
    this.dirty = true;
  }

  /** Tells subscribers, once, that something changed since they were last told. */
  private notify(): void {
    if (!this.dirty) return;
    this.dirty = false;
    for (const cb of [...this.subscribers]) {
      try {
        cb();
      } catch (e) {
        this.report(e);
      }
    }
  }

  private setStatus(s: Status): void {
    if (s === this._status) return;
    this._status = s;
    this.invalidate();
    for (const cb of [...this.statusListeners]) {
      try {
        cb(s, this._error);
      } catch (e) {
        this.report(e);
      }
    }
    this.notify();
  }

  private report(e: unknown): void {
    const err = e instanceof Error ? e : new Error(String(e));
    if (this.opts.onError !== undefined) {
      try {
        this.opts.onError(err);
      } catch {
        // a broken logger must not break the client
      }
    }
  }
}

function tableSnapshot(t: Table): TableSnapshot {
  const rows = Object.freeze([...t.keyed.values()]);
  // byKey is built on first read, from the keys as they are now (no string per
  // row until then: most readers only want rows).
  const keys = [...t.keyed.keys()];
  let byKey: Map<string, Row> | null = null;
  return Object.freeze({
    name: t.name,
    columns: Object.freeze([...t.columns]),
    keyColumns: Object.freeze([...t.keyColumns]),
    rows,
    get byKey(): ReadonlyMap<string, Row> {
      if (byKey === null) {
        byKey = new Map();
        for (let i = 0; i < keys.length; i++) byKey.set(keyString(keys[i] as RowKey), rows[i] as Row);
      }
      return byKey;
    },
  });
}

function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
