/**
 * The program `pulumi up` runs: read and check the stack configuration once, then build
 * the relay from components.
 */
import * as pulumi from "@pulumi/pulumi";
import { fromPulumiRuntime, parseConfig } from "./config";

const config = parseConfig(fromPulumiRuntime());
for (const warning of config.warnings) pulumi.log.warn(warning);

export const stack = config.stack;
