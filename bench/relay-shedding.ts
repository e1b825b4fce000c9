/**
 * How much work the relay's anvil limits save under an AUTH brute force from one address.
 *
 * Starts two private Postfix instances on loopback, one after the other: the stack's rendered
 * configuration, and the same configuration without the anvil limit parameters (Postfix's
 * defaults: 50 simultaneous connections, no rate limits). Each is hammered for a bounded time
 * by one client address (PROXY headers, as Traefik would pass it on) that connects, tries one
 * wrong password and quits. Prints, side by side, connections per second shed (421 at the
 * greeting, or 450 instead of a password check) and handled (the password checked), and the
 * CPU seconds Postfix spent per thousand connections (its processes' utime+stime from /proc).
 *
 *   npx tsx bench/relay-shedding.ts [stack] [seconds]     (defaults: prod 15)
 *
 * Measures only; it asserts nothing about timing.
 */
import * as os from "node:os";
import { postfixSettings, type PostfixSettings } from "../components/postfix";
import type { HomelabConfig } from "../config";
import { missingTools, RelayInstance, sideBySide } from "../test/e2e/harness";
import { stackConfig } from "../test/stacks";
import { SmtpSession } from "../test/e2e/smtp";

/** The parameters that make anvil limit a client; without them Postfix's defaults apply. */
const ANVIL_LIMITS = [
  "anvil_rate_time_unit",
  "smtpd_client_connection_count_limit",
  "smtpd_client_connection_rate_limit",
  "smtpd_client_auth_rate_limit",
  "smtpd_client_message_rate_limit",
  "smtpd_client_recipient_rate_limit",
  "smtpd_client_new_tls_session_rate_limit",
  "smtpd_client_event_limit_exceptions",
];

const ATTACKER = "203.0.113.66";
/** Connections the attacker keeps in flight (below the rendered concurrency limit of both stacks). */
const WORKERS = 4;
const MAX_CONNECTIONS = 20_000;

interface Tally {
  connections: number;
  refusedAtGreeting: number;
  refusedAuth: number;
  passwordChecked: number;
  errors: number;
  seconds: number;
  cpuSeconds: number;
}

async function hammer(relay: RelayInstance, seconds: number): Promise<Tally> {
  const tally: Tally = {
    connections: 0,
    refusedAtGreeting: 0,
    refusedAuth: 0,
    passwordChecked: 0,
    errors: 0,
    seconds: 0,
    cpuSeconds: 0,
  };
  const cpuBefore = relay.cpuSeconds();
  const started = process.hrtime.bigint();
  const deadline = Date.now() + seconds * 1000;

  const worker = async () => {
    while (Date.now() < deadline && tally.connections < MAX_CONNECTIONS) {
      tally.connections++;
      try {
        const { session, greeting } = await SmtpSession.open({
          port: relay.ports.smtps,
          proxyFrom: ATTACKER,
          timeoutMs: 5_000,
        });
        if (greeting.code === 421) {
          tally.refusedAtGreeting++;
          session.destroy();
          continue;
        }
        await session.ehlo("bench.test");
        const reply = await session.authPlain("alerts", "not-the-password");
        if (reply.code === 450) tally.refusedAuth++;
        else if (reply.code === 535) tally.passwordChecked++;
        else tally.errors++;
        await session.quit();
      } catch {
        tally.errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, worker));

  tally.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  // Let the last smtpd processes finish and be counted.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  tally.cpuSeconds = relay.cpuSeconds() - cpuBefore;
  return tally;
}

async function measure(
  stack: string,
  config: HomelabConfig,
  settings: PostfixSettings,
  seconds: number,
): Promise<Tally> {
  const relay = await RelayInstance.start({ stack, config, logins: ["alerts"], settings });
  try {
    return await hammer(relay, seconds);
  } finally {
    await relay.stop();
  }
}

function withoutAnvilLimits(settings: PostfixSettings): PostfixSettings {
  const main = Object.fromEntries(
    Object.entries(settings.main).filter(([name]) => !ANVIL_LIMITS.includes(name)),
  );
  return { ...settings, main };
}

function table(results: Array<[string, Tally]>): string {
  const perSecond = (n: number, t: Tally) => (n / t.seconds).toFixed(0);
  const rows: Array<[string, (t: Tally) => string]> = [
    ["abusive connections", (t) => `${t.connections} in ${t.seconds.toFixed(1)} s`],
    ["  per second", (t) => perSecond(t.connections, t)],
    ["shed per second (421 at greeting)", (t) => perSecond(t.refusedAtGreeting, t)],
    ["shed per second (450 at AUTH)", (t) => perSecond(t.refusedAuth, t)],
    ["handled per second (password checked)", (t) => perSecond(t.passwordChecked, t)],
    ["client errors", (t) => String(t.errors)],
    ["Postfix CPU seconds", (t) => t.cpuSeconds.toFixed(2)],
    [
      "Postfix CPU seconds per 1000 connections",
      (t) => ((t.cpuSeconds * 1000) / Math.max(1, t.connections)).toFixed(2),
    ],
  ];
  return sideBySide(
    results.map(([name]) => name),
    rows.map(([label, cell]) => [label, results.map(([, t]) => cell(t))] as const),
  );
}

async function main(): Promise<void> {
  const stack = process.argv[2] ?? "prod";
  const seconds = Number(process.argv[3] ?? 15);
  if (!(seconds > 0)) {
    console.error(`relay-shedding: seconds must be a positive number, got ${process.argv[3]}`);
    process.exitCode = 1;
    return;
  }
  const missing = missingTools();
  if (missing.length > 0) {
    console.error(
      `relay-shedding: needs ${missing.join(", ")} (install the packages in .ci/packages.txt)`,
    );
    process.exitCode = 1;
    return;
  }

  const config = stackConfig(stack);
  const rendered = postfixSettings(config);
  const results: Array<[string, Tally]> = [
    ["rendered limits", await measure(stack, config, rendered, seconds)],
    ["Postfix defaults", await measure(stack, config, withoutAnvilLimits(rendered), seconds)],
  ];
  const cpus = os.cpus();
  console.log(
    `relay shedding, ${stack} stack: one client address, ${WORKERS} connections in flight, failing AUTH`,
  );
  console.log(
    `machine: ${cpus.length} × ${cpus[0]?.model.trim() ?? "unknown CPU"}, Node ${process.version}\n`,
  );
  console.log(table(results));
}

void main();
