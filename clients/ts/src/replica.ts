// The in-memory replica: tables of rows keyed by primary key, built from the
// protocol's Relation, SnapshotRows and OpLog messages.
// Invariant: the visible tables only ever change at a transaction's Commit (all
// of its ops at once, in order), at SnapshotEnd (the snapshot replaces the
// tables whole), or by clear(); ops of an open transaction and rows of an
// unfinished snapshot are held aside and dropped by resetSession().
import type { OpLog, Relation, SnapshotEnd, SnapshotRows, TransOp } from "./gen/pgsat_pb.js";
import type * as tsp from "./gen/pgsat_ts_proto.js";
import {
  bitSet,
  bytesDecoderFor,
  columnInfo,
  keyText,
  type BytesDecoder,
  type ColumnInfo,
  type Row,
  type Value,
  type ValueOptions,
} from "./values.js";

/** The server sent something that breaks the protocol's ordering or shape rules. */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
}

/** One change to one table, as delivered to listeners. `key` is the row's key in the replica. */
export type Change =
  | { op: "insert"; key: string; row: Row }
  | { op: "update"; key: string; row: Row; oldKey: string; old: Row }
  | { op: "delete"; key: string; old: Row }
  | { op: "truncate" }
  /** The table's rows were replaced as a whole (snapshot, resync, schema change): re-read it. */
  | { op: "reset" };

/** What one application step (a commit, a snapshot end, a clear, a schema change) did. */
export interface Applied {
  /** The replica's position after this step (Commit.lsn, SnapshotEnd.lsn; unchanged otherwise). */
  lsn: bigint;
  /** Changes per table name, in order; an empty list when Replica.wantChanges declined the table. */
  changes: Map<string, Change[]>;
  /** Whether every table was replaced (snapshot end, clear): persist the whole replica. */
  whole: boolean;
}

/** A table of the replica. */
export interface TableState {
  /** `schema.table` */
  readonly name: string;
  columns: ColumnInfo[];
  /** Names of the key columns: the primary key, or every column when there is none. */
  keyColumns: string[];
  /**
   * Rows by key (rowKey, Change.key), in first-insertion order. A Table builds
   * this Map from its rows when it is read (once per change of the table): read
   * it again after a change rather than keep it, and do not modify it (assign
   * `rows` to replace the rows).
   */
  rows: Map<string, Row>;
  /** Bumped on every change; lets views cache per table. */
  version: number;
}

/**
 * A row's key inside the replica (Table.keyed): a single key column whose value
 * is a safe integer (number, or bigint in range) is keyed by that number, which
 * a Map stores without a string per row (most of the cost of a big table);
 * anything else by rowKey's string. keyString gives rowKey's string for both.
 * The two never collide: a column's values are numbers or never integer text
 * (values.ts: the JS type depends on the column's type; text that parses as an
 * integer always becomes one).
 */
export type RowKey = string | number;

export function mapKey(row: Row, keyColumns: string[]): RowKey {
  if (keyColumns.length === 1) {
    const v = row[keyColumns[0] as string] ?? null;
    if (typeof v === "number") {
      if (Number.isSafeInteger(v)) return v;
    } else if (typeof v === "bigint") {
      // Exact: a bigint beyond the safe range converts to a number beyond it too.
      const n = Number(v);
      if (Number.isSafeInteger(n)) return n;
    }
    return keyText(v);
  }
  return JSON.stringify(keyColumns.map((c) => keyText(row[c] ?? null)));
}

/** rowKey's string for a RowKey: String(n) is keyText's text of the integer n (and of the bigint it came from). */
export function keyString(k: RowKey): string {
  return typeof k === "number" ? String(k) : k;
}

/** The replica's TableState: rows kept by RowKey (`keyed`), with the string-keyed `rows` built on demand. */
export class Table implements TableState {
  version = 0;
  /** Rows by RowKey, in first-insertion order: what the replica reads and writes. */
  keyed: Map<RowKey, Row>;
  /** The `rows` Map last built, until the next change (see changed()). */
  private view: Map<string, Row> | null = null;

  constructor(
    readonly name: string,
    public columns: ColumnInfo[],
    public keyColumns: string[],
    keyed: Map<RowKey, Row> = new Map(),
  ) {
    this.keyed = keyed;
  }

  get rows(): Map<string, Row> {
    if (this.view === null) {
      const m = new Map<string, Row>();
      for (const [k, r] of this.keyed) m.set(keyString(k), r);
      this.view = m;
    }
    return this.view;
  }

  /** Replaces the rows (keyed again by their key columns). */
  set rows(m: Map<string, Row>) {
    const keyed = new Map<RowKey, Row>();
    for (const r of m.values()) keyed.set(mapKey(r, this.keyColumns), r);
    this.keyed = keyed;
    this.view = null;
  }

  /** Forgets the built `rows` after `keyed` changed. */
  changed(): void {
    this.view = null;
  }
}

interface RelInfo {
  id: number;
  name: string;
  columns: ColumnInfo[];
  /** Column names, in order (hot path). */
  names: string[];
  /** Builds a row object from the column values in order (one shape per relation; hot path). */
  make: (values: Slot[]) => Record<string, Slot>;
  /** Scratch array the values of one row are decoded into before `make`. */
  scratch: Slot[];
  /** Per-column converters from the value's bytes, chosen once per Relation. */
  decoders: BytesDecoder[];
}

// What the replica reads of the ops and rows: fields that the protobuf-es
// messages (pb, the public types) and the generated ts-proto decoder's plain
// objects (the client's hot path, framing.decodeInFrame) both have; a field
// the latter leaves undefined (absent from the wire) is at its default.
interface WireRow {
  nulls?: Uint8Array | undefined;
  values: Uint8Array[];
  unchanged?: Uint8Array | undefined;
}
const EMPTY = new Uint8Array(0);
/** One op, in the ts-proto decoder's oneof shape (a pb TransOp is converted by esOp). */
type OpIn =
  | { $case: "begin"; value: unknown }
  | { $case: "commit"; value: { lsn?: bigint | undefined } }
  | { $case: "insert"; value: { relationId?: number | undefined; row?: WireRow | undefined } }
  | { $case: "update"; value: { relationId?: number | undefined; row?: WireRow | undefined; oldRow?: WireRow | undefined } }
  | { $case: "delete"; value: { relationId?: number | undefined; oldRow?: WireRow | undefined } }
  | { $case: "truncate"; value: { relationIds: number[] } };

function esOp(o: TransOp["op"]): OpIn | undefined {
  // Same cases and value fields; only the discriminant's name differs.
  return o.case === undefined ? undefined : ({ $case: o.case, value: o.value } as OpIn);
}

const UNCHANGED = Symbol("unchanged");
type Slot = Value | typeof UNCHANGED;

type PendingOp =
  | { k: "ins"; rel: RelInfo; row: Row }
  | { k: "upd"; rel: RelInfo; row: Record<string, Slot>; hasUnchanged: boolean; old: Row | null }
  | { k: "del"; rel: RelInfo; old: Row }
  | { k: "trunc"; tables: string[] }
  | { k: "rel"; rel: RelInfo };

/**
 * A function building a row from its values in column order. Where the page's
 * Content-Security-Policy allows it, a compiled object literal (every row of a
 * relation then has one hidden class and no keyed stores: the replica's hot
 * path); else a loop. Names are embedded as JSON string literals.
 */
export function rowMaker(names: readonly string[]): (values: Slot[]) => Record<string, Slot> {
  const unique = new Set(names).size === names.length && !names.includes("__proto__");
  if (unique) {
    try {
      const body = `return {${names.map((n, i) => `${JSON.stringify(n)}: v[${i}]`).join(", ")}};`;
      return new Function("v", body) as (values: Slot[]) => Record<string, Slot>;
    } catch {
      // CSP without 'unsafe-eval': the loop below.
    }
  }
  return (values) => {
    const row: Record<string, Slot> = {};
    for (let i = 0; i < names.length; i++) row[names[i] as string] = values[i] as Slot;
    return row;
  };
}

/** The qualified `schema.table` name; a bare name means the `public` schema. */
export function qualify(name: string): string {
  return name.includes(".") ? name : `public.${name}`;
}

export function keyColumnsOf(columns: ColumnInfo[]): string[] {
  const pk = columns.filter((c) => c.primaryKey).map((c) => c.name);
  return pk.length > 0 ? pk : columns.map((c) => c.name);
}

/** The key of a row: the canonical text of its key column(s). */
export function rowKey(row: Row, keyColumns: string[]): string {
  if (keyColumns.length === 1) return keyText(row[keyColumns[0] as string] ?? null);
  return JSON.stringify(keyColumns.map((c) => keyText(row[c] ?? null)));
}

export class Replica {
  /** Visible tables by `schema.table`. */
  tables = new Map<string, Table>();
  /** Last applied position: Commit.lsn of the last applied transaction, or SnapshotEnd.lsn. 0 = none. */
  lsn = 0n;
  /** The view the replica holds (StartReplicationResp / SnapshotEnd). */
  viewId = "";
  /**
   * Which tables' transactions list their changes one by one in Applied.changes
   * (null = every table). A table it declines still appears there, with an empty
   * list, when a transaction changed it; its Change objects are never built.
   */
  wantChanges: ((table: string) => boolean) | null = null;

  private relations = new Map<number, RelInfo>();
  private txn: PendingOp[] | null = null;
  private staging: Map<string, Table> | null = null;
  private snapshotRows = 0;

  constructor(private readonly valueOptions: ValueOptions = {}) {}

  /** Whether a snapshot is being received (rows held aside until SnapshotEnd). */
  get snapshotting(): boolean {
    return this.staging !== null;
  }

  /** Whether a transaction has begun and not yet committed. */
  get inTransaction(): boolean {
    return this.txn !== null;
  }

  /** Forgets everything that belongs to one connection: relation ids, an open transaction, an unfinished snapshot. */
  resetSession(): void {
    this.relations.clear();
    this.txn = null;
    this.staging = null;
    this.snapshotRows = 0;
  }

  /** Drops every row and the position (resync). Returns a reset change for every table that had rows. */
  clear(): Applied {
    const changes = new Map<string, Change[]>();
    for (const t of this.tables.values()) {
      changes.set(t.name, [{ op: "reset" }]);
    }
    this.tables = new Map();
    this.lsn = 0n;
    this.viewId = "";
    this.resetSession();
    return { lsn: 0n, changes, whole: true };
  }

  /** Loads persisted tables and position (before the first connection). */
  load(tables: Iterable<{ name: string; columns: ColumnInfo[]; rows: Iterable<[string, Row]> }>, lsn: bigint, viewId: string): void {
    this.tables = new Map();
    for (const t of tables) {
      const keyColumns = keyColumnsOf(t.columns);
      const keyed = new Map<RowKey, Row>();
      for (const [, row] of t.rows) keyed.set(mapKey(row, keyColumns), row);
      this.tables.set(t.name, new Table(t.name, t.columns, keyColumns, keyed));
    }
    this.lsn = lsn;
    this.viewId = viewId;
  }

  /** Starts receiving a snapshot: following rows and transactions go to a fresh set of tables. */
  beginSnapshot(): void {
    this.staging = new Map();
    this.snapshotRows = 0;
  }

  /** Rows received so far in the current snapshot. */
  get snapshotRowCount(): number {
    return this.snapshotRows;
  }

  onRelation(msg: Relation): Applied | null {
    const columns = msg.columns.map(columnInfo);
    const rel: RelInfo = {
      id: msg.relationId,
      name: `${msg.schema}.${msg.table}`,
      columns,
      names: columns.map((c) => c.name),
      make: rowMaker(columns.map((c) => c.name)),
      scratch: new Array<Slot>(columns.length).fill(null),
      decoders: columns.map((c) => bytesDecoderFor(c, this.valueOptions)),
    };
    this.relations.set(rel.id, rel);
    if (this.txn !== null) {
      this.txn.push({ k: "rel", rel });
      return null;
    }
    const changes = new Map<string, Change[]>();
    this.applySchema(rel, changes);
    return changes.size > 0 ? { lsn: this.lsn, changes, whole: false } : null;
  }

  onSnapshotRows(msg: SnapshotRows | tsp.SnapshotRows): void {
    if (this.staging === null) throw new ProtocolError("SnapshotRows without a snapshot in progress");
    const rel = this.relation(msg.relationId ?? 0);
    const table = this.table(this.staging, rel);
    for (const wire of msg.rows) {
      const row = this.decodeRow(rel, wire, false) as Row;
      table.keyed.set(mapKey(row, table.keyColumns), row);
    }
    table.changed();
    this.snapshotRows += msg.rows.length;
  }

  onSnapshotEnd(msg: SnapshotEnd): Applied {
    if (this.staging === null) throw new ProtocolError("SnapshotEnd without a snapshot in progress");
    if (this.txn !== null) throw new ProtocolError("SnapshotEnd inside a transaction");
    const changes = new Map<string, Change[]>();
    for (const name of this.tables.keys()) changes.set(name, [{ op: "reset" }]);
    for (const t of this.staging.values()) {
      changes.set(t.name, [{ op: "reset" }]);
      const prev = this.tables.get(t.name);
      t.version = (prev?.version ?? 0) + 1;
    }
    this.tables = this.staging;
    this.staging = null;
    this.lsn = msg.lsn;
    if (msg.viewId !== "") this.viewId = msg.viewId;
    return { lsn: this.lsn, changes, whole: true };
  }

  /**
   * Applies an OpLog message (a pb.OpLog, or the ts-proto decoder's, as the
   * client decodes it); returns one Applied per transaction that committed in it.
   */
  onOpLog(msg: OpLog | tsp.OpLog): Applied[] {
    const out: Applied[] = [];
    for (const op of msg.ops) {
      const o = op.op;
      const a = this.onOp(o === undefined ? undefined : "$case" in o ? o : esOp(o));
      if (a !== null) out.push(a);
    }
    return out;
  }

  private onOp(o: OpIn | undefined): Applied | null {
    if (o === undefined) throw new ProtocolError("empty TransOp");
    switch (o.$case) {
      case "begin":
        if (this.txn !== null) throw new ProtocolError("Begin inside an open transaction");
        this.txn = [];
        return null;
      case "commit":
        return this.commit(o.value.lsn ?? 0n);
    }
    const txn = this.txn;
    if (txn === null) throw new ProtocolError(`${o.$case} outside a transaction`);
    switch (o.$case) {
      case "insert": {
        const rel = this.relation(o.value.relationId ?? 0);
        txn.push({ k: "ins", rel, row: this.decodeRow(rel, o.value.row, false) as Row });
        break;
      }
      case "update": {
        const rel = this.relation(o.value.relationId ?? 0);
        const row = this.decodeRow(rel, o.value.row, true);
        let hasUnchanged = false;
        for (const k in row) {
          if (row[k] === UNCHANGED) {
            hasUnchanged = true;
            break;
          }
        }
        const old = o.value.oldRow === undefined ? null : (this.decodeRow(rel, o.value.oldRow, false) as Row);
        txn.push({ k: "upd", rel, row, hasUnchanged, old });
        break;
      }
      case "delete": {
        const rel = this.relation(o.value.relationId ?? 0);
        if (o.value.oldRow === undefined) throw new ProtocolError("Delete without old_row");
        txn.push({ k: "del", rel, old: this.decodeRow(rel, o.value.oldRow, false) as Row });
        break;
      }
      case "truncate":
        txn.push({ k: "trunc", tables: o.value.relationIds.map((id) => this.relation(id).name) });
        break;
    }
    return null;
  }

  private commit(lsn: bigint): Applied {
    const ops = this.txn;
    if (ops === null) throw new ProtocolError("Commit without Begin");
    this.txn = null;
    const target = this.staging ?? this.tables;
    const changes = new Map<string, Change[]>();
    // Tables whose changes nobody reads (and all of them inside a snapshot, where
    // they are dropped): listed in `changes` with an empty list, no Change built.
    const want = this.staging !== null ? () => false : this.wantChanges;
    let quiet: Set<string> | null = null;
    /** The change list of `t` (registering `t` as changed), or null when its changes are not collected. */
    const out = (t: Table): Change[] | null => {
      let l = changes.get(t.name);
      if (l === undefined) {
        l = [];
        changes.set(t.name, l);
        if (want !== null && !want(t.name)) (quiet ??= new Set()).add(t.name);
      }
      return quiet !== null && quiet.has(t.name) ? null : l;
    };
    // Consecutive inserts into one table (the common bulk case) reuse its lookups.
    let insRel: RelInfo | null = null;
    let insTable: Table | null = null;
    let insOut: Change[] | null = null;
    for (const op of ops) {
      if (op.k !== "ins") insRel = null;
      switch (op.k) {
        case "rel":
          this.applySchema(op.rel, changes);
          break;
        case "ins": {
          if (op.rel !== insRel || insTable === null) {
            insRel = op.rel;
            insTable = this.table(target, op.rel);
            insOut = out(insTable);
          }
          const t = insTable;
          const k = mapKey(op.row, t.keyColumns);
          const rows = t.keyed;
          if (insOut === null) {
            rows.set(k, op.row);
          } else {
            const prev = rows.get(k);
            rows.set(k, op.row);
            const key = keyString(k);
            insOut.push(prev === undefined ? { op: "insert", key, row: op.row } : { op: "update", key, row: op.row, oldKey: key, old: prev });
          }
          break;
        }
        case "upd": {
          const t = this.table(target, op.rel);
          let prevKey: RowKey | undefined;
          let prev: Row | undefined;
          if (op.old !== null) [prevKey, prev] = this.find(t, op.old);
          if (prev === undefined) {
            const k = mapKey(op.row as Row, t.keyColumns);
            const p = t.keyed.get(k);
            if (p !== undefined) [prevKey, prev] = [k, p];
          }
          const row = op.row as Row;
          if (op.hasUnchanged) {
            for (const name in op.row) {
              if (op.row[name] === UNCHANGED) row[name] = prev === undefined ? null : (prev[name] ?? null);
            }
          }
          const k = mapKey(row, t.keyColumns);
          if (prevKey !== undefined && prevKey !== k) t.keyed.delete(prevKey);
          t.keyed.set(k, row);
          const key = keyString(k);
          out(t)?.push(
            prev === undefined || prevKey === undefined
              ? { op: "insert", key, row }
              : { op: "update", key, row, oldKey: keyString(prevKey), old: prev },
          );
          break;
        }
        case "del": {
          const t = this.table(target, op.rel);
          const [k, prev] = this.find(t, op.old);
          if (k !== undefined && prev !== undefined) {
            t.keyed.delete(k);
            out(t)?.push({ op: "delete", key: keyString(k), old: prev });
          }
          break;
        }
        case "trunc":
          for (const name of op.tables) {
            const t = target.get(name);
            if (t === undefined) continue;
            t.keyed.clear();
            out(t)?.push({ op: "truncate" });
          }
          break;
      }
    }
    for (const name of changes.keys()) {
      const t = target.get(name);
      if (t !== undefined) {
        t.version++;
        t.changed();
      }
    }
    // Inside a snapshot nothing is visible or resumable yet: SnapshotEnd sets the
    // position and announces every table.
    if (this.staging !== null) return { lsn: this.lsn, changes: new Map(), whole: false };
    this.lsn = lsn;
    return { lsn, changes, whole: false };
  }

  /** Finds the replica row an old row (key columns, or all under REPLICA IDENTITY FULL) designates. */
  private find(t: Table, old: Row): [RowKey | undefined, Row | undefined] {
    const key = mapKey(old, t.keyColumns);
    const hit = t.keyed.get(key);
    if (hit !== undefined) return [key, hit];
    // Replica identity other than the key: match on the columns the old row carries.
    const given = Object.keys(old).filter((c) => old[c] !== null);
    if (given.length === 0) return [undefined, undefined];
    for (const [k, r] of t.keyed) {
      if (given.every((c) => keyText(r[c] ?? null) === keyText(old[c] ?? null))) return [k, r];
    }
    return [undefined, undefined];
  }

  private relation(id: number): RelInfo {
    const rel = this.relations.get(id);
    if (rel === undefined) throw new ProtocolError(`op for relation ${id} before its Relation message`);
    return rel;
  }

  private table(target: Map<string, Table>, rel: RelInfo): Table {
    let t = target.get(rel.name);
    if (t === undefined) {
      t = new Table(rel.name, rel.columns, keyColumnsOf(rel.columns));
      target.set(rel.name, t);
    }
    return t;
  }

  /** Applies a Relation to its table: a new table is created; a changed one has its rows reshaped and re-keyed. */
  private applySchema(rel: RelInfo, changes: Map<string, Change[]>): void {
    const target = this.staging ?? this.tables;
    const t = target.get(rel.name);
    if (t === undefined) {
      this.table(target, rel);
      return;
    }
    const same =
      t.columns.length === rel.columns.length &&
      t.columns.every((c, i) => {
        const n = rel.columns[i] as ColumnInfo;
        return c.name === n.name && c.typeOid === n.typeOid && c.typeName === n.typeName && c.primaryKey === n.primaryKey;
      });
    if (same) {
      t.columns = rel.columns;
      return;
    }
    const names = rel.columns.map((c) => c.name);
    const keyColumns = keyColumnsOf(rel.columns);
    const rows = new Map<RowKey, Row>();
    for (const old of t.keyed.values()) {
      const row: Row = {};
      for (const n of names) row[n] = old[n] ?? null;
      rows.set(mapKey(row, keyColumns), row);
    }
    t.columns = rel.columns;
    t.keyColumns = keyColumns;
    t.keyed = rows;
    t.changed();
    t.version++;
    if (target === this.tables) changes.set(t.name, [...(changes.get(t.name) ?? []), { op: "reset" }]);
  }

  private decodeRow(rel: RelInfo, wire: WireRow | undefined, allowUnchanged: boolean): Record<string, Slot> {
    if (wire === undefined) throw new ProtocolError(`row missing for ${rel.name}`);
    const names = rel.names;
    const n = names.length;
    const values = wire.values;
    if (values.length !== n) {
      throw new ProtocolError(`${rel.name}: row has ${values.length} values, relation has ${n} columns`);
    }
    const out = rel.scratch;
    const nulls = wire.nulls ?? EMPTY;
    const unchanged = wire.unchanged ?? EMPTY;
    const decoders = rel.decoders;
    if (nulls.length === 0 && unchanged.length === 0) {
      // No NULL and no unchanged column (the common row): no bitmap tests.
      for (let i = 0; i < n; i++) out[i] = (decoders[i] as BytesDecoder)(values[i] as Uint8Array);
      return rel.make(out);
    }
    for (let i = 0; i < n; i++) {
      if (unchanged.length > 0 && bitSet(unchanged, i)) {
        if (!allowUnchanged) throw new ProtocolError(`${rel.name}: unchanged bit outside an Update's new row`);
        out[i] = UNCHANGED;
      } else if (nulls.length > 0 && bitSet(nulls, i)) {
        out[i] = null;
      } else {
        out[i] = (decoders[i] as BytesDecoder)(values[i] as Uint8Array);
      }
    }
    return rel.make(out);
  }
}
