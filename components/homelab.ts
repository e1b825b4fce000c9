/**
 * The whole relay: one or more Docker hosts on Proxmox, each with Traefik at the front door
 * and a Postfix relay behind it, and with several hosts a shared Redis for the rate limits.
 */
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import { DockerHost } from "./dockerHost";
import { Edge } from "./edge";
import { Fail2ban } from "./fail2ban";
import { RateLimitStore } from "./redis";
import { Relay } from "./relay";
import { relayLabels } from "./traefik";

export interface HomelabSmtpArgs {
  /** The parsed and validated stack configuration; every entry of `hosts` gets a node. */
  config: HomelabConfig;
}

/** One Docker host with its own Traefik, its own relay and, when enabled, its own bans. */
export interface EdgeNode {
  host: DockerHost;
  edge: Edge;
  relay: Relay;
  fail2ban?: Fail2ban;
}

/**
 * Resource names of the host at `index`: the first keeps the names a single-host stack has
 * always had (renaming would make Pulumi replace it), the others are numbered from 2.
 */
export function nodeNames(
  name: string,
  index: number,
): { host: string; edge: string; relay: string; fail2ban: string } {
  const suffix = index === 0 ? "" : `-${index + 1}`;
  return {
    host: `${name}-host${suffix}`,
    edge: `${name}-edge${suffix}`,
    relay: `${name}-relay${suffix}`,
    fail2ban: `${name}-fail2ban${suffix}`,
  };
}

export class HomelabSmtp extends pulumi.ComponentResource {
  /** The first host, its edge and its relay (the only ones of a single-host stack). */
  readonly host: DockerHost;
  readonly edge: Edge;
  readonly relay: Relay;
  /** Every host, the first one first. */
  readonly nodes: readonly EdgeNode[];
  /** The shared rate-limit store on the first host; absent with a single host. */
  readonly rateLimitStore?: RateLimitStore;

  constructor(name: string, args: HomelabSmtpArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:index:HomelabSmtp", name, {}, opts);
    const { config } = args;
    const labels = relayLabels(config);

    // Each relay sits next to its own Traefik: a node going down takes its share of the
    // connections with it, not the mail of the others.
    this.nodes = config.hosts.map((hostConfig, index) => {
      const names = nodeNames(name, index);
      const host = new DockerHost(names.host, hostConfig, { parent: this });
      const dockerProvider = host.dockerProvider;
      const edge = new Edge(names.edge, { config, dockerProvider }, { parent: this });
      const relay = new Relay(
        names.relay,
        { config, dockerProvider, network: edge.network, labels },
        { parent: this },
      );
      // Each host bans on its own: its firewall, its relay's log.
      const fail2ban = config.fail2ban
        ? new Fail2ban(
            names.fail2ban,
            { fail2ban: config.fail2ban, dockerProvider, maillog: relay.maillog },
            { parent: this },
          )
        : undefined;
      return { host, edge, relay, ...(fail2ban ? { fail2ban } : {}) };
    });
    [{ host: this.host, edge: this.edge, relay: this.relay }] = this.nodes;

    if (config.redis) {
      this.rateLimitStore = new RateLimitStore(
        `${name}-redis`,
        { redis: config.redis, dockerProvider: this.host.dockerProvider },
        { parent: this },
      );
    }

    this.registerOutputs({
      containerId: this.host.containerId,
      address: this.host.address,
      addresses: this.nodes.map((n) => n.host.address),
      relayHostname: config.relay.hostname,
      ...(this.rateLimitStore ? { rateLimitStore: this.rateLimitStore.endpoint } : {}),
    });
  }
}
