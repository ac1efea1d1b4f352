import { defineConfig } from "vitest/config";

// Integration tests: a real PostgreSQL and the real pgsat binary (PGSAT_BIN,
// default ../../target/debug/pgsat), one file at a time (each file starts its
// own cluster and proxy; the machine has few cores).
export default defineConfig({
  test: {
    include: ["test/integration/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
