import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { SCHEMA_DIR } from "../components/traefikSchema";

// The checksums SchemaStore's files had at the commit schemas/README.md names.
const UPSTREAM_SHA256: Record<string, string> = {
  "traefik-v3.json": "bb3fd9028607956e2b22541c11591cd47320eb69d75701537c0b1b45c2e268fc",
  "traefik-v3-file-provider.json":
    "8734891c888025bd1821a52f9c743c44bc5b10bcbb01aa84fb267c3f67b1416e",
};

describe("the Traefik schemas kept in the repository", () => {
  it.each(Object.entries(UPSTREAM_SHA256))("%s is SchemaStore's file unchanged", (file, sha) => {
    const bytes = fs.readFileSync(path.join(SCHEMA_DIR, file));
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(sha);
  });
});
