/** The policy pack run over registered containers, as the policy SDK hands them over. */
import type { ReportViolation } from "@pulumi/policy";
import { PROJECT } from "../config";
import { policies } from "../policy/policies";
import { CONTAINER_TYPE } from "../policy/rules";
import { unwrapSecrets, type Registered } from "./mocks";

/** A container as a policy sees it. */
export interface PolicyContainer {
  type: string;
  name: string;
  urn: string;
  props: Record<string, unknown>;
}

/**
 * The Docker containers among `resources`, with their inputs unwrapped; URNs name `stack`, as
 * the engine's do (the mock runtime names every URN after the stack it was set up for).
 */
export function policyContainers(
  stack: string,
  resources: readonly Registered[],
): PolicyContainer[] {
  return resources
    .filter((r) => r.type === CONTAINER_TYPE)
    .map((r) => ({
      type: r.type,
      name: r.name,
      urn: `urn:pulumi:${stack}::${PROJECT}::${r.type}::${r.name}`,
      props: unwrapSecrets(r.inputs) as Record<string, unknown>,
    }));
}

/** Every violation the pack reports for `containers`: resource and stack policies alike. */
export async function violations(containers: readonly PolicyContainer[]): Promise<string[]> {
  const found: string[] = [];
  const report: ReportViolation = (message) => void found.push(message);
  for (const policy of policies) {
    if ("validateStack" in policy) {
      const resources = containers.map((c) => ({
        ...c,
        dependencies: [],
        propertyDependencies: {},
      }));
      await policy.validateStack({ resources, stackTags: new Map() } as never, report);
      continue;
    }
    for (const container of containers) {
      for (const validate of [policy.validateResource ?? []].flat()) {
        await validate({ ...container, stackTags: new Map() } as never, report);
      }
    }
  }
  return found;
}
