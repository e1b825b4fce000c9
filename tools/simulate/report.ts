/**
 * What a replay means to an operator: counts per source and per profile, and warnings for
 * the classic rate-limit mistakes, as a five-second text summary or as JSON.
 */
import {
  isRejection,
  MAX_SOURCES,
  Outcome,
  OUTCOME_NAMES,
  type EdgeSetup,
  type LimiterParameters,
  type Replay,
  type SimPolicy,
  type Spread,
} from "./model";
import type { Traffic } from "./traffic";

export interface Counts {
  requests: number;
  /** Got through every limit (delayed ones included). */
  passed: number;
  /** Passed after waiting for a token. */
  delayed: number;
  rejected: number;
  /** SMTP sessions that got through the limits but whose login failed. */
  authFailed: number;
  /** Time of the first refusal, in the input's time unit; null when none. */
  firstRejection: number | null;
}

export interface ProfileCounts extends Counts {
  profile: string;
  legitimate: boolean;
}

export interface Summary {
  total: number;
  passed: number;
  delayed: number;
  rejected: number;
  authFailed: number;
  /** Refusals by the limit that made them. */
  rejectedBy: Record<string, number>;
  /** Per source address, busiest first; "" is the shared bucket of requests with no usable address. */
  sources: Record<string, Counts>;
  profiles: ProfileCounts[];
  warnings: string[];
  /** First and last arrival. */
  span: { from: number; to: number } | null;
  edges: EdgeSetup;
  /** With more than one edge: the same traffic with buckets per instance and shared. */
  edgeComparison?: EdgeComparison;
}

/** What one sharing mode lets through. */
export interface EdgeMode {
  passed: number;
  rejected: number;
  /** What a client whose requests reach every edge may send at once; null when unlimited. */
  burst: number | null;
  /** ... and per second, sustained; null when there is no limit. */
  perSecond: number | null;
}

export interface EdgeComparison {
  edges: number;
  spread: Spread;
  perInstance: EdgeMode;
  shared: EdgeMode;
  /** Rows and passed rows per source in each mode, busiest first. */
  sources: Record<string, { requests: number; perInstance: number; shared: number }>;
}

const emptyCounts = (): Counts => ({
  requests: 0,
  passed: 0,
  delayed: 0,
  rejected: 0,
  authFailed: 0,
  firstRejection: null,
});

function count(into: Counts, code: number, t: number): void {
  into.requests++;
  if (isRejection(code)) {
    into.rejected++;
    if (into.firstRejection === null) into.firstRejection = t;
    return;
  }
  into.passed++;
  if (code === Outcome.delayed) into.delayed++;
  if (code === Outcome.authFailed) into.authFailed++;
}

/**
 * Counts a replay up and names the mistakes it shows. `other` is the same traffic replayed
 * with the other bucket sharing (several edges only), for the per-instance/shared comparison.
 */
export function summarize(
  traffic: Traffic,
  result: Replay,
  policy: SimPolicy,
  other?: Replay,
): Summary {
  const perSource = result.sources.map(emptyCounts);
  const perProfile = traffic.profiles.map(emptyCounts);
  const total = emptyCounts();
  const byOutcome = new Array<number>(OUTCOME_NAMES.length).fill(0);
  let emptyHttp = 0;
  let emptyStripped = 0;
  const emptySource = result.sources.indexOf("");

  for (let i = 0; i < traffic.length; i++) {
    const code = result.outcome[i];
    const t = traffic.t[i];
    byOutcome[code]++;
    count(total, code, t);
    count(perSource[result.source[i]], code, t);
    if (traffic.profile[i] >= 0) count(perProfile[traffic.profile[i]], code, t);
    // Only HTTP rows can have the empty source: an SMTP client is always an address.
    if (result.source[i] === emptySource) {
      emptyHttp++;
      emptyStripped += result.strippedForwardedFor[i];
    }
  }

  const order = perSource
    .map((_, i) => i)
    .sort((a, b) => perSource[b].requests - perSource[a].requests || a - b);
  const profiles = traffic.profiles.map((p, i) => ({
    profile: p.label,
    legitimate: p.legitimate,
    ...perProfile[i],
  }));
  const comparison =
    other && result.edges.count > 1
      ? compareEdges(result.edges.shared ? other : result, result.edges.shared ? result : other)
      : undefined;
  const warnings = [
    ...emptySourceWarnings(emptyHttp, result.httpRows, emptyStripped, policy),
    ...profileWarnings(profiles),
    ...limiterWarnings(result, policy),
    ...edgeWarnings(result, traffic.length, comparison),
  ];

  return {
    total: total.requests,
    passed: total.passed,
    delayed: total.delayed,
    rejected: total.rejected,
    authFailed: total.authFailed,
    rejectedBy: Object.fromEntries(
      OUTCOME_NAMES.flatMap((name, code) =>
        isRejection(code) && byOutcome[code] > 0 ? [[name, byOutcome[code]]] : [],
      ),
    ),
    sources: Object.fromEntries(order.map((i) => [result.sources[i], perSource[i]])),
    profiles,
    warnings,
    span: traffic.length > 0 ? { from: traffic.t[0], to: traffic.t[traffic.length - 1] } : null,
    edges: result.edges,
    ...(comparison ? { edgeComparison: comparison } : {}),
  };
}

/**
 * What a client whose requests reach all `edges` may send: in memory every Traefik keeps
 * its own bucket for it, in Redis there is one. Average 0 is no limit in memory, and a
 * refusal of everything in Redis.
 */
export function allowedForClient(
  limiter: LimiterParameters,
  edges: number,
  shared: boolean,
): { burst: number | null; perSecond: number | null } {
  if (limiter.rate === Infinity)
    return shared ? { burst: 0, perSecond: 0 } : { burst: null, perSecond: null };
  const copies = shared ? 1 : edges;
  return { burst: copies * limiter.burst, perSecond: copies * limiter.rate };
}

/** The two replays of the same traffic side by side, per source. */
function compareEdges(perInstance: Replay, shared: Replay): EdgeComparison {
  const rows = new Map<string, { requests: number; perInstance: number; shared: number }>();
  const tally = (result: Replay, mode: "perInstance" | "shared") => {
    const passed = new Int32Array(result.sources.length);
    const requests = new Int32Array(result.sources.length);
    for (let i = 0; i < result.outcome.length; i++) {
      requests[result.source[i]]++;
      if (!isRejection(result.outcome[i])) passed[result.source[i]]++;
    }
    result.sources.forEach((source, id) => {
      const row = rows.get(source) ?? { requests: requests[id], perInstance: 0, shared: 0 };
      row[mode] = passed[id];
      rows.set(source, row);
    });
    const total = passed.reduce((a, b) => a + b, 0);
    return { passed: total, rejected: result.outcome.length - total };
  };
  const edges = perInstance.edges.count;
  const mode = (result: Replay, name: "perInstance" | "shared", shared: boolean): EdgeMode => ({
    ...tally(result, name),
    ...allowedForClient(result.limiter, edges, shared),
  });
  return {
    edges,
    spread: perInstance.edges.spread,
    perInstance: mode(perInstance, "perInstance", false),
    shared: mode(shared, "shared", true),
    sources: Object.fromEntries(
      [...rows.entries()].sort(([, a], [, b]) => b.requests - a.requests),
    ),
  };
}

function edgeWarnings(result: Replay, rows: number, comparison?: EdgeComparison): string[] {
  const { count, shared } = result.edges;
  const { limiter, httpRows } = result;
  const warnings: string[] = [];
  if (count > 1 && !shared && httpRows > 0 && limiter.rate !== Infinity) {
    const allowed = allowedForClient(limiter, count, false);
    const extra = comparison ? comparison.perInstance.passed - comparison.shared.passed : 0;
    const average = formatRate(allowed.perSecond!);
    const seen =
      extra > 0
        ? `; here ${extra} requests got through that shared buckets would have refused`
        : "";
    warnings.push(
      `${count} edges without shared buckets: each Traefik keeps its own, so a client whose requests reach every edge ` +
        `gets ${count}× the burst (${allowed.burst} at once) and ${count}× the average (${average})${seen}; ` +
        "share them with rateLimit.redis (the stack does whenever edge.extraHosts is set)",
    );
  }
  if (shared && httpRows > 0 && limiter.rate === Infinity) {
    warnings.push(
      `rateLimit.redis with average 0: Traefik answers 429 to every request (all ${httpRows} HTTP requests refused); set rateLimit.average above 0`,
    );
  }
  if (count > 1 && rows > httpRows) {
    warnings.push(
      `inFlightConn and the relay's per-client limits are kept per edge, Redis or not: a client whose SMTP connections reach all ${count} edges ` +
        `gets ${count}× the connections, AUTH attempts and messages`,
    );
  }
  return warnings;
}

function emptySourceWarnings(
  empty: number,
  http: number,
  stripped: number,
  policy: SimPolicy,
): string[] {
  if (empty === 0) return [];
  const criterion = policy.http.sourceCriterion;
  const why =
    criterion.kind === "depth"
      ? `X-Forwarded-For missing or shorter than rateLimit.depth ${criterion.depth}`
      : "every X-Forwarded-For entry is in rateLimit.excludedIPs, or there is none";
  const strippedNote =
    stripped > 0
      ? `; for ${stripped} of them Traefik had deleted X-Forwarded-For because the peer is not in traefik.trustedProxies`
      : "";
  return [
    `${empty} of ${http} HTTP requests (${percent(empty, http)}) had no client address for the rate limiter (${why})${strippedNote}: ` +
      "they all share ONE bucket, so a single busy client throttles everyone",
  ];
}

function profileWarnings(profiles: ProfileCounts[]): string[] {
  return profiles.flatMap((p) => {
    if (p.legitimate && p.rejected > 0) {
      return [
        `legitimate traffic refused: ${p.rejected} of ${p.requests} rows of profile ${p.profile} (first at ${formatTime(p.firstRejection!)})`,
      ];
    }
    if (!p.legitimate && p.requests > 0 && p.rejected === 0) {
      return [
        `abusive traffic never limited: all ${p.requests} rows of profile ${p.profile} got through`,
      ];
    }
    return [];
  });
}

function limiterWarnings(result: Replay, policy: SimPolicy): string[] {
  const { rate, burst, ttl } = result.limiter;
  const warnings: string[] = [];
  if (result.ttlRefills > 0) {
    warnings.push(
      `${result.ttlRefills} times a bucket idle for ${ttl}s was dropped and came back full: Traefik forgets a source after ` +
        `${ttl}s without requests, while refilling ${burst} tokens at ${formatRate(rate)} takes ${round(burst / rate)}s, ` +
        `so a client pausing ${ttl}s may send ${burst} at once again (about ${formatRate(burst / ttl)} instead of ${policy.http.average}/${round(policy.http.periodSeconds)}s)`,
    );
  }
  if (result.evictions > 0) {
    warnings.push(
      `${result.evictions} live buckets were evicted because one router held ${MAX_SOURCES} sources: their clients started over with a full burst`,
    );
  }
  return warnings;
}

/** The short text an operator reads: policy, table, totals, warnings. */
export function formatSummary(
  summary: Summary,
  policy: SimPolicy,
  result: Replay,
  top: number,
): string {
  const lines: string[] = [];
  lines.push(...describePolicy(policy, result));
  if (result.edges.count > 1 || result.edges.shared) lines.push(describeEdges(result));
  if (summary.span) {
    const sources = Object.keys(summary.sources).length;
    lines.push(
      `Traffic: ${summary.total} rows from ${sources} sources, ${formatTime(summary.span.from)} to ${formatTime(summary.span.to)}`,
    );
  }
  lines.push("");

  const header = ["source", "requests", "passed", "delayed", "rejected", "first rejection"];
  const rows: string[][] = [];
  const entries = Object.entries(summary.sources);
  for (const [source, c] of entries.slice(0, top))
    rows.push(tableRow(source === "" ? '"" (shared)' : source, c));
  if (entries.length > top) {
    const others = emptyCounts();
    for (const [, c] of entries.slice(top)) addInto(others, c);
    rows.push(tableRow(`(${entries.length - top} others)`, others));
  }
  rows.push(
    tableRow("total", {
      ...summary,
      requests: summary.total,
      firstRejection: firstOf(entries.map(([, c]) => c.firstRejection)),
    }),
  );
  lines.push(...alignTable(header, rows));
  lines.push(
    "passed includes delayed" +
      (summary.authFailed > 0
        ? `; ${summary.authFailed} passed SMTP sessions failed to log in (535)`
        : ""),
  );
  const by = Object.entries(summary.rejectedBy);
  if (by.length > 0) lines.push(`rejected by: ${by.map(([name, n]) => `${name} ${n}`).join(", ")}`);
  if (summary.edgeComparison) lines.push("", ...formatComparison(summary.edgeComparison, top));

  if (summary.profiles.length > 0) {
    lines.push("");
    for (const p of summary.profiles) {
      lines.push(
        `${p.legitimate ? "legitimate" : "abusive   "}  ${p.profile}: ${p.requests} rows, ${p.passed} passed, ${p.rejected} rejected`,
      );
    }
  }
  lines.push("");
  if (summary.warnings.length === 0) lines.push("No warnings.");
  else lines.push("Warnings:", ...summary.warnings.map((w) => `  - ${w}`));
  return lines.join("\n");
}

function describePolicy(policy: SimPolicy, result: Replay): string[] {
  const { http, smtp } = policy;
  const { rate, burst, maxDelayNs, ttl } = result.limiter;
  const criterion = http.sourceCriterion;
  const source =
    criterion.kind === "depth"
      ? `X-Forwarded-For depth ${criterion.depth}`
      : criterion.kind === "excludedIPs"
        ? `X-Forwarded-For minus ${criterion.excludedIPs.join(", ")}`
        : "connecting address";
  const limit =
    rate === Infinity
      ? "HTTP rateLimit: none (average 0)"
      : `HTTP rateLimit: ${http.average} per ${round(http.periodSeconds)}s, burst ${burst} (${formatRate(rate)}, maxDelay ${round(maxDelayNs / 1e6)}ms, idle TTL ${ttl}s)`;
  const off = (n: number) => (n > 0 ? String(n) : "off");
  return [
    `${limit}; source: ${source}; trusted proxies: ${policy.trustedIPs.join(", ") || "none"}`,
    `SMTP: inFlightConn ${smtp.inFlight}; relay per client per ${smtp.windowSeconds}s: ${off(smtp.connectionCount)} at once, ` +
      `${off(smtp.connectionRate)} connections, ${off(smtp.authRate)} AUTH, ${off(smtp.messageRate)} messages` +
      `${smtp.exempt.length > 0 ? ` (exempt: ${smtp.exempt.join(", ")})` : ""}; sessions last ${round(smtp.connectionSeconds)}s`,
  ];
}

function describeEdges(result: Replay): string {
  const { count, shared, spread } = result.edges;
  const buckets = shared
    ? "HTTP buckets shared in Redis by every edge and router"
    : "HTTP buckets per Traefik instance and router (in memory)";
  if (count === 1) return `Edges: 1; ${buckets}`;
  const how =
    spread === "request"
      ? "each client's rows round-robin over the edges"
      : "each client on the edge its address hashes to";
  return `Edges: ${count}, ${how} (rows per edge: ${result.rowsPerEdge.join(", ")}); ${buckets}`;
}

function formatComparison(c: EdgeComparison, top: number): string[] {
  const allowed = (m: EdgeMode) =>
    m.perSecond === null
      ? "no limit"
      : `${m.burst} at once and ${formatRate(m.perSecond)} sustained`;
  const lines = [
    `${c.edges} edges, HTTP buckets per instance vs shared (Redis): a client reaching every edge may send ` +
      `${allowed(c.perInstance)} per instance; ${allowed(c.shared)} shared`,
  ];
  if (c.spread === "client")
    lines.push("(--spread client keeps each client on one edge; --spread request spreads it)");
  const entries = Object.entries(c.sources);
  const rows = entries
    .slice(0, top)
    .map(([source, r]) => [
      source === "" ? '"" (shared)' : source,
      String(r.requests),
      String(r.perInstance),
      String(r.shared),
    ]);
  if (entries.length > top) {
    const rest = entries.slice(top).map(([, r]) => r);
    const sum = (key: "requests" | "perInstance" | "shared") =>
      String(rest.reduce((n, r) => n + r[key], 0));
    rows.push([`(${rest.length} others)`, sum("requests"), sum("perInstance"), sum("shared")]);
  }
  const total = c.perInstance.passed + c.perInstance.rejected;
  rows.push(["total", String(total), String(c.perInstance.passed), String(c.shared.passed)]);
  const header = ["source", "requests", "passed per instance", "passed shared"];
  lines.push(...alignTable(header, rows, false));
  return lines;
}

/** The JSON document `--json` prints. */
export function summaryJson(summary: Summary, policy: SimPolicy, result: Replay): string {
  const { rate, burst, maxDelayNs, ttl } = result.limiter;
  return JSON.stringify(
    {
      total: summary.total,
      passed: summary.passed,
      delayed: summary.delayed,
      rejected: summary.rejected,
      authFailed: summary.authFailed,
      rejectedBy: summary.rejectedBy,
      sources: summary.sources,
      profiles: summary.profiles,
      warnings: summary.warnings,
      edges: summary.edges.count,
      sharedBuckets: summary.edges.shared,
      spread: summary.edges.spread,
      rowsPerEdge: result.rowsPerEdge,
      ...(summary.edgeComparison ? { edgeComparison: summary.edgeComparison } : {}),
      policy: {
        ...policy,
        limiter: {
          rate: rate === Infinity ? null : rate,
          burst,
          maxDelayMs: maxDelayNs / 1e6,
          ttlSeconds: ttl,
        },
      },
    },
    null,
    2,
  );
}

function tableRow(name: string, c: Counts): string[] {
  const first = c.firstRejection === null ? "-" : formatTime(c.firstRejection);
  return [name, String(c.requests), String(c.passed), String(c.delayed), String(c.rejected), first];
}

/** Numbers right-aligned; the first column, and the last unless told, left-aligned. */
function alignTable(header: string[], rows: string[][], lastIsText = true): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const left = (i: number) => i === 0 || (lastIsText && i === header.length - 1);
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (left(i) ? cell.padEnd(widths[i]) : cell.padStart(widths[i])))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

function addInto(into: Counts, c: Counts): void {
  into.requests += c.requests;
  into.passed += c.passed;
  into.delayed += c.delayed;
  into.rejected += c.rejected;
  into.authFailed += c.authFailed;
  into.firstRejection = firstOf([into.firstRejection, c.firstRejection]);
}

function firstOf(times: (number | null)[]): number | null {
  return times.reduce<number | null>(
    (first, t) => (t !== null && (first === null || t < first) ? t : first),
    null,
  );
}

/** Input times are seconds; large values are Unix time (access logs). */
export function formatTime(t: number): string {
  if (t >= 1e9) return new Date(t * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  return `${round(t)}s`;
}

function formatRate(perSecond: number): string {
  return perSecond >= 1 ? `${round(perSecond)}/s` : `${round(perSecond * 60)}/min`;
}

function percent(part: number, whole: number): string {
  return `${Math.round((100 * part) / Math.max(1, whole))}%`;
}

function round(n: number): string {
  return String(Math.round(n * 100) / 100);
}
