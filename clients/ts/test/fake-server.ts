// An in-process fake of the pgsat WebSocket endpoint (not of Postgres) for unit
// tests: it speaks the framing of protocol.md and is scripted step by step by
// each test (expect a client frame, send server frames, close).
// Every wait has a deadline measured with the real clock (captured before any
// test installs fake timers).
import { WebSocketServer, WebSocket } from "ws";
import type { AddressInfo } from "node:net";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { decodeFrame, frame, type Frame, type FrameMessages, type FrameType } from "../src/framing.js";
import { RowSchema, type Row as WireRow } from "../src/gen/pgsat_pb.js";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";

const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

/** Waits for a promise with a deadline (real clock). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = realSetTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then(
      (v) => {
        realClearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        realClearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** Polls `cond` until true (real clock), failing after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const start = performance.now();
  while (!cond()) {
    if (performance.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => realSetTimeout(r, 5));
  }
}

/** Builds a wire Row from text values (null = NULL); `unchanged` lists column indexes marked unchanged-TOAST. */
export function wireRow(values: (string | null)[], unchanged: number[] = []): WireRow {
  const nbytes = Math.ceil(values.length / 8);
  const nulls = new Uint8Array(nbytes);
  const unch = new Uint8Array(unchanged.length > 0 ? nbytes : 0);
  const enc = new TextEncoder();
  const vals = values.map((v, i) => {
    if (v === null) {
      nulls[i >> 3] = (nulls[i >> 3] as number) | (0x80 >> (i & 7));
      return new Uint8Array(0);
    }
    return enc.encode(v);
  });
  for (const i of unchanged) unch[i >> 3] = (unch[i >> 3] as number) | (0x80 >> (i & 7));
  return create(RowSchema, { nulls: values.some((v) => v === null) ? nulls : new Uint8Array(0), values: vals, unchanged: unch });
}

export class FakeConn {
  readonly received: Frame[] = [];
  closed = false;
  private waiters: (() => void)[] = [];
  private cursor = 0;

  constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        this.ws.close();
        return;
      }
      this.received.push(decodeFrame(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)));
      this.wake();
    });
    ws.on("close", () => {
      this.closed = true;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  /** The next client frame not yet consumed; it must have type `type` (others before it are skipped only if listed in `skip`). */
  async expect<K extends FrameType>(type: K, opts: { skip?: FrameType[]; ms?: number } = {}): Promise<FrameMessages[K]> {
    const skip = opts.skip ?? [];
    const go = async (): Promise<FrameMessages[K]> => {
      for (;;) {
        while (this.cursor < this.received.length) {
          const f = this.received[this.cursor++] as Frame;
          if (f.type === type) return f.msg as FrameMessages[K];
          if (!skip.includes(f.type)) throw new Error(`expected client frame type ${type}, got ${f.type}`);
        }
        if (this.closed) throw new Error(`connection closed while waiting for frame type ${type}`);
        await this.changed();
      }
    };
    return within(go(), opts.ms ?? 5_000, `client frame type ${type}`);
  }

  /** Every frame of `type` received so far (consumed or not). */
  all<K extends FrameType>(type: K): FrameMessages[K][] {
    return this.received.filter((f) => f.type === type).map((f) => f.msg as FrameMessages[K]);
  }

  send<K extends FrameType>(type: K, init?: MessageInitShape<GenMessage<FrameMessages[K]>>): void {
    this.ws.send(frame(type, init));
  }

  sendRaw(bytes: Uint8Array | string): void {
    this.ws.send(bytes);
  }

  /** Waits until the client has closed the connection (or the server did). */
  async waitClosed(ms = 5_000): Promise<void> {
    const go = async (): Promise<void> => {
      while (!this.closed) await this.changed();
    };
    return within(go(), ms, "connection close");
  }

  close(): void {
    this.ws.close();
  }

  /** Abrupt close (no close frame), like a killed server. */
  kill(): void {
    this.ws.terminate();
  }
}

export class FakeServer {
  readonly conns: FakeConn[] = [];
  private waiters: (() => void)[] = [];
  private taken = 0;

  private constructor(private readonly wss: WebSocketServer) {
    wss.on("connection", (ws) => {
      this.conns.push(new FakeConn(ws));
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  static async start(): Promise<FakeServer> {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
    await new Promise<void>((resolve, reject) => {
      wss.once("listening", () => resolve());
      wss.once("error", reject);
    });
    return new FakeServer(wss);
  }

  get url(): string {
    const a = this.wss.address() as AddressInfo;
    return `ws://127.0.0.1:${a.port}/ws`;
  }

  /** The next connection not yet taken by a test. */
  async accept(ms = 5_000): Promise<FakeConn> {
    const go = async (): Promise<FakeConn> => {
      while (this.taken >= this.conns.length) await new Promise<void>((r) => this.waiters.push(r));
      return this.conns[this.taken++] as FakeConn;
    };
    return within(go(), ms, "a client connection");
  }

  async stop(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
  }
}
