// IndexedDB persistence for browsers.
// Invariant: each StoreBatch is one readwrite transaction over the `meta` and
// `rows` object stores, so after a reload the rows and the (lsn, view_id) in
// `meta` are from the same commit. Several clients share one database, each
// under its own `clientKey`.
import type { ReplicaStore, StoreBatch, StoredState, StoredTable } from "./store.js";
import type { ColumnInfo, Row } from "./values.js";

interface MetaRecord {
  lsn: bigint;
  viewId: string;
  schemas: { name: string; columns: ColumnInfo[] }[];
}

interface RowRecord {
  table: string;
  key: string;
  row: Row;
}

export interface IndexedDbStoreOptions {
  /** Identifies this replica inside the database (e.g. the URL plus the user id). */
  clientKey: string;
  /** Database name (default "pgsat"). */
  dbName?: string;
  /** IndexedDB factory (default `globalThis.indexedDB`; pass fake-indexeddb in Node tests). */
  indexedDB?: IDBFactory;
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error("IndexedDB request failed"));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

export class IndexedDbStore implements ReplicaStore {
  private db: Promise<IDBDatabase> | null = null;
  private readonly ck: string;
  private readonly name: string;
  private readonly factory: IDBFactory | undefined;

  constructor(opts: IndexedDbStoreOptions) {
    this.ck = opts.clientKey;
    this.name = opts.dbName ?? "pgsat";
    this.factory = opts.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  }

  private open(): Promise<IDBDatabase> {
    if (this.db === null) {
      const f = this.factory;
      if (f === undefined) return Promise.reject(new Error("IndexedDB is not available here"));
      const r = f.open(this.name, 1);
      r.onupgradeneeded = () => {
        const db = r.result;
        if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
        if (!db.objectStoreNames.contains("rows")) db.createObjectStore("rows");
      };
      this.db = req(r);
      this.db.catch(() => {
        this.db = null;
      });
    }
    return this.db;
  }

  /** Key range of this client's rows, or of one of its tables. */
  private range(table?: string): IDBKeyRange {
    const lo = table === undefined ? [this.ck] : [this.ck, table];
    // Arrays sort after strings, so [..., []] bounds every longer key with this prefix.
    return IDBKeyRange.bound(lo, [...lo, []]);
  }

  async load(): Promise<StoredState | null> {
    const db = await this.open();
    const tx = db.transaction(["meta", "rows"], "readonly");
    const meta = (await req(tx.objectStore("meta").get(this.ck))) as MetaRecord | undefined;
    if (meta === undefined) return null;
    const recs = (await req(tx.objectStore("rows").getAll(this.range()))) as RowRecord[];
    const tables = new Map<string, StoredTable>();
    for (const s of meta.schemas) tables.set(s.name, { name: s.name, columns: s.columns, rows: [] });
    for (const r of recs) tables.get(r.table)?.rows.push([r.key, r.row]);
    return { lsn: meta.lsn, viewId: meta.viewId, tables: [...tables.values()] };
  }

  async write(batch: StoreBatch): Promise<void> {
    const db = await this.open();
    const tx = db.transaction(["meta", "rows"], "readwrite");
    const finished = done(tx);
    const rows = tx.objectStore("rows");
    if (batch.replace) rows.delete(this.range());
    for (const op of batch.ops) {
      if (op.t === "put") rows.put({ table: op.table, key: op.key, row: op.row } satisfies RowRecord, [this.ck, op.table, op.key]);
      else if (op.t === "del") rows.delete([this.ck, op.table, op.key]);
      else rows.delete(this.range(op.table));
    }
    const meta: MetaRecord = { lsn: batch.lsn, viewId: batch.viewId, schemas: batch.schemas };
    tx.objectStore("meta").put(meta, this.ck);
    await finished;
  }

  async clear(): Promise<void> {
    const db = await this.open();
    const tx = db.transaction(["meta", "rows"], "readwrite");
    const finished = done(tx);
    tx.objectStore("rows").delete(this.range());
    tx.objectStore("meta").delete(this.ck);
    await finished;
  }

  /** Closes the database connection. */
  close(): void {
    void this.db?.then((db) => db.close()).catch(() => undefined);
    this.db = null;
  }
}
