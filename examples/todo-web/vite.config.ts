import { defineConfig } from "vite";

// @pgsat/client is a file: dependency on ../../clients/ts (its built dist/).
export default defineConfig({
  build: { target: "es2022" },
  preview: { host: "127.0.0.1" },
  server: { host: "127.0.0.1" },
});
