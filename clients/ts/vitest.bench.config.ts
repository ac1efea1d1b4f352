import { defineConfig } from "vitest/config";

// The end-to-end benchmark (bench/e2e.bench.ts) runs as a single vitest test so
// it can share the TypeScript integration harness: `npm run bench:e2e`.
export default defineConfig({
  test: {
    include: ["bench/e2e.bench.ts"],
    fileParallelism: false,
    testTimeout: 900_000,
    hookTimeout: 120_000,
  },
});
