/**
 * Which client a request is counted against: Traefik's forwardedHeaders decision on the
 * entry point, then the rate limiter's sourceCriterion.ipStrategy. Pure string logic that
 * mirrors how Traefik v3 reads RemoteAddr and X-Forwarded-For; every function here is run
 * once per distinct input string by the model, never once per request.
 */
import * as ipaddr from "ipaddr.js";
import type { SourceCriterion } from "../../config";

/**
 * The host part of a Go RemoteAddr ("192.0.2.1:1234", "[::1]:80"). Like Go's
 * net.SplitHostPort followed by Traefik's fallback: anything that is not host:port
 * (a bare address, an IPv6 address without brackets) is returned as it is.
 */
export function hostOf(remoteAddr: string): string {
  if (remoteAddr.startsWith("[")) {
    const close = remoteAddr.indexOf("]");
    const isHostPort =
      close > 0 && remoteAddr[close + 1] === ":" && remoteAddr.indexOf(":", close + 2) < 0;
    return isHostPort ? remoteAddr.slice(1, close) : remoteAddr;
  }
  const colon = remoteAddr.lastIndexOf(":");
  if (colon < 0 || remoteAddr.lastIndexOf(":", colon - 1) >= 0) return remoteAddr;
  return remoteAddr.slice(0, colon);
}

/** An address as Go's net/netip reads it: IPv4 dotted quad or IPv6 (with an optional zone). */
export function parseAddress(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text);
  if (text.includes(":") && ipaddr.IPv6.isValid(text)) return ipaddr.IPv6.parse(text);
  return undefined;
}

/**
 * A list of addresses and CIDRs (trustedIPs, excludedIPs, the relay's exemptions) with a
 * memo of every string it was asked about, so each distinct address is parsed once.
 */
export class AddressSet {
  private readonly ranges: ReadonlyArray<[ipaddr.IPv4 | ipaddr.IPv6, number]>;
  private readonly memo = new Map<string, boolean>();

  constructor(entries: readonly string[]) {
    this.ranges = entries.map((entry) => {
      if (entry.includes("/")) return ipaddr.parseCIDR(entry);
      const address = ipaddr.parse(entry);
      return [address, address.kind() === "ipv4" ? 32 : 128];
    });
  }

  /** Whether the text is an address inside one of the ranges (a non-address never is). */
  contains(text: string): boolean {
    let known = this.memo.get(text);
    if (known === undefined) {
      known = this.lookUp(text);
      this.memo.set(text, known);
    }
    return known;
  }

  private lookUp(text: string): boolean {
    let address = parseAddress(text);
    if (!address) return false;
    // Go compares an IPv4-mapped IPv6 address with IPv4 ranges as the IPv4 address it carries.
    if (address.kind() === "ipv6" && (address as ipaddr.IPv6).isIPv4MappedAddress()) {
      address = (address as ipaddr.IPv6).toIPv4Address();
    }
    const kind = address.kind();
    return this.ranges.some(([range, bits]) => range.kind() === kind && address.match(range, bits));
  }
}

/**
 * The first address of the IPv6 subnet an address belongs to (Traefik's ipv6Subnet
 * option). IPv4 addresses, non-addresses and out-of-range prefix lengths come back as
 * they were, as in Traefik.
 */
export function ipv6SubnetOf(ip: string, bits: number): string {
  const address = parseAddress(ip);
  if (!address || address.kind() !== "ipv6" || !Number.isInteger(bits) || bits < 0 || bits > 128)
    return ip;
  const bytes = address.toByteArray();
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    bytes[i] &= (0xff << (8 - keep)) & 0xff;
  }
  return ipaddr.fromByteArray(bytes).toString();
}

/** The X-Forwarded-For entries as Traefik splits them (an absent header reads as ""). */
function forwardedEntries(xff: string | undefined): string[] {
  return (xff ?? "").split(",");
}

/**
 * The source string the rate limiter keys a request on. `xff` is the header as the
 * middleware sees it, i.e. after forwardedHeaders (see {@link forwardedHeader}).
 * An empty string is a real source: every request that yields it shares one bucket.
 */
export function selectSource(
  criterion: SourceCriterion,
  remoteAddr: string,
  xff: string | undefined,
  excluded?: AddressSet,
  ipv6Subnet?: number,
): string {
  const subnet = (ip: string) => (ipv6Subnet === undefined ? ip : ipv6SubnetOf(ip, ipv6Subnet));
  switch (criterion.kind) {
    case "remoteAddr":
      return subnet(hostOf(remoteAddr));
    case "depth": {
      const entries = forwardedEntries(xff);
      if (entries.length < criterion.depth) return "";
      return subnet(entries[entries.length - criterion.depth].trim());
    }
    case "excludedIPs": {
      const pool = excluded ?? new AddressSet(criterion.excludedIPs);
      const entries = forwardedEntries(xff);
      for (let i = entries.length - 1; i >= 0; i--) {
        const entry = entries[i].trim();
        if (entry !== "" && !pool.contains(entry)) return entry;
      }
      return "";
    }
  }
}

/**
 * X-Forwarded-For as the router's middlewares see it: Traefik's entry point deletes it
 * unless the connecting peer is in forwardedHeaders.trustedIPs.
 */
export function forwardedHeader(
  remoteAddr: string,
  xff: string | undefined,
  trusted: AddressSet,
): string | undefined {
  if (xff === undefined) return undefined;
  return trusted.contains(hostOf(remoteAddr)) ? xff : undefined;
}

/**
 * The client address the relay sees for an SMTP connection: the PROXY header's source
 * when the peer is one of proxyProtocol.trustedIPs and sent one, else the peer itself.
 */
export function smtpClient(
  remoteAddr: string,
  proxySource: string | undefined,
  trusted: AddressSet,
): string {
  const peer = hostOf(remoteAddr);
  // Limitation: a PROXY header from an untrusted peer is treated as absent (the peer is the
  // client); real Traefik may refuse such a connection instead, which the model does not show.
  return proxySource !== undefined && trusted.contains(peer) ? proxySource : peer;
}

/**
 * The address a balancer in front of the edges takes for the client: the first
 * X-Forwarded-For entry or the PROXY header's source when the row carries one (the proxy
 * that wrote it is the one spreading the traffic), else the connecting peer.
 */
export function originalClient(remoteAddr: string, header: string | undefined): string {
  const first = header === undefined ? "" : header.split(",", 1)[0].trim();
  return first !== "" ? first : hostOf(remoteAddr);
}

/** The edge (0 to count - 1) a client's address hashes to (32-bit FNV-1a), like source hashing. */
export function edgeOfClient(client: string, count: number): number {
  if (count <= 1) return 0;
  let hash = 0x811c9dc5;
  for (let i = 0; i < client.length; i++) {
    hash ^= client.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % count;
}
