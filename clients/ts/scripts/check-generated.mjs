// Regenerates the protobuf code from ../../proto into a temporary directory
// and compares it with the committed src/gen/. Exits 1 (and lists the files)
// when they differ: run `npm run generate` and commit the result.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tmp = mkdtempSync(join(tmpdir(), "pgsat-gen-"));

function files(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else out.push(p);
  }
  return out;
}

try {
  const bin = join(root, "node_modules", ".bin");
  const r = spawnSync(join(bin, "buf"), ["generate", "--template", "buf.gen.yaml", "-o", tmp, "../../proto"], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` },
  });
  if (r.status !== 0) {
    console.error(`buf generate failed (${r.status ?? r.signal}): ${r.stderr}${r.error ?? ""}`);
    process.exit(2);
  }
  const want = join(tmp, "src", "gen");
  const have = join(root, "src", "gen");
  const a = files(want).map((f) => relative(want, f)).sort();
  const b = files(have).map((f) => relative(have, f)).sort();
  const diff = [];
  for (const f of new Set([...a, ...b])) {
    if (!a.includes(f) || !b.includes(f) || readFileSync(join(want, f), "utf8") !== readFileSync(join(have, f), "utf8")) diff.push(f);
  }
  if (diff.length > 0) {
    console.error(`src/gen is stale (${diff.join(", ")}): run npm run generate`);
    process.exit(1);
  }
  console.log(`src/gen matches proto/pgsat.proto (${a.length} file(s))`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
