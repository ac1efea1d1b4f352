// Persistence of the replica between page loads.
// Invariant: a store holds rows and the position (lsn, view_id) that those rows
// are exactly the state after; a write applies all of a batch or none of it, so
// what load() returns can always be resumed from.
import type { ColumnInfo, Row } from "./values.js";

export interface StoredTable {
  name: string;
  columns: ColumnInfo[];
  rows: [key: string, row: Row][];
}

export interface StoredState {
  lsn: bigint;
  viewId: string;
  tables: StoredTable[];
}

export type StoreOp =
  | { t: "put"; table: string; key: string; row: Row }
  | { t: "del"; table: string; key: string }
  | { t: "truncate"; table: string };

/** One atomic write: optionally drop every row, then apply `ops` in order, then record the position and schemas. */
export interface StoreBatch {
  lsn: bigint;
  viewId: string;
  /** Columns of every table the replica has (replaces the stored list). */
  schemas: { name: string; columns: ColumnInfo[] }[];
  /** Drop every stored row before applying `ops`. */
  replace: boolean;
  ops: StoreOp[];
}

/** Where a replica persists. Implementations: MemoryStore, IndexedDbStore. */
export interface ReplicaStore {
  /** The stored state, or null when nothing (complete) was stored. */
  load(): Promise<StoredState | null>;
  /** Applies one batch atomically. */
  write(batch: StoreBatch): Promise<void>;
  /** Forgets everything. */
  clear(): Promise<void>;
}

interface MemState {
  lsn: bigint;
  viewId: string;
  schemas: { name: string; columns: ColumnInfo[] }[];
  rows: Map<string, Map<string, Row>>;
}

/** Applies a batch to plain maps (shared by MemoryStore and tests). */
export function applyBatch(rows: Map<string, Map<string, Row>>, batch: StoreBatch): void {
  if (batch.replace) rows.clear();
  for (const op of batch.ops) {
    let t = rows.get(op.table);
    if (op.t === "truncate") {
      t?.clear();
      continue;
    }
    if (t === undefined) {
      t = new Map();
      rows.set(op.table, t);
    }
    if (op.t === "put") t.set(op.key, op.row);
    else t.delete(op.key);
  }
}

/**
 * A store in memory (kept by whoever holds the object; lost on page reload).
 * Useful in Node, in tests, and to share a replica between client instances.
 * Rows are copied in and out (structuredClone), like a real store.
 */
export class MemoryStore implements ReplicaStore {
  private state: MemState | null = null;

  async load(): Promise<StoredState | null> {
    const s = this.state;
    if (s === null) return null;
    return structuredClone({
      lsn: s.lsn,
      viewId: s.viewId,
      tables: s.schemas.map((sc) => ({ name: sc.name, columns: sc.columns, rows: [...(s.rows.get(sc.name) ?? new Map<string, Row>())] })),
    });
  }

  async write(batch: StoreBatch): Promise<void> {
    const b = structuredClone(batch);
    const s: MemState = this.state ?? { lsn: 0n, viewId: "", schemas: [], rows: new Map() };
    applyBatch(s.rows, b);
    s.lsn = b.lsn;
    s.viewId = b.viewId;
    s.schemas = b.schemas;
    this.state = s;
  }

  async clear(): Promise<void> {
    this.state = null;
  }
}
