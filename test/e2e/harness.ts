/**
 * A private, real Postfix per stack: the rendered main.cf and master.cf with only what
 * cannot work on loopback replaced (see LoopbackOverride), its own config, queue and data
 * directories under a temp dir, its own log file, its own sasldb, and a capturing smarthost.
 * Runs as root, as CI does.
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { type HomelabConfig } from "../../config";
import { RELAY_LISTENERS } from "../../components/names";
import {
  postfixSettings,
  renderMainCf,
  renderMasterCf,
  type MasterService,
  type PostfixSettings,
} from "../../components/postfix";
import { LOOPBACK, SmtpSink } from "./smtp";

/** Programs the suite runs; all come with Debian's postfix, sasl2-bin and openssl packages. */
const TOOLS = [
  "/usr/sbin/postfix",
  "/usr/sbin/postconf",
  "/usr/sbin/postmap",
  "/usr/sbin/saslpasswd2",
  "/usr/bin/openssl",
];

/** The tools that are not installed (empty when the suite can run). */
export function missingTools(): string[] {
  const missing = TOOLS.filter((tool) => !fs.existsSync(tool));
  if (missing.length === 0 && spawnSync("id", ["postfix"]).status !== 0)
    missing.push("the postfix user");
  return missing;
}

/** A free TCP port on loopback (free when asked; nothing else on this machine races for it). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** One line of the rendered configuration the harness replaces, and why. */
export interface LoopbackOverride {
  file: "main.cf" | "master.cf" | "sasl/smtpd.conf";
  /** Parameter (main.cf) or service name as rendered (master.cf). */
  name: string;
  rendered?: string;
  value: string;
  why: string;
}

/** The rendered relay listeners, by role. */
export type Listener = keyof typeof LISTENER_PORTS;
const LISTENER_PORTS = {
  submission: RELAY_LISTENERS.submission,
  smtps: RELAY_LISTENERS.smtps,
  local: RELAY_LISTENERS.local,
} as const;

/** The port at the end of an inet service name ("10587", "127.0.0.1:587"). */
function inetPort(service: MasterService): number | undefined {
  if (service.type !== "inet") return undefined;
  const m = /(?:^|:)(\d+)$/.exec(service.service);
  return m ? Number(m[1]) : undefined;
}

export interface Login {
  user: string;
  password: string;
}

export interface RelayOptions {
  stack: string;
  config: HomelabConfig;
  /** Logins created in the relay's sasldb; the tests log in with them. */
  logins: readonly string[];
  /** Start from these settings instead of the rendered ones (the benchmark's baseline). */
  settings?: PostfixSettings;
}

/** A running private Postfix and the smarthost it relays to. */
export class RelayInstance {
  readonly root: string;
  readonly configDir: string;
  readonly queueDir: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** The login realm (smtpd_sasl_local_domain expanded): users log in without a domain. */
  realm = "";
  readonly logins = new Map<string, Login>();
  /** Loopback port for each rendered listener. */
  readonly ports = {} as Record<Listener, number>;
  readonly overrides: LoopbackOverride[] = [];
  sink!: SmtpSink;
  private masterPid?: number;
  /** Every process of the instance seen so far, with its start time (a pid can be reused). */
  private seenPids = new Map<number, number>();

  private constructor(
    readonly config: HomelabConfig,
    readonly rendered: PostfixSettings,
    stack: string,
  ) {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), `relay-e2e-${stack}-`));
    // Postfix's daemons run as the postfix user and must reach the log, sasldb and queue.
    fs.chmodSync(this.root, 0o755);
    this.configDir = path.join(this.root, "etc");
    this.queueDir = path.join(this.root, "spool");
    this.dataDir = path.join(this.root, "lib");
    this.logFile = path.join(this.root, "maillog");
    for (const dir of [
      this.configDir,
      this.queueDir,
      this.dataDir,
      path.join(this.configDir, "sasl"),
    ]) {
      fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    }
    execFileSync("chown", ["postfix:", this.dataDir]);
  }

  /** Renders the stack, applies the loopback overrides, starts the smarthost and Postfix. */
  static async start(options: RelayOptions): Promise<RelayInstance> {
    const rendered = options.settings ?? postfixSettings(options.config);
    const relay = new RelayInstance(options.config, rendered, options.stack);
    try {
      await relay.prepare(options.logins);
      relay.postfix("start");
      relay.masterPid = Number(
        fs.readFileSync(path.join(relay.queueDir, "pid", "master.pid"), "utf8").trim(),
      );
      relay.remember();
      return relay;
    } catch (err) {
      await relay.stop();
      throw err;
    }
  }

  private async prepare(logins: readonly string[]): Promise<void> {
    const tlsDir = path.join(this.root, "tls");
    fs.mkdirSync(tlsDir, { mode: 0o700 });
    const cert = path.join(tlsDir, "relay.crt");
    const key = path.join(tlsDir, "relay.key");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        `/CN=${this.config.relay.hostname}`,
        "-keyout",
        key,
        "-out",
        cert,
      ],
      { stdio: "pipe" },
    );

    const upstream = this.config.relay.upstream;
    const { sink, port: sinkPort } = await SmtpSink.start({
      tls: { cert: fs.readFileSync(cert, "utf8"), key: fs.readFileSync(key, "utf8") },
      implicitTls: this.rendered.main.smtp_tls_wrappermode === "yes",
    });
    this.sink = sink;
    for (const listener of Object.keys(LISTENER_PORTS) as Listener[])
      this.ports[listener] = await freePort();

    const main = { ...this.rendered.main };
    const setMain = (name: string, value: string, why: string) => {
      this.overrides.push({
        file: "main.cf",
        name,
        rendered: this.rendered.main[name],
        value,
        why,
      });
      main[name] = value;
    };
    setMain("queue_directory", this.queueDir, "a private queue per instance");
    setMain("data_directory", this.dataDir, "a private data directory per instance");
    setMain("maillog_file", this.logFile, "the log the tests read (the image logs to stdout)");
    setMain(
      "maillog_file_prefixes",
      this.root,
      "Postfix writes a maillog_file only under these prefixes",
    );
    setMain("smtpd_tls_cert_file", cert, "a certificate made for the test");
    setMain("smtpd_tls_key_file", key, "its key");
    setMain("relayhost", `[${LOOPBACK}]:${sinkPort}`, "the capturing smarthost on loopback");
    if (main.smtp_sasl_password_maps) {
      const table = path.join(this.configDir, "sasl_passwd");
      const type = main.smtp_sasl_password_maps.split(":")[0];
      fs.writeFileSync(
        table,
        `${main.relayhost} ${upstream.username}:${randomBytes(12).toString("hex")}\n`,
        { mode: 0o600 },
      );
      setMain(
        "smtp_sasl_password_maps",
        `${type}:${table}`,
        "the smarthost login table, same map type, a stand-in password",
      );
    }

    const master = this.rendered.master.map((service): MasterService => {
      const listener = (Object.keys(LISTENER_PORTS) as Listener[]).find(
        (l) => LISTENER_PORTS[l] === inetPort(service),
      );
      if (!listener) return service;
      const name = `${LOOPBACK}:${this.ports[listener]}`;
      this.overrides.push({
        file: "master.cf",
        name: service.service,
        rendered: service.service,
        value: name,
        why: `the ${listener} listener on a free loopback port`,
      });
      return { ...service, service: name };
    });

    const sasldb = path.join(this.root, "sasldb2");
    const saslConf = [
      "pwcheck_method: auxprop",
      "auxprop_plugin: sasldb",
      "mech_list: PLAIN LOGIN",
      `sasldb_path: ${sasldb}`,
    ];
    this.overrides.push({
      file: "sasl/smtpd.conf",
      name: "sasldb_path",
      rendered: "/etc/sasldb2 (the image's)",
      value: sasldb,
      why: "a private sasldb: Debian's smtpd reads $config_directory/sasl/smtpd.conf",
    });
    fs.writeFileSync(path.join(this.configDir, "sasl", "smtpd.conf"), saslConf.join("\n") + "\n");

    const settings: PostfixSettings = { main, master };
    fs.writeFileSync(path.join(this.configDir, "main.cf"), renderMainCf(settings));
    fs.writeFileSync(path.join(this.configDir, "master.cf"), renderMasterCf(settings));
    if (main.smtp_sasl_password_maps)
      this.run("/usr/sbin/postmap", ["-c", this.configDir, main.smtp_sasl_password_maps]);

    this.realm = this.postconfValue("smtpd_sasl_local_domain", true) || this.config.relay.hostname;
    for (const user of logins) {
      const login = { user, password: randomBytes(12).toString("base64url") };
      this.run(
        "/usr/sbin/saslpasswd2",
        ["-f", sasldb, "-p", "-c", "-u", this.realm, user],
        login.password,
      );
      this.logins.set(user, login);
    }
    if (logins.length > 0) execFileSync("chown", ["postfix:", sasldb]);
  }

  private run(program: string, args: string[], input?: string): string {
    const result = spawnSync(program, args, { input, encoding: "utf8", timeout: 30_000 });
    if (result.status !== 0) {
      throw new Error(
        `${path.basename(program)} ${args.join(" ")} failed (${result.status}): ${result.stderr.trim()}\n${this.logTail()}`,
      );
    }
    return result.stdout;
  }

  private postfix(command: "start" | "stop"): void {
    this.run("/usr/sbin/postfix", ["-c", this.configDir, command]);
  }

  /** A parameter as this instance's Postfix sees it (`expand`: with $names replaced). */
  postconfValue(name: string, expand = false): string {
    return this.run("/usr/sbin/postconf", [
      "-c",
      this.configDir,
      ...(expand ? ["-x"] : []),
      "-h",
      name,
    ]).trim();
  }

  /** `postconf -n`: every main.cf parameter set explicitly, as Postfix parsed it. */
  postconfN(): Record<string, string> {
    return parseAssignments(this.run("/usr/sbin/postconf", ["-c", this.configDir, "-n"]));
  }

  /** `postconf -M`: master.cf services as Postfix parsed them, by "service/type". */
  postconfM(): Map<string, string[]> {
    const services = new Map<string, string[]>();
    for (const line of this.run("/usr/sbin/postconf", ["-c", this.configDir, "-M"]).split("\n")) {
      const fields = line.trim().split(/\s+/);
      if (fields.length >= 8) services.set(`${fields[0]}/${fields[1]}`, fields);
    }
    return services;
  }

  /** `postconf -P`: every master.cf `-o` option, as "service/type/name" → value. */
  postconfP(): Record<string, string> {
    return parseAssignments(this.run("/usr/sbin/postconf", ["-c", this.configDir, "-P"]));
  }

  log(): string {
    return fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, "utf8") : "";
  }

  private logTail(): string {
    return this.log().split("\n").slice(-15).join("\n");
  }

  /** The instance's processes: the master and everything below it. */
  processes(): number[] {
    if (!this.masterPid) return [];
    const children = new Map<number, number[]>();
    for (const entry of fs.readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      const stat = readStat(Number(entry));
      if (!stat) continue;
      children.set(stat.ppid, [...(children.get(stat.ppid) ?? []), Number(entry)]);
    }
    const found: number[] = [];
    const walk = (pid: number) => {
      found.push(pid);
      for (const child of children.get(pid) ?? []) walk(child);
    };
    if (readStat(this.masterPid)) walk(this.masterPid);
    return found;
  }

  private remember(): void {
    for (const pid of this.processes()) {
      const stat = readStat(pid);
      if (stat) this.seenPids.set(pid, stat.start);
    }
  }

  /**
   * CPU seconds the instance has used: its live processes' own time, plus what the master
   * collected from children that already exited (cutime/cstime).
   */
  cpuSeconds(): number {
    const ticks = 100; // USER_HZ on Linux
    let total = 0;
    for (const pid of this.processes()) {
      const stat = readStat(pid);
      if (stat) total += stat.utime + stat.stime + stat.cutime + stat.cstime;
    }
    this.remember();
    return total / ticks;
  }

  /** Stops Postfix and the smarthost, kills anything of the instance still alive, deletes it all. */
  async stop(): Promise<void> {
    if (this.masterPid && readStat(this.masterPid)) {
      this.remember();
      spawnSync("/usr/sbin/postfix", ["-c", this.configDir, "stop"], { timeout: 30_000 });
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && this.strays().length > 0) await sleep(100);
    }
    for (const pid of this.strays()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* exited meanwhile */
      }
    }
    await this.sink?.stop();
    fs.rmSync(this.root, { recursive: true, force: true });
  }

  /** Processes of the instance that are still running. */
  private strays(): number[] {
    return [...this.seenPids]
      .filter(([pid, start]) => isRunning(pid) && readStat(pid)?.start === start)
      .map(([pid]) => pid);
  }
}

function parseAssignments(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf(" = ");
    if (i > 0) values[line.slice(0, i).trim()] = line.slice(i + 3).trim();
    else if (line.endsWith(" =")) values[line.slice(0, -2).trim()] = "";
  }
  return values;
}

interface ProcStat {
  ppid: number;
  state: string;
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
  /** Start time after boot, in clock ticks. */
  start: number;
}

function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name is in parentheses and may contain spaces; fields follow the last ")".
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return {
    state: fields[0],
    ppid: Number(fields[1]),
    utime: Number(fields[11]),
    stime: Number(fields[12]),
    cutime: Number(fields[13]),
    cstime: Number(fields[14]),
    start: Number(fields[19]),
  };
}

/** Alive and not a zombie (a zombie's parent just has not reaped it; it uses nothing). */
function isRunning(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== undefined && stat.state !== "Z";
}

/** Figures as a plain-text table: a label column, then one right-aligned column each. */
export function sideBySide(
  columns: readonly string[],
  rows: readonly (readonly [label: string, cells: readonly string[]])[],
): string {
  const labelWidth = Math.max(...rows.map(([label]) => label.length));
  const cellWidth = Math.max(
    ...columns.map((c) => c.length),
    ...rows.flatMap(([, cells]) => cells.map((c) => c.length)),
  );
  const line = (label: string, cells: readonly string[]) =>
    `${label.padEnd(labelWidth)}  ${cells.map((c) => c.padStart(cellWidth)).join("  ")}`;
  return [line("", columns), ...rows.map(([label, cells]) => line(label, cells))].join("\n");
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
