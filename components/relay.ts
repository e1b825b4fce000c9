/**
 * The Postfix relay behind Traefik, and its metrics exporter. The relay's Postfix runs exactly
 * the configuration components/postfix.ts derives from the stack; this file only ships it.
 *
 * How the settings reach the container (boky/postfix): the image first configures Postfix
 * from its environment, then runs every `*.sh` in /docker-init.db/ before starting it. The
 * rendered main.cf and master.cf are uploaded to CONFIG_DIR, and an uploaded init script
 * applies every main.cf parameter with `postconf -e` (so each one replaces what the image
 * derived from its environment, empty values included) and installs master.cf whole.
 */
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import type { HomelabConfig } from "../config";
import { CONTAINER_LOGGING, containerLabels, RELAY_LISTENERS } from "./names";
import { postfixSettings, renderMainCf, renderMasterCf, type PostfixSettings } from "./postfix";

export interface RelayArgs {
  /** The parsed and validated stack configuration. */
  config: HomelabConfig;
  /** Where the containers run (the Docker host's provider). */
  dockerProvider: docker.Provider;
  /** The edge's network: Traefik reaches the relay only there. */
  network: docker.Network;
  /** Traefik's labels for the relay, computed by the caller; ROLE_LABEL is added here. */
  labels: Readonly<Record<string, string>>;
}

/** Where the rendered configuration is uploaded inside the relay container. */
export const CONFIG_DIR = "/etc/homelab-smtp";

/** Init scripts the image runs after its own setup (the older name; newer releases still run it). */
export const INIT_DIR = "/docker-init.db";

/** Written by the init script once the settings are applied; the healthcheck requires it. */
export const APPLIED_MARKER = "/run/homelab-smtp-applied";

/** Postfix's queue, shared read-only with the exporter for the showq socket. */
export const SPOOL_DIR = "/var/spool/postfix";

/** A plain-text copy of Postfix's log that the exporter parses (stdout stays JSON). */
export const MAIL_LOG_DIR = "/var/log/postfix";
export const MAIL_LOG = `${MAIL_LOG_DIR}/mail.log`;

/**
 * The metrics exporter, pinned. Hsn723's fork is the maintained postfix_exporter (boky/postfix
 * builds its own exporter from it); its images are published on GitHub's registry.
 */
// Limitation: the tag is the one the fork's own Helm chart pins (appVersion 0.16.1); no
// registry was reachable here to confirm the image, nor the image's entrypoint taking flags.
export const EXPORTER_IMAGE = "ghcr.io/hsn723/postfix_exporter:0.16.1";

/** The image's environment that is not secret. */
export function relayEnvironment(config: HomelabConfig): string[] {
  const { host, port, username } = config.relay.upstream;
  return [
    // Senders are restricted by the rendered smtpd_sender_restrictions, not by the image's own map.
    "ALLOW_EMPTY_SENDER_DOMAINS=true",
    // The image writes the smarthost login table (smtp_sasl_password_maps) from these.
    `RELAYHOST=[${host}]:${port}`,
    ...(username ? [`RELAYHOST_USERNAME=${username}`] : []),
    "LOG_FORMAT=json",
  ];
}

/**
 * The secret part of the environment: client logins (the image stores them in sasldb) and
 * the smarthost password. Each entry stays a secret Output.
 */
// Limitation: the image reads SMTPD_SASL_USERS only from its environment, so both values are
// visible to `docker inspect` on the host (that is, to whoever holds the Docker socket). The
// image also expands the logins unquoted in its shell: a password with * ? [ may be mangled.
export function relaySecretEnvironment(config: HomelabConfig): pulumi.Output<string>[] {
  const { password, username } = config.relay.upstream;
  const logins = pulumi.secret(pulumi.interpolate`SMTPD_SASL_USERS=${config.relay.clientLogins}`);
  return username && password
    ? [logins, pulumi.secret(pulumi.interpolate`RELAYHOST_PASSWORD=${password}`)]
    : [logins];
}

/** Where the init script finds its input and leaves its marks (by default, the container's). */
export interface InitPaths {
  configDir: string;
  marker: string;
  maillogDir: string;
}

const CONTAINER_PATHS: InitPaths = {
  configDir: CONFIG_DIR,
  marker: APPLIED_MARKER,
  maillogDir: MAIL_LOG_DIR,
};

/**
 * The init script the image runs last: applies the rendered files and makes the STARTTLS
 * certificate. Postfix's own paths come from postconf, so the script follows MAIL_CONFIG.
 */
export function initScript(paths: InitPaths = CONTAINER_PATHS): string {
  return `#!/bin/bash
# Applies the rendered Postfix configuration over the one the image derived from its
# environment. Any failure stops the container's start.
set -euo pipefail
rm -f '${paths.marker}'

mapfile -t parameters < <(grep -v -e '^#' -e '^$' '${paths.configDir}/main.cf')
postconf -e "\${parameters[@]}"
install -m 0644 '${paths.configDir}/master.cf' "$(postconf -h config_directory)/master.cf"

# Limitation: a self-signed certificate, made once per container: clients on port 587 must not
# insist on a trusted one (Traefik's Let's Encrypt certificate covers port 465 only).
cert="$(postconf -h smtpd_tls_cert_file)"
key="$(postconf -h smtpd_tls_key_file)"
if [ ! -s "$key" ]; then
  command -v openssl >/dev/null || { echo "openssl is missing: cannot make $cert" >&2; exit 1; }
  name="$(postconf -h myhostname)"
  mkdir -p "$(dirname "$key")" "$(dirname "$cert")"
  (umask 077 && openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=$name" \\
    -addext "subjectAltName=DNS:$name" -keyout "$key" -out "$cert" 2>/dev/null)
fi

mkdir -p '${paths.maillogDir}'
postfix check
touch '${paths.marker}'
`;
}

/** rsyslog drop-in: Postfix's log also goes, in classic syslog format, to the exporter's file. */
// Limitation: relies on the image's rsyslog.conf including /etc/rsyslog.d/*.conf (its Helm chart
// documents that); if a release drops the include, only the exporter's log metrics go blank.
export function maillogRsyslogConf(): string {
  return `mail.* action(type="omfile" file="${MAIL_LOG}" template="RSYSLOG_TraditionalFileFormat")\n`;
}

/** logrotate drop-in for that file (the image runs crond with logrotate). */
export function maillogLogrotateConf(): string {
  return `${MAIL_LOG} {\n  daily\n  rotate 7\n  compress\n  missingok\n  notifempty\n  copytruncate\n}\n`;
}

/** Files uploaded into the relay container before it starts. */
export function relayUploads(settings: PostfixSettings): { file: string; content: string }[] {
  return [
    { file: `${CONFIG_DIR}/main.cf`, content: renderMainCf(settings) },
    { file: `${CONFIG_DIR}/master.cf`, content: renderMasterCf(settings) },
    // Not executable on purpose: the image sources executable scripts into its own shell.
    { file: `${INIT_DIR}/homelab-smtp.sh`, content: initScript() },
    { file: "/etc/rsyslog.d/homelab-smtp-maillog.conf", content: maillogRsyslogConf() },
    { file: "/etc/logrotate.d/homelab-smtp-maillog", content: maillogLogrotateConf() },
  ];
}

/**
 * Healthy when the settings were applied and the loopback listener answers EHLO. The image's
 * own healthcheck guesses the port from master.cf and would pick several here.
 */
export function relayHealthcheck(): docker.types.input.ContainerHealthcheck {
  // One command at a time: Postfix may drop clients that pipeline before the greeting.
  const say = `sleep 1; printf 'EHLO healthcheck\\r\\n'; sleep 1; printf 'QUIT\\r\\n'`;
  const smtp = `{ ${say}; } | nc -w 5 127.0.0.1 ${RELAY_LISTENERS.local}`;
  return {
    tests: ["CMD-SHELL", `test -f ${APPLIED_MARKER} && ${smtp} | grep -q '^250 '`],
    interval: "30s",
    timeout: "10s",
    retries: 3,
    startPeriod: "60s",
  };
}

/** The exporter's flags: showq through the shared spool, the log through the shared directory. */
export function exporterCommand(): string[] {
  return [
    `--web.listen-address=:${RELAY_LISTENERS.metrics}`,
    `--postfix.showq_path=${SPOOL_DIR}/public/showq`,
    `--postfix.logfile_path=${MAIL_LOG}`,
    // The file appears with Postfix's first log line; until then only queue metrics exist.
    "--no-postfix.logfile_must_exist",
  ];
}

export class Relay extends pulumi.ComponentResource {
  readonly container: docker.Container;
  readonly metrics: docker.Container;
  readonly settings: PostfixSettings;
  /** The volume holding MAIL_LOG, Postfix's plain-text log; readers mount it read-only. */
  readonly maillog: docker.Volume;

  constructor(name: string, args: RelayArgs, opts?: pulumi.ComponentResourceOptions) {
    super("homelab:relay:Relay", name, {}, opts);
    const { config } = args;
    const child = { parent: this, provider: args.dockerProvider };
    this.settings = postfixSettings(config);

    const relayImage = new docker.RemoteImage(
      `${name}-image`,
      { name: config.relay.image, keepLocally: true },
      child,
    );
    const exporterImage = new docker.RemoteImage(
      `${name}-exporter-image`,
      { name: EXPORTER_IMAGE, keepLocally: true },
      child,
    );
    const spool = new docker.Volume(`${name}-spool`, { name: `${name}-spool` }, child);
    const maillog = new docker.Volume(`${name}-maillog`, { name: `${name}-maillog` }, child);
    this.maillog = maillog;

    this.container = new docker.Container(
      name,
      {
        name,
        image: relayImage.imageId,
        hostname: config.relay.hostname,
        envs: [...relayEnvironment(config), ...relaySecretEnvironment(config)],
        uploads: relayUploads(this.settings),
        labels: containerLabels("relay", args.labels),
        networksAdvanced: [{ name: args.network.name }],
        volumes: [
          { volumeName: spool.name, containerPath: SPOOL_DIR },
          { volumeName: maillog.name, containerPath: MAIL_LOG_DIR },
        ],
        healthcheck: relayHealthcheck(),
        restart: "unless-stopped",
        // Time for Postfix to finish the deliveries in progress; the queue itself is on a volume.
        destroyGraceSeconds: 60,
        ...CONTAINER_LOGGING,
      },
      child,
    );

    // Sharing the relay's network namespace puts the exporter on the relay's address, where
    // Traefik's metrics router (RELAY_LISTENERS.metrics) expects it, without a port of its own.
    this.metrics = new docker.Container(
      `${name}-metrics`,
      {
        name: `${name}-metrics`,
        image: exporterImage.imageId,
        networkMode: pulumi.interpolate`container:${this.container.id}`,
        command: exporterCommand(),
        labels: containerLabels("relay-metrics"),
        volumes: [
          { volumeName: spool.name, containerPath: SPOOL_DIR, readOnly: true },
          { volumeName: maillog.name, containerPath: MAIL_LOG_DIR, readOnly: true },
        ],
        restart: "unless-stopped",
        ...CONTAINER_LOGGING,
      },
      child,
    );

    this.registerOutputs({
      container: this.container,
      metrics: this.metrics,
      settings: this.settings,
    });
  }
}
