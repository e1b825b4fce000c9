/**
 * The entry point as `pulumi up` runs it: configuration from the engine (all values as text,
 * secrets decrypted and marked), the program built from it, outputs exported.
 */
import * as pulumi from "@pulumi/pulumi";
import { afterEach, describe, expect, it, vi } from "vitest";
import { loadStackFile, PROJECT } from "../config";
import { clearRegistered, registeredResources, settled } from "./mocks";
import { SECRETS } from "./stacks";

/** Hands the engine the dev stack file's values plus `changes`, as the Pulumi CLI would. */
function setEngineConfig(changes: Record<string, string> = {}): void {
  const values: Record<string, string> = {};
  for (const [key, raw] of loadStackFile("dev").values) values[`${PROJECT}:${key}`] = raw.text;
  for (const [key, text] of Object.entries({ ...SECRETS, ...changes })) {
    values[`${PROJECT}:${key}`] = text;
  }
  const secretKeys = Object.keys(SECRETS).map((key) => `${PROJECT}:${key}`);
  pulumi.runtime.setAllConfig(values, secretKeys);
}

afterEach(() => {
  pulumi.runtime.setAllConfig({});
  clearRegistered();
  vi.resetModules();
});

describe("index.ts", () => {
  it("builds the stack from the engine's configuration and exports where it answers", async () => {
    setEngineConfig();
    const program = await import("../index.js");
    await settled();

    const address = loadStackFile("dev").values.get("lxc.ipv4")!.text.split("/")[0];
    expect(program.address).toBe(address);
    expect(program.relayHostname).toBe(loadStackFile("dev").values.get("relay.hostname")!.text);
    const types = registeredResources().map((r) => r.type);
    expect(types).toContain("homelab:index:HomelabSmtp");
    expect(types.filter((t) => t === "docker:index/container:Container").length).toBeGreaterThan(1);
  });

  it("refuses a secret the engine holds in plain text, before registering anything", async () => {
    setEngineConfig();
    const values = pulumi.runtime.allConfig();
    // The same value, no longer in the engine's list of secret keys.
    pulumi.runtime.setAllConfig(
      values,
      Object.keys(SECRETS)
        .filter((key) => key !== "relay.clientLogins")
        .map((key) => `${PROJECT}:${key}`),
    );

    await expect(import("../index.js")).rejects.toThrow(
      /homelab-smtp:relay\.clientLogins in stacks\/Pulumi\.dev\.yaml: found a plain-text value/,
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(registeredResources()).toEqual([]);
  });

  it("reports every configuration problem at once, as a RunError (no stack trace)", async () => {
    setEngineConfig({ "rateLimit.burst": "0", "lxc.vmId": "42" });
    const error = await import("../index.js").then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(pulumi.RunError.isInstance(error)).toBe(true);
    expect(String(error)).toContain("homelab-smtp:rateLimit.burst");
    expect(String(error)).toContain("homelab-smtp:lxc.vmId");
  });
});
