import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration tests need Postgres and the pgsat binary: `npm run test:integration`.
    exclude: ["test/integration/**", "node_modules/**"],
    testTimeout: 20_000,
  },
});
