/**
 * Pulumi's mock runtime, recording every resource the program registers: its type, name,
 * parent, provider, dependencies and inputs. Used by the offline render and by the tests.
 */
import * as pulumi from "@pulumi/pulumi";
import { PROJECT } from "../config";

/** A resource as the program registered it. */
export interface Registered {
  type: string;
  name: string;
  urn: string;
  /** Whether it is a custom (provider) resource rather than a component. */
  custom: boolean;
  parent?: string;
  /** The provider reference as the engine gets it: "<urn>::<id>". */
  provider?: string;
  /** URNs this resource depends on explicitly or through its inputs. */
  dependencies: string[];
  /** Inputs as the provider would receive them; secrets are wrapped (see isSecretValue). */
  inputs: Record<string, any>;
}

/** The signature the SDK puts on a serialized secret value. */
const SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";

export function isSecretValue(value: unknown): value is { value: unknown } {
  return (
    typeof value === "object" &&
    value !== null &&
    (value as Record<string, unknown>)[SECRET_SIG_KEY] === SECRET_SIG
  );
}

/** Replaces every secret in a value with `replacement`. */
export function maskSecrets(value: unknown, replacement: unknown = "[secret]"): unknown {
  if (isSecretValue(value)) return replacement;
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v, replacement));
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, maskSecrets(v, replacement)]),
    );
  }
  return value;
}

/**
 * Removes the secret wrappers, keeping the values (for tests that check what was wrapped);
 * as loosely typed as the recorded inputs it unwraps.
 */
export function unwrapSecrets(value: unknown): any {
  if (isSecretValue(value)) return unwrapSecrets(value.value);
  if (Array.isArray(value)) return value.map(unwrapSecrets);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unwrapSecrets(v)]));
  }
  return value;
}

/** Output-only properties the providers would fill in; without them they stay undefined. */
function computedState(
  type: string,
  name: string,
  inputs: Record<string, any>,
): Record<string, unknown> {
  switch (type) {
    case "docker:index/remoteImage:RemoteImage":
      return { imageId: `sha256:${name}`, repoDigest: `${inputs.name}@sha256:${"0".repeat(64)}` };
    case "docker:index/network:Network":
      return { name: inputs.name ?? name };
    case "docker:index/container:Container":
      return { name: inputs.name ?? name };
    case "command:remote:Command":
      return { stdout: "", stderr: "" };
    case "proxmoxve:index/containerLegacy:ContainerLegacy":
      return { vmId: inputs.vmId, ipv4: {}, ipv6: {} };
    case "proxmoxve:download/file:File":
      return { fileName: inputs.fileName, size: 1 };
    default:
      return {};
  }
}

interface Meta {
  urn: string;
  parent?: string;
  provider?: string;
  custom: boolean;
  dependencies: string[];
}

const registered: Registered[] = [];
const metaByKey = new Map<string, Meta>();

interface RegisterRequest {
  getType(): string;
  getName(): string;
  getParent(): string;
  getProvider(): string;
  getCustom(): boolean;
  getDependenciesList(): string[];
  getPropertydependenciesMap(): { forEach(f: (deps: { getUrnsList(): string[] }) => void): void };
}

/**
 * Installs the mock runtime for `stack`. Resources registered afterwards are recorded; call
 * `settled()` to wait until the program's registrations are done.
 */
export async function installMocks(stack = "dev"): Promise<void> {
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        const key = `${args.type}::${args.name}`;
        const meta = metaByKey.get(key) ?? {
          urn: `urn:pulumi:${stack}::${PROJECT}::${args.type}::${args.name}`,
          custom: true,
          dependencies: [],
        };
        registered.push({ type: args.type, name: args.name, ...meta, inputs: args.inputs });
        const id = args.type.startsWith("pulumi:providers:")
          ? `${args.name}-provider-id`
          : `${args.name}-id`;
        return {
          id,
          state: { ...args.inputs, ...computedState(args.type, args.name, args.inputs) },
        };
      },
      call(args) {
        return args.inputs;
      },
    },
    PROJECT,
    stack,
    false,
  );

  // The mocks see neither parents nor dependencies; the monitor's requests carry both.
  const monitor = pulumi.runtime.getMonitor() as unknown as {
    registerResource(req: RegisterRequest, callback: unknown): unknown;
    newUrn(parent: string, type: string, name: string): string;
  };
  const register = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req, callback) => {
    const dependencies = new Set(req.getDependenciesList());
    req
      .getPropertydependenciesMap()
      .forEach((deps) => deps.getUrnsList().forEach((u) => dependencies.add(u)));
    metaByKey.set(`${req.getType()}::${req.getName()}`, {
      urn: monitor.newUrn(req.getParent(), req.getType(), req.getName()),
      parent: req.getParent() || undefined,
      provider: req.getProvider() || undefined,
      custom: req.getCustom(),
      dependencies: [...dependencies].sort(),
    });
    return register(req, callback);
  };
}

/** Waits until every registration the program started has reached the mocks. */
export async function settled(): Promise<void> {
  // waitForRPCs is exported by the SDK's settings module but left out of its typings.
  const settings = require("@pulumi/pulumi/runtime/settings") as { waitForRPCs(): Promise<void> };
  await settings.waitForRPCs();
}

/** Everything registered so far, in registration order. */
export function registeredResources(): readonly Registered[] {
  return registered;
}

export function clearRegistered(): void {
  registered.length = 0;
  metaByKey.clear();
}
