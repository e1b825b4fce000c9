/**
 * Traefik, as pure functions of the stack configuration: the static configuration, the
 * labels the relay container carries, the file-provider part, and the dynamic configuration
 * Traefik builds from both. The Edge component and the offline render use these; nothing
 * here touches Pulumi.
 */
import YAML from "yaml";
import type { HomelabConfig, SourceCriterion } from "../config";
import { dynamicKeyIndex } from "./traefikSchema";
import {
  CERT_RESOLVER,
  ENTRY_POINTS,
  RATE_LIMIT_MIDDLEWARE,
  RELAY_LISTENERS,
  TRAEFIK_DYNAMIC_DIR,
} from "./names";

/** The Docker network Traefik and the relay share; Traefik reaches containers only there. */
export const EDGE_NETWORK = "homelab-smtp-edge";

/** Ports inside the Traefik container; the host ports come from traefik.*Port. */
export const CONTAINER_PORTS = { web: 80, websecure: 443, smtps: 465, submission: 587 } as const;

/** Loopback-only entry point that serves /ping to the container's healthcheck. */
export const PING_ENTRY_POINT = { name: "ping", address: "127.0.0.1:8082" } as const;

/** Where the ACME account and certificates persist (a Docker volume is mounted on the directory). */
export const ACME_STORAGE = "/var/lib/traefik/acme.json";

export const DOCKER_SOCKET = "/var/run/docker.sock";

/** The file-provider file uploaded into TRAEFIK_DYNAMIC_DIR. */
export const FILE_PROVIDER_FILE = "relay-transport.yml";

/** The file that defines the rate limiter when its buckets live in Redis (several edges). */
export const RATE_LIMIT_FILE = "relay-ratelimit.yml";

/** The Traefik container's variable holding the Redis password (a secret environment value). */
export const REDIS_PASSWORD_ENV = "TRAEFIK_REDIS_PASSWORD";

/**
 * What the rate-limit file says instead of the password: Traefik's file provider runs every
 * file of its directory through Go's text/template with the sprig functions, `env` included,
 * before parsing it, so the password exists only in Traefik's memory.
 */
export const REDIS_PASSWORD_TEMPLATE = `{{ env "${REDIS_PASSWORD_ENV}" }}`;

/** TCP serversTransport that prefixes every connection to the relay with a PROXY v2 header. */
export const PROXY_TRANSPORT = "relay-proxy-v2";

/** Routers, services and middlewares the relay's labels define. */
export const RELAY_NAMES = {
  metricsRouter: "relay-metrics",
  metricsService: "relay-metrics",
  metricsAllowList: "relay-metrics-allowlist",
  smtpsRouter: "relay-smtps",
  smtpsService: "relay-smtps",
  submissionRouter: "relay-submission",
  submissionService: "relay-submission",
  smtpAllowList: "relay-smtp-allowlist",
  smtpInFlight: "relay-smtp-inflight",
} as const;

/** Loopback and the private LAN ranges (Pulumi.yaml's default for traefik.metricsAllowList). */
export const PRIVATE_RANGES: readonly string[] = [
  "127.0.0.0/8",
  "10.0.0.0/8",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "::1/128",
  "fc00::/7",
];

/** A dynamic-configuration tree (what the file provider reads). */
export type DynamicConfig = { [key: string]: unknown };

// ---------------------------------------------------------------------------------------
// Static configuration.

/**
 * The static configuration (traefik.yml). Every entry point trusts exactly
 * traefik.trustedProxies for X-Forwarded-* and PROXY headers, and nothing when the list is
 * empty: `insecure` is never set, since it would let any client pick its own rate-limit bucket.
 */
export function traefikStaticConfig(config: HomelabConfig): Record<string, any> {
  const trust = trustBlocks(config.traefik.trustedProxies);
  const websecurePort = config.traefik.ports.websecure;

  // The redirect goes to the port clients see, which is the host port, not the container's.
  const redirectTo = websecurePort === 443 ? ENTRY_POINTS.websecure : `:${websecurePort}`;

  return {
    global: { checkNewVersion: false, sendAnonymousUsage: false },
    log: { level: config.traefik.logLevel, format: "json" },
    accessLog: {
      format: "json",
      fields: { headers: { defaultMode: "drop", names: { "X-Forwarded-For": "keep" } } },
    },
    ping: { entryPoint: PING_ENTRY_POINT.name },
    entryPoints: {
      // asDefault keeps HTTP routers without entryPoints off the SMTP ports: an HTTP router
      // there would make Traefik wait for the client to speak first, and SMTP servers do.
      [ENTRY_POINTS.web]: {
        address: `:${CONTAINER_PORTS.web}`,
        asDefault: true,
        http: {
          redirections: { entryPoint: { to: redirectTo, scheme: "https", permanent: true } },
        },
        ...trust,
      },
      [ENTRY_POINTS.websecure]: {
        address: `:${CONTAINER_PORTS.websecure}`,
        asDefault: true,
        ...trust,
      },
      [ENTRY_POINTS.smtps]: { address: `:${CONTAINER_PORTS.smtps}`, ...trust },
      [ENTRY_POINTS.submission]: { address: `:${CONTAINER_PORTS.submission}`, ...trust },
      [PING_ENTRY_POINT.name]: { address: PING_ENTRY_POINT.address, ...trust },
    },
    providers: {
      docker: {
        endpoint: `unix://${DOCKER_SOCKET}`,
        exposedByDefault: false,
        network: EDGE_NETWORK,
        watch: true,
      },
      file: { directory: TRAEFIK_DYNAMIC_DIR, watch: true },
    },
    certificatesResolvers: {
      [CERT_RESOLVER]: {
        acme: {
          email: config.acme.email,
          storage: ACME_STORAGE,
          caServer: config.acme.caServer,
          ...acmeChallenge(config),
        },
      },
    },
  };
}

function trustBlocks(trustedProxies: readonly string[]): Record<string, unknown> {
  if (trustedProxies.length === 0) return {};
  return {
    forwardedHeaders: { trustedIPs: [...trustedProxies] },
    proxyProtocol: { trustedIPs: [...trustedProxies] },
  };
}

function acmeChallenge(config: HomelabConfig): Record<string, unknown> {
  const challenge = config.acme.challenge;
  switch (challenge.type) {
    case "dns":
      return { dnsChallenge: { provider: challenge.provider } };
    case "tls":
      return { tlsChallenge: {} };
    case "http":
      return { httpChallenge: { entryPoint: ENTRY_POINTS.web } };
  }
}

// ---------------------------------------------------------------------------------------
// The relay's labels.

export interface RelayLabelOptions {
  /** Who may read the relay's metrics over HTTPS. Defaults to traefik.metricsAllowList. */
  metricsAllowList?: readonly string[];
}

/**
 * Every Traefik label on the relay container: the shared HTTP rate limit, the HTTPS
 * router to the relay's metrics, and the two SMTP routers. The role label is the relay
 * component's business.
 */
export function relayLabels(
  config: HomelabConfig,
  options: RelayLabelOptions = {},
): Record<string, string> {
  return {
    "traefik.enable": "true",
    "traefik.docker.network": EDGE_NETWORK,
    ...httpLabels(config, options.metricsAllowList ?? config.traefik.metricsAllowList),
    ...tcpLabels(config),
  };
}

function httpLabels(
  config: HomelabConfig,
  metricsAllowList: readonly string[],
): Record<string, string> {
  const { rateLimit } = config;
  const rl = `traefik.http.middlewares.${RATE_LIMIT_MIDDLEWARE}.ratelimit`;
  const allow = `traefik.http.middlewares.${RELAY_NAMES.metricsAllowList}.ipallowlist`;
  const router = `traefik.http.routers.${RELAY_NAMES.metricsRouter}`;

  // With Redis the limiter needs a password, which labels cannot carry: it is defined once,
  // in the file provider (rateLimitFileDynamic), and the router names it there.
  const rateLimitLabels = config.redis
    ? {}
    : {
        [`${rl}.average`]: String(rateLimit.average),
        [`${rl}.period`]: rateLimit.period,
        [`${rl}.burst`]: String(rateLimit.burst),
        ...ipStrategyLabels(`${rl}.sourcecriterion.ipstrategy`, rateLimit.sourceCriterion),
      };
  const rateLimitRef = config.redis ? `${RATE_LIMIT_MIDDLEWARE}@file` : RATE_LIMIT_MIDDLEWARE;

  return {
    ...rateLimitLabels,

    // Same client as the rate limit sees: behind a proxy, the remote address is the proxy's.
    [`${allow}.sourcerange`]: metricsAllowList.join(","),
    ...ipStrategyLabels(`${allow}.ipstrategy`, rateLimit.sourceCriterion),

    [`${router}.rule`]: `Host(\`${config.relay.hostname}\`)`,
    [`${router}.entrypoints`]: ENTRY_POINTS.websecure,
    [`${router}.tls.certresolver`]: CERT_RESOLVER,
    [`${router}.middlewares`]: [rateLimitRef, RELAY_NAMES.metricsAllowList].join(","),
    [`${router}.service`]: RELAY_NAMES.metricsService,
    [`traefik.http.services.${RELAY_NAMES.metricsService}.loadbalancer.server.port`]: String(
      RELAY_LISTENERS.metrics,
    ),
  };
}

/** ipStrategyOf as labels under `prefix` (lists comma-separated). */
function ipStrategyLabels(prefix: string, criterion: SourceCriterion): Record<string, string> {
  return Object.fromEntries(
    Object.entries(ipStrategyOf(criterion) ?? {}).map(([key, value]) => [
      `${prefix}.${key.toLowerCase()}`,
      Array.isArray(value) ? value.join(",") : String(value),
    ]),
  );
}

function tcpLabels(config: HomelabConfig): Record<string, string> {
  const middlewares = [RELAY_NAMES.smtpAllowList, RELAY_NAMES.smtpInFlight].join(",");
  const smtps = `traefik.tcp.routers.${RELAY_NAMES.smtpsRouter}`;
  const submission = `traefik.tcp.routers.${RELAY_NAMES.submissionRouter}`;
  const service = (name: string, port: number) => ({
    [`traefik.tcp.services.${name}.loadbalancer.server.port`]: String(port),
    [`traefik.tcp.services.${name}.loadbalancer.serverstransport`]: `${PROXY_TRANSPORT}@file`,
  });

  return {
    [`traefik.tcp.middlewares.${RELAY_NAMES.smtpAllowList}.ipallowlist.sourcerange`]:
      config.traefik.smtpAllowList.join(","),
    [`traefik.tcp.middlewares.${RELAY_NAMES.smtpInFlight}.inflightconn.amount`]: String(
      config.rateLimit.inFlight,
    ),

    // 465: Traefik terminates the implicit TLS and hands plain SMTP to the relay.
    [`${smtps}.rule`]: `HostSNI(\`${config.relay.hostname}\`)`,
    [`${smtps}.entrypoints`]: ENTRY_POINTS.smtps,
    [`${smtps}.tls.certresolver`]: CERT_RESOLVER,
    [`${smtps}.middlewares`]: middlewares,
    [`${smtps}.service`]: RELAY_NAMES.smtpsService,
    ...service(RELAY_NAMES.smtpsService, RELAY_LISTENERS.smtps),

    // 587: STARTTLS cannot be terminated by Traefik, so the bytes pass through untouched.
    [`${submission}.rule`]: "HostSNI(`*`)",
    [`${submission}.entrypoints`]: ENTRY_POINTS.submission,
    [`${submission}.middlewares`]: middlewares,
    [`${submission}.service`]: RELAY_NAMES.submissionService,
    ...service(RELAY_NAMES.submissionService, RELAY_LISTENERS.submission),
  };
}

// ---------------------------------------------------------------------------------------
// The file-provider part.

/**
 * What only the file provider can define: the TCP serversTransport that sends PROXY v2 to
 * the relay (labels can only reference it). The stack configuration does not change it.
 */
export function fileProviderDynamic(_config: HomelabConfig): DynamicConfig {
  return { tcp: { serversTransports: { [PROXY_TRANSPORT]: { proxyProtocol: { version: 2 } } } } };
}

/**
 * The rate limiter with its buckets in the shared Redis, or undefined with a single edge (the
 * labels define it then, in memory). Every edge gets the same file, so every Traefik keys its
 * buckets the same way and a client's budget is one budget, whichever edge it reaches.
 */
export function rateLimitFileDynamic(config: HomelabConfig): DynamicConfig | undefined {
  const { redis, rateLimit } = config;
  if (!redis) return undefined;
  if (rateLimit.average <= 0) {
    throw new Error(
      `rateLimit.average is ${rateLimit.average} with a shared Redis; expected a rate above 0: ` +
        "Traefik's Redis limiter answers every request with 429 when average is 0",
    );
  }
  const ipStrategy = ipStrategyOf(rateLimit.sourceCriterion);
  return {
    http: {
      middlewares: {
        [RATE_LIMIT_MIDDLEWARE]: {
          rateLimit: {
            average: rateLimit.average,
            period: rateLimit.period,
            burst: rateLimit.burst,
            ...(ipStrategy ? { sourceCriterion: { ipStrategy } } : {}),
            redis: {
              endpoints: [`${redis.host}:${redis.port}`],
              password: REDIS_PASSWORD_TEMPLATE,
              db: 0,
            },
          },
        },
      },
    },
  };
}

/** Who the limiter counts as the client; nothing for the connecting address, Traefik's default. */
function ipStrategyOf(criterion: SourceCriterion): Record<string, unknown> | undefined {
  switch (criterion.kind) {
    case "remoteAddr":
      return undefined;
    case "depth":
      return { depth: criterion.depth };
    case "excludedIPs":
      return { excludedIPs: [...criterion.excludedIPs] };
  }
}

/** Every file the edge uploads into TRAEFIK_DYNAMIC_DIR, by file name, in upload order. */
export function fileProviderFiles(
  config: HomelabConfig,
): { file: string; dynamic: DynamicConfig }[] {
  const rateLimit = rateLimitFileDynamic(config);
  return [
    { file: FILE_PROVIDER_FILE, dynamic: fileProviderDynamic(config) },
    ...(rateLimit ? [{ file: RATE_LIMIT_FILE, dynamic: rateLimit }] : []),
  ];
}

// ---------------------------------------------------------------------------------------
// Labels → dynamic configuration.

export interface LabelledContainer {
  /** The container's name; it stands in for the address Traefik would read from Docker. */
  name: string;
  labels: Record<string, string>;
}

const SECTIONS: Readonly<Record<string, string>> = {
  routers: "routers",
  services: "services",
  middlewares: "middlewares",
  serverstransports: "serversTransports",
};

/** Keys that exist only in labels: loadbalancer.server.{port,scheme} become servers[]. */
const LABEL_ONLY = new Set(["server", "port"]);

/**
 * The dynamic configuration Traefik's Docker provider builds from these containers'
 * labels, with Traefik's key casing and value types. A service given only a port gets
 * the server Traefik would create, with the container name in place of its address
 * (`http://<name>:<port>` for HTTP, `<name>:<port>` for TCP): placeholders, since the
 * address is known only once the container runs.
 */
export function labelsToDynamic(containers: readonly LabelledContainer[]): DynamicConfig {
  let tree: DynamicConfig = {};
  for (const container of containers) {
    const own: DynamicConfig = {};
    for (const [key, value] of Object.entries(container.labels)) {
      const segments = key.split(".");
      if (segments[0].toLowerCase() !== "traefik" || !/^(http|tcp|udp)$/i.test(segments[1] ?? ""))
        continue;
      const [protocol, section, name, ...rest] = segments.slice(1);
      const sectionKey = SECTIONS[section?.toLowerCase()];
      if (!sectionKey || !name || rest.length === 0)
        throw new Error(`label ${key}: not a Traefik configuration path`);
      const leaf = rest.map(canonicalKey);
      setPath(
        own,
        [protocol.toLowerCase(), sectionKey, name, ...leaf],
        typedValue(leaf[leaf.length - 1], value),
        key,
      );
    }
    expandServers(own, container.name);
    tree = mergeDynamic(tree, own);
  }
  return tree;
}

function canonicalKey(segment: string): string {
  const lower = segment.toLowerCase();
  if (LABEL_ONLY.has(lower)) return lower;
  return dynamicKeyIndex().get(lower)?.canonical ?? segment;
}

/** Label values are text; the file provider wants the types the schema gives the key. */
function typedValue(key: string, text: string): unknown {
  const kinds = dynamicKeyIndex().get(key.toLowerCase())?.kinds;
  if (!kinds || LABEL_ONLY.has(key)) return text;
  if (kinds.has("array")) return text.split(",").map((item) => item.trim());
  if ((kinds.has("integer") || kinds.has("number")) && /^-?\d+(\.\d+)?$/.test(text))
    return Number(text);
  if (kinds.has("boolean") && /^(true|false)$/i.test(text)) return text.toLowerCase() === "true";
  return text;
}

function setPath(
  tree: DynamicConfig,
  keys: readonly string[],
  value: unknown,
  label: string,
): void {
  let node = tree as Record<string, unknown>;
  for (const key of keys.slice(0, -1)) {
    const next = node[key] ?? {};
    if (typeof next !== "object" || Array.isArray(next))
      throw new Error(`label ${label}: ${key} already has a value`);
    node[key] = next;
    node = next as Record<string, unknown>;
  }
  const last = keys[keys.length - 1];
  if (last in node) throw new Error(`label ${label}: set twice (labels are case-insensitive)`);
  node[last] = value;
}

function expandServers(tree: DynamicConfig, containerName: string): void {
  for (const protocol of ["http", "tcp"] as const) {
    const services = (tree[protocol] as any)?.services ?? {};
    for (const service of Object.values<any>(services)) {
      const server = service.loadBalancer?.server;
      if (!server) continue;
      const host = `${containerName}:${server.port}`;
      service.loadBalancer.servers = [
        protocol === "http" ? { url: `${server.scheme ?? "http"}://${host}` } : { address: host },
      ];
      delete service.loadBalancer.server;
    }
  }
}

/**
 * Deep merge of two dynamic configurations (the Docker and the file provider's parts).
 * The same key with two different values is an error: Traefik would drop both.
 */
export function mergeDynamic(a: DynamicConfig, b: DynamicConfig, at = ""): DynamicConfig {
  const merged: DynamicConfig = { ...a };
  for (const [key, value] of Object.entries(b)) {
    const here = `${at}/${key}`;
    const mine = merged[key];
    if (mine === undefined) merged[key] = value;
    else if (isPlainObject(mine) && isPlainObject(value))
      merged[key] = mergeDynamic(mine, value, here);
    else if (JSON.stringify(mine) !== JSON.stringify(value)) {
      throw new Error(
        `${here}: defined twice with different values (${JSON.stringify(mine)} and ${JSON.stringify(value)})`,
      );
    }
  }
  return merged;
}

const isPlainObject = (v: unknown): v is DynamicConfig =>
  typeof v === "object" && v !== null && !Array.isArray(v);

// ---------------------------------------------------------------------------------------
// YAML.

/**
 * Deterministic YAML: keys sorted, no anchors for values that happen to be shared, no line
 * folding (a folded rule or address would still parse, but diffs would be noisy).
 */
export function renderYaml(value: unknown): string {
  return YAML.stringify(value, {
    sortMapEntries: true,
    aliasDuplicateObjects: false,
    lineWidth: 0,
  });
}
