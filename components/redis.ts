/**
 * The shared rate-limit store: one Redis-compatible server (Valkey by default) on the first
 * Docker host, where every edge's Traefik keeps its rate-limit buckets, so that a client gets
 * one budget however many edges it spreads over. The buckets are short-lived counters: nothing
 * is written to disk, and a restart only refills every bucket.
 */
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import { CONTAINER_LOGGING, containerLabels } from "./names";

export interface RateLimitStoreArgs {
  /** The store's settings (HomelabConfig["redis"]): image, port, password, and the address to bind. */
  redis: NonNullable<HomelabConfig["redis"]>;
  /** The first Docker host's provider: the store runs there. */
  dockerProvider: docker.Provider;
}

/** The container's variable holding the password; only the server's start script reads it. */
export const REDIS_PASSWORD_VAR = "REDIS_PASSWORD";

/**
 * Memory the buckets may use. Every client address is a key, so a flood from many addresses
 * (an IPv6 prefix holds billions) would grow without bound; past the cap the least recently
 * used buckets are dropped, which only gives those clients a full bucket again.
 */
export const MAX_MEMORY = "64mb";

/**
 * The server's start script. The password comes from the environment at start, so it is not
 * part of the container's command (`docker inspect` shows `"$REDIS_PASSWORD"`, not its
 * value). It is still the server's argument for a moment: Redis and Valkey rewrite their
 * process title as they start, after which `ps` on the host shows only the address.
 */
// Limitation: `docker inspect` does show the environment, password included, to whoever holds
// the Docker socket (root on the host, who can read the server's memory anyway). Neither
// server reads its password from a file, and a config file on disk would be one more copy.
export function redisStartScript(redis: RateLimitStoreArgs["redis"]): string {
  const server = "$(command -v valkey-server || command -v redis-server)";
  return [
    `exec ${server}`,
    // Reachable from the other hosts' Traefiks; loopback for the healthcheck.
    `--bind ${redis.host} 127.0.0.1`,
    `--port ${redis.port}`,
    "--protected-mode yes",
    `--requirepass "$${REDIS_PASSWORD_VAR}"`,
    // Buckets refill in seconds; keeping them across a restart is worth no disk write.
    `--save ''`,
    "--appendonly no",
    `--maxmemory ${MAX_MEMORY}`,
    "--maxmemory-policy allkeys-lru",
  ].join(" ");
}

/**
 * Healthy when the server answers an authenticated PING on loopback. The password goes to the
 * client through its environment, never as an argument (which `ps` would show).
 */
export function redisHealthcheck(
  redis: RateLimitStoreArgs["redis"],
): docker.types.input.ContainerHealthcheck {
  const cli = "$(command -v valkey-cli || command -v redis-cli)";
  const auth = `VALKEYCLI_AUTH="$${REDIS_PASSWORD_VAR}" REDISCLI_AUTH="$${REDIS_PASSWORD_VAR}"`;
  return {
    tests: ["CMD-SHELL", `${auth} ${cli} -h 127.0.0.1 -p ${redis.port} ping | grep -q PONG`],
    interval: "10s",
    timeout: "3s",
    retries: 3,
    startPeriod: "5s",
  };
}

/**
 * The password as the container's environment. It also ends up inside a YAML single-quoted
 * string once Traefik renders its rate-limit file, so a quote or a line break would break
 * that file: such a password is refused before anything is deployed.
 */
export function redisEnvironment(redis: RateLimitStoreArgs["redis"]): pulumi.Output<string[]> {
  return pulumi.secret(
    redis.password.apply((password) => {
      checkRedisPassword(password);
      return [`${REDIS_PASSWORD_VAR}=${password}`];
    }),
  );
}

/** Throws when the password cannot sit in Traefik's rate-limit file. */
export function checkRedisPassword(password: string): void {
  if (/['\r\n]/.test(password)) {
    throw new Error(
      "homelab-smtp:redis.password contains a single quote or a line break; expected neither: " +
        "Traefik reads the password through a single-quoted YAML string",
    );
  }
}

/**
 * The unprivileged user the official images create (valkey/valkey: valkey, redis: redis).
 * Without it the start script, which replaces the images' entrypoint, would run as root.
 */
export function serverUser(image: string): string {
  const repository = image.split(/[:@]/)[0];
  return /(^|\/)valkey$/.test(repository) ? "valkey" : "redis";
}

// Limitation: Traefik talks to the store in plain TCP over the LAN, so the password and the
// bucket keys (client addresses) can be read on that segment. Traefik's redis.tls and a
// TLS-enabled server would close that, at the cost of a certificate to issue and renew.
export class RateLimitStore extends pulumi.ComponentResource {
  readonly container: docker.Container;
  /** Where the edges reach the store: `<first host's address>:<port>`. */
  readonly endpoint: string;

  constructor(name: string, args: RateLimitStoreArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:redis:RateLimitStore", name, {}, opts);
    const { redis } = args;
    const child = { parent: this, provider: args.dockerProvider };
    this.endpoint = `${redis.host}:${redis.port}`;

    const image = new docker.RemoteImage(
      `${name}-image`,
      { name: redis.image, keepLocally: true },
      child,
    );

    // Host networking: the other hosts' Traefiks connect to the first host's own address,
    // and no Docker port is published (a published port would skip the host's INPUT rules).
    this.container = new docker.Container(
      name,
      {
        name,
        image: image.imageId,
        networkMode: "host",
        user: serverUser(redis.image),
        entrypoints: ["/bin/sh", "-c", redisStartScript(redis)],
        envs: redisEnvironment(redis),
        labels: containerLabels("rate-limit-store"),
        healthcheck: redisHealthcheck(redis),
        restart: "unless-stopped",
        ...CONTAINER_LOGGING,
      },
      child,
    );

    this.registerOutputs({ endpoint: this.endpoint, containerName: this.container.name });
  }
}
