import Ajv from "ajv";
import * as fs from "node:fs";
import * as path from "node:path";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import { ACME_CA, HomelabConfig } from "../config";
import { SECRETS, stackConfig, withHosts } from "./stacks";
import {
  CERT_RESOLVER,
  ENTRY_POINTS,
  RATE_LIMIT_MIDDLEWARE,
  RELAY_LISTENERS,
  TRAEFIK_DYNAMIC_DIR,
} from "../components/names";
import {
  EDGE_NETWORK,
  FILE_PROVIDER_FILE,
  PRIVATE_RANGES,
  RATE_LIMIT_FILE,
  REDIS_PASSWORD_ENV,
  fileProviderDynamic,
  fileProviderFiles,
  rateLimitFileDynamic,
  labelsToDynamic,
  mergeDynamic,
  relayLabels,
  renderYaml,
  traefikStaticConfig,
} from "../components/traefik";
import {
  SCHEMA_DIR,
  SchemaError,
  validateDynamic,
  validateReferences,
  validateStatic,
} from "../components/traefikSchema";

// ---------------------------------------------------------------------------------------
// Configurations: the example stacks, and variations of them.

const STACKS = ["dev", "prod"] as const;

/** How the client is told apart, each a case: the overrides that select it. */
const CRITERIA = [
  { name: "remote address (dev)", stack: "dev", overrides: {} },
  { name: "depth 1 (prod)", stack: "prod", overrides: {} },
  { name: "depth 2", stack: "prod", overrides: { "rateLimit.depth": 2 } },
  {
    name: "excludedIPs",
    stack: "prod",
    overrides: { "rateLimit.depth": 0, "rateLimit.excludedIPs": ["10.10.0.0/24", "fd00::/8"] },
  },
  {
    name: "remote address behind a PROXY-protocol proxy",
    stack: "prod",
    overrides: {
      "rateLimit.depth": 0,
      "rateLimit.average": 5,
      "rateLimit.period": "10s",
      "rateLimit.burst": 40,
    },
  },
] as const;

/** The dynamic configuration Traefik assembles: the relay's labels plus the file provider. */
function assembled(config: HomelabConfig, containerName = "relay"): Record<string, any> {
  return mergeDynamic(
    labelsToDynamic([{ name: containerName, labels: relayLabels(config) }]),
    fileProviderDynamic(config),
  );
}

/** Traefik's ipStrategy for a criterion, written from Traefik's documented semantics. */
function expectedIpStrategy(config: HomelabConfig): Record<string, unknown> | undefined {
  const c = config.rateLimit.sourceCriterion;
  if (c.kind === "depth") return { depth: c.depth };
  if (c.kind === "excludedIPs") return { excludedIPs: [...c.excludedIPs] };
  return undefined;
}

const paths = (errors: readonly SchemaError[]) => errors.map((e) => e.path);

// ---------------------------------------------------------------------------------------
// Static configuration.

/** The ports inside the container are fixed: the standard ports of each protocol. */
const STANDARD_PORTS = { web: 80, websecure: 443, smtps: 465, submission: 587 };

const STATIC_CASES = [
  ...STACKS.map((stack) => ({ name: stack, config: () => stackConfig(stack) })),
  { name: "dev, tls challenge", config: () => stackConfig("dev", { "acme.challenge": "tls" }) },
  { name: "dev, http challenge", config: () => stackConfig("dev", { "acme.challenge": "http" }) },
  {
    name: "prod, HTTPS on host port 8443",
    config: () => stackConfig("prod", { "traefik.websecurePort": 8443 }),
  },
  {
    name: "prod, two trusted proxies",
    config: () => stackConfig("prod", { "traefik.trustedProxies": ["10.10.0.2", "10.10.0.3"] }),
  },
];

function allKeys(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(allKeys);
  if (typeof value !== "object" || value === null) return [];
  return Object.entries(value).flatMap(([k, v]) => [k, ...allKeys(v)]);
}

describe.each(STATIC_CASES)("traefikStaticConfig: $name", ({ config: make }) => {
  const config = make();
  const stat = traefikStaticConfig(config);

  it("validates against the Traefik v3 static schema", () => {
    expect(validateStatic(stat).map(String)).toEqual([]);
  });

  it("listens on the standard ports inside the container", () => {
    for (const [ep, port] of Object.entries(STANDARD_PORTS)) {
      expect(stat.entryPoints[ENTRY_POINTS[ep as keyof typeof ENTRY_POINTS]].address).toBe(
        `:${port}`,
      );
    }
  });

  it("trusts exactly traefik.trustedProxies on every entry point, and never insecurely", () => {
    const trusted = config.traefik.trustedProxies;
    for (const [name, ep] of Object.entries<any>(stat.entryPoints)) {
      if (trusted.length === 0) {
        expect(ep.forwardedHeaders, name).toBeUndefined();
        expect(ep.proxyProtocol, name).toBeUndefined();
      } else {
        expect(ep.forwardedHeaders, name).toEqual({ trustedIPs: [...trusted] });
        expect(ep.proxyProtocol, name).toEqual({ trustedIPs: [...trusted] });
      }
    }
    expect(allKeys(stat)).not.toContain("insecure");
  });

  it("redirects HTTP to HTTPS on the port clients reach", () => {
    const redirect = stat.entryPoints[ENTRY_POINTS.web].http.redirections.entryPoint;
    expect(redirect.scheme).toBe("https");
    const port = config.traefik.ports.websecure;
    // Traefik's `to` takes an entry point (whose own port it uses) or a ":port".
    expect(redirect.to).toBe(
      port === STANDARD_PORTS.websecure ? ENTRY_POINTS.websecure : `:${port}`,
    );
  });

  it("reads only labelled containers, on the edge network, and the file-provider directory", () => {
    expect(stat.providers.docker).toMatchObject({ exposedByDefault: false, network: EDGE_NETWORK });
    expect(stat.providers.docker.endpoint).toMatch(/^unix:\/\/\/.*docker\.sock$/);
    expect(stat.providers.file).toEqual({ directory: TRAEFIK_DYNAMIC_DIR, watch: true });
  });

  it("asks Let's Encrypt with the configured account, CA and challenge", () => {
    const acme = stat.certificatesResolvers[CERT_RESOLVER].acme;
    expect(acme.email).toBe(config.acme.email);
    expect(acme.caServer).toBe(config.acme.staging ? ACME_CA.staging : ACME_CA.production);
    expect(acme.storage).toMatch(/^\/var\/lib\/traefik\/acme\.json$/);
    const challenge = config.acme.challenge;
    const challenges = Object.keys(acme).filter((k) => k.endsWith("Challenge"));
    expect(challenges).toEqual([`${challenge.type}Challenge`]);
    if (challenge.type === "dns")
      expect(acme.dnsChallenge).toEqual({ provider: challenge.provider });
    if (challenge.type === "http")
      expect(acme.httpChallenge).toEqual({ entryPoint: ENTRY_POINTS.web });
  });

  it("logs as JSON at the configured level, keeping X-Forwarded-For in the access log", () => {
    expect(stat.log.level).toBe(config.traefik.logLevel);
    expect(stat.accessLog.format).toBe("json");
    expect(stat.accessLog.fields.headers.names["X-Forwarded-For"]).toBe("keep");
  });

  it("serves /ping on a defined, loopback-only entry point", () => {
    const ep = stat.entryPoints[stat.ping.entryPoint];
    expect(ep).toBeDefined();
    expect(ep.address).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});

it("the stacks differ only where their configuration does: staging CA in dev, production in prod", () => {
  const [dev, prod] = STACKS.map(
    (s) => traefikStaticConfig(stackConfig(s)).certificatesResolvers[CERT_RESOLVER].acme,
  );
  expect(dev.caServer).toBe(ACME_CA.staging);
  expect(prod.caServer).toBe(ACME_CA.production);
});

// ---------------------------------------------------------------------------------------
// The relay's labels.

describe.each(CRITERIA)("relayLabels: $name", ({ stack, overrides }) => {
  const config = stackConfig(stack, overrides);
  const labels = relayLabels(config);
  const tree = assembled(config);

  it("translate into a dynamic configuration that validates and whose references resolve", () => {
    expect(validateDynamic(tree).map(String)).toEqual([]);
    expect(validateReferences(tree).map(String)).toEqual([]);
  });

  it("carry the rate limit exactly as configured", () => {
    const ipStrategy = expectedIpStrategy(config);
    expect(tree.http.middlewares[RATE_LIMIT_MIDDLEWARE]).toEqual({
      rateLimit: {
        average: config.rateLimit.average,
        period: config.rateLimit.period,
        burst: config.rateLimit.burst,
        ...(ipStrategy ? { sourceCriterion: { ipStrategy } } : {}),
      },
    });
  });

  it("allow-list the metrics router by the same client address the rate limit uses", () => {
    const router = tree.http.routers[Object.keys(tree.http.routers)[0]];
    const allowList = router.middlewares
      .slice(1)
      .map((m: string) => tree.http.middlewares[m])
      .find((m: any) => m.ipAllowList);
    expect(allowList.ipAllowList.sourceRange).toEqual([...PRIVATE_RANGES]);
    expect(allowList.ipAllowList.ipStrategy).toEqual(expectedIpStrategy(config));
  });

  it("route HTTPS for the relay's name to its metrics, rate limit first", () => {
    const routers = Object.values<any>(tree.http.routers);
    expect(routers).toHaveLength(1);
    const [router] = routers;
    expect(router.rule).toBe(`Host(\`${config.relay.hostname}\`)`);
    expect(router.entryPoints).toEqual([ENTRY_POINTS.websecure]);
    expect(router.tls).toEqual({ certResolver: CERT_RESOLVER });
    expect(router.middlewares[0]).toBe(RATE_LIMIT_MIDDLEWARE);
    expect(tree.http.services[router.service].loadBalancer.servers).toEqual([
      { url: `http://relay:${RELAY_LISTENERS.metrics}` },
    ]);
  });

  it("send implicit-TLS SMTP (465) and STARTTLS submission (587) to the relay with PROXY v2", () => {
    const routers = Object.values<any>(tree.tcp.routers);
    const smtps = routers.find((r) => r.entryPoints.includes(ENTRY_POINTS.smtps));
    const submission = routers.find((r) => r.entryPoints.includes(ENTRY_POINTS.submission));

    expect(smtps.rule).toBe(`HostSNI(\`${config.relay.hostname}\`)`);
    expect(smtps.tls).toEqual({ certResolver: CERT_RESOLVER });
    expect(submission.rule).toBe("HostSNI(`*`)");
    expect(submission.tls).toBeUndefined();

    for (const [router, port] of [
      [smtps, RELAY_LISTENERS.smtps],
      [submission, RELAY_LISTENERS.submission],
    ] as const) {
      const lb = tree.tcp.services[router.service].loadBalancer;
      expect(lb.servers).toEqual([{ address: `relay:${port}` }]);
      expect(lb.serversTransport).toMatch(/@file$/);
      const transport = tree.tcp.serversTransports[lb.serversTransport.replace(/@file$/, "")];
      expect(transport.proxyProtocol.version).toBe(2);
      const middlewares = router.middlewares.map((m: string) => tree.tcp.middlewares[m]);
      expect(middlewares).toContainEqual({ inFlightConn: { amount: config.rateLimit.inFlight } });
      expect(middlewares).toContainEqual({
        ipAllowList: { sourceRange: [...config.traefik.smtpAllowList] },
      });
    }
  });

  it("hold no secret", () => {
    const text = JSON.stringify(labels);
    for (const secret of Object.values(SECRETS)) expect(text).not.toContain(secret);
  });
});

describe("relayLabels, one setting at a time", () => {
  const CHANGES = [
    { key: "rateLimit.average", value: 45, label: ".ratelimit.average", expected: "45" },
    { key: "rateLimit.burst", value: 45, label: ".ratelimit.burst", expected: "45" },
    { key: "rateLimit.period", value: "90s", label: ".ratelimit.period", expected: "90s" },
    { key: "rateLimit.inFlight", value: 3, label: ".inflightconn.amount", expected: "3" },
  ];

  it.each(CHANGES)("changing $key changes exactly one label", ({ key, value, label, expected }) => {
    const before = relayLabels(stackConfig("prod"));
    const after = relayLabels(stackConfig("prod", { [key]: value }));
    const changed = Object.keys({ ...before, ...after }).filter((k) => before[k] !== after[k]);
    expect(changed).toHaveLength(1);
    expect(changed[0].endsWith(label)).toBe(true);
    expect(after[changed[0]]).toBe(expected);
  });

  it("keeps the rate-limit middleware under its shared name, so other routers can use it", () => {
    const tree = labelsToDynamic([{ name: "relay", labels: relayLabels(stackConfig("prod")) }]);
    expect(Object.keys(tree.http as object)).toContain("middlewares");
    expect((tree.http as any).middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit).toBeDefined();
  });

  it("lets the caller widen the metrics allow-list", () => {
    const tree = labelsToDynamic([
      {
        name: "relay",
        labels: relayLabels(stackConfig("dev"), { metricsAllowList: ["203.0.113.7"] }),
      },
    ]) as any;
    const lists = Object.values<any>(tree.http.middlewares).filter((m) => m.ipAllowList);
    expect(lists.map((m) => m.ipAllowList.sourceRange)).toEqual([["203.0.113.7"]]);
  });
});

// ---------------------------------------------------------------------------------------
// Labels → dynamic configuration, merge and YAML.

describe("labelsToDynamic", () => {
  // Label paths are case-insensitive; the file provider wants Traefik's own spelling.
  const CASING = [
    ["ratelimit", "rateLimit"],
    ["sourcecriterion", "sourceCriterion"],
    ["ipstrategy", "ipStrategy"],
    ["excludedips", "excludedIPs"],
    ["inflightconn", "inFlightConn"],
    ["ipallowlist", "ipAllowList"],
    ["sourcerange", "sourceRange"],
    ["certresolver", "certResolver"],
    ["loadbalancer", "loadBalancer"],
    ["serverstransport", "serversTransport"],
    ["entrypoints", "entryPoints"],
    ["RATELIMIT", "rateLimit"],
  ];

  it.each(CASING)("spells %s as %s", (label, canonical) => {
    const tree = labelsToDynamic([
      { name: "c", labels: { [`traefik.http.middlewares.m.${label}.x`]: "1" } },
    ]) as any;
    expect(Object.keys(tree.http.middlewares.m)).toEqual([canonical]);
  });

  const VALUES = [
    { label: "traefik.http.middlewares.m.ratelimit.average", text: "30", value: 30 },
    { label: "traefik.http.middlewares.m.ratelimit.burst", text: "10", value: 10 },
    { label: "traefik.http.middlewares.m.ratelimit.period", text: "1m", value: "1m" },
    {
      label: "traefik.http.middlewares.m.ratelimit.sourcecriterion.ipstrategy.depth",
      text: "2",
      value: 2,
    },
    {
      label: "traefik.http.middlewares.m.ratelimit.sourcecriterion.ipstrategy.excludedips",
      text: "10.0.0.0/8,fd00::/8",
      value: ["10.0.0.0/8", "fd00::/8"],
    },
    { label: "traefik.tcp.middlewares.m.inflightconn.amount", text: "5", value: 5 },
    { label: "traefik.tcp.routers.r.tls.passthrough", text: "true", value: true },
    { label: "traefik.tcp.routers.r.rule", text: "HostSNI(`*`)", value: "HostSNI(`*`)" },
  ];

  it.each(VALUES)("types $label=$text as the schema wants", ({ label, text, value }) => {
    const tree = labelsToDynamic([{ name: "c", labels: { [label]: text } }]);
    const leaf = label
      .split(".")
      .slice(1)
      .reduce<any>(
        (node, key) =>
          node?.[Object.keys(node).find((k) => k.toLowerCase() === key.toLowerCase())!],
        tree,
      );
    expect(leaf).toEqual(value);
  });

  it("gives a service with only a port the container as its server, as Traefik would", () => {
    const tree = labelsToDynamic([
      {
        name: "relay",
        labels: {
          "traefik.http.services.web.loadbalancer.server.port": "9154",
          "traefik.tcp.services.smtp.loadbalancer.server.port": "10587",
        },
      },
    ]) as any;
    expect(tree.http.services.web).toEqual({
      loadBalancer: { servers: [{ url: "http://relay:9154" }] },
    });
    expect(tree.tcp.services.smtp).toEqual({
      loadBalancer: { servers: [{ address: "relay:10587" }] },
    });
  });

  it("ignores labels that are not dynamic configuration", () => {
    const tree = labelsToDynamic([
      {
        name: "c",
        labels: {
          "traefik.enable": "true",
          "traefik.docker.network": "n",
          "homelab-smtp.role": "relay",
        },
      },
    ]);
    expect(tree).toEqual({});
  });

  it("refuses the same path twice in different case, as Traefik could keep either", () => {
    const labels = {
      "traefik.http.middlewares.m.ratelimit.average": "1",
      "traefik.http.middlewares.m.rateLimit.average": "2",
    };
    expect(() => labelsToDynamic([{ name: "c", labels }])).toThrow(/set twice/);
  });

  it("refuses two containers defining the same thing differently", () => {
    const a = { name: "a", labels: { "traefik.http.middlewares.m.ratelimit.average": "1" } };
    const b = { name: "b", labels: { "traefik.http.middlewares.m.ratelimit.average": "2" } };
    expect(() => labelsToDynamic([a, b])).toThrow(/\/http\/middlewares\/m\/rateLimit\/average/);
  });
});

describe("mergeDynamic", () => {
  it("merges disjoint parts and accepts the same value twice", () => {
    const a = { tcp: { routers: { r: { rule: "HostSNI(`*`)" } } } };
    const b = {
      tcp: {
        routers: { r: { rule: "HostSNI(`*`)" } },
        serversTransports: { t: { proxyProtocol: { version: 2 } } },
      },
    };
    expect(mergeDynamic(a, b)).toEqual(b);
  });

  it("names the path of a conflict", () => {
    expect(() => mergeDynamic({ tcp: { x: 1 } }, { tcp: { x: 2 } })).toThrow(/^\/tcp\/x: /);
  });

  it("does not change its inputs", () => {
    const a = { http: { routers: { a: {} } } };
    const b = { http: { routers: { b: {} } } };
    mergeDynamic(a, b);
    expect(a).toEqual({ http: { routers: { a: {} } } });
  });
});

describe("renderYaml", () => {
  it("is the same whatever order the keys were added in", () => {
    expect(renderYaml({ b: 1, a: { d: [1, 2], c: "x" } })).toBe(
      renderYaml({ a: { c: "x", d: [1, 2] }, b: 1 }),
    );
  });

  it.each(STACKS)("round-trips the %s static configuration without anchors", (stack) => {
    const stat = traefikStaticConfig(stackConfig(stack));
    const text = renderYaml(stat);
    expect(YAML.parse(text)).toEqual(stat);
    expect(text).not.toMatch(/[&*]a\d/);
  });

  it("writes a shared object twice instead of as an alias", () => {
    const shared = ["10.0.0.1"];
    const text = renderYaml({ a: { trustedIPs: shared }, b: { trustedIPs: shared } });
    expect(text).not.toMatch(/[&*]/);
    expect(YAML.parse(text)).toEqual({ a: { trustedIPs: shared }, b: { trustedIPs: shared } });
  });
});

// ---------------------------------------------------------------------------------------
// Schema validation and its handled gaps.

/** The upstream file-provider schema on its own, to show each gap is real. */
const upstream = new Ajv({ allErrors: true }).compile(
  JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, "traefik-v3-file-provider.json"), "utf8")),
);

const withRateLimit = (extra: Record<string, unknown>) => ({
  http: { middlewares: { rl: { rateLimit: { average: 10, period: "1m", burst: 5, ...extra } } } },
});

describe("schema gaps", () => {
  const redis = {
    endpoints: ["redis:6379"],
    db: 1,
    dialTimeout: "5s",
    tls: { insecureSkipVerify: false },
  };

  it("the upstream schema rejects a valid rateLimit.redis block; validateDynamic accepts it", () => {
    expect(upstream(withRateLimit({ redis }))).toBe(false);
    expect(validateDynamic(withRateLimit({ redis }))).toEqual([]);
  });

  it("the upstream schema rejects ipStrategy.ipv6Subnet; validateDynamic checks its range", () => {
    const tree = withRateLimit({ sourceCriterion: { ipStrategy: { ipv6Subnet: 64 } } });
    expect(upstream(tree)).toBe(false);
    expect(validateDynamic(tree)).toEqual([]);
  });

  it("the upstream schema lets any tcp.middlewares through; validateDynamic does not", () => {
    const tree = { tcp: { middlewares: { m: { inFlightConn: { amount: 0 } } } } };
    expect(upstream(tree)).toBe(true);
    expect(paths(validateDynamic(tree))).toEqual(["/tcp/middlewares/m/inFlightConn/amount"]);
  });

  it("the upstream schema lets a misspelt router tls key through; validateDynamic does not", () => {
    const tree = {
      tcp: { routers: { r: { rule: "HostSNI(`*`)", service: "s", tls: { certresolver: "le" } } } },
    };
    expect(upstream(tree)).toBe(true);
    expect(paths(validateDynamic(tree))).toEqual(["/tcp/routers/r/tls/certresolver"]);
  });
});

describe("validation failures name the path", () => {
  const prod = () => assembled(stackConfig("prod"));
  const STATIC_BROKEN = [
    {
      name: "misspelt entry point option",
      edit: (s: any) => (s.entryPoints.web.forwardHeaders = { trustedIPs: ["10.0.0.1"] }),
      path: "/entryPoints/web/forwardHeaders",
    },
    {
      name: "misspelt top-level section",
      edit: (s: any) => (s.certificateResolvers = {}),
      path: "/certificateResolvers",
    },
    { name: "log level not a string", edit: (s: any) => (s.log.level = 3), path: "/log/level" },
  ];

  it.each(STATIC_BROKEN)("static: $name", ({ edit, path: at }) => {
    const stat = traefikStaticConfig(stackConfig("prod"));
    edit(stat);
    const errors = validateStatic(stat);
    expect(paths(errors)).toEqual([at]);
    expect(String(errors[0])).toContain(at);
  });

  const DYNAMIC_BROKEN = [
    {
      name: "unknown key in the rate limit",
      edit: (t: any) => (t.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit.averge = 5),
      path: `/http/middlewares/${RATE_LIMIT_MIDDLEWARE}/rateLimit/averge`,
    },
    {
      name: "empty TCP sourceRange",
      edit: (t: any) =>
        (Object.values<any>(t.tcp.middlewares).find((m) => m.ipAllowList).ipAllowList.sourceRange =
          []),
      path: "/tcp/middlewares/relay-smtp-allowlist/ipAllowList/sourceRange",
    },
    {
      name: "a sourceRange entry that is no CIDR",
      edit: (t: any) =>
        (Object.values<any>(t.tcp.middlewares).find((m) => m.ipAllowList).ipAllowList.sourceRange =
          ["10.0.0.0/33"]),
      path: "/tcp/middlewares/relay-smtp-allowlist/ipAllowList/sourceRange/0",
    },
    {
      name: "inFlightConn amount 0",
      edit: (t: any) =>
        (Object.values<any>(t.tcp.middlewares).find((m) => m.inFlightConn).inFlightConn.amount = 0),
      path: "/tcp/middlewares/relay-smtp-inflight/inFlightConn/amount",
    },
    {
      name: "redis block without endpoints",
      edit: (t: any) =>
        (t.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit.redis = { db: "zero" }),
      path: `/http/middlewares/${RATE_LIMIT_MIDDLEWARE}/rateLimit/redis`,
    },
    {
      name: "redis with average 0",
      edit: (t: any) =>
        Object.assign(t.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit, {
          average: 0,
          redis: { endpoints: ["r:6379"] },
        }),
      path: `/http/middlewares/${RATE_LIMIT_MIDDLEWARE}/rateLimit/average`,
    },
    {
      name: "ipv6Subnet out of range",
      edit: (t: any) =>
        (t.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit.sourceCriterion.ipStrategy.ipv6Subnet =
          200),
      path: `/http/middlewares/${RATE_LIMIT_MIDDLEWARE}/rateLimit/sourceCriterion/ipStrategy/ipv6Subnet`,
    },
    {
      name: "PROXY protocol version 3",
      edit: (t: any) => (Object.values<any>(t.tcp.serversTransports)[0].proxyProtocol.version = 3),
      path: "/tcp/serversTransports/relay-proxy-v2/proxyProtocol/version",
    },
    {
      name: "a section Traefik does not know",
      edit: (t: any) => (t.http.serverTransports = {}),
      path: "/http/serverTransports",
    },
  ];

  it.each(DYNAMIC_BROKEN)("dynamic: $name", ({ edit, path: at }) => {
    const tree = prod();
    edit(tree);
    const errors = validateDynamic(tree);
    expect(paths(errors)).toContain(at);
    expect(errors.map(String).join("\n")).toContain(at);
  });

  it("the redis errors say what is wrong inside the block", () => {
    const tree = prod();
    tree.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit.redis = {
      endpoints: ["r:6379"],
      db: "zero",
    };
    expect(validateDynamic(tree).map(String)).toEqual([
      `/http/middlewares/${RATE_LIMIT_MIDDLEWARE}/rateLimit/redis/db: must be integer`,
    ]);
  });

  it("a router that names a middleware nobody defines is reported", () => {
    const tree = prod();
    tree.http.routers[Object.keys(tree.http.routers)[0]].middlewares.push("missing@docker");
    expect(validateReferences(tree).map(String)).toEqual([
      expect.stringMatching(
        /^\/http\/routers\/[^/]+\/middlewares\/2: no http middleware "missing@docker"$/,
      ),
    ]);
  });
});

// ---------------------------------------------------------------------------------------
// Several edges: one rate limiter, its buckets in the shared Redis.

/** The rate limiter and the router as one edge's Traefik assembles them (labels + files). */
function assembledWithFiles(config: HomelabConfig): Record<string, any> {
  return fileProviderFiles(config).reduce(
    (tree, { dynamic }) => mergeDynamic(tree, dynamic),
    labelsToDynamic([{ name: "relay", labels: relayLabels(config) }]),
  );
}

describe.each(CRITERIA)("with several edges: $name", ({ stack, overrides }) => {
  // A second Docker host makes the stack share its buckets through Redis.
  const config = withHosts(stack, 1, overrides);
  const tree = assembledWithFiles(config);

  it("defines the rate limiter once, in the file provider, with the same limits as labels would", () => {
    const labels = relayLabels(config);
    expect(Object.keys(labels).filter((k) => /\.ratelimit\./i.test(k))).toEqual([]);
    const ipStrategy = expectedIpStrategy(config);
    const { redis, ...limits } = tree.http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit;
    expect(limits).toEqual({
      average: config.rateLimit.average,
      period: config.rateLimit.period,
      burst: config.rateLimit.burst,
      ...(ipStrategy ? { sourceCriterion: { ipStrategy } } : {}),
    });
    expect(redis.endpoints).toEqual([`${config.redis!.host}:${config.redis!.port}`]);
  });

  it("points the router at the file provider's rate limiter, still first", () => {
    const [router] = Object.values<any>(tree.http.routers);
    expect(router.middlewares[0]).toBe(`${RATE_LIMIT_MIDDLEWARE}@file`);
  });

  it("validates (the redis block through the project's own schema) and its references resolve", () => {
    expect(validateDynamic(tree).map(String)).toEqual([]);
    expect(validateReferences(tree).map(String)).toEqual([]);
  });
});

describe("the rate-limit file", () => {
  const config = withHosts("prod", 1);

  it("reaches Redis on the first host's address", () => {
    expect(config.redis!.host).toBe(config.hosts[0].lxc.address);
    const redis = (rateLimitFileDynamic(config) as any).http.middlewares[RATE_LIMIT_MIDDLEWARE]
      .rateLimit.redis;
    expect(redis.endpoints).toEqual([`${config.hosts[0].lxc.address}:${config.redis!.port}`]);
  });

  it("holds a template reading the password from Traefik's environment, never the password", () => {
    const files = fileProviderFiles(config);
    expect(files.map((f) => f.file)).toEqual([FILE_PROVIDER_FILE, RATE_LIMIT_FILE]);
    const text = renderYaml(files[1].dynamic);
    expect(text).not.toContain(SECRETS["redis.password"]);
    const parsed = YAML.parse(text).http.middlewares[RATE_LIMIT_MIDDLEWARE].rateLimit.redis;
    // Go template syntax for sprig's env function, as Traefik's file provider runs it.
    expect(parsed.password).toMatch(new RegExp(`^\\{\\{ env "${REDIS_PASSWORD_ENV}" \\}\\}$`));
    // Single-quoted in YAML, so the rendered password lands inside a quoted string.
    expect(text).toContain(`'${parsed.password}'`);
  });

  it("is refused with average 0: Traefik's Redis limiter would answer every request with 429", () => {
    const zero = { ...config, rateLimit: { ...config.rateLimit, average: 0 } };
    expect(() => rateLimitFileDynamic(zero)).toThrow(/rateLimit\.average is 0 .*429/);
  });

  it("does not exist with a single edge: the labels keep the limiter in memory, as before", () => {
    const single = stackConfig("prod");
    expect(single.redis).toBeUndefined();
    expect(rateLimitFileDynamic(single)).toBeUndefined();
    expect(fileProviderFiles(single).map((f) => f.file)).toEqual([FILE_PROVIDER_FILE]);
    const labels = relayLabels(single);
    expect(labels[`traefik.http.routers.relay-metrics.middlewares`].split(",")[0]).toBe(
      RATE_LIMIT_MIDDLEWARE,
    );
  });
});
