/**
 * The ban jail: rendered from the stack (pure), read by Debian's real fail2ban (the settings it
 * takes, the firewall commands it would run, the lines its filter counts), and the component
 * under the mock runtime.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as docker from "@pulumi/docker";
import { afterAll, describe, expect, it } from "vitest";
import type { HomelabConfig } from "../config";
import {
  DATA_DIR,
  Fail2ban,
  JAIL_FILTER,
  JAIL_NAME,
  JAIL_PATH,
  jailLocal,
} from "../components/fail2ban";
import { MAIL_LOG, MAIL_LOG_DIR } from "../components/relay";
import { CONTAINER_PORTS } from "../components/traefik";
import { registeredResources, settle, type Registered } from "./mocks";
import { stackConfig } from "./stacks";

const FAIL2BAN_CONFIG = "/etc/fail2ban";
const TOOLS = [
  "/usr/bin/fail2ban-client",
  "/usr/bin/fail2ban-regex",
  `${FAIL2BAN_CONFIG}/filter.d/postfix.conf`,
];
const missing = TOOLS.filter((tool) => !fs.existsSync(tool));

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "fail2ban-test-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** The jail's settings as an INI section: key → value. */
function jailSettings(text: string): Map<string, string> {
  const section = text.split(`[${JAIL_NAME}]`)[1] ?? "";
  const settings = new Map<string, string>();
  for (const line of section.split("\n")) {
    const m = /^(\w+)\s*=\s*(.*)$/.exec(line);
    if (m) settings.set(m[1], m[2]);
  }
  return settings;
}

describe.each(["dev", "prod"])("jailLocal for the %s stack", (stack) => {
  const config = stackConfig(stack);
  const fail2ban = config.fail2ban!;
  const settings = jailSettings(jailLocal(fail2ban));

  it("counts failed SASL logins with fail2ban's own Postfix filter, in the relay's plain-text log", () => {
    expect(settings.get("enabled")).toBe("true");
    expect(settings.get("filter")).toBe(JAIL_FILTER);
    expect(settings.get("logpath")).toBe(MAIL_LOG);
    expect(MAIL_LOG.startsWith(`${MAIL_LOG_DIR}/`)).toBe(true);
  });

  it("bans after fail2ban.maxRetry failures within fail2ban.findTime, for fail2ban.banTime", () => {
    expect(settings.get("maxretry")).toBe(String(fail2ban.maxRetry));
    expect(settings.get("findtime")).toBe(fail2ban.findTime);
    expect(settings.get("bantime")).toBe(fail2ban.banTime);
  });

  it("never bans loopback, the exempt senders or the trusted proxies", () => {
    const ignored = settings.get("ignoreip")!.split(" ");
    const never = ["127.0.0.0/8", ...config.rateLimit.exempt, ...config.traefik.trustedProxies];
    expect(ignored).toEqual(expect.arrayContaining(never));
    expect(ignored).toEqual([...fail2ban.ignoreIPs]);
  });

  it("bans in DOCKER-USER on the SMTP ports inside Traefik's container", () => {
    expect(settings.get("chain")).toBe("DOCKER-USER");
    expect(settings.get("port")!.split(",").map(Number)).toEqual([
      CONTAINER_PORTS.smtps,
      CONTAINER_PORTS.submission,
    ]);
    expect(settings.get("protocol")).toBe("tcp");
  });
});

// ---------------------------------------------------------------------------------------
// What Debian's fail2ban makes of the rendered jail.

/** A private copy of the fail2ban configuration with the rendered jail and nothing else enabled. */
function configDir(config: HomelabConfig, logPath: string): string {
  const dir = fs.mkdtempSync(path.join(scratch, "etc-"));
  fs.cpSync(FAIL2BAN_CONFIG, dir, { recursive: true });
  fs.rmSync(path.join(dir, "jail.d"), { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, "jail.d"));
  fs.writeFileSync(path.join(dir, "jail.local"), jailLocal(config.fail2ban!, { logPath }));
  return dir;
}

/** fail2ban-regex over `lines`; the lines the filter matched, as written. */
function matchedLines(lines: string[], filter: string): string[] {
  const log = path.join(fs.mkdtempSync(path.join(scratch, "log-")), "mail.log");
  fs.writeFileSync(log, `${lines.join("\n")}\n`);
  const run = spawnSync(
    "fail2ban-regex",
    ["-c", FAIL2BAN_CONFIG, "--print-all-matched", log, filter],
    { encoding: "utf8" },
  );
  expect(run.status, run.stderr).toBe(0);
  const block = run.stdout.split("|- Matched line(s):")[1]?.split("\n`-")[0] ?? "";
  return block
    .split("\n")
    .map((l) => l.replace(/^\|\s+/, ""))
    .filter((l) => l.trim() !== "");
}

if (missing.length > 0 && !process.env.CI) {
  describe.skip(`the jail in Debian's fail2ban (needs ${missing.join(", ")}: apt-get install fail2ban)`, () => {
    it("runs", () => undefined);
  });
} else {
  describe("the jail in Debian's fail2ban", () => {
    it("has everything it needs", () => {
      expect(missing, "fail2ban must be installed (CI installs .ci/packages.txt)").toEqual([]);
    });

    describe.each(["dev", "prod"])("%s", (stack) => {
      const config = stackConfig(stack);
      const logPath = path.join(scratch, `${stack}-mail.log`);
      fs.writeFileSync(logPath, "");
      const dump = spawnSync("fail2ban-client", ["-c", configDir(config, logPath), "-d"], {
        encoding: "utf8",
      });
      const commands = dump.stdout.split("\n").filter((l) => l.includes(`'${JAIL_NAME}'`));
      const setting = (key: string) =>
        commands.find((l) => l.startsWith(`['set', '${JAIL_NAME}', '${key}'`));

      it("is read without error, and only this jail starts", () => {
        expect(dump.status, dump.stderr).toBe(0);
        const started = dump.stdout.split("\n").filter((l) => l.startsWith("['start'"));
        expect(started).toEqual([`['start', '${JAIL_NAME}']`]);
      });

      it("takes the retries, window, ban time and ignored addresses from the stack", () => {
        const f = config.fail2ban!;
        expect(setting("maxretry")).toBe(`['set', '${JAIL_NAME}', 'maxretry', ${f.maxRetry}]`);
        expect(setting("findtime")).toContain(`'${f.findTime}'`);
        expect(setting("bantime")).toContain(`'${f.banTime}'`);
        for (const ip of f.ignoreIPs) expect(setting("addignoreip")).toContain(`'${ip}'`);
        expect(setting("addlogpath")).toContain(`'${logPath}'`);
      });

      it("inserts its chain into DOCKER-USER for the SMTP ports and bans by source address", () => {
        const action = commands.find((l) => l.startsWith(`['multi-set', '${JAIL_NAME}', 'action'`));
        const ports = [CONTAINER_PORTS.smtps, CONTAINER_PORTS.submission].join(",");
        expect(action).toContain(
          `-I DOCKER-USER -p $proto -m multiport --dports ${ports} -j f2b-${JAIL_NAME}`,
        );
        expect(action).toContain(`-I f2b-${JAIL_NAME} 1 -s <ip> -j <blocktype>`);
      });
    });

    it("counts failed logins only: not a successful login, not a refused recipient", () => {
      const host = "smtp-edge";
      // The relay's log as rsyslog writes it (RSYSLOG_TraditionalFileFormat); one line per case.
      const failedLogins = [
        `Dec  3 16:24:00 ${host} postfix/smtpd[101]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: authentication failure`,
        `Dec  3 16:24:01 ${host} postfix/smtpd[102]: warning: unknown[2001:db8::9]: SASL PLAIN authentication failed: authentication failure`,
      ];
      const others = [
        `Dec  3 16:24:02 ${host} postfix/smtpd[103]: 4F1A2C0: client=unknown[198.51.100.7], sasl_method=PLAIN, sasl_username=alerts`,
        `Dec  3 16:24:03 ${host} postfix/smtpd[104]: NOQUEUE: reject: RCPT from unknown[192.0.2.5]: 554 5.7.1 <x@example.com>: Relay access denied; from=<a@example.net> to=<x@example.com> proto=ESMTP helo=<h>`,
      ];
      expect(matchedLines([...failedLogins, ...others], JAIL_FILTER)).toEqual(failedLogins);
    });
  });
}

// ---------------------------------------------------------------------------------------
// The component.

describe("Fail2ban", () => {
  const config = stackConfig("dev");
  const built = (async () => {
    const name = "fail2ban-test";
    const dockerProvider = new docker.Provider(`${name}-docker`, { host: "ssh://root@127.0.0.1" });
    const maillog = new docker.Volume(
      `${name}-maillog`,
      { name: `${name}-maillog` },
      { provider: dockerProvider },
    );
    const component = new Fail2ban(name, { fail2ban: config.fail2ban!, dockerProvider, maillog });
    await settle(component.container.id);
    const children = registeredResources().filter(
      (r) => r.name.startsWith(name) && r.name !== `${name}-docker` && r.name !== `${name}-maillog`,
    );
    const container = children.find((r) => r.type === "docker:index/container:Container")!;
    return { children, container, maillogName: `${name}-maillog` };
  })();

  it("runs the pinned image on the host's network with only the capabilities a firewall needs", async () => {
    const { children, container } = await built;
    const image = children.find(
      (r: Registered) => r.type === "docker:index/remoteImage:RemoteImage",
    );
    expect(image?.inputs.name).toBe(config.fail2ban!.image);
    expect(container.inputs.networkMode).toBe("host");
    expect(container.inputs.capabilities).toEqual({ adds: ["NET_ADMIN", "NET_RAW"] });
    expect(container.inputs.privileged ?? false).toBe(false);
    expect(container.inputs.ports ?? []).toEqual([]);
  });

  it("reads the relay's log volume read-only, where the jail looks for the log", async () => {
    const { container, maillogName } = await built;
    const volumes = container.inputs.volumes as {
      volumeName: string;
      containerPath: string;
      readOnly?: boolean;
    }[];
    const log = volumes.find((v) => v.volumeName === maillogName);
    expect(log).toEqual({ volumeName: maillogName, containerPath: MAIL_LOG_DIR, readOnly: true });
    expect(
      jailSettings(jailLocal(config.fail2ban!))
        .get("logpath")!
        .startsWith(`${log!.containerPath}/`),
    ).toBe(true);
    expect(volumes.find((v) => v.containerPath === DATA_DIR)?.readOnly ?? false).toBe(false);
  });

  it("uploads the rendered jail", async () => {
    const { container } = await built;
    expect(container.inputs.uploads).toEqual([
      { file: JAIL_PATH, content: jailLocal(config.fail2ban!) },
    ]);
  });
});
