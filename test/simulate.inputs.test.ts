/**
 * Where the simulator's traffic comes from: its JSON-lines format, Traefik's access log,
 * the synthetic profiles, and the policy it replays them against.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { connectionRateLimit, declaredKeys } from "../config";
import { ENTRY_POINTS } from "../components/names";
import { parseTimestamp, readAccessLog, readJsonLines } from "../tools/simulate/inputs";
import { buildPolicy } from "../tools/simulate/policy";
import { generateProfile, parseProfile, ProfileError, PROFILES } from "../tools/simulate/profiles";
import { TrafficBuilder } from "../tools/simulate/traffic";
import { stackConfig } from "./stacks";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "simulate-inputs-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, lines: string[]): string {
  const full = path.join(dir, name);
  fs.writeFileSync(full, lines.join("\n") + "\n");
  return full;
}

describe("JSON lines", () => {
  it("reads good lines, defaulting the entry point by whether there is a login", () => {
    const { traffic, problems } = readJsonLines(
      file("good.jsonl", [
        JSON.stringify({ t: 2, remoteAddr: "192.0.2.1:4711", xff: "198.51.100.1" }),
        "",
        JSON.stringify({ t: 1, remoteAddr: "192.0.2.2", auth: "fail" }),
      ]),
    );
    expect(problems).toEqual([]);
    expect(Array.from(traffic.t)).toEqual([1, 2]); // sorted by time
    expect(traffic.strings[traffic.entryPoint[0]]).toBe(ENTRY_POINTS.submission);
    expect(traffic.strings[traffic.entryPoint[1]]).toBe(ENTRY_POINTS.websecure);
    expect(traffic.strings[traffic.xff[1]]).toBe("198.51.100.1");
  });

  it("reports every bad line with its number", () => {
    const bad = file("bad.jsonl", [
      JSON.stringify({ t: 0, remoteAddr: "192.0.2.1" }),
      JSON.stringify({ t: "soon", remoteAddr: "192.0.2.1" }),
      "{not json",
      JSON.stringify({ t: 1, remoteAddr: "not-an-address", auth: "maybe" }),
      JSON.stringify({ t: 1, remoteAddr: "192.0.2.1", remoteaddr: "typo" }),
    ]);
    const { problems } = readJsonLines(bad);
    const lineNumbers = problems.map((p) => Number(p.slice(bad.length + 1).split(":")[0]));
    expect(lineNumbers).toEqual([2, 3, 4, 4, 5]);
    expect(problems[0]).toContain('t: found "soon"');
    expect(problems[4]).toContain("remoteaddr: unknown field");
  });
});

describe("Traefik access log", () => {
  it("takes time, peer, entry point, router and the logged X-Forwarded-For", () => {
    const start = "2026-03-01T22:00:00.250000000Z";
    const { traffic, problems } = readAccessLog(
      file("access.log", [
        JSON.stringify({
          StartUTC: start,
          ClientAddr: "10.10.0.2:51234",
          ClientHost: "10.10.0.2",
          entryPointName: "websecure",
          RouterName: "api@docker",
          "request_X-Forwarded-For": "198.51.100.9",
        }),
        JSON.stringify({ StartUTC: "2026-03-01T22:00:01Z", ClientHost: "192.0.2.7" }),
        JSON.stringify({ StartUTC: "yesterday", ClientHost: "192.0.2.7" }),
        JSON.stringify({ StartUTC: "2026-03-01T22:00:02Z" }),
      ]),
    );
    expect(problems).toHaveLength(2);
    expect(problems[0]).toMatch(/access\.log:3: StartUTC/);
    expect(problems[1]).toMatch(/access\.log:4: ClientAddr or ClientHost/);
    expect(traffic.t[0]).toBeCloseTo(Date.parse("2026-03-01T22:00:00Z") / 1000 + 0.25, 6);
    expect(traffic.strings[traffic.remoteAddr[0]]).toBe("10.10.0.2:51234");
    expect(traffic.strings[traffic.router[0]]).toBe("api@docker");
    expect(traffic.strings[traffic.xff[0]]).toBe("198.51.100.9");
    expect(traffic.xff[1]).toBe(-1);
  });

  it("parses Go's RFC 3339 times down to nanoseconds", () => {
    expect(parseTimestamp("1970-01-01T00:00:01.000000001Z")).toBeCloseTo(1.000000001, 9);
    expect(parseTimestamp("1970-01-01T01:00:00+01:00")).toBe(0);
    expect(parseTimestamp("01/01/1970")).toBeUndefined();
  });
});

describe("profiles", () => {
  const generate = (specs: string[], seed: number) => {
    const builder = new TrafficBuilder();
    specs.forEach((spec, i) => generateProfile(builder, spec, parseProfile(spec), seed * 1000 + i));
    return builder.build();
  };

  it("are deterministic for a seed and differ between seeds", () => {
    const specs = ["alerts", "bruteforce:duration=1m"];
    expect(Array.from(generate(specs, 7).t)).toEqual(Array.from(generate(specs, 7).t));
    expect(Array.from(generate(specs, 7).t)).not.toEqual(Array.from(generate(specs, 8).t));
  });

  it("mark each profile legitimate or abusive, and put the NAT'd clients behind one address", () => {
    const traffic = generate(Object.keys(PROFILES), 1);
    expect(traffic.profiles.map((p) => [p.name, p.legitimate])).toEqual(
      Object.entries(PROFILES).map(([name, p]) => [name, p.legitimate]),
    );
    const nat = traffic.profiles.findIndex((p) => p.name === "nat");
    const natPeers = new Set<number>();
    for (let i = 0; i < traffic.length; i++)
      if (traffic.profile[i] === nat) natPeers.add(traffic.remoteAddr[i]);
    expect(natPeers.size).toBe(1);
  });

  it("honour their parameters: rate, duration, clients, via", () => {
    const spec = "prober:rate=2/s,duration=100s,clients=3,via=10.10.0.2";
    const traffic = generate([spec], 1);
    const { params } = parseProfile(spec);
    const expected = params.rate * params.duration * params.clients;
    expect(traffic.length).toBeGreaterThan(expected * 0.85);
    expect(traffic.length).toBeLessThan(expected * 1.15);
    expect(new Set(Array.from(traffic.remoteAddr, (i) => traffic.strings[i]))).toEqual(
      new Set([params.via]),
    );
    expect(new Set(Array.from(traffic.xff, (i) => traffic.strings[i])).size).toBe(params.clients);
  });

  it.each([
    ["nosuch"],
    ["alerts:rate=fast"],
    ["alerts:clients=0"],
    ["alerts:colour=blue"],
    ["alerts:addr=300.1.1.1"],
  ])("refuse %s", (spec) => {
    expect(() => parseProfile(spec)).toThrow(ProfileError);
  });
});

describe("policy", () => {
  it("is the stack's rateLimit, with the relay's connection rate derived as config.ts does", () => {
    const config = stackConfig("prod");
    const policy = buildPolicy(config);
    const r = config.rateLimit;
    expect(policy.http).toMatchObject({
      average: r.average,
      periodSeconds: r.periodSeconds,
      burst: r.burst,
      sourceCriterion: r.sourceCriterion,
    });
    expect(policy.trustedIPs).toEqual(config.traefik.trustedProxies);
    expect(policy.smtp).toMatchObject({
      inFlight: r.inFlight,
      connectionCount: r.inFlight,
      connectionRate: connectionRateLimit(r.average, r.periodSeconds, r.burst, r.windowSeconds),
      authRate: r.authAttempts,
      messageRate: r.messages,
      exempt: r.exempt,
    });
  });

  it("lets flags override the stack, even into a mistake the stack file would not pass", () => {
    const policy = buildPolicy(stackConfig("dev"), { depth: 1, average: 5, trustedIPs: [] });
    expect(policy.http.sourceCriterion).toEqual({ kind: "depth", depth: 1 });
    expect(policy.http.average).toBe(5);
  });

  it("falls back to Pulumi.yaml's defaults without a stack", () => {
    const policy = buildPolicy(undefined);
    expect(policy.http.average).toBe(declaredKeys().get("rateLimit.average")!.default);
    expect(policy.smtp.authRate).toBe(declaredKeys().get("rateLimit.authAttempts")!.default);
  });
});
