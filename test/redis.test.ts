/**
 * The shared rate-limit store: what the component asks Docker for (mock runtime), and its
 * start script and healthcheck run for real against Debian's redis-server on loopback.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as docker from "@pulumi/docker";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  MAX_MEMORY,
  REDIS_PASSWORD_VAR,
  RateLimitStore,
  checkRedisPassword,
  redisHealthcheck,
  redisStartScript,
  serverUser,
} from "../components/redis";
import { isSecretValue, registeredResources, settle, unwrapSecrets } from "./mocks";
import { SECRETS, withHosts } from "./stacks";

const PASSWORD = SECRETS["redis.password"];

// ---------------------------------------------------------------------------------------
// The component.

describe("RateLimitStore", () => {
  // A second host, so the stack has a Redis.
  const config = withHosts("prod", 1);
  const redis = config.redis!;
  const built = (async () => {
    const name = "redis-test";
    const dockerProvider = new docker.Provider(`${name}-docker`, { host: "ssh://root@127.0.0.1" });
    const store = new RateLimitStore(name, { redis, dockerProvider }, {});
    await settle(store.container.id);
    const children = registeredResources().filter((r) => r.name.startsWith(`${name}`));
    const container = children.find((r) => r.type === "docker:index/container:Container")!;
    return { store, children, container, providerName: `${name}-docker` };
  })();

  it("runs the pinned image on the host's network, publishing no port, as the image's own user", async () => {
    const { children, container } = await built;
    const image = children.find((r) => r.type === "docker:index/remoteImage:RemoteImage");
    expect(image?.inputs.name).toBe(redis.image);
    expect(container.inputs.networkMode).toBe("host");
    expect(container.inputs.ports ?? []).toEqual([]);
    expect(container.inputs.user).toBe(serverUser(redis.image));
  });

  it("binds the first host's address and loopback, with protected mode and no persistence", async () => {
    const script = ((await built).container.inputs.entrypoints as string[]).at(-1)!;
    expect(script).toContain(`--bind ${config.hosts[0].lxc.address} 127.0.0.1`);
    expect(script).toContain(`--port ${redis.port}`);
    expect(script).toContain("--protected-mode yes");
    expect(script).toContain("--save ''");
    expect(script).toContain("--appendonly no");
  });

  it("holds the password only in a secret environment value", async () => {
    const { container } = await built;
    expect(isSecretValue(container.inputs.envs)).toBe(true);
    expect(unwrapSecrets(container.inputs.envs)).toEqual([`${REDIS_PASSWORD_VAR}=${PASSWORD}`]);
    const { envs, ...rest } = container.inputs;
    expect(JSON.stringify(unwrapSecrets(rest))).not.toContain(PASSWORD);
  });

  it("runs through the first host's provider and names its endpoint", async () => {
    const { store, container, providerName } = await built;
    expect(container.provider).toContain(`::${providerName}::`);
    expect(store.endpoint).toBe(`${config.hosts[0].lxc.address}:${redis.port}`);
  });
});

describe("helpers", () => {
  it.each([
    ["valkey/valkey:8.1.11-alpine", "valkey"],
    ["docker.io/valkey/valkey:8.1.11@sha256:" + "a".repeat(64), "valkey"],
    ["redis:7.4.5-alpine", "redis"],
    ["registry.example.net:5000/redis:7.4.5", "redis"],
  ])("the server user of %s is %s", (image, user) => {
    expect(serverUser(image)).toBe(user);
  });

  it.each([
    ["letters, digits and dashes", "Zx81-spectrum-48k", true],
    ["spaces, double quotes and dollars", 'a b "c" $d', true],
    ["a single quote", "it's", false],
    ["a line break", "line\nbreak", false],
  ])("a password with %s: %j accepted = %s", (_what, password, ok) => {
    const check = () => checkRedisPassword(password);
    if (ok) expect(check).not.toThrow();
    else expect(check).toThrow(/redis\.password/);
  });
});

// ---------------------------------------------------------------------------------------
// The start script and the healthcheck, on a real server.

const SERVER = ["/usr/bin/valkey-server", "/usr/bin/redis-server"].find((p) => fs.existsSync(p));
const CLI = ["/usr/bin/valkey-cli", "/usr/bin/redis-cli"].find((p) => fs.existsSync(p));

async function freePort(host: string): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

if ((!SERVER || !CLI) && !process.env.CI) {
  describe.skip("the start script on a real server (needs apt-get install redis-server)", () => {
    it("runs", () => undefined);
  });
} else {
  describe("the start script on a real server", () => {
    // Characters a shell or Redis's own config parser would mangle if the password were
    // pasted into the command rather than passed through the environment.
    const password = `s3cret with spaces "quotes" $HOME \\ ${PASSWORD}`;
    const host = "127.0.0.2";
    let port = 0;
    let server: ChildProcess;
    let workDir = "";
    const cli = (args: string[], auth?: string) =>
      spawnSync(CLI!, ["-h", "127.0.0.1", "-p", String(port), ...args], {
        encoding: "utf8",
        env: { ...process.env, ...(auth === undefined ? {} : { REDISCLI_AUTH: auth }) },
      });

    beforeAll(async () => {
      expect(
        SERVER && CLI,
        "redis-server must be installed (CI installs .ci/packages.txt)",
      ).toBeTruthy();
      port = await freePort(host);
      const script = redisStartScript({
        host,
        port,
        image: "valkey/valkey:8.1.11-alpine",
        password: undefined as never,
      });
      server = spawn("/bin/sh", ["-c", script], {
        env: { PATH: "/usr/bin:/bin", [REDIS_PASSWORD_VAR]: password },
        cwd: (workDir = fs.mkdtempSync("/tmp/redis-test-")),
        stdio: "ignore",
      });
      for (let i = 0; i < 50 && !/NOAUTH|PONG/.test(cli(["ping"]).stdout); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
    });
    afterAll(async () => {
      const exited = new Promise((resolve) => server?.once("exit", resolve));
      if (server?.exitCode === null && server.kill("SIGTERM")) await exited;
      if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    });

    it("refuses commands without the password and answers with it", () => {
      expect(cli(["ping"]).stdout).toMatch(/NOAUTH/);
      expect(cli(["ping"], "wrong").stdout + cli(["ping"], "wrong").stderr).not.toMatch(/PONG/);
      expect(cli(["ping"], password).stdout.trim()).toBe("PONG");
    });

    it("listens on both bound addresses", () => {
      const there = spawnSync(CLI!, ["-h", host, "-p", String(port), "ping"], {
        encoding: "utf8",
        env: { ...process.env, REDISCLI_AUTH: password },
      });
      expect(there.stdout.trim()).toBe("PONG");
    });

    it.each([
      ["protected-mode", "yes"],
      ["save", ""],
      ["appendonly", "no"],
      ["maxmemory-policy", "allkeys-lru"],
    ])("runs with %s %j", (key, value) => {
      expect(cli(["config", "get", key], password).stdout.split("\n")[1]).toBe(value);
    });

    it("caps its memory", () => {
      const bytes = Number(cli(["config", "get", "maxmemory"], password).stdout.split("\n")[1]);
      expect(bytes).toBe(Number.parseInt(MAX_MEMORY, 10) * 1024 * 1024);
    });

    it("does not show the password in its process title", () => {
      const cmdline = fs.readFileSync(`/proc/${server.pid}/cmdline`, "utf8");
      expect(cmdline).toMatch(/redis-server|valkey-server/);
      expect(cmdline).not.toContain(PASSWORD);
    });

    it("is healthy by its healthcheck, and unhealthy with the wrong password", () => {
      const [, command] = redisHealthcheck({ host, port, image: "", password: undefined as never })
        .tests as string[];
      const run = (secret: string) =>
        spawnSync("/bin/sh", ["-c", command], {
          env: { PATH: "/usr/bin:/bin", [REDIS_PASSWORD_VAR]: secret },
        }).status;
      expect(run(password)).toBe(0);
      expect(run("wrong")).not.toBe(0);
    });
  });
}
