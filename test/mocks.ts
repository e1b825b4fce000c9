/** The mock runtime for tests: the same recorder the offline render uses. */
import * as pulumi from "@pulumi/pulumi";

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

/** Waits until an Output settles; returns its value (secrets unwrapped) and whether it was secret. */
export async function settle<T>(output: pulumi.Input<T>): Promise<{ value: T; secret: boolean }> {
  const o = pulumi.output(output);
  const [value, secret] = await Promise.all([
    new Promise<T>((resolve) => o.apply((v) => resolve(v as T))),
    pulumi.isSecret(o),
  ]);
  return { value, secret };
}
