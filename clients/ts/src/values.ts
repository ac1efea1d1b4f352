// Conversion of Postgres text-format column values to JavaScript values.
// Invariant: the JS type of a value depends only on its column's type (oid,
// else type name) and the client options, never on the value itself; NULL is
// always `null`; a value that does not parse as its type is kept as its text.
import type { Column } from "./gen/pgsat_pb.js";

/** A column value in the replica. */
export type Value =
  | string
  | number
  | bigint
  | boolean
  | Uint8Array
  | null
  | JsonValue;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A replicated row: column name → value. */
export type Row = Record<string, Value>;

/** How int8 (bigint) columns are represented. */
export type Int8Mode = "bigint" | "string";

export interface ValueOptions {
  /** int8 → `bigint` (default) or `string`. */
  int8?: Int8Mode;
}

/** Column description kept by the replica (from the Relation message). */
export interface ColumnInfo {
  name: string;
  typeOid: number;
  typeName: string;
  primaryKey: boolean;
  nullable: boolean;
}

export type Decoder = (text: string) => Value;

const asString: Decoder = (t) => t;
const asInt: Decoder = (t) => {
  const n = Number(t);
  return Number.isNaN(n) ? t : n;
};
const asFloat: Decoder = (t) => {
  // Postgres prints NaN, Infinity, -Infinity, which Number() understands.
  const n = Number(t);
  return Number.isNaN(n) && t !== "NaN" ? t : n;
};
const asBigint: Decoder = (t) => {
  try {
    return BigInt(t);
  } catch {
    return t;
  }
};
const asBool: Decoder = (t) => (t === "t" ? true : t === "f" ? false : t);
const asJson: Decoder = (t) => {
  try {
    return JSON.parse(t) as JsonValue;
  } catch {
    return t;
  }
};
const asBytea: Decoder = (t) => parseBytea(t) ?? t;

// Built-in type OIDs (pg_type.h); stable across Postgres versions.
const BY_OID = new Map<number, keyof typeof BY_NAME>([
  [16, "bool"],
  [17, "bytea"],
  [20, "int8"],
  [21, "int2"],
  [23, "int4"],
  [26, "oid"],
  [114, "json"],
  [700, "float4"],
  [701, "float8"],
  [1700, "numeric"],
  [3802, "jsonb"],
]);

const BY_NAME = {
  bool: asBool,
  boolean: asBool,
  bytea: asBytea,
  int8: asBigint,
  bigint: asBigint,
  int2: asInt,
  smallint: asInt,
  int4: asInt,
  integer: asInt,
  oid: asInt,
  json: asJson,
  jsonb: asJson,
  float4: asFloat,
  real: asFloat,
  float8: asFloat,
  "double precision": asFloat,
  numeric: asString,
} as const;

/** The decoder for a column: by type oid, else by type name, else text. */
export function decoderFor(col: Pick<ColumnInfo, "typeOid" | "typeName">, opts: ValueOptions = {}): Decoder {
  const name = BY_OID.get(col.typeOid) ?? (col.typeName in BY_NAME ? (col.typeName as keyof typeof BY_NAME) : undefined);
  if (name === undefined) return asString;
  const d = BY_NAME[name];
  if (d === asBigint && opts.int8 === "string") return asString;
  return d;
}

/** Converts a column's UTF-8 text bytes straight to its value (the replica's hot path). */
export type BytesDecoder = (bytes: Uint8Array) => Value;

/**
 * A canonical decimal integer (optional "-", 1 to 15 digits) read straight from
 * its bytes, exactly as Number() reads its text; NaN for anything else (the
 * caller then takes the text path, so odd input converts as before).
 */
function smallInt(b: Uint8Array): number {
  const n = b.length;
  let i = 0;
  let neg = false;
  if (n > 1 && b[0] === 0x2d /* - */) {
    neg = true;
    i = 1;
  }
  if (n === 0 || n - i > 15) return NaN;
  let v = 0;
  for (; i < n; i++) {
    const d = (b[i] as number) - 48;
    if (d < 0 || d > 9) return NaN;
    v = v * 10 + d;
  }
  return neg ? -v : v;
}

const bytesAsString: BytesDecoder = utf8Text;
const bytesAsInt: BytesDecoder = (b) => {
  const v = smallInt(b);
  return v === v ? v : asInt(utf8Text(b));
};
const bytesAsBigint: BytesDecoder = (b) => {
  const v = smallInt(b);
  return v === v ? BigInt(v) : asBigint(utf8Text(b));
};
const bytesAsBool: BytesDecoder = (b) => {
  if (b.length === 1) {
    if (b[0] === 0x74 /* t */) return true;
    if (b[0] === 0x66 /* f */) return false;
  }
  return asBool(utf8Text(b));
};

/**
 * The bytes decoder for a column: the same conversion as decoderFor's applied
 * to the UTF-8 text, without building a string for integers and booleans.
 * Chosen once per column (per Relation), not per value.
 */
export function bytesDecoderFor(col: Pick<ColumnInfo, "typeOid" | "typeName">, opts: ValueOptions = {}): BytesDecoder {
  const d = decoderFor(col, opts);
  if (d === asString) return bytesAsString;
  if (d === asInt) return bytesAsInt;
  if (d === asBigint) return bytesAsBigint;
  if (d === asBool) return bytesAsBool;
  return (b) => d(utf8Text(b));
}

/** Converts one text value of a column; `null` stays `null`. */
export function decodeValue(col: Pick<ColumnInfo, "typeOid" | "typeName">, text: string | null, opts: ValueOptions = {}): Value {
  return text === null ? null : decoderFor(col, opts)(text);
}

/** Parses bytea text output: hex (`\x0a0b`) or escape format (`a\\b\001`). Null if malformed. */
export function parseBytea(t: string): Uint8Array | null {
  if (t.startsWith("\\x")) {
    const hex = t.length - 2;
    if (hex % 2 !== 0) return null;
    const out = new Uint8Array(hex / 2);
    for (let i = 0; i < out.length; i++) {
      const hi = hexDigit(t.charCodeAt(2 + 2 * i));
      const lo = hexDigit(t.charCodeAt(3 + 2 * i));
      if (hi < 0 || lo < 0) return null;
      out[i] = (hi << 4) | lo;
    }
    return out;
  }
  const bytes: number[] = [];
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c === 0x5c /* \ */) {
      if (t.charCodeAt(i + 1) === 0x5c) {
        bytes.push(0x5c);
        i += 1;
        continue;
      }
      const oct = t.slice(i + 1, i + 4);
      if (!/^[0-3][0-7][0-7]$/.test(oct)) return null;
      bytes.push(parseInt(oct, 8));
      i += 3;
    } else if (c < 0x80) {
      bytes.push(c);
    } else {
      return null;
    }
  }
  return Uint8Array.from(bytes);
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** Canonical text of a value, used to build row keys (bytes → hex, json → JSON). */
export function keyText(v: Value): string {
  if (v === null) return "\u0000";
  switch (typeof v) {
    case "string":
      return v;
    case "number":
    case "bigint":
      return String(v);
    case "boolean":
      return v ? "t" : "f";
    default:
      if (v instanceof Uint8Array) {
        let s = "\\x";
        for (const b of v) s += b.toString(16).padStart(2, "0");
        return s;
      }
      return JSON.stringify(v);
  }
}

/** Column info from a protobuf Column. */
export function columnInfo(c: Column): ColumnInfo {
  return { name: c.name, typeOid: c.typeOid, typeName: c.typeName, primaryKey: c.primaryKey, nullable: c.nullable };
}

const utf8 = new TextDecoder("utf-8", { fatal: false });
const fcc = String.fromCharCode;

/** UTF-8 bytes → string; short ASCII values (the common small columns) skip TextDecoder's per-call cost. */
export function utf8Text(b: Uint8Array): string {
  const n = b.length;
  if (n > 8) return utf8.decode(b);
  let or = 0;
  for (let i = 0; i < n; i++) or |= b[i] as number;
  if (or >= 0x80) return utf8.decode(b);
  switch (n) {
    case 0:
      return "";
    case 1:
      return fcc(b[0] as number);
    case 2:
      return fcc(b[0] as number, b[1] as number);
    case 3:
      return fcc(b[0] as number, b[1] as number, b[2] as number);
    case 4:
      return fcc(b[0] as number, b[1] as number, b[2] as number, b[3] as number);
    case 5:
      return fcc(b[0] as number, b[1] as number, b[2] as number, b[3] as number, b[4] as number);
    case 6:
      return fcc(b[0] as number, b[1] as number, b[2] as number, b[3] as number, b[4] as number, b[5] as number);
    case 7:
      return fcc(b[0] as number, b[1] as number, b[2] as number, b[3] as number, b[4] as number, b[5] as number, b[6] as number);
    default:
      return fcc(
        b[0] as number,
        b[1] as number,
        b[2] as number,
        b[3] as number,
        b[4] as number,
        b[5] as number,
        b[6] as number,
        b[7] as number,
      );
  }
}

/** Whether bit i (byte i/8, most significant bit first) is set. */
export function bitSet(mask: Uint8Array, i: number): boolean {
  const byte = mask[i >> 3];
  return byte !== undefined && (byte & (0x80 >> (i & 7))) !== 0;
}
