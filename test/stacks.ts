/** The example stacks as the tests use them: secrets decrypted, some keys changed. */
import {
  loadStackFile,
  parseConfig,
  type ConfigSource,
  type HomelabConfig,
  type RawValue,
} from "../config";

/**
 * Secrets as `pulumi up` hands them over, decrypted; distinctive enough to be found anywhere
 * they leak to.
 */
export const SECRETS: Readonly<Record<string, string>> = {
  "proxmox.credential": "pve-credential-leak-canary",
  "lxc.sshPrivateKey":
    "-----BEGIN OPENSSH PRIVATE KEY-----\nssh-key-leak-canary\n-----END OPENSSH PRIVATE KEY-----",
  "relay.clientLogins": "alerts:alerts-password-leak-canary,backup:backup-password-leak-canary",
  "relay.upstreamPassword": "smarthost-password-leak-canary",
  "acme.dnsProviderToken": "dns-token-leak-canary",
  "redis.password": "redis-password-leak-canary",
};

/**
 * A stack file as `pulumi up` hands it over, with its secrets set; `overrides` replaces plain
 * keys (lists and numbers as values), `null` removes one.
 */
export function stackConfig(
  stack: string,
  overrides: Readonly<Record<string, unknown>> = {},
): HomelabConfig {
  const source = loadStackFile(stack);
  const values = new Map<string, RawValue>(source.values);
  for (const [key, text] of Object.entries(SECRETS)) values.set(key, { text, secret: true });
  for (const [key, value] of Object.entries(overrides)) {
    if (value === null) values.delete(key);
    else {
      const text = typeof value === "string" ? value : JSON.stringify(value);
      values.set(key, { text, secret: false });
    }
  }
  return parseConfig({ ...source, values } satisfies ConfigSource);
}

/**
 * A stack file with `extra` more hosts in edge.extraHosts, on the next nodes, container ids
 * and addresses of the first host's network; `overrides` as for stackConfig.
 */
export function withHosts(
  stack: string,
  extra: number,
  overrides: Readonly<Record<string, unknown>> = {},
): HomelabConfig {
  const plain = loadStackFile(stack).values;
  const [address, prefix] = plain.get("lxc.ipv4")!.text.split("/");
  const vmId = Number(plain.get("lxc.vmId")!.text);
  const hosts = Array.from({ length: extra }, (_, i) => {
    const next = address.replace(/\d+$/, (last) => String(Number(last) + i + 1));
    return `node=pve${i + 2},vmId=${vmId + i + 1},ipv4=${next}/${prefix}`;
  });
  return stackConfig(stack, { ...overrides, "edge.extraHosts": hosts });
}
