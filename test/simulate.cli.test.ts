/**
 * `npm run simulate` end to end, one spawn per input kind (each costs about a second):
 * the exit code, what goes to stdout, and that the numbers follow from the stack's policy.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { stackConfig } from "./stacks";
import { PROJECT_DIR } from "../config";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "simulate-cli-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function simulate(...args: string[]) {
  const run = spawnSync("npx", ["tsx", "tools/simulate.ts", ...args], {
    cwd: PROJECT_DIR,
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: run.status, stdout: run.stdout, stderr: run.stderr };
}

function file(name: string, rows: object[]): string {
  const full = path.join(dir, name);
  fs.writeFileSync(full, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return full;
}

const dev = stackConfig("dev");
const prod = stackConfig("prod");

describe("npm run simulate", () => {
  it("--input: a burst from one address gets the stack's burst through and the rest refused", () => {
    const offered = dev.rateLimit.burst * 3;
    const rows = Array.from({ length: offered }, () => ({ t: 0, remoteAddr: "192.0.2.1:4711" }));
    const { code, stdout } = simulate("--input", file("burst.jsonl", rows), "--stack", "dev");
    expect(code).toBe(0);
    const line = stdout.split("\n").find((l) => l.startsWith("192.0.2.1"))!;
    expect(line.split(/\s+/).slice(1, 5).map(Number)).toEqual([
      offered,
      dev.rateLimit.burst,
      0,
      offered - dev.rateLimit.burst,
    ]);
  });

  it("--input with bad lines: every problem with its line number, exit 1", () => {
    const bad = file("bad.jsonl", [
      { t: 0, remoteAddr: "192.0.2.1" },
      { t: 1 },
      { t: 2, remoteAddr: "x" },
    ]);
    const { code, stdout, stderr } = simulate("--input", bad, "--json");
    expect(code).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toContain(`${bad}:2: remoteAddr`);
    expect(stderr).toContain(`${bad}:3: remoteAddr`);
  });

  it("--access-log --json: only JSON on stdout; behind the trusted proxy each client has its bucket, a spoofer lands in the shared one", () => {
    const proxy = prod.traefik.trustedProxies[0];
    const at = (s: number) => new Date(Date.UTC(2026, 2, 1, 22, 0, s)).toISOString();
    const rows = [
      {
        StartUTC: at(0),
        ClientHost: proxy,
        entryPointName: "websecure",
        "request_X-Forwarded-For": "198.51.100.1",
      },
      {
        StartUTC: at(1),
        ClientHost: proxy,
        entryPointName: "websecure",
        "request_X-Forwarded-For": "198.51.100.2",
      },
      {
        StartUTC: at(2),
        ClientHost: "203.0.113.5",
        entryPointName: "websecure",
        "request_X-Forwarded-For": "198.51.100.3",
      },
    ];
    const { code, stdout } = simulate(
      "--access-log",
      file("access.log", rows),
      "--stack",
      "prod",
      "--json",
    );
    expect(code).toBe(0);
    const result = JSON.parse(stdout);
    expect(Object.keys(result.sources).sort()).toEqual(["", "198.51.100.1", "198.51.100.2"]);
    expect(result.total).toBe(rows.length);
    expect(result.passed + result.rejected).toBe(result.total);
    expect(result.warnings.join("\n")).toMatch(/ONE bucket/);
  });

  it("--profile --json --chart: abusive traffic under the limit is flagged, and the chart is written", () => {
    const chart = path.join(dir, "chart.svg");
    const underLimit = `prober:rate=${dev.rateLimit.average / 2}/m,duration=10m`;
    const { code, stdout } = simulate(
      "--profile",
      underLimit,
      "--profile",
      "alerts:duration=10m",
      "--stack",
      "dev",
      "--json",
      "--chart",
      chart,
    );
    expect(code).toBe(0);
    const result = JSON.parse(stdout);
    expect(result.profiles.map((p: { legitimate: boolean }) => p.legitimate)).toEqual([
      false,
      true,
    ]);
    expect(result.warnings.join("\n")).toContain(`profile ${underLimit} got through`);
    const sum = (key: string) =>
      Object.values(result.sources).reduce(
        (n: number, s) => n + (s as Record<string, number>)[key],
        0,
      );
    expect(sum("requests")).toBe(result.total);
    expect(sum("rejected")).toBe(result.rejected);
    expect(fs.readFileSync(chart, "utf8")).toMatch(/^<svg[\s\S]*offered[\s\S]*rejected/);
    expect(fs.readFileSync(chart.replace(/svg$/, "png")).subarray(1, 4).toString()).toBe("PNG");
  });

  it.each([
    ["--no-shared-buckets", false],
    ["--shared-buckets", true],
    ["(stack default)", prod.redis !== undefined],
  ] as const)(
    "--edges 2 %s --json: a client round-robined over both edges gets 2 bursts, or 1 when shared",
    (flag, shared) => {
      const burst = prod.rateLimit.burst;
      const client = "198.51.100.7";
      const proxy = prod.traefik.trustedProxies[0];
      const rows = Array.from({ length: 3 * burst }, () => ({
        t: 0,
        remoteAddr: proxy,
        xff: client,
      }));
      const flags = flag.startsWith("--") ? [flag] : [];
      const input = file("edges.jsonl", rows);
      const { code, stdout } = simulate(
        "--input",
        input,
        "--stack",
        "prod",
        "--edges",
        "2",
        ...flags,
        "--json",
      );
      expect(code).toBe(0);
      const result = JSON.parse(stdout);
      expect(result).toMatchObject({ edges: 2, sharedBuckets: shared });
      expect(result.sources[client].passed).toBe((shared ? 1 : 2) * burst);
      expect(result.edgeComparison.sources[client]).toEqual({
        requests: rows.length,
        perInstance: 2 * burst,
        shared: burst,
      });
      expect(result.warnings.some((w: string) => w.includes("without shared buckets"))).toBe(
        !shared,
      );
    },
  );

  it("--profile (text) against a stack that does not exist: the configuration problem, exit 1", () => {
    const { code, stderr } = simulate("--profile", "alerts", "--stack", "nosuch");
    expect(code).toBe(1);
    expect(stderr).toMatch(/^  - \(stack\) in stacks\/Pulumi\.nosuch\.yaml: found /m);
  });
});
