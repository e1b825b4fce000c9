/**
 * The rules of the policy pack as pure functions over plain objects: what Pulumi hands a
 * policy (a Docker container's inputs or outputs) goes in, the violation messages come out.
 * policies.ts wraps them for @pulumi/policy; the tests call them without the Pulumi CLI.
 */
import { parse as parseYaml } from "yaml";

import { effectivePrefixLength, MIN_TRUSTED_PREFIX } from "../components/addresses";
import {
  RATE_LIMIT_MIDDLEWARE,
  ROLE_LABEL,
  TRAEFIK_DYNAMIC_DIR,
  TRAEFIK_STATIC_PATH,
} from "../components/names";

/** The Pulumi type token of a Docker container (@pulumi/docker). */
export const CONTAINER_TYPE = "docker:index/container:Container";

export { MIN_TRUSTED_PREFIX };

/** Part of the URL of every Let's Encrypt staging directory. */
const STAGING_CA_MARK = "acme-staging";

/** Stacks whose name starts with this are production. */
export const PRODUCTION_STACK_PREFIX = "prod";

/** A container as the rules see it. */
export interface ContainerFacts {
  urn: string;
  name: string;
  /** Labels by lower-cased key: Traefik reads its label paths case-insensitively. */
  labels: ReadonlyMap<string, string>;
  ports: readonly PublishedPort[];
  networkMode?: string;
  uploads: readonly Upload[];
}

export interface PublishedPort {
  internal?: number;
  external?: number;
  ip?: string;
}

export interface Upload {
  file: string;
  /** The file's text; undefined when it comes from a local source file the policy cannot read. */
  content?: string;
}

/** One broken rule; `urn` names the resource to blame (stack policies only). */
export interface Violation {
  message: string;
  urn?: string;
}

// ---------------------------------------------------------------------------------------
// Reading a container's inputs.

type Plain = Record<string, unknown>;

function isPlain(value: unknown): value is Plain {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function asText(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function asNumber(value: unknown): number | undefined {
  return typeof value === "number" ? value : undefined;
}

/** Labels as the Docker provider takes them (`[{label, value}]`), or a plain map. */
function readLabels(raw: unknown): Map<string, string> {
  const labels = new Map<string, string>();
  if (Array.isArray(raw)) {
    for (const entry of raw) {
      const key = isPlain(entry) ? asText(entry.label) : undefined;
      if (key !== undefined) labels.set(key.toLowerCase(), String(entry.value ?? ""));
    }
  } else if (isPlain(raw)) {
    for (const [key, value] of Object.entries(raw)) labels.set(key.toLowerCase(), String(value));
  }
  return labels;
}

function readUpload(raw: unknown): Upload | undefined {
  if (!isPlain(raw) || asText(raw.file) === undefined) return undefined;
  const base64 = asText(raw.contentBase64);
  const content =
    asText(raw.content) ??
    (base64 === undefined ? undefined : Buffer.from(base64, "base64").toString());
  return { file: raw.file as string, content };
}

/**
 * What the rules need from a `docker:index/container:Container`'s properties. Each field is
 * read when a rule first asks for it: during a preview the policy SDK throws on a value that
 * is not known yet and skips the policy with a warning, so a rule must touch only what it uses.
 */
export function containerFacts(urn: string, name: string, props: Plain): ContainerFacts {
  const labels = once(() => readLabels(props.labels));
  const ports = once(() =>
    asArray(props.ports)
      .filter(isPlain)
      .map((p) => ({
        internal: asNumber(p.internal),
        external: asNumber(p.external),
        ip: asText(p.ip),
      })),
  );
  const networkMode = once(() => asText(props.networkMode));
  const uploads = once(() =>
    asArray(props.uploads)
      .map(readUpload)
      .filter((u): u is Upload => u !== undefined),
  );
  return {
    urn,
    name,
    get labels() {
      return labels();
    },
    get ports() {
      return ports();
    },
    get networkMode() {
      return networkMode();
    },
    get uploads() {
      return uploads();
    },
  };
}

function once<T>(read: () => T): () => T {
  let cached: { value: T } | undefined;
  return () => (cached ??= { value: read() }).value;
}

/** The stack name inside a URN (`urn:pulumi:<stack>::<project>::<type>::<name>`). */
export function stackOfUrn(urn: string): string | undefined {
  const match = /^urn:pulumi:([^:]+)::/.exec(urn);
  return match?.[1];
}

function roleOf(container: ContainerFacts): string | undefined {
  return container.labels.get(ROLE_LABEL.toLowerCase());
}

// ---------------------------------------------------------------------------------------
// Traefik configuration files.

/**
 * Traefik matches option names in its configuration files without regard to case
 * (`entryPoints` and `entrypoints` are the same option); names chosen by the user, such as an
 * entry point's, are kept as written.
 */
function option(node: unknown, name: string): unknown {
  if (!isPlain(node)) return undefined;
  const key = Object.keys(node).find((k) => k.toLowerCase() === name.toLowerCase());
  return key === undefined ? undefined : node[key];
}

function optionPath(node: unknown, ...names: string[]): unknown {
  return names.reduce<unknown>((current, name) => option(current, name), node);
}

function entriesOf(node: unknown): [string, unknown][] {
  return isPlain(node) ? Object.entries(node) : [];
}

/** Traefik accepts `true` written as a YAML boolean or as text. */
function isTrue(value: unknown): boolean {
  return value === true || (typeof value === "string" && value.trim().toLowerCase() === "true");
}

function isFalse(value: unknown): boolean {
  return value === false || (typeof value === "string" && value.trim().toLowerCase() === "false");
}

type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

function parseYamlFile(upload: Upload): Parsed {
  if (upload.content === undefined) {
    return {
      ok: false,
      error: `${upload.file} is uploaded from a source file, not inline content`,
    };
  }
  try {
    return { ok: true, value: parseYaml(upload.content) };
  } catch (error) {
    const reason = error instanceof Error ? error.message.split("\n")[0] : String(error);
    return { ok: false, error: `${upload.file} is not valid YAML: ${reason}` };
  }
}

function staticUpload(container: ContainerFacts): Upload | undefined {
  return container.uploads.find((u) => u.file === TRAEFIK_STATIC_PATH);
}

function isDynamicFile(file: string): boolean {
  return file.startsWith(`${TRAEFIK_DYNAMIC_DIR}/`) && /\.ya?ml$/i.test(file);
}

/** Traefik runs here: labelled the edge, or without a role and holding the static file. */
function isEdge(container: ContainerFacts): boolean {
  const role = roleOf(container);
  return role === undefined ? staticUpload(container) !== undefined : role === "edge";
}

/**
 * The edge's static configuration, parsed; undefined for any other container.
 * Limitation: only the uploaded file is read; static options given as command-line flags or
 * TRAEFIK_* variables are not checked. Traefik takes its static configuration from one source,
 * the file first, so they only matter when the file is missing, which rule 5 reports.
 */
function staticConfigOf(container: ContainerFacts): Parsed | undefined {
  if (!isEdge(container)) return undefined;
  const upload = staticUpload(container);
  if (upload === undefined) {
    return {
      ok: false,
      error: `the edge container uploads no static configuration at ${TRAEFIK_STATIC_PATH}`,
    };
  }
  return parseYamlFile(upload);
}

// ---------------------------------------------------------------------------------------
// Rule 1: the relay publishes no host port.

const RELAY_ROLES: ReadonlySet<string> = new Set(["relay", "relay-metrics"]);

export function relayPublishesNoHostPort(container: ContainerFacts): string[] {
  const role = roleOf(container);
  if (role === undefined || !RELAY_ROLES.has(role)) return [];
  const who = `container "${container.name}" (${ROLE_LABEL}=${role})`;
  const fix = "clients must come through Traefik, which reaches the relay over the Docker network";

  const messages = container.ports.map((port) => {
    const host =
      port.external === undefined ? "a host port Docker picks" : `host port ${port.external}`;
    const published = `container port ${port.internal ?? "?"} on ${host}`;
    return `${who} publishes ${published}: remove it from ports; ${fix}.`;
  });
  if (container.networkMode === "host") {
    messages.push(
      `${who} uses networkMode "host", which puts every port it listens on on the host: ` +
        `attach it to the Docker network shared with Traefik instead; ${fix}.`,
    );
  }
  return messages;
}

// ---------------------------------------------------------------------------------------
// Rule 2: every HTTP router on the edge has the rate limiter first.

type Provider = "docker" | "file";

interface HttpRouter {
  /** Where it is defined, for the message. */
  where: string;
  name: string;
  provider: Provider;
  middlewares: string[];
  urn: string;
  /** Traefik made it up: the container has no router of its own. */
  implicit?: boolean;
}

const LABEL_ROUTER = /^traefik\.http\.routers\.([^.]+)\.(.+)$/;

function labelKeys(container: ContainerFacts, prefix: string): string[] {
  return [...container.labels.keys()].filter((key) => key.startsWith(prefix));
}

function isEnabled(container: ContainerFacts): boolean {
  return isTrue(container.labels.get("traefik.enable"));
}

/**
 * Traefik's Docker provider gives an enabled container without HTTP routers a router of its
 * own (rule from defaultRule, no middlewares), unless the container only has TCP/UDP
 * configuration or more than one HTTP service.
 */
function hasImplicitRouter(container: ContainerFacts): boolean {
  if (!isEnabled(container) || labelKeys(container, "traefik.http.routers.").length > 0)
    return false;

  const tcpOrUdp = [
    "traefik.tcp.routers.",
    "traefik.tcp.services.",
    "traefik.udp.routers.",
    "traefik.udp.services.",
  ].some((prefix) => labelKeys(container, prefix).length > 0);
  const httpMiddlewares = labelKeys(container, "traefik.http.middlewares.").length > 0;
  const httpServices = new Set(
    labelKeys(container, "traefik.http.services.").map((key) => key.split(".")[3]),
  );
  if (tcpOrUdp && !httpMiddlewares && httpServices.size === 0) return false;
  return httpServices.size <= 1;
}

function splitList(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
}

function labelRouters(container: ContainerFacts): HttpRouter[] {
  const names = new Set<string>();
  for (const key of container.labels.keys()) {
    const match = LABEL_ROUTER.exec(key);
    if (match) names.add(match[1]);
  }
  const where = `labels of container "${container.name}"`;
  const routers: HttpRouter[] = [...names].map((name) => ({
    where,
    name,
    provider: "docker" as const,
    middlewares: splitList(container.labels.get(`traefik.http.routers.${name}.middlewares`) ?? ""),
    urn: container.urn,
  }));
  if (hasImplicitRouter(container)) {
    routers.push({
      where,
      name: container.name,
      provider: "docker",
      middlewares: [],
      urn: container.urn,
      implicit: true,
    });
  }
  return routers;
}

interface DynamicFile {
  container: ContainerFacts;
  file: string;
  config: unknown;
}

function fileRouters({ container, file, config }: DynamicFile): HttpRouter[] {
  return entriesOf(optionPath(config, "http", "routers")).map(([name, router]) => ({
    where: `${file} on container "${container.name}"`,
    name,
    provider: "file" as const,
    middlewares: asArray(option(router, "middlewares")).map((m) => String(m).trim()),
    urn: container.urn,
  }));
}

/** Which provider a middleware reference points at, seen from a router of `from`. */
function resolveReference(reference: string, from: Provider): { name: string; provider: string } {
  const at = reference.lastIndexOf("@");
  if (at < 0) return { name: reference, provider: from };
  return { name: reference.slice(0, at), provider: reference.slice(at + 1) };
}

/** How the rate limiter is defined in each provider. */
interface RateLimitDefinitions {
  /** Enabled containers whose labels define it, with their ratelimit labels. */
  docker: { container: ContainerFacts; settings: string }[];
  /** Dynamic files that define it. */
  file: string[];
}

function rateLimitDefinitions(
  containers: ContainerFacts[],
  files: DynamicFile[],
): RateLimitDefinitions {
  const prefix = `traefik.http.middlewares.${RATE_LIMIT_MIDDLEWARE.toLowerCase()}.ratelimit.`;
  const docker = containers
    .filter(isEnabled)
    .map((container) => {
      const keys = labelKeys(container, prefix).sort();
      const settings = keys.map((key) => `${key}=${container.labels.get(key)}`).join("\n");
      return { container, settings };
    })
    .filter(({ settings }) => settings !== "");
  const file = files
    .filter(({ config }) => {
      const middleware = option(optionPath(config, "http", "middlewares"), RATE_LIMIT_MIDDLEWARE);
      return isPlain(option(middleware, "rateLimit"));
    })
    .map(({ file, container }) => `${file} on container "${container.name}"`);
  return { docker, file };
}

function routerProblem(router: HttpRouter, defined: RateLimitDefinitions): string | undefined {
  if (router.implicit) {
    return (
      `Container "${router.name}" is enabled for Traefik but defines no HTTP router, so Traefik ` +
      `gives it a default router with no middlewares: define its routers with ` +
      `${RATE_LIMIT_MIDDLEWARE} first, or set traefik.enable=false.`
    );
  }
  const subject = `HTTP router "${router.name}" (${router.where})`;
  const setting =
    router.provider === "docker"
      ? `traefik.http.routers.${router.name}.middlewares=${RATE_LIMIT_MIDDLEWARE}@docker,...`
      : `http.routers.${router.name}.middlewares: [${RATE_LIMIT_MIDDLEWARE}@file, ...]`;

  const first = router.middlewares[0];
  if (first === undefined) {
    return `${subject} has no middlewares: set ${setting} so every request meets the rate limiter.`;
  }
  const target = resolveReference(first, router.provider);
  if (target.name !== RATE_LIMIT_MIDDLEWARE) {
    return (
      `${subject} runs "${first}" first: put ${RATE_LIMIT_MIDDLEWARE} at the head of its ` +
      `middlewares (${setting}) so clients over the limit are refused before anything else runs.`
    );
  }
  if (target.provider === "docker" && defined.docker.length === 0) {
    return (
      `${subject} uses ${first}, but no container enabled for Traefik ` +
      `(traefik.enable=true) defines ` +
      `traefik.http.middlewares.${RATE_LIMIT_MIDDLEWARE}.ratelimit.* labels: ` +
      `add them to such a container.`
    );
  }
  if (target.provider === "file" && defined.file.length === 0) {
    return (
      `${subject} uses ${first}, but no file in ${TRAEFIK_DYNAMIC_DIR} defines ` +
      `http.middlewares.${RATE_LIMIT_MIDDLEWARE}.rateLimit: define it there.`
    );
  }
  if (target.provider !== "docker" && target.provider !== "file") {
    return (
      `${subject} takes ${RATE_LIMIT_MIDDLEWARE} from provider "${target.provider}", ` +
      `which this stack does not configure: use @docker or @file.`
    );
  }
  return undefined;
}

/** Traefik drops a middleware two containers define differently; its routers then fail. */
function conflictingDefinitions(defined: RateLimitDefinitions): Violation[] {
  const [first, ...others] = defined.docker;
  return others
    .filter((other) => other.settings !== first.settings)
    .map((other) => ({
      urn: other.container.urn,
      message:
        `Containers "${first.container.name}" and "${other.container.name}" ` +
        `both define middleware ` +
        `${RATE_LIMIT_MIDDLEWARE}, differently; Traefik discards a middleware defined twice with ` +
        `different settings: define it on one container only.`,
    }));
}

export function edgeRoutersRateLimited(containers: ContainerFacts[]): Violation[] {
  const violations: Violation[] = [];
  const files: DynamicFile[] = [];
  for (const container of containers) {
    for (const upload of container.uploads.filter((u) => isDynamicFile(u.file))) {
      const parsed = parseYamlFile(upload);
      if (parsed.ok) {
        files.push({ container, file: upload.file, config: parsed.value });
      } else {
        violations.push({
          urn: container.urn,
          message: `Cannot check the HTTP routers: ${parsed.error}.`,
        });
      }
    }
  }

  const defined = rateLimitDefinitions(containers, files);
  const routers = [...containers.flatMap(labelRouters), ...files.flatMap(fileRouters)];
  for (const router of routers) {
    const problem = routerProblem(router, defined);
    if (problem !== undefined) violations.push({ urn: router.urn, message: problem });
  }
  return [...violations, ...conflictingDefinitions(defined)];
}

// ---------------------------------------------------------------------------------------
// Rule 3: no entry point trusts forwarded headers or PROXY headers from everyone.

/** Why `entry` trusts too many senders, or undefined when it is a narrow address or CIDR. */
export function tooBroadTrust(entry: string): string | undefined {
  let prefix: number;
  try {
    prefix = effectivePrefixLength(entry.trim());
  } catch {
    return `"${entry}" is not an IP address or CIDR`;
  }
  if (prefix < MIN_TRUSTED_PREFIX) {
    return `"${entry}" covers a /${prefix}, wider than /${MIN_TRUSTED_PREFIX}`;
  }
  return undefined;
}

export function entryPointsTrustNoOne(container: ContainerFacts): string[] {
  const parsed = staticConfigOf(container);
  if (parsed === undefined || !parsed.ok) return [];
  const messages: string[] = [];

  for (const [entryPoint, settings] of entriesOf(option(parsed.value, "entryPoints"))) {
    for (const section of ["forwardedHeaders", "proxyProtocol"]) {
      const trust = option(settings, section);
      const where = `entryPoints.${entryPoint}.${section}`;
      if (isTrue(option(trust, "insecure"))) {
        messages.push(
          `${where}.insecure is true: any client can then choose its own source address and ` +
            `escape the rate limiter. Remove it and list the upstream proxies in ` +
            `${where}.trustedIPs.`,
        );
      }
      for (const entry of asArray(option(trust, "trustedIPs"))) {
        const problem = tooBroadTrust(String(entry));
        if (problem !== undefined) {
          messages.push(
            `${where}.trustedIPs: ${problem}; only the upstream proxies' addresses belong there ` +
              `(traefik.trustedProxies in the stack configuration).`,
          );
        }
      }
    }
  }
  return messages;
}

// ---------------------------------------------------------------------------------------
// Rule 4: production does not use the ACME staging CA.

function isProductionStack(stack: string | undefined): boolean {
  return stack !== undefined && stack.toLowerCase().startsWith(PRODUCTION_STACK_PREFIX);
}

export function productionUsesRealCa(
  container: ContainerFacts,
  stack: string | undefined,
): string[] {
  if (!isProductionStack(stack)) return [];
  const parsed = staticConfigOf(container);
  if (parsed === undefined || !parsed.ok) return [];

  return entriesOf(option(parsed.value, "certificatesResolvers"))
    .map(([resolver, settings]) => ({
      resolver,
      caServer: optionPath(settings, "acme", "caServer"),
    }))
    .filter(({ caServer }) => typeof caServer === "string" && caServer.includes(STAGING_CA_MARK))
    .map(
      ({ resolver, caServer }) =>
        `Stack "${stack}" is production, but certificatesResolvers.${resolver}.acme.caServer is ` +
        `${String(caServer)}, whose certificates no client trusts: set acme.staging to false in ` +
        `the stack's configuration.`,
    );
}

// ---------------------------------------------------------------------------------------
// Rule 5: the Docker provider exposes nothing by default.

export function dockerProviderOptIn(container: ContainerFacts): string[] {
  const parsed = staticConfigOf(container);
  if (parsed === undefined) return [];
  if (!parsed.ok) return [`Cannot check providers.docker.exposedByDefault: ${parsed.error}.`];

  const messages: string[] = [];
  for (const provider of ["docker", "swarm"]) {
    const settings = optionPath(parsed.value, "providers", provider);
    // `docker:` with no value still turns the provider on, with its defaults.
    if (settings === undefined) continue;
    const value = option(settings, "exposedByDefault");
    if (!isFalse(value)) {
      const found =
        value === undefined ? "is not set (Traefik's default is true)" : `is ${String(value)}`;
      messages.push(
        `providers.${provider}.exposedByDefault ${found}: every container on the host ` +
          `would get a ` +
          `router. Set it to false; containers opt in with the label traefik.enable=true.`,
      );
    }
  }
  return messages;
}
