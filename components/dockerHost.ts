/**
 * The Docker host: an unprivileged LXC container on a Proxmox node, with Docker installed
 * from Debian's packages over SSH, and a Docker provider that reaches it through the local
 * ssh client. Every container of the stack is created through `dockerProvider`.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as proxmoxve from "@muhlba91/pulumi-proxmoxve";
import * as command from "@pulumi/command";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { HomelabConfig, PROJECT } from "../config";

/** The bootstrap script, run on the container as `bash -s` with the script on stdin. */
export const INSTALL_SCRIPT_PATH = path.join(__dirname, "scripts", "install-docker.sh");

export interface DockerHostArgs {
  /** Proxmox API, node, auth, storage and template (HomelabConfig["proxmox"]). */
  proxmox: HomelabConfig["proxmox"];
  /** The container (HomelabConfig["lxc"]). */
  lxc: HomelabConfig["lxc"];
}

type ProxmoxConfig = HomelabConfig["proxmox"];
type LxcConfig = HomelabConfig["lxc"];

/**
 * Refuses settings Proxmox would reject halfway through a deployment. config.ts checks the
 * same things; this guards callers that build the arguments themselves.
 */
export function checkDockerHostArgs(args: DockerHostArgs): void {
  const { auth } = args.proxmox;
  if (args.lxc.keyctl && !(auth.method === "password" && auth.username === "root@pam")) {
    throw new Error(
      `${PROJECT}:lxc.keyctl is true with proxmox.authMethod ${auth.method}; expected keyctl ` +
        "false, or root@pam password auth (only root@pam may set container features other than nesting)",
    );
  }
  if (args.lxc.sshUser !== "root") {
    throw new Error(
      `${PROJECT}:lxc.sshUser is ${JSON.stringify(args.lxc.sshUser)}; expected root ` +
        "(Proxmox installs lxc.sshPublicKeys for root only, so no other user could log in)",
    );
  }
}

/** The provider credentials: `<tokenId>=<secret>` for a token, else username and password. */
export function proxmoxProviderArgs(proxmox: ProxmoxConfig): proxmoxve.ProviderArgs {
  const { auth } = proxmox;
  const credentials =
    auth.method === "apiToken"
      ? { apiToken: pulumi.secret(pulumi.interpolate`${auth.tokenId}=${auth.secret}`) }
      : { username: auth.username, password: pulumi.secret(auth.password) };
  return { endpoint: proxmox.endpoint, insecure: proxmox.insecure, ...credentials };
}

/**
 * Tags saying who manages the container. Proxmox stores tags lowercased and sorted and
 * reports any other spelling as a change, so they are written that way.
 */
export function containerTags(stack: string): string[] {
  const tag = (text: string) => text.toLowerCase().replace(/[^a-z0-9_.+-]+/g, "-");
  return [...new Set(["pulumi", tag(PROJECT), tag(stack)])].sort();
}

/** The container as the Proxmox provider takes it, minus the node-side wiring. */
export function containerArgs(
  proxmox: ProxmoxConfig,
  lxc: LxcConfig,
  templateFileId: pulumi.Input<string>,
  stack: string,
): proxmoxve.ContainerLegacyArgs {
  return {
    nodeName: proxmox.node,
    vmId: lxc.vmId,
    description: `Docker host of ${PROJECT} (stack ${stack}), managed by Pulumi.`,
    tags: containerTags(stack),
    unprivileged: true,
    // Only root@pam may set features other than nesting, even to false: keyctl only when asked.
    features: { nesting: true, ...(lxc.keyctl ? { keyctl: true } : {}) },
    // Limitation: the install script uses apt and Debian's docker.io, so the template must
    // be Debian (or a derivative that packages docker.io).
    // The provider's default type is "unmanaged", with which Proxmox writes no network
    // configuration or SSH keys into the container.
    operatingSystem: { templateFileId, type: "debian" },
    cpu: { cores: lxc.cores },
    memory: { dedicated: lxc.memory, swap: lxc.swap },
    disk: { datastoreId: proxmox.datastore, size: lxc.diskSize },
    networkInterfaces: [
      { name: "eth0", bridge: lxc.bridge, ...(lxc.vlan !== undefined ? { vlanId: lxc.vlan } : {}) },
    ],
    initialization: {
      hostname: lxc.hostname,
      ipConfigs: [{ ipv4: { address: lxc.ipv4, gateway: lxc.gateway } }],
      dns: { servers: [...lxc.dns] },
      userAccount: { keys: [...lxc.sshPublicKeys] },
    },
    startOnBoot: true,
    started: true,
  };
}

/** What makes the install re-run: the script's content, so an unchanged script runs once. */
export function installTrigger(script: string): string {
  return `sha256:${crypto.createHash("sha256").update(script).digest("hex")}`;
}

/**
 * Options for the local ssh client the Docker provider starts. BatchMode turns a missing
 * key or a password prompt into an error instead of a hang; accept-new trusts the host key
 * of a container seen for the first time.
 */
export const DOCKER_SSH_OPTS: readonly string[] = [
  "BatchMode=yes",
  // Limitation: a replaced container has new host keys, which accept-new refuses once the
  // old ones are in ~/.ssh/known_hosts: run `ssh-keygen -R <address>` after a replacement.
  // The Docker provider takes ssh options only, no known-hosts content to pin a key with.
  "StrictHostKeyChecking=accept-new",
  "ConnectTimeout=20",
  "ServerAliveInterval=30",
].flatMap((option) => ["-o", option]);

export class DockerHost extends pulumi.ComponentResource {
  /** The Proxmox container id (vmid). */
  readonly containerId: pulumi.Output<string>;
  /** The container's IPv4 address, without prefix length. */
  readonly address: string;
  /** `user@address`, as ssh and the Docker provider use it. */
  readonly sshHost: string;
  /** Reaches the container's Docker daemon, once Docker is installed and answering. */
  readonly dockerProvider: docker.Provider;

  constructor(name: string, args: DockerHostArgs, opts?: pulumi.ComponentResourceOptions) {
    checkDockerHostArgs(args);
    super("homelab:host:DockerHost", name, {}, opts);
    const { proxmox, lxc } = args;
    const stack = pulumi.getStack();

    const provider = new proxmoxve.Provider(`${name}-proxmox`, proxmoxProviderArgs(proxmox), {
      parent: this,
    });

    let templateFileId: pulumi.Input<string>;
    const containerDependsOn: pulumi.Resource[] = [];
    if (proxmox.template.kind === "existing") {
      templateFileId = proxmox.template.fileId;
    } else {
      const { url, fileName, checksum } = proxmox.template;
      const template = new proxmoxve.download.File(
        `${name}-template`,
        {
          nodeName: proxmox.node,
          datastoreId: proxmox.templateDatastore,
          contentType: "vztmpl",
          url,
          fileName,
          ...(checksum ? { checksum: checksum.value, checksumAlgorithm: checksum.algorithm } : {}),
        },
        { parent: this, provider },
      );
      templateFileId = template.id;
      containerDependsOn.push(template);
    }

    const container = new proxmoxve.ContainerLegacy(
      `${name}-lxc`,
      containerArgs(proxmox, lxc, templateFileId, stack),
      { parent: this, provider, dependsOn: containerDependsOn },
    );

    const script = fs.readFileSync(INSTALL_SCRIPT_PATH, "utf8");
    const install = new command.remote.Command(
      `${name}-install-docker`,
      {
        // Limitation: the host key is not checked (Proxmox generates it at first boot, so
        // nothing is known to compare it with); the first connection is trusted.
        connection: {
          host: lxc.address,
          user: lxc.sshUser,
          privateKey: lxc.sshPrivateKey,
          // sshd comes up a few seconds after Proxmox reports the container started: keep
          // dialling (with the provider's growing pauses) for minutes, not ten quick tries.
          dialErrorLimit: 40,
          perDialTimeout: 5,
        },
        create: "bash -s",
        stdin: script,
        // A replaced container (same address, new id) is a fresh machine: install again.
        triggers: [installTrigger(script), container.id],
      },
      { parent: this, dependsOn: [container] },
    );

    this.containerId = container.vmId.apply(String);
    this.address = lxc.address;
    this.sshHost = `${lxc.sshUser}@${lxc.address}`;
    this.dockerProvider = new docker.Provider(
      `${name}-docker`,
      {
        // Unknown until the install has run, so a first preview does not dial a container
        // that does not exist yet.
        host: install.stdout.apply(() => `ssh://${this.sshHost}`),
        sshOpts: [...DOCKER_SSH_OPTS],
      },
      { parent: this, dependsOn: [install] },
    );

    this.registerOutputs({
      containerId: this.containerId,
      address: this.address,
      sshHost: this.sshHost,
    });
  }
}
