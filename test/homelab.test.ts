/**
 * The whole program under the mock runtime: one node (Docker host, edge, relay) per host of
 * the stack, the shared Redis with several hosts, and where secrets may appear.
 */
import { describe, expect, it } from "vitest";
import type { HomelabConfig } from "../config";
import { SECRETS, withHosts } from "./stacks";
import { HomelabSmtp, nodeNames } from "../components/homelab";
import { policyContainers, violations } from "./policyRun";
import { isSecretValue, registeredResources, settle, strings, type Registered } from "./mocks";

const TYPES = {
  host: "homelab:host:DockerHost",
  edge: "homelab:edge:Edge",
  relay: "homelab:relay:Relay",
  store: "homelab:redis:RateLimitStore",
  fail2ban: "homelab:fail2ban:Fail2ban",
  container: "docker:index/container:Container",
  lxc: "proxmoxve:index/containerLegacy:ContainerLegacy",
  dockerProvider: "pulumi:providers:docker",
} as const;

let builds = 0;

interface Built {
  name: string;
  config: HomelabConfig;
  smtp: HomelabSmtp;
  /** What this build registered. */
  resources: Registered[];
  ofType(type: string): Registered[];
  byName(name: string): Registered;
}

async function build(
  stack: string,
  extra = 0,
  changes: Record<string, string> = {},
): Promise<Built> {
  const config = withHosts(stack, extra, changes);
  const name = `hl-${stack}-${++builds}`;
  const smtp = new HomelabSmtp(name, { config });
  await settle(smtp.relay.metrics.id);
  await Promise.all(smtp.nodes.map((n) => settle(n.relay.metrics.id)));
  if (smtp.rateLimitStore) await settle(smtp.rateLimitStore.container.id);
  for (const node of smtp.nodes) if (node.fail2ban) await settle(node.fail2ban.container.id);
  const resources = registeredResources().filter(
    (r) => r.name === name || r.name.startsWith(`${name}-`),
  );
  return {
    name,
    config,
    smtp,
    resources,
    ofType: (type) => resources.filter((r) => r.type === type),
    byName(wanted) {
      const found = resources.find((r) => r.name === wanted && r.type === TYPES.container);
      if (!found) throw new Error(`no container ${wanted}`);
      return found;
    },
  };
}

const urnName = (urn?: string) => urn?.slice(urn.lastIndexOf("::") + 2);
/** The provider's resource name, from a "<urn>::<id>" reference. */
const providerOf = (r: Registered) => urnName(r.provider?.slice(0, r.provider.lastIndexOf("::")));

describe.each(["dev", "prod"])("the %s stack with three hosts", (stack) => {
  const built = build(stack, 2);

  it("builds one Docker host, edge and relay per host, the first under the single-host names", async () => {
    const { name, config, ofType } = await built;
    expect(config.hosts).toHaveLength(3);
    const expected = config.hosts.map((_, i) => nodeNames(name, i));
    expect(ofType(TYPES.host).map((r) => r.name)).toEqual(expected.map((n) => n.host));
    expect(ofType(TYPES.edge).map((r) => r.name)).toEqual(expected.map((n) => n.edge));
    expect(ofType(TYPES.relay).map((r) => r.name)).toEqual(expected.map((n) => n.relay));
    expect(expected[0]).toMatchObject({
      host: `${name}-host`,
      edge: `${name}-edge`,
      relay: `${name}-relay`,
    });
  });

  it("puts each host's LXC container on its own node and address", async () => {
    const { config, ofType } = await built;
    const lxcs = ofType(TYPES.lxc);
    expect(lxcs.map((r) => r.inputs.nodeName)).toEqual(config.hosts.map((h) => h.proxmox.node));
    expect(lxcs.map((r) => r.inputs.vmId)).toEqual(config.hosts.map((h) => h.lxc.vmId));
    expect(lxcs.map((r) => r.inputs.initialization.ipConfigs[0].ipv4.address)).toEqual(
      config.hosts.map((h) => h.lxc.ipv4),
    );
  });

  it("runs each relay next to its own Traefik: same Docker host, same network", async () => {
    const { smtp, byName, name } = await built;
    smtp.nodes.forEach((_, i) => {
      const names = nodeNames(name, i);
      const traefik = byName(`${names.edge}-traefik`);
      const relay = byName(names.relay);
      const metrics = byName(`${names.relay}-metrics`);
      for (const c of [traefik, relay, metrics])
        expect(providerOf(c), c.name).toBe(`${names.host}-docker`);
      expect(relay.dependencies.map(urnName)).toContain(`${names.edge}-network`);
    });
  });

  it("runs one Redis, on the first host, with no published port and its password only as a secret", async () => {
    const { smtp, config, ofType, name } = await built;
    expect(ofType(TYPES.store)).toHaveLength(1);
    const redis = ofType(TYPES.container).filter(
      (c) => c.parent && urnName(c.parent) === `${name}-redis`,
    );
    expect(redis).toHaveLength(1);
    expect(providerOf(redis[0])).toBe(`${nodeNames(name, 0).host}-docker`);
    expect(redis[0].inputs.ports ?? []).toEqual([]);
    expect(redis[0].inputs.networkMode).toBe("host");
    expect(isSecretValue(redis[0].inputs.envs)).toBe(true);
    expect(smtp.rateLimitStore?.endpoint).toBe(
      `${config.hosts[0].lxc.address}:${config.redis!.port}`,
    );
  });

  it("gives every Traefik the Redis password as a secret, and no label or upload holds a secret", async () => {
    const { ofType } = await built;
    const containers = ofType(TYPES.container);
    for (const c of containers) {
      for (const field of ["labels", "uploads", "entrypoints", "command", "healthcheck"]) {
        const found = strings(c.inputs[field]);
        expect(
          found.filter((s) => s.secret),
          `${c.name} ${field}`,
        ).toEqual([]);
        for (const secret of Object.values(SECRETS)) {
          expect(JSON.stringify(found), `${c.name} ${field}`).not.toContain(secret);
        }
      }
    }
    const traefiks = containers.filter((c) => c.name.endsWith("-traefik"));
    expect(traefiks).toHaveLength(3);
    for (const t of traefiks) {
      const env = strings(t.inputs.envs).find((s) => s.text.includes(SECRETS["redis.password"]));
      expect(env?.secret, t.name).toBe(true);
    }
  });

  it("bans on every host: fail2ban with firewall capabilities, reading that host's relay log read-only", async () => {
    const { smtp, byName, name, config } = await built;
    expect(config.fail2ban).toBeDefined();
    smtp.nodes.forEach((node, i) => {
      const names = nodeNames(name, i);
      const fail2ban = byName(names.fail2ban);
      expect(node.fail2ban).toBeDefined();
      expect(providerOf(fail2ban)).toBe(`${names.host}-docker`);
      expect(fail2ban.inputs.networkMode).toBe("host");
      expect(fail2ban.inputs.capabilities.adds.sort()).toEqual(["NET_ADMIN", "NET_RAW"]);
      const relayLog = byName(names.relay).inputs.volumes.find((v: any) =>
        String(v.volumeName).endsWith("-maillog"),
      );
      const mounted = fail2ban.inputs.volumes.find(
        (v: any) => v.volumeName === relayLog.volumeName,
      );
      expect(mounted, names.fail2ban).toEqual({ ...relayLog, readOnly: true });
    });
  });

  it("passes the policy pack: every HTTP router rate limited first, the limiter defined", async () => {
    const { resources, config } = await built;
    const found = await violations(policyContainers(config.stack, resources));
    expect(found).toEqual([]);
  });

  it("holds every secret only inside secret values, anywhere", async () => {
    const all = (await built).resources.flatMap((r) =>
      strings(r.inputs).map((s) => ({ ...s, where: `${r.type} ${r.name}` })),
    );
    for (const value of Object.values(SECRETS)) {
      // Each secret reaches the program, so the search below has something to miss.
      expect(all.some((s) => s.secret && s.text.includes(value))).toBe(true);
      for (const { text, where } of all.filter((s) => !s.secret))
        expect(text, where).not.toContain(value);
    }
  });
});

describe.each(["dev", "prod"])("the %s stack as written (one host)", (stack) => {
  const single = build(stack);
  const multi = build(stack, 1);

  it("has fail2ban on its host by default, and none when fail2ban.enabled is false", async () => {
    const { ofType } = await single;
    expect(ofType(TYPES.fail2ban)).toHaveLength(1);
    const off = await build(stack, 0, { "fail2ban.enabled": "false" });
    expect(off.config.fail2ban).toBeUndefined();
    expect(off.smtp.nodes[0].fail2ban).toBeUndefined();
    expect(off.ofType(TYPES.fail2ban)).toEqual([]);
  });

  it("has one node and no Redis", async () => {
    const { smtp, config, ofType } = await single;
    expect(config.redis).toBeUndefined();
    expect(smtp.nodes).toHaveLength(1);
    expect(smtp.rateLimitStore).toBeUndefined();
    expect(ofType(TYPES.store)).toEqual([]);
  });

  it("keeps the first host's resource names when a host is added, so Pulumi replaces none of them", async () => {
    const [one, two] = await Promise.all([single, multi]);
    const local = (b: Built, r: Registered) => r.name.slice(b.name.length);
    const firstHost = (b: Built) =>
      b.resources
        .filter(
          (r) =>
            r.type !== TYPES.store &&
            !local(b, r).includes("-2") &&
            !local(b, r).includes("-redis"),
        )
        .map((r) => `${r.type} ${local(b, r)}`);
    expect(firstHost(two)).toEqual(expect.arrayContaining(firstHost(one)));
    expect(new Set(firstHost(two))).toEqual(new Set(firstHost(one)));
  });
});
