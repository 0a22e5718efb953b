import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as path from "node:path";

const repo = path.resolve(__dirname, "..", "..", "..");
const lazy = path.join(repo, "dist", "components", "lazy-sdk.js");

// In a fresh Node each: which of the SDK's heavy modules loading @pulumi/pulumi pulls in.
function loaded(preload: string[], then = ""): { heavy: string[]; out: string } {
  const script = `${preload.map((p) => `require(${JSON.stringify(p)});`).join("")}const pulumi = require("@pulumi/pulumi");
const heavy = () => [...new Set(Object.keys(require.cache).map((k) => /node_modules\\/(@npmcli\\/arborist|typescript|pacote)\\//.exec(k)?.[1]).filter(Boolean))].sort();
(async () => { const before = heavy(); let out = ""; ${then} console.log(JSON.stringify({ heavy: before, out })); })().catch((e) => { console.error(e); process.exit(1); });`;
  return JSON.parse(execFileSync(process.execPath, ["--no-warnings", "-e", script], { cwd: repo, encoding: "utf8" }).trim().split("\n").pop()!);
}

test("lazy-sdk: the SDK loads without npm's arborist and the TypeScript compiler", () => {
  assert.deepEqual(loaded([]).heavy, ["@npmcli/arborist", "pacote", "typescript"], "the SDK no longer loads them by itself: lazy-sdk.ts is not needed any more");
  assert.deepEqual(loaded([lazy]).heavy, []);
});

test("lazy-sdk: what needs them still gets them (closure serialization, code paths)", () => {
  const r = loaded([lazy], `
    const f = await pulumi.runtime.serializeFunction(function add(x) { return x + 1; });
    const paths = await pulumi.runtime.computeCodePaths();
    out = JSON.stringify({ text: f.text.includes("return x + 1"), paths: paths.size > 0, heavy: heavy() });`);
  const out = JSON.parse(r.out);
  assert.equal(out.text, true);
  assert.equal(out.paths, true);
  assert.deepEqual(out.heavy, ["@npmcli/arborist", "pacote", "typescript"]);
});

test("lazy-sdk: a require from outside the SDK gets the real module at once", () => {
  const r = loaded([lazy], `
    const ts = require("typescript");
    out = JSON.stringify({ heavy: heavy(), ts: typeof ts.createSourceFile });`);
  assert.deepEqual(JSON.parse(r.out), { heavy: ["typescript"], ts: "function" });
});
