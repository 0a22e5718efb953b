// The provider text Pulumi stores in state (`__provider`) must load and run in a fresh Node
// process, exactly as the dynamic-provider plugin loads it. Mocks capture the text; a child
// process in the project's dist/ folder compiles it and calls check and create on real inputs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { repo } from "../project";

test("the serialized provider loads and runs in a fresh node process", { timeout: 120_000 }, async (t) => {
  const captured: Record<string, any> = {};
  pulumi.runtime.setMocks(
    {
      newResource: (args) => {
        captured[args.name] = args.inputs;
        return { id: `${args.name}-id`, state: args.inputs };
      },
      call: (args) => args.inputs,
    },
    "ramroot",
    "qemu",
    false,
  );
  // Loaded after setMocks, as a program would be.
  const { Rootfs } = require("../../components/rootfs") as typeof import("../../components/rootfs");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-ser-"));
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const base = path.join(tmp, "base");
  fs.mkdirSync(path.join(base, "etc"), { recursive: true });
  fs.writeFileSync(path.join(base, "etc", "from-base"), "ser\n");
  const r = new Rootfs("rootfs", { base, skeleton: "system/root", arch: "aarch64" });
  await new Promise((resolve) => r.urn.apply(resolve));
  const text = captured.rootfs?.__provider;
  assert.equal(typeof text, "string", "no __provider was serialized");
  // Only builtins may be required by the serialized text itself: the plugin process resolves
  // nothing else from the provider text (packages are required inside the methods).
  for (const m of text.matchAll(/require\("([^"]+)"\)/g)) assert.ok(["path", "fs"].includes(m[1]), `the provider text requires ${m[1]}`);

  const textFile = path.join(tmp, "provider.js");
  fs.writeFileSync(textFile, text);
  const script = `
    const Module = require("module");
    const m = new Module(${JSON.stringify(textFile)});
    m.paths = Module._nodeModulePaths(process.cwd());
    m._compile(require("fs").readFileSync(${JSON.stringify(textFile)}, "utf8"), ${JSON.stringify(textFile)});
    const provider = m.exports.handler();
    (async () => {
      const inputs = { base: ${JSON.stringify(base)}, skeleton: "system/root", arch: "aarch64" };
      const checked = await provider.check({}, inputs);
      const created = await provider.create(checked.inputs);
      const diff = await provider.diff(created.id, created.outs, checked.inputs);
      console.log(JSON.stringify({ checked, created, diff }));
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const out = execFileSync(process.execPath, ["-e", script], {
    cwd: path.join(repo, "dist"),
    env: { ...process.env, RAMROOT_STORE: path.join(tmp, "store") },
    encoding: "utf8",
  });
  const { checked, created, diff } = JSON.parse(out.trim().split("\n").pop()!);
  assert.match(checked.inputs.hash, /^[0-9a-f]{64}$/);
  assert.equal(created.id, checked.inputs.hash);
  // The base tree with the skeleton over it.
  assert.equal(fs.readFileSync(path.join(created.outs.path, "etc", "from-base"), "utf8"), "ser\n");
  assert.equal(fs.readFileSync(path.join(created.outs.path, "etc", "hostname"), "utf8"), fs.readFileSync(path.join(repo, "system", "root", "etc", "hostname"), "utf8"));
  assert.equal(diff.changes, false);
});
