import { defineConfig } from "vitest/config";

// The browser test: real Postgres + pgsat (the clients/ts integration harness),
// the built demo served locally, headless Chromium (/usr/bin/chromium, or
// CHROMIUM_BIN) driven by playwright-core.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 180_000,
  },
});
