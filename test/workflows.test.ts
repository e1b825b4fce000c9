/**
 * The GitHub workflows: lint-clean, every action pinned to a commit, deployments gated by
 * environments, the Pulumi jobs gated on the token, and their shell and script steps run
 * here for real (with GitHub's output files faked) so that what they produce is checked.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";

import { PROJECT_DIR, listStacks } from "../config";

const WORKFLOW_DIR = path.join(PROJECT_DIR, ".github", "workflows");
const TOKEN_SECRET = "secrets.PULUMI_ACCESS_TOKEN";

interface Step {
  name?: string;
  id?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
}

interface Job {
  name?: string;
  needs?: string | string[];
  if?: string;
  environment?: string | { name: string };
  concurrency?: { group: string; "cancel-in-progress"?: boolean };
  permissions?: Record<string, string>;
  outputs?: Record<string, string>;
  steps: Step[];
}

interface Workflow {
  on: Record<string, unknown>;
  permissions?: Record<string, string>;
  jobs: Record<string, Job>;
}

const files = fs.readdirSync(WORKFLOW_DIR).filter((f) => /\.ya?ml$/.test(f));
const text = (file: string) => fs.readFileSync(path.join(WORKFLOW_DIR, file), "utf8");
const workflow = (file: string) => YAML.parse(text(file)) as Workflow;
const allJobs = files.flatMap((file) =>
  Object.entries(workflow(file).jobs).map(([id, job]) => ({ file, id, job })),
);
const allSteps = allJobs.flatMap(({ file, id, job }) =>
  job.steps.map((step) => ({ file, job: id, step })),
);

const needsOf = (job: Job) => [job.needs ?? []].flat();
const pulumiSteps = (job: Job) => job.steps.filter((s) => s.uses?.startsWith("pulumi/actions@"));

function run(
  command: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {},
) {
  const result = spawnSync(command, args, { encoding: "utf8", ...options });
  if (result.error) throw result.error;
  return result;
}

function installed(command: string): boolean {
  return spawnSync(command, ["--version"], { encoding: "utf8" }).error === undefined;
}

/** Runs a step's script as GitHub does (bash -e), with GITHUB_OUTPUT and the summary as files. */
function runStep(script: string, cwd: string, env: Record<string, string> = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "workflow-step-"));
  const output = path.join(dir, "output");
  const summary = path.join(dir, "summary");
  fs.writeFileSync(output, "");
  fs.writeFileSync(summary, "");
  const result = run("bash", ["--noprofile", "--norc", "-eo", "pipefail", "-c", script], {
    cwd,
    env: {
      PATH: process.env.PATH,
      HOME: os.tmpdir(),
      ...env,
      GITHUB_OUTPUT: output,
      GITHUB_STEP_SUMMARY: summary,
    },
  });
  const outputs = parseOutputs(fs.readFileSync(output, "utf8"));
  const stepSummary = fs.readFileSync(summary, "utf8");
  fs.rmSync(dir, { recursive: true, force: true });
  return { status: result.status, stderr: result.stderr, outputs, summary: stepSummary };
}

/** GITHUB_OUTPUT's two forms: `name=value` and `name<<DELIMITER` ... `DELIMITER`. */
function parseOutputs(content: string): Record<string, string> {
  const outputs: Record<string, string> = {};
  const lines = content.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const heredoc = /^([\w-]+)<<(.+)$/.exec(lines[i]);
    if (heredoc) {
      const end = lines.indexOf(heredoc[2], i + 1);
      outputs[heredoc[1]] = lines.slice(i + 1, end).join("\n");
      i = end;
      continue;
    }
    const simple = /^([\w-]+)=(.*)$/.exec(lines[i]);
    if (simple) outputs[simple[1]] = simple[2];
  }
  return outputs;
}

function step(file: string, jobId: string, predicate: (s: Step) => boolean): Step {
  const found = workflow(file).jobs[jobId].steps.find(predicate);
  if (!found) throw new Error(`${file}: job ${jobId} has no such step`);
  return found;
}

// ---------------------------------------------------------------------------------------

describe("workflow lint", () => {
  const yamllint = installed("yamllint");

  it("has yamllint (listed in .ci/packages.txt)", () => {
    const packages = fs.readFileSync(path.join(PROJECT_DIR, ".ci", "packages.txt"), "utf8");
    expect(packages.split("\n")).toContain("yamllint");
    expect(yamllint, "yamllint is not installed: apt-get install yamllint").toBe(true);
  });

  it("passes yamllint in strict mode", () => {
    const result = run(
      "yamllint",
      ["-s", "-f", "parsable", "-c", ".yamllint", ".github/workflows"],
      {
        cwd: PROJECT_DIR,
      },
    );
    expect(result.stdout + result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  it("uses a yamllint configuration that still finds problems", () => {
    const broken = "---\non:\n  push: {}\n  push: {}\njobs:   {}\n";
    const result = run("yamllint", ["-s", "-f", "parsable", "-c", ".yamllint", "-"], {
      cwd: PROJECT_DIR,
      input: broken,
    });
    expect(result.status).not.toBe(0);
    expect(result.stdout).toMatch(/key-duplicates/);
  });

  it.each(
    allSteps
      .filter(({ step }) => step.run !== undefined)
      .map(
        (s) =>
          [`${s.file} ${s.job}: ${s.step.name ?? s.step.run!.split("\n")[0]}`, s.step] as const,
      ),
  )("keeps expressions out of the script of %s", (_, s) => {
    // A ${{ }} in a script is pasted in before bash runs; values go through env instead.
    expect(s.run).not.toContain("${{");
  });

  it("scripts pass shellcheck", () => {
    expect(installed("shellcheck"), "shellcheck is not installed").toBe(true);
    for (const { file, job, step: s } of allSteps.filter(({ step }) => step.run !== undefined)) {
      const result = run("shellcheck", ["-s", "bash", "-f", "gcc", "-"], { input: s.run });
      expect(result.stdout, `${file} ${job}`).toBe("");
    }
  });
});

describe("action pins", () => {
  const uses = files.flatMap((file) =>
    text(file)
      .split("\n")
      .filter((line) => /^\s*(- )?uses:/.test(line))
      .map((line) => [file, line.trim()] as const),
  );

  it("finds the actions", () => {
    expect(uses.length).toBeGreaterThanOrEqual(allSteps.filter(({ step }) => step.uses).length);
  });

  it.each(uses)("%s: %s is a full commit with its version beside it", (_, line) => {
    expect(line).toMatch(/uses: [\w.-]+\/[\w./-]+@[0-9a-f]{40}\s+# v\d+(\.\d+)*$/);
  });

  it.each([
    ["actions/checkout", 4],
    ["actions/setup-node", 4],
    ["actions/github-script", 7],
    ["pulumi/actions", 6],
  ])("pins %s to one commit of major version %i everywhere", (action, major) => {
    const pins = new Set(
      uses.map(([, line]) => line).filter((line) => line.includes(` ${action}@`)),
    );
    expect(pins.size).toBe(1);
    expect([...pins][0]).toMatch(new RegExp(`# v${major}(\\.|$)`));
  });
});

describe("permissions", () => {
  it.each(files)("%s grants nothing by default", (file) => {
    expect(workflow(file).permissions).toEqual({});
  });

  it.each(allJobs.map((j) => [`${j.file} ${j.id}`, j.job] as const))(
    "%s asks for what it uses",
    (_, job) => {
      expect(job.permissions).toBeDefined();
      const grants = Object.entries(job.permissions ?? {});
      expect(
        grants.filter(([scope, level]) => level === "write" && scope !== "pull-requests"),
      ).toEqual([]);
      const comments =
        job.steps.some((s) => s.uses?.startsWith("actions/github-script@")) ||
        pulumiSteps(job).some((s) => s.with?.["comment-on-pr"] === true);
      expect(job.permissions?.["pull-requests"] === "write").toBe(comments);
    },
  );
});

describe("the Pulumi token gate", () => {
  const gated = allJobs.filter(({ job }) => pulumiSteps(job).length > 0);

  it("covers every job that runs Pulumi", () => {
    expect(gated.map((j) => `${j.file} ${j.id}`).sort()).toEqual([
      "deploy.yml dev",
      "deploy.yml prod",
      "pull-request.yml preview",
    ]);
  });

  /** The job whose own `if:` decides whether `job` runs: itself, or (skipped with it) a need. */
  function deciding(file: string, job: Job): Job {
    if (job.if !== undefined) return job;
    const needs = needsOf(job).map((id) => deciding(file, workflow(file).jobs[id]));
    return needs.find((need) => need.if !== undefined) ?? job;
  }

  it.each(gated.map((j) => [`${j.file} ${j.id}`, j] as const))(
    "%s runs only when PULUMI_ACCESS_TOKEN is set",
    (_, { file, job: gatedJob }) => {
      const job = deciding(file, gatedJob);
      // The gate comes first; further conditions may only narrow it.
      const condition = /^needs\.([\w-]+)\.outputs\.([\w-]+) == 'true'(?:\s*&&[^|]*)?$/.exec(
        (job.if ?? "").trim(),
      );
      expect(condition, job.if).not.toBeNull();
      const [, gateId, output] = condition!;
      expect(needsOf(job)).toContain(gateId);

      const gate = workflow(file).jobs[gateId];
      const check = gate.steps.find(
        (s) => s.env?.PULUMI_ACCESS_TOKEN === `\${{ ${TOKEN_SECRET} }}`,
      );
      expect(check, `a step of ${gateId} reads the secret`).toBeDefined();
      expect(gate.outputs?.[output]).toBe(`\${{ steps.${check!.id}.outputs.${output} }}`);

      const withToken = runStep(check!.run!, PROJECT_DIR, { PULUMI_ACCESS_TOKEN: "pul-0123" });
      const without = runStep(check!.run!, PROJECT_DIR, { PULUMI_ACCESS_TOKEN: "" });
      expect(withToken.outputs[output]).toBe("true");
      expect(without.outputs[output]).toBe("false");
      expect(without.summary).toMatch(/No PULUMI_ACCESS_TOKEN/);
    },
  );

  it("never previews a fork's pull request (its code would run on the homelab's runner)", () => {
    const { preview } = workflow("pull-request.yml").jobs;
    expect(preview.if).toMatch(
      /&&\s*github\.event\.pull_request\.head\.repo\.full_name == github\.repository\s*$/,
    );
  });

  it("makes prod wait for dev, which is gated", () => {
    const { jobs } = workflow("deploy.yml");
    expect(needsOf(jobs.prod)).toEqual(["dev"]);
    expect(jobs.dev.if).toBeDefined();
  });

  it.each(gated.map((j) => [`${j.file} ${j.id}`, j.job] as const))(
    "%s hands Pulumi the token and the policy pack",
    (_, job) => {
      for (const s of pulumiSteps(job)) {
        expect(s.env?.PULUMI_ACCESS_TOKEN).toBe(`\${{ ${TOKEN_SECRET} }}`);
        expect(s.with?.policyPacks).toBe("policy");
        expect(s.with?.diff).toBe(true);
      }
    },
  );
});

describe("deploy.yml", () => {
  const { on, jobs } = workflow("deploy.yml");
  const ups = Object.entries(jobs).filter(([, job]) =>
    pulumiSteps(job).some((s) => s.with?.command === "up"),
  );
  const stackOf = (job: Job) =>
    String(pulumiSteps(job)[0].with?.["stack-name"]).replace(/^\$\{\{[^}]+\}\}/, "");

  it("runs on pushes to main", () => {
    expect(on).toEqual({ push: { branches: ["main"] } });
  });

  it("updates every stack file's stack, dev first", () => {
    expect(ups.map(([, job]) => stackOf(job)).sort()).toEqual(listStacks().sort());
    expect(ups.map(([id]) => id)).toEqual(["dev", "prod"]);
  });

  it.each(ups)("%s waits for its environment's reviewers and runs alone", (id, job) => {
    const environment =
      typeof job.environment === "string" ? job.environment : job.environment?.name;
    expect(environment).toBe(id === "prod" ? "production" : id);
    expect(job.concurrency?.group).toContain(stackOf(job));
    expect(job.concurrency?.["cancel-in-progress"]).toBe(false);
  });
});

describe("pull-request.yml", () => {
  const { on, jobs } = workflow("pull-request.yml");

  it("runs on pull requests, with the tests, the render diff and the preview", () => {
    expect(Object.keys(on)).toEqual(["pull_request"]);
    expect(Object.keys(jobs)).toEqual(
      expect.arrayContaining(["test", "render-diff", "render-diff-comment", "preview"]),
    );
  });

  it("tests the way .ci/run does, on Node 20", () => {
    expect(jobs.test.steps.map((s) => s.run).filter(Boolean)).toEqual([".ci/run"]);
    expect(String((jobs.test as Job & { container?: string }).container)).toMatch(/^node:20-/);
  });

  it("lists exactly the stack files for the preview matrix", () => {
    const list = step("pull-request.yml", "stacks", (s) => s.id === "stacks");
    const { outputs } = runStep(list.run!, PROJECT_DIR);
    expect(JSON.parse(outputs.list)).toEqual(listStacks());
    expect(jobs.stacks.outputs?.list).toBe("${{ steps.stacks.outputs.list }}");
  });

  it("previews each stack with a comment on the pull request", () => {
    const [preview] = pulumiSteps(jobs.preview);
    expect(preview.with).toMatchObject({ command: "preview", "comment-on-pr": true });
    expect(String(preview.with?.["stack-name"])).toContain("${{ matrix.stack }}");
  });

  describe("render diff", () => {
    const diffStep = step("pull-request.yml", "render-diff", (s) => s.id === "diff");

    function trees(base: Record<string, string>, head: Record<string, string>) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "render-diff-"));
      for (const [tree, outFiles] of Object.entries({ base, head })) {
        for (const [name, content] of Object.entries(outFiles)) {
          fs.mkdirSync(path.dirname(path.join(dir, tree, "out", name)), { recursive: true });
          fs.writeFileSync(path.join(dir, tree, "out", name), content);
        }
      }
      fs.mkdirSync(path.join(dir, "head", "stacks"), { recursive: true });
      for (const stack of listStacks())
        fs.writeFileSync(path.join(dir, "head", "stacks", `Pulumi.${stack}.yaml`), "");
      return dir;
    }

    it("shows what changed between base and head in the comment", () => {
      const dir = trees(
        { "prod/traefik/static.yml": "entryPoints:\n  web: {}\n" },
        {
          "prod/traefik/static.yml": "entryPoints:\n  web: {}\n  websecure: {}\n",
          "dev/new.txt": "x\n",
        },
      );
      const { status, outputs, summary } = runStep(diffStep.run!, dir);
      fs.rmSync(dir, { recursive: true, force: true });

      expect(status).toBe(0);
      expect(outputs.comment.startsWith("<!-- homelab-smtp:render-diff -->")).toBe(true);
      expect(outputs.comment).toContain("+  websecure: {}");
      expect(outputs.comment).toContain("+++ head/out/dev/new.txt");
      for (const stack of listStacks()) expect(outputs.comment).toContain(stack);
      expect(summary).toBe(`${outputs.comment}\n`);
    });

    it("says so when nothing changed", () => {
      const same = { "dev/a.yml": "a: 1\n" };
      const dir = trees(same, same);
      const { status, outputs } = runStep(diffStep.run!, dir);
      fs.rmSync(dir, { recursive: true, force: true });
      expect(status).toBe(0);
      expect(outputs.comment).toMatch(/No change/);
      expect(outputs.comment).not.toContain("```");
    });

    it("cuts a diff too long for a comment", () => {
      const big = Array.from({ length: 5000 }, (_, i) => `line ${i} ${"x".repeat(20)}`).join("\n");
      const dir = trees({ "dev/big.txt": "" }, { "dev/big.txt": big });
      const { outputs } = runStep(diffStep.run!, dir);
      fs.rmSync(dir, { recursive: true, force: true });
      // GitHub refuses comments over 65536 characters.
      expect(outputs.comment.length).toBeLessThan(65536);
      expect(outputs.comment).toMatch(/Cut at \d+ bytes/);
    });
  });

  describe("sticky comment", () => {
    const script = String(
      step("pull-request.yml", "render-diff-comment", (s) => !!s.uses).with?.script,
    );
    const marker = "<!-- homelab-smtp:render-diff -->";

    async function post(existing: { id: number; login: string; body: string }[]) {
      const calls: { method: string; args: Record<string, unknown> }[] = [];
      const record = (method: string) => async (args: Record<string, unknown>) => {
        calls.push({ method, args });
        return { data: {} };
      };
      const github = {
        rest: {
          issues: {
            listComments: "listComments",
            createComment: record("create"),
            updateComment: record("update"),
          },
        },
        paginate: async () =>
          existing.map((c) => ({ id: c.id, body: c.body, user: { login: c.login } })),
      };
      const context = { repo: { owner: "o", repo: "r" }, issue: { number: 7 } };
      const body = `${marker}\nnew diff`;
      const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
      await new AsyncFunction("github", "context", "process", script)(github, context, {
        env: { COMMENT: body },
      });
      return { calls, body };
    }

    it("creates the comment the first time", async () => {
      const { calls, body } = await post([{ id: 1, login: "someone", body: `${marker} quoted` }]);
      expect(calls).toEqual([
        { method: "create", args: { owner: "o", repo: "r", issue_number: 7, body } },
      ]);
    });

    it("updates its own comment afterwards", async () => {
      const { calls, body } = await post([
        { id: 1, login: "someone", body: "looks good" },
        { id: 2, login: "github-actions[bot]", body: `${marker}\nold diff` },
      ]);
      expect(calls).toEqual([
        { method: "update", args: { owner: "o", repo: "r", comment_id: 2, body } },
      ]);
    });
  });
});
