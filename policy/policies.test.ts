/**
 * The policy pack without the Pulumi CLI: each policy's validateResource / validateStack is
 * called with the argument objects the policy SDK builds (properties wrapped in its
 * unknown-checking proxy), for a compliant stack and for each way of breaking a rule.
 * The compliant stack is derived from the example stack files and the names the program uses.
 */
import type {
  PolicyResource,
  ReportViolation,
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationArgs,
  StackValidationPolicy,
} from "@pulumi/policy";
import * as sdkProxy from "@pulumi/policy/proxy";
import { describe, expect, it, vi } from "vitest";
import { stringify } from "yaml";

import {
  CERT_RESOLVER,
  ENTRY_POINTS,
  RATE_LIMIT_MIDDLEWARE,
  RELAY_LISTENERS,
  ROLE_LABEL,
  TRAEFIK_DYNAMIC_DIR,
  TRAEFIK_STATIC_PATH,
} from "../components/names";
import { ACME_CA, PROJECT, loadStackFile, parseConfig, type HomelabConfig } from "../config";
import {
  dockerNotExposedByDefault,
  edgeRateLimitFirst,
  noUntrustedForwarding,
  policies,
  productionRealCa,
  relayNoHostPort,
} from "./policies";
import { CONTAINER_TYPE, MIN_TRUSTED_PREFIX, stackOfUrn, tooBroadTrust } from "./rules";

/** The SDK's proxy module; its .d.ts declares nothing, though index.d.ts re-exports from it. */
interface SdkProxy {
  unknownCheckingProxy<T extends object>(value: T): T;
  UnknownValueError: new (...args: never[]) => Error;
  unknownStringValue: unknown;
}
const { unknownCheckingProxy, UnknownValueError, unknownStringValue } =
  sdkProxy as unknown as SdkProxy;

const prod = parseConfig(loadStackFile("prod"), { allowUnsetSecrets: true });
const dev = parseConfig(loadStackFile("dev"), { allowUnsetSecrets: true });

type Props = Record<string, any>;

interface Resource {
  type: string;
  name: string;
  props: Props;
}

const urnOf = (stack: string, r: Resource) =>
  `urn:pulumi:${stack}::${PROJECT}::${r.type}::${r.name}`;

function resourceArgs(resource: Resource, stack: string): ResourceValidationArgs {
  return {
    type: resource.type,
    name: resource.name,
    urn: urnOf(stack, resource),
    props: unknownCheckingProxy(resource.props),
    opts: {
      protect: false,
      ignoreChanges: [],
      aliases: [],
      customTimeouts: { createSeconds: 0, updateSeconds: 0, deleteSeconds: 0 },
      additionalSecretOutputs: [],
    },
    stackTags: new Map(),
    isType: () => false,
    asType: () => undefined,
    getConfig: <T extends object>() => ({}) as T,
    notApplicable: (reason?: string): never => {
      throw new Error(`not applicable: ${reason}`);
    },
  };
}

function stackArgs(resources: Resource[], stack: string): StackValidationArgs {
  return {
    resources: resources.map((r) => {
      const args = resourceArgs(r, stack);
      return {
        ...args,
        parent: undefined,
        dependencies: [],
        propertyDependencies: {},
      } as unknown as PolicyResource;
    }),
    stackTags: new Map(),
    getConfig: <T extends object>() => ({}) as T,
    notApplicable: (reason?: string): never => {
      throw new Error(`not applicable: ${reason}`);
    },
  };
}

/** Runs a resource policy over every resource; returns what it reported, by resource name. */
async function runResourcePolicy(
  policy: ResourceValidationPolicy,
  resources: Resource[],
  stack: string,
) {
  const reported: { resource: string; message: string }[] = [];
  for (const resource of resources) {
    const spy = vi.fn<ReportViolation>();
    const validations = [policy.validateResource ?? []].flat();
    for (const validate of validations) await validate(resourceArgs(resource, stack), spy);
    for (const [message] of spy.mock.calls) reported.push({ resource: resource.name, message });
  }
  return reported;
}

async function runStackPolicy(policy: StackValidationPolicy, resources: Resource[], stack: string) {
  const spy = vi.fn<ReportViolation>();
  await policy.validateStack(stackArgs(resources, stack), spy);
  return spy.mock.calls.map(([message, urn]) => ({ message, urn }));
}

// ---------------------------------------------------------------------------------------
// A compliant stack, from the stack configuration.

const labels = (entries: Record<string, string>) =>
  Object.entries(entries).map(([label, value]) => ({ label, value }));

function staticConfig(config: HomelabConfig): Props {
  const trust = () =>
    config.traefik.trustedProxies.length > 0
      ? { trustedIPs: [...config.traefik.trustedProxies] }
      : {};
  const entryPoint = (port: number) => ({
    address: `:${port}`,
    forwardedHeaders: trust(),
    proxyProtocol: trust(),
  });
  return {
    entryPoints: {
      [ENTRY_POINTS.web]: entryPoint(config.traefik.ports.web),
      [ENTRY_POINTS.websecure]: entryPoint(config.traefik.ports.websecure),
      [ENTRY_POINTS.smtps]: entryPoint(config.traefik.ports.smtps),
      [ENTRY_POINTS.submission]: entryPoint(config.traefik.ports.submission),
    },
    providers: {
      docker: { exposedByDefault: false },
      file: { directory: TRAEFIK_DYNAMIC_DIR },
    },
    certificatesResolvers: {
      [CERT_RESOLVER]: {
        acme: {
          email: config.acme.email,
          storage: "/acme/acme.json",
          caServer: config.acme.caServer,
        },
      },
    },
  };
}

function dynamicConfig(config: HomelabConfig): Props {
  return {
    http: {
      middlewares: {
        [RATE_LIMIT_MIDDLEWARE]: {
          rateLimit: {
            average: config.rateLimit.average,
            period: config.rateLimit.period,
            burst: config.rateLimit.burst,
          },
        },
      },
      routers: {
        dashboard: {
          rule: `Host(\`${config.relay.hostname}\`)`,
          entryPoints: [ENTRY_POINTS.websecure],
          middlewares: [`${RATE_LIMIT_MIDDLEWARE}@file`],
          service: "api@internal",
        },
      },
    },
  };
}

function edge(config: HomelabConfig, change: (s: Props, d: Props) => void = () => {}): Resource {
  const [s, d] = [staticConfig(config), dynamicConfig(config)];
  change(s, d);
  return {
    type: CONTAINER_TYPE,
    name: "edge-traefik",
    props: {
      labels: labels({ [ROLE_LABEL]: "edge" }),
      ports: Object.values(config.traefik.ports).map((port) => ({
        internal: port,
        external: port,
      })),
      uploads: [
        { file: TRAEFIK_STATIC_PATH, content: stringify(s) },
        { file: `${TRAEFIK_DYNAMIC_DIR}/edge.yml`, content: stringify(d) },
      ],
    },
  };
}

function relayLabels(config: HomelabConfig): Record<string, string> {
  const m = `traefik.http.middlewares.${RATE_LIMIT_MIDDLEWARE}.ratelimit`;
  return {
    [ROLE_LABEL]: "relay",
    "traefik.enable": "true",
    [`${m}.average`]: String(config.rateLimit.average),
    [`${m}.period`]: config.rateLimit.period,
    [`${m}.burst`]: String(config.rateLimit.burst),
    "traefik.http.routers.relay-mta-sts.rule": `Host(\`${config.relay.hostname}\`)`,
    "traefik.http.routers.relay-mta-sts.middlewares": `${RATE_LIMIT_MIDDLEWARE}@docker`,
    "traefik.tcp.routers.relay-submission.entrypoints": ENTRY_POINTS.submission,
    "traefik.tcp.routers.relay-submission.rule": "HostSNI(`*`)",
  };
}

function relay(
  config: HomelabConfig,
  change: (l: Record<string, string>, p: Props) => void = () => {},
): Resource {
  const l = relayLabels(config);
  const props: Props = { networkMode: "bridge", ports: [] };
  change(l, props);
  return { type: CONTAINER_TYPE, name: "relay-postfix", props: { ...props, labels: labels(l) } };
}

function metrics(change: (p: Props) => void = () => {}): Resource {
  const props: Props = {
    labels: labels({ [ROLE_LABEL]: "relay-metrics" }),
    networkMode: "container:relay-postfix",
  };
  change(props);
  return { type: CONTAINER_TYPE, name: "relay-metrics", props };
}

const compliant = (config: HomelabConfig) => [edge(config), relay(config), metrics()];

function withUpload(resource: Resource, upload: { file: string; content: string }): Resource {
  const uploads = [...(resource.props.uploads ?? []), upload];
  return { ...resource, props: { ...resource.props, uploads } };
}

// ---------------------------------------------------------------------------------------

describe("the pack", () => {
  it("has five mandatory policies with distinct names, each with a description and a fix", () => {
    expect(new Set(policies.map((p) => p.name)).size).toBe(5);
    for (const policy of policies) {
      expect(policy.enforcementLevel).toBe("mandatory");
      expect(policy.description.length).toBeGreaterThan(20);
      expect(policy.remediationSteps?.length).toBeGreaterThan(10);
    }
  });

  it.each([
    ["prod", prod],
    ["dev", dev],
  ])("stays quiet on the compliant %s stack", async (stack, config) => {
    const resources = compliant(config);
    for (const policy of policies) {
      const reported =
        "validateStack" in policy
          ? await runStackPolicy(policy, resources, stack)
          : await runResourcePolicy(policy, resources, stack);
      expect(reported, policy.name).toEqual([]);
    }
  });

  it("ignores resources that are not Docker containers", async () => {
    const other = {
      type: "proxmoxve:CT/containerLegacy:ContainerLegacy",
      name: "lxc",
      props: { ports: [{ internal: 1 }] },
    };
    for (const policy of policies.filter((p) => "validateResource" in p)) {
      expect(await runResourcePolicy(policy as ResourceValidationPolicy, [other], "prod")).toEqual(
        [],
      );
    }
  });

  it("reads the stack name from a URN", () => {
    expect(stackOfUrn(urnOf("prod-eu", edge(prod)))).toBe("prod-eu");
    expect(stackOfUrn("not a urn")).toBeUndefined();
  });
});

describe("relay-no-host-port", () => {
  const port = prod.traefik.ports.submission;
  const { submission, metrics: metricsPort } = RELAY_LISTENERS;
  it.each<[string, Resource, RegExp]>([
    [
      "a published submission port",
      relay(prod, (_, p) => (p.ports = [{ internal: submission, external: port }])),
      new RegExp(`host port ${port}`),
    ],
    [
      "a port with a host port Docker picks",
      relay(prod, (_, p) => (p.ports = [{ internal: submission }])),
      /a host port Docker picks/,
    ],
    ["host networking", relay(prod, (_, p) => (p.networkMode = "host")), /networkMode "host"/],
    [
      "a published metrics port",
      metrics((p) => (p.ports = [{ internal: metricsPort, external: metricsPort }])),
      new RegExp(`relay-metrics.*host port ${metricsPort}`),
    ],
  ])("fires on %s", async (_, resource, message) => {
    const reported = await runResourcePolicy(relayNoHostPort, [resource], "prod");
    expect(reported).toHaveLength(1);
    expect(reported[0].message).toMatch(message);
    expect(reported[0].message).toMatch(/remove|instead/);
  });

  it("lets the edge publish its entry points", async () => {
    expect(edge(prod).props.ports.length).toBeGreaterThan(0);
    expect(await runResourcePolicy(relayNoHostPort, [edge(prod)], "prod")).toEqual([]);
  });

  it("still runs in a preview when the relay's uploads are not known yet", async () => {
    const r = relay(prod, (_, p) => {
      p.ports = [{ internal: submission, external: port }];
      p.uploads = [{ file: "/etc/postfix/main.cf", content: unknownStringValue }];
    });
    expect(await runResourcePolicy(relayNoHostPort, [r], "prod")).toHaveLength(1);
  });
});

describe("edge-rate-limit-first", () => {
  const docker = `traefik.http.routers.relay-mta-sts.middlewares`;
  const ratelimitKeys = (l: Record<string, string>) =>
    Object.keys(l).filter((k) => k.includes(".ratelimit."));

  it.each<[string, Resource[], RegExp]>([
    [
      "a label router without middlewares",
      [edge(prod), relay(prod, (l) => delete l[docker])],
      /"relay-mta-sts".*has no middlewares/,
    ],
    [
      "another middleware first",
      [edge(prod), relay(prod, (l) => (l[docker] = `relay-allowlist,${RATE_LIMIT_MIDDLEWARE}`))],
      /runs "relay-allowlist" first/,
    ],
    [
      "the rate limiter referenced but not defined by labels",
      [edge(prod), relay(prod, (l) => ratelimitKeys(l).forEach((k) => delete l[k]))],
      /no container enabled for Traefik .* defines/,
    ],
    [
      "the rate limiter defined on a container Traefik ignores",
      [edge(prod), relay(prod, (l) => (l["traefik.enable"] = "false"))],
      /no container enabled for Traefik/,
    ],
    [
      "a file router without middlewares",
      [edge(prod, (_, d) => delete d.http.routers.dashboard.middlewares), relay(prod)],
      /"dashboard" \(.*edge\.yml.*has no middlewares/,
    ],
    [
      "a file router whose rate limiter the files do not define",
      [edge(prod, (_, d) => delete d.http.middlewares), relay(prod)],
      new RegExp(`no file in ${TRAEFIK_DYNAMIC_DIR} defines`),
    ],
    [
      "a file router taking the rate limiter from an unconfigured provider",
      [
        edge(
          prod,
          (_, d) =>
            (d.http.routers.dashboard.middlewares = [`${RATE_LIMIT_MIDDLEWARE}@kubernetescrd`]),
        ),
        relay(prod),
      ],
      /provider "kubernetescrd"/,
    ],
    [
      "an enabled container with no HTTP router of its own",
      [
        edge(prod),
        relay(prod, (l) =>
          Object.keys(l)
            .filter((k) => k.startsWith("traefik.http.routers."))
            .forEach((k) => delete l[k]),
        ),
      ],
      /defines no HTTP router, so Traefik gives it a default router/,
    ],
    [
      "label paths in another case",
      [
        edge(prod),
        relay(prod, (l) => {
          delete l[docker];
          l["Traefik.HTTP.Routers.Relay-MTA-STS.Middlewares"] = "compress";
        }),
      ],
      /runs "compress" first/,
    ],
    [
      "two containers defining the rate limiter differently",
      [
        edge(prod),
        relay(prod),
        metrics((p) =>
          p.labels.push(
            { label: "traefik.enable", value: "true" },
            {
              label: `traefik.http.middlewares.${RATE_LIMIT_MIDDLEWARE}.ratelimit.average`,
              value: String(prod.rateLimit.average + 1),
            },
            { label: "traefik.http.routers.metrics.middlewares", value: RATE_LIMIT_MIDDLEWARE },
          ),
        ),
      ],
      new RegExp(`both define middleware ${RATE_LIMIT_MIDDLEWARE}, differently`),
    ],
    [
      "a dynamic file that is not YAML",
      [
        withUpload(edge(prod), { file: `${TRAEFIK_DYNAMIC_DIR}/broken.yml`, content: "http: [\n" }),
        relay(prod),
      ],
      /broken\.yml is not valid YAML/,
    ],
  ])("fires on %s", async (_, resources, message) => {
    const reported = await runStackPolicy(edgeRateLimitFirst, resources, "prod");
    expect(reported.map((r) => r.message)).toEqual([expect.stringMatching(message)]);
    expect(resources.map((r) => urnOf("prod", r))).toContain(reported[0].urn);
  });

  it.each<[string, Resource[]]>([
    [
      "the rate limiter named without a provider on a label router",
      [edge(prod), relay(prod, (l) => (l[docker] = `${RATE_LIMIT_MIDDLEWARE},compress`))],
    ],
    [
      "a label router using the file provider's rate limiter",
      [
        edge(prod),
        relay(prod, (l) => {
          l[docker] = `${RATE_LIMIT_MIDDLEWARE}@file`;
          ratelimitKeys(l).forEach((k) => delete l[k]);
        }),
      ],
    ],
    [
      "a container with TCP routers only",
      [
        edge(prod),
        relay(prod, (l) =>
          Object.keys(l)
            .filter((k) => k.startsWith("traefik.http."))
            .forEach((k) => delete l[k]),
        ),
      ],
    ],
    [
      "the same rate limiter defined identically twice",
      [edge(prod), relay(prod), { ...relay(prod), name: "relay-second" }],
    ],
  ])("stays quiet with %s", async (_, resources) => {
    expect(await runStackPolicy(edgeRateLimitFirst, resources, "prod")).toEqual([]);
  });
});

describe("no-untrusted-forwarding", () => {
  const ws = ENTRY_POINTS.websecure;
  const sub = ENTRY_POINTS.submission;

  it.each<[string, (s: Props) => void, RegExp]>([
    [
      "forwardedHeaders.insecure",
      (s) => (s.entryPoints[ws].forwardedHeaders = { insecure: true }),
      new RegExp(`entryPoints.${ws}.forwardedHeaders.insecure is true`),
    ],
    [
      "proxyProtocol.insecure as text",
      (s) => (s.entryPoints[sub].proxyProtocol = { insecure: "true" }),
      new RegExp(`entryPoints.${sub}.proxyProtocol.insecure is true`),
    ],
    [
      "every IPv4 sender trusted",
      (s) => (s.entryPoints[ws].forwardedHeaders.trustedIPs = ["0.0.0.0/0"]),
      /"0.0.0.0\/0" covers a \/0/,
    ],
    [
      "every IPv6 sender trusted",
      (s) => (s.entryPoints[sub].proxyProtocol.trustedIPs = ["::/0"]),
      /"::\/0" covers a \/0/,
    ],
    [
      "a range one bit wider than allowed",
      (s) =>
        (s.entryPoints[ws].forwardedHeaders.trustedIPs = [`10.0.0.0/${MIN_TRUSTED_PREFIX - 1}`]),
      new RegExp(`covers a /${MIN_TRUSTED_PREFIX - 1}, wider than /${MIN_TRUSTED_PREFIX}`),
    ],
    [
      "all of IPv4 written as IPv4-mapped IPv6",
      (s) => (s.entryPoints[ws].forwardedHeaders.trustedIPs = ["::ffff:0.0.0.0/96"]),
      /covers a \/0/,
    ],
    [
      "an entry that is not an address",
      (s) => (s.entryPoints[ws].forwardedHeaders.trustedIPs = ["router.home.arpa"]),
      /not an IP address or CIDR/,
    ],
    [
      "option names in another case",
      (s) => {
        delete s.entryPoints;
        s.entrypoints = { x: { ForwardedHeaders: { Insecure: true } } };
      },
      /entryPoints.x.forwardedHeaders.insecure/,
    ],
  ])("fires on %s", async (_, change, message) => {
    const reported = await runResourcePolicy(noUntrustedForwarding, [edge(prod, change)], "prod");
    expect(reported.map((r) => r.message)).toEqual([expect.stringMatching(message)]);
  });

  it.each([
    ["the narrowest allowed range", `10.0.0.0/${MIN_TRUSTED_PREFIX}`],
    ["a single IPv6 address", "fd00::2"],
    ["a single IPv4-mapped address", "::ffff:10.10.0.2"],
    ...prod.traefik.trustedProxies.map((p) => ["a proxy of the prod stack", p]),
  ])("accepts %s", (_, entry) => {
    expect(tooBroadTrust(entry)).toBeUndefined();
  });

  it("does not look at the relay", async () => {
    const r = relay(
      prod,
      (_, p) =>
        (p.uploads = [
          {
            file: "/etc/traefik.yml",
            content: stringify({ entryPoints: { a: { forwardedHeaders: { insecure: true } } } }),
          },
        ]),
    );
    expect(await runResourcePolicy(noUntrustedForwarding, [r], "prod")).toEqual([]);
  });

  it("is skipped by the SDK in a preview while the static file is unknown", async () => {
    const e = edge(prod);
    e.props.uploads[0].content = unknownStringValue;
    await expect(runResourcePolicy(noUntrustedForwarding, [e], "prod")).rejects.toBeInstanceOf(
      UnknownValueError,
    );
  });
});

describe("production-real-ca", () => {
  const staging = (s: Props) =>
    (s.certificatesResolvers[CERT_RESOLVER].acme.caServer = ACME_CA.staging);

  it.each(["prod", "production", "prod-eu"])(
    "fires when stack %s uses the staging CA",
    async (stack) => {
      const reported = await runResourcePolicy(productionRealCa, [edge(prod, staging)], stack);
      expect(reported.map((r) => r.message)).toEqual([
        expect.stringContaining(`acme.caServer is ${ACME_CA.staging}`),
      ]);
      expect(reported[0].message).toMatch(/set acme.staging to false/);
    },
  );

  it("lets the dev stack use the staging CA, as its stack file asks", async () => {
    expect(dev.acme.caServer).toBe(ACME_CA.staging);
    expect(await runResourcePolicy(productionRealCa, [edge(dev)], "dev")).toEqual([]);
  });

  it("accepts the production CA in prod", async () => {
    expect(prod.acme.caServer).toBe(ACME_CA.production);
    expect(await runResourcePolicy(productionRealCa, [edge(prod)], "prod")).toEqual([]);
  });
});

describe("docker-not-exposed-by-default", () => {
  it.each<[string, (s: Props) => void, RegExp]>([
    [
      "the option left out",
      (s) => delete s.providers.docker.exposedByDefault,
      /is not set \(Traefik's default is true\)/,
    ],
    [
      "the option true",
      (s) => (s.providers.docker.exposedByDefault = true),
      /exposedByDefault is true/,
    ],
    [
      "the provider turned on with no settings",
      (s) => (s.providers.docker = null),
      /providers.docker.exposedByDefault is not set/,
    ],
    [
      "the Swarm provider exposing by default",
      (s) => (s.providers.swarm = { exposedByDefault: "true" }),
      /providers.swarm.exposedByDefault is true/,
    ],
  ])("fires on %s", async (_, change, message) => {
    const reported = await runResourcePolicy(
      dockerNotExposedByDefault,
      [edge(prod, change)],
      "prod",
    );
    expect(reported.map((r) => r.message)).toEqual([expect.stringMatching(message)]);
  });

  it("fires when the edge uploads no static configuration", async () => {
    const e = edge(prod);
    e.props.uploads = e.props.uploads.slice(1);
    const reported = await runResourcePolicy(dockerNotExposedByDefault, [e], "prod");
    expect(reported.map((r) => r.message)).toEqual([
      expect.stringContaining(`no static configuration at ${TRAEFIK_STATIC_PATH}`),
    ]);
  });

  it("accepts false written as text", async () => {
    const e = edge(prod, (s) => (s.providers.docker.exposedByDefault = "false"));
    expect(await runResourcePolicy(dockerNotExposedByDefault, [e], "prod")).toEqual([]);
  });
});
