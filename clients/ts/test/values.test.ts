import { describe, expect, it } from "vitest";
import { decodeValue, parseBytea } from "../src/values.js";

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
