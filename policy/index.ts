/**
 * The homelab-smtp policy pack, run by the Pulumi CLI:
 *   pulumi preview --policy-pack policy
 * Loading this file starts the policy server, so tests import policies.ts instead.
 */
import { PolicyPack } from "@pulumi/policy";

import { policies } from "./policies";

new PolicyPack("homelab-smtp", { enforcementLevel: "mandatory", policies });
