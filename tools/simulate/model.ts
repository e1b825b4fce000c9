/**
 * What the edge and the relay do to a stream of requests and connections, replayed in
 * simulated time:
 *
 * - HTTP entry points: Traefik v3's rateLimit middleware. One token bucket per source
 *   (golang.org/x/time/rate semantics: a reservation may drive the tokens below zero and the
 *   wait is the time to pay the deficit back), a request waits up to maxDelay or gets 429.
 *   In memory, each router of each Traefik keeps its own buckets, drops idle ones after a
 *   TTL and keeps at most 65536; with rateLimit.redis, every router of every Traefik draws
 *   on one bucket per source kept in Redis.
 * - Several edges: each row reaches one of N Traefik instances, each with its own relay.
 * - SMTP entry points: Traefik has no rateLimit there; inFlightConn caps simultaneous
 *   connections per client, then Postfix's anvil counts connections, AUTH commands and
 *   messages per client and window.
 *
 * Everything is pure and allocation-free per row: state lives in typed arrays indexed by
 * small integers, and addresses are resolved once per distinct string.
 */
import type { SourceCriterion } from "../../config";
import { ENTRY_POINTS } from "../../components/names";
import {
  AddressSet,
  edgeOfClient,
  forwardedHeader,
  originalClient,
  selectSource,
  smtpClient,
} from "./source";
import { AUTH_FAIL, AUTH_NONE, widen, type Traffic } from "./traffic";

/** Traefik keeps at most this many buckets per rate limiter. */
export const MAX_SOURCES = 65536;

/** What happened to one request or connection. */
export const Outcome = {
  /** Forwarded at once. */
  passed: 0,
  /** Forwarded after waiting for its token (at most maxDelay). */
  delayed: 1,
  /** HTTP 429 from the rateLimit middleware. */
  rateLimit: 2,
  /** Connection closed by Traefik's inFlightConn. */
  inFlightConn: 3,
  /** 421 from the relay: too many simultaneous connections from the client. */
  connectionCount: 4,
  /** 421 from the relay: too many connections from the client in the window. */
  connectionRate: 5,
  /** 450 from the relay: too many AUTH commands in the window. */
  authRate: 6,
  /** 450 from the relay: too much mail in the window. */
  messageRate: 7,
  /** Got through every limit, but the login failed (535): not a limit at work. */
  authFailed: 8,
} as const;
export type OutcomeCode = (typeof Outcome)[keyof typeof Outcome];
export const OUTCOME_NAMES = Object.keys(Outcome) as (keyof typeof Outcome)[];

/** Whether an outcome is a refusal by one of the limits. */
export function isRejection(code: number): boolean {
  return code >= Outcome.rateLimit && code <= Outcome.messageRate;
}

/** The entry points where connections are SMTP sessions rather than HTTP requests. */
export const SMTP_ENTRY_POINTS: ReadonlySet<string> = new Set([
  ENTRY_POINTS.smtps,
  ENTRY_POINTS.submission,
]);

// ---------------------------------------------------------------------------------------
// HTTP: the rate limiter.

/** The numbers Traefik derives from a rateLimit configuration. */
export interface LimiterParameters {
  /** Tokens per second; Infinity = no limit (average 0). */
  rate: number;
  /** Bucket size (burst below 1 counts as 1). */
  burst: number;
  /** Longest wait a request is held for instead of being refused, nanoseconds. */
  maxDelayNs: number;
  /** Seconds a bucket may stay unused before it is dropped. */
  ttl: number;
}

export function limiterParameters(
  average: number,
  periodSeconds: number,
  burst: number,
): LimiterParameters {
  const period = periodSeconds > 0 ? periodSeconds : 1;
  const rate = average > 0 ? average / period : Infinity;
  let maxDelayNs = 0;
  if (average > 0) maxDelayNs = rate < 1 ? 500e6 : Math.trunc(1e9 / (2 * Math.trunc(rate)));
  const ttl = rate >= 1 ? 2 : 1 + Math.trunc(1 / rate);
  return { rate, burst: Math.max(1, Math.trunc(burst)), maxDelayNs, ttl };
}

/** Returned by {@link Buckets.take} for a refused request. */
export const REJECTED = -1;

/**
 * Tokens a bucket holds `elapsed` seconds after its last use: refilled at the limit's rate
 * and capped at burst. Both of Traefik's limiters run this arithmetic.
 */
export function refill(tokens: number, elapsed: number, limit: LimiterParameters): number {
  const filled = elapsed > 0 ? tokens + elapsed * limit.rate : tokens;
  return filled > limit.burst ? limit.burst : filled;
}

/** Seconds until a bucket left with `after` tokens (below 0: in debt) is back at zero. */
export function debtSeconds(after: number, rate: number): number {
  return after < 0 ? -after / rate : 0;
}

/** A rate limiter's set of buckets, as the replay drives it. */
export interface Buckets {
  readonly limit: LimiterParameters;
  /** Buckets that expired while not full and came back full. */
  readonly ttlRefills: number;
  /** Live buckets pushed out by a full bucket map. */
  readonly evictions: number;
  /** A new bucket (in a group, where the limiter keeps groups apart); returns its id. */
  add(group?: number): number;
  /**
   * One request on a bucket at time `now` (seconds, non-decreasing): the seconds it is
   * held before being forwarded, or REJECTED.
   */
  take(id: number, now: number): number;
}

/**
 * The buckets of one or more rate-limiter instances ("groups": Traefik keeps separate
 * buckets per router). Buckets are linked in order of last use per group; since every use
 * pushes the expiry to the same distance ahead, that order is also the expiry order
 * Traefik evicts by when a group is full.
 */
export class TokenBuckets implements Buckets {
  ttlRefills = 0;
  /** Live buckets pushed out because a group held MAX_SOURCES of them. */
  evictions = 0;

  private size = 0;
  private tokens = new Float64Array(0);
  private last = new Float64Array(0);
  private expiry = new Float64Array(0);
  private prev = new Int32Array(0);
  private next = new Int32Array(0);
  private group = new Int32Array(0);
  private live = new Uint8Array(0);
  private readonly head: number[] = [];
  private readonly tail: number[] = [];
  private readonly count: number[] = [];

  constructor(
    readonly limit: LimiterParameters,
    private readonly capacity = MAX_SOURCES,
  ) {}

  add(group = 0): number {
    if (this.size === this.tokens.length) this.grow(Math.max(64, this.size * 2));
    while (this.head.length <= group) {
      this.head.push(-1);
      this.tail.push(-1);
      this.count.push(0);
    }
    const id = this.size++;
    this.group[id] = group;
    return id;
  }

  take(id: number, now: number): number {
    const { rate, burst, maxDelayNs, ttl } = this.limit;
    if (rate === Infinity) return 0;

    // Limitation: Traefik's bucket map expires entries in whole Unix seconds, so the real idle
    // cut-off lies between ttl-1 and ttl seconds depending on the clock; the model takes time 0
    // (or the access log's Unix time) as a second boundary, which matches only that alignment.
    const second = Math.floor(now);
    if (this.live[id] === 1 && this.expiry[id] <= second) {
      if (this.refilled(id, now) < burst) this.ttlRefills++;
      this.unlink(id);
    }
    if (this.live[id] === 0) this.open(id, now);
    else this.touch(id);
    // Traefik stores the bucket (and its expiry) before reserving, refused or not.
    this.expiry[id] = second + ttl;

    const available = this.refilled(id, now);
    const after = available - 1;
    const waitNs = Math.trunc(1e9 * debtSeconds(after, rate));
    if (now > this.last[id]) this.last[id] = now;
    if (waitNs > maxDelayNs) {
      // The reservation is cancelled at once: its token goes back, nothing else changes.
      this.tokens[id] = available;
      return REJECTED;
    }
    this.tokens[id] = after;
    return waitNs / 1e9;
  }

  /** Tokens a bucket holds at `now`, refilled since its last use and capped at burst. */
  private refilled(id: number, now: number): number {
    return refill(this.tokens[id], now - this.last[id], this.limit);
  }

  private open(id: number, now: number): void {
    const g = this.group[id];
    // Limitation: among buckets expiring in the same second, Traefik's heap evicts any one;
    // the model evicts the least recently used of them.
    while (this.count[g] >= this.capacity) {
      const oldest = this.head[g];
      if (this.expiry[oldest] > Math.floor(now)) this.evictions++;
      this.unlink(oldest);
    }
    this.tokens[id] = this.limit.burst;
    this.last[id] = now;
    this.live[id] = 1;
    this.count[g]++;
    this.append(id);
  }

  private touch(id: number): void {
    if (this.tail[this.group[id]] === id) return;
    this.detach(id);
    this.append(id);
  }

  private unlink(id: number): void {
    this.detach(id);
    this.live[id] = 0;
    this.count[this.group[id]]--;
  }

  private append(id: number): void {
    const g = this.group[id];
    const tail = this.tail[g];
    this.prev[id] = tail;
    this.next[id] = -1;
    if (tail >= 0) this.next[tail] = id;
    else this.head[g] = id;
    this.tail[g] = id;
  }

  private detach(id: number): void {
    const g = this.group[id];
    const before = this.prev[id];
    const after = this.next[id];
    if (before >= 0) this.next[before] = after;
    else this.head[g] = after;
    if (after >= 0) this.prev[after] = before;
    else this.tail[g] = before;
  }

  private grow(capacity: number): void {
    this.tokens = widen(this.tokens, capacity);
    this.last = widen(this.last, capacity);
    this.expiry = widen(this.expiry, capacity);
    this.prev = widen(this.prev, capacity);
    this.next = widen(this.next, capacity);
    this.group = widen(this.group, capacity);
    this.live = widen(this.live, capacity);
  }
}

/**
 * The buckets of Traefik's Redis rate limiter (rateLimit.redis, v3.4+): a Lua script in the
 * one Redis every Traefik instance talks to keeps a hash per "<middleware>:<source>" key.
 * The bucket arithmetic is the in-memory one; what differs:
 * - the key names no router and no instance, so every router and every edge using the
 *   middleware draws on the same bucket (the caller keys buckets by source alone);
 * - the script counts in whole microseconds of Unix time, and gives the token back when the
 *   wait exceeds maxDelay truncated to whole microseconds, while Traefik refuses only above
 *   the exact maxDelay: a wait between the two is served without paying its token;
 * - Redis expires an idle key exactly `ttl` seconds after its last request (not on whole
 *   seconds), and nothing caps the number of keys;
 * - average 0 makes Traefik answer 429 to every request.
 */
export class RedisBuckets implements Buckets {
  ttlRefills = 0;
  readonly evictions = 0;

  private size = 0;
  private tokens = new Float64Array(0);
  private lastUs = new Float64Array(0);
  private live = new Uint8Array(0);

  constructor(readonly limit: LimiterParameters) {}

  add(): number {
    if (this.size === this.tokens.length) {
      const capacity = Math.max(64, this.size * 2);
      this.tokens = widen(this.tokens, capacity);
      this.lastUs = widen(this.lastUs, capacity);
      this.live = widen(this.live, capacity);
    }
    return this.size++;
  }

  take(id: number, now: number): number {
    const { rate, burst, maxDelayNs, ttl } = this.limit;
    // With no limit Traefik skips the script and reads the missing delay as a refusal.
    if (rate === Infinity) return REJECTED;
    // Limitation: Redis answers at once and never fails; live, each request waits a round
    // trip, and Traefik answers 500 when the script cannot run.

    // Limitation: one clock for every edge; the script trusts each Traefik's own clock, and a
    // request stamped before the bucket's last write sees no refill and moves `last` back.
    const us = Math.round(now * 1e6);
    const elapsed = (us - this.lastUs[id]) / 1e6;
    if (this.live[id] === 1 && elapsed > ttl) {
      if (refill(this.tokens[id], elapsed, this.limit) < burst) this.ttlRefills++;
      this.live[id] = 0;
    }
    // A missing key reads as 0 tokens at Unix time 0: decades of refill, a full bucket.
    const available = this.live[id] === 0 ? burst : refill(this.tokens[id], elapsed, this.limit);
    this.live[id] = 1;
    this.lastUs[id] = us;

    const after = available - 1;
    // On a wait of exactly maxDelay the script's float noise could fall either way; the model
    // takes the exact value (rounded to picoseconds), as a real clock almost never lands there.
    const waitUs = Math.round(1e12 * debtSeconds(after, rate)) / 1e6;
    this.tokens[id] = waitUs > Math.trunc(maxDelayNs / 1e3) ? available : after;
    const waitNs = Math.trunc(waitUs * 1e3);
    return waitNs > maxDelayNs ? REJECTED : waitNs / 1e9;
  }
}

// ---------------------------------------------------------------------------------------
// SMTP: Traefik's inFlightConn, then the relay's anvil counters.

export interface SmtpPolicy {
  /** Traefik inFlightConn: simultaneous connections per client. */
  inFlight: number;
  /** How long an accepted connection stays open, seconds. */
  connectionSeconds: number;
  /** anvil_rate_time_unit, seconds. */
  windowSeconds: number;
  /** smtpd_client_connection_count_limit; 0 = off. */
  connectionCount: number;
  /** smtpd_client_connection_rate_limit per window; 0 = off. */
  connectionRate: number;
  /** smtpd_client_auth_rate_limit per window; 0 = off. */
  authRate: number;
  /** smtpd_client_message_rate_limit per window; 0 = off. */
  messageRate: number;
  /** Clients exempt from the relay's counters (smtpd_client_event_limit_exceptions). */
  exempt: readonly string[];
}

/**
 * Per-client connection state for the SMTP entry points. Each connection is one session:
 * at most one AUTH command (when the row has one) and one message unless the login failed.
 */
export class SmtpGate {
  private size = 0;
  private exempt = new Uint8Array(0);
  private open = new Int32Array(0);
  private windowStart = new Float64Array(0);
  private connections = new Int32Array(0);
  private auths = new Int32Array(0);
  private messages = new Int32Array(0);
  // Open connections, a binary min-heap on closing time.
  private heapSize = 0;
  private heapEnd = new Float64Array(64);
  private heapClient = new Int32Array(64);

  constructor(readonly policy: SmtpPolicy) {}

  add(exempt: boolean): number {
    if (this.size === this.open.length) this.grow(Math.max(64, this.size * 2));
    const id = this.size++;
    this.exempt[id] = exempt ? 1 : 0;
    this.windowStart[id] = -Infinity;
    return id;
  }

  /**
   * One connection from a client at `now` (non-decreasing); what became of it.
   * Limitation: a session is one AUTH and one message held open for a fixed time; real
   * clients reuse connections, send several messages and retry after a 4xx, none of which
   * the rows describe.
   */
  connect(id: number, now: number, auth: number): OutcomeCode {
    const p = this.policy;
    this.closeUntil(now);
    if (this.open[id] >= p.inFlight) return Outcome.inFlightConn;
    if (this.exempt[id] === 1) {
      this.hold(id, now);
      return auth === AUTH_FAIL ? Outcome.authFailed : Outcome.passed;
    }

    // anvil works in whole seconds and restarts a client's window once it is over.
    const second = Math.floor(now);
    if (this.windowStart[id] + p.windowSeconds < second) {
      this.windowStart[id] = second;
      this.connections[id] = 0;
      this.auths[id] = 0;
      this.messages[id] = 0;
    }
    // The relay counts the connection before deciding, so refused ones use up the rate too.
    const rate = ++this.connections[id];
    if (p.connectionCount > 0 && this.open[id] + 1 > p.connectionCount)
      return Outcome.connectionCount;
    if (p.connectionRate > 0 && rate > p.connectionRate) return Outcome.connectionRate;
    this.hold(id, now);

    if (auth !== AUTH_NONE) {
      const auths = ++this.auths[id];
      if (p.authRate > 0 && auths > p.authRate) return Outcome.authRate;
      if (auth === AUTH_FAIL) return Outcome.authFailed;
    }
    const messages = ++this.messages[id];
    if (p.messageRate > 0 && messages > p.messageRate) return Outcome.messageRate;
    return Outcome.passed;
  }

  private hold(id: number, now: number): void {
    this.open[id]++;
    this.push(now + this.policy.connectionSeconds, id);
  }

  private closeUntil(now: number): void {
    while (this.heapSize > 0 && this.heapEnd[0] <= now) {
      this.open[this.heapClient[0]]--;
      this.pop();
    }
  }

  private push(end: number, client: number): void {
    if (this.heapSize === this.heapEnd.length) {
      this.heapEnd = widen(this.heapEnd, this.heapSize * 2);
      this.heapClient = widen(this.heapClient, this.heapSize * 2);
    }
    let i = this.heapSize++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.heapEnd[parent] <= end) break;
      this.heapEnd[i] = this.heapEnd[parent];
      this.heapClient[i] = this.heapClient[parent];
      i = parent;
    }
    this.heapEnd[i] = end;
    this.heapClient[i] = client;
  }

  private pop(): void {
    const n = --this.heapSize;
    const end = this.heapEnd[n];
    const client = this.heapClient[n];
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.heapEnd[child + 1] < this.heapEnd[child]) child++;
      if (this.heapEnd[child] >= end) break;
      this.heapEnd[i] = this.heapEnd[child];
      this.heapClient[i] = this.heapClient[child];
      i = child;
    }
    this.heapEnd[i] = end;
    this.heapClient[i] = client;
  }

  private grow(capacity: number): void {
    this.exempt = widen(this.exempt, capacity);
    this.open = widen(this.open, capacity);
    this.windowStart = widen(this.windowStart, capacity);
    this.connections = widen(this.connections, capacity);
    this.auths = widen(this.auths, capacity);
    this.messages = widen(this.messages, capacity);
  }
}

// ---------------------------------------------------------------------------------------
// The replay.

export interface HttpPolicy {
  /** Middleware name; Traefik keys buckets "<middleware>:<source>". */
  middleware: string;
  average: number;
  periodSeconds: number;
  burst: number;
  sourceCriterion: SourceCriterion;
}

export interface SimPolicy {
  http: HttpPolicy;
  smtp: SmtpPolicy;
  /** forwardedHeaders.trustedIPs and proxyProtocol.trustedIPs of every entry point. */
  trustedIPs: readonly string[];
}

/** How many edges (Traefik instances) the traffic reaches, and whether they share buckets. */
export interface EdgeSetup {
  /** Traefik instances, each in front of its own relay. */
  count: number;
  /** rateLimit.redis: one bucket per source for every edge and every router. */
  shared: boolean;
  /**
   * How rows reach the edges. "request": each client's successive rows go to the next edge
   * in turn (round-robin, a load balancer's default, and what a client picking among the
   * DNS records can always do); "client": a client stays on the edge its address hashes to.
   */
  spread: Spread;
}
export type Spread = "request" | "client";
export const SPREADS: readonly Spread[] = ["request", "client"];

/** One Traefik with in-memory buckets, the stack's shape without edge.extraHosts. */
export const ONE_EDGE: EdgeSetup = { count: 1, shared: false, spread: "request" };

/** Every row's fate, and the distinct sources (client addresses) it was counted against. */
export interface Replay {
  /** Per row: an {@link Outcome} code. */
  outcome: Uint8Array;
  /** Per row: index into `sources`. */
  source: Int32Array;
  /** Per row: seconds held by the rate limiter (0 unless delayed). */
  wait: Float32Array;
  /** Source addresses; "" is the shared bucket of requests with no usable address. */
  sources: string[];
  /** Per row: 1 when Traefik deleted the X-Forwarded-For header the peer sent. */
  strippedForwardedFor: Uint8Array;
  /** Rows that went through the HTTP rate limiter (the rest were SMTP connections). */
  httpRows: number;
  ttlRefills: number;
  evictions: number;
  limiter: LimiterParameters;
  edges: EdgeSetup;
  /** Rows each edge received. */
  rowsPerEdge: number[];
}

const SMTP = 1;

/**
 * Replays the traffic (sorted by time) against the policy, on one or more edges.
 * Limitation: the replay is open-loop: a refused or delayed request does not make its
 * client slow down, retry or stop, as it would live; and only the ipStrategy source
 * criteria the project can configure are modelled.
 */
export function replay(traffic: Traffic, policy: SimPolicy, edges: EdgeSetup = ONE_EDGE): Replay {
  const n = traffic.length;
  const { strings } = traffic;
  const limiter = limiterParameters(
    policy.http.average,
    policy.http.periodSeconds,
    policy.http.burst,
  );
  const edgeCount = Math.max(1, Math.trunc(edges.count));
  const byClient = edges.spread === "client";
  const buckets: Buckets = edges.shared ? new RedisBuckets(limiter) : new TokenBuckets(limiter);
  const gate = new SmtpGate(policy.smtp);
  const trusted = new AddressSet(policy.trustedIPs);
  const criterion = policy.http.sourceCriterion;
  const excluded =
    criterion.kind === "excludedIPs" ? new AddressSet(criterion.excludedIPs) : undefined;
  const exempt = new AddressSet(policy.smtp.exempt);

  // Routers (HTTP) and entry points (SMTP) become small "lane" numbers.
  const isSmtpEntry = new Uint8Array(strings.length);
  strings.forEach((s, i) => (isSmtpEntry[i] = SMTP_ENTRY_POINTS.has(s) ? 1 : 0));
  const laneOfName = [
    new Int32Array(strings.length).fill(-1),
    new Int32Array(strings.length).fill(-1),
  ];
  // A row key packs (lane, peer, header) into one double: lane × width² must stay exact.
  const width = strings.length + 1;
  let laneCount = 0;
  const laneOf = (kind: number, name: number) => {
    const lanes = laneOfName[kind];
    if (lanes[name] < 0) {
      // Limitation: lanes × distinct strings² must stay below 2^53 (one lane: ~10^8 strings).
      if ((laneCount + 1) * width * width > Number.MAX_SAFE_INTEGER) {
        throw new Error(
          `too many distinct routers (${laneCount + 1}) and addresses (${strings.length}) for one replay`,
        );
      }
      lanes[name] = laneCount++;
    }
    return lanes[name];
  };

  // A "slot" is a distinct (lane, peer, header) combination; it resolves to a source and
  // to the bucket or SMTP client state that source uses in that lane. State kept per edge
  // (in-memory buckets, inFlightConn, the relay's anvil) has one id per edge, consecutive
  // from the slot's target; shared buckets have one id for every edge and lane.
  const slotOf = new Map<number, number>();
  const slotSource: number[] = [];
  const slotTarget: number[] = [];
  const slotStride: number[] = [];
  const slotStripped: number[] = [];
  const slotEdge: number[] = [];
  const slotTurn: number[] = [];
  const sources: string[] = [];
  const sourceIndex = new Map<string, number>();
  const targets = new Map<string, number>();
  const sourceId = (address: string) => {
    let id = sourceIndex.get(address);
    if (id === undefined) {
      id = sources.length;
      sources.push(address);
      sourceIndex.set(address, id);
    }
    return id;
  };
  const newTarget = (kind: number, lane: number, address: string, perEdge: boolean) => {
    if (!perEdge) return buckets.add();
    const exemptClient = kind === SMTP && exempt.contains(address);
    let first = -1;
    for (let e = 0; e < edgeCount; e++) {
      const id = kind === SMTP ? gate.add(exemptClient) : buckets.add(lane * edgeCount + e);
      if (e === 0) first = id;
    }
    return first;
  };
  const resolve = (kind: number, lane: number, peer: number, extra: number): number => {
    const remoteAddr = strings[peer];
    const header = extra >= 0 ? strings[extra] : undefined;
    let address: string;
    let stripped = 0;
    if (kind === SMTP) {
      address = smtpClient(remoteAddr, header, trusted);
    } else {
      const seen = forwardedHeader(remoteAddr, header, trusted);
      stripped = header !== undefined && seen === undefined ? 1 : 0;
      address = selectSource(criterion, remoteAddr, seen, excluded);
    }
    const perEdge = kind === SMTP || !edges.shared;
    const targetKey = perEdge ? `${kind}\u0000${lane}\u0000${address}` : `\u0000${address}`;
    let target = targets.get(targetKey);
    if (target === undefined) {
      target = newTarget(kind, lane, address, perEdge);
      targets.set(targetKey, target);
    }
    slotSource.push(sourceId(address));
    slotTarget.push(target);
    slotStride.push(perEdge ? 1 : 0);
    slotStripped.push(stripped);
    slotEdge.push(byClient ? edgeOfClient(originalClient(remoteAddr, header), edgeCount) : 0);
    slotTurn.push(0);
    return slotSource.length - 1;
  };

  const outcome = new Uint8Array(n);
  const source = new Int32Array(n);
  const wait = new Float32Array(n);
  const strippedForwardedFor = new Uint8Array(n);
  const rowsPerEdge = new Array<number>(edgeCount).fill(0);
  const { t, remoteAddr, xff, proxy, entryPoint, router, auth } = traffic;
  let httpRows = 0;
  for (let i = 0; i < n; i++) {
    const kind = isSmtpEntry[entryPoint[i]] === 1 || auth[i] !== AUTH_NONE ? SMTP : 0;
    const lane = laneOf(kind, kind === SMTP ? entryPoint[i] : router[i]);
    const extra = kind === SMTP ? proxy[i] : xff[i];
    // Lanes are numbered apart for HTTP and SMTP, so the lane already says the kind.
    const key = (lane * width + remoteAddr[i]) * width + extra + 1;
    let slot = slotOf.get(key);
    if (slot === undefined) {
      slot = resolve(kind, lane, remoteAddr[i], extra);
      slotOf.set(key, slot);
    }
    let edge = 0;
    // Limitation: rows carry no connection, so "request" moves every row; behind a layer-4
    // balancer an HTTP client reusing one keep-alive connection stays on one edge.
    if (edgeCount > 1) edge = byClient ? slotEdge[slot] : slotTurn[slot]++ % edgeCount;
    rowsPerEdge[edge]++;
    const target = slotTarget[slot] + edge * slotStride[slot];
    source[i] = slotSource[slot];
    strippedForwardedFor[i] = slotStripped[slot];
    if (kind === SMTP) {
      outcome[i] = gate.connect(target, t[i], auth[i]);
    } else {
      httpRows++;
      const held = buckets.take(target, t[i]);
      outcome[i] =
        held === REJECTED ? Outcome.rateLimit : held > 0 ? Outcome.delayed : Outcome.passed;
      if (held > 0) wait[i] = held;
    }
  }

  return {
    outcome,
    source,
    wait,
    sources,
    strippedForwardedFor,
    httpRows,
    ttlRefills: buckets.ttlRefills,
    evictions: buckets.evictions,
    limiter,
    edges: { ...edges, count: edgeCount },
    rowsPerEdge,
  };
}
