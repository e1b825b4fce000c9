/**
 * The relay under attack, on a real Postfix running the configuration rendered for each
 * stack (dev and prod, one private instance each, side by side). Every client reaches it
 * through "the proxy": a connection to 127.0.0.1 that starts with a PROXY header naming the
 * client, as Traefik sends it. The addresses in those headers are data (documentation,
 * private and Docker ranges); nothing leaves loopback.
 *
 * What the harness changes in the rendered configuration, and why (nothing else differs;
 * the first test reads the running configuration back with postconf and checks that):
 *
 * | file            | line                          | replaced by                         | why                                                       |
 * |-----------------|-------------------------------|-------------------------------------|-----------------------------------------------------------|
 * | main.cf         | queue_directory               | <tmp>/spool                         | a private instance (Postfix's default is the system queue) |
 * | main.cf         | data_directory                | <tmp>/lib                           | same                                                      |
 * | main.cf         | maillog_file, _prefixes       | <tmp>/maillog                       | the log the tests read (the image logs to stdout)          |
 * | main.cf         | smtpd_tls_cert_file, _key_file| a certificate made with openssl     | the image makes its own at first start                    |
 * | main.cf         | relayhost                     | [127.0.0.1]:<sink>                  | the capturing smarthost; same TLS mode, same login         |
 * | main.cf         | smtp_sasl_password_maps       | lmdb:<tmp>/etc/sasl_passwd          | the image writes it from a secret; here a stand-in password |
 * | master.cf       | 10587, 10465, 127.0.0.1:587   | 127.0.0.1:<free port>               | loopback only, ports free on this machine                 |
 * | sasl/smtpd.conf | sasldb_path                   | <tmp>/sasldb2                       | the image's /etc/sasldb2; test logins in a private file    |
 *
 * Who may relay, who must log in, TLS on the listeners, and every anvil limit and exception
 * are used exactly as rendered, including the 60s window: one client per stack is blocked
 * before the other tests, and the last tests check that it may send again once the window
 * has passed.
 */
import * as ipaddr from "ipaddr.js";
import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectionRateLimit, type HomelabConfig } from "../../config";
import { RELAY_LISTENERS } from "../../components/names";
import {
  missingTools,
  RelayInstance,
  sideBySide,
  sleep,
  type Listener,
  type Login,
} from "./harness";
import { stackConfig } from "../stacks";
import { LOOPBACK, replyText, SmtpSession, type ProxyVersion, type Reply } from "./smtp";

/** Lines the harness may replace; anything else replaced fails the first test. */
const DOCUMENTED_OVERRIDES = new Set([
  "queue_directory",
  "data_directory",
  "maillog_file",
  "maillog_file_prefixes",
  "smtpd_tls_cert_file",
  "smtpd_tls_key_file",
  "relayhost",
  "smtp_sasl_password_maps",
  String(RELAY_LISTENERS.submission),
  String(RELAY_LISTENERS.smtps),
  `${LOOPBACK}:${RELAY_LISTENERS.local}`,
  "sasldb_path",
]);

/** Where the suite's clients pretend to come from, one address per role so budgets never mix. */
const CLIENT = {
  sender: "198.51.100.10",
  smtpsSender: "198.51.100.11",
  beforeStartTls: "198.51.100.20",
  bruteForce: "203.0.113.66",
  natNeighbour: "203.0.113.67",
  connectionFlood: "203.0.113.80",
  concurrencyFlood: "203.0.113.81",
  bystander: "203.0.113.82",
  recovery: "203.0.113.90",
} as const;

/** Sources that must not relay without a login: internet, Docker networks, LAN, and a forged loopback. */
const UNAUTHENTICATED_SOURCES = [
  "203.0.113.9",
  "172.17.0.2",
  "172.18.0.5",
  "192.168.1.50",
  "10.0.0.5",
  "127.0.0.1",
];

const OUTSIDE_RECIPIENT = "someone@example.com";

/** What the suite did and what the relay answered, printed at the end. */
interface Figures {
  legitimateSent: number;
  legitimateDelivered: number;
  abusiveAuthAttempts: number;
  answeredBySasl: number;
  refusedByAnvilAuth: number;
  connectionsMade: number;
  connectionsRefused: number;
}

const codeClass = (reply: Reply) => Math.floor(reply.code / 100);

/**
 * An address inside an address or CIDR from the stack file: the address itself, or the first
 * host after the network address. IPv4 only: the suite's PROXY headers are TCP4.
 */
function hostOf(entry: string): string | undefined {
  const cidr = entry.includes("/") ? entry : `${entry}/32`;
  if (!ipaddr.IPv4.isValidCIDR(cidr)) return undefined;
  if (ipaddr.IPv4.parseCIDR(cidr)[1] === 32) return entry.split("/")[0];
  const { octets } = ipaddr.IPv4.networkAddressFromCIDR(cidr);
  // The network address of a /31 or wider ends in a 0 bit, so the last octet cannot overflow.
  return new ipaddr.IPv4([...octets.slice(0, 3), octets[3] + 1]).toString();
}

const STACKS = ["dev", "prod"];

/** One stack's relay: its instance, its figures, its tests. */
interface StackRun {
  stack: string;
  config: HomelabConfig;
  figures: Figures;
  /** Starts the relay and blocks the recovery client, so that the window runs during the other tests. */
  start(): Promise<void>;
  stop(): Promise<void>;
  describeTests(): void;
  recoveryTest(): Promise<void>;
}

const missing = missingTools();
const runs = STACKS.map(stackRun);

if (missing.length > 0 && !process.env.CI) {
  describe.skip(`relay on a real Postfix (needs ${missing.join(", ")}: install the packages in .ci/packages.txt)`, () => {
    it("runs", () => undefined);
  });
} else {
  beforeAll(async () => {
    expect(
      missing,
      "Postfix and its tools must be installed (CI installs .ci/packages.txt)",
    ).toEqual([]);
    await Promise.all(runs.map((run) => run.start()));
  }, 120_000);

  afterAll(async () => {
    await Promise.all(runs.map((run) => run.stop()));
    printFigures(runs);
  }, 120_000);

  for (const run of runs)
    describe(`relay on a real Postfix, ${run.stack} stack`, () => run.describeTests());

  // Last, so that the anvil window started in beforeAll has mostly passed during the tests above.
  describe("relay on a real Postfix, after the window", () => {
    const longestWindow = Math.max(...runs.map((run) => run.config.rateLimit.windowSeconds));
    it.each(runs.map((run) => [run.stack, run] as const))(
      "%s: lets a client blocked at the start send again once rateLimit.window has passed",
      (_stack, run) => run.recoveryTest(),
      (longestWindow + 40) * 1000,
    );
  });
}

function stackRun(stack: string): StackRun {
  const config: HomelabConfig = stackConfig(stack);
  const limits = config.rateLimit;
  const connectionsPerWindow = connectionRateLimit(
    limits.average,
    limits.periodSeconds,
    limits.burst,
    limits.windowSeconds,
  );
  const sender = `alerts@${config.relay.allowedSenderDomains[0]}`;
  const exemptHosts = limits.exempt.map(hostOf).filter((h): h is string => h !== undefined);
  const figures: Figures = {
    legitimateSent: 0,
    legitimateDelivered: 0,
    abusiveAuthAttempts: 0,
    answeredBySasl: 0,
    refusedByAnvilAuth: 0,
    connectionsMade: 0,
    connectionsRefused: 0,
  };
  const open: SmtpSession[] = [];
  let relay: RelayInstance;
  let login: Login;
  let blocked: { at: number; auth: Reply[]; greeting?: Reply };

  async function start(): Promise<void> {
    relay = await RelayInstance.start({ stack, config, logins: ["alerts"] });
    login = relay.logins.get("alerts")!;
    const at = Date.now();
    const auth = await failLogins(CLIENT.recovery, limits.authAttempts + 1);
    let greeting: Reply | undefined;
    for (let i = 0; i <= connectionsPerWindow && greeting?.code !== 421; i++) {
      const c = await connect("smtps", CLIENT.recovery);
      greeting = c.greeting;
      await c.session.quit();
    }
    blocked = { at, auth, greeting };
  }

  async function stop(): Promise<void> {
    for (const session of open) session.destroy();
    if (!relay) return;
    const abusers = [CLIENT.bruteForce, CLIENT.recovery, ...exemptHosts];
    figures.answeredBySasl = countLog(relay, /SASL \w+ authentication failed/, abusers);
    await relay.stop();
  }

  async function recoveryTest(): Promise<void> {
    expect(blocked.auth.at(-1)?.code, "the recovery client was not cut off by the AUTH limit").toBe(
      450,
    );
    expect(
      blocked.greeting?.code,
      "the recovery client was not cut off by the connection rate",
    ).toBe(421);
    await sleep(blocked.at + limits.windowSeconds * 1000 + 2_000 - Date.now());
    const id = await sendOne("smtps", CLIENT.recovery);
    expect(await delivered([id])).toEqual([id]);
  }

  /** Connects as `client` through the proxy (no header on the loopback listener) and says EHLO. */
  async function connect(
    listener: Listener,
    client: string,
    version: ProxyVersion = 1,
  ): Promise<{ session: SmtpSession; greeting: Reply }> {
    const { session, greeting } = await SmtpSession.open({
      port: relay.ports[listener],
      proxyFrom: listener === "local" ? undefined : client,
      proxyVersion: version,
    });
    open.push(session);
    figures.connectionsMade++;
    if (greeting.code === 421) figures.connectionsRefused++;
    if (greeting.code === 220) {
      expect(codeClass(await session.ehlo())).toBe(2);
      if (listener === "submission") {
        expect((await session.startTls()).code).toBe(220);
        expect(codeClass(await session.ehlo())).toBe(2);
      }
    }
    return { session, greeting };
  }

  /** Logs in and sends one message on a new connection; returns the Message-ID. */
  async function sendOne(listener: Listener, client: string): Promise<string> {
    const { session, greeting } = await connect(listener, client);
    expect(greeting.code, replyText(greeting)).toBe(220);
    const auth = await session.authPlain(login.user, login.password);
    expect(auth.code, replyText(auth)).toBe(235);
    const { reply, messageId } = await session.sendMessage(sender, OUTSIDE_RECIPIENT);
    expect(reply.code, replyText(reply)).toBe(250);
    await session.quit();
    return messageId;
  }

  /** Waits until the smarthost holds every one of these messages (or 30s pass). */
  async function delivered(messageIds: readonly string[]): Promise<string[]> {
    const wanted = new Set(messageIds);
    const deadline = Date.now() + 30_000;
    let got: string[] = [];
    while (Date.now() < deadline) {
      got = relay.sink.messages.map((m) => m.messageId ?? "").filter((id) => wanted.has(id));
      if (new Set(got).size === wanted.size) break;
      await sleep(200);
    }
    return got;
  }

  /**
   * Failing AUTH commands from `client`, on as many connections as it takes to stay below the
   * rendered smtpd_soft_error_limit, from which Postfix delays every reply.
   */
  async function failLogins(client: string, attempts: number): Promise<Reply[]> {
    const perConnection = Number(relay.rendered.main.smtpd_soft_error_limit) - 1;
    expect(
      perConnection,
      "AUTH failures per connection below the soft error limit",
    ).toBeGreaterThan(0);
    const replies: Reply[] = [];
    while (replies.length < attempts) {
      const { session, greeting } = await connect("smtps", client);
      if (greeting.code !== 220) {
        replies.push(greeting);
        continue;
      }
      for (let i = 0; i < perConnection && replies.length < attempts; i++) {
        replies.push(await session.authPlain(login.user, `wrong-${replies.length}`));
      }
      await session.quit();
    }
    figures.abusiveAuthAttempts += replies.length;
    figures.refusedByAnvilAuth += replies.filter((r) => r.code === 450).length;
    return replies;
  }

  function describeTests(): void {
    it("runs the rendered configuration: only the documented loopback lines differ", () => {
      const rendered = relay.rendered;
      const overridden = new Map(relay.overrides.map((o) => [o.name, o]));
      expect([...overridden.keys()].filter((name) => !DOCUMENTED_OVERRIDES.has(name))).toEqual([]);

      const running = relay.postconfN();
      const normalize = (v: string | undefined) => v?.replace(/\s+/g, " ").trim();
      for (const [name, value] of Object.entries(rendered.main)) {
        const expected =
          overridden.get(name)?.file === "main.cf" ? overridden.get(name)!.value : value;
        expect(normalize(running[name]), `main.cf ${name}`).toBe(normalize(expected));
      }
      // postconf -c reports config_directory as set; it is the -c argument, not a main.cf line.
      const extra = Object.keys(running).filter(
        (name) => !(name in rendered.main) && !overridden.has(name) && name !== "config_directory",
      );
      expect(extra, "parameters set that the renderer did not render").toEqual([]);

      const services = relay.postconfM();
      const options = relay.postconfP();
      for (const service of rendered.master) {
        const name =
          overridden.get(service.service)?.file === "master.cf"
            ? overridden.get(service.service)!.value
            : service.service;
        const fields = services.get(`${name}/${service.type}`);
        expect(fields, `master.cf ${service.service}`).toBeDefined();
        const columns = [
          service.private,
          service.unpriv,
          service.chroot,
          service.wakeup,
          service.maxproc,
          service.command,
        ];
        expect(fields!.slice(2, 8), `master.cf ${service.service} columns`).toEqual(columns);
        for (const [option, value] of Object.entries(service.options)) {
          expect(
            normalize(options[`${name}/${service.type}/${option}`]),
            `master.cf ${service.service} -o ${option}`,
          ).toBe(normalize(value));
        }
      }
      expect(services.size, "services the renderer did not render").toBe(rendered.master.length);
    });

    it("greets a direct client only on the loopback listener; the PROXY listeners drop it", async () => {
      const direct = await connect("local", LOOPBACK);
      expect(direct.greeting.code).toBe(220);
      await direct.session.quit();

      for (const listener of ["submission", "smtps"] as const) {
        const socket = net.connect({ host: LOOPBACK, port: relay.ports[listener] });
        const received = await new Promise<string>((resolve) => {
          let text = "";
          socket.on("data", (chunk) => (text += chunk.toString()));
          socket.on("close", () => resolve(text));
          socket.on("error", () => resolve(text));
          socket.on("connect", () => socket.write("EHLO direct.test\r\n"));
        });
        expect(received, `${listener}: a client without a PROXY header got a reply`).not.toMatch(
          /^220/,
        );
      }
    });

    it.each([
      ["submission", CLIENT.sender],
      ["smtps", CLIENT.smtpsSender],
    ] as const)(
      "delivers the expected burst through %s, one login per message, none lost or doubled",
      async (listener, client) => {
        const sent: string[] = [];
        for (let i = 0; i < config.relay.expectedBurst; i++)
          sent.push(await sendOne(listener, client));
        figures.legitimateSent += sent.length;

        const got = await delivered(sent);
        figures.legitimateDelivered += got.length;
        expect(got.sort()).toEqual([...sent].sort());
        expect(new Set(got).size).toBe(sent.length);
        const upstream = relay.sink.messages.filter((m) => sent.includes(m.messageId ?? ""));
        expect(
          upstream.every((m) => m.tls && m.authenticatedAs === config.relay.upstream.username),
        ).toBe(true);
      },
      60_000,
    );

    it("offers AUTH on submission only after STARTTLS", async () => {
      const { session, greeting } = await SmtpSession.open({
        port: relay.ports.submission,
        proxyFrom: CLIENT.beforeStartTls,
      });
      open.push(session);
      expect(greeting.code).toBe(220);
      expect((await session.ehlo()).lines.some((l) => l.startsWith("AUTH"))).toBe(false);
      expect(codeClass(await session.authPlain(login.user, login.password))).toBe(5);
      await session.quit();
    });

    const relayAttempts = [
      ...UNAUTHENTICATED_SOURCES.flatMap((source) => [
        ["submission", source],
        ["smtps", source],
      ]),
      ...exemptHosts.map((host) => ["smtps", host]),
      ["local", LOOPBACK],
    ] as [Listener, string][];
    it.each(relayAttempts)(
      "refuses to relay without a login: %s from %s",
      async (listener, source) => {
        const before = relay.sink.messages.length;
        const { session, greeting } = await connect(listener, source);
        expect(greeting.code).toBe(220);
        const { reply } = await session.sendMessage(sender, OUTSIDE_RECIPIENT);
        expect(codeClass(reply), replyText(reply)).toBe(5);
        await session.quit();
        await sleep(100);
        expect(relay.sink.messages.length).toBe(before);
      },
    );

    it("cuts off AUTH brute force at rateLimit.authAttempts, while another client behind the same proxy logs in", async () => {
      const extra = 4;
      const replies = await failLogins(CLIENT.bruteForce, limits.authAttempts + extra);
      const codes = replies.map((r) => r.code);
      expect(codes.slice(0, limits.authAttempts)).toEqual(Array(limits.authAttempts).fill(535));
      expect(codes.slice(limits.authAttempts)).toEqual(Array(extra).fill(450));
      expect(replyText(replies[limits.authAttempts])).toMatch(/4\.7\.1 .*too many AUTH commands/);

      // The right password from the blocked address is refused too: the budget is per address.
      const { session } = await connect("smtps", CLIENT.bruteForce);
      expect((await session.authPlain(login.user, login.password)).code).toBe(450);
      await session.quit();
      figures.abusiveAuthAttempts++;
      figures.refusedByAnvilAuth++;

      const neighbour = await sendOne("smtps", CLIENT.natNeighbour);
      expect(await delivered([neighbour])).toEqual([neighbour]);
    }, 60_000);

    it("answers 421 above the connection rate (one window's worth), other clients unaffected", async () => {
      const greetings: number[] = [];
      for (let i = 0; i <= connectionsPerWindow; i++) {
        const { session, greeting } = await connect("submission", CLIENT.connectionFlood, 2);
        greetings.push(greeting.code);
        await session.quit();
      }
      expect(greetings.slice(0, connectionsPerWindow).every((c) => c === 220)).toBe(true);
      expect(greetings[connectionsPerWindow]).toBe(421);
      expect(
        countLog(relay, /Connection rate limit exceeded/, [CLIENT.connectionFlood]),
      ).toBeGreaterThan(0);

      const other = await connect("submission", CLIENT.bystander, 2);
      expect(other.greeting.code).toBe(220);
      await other.session.quit();
    }, 60_000);

    it("answers 421 above rateLimit.inFlight simultaneous connections, other clients unaffected", async () => {
      const held: SmtpSession[] = [];
      for (let i = 0; i < limits.inFlight; i++) {
        const { session, greeting } = await connect("smtps", CLIENT.concurrencyFlood);
        expect(greeting.code).toBe(220);
        held.push(session);
      }
      const over = await connect("smtps", CLIENT.concurrencyFlood);
      expect(over.greeting.code, replyText(over.greeting)).toBe(421);
      const address = CLIENT.concurrencyFlood.replaceAll(".", "\\.");
      expect(replyText(over.greeting)).toMatch(
        new RegExp(`too many connections from .*${address}`),
      );

      const other = await connect("smtps", CLIENT.bystander);
      expect(other.greeting.code).toBe(220);
      for (const session of [...held, over.session, other.session]) await session.quit();
    });

    for (const host of exemptHosts) {
      it(`does not limit the exempt sender ${host}`, async () => {
        const codes: number[] = [];
        for (let i = 0; i < connectionsPerWindow + 5; i++) {
          const { session, greeting } = await connect("smtps", host);
          codes.push(greeting.code);
          await session.quit();
        }
        expect(codes.filter((c) => c !== 220)).toEqual([]);

        const held = await Promise.all(
          Array.from({ length: limits.inFlight + 2 }, () => connect("smtps", host)),
        );
        expect(held.map((h) => h.greeting.code).filter((c) => c !== 220)).toEqual([]);
        for (const h of held) await h.session.quit();

        const authCodes = (await failLogins(host, limits.authAttempts + 4)).map((r) => r.code);
        expect(authCodes.filter((c) => c !== 535)).toEqual([]);
        const id = await sendOne("smtps", host);
        expect(await delivered([id])).toEqual([id]);
      }, 60_000);
    }
  }

  return { stack, config, figures, start, stop, describeTests, recoveryTest };
}

/** Log lines matching `pattern` that name one of these client addresses. */
function countLog(relay: RelayInstance, pattern: RegExp, clients: readonly string[]): number {
  return relay
    .log()
    .split("\n")
    .filter((line) => pattern.test(line) && clients.some((c) => line.includes(`[${c}]`))).length;
}

function printFigures(runs: readonly StackRun[]): void {
  const rows: Array<[string, (f: Figures) => string]> = [
    [
      "legitimate messages sent / delivered",
      (f) => `${f.legitimateSent} / ${f.legitimateDelivered}`,
    ],
    ["abusive AUTH attempts made", (f) => String(f.abusiveAuthAttempts)],
    ["  answered by the SASL backend (authentication failed)", (f) => String(f.answeredBySasl)],
    ["  refused by anvil before SASL (450 4.7.1)", (f) => String(f.refusedByAnvilAuth)],
    [
      "connections made / refused with 421",
      (f) => `${f.connectionsMade} / ${f.connectionsRefused}`,
    ],
  ];
  const table = sideBySide(
    runs.map((r) => r.stack),
    rows.map(([label, cell]) => [label, runs.map((r) => cell(r.figures))] as const),
  );
  console.log(`relay e2e figures\n${table}`);
}
