import * as pulumi from "@pulumi/pulumi";
import { PROJECT } from "../config";

/** A resource as the program registered it. */
export interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
  provider?: string;
}

const registered: Registered[] = [];

/** Output-only properties the providers would fill in; without them they stay undefined. */
function computedState(type: string, name: string, inputs: Record<string, any>): Record<string, unknown> {
  switch (type) {
    case "docker:index/remoteImage:RemoteImage":
      return { imageId: `sha256:${name}`, repoDigest: `${inputs.name}@sha256:${"0".repeat(64)}` };
    case "docker:index/network:Network":
      return { name: inputs.name ?? name };
    case "command:remote:Command":
      return { stdout: "", stderr: "" };
    case "proxmoxve:CT/containerLegacy:ContainerLegacy":
      return { vmId: inputs.vmId, ipv4: {}, ipv6: {} };
    case "proxmoxve:download/file:File":
      return { fileName: inputs.fileName, size: 1 };
    default:
      return {};
  }
}

export async function installMocks(stack = "dev"): Promise<void> {
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({
          type: args.type,
          name: args.name,
          inputs: args.inputs,
          provider: args.provider,
        });
        const id = args.type.startsWith("pulumi:providers:") ? `${args.name}-provider-id` : `${args.name}-id`;
        return { id, state: { ...args.inputs, ...computedState(args.type, args.name, args.inputs) } };
      },
      call(args) {
        return args.inputs;
      },
    },
    PROJECT,
    stack,
    false,
  );
}

/** Everything registered so far (in registration order). */
export function registeredResources(): readonly Registered[] {
  return registered;
}

export function clearRegistered(): void {
  registered.length = 0;
}

/** Waits until an Output settles; returns its value (secrets unwrapped) and whether it was secret. */
export async function settle<T>(output: pulumi.Input<T>): Promise<{ value: T; secret: boolean }> {
  const o = pulumi.output(output);
  const [value, secret] = await Promise.all([
    new Promise<T>((resolve) => o.apply((v) => resolve(v as T))),
    pulumi.isSecret(o),
  ]);
  return { value, secret };
}
