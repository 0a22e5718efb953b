// shellcheck on every shell script of the project (scripts/, bin/ramroot; the deploy's host
// script has its own, stricter lint in test/host-script.test.ts), at severity warning: the notes
// and style hints below that (SC2015's A && B || C, SC2012's ls) are used knowingly there.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { repo } from "./project";

interface Finding { file: string; line: number; code: number; level: string; message: string }

/**
 * Findings that are meant, by file, code and the exact source line (not a line number, which
 * moves with every edit above it), each with its reason. A directive in the script would do
 * the same, but testsys.sh's own hash keys every cached test tree: editing it rebuilds them all.
 */
const MEANT: Array<{ file: string; code: number; line: string; why: string }> = [];

const scripts = () => [
  ...fs.readdirSync(path.join(repo, "scripts")).filter((f) => f.endsWith(".sh")).sort().map((f) => `scripts/${f}`),
  "bin/ramroot",
];

test("shellcheck finds nothing at severity warning in scripts/ and bin/ramroot, but the findings meant", () => {
  const files = scripts();
  assert.ok(files.includes("scripts/test.sh") && files.length > 5, `scripts found: ${files.join(" ")}`);
  // -x follows `. scripts/env.sh` (its source= directive is relative to the repository).
  const r = spawnSync("shellcheck", ["-x", "-S", "warning", "-f", "json1", ...files], { cwd: repo, encoding: "utf8" });
  assert.ok(!r.error, `shellcheck did not run (${r.error?.message}): npm run setup installs it (Debian package shellcheck)`);
  const found: Finding[] = JSON.parse(r.stdout).comments;
  const lines = new Map<string, string[]>();
  const source = (file: string, n: number) => {
    if (!lines.has(file)) lines.set(file, fs.readFileSync(path.join(repo, file), "utf8").split("\n"));
    return lines.get(file)![n - 1];
  };
  const meant = (f: Finding) => MEANT.some((m) => m.file === f.file && m.code === f.code && m.line === source(f.file, f.line));
  const unexpected = found.filter((f) => !meant(f)).map((f) => `${f.file}:${f.line}: SC${f.code} (${f.level}) ${f.message}`);
  assert.deepEqual(unexpected, []);
  // Each exception still matches something: one that no longer does is removed from MEANT.
  for (const m of MEANT) assert.ok(found.some((f) => f.file === m.file && f.code === m.code && source(f.file, f.line) === m.line), `no SC${m.code} in ${m.file} at ${JSON.stringify(m.line)} any more: remove it from MEANT`);
});
