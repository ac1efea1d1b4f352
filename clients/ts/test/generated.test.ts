import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

describe("generated protobuf code", () => {
  it("is what buf generates from proto/pgsat.proto today", () => {
    const r = spawnSync(process.execPath, [join(root, "scripts", "check-generated.mjs")], { cwd: root, encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });
});
