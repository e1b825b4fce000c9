/**
 * `npm run docs:config`: the README's configuration reference, made from Pulumi.yaml so
 * that the two cannot drift (a test compares them).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { declaredKeys, PROJECT_DIR } from "../config";

export const TABLE_START = "<!-- config-table:start (npm run docs:config) -->";
export const TABLE_END = "<!-- config-table:end -->";

function cell(text: string): string {
  // Angle brackets would read as HTML tags in rendered Markdown.
  return text
    .replace(/\s+/g, " ")
    .replace(/\|/g, "\\|")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .trim();
}

function shownDefault(value: unknown, secret: boolean | undefined): string {
  if (secret) return "(secret, required)";
  if (value === "") return '""';
  if (Array.isArray(value)) return value.length ? `\`${value.join(", ")}\`` : "`[]`";
  return `\`${String(value)}\``;
}

/** The reference table, one row per key in Pulumi.yaml's order. */
export function configTable(): string {
  const rows = [...declaredKeys()].map(
    ([key, d]) =>
      `| \`${key}\` | ${d.type} | ${shownDefault(d.default, d.secret)} | ${cell(d.description)} |`,
  );
  return ["| key | type | default | meaning |", "|---|---|---|---|", ...rows].join("\n");
}

/** README with the table between its markers replaced by the current one. */
export function withCurrentTable(readme: string): string {
  const start = readme.indexOf(TABLE_START);
  const end = readme.indexOf(TABLE_END);
  if (start < 0 || end < start)
    throw new Error(`README.md has no ${TABLE_START} ... ${TABLE_END} markers`);
  return `${readme.slice(0, start + TABLE_START.length)}\n${configTable()}\n${readme.slice(end)}`;
}

if (require.main === module) {
  const file = path.join(PROJECT_DIR, "README.md");
  fs.writeFileSync(file, withCurrentTable(fs.readFileSync(file, "utf8")));
  console.log("README.md: configuration table updated from Pulumi.yaml");
}
