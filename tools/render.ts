/**
 * `npm run render -- --stack <name>`: run the real program offline, under Pulumi's mock
 * runtime, and write what it would deploy to out/<name>/ for review. No credentials, no
 * Proxmox, no Pulumi CLI; encrypted values stay encrypted.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Command } from "commander";
import YAML from "yaml";
import { HomelabSmtp } from "../components/homelab";
import { validateDynamic, validateReferences, validateStatic } from "../components/traefikSchema";
import {
  ConfigError,
  HomelabConfig,
  loadStackFile,
  PROJECT,
  PROJECT_DIR,
  parseConfig,
} from "../config";
import { installMocks, registeredResources, settled } from "./mockRuntime";
import { outputFiles, renderFiles, resourcesJson, summary, traefikDir } from "./render/output";
import { exitQuietlyOnClosedPipe } from "./cli";

interface Options {
  stack: string;
  out: string;
  stackDir: string;
}

class UserError extends Error {}

function readConfig(options: Options): HomelabConfig {
  try {
    return parseConfig(loadStackFile(options.stack, options.stackDir), { allowUnsetSecrets: true });
  } catch (err) {
    if (err instanceof ConfigError) throw new UserError(err.message);
    throw err;
  }
}

/** Writes every file into a fresh folder, then swaps it in: a failed render leaves the old one. */
function writeAtomically(target: string, files: Record<string, string>): void {
  const staging = `${target}.partial-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  for (const [name, content] of Object.entries(files)) {
    const file = path.join(staging, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, content);
  }
  fs.rmSync(target, { recursive: true, force: true });
  fs.renameSync(staging, target);
}

async function render(options: Options): Promise<void> {
  const started = process.hrtime.bigint();
  const config = readConfig(options);

  await installMocks(options.stack);
  new HomelabSmtp(PROJECT, { config });
  await settled();
  const resources = registeredResources();

  const files = renderFiles(resources);
  const problems = files.edges.flatMap((edge) => {
    const dir = traefikDir(files, edge);
    return [
      ...validateStatic(YAML.parse(edge.staticYaml)).map((e) => `${dir}/static.yml: ${e}`),
      ...[...validateDynamic(edge.dynamic), ...validateReferences(edge.dynamic)].map(
        (e) => `${dir}/dynamic.yml: ${e}`,
      ),
    ];
  });
  if (problems.length > 0) {
    throw new UserError(
      `the rendered Traefik configuration does not validate:\n${problems.map((p) => `  - ${p}`).join("\n")}`,
    );
  }

  const target = path.resolve(options.out, options.stack);
  writeAtomically(target, { "resources.json": resourcesJson(resources), ...outputFiles(files) });

  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const shown = path.relative(process.cwd(), target) || target;
  console.log(`${PROJECT} ${options.stack}: rendered to ${shown}/ in ${ms.toFixed(0)} ms`);
  for (const line of summary(config, resources, files.edges[0].dynamic)) console.log(line);
}

exitQuietlyOnClosedPipe();
const program = new Command()
  .name("render")
  .description("Render what a stack would deploy, offline, into out/<stack>/")
  .requiredOption("-s, --stack <name>", "stack to render (stacks/Pulumi.<name>.yaml)")
  .option("-o, --out <dir>", "output folder", path.join(PROJECT_DIR, "out"))
  .option("--stack-dir <dir>", "folder holding the stack files", path.join(PROJECT_DIR, "stacks"))
  .action(async (options: Options) => {
    try {
      await render(options);
    } catch (err) {
      if (!(err instanceof UserError)) throw err;
      console.error(`render: ${err.message}`);
      process.exitCode = 1;
    }
  });

program.parseAsync().catch((err) => {
  console.error(err);
  process.exitCode = 2;
});
