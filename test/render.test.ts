/**
 * The offline render as a reviewer runs it: a child process per run, like `npm run render`.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import YAML from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { PROJECT_DIR, SECRET_KEYS, loadStackFile, parseConfig } from "../config";
import { JAIL_PATH, jailLocal } from "../components/fail2ban";

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "render-test-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

function render(args: string[]) {
  const run = spawnSync(
    process.execPath,
    [path.join(PROJECT_DIR, "node_modules/tsx/dist/cli.mjs"), "tools/render.ts", ...args],
    {
      cwd: PROJECT_DIR,
      encoding: "utf8",
      timeout: 60_000,
    },
  );
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

function readTree(dir: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    files[path.relative(dir, full)] = fs.readFileSync(full, "utf8");
  }
  return files;
}

/** A stack folder holding the dev stack file with `edit` applied to its YAML. */
function stackDirWith(edit: (config: Record<string, unknown>) => void): string {
  const dir = fs.mkdtempSync(path.join(scratch, "stacks-"));
  const doc = YAML.parse(fs.readFileSync(path.join(PROJECT_DIR, "stacks/Pulumi.dev.yaml"), "utf8"));
  edit(doc.config);
  fs.writeFileSync(path.join(dir, "Pulumi.dev.yaml"), YAML.stringify(doc));
  return dir;
}

describe.each(["dev", "prod"])("render --stack %s", (stack) => {
  const first = path.join(scratch, "a");
  const second = path.join(scratch, "b");
  let runs: ReturnType<typeof render>[] = [];

  it("succeeds offline and writes every file", () => {
    runs = [
      render(["--stack", stack, "--out", first]),
      render(["--stack", stack, "--out", second]),
    ];
    for (const run of runs) expect(run.status, run.stderr).toBe(0);
    expect(Object.keys(readTree(path.join(first, stack))).sort()).toEqual(
      [
        "postfix/main.cf",
        "postfix/master.cf",
        "resources.json",
        "traefik/dynamic.yml",
        "traefik/static.yml",
        // fail2ban is on unless a stack turns it off.
        ...(parseConfig(loadStackFile(stack), { allowUnsetSecrets: true }).fail2ban
          ? ["fail2ban/jail.local"]
          : []),
      ].sort(),
    );
  });

  it("is deterministic: two runs give byte-identical files", () => {
    expect(readTree(path.join(first, stack))).toEqual(readTree(path.join(second, stack)));
  });

  it("prints a short summary: resources, routers with middlewares, the limit per layer, warnings", () => {
    const out = runs[0].stdout;
    expect(out).toMatch(/resources \(\d+\):/);
    expect(out).toMatch(/http \S+ \[websecure\] .* -> relay-ratelimit/);
    expect(out).toMatch(/tcp \S+ \[submission\]/);
    expect(out).toMatch(/HTTP \(Traefik rateLimit\)/);
    expect(out).toMatch(/SMTP \(Postfix anvil/);
    expect(out).toContain("warnings");
    expect(out.split("\n").length).toBeLessThan(60);
  });

  it("lists every resource with type, name, parent, provider and dependencies, secrets masked", () => {
    const resources = JSON.parse(
      fs.readFileSync(path.join(first, stack, "resources.json"), "utf8"),
    ) as {
      type: string;
      name: string;
      parent: string | null;
      provider: string | null;
      dependsOn: string[];
      inputs: Record<string, unknown>;
    }[];
    const names = new Set(resources.map((r) => r.name));
    for (const r of resources) {
      if (r.parent) expect(names, `${r.name}'s parent`).toContain(r.parent);
      for (const d of r.dependsOn) expect(names, `${r.name} depends on`).toContain(d);
    }
    const containers = resources.filter((r) => r.type === "docker:index/container:Container");
    expect(containers.length).toBeGreaterThanOrEqual(2);
    for (const c of containers) expect(c.provider).toMatch(/docker/);
    const text = JSON.stringify(resources);
    expect(text).toContain("[secret]");
    expect(text).not.toMatch(/BEGIN OPENSSH PRIVATE KEY/);
  });
});

describe("render with a stack file that holds encrypted values", () => {
  it("never decrypts them: they stay [secret] in every file", () => {
    const dir = stackDirWith((config) => {
      for (const key of SECRET_KEYS)
        config[`homelab-smtp:${key}`] = { secure: "v1:c2VjcmV0LW5vdC1kZWNyeXB0ZWQ=" };
    });
    const out = path.join(scratch, "secure");
    const run = render(["--stack", "dev", "--out", out, "--stack-dir", dir]);
    expect(run.status, run.stderr).toBe(0);
    const all = Object.values(readTree(path.join(out, "dev"))).join("\n");
    expect(all).not.toContain("c2VjcmV0LW5vdC1kZWNyeXB0ZWQ");
    expect(run.stdout).not.toContain("is not set in the stack file");
  });
});

describe("render of an invalid stack file", () => {
  const out = path.join(scratch, "invalid");
  const dir = stackDirWith((config) => {
    config["homelab-smtp:rateLimit.burst"] = 0;
    config["homelab-smtp:rateLimit.depth"] = 1;
    config["homelab-smtp:lxc.vmId"] = 42;
  });
  const run = render(["--stack", "dev", "--out", out, "--stack-dir", dir]);

  it("exits 1 with every problem on stderr, keys named, and no stack trace", () => {
    expect(run.status).toBe(1);
    for (const key of ["rateLimit.burst", "rateLimit.depth", "lxc.vmId"]) {
      expect(run.stderr).toContain(`homelab-smtp:${key} in `);
    }
    expect(run.stderr).not.toMatch(/\n\s+at /);
    expect(run.stdout).toBe("");
  });

  it("writes nothing", () => {
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe("render of a stack with two hosts", () => {
  const out = path.join(scratch, "two-hosts");
  const base = YAML.parse(
    fs.readFileSync(path.join(PROJECT_DIR, "stacks/Pulumi.dev.yaml"), "utf8"),
  ).config;
  const [address, prefix] = String(base["homelab-smtp:lxc.ipv4"]).split("/");
  const second = {
    hostname: `${base["homelab-smtp:lxc.hostname"]}-b`,
    address: address.replace(/\d+$/, (last) => String(Number(last) + 1)),
  };
  const dir = stackDirWith((config) => {
    config["homelab-smtp:edge.extraHosts"] = [
      `node=pve-b,vmId=${Number(base["homelab-smtp:lxc.vmId"]) + 1},ipv4=${second.address}/${prefix},hostname=${second.hostname}`,
    ];
    config["homelab-smtp:redis.password"] = { secure: "v1:cmVkaXMtcGFzc3dvcmQ=" };
  });
  const config = parseConfig(loadStackFile("dev", dir), { allowUnsetSecrets: true });
  const redisEndpoint = `${address}:${config.redis!.port}`;
  const run = render(["--stack", "dev", "--out", out, "--stack-dir", dir]);
  const tree = run.status === 0 ? readTree(path.join(out, "dev")) : {};
  const hosts = [String(base["homelab-smtp:lxc.hostname"]), second.hostname];
  const resources = () =>
    JSON.parse(tree["resources.json"]) as {
      type: string;
      name: string;
      provider: string | null;
      inputs: any;
    }[];

  it("succeeds, with each edge's Traefik configuration in a folder named after its host", () => {
    expect(run.status, run.stderr).toBe(0);
    const expected = [
      "resources.json",
      "postfix/main.cf",
      "postfix/master.cf",
      "fail2ban/jail.local",
      ...hosts.flatMap((h) => [`traefik/${h}/static.yml`, `traefik/${h}/dynamic.yml`]),
    ];
    expect(Object.keys(tree).sort()).toEqual(expected.sort());
  });

  it("renders two LXC hosts, two Traefiks, two relays and one Redis", () => {
    const count = (type: string) => resources().filter((r) => r.type === type).length;
    expect(count("proxmoxve:index/containerLegacy:ContainerLegacy")).toBe(2);
    expect(count("homelab:edge:Edge")).toBe(2);
    expect(count("homelab:relay:Relay")).toBe(2);
    expect(count("homelab:redis:RateLimitStore")).toBe(1);
    const addresses = resources()
      .filter((r) => r.type === "proxmoxve:index/containerLegacy:ContainerLegacy")
      .map((r) => r.inputs.initialization.ipConfigs[0].ipv4.address.split("/")[0]);
    expect(addresses).toEqual(expect.arrayContaining([address, second.address]));
  });

  it("points every edge's rate limiter at the one Redis on the first host, through the file provider", () => {
    for (const host of hosts) {
      const dynamic = YAML.parse(tree[`traefik/${host}/dynamic.yml`]);
      const rateLimit = dynamic.http.middlewares["relay-ratelimit"].rateLimit;
      expect(rateLimit.redis.endpoints, host).toEqual([redisEndpoint]);
      expect(rateLimit.redis.password).toMatch(/^\{\{ env "\w+" \}\}$/);
      expect(dynamic.http.routers["relay-metrics"].middlewares[0]).toBe("relay-ratelimit@file");
    }
    const redis = resources().find(
      (r) => r.type === "docker:index/container:Container" && r.name.endsWith("-redis"),
    );
    expect(redis?.inputs.networkMode).toBe("host");
    expect(redis?.provider).toBe(
      resources().find((r) => r.name.endsWith("-edge-traefik"))?.provider,
    );
  });

  it("shows the same static configuration on both edges, and never the encrypted password", () => {
    expect(tree[`traefik/${hosts[0]}/static.yml`]).toBe(tree[`traefik/${hosts[1]}/static.yml`]);
    expect(Object.values(tree).join("\n")).not.toContain("cmVkaXMtcGFzc3dvcmQ");
  });

  it("runs fail2ban on both hosts with the one jail it writes to fail2ban/jail.local", () => {
    const jails = resources()
      .filter((r) => r.type === "docker:index/container:Container")
      .flatMap((r) => (r.inputs.uploads ?? []).filter((u: any) => u.file === JAIL_PATH))
      .map((u: any) => u.content);
    expect(jails).toHaveLength(2);
    for (const jail of jails) expect(jail).toBe(tree["fail2ban/jail.local"]);
    expect(tree["fail2ban/jail.local"]).toBe(jailLocal(config.fail2ban!));
  });

  it("says in its summary that the buckets are shared", () => {
    expect(run.stdout).toMatch(/hosts \(2\)/);
    expect(run.stdout).toContain(`Redis at ${redisEndpoint}`);
  });
});

describe("render of a stack without fail2ban", () => {
  it("writes no jail and says there are no bans", () => {
    const out = path.join(scratch, "no-bans");
    const dir = stackDirWith((config) => {
      config["homelab-smtp:fail2ban.enabled"] = false;
    });
    const run = render(["--stack", "dev", "--out", out, "--stack-dir", dir]);
    expect(run.status, run.stderr).toBe(0);
    expect(
      Object.keys(readTree(path.join(out, "dev"))).filter((f) => f.startsWith("fail2ban")),
    ).toEqual([]);
    expect(run.stdout).toMatch(/Bans: none/);
  });
});
