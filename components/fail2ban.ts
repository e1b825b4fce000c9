/**
 * Bans for clients that keep failing SMTP AUTH: fail2ban on each Docker host reads that host's
 * relay log and blocks offenders in the host's firewall, before Traefik sees them again.
 *
 * Postfix's anvil limits slow a brute force down per window; a ban ends it for banTime. The
 * relay logs the client's own address (Traefik passes it on in a PROXY header), so the address
 * fail2ban finds is the one to block.
 */
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import { MAIL_LOG, MAIL_LOG_DIR } from "./relay";
import { CONTAINER_PORTS } from "./traefik";
import { CONTAINER_LOGGING, containerLabels } from "./names";

type Fail2banConfig = NonNullable<HomelabConfig["fail2ban"]>;

export interface Fail2banArgs {
  /** Retries, windows and addresses never banned (HomelabConfig["fail2ban"]). */
  fail2ban: Fail2banConfig;
  /** The Docker host's provider: fail2ban runs on the host whose relay it watches. */
  dockerProvider: docker.Provider;
  /** The relay's log volume (Relay.maillog), mounted read-only. */
  maillog: docker.Volume;
}

/** The jail's name, as fail2ban-client and the firewall chain (f2b-<name>) show it. */
export const JAIL_NAME = "relay-sasl";

/**
 * Fail2ban's own Postfix filter, in the mode that matches failed SASL logins only
 * ("SASL LOGIN authentication failed"), so a sender's typo in an address never counts.
 */
export const JAIL_FILTER = "postfix[mode=auth]";

/** Where the jail is uploaded: fail2ban reads jail.local after its shipped jail.conf. */
export const JAIL_PATH = "/etc/fail2ban/jail.local";

/** The image keeps its database (bans survive a restart) under /data. */
export const DATA_DIR = "/data";

/**
 * The ports a ban closes. Published container ports are translated (DNAT) before filtering, so
 * the packets reach DOCKER-USER with the ports inside Traefik's container, whatever host ports
 * traefik.*Port publish them on.
 */
export const BANNED_PORTS: readonly number[] = [CONTAINER_PORTS.smtps, CONTAINER_PORTS.submission];

export interface JailOptions {
  /** The log the jail reads. Defaults to MAIL_LOG, where the relay's rsyslog writes it. */
  logPath?: string;
}

/**
 * jail.local: one jail on the relay's plain-text log. Bans go into Docker's DOCKER-USER chain,
 * which every packet to a published port crosses; INPUT never sees them.
 */
// Limitation: behind an upstream proxy (traefik.trustedProxies, as in prod) the packets come
// from the proxy, so a firewall rule on the client's address matches nothing there: bans only
// stop clients that connect directly. Behind a proxy, ban at the proxy instead (it sees the
// client), for example by running a jail on the proxy with this filter on this log.
export function jailLocal(fail2ban: Fail2banConfig, options: JailOptions = {}): string {
  const settings: [string, string][] = [
    ["enabled", "true"],
    ["filter", JAIL_FILTER],
    ["logpath", options.logPath ?? MAIL_LOG],
    ["maxretry", String(fail2ban.maxRetry)],
    ["findtime", fail2ban.findTime],
    ["bantime", fail2ban.banTime],
    ["ignoreip", fail2ban.ignoreIPs.join(" ")],
    ["banaction", "iptables-multiport"],
    ["chain", "DOCKER-USER"],
    ["port", BANNED_PORTS.join(",")],
    ["protocol", "tcp"],
  ];
  return [
    "# Rendered from the stack configuration by homelab-smtp; change the stack, not this file.",
    "",
    `[${JAIL_NAME}]`,
    ...settings.map(([key, value]) => `${key} = ${value}`),
    "",
  ].join("\n");
}

/**
 * The image's environment. Both the relay's and fail2ban's images run in UTC, and the log's
 * timestamps carry no zone: the same zone on both sides keeps findTime honest.
 */
export function fail2banEnvironment(fail2ban: Fail2banConfig): string[] {
  return [
    "TZ=UTC",
    "F2B_LOG_TARGET=STDOUT",
    // A ban stays in the database as long as it lasts, so a restart restores it.
    `F2B_DB_PURGE_AGE=${fail2ban.banTime}`,
  ];
}

export class Fail2ban extends pulumi.ComponentResource {
  readonly container: docker.Container;

  constructor(name: string, args: Fail2banArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:fail2ban:Fail2ban", name, {}, opts);
    const { fail2ban } = args;
    const child = { parent: this, provider: args.dockerProvider };

    const image = new docker.RemoteImage(
      `${name}-image`,
      { name: fail2ban.image, keepLocally: true },
      child,
    );
    const data = new docker.Volume(`${name}-data`, { name: `${name}-data` }, child);

    // The host's network namespace, and the capabilities to change its firewall: the bans
    // must land in the host's DOCKER-USER chain, not in a container's own namespace.
    this.container = new docker.Container(
      name,
      {
        name,
        image: image.imageId,
        networkMode: "host",
        capabilities: { adds: ["NET_ADMIN", "NET_RAW"] },
        envs: fail2banEnvironment(fail2ban),
        labels: containerLabels("fail2ban"),
        uploads: [{ file: JAIL_PATH, content: jailLocal(fail2ban) }],
        volumes: [
          { volumeName: args.maillog.name, containerPath: MAIL_LOG_DIR, readOnly: true },
          { volumeName: data.name, containerPath: DATA_DIR },
        ],
        restart: "unless-stopped",
        ...CONTAINER_LOGGING,
      },
      child,
    );

    this.registerOutputs({ containerName: this.container.name });
  }
}
