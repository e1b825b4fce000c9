/**
 * The simulator's model against Traefik's own rate-limiter test table and against the
 * behaviour of Traefik's rate limiter (pkg/middlewares/ratelimiter) and Postfix's anvil
 * (postconf(5)) for sources, TTL, maxDelay and the relay's limits.
 */
import { describe, expect, it } from "vitest";
import table from "./fixtures/traefik-ratelimiter-cases.json";
import type { SourceCriterion } from "../config";
import { ENTRY_POINTS } from "../components/names";
import {
  limiterParameters,
  Outcome,
  RedisBuckets,
  REJECTED,
  replay,
  SmtpGate,
  TokenBuckets,
  type Buckets,
  type LimiterParameters,
  type SimPolicy,
  type SmtpPolicy,
} from "../tools/simulate/model";
import { summarize } from "../tools/simulate/report";
import {
  AddressSet,
  forwardedHeader,
  hostOf,
  selectSource,
  smtpClient,
} from "../tools/simulate/source";
import {
  AUTH_FAIL,
  AUTH_NONE,
  AUTH_OK,
  TrafficBuilder,
  type TrafficEvent,
} from "../tools/simulate/traffic";

type LoadCase = (typeof table.load_cases)[number];

/** Each suite of the table against the model of the limiter it tests. */
const LIMITERS: Record<string, (limit: LimiterParameters) => Buckets> = {
  TestInMemoryRateLimit: (limit) => new TokenBuckets(limit),
  TestRedisRateLimit: (limit) => new RedisBuckets(limit),
};

/**
 * Traefik's load test, in simulated time: `initial_burst_requests` back to back, then one
 * request per ticker tick. Requests are served in line, so a delayed request holds the
 * loop up, and a tick that fired meanwhile is taken at once (a Go ticker keeps at most one).
 * Each loop turn costs `turnSeconds`, as building a request and a recorder does in Go.
 * The clock starts at `start` seconds (the Redis script works on Unix time).
 */
function traefikLoadTest(c: LoadCase, turnSeconds: number, start = 0): number {
  const buckets = LIMITERS[c.suite](
    limiterParameters(c.config.average, c.config.period_s ?? 0, c.config.burst ?? 0),
  );
  const bucket = buckets.add();
  const tick = Math.trunc(1e9 / c.incoming_load_rps) / 1e9;
  let now = start;
  let served = 0;
  let lastTick = 0;
  while (!(now - start > c.load_duration_s)) {
    const wait = buckets.take(bucket, now);
    now += turnSeconds;
    if (wait !== REJECTED) {
      now += wait;
      served++;
    }
    if (c.initial_burst_requests > 0 && served < c.initial_burst_requests) continue;
    const nextTick = start + (lastTick + 1) * tick;
    if (nextTick <= now) lastTick = Math.floor((now - start) / tick);
    else {
      now = nextTick;
      lastTick++;
    }
  }
  return served;
}

describe("Traefik's rate-limiter test table", () => {
  it("has only suites the model has a limiter for", () => {
    expect(new Set(table.load_cases.map((c) => c.suite))).toEqual(new Set(Object.keys(LIMITERS)));
  });

  it.each(table.load_cases.map((c) => [`${c.suite}: ${c.desc}`, c] as const))("%s", (_, c) => {
    // 2026-01-01 in Unix seconds: Redis's microsecond clock at a real magnitude.
    const start = c.suite === "TestRedisRateLimit" ? 1_767_225_600 : 0;
    // A real loop turn takes some microseconds; the result must not hinge on the exact figure.
    for (const turnSeconds of [2e-6, 20e-6, 200e-6]) {
      const served = traefikLoadTest(c, turnSeconds, start);
      expect(served, `turn ${turnSeconds}s`).toBeGreaterThanOrEqual(c.expected.min_count_local);
      expect(served, `turn ${turnSeconds}s`).toBeLessThanOrEqual(c.expected.max_count);
    }
  });

  it.each(
    table.constructor_cases
      .filter((c) => "max_delay_us" in c.expected || "max_delay_ms" in c.expected)
      .map((c) => [c.desc, c] as const),
  )("%s", (_, c) => {
    const config = c.config as { average: number; period_s?: number; burst: number };
    const expected = c.expected as { max_delay_us?: number; max_delay_ms?: number };
    const wantNs =
      expected.max_delay_us !== undefined
        ? expected.max_delay_us * 1e3
        : expected.max_delay_ms! * 1e6;
    expect(limiterParameters(config.average, config.period_s ?? 0, config.burst).maxDelayNs).toBe(
      wantNs,
    );
  });

  it("average 0 means no limit: every request passes at once", () => {
    const buckets = new TokenBuckets(limiterParameters(0, 1, 1));
    const bucket = buckets.add();
    for (let i = 0; i < 1000; i++) expect(buckets.take(bucket, i / 1e6)).toBe(0);
  });
});

describe("Traefik's ipStrategy table", () => {
  const withXff = (depthOrPool: SourceCriterion, xff: string, subnet?: number) =>
    selectSource(depthOrPool, "192.0.2.1:1234", xff, undefined, subnet);

  it.each(table.ip_strategy_cases.depth.map((c) => [c.desc, c] as const))("depth: %s", (_, c) => {
    const subnet = "ipv6_subnet" in c ? c.ipv6_subnet : undefined;
    expect(withXff({ kind: "depth", depth: c.depth }, c.x_forwarded_for, subnet)).toBe(c.expected);
  });

  it.each(table.ip_strategy_cases.excluded_ips_pool.map((c) => [c.desc, c] as const))(
    "excludedIPs: %s",
    (_, c) => {
      expect(withXff({ kind: "excludedIPs", excludedIPs: c.excluded_ips }, c.x_forwarded_for)).toBe(
        c.expected,
      );
    },
  );

  it.each(table.ip_strategy_cases.remote_addr.map((c) => [c.desc, c] as const))(
    "remote address: %s",
    (_, c) => {
      const subnet = "ipv6_subnet" in c ? c.ipv6_subnet : undefined;
      expect(
        selectSource({ kind: "remoteAddr" }, c.remote_addr, undefined, undefined, subnet),
      ).toBe(c.expected);
    },
  );
});

describe("token bucket", () => {
  // 100/s: maxDelay = 1s / (2 × 100) and a token every 10ms (Traefik's rate limiter).
  const limit = limiterParameters(100, 1, 1);
  const maxDelay = limit.maxDelayNs / 1e9;
  const tokenTime = 1 / limit.rate;

  it("holds a request whose wait is exactly maxDelay and refuses one that would wait longer", () => {
    const exact = new TokenBuckets(limit);
    const a = exact.add();
    expect(exact.take(a, 0)).toBe(0);
    expect(exact.take(a, tokenTime - maxDelay)).toBeCloseTo(maxDelay, 9);

    const late = new TokenBuckets(limit);
    const b = late.add();
    late.take(b, 0);
    expect(late.take(b, tokenTime - maxDelay - 1e-4)).toBe(REJECTED);
  });

  it("gives a refused request's token back, and lets a held one drive the bucket below zero", () => {
    const buckets = new TokenBuckets(limit);
    const id = buckets.add();
    buckets.take(id, 0);
    expect(buckets.take(id, 0.001)).toBe(REJECTED);
    // Had the refusal kept its token, this one would have to wait 2 tokens' time.
    expect(buckets.take(id, tokenTime - maxDelay)).toBeGreaterThan(0);
    // The held request took a token not yet there: the next one owes 1.5 tokens.
    expect(buckets.take(id, tokenTime - maxDelay)).toBe(REJECTED);
  });

  it("drops a bucket idle for the TTL, which then comes back full", () => {
    const slow = limiterParameters(30, 60, 10); // 0.5/s: TTL = 1 + int(1/0.5) = 3s
    expect(slow.ttl).toBe(1 + Math.trunc(1 / slow.rate));
    const passedAt = (idle: number) => {
      const buckets = new TokenBuckets(slow);
      const id = buckets.add();
      for (let i = 0; i < slow.burst; i++) buckets.take(id, 0);
      let passed = 0;
      for (let i = 0; i < slow.burst; i++) if (buckets.take(id, idle) !== REJECTED) passed++;
      return { passed, refills: buckets.ttlRefills };
    };
    // Just before the TTL only what refilled (idle × rate, held up to maxDelay) gets through.
    const before = passedAt(slow.ttl - 0.001);
    expect(before.passed).toBeLessThanOrEqual(
      Math.floor((slow.ttl - 0.001) * slow.rate + (slow.maxDelayNs / 1e9) * slow.rate) + 1,
    );
    expect(before.refills).toBe(0);
    expect(passedAt(slow.ttl)).toEqual({ passed: slow.burst, refills: 1 });
    expect(limiterParameters(100, 1, 1).ttl).toBe(2);
  });

  it("keeps at most the capacity of live buckets, evicting the least recently used", () => {
    const buckets = new TokenBuckets(limiterParameters(1, 1, 1), 2);
    const [a, b, c] = [buckets.add(), buckets.add(), buckets.add()];
    buckets.take(a, 0);
    buckets.take(b, 0);
    expect(buckets.take(a, 0.1)).toBe(REJECTED); // a is drained and now the most recent
    buckets.take(c, 0.2); // pushes b out
    expect(buckets.evictions).toBe(1);
    expect(buckets.take(a, 0.3)).toBe(REJECTED); // a kept its empty bucket
    expect(buckets.take(b, 0.3)).toBe(0); // b starts over full
  });
});

const httpPolicy = (criterion: SourceCriterion, trustedIPs: string[], burst = 1): SimPolicy => ({
  http: {
    middleware: "relay-ratelimit",
    average: 1,
    periodSeconds: 60,
    burst,
    sourceCriterion: criterion,
  },
  smtp: smtpPolicy({}),
  trustedIPs,
});

function smtpPolicy(overrides: Partial<SmtpPolicy>): SmtpPolicy {
  return {
    inFlight: 100,
    connectionSeconds: 2,
    windowSeconds: 60,
    connectionCount: 0,
    connectionRate: 0,
    authRate: 0,
    messageRate: 0,
    exempt: [],
    ...overrides,
  };
}

function trafficOf(events: Partial<TrafficEvent>[]) {
  const builder = new TrafficBuilder();
  events.forEach((e, i) =>
    builder.add({
      t: i * 0.001,
      remoteAddr: "192.0.2.1",
      entryPoint: ENTRY_POINTS.websecure,
      router: ENTRY_POINTS.websecure,
      ...e,
    }),
  );
  return builder.build();
}

describe("sources through forwardedHeaders and ipStrategy", () => {
  const proxy = "10.10.0.2";

  it("deletes X-Forwarded-For from a peer that is not trusted, so a spoofed header picks no bucket", () => {
    const trusted = new AddressSet([proxy]);
    expect(forwardedHeader("203.0.113.5:4711", "198.51.100.1", trusted)).toBeUndefined();
    expect(forwardedHeader(`${proxy}:4711`, "198.51.100.1", trusted)).toBe("198.51.100.1");

    const traffic = trafficOf([
      { remoteAddr: "203.0.113.5", xff: "198.51.100.1" },
      { remoteAddr: "203.0.113.5", xff: "198.51.100.2" },
    ]);
    const depth = replay(traffic, httpPolicy({ kind: "depth", depth: 1 }, [proxy]));
    expect(depth.sources).toEqual([""]);
    expect(Array.from(depth.strippedForwardedFor)).toEqual([1, 1]);
    const byPeer = replay(traffic, httpPolicy({ kind: "remoteAddr" }, [proxy]));
    expect(byPeer.sources).toEqual(["203.0.113.5"]);
  });

  it("puts every request with too short a header into ONE shared bucket, and says so", () => {
    const policy = httpPolicy({ kind: "depth", depth: 2 }, [proxy]);
    const traffic = trafficOf([
      { remoteAddr: proxy, xff: "198.51.100.1" },
      { remoteAddr: proxy, xff: "198.51.100.2" },
      { remoteAddr: proxy, xff: "198.51.100.3, 10.0.0.9" },
    ]);
    const result = replay(traffic, policy);
    expect(result.sources).toEqual(["", "198.51.100.3"]);
    // burst 1: the two clients without a usable address share one bucket, so the second is refused.
    expect(Array.from(result.outcome)).toEqual([Outcome.passed, Outcome.rateLimit, Outcome.passed]);
    const summary = summarize(traffic, result, policy);
    expect(summary.warnings.some((w) => w.includes("ONE bucket") && w.startsWith("2 of 3"))).toBe(
      true,
    );
  });

  it("takes the rightmost address outside excludedIPs CIDRs", () => {
    const excluded = {
      kind: "excludedIPs",
      excludedIPs: ["10.10.0.0/24", "2001:db8:aa::/48"],
    } as const;
    const traffic = trafficOf([
      { remoteAddr: proxy, xff: "198.51.100.1, 10.10.0.3, 10.10.0.7" },
      { remoteAddr: proxy, xff: "2001:db8:bb::1, 2001:db8:aa::5" },
      { remoteAddr: proxy, xff: "10.10.0.3" },
    ]);
    expect(replay(traffic, httpPolicy(excluded, [proxy])).sources).toEqual([
      "198.51.100.1",
      "2001:db8:bb::1",
      "",
    ]);
  });

  it("keeps buckets apart per router, as Traefik does in memory", () => {
    const traffic = trafficOf([{ router: "a" }, { router: "b" }, { router: "a" }]);
    const result = replay(traffic, httpPolicy({ kind: "remoteAddr" }, []));
    expect(Array.from(result.outcome)).toEqual([Outcome.passed, Outcome.passed, Outcome.rateLimit]);
  });

  it("reads RemoteAddr like Go's SplitHostPort", () => {
    expect(hostOf("192.0.2.1:1234")).toBe("192.0.2.1");
    expect(hostOf("[2001:db8::1]:25")).toBe("2001:db8::1");
    expect(hostOf("2001:db8::1")).toBe("2001:db8::1");
    expect(hostOf("192.0.2.1")).toBe("192.0.2.1");
  });
});

describe("SMTP: inFlightConn and the relay's anvil limits", () => {
  it("refuses a connection beyond inFlight until one closes", () => {
    const policy = smtpPolicy({ inFlight: 2, connectionSeconds: 10 });
    const gate = new SmtpGate(policy);
    const client = gate.add(false);
    expect(gate.connect(client, 0, AUTH_NONE)).toBe(Outcome.passed);
    expect(gate.connect(client, 1, AUTH_NONE)).toBe(Outcome.passed);
    expect(gate.connect(client, 2, AUTH_NONE)).toBe(Outcome.inFlightConn);
    expect(gate.connect(client, policy.connectionSeconds, AUTH_NONE)).toBe(Outcome.passed);
    const other = gate.add(false);
    expect(gate.connect(other, policy.connectionSeconds, AUTH_NONE)).toBe(Outcome.passed);
  });

  it.each([
    [
      "connection count",
      { connectionCount: 2, connectionSeconds: 100 },
      AUTH_NONE,
      Outcome.connectionCount,
    ],
    ["connection rate", { connectionRate: 2 }, AUTH_NONE, Outcome.connectionRate],
    ["AUTH rate", { authRate: 2 }, AUTH_OK, Outcome.authRate],
    ["message rate", { messageRate: 2 }, AUTH_OK, Outcome.messageRate],
  ] as const)(
    "%s: the limit's worth per window, then refusals, then a new window",
    (_, limits, auth, refusal) => {
      const policy = smtpPolicy({ connectionSeconds: 0.5, ...limits });
      const gate = new SmtpGate(policy);
      const client = gate.add(false);
      const outcomes = [0, 1, 2, 3].map((t) => gate.connect(client, t, auth));
      expect(outcomes).toEqual([Outcome.passed, Outcome.passed, refusal, refusal]);
      // anvil restarts a window once it is over (whole seconds, strictly after start + window).
      if (refusal !== Outcome.connectionCount) {
        expect(gate.connect(client, policy.windowSeconds + 1, auth)).toBe(Outcome.passed);
      }
    },
  );

  it("counts every AUTH, failed ones too, and a failed login sends no message", () => {
    const gate = new SmtpGate(smtpPolicy({ authRate: 2, messageRate: 1 }));
    const client = gate.add(false);
    expect(gate.connect(client, 0, AUTH_FAIL)).toBe(Outcome.authFailed);
    expect(gate.connect(client, 1, AUTH_OK)).toBe(Outcome.passed);
    expect(gate.connect(client, 2, AUTH_OK)).toBe(Outcome.authRate);
  });

  it("exempts the operator's senders from the relay's counters, not from inFlightConn", () => {
    const gate = new SmtpGate(
      smtpPolicy({ inFlight: 1, connectionRate: 1, connectionSeconds: 0.5 }),
    );
    const client = gate.add(true);
    expect([0, 1, 2].map((t) => gate.connect(client, t, AUTH_OK))).toEqual([
      Outcome.passed,
      Outcome.passed,
      Outcome.passed,
    ]);
    expect(gate.connect(client, 2.1, AUTH_OK)).toBe(Outcome.inFlightConn);
  });

  it("counts clients behind a trusted PROXY sender apart, and an untrusted sender as itself", () => {
    const trusted = new AddressSet(["10.10.0.2"]);
    expect(smtpClient("10.10.0.2:5000", "198.51.100.1", trusted)).toBe("198.51.100.1");
    expect(smtpClient("203.0.113.5:5000", "198.51.100.1", trusted)).toBe("203.0.113.5");

    const policy: SimPolicy = {
      ...httpPolicy({ kind: "remoteAddr" }, ["10.10.0.2"]),
      smtp: smtpPolicy({ connectionRate: 1 }),
    };
    const traffic = trafficOf(
      ["198.51.100.1", "198.51.100.2", "198.51.100.1"].map((client) => ({
        remoteAddr: "10.10.0.2",
        proxy: client,
        entryPoint: ENTRY_POINTS.submission,
      })),
    );
    const result = replay(traffic, policy);
    expect(result.sources).toEqual(["198.51.100.1", "198.51.100.2"]);
    expect(Array.from(result.outcome)).toEqual([
      Outcome.passed,
      Outcome.passed,
      Outcome.connectionRate,
    ]);
  });
});
