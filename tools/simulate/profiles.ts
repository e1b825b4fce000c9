/**
 * Synthetic traffic a homelab relay sees, one profile per kind of sender. Each profile
 * marks its rows legitimate (they should get through) or abusive (they should be limited),
 * so the report can point at the policy's mistakes. Generation is deterministic: the same
 * seed and the same profile list give the same rows.
 */
import * as ipaddr from "ipaddr.js";
import { parseDuration } from "../../config";
import { ENTRY_POINTS } from "../../components/names";
import { SMTP_ENTRY_POINTS } from "./model";
import { parseAddress } from "./source";
import type { TrafficBuilder } from "./traffic";

/** A profile's parameters after parsing. */
export interface ProfileParams {
  /** Events per second per client. */
  rate: number;
  /** Seconds. */
  start: number;
  duration: number;
  clients: number;
  /** Messages per client (burst-like profiles). */
  count: number;
  /** Seconds over which a burst is spread. */
  spread: number;
  /** First client address; further clients count up from it. */
  addr: string;
  entry: string;
  auth: "ok" | "fail" | "none";
  /** A trusted proxy the traffic passes through ("none" = clients connect directly). */
  via: string;
}

interface ProfileDefinition {
  summary: string;
  legitimate: boolean;
  defaults: ProfileParams;
  /** Arrival times (seconds) of one client's rows. */
  arrivals(p: ProfileParams, random: () => number): number[];
}

const base = {
  start: 0,
  duration: 3600,
  clients: 1,
  count: 1,
  spread: 0,
  auth: "none",
  via: "none",
} as const;

/** Poisson arrivals at `rate` between start and start + duration. */
function poisson(p: ProfileParams, random: () => number): number[] {
  const times: number[] = [];
  for (
    let t = p.start - Math.log(1 - random()) / p.rate;
    t < p.start + p.duration;
    t -= Math.log(1 - random()) / p.rate
  ) {
    times.push(t);
  }
  return times;
}

export const PROFILES: Readonly<Record<string, ProfileDefinition>> = {
  alerts: {
    summary: "steady alerts: monitoring hosts mailing now and then (SMTP, logged in)",
    legitimate: true,
    defaults: {
      ...base,
      rate: 1 / 60,
      clients: 3,
      addr: "192.0.2.10",
      entry: ENTRY_POINTS.submission,
      auth: "ok",
    },
    arrivals: poisson,
  },
  incident: {
    summary:
      "incident burst: one host sends `count` alerts within `spread` seconds (SMTP, logged in)",
    legitimate: true,
    defaults: {
      ...base,
      rate: 0,
      start: 600,
      count: 40,
      spread: 20,
      addr: "192.0.2.20",
      entry: ENTRY_POINTS.submission,
      auth: "ok",
    },
    arrivals: (p, random) => Array.from({ length: p.count }, () => p.start + random() * p.spread),
  },
  backup: {
    summary:
      "backup night: jobs finishing at random within `duration`, each mailing `count` reports 2s apart (SMTP)",
    legitimate: true,
    defaults: {
      ...base,
      rate: 0,
      duration: 7200,
      clients: 4,
      count: 5,
      addr: "192.0.2.30",
      entry: ENTRY_POINTS.submission,
      auth: "ok",
    },
    arrivals: (p, random) => {
      const done = p.start + random() * p.duration;
      return Array.from({ length: p.count }, (_, i) => done + 2 * i);
    },
  },
  nat: {
    summary: "NAT'd services: `clients` services behind ONE public address calling the HTTPS API",
    legitimate: true,
    defaults: {
      ...base,
      rate: 4 / 60,
      duration: 1800,
      clients: 40,
      addr: "198.51.100.7",
      entry: ENTRY_POINTS.websecure,
    },
    arrivals: poisson,
  },
  bruteforce: {
    summary: "brute-force bot: guesses SMTP logins as fast as it can",
    legitimate: false,
    defaults: {
      ...base,
      rate: 5,
      start: 300,
      duration: 600,
      addr: "203.0.113.66",
      entry: ENTRY_POINTS.submission,
      auth: "fail",
    },
    arrivals: poisson,
  },
  prober: {
    summary: "slow prober: one HTTPS request every few seconds, staying under the limit",
    legitimate: false,
    defaults: { ...base, rate: 0.2, addr: "203.0.113.99", entry: ENTRY_POINTS.websecure },
    arrivals: poisson,
  },
};

/** Profiles whose clients are behind one address rather than counting up from `addr`. */
const SHARED_ADDRESS = new Set(["nat"]);

export class ProfileError extends Error {}

/** A profile as given on the command line, parsed. */
export interface ParsedProfile {
  name: string;
  params: ProfileParams;
}

/** Parses "name[:k=v,...]" into a profile and its parameters. */
export function parseProfile(spec: string, defaults: Partial<ProfileParams> = {}): ParsedProfile {
  const [name, rest] = spec.split(/:(.*)/s, 2);
  const definition = PROFILES[name];
  if (!definition) {
    throw new ProfileError(
      `--profile ${spec}: found profile "${name}"; expected one of ${Object.keys(PROFILES).join(", ")}`,
    );
  }
  const params: ProfileParams = { ...definition.defaults, ...defaults };
  for (const pair of (rest ?? "").split(",").filter((p) => p.trim() !== "")) {
    const [key, value = ""] = pair.split("=", 2).map((s) => s.trim());
    const problem = setParam(params, key, value);
    if (problem)
      throw new ProfileError(
        `--profile ${spec}: ${key}: found ${JSON.stringify(value)}; expected ${problem}`,
      );
  }
  return { name, params };
}

/** Sets one parameter; returns what was expected when the value is wrong. */
function setParam(p: ProfileParams, key: string, value: string): string | undefined {
  switch (key) {
    case "rate": {
      const rate = parseRate(value);
      if (rate === undefined) return "a rate such as 5/s, 2/m, 10/h or a number per second";
      p.rate = rate;
      return;
    }
    case "start":
    case "duration":
    case "spread": {
      const seconds = value === "0" ? 0 : parseDuration(value);
      if (seconds === undefined) return "a duration such as 30s, 10m or 1h";
      p[key] = seconds;
      return;
    }
    case "clients":
    case "count": {
      if (!/^\d+$/.test(value) || Number(value) < 1) return "a whole number, 1 or more";
      p[key] = Number(value);
      return;
    }
    case "addr":
      if (!parseAddress(value)) return "an IPv4 or IPv6 address";
      p.addr = value;
      return;
    case "via":
      if (value !== "none" && !parseAddress(value)) return "a proxy's address, or none";
      p.via = value;
      return;
    case "entry":
      if (!/^[\w-]+$/.test(value)) return "an entry point name such as websecure or submission";
      p.entry = value;
      return;
    case "auth":
      if (value !== "ok" && value !== "fail" && value !== "none") return "ok, fail or none";
      p.auth = value;
      return;
    default:
      return "a parameter among rate, start, duration, clients, count, spread, addr, via, entry, auth";
  }
}

/** "5/s", "2/m", "10/h", "3/d" or a bare number per second. */
export function parseRate(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(?:\/(s|m|h|d))?$/.exec(text.trim());
  if (!m) return undefined;
  const per: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };
  return Number(m[1]) / per[m[2] ?? "s"];
}

/**
 * A seeded generator of floats in [0, 1): Marsaglia's xorshift on 32 bits. Plenty for
 * arrival jitter, and the same sequence on every machine.
 */
export function seededRandom(seed: number): () => number {
  // xorshift has one dead state (0); spread the seed so nearby seeds start far apart.
  let state = Math.imul((seed >>> 0) + 1, 0x9e3779b1) >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
}

/** The address `offset` places after `first`. */
function addressAfter(first: string, offset: number): string {
  const bytes = ipaddr.parse(first).toByteArray();
  let carry = offset;
  for (let i = bytes.length - 1; i >= 0 && carry > 0; i--) {
    const sum = bytes[i] + carry;
    bytes[i] = sum & 0xff;
    carry = Math.floor(sum / 256);
  }
  return ipaddr.fromByteArray(bytes).toString();
}

/** Upper bound on generated rows, so a typo in a rate cannot eat the machine's memory. */
export const MAX_GENERATED_ROWS = 20_000_000;

/** Adds the rows of a profile, parsed from `spec`, to the traffic. */
export function generateProfile(
  builder: TrafficBuilder,
  spec: string,
  { name, params }: ParsedProfile,
  seed: number,
): void {
  const definition = PROFILES[name];
  const profile = builder.addProfile({ label: spec, name, legitimate: definition.legitimate });
  const random = seededRandom(seed);
  // The rows the model replays as SMTP sessions: an SMTP entry point, or a login.
  const smtp = SMTP_ENTRY_POINTS.has(params.entry) || params.auth !== "none";
  const viaProxy = params.via !== "none";
  let rows = 0;
  for (let c = 0; c < params.clients; c++) {
    const client = SHARED_ADDRESS.has(name) ? params.addr : addressAfter(params.addr, c);
    for (const t of definition.arrivals(params, random)) {
      if (++rows > MAX_GENERATED_ROWS)
        throw new ProfileError(
          `--profile ${spec}: more than ${MAX_GENERATED_ROWS} rows; lower rate, clients or duration`,
        );
      builder.add({
        t,
        remoteAddr: viaProxy ? params.via : client,
        xff: viaProxy && !smtp ? client : undefined,
        proxy: viaProxy && smtp ? client : undefined,
        entryPoint: params.entry,
        router: params.entry,
        auth: params.auth === "none" ? undefined : params.auth,
        profile,
      });
    }
  }
}
