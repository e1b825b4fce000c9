import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import { ACME_CA, HomelabConfig } from "../config";
import { SECRETS, stackConfig, withHosts } from "./stacks";
import { Edge, edgeEnvironment } from "../components/edge";
import {
  CERT_RESOLVER,
  ROLE_LABEL,
  TRAEFIK_DYNAMIC_DIR,
  TRAEFIK_STATIC_PATH,
} from "../components/names";
import {
  REDIS_PASSWORD_ENV,
  fileProviderDynamic,
  fileProviderFiles,
  renderYaml,
  traefikStaticConfig,
} from "../components/traefik";
import { validateDynamic, validateStatic } from "../components/traefikSchema";
import { registeredResources, settle, strings, unwrapSecrets, type Registered } from "./mocks";

const TYPES = {
  component: "homelab:edge:Edge",
  network: "docker:index/network:Network",
  image: "docker:index/remoteImage:RemoteImage",
  volume: "docker:index/volume:Volume",
  container: "docker:index/container:Container",
} as const;

/** The ports Traefik listens on inside its container: each protocol's standard port. */
const STANDARD_PORTS = { web: 80, websecure: 443, smtps: 465, submission: 587 } as const;

let builds = 0;

interface Built {
  name: string;
  edge: Edge;
  providerName: string;
  registered: Registered[];
  inputs(type: string): Record<string, any>;
}

async function build(config: HomelabConfig): Promise<Built> {
  const name = `${config.stack}-edge-${++builds}`;
  const providerName = `${name}-docker`;
  const dockerProvider = new docker.Provider(providerName, { host: "ssh://root@127.0.0.1" });
  const edge = new Edge(name, { config, dockerProvider });
  await settle(edge.container.id);
  await settle(edge.network.name);

  const registered = registeredResources().filter(
    (r) => r.name.startsWith(`${name}-`) && r.name !== providerName,
  );
  return {
    name,
    edge,
    providerName,
    registered,
    inputs(type) {
      const found = registered.find((r) => r.type === type);
      if (!found)
        throw new Error(`no ${type} registered; got ${registered.map((r) => r.type).join(", ")}`);
      return found.inputs;
    },
  };
}

const upload = (inputs: Record<string, any>, file: string) =>
  (unwrapSecrets(inputs.uploads) as { file: string; content: string }[]).find(
    (u) => u.file === file,
  );

describe.each(["dev", "prod"] as const)("Edge from the %s stack", (stack) => {
  const config = stackConfig(stack);
  const built = build(config);

  it("creates a network, the pinned image, an ACME volume and the container, all through the given provider", async () => {
    const { registered, providerName, inputs } = await built;
    expect(registered.map((r) => r.type).sort()).toEqual(
      [TYPES.network, TYPES.image, TYPES.volume, TYPES.container].sort(),
    );
    for (const r of registered) expect(r.provider, r.type).toContain(`::${providerName}::`);
    expect(inputs(TYPES.image).name).toBe(config.traefik.image);
  });

  it("parents every resource to the component", async () => {
    const { registered, name } = await built;
    for (const r of registered)
      expect(r.parent, r.type).toMatch(new RegExp(`\\$?${TYPES.component}::${name}$`));
  });

  it("publishes web, websecure, smtps and submission on the configured host ports", async () => {
    const ports = (await built).inputs(TYPES.container).ports as {
      internal: number;
      external: number;
    }[];
    const expected = (Object.keys(STANDARD_PORTS) as (keyof typeof STANDARD_PORTS)[]).map((ep) => ({
      internal: STANDARD_PORTS[ep],
      external: config.traefik.ports[ep],
    }));
    expect(ports.map(({ internal, external }) => ({ internal, external }))).toEqual(expected);
  });

  it("mounts the Docker socket read-only and keeps ACME storage on a volume", async () => {
    const { inputs } = await built;
    const volumes = inputs(TYPES.container).volumes as Record<string, any>[];
    const socket = volumes.find((v) => v.hostPath === "/var/run/docker.sock");
    expect(socket).toMatchObject({ containerPath: "/var/run/docker.sock", readOnly: true });

    const storage = traefikStaticConfig(config).certificatesResolvers[CERT_RESOLVER].acme
      .storage as string;
    const acme = volumes.find((v) => v.volumeName !== undefined);
    expect(acme?.volumeName).toBe(inputs(TYPES.volume).name);
    expect(storage.startsWith(`${acme?.containerPath}/`)).toBe(true);
  });

  it("makes acme.json mode 600 before Traefik starts, then runs Traefik on the uploaded configuration", async () => {
    const entrypoint = (await built).inputs(TYPES.container).entrypoints as string[];
    const storage = traefikStaticConfig(config).certificatesResolvers[CERT_RESOLVER].acme.storage;
    const script = entrypoint[entrypoint.length - 1];
    expect(script).toContain(`chmod 600 ${storage}`);
    expect(script.indexOf("chmod")).toBeLessThan(script.indexOf("exec traefik"));
    expect(script).toMatch(new RegExp(`exec traefik --configFile=${TRAEFIK_STATIC_PATH}$`));
  });

  it("uploads the static configuration and the file-provider part as rendered YAML", async () => {
    const inputs = (await built).inputs(TYPES.container);
    const stat = upload(inputs, TRAEFIK_STATIC_PATH);
    expect(stat?.content).toBe(renderYaml(traefikStaticConfig(config)));
    expect(validateStatic(YAML.parse(stat!.content))).toEqual([]);

    const files = (inputs.uploads as { file: string }[]).filter((u) =>
      u.file.startsWith(`${TRAEFIK_DYNAMIC_DIR}/`),
    );
    expect(files).toHaveLength(1);
    const dynamic = YAML.parse(upload(inputs, files[0].file)!.content);
    expect(dynamic).toEqual(fileProviderDynamic(config));
    expect(validateDynamic(dynamic)).toEqual([]);
  });

  it(`uses Let's Encrypt's ${stack === "dev" ? "staging" : "production"} CA`, async () => {
    const stat = YAML.parse(
      upload((await built).inputs(TYPES.container), TRAEFIK_STATIC_PATH)!.content,
    );
    expect(stat.certificatesResolvers[CERT_RESOLVER].acme.caServer).toBe(
      stack === "dev" ? ACME_CA.staging : ACME_CA.production,
    );
  });

  it("passes the DNS provider token only as a secret environment variable", async () => {
    const envs = (await built).inputs(TYPES.container).envs;
    const challenge = config.acme.challenge;
    if (challenge.type !== "dns") throw new Error("both example stacks use the dns challenge");
    expect(strings(envs)).toEqual([
      { text: `${challenge.tokenEnv}=${SECRETS["acme.dnsProviderToken"]}`, secret: true },
    ]);
  });

  it("holds no secret outside a secret value: not in labels, uploads or anything else", async () => {
    for (const r of (await built).registered) {
      for (const { text, secret } of strings(r.inputs)) {
        if (secret) continue;
        for (const value of Object.values(SECRETS))
          expect(text, `${r.type} input`).not.toContain(value);
      }
    }
  });

  it("labels the container as the edge and keeps its logs bounded", async () => {
    const inputs = (await built).inputs(TYPES.container);
    expect(inputs.labels).toEqual([{ label: ROLE_LABEL, value: "edge" }]);
    expect(inputs.logDriver).toBe("json-file");
    expect(inputs.logOpts["max-size"]).toMatch(/^\d+[km]$/);
  });

  it("restarts unless stopped and checks health through /ping", async () => {
    const inputs = (await built).inputs(TYPES.container);
    expect(inputs.restart).toBe("unless-stopped");
    expect(inputs.healthcheck.tests.slice(0, 4)).toEqual([
      "CMD",
      "traefik",
      "healthcheck",
      "--ping",
    ]);
    expect(traefikStaticConfig(config).ping).toBeDefined();
  });

  it("attaches the container to the network Traefik watches, and exposes its name", async () => {
    const { edge, inputs } = await built;
    const network = inputs(TYPES.network).name;
    expect(network).toBe(edge.networkName);
    expect(traefikStaticConfig(config).providers.docker.network).toBe(network);
    expect(inputs(TYPES.container).networksAdvanced).toEqual([{ name: network }]);
    expect(edge.staticConfig).toEqual(traefikStaticConfig(config));
  });
});

describe("Edge without the dns challenge", () => {
  it.each(["tls", "http"] as const)(
    "sets no environment with the %s challenge",
    async (challenge) => {
      const { inputs } = await build(stackConfig("dev", { "acme.challenge": challenge }));
      expect(unwrapSecrets(inputs(TYPES.container).envs) ?? []).toEqual([]);
    },
  );
});

it("the token Output itself stays secret", async () => {
  const config = stackConfig("prod");
  const { secret } = await settle(edgeEnvironment(config));
  expect(secret).toBe(true);
  expect(pulumi.Output.isInstance(edgeEnvironment(config))).toBe(true);
});

describe("Edge of a stack with several hosts", () => {
  // A second host, so the buckets live in Redis.
  const config = withHosts("prod", 1);
  const built = build(config);

  it("uploads every file-provider file, the rate limiter's included, and each validates", async () => {
    const inputs = (await built).inputs(TYPES.container);
    for (const { file, dynamic } of fileProviderFiles(config)) {
      const uploaded = upload(inputs, `${TRAEFIK_DYNAMIC_DIR}/${file}`);
      expect(uploaded?.content, file).toBe(renderYaml(dynamic));
      expect(validateDynamic(YAML.parse(uploaded!.content))).toEqual([]);
    }
    expect(fileProviderFiles(config).length).toBeGreaterThan(1);
  });

  it("passes the Redis password only as a secret environment variable, beside the DNS token", async () => {
    const envs = (await built).inputs(TYPES.container).envs;
    const challenge = config.acme.challenge;
    if (challenge.type !== "dns") throw new Error("the prod stack uses the dns challenge");
    expect(strings(envs)).toEqual([
      { text: `${challenge.tokenEnv}=${SECRETS["acme.dnsProviderToken"]}`, secret: true },
      { text: `${REDIS_PASSWORD_ENV}=${SECRETS["redis.password"]}`, secret: true },
    ]);
  });

  it("holds the Redis password nowhere else", async () => {
    for (const r of (await built).registered) {
      for (const { text, secret } of strings(r.inputs)) {
        if (!secret) expect(text, `${r.type} input`).not.toContain(SECRETS["redis.password"]);
      }
    }
  });
});
