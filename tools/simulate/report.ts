/**
 * What a replay means to an operator: counts per source and per profile, and warnings for
 * the classic rate-limit mistakes, as a five-second text summary or as JSON.
 */
import { isRejection, Outcome, OUTCOME_NAMES, type Replay, type SimPolicy } from "./model";
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

/** Counts a replay up and names the mistakes it shows. */
export function summarize(traffic: Traffic, result: Replay, policy: SimPolicy): Summary {
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
  const warnings = [
    ...emptySourceWarnings(emptyHttp, result.httpRows, emptyStripped, policy),
    ...profileWarnings(profiles),
    ...limiterWarnings(result, policy),
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
  };
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
      `${result.evictions} live buckets were evicted because one router held 65536 sources: their clients started over with a full burst`,
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

function alignTable(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) =>
        i === 0 || i === cells.length - 1 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]),
      )
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
