/**
 * The whole relay: a Docker host on Proxmox, Traefik at the front door, Postfix behind it.
 */
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import { DockerHost } from "./dockerHost";
import { Edge } from "./edge";
import { Relay } from "./relay";
import { relayLabels } from "./traefik";

export interface HomelabSmtpArgs {
  /** The parsed and validated stack configuration. */
  config: HomelabConfig;
}

export class HomelabSmtp extends pulumi.ComponentResource {
  readonly host: DockerHost;
  readonly edge: Edge;
  readonly relay: Relay;

  constructor(name: string, args: HomelabSmtpArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:index:HomelabSmtp", name, {}, opts);
    const { config } = args;

    this.host = new DockerHost(`${name}-host`, { proxmox: config.proxmox, lxc: config.lxc }, { parent: this });
    const dockerProvider = this.host.dockerProvider;
    this.edge = new Edge(`${name}-edge`, { config, dockerProvider }, { parent: this });
    this.relay = new Relay(
      `${name}-relay`,
      { config, dockerProvider, network: this.edge.network, labels: relayLabels(config, { metricsAllowList: config.traefik.metricsAllowList }) },
      { parent: this },
    );

    this.registerOutputs({
      containerId: this.host.containerId,
      address: this.host.address,
      relayHostname: config.relay.hostname,
    });
  }
}
