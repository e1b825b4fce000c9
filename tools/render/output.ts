/**
 * What the offline render writes, built from what the program registered: pure functions of
 * the recorded resources and the configuration, so the same inputs give the same bytes.
 */
import YAML from "yaml";
import type { HomelabConfig } from "../../config";
import { connectionRateLimit } from "../../config";
import { ROLE_LABEL, TRAEFIK_DYNAMIC_DIR, TRAEFIK_STATIC_PATH } from "../../components/names";
import { postfixSettings, renderMainCf, renderMasterCf } from "../../components/postfix";
import { labelsToDynamic, mergeDynamic, renderYaml } from "../../components/traefik";
import { maskSecrets, type Registered } from "../mockRuntime";

const CONTAINER = "docker:index/container:Container";

/** Objects with their keys sorted, all the way down, so that JSON output is stable. */
export function sortKeys(value: unknown): unknown {
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
  const providerName = (ref?: string) => (ref ? nameOf.get(ref.slice(0, ref.lastIndexOf("::"))) ?? ref : undefined);
  const rows = [...resources]
    .sort((a, b) => (a.urn < b.urn ? -1 : a.urn > b.urn ? 1 : 0))
    .map((r) => ({
      type: r.type,
      name: r.name,
      parent: r.parent ? nameOf.get(r.parent) ?? r.parent : null,
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

/** The files the render writes (relative path → content), except resources.json. */
export interface RenderedFiles {
  staticYaml: string;
  dynamic: Record<string, unknown>;
  dynamicYaml: string;
  mainCf: string;
  masterCf: string;
}

/**
 * Traefik's configuration as its container receives it (the uploaded static file) and as
 * Traefik assembles it (every container's labels plus the file-provider part); Postfix's as
 * the relay applies it.
 */
export function renderFiles(config: HomelabConfig, resources: readonly Registered[]): RenderedFiles {
  const edges = containersWithRole(resources, "edge");
  if (edges.length === 0) throw new Error("the program registered no Traefik container");
  const uploads = (edges[0].inputs.uploads ?? []) as Upload[];
  const staticUpload = uploads.find((u) => u.file === TRAEFIK_STATIC_PATH);
  if (!staticUpload?.content) throw new Error(`the Traefik container has no ${TRAEFIK_STATIC_PATH} upload`);

  const fileParts = uploads
    .filter((u) => u.file.startsWith(`${TRAEFIK_DYNAMIC_DIR}/`) && u.content)
    .sort((a, b) => a.file.localeCompare(b.file))
    .map((u) => YAML.parse(u.content!) as Record<string, unknown>);
  const labelled = resources
    .filter((r) => r.type === CONTAINER)
    .map((r) => ({ name: String(r.inputs.name ?? r.name), labels: labelsOf(r) }))
    .filter((c) => Object.keys(c.labels).some((k) => k.startsWith("traefik.")))
    .sort((a, b) => a.name.localeCompare(b.name));
  const dynamic = fileParts.reduce((tree, part) => mergeDynamic(tree, part), labelsToDynamic(labelled));

  const settings = postfixSettings(config);
  return {
    staticYaml: staticUpload.content,
    dynamic,
    dynamicYaml: renderYaml(dynamic),
    mainCf: renderMainCf(settings),
    masterCf: renderMasterCf(settings),
  };
}

/** The few lines a reviewer reads in five seconds. */
export function summary(config: HomelabConfig, resources: readonly Registered[], dynamic: Record<string, any>): string[] {
  const lines: string[] = [];
  const byType = new Map<string, number>();
  for (const r of resources) byType.set(r.type, (byType.get(r.type) ?? 0) + 1);
  lines.push(`resources (${resources.length}):`);
  for (const [type, n] of [...byType].sort()) lines.push(`  ${String(n).padStart(2)}  ${type}`);

  lines.push("routers:");
  for (const kind of ["http", "tcp"] as const) {
    const routers = (dynamic[kind]?.routers ?? {}) as Record<string, { entryPoints?: string[]; middlewares?: string[]; rule?: string }>;
    for (const [name, r] of Object.entries(routers).sort()) {
      lines.push(`  ${kind} ${name} [${(r.entryPoints ?? []).join(",")}] ${r.rule ?? ""} -> ${(r.middlewares ?? []).join(" > ") || "no middlewares"}`);
    }
  }

  const rl = config.rateLimit;
  const source =
    rl.sourceCriterion.kind === "depth"
      ? `X-Forwarded-For depth ${rl.sourceCriterion.depth}`
      : rl.sourceCriterion.kind === "excludedIPs"
        ? `X-Forwarded-For minus ${rl.sourceCriterion.excludedIPs.join(",")}`
        : "the connecting address";
  const trusted = config.traefik.trustedProxies.length ? config.traefik.trustedProxies.join(",") : "none";
  lines.push("rate limit per layer:");
  lines.push(
    `  HTTP (Traefik rateLimit): ${rl.average === 0 ? "no limit" : `${rl.average}/${rl.period}`}, burst ${rl.burst}, client = ${source}; trusted proxies: ${trusted}`,
  );
  lines.push(`  TCP  (Traefik inFlightConn, ipAllowList): ${rl.inFlight} connections per client; allowed: ${config.traefik.smtpAllowList.join(",")}`);
  const connections = connectionRateLimit(rl.average, rl.periodSeconds, rl.burst, rl.windowSeconds);
  lines.push(
    `  SMTP (Postfix anvil, per ${rl.windowSeconds}s): ${connections || "unlimited"} connections, ${rl.authAttempts} AUTH, ${rl.messages} messages; exempt: ${rl.exempt.join(",") || "none"}`,
  );
  if (config.warnings.length) {
    lines.push(`warnings (${config.warnings.length}):`);
    for (const w of config.warnings) lines.push(`  - ${w}`);
  }
  return lines;
}
