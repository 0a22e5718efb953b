// The real Pulumi CLI against a throw-away copy of the project with a file backend:
// the qemu stack's lifecycle, the production stack reusing the same store, and what a config
// change makes preview name.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";

const built = (p: Project, since: number) => p.journal().slice(since).filter((e) => e.event === "built").map((e) => String(e.artifact).split("/")[0]);
const boots = (p: Project, since: number) => p.journal().slice(since).filter((e) => e.event === "booted").length;

test("qemu and production stacks under the real pulumi CLI", { timeout: 40 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());

  await t.test("qemu: init, preview shows creates", async () => {
    await p.pulumi(["stack", "init", "qemu"]);
    const steps = await p.previewSteps("qemu");
    assert.deepEqual(steps, ["create boot", "create goprograms", "create initramfs", "create media", "create rootfs", "create uki"]);
  });

  await t.test("qemu: up creates and boots", async () => {
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.match(res.stdout, /7 created/);
    assert.deepEqual([...new Set(built(p, 0))].sort(), ["disk", "goprograms", "initramfs", "release", "rootfs", "rootfs-packages", "segments", "uki"]);
    assert.equal(boots(p, 0), 1);
  });

  await t.test("qemu: a second preview and up change nothing and rebuild nothing", async () => {
    assert.deepEqual(await p.previewSteps("qemu"), []);
    const mark = p.journal().length;
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.match(res.stdout, /7 unchanged/);
    assert.deepEqual(built(p, mark), []);
    assert.equal(boots(p, mark), 0);
  });

  await t.test("production: its own config, every artifact reused from the shared store", async () => {
    await p.pulumi(["stack", "init", "production"]);
    await p.pulumi(["config", "set", "ramroot:target", "production", "--stack", "production"]);
    assert.deepEqual(await p.previewSteps("production"), ["create goprograms", "create initramfs", "create rootfs", "create uki"]);
    const mark = p.journal().length;
    const res = await p.pulumi(["up", "--yes", "--stack", "production"]);
    assert.match(res.stdout, /reused/);
    assert.deepEqual(built(p, mark), [], "production rebuilt something the qemu stack had built");
    const q = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    const prod = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "production"])).stdout);
    assert.equal(prod.ukiSha256, q.ukiSha256);
    assert.equal(prod.ukiPath, q.ukiPath);
  });

  await t.test("qemu: a cmdline change names exactly the Uki and what follows; the initramfs is untouched", async () => {
    await p.pulumi(["config", "set", "ramroot:cmdline", "rdinit=/sbin/init console=ttyAMA0 loglevel=4", "--stack", "qemu"]);
    assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update media", "update uki"]);
    const before = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    const mark = p.journal().length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.deepEqual(built(p, mark).sort(), ["disk", "release", "uki"]);
    assert.equal(boots(p, mark), 1);
    const after = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    assert.equal(after.initramfsHash, before.initramfsHash);
    assert.notEqual(after.ukiSha256, before.ukiSha256);
  });

  await t.test("preview --diff names the system file that changed, and nothing once it is back", async () => {
    const hosts = path.join(p.dir, "system", "root", "etc", "hosts");
    const before = fs.readFileSync(hosts);
    fs.appendFileSync(hosts, "10.0.0.9 nas-backup\n");
    try {
      const res = await p.pulumi(["preview", "--diff", "--stack", "qemu"]);
      // Pulumi lists the map's entries and marks the changed ones with ~.
      assert.match(res.stdout, /~ root\/etc\/hosts\s*:/, `the diff does not name root/etc/hosts:\n${res.stdout}`);
      assert.match(res.stdout, /^\s+root\/etc\/hostname\s*:/m, "the unchanged files are not listed");
      assert.equal(res.stdout.match(/~ root\//g)?.length, 1, "an unchanged file is shown as changed");
    } finally {
      fs.writeFileSync(hosts, before);
    }
    assert.deepEqual(await p.previewSteps("qemu"), []);
  });

  await t.test("destroy removes the stacks' resources and keeps the store and the persistence disk", async () => {
    const q = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
    const res = await p.pulumi(["destroy", "--yes", "--stack", "qemu"]);
    assert.match(res.stdout, /7 deleted/);
    assert.match(res.stdout, /persistence disk .* is kept/);
    await p.pulumi(["destroy", "--yes", "--stack", "production"]);
    assert.ok(fs.existsSync(q.persist), "the persistence disk was deleted");
    assert.ok(fs.existsSync(q.ukiPath), "the store lost the UKI");
  });
});
