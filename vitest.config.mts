import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "policy/**/*.test.ts"],
    setupFiles: ["test/setup.ts"],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // The JSON report lets .ci/run print the closing count in a runner-neutral form.
    reporters: ["default", "json"],
    outputFile: { json: "out/test-results.json" },
  },
});
