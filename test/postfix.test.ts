/**
 * The relay's Postfix settings: derived from the stack configuration as postconf(5) says,
 * and accepted by the real Postfix installed here.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as ipaddr from "ipaddr.js";
import { afterAll, describe, expect, it } from "vitest";
import { HomelabConfig, connectionRateLimit, parsePostfixTime } from "../config";
import { SECRETS, stackConfig } from "./stacks";
import { RELAY_LISTENERS } from "../components/names";
import {
  MasterService,
  PostfixSettings,
  postfixSettings,
  renderMainCf,
  renderMasterCf,
} from "../components/postfix";

const STACKS = ["dev", "prod"] as const;

/** The main.cf parameters as a real Postfix reads them back (`-c` adds config_directory). */
function mainParameters(settings: PostfixSettings): Record<string, string> {
  const result = postconf(settings, ["-n"]);
  expect(result.stderr).toBe("");
  return Object.fromEntries(
    result.stdout
      .trim()
      .split("\n")
      .map((line) => {
        const at = line.indexOf(" =");
        return [line.slice(0, at), line.slice(at + 2).trim()];
      })
      .filter(([name]) => name !== "config_directory"),
  );
}

// ---------------------------------------------------------------------------------------
// The real postconf on the rendered files.

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "postfix-test-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

function postconf(settings: PostfixSettings, args: string[]) {
  const dir = fs.mkdtempSync(path.join(scratch, "conf-"));
  fs.writeFileSync(path.join(dir, "main.cf"), renderMainCf(settings));
  fs.writeFileSync(path.join(dir, "master.cf"), renderMasterCf(settings));
  const run = spawnSync("postconf", ["-c", dir, ...args], { encoding: "utf8", timeout: 20_000 });
  if (run.error) throw run.error;
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

describe("postconf accepts the rendered files", () => {
  const cases = STACKS.flatMap((stack) =>
    [["-n"], ["-M"], ["-P"]].map((args) => ({ stack, args })),
  );
  it.each(cases)("$stack: postconf $args reports nothing", ({ stack, args }) => {
    const result = postconf(postfixSettings(stackConfig(stack)), args);
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).not.toBe("");
  });

  it.each(STACKS)("%s: postconf -n reads back every rendered parameter unchanged", (stack) => {
    const settings = postfixSettings(stackConfig(stack));
    expect(mainParameters(settings)).toEqual(settings.main);
  });

  it("an option value with blanks is rendered in the { name = value } form postconf accepts", () => {
    const settings = postfixSettings(stackConfig("dev"));
    const withBlanks: PostfixSettings = {
      ...settings,
      master: settings.master.map((s) =>
        s.service === String(RELAY_LISTENERS.submission)
          ? {
              ...s,
              options: {
                ...s.options,
                smtpd_client_restrictions: "permit_sasl_authenticated, reject",
              },
            }
          : s,
      ),
    };
    const result = postconf(withBlanks, ["-P"]);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain(
      `${RELAY_LISTENERS.submission}/inet/smtpd_client_restrictions = permit_sasl_authenticated, reject`,
    );
  });
});

// ---------------------------------------------------------------------------------------
// Rendering.

describe("rendering", () => {
  it.each(STACKS)(
    "%s: main.cf and master.cf are the same on every render and start with a header",
    (stack) => {
      const a = postfixSettings(stackConfig(stack));
      const b = postfixSettings(stackConfig(stack));
      expect(renderMainCf(a)).toBe(renderMainCf(b));
      expect(renderMasterCf(a)).toBe(renderMasterCf(b));
      expect(renderMainCf(a).startsWith("# ")).toBe(true);
      expect(renderMasterCf(a).startsWith("# ")).toBe(true);
    },
  );

  it("main.cf does not depend on the order the parameters were assembled in", () => {
    const settings = postfixSettings(stackConfig("prod"));
    const reversed = {
      ...settings,
      main: Object.fromEntries(Object.entries(settings.main).reverse()),
    };
    expect(renderMainCf(reversed)).toBe(renderMainCf(settings));
  });

  it.each([
    [
      "main.cf",
      (s: PostfixSettings): PostfixSettings => ({
        ...s,
        main: { ...s.main, myhostname: "a\nmynetworks = 0.0.0.0/0" },
      }),
    ],
    [
      "master.cf",
      (s: PostfixSettings): PostfixSettings => ({
        ...s,
        master: [
          { ...s.master[0], options: { syslog_name: "x\n-o smtpd_relay_restrictions=permit" } },
        ],
      }),
    ],
  ])("a value with a line break is refused in %s", (_file, edit) => {
    const settings = edit(postfixSettings(stackConfig("dev")));
    expect(() => renderMainCf(settings) + renderMasterCf(settings)).toThrow(/one line/);
  });

  it.each(STACKS)(
    "%s: no secret of the stack appears in the settings or the rendered files",
    (stack) => {
      const settings = postfixSettings(stackConfig(stack));
      const text = [
        JSON.stringify(settings),
        renderMainCf(settings),
        renderMasterCf(settings),
      ].join("\n");
      const secretParts = Object.values(SECRETS)
        .flatMap((s) => s.split(/[,:\n]/))
        .filter((p) => p.includes("canary"));
      expect(secretParts.length).toBeGreaterThan(0);
      for (const part of secretParts) expect(text).not.toContain(part);
    },
  );
});

// ---------------------------------------------------------------------------------------
// Per-client limits (anvil), as postconf(5) defines them.

describe("per-client limits follow rateLimit", () => {
  const rows: { parameter: string; expected: (c: HomelabConfig) => number }[] = [
    { parameter: "smtpd_client_connection_count_limit", expected: (c) => c.rateLimit.inFlight },
    {
      parameter: "smtpd_client_connection_rate_limit",
      expected: (c) =>
        connectionRateLimit(
          c.rateLimit.average,
          c.rateLimit.periodSeconds,
          c.rateLimit.burst,
          c.rateLimit.windowSeconds,
        ),
    },
    { parameter: "smtpd_client_auth_rate_limit", expected: (c) => c.rateLimit.authAttempts },
    { parameter: "smtpd_client_message_rate_limit", expected: (c) => c.rateLimit.messages },
  ];
  const cases = STACKS.flatMap((stack) => rows.map((row) => ({ stack, ...row })));

  it.each(cases)("$stack: $parameter", ({ stack, parameter, expected }) => {
    const config = stackConfig(stack);
    expect(Number(postfixSettings(config).main[parameter])).toBe(expected(config));
  });

  it.each(STACKS)("%s: anvil counts over rateLimit.window", (stack) => {
    const config = stackConfig(stack);
    expect(parsePostfixTime(postfixSettings(config).main.anvil_rate_time_unit)).toBe(
      config.rateLimit.windowSeconds,
    );
  });

  it.each([
    { window: "2m", seconds: 120 },
    { window: "90s", seconds: 90 },
  ])(
    "window $window is $seconds seconds for anvil and the connection budget",
    ({ window, seconds }) => {
      const config = stackConfig("dev", { "rateLimit.window": window, "rateLimit.average": 600 });
      const main = postfixSettings(config).main;
      expect(parsePostfixTime(main.anvil_rate_time_unit)).toBe(seconds);
      // average per period, over the window, plus the burst the edge starts with.
      const perWindow =
        Math.ceil((600 * seconds) / config.rateLimit.periodSeconds) + config.rateLimit.burst;
      expect(Number(main.smtpd_client_connection_rate_limit)).toBe(perWindow);
    },
  );

  it("average 0 (no limit at the edge) turns the connection rate limit off", () => {
    expect(
      postfixSettings(stackConfig("dev", { "rateLimit.average": 0 })).main
        .smtpd_client_connection_rate_limit,
    ).toBe("0");
  });

  it("changing rateLimit.authAttempts changes smtpd_client_auth_rate_limit and nothing else", () => {
    const base = stackConfig("dev");
    const changed = stackConfig("dev", {
      "rateLimit.authAttempts": base.rateLimit.authAttempts + 7,
    });
    const before = postfixSettings(base);
    const after = postfixSettings(changed);
    const differing = Object.keys({ ...before.main, ...after.main }).filter(
      (k) => before.main[k] !== after.main[k],
    );
    expect(differing).toEqual(["smtpd_client_auth_rate_limit"]);
    expect(after.main.smtpd_client_auth_rate_limit).toBe(String(base.rateLimit.authAttempts + 7));
    expect(after.master).toEqual(before.master);
  });

  it.each(STACKS)(
    "%s: exempt from the limits are loopback and rateLimit.exempt, nothing else",
    (stack) => {
      const config = stackConfig(stack);
      const exceptions =
        postfixSettings(config).main.smtpd_client_event_limit_exceptions.split(/[\s,]+/);
      const others = exceptions.filter((e) => !isLoopback(e));
      expect(others.sort()).toEqual([...config.rateLimit.exempt].sort());
    },
  );
});

// ---------------------------------------------------------------------------------------
// Who may relay.

const PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"].map((c) =>
  ipaddr.parseCIDR(c),
);

/** A Postfix network entry ("127.0.0.0/8", "[::1]/128") as an address and prefix. */
function network(entry: string): [ipaddr.IPv4 | ipaddr.IPv6, number] {
  const plain = entry.replace(/^\[(.*)\]/, "$1");
  return plain.includes("/")
    ? ipaddr.parseCIDR(plain)
    : [ipaddr.parse(plain), ipaddr.parse(plain).kind() === "ipv4" ? 32 : 128];
}

function isLoopback(entry: string): boolean {
  const [address, prefix] = network(entry);
  return address.range() === "loopback" && prefix >= (address.kind() === "ipv4" ? 8 : 128);
}

describe("every client must log in", () => {
  it.each(STACKS)("%s: mynetworks is loopback only and touches no private range", (stack) => {
    const entries = postfixSettings(stackConfig(stack)).main.mynetworks.split(/[\s,]+/);
    expect(entries.length).toBeGreaterThan(0);
    for (const entry of entries) {
      expect(isLoopback(entry), entry).toBe(true);
      const [address] = network(entry);
      for (const range of PRIVATE_RANGES)
        expect(address.kind() === range[0].kind() && address.match(range)).toBe(false);
    }
  });

  it.each(STACKS)("%s: relaying needs a login; nothing is permitted by network", (stack) => {
    const main = postfixSettings(stackConfig(stack)).main;
    expect(main.smtpd_sasl_auth_enable).toBe("yes");
    expect(main.smtpd_sasl_type).toBe("cyrus");
    expect(main.smtpd_relay_restrictions.split(/[\s,]+/)).toEqual([
      "permit_sasl_authenticated",
      "reject",
    ]);
    for (const restriction of [
      "smtpd_client_restrictions",
      "smtpd_sender_restrictions",
      "smtpd_relay_restrictions",
      "smtpd_recipient_restrictions",
    ]) {
      expect(main[restriction], restriction).not.toMatch(
        /permit_mynetworks|permit_inet_interfaces|static:all/,
      );
    }
    expect(main.smtpd_sasl_security_options).toContain("noanonymous");
  });

  it.each(STACKS)(
    "%s: envelope senders are limited to relay.allowedSenderDomains, exactly",
    (stack) => {
      const config = stackConfig(stack);
      const restrictions = postfixSettings(config).main.smtpd_sender_restrictions;
      // The inline table's keys are the domains that get OK; the list ends in reject.
      const table = /check_sender_access inline:\{([^}]*)\}/.exec(restrictions);
      expect(table).not.toBeNull();
      const entries = table![1].split(",").map((e) => e.trim().split("="));
      expect(entries.map(([domain]) => domain).sort()).toEqual(
        [...config.relay.allowedSenderDomains].sort(),
      );
      expect(entries.every(([, action]) => action === "OK")).toBe(true);
      expect(restrictions.split(/,\s*/).at(-1)).toBe("reject");
      // A listed domain does not admit its subdomains (access tables would by default).
      expect(postfixSettings(config).main.parent_domain_matches_subdomains).not.toContain(
        "smtpd_access_maps",
      );
    },
  );

  it("sender domains follow the configuration", () => {
    const config = stackConfig("dev", {
      "relay.allowedSenderDomains": ["alerts.example.com", "example.net"],
    });
    const restrictions = postfixSettings(config).main.smtpd_sender_restrictions;
    expect(restrictions).toContain("alerts.example.com=OK");
    expect(restrictions).toContain("example.net=OK");
    expect(restrictions).not.toContain("lab.example.net");
  });

  it("message_size_limit follows relay.messageSizeLimit, and no mailbox limit can stop Postfix starting", () => {
    const main = postfixSettings(
      stackConfig("dev", { "relay.messageSizeLimit": 104_857_600 }),
    ).main;
    expect(main.message_size_limit).toBe("104857600");
    // Postfix refuses to start when either limit is set and smaller than message_size_limit.
    for (const limit of ["mailbox_size_limit", "virtual_mailbox_limit"]) {
      expect(Number(main[limit]) === 0 || Number(main[limit]) >= 104_857_600, limit).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------
// The smarthost.

describe("relaying through relay.upstream", () => {
  const cases = [
    { port: 587, wrapper: "no" },
    { port: 465, wrapper: "yes" },
    { port: 2525, wrapper: "no" },
  ];
  it.each(cases)(
    "port $port: relayhost [host]:port, wrapper mode $wrapper, TLS required",
    ({ port, wrapper }) => {
      const config = stackConfig("dev", { "relay.upstreamPort": port });
      const main = postfixSettings(config).main;
      expect(main.relayhost).toBe(`[${config.relay.upstream.host}]:${port}`);
      expect(main.smtp_tls_wrappermode).toBe(wrapper);
      expect(main.smtp_tls_security_level).toBe("encrypt");
    },
  );

  it("with a username, Postfix logs in from a password table; the password is not in the settings", () => {
    const main = postfixSettings(stackConfig("prod")).main;
    expect(main.smtp_sasl_auth_enable).toBe("yes");
    expect(main.smtp_sasl_password_maps).toMatch(/^\w+:\//);
    expect(JSON.stringify(main)).not.toContain(SECRETS["relay.upstreamPassword"]);
  });

  it("without a username, Postfix does not log in", () => {
    const config = stackConfig("dev", {
      "relay.upstreamUsername": null,
      "relay.upstreamPassword": null,
    });
    expect(config.relay.upstream.username).toBeUndefined();
    const main = postfixSettings(config).main;
    expect(main.smtp_sasl_auth_enable).toBe("no");
    expect(main.smtp_sasl_password_maps).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------
// master.cf.

const STANDARD_SERVICES = [
  "pickup",
  "cleanup",
  "qmgr",
  "tlsmgr",
  "rewrite",
  "bounce",
  "defer",
  "trace",
  "verify",
  "flush",
  "proxymap",
  "proxywrite",
  "smtp",
  "relay",
  "showq",
  "error",
  "retry",
  "discard",
  "local",
  "virtual",
  "lmtp",
  "anvil",
  "scache",
  "postlog",
];

describe("master.cf", () => {
  const master = postfixSettings(stackConfig("prod")).master;
  const find = (service: string, type: MasterService["type"]) =>
    master.find((s) => s.service === service && s.type === type);

  it.each(STANDARD_SERVICES)("has Postfix's own %s service", (service) => {
    expect(master.some((s) => s.service === service && s.type !== "inet")).toBe(true);
  });

  it("listens only where names.ts says, and never on port 25 or through postscreen", () => {
    const inet = master.filter((s) => s.type === "inet");
    expect(inet.map((s) => s.service).sort()).toEqual(
      [
        String(RELAY_LISTENERS.submission),
        String(RELAY_LISTENERS.smtps),
        `127.0.0.1:${RELAY_LISTENERS.local}`,
      ].sort(),
    );
    expect(inet.every((s) => s.command === "smtpd")).toBe(true);
    expect(
      master.some((s) => /postscreen|^smtp$|:25$|^25$/.test(s.service) && s.type === "inet"),
    ).toBe(false);
    expect(master.some((s) => s.command === "postscreen")).toBe(false);
  });

  const listeners = [
    {
      service: String(RELAY_LISTENERS.submission),
      proxy: "haproxy",
      tls: "encrypt",
      authOnlyAfterTls: "yes",
    },
    {
      service: String(RELAY_LISTENERS.smtps),
      proxy: "haproxy",
      tls: "none",
      authOnlyAfterTls: "no",
    },
    {
      service: `127.0.0.1:${RELAY_LISTENERS.local}`,
      proxy: undefined,
      tls: undefined,
      authOnlyAfterTls: undefined,
    },
  ];
  it.each(listeners)(
    "$service: PROXY $proxy, TLS $tls, AUTH only after TLS $authOnlyAfterTls",
    (row) => {
      const s = find(row.service, "inet")!;
      expect(s).toBeDefined();
      expect(s.options.smtpd_upstream_proxy_protocol).toBe(row.proxy);
      expect(s.options.smtpd_tls_security_level).toBe(row.tls);
      expect(s.options.smtpd_tls_auth_only).toBe(row.authOnlyAfterTls);
    },
  );

  it("the loopback listener falls back to main.cf: TLS offered, AUTH only after it", () => {
    const main = postfixSettings(stackConfig("prod")).main;
    expect(main.smtpd_tls_auth_only).toBe("yes");
    expect(main.smtpd_tls_security_level).toBe("may");
    expect(main.smtpd_upstream_proxy_protocol).toBeUndefined();
  });

  it("the STARTTLS certificate paths are set", () => {
    const main = postfixSettings(stackConfig("prod")).main;
    expect(main.smtpd_tls_cert_file).toMatch(/^\//);
    expect(main.smtpd_tls_key_file).toMatch(/^\//);
  });
});
