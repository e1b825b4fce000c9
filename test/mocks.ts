/** The mock runtime for tests: the same recorder the offline render uses. */
import * as pulumi from "@pulumi/pulumi";
import { isSecretValue } from "../tools/mockRuntime";

export {
  clearRegistered,
  installMocks,
  isSecretValue,
  maskSecrets,
  registeredResources,
  settled,
  unwrapSecrets,
  type Registered,
} from "../tools/mockRuntime";

/** Every string in a value, with whether it sits inside a secret. */
export function strings(value: unknown, secret = false): { text: string; secret: boolean }[] {
  if (isSecretValue(value)) return strings(value.value, true);
  if (typeof value === "string") return [{ text: value, secret }];
  if (Array.isArray(value)) return value.flatMap((v) => strings(v, secret));
  if (typeof value === "object" && value !== null) {
    return Object.values(value).flatMap((v) => strings(v, secret));
  }
  return [];
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
