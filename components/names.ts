/**
 * Names and ports that the edge, the relay, the offline render and the policy pack agree
 * on. Changing one here changes it everywhere.
 */

/** Where the relay listens inside the Docker network. No port is published on the host. */
export const RELAY_LISTENERS = {
  /** SMTP submission, STARTTLS by Postfix; every connection starts with a PROXY header (Traefik passes 587 through). */
  submission: 10587,
  /** Plain SMTP after Traefik terminated the implicit TLS of 465; every connection starts with a PROXY header. */
  smtps: 10465,
  /** Loopback only, no PROXY header: the container's own healthcheck. */
  local: 587,
  /** The relay's Prometheus metrics (an exporter sharing the relay's network namespace). */
  metrics: 9154,
} as const;

/** Traefik's entry point names. */
export const ENTRY_POINTS = {
  web: "web",
  websecure: "websecure",
  smtps: "smtps",
  submission: "submission",
} as const;

/** The Let's Encrypt certificate resolver. */
export const CERT_RESOLVER = "letsencrypt";

/** The rate-limit middleware every HTTP router on the edge uses first. */
export const RATE_LIMIT_MIDDLEWARE = "relay-ratelimit";

/** Label saying which part of the stack a container is; the policy pack reads it. */
export const ROLE_LABEL = "homelab-smtp.role";
export type Role = "edge" | "relay" | "relay-metrics" | "rate-limit-store" | "fail2ban";

/** A container's Docker labels: `labels` plus its role, sorted for a stable diff. */
export function containerLabels(
  role: Role,
  labels: Readonly<Record<string, string>> = {},
): { label: string; value: string }[] {
  return Object.entries({ ...labels, [ROLE_LABEL]: role })
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([label, value]) => ({ label, value }));
}

/** Bounded json-file logs for every container, so a chatty one cannot fill the host's disk. */
export const CONTAINER_LOGGING = {
  logDriver: "json-file",
  logOpts: { "max-size": "10m", "max-file": "5" },
} as const;

/** Where Traefik reads its static configuration and its file-provider directory. */
export const TRAEFIK_STATIC_PATH = "/etc/traefik/traefik.yml";
export const TRAEFIK_DYNAMIC_DIR = "/etc/traefik/dynamic";
