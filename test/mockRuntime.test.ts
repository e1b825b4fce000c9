import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { beforeEach, describe, expect, it } from "vitest";
import { clearRegistered, maskSecrets, registeredResources, settled, unwrapSecrets } from "./mocks";

class Pair extends pulumi.ComponentResource {
  constructor(name: string, secret: pulumi.Output<string>) {
    super("homelab:test:Pair", name);
    const provider = new docker.Provider(
      `${name}-docker`,
      { host: "ssh://root@127.0.0.1" },
      { parent: this },
    );
    const network = new docker.Network(
      `${name}-net`,
      { name: `${name}-net` },
      { parent: this, provider },
    );
    new docker.Container(
      `${name}-box`,
      {
        image: "busybox:1.37",
        networksAdvanced: [{ name: network.name }],
        envs: [pulumi.interpolate`TOKEN=${secret}`],
      },
      { parent: this, provider, dependsOn: [network] },
    );
    this.registerOutputs({});
  }
}

describe("the mock runtime's recorder", () => {
  beforeEach(() => clearRegistered());

  it("records parents, providers, dependencies and secret inputs", async () => {
    new Pair("p", pulumi.secret("s3cr3t"));
    await settled();
    const byName = new Map(registeredResources().map((r) => [r.name, r]));
    const box = byName.get("p-box")!;
    const net = byName.get("p-net")!;
    const provider = byName.get("p-docker")!;

    expect(box.parent).toBe(byName.get("p")!.urn);
    expect(byName.get("p")!.custom).toBe(false);
    expect(box.provider?.startsWith(`${provider.urn}::`)).toBe(true);
    expect(box.dependencies).toContain(net.urn);
    // A list holding a secret becomes a secret as a whole, as in a real deployment.
    expect(maskSecrets(box.inputs.envs)).toBe("[secret]");
    expect(unwrapSecrets(box.inputs.envs)).toEqual(["TOKEN=s3cr3t"]);
  });
});
