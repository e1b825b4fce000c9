/**
 * The edge: Traefik in a Docker container on the LXC host, publishing HTTP, HTTPS and the
 * two SMTP ports, with the Docker network the relay joins. What Traefik does is decided in
 * traefik.ts; this component only wires the resources.
 */
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import {
  CONTAINER_LOGGING,
  containerLabels,
  TRAEFIK_DYNAMIC_DIR,
  TRAEFIK_STATIC_PATH,
} from "./names";
import {
  ACME_STORAGE,
  CONTAINER_PORTS,
  DOCKER_SOCKET,
  EDGE_NETWORK,
  fileProviderFiles,
  REDIS_PASSWORD_ENV,
  renderYaml,
  traefikStaticConfig,
} from "./traefik";

export interface EdgeArgs {
  /** The parsed stack configuration; the Traefik part and the relay's hostname are read. */
  config: HomelabConfig;
  /** The Docker host's provider; every resource of the edge is created through it. */
  dockerProvider: docker.Provider;
}

/**
 * The entrypoint script. Traefik refuses an acme.json readable by others (and then drops
 * the resolver without failing); tightening the mode on every start also repairs a file
 * restored from a backup.
 */
export function edgeEntrypoint(): string[] {
  const script = [
    "set -e",
    `touch ${ACME_STORAGE}`,
    `chmod 600 ${ACME_STORAGE}`,
    `exec traefik --configFile=${TRAEFIK_STATIC_PATH}`,
  ].join("; ");
  // The official Traefik image is Alpine-based, so /bin/sh is there.
  return ["/bin/sh", "-c", script];
}

/**
 * The secret environment: the DNS provider's token as Traefik's ACME client reads it (dns
 * challenge only), and with a shared Redis its password, which the rate-limit file reads
 * through a template.
 */
// Traefik reads TRAEFIK_* variables as static configuration only when it finds no
// configuration file; it always has one here, so the password is not taken for an option.
export function edgeEnvironment(config: HomelabConfig): pulumi.Output<string[]> {
  const challenge = config.acme.challenge;
  const entries: pulumi.Output<string>[] = [];
  if (challenge.type === "dns") {
    entries.push(pulumi.interpolate`${challenge.tokenEnv}=${challenge.token}`);
  }
  if (config.redis) {
    entries.push(pulumi.interpolate`${REDIS_PASSWORD_ENV}=${config.redis.password}`);
  }
  if (entries.length === 0) return pulumi.output([]);
  return pulumi.secret(pulumi.all(entries));
}

export class Edge extends pulumi.ComponentResource {
  /** The network Traefik and the relay share. */
  readonly network: docker.Network;
  readonly container: docker.Container;
  /** The static configuration uploaded to the container (for the render and the tests). */
  readonly staticConfig: Record<string, any>;
  readonly networkName: string;

  constructor(name: string, args: EdgeArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:edge:Edge", name, {}, opts);
    const { config, dockerProvider } = args;
    const child = { provider: dockerProvider, parent: this };

    this.staticConfig = traefikStaticConfig(config);
    this.networkName = EDGE_NETWORK;

    this.network = new docker.Network(
      `${name}-network`,
      { name: EDGE_NETWORK, driver: "bridge" },
      child,
    );

    const image = new docker.RemoteImage(
      `${name}-image`,
      { name: config.traefik.image, keepLocally: true },
      child,
    );

    // A named volume outlives the container, so certificates survive a replacement and
    // Let's Encrypt's rate limits are not spent again.
    const acme = new docker.Volume(`${name}-acme`, { name: `${name}-acme` }, child);

    const ports = (Object.keys(CONTAINER_PORTS) as (keyof typeof CONTAINER_PORTS)[]).map((ep) => ({
      internal: CONTAINER_PORTS[ep],
      external: config.traefik.ports[ep],
      protocol: "tcp",
    }));

    this.container = new docker.Container(
      `${name}-traefik`,
      {
        name,
        image: image.imageId,
        entrypoints: edgeEntrypoint(),
        restart: "unless-stopped",
        ports,
        networksAdvanced: [{ name: this.network.name }],
        uploads: [
          { file: TRAEFIK_STATIC_PATH, content: renderYaml(this.staticConfig) },
          ...fileProviderFiles(config).map(({ file, dynamic }) => ({
            file: `${TRAEFIK_DYNAMIC_DIR}/${file}`,
            content: renderYaml(dynamic),
          })),
        ],
        volumes: [
          {
            volumeName: acme.name,
            containerPath: ACME_STORAGE.slice(0, ACME_STORAGE.lastIndexOf("/")),
          },
          // Limitation: read-only stops nothing on a socket: Traefik can still use the whole
          // Docker API (root on the LXC). A socket proxy would narrow it to reads, at the
          // cost of one more pinned image and container; not done yet.
          { hostPath: DOCKER_SOCKET, containerPath: DOCKER_SOCKET, readOnly: true },
        ],
        envs: edgeEnvironment(config),
        labels: containerLabels("edge"),
        healthcheck: {
          tests: ["CMD", "traefik", "healthcheck", "--ping", `--configFile=${TRAEFIK_STATIC_PATH}`],
          interval: "30s",
          timeout: "5s",
          startPeriod: "20s",
          retries: 3,
        },
        ...CONTAINER_LOGGING,
      },
      child,
    );

    this.registerOutputs({ networkName: this.networkName, containerName: this.container.name });
  }
}
