/**
 * The relay component under the mock runtime (what it asks Docker for), and its init script
 * run for real against a scratch Postfix configuration.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as docker from "@pulumi/docker";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HomelabConfig } from "../config";
import { SECRETS, stackConfig } from "./stacks";
import { RELAY_LISTENERS, ROLE_LABEL } from "../components/names";
import {
  postfixSettings,
  renderMainCf,
  renderMasterCf,
  type PostfixSettings,
} from "../components/postfix";
import { CONFIG_DIR, INIT_DIR, Relay, initScript } from "../components/relay";
import { relayLabels } from "../components/traefik";
import {
  Registered,
  isSecretValue,
  registeredResources,
  settle,
  settled,
  unwrapSecrets,
} from "./mocks";

const SECRET_TEXTS = [
  "alerts-password-leak-canary",
  "backup-password-leak-canary",
  SECRETS["relay.upstreamPassword"],
];

const TYPES = {
  container: "docker:index/container:Container",
  image: "docker:index/remoteImage:RemoteImage",
  volume: "docker:index/volume:Volume",
} as const;

interface Built {
  name: string;
  config: HomelabConfig;
  relay: Relay;
  labels: Record<string, string>;
  providerUrn: string;
  networkName: string;
  /** Everything the component registered (its children). */
  children: Registered[];
  relayInputs: Record<string, any>;
  metricsInputs: Record<string, any>;
}

let builds = 0;

async function build(stack: string): Promise<Built> {
  const config = stackConfig(stack);
  const name = `${stack}-relay-${++builds}`;
  const dockerProvider = new docker.Provider(`${name}-docker`, { host: "ssh://root@127.0.0.1" });
  const network = new docker.Network(
    `${name}-net`,
    { name: `${name}-net` },
    { provider: dockerProvider },
  );
  const labels = { ...relayLabels(config), "test.marker": name };
  const relay = new Relay(name, { config, dockerProvider, network, labels });
  await settle(relay.metrics.id);
  await settled();

  const children = registeredResources().filter(
    (r) => r.parent?.endsWith(`::${name}`) || r.name.startsWith(`${name}-`),
  );
  const container = (n: string) => {
    const found = children.find((r) => r.type === TYPES.container && r.name === n);
    if (!found)
      throw new Error(
        `no container ${n}; got ${children.map((r) => `${r.type} ${r.name}`).join(", ")}`,
      );
    return found.inputs;
  };
  return {
    name,
    config,
    relay,
    labels,
    providerUrn: (await settle(dockerProvider.urn)).value,
    networkName: `${name}-net`,
    children: children.filter(
      (r) => r.type !== "pulumi:providers:docker" && r.type !== "docker:index/network:Network",
    ),
    relayInputs: container(name),
    metricsInputs: container(`${name}-metrics`),
  };
}

const STACKS = ["dev", "prod"] as const;
const built = new Map<string, Built>();
beforeAll(async () => {
  for (const stack of STACKS) built.set(stack, await build(stack));
});
const get = (stack: string) => built.get(stack)!;

const labelMap = (labels: { label: string; value: string }[]) =>
  Object.fromEntries(labels.map((l) => [l.label, l.value]));

describe.each(STACKS)("the relay component (%s)", (stack) => {
  it("registers its Docker resources through the given provider, as its children", () => {
    const b = get(stack);
    const dockerResources = b.children.filter((r) => r.type.startsWith("docker:"));
    expect(dockerResources.map((r) => r.type).sort()).toEqual(
      [
        TYPES.container,
        TYPES.container,
        TYPES.image,
        TYPES.image,
        TYPES.volume,
        TYPES.volume,
      ].sort(),
    );
    for (const r of dockerResources) {
      expect(r.provider?.startsWith(`${b.providerUrn}::`), `${r.type} ${r.name}`).toBe(true);
      expect(r.parent, r.name).toMatch(/homelab:relay:Relay/);
    }
  });

  it("publishes no port and joins the edge's network", () => {
    const b = get(stack);
    expect(b.relayInputs.ports).toBeUndefined();
    expect(b.metricsInputs.ports).toBeUndefined();
    expect(b.relayInputs.networksAdvanced.map((n: { name: string }) => n.name)).toEqual([
      b.networkName,
    ]);
  });

  it("carries the caller's labels plus its role; the exporter carries its own role", () => {
    const b = get(stack);
    expect(labelMap(b.relayInputs.labels)).toEqual({ ...b.labels, [ROLE_LABEL]: "relay" });
    expect(labelMap(b.metricsInputs.labels)).toEqual({ [ROLE_LABEL]: "relay-metrics" });
  });

  it("applies exactly postfixSettings(config): the uploaded main.cf and master.cf are its rendering", () => {
    const b = get(stack);
    const expected = postfixSettings(b.config);
    expect(b.relay.settings).toEqual(expected);
    const uploads = Object.fromEntries(
      b.relayInputs.uploads.map((u: { file: string; content: string }) => [u.file, u]),
    );
    expect(uploads[`${CONFIG_DIR}/main.cf`].content).toBe(renderMainCf(expected));
    expect(uploads[`${CONFIG_DIR}/master.cf`].content).toBe(renderMasterCf(expected));
    // The image runs *.sh from its init directory; a non-executable one in a shell of its own.
    const scripts = b.relayInputs.uploads.filter((u: { file: string }) =>
      u.file.startsWith(`${INIT_DIR}/`),
    );
    expect(scripts.map((u: { file: string }) => u.file)).toEqual([expect.stringMatching(/\.sh$/)]);
    expect(scripts[0].content).toBe(initScript());
    expect(scripts[0].executable).toBeFalsy();
  });

  it("holds no secret in plain text; the ones it needs are secret Outputs", () => {
    const b = get(stack);
    for (const r of b.children) {
      const plain = JSON.stringify(r.inputs, (_k, v) => (isSecretValue(v) ? "[secret]" : v));
      for (const text of SECRET_TEXTS) expect(plain, `${r.type} ${r.name}`).not.toContain(text);
    }
    // One secret element makes Pulumi send the whole list as a secret.
    expect(isSecretValue(b.relayInputs.envs)).toBe(true);
    const env = unwrapSecrets(b.relayInputs.envs) as string[];
    expect(env).toContain(`SMTPD_SASL_USERS=${SECRETS["relay.clientLogins"]}`);
    if (b.config.relay.upstream.username) {
      expect(env).toContain(`RELAYHOST_PASSWORD=${SECRETS["relay.upstreamPassword"]}`);
    }
  });

  it("keeps the secret environment entries secret Outputs on the component's side too", async () => {
    const b = get(stack);
    const envs = await settle(b.relay.container.envs);
    expect(envs.secret).toBe(true);
  });

  it("tells the image where to relay and how to log", () => {
    const b = get(stack);
    const env = unwrapSecrets(b.relayInputs.envs) as string[];
    const { host, port } = b.config.relay.upstream;
    expect(env).toContain(`RELAYHOST=[${host}]:${port}`);
    expect(env).toContain("LOG_FORMAT=json");
    expect(b.relayInputs.hostname).toBe(b.config.relay.hostname);
  });

  it("restarts on failure and checks itself on the loopback listener", () => {
    const b = get(stack);
    expect(b.relayInputs.restart).toBe("unless-stopped");
    expect(b.metricsInputs.restart).toBe("unless-stopped");
    expect(b.relayInputs.healthcheck.tests[0]).toBe("CMD-SHELL");
    expect(b.relayInputs.healthcheck.tests[1]).toContain(`127.0.0.1 ${RELAY_LISTENERS.local}`);
  });

  it("runs the exporter in the relay's network namespace, on the metrics port, reading the shared spool and log", () => {
    const b = get(stack);
    expect(b.metricsInputs.networkMode).toBe(`container:${b.name}-id`);
    expect(b.metricsInputs.command).toContain(`--web.listen-address=:${RELAY_LISTENERS.metrics}`);
    const relayVolumes = new Map(
      b.relayInputs.volumes.map((v: any) => [v.volumeName, v.containerPath]),
    );
    expect(b.metricsInputs.volumes.length).toBeGreaterThan(0);
    for (const v of b.metricsInputs.volumes) {
      expect(relayVolumes.get(v.volumeName)).toBe(v.containerPath);
      expect(v.readOnly).toBe(true);
    }
    const image = b.children.find(
      (r) => r.type === TYPES.image && r.name === `${b.name}-exporter-image`,
    )!;
    expect(image.inputs.name).toMatch(/:[0-9][\w.-]*$/);
  });
});

// ---------------------------------------------------------------------------------------
// The init script, for real: bash, postconf and postfix against a scratch configuration.

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "relay-init-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** What the image leaves behind before the init script runs: its risky defaults included. */
function imageBaseline(dir: string): string {
  return [
    `queue_directory = ${dir}/spool`,
    `data_directory = ${dir}/data`,
    "mynetworks = 127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
    "smtpd_sender_restrictions = permit_mynetworks,reject",
    "smtpd_client_restrictions = permit_mynetworks,permit_sasl_authenticated,reject",
    "mydestination = localhost",
    "header_size_limit = 4096000",
    "",
  ].join("\n");
}

function runInit(settings: PostfixSettings, dir: string) {
  const paths = { configDir: `${dir}/upload`, marker: `${dir}/applied`, maillogDir: `${dir}/log` };
  for (const sub of ["upload", "etc", "spool", "data"])
    fs.mkdirSync(path.join(dir, sub), { recursive: true });
  fs.writeFileSync(`${dir}/upload/main.cf`, renderMainCf(settings));
  fs.writeFileSync(`${dir}/upload/master.cf`, renderMasterCf(settings));
  fs.writeFileSync(`${dir}/etc/main.cf`, imageBaseline(dir));
  fs.copyFileSync("/usr/share/postfix/master.cf.dist", `${dir}/etc/master.cf`);
  fs.writeFileSync(`${dir}/init.sh`, initScript(paths));
  const run = spawnSync("bash", [`${dir}/init.sh`], {
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, MAIL_CONFIG: `${dir}/etc` },
  });
  return { ...run, paths };
}

/** The stack's rendered settings, with the certificate inside the scratch directory `dir`. */
function scratchSettings(stack: string, dir: string): PostfixSettings {
  const rendered = postfixSettings(stackConfig(stack));
  return {
    ...rendered,
    main: {
      ...rendered.main,
      smtpd_tls_cert_file: `${dir}/tls/relay.crt`,
      smtpd_tls_key_file: `${dir}/tls/relay.key`,
    },
  };
}

describe("the init script", () => {
  it("passes shellcheck", () => {
    const file = path.join(scratch, "shellcheck.sh");
    fs.writeFileSync(file, initScript());
    const run = spawnSync("shellcheck", [file], { encoding: "utf8" });
    expect(run.stdout + run.stderr).toBe("");
    expect(run.status).toBe(0);
  });

  it.each(STACKS)(
    "%s: leaves Postfix with exactly the rendered parameters over the image's defaults",
    (stack) => {
      const dir = fs.mkdtempSync(path.join(scratch, `${stack}-`));
      const settings = scratchSettings(stack, dir);
      const run = runInit(settings, dir);
      expect(run.stderr).toBe("");
      expect(run.status).toBe(0);

      const show = spawnSync("postconf", ["-c", `${dir}/etc`, ...Object.keys(settings.main)], {
        encoding: "utf8",
      });
      const applied = Object.fromEntries(
        show.stdout
          .trim()
          .split("\n")
          .map((l) => [l.slice(0, l.indexOf(" =")), l.slice(l.indexOf(" =") + 2).trim()]),
      );
      expect(applied).toEqual(settings.main);
      expect(fs.readFileSync(`${dir}/etc/master.cf`, "utf8")).toBe(renderMasterCf(settings));
      expect(fs.statSync(`${dir}/tls/relay.key`).mode & 0o077).toBe(0);
      expect(fs.existsSync(run.paths.marker)).toBe(true);
    },
  );

  it("fails, leaving no marker, when the configuration does not apply", () => {
    const dir = fs.mkdtempSync(path.join(scratch, "broken-"));
    const settings = scratchSettings("dev", dir);
    const run = runInit(settings, dir);
    expect(run.status).toBe(0);
    // A second start with a master.cf Postfix cannot read stops before the marker.
    fs.writeFileSync(`${dir}/upload/master.cf`, "smtpd inet n\n");
    const again = spawnSync("bash", [`${dir}/init.sh`], {
      encoding: "utf8",
      env: { ...process.env, MAIL_CONFIG: `${dir}/etc` },
    });
    expect(again.status).not.toBe(0);
    expect(fs.existsSync(run.paths.marker)).toBe(false);
  });
});
