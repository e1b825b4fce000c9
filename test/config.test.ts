import * as fs from "node:fs";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import {
  CONFIG_KEYS,
  ConfigError,
  ConfigSource,
  PROJECT_DIR,
  RawValue,
  SECRET_KEYS,
  connectionRateLimit,
  declaredKeys,
  listStacks,
  loadStackFile,
  parseConfig,
  parseDuration,
} from "../config";
import { configTable, withCurrentTable } from "../tools/configTable";

/** The dev stack file with some keys replaced (plain values) or removed (undefined). */
function devWith(overrides: Record<string, unknown>): ConfigSource {
  const source = loadStackFile("dev");
  const values = new Map<string, RawValue>(source.values);
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) values.delete(key);
    else
      values.set(key, {
        text: typeof value === "string" ? value : JSON.stringify(value),
        secret: false,
      });
  }
  return { ...source, values };
}

/** Secrets as `pulumi up` hands them over: decrypted, marked secret. */
const decryptedSecrets: Record<string, string> = {
  "proxmox.credential": "5e4a1f0c-8d3b-4c6e-9a71-2b0f3d4e5a6b",
  "lxc.sshPrivateKey":
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
  "relay.clientLogins": "alerts:correct-horse-battery,backup:staple-staple-staple",
  "relay.upstreamPassword": "smarthost-password",
  "acme.dnsProviderToken": "cf-token-0123456789",
};

function withSecrets(source: ConfigSource, secrets = decryptedSecrets): ConfigSource {
  const values = new Map<string, RawValue>(source.values);
  for (const [key, text] of Object.entries(secrets)) values.set(key, { text, secret: true });
  return { ...source, values };
}

function problemsOf(source: ConfigSource): string[] {
  try {
    parseConfig(withSecrets(source));
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => p.key);
    throw err;
  }
  return [];
}

function messageOf(source: ConfigSource): string {
  try {
    parseConfig(withSecrets(source));
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  return "";
}

describe("Pulumi.yaml declares every key the program reads", () => {
  const declared = declaredKeys();

  it("has the same keys as the validator", () => {
    expect([...declared.keys()].sort()).toEqual([...CONFIG_KEYS].sort());
  });

  it.each(CONFIG_KEYS)(
    "%s has a type and a description, and a default unless it is a required secret",
    (key) => {
      const d = declared.get(key)!;
      expect(["string", "integer", "boolean", "array"]).toContain(d.type);
      expect(d.description.length).toBeGreaterThan(10);
      if (!d.secret) expect(d.default).not.toBeUndefined();
      if (d.secret) expect(SECRET_KEYS.has(key)).toBe(true);
    },
  );

  it("declares each default in its own type", () => {
    for (const [key, d] of declared) {
      if (d.default === undefined) continue;
      const kind = Array.isArray(d.default)
        ? "array"
        : Number.isInteger(d.default)
          ? "integer"
          : typeof d.default;
      expect(kind, key).toBe(d.type);
    }
  });
});

describe("the example stacks", () => {
  it("are dev and prod", () => {
    expect(listStacks()).toEqual(["dev", "prod"]);
  });

  it.each(["dev", "prod"])("%s parses with its secrets set", (stack) => {
    const config = parseConfig(withSecrets(loadStackFile(stack)));
    expect(config.stack).toBe(stack);
    expect(Object.isFrozen(config.rateLimit)).toBe(true);
  });

  it.each(["dev", "prod"])(
    "%s parses offline with its secrets unset, and warns about each",
    (stack) => {
      const config = parseConfig(loadStackFile(stack), { allowUnsetSecrets: true });
      expect(config.warnings.join("\n")).toContain("relay.clientLogins is not set");
    },
  );

  it("differ where environments differ", () => {
    const dev = parseConfig(withSecrets(loadStackFile("dev")));
    const prod = parseConfig(withSecrets(loadStackFile("prod")));
    expect(dev.acme.caServer).toBe("https://acme-staging-v02.api.letsencrypt.org/directory");
    expect(prod.acme.caServer).toBe("https://acme-v02.api.letsencrypt.org/directory");
    expect(dev.lxc.vmId).not.toBe(prod.lxc.vmId);
    expect(dev.lxc.address).not.toBe(prod.lxc.address);
    expect(dev.relay.hostname).not.toBe(prod.relay.hostname);
    expect(prod.lxc.memory).toBeGreaterThan(dev.lxc.memory);
  });

  it("commit no secret values", () => {
    for (const stack of listStacks()) {
      const doc = YAML.parse(
        fs.readFileSync(path.join(PROJECT_DIR, "stacks", `Pulumi.${stack}.yaml`), "utf8"),
      );
      const keys = Object.keys(doc.config).map((k) => k.split(":")[1]);
      expect(keys.filter((k) => SECRET_KEYS.has(k as never))).toEqual([]);
    }
  });

  it("without --allow of unset secrets, a missing secret is an error", () => {
    expect(() => parseConfig(loadStackFile("dev"))).toThrow(/proxmox\.credential .*found nothing/);
  });
});

describe("invalid configuration is rejected with the key named", () => {
  const cases: [string, Record<string, unknown>, string, RegExp][] = [
    ["burst below 1", { "rateLimit.burst": 0 }, "rateLimit.burst", /found 0; expected at least 1/],
    [
      "negative average",
      { "rateLimit.average": -5 },
      "rateLimit.average",
      /found -5; expected 0 \(no limit\) or more/,
    ],
    [
      "unparsable period",
      { "rateLimit.period": "fortnight" },
      "rateLimit.period",
      /found "fortnight"; expected a positive duration/,
    ],
    [
      "invalid trusted proxy",
      { "traefik.trustedProxies": ["10.0.0.300"] },
      "traefik.trustedProxies[0]",
      /found "10.0.0.300"/,
    ],
    [
      "invalid CIDR",
      { "traefik.smtpAllowList": ["10.0.0.0/33"] },
      "traefik.smtpAllowList[0]",
      /CIDR/,
    ],
    [
      "depth without trusted proxies",
      { "rateLimit.depth": 1 },
      "rateLimit.depth",
      /every client on the internet would share one rate-limit bucket/,
    ],
    [
      "excludedIPs without trusted proxies",
      { "rateLimit.excludedIPs": ["10.0.0.0/8"] },
      "rateLimit.excludedIPs",
      /share one rate-limit bucket/,
    ],
    [
      "depth and excludedIPs together",
      {
        "traefik.trustedProxies": ["10.30.0.2"],
        "rateLimit.depth": 1,
        "rateLimit.excludedIPs": ["10.0.0.0/8"],
      },
      "rateLimit.excludedIPs",
      /Traefik ignores excludedIPs/,
    ],
    [
      "container id below Proxmox's range",
      { "lxc.vmId": 99 },
      "lxc.vmId",
      /found 99; expected at least 100/,
    ],
    [
      "container id above Proxmox's range",
      { "lxc.vmId": 1_000_000_000 },
      "lxc.vmId",
      /at most 999999999/,
    ],
    ["keyctl with an API token", { "lxc.keyctl": true }, "lxc.keyctl", /only root@pam/],
    [
      "dns challenge without provider",
      { "acme.dnsProvider": "" },
      "acme.dnsProvider",
      /dns challenge/,
    ],
    [
      "trusting the whole internet",
      { "traefik.trustedProxies": ["0.0.0.0/0"] },
      "traefik.trustedProxies[0]",
      /forge X-Forwarded-For/,
    ],
    [
      "trusting all of IPv4 written as an IPv4-mapped IPv6 range",
      { "traefik.trustedProxies": ["::ffff:0.0.0.0/96"] },
      "traefik.trustedProxies[0]",
      /forge X-Forwarded-For/,
    ],
    [
      "exempting the whole internet",
      { "rateLimit.exempt": ["::/0"] },
      "rateLimit.exempt[0]",
      /exempt much of the internet/,
    ],
    ["inFlight 0", { "rateLimit.inFlight": 0 }, "rateLimit.inFlight", /refuses every connection/],
    [
      "empty SMTP allow list",
      { "traefik.smtpAllowList": [] },
      "traefik.smtpAllowList",
      /empty ipAllowList/,
    ],
    [
      "AUTH limit off",
      { "rateLimit.authAttempts": 0 },
      "rateLimit.authAttempts",
      /brute force unlimited/,
    ],
    [
      "gateway outside the network",
      { "lxc.gateway": "10.31.0.1" },
      "lxc.gateway",
      /inside 10\.30\.0\.25\/24/,
    ],
    [
      "two entry points on one port",
      { "traefik.smtpsPort": 587 },
      "traefik.submissionPort",
      /already used by homelab-smtp:traefik.smtpsPort/,
    ],
    [
      "unpinned Traefik",
      { "traefik.image": "traefik:latest" },
      "traefik.image",
      /pinned to v3\.5\.2 or later/,
    ],
    [
      "Traefik too old for PROXY to backends",
      { "traefik.image": "traefik:v3.4.1" },
      "traefik.image",
      /v3\.5\.2 or later/,
    ],
    ["unpinned relay image", { "relay.image": "boky/postfix" }, "relay.image", /pinned/],
    [
      "unpinned fail2ban image",
      { "fail2ban.image": "crazymax/fail2ban:latest" },
      "fail2ban.image",
      /pinned to a version tag \(not latest\)/,
    ],
    [
      "planned burst above the message limit",
      { "relay.expectedBurst": 31 },
      "rateLimit.messages",
      /too much mail/,
    ],
    [
      "planned burst above the connection budget",
      { "relay.expectedBurst": 30, "rateLimit.messages": 100, "rateLimit.average": 5 },
      "rateLimit.burst",
      /answer the rest with 421/,
    ],
    [
      "unknown key",
      { "rateLimit.brust": 5 },
      "rateLimit.brust",
      /did you mean homelab-smtp:rateLimit.burst/,
    ],
    ["not a number", { "lxc.cores": "two" }, "lxc.cores", /found "two"; expected a whole number/],
    [
      "API token id without token name",
      { "proxmox.username": "pulumi@pve" },
      "proxmox.username",
      /user@realm!tokenname/,
    ],
    [
      "no sender domains",
      { "relay.allowedSenderDomains": [] },
      "relay.allowedSenderDomains",
      /any domain/,
    ],
    [
      "upstream login without password",
      { "relay.upstreamUsername": "me@example.net" },
      "relay.upstreamPassword",
      /--secret/,
    ],
    ["no SSH key", { "lxc.sshPublicKeys": [] }, "lxc.sshPublicKeys", /at least one/],
    [
      "an SSH user Proxmox gives no key",
      { "lxc.sshUser": "deploy" },
      "lxc.sshUser",
      /for root only/,
    ],
    ["VLAN out of range", { "lxc.vlan": 4095 }, "lxc.vlan", /at most 4094/],
    [
      "extra host not in the form",
      { "edge.extraHosts": ["pve2 126 10.30.0.26/24"] },
      "edge.extraHosts[0]",
      /node=<proxmox node>,vmId=/,
    ],
    [
      "extra host reusing the container id",
      { "edge.extraHosts": ["node=pve2,vmId=9125,ipv4=10.30.0.26/24"] },
      "edge.extraHosts[0]",
      /already used by homelab-smtp:lxc.vmId/,
    ],
    [
      "extra host outside the gateway's network",
      { "edge.extraHosts": ["node=pve2,vmId=9126,ipv4=10.31.0.26/24"] },
      "edge.extraHosts[0]",
      /network of lxc.gateway/,
    ],
    [
      "shared buckets with average 0",
      { "edge.extraHosts": ["node=pve2,vmId=9126,ipv4=10.30.0.26/24"], "rateLimit.average": 0 },
      "rateLimit.average",
      /429 to every request/,
    ],
    [
      "ban shorter than the find window",
      { "fail2ban.banTime": "5m", "fail2ban.findTime": "10m" },
      "fail2ban.banTime",
      /at least fail2ban.findTime/,
    ],
    [
      "fail2ban never bans the operator's networks, so they must be addresses",
      { "fail2ban.ignoreIPs": ["my-lan"] },
      "fail2ban.ignoreIPs[0]",
      /address or CIDR/,
    ],
  ];

  it.each(cases)("%s", (_name, overrides, key, message) => {
    const source = devWith(overrides);
    const secrets = { ...decryptedSecrets };
    if (overrides["relay.upstreamUsername"]) delete secrets["relay.upstreamPassword"];
    let error: ConfigError | undefined;
    try {
      parseConfig(withSecrets(source, secrets));
    } catch (err) {
      error = err as ConfigError;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const lines = error!.message
      .split("\n")
      .filter((l) => l.includes(`homelab-smtp:${key} in stacks/Pulumi.dev.yaml`));
    expect(lines.length, error!.message).toBeGreaterThan(0);
    expect(lines.join("\n")).toMatch(message);
  });

  it("reports several problems together, before anything is built", () => {
    const keys = problemsOf(
      devWith({
        "rateLimit.burst": 0,
        "rateLimit.average": -1,
        "lxc.vmId": 5,
        "acme.dnsProvider": "",
      }),
    );
    expect(keys).toEqual(
      expect.arrayContaining([
        "rateLimit.burst",
        "rateLimit.average",
        "lxc.vmId",
        "acme.dnsProvider",
      ]),
    );
  });

  it("names the file, the found value and the expectation on one line per problem", () => {
    const message = messageOf(devWith({ "rateLimit.burst": 0, "lxc.vmId": 5 }));
    expect(message.split("\n")).toHaveLength(3);
    expect(message).toMatch(/^2 configuration problems:/);
  });

  it("refuses a secret in plain text and never prints it", () => {
    const source = devWith({ "relay.clientLogins": "alerts:hunter2-hunter2-hunter2" });
    const values = new Map(source.values);
    for (const [key, text] of Object.entries(decryptedSecrets))
      if (key !== "relay.clientLogins") values.set(key, { text, secret: true });
    let message = "";
    try {
      parseConfig({ ...source, values });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("homelab-smtp:relay.clientLogins");
    expect(message).toContain("pulumi config set --secret relay.clientLogins");
    expect(message).not.toContain("hunter2");
  });

  it("checks the format of a decrypted secret without showing it", () => {
    let message = "";
    try {
      parseConfig(
        withSecrets(loadStackFile("dev"), {
          ...decryptedSecrets,
          "relay.clientLogins": "alerts:short",
        }),
      );
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/relay\.clientLogins .*found \[secret\]; expected user:password pairs/);
    expect(message).not.toContain("alerts:short");
  });
});

describe("several edges", () => {
  it("a single-host stack has one host and no Redis", () => {
    const config = parseConfig(withSecrets(loadStackFile("dev")));
    expect(config.hosts).toHaveLength(1);
    expect(config.hosts[0].lxc).toBe(config.lxc);
    expect(config.redis).toBeUndefined();
  });

  it("extra hosts share everything but node, id, name and address, and bring a shared Redis on the first host", () => {
    const source = devWith({
      "edge.extraHosts": [
        "node=pve2,vmId=9126,ipv4=10.30.0.26/24",
        "node=pve3,vmId=9127,ipv4=10.30.0.27/24,hostname=edge-c",
      ],
    });
    const config = parseConfig(
      withSecrets(source, { ...decryptedSecrets, "redis.password": "redis-password-123" }),
    );
    expect(
      config.hosts.map((h) => [h.proxmox.node, h.lxc.vmId, h.lxc.address, h.lxc.hostname]),
    ).toEqual([
      ["pve-lab", 9125, "10.30.0.25", "smtp-edge-dev"],
      ["pve2", 9126, "10.30.0.26", "smtp-edge-dev-2"],
      ["pve3", 9127, "10.30.0.27", "edge-c"],
    ]);
    expect(config.hosts[2].lxc.gateway).toBe(config.lxc.gateway);
    expect(config.redis?.host).toBe("10.30.0.25");
  });

  it("warns that bans cannot block clients behind the trusted proxy", () => {
    const prod = parseConfig(withSecrets(loadStackFile("prod")));
    const dev = parseConfig(withSecrets(loadStackFile("dev")));
    expect(prod.warnings.join("\n")).toMatch(/fail2ban .* ban them at the proxy/);
    expect(dev.warnings.join("\n")).not.toMatch(/fail2ban/);
  });

  it("refuses a Redis password Traefik's file template could not carry", () => {
    const source = devWith({ "edge.extraHosts": ["node=pve2,vmId=9126,ipv4=10.30.0.26/24"] });
    const secrets = { ...decryptedSecrets, "redis.password": "it's-a-password" };
    expect(() => parseConfig(withSecrets(source, secrets))).toThrow(
      /redis\.password .*found \[secret\]; expected no single quote or line break/,
    );
  });

  it("never bans loopback, the exempt senders or the trusted proxies", () => {
    const config = parseConfig(withSecrets(loadStackFile("prod")));
    expect(config.fail2ban?.ignoreIPs).toEqual(
      expect.arrayContaining([
        "127.0.0.0/8",
        ...config.rateLimit.exempt,
        ...config.traefik.trustedProxies,
      ]),
    );
  });
});

describe("secrets stay secret", () => {
  it("every secret in the typed configuration is a secret Output", async () => {
    const config = parseConfig(withSecrets(loadStackFile("prod")));
    const secrets = [
      config.lxc.sshPrivateKey,
      config.relay.clientLogins,
      config.relay.upstream.password!,
      config.proxmox.auth.method === "password"
        ? config.proxmox.auth.password
        : config.proxmox.auth.secret,
      config.acme.challenge.type === "dns" ? config.acme.challenge.token : undefined,
    ];
    for (const s of secrets) expect(await pulumi.isSecret(s!)).toBe(true);
  });
});

describe("connectionRateLimit: the relay's connections per window from the token bucket", () => {
  // ceil(average × window / period) + burst, worked out by hand; 0 means Postfix's "no limit".
  it.each([
    { average: 30, period: 60, burst: 10, window: 60, connections: 40 },
    { average: 60, period: 60, burst: 30, window: 60, connections: 90 },
    { average: 100, period: 1, burst: 1, window: 60, connections: 6001 },
    { average: 1, period: 3600, burst: 5, window: 60, connections: 6 },
    { average: 10, period: 60, burst: 5, window: 90, connections: 20 },
    { average: 0, period: 60, burst: 20, window: 60, connections: 0 },
  ])("$average per $period s, burst $burst, window $window s: $connections", (c) => {
    expect(connectionRateLimit(c.average, c.period, c.burst, c.window)).toBe(c.connections);
  });
});

describe("parseDuration reads Traefik durations", () => {
  it.each([
    ["1s", 1],
    ["1m", 60],
    ["1h30m", 5400],
    ["250ms", 0.25],
    ["10", 10],
  ])("%s is %d s", (text, seconds) => {
    expect(parseDuration(text)).toBeCloseTo(seconds);
  });

  it.each(["", "1d", "m", "1 m", "-1s"])("%j is not a duration", (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});

describe("the README's configuration reference", () => {
  it("lists every declared key with its current default and description", () => {
    const readme = fs.readFileSync(path.join(PROJECT_DIR, "README.md"), "utf8");
    expect(withCurrentTable(readme), "run `npm run docs:config`").toBe(readme);
    for (const key of CONFIG_KEYS) expect(configTable()).toContain(`| \`${key}\` |`);
  });
});

describe("stack files", () => {
  it("a missing stack names the stacks there are", () => {
    expect(() => loadStackFile("staging")).toThrow(
      /Pulumi\.staging\.yaml: found no such file; expected a stack file; stacks here: dev, prod/,
    );
  });
});
