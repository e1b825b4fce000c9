import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { describe, expect, it } from "vitest";
import { HomelabConfig, PROJECT } from "../config";
import { SECRETS, stackConfig } from "./stacks";
import {
  DockerHost,
  DockerHostArgs,
  INSTALL_SCRIPT_PATH,
  containerTags,
  installTrigger,
} from "../components/dockerHost";
import {
  isSecretValue,
  Registered,
  registeredResources,
  settle,
  strings,
  unwrapSecrets,
} from "./mocks";

// ---------------------------------------------------------------------------------------
// Building the component under the mock runtime.

interface Child {
  type: string;
  name: string;
  resource: pulumi.Resource;
  opts: pulumi.ResourceOptions;
}

interface Built {
  name: string;
  config: HomelabConfig;
  host: DockerHost;
  /** What the component's children were created with (type, name, resource options). */
  children: Child[];
  /** What the mocks received, children only. */
  registered: Registered[];
  child(type: string): Child | undefined;
  inputs(type: string): Record<string, unknown>;
}

const TYPES = {
  component: "homelab:host:DockerHost",
  proxmox: "pulumi:providers:proxmoxve",
  template: "proxmoxve:download/file:File",
  container: "proxmoxve:index/containerLegacy:ContainerLegacy",
  install: "command:remote:Command",
  docker: "pulumi:providers:docker",
} as const;

let builds = 0;

async function build(config: HomelabConfig): Promise<Built> {
  const name = `${config.stack}-host-${++builds}`;
  const children: Child[] = [];
  // A component's transformations run for the component itself too: keep only its children.
  const capture: pulumi.ResourceTransformation = ({ type, name: childName, resource, opts }) => {
    if (type !== TYPES.component) children.push({ type, name: childName, resource, opts });
    return undefined;
  };
  const host = new DockerHost(
    name,
    { proxmox: config.proxmox, lxc: config.lxc },
    { transformations: [capture] },
  );
  // The Docker provider is the end of the chain: once it is registered, everything is.
  await settle(host.dockerProvider.urn);
  await settle(host.containerId);

  const registered = registeredResources().filter((r) => r.name.startsWith(`${name}-`));
  const byType = (type: string) => registered.find((r) => r.type === type);
  return {
    name,
    config,
    host,
    children,
    registered,
    child: (type) => children.find((c) => c.type === type),
    inputs: (type) => {
      const found = byType(type);
      if (!found)
        throw new Error(`no ${type} registered; got ${registered.map((r) => r.type).join(", ")}`);
      return found.inputs;
    },
  };
}

/** Provider resources receive non-string inputs JSON-encoded. */
function providerInput(value: unknown): unknown {
  return typeof value === "string" && /^[[{]|^(true|false)$/.test(value)
    ? JSON.parse(value)
    : value;
}

// ---------------------------------------------------------------------------------------

const STACKS = ["dev", "prod"] as const;

describe.each(STACKS)("DockerHost from the %s stack", (stack) => {
  const config = stackConfig(stack);
  const { proxmox, lxc } = config;
  const built = build(config);

  it("creates the Proxmox provider, container, install command and Docker provider", async () => {
    const { registered } = await built;
    const types = registered.map((r) => r.type).sort();
    const expected: string[] = [TYPES.proxmox, TYPES.container, TYPES.install, TYPES.docker];
    if (proxmox.template.kind === "download") expected.push(TYPES.template);
    expect(types).toEqual(expected.sort());
  });

  it("authenticates to Proxmox as configured, the credential only as a secret", async () => {
    const inputs = (await built).inputs(TYPES.proxmox);
    expect(inputs.endpoint).toBe(proxmox.endpoint);
    expect(providerInput(inputs.insecure)).toBe(proxmox.insecure);
    const { auth } = proxmox;
    if (auth.method === "apiToken") {
      expect(isSecretValue(inputs.apiToken)).toBe(true);
      expect(unwrapSecrets(inputs.apiToken)).toBe(
        `${auth.tokenId}=${SECRETS["proxmox.credential"]}`,
      );
      expect(inputs.password).toBeUndefined();
    } else {
      expect(inputs.username).toBe(auth.username);
      expect(isSecretValue(inputs.password)).toBe(true);
      expect(unwrapSecrets(inputs.password)).toBe(SECRETS["proxmox.credential"]);
      expect(inputs.apiToken).toBeUndefined();
    }
  });

  it("manages every Proxmox resource through that provider", async () => {
    const { registered, name } = await built;
    const onProxmox = registered.filter((r) => r.type.startsWith("proxmoxve:"));
    expect(onProxmox.length).toBeGreaterThan(0);
    for (const r of onProxmox) expect(r.provider).toContain(`::${name}-proxmox::`);
  });

  it("uses the template the configuration names, downloading it only when asked", async () => {
    const b = await built;
    const os = unwrapSecrets(b.inputs(TYPES.container).operatingSystem);
    if (proxmox.template.kind === "existing") {
      expect(b.child(TYPES.template)).toBeUndefined();
      expect(os.templateFileId).toBe(proxmox.template.fileId);
      return;
    }
    const download = b.inputs(TYPES.template);
    expect(download).toMatchObject({
      nodeName: proxmox.node,
      datastoreId: proxmox.templateDatastore,
      contentType: "vztmpl",
      url: proxmox.template.url,
      fileName: proxmox.template.fileName,
    });
    expect(download.checksum).toBe(proxmox.template.checksum?.value);
    const { value: templateId } = await settle(
      (b.child(TYPES.template)!.resource as pulumi.CustomResource).id,
    );
    expect(os.templateFileId).toBe(templateId);
  });

  it("creates an unprivileged container sized, addressed and keyed as configured", async () => {
    const c = unwrapSecrets((await built).inputs(TYPES.container));
    expect(c.unprivileged).toBe(true);
    expect(c.nodeName).toBe(proxmox.node);
    expect(c.vmId).toBe(lxc.vmId);
    expect(c.cpu.cores).toBe(lxc.cores);
    expect(c.memory).toEqual({ dedicated: lxc.memory, swap: lxc.swap });
    expect(c.disk).toEqual({ datastoreId: proxmox.datastore, size: lxc.diskSize });
    expect(c.initialization.hostname).toBe(lxc.hostname);
    expect(c.initialization.ipConfigs).toEqual([
      { ipv4: { address: lxc.ipv4, gateway: lxc.gateway } },
    ]);
    expect(c.initialization.dns.servers).toEqual(lxc.dns);
    expect(c.initialization.userAccount.keys).toEqual(lxc.sshPublicKeys);
    expect(c.startOnBoot).toBe(true);
    expect(c.started).toBe(true);
  });

  it("enables nesting, and keyctl only when the configuration asks for it", async () => {
    const { features } = unwrapSecrets((await built).inputs(TYPES.container));
    expect(features.nesting).toBe(true);
    if (lxc.keyctl) expect(features.keyctl).toBe(true);
    else expect("keyctl" in features).toBe(false);
  });

  it("joins the configured bridge and VLAN", async () => {
    const [nic] = unwrapSecrets((await built).inputs(TYPES.container)).networkInterfaces;
    expect(nic.bridge).toBe(lxc.bridge);
    expect(nic.vlanId).toBe(lxc.vlan);
  });

  it("tags the container with what manages it", async () => {
    const { tags } = unwrapSecrets((await built).inputs(TYPES.container));
    expect(tags).toEqual(expect.arrayContaining(["pulumi", PROJECT, pulumi.getStack()]));
  });

  it("installs Docker over SSH as the configured user, the key only as a secret", async () => {
    const inputs = (await built).inputs(TYPES.install);
    expect(
      isSecretValue(inputs.connection) || isSecretValue((inputs.connection as any).privateKey),
    ).toBe(true);
    const connection = unwrapSecrets(inputs.connection);
    expect(connection).toMatchObject({ host: lxc.address, user: lxc.sshUser });
    expect(connection.privateKey).toBe(SECRETS["lxc.sshPrivateKey"]);
    expect(inputs.stdin).toBe(fs.readFileSync(INSTALL_SCRIPT_PATH, "utf8"));
    expect(inputs.create).toMatch(/^bash -s\b/);
  });

  it("re-runs the install when the script or the container changes, and only then", async () => {
    const b = await built;
    const script = fs.readFileSync(INSTALL_SCRIPT_PATH, "utf8");
    const { value: containerId } = await settle(
      (b.child(TYPES.container)!.resource as pulumi.CustomResource).id,
    );
    expect(unwrapSecrets(b.inputs(TYPES.install).triggers)).toEqual([
      installTrigger(script),
      containerId,
    ]);
  });

  it("points the Docker provider at the container over ssh, non-interactively", async () => {
    const inputs = (await built).inputs(TYPES.docker);
    expect(inputs.host).toBe(`ssh://${lxc.sshUser}@${lxc.address}`);
    const sshOpts = providerInput(inputs.sshOpts) as string[];
    expect(sshOpts).toEqual(
      expect.arrayContaining(["StrictHostKeyChecking=accept-new", "BatchMode=yes"]),
    );
    // Each option is a separate argument of ssh: `-o` followed by its value.
    sshOpts.forEach((opt, i) => expect(i % 2 === 0 ? opt : "-o").toBe("-o"));
  });

  it("chains provider -> install -> container -> template explicitly", async () => {
    const b = await built;
    const dependsOn = (type: string) => [b.child(type)?.opts.dependsOn ?? []].flat();
    expect(dependsOn(TYPES.docker)).toContain(b.child(TYPES.install)!.resource);
    expect(dependsOn(TYPES.install)).toContain(b.child(TYPES.container)!.resource);
    if (proxmox.template.kind === "download") {
      expect(dependsOn(TYPES.container)).toContain(b.child(TYPES.template)!.resource);
    }
  });

  it("parents every child to the component and derives its name from the component's", async () => {
    const b = await built;
    expect(b.children.length).toBe(b.registered.length);
    for (const child of b.children) {
      expect(child.opts.parent).toBe(b.host);
      expect(child.name.startsWith(`${b.name}-`)).toBe(true);
    }
  });

  it("exposes the container id, address and ssh host", async () => {
    const { host } = await built;
    const { value: containerId } = await settle(host.containerId);
    expect(containerId).toBe(String(lxc.vmId));
    expect(host.address).toBe(lxc.ipv4.split("/")[0]);
    expect(host.sshHost).toBe(`${lxc.sshUser}@${host.address}`);
  });

  it("never hands a secret to the mocks in plain text", async () => {
    const { registered } = await built;
    const canaries = [SECRETS["proxmox.credential"], SECRETS["lxc.sshPrivateKey"]];
    const all = registered.flatMap((r) => strings(r.inputs));
    for (const canary of canaries) {
      expect(all.filter((s) => s.text.includes(canary) && !s.secret)).toEqual([]);
      expect(all.some((s) => s.text.includes(canary) && s.secret)).toBe(true);
    }
  });
});

describe("DockerHost with configuration variants", () => {
  it.each([
    {
      case: "no VLAN",
      overrides: { "lxc.vlan": 0 },
      check: (c: any) => expect("vlanId" in c.networkInterfaces[0]).toBe(false),
    },
    {
      case: "a checksummed template download",
      overrides: { "proxmox.templateChecksum": `sha512:${"ab".repeat(64)}` },
      check: (_c: any, download: any) =>
        expect([download.checksumAlgorithm, download.checksum]).toEqual([
          "sha512",
          "ab".repeat(64),
        ]),
    },
  ])("$case", async ({ overrides, check }) => {
    const b = await build(stackConfig("dev", overrides));
    check(unwrapSecrets(b.inputs(TYPES.container)), b.inputs(TYPES.template));
  });

  it.each([
    {
      case: "keyctl with API-token auth",
      args: (c: HomelabConfig): DockerHostArgs => ({
        proxmox: c.proxmox,
        lxc: { ...c.lxc, keyctl: true },
      }),
      message: /lxc\.keyctl.*root@pam/,
    },
    {
      case: "keyctl with password auth of a user other than root@pam",
      args: (c: HomelabConfig): DockerHostArgs => ({
        proxmox: {
          ...c.proxmox,
          auth: { method: "password", username: "admin@pve", password: pulumi.secret("x") },
        },
        lxc: { ...c.lxc, keyctl: true },
      }),
      message: /lxc\.keyctl.*root@pam/,
    },
    {
      case: "an ssh user other than root",
      args: (c: HomelabConfig): DockerHostArgs => ({
        proxmox: c.proxmox,
        lxc: { ...c.lxc, sshUser: "admin" },
      }),
      message: /lxc\.sshUser.*root/,
    },
  ])("refuses $case before registering anything", async ({ args, message }) => {
    const config = stackConfig("dev");
    expect(config.proxmox.auth.method).toBe("apiToken");
    const before = registeredResources().length;
    expect(() => new DockerHost("refused", args(config))).toThrow(message);
    // Registration is asynchronous: give anything that was started the time to arrive.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(registeredResources().length).toBe(before);
  });
});

describe("containerTags", () => {
  it.each(["dev", "prod", "Lab_EU", "feature/x y"])(
    "stack %j gives tags Proxmox keeps as written",
    (stack) => {
      const tags = containerTags(stack);
      // Proxmox lowercases and sorts tags, and allows only these characters.
      for (const tag of tags) expect(tag).toMatch(/^[a-z0-9_.+-]+$/);
      expect(tags).toEqual([...tags].sort());
      expect(new Set(tags).size).toBe(tags.length);
      expect(tags).toEqual(expect.arrayContaining(["pulumi", PROJECT]));
    },
  );
});

describe("installTrigger", () => {
  const script = fs.readFileSync(INSTALL_SCRIPT_PATH, "utf8");

  it("is the same for the same script", () => {
    expect(installTrigger(script)).toBe(installTrigger(`${script}`));
  });

  it.each([
    { case: "an added line", edit: (s: string) => `${s}\necho extra\n` },
    {
      case: "a single changed character",
      edit: (s: string) => s.replace("docker.io", "docker.iO"),
    },
    { case: "whitespace only", edit: (s: string) => s.replace("\n", "\n ") },
  ])("changes with $case", ({ edit }) => {
    const edited = edit(script);
    expect(edited).not.toBe(script);
    expect(installTrigger(edited)).not.toBe(installTrigger(script));
  });
});

describe("install-docker.sh", () => {
  it("passes shellcheck with every optional check", () => {
    const run = spawnSync("shellcheck", ["--shell=bash", "--enable=all", INSTALL_SCRIPT_PATH], {
      encoding: "utf8",
    });
    if (run.error) {
      const where = process.env.CI ? "in CI (listed in .ci/packages.txt)" : "here";
      throw new Error(`shellcheck must be installed ${where}: ${run.error.message}`);
    }
    expect(run.stdout + run.stderr).toBe("");
    expect(run.status).toBe(0);
  });

  it("starts with set -euo pipefail", () => {
    const firstCommand = fs
      .readFileSync(INSTALL_SCRIPT_PATH, "utf8")
      .split("\n")
      .find((line) => line.trim() !== "" && !line.startsWith("#"));
    expect(firstCommand).toBe("set -euo pipefail");
  });

  /**
   * Runs the script the way the install command does (`bash -s`, script on stdin) on this
   * machine, with stand-ins for the commands that would change it: every stand-in records
   * its arguments, `apt-get update` fails `mirrorFailures` times before the mirrors
   * answer, and `docker info` fails once while the daemon starts.
   */
  function runWithStandIns(mirrorFailures: number): {
    status: number | null;
    stdout: string;
    calls: string[];
  } {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "install-docker-"));
    const calls = path.join(dir, "calls");
    const stub = (command: string, body = "") =>
      fs.writeFileSync(
        path.join(dir, command),
        `#!/bin/bash\necho "${command} $*" >> "${calls}"\n${body}\nexit 0\n`,
        { mode: 0o755 },
      );
    const failFirst = (counter: string, times: number) =>
      `n=$(cat "${dir}/${counter}" 2>/dev/null || echo 0); echo $((n + 1)) >"${dir}/${counter}"; ` +
      `[ "$n" -ge ${times} ] || exit 1`;
    stub("systemctl");
    stub("timeout", 'shift; "$@"');
    stub("sleep");
    stub("ip", 'echo "default via 10.30.0.1 dev eth0"');
    // Reads its stdin, as a prompting package might: it must not eat the rest of the script.
    stub(
      "apt-get",
      `cat > /dev/null\ncase " $* " in *" update "*) ${failFirst("mirror", mirrorFailures)};; esac`,
    );
    stub(
      "docker",
      `case "$1" in info) ${failFirst("daemon", 1)};; version) echo 99.0-standin;; esac`,
    );

    const run = spawnSync("/bin/bash", ["-s"], {
      input: fs.readFileSync(INSTALL_SCRIPT_PATH, "utf8"),
      encoding: "utf8",
      env: { PATH: `${dir}:/usr/bin:/bin` },
    });
    const recorded = fs.existsSync(calls) ? fs.readFileSync(calls, "utf8").trim().split("\n") : [];
    fs.rmSync(dir, { recursive: true, force: true });
    return { status: run.status, stdout: run.stdout, calls: recorded };
  }

  it.each([0, 3])(
    "waits for the mirrors (%i failures), installs docker.io, starts it and waits for it",
    (failures) => {
      const { status, stdout, calls } = runWithStandIns(failures);
      expect(status).toBe(0);
      expect(calls.filter((c) => /^apt-get .*\bupdate\b/.test(c))).toHaveLength(failures + 1);
      const install = calls.find((c) => /^apt-get .*\binstall\b/.test(c));
      expect(install).toMatch(/\s-y\b/);
      expect(install).toMatch(/\sdocker\.io\b/);
      expect(calls).toContainEqual(
        expect.stringMatching(/^systemctl enable --now .*docker\.service/),
      );
      expect(calls.filter((c) => c === "docker info")).toHaveLength(2);
      expect(stdout).toContain("99.0-standin");
    },
  );
});
