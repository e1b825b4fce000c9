/**
 * The ban jail's filter on a real relay log: a private Postfix per stack running the rendered
 * configuration (the relay suite's harness), an attacker failing logins from one address and a
 * legitimate client sending mail from another, both named in PROXY headers as Traefik sends
 * them. fail2ban's own fail2ban-regex then runs the filter the rendered jail names over the log
 * Postfix wrote. Nothing leaves loopback: the addresses in the headers are data.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HomelabConfig } from "../../config";
import { jailLocal } from "../../components/fail2ban";
import { missingTools, RelayInstance, sleep, type Login } from "./harness";
import { stackConfig } from "../stacks";
import { replyText, SmtpSession, type Reply } from "./smtp";

const FAIL2BAN_REGEX = "/usr/bin/fail2ban-regex";

/** Where the clients pretend to come from (documentation ranges). */
const ATTACKER = "203.0.113.66";
const LEGITIMATE = "198.51.100.10";

/** Messages the legitimate client sends, each on its own connection after logging in. */
const LEGITIMATE_SENDS = 3;

const STACKS = ["dev", "prod"];

const missing = [...missingTools(), ...(fs.existsSync(FAIL2BAN_REGEX) ? [] : [FAIL2BAN_REGEX])];

/** The filter the rendered jail names (what fail2ban runs on the relay's log). */
function jailFilter(config: HomelabConfig): string {
  const line = jailLocal(config.fail2ban!)
    .split("\n")
    .find((l) => /^filter\s*=/.test(l));
  if (!line) throw new Error("the rendered jail names no filter");
  return line.split("=").slice(1).join("=").trim();
}

/** fail2ban-regex with every matched line printed; the matched lines and the tool's summary. */
function runFilter(log: string, filter: string): { matched: string[]; summary: string } {
  const run = spawnSync(FAIL2BAN_REGEX, ["--print-all-matched", log, filter], {
    encoding: "utf8",
    timeout: 60_000,
  });
  expect(run.status, run.stderr).toBe(0);
  const block = run.stdout.split("|- Matched line(s):")[1]?.split("\n`-")[0] ?? "";
  const matched = block
    .split("\n")
    .map((l) => l.replace(/^\|\s+/, ""))
    .filter((l) => l.trim() !== "");
  const summary = /^Lines: .*$/m.exec(run.stdout)?.[0] ?? "";
  return { matched, summary };
}

/** Every client address Postfix put in brackets on a log line ("unknown[203.0.113.66]"). */
const addressesOf = (line: string) =>
  [...line.matchAll(/\[((?:\d{1,3}\.){3}\d{1,3}|[0-9a-f:]+:[0-9a-f:]*)\]/gi)].map((m) => m[1]);

interface StackRun {
  stack: string;
  config: HomelabConfig;
  relay?: RelayInstance;
  login?: Login;
  /** AUTH replies the attacker got. */
  attack: Reply[];
  /** Replies to the legitimate client's logins and messages. */
  sends: { auth: Reply; message: Reply }[];
  log: string;
  /** What fail2ban-regex reported, printed at the end. */
  figures?: string;
}

async function connect(relay: RelayInstance, client: string) {
  const { session, greeting } = await SmtpSession.open({
    port: relay.ports.smtps,
    proxyFrom: client,
    proxyVersion: 2,
  });
  expect(greeting.code, replyText(greeting)).toBe(220);
  expect(Math.floor((await session.ehlo()).code / 100)).toBe(2);
  return session;
}

/** Failed logins from the attacker, two per connection (the soft error limit slows a third). */
async function attack(run: StackRun, attempts: number): Promise<void> {
  while (run.attack.length < attempts) {
    const session = await connect(run.relay!, ATTACKER);
    for (let i = 0; i < 2 && run.attack.length < attempts; i++) {
      run.attack.push(await session.authPlain(run.login!.user, `wrong-${run.attack.length}`));
    }
    await session.quit();
  }
}

async function sendLegitimately(run: StackRun): Promise<void> {
  const sender = `alerts@${run.config.relay.allowedSenderDomains[0]}`;
  for (let i = 0; i < LEGITIMATE_SENDS; i++) {
    const session = await connect(run.relay!, LEGITIMATE);
    const auth = await session.authPlain(run.login!.user, run.login!.password);
    const { reply } = await session.sendMessage(sender, "someone@example.com", "fail2ban test");
    run.sends.push({ auth, message: reply });
    await session.quit();
  }
}

/** Waits until Postfix's log holds `lines` lines matching `pattern` (its log daemon writes late). */
async function waitForLog(run: StackRun, pattern: RegExp, lines: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (
      run
        .relay!.log()
        .split("\n")
        .filter((l) => pattern.test(l)).length >= lines
    )
      return;
    await sleep(200);
  }
}

const runs: StackRun[] = STACKS.map((stack) => ({
  stack,
  config: stackConfig(stack),
  attack: [],
  sends: [],
  log: "",
}));

if (missing.length > 0 && !process.env.CI) {
  describe.skip(`the ban filter on a real Postfix log (needs ${missing.join(", ")}: install the packages in .ci/packages.txt)`, () => {
    it("runs", () => undefined);
  });
} else {
  beforeAll(async () => {
    expect(
      missing,
      "Postfix, its tools and fail2ban must be installed (CI installs .ci/packages.txt)",
    ).toEqual([]);
    await Promise.all(
      runs.map(async (run) => {
        run.relay = await RelayInstance.start({
          stack: run.stack,
          config: run.config,
          logins: ["alerts"],
        });
        run.login = run.relay.logins.get("alerts")!;
        // Enough failures for a ban, and all of them answered by the login check: past
        // rateLimit.authAttempts Postfix refuses AUTH before checking, and logs no failure.
        const attempts = Math.min(
          run.config.fail2ban!.maxRetry + 2,
          run.config.rateLimit.authAttempts,
        );
        await attack(run, attempts);
        await sendLegitimately(run);
        const failed = run.attack.filter((r) => r.code === 535).length;
        await waitForLog(run, /SASL \w+ authentication failed/, failed);
        await waitForLog(
          run,
          new RegExp(`\\[${LEGITIMATE.replace(/\./g, "\\.")}\\].*sasl_username=`),
          LEGITIMATE_SENDS,
        );
        run.log = run.relay.logFile;
      }),
    );
  }, 120_000);

  afterAll(async () => {
    await Promise.all(runs.map((run) => run.relay?.stop()));
    for (const run of runs)
      if (run.figures) console.log(`fail2ban-regex on the relay log, ${run.figures}`);
  }, 60_000);

  describe.each(runs.map((run) => [run.stack, run] as const))(
    "the ban filter on %s's relay log",
    (_stack, run) => {
      it("had an attack and legitimate mail to look at", () => {
        expect(run.attack.length).toBeGreaterThanOrEqual(run.config.fail2ban!.maxRetry);
        expect(run.attack.map((r) => r.code)).toEqual(run.attack.map(() => 535));
        for (const { auth, message } of run.sends) {
          expect(auth.code, replyText(auth)).toBe(235);
          expect(message.code, replyText(message)).toBe(250);
        }
        const legitimateLines = run
          .relay!.log()
          .split("\n")
          .filter((l) => addressesOf(l).includes(LEGITIMATE));
        expect(legitimateLines.length).toBeGreaterThanOrEqual(LEGITIMATE_SENDS);
      });

      it("matches every failed login of the attacker, and nothing else", () => {
        const failedLogins = run.attack.filter((r) => r.code === 535).length;
        const { matched, summary } = runFilter(run.log, jailFilter(run.config));
        expect(matched, summary).toHaveLength(failedLogins);
        for (const line of matched) expect(addressesOf(line), line).toEqual([ATTACKER]);
        expect(summary).toMatch(new RegExp(`\\b${failedLogins} matched\\b`));
        run.figures = `${run.stack}: ${failedLogins} failed logins made, ${matched.length} matched; ${summary}`;
      });

      it("matches no line of the legitimate client", () => {
        const { matched } = runFilter(run.log, jailFilter(run.config));
        expect(matched.filter((line) => addressesOf(line).includes(LEGITIMATE))).toEqual([]);
      });

      it("finds enough failures for a ban within fail2ban.findTime", () => {
        const { matched } = runFilter(run.log, jailFilter(run.config));
        expect(matched.length).toBeGreaterThanOrEqual(run.config.fail2ban!.maxRetry);
      });
    },
  );
}
