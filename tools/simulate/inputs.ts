/**
 * Recorded traffic from files: the simulator's own JSON-lines format, and Traefik's JSON
 * access log. A file with bad lines yields every problem, each with its line number,
 * instead of a partial replay.
 */
import * as fs from "node:fs";
import { z } from "zod";
import { ENTRY_POINTS } from "../../components/names";
import { hostOf, parseAddress } from "./source";
import { TrafficBuilder, type Traffic } from "./traffic";

export interface InputResult {
  traffic: Traffic;
  /** "FILE:LINE: what is wrong", one per problem; empty when the file is good. */
  problems: string[];
}

const peerAddress = z.string().refine((text) => parseAddress(hostOf(text)) !== undefined, {
  message:
    'an IP address, optionally with :port ("192.0.2.1", "192.0.2.1:4711", "[2001:db8::1]:4711")',
});

/** One line of the simulator's own format. */
const lineSchema = z.strictObject({
  t: z.number({ message: "a number of seconds" }),
  remoteAddr: peerAddress,
  xff: z.string({ message: "the X-Forwarded-For header as a string" }).optional(),
  proxy: z
    .string()
    .refine((text) => parseAddress(text) !== undefined, {
      message: "the PROXY header's source address",
    })
    .optional(),
  entryPoint: z
    .string()
    .min(1, { message: "an entry point name such as websecure or submission" })
    .optional(),
  auth: z.enum(["ok", "fail"], { message: "ok or fail" }).optional(),
});

/** Reads `{"t", "remoteAddr", "xff"?, "proxy"?, "entryPoint"?, "auth"?}` lines. */
export function readJsonLines(file: string): InputResult {
  const builder = new TrafficBuilder();
  const problems: string[] = [];
  eachLine(file, problems, (value, where) => {
    const parsed = lineSchema.safeParse(value, { reportInput: true });
    if (!parsed.success) {
      for (const issue of parsed.error.issues) problems.push(`${where}: ${describeIssue(issue)}`);
      return;
    }
    const line = parsed.data;
    // Rows with a login are SMTP sessions; everything else defaults to the HTTPS entry point.
    const entryPoint =
      line.entryPoint ?? (line.auth ? ENTRY_POINTS.submission : ENTRY_POINTS.websecure);
    builder.add({ ...line, entryPoint, router: entryPoint });
  });
  return { traffic: builder.build(), problems };
}

/** The fields of Traefik's JSON access log the replay needs (a header is logged as request_<Name>). */
const accessLogSchema = z.looseObject({
  StartUTC: z
    .string({ message: "the request's start time (RFC 3339)" })
    .refine((text) => parseTimestamp(text) !== undefined, {
      message: "an RFC 3339 time such as 2026-01-31T22:04:05.123456789Z",
    }),
  ClientAddr: peerAddress.optional(),
  ClientHost: peerAddress.optional(),
  entryPointName: z.string().optional(),
  RouterName: z.string().optional(),
  "request_X-Forwarded-For": z.string().optional(),
});

/**
 * Reads Traefik's JSON access log. The time axis is Unix seconds. The logged
 * X-Forwarded-For is replayed as if the peer had sent it; forwardedHeaders is applied
 * again, which changes nothing for a header Traefik already kept or removed.
 * Limitation: every logged request is replayed as offered, including the ones the live
 * limiter answered with 429; requests Traefik refused before logging them are not there.
 */
export function readAccessLog(file: string): InputResult {
  const builder = new TrafficBuilder();
  const problems: string[] = [];
  eachLine(file, problems, (value, where) => {
    const parsed = accessLogSchema.safeParse(value, { reportInput: true });
    if (!parsed.success) {
      for (const issue of parsed.error.issues) problems.push(`${where}: ${describeIssue(issue)}`);
      return;
    }
    const entry = parsed.data;
    const remoteAddr = entry.ClientAddr ?? entry.ClientHost;
    if (remoteAddr === undefined) {
      problems.push(
        `${where}: ClientAddr or ClientHost: missing; expected the client's address (keep these fields in accessLog.fields)`,
      );
      return;
    }
    const entryPoint = entry.entryPointName ?? ENTRY_POINTS.websecure;
    builder.add({
      t: parseTimestamp(entry.StartUTC)!,
      remoteAddr,
      xff: entry["request_X-Forwarded-For"],
      entryPoint,
      router: entry.RouterName ?? entryPoint,
    });
  });
  return { traffic: builder.build(), problems };
}

/** RFC 3339 with up to nanoseconds, as Go writes it; Unix seconds. */
export function parseTimestamp(text: string): number | undefined {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/.exec(text);
  if (!m) return undefined;
  const whole = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(whole)) return undefined;
  return whole / 1000 + (m[2] ? Number(`0${m[2]}`) : 0);
}

function eachLine(
  file: string,
  problems: string[],
  visit: (value: unknown, where: string) => void,
): void {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  lines.forEach((text, i) => {
    const where = `${file}:${i + 1}`;
    if (text.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      problems.push(`${where}: found text that is not JSON; expected one JSON object per line`);
      return;
    }
    visit(value, where);
  });
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.length > 0 ? issue.path.join(".") : "(line)";
  if (issue.code === "unrecognized_keys")
    return `${issue.keys.join(", ")}: unknown field; expected ${Object.keys(lineSchema.shape).join(", ")}`;
  if (issue.code === "invalid_type" && issue.input === undefined)
    return `${key}: missing; expected ${issue.message}`;
  const found = issue.input === undefined ? "nothing" : JSON.stringify(issue.input);
  return `${key}: found ${found}; expected ${issue.message}`;
}
