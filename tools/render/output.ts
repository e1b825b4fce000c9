/**
 * What the offline render writes, built from what the program registered: pure functions of
 * the recorded resources and the configuration, so the same inputs give the same bytes.
 */
import YAML from "yaml";
import { connectionRateLimit, type HomelabConfig } from "../../config";
import { ROLE_LABEL, TRAEFIK_DYNAMIC_DIR, TRAEFIK_STATIC_PATH } from "../../components/names";
import { BANNED_PORTS, JAIL_NAME, JAIL_PATH } from "../../components/fail2ban";
import { CONFIG_DIR } from "../../components/relay";
import { labelsToDynamic, mergeDynamic, renderYaml } from "../../components/traefik";
import { maskSecrets, type Registered } from "../mockRuntime";

const CONTAINER = "docker:index/container:Container";
const LXC = "proxmoxve:index/containerLegacy:ContainerLegacy";

/** Objects with their keys sorted, all the way down, so that JSON output is stable. */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

/** Every resource: type, name, parent, provider, dependencies and inputs, secrets masked, sorted by URN. */
export function resourcesJson(resources: readonly Registered[]): string {
  const nameOf = new Map(resources.map((r) => [r.urn, r.name]));
  const providerName = (ref?: string) =>
    ref ? (nameOf.get(ref.slice(0, ref.lastIndexOf("::"))) ?? ref) : undefined;
  const rows = [...resources]
    .sort((a, b) => (a.urn < b.urn ? -1 : a.urn > b.urn ? 1 : 0))
    .map((r) => ({
      type: r.type,
      name: r.name,
      parent: r.parent ? (nameOf.get(r.parent) ?? r.parent) : null,
      provider: providerName(r.provider) ?? null,
      dependsOn: r.dependencies.map((u) => nameOf.get(u) ?? u).sort(),
      inputs: maskSecrets(r.inputs),
    }));
  return `${JSON.stringify(sortKeys(rows), null, 2)}\n`;
}

interface Upload {
  file: string;
  content?: string;
}

function labelsOf(r: Registered): Record<string, string> {
  const list = (r.inputs.labels ?? []) as { label: string; value: string }[];
  return Object.fromEntries(list.map((l) => [l.label, l.value]));
}

function containersWithRole(resources: readonly Registered[], role: string): Registered[] {
  return resources.filter((r) => r.type === CONTAINER && labelsOf(r)[ROLE_LABEL] === role);
}

/** One edge's Traefik configuration. */
export interface EdgeFiles {
  /** The Docker host's name (its LXC hostname). */
  host: string;
  staticYaml: string;
  dynamic: Record<string, unknown>;
  dynamicYaml: string;
}

/** The files the render writes (relative path → content), except resources.json. */
export interface RenderedFiles {
  /** Every edge, the first host's first. */
  edges: EdgeFiles[];
  mainCf: string;
  masterCf: string;
  /** fail2ban's jail.local, the same on every host; absent when fail2ban is disabled. */
  jail?: string;
}

/** The LXC hostname of the Docker host whose provider created `container`. */
function hostnameOf(container: Registered, resources: readonly Registered[]): string {
  const providerUrn = container.provider?.slice(0, container.provider.lastIndexOf("::"));
  const provider = resources.find((r) => r.urn === providerUrn);
  const lxc = resources.find(
    (r) => r.type === LXC && provider?.parent !== undefined && r.parent === provider.parent,
  );
  const hostname = lxc?.inputs.initialization?.hostname;
  if (typeof hostname !== "string")
    throw new Error(`no Docker host found for container ${container.name}`);
  return hostname;
}

/**
 * One edge's configuration: its uploaded static file, and the dynamic configuration its
 * Traefik assembles from its own file-provider uploads and the labels of the containers on
 * its own Docker host (a Traefik sees no other host's containers).
 */
function edgeFiles(edge: Registered, resources: readonly Registered[]): EdgeFiles {
  const uploads = (edge.inputs.uploads ?? []) as Upload[];
  const staticUpload = uploads.find((u) => u.file === TRAEFIK_STATIC_PATH);
  if (!staticUpload?.content)
    throw new Error(`the Traefik container has no ${TRAEFIK_STATIC_PATH} upload`);

  const fileParts = uploads
    .filter((u) => u.file.startsWith(`${TRAEFIK_DYNAMIC_DIR}/`) && u.content)
    .sort((a, b) => a.file.localeCompare(b.file))
    .map((u) => YAML.parse(u.content!) as Record<string, unknown>);
  const labelled = resources
    .filter((r) => r.type === CONTAINER && r.provider === edge.provider)
    .map((r) => ({ name: String(r.inputs.name ?? r.name), labels: labelsOf(r) }))
    .filter((c) => Object.keys(c.labels).some((k) => k.startsWith("traefik.")))
    .sort((a, b) => a.name.localeCompare(b.name));
  const dynamic = fileParts.reduce(
    (tree, part) => mergeDynamic(tree, part),
    labelsToDynamic(labelled),
  );
  return {
    host: hostnameOf(edge, resources),
    staticYaml: staticUpload.content,
    dynamic,
    dynamicYaml: renderYaml(dynamic),
  };
}

/**
 * The content of `file` as every container that receives it receives it: they must all
 * receive the same (every host runs the same relay and the same jail). Undefined when no
 * container receives it.
 */
function sameUpload(
  resources: readonly Registered[],
  file: string,
  what: string,
): string | undefined {
  const contents = resources
    .filter((r) => r.type === CONTAINER)
    .flatMap((r) => ((r.inputs.uploads ?? []) as Upload[]).filter((u) => u.file === file))
    .map((u) => u.content ?? "");
  if (new Set(contents).size > 1)
    throw new Error(`the ${what} containers received different ${file}`);
  return contents[0];
}

/** A dynamic configuration without the servers, which name each host's own containers. */
function withoutServers(dynamic: Record<string, unknown>): unknown {
  return JSON.parse(JSON.stringify(dynamic), (key, value) =>
    key === "servers" ? undefined : value,
  );
}

/**
 * Traefik's configuration as each edge's container receives it (the uploaded static file)
 * and as its Traefik assembles it (its host's labels plus the file-provider part); Postfix's
 * as the relays apply it. Every edge must route and limit the same way: a client must not
 * get different treatment depending on the edge it reaches.
 */
export function renderFiles(resources: readonly Registered[]): RenderedFiles {
  const edges = containersWithRole(resources, "edge").map((edge) => edgeFiles(edge, resources));
  if (edges.length === 0) throw new Error("the program registered no Traefik container");
  const [first, ...others] = edges;
  for (const other of others) {
    if (other.staticYaml !== first.staticYaml) {
      throw new Error(
        `the edges on ${first.host} and ${other.host} have different static configurations`,
      );
    }
    if (renderYaml(withoutServers(other.dynamic)) !== renderYaml(withoutServers(first.dynamic))) {
      throw new Error(`the edges on ${first.host} and ${other.host} route or limit differently`);
    }
  }

  const postfix = (file: string) => {
    const content = sameUpload(resources, `${CONFIG_DIR}/${file}`, "relay");
    if (content === undefined) throw new Error(`no relay container received ${CONFIG_DIR}/${file}`);
    return content;
  };
  const jail = sameUpload(resources, JAIL_PATH, "fail2ban");
  return {
    edges,
    mainCf: postfix("main.cf"),
    masterCf: postfix("master.cf"),
    ...(jail === undefined ? {} : { jail }),
  };
}

/**
 * Where an edge's two Traefik files go: traefik/ with one edge; traefik/<host>/ with several,
 * since their dynamic configurations name their own host's containers.
 */
export function traefikDir(files: RenderedFiles, edge: EdgeFiles): string {
  return files.edges.length === 1 ? "traefik" : `traefik/${edge.host}`;
}

/** Every file of out/<stack>/ but resources.json. */
export function outputFiles(files: RenderedFiles): Record<string, string> {
  const traefik = files.edges.flatMap((edge) => [
    [`${traefikDir(files, edge)}/static.yml`, edge.staticYaml],
    [`${traefikDir(files, edge)}/dynamic.yml`, edge.dynamicYaml],
  ]);
  return {
    ...Object.fromEntries(traefik),
    "postfix/main.cf": files.mainCf,
    "postfix/master.cf": files.masterCf,
    ...(files.jail === undefined ? {} : { "fail2ban/jail.local": files.jail }),
  };
}

/** The few lines a reviewer reads in five seconds. */
export function summary(
  config: HomelabConfig,
  resources: readonly Registered[],
  dynamic: Record<string, any>,
): string[] {
  const lines: string[] = [];
  const byType = new Map<string, number>();
  for (const r of resources) byType.set(r.type, (byType.get(r.type) ?? 0) + 1);
  lines.push(`resources (${resources.length}):`);
  for (const [type, n] of [...byType].sort()) lines.push(`  ${String(n).padStart(2)}  ${type}`);

  const hosts = config.hosts.map((h) => `${h.lxc.hostname} (${h.lxc.address})`);
  lines.push(`hosts (${hosts.length}), each with its own Traefik and relay: ${hosts.join(", ")}`);

  lines.push("routers:");
  for (const kind of ["http", "tcp"] as const) {
    const routers = (dynamic[kind]?.routers ?? {}) as Record<
      string,
      { entryPoints?: string[]; middlewares?: string[]; rule?: string }
    >;
    for (const [name, r] of Object.entries(routers).sort()) {
      lines.push(
        `  ${kind} ${name} [${(r.entryPoints ?? []).join(",")}] ${r.rule ?? ""} -> ${(r.middlewares ?? []).join(" > ") || "no middlewares"}`,
      );
    }
  }

  const rl = config.rateLimit;
  const source =
    rl.sourceCriterion.kind === "depth"
      ? `X-Forwarded-For depth ${rl.sourceCriterion.depth}`
      : rl.sourceCriterion.kind === "excludedIPs"
        ? `X-Forwarded-For minus ${rl.sourceCriterion.excludedIPs.join(",")}`
        : "the connecting address";
  const trusted = config.traefik.trustedProxies.length
    ? config.traefik.trustedProxies.join(",")
    : "none";
  lines.push("rate limit per layer:");
  lines.push(
    `  HTTP (Traefik rateLimit): ${rl.average === 0 ? "no limit" : `${rl.average}/${rl.period}`}, burst ${rl.burst}, client = ${source}; trusted proxies: ${trusted}`,
  );
  lines.push(
    config.redis
      ? `    buckets shared by every edge in Redis at ${config.redis.host}:${config.redis.port}`
      : "    buckets in Traefik's memory (one edge)",
  );
  lines.push(
    `  TCP  (Traefik inFlightConn, ipAllowList): ${rl.inFlight} connections per client; allowed: ${config.traefik.smtpAllowList.join(",")}`,
  );
  const connections = connectionRateLimit(rl.average, rl.periodSeconds, rl.burst, rl.windowSeconds);
  lines.push(
    `  SMTP (Postfix anvil, per ${rl.windowSeconds}s): ${connections || "unlimited"} connections, ${rl.authAttempts} AUTH, ${rl.messages} messages; exempt: ${rl.exempt.join(",") || "none"}`,
  );
  const bans = config.fail2ban;
  if (bans) {
    lines.push(
      `  Bans (fail2ban ${JAIL_NAME}, each host): ${bans.maxRetry} failed logins in ${bans.findTime} -> ` +
        `ports ${BANNED_PORTS.join(",")} closed for ${bans.banTime}; never: ${bans.ignoreIPs.join(",")}`,
    );
    if (config.traefik.trustedProxies.length > 0) {
      lines.push(
        "    clients behind traefik.trustedProxies cannot be banned here: ban at the proxy",
      );
    }
  } else {
    lines.push("  Bans: none (fail2ban.enabled is false)");
  }
  if (config.warnings.length) {
    lines.push(`warnings (${config.warnings.length}):`);
    for (const w of config.warnings) lines.push(`  - ${w}`);
  }
  return lines;
}
