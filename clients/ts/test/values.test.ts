import { describe, expect, it } from "vitest";
import { bytesDecoderFor, decodeValue, parseBytea, utf8Text } from "../src/values.js";

const col = (typeOid: number, typeName: string) => ({ typeOid, typeName });

describe("value conversion", () => {
  it.each([
    [21, "int2", "-32768", -32768],
    [23, "int4", "2147483647", 2147483647],
    [26, "oid", "4294967295", 4294967295],
    [20, "int8", "9223372036854775807", 9223372036854775807n],
    [20, "int8", "-1", -1n],
    [700, "float4", "1.5", 1.5],
    [701, "float8", "-2.25e-10", -2.25e-10],
    [701, "float8", "Infinity", Infinity],
    [701, "float8", "-Infinity", -Infinity],
    [1700, "numeric", "123456789012345678901234567890.000001", "123456789012345678901234567890.000001"],
    [1700, "numeric", "NaN", "NaN"],
    [16, "bool", "t", true],
    [16, "bool", "f", false],
    [114, "json", '{"a": [1, "x", null]}', { a: [1, "x", null] }],
    [3802, "jsonb", '"s"', "s"],
    [3802, "jsonb", "42", 42],
    [1114, "timestamp", "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.123456"],
    [1184, "timestamptz", "2024-01-02 03:04:05+00", "2024-01-02 03:04:05+00"],
    [1082, "date", "2024-01-02", "2024-01-02"],
    [25, "text", "héllo", "héllo"],
    [1043, "varchar", "", ""],
    [2950, "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    [1007, "_int4", "{1,2,3}", "{1,2,3}"],
    [99999, "my_enum", "red", "red"],
  ])("oid %i (%s): %j", (oid, name, text, want) => {
    expect(decodeValue(col(oid, name), text)).toEqual(want);
  });

  it("float NaN is NaN", () => {
    expect(Number.isNaN(decodeValue(col(701, "float8"), "NaN"))).toBe(true);
  });

  it("NULL is null for every type", () => {
    for (const [oid, name] of [[23, "int4"], [20, "int8"], [16, "bool"], [17, "bytea"], [3802, "jsonb"], [25, "text"]] as const) {
      expect(decodeValue(col(oid, name), null)).toBeNull();
    }
  });

  it("falls back to the type name when the oid is not a built-in one", () => {
    expect(decodeValue(col(0, "int4"), "7")).toBe(7);
    expect(decodeValue(col(0, "bool"), "t")).toBe(true);
  });

  it("int8 as string on request", () => {
    expect(decodeValue(col(20, "int8"), "9223372036854775807", { int8: "string" })).toBe("9223372036854775807");
  });

  it("bytea hex and escape formats become Uint8Array", () => {
    expect(decodeValue(col(17, "bytea"), "\\x00ff10Ab")).toEqual(new Uint8Array([0, 255, 16, 171]));
    expect(decodeValue(col(17, "bytea"), "\\x")).toEqual(new Uint8Array([]));
    expect(parseBytea("a\\\\b\\001\\377")).toEqual(new Uint8Array([97, 92, 98, 1, 255]));
  });

  it("keeps text that does not parse as its type", () => {
    expect(decodeValue(col(23, "int4"), "abc")).toBe("abc");
    expect(decodeValue(col(20, "int8"), "1.5")).toBe("1.5");
    expect(decodeValue(col(16, "bool"), "maybe")).toBe("maybe");
    expect(decodeValue(col(3802, "jsonb"), "{")).toBe("{");
    expect(decodeValue(col(17, "bytea"), "\\x0")).toBe("\\x0");
    expect(decodeValue(col(17, "bytea"), "\\xzz")).toBe("\\xzz");
  });
});

describe("conversion from bytes (the replica's path)", () => {
  const enc = new TextEncoder();
  const texts = [
    "", "0", "-0", "7", "-7", "-", "--1", "+5", " 5", "5 ", "1.5", "1e3", "0x1f", "007", "-007",
    "32767", "-32768", "2147483647", "4294967295", "999999999999999", "-999999999999999",
    "1000000000000000", "9007199254740993", "9223372036854775807", "-9223372036854775808",
    "t", "f", "true", "T", "NaN", "Infinity", "-Infinity", "abc", "héllo", "日本", "{\"a\": 1}", "[1,2]", "\\x00ff", "\\x0",
  ];
  const types: [number, string][] = [
    [21, "int2"], [23, "int4"], [26, "oid"], [20, "int8"], [16, "bool"], [700, "float4"], [701, "float8"],
    [1700, "numeric"], [114, "json"], [3802, "jsonb"], [17, "bytea"], [25, "text"], [0, "int4"], [0, "bigint"], [0, "mystery"],
  ];
  it("gives exactly what the text conversion gives, for every type and odd input", () => {
    for (const [oid, name] of types) {
      for (const opts of [{}, { int8: "string" as const }]) {
        const d = bytesDecoderFor(col(oid, name), opts);
        for (const t of texts) {
          const got = d(enc.encode(t));
          const want = decodeValue(col(oid, name), t, opts);
          if (typeof want === "number" && Number.isNaN(want)) expect(Number.isNaN(got)).toBe(true);
          else expect([oid, name, t, got]).toEqual([oid, name, t, want]);
          if (typeof want === "number") expect(Object.is(got, want)).toBe(true);
        }
      }
    }
  });

  it("utf8Text decodes ASCII and multi-byte text of every short length", () => {
    for (const s of ["", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh", "abcdefghi", "é", "aé", "日本語", "abcdefgé", "😀", "x".repeat(200)]) {
      expect(utf8Text(enc.encode(s))).toBe(s);
    }
    expect(utf8Text(new Uint8Array([0xff]))).toBe("\ufffd");
  });
});
