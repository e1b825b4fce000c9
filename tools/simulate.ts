/**
 * `npm run simulate`: what would this rate-limit policy do to this traffic? Replays
 * recorded or synthetic traffic against a stack's policy (or Pulumi.yaml's defaults, with
 * what-if flags on top) and prints who got through, who was refused, and the classic
 * mistakes, before `pulumi up`.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import {
  ConfigError,
  formatProblem,
  isAddressOrCidr,
  parseDuration,
  parsePostfixTime,
} from "../config";
import { writeChart, chartData } from "./simulate/chart";
import { readAccessLog, readJsonLines, type InputResult } from "./simulate/inputs";
import { replay, SPREADS, type Spread } from "./simulate/model";
import {
  buildEdges,
  buildPolicy,
  DEFAULT_CONNECTION_SECONDS,
  loadStack,
  type PolicyOverrides,
} from "./simulate/policy";
import { generateProfile, parseProfile, PROFILES, ProfileError } from "./simulate/profiles";
import { formatSummary, summarize, summaryJson } from "./simulate/report";
import { TrafficBuilder } from "./simulate/traffic";
import { exitQuietlyOnClosedPipe } from "./cli";

interface Options {
  input?: string;
  accessLog?: string;
  profile: string[];
  seed: number;
  via?: string;
  stack?: string;
  average?: number;
  period?: string;
  burst?: number;
  depth?: number;
  excludedIps?: string[];
  trustedIps?: string[];
  inFlight?: number;
  window?: string;
  authAttempts?: number;
  messages?: number;
  exempt?: string[];
  connectionDuration?: number;
  edges?: number;
  sharedBuckets?: boolean;
  spread?: Spread;
  json?: boolean;
  chart?: string;
  top: number;
}

const wholeNumber = (min: number) => (text: string) => {
  if (!/^\d+$/.test(text) || Number(text) < min)
    throw new InvalidArgumentError(`expected a whole number, ${min} or more`);
  return Number(text);
};
const duration = (text: string) => {
  if ((parseDuration(text) ?? 0) <= 0)
    throw new InvalidArgumentError("expected a duration such as 1s, 1m or 1h30m");
  return text;
};
const postfixTime = (text: string) => {
  if ((parsePostfixTime(text) ?? 0) < 1)
    throw new InvalidArgumentError("expected a Postfix time such as 60s or 1m");
  return text;
};
const addressList = (text: string) => {
  const entries = text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  const bad = entries.filter((e) => !isAddressOrCidr(e));
  if (bad.length > 0)
    throw new InvalidArgumentError(
      `expected addresses or CIDRs separated by commas; not one: ${bad.join(", ")}`,
    );
  return entries;
};
const address = (text: string) => {
  if (!isAddressOrCidr(text) || text.includes("/"))
    throw new InvalidArgumentError("expected an IP address");
  return text;
};

function program(): Command {
  const profileHelp = Object.entries(PROFILES)
    .map(
      ([name, p]) =>
        `  ${name.padEnd(11)} ${p.legitimate ? "legitimate" : "abusive   "}  ${p.summary}`,
    )
    .join("\n");
  return new Command("simulate")
    .description(
      "Replay traffic against the edge's rate-limit policy and the relay's per-client limits.",
    )
    .addOption(
      new Option(
        "--input <file>",
        "JSON lines: {t, remoteAddr, xff?, proxy?, entryPoint?, auth?}",
      ).conflicts(["accessLog", "profile"]),
    )
    .addOption(new Option("--access-log <file>", "Traefik JSON access log").conflicts(["profile"]))
    .option(
      "--profile <name[:k=v,...]>",
      "synthetic traffic, repeatable (see below)",
      (v: string, all: string[]) => [...all, v],
      [],
    )
    .option("--seed <n>", "seed of the synthetic traffic", wholeNumber(0), 1)
    .option(
      "--via <ip>",
      "profile traffic arrives through this proxy (X-Forwarded-For / PROXY header carry the client)",
      address,
    )
    .option("--stack <name>", "policy of stacks/Pulumi.<name>.yaml (default: Pulumi.yaml defaults)")
    .option("--average <n>", "rateLimit.average", wholeNumber(0))
    .option("--period <duration>", "rateLimit.period", duration)
    .option("--burst <n>", "rateLimit.burst", wholeNumber(0))
    .option("--depth <n>", "rateLimit.depth", wholeNumber(0))
    .option("--excluded-ips <list>", "rateLimit.excludedIPs, comma-separated", addressList)
    .option("--trusted-ips <list>", "traefik.trustedProxies, comma-separated", addressList)
    .option("--in-flight <n>", "rateLimit.inFlight", wholeNumber(1))
    .option("--window <time>", "rateLimit.window", postfixTime)
    .option("--auth-attempts <n>", "rateLimit.authAttempts", wholeNumber(0))
    .option("--messages <n>", "rateLimit.messages", wholeNumber(0))
    .option("--exempt <list>", "rateLimit.exempt, comma-separated", addressList)
    .option(
      "--connection-duration <duration>",
      `how long an SMTP session stays open (default ${DEFAULT_CONNECTION_SECONDS}s)`,
      (t: string) => parseDuration(duration(t))!,
    )
    .option(
      "--edges <n>",
      "Traefik instances the traffic is spread over (default: the stack's hosts, else 1)",
      wholeNumber(1),
    )
    .option(
      "--shared-buckets",
      "one bucket per source in Redis for every edge and router (default: when the stack has Redis)",
    )
    .option("--no-shared-buckets", "each Traefik keeps its own buckets in memory")
    .addOption(
      new Option(
        "--spread <how>",
        "how rows reach the edges: round-robin per client, or by client address hash",
      )
        .choices(SPREADS)
        .default("request"),
    )
    .option("--json", "print the result as JSON on stdout, nothing else")
    .option("--chart <file.svg>", "draw offered/passed/rejected over time (SVG, and PNG beside it)")
    .option("--top <n>", "sources shown in the table and the chart", wholeNumber(1), 10)
    .addHelpText(
      "after",
      `\nProfiles (parameters: rate, start, duration, clients, count, spread, addr, via, entry, auth):\n${profileHelp}\n\nExample:\n  npm run simulate -- --stack prod --profile alerts --profile bruteforce:rate=2/s --chart out/simulate/chart.svg`,
    );
}

function loadTraffic(o: Options): InputResult {
  if (o.input) return readJsonLines(o.input);
  if (o.accessLog) return readAccessLog(o.accessLog);
  const builder = new TrafficBuilder();
  o.profile.forEach((spec, i) => {
    const profile = parseProfile(spec, o.via ? { via: o.via } : {});
    generateProfile(builder, spec, profile, o.seed * 1000 + i);
  });
  return { traffic: builder.build(), problems: [] };
}

async function main(argv: string[]): Promise<number> {
  const command = program();
  command.parse(argv);
  const o = command.opts<Options>();
  if (!o.input && !o.accessLog && o.profile.length === 0) {
    command.error(
      "error: give traffic: --input FILE.jsonl, --access-log FILE, or one or more --profile NAME",
    );
  }

  const overrides: PolicyOverrides = {
    average: o.average,
    period: o.period,
    burst: o.burst,
    depth: o.depth,
    excludedIPs: o.excludedIps,
    trustedIPs: o.trustedIps,
    inFlight: o.inFlight,
    window: o.window,
    authAttempts: o.authAttempts,
    messages: o.messages,
    exempt: o.exempt,
    connectionSeconds: o.connectionDuration,
  };
  const config = o.stack === undefined ? undefined : loadStack(o.stack);
  const policy = buildPolicy(config, overrides);
  const { traffic, problems } = loadTraffic(o);
  if (problems.length > 0) {
    console.error(`${problems.length} bad line${problems.length === 1 ? "" : "s"}:`);
    for (const p of problems) console.error(`  ${p}`);
    return 1;
  }

  const edges = buildEdges(config, {
    edges: o.edges,
    sharedBuckets: o.sharedBuckets,
    spread: o.spread,
  });
  const result = replay(traffic, policy, edges);
  // Several edges: the other bucket sharing too, so the report can set them side by side.
  const other =
    edges.count > 1 ? replay(traffic, policy, { ...edges, shared: !edges.shared }) : undefined;
  const summary = summarize(traffic, result, policy, other);
  if (o.chart) {
    const title = `${o.stack ? `stack ${o.stack}` : "default policy"}: ${summary.total} rows, ${summary.rejected} rejected`;
    const files = await writeChart(o.chart, chartData(traffic, result, Math.min(o.top, 8)), title);
    if (!o.json) console.error(`chart: ${files.svg}, ${files.png}`);
  }
  console.log(
    o.json ? summaryJson(summary, policy, result) : formatSummary(summary, policy, result, o.top),
  );
  return 0;
}

exitQuietlyOnClosedPipe();
main(process.argv).then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    if (err instanceof ConfigError) {
      console.error(
        `${err.problems.length} configuration problem${err.problems.length === 1 ? "" : "s"}:`,
      );
      for (const p of err.problems) console.error(`  - ${formatProblem(p)}`);
    } else if (err instanceof ProfileError) {
      console.error(`error: ${err.message}`);
    } else if (err instanceof Error && "code" in err && String(err.code) === "ENOENT") {
      console.error(`error: ${err.message}`);
    } else {
      throw err;
    }
    process.exitCode = 1;
  },
);
