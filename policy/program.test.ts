/**
 * The policy pack against what the real program registers: the whole stack is built under the
 * mock runtime for each example stack file, its Docker containers are handed to the policies
 * as the policy SDK would hand them, and the pack must pass the stack files as written and
 * catch a production stack switched to the staging CA.
 */
import type { ReportViolation } from "@pulumi/policy";
import { describe, expect, it, vi } from "vitest";

import { HomelabSmtp } from "../components/homelab";
import { RATE_LIMIT_MIDDLEWARE, ROLE_LABEL } from "../components/names";
import { ACME_CA } from "../config";
import { registeredResources, settled, type Registered } from "../test/mocks";
import { policyContainers, violations } from "../test/policyRun";
import { stackConfig } from "../test/stacks";
import { productionRealCa } from "./policies";
import { CONTAINER_TYPE } from "./rules";

let builds = 0;

/** Builds the program for `stack` (optionally with changed keys); returns its containers. */
async function containersOf(stack: string, changes: Record<string, string> = {}) {
  const config = stackConfig(stack, changes);
  const name = `policy-${stack}-${++builds}`;
  new HomelabSmtp(name, { config });
  await settled();
  const ours = (r: Registered) => r.type === CONTAINER_TYPE && r.name.startsWith(`${name}-`);
  const containers = registeredResources().filter(ours);
  const roles = containers
    .flatMap((c) => c.inputs.labels ?? [])
    .filter((l: any) => l.label === ROLE_LABEL);
  expect(roles.map((l: any) => l.value).sort(), "the containers the rules are about").toEqual([
    "edge",
    "fail2ban",
    "relay",
    "relay-metrics",
  ]);

  return policyContainers(stack, containers);
}

describe("the policy pack on the program", () => {
  it.each(["dev", "prod"])("passes the %s stack as written", async (stack) => {
    const containers = await containersOf(stack);
    expect(await violations(containers)).toEqual([]);
  });

  it("fails prod switched to the staging CA", async () => {
    const containers = await containersOf("prod", { "acme.staging": "true" });
    const found = await violations(containers);
    expect(found).toEqual([expect.stringContaining(ACME_CA.staging)]);

    const spy = vi.fn<ReportViolation>();
    for (const c of containers) {
      await [productionRealCa.validateResource ?? []].flat()[0]({ ...c } as never, spy);
    }
    expect(spy).toHaveBeenCalledTimes(1);
  });

  it("fails when the rate limiter is taken off the program's HTTP routers", async () => {
    const containers = await containersOf("prod");
    const routerMiddlewares = /^traefik\.http\.routers\.[^.]+\.middlewares$/i;
    let routers = 0;
    const stripped = containers.map((c) => {
      const labels = ((c.props.labels ?? []) as { label: string; value: string }[]).map((l) => {
        if (!routerMiddlewares.test(l.label)) return l;
        routers++;
        const rest = l.value.split(",").filter((m) => !m.startsWith(RATE_LIMIT_MIDDLEWARE));
        return { ...l, value: rest.join(",") };
      });
      return { ...c, props: { ...c.props, labels } };
    });

    expect(routers, "the program labels HTTP routers").toBeGreaterThan(0);
    const found = await violations(stripped);
    expect(found).toHaveLength(routers);
    for (const message of found) expect(message).toMatch(/has no middlewares|first/);
  });
});
