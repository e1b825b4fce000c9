/**
 * Address ranges as Traefik (Go's net package) reads them, for the checks that refuse trusting
 * or exempting too much of the internet: the configuration and the policy pack.
 */
import * as ipaddr from "ipaddr.js";

/** Shortest prefix a trusted-proxy or exempt range may have; a wider one covers much of the internet. */
export const MIN_TRUSTED_PREFIX = 8;

/**
 * The prefix length of an address or CIDR (a bare address is a full-length prefix), counted
 * the way Go does: `::ffff:a.b.c.d/N` is the IPv4 network a.b.c.d/(N−96). Throws on text that
 * is not an address or CIDR.
 */
export function effectivePrefixLength(text: string): number {
  const [address, prefix] = text.includes("/")
    ? ipaddr.parseCIDR(text)
    : [ipaddr.parse(text), ipaddr.parse(text).kind() === "ipv4" ? 32 : 128];
  const mapped = address.kind() === "ipv6" && (address as ipaddr.IPv6).isIPv4MappedAddress();
  return mapped ? Math.max(prefix - 96, 0) : prefix;
}
