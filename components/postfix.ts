/**
 * The relay's Postfix configuration as data: the stack configuration in, main.cf parameters
 * and master.cf services out. No Pulumi here; the relay component only ships the result.
 */
import { connectionRateLimit, type HomelabConfig } from "../config";
import { RELAY_LISTENERS } from "./names";

/** One master.cf service line and its `-o` overrides. */
export interface MasterService {
  /** "10587", "127.0.0.1:587", "smtp", "pickup", ... */
  service: string;
  type: "inet" | "unix" | "unix-dgram" | "fifo" | "pass";
  private: "y" | "n" | "-";
  unpriv: "y" | "n" | "-";
  chroot: "y" | "n" | "-";
  wakeup: string;
  maxproc: string;
  command: string;
  /** Rendered as "  -o name=value" lines, in this order. */
  options: Readonly<Record<string, string>>;
}

export interface PostfixSettings {
  main: Readonly<Record<string, string>>;
  master: readonly MasterService[];
}

/** Where the STARTTLS certificate lives inside the relay container (made at first start). */
export const TLS_CERT_FILE = "/etc/postfix/tls/relay.crt";
export const TLS_KEY_FILE = "/etc/postfix/tls/relay.key";

/** The smarthost login table the image writes from RELAYHOST_USERNAME and RELAYHOST_PASSWORD. */
export const UPSTREAM_PASSWORD_MAP = "lmdb:/etc/postfix/sasl_passwd";

/** Loopback, the only network trusted without a login. */
export const LOOPBACK = ["127.0.0.0/8", "[::1]/128"] as const;

/** Everything the relay's Postfix is told, derived from the stack configuration. */
export function postfixSettings(config: HomelabConfig): PostfixSettings {
  return {
    main: {
      ...identity(config),
      ...clientAccess(config),
      ...upstream(config),
      ...clientLimits(config),
      ...serverTls(),
    },
    master: masterServices(),
  };
}

function identity(config: HomelabConfig): Record<string, string> {
  return {
    compatibility_level: "3.6",
    myhostname: config.relay.hostname,
    inet_interfaces: "all",
    // Mail for the relay's own names is relayed like any other: nothing is delivered here.
    mydestination: "",
    relay_domains: "",
    // Postfix refuses to start when a mailbox limit is below message_size_limit; no mailbox exists.
    mailbox_size_limit: "0",
    virtual_mailbox_limit: "0",
    message_size_limit: String(config.relay.messageSizeLimit),
    smtpd_banner: "$myhostname ESMTP",
    disable_vrfy_command: "yes",
    smtpd_helo_required: "yes",
    // No restriction looks at client host names; under a flood a reverse lookup per
    // connection is work (and DNS traffic) for nothing.
    smtpd_peername_lookup: "no",
  };
}

/** Who may relay: logged-in clients only, and only for the allowed sender domains. */
function clientAccess(config: HomelabConfig): Record<string, string> {
  const senders = config.relay.allowedSenderDomains.map((domain) => `${domain}=OK`).join(", ");
  return {
    // The image's default adds 10/8, 172.16/12 and 192.168/16: Traefik's Docker address would
    // relay without a login and escape every per-client limit.
    mynetworks: LOOPBACK.join(" "),
    smtpd_sasl_auth_enable: "yes",
    smtpd_sasl_type: "cyrus",
    // Logins without a domain are looked up under the relay's domain, where the image stores them.
    smtpd_sasl_local_domain: "$mydomain",
    smtpd_sasl_security_options: "noanonymous",
    // Login names stay out of the Received: headers the recipients see; the log has them.
    smtpd_sasl_authenticated_header: "no",
    smtpd_delay_reject: "yes",
    // permit_mynetworks is left out on purpose: any container on the edge network could claim
    // 127.0.0.1 in a PROXY header, and would then relay without a login.
    smtpd_client_restrictions: "permit_sasl_authenticated, reject",
    smtpd_helo_restrictions: "reject_invalid_helo_hostname",
    // The image's default (permit_mynetworks, reject) would refuse every logged-in client.
    smtpd_sender_restrictions: `reject_non_fqdn_sender, check_sender_access inline:{ ${senders} }, reject`,
    smtpd_relay_restrictions: "permit_sasl_authenticated, reject",
    smtpd_recipient_restrictions: "reject_non_fqdn_recipient",
    // Without smtpd_access_maps here, a sender domain admits exactly itself, not its subdomains.
    parent_domain_matches_subdomains:
      "debug_peer_list, fast_flush_domains, mynetworks, permit_mx_backup_networks, qmqpd_authorized_clients, relay_domains",
  };
}

/** All mail leaves through the smarthost, encrypted, logged in when a username is set. */
function upstream(config: HomelabConfig): Record<string, string> {
  const { host, port, username } = config.relay.upstream;
  const login: Record<string, string> = username
    ? {
        smtp_sasl_auth_enable: "yes",
        // The table holds the password; it is written inside the container from a secret.
        smtp_sasl_password_maps: UPSTREAM_PASSWORD_MAP,
        // Plaintext mechanisms only inside TLS, which the smarthost connection always has.
        smtp_sasl_security_options: "noplaintext, noanonymous",
        smtp_sasl_tls_security_options: "noanonymous",
      }
    : { smtp_sasl_auth_enable: "no" };
  return {
    relayhost: `[${host}]:${port}`,
    // Port 465 speaks TLS from the first byte; any other port must offer STARTTLS.
    smtp_tls_wrappermode: port === 465 ? "yes" : "no",
    // Limitation: "encrypt" does not verify the smarthost's certificate ("secure" would), so an
    // attacker on the path to it could read the smarthost password.
    smtp_tls_security_level: "encrypt",
    smtp_tls_mandatory_protocols: ">=TLSv1.2",
    smtp_tls_CAfile: "/etc/ssl/certs/ca-certificates.crt",
    ...login,
  };
}

/** Per-client budgets, counted by anvil per client address (the one the PROXY header names). */
function clientLimits(config: HomelabConfig): Record<string, string> {
  const rate = config.rateLimit;
  return {
    anvil_rate_time_unit: `${rate.windowSeconds}s`,
    smtpd_client_connection_count_limit: String(rate.inFlight),
    // The same connections per window that the edge's token bucket lets through.
    smtpd_client_connection_rate_limit: String(
      connectionRateLimit(rate.average, rate.periodSeconds, rate.burst, rate.windowSeconds),
    ),
    smtpd_client_auth_rate_limit: String(rate.authAttempts),
    smtpd_client_message_rate_limit: String(rate.messages),
    // The default ($mynetworks) is fine here only because mynetworks is loopback; say it outright.
    smtpd_client_event_limit_exceptions: [...LOOPBACK, ...rate.exempt].join(" "),
    // A client that keeps failing (wrong passwords, refused senders) is slowed after 3 errors
    // and dropped after 10 in one session.
    smtpd_soft_error_limit: "3",
    smtpd_hard_error_limit: "10",
  };
}

/** STARTTLS on the submission listener; the certificate is made inside the container. */
function serverTls(): Record<string, string> {
  return {
    smtpd_tls_cert_file: TLS_CERT_FILE,
    smtpd_tls_key_file: TLS_KEY_FILE,
    smtpd_tls_security_level: "may",
    smtpd_tls_auth_only: "yes",
    smtpd_tls_mandatory_protocols: ">=TLSv1.2",
    smtpd_tls_protocols: ">=TLSv1.2",
  };
}

type Flags = Pick<MasterService, "type" | "private" | "unpriv" | "chroot" | "wakeup" | "maxproc">;

/** A service with the usual flags; never chrooted, since a chroot would hide /etc/sasldb2. */
function service(
  name: string,
  flags: Partial<Flags>,
  command: string,
  options: Record<string, string> = {},
): MasterService {
  return {
    service: name,
    type: "unix",
    private: "-",
    unpriv: "-",
    chroot: "n",
    wakeup: "-",
    maxproc: "-",
    ...flags,
    command,
    options,
  };
}

/**
 * The listeners clients reach through Traefik, and the loopback one for the healthcheck. They
 * keep smtpd's default syslog name, which the metrics exporter's log parser expects.
 */
function listeners(): MasterService[] {
  const inet = { type: "inet", private: "n" } as const;
  return [
    // Traefik passes port 587 through; Postfix does STARTTLS and allows AUTH only after it.
    service(String(RELAY_LISTENERS.submission), inet, "smtpd", {
      smtpd_upstream_proxy_protocol: "haproxy",
      smtpd_tls_security_level: "encrypt",
      smtpd_tls_auth_only: "yes",
    }),
    // Limitation: Traefik terminates the implicit TLS of port 465, so the hop from Traefik to
    // this listener, inside the Docker network, carries logins and mail in plaintext.
    service(String(RELAY_LISTENERS.smtps), inet, "smtpd", {
      smtpd_upstream_proxy_protocol: "haproxy",
      smtpd_tls_security_level: "none",
      smtpd_tls_auth_only: "no",
    }),
    // No PROXY header here: the container's own healthcheck connects directly.
    service(`127.0.0.1:${RELAY_LISTENERS.local}`, inet, "smtpd"),
  ];
}

/** Postfix's own daemons, as its stock master.cf defines them. */
function daemons(): MasterService[] {
  return [
    service("pickup", { private: "n", wakeup: "60", maxproc: "1" }, "pickup"),
    service("cleanup", { private: "n", maxproc: "0" }, "cleanup"),
    service("qmgr", { private: "n", wakeup: "300", maxproc: "1" }, "qmgr"),
    service("tlsmgr", { wakeup: "1000?", maxproc: "1" }, "tlsmgr"),
    service("rewrite", {}, "trivial-rewrite"),
    service("bounce", { maxproc: "0" }, "bounce"),
    service("defer", { maxproc: "0" }, "bounce"),
    service("trace", { maxproc: "0" }, "bounce"),
    service("verify", { maxproc: "1" }, "verify"),
    service("flush", { private: "n", wakeup: "1000?", maxproc: "0" }, "flush"),
    service("proxymap", {}, "proxymap"),
    service("proxywrite", { maxproc: "1" }, "proxymap"),
    service("smtp", {}, "smtp"),
    service("relay", {}, "smtp", { syslog_name: "postfix/$service_name" }),
    service("showq", { private: "n" }, "showq"),
    service("error", {}, "error"),
    service("retry", {}, "error"),
    service("discard", {}, "discard"),
    service("local", { unpriv: "n" }, "local"),
    service("virtual", { unpriv: "n" }, "virtual"),
    service("lmtp", {}, "lmtp"),
    service("anvil", { maxproc: "1" }, "anvil"),
    service("scache", { maxproc: "1" }, "scache"),
    service("postlog", { type: "unix-dgram", private: "n", maxproc: "1" }, "postlogd"),
  ];
}

function masterServices(): MasterService[] {
  return [...listeners(), ...daemons()];
}

// ---------------------------------------------------------------------------------------
// Rendering.

const HEADER = [
  "# Rendered from the stack configuration by homelab-smtp; change the stack, not this file.",
];

function checkValue(where: string, value: string): void {
  if (/[\r\n]/.test(value))
    throw new Error(`${where}: a Postfix value must be one line, found ${JSON.stringify(value)}`);
}

/** main.cf: one `name = value` line per parameter, sorted by name. */
export function renderMainCf(settings: PostfixSettings): string {
  const names = Object.keys(settings.main).sort();
  const lines = names.map((name) => {
    checkValue(`main.cf ${name}`, settings.main[name]);
    return settings.main[name] === "" ? `${name} =` : `${name} = ${settings.main[name]}`;
  });
  return [...HEADER, "", ...lines, ""].join("\n");
}

/** An `-o` line; values with blanks need Postfix's `{ name = value }` form. */
function optionLine(name: string, value: string): string {
  checkValue(`master.cf -o ${name}`, value);
  return /\s/.test(value) || value === "" ? `  -o { ${name} = ${value} }` : `  -o ${name}=${value}`;
}

/** master.cf: every service on one line, columns aligned, its options below it. */
export function renderMasterCf(settings: PostfixSettings): string {
  const columns = [
    "service",
    "type",
    "private",
    "unpriv",
    "chroot",
    "wakeup",
    "maxproc",
    "command",
  ] as const;
  const rows = settings.master.map((s) => columns.map((c) => s[c]));
  const widths = columns.map((c, i) =>
    Math.max(c.length + (i === 0 ? 2 : 0), ...rows.map((r) => r[i].length)),
  );
  const pad = (cells: readonly string[]) =>
    cells.map((cell, i) => (i < cells.length - 1 ? cell.padEnd(widths[i]) : cell)).join(" ");

  const lines = [...HEADER, "#", pad(["# " + columns[0], ...columns.slice(1)])];
  settings.master.forEach((s, i) => {
    lines.push(pad(rows[i]).trimEnd());
    for (const [name, value] of Object.entries(s.options)) lines.push(optionLine(name, value));
  });
  return [...lines, ""].join("\n");
}
