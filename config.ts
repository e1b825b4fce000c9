/**
 * The stack configuration: read once, validated as a whole, handed down as one typed,
 * read-only object. No component reads `pulumi.Config` itself.
 *
 * Pulumi.yaml declares every key (type, description, default); this module checks what
 * the values mean. Every problem names the full key, the stack file, what was found and
 * what is expected, and all problems are reported together before anything is built.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import * as ipaddr from "ipaddr.js";
import { effectivePrefixLength, MIN_TRUSTED_PREFIX } from "./components/addresses";
import YAML from "yaml";
import { closest as closestOf, distance } from "fastest-levenshtein";
import { z } from "zod";

export const PROJECT = "homelab-smtp";
export const PROJECT_DIR = __dirname;

/** Let's Encrypt's directory URLs. */
export const ACME_CA = {
  production: "https://acme-v02.api.letsencrypt.org/directory",
  staging: "https://acme-staging-v02.api.letsencrypt.org/directory",
} as const;

/**
 * Environment variable each common DNS provider (as Traefik's ACME library names it) reads
 * its token from. Only providers that need a single token are listed.
 */
// Limitation: a provider that needs several variables (Route 53, Porkbun, OVH) cannot be
// configured: the stack carries one DNS secret, passed as one environment variable.
export const DNS_TOKEN_ENV: Readonly<Record<string, string>> = {
  cloudflare: "CF_DNS_API_TOKEN",
  desec: "DESEC_TOKEN",
  digitalocean: "DO_AUTH_TOKEN",
  duckdns: "DUCKDNS_TOKEN",
  gandiv5: "GANDIV5_PERSONAL_ACCESS_TOKEN",
  hetzner: "HETZNER_API_KEY",
  linode: "LINODE_TOKEN",
};

// ---------------------------------------------------------------------------------------
// The typed configuration handed to components.

export type Secret = pulumi.Output<string>;

/** How the rate limiter tells clients apart (Traefik's sourceCriterion.ipStrategy). */
export type SourceCriterion =
  | { kind: "remoteAddr" }
  | { kind: "depth"; depth: number }
  | { kind: "excludedIPs"; excludedIPs: readonly string[] };

export type ProxmoxAuth =
  | { method: "apiToken"; tokenId: string; secret: Secret }
  | { method: "password"; username: string; password: Secret };

export type Template =
  | { kind: "existing"; fileId: string }
  | {
      kind: "download";
      url: string;
      fileName: string;
      checksum?: { algorithm: string; value: string };
    };

export type AcmeChallenge =
  | { type: "dns"; provider: string; tokenEnv: string; token: Secret }
  | { type: "tls" }
  | { type: "http" };

export interface RateLimitPolicy {
  /** Requests or connections per period, sustained; 0 = no HTTP limit. */
  average: number;
  /** The period as written in the stack file (Traefik duration). */
  period: string;
  periodSeconds: number;
  burst: number;
  sourceCriterion: SourceCriterion;
  /** Simultaneous SMTP connections per client address. */
  inFlight: number;
  /** Window of the relay's per-client counters, in seconds. */
  windowSeconds: number;
  authAttempts: number;
  messages: number;
  /** The operator's own senders, exempt from the relay's per-client limits. */
  exempt: readonly string[];
}

/** One Docker host: where it runs and what its container looks like. */
export interface HostConfig {
  proxmox: HomelabConfig["proxmox"];
  lxc: HomelabConfig["lxc"];
}

export interface HomelabConfig {
  stack: string;
  stackFile: string;
  proxmox: {
    endpoint: string;
    insecure: boolean;
    node: string;
    auth: ProxmoxAuth;
    datastore: string;
    templateDatastore: string;
    template: Template;
  };
  lxc: {
    vmId: number;
    hostname: string;
    cores: number;
    memory: number;
    swap: number;
    diskSize: number;
    bridge: string;
    vlan?: number;
    /** Address with prefix length, e.g. 192.168.10.25/24. */
    ipv4: string;
    /** The address alone. */
    address: string;
    gateway: string;
    dns: readonly string[];
    sshPublicKeys: readonly string[];
    sshUser: string;
    sshPrivateKey: Secret;
    keyctl: boolean;
  };
  traefik: {
    image: string;
    ports: { web: number; websecure: number; smtps: number; submission: number };
    trustedProxies: readonly string[];
    smtpAllowList: readonly string[];
    /** Who may read the relay's metrics over HTTPS. */
    metricsAllowList: readonly string[];
    logLevel: string;
  };
  acme: { email: string; staging: boolean; caServer: string; challenge: AcmeChallenge };
  rateLimit: RateLimitPolicy;
  relay: {
    image: string;
    hostname: string;
    upstream: { host: string; port: number; username?: string; password?: Secret };
    clientLogins: Secret;
    allowedSenderDomains: readonly string[];
    messageSizeLimit: number;
    expectedBurst: number;
  };
  /**
   * Every Docker host, the one described by proxmox.* and lxc.* first, then edge.extraHosts.
   * Each runs its own Traefik and relay.
   */
  hosts: readonly HostConfig[];
  /** The shared rate-limit store; present when there is more than one host. */
  redis?: {
    image: string;
    port: number;
    password: Secret;
    /** the first host's address */ host: string;
  };
  /** Bans for clients that keep failing AUTH; absent when disabled. */
  fail2ban?: {
    image: string;
    maxRetry: number;
    findTime: string;
    banTime: string;
    /** Never banned: loopback, the configured networks, rateLimit.exempt and traefik.trustedProxies. */
    ignoreIPs: readonly string[];
  };
  /** Things that are allowed but probably not meant; printed by render and the program. */
  warnings: readonly string[];
}

// ---------------------------------------------------------------------------------------
// Where values come from.

/** One value as Pulumi hands it to the program. */
export interface RawValue {
  /** The value as text (numbers and booleans as Pulumi writes them, arrays as JSON). */
  text: string;
  /** Stored encrypted (`secure:` in the stack file). */
  secret: boolean;
  /** An encrypted value that was not decrypted: its content cannot be checked. */
  opaque?: boolean;
}

export interface ConfigSource {
  stack: string;
  /** Path shown in messages, relative to the project, e.g. stacks/Pulumi.dev.yaml. */
  stackFile: string;
  /** Keys without the project namespace. */
  values: ReadonlyMap<string, RawValue>;
}

/** One key as Pulumi.yaml declares it. */
export interface KeyDeclaration {
  type: "string" | "integer" | "boolean" | "array";
  description: string;
  default?: unknown;
  secret?: boolean;
}

let declarationCache: ReadonlyMap<string, KeyDeclaration> | undefined;

/** The `config:` block of Pulumi.yaml. */
export function declaredKeys(): ReadonlyMap<string, KeyDeclaration> {
  if (!declarationCache) {
    const project = YAML.parse(fs.readFileSync(path.join(PROJECT_DIR, "Pulumi.yaml"), "utf8"));
    declarationCache = new Map(Object.entries(project.config as Record<string, KeyDeclaration>));
  }
  return declarationCache;
}

/** Text of a plain YAML value the way Pulumi passes it to a program. */
function asConfigText(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/**
 * Reads `stacks/Pulumi.<stack>.yaml` as the Pulumi CLI would hand it to the program,
 * without the CLI: `secure:` values stay encrypted and are passed on as opaque secrets.
 */
export function loadStackFile(
  stack: string,
  stackDir = path.join(PROJECT_DIR, "stacks"),
): ConfigSource {
  const full = path.join(stackDir, `Pulumi.${stack}.yaml`);
  const stackFile = path.relative(process.cwd(), full) || full;
  if (!fs.existsSync(full)) {
    const known = fs.existsSync(stackDir) ? listStacks(stackDir).join(", ") : "none";
    throw new ConfigError([
      {
        key: "(stack)",
        stackFile,
        found: "no such file",
        expected: `a stack file; stacks here: ${known}`,
      },
    ]);
  }
  let doc: { config?: Record<string, unknown> } | null;
  try {
    doc = YAML.parse(fs.readFileSync(full, "utf8"));
  } catch (err) {
    const reason = (err as Error).message.split("\n")[0];
    throw new ConfigError([
      {
        key: "(file)",
        stackFile,
        found: `invalid YAML (${reason})`,
        expected: "a Pulumi stack file",
      },
    ]);
  }
  const values = new Map<string, RawValue>();
  for (const [fullKey, value] of Object.entries(doc?.config ?? {})) {
    const [namespace, key] = splitKey(fullKey);
    if (namespace !== PROJECT) continue; // provider settings, not ours
    const isSecure = typeof value === "object" && value !== null && "secure" in value;
    values.set(
      key,
      isSecure
        ? { text: "", secret: true, opaque: true }
        : { text: asConfigText(value), secret: false },
    );
  }
  return { stack, stackFile, values };
}

/** The stacks that have a file in `stackDir`. */
export function listStacks(stackDir = path.join(PROJECT_DIR, "stacks")): string[] {
  return fs
    .readdirSync(stackDir)
    .map((f) => /^Pulumi\.(.+)\.yaml$/.exec(f)?.[1])
    .filter((s): s is string => Boolean(s))
    .sort();
}

/** The configuration of the running Pulumi program (decrypted by the CLI). */
export function fromPulumiRuntime(): ConfigSource {
  const values = new Map<string, RawValue>();
  for (const fullKey of Object.keys(pulumi.runtime.allConfig())) {
    const [namespace, key] = splitKey(fullKey);
    if (namespace !== PROJECT) continue;
    values.set(key, {
      text: pulumi.runtime.getConfig(fullKey) ?? "",
      secret: isConfigSecret(fullKey),
    });
  }
  const stack = pulumi.getStack();
  return { stack, stackFile: path.join("stacks", `Pulumi.${stack}.yaml`), values };
}

/** The SDK exports this from pulumi.runtime but leaves it out of its type definitions. */
const isConfigSecret = (pulumi.runtime as unknown as { isConfigSecret(key: string): boolean })
  .isConfigSecret;

function splitKey(fullKey: string): [string, string] {
  const i = fullKey.indexOf(":");
  return i < 0 ? [PROJECT, fullKey] : [fullKey.slice(0, i), fullKey.slice(i + 1)];
}

// ---------------------------------------------------------------------------------------
// Problems.

export interface Problem {
  /** Key without the namespace, with an index for array items: traefik.trustedProxies[1]. */
  key: string;
  stackFile: string;
  found: string;
  expected: string;
}

export function formatProblem(p: Problem): string {
  const key = p.key.startsWith("(") ? p.key : `${PROJECT}:${p.key}`;
  return `${key} in ${p.stackFile}: found ${p.found}; expected ${p.expected}`;
}

/** Raised with every problem of a stack's configuration at once. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly Problem[]) {
    super(
      `${problems.length} configuration problem${problems.length === 1 ? "" : "s"}:\n` +
        problems.map((p) => `  - ${formatProblem(p)}`).join("\n"),
    );
    this.name = "ConfigError";
  }
}

// ---------------------------------------------------------------------------------------
// Value formats.

/** Parses a Go duration ("1s", "1m30s", "250ms") or a bare number of seconds, as Traefik does; seconds. */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const unit: Record<string, number> = {
    ns: 1e-9,
    us: 1e-6,
    µs: 1e-6,
    ms: 1e-3,
    s: 1,
    m: 60,
    h: 3600,
  };
  const part = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y;
  let seconds = 0;
  while (part.lastIndex < trimmed.length) {
    const m = part.exec(trimmed);
    if (!m) return undefined;
    seconds += Number(m[1]) * unit[m[2]];
  }
  return seconds;
}

/** Parses a Postfix time value ("60s", "1m", "2h"; a bare number is seconds); seconds. */
export function parsePostfixTime(text: string): number | undefined {
  const m = /^(\d+)([smhdw]?)$/.exec(text.trim());
  if (!m) return undefined;
  const unit: Record<string, number> = { "": 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
  return Number(m[1]) * unit[m[2]];
}

/** An IPv4/IPv6 address or CIDR, as Traefik and Postfix accept it. */
export function isAddressOrCidr(text: string): boolean {
  return text.includes("/") ? ipaddr.isValidCIDR(text) : ipaddr.isValid(text);
}

const hostnamePattern = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/i;
const proxmoxUser = /^[^\s@!:]+@[a-z0-9][a-z0-9._-]*$/i;
const proxmoxTokenId = /^[^\s@!:]+@[a-z0-9][a-z0-9._-]*![a-z][a-z0-9._-]*$/i;
const sshPublicKey =
  /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/=]+( .*)?$/;

/** The image's tag, if pinned to a real version (not absent, not `latest`). */
function imageTag(image: string): string | undefined {
  const m = /^[^@\s]+:([\w][\w.-]{0,127})(@sha256:[a-f0-9]{64})?$/.exec(image);
  return m && m[1] !== "latest" ? m[1] : undefined;
}

function compareVersion(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// Per-key checks. Each message is the "expected" half of a problem.

const str = z.string();
const required = (what: string) => str.min(1, `${what} (required, no default)`);
const pinnedImage = (example: string) =>
  str.refine(
    (t) => imageTag(t) !== undefined,
    `an image pinned to a version tag (not latest), such as ${example}`,
  );
const int = (min: number, max: number, why = "") =>
  z
    .number()
    .int(`a whole number${why}`)
    .min(min, `at least ${min}${why}`)
    .max(max, `at most ${max}${why}`);
const port = int(1, 65535);
const addressList = z.array(
  str.refine(isAddressOrCidr, "an IPv4/IPv6 address or CIDR such as 192.168.1.0/24"),
);
const durationText = str.refine(
  (t) => (parseDuration(t) ?? 0) > 0,
  "a positive duration such as 1s, 1m or 1h30m",
);

const keySchemas = {
  "proxmox.endpoint": required("an https URL such as https://pve1.home.arpa:8006/").refine(
    (t) => /^https:\/\/[^/\s]+/.test(t) && URL.canParse(t),
    "an https URL such as https://pve1.home.arpa:8006/",
  ),
  "proxmox.insecure": z.boolean(),
  "proxmox.node": required("the Proxmox node name").regex(
    /^[a-z0-9][a-z0-9-]*$/i,
    "a Proxmox node name (letters, digits, dashes)",
  ),
  "proxmox.authMethod": z.enum(["apiToken", "password"], "apiToken or password"),
  "proxmox.username": required("user@realm!tokenname for apiToken, root@pam for password"),
  "proxmox.credential": required("the token secret or password, set with --secret"),
  "proxmox.datastore": required("a Proxmox storage id"),
  "proxmox.templateDatastore": required("a Proxmox storage id"),
  "proxmox.templateUrl": str,
  "proxmox.templateChecksum": str.regex(
    /^$|^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/i,
    "empty, sha256:<64 hex> or sha512:<128 hex>",
  ),
  "proxmox.templateFileId": str.regex(
    /^$|^[a-z0-9][\w.-]*:vztmpl\/[\w.+-]+$/i,
    "empty or a template volume id such as local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
  ),

  "lxc.vmId": int(100, 999_999_999, " (Proxmox refuses container ids outside 100..999999999)"),
  "lxc.hostname": str.regex(
    /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i,
    "a single DNS label (letters, digits, dashes)",
  ),
  "lxc.cores": int(1, 128),
  "lxc.memory": int(512, 1_048_576, " MiB (Docker, Traefik and Postfix need 512 MiB at least)"),
  "lxc.swap": int(0, 1_048_576),
  "lxc.diskSize": int(4, 65_536, " GiB (the Docker images need 4 GiB at least)"),
  "lxc.bridge": required("a Linux bridge such as vmbr0").regex(
    /^[a-z][\w.-]{0,14}$/i,
    "a Linux bridge name such as vmbr0",
  ),
  "lxc.vlan": int(0, 4094, " (0 = untagged, 1..4094 a VLAN tag)"),
  "lxc.ipv4": required("a static IPv4 address with prefix, such as 192.168.10.25/24").refine(
    (t) => ipaddr.IPv4.isValidCIDR(t) && ipaddr.IPv4.parseCIDR(t)[1] <= 30,
    "an IPv4 address with prefix length (/8 to /30), such as 192.168.10.25/24",
  ),
  "lxc.gateway": required("the IPv4 gateway").refine(
    (t) => ipaddr.IPv4.isValidFourPartDecimal(t),
    "an IPv4 address such as 192.168.10.1",
  ),
  "lxc.dns": z.array(str.refine((t) => ipaddr.isValid(t), "an IP address")),
  "lxc.sshPublicKeys": z
    .array(
      str.regex(sshPublicKey, "an OpenSSH public key line such as 'ssh-ed25519 AAAA... you@host'"),
    )
    .min(1, "at least one SSH public key (Pulumi logs in with its private half)"),
  "lxc.sshUser": z.literal(
    "root",
    "root: Proxmox installs lxc.sshPublicKeys for root only, so no other user could log in",
  ),
  "lxc.sshPrivateKey": required("an OpenSSH private key, set with --secret").refine(
    (t) => /^-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(t.trim()),
    "an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY----- ...)",
  ),
  "lxc.keyctl": z.boolean(),

  "traefik.image": required("a pinned Traefik image"),
  "traefik.webPort": port,
  "traefik.websecurePort": port,
  "traefik.smtpsPort": port,
  "traefik.submissionPort": port,
  "traefik.trustedProxies": addressList,
  "traefik.smtpAllowList": addressList.min(
    1,
    "at least one CIDR (Traefik rejects an empty ipAllowList, and nobody could send)",
  ),
  "traefik.metricsAllowList": addressList.min(
    1,
    "at least one CIDR (Traefik rejects an empty ipAllowList)",
  ),
  "traefik.logLevel": z.enum(["DEBUG", "INFO", "WARN", "ERROR"], "DEBUG, INFO, WARN or ERROR"),

  "acme.email": required("the Let's Encrypt account e-mail").regex(
    /^[^\s@]+@[^\s@]+\.[^\s@]+$/,
    "an e-mail address",
  ),
  "acme.staging": z.boolean(),
  "acme.challenge": z.enum(["dns", "tls", "http"], "dns, tls or http"),
  "acme.dnsProvider": str.regex(
    /^$|^[a-z0-9][a-z0-9.-]*$/,
    "a DNS provider code such as cloudflare",
  ),
  "acme.dnsTokenEnv": str.regex(
    /^$|^[A-Z_][A-Z0-9_]*$/,
    "an environment variable name such as CF_DNS_API_TOKEN",
  ),
  "acme.dnsProviderToken": str,

  "rateLimit.average": z
    .number()
    .int("a whole number")
    .min(0, "0 (no limit) or more: a negative average is not a rate"),
  "rateLimit.period": durationText,
  "rateLimit.burst": z
    .number()
    .int("a whole number")
    .min(1, "at least 1: Traefik silently turns a burst below 1 into 1"),
  "rateLimit.depth": int(0, 32),
  "rateLimit.excludedIPs": addressList,
  "rateLimit.inFlight": int(1, 10_000, " (an inFlightConn of 0 refuses every connection)"),
  "rateLimit.window": str.refine(
    (t) => (parsePostfixTime(t) ?? 0) >= 1,
    "a Postfix time such as 60s or 1m",
  ),
  "rateLimit.authAttempts": int(1, 10_000, " (0 would leave AUTH brute force unlimited)"),
  "rateLimit.messages": int(1, 1_000_000),
  "rateLimit.exempt": addressList,

  "relay.image": pinnedImage("boky/postfix:v5.2.1-alpine"),
  "relay.hostname": required("the relay's public name").regex(
    hostnamePattern,
    "a fully qualified hostname such as smtp.home.example.org",
  ),
  "relay.upstreamHost": required("the smarthost's hostname").regex(
    hostnamePattern,
    "a fully qualified hostname such as smtp.fastmail.com",
  ),
  "relay.upstreamPort": port,
  "relay.upstreamUsername": str,
  "relay.upstreamPassword": str,
  "relay.clientLogins": required("user:password pairs separated by commas, set with --secret"),
  "relay.allowedSenderDomains": z
    .array(str.regex(hostnamePattern, "a domain name such as home.example.org"))
    .min(1, "at least one sender domain (otherwise the relay sends for any domain)"),
  "relay.messageSizeLimit": int(1024, 1_073_741_824, " bytes"),
  "relay.expectedBurst": int(1, 100_000),

  "edge.extraHosts": z.array(
    str.refine(
      (t) => parseExtraHost(t) !== undefined,
      "node=<proxmox node>,vmId=<100..999999999>,ipv4=<address/prefix>[,hostname=<name>]",
    ),
  ),
  "redis.image": pinnedImage("valkey/valkey:8.1.11-alpine"),
  "redis.port": port,
  "redis.password": str.refine(
    (t) => !/['\r\n]/.test(t),
    "no single quote or line break (Traefik reads it inside a single-quoted YAML string)",
  ),

  "fail2ban.enabled": z.boolean(),
  "fail2ban.image": pinnedImage("crazymax/fail2ban:1.1.0"),
  "fail2ban.maxRetry": int(1, 100),
  "fail2ban.findTime": str.refine(
    (t) => (parsePostfixTime(t) ?? 0) >= 1,
    "a time such as 10m, 1h or 600",
  ),
  "fail2ban.banTime": str.refine(
    (t) => (parsePostfixTime(t) ?? 0) >= 1,
    "a time such as 1h, 1d or 3600",
  ),
  "fail2ban.ignoreIPs": addressList,
};

/** One entry of edge.extraHosts: `node=pve2,vmId=126,ipv4=10.10.0.26/24[,hostname=smtp-edge-2]`. */
export function parseExtraHost(
  text: string,
): { node: string; vmId: number; ipv4: string; hostname?: string } | undefined {
  const fields = new Map<string, string>();
  for (const part of text.split(",")) {
    const m = /^\s*(node|vmId|ipv4|hostname)=(\S+)\s*$/.exec(part);
    if (!m || fields.has(m[1])) return undefined;
    fields.set(m[1], m[2]);
  }
  const node = fields.get("node");
  const vmId = Number(fields.get("vmId"));
  const ipv4 = fields.get("ipv4");
  const hostname = fields.get("hostname");
  if (!node || !/^[a-z0-9][a-z0-9-]*$/i.test(node)) return undefined;
  if (!Number.isInteger(vmId) || vmId < 100 || vmId > 999_999_999) return undefined;
  if (!ipv4 || !ipaddr.IPv4.isValidCIDR(ipv4)) return undefined;
  if (hostname !== undefined && !/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(hostname))
    return undefined;
  return { node, vmId, ipv4, ...(hostname ? { hostname } : {}) };
}

type ConfigKey = keyof typeof keySchemas;
type Flat = { [K in ConfigKey]: z.infer<(typeof keySchemas)[K]> };

/** The keys the program understands; a test keeps this and Pulumi.yaml in step. */
export const CONFIG_KEYS = Object.keys(keySchemas) as ConfigKey[];

/** Keys whose value must be stored encrypted. */
export const SECRET_KEYS: ReadonlySet<ConfigKey> = new Set([
  "proxmox.credential",
  "lxc.sshPrivateKey",
  "acme.dnsProviderToken",
  "relay.upstreamPassword",
  "relay.clientLogins",
  "redis.password",
]);

// ---------------------------------------------------------------------------------------
// Parsing.

/** Turns the text Pulumi hands over into the declared type. */
function decode(
  text: string,
  type: KeyDeclaration["type"],
): { ok: true; value: unknown } | { ok: false; expected: string } {
  switch (type) {
    case "string":
      return { ok: true, value: text };
    case "integer":
      return /^-?\d+$/.test(text.trim())
        ? { ok: true, value: Number(text) }
        : { ok: false, expected: "a whole number" };
    case "boolean":
      return text === "true" || text === "false"
        ? { ok: true, value: text === "true" }
        : { ok: false, expected: "true or false" };
    case "array": {
      try {
        const value = JSON.parse(text);
        if (Array.isArray(value))
          return { ok: true, value: value.map((v) => (typeof v === "string" ? v : String(v))) };
      } catch {
        /* reported below */
      }
      return { ok: false, expected: "a YAML list" };
    }
  }
}

function shown(value: unknown, secret: boolean): string {
  if (value === "" || value === undefined) return "nothing";
  if (secret) return "[secret]";
  return JSON.stringify(value);
}

function closest(key: string, candidates: readonly string[]): string | undefined {
  const best = closestOf(key, candidates as string[]);
  return distance(key.toLowerCase(), best.toLowerCase()) <= 3 ? best : undefined;
}

export interface ParseOptions {
  /**
   * Accept secrets missing from the stack file (an offline render of a fresh clone): they
   * stand in as opaque secrets and each becomes a warning instead of an error.
   */
  allowUnsetSecrets?: boolean;
}

/**
 * Validates a stack's configuration and returns the typed object, or throws a
 * ConfigError listing every problem.
 */
export function parseConfig(source: ConfigSource, options: ParseOptions = {}): HomelabConfig {
  const problems: Problem[] = [];
  const problem = (key: string, found: string, expected: string) =>
    problems.push({ key, stackFile: source.stackFile, found, expected });
  const declared = declaredKeys();

  for (const key of source.values.keys()) {
    if (!declared.has(key)) {
      const hint = closest(key, [...declared.keys()]);
      problem(
        key,
        "an unknown key",
        hint
          ? `a declared key; did you mean ${PROJECT}:${hint}?`
          : "one of the keys declared in Pulumi.yaml",
      );
    }
  }

  // Decode every declared key; opaque secrets get a stand-in that passes the format checks.
  const flat: Record<string, unknown> = {};
  const opaque = new Set<string>();
  const unset = new Set<string>();
  for (const key of CONFIG_KEYS) {
    const declaration = declared.get(key);
    if (!declaration) throw new Error(`Pulumi.yaml does not declare ${PROJECT}:${key}`);
    const raw = source.values.get(key);
    const secret = SECRET_KEYS.has(key);
    if (raw === undefined && secret && options.allowUnsetSecrets) {
      unset.add(key);
      flat[key] = standIn(key, "");
      continue;
    }
    if (raw === undefined) {
      flat[key] =
        declaration.default ??
        (declaration.type === "array" ? [] : declaration.type === "string" ? "" : undefined);
      continue;
    }
    if (secret && !raw.secret && raw.text !== "") {
      problem(
        key,
        "a plain-text value",
        `a secret: set it with \`pulumi config set --secret ${key} <value>\``,
      );
    }
    if (!secret && raw.secret) {
      problem(key, "an encrypted value", "a plain value (this key is not a secret)");
      continue;
    }
    if (raw.opaque) {
      opaque.add(key);
      flat[key] = standIn(key, "[secret]");
      continue;
    }
    const decoded = decode(raw.text, declaration.type);
    if (!decoded.ok) problem(key, shown(raw.text, secret), decoded.expected);
    else flat[key] = decoded.value;
  }

  // Each key on its own, so that one bad value does not hide the others.
  const values: Partial<Flat> = {};
  for (const key of CONFIG_KEYS) {
    if (problems.some((p) => p.key === key)) continue; // already reported while decoding
    const result = keySchemas[key].safeParse(flat[key]);
    if (result.success) {
      (values as Record<string, unknown>)[key] = result.data;
      continue;
    }
    for (const issue of result.error.issues) {
      const value = issue.path.reduce<unknown>(
        (v, k) => (v as Record<PropertyKey, unknown>)?.[k],
        flat[key],
      );
      const where = key + issue.path.map((r) => `[${String(r)}]`).join("");
      problem(where, shown(value, SECRET_KEYS.has(key)), issue.message);
    }
  }

  const warnings: string[] = [];
  const warn = (w: string) => warnings.push(w);
  for (const key of unset) if (key in REQUIRED_SECRET_STAND_IN) warn(unsetSecretWarning(key));
  for (const rule of rules) {
    if (rule.reads.every((key) => key in values))
      rule.check(values as Flat, { opaque, unset, problem, warn });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze(assemble(source, values as Flat, warnings));
}

/** Values that stand in for secrets nobody decrypted (render, tests); they pass the format checks. */
const REQUIRED_SECRET_STAND_IN = {
  "proxmox.credential": "[secret]",
  "lxc.sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\n[secret]",
  "relay.clientLogins": "[secret]:[secret]",
} as const;

/** What a secret nobody decrypted is checked as: a well-formed stand-in, or `otherwise`. */
function standIn(key: string, otherwise: string): string {
  return REQUIRED_SECRET_STAND_IN[key as keyof typeof REQUIRED_SECRET_STAND_IN] ?? otherwise;
}

function unsetSecretWarning(key: string): string {
  return `${PROJECT}:${key} is not set in the stack file: set it with \`pulumi config set --secret ${key} <value>\` before \`pulumi up\``;
}

interface RuleContext {
  /** Secrets present but not decrypted. */
  opaque: ReadonlySet<string>;
  /** Secrets missing from the stack file (offline render only). */
  unset: ReadonlySet<string>;
  problem: (key: string, found: string, expected: string) => void;
  warn: (warning: string) => void;
}

/** A check that spans several keys; it runs only when every key it reads is valid on its own. */
interface Rule {
  reads: readonly ConfigKey[];
  check(v: Flat, ctx: RuleContext): void;
}

const hasSecret = (v: Flat, ctx: RuleContext, key: ConfigKey) =>
  v[key] !== "" || ctx.opaque.has(key);

/** The traps an operator falls into, each with what it would cost. */
const rules: readonly Rule[] = [
  {
    reads: ["rateLimit.depth", "rateLimit.excludedIPs", "traefik.trustedProxies"],
    check(v, { problem, warn }) {
      const trusted = v["traefik.trustedProxies"];
      const depth = v["rateLimit.depth"];
      const excluded = v["rateLimit.excludedIPs"];
      if (depth >= 1 && trusted.length === 0) {
        problem(
          "rateLimit.depth",
          String(depth),
          "0, or traefik.trustedProxies set: with no trusted proxy Traefik strips X-Forwarded-For from every request, " +
            "so every client on the internet would share one rate-limit bucket",
        );
      }
      if (excluded.length > 0 && trusted.length === 0) {
        problem(
          "rateLimit.excludedIPs",
          JSON.stringify(excluded),
          "an empty list, or traefik.trustedProxies set: with no trusted proxy X-Forwarded-For is always stripped, " +
            "so every client would share one rate-limit bucket",
        );
      }
      if (depth >= 1 && excluded.length > 0) {
        problem(
          "rateLimit.excludedIPs",
          JSON.stringify(excluded),
          "an empty list when rateLimit.depth is set: Traefik ignores excludedIPs then",
        );
      }
      if (trusted.length > 0 && depth === 0 && excluded.length === 0) {
        warn(
          "rateLimit uses the connecting address although traefik.trustedProxies is set: right only if those proxies send " +
            "PROXY protocol headers; proxies that set X-Forwarded-For need rateLimit.depth 1, or all their clients share one bucket",
        );
      }
    },
  },
  {
    reads: ["traefik.trustedProxies", "rateLimit.exempt"],
    check(v, { problem }) {
      v["traefik.trustedProxies"].forEach((entry, i) => {
        if (effectivePrefixLength(entry) >= MIN_TRUSTED_PREFIX) return;
        problem(
          `traefik.trustedProxies[${i}]`,
          JSON.stringify(entry),
          `a proxy's address or a small range (/${MIN_TRUSTED_PREFIX} or longer): trusting this much of the internet lets clients forge X-Forwarded-For and PROXY headers and pick their own bucket`,
        );
      });
      v["rateLimit.exempt"].forEach((entry, i) => {
        if (effectivePrefixLength(entry) >= MIN_TRUSTED_PREFIX) return;
        problem(
          `rateLimit.exempt[${i}]`,
          JSON.stringify(entry),
          `your own senders' addresses (/${MIN_TRUSTED_PREFIX} or longer): this would exempt much of the internet from the relay's limits`,
        );
      });
    },
  },
  {
    reads: ["proxmox.authMethod", "proxmox.username", "lxc.keyctl"],
    check(v, { problem }) {
      const method = v["proxmox.authMethod"];
      const username = v["proxmox.username"];
      if (method === "apiToken" && !proxmoxTokenId.test(username)) {
        problem(
          "proxmox.username",
          JSON.stringify(username),
          "an API token id user@realm!tokenname (proxmox.authMethod is apiToken)",
        );
      }
      if (method === "password" && !proxmoxUser.test(username)) {
        problem(
          "proxmox.username",
          JSON.stringify(username),
          "a user such as root@pam (proxmox.authMethod is password)",
        );
      }
      if (v["lxc.keyctl"] && !(method === "password" && username === "root@pam")) {
        problem(
          "lxc.keyctl",
          "true",
          "false, or proxmox.authMethod password with proxmox.username root@pam: Proxmox lets only root@pam set container features other than nesting",
        );
      }
    },
  },
  {
    reads: ["proxmox.templateFileId", "proxmox.templateUrl"],
    check(v, { problem }) {
      if (v["proxmox.templateFileId"] !== "") return;
      if (/^https?:\/\/[^/\s]+\/\S+\.tar\.(zst|gz|xz)$/.test(v["proxmox.templateUrl"])) return;
      problem(
        "proxmox.templateUrl",
        JSON.stringify(v["proxmox.templateUrl"]),
        "an http(s) URL of an LXC template (.tar.zst, .tar.gz or .tar.xz), or proxmox.templateFileId set",
      );
    },
  },
  {
    reads: ["lxc.ipv4", "lxc.gateway"],
    check(v, { problem }) {
      const cidr = ipaddr.IPv4.parseCIDR(v["lxc.ipv4"]);
      const gateway = ipaddr.IPv4.parse(v["lxc.gateway"]);
      if (!gateway.match(cidr)) {
        problem(
          "lxc.gateway",
          JSON.stringify(v["lxc.gateway"]),
          `an address inside ${v["lxc.ipv4"]}'s network, or the container has no route out`,
        );
      } else if (gateway.toString() === cidr[0].toString()) {
        problem(
          "lxc.gateway",
          JSON.stringify(v["lxc.gateway"]),
          "another address than the container's own",
        );
      }
    },
  },
  {
    reads: [
      "traefik.webPort",
      "traefik.websecurePort",
      "traefik.smtpsPort",
      "traefik.submissionPort",
    ],
    check(v, { problem }) {
      const seen = new Map<number, string>();
      for (const key of [
        "traefik.webPort",
        "traefik.websecurePort",
        "traefik.smtpsPort",
        "traefik.submissionPort",
      ] as const) {
        const other = seen.get(v[key]);
        if (other) problem(key, String(v[key]), `a port not already used by ${PROJECT}:${other}`);
        seen.set(v[key], key);
      }
    },
  },
  {
    reads: ["traefik.image"],
    check(v, { problem }) {
      const version = /^v?(\d+)\.(\d+)\.(\d+)$/.exec(imageTag(v["traefik.image"]) ?? "");
      const numbers = version?.slice(1).map(Number);
      if (!numbers || numbers[0] !== 3 || compareVersion(numbers, [3, 5, 2]) < 0) {
        problem(
          "traefik.image",
          JSON.stringify(v["traefik.image"]),
          "a Traefik v3 image pinned to v3.5.2 or later, such as traefik:v3.7.9 (older ones cannot send PROXY protocol to the relay)",
        );
      }
    },
  },
  {
    reads: [
      "acme.challenge",
      "acme.dnsProvider",
      "acme.dnsTokenEnv",
      "acme.dnsProviderToken",
      "traefik.webPort",
    ],
    check(v, ctx) {
      const { problem, warn } = ctx;
      if (v["acme.challenge"] === "http" && v["traefik.webPort"] !== 80) {
        warn(
          `acme.challenge http: Let's Encrypt connects to port 80; traefik.webPort is ${v["traefik.webPort"]}, so port 80 must be forwarded to it`,
        );
      }
      if (v["acme.challenge"] !== "dns") return;
      const provider = v["acme.dnsProvider"];
      if (provider === "") {
        problem(
          "acme.dnsProvider",
          "nothing",
          "a DNS provider code such as cloudflare: the dns challenge has no way to publish its TXT record without one",
        );
      } else if (v["acme.dnsTokenEnv"] === "" && !DNS_TOKEN_ENV[provider]) {
        problem(
          "acme.dnsTokenEnv",
          "nothing",
          `the environment variable the ${provider} provider reads its token from (known without it: ${Object.keys(DNS_TOKEN_ENV).join(", ")})`,
        );
      }
      if (ctx.unset.has("acme.dnsProviderToken")) warn(unsetSecretWarning("acme.dnsProviderToken"));
      else if (!hasSecret(v, ctx, "acme.dnsProviderToken")) {
        problem(
          "acme.dnsProviderToken",
          "nothing",
          "the DNS provider's API token, set with --secret (the dns challenge needs it)",
        );
      }
    },
  },
  {
    reads: ["relay.upstreamUsername", "relay.upstreamPassword"],
    check(v, ctx) {
      const user = v["relay.upstreamUsername"];
      const hasPassword = hasSecret(v, ctx, "relay.upstreamPassword");
      if (user !== "" && !hasPassword) {
        if (ctx.unset.has("relay.upstreamPassword"))
          ctx.warn(unsetSecretWarning("relay.upstreamPassword"));
        else
          ctx.problem(
            "relay.upstreamPassword",
            "nothing",
            "the smarthost password, set with --secret (relay.upstreamUsername is set)",
          );
      }
      if (user === "" && hasPassword) {
        ctx.problem(
          "relay.upstreamUsername",
          "nothing",
          "the smarthost login that goes with relay.upstreamPassword",
        );
      }
    },
  },
  {
    reads: ["relay.clientLogins"],
    check(v, ctx) {
      if (ctx.opaque.has("relay.clientLogins") || ctx.unset.has("relay.clientLogins")) return;
      const logins = v["relay.clientLogins"].split(",").map((l) => l.trim());
      const names = logins.map((l) => l.slice(0, Math.max(0, l.indexOf(":"))));
      if (logins.some((l) => !/^[^\s:,]+:\S{12,}$/.test(l))) {
        ctx.problem(
          "relay.clientLogins",
          "[secret]",
          "user:password pairs separated by commas, each password 12 characters or longer",
        );
      } else if (new Set(names).size !== names.length) {
        ctx.problem("relay.clientLogins", "[secret]", "each user once");
      }
    },
  },
  {
    reads: [
      "acme.challenge",
      "edge.extraHosts",
      "lxc.vmId",
      "lxc.ipv4",
      "lxc.gateway",
      "rateLimit.average",
      "redis.password",
    ],
    check(v, ctx) {
      const extra = v["edge.extraHosts"].map((t) => parseExtraHost(t)!);
      if (extra.length === 0) return;
      const vmIds = new Map<number, string>([[v["lxc.vmId"], "lxc.vmId"]]);
      const addresses = new Map<string, string>([[v["lxc.ipv4"].split("/")[0], "lxc.ipv4"]]);
      const gateway = ipaddr.IPv4.parse(v["lxc.gateway"]);
      extra.forEach((host, i) => {
        const key = `edge.extraHosts[${i}]`;
        const address = host.ipv4.split("/")[0];
        const taken = vmIds.get(host.vmId) ?? addresses.get(address);
        if (taken)
          ctx.problem(
            key,
            JSON.stringify(v["edge.extraHosts"][i]),
            `a container id and address not already used by ${PROJECT}:${taken}`,
          );
        if (!gateway.match(ipaddr.IPv4.parseCIDR(host.ipv4))) {
          ctx.problem(
            key,
            JSON.stringify(v["edge.extraHosts"][i]),
            `an address in the network of lxc.gateway ${v["lxc.gateway"]}, which every host uses`,
          );
        }
        vmIds.set(host.vmId, key);
        addresses.set(address, key);
      });
      if (v["rateLimit.average"] === 0) {
        ctx.problem(
          "rateLimit.average",
          "0",
          "a rate above 0 with edge.extraHosts: the buckets are shared through Redis then, and Traefik's Redis limiter answers 429 to every request when average is 0",
        );
      }
      if (v["acme.challenge"] !== "dns") {
        ctx.warn(
          `acme.challenge ${v["acme.challenge"]} with several edges: each edge asks for its own certificate, and ` +
            "Let's Encrypt may reach another edge than the one that asked; the dns challenge does not have that problem",
        );
      }
      if (ctx.unset.has("redis.password")) ctx.warn(unsetSecretWarning("redis.password"));
      else if (!hasSecret(v, ctx, "redis.password")) {
        ctx.problem(
          "redis.password",
          "nothing",
          "a password for the shared Redis, set with --secret (edge.extraHosts is set)",
        );
      }
    },
  },
  {
    reads: ["fail2ban.enabled", "fail2ban.findTime", "fail2ban.banTime", "traefik.trustedProxies"],
    check(v, { problem, warn }) {
      if (!v["fail2ban.enabled"]) return;
      if (v["traefik.trustedProxies"].length > 0) {
        warn(
          "fail2ban bans addresses in this host's firewall, but clients that come through traefik.trustedProxies " +
            "arrive from the proxy's address: their bans block nothing; ban them at the proxy",
        );
      }
      if (parsePostfixTime(v["fail2ban.banTime"])! < parsePostfixTime(v["fail2ban.findTime"])!) {
        problem(
          "fail2ban.banTime",
          JSON.stringify(v["fail2ban.banTime"]),
          "at least fail2ban.findTime: a shorter ban lets the prober back in before its failures are forgotten",
        );
      }
    },
  },
  {
    // One policy, every layer: the planned legitimate burst must pass all of them.
    reads: [
      "relay.expectedBurst",
      "rateLimit.messages",
      "rateLimit.average",
      "rateLimit.period",
      "rateLimit.burst",
      "rateLimit.window",
      "rateLimit.authAttempts",
    ],
    check(v, { problem, warn }) {
      const burst = v["relay.expectedBurst"];
      const connections = connectionRateLimit(
        v["rateLimit.average"],
        parseDuration(v["rateLimit.period"])!,
        v["rateLimit.burst"],
        parsePostfixTime(v["rateLimit.window"])!,
      );
      if (burst > v["rateLimit.messages"]) {
        problem(
          "rateLimit.messages",
          String(v["rateLimit.messages"]),
          `at least relay.expectedBurst (${burst}): the planned burst would be refused with "450 4.7.1 Error: too much mail"`,
        );
      }
      if (connections > 0 && burst > connections) {
        problem(
          "rateLimit.burst",
          String(v["rateLimit.burst"]),
          `enough for relay.expectedBurst (${burst}) connections in one rateLimit.window: the relay would allow ${connections} and answer the rest with 421`,
        );
      }
      if (burst > v["rateLimit.authAttempts"]) {
        warn(
          `relay.expectedBurst (${burst}) is above rateLimit.authAttempts (${v["rateLimit.authAttempts"]}): a sender that logs in once per message ` +
            "is cut off mid-burst unless it reuses its connection or its address is in rateLimit.exempt",
        );
      }
    },
  },
];

/**
 * Connections per window the relay allows one client: what the token bucket refills in a
 * window plus the burst it starts with. 0 = no limit (average 0).
 */
export function connectionRateLimit(
  average: number,
  periodSeconds: number,
  burst: number,
  windowSeconds: number,
): number {
  if (average === 0) return 0;
  return Math.ceil((average * windowSeconds) / periodSeconds) + burst;
}

/**
 * How Traefik picks the client: the depth-th X-Forwarded-For entry when depth is set (it
 * then ignores excludedIPs), else the rightmost one not excluded, else the connecting address.
 */
export function sourceCriterionOf(depth: number, excludedIPs: readonly string[]): SourceCriterion {
  if (depth > 0) return { kind: "depth", depth };
  if (excludedIPs.length > 0) return { kind: "excludedIPs", excludedIPs };
  return { kind: "remoteAddr" };
}

function assemble(source: ConfigSource, v: Flat, warnings: string[]): HomelabConfig {
  const secret = (key: ConfigKey) => pulumi.secret(v[key] as string);
  const sourceCriterion = sourceCriterionOf(v["rateLimit.depth"], v["rateLimit.excludedIPs"]);
  const checksum = v["proxmox.templateChecksum"];
  const url = v["proxmox.templateUrl"];
  const provider = v["acme.dnsProvider"];
  const challenge: AcmeChallenge =
    v["acme.challenge"] === "dns"
      ? {
          type: "dns",
          provider,
          tokenEnv: v["acme.dnsTokenEnv"] || DNS_TOKEN_ENV[provider],
          token: secret("acme.dnsProviderToken"),
        }
      : { type: v["acme.challenge"] };

  const config: Omit<HomelabConfig, "hosts" | "redis" | "fail2ban"> = {
    stack: source.stack,
    stackFile: source.stackFile,
    proxmox: {
      endpoint: v["proxmox.endpoint"],
      insecure: v["proxmox.insecure"],
      node: v["proxmox.node"],
      auth:
        v["proxmox.authMethod"] === "apiToken"
          ? {
              method: "apiToken",
              tokenId: v["proxmox.username"],
              secret: secret("proxmox.credential"),
            }
          : {
              method: "password",
              username: v["proxmox.username"],
              password: secret("proxmox.credential"),
            },
      datastore: v["proxmox.datastore"],
      templateDatastore: v["proxmox.templateDatastore"],
      template: v["proxmox.templateFileId"]
        ? { kind: "existing", fileId: v["proxmox.templateFileId"] }
        : {
            kind: "download",
            url,
            fileName: url.slice(url.lastIndexOf("/") + 1),
            ...(checksum
              ? {
                  checksum: {
                    algorithm: checksum.split(":")[0].toLowerCase(),
                    value: checksum.split(":")[1].toLowerCase(),
                  },
                }
              : {}),
          },
    },
    lxc: {
      vmId: v["lxc.vmId"],
      hostname: v["lxc.hostname"],
      cores: v["lxc.cores"],
      memory: v["lxc.memory"],
      swap: v["lxc.swap"],
      diskSize: v["lxc.diskSize"],
      bridge: v["lxc.bridge"],
      ...(v["lxc.vlan"] > 0 ? { vlan: v["lxc.vlan"] } : {}),
      ipv4: v["lxc.ipv4"],
      address: v["lxc.ipv4"].split("/")[0],
      gateway: v["lxc.gateway"],
      dns: v["lxc.dns"].length > 0 ? v["lxc.dns"] : [v["lxc.gateway"]],
      sshPublicKeys: v["lxc.sshPublicKeys"],
      sshUser: v["lxc.sshUser"],
      sshPrivateKey: secret("lxc.sshPrivateKey"),
      keyctl: v["lxc.keyctl"],
    },
    traefik: {
      image: v["traefik.image"],
      ports: {
        web: v["traefik.webPort"],
        websecure: v["traefik.websecurePort"],
        smtps: v["traefik.smtpsPort"],
        submission: v["traefik.submissionPort"],
      },
      trustedProxies: v["traefik.trustedProxies"],
      smtpAllowList: v["traefik.smtpAllowList"],
      metricsAllowList: v["traefik.metricsAllowList"],
      logLevel: v["traefik.logLevel"],
    },
    acme: {
      email: v["acme.email"],
      staging: v["acme.staging"],
      caServer: v["acme.staging"] ? ACME_CA.staging : ACME_CA.production,
      challenge,
    },
    rateLimit: {
      average: v["rateLimit.average"],
      period: v["rateLimit.period"],
      periodSeconds: parseDuration(v["rateLimit.period"])!,
      burst: v["rateLimit.burst"],
      sourceCriterion,
      inFlight: v["rateLimit.inFlight"],
      windowSeconds: parsePostfixTime(v["rateLimit.window"])!,
      authAttempts: v["rateLimit.authAttempts"],
      messages: v["rateLimit.messages"],
      exempt: v["rateLimit.exempt"],
    },
    relay: {
      image: v["relay.image"],
      hostname: v["relay.hostname"].toLowerCase(),
      upstream: {
        host: v["relay.upstreamHost"],
        port: v["relay.upstreamPort"],
        ...(v["relay.upstreamUsername"]
          ? { username: v["relay.upstreamUsername"], password: secret("relay.upstreamPassword") }
          : {}),
      },
      clientLogins: secret("relay.clientLogins"),
      allowedSenderDomains: v["relay.allowedSenderDomains"].map((d) => d.toLowerCase()),
      messageSizeLimit: v["relay.messageSizeLimit"],
      expectedBurst: v["relay.expectedBurst"],
    },
    warnings,
  };

  const hosts: HostConfig[] = [
    { proxmox: config.proxmox, lxc: config.lxc },
    ...v["edge.extraHosts"].map((text, i) => {
      const host = parseExtraHost(text)!;
      return {
        proxmox: { ...config.proxmox, node: host.node },
        lxc: {
          ...config.lxc,
          vmId: host.vmId,
          hostname: host.hostname ?? `${config.lxc.hostname}-${i + 2}`,
          ipv4: host.ipv4,
          address: host.ipv4.split("/")[0],
        },
      };
    }),
  ];
  const fail2banIgnore = [
    "127.0.0.0/8",
    "::1",
    ...v["fail2ban.ignoreIPs"],
    ...v["rateLimit.exempt"],
    ...v["traefik.trustedProxies"],
  ];
  return {
    ...config,
    hosts,
    ...(hosts.length > 1
      ? {
          redis: {
            image: v["redis.image"],
            port: v["redis.port"],
            password: secret("redis.password"),
            host: config.lxc.address,
          },
        }
      : {}),
    ...(v["fail2ban.enabled"]
      ? {
          fail2ban: {
            image: v["fail2ban.image"],
            maxRetry: v["fail2ban.maxRetry"],
            findTime: v["fail2ban.findTime"],
            banTime: v["fail2ban.banTime"],
            ignoreIPs: [...new Set(fail2banIgnore)],
          },
        }
      : {}),
  };
}

function deepFreeze<T>(value: T): T {
  if (
    value &&
    typeof value === "object" &&
    !Object.isFrozen(value) &&
    !pulumi.Output.isInstance(value)
  ) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
