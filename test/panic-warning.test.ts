// A trial deploy says when the image's cmdline has no panic=N (components/deploy.ts): a trial
// kernel that panics then waits for a power cycle instead of falling back by itself.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { panicWarning } from "../components/deploy";
import { cli } from "./rehearsal";
import { repo } from "./project";

test("panicWarning: none for panic=10 or panic=-1, a warning naming the fix for none or panic=0", { timeout: 300_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-panic-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tree = execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), "aarch64"], { encoding: "utf8" }).trim().split("\n").pop()!;
  const initrd = path.join(dir, "initrd");
  fs.writeFileSync(initrd, Buffer.alloc(512));
  const uki = (cmdline: string) => {
    const out = path.join(dir, `${fs.readdirSync(dir).length}.efi`);
    execFileSync(process.execPath, [cli, "uki", "--stub", path.join(tree, "boot", "efistub"), "--linux", path.join(tree, "boot", "vmlinuz"), "--initrd", initrd, "--cmdline", cmdline, "-o", out]);
    return out;
  };
  assert.equal(await panicWarning(uki("rdinit=/sbin/init console=ttyAMA0 panic=10")), undefined);
  assert.equal(await panicWarning(uki("panic=-1 rdinit=/sbin/init")), undefined);
  assert.match((await panicWarning(uki("rdinit=/sbin/init console=ttyAMA0")))!, /has no panic=N \("rdinit=\/sbin\/init console=ttyAMA0"\).*add panic=10 to ramroot:cmdline/);
  assert.match((await panicWarning(uki("rdinit=/sbin/init panic=0")))!, /has no panic=N/);
});
