/**
 * The program `pulumi up` runs: read and check the stack configuration once, then build
 * the relay from components.
 */
import * as pulumi from "@pulumi/pulumi";
import { ConfigError, fromPulumiRuntime, HomelabConfig, PROJECT, parseConfig } from "./config";
import { HomelabSmtp } from "./components/homelab";

function readConfig(): HomelabConfig {
  try {
    return parseConfig(fromPulumiRuntime());
  } catch (err) {
    // A user's mistake: the problems, not a stack trace; nothing has been registered yet.
    if (err instanceof ConfigError) throw new pulumi.RunError(err.message);
    throw err;
  }
}

const config = readConfig();
for (const warning of config.warnings) pulumi.log.warn(warning);

const smtp = new HomelabSmtp(PROJECT, { config });

/** The Proxmox container id of the Docker host. */
export const containerId = smtp.host.containerId;
/** Where the first edge answers: point the relay's DNS name here. */
export const address = smtp.host.address;
/** Every edge's address, the first one first (several with edge.extraHosts). */
export const addresses = smtp.nodes.map((node) => node.host.address);
/** The shared rate-limit store, host:port, when there are several edges. */
export const rateLimitStore = smtp.rateLimitStore?.endpoint;
export const relayHostname = config.relay.hostname;
/** Host ports of Traefik's entry points. */
export const ports = config.traefik.ports;
export const acmeCa = config.acme.caServer;
