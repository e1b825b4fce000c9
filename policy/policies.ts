/**
 * The policies of the pack: each wraps one rule from rules.ts in the shape @pulumi/policy
 * runs. Kept apart from index.ts, which starts the policy server when it is loaded.
 */
import type {
  PolicyResource,
  ReportViolation,
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationPolicy,
} from "@pulumi/policy";

import { RATE_LIMIT_MIDDLEWARE } from "../components/names";
import {
  CONTAINER_TYPE,
  containerFacts,
  dockerProviderOptIn,
  edgeRoutersRateLimited,
  entryPointsTrustNoOne,
  MIN_TRUSTED_PREFIX,
  PRODUCTION_STACK_PREFIX,
  productionUsesRealCa,
  relayPublishesNoHostPort,
  stackOfUrn,
  type ContainerFacts,
} from "./rules";

/** A resource policy over Docker containers from a rule that returns messages. */
function containerPolicy(
  policy: Omit<ResourceValidationPolicy, "validateResource" | "enforcementLevel">,
  rule: (container: ContainerFacts, args: ResourceValidationArgs) => string[],
): ResourceValidationPolicy {
  return {
    ...policy,
    enforcementLevel: "mandatory",
    validateResource: (args: ResourceValidationArgs, reportViolation: ReportViolation) => {
      if (args.type !== CONTAINER_TYPE) return;
      const container = containerFacts(args.urn, args.name, args.props);
      for (const message of rule(container, args)) reportViolation(message);
    },
  };
}

export const relayNoHostPort = containerPolicy(
  {
    name: "relay-no-host-port",
    description:
      "The relay publishes no port on the Docker host; clients reach it only through Traefik.",
    remediationSteps:
      "Remove every entry from the relay container's ports and do not use networkMode host.",
  },
  relayPublishesNoHostPort,
);

export const edgeRateLimitFirst: StackValidationPolicy = {
  name: "edge-rate-limit-first",
  description:
    "Every HTTP router on the edge (container labels and file-provider routers) runs the " +
    "rate-limit middleware first, and that middleware is defined.",
  remediationSteps:
    `Put ${RATE_LIMIT_MIDDLEWARE} first in each router's middlewares and define it with ` +
    "ratelimit labels on one container enabled for Traefik (or in a file-provider file).",
  enforcementLevel: "mandatory",
  validateStack: (args, reportViolation) => {
    const containers = args.resources
      .filter((r: PolicyResource) => r.type === CONTAINER_TYPE)
      .map((r: PolicyResource) => containerFacts(r.urn, r.name, r.props));
    for (const violation of edgeRoutersRateLimited(containers)) {
      reportViolation(violation.message, violation.urn);
    }
  },
};

export const noUntrustedForwarding = containerPolicy(
  {
    name: "no-untrusted-forwarding",
    description:
      "No entry point accepts X-Forwarded-For or PROXY headers from everyone (insecure, or a " +
      `trustedIPs range wider than /${MIN_TRUSTED_PREFIX}).`,
    remediationSteps: "List only the upstream proxies' addresses in traefik.trustedProxies.",
  },
  entryPointsTrustNoOne,
);

export const productionRealCa = containerPolicy(
  {
    name: "production-real-ca",
    description:
      `A production stack (name starting with ${PRODUCTION_STACK_PREFIX}) does not use ` +
      "Let's Encrypt's staging CA.",
    remediationSteps: "Set acme.staging to false in the production stack's configuration.",
  },
  // The policy SDK does not pass the stack name; every URN starts with it.
  (container, args) => productionUsesRealCa(container, stackOfUrn(args.urn)),
);

export const dockerNotExposedByDefault = containerPolicy(
  {
    name: "docker-not-exposed-by-default",
    description:
      "Traefik's Docker provider exposes only containers that opt in (exposedByDefault: false).",
    remediationSteps:
      "Set providers.docker.exposedByDefault to false in Traefik's static configuration.",
  },
  dockerProviderOptIn,
);

export const policies = [
  relayNoHostPort,
  edgeRateLimitFirst,
  noUntrustedForwarding,
  productionRealCa,
  dockerNotExposedByDefault,
];
