/**
 * Validation of Traefik's static and dynamic configuration against SchemaStore's Traefik v3
 * JSON Schemas (schemas/, see the README there).
 *
 * The file-provider schema lags Traefik v3.7 in known places. Each gap is handled here on
 * purpose, never by turning validation off: the parts the schema does not describe (or
 * wrongly rejects) are cut out, checked against this module's own small schemas, and the
 * rest goes through the upstream schema unchanged.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import { PROJECT_DIR, isAddressOrCidr } from "../config";

/** SchemaStore's Traefik v3 schemas, kept in the repository (schemas/README.md says whence). */
export const SCHEMA_DIR = path.join(PROJECT_DIR, "schemas");

/** One problem: where in the configuration (a JSON pointer) and what is wrong. */
export class SchemaError {
  constructor(
    readonly path: string,
    readonly message: string,
  ) {}

  toString(): string {
    return `${this.path || "/"}: ${this.message}`;
  }
}

// ---------------------------------------------------------------------------------------
// Schemas for what the upstream file-provider schema leaves out.

const durationOrSeconds = { oneOf: [{ type: "string", minLength: 1 }, { type: "number" }] };

/** rateLimit.redis (Traefik >= 3.4); the upstream schema rejects the block outright. */
const redisSchema = {
  type: "object",
  additionalProperties: false,
  required: ["endpoints"],
  properties: {
    endpoints: {
      type: "array",
      minItems: 1,
      items: { type: "string", pattern: "^[^\\s:/]+:\\d{1,5}$" },
    },
    username: { type: "string" },
    password: { type: "string" },
    db: { type: "integer", minimum: 0 },
    poolSize: { type: "integer", minimum: 0 },
    minIdleConns: { type: "integer", minimum: 0 },
    maxActiveConns: { type: "integer", minimum: 0 },
    readTimeout: durationOrSeconds,
    writeTimeout: durationOrSeconds,
    dialTimeout: durationOrSeconds,
    tls: {
      type: "object",
      additionalProperties: false,
      properties: {
        ca: { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        insecureSkipVerify: { type: "boolean" },
      },
    },
  },
};

/** ipStrategy.ipv6Subnet (Traefik >= 3.2): a prefix length; the upstream schema rejects it. */
const ipv6SubnetSchema = { type: "integer", minimum: 0, maximum: 128 };

const sourceRange = {
  type: "array",
  minItems: 1,
  items: { type: "string", format: "address-or-cidr" },
};

/**
 * tcp.middlewares: not described upstream. Exactly one kind per middleware, as in Traefik
 * (one key of two, rather than a oneOf, so that errors point inside the middleware).
 */
const tcpMiddlewareSchema = {
  type: "object",
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
  properties: {
    inFlightConn: {
      type: "object",
      additionalProperties: false,
      required: ["amount"],
      // amount 0 refuses every connection.
      properties: { amount: { type: "integer", minimum: 1 } },
    },
    ipAllowList: {
      type: "object",
      additionalProperties: false,
      required: ["sourceRange"],
      properties: { sourceRange },
    },
  },
};

/** tcp.serversTransports: not described upstream (proxyProtocol there since Traefik 3.5.2). */
const tcpServersTransportSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    dialKeepAlive: durationOrSeconds,
    dialTimeout: durationOrSeconds,
    terminationDelay: durationOrSeconds,
    proxyProtocol: {
      type: "object",
      additionalProperties: false,
      required: ["version"],
      properties: { version: { enum: [1, 2] } },
    },
    tls: { type: "object" },
  },
};

/** Keys Traefik accepts under http and tcp; the upstream schema leaves both sections open. */
const SECTION_KEYS: Readonly<Record<string, readonly string[]>> = {
  http: ["routers", "services", "middlewares"],
  tcp: ["routers", "services", "middlewares", "serversTransports"],
};

// ---------------------------------------------------------------------------------------
// Compiled validators, built once.

interface Validators {
  static: ValidateFunction;
  staticTopLevel: readonly string[];
  dynamic: ValidateFunction;
  redis: ValidateFunction;
  ipv6Subnet: ValidateFunction;
  tcpMiddleware: ValidateFunction;
  tcpServersTransport: ValidateFunction;
  routerTlsKeys: { http: readonly string[]; tcp: readonly string[] };
  dynamicSchema: JsonSchema;
}

type JsonSchema = Record<string, any>;

let compiled: Validators | undefined;

function readSchema(file: string): JsonSchema {
  return JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, file), "utf8"));
}

function validators(): Validators {
  if (compiled) return compiled;
  const ajv = new Ajv({ allErrors: true });
  ajv.addFormat("address-or-cidr", isAddressOrCidr);
  const staticSchema = readSchema("traefik-v3.json");
  const dynamicSchema = readSchema("traefik-v3-file-provider.json");
  const tlsKeys = (router: string) =>
    Object.keys(dynamicSchema.definitions[router].properties.tls.properties);
  compiled = {
    static: ajv.compile(staticSchema),
    staticTopLevel: Object.keys(staticSchema.properties),
    dynamic: ajv.compile(dynamicSchema),
    redis: ajv.compile(redisSchema),
    ipv6Subnet: ajv.compile(ipv6SubnetSchema),
    tcpMiddleware: ajv.compile(tcpMiddlewareSchema),
    tcpServersTransport: ajv.compile(tcpServersTransportSchema),
    routerTlsKeys: { http: tlsKeys("httpRouter"), tcp: tlsKeys("tcpRouter") },
    dynamicSchema,
  };
  return compiled;
}

// ---------------------------------------------------------------------------------------
// Readable errors.

/**
 * Ajv's raw errors for a `oneOf` (every Traefik middleware and service is one) include
 * every branch that failed: "must match exactly one schema" and, from each other branch,
 * "unknown key rateLimit". Those are consequences; the cause is the error inside.
 */
function readable(errors: readonly ErrorObject[] | null | undefined, base = ""): SchemaError[] {
  const flat = (errors ?? []).map((e) => {
    const unknown =
      e.keyword === "additionalProperties" ? String(e.params.additionalProperty) : undefined;
    return {
      path: base + e.instancePath + (unknown === undefined ? "" : pointer(unknown)),
      message: unknown === undefined ? (e.message ?? e.keyword) : `unknown key "${unknown}"`,
      keyword: e.keyword,
    };
  });
  const within = (inner: string, outer: string) => inner === outer || inner.startsWith(`${outer}/`);
  const consequence = (e: (typeof flat)[number]) =>
    (e.keyword === "oneOf" && flat.some((o) => o !== e && within(o.path, e.path))) ||
    (e.keyword === "additionalProperties" &&
      flat.some(
        (o) => o !== e && within(o.path, e.path) && (o.path !== e.path || o.keyword !== e.keyword),
      ));

  const byPath = new Map<string, string[]>();
  for (const e of flat.filter((e) => !consequence(e))) {
    const messages = byPath.get(e.path) ?? [];
    if (!messages.includes(e.message)) messages.push(e.message);
    byPath.set(e.path, messages);
  }
  return [...byPath].map(([p, messages]) => new SchemaError(p, messages.join("; ")));
}

function check(validate: ValidateFunction, value: unknown, base: string): SchemaError[] {
  return validate(value) ? [] : readable(validate.errors, base);
}

const pointer = (...parts: string[]) =>
  parts.map((p) => `/${p.replace(/~/g, "~0").replace(/\//g, "~1")}`).join("");

const isObject = (v: unknown): v is Record<string, any> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

// ---------------------------------------------------------------------------------------
// Static configuration.

/** Validates a static configuration (traefik.yml) against the Traefik v3 schema; [] = valid. */
export function validateStatic(config: unknown): SchemaError[] {
  const v = validators();
  const errors = check(v.static, config, "");

  // The schema's root has no additionalProperties: false, so a misspelt top-level section
  // (entrypoints, certificateResolvers) would pass and be ignored by Traefik.
  if (isObject(config)) {
    for (const key of Object.keys(config)) {
      if (!v.staticTopLevel.includes(key))
        errors.push(new SchemaError(pointer(key), `unknown key "${key}"`));
    }
  }
  return errors;
}

// ---------------------------------------------------------------------------------------
// Dynamic configuration.

/** Validates a dynamic configuration (file provider, or the tree labels produce); [] = valid. */
export function validateDynamic(config: unknown): SchemaError[] {
  const v = validators();
  if (!isObject(config)) return [new SchemaError("", "must be an object")];
  const rest = structuredClone(config);
  const errors: SchemaError[] = [];

  for (const [section, allowed] of Object.entries(SECTION_KEYS)) {
    if (!isObject(rest[section])) continue;
    for (const key of Object.keys(rest[section])) {
      if (!allowed.includes(key))
        errors.push(new SchemaError(pointer(section, key), `unknown key "${key}"`));
    }
  }

  errors.push(...cutHttpMiddlewareGaps(rest, v));
  errors.push(...cutTcpGaps(rest, v));
  errors.push(...checkRouterTls(rest, v));
  errors.push(...check(v.dynamic, rest, ""));
  return errors;
}

/** rateLimit.redis and ipStrategy.ipv6Subnet: checked here, then removed for the upstream schema. */
function cutHttpMiddlewareGaps(tree: Record<string, any>, v: Validators): SchemaError[] {
  const errors: SchemaError[] = [];
  const middlewares = isObject(tree.http?.middlewares) ? tree.http.middlewares : {};
  for (const [name, middleware] of Object.entries<Record<string, any>>(middlewares)) {
    if (!isObject(middleware)) continue;
    const rateLimit = middleware.rateLimit;
    if (isObject(rateLimit) && "redis" in rateLimit) {
      const at = pointer("http", "middlewares", name, "rateLimit", "redis");
      errors.push(...check(v.redis, rateLimit.redis, at));
      if (Number(rateLimit.average ?? 0) === 0) {
        errors.push(
          new SchemaError(
            pointer("http", "middlewares", name, "rateLimit", "average"),
            "must be above 0 with redis: Traefik's Redis backend answers every request with 429 when average is 0",
          ),
        );
      }
      delete rateLimit.redis;
    }
    const strategies: [string[], unknown][] = [
      [["rateLimit", "sourceCriterion", "ipStrategy"], rateLimit?.sourceCriterion?.ipStrategy],
      [["ipAllowList", "ipStrategy"], middleware.ipAllowList?.ipStrategy],
    ];
    for (const [where, strategy] of strategies) {
      if (!isObject(strategy) || !("ipv6Subnet" in strategy)) continue;
      errors.push(
        ...check(
          v.ipv6Subnet,
          strategy.ipv6Subnet,
          pointer("http", "middlewares", name, ...where, "ipv6Subnet"),
        ),
      );
      delete strategy.ipv6Subnet;
    }
  }
  return errors;
}

/** tcp.middlewares and tcp.serversTransports: checked here, then removed for the upstream schema. */
function cutTcpGaps(tree: Record<string, any>, v: Validators): SchemaError[] {
  const errors: SchemaError[] = [];
  if (!isObject(tree.tcp)) return errors;
  const parts: [string, ValidateFunction][] = [
    ["middlewares", v.tcpMiddleware],
    ["serversTransports", v.tcpServersTransport],
  ];
  for (const [part, validate] of parts) {
    if (!(part in tree.tcp)) continue;
    const entries = tree.tcp[part];
    if (!isObject(entries)) {
      errors.push(new SchemaError(pointer("tcp", part), "must be an object"));
    } else {
      for (const [name, entry] of Object.entries(entries))
        errors.push(...check(validate, entry, pointer("tcp", part, name)));
    }
    delete tree.tcp[part];
  }
  return errors;
}

/**
 * Router tls blocks have no additionalProperties: false upstream, so a wrongly cased
 * `certresolver` would pass and Traefik would never ask for a certificate.
 */
function checkRouterTls(tree: Record<string, any>, v: Validators): SchemaError[] {
  const errors: SchemaError[] = [];
  for (const section of ["http", "tcp"] as const) {
    const routers = tree[section]?.routers;
    if (!isObject(routers)) continue;
    for (const [name, router] of Object.entries<Record<string, any>>(routers)) {
      if (!isObject(router?.tls)) continue;
      for (const key of Object.keys(router.tls)) {
        if (v.routerTlsKeys[section].includes(key)) continue;
        errors.push(
          new SchemaError(pointer(section, "routers", name, "tls", key), `unknown key "${key}"`),
        );
      }
    }
  }
  return errors;
}

/**
 * Checks that every router's service and middlewares, and every TCP service's
 * serversTransport, exist in the tree (a provider suffix such as @docker or @file is
 * ignored: the tree is the merge of both providers). Traefik reports these only at run time.
 */
export function validateReferences(config: Record<string, any>): SchemaError[] {
  const errors: SchemaError[] = [];
  const local = (ref: string) => ref.replace(/@(docker|file)$/, "");
  for (const section of ["http", "tcp"] as const) {
    const part = config[section] ?? {};
    for (const [name, router] of Object.entries<Record<string, any>>(part.routers ?? {})) {
      if (!part.services?.[local(router.service ?? "")]) {
        errors.push(
          new SchemaError(
            pointer(section, "routers", name, "service"),
            `no ${section} service "${router.service}"`,
          ),
        );
      }
      (router.middlewares ?? []).forEach((m: string, i: number) => {
        if (part.middlewares?.[local(m)]) return;
        errors.push(
          new SchemaError(
            pointer(section, "routers", name, "middlewares", String(i)),
            `no ${section} middleware "${m}"`,
          ),
        );
      });
    }
  }
  for (const [name, service] of Object.entries<Record<string, any>>(config.tcp?.services ?? {})) {
    const transport = service.loadBalancer?.serversTransport;
    if (transport && !config.tcp?.serversTransports?.[local(transport)]) {
      errors.push(
        new SchemaError(
          pointer("tcp", "services", name, "loadBalancer", "serversTransport"),
          `no tcp serversTransport "${transport}"`,
        ),
      );
    }
  }
  return errors;
}

// ---------------------------------------------------------------------------------------
// Key casing and value types, for turning Docker labels into a dynamic configuration.

export type LeafKind = "array" | "integer" | "number" | "boolean" | "string" | "object";

export interface KeyInfo {
  /** The key as Traefik spells it (rateLimit, sourceCriterion, ...). */
  canonical: string;
  /** Every type the schemas give a property of this name. */
  kinds: ReadonlySet<LeafKind>;
}

let keyIndex: ReadonlyMap<string, KeyInfo> | undefined;

/**
 * Every property name the dynamic-configuration schemas know (upstream plus this module's
 * gap schemas), by lower-case name: Docker labels are case-insensitive, the file provider
 * is not.
 */
export function dynamicKeyIndex(): ReadonlyMap<string, KeyInfo> {
  if (keyIndex) return keyIndex;
  const index = new Map<string, { canonical: string; kinds: Set<LeafKind> }>();
  const add = (name: string, kinds: LeafKind[]) => {
    const entry = index.get(name.toLowerCase()) ?? { canonical: name, kinds: new Set<LeafKind>() };
    for (const k of kinds) entry.kinds.add(k);
    index.set(name.toLowerCase(), entry);
  };
  const kindsOf = (schema: JsonSchema): LeafKind[] => {
    if (schema.enum)
      return [
        ...new Set(schema.enum.map((e: unknown) => (Number.isInteger(e) ? "integer" : typeof e))),
      ] as LeafKind[];
    if (schema.oneOf) return schema.oneOf.flatMap(kindsOf);
    if (schema.$ref) return ["object"];
    return ([] as string[]).concat(schema.type ?? []) as LeafKind[];
  };
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(walk);
    if (!isObject(node)) return;
    if (isObject(node.properties)) {
      for (const [name, schema] of Object.entries<JsonSchema>(node.properties))
        add(name, kindsOf(schema));
    }
    Object.values(node).forEach(walk);
  };
  walk(validators().dynamicSchema);
  [redisSchema, ipv6SubnetSchema, tcpMiddlewareSchema, tcpServersTransportSchema].forEach(walk);
  add("ipv6Subnet", ["integer"]);
  add("serversTransports", ["object"]);
  keyIndex = index;
  return keyIndex;
}
