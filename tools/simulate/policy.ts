/**
 * The policy a simulation runs against: a stack's validated configuration, or Pulumi.yaml's
 * defaults, with what-if overrides from the command line laid on top.
 *
 * Overrides are checked value by value only: the point of a what-if is to see what a
 * mistake (say depth 1 without a trusted proxy) does to traffic, which the stack's own
 * validation would refuse to let through.
 */
import {
  connectionRateLimit,
  declaredKeys,
  loadStackFile,
  parseConfig,
  parseDuration,
  parsePostfixTime,
  sourceCriterionOf,
  type HomelabConfig,
} from "../../config";
import { RATE_LIMIT_MIDDLEWARE } from "../../components/names";
import type { EdgeSetup, SimPolicy, Spread } from "./model";

/** Values given on the command line; each replaces the stack's (or the default) value. */
export interface PolicyOverrides {
  average?: number;
  period?: string;
  burst?: number;
  depth?: number;
  excludedIPs?: readonly string[];
  trustedIPs?: readonly string[];
  inFlight?: number;
  window?: string;
  authAttempts?: number;
  messages?: number;
  exempt?: readonly string[];
  /** How long an accepted SMTP connection stays open, seconds. */
  connectionSeconds?: number;
}

/** Seconds an SMTP session lasts when nothing else is said: connect, EHLO, AUTH, one message, QUIT. */
export const DEFAULT_CONNECTION_SECONDS = 2;

/** The policy's inputs in the form the stack file writes them. */
interface PolicyValues {
  average: number;
  period: string;
  burst: number;
  depth: number;
  excludedIPs: readonly string[];
  trustedIPs: readonly string[];
  inFlight: number;
  window: string;
  authAttempts: number;
  messages: number;
  exempt: readonly string[];
}

/** Pulumi.yaml's default for a key. */
function declaredDefault<T>(key: string): T {
  const declaration = declaredKeys().get(key);
  if (!declaration || declaration.default === undefined)
    throw new Error(`Pulumi.yaml declares no default for ${key}`);
  return declaration.default as T;
}

function fromDefaults(): PolicyValues {
  return {
    average: declaredDefault("rateLimit.average"),
    period: declaredDefault("rateLimit.period"),
    burst: declaredDefault("rateLimit.burst"),
    depth: declaredDefault("rateLimit.depth"),
    excludedIPs: declaredDefault("rateLimit.excludedIPs"),
    trustedIPs: declaredDefault("traefik.trustedProxies"),
    inFlight: declaredDefault("rateLimit.inFlight"),
    window: declaredDefault("rateLimit.window"),
    authAttempts: declaredDefault("rateLimit.authAttempts"),
    messages: declaredDefault("rateLimit.messages"),
    exempt: declaredDefault("rateLimit.exempt"),
  };
}

/**
 * A stack's validated configuration, read once for both the policy and the edges; throws the
 * stack's ConfigError when it is invalid. Secrets may be unset: the simulator reads none.
 */
export function loadStack(stack: string): HomelabConfig {
  return parseConfig(loadStackFile(stack), { allowUnsetSecrets: true });
}

function fromStack(config: HomelabConfig): PolicyValues {
  const { rateLimit } = config;
  const criterion = rateLimit.sourceCriterion;
  return {
    average: rateLimit.average,
    period: rateLimit.period,
    burst: rateLimit.burst,
    depth: criterion.kind === "depth" ? criterion.depth : 0,
    excludedIPs: criterion.kind === "excludedIPs" ? criterion.excludedIPs : [],
    trustedIPs: config.traefik.trustedProxies,
    inFlight: rateLimit.inFlight,
    window: `${rateLimit.windowSeconds}s`,
    authAttempts: rateLimit.authAttempts,
    messages: rateLimit.messages,
    exempt: rateLimit.exempt,
  };
}

/**
 * The policy to simulate: the stack's, or Pulumi.yaml's defaults without one. The SMTP side
 * maps the project's one policy onto the relay the way the stack does: rateLimit.inFlight is
 * both Traefik's inFlightConn and the relay's connection count limit, and the relay's
 * connection rate is what the token bucket would let through in one window (config.ts
 * connectionRateLimit).
 */
export function buildPolicy(
  config: HomelabConfig | undefined,
  overrides: PolicyOverrides = {},
): SimPolicy {
  const base = config === undefined ? fromDefaults() : fromStack(config);
  const v: PolicyValues = { ...base, ...definedOnly(overrides) };
  const periodSeconds = parseDuration(v.period) ?? 1;
  const windowSeconds = parsePostfixTime(v.window) ?? 60;
  const sourceCriterion = sourceCriterionOf(v.depth, v.excludedIPs);

  return {
    http: {
      middleware: RATE_LIMIT_MIDDLEWARE,
      average: v.average,
      periodSeconds,
      burst: v.burst,
      sourceCriterion,
    },
    smtp: {
      inFlight: v.inFlight,
      connectionSeconds: overrides.connectionSeconds ?? DEFAULT_CONNECTION_SECONDS,
      windowSeconds,
      connectionCount: v.inFlight,
      connectionRate: connectionRateLimit(v.average, periodSeconds, v.burst, windowSeconds),
      authRate: v.authAttempts,
      messageRate: v.messages,
      exempt: v.exempt,
    },
    trustedIPs: v.trustedIPs,
  };
}

/** Edge flags from the command line; each replaces what the stack deploys. */
export interface EdgeOverrides {
  edges?: number;
  sharedBuckets?: boolean;
  spread?: Spread;
}

/**
 * The edges to simulate: as many as the stack has hosts (else one), sharing their buckets
 * when the stack has the shared Redis (config.redis, present with more than one host).
 */
export function buildEdges(
  config: HomelabConfig | undefined,
  overrides: EdgeOverrides = {},
): EdgeSetup {
  return {
    count: overrides.edges ?? config?.hosts.length ?? 1,
    shared: overrides.sharedBuckets ?? config?.redis !== undefined,
    spread: overrides.spread ?? "request",
  };
}

function definedOnly(overrides: PolicyOverrides): Partial<PolicyValues> {
  const { connectionSeconds: _ignored, ...rest } = overrides;
  return Object.fromEntries(
    Object.entries(rest).filter(([, value]) => value !== undefined),
  ) as Partial<PolicyValues>;
}
