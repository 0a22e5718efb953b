// The store proves its contents, under the real Pulumi CLI. Each kind of
// artifact (an initramfs segment, its manifest, the UKI, the disk image, a file of the rootfs
// tree) truncated, with one bit flipped, and deleted: preview names it and says the resource
// changes, the next up makes it again (and nothing else), and nothing is built from it, booted
// or deployed meanwhile. A removed store is rebuilt whole; `store verify` names each bad
// artifact; `store gc` removes what no stack references and what killed builds left.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";
import { startSshd } from "./sshd";

const sha = (f: string) => createHash("sha256").update(fs.readFileSync(f)).digest("hex");
const since = (p: Project, mark: number) => p.journal().slice(mark);
const built = (p: Project, mark: number) => since(p, mark).filter((e) => e.event === "built").map((e) => String(e.artifact)).sort();
const boots = (p: Project, mark: number) => since(p, mark).filter((e) => e.event === "booted").length;
const outputs = async (p: Project, stack: string) => JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", stack])).stdout);
const flipBit = (file: string) => {
  const fd = fs.openSync(file, "r+");
  const b = Buffer.alloc(1);
  const at = Math.floor(fs.statSync(file).size / 2);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0x10;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
};
const damages = {
  truncated: (f: string) => fs.truncateSync(f, Math.floor(fs.statSync(f).size / 3)),
  "one bit flipped": flipBit,
  deleted: (f: string) => fs.rmSync(f),
};
/** A pid that no process has (a child that has exited). */
const deadPid = () => spawnSync("true").pid!;

test("the store proves its contents: damaged artifacts are named by preview and made again by up, never used", { timeout: 60 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const store = path.join(p.dir, ".ramroot", "store");
  const ramroot = (...args: string[]) => spawnSync(path.join(p.dir, "bin", "ramroot"), args, { encoding: "utf8", env: p.env });
  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  const o = await outputs(p, "qemu");

  // The artifacts of each kind, as the stack made them.
  const manifestName = fs.readdirSync(path.join(store, "initramfs")).filter((f) => f.endsWith(".json"));
  assert.equal(manifestName.length, 1);
  const manifest = path.join(store, "initramfs", manifestName[0]);
  const segments = JSON.parse(fs.readFileSync(manifest, "utf8")).segments.map((s: { file: string }) => path.join(store, s.file));
  const segment = segments.sort((a: string, b: string) => fs.statSync(b).size - fs.statSync(a).size)[0];
  const tree = path.join(store, "rootfs", o.rootfsHash);
  // A file of the skeleton (its own inode), and one linked from the packages tree (shared with it).
  const skeletonFile = path.join(tree, "etc", "inittab");
  const linked = spawnSync("find", [tree, "-type", "f", "-links", "+1", "-size", "+4k", "-not", "-path", "*/boot/*"], { encoding: "utf8" }).stdout.split("\n").filter(Boolean).sort()[0];
  assert.ok(linked, "the configured tree links no file from the packages tree");

  const kinds: Array<{ kind: string; file: string; resource: string; artifact: RegExp }> = [
    { kind: "segment", file: segment, resource: "initramfs", artifact: /^segments\// },
    { kind: "manifest", file: manifest, resource: "initramfs", artifact: /^initramfs\// },
    { kind: "UKI", file: o.ukiPath, resource: "uki", artifact: /^uki\// },
    { kind: "disk image", file: o.disk, resource: "media", artifact: /^disk\// },
    { kind: "rootfs tree file", file: skeletonFile, resource: "rootfs", artifact: /^rootfs\/[0-9a-f]{64}$/ },
    { kind: "rootfs file linked from the packages tree", file: linked, resource: "rootfs", artifact: /^rootfs(-packages)?\/[0-9a-f]{64}$/ },
  ];

  for (const k of kinds) {
    for (const [how, damage] of Object.entries(damages)) {
      await t.test(`${k.kind}, ${how}: preview names it, up makes it again, nothing else`, async () => {
        const before = sha(k.file);
        damage(k.file);
        const pre = await p.pulumi(["preview", "--stack", "qemu"]);
        // The line names the file (for a tree file: the file in the tree), and the resource changes.
        assert.ok(pre.stdout.includes(k.file), `preview does not name ${k.file}:\n${pre.stdout}`);
        assert.match(pre.stdout, /`pulumi up` makes it again/);
        const steps = await p.previewSteps("qemu");
        assert.ok(steps.includes(`update ${k.resource}`), `preview steps ${steps.join(", ")}`);
        const mark = p.journal().length;
        const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
        assert.match(res.stdout, /1 updated|2 updated/);
        const made = built(p, mark);
        assert.ok(made.some((a) => k.artifact.test(a)), `up did not make the ${k.kind} again: ${made.join(", ")}`);
        // Only the damaged artifact's resource works: the UKI, the disk and the boot stay.
        if (k.resource !== "uki") assert.ok(!made.some((a) => a.startsWith("uki/")), `the UKI was made again: ${made.join(", ")}`);
        assert.equal(boots(p, mark), 0, "the image was booted again");
        if (how !== "deleted") assert.ok(since(p, mark).some((e) => e.event === "damaged"), "no damaged event");
        assert.equal(sha(k.file), before, `the ${k.kind} made again is not the same bytes`);
        assert.deepEqual(await outputs(p, "qemu"), o);
        // And now nothing is left to do.
        assert.deepEqual(await p.previewSteps("qemu"), []);
      });
    }
  }

  await t.test("store verify names each bad artifact (exit 1); up repairs them all; verify passes", async () => {
    let r = ramroot("store", "verify");
    assert.equal(r.status, 0, r.stdout + r.stderr);
    fs.truncateSync(o.ukiPath, 1000);
    flipBit(segment);
    flipBit(o.disk);
    fs.rmSync(manifest);
    fs.appendFileSync(skeletonFile, "# edited in the store\n");
    const mark = p.journal().length;
    try {
      r = ramroot("store", "verify");
      assert.equal(r.status, 1, r.stdout + r.stderr);
      const rel = (f: string) => path.relative(store, f);
      for (const f of [o.ukiPath, segment, o.disk]) assert.match(r.stdout, new RegExp(`BAD ${rel(f).replace(/\./g, "\\.")}: .*${rel(f).replace(/\./g, "\\.")} is`), r.stdout);
      assert.match(r.stdout, new RegExp(`BAD ${rel(manifest).replace(/\./g, "\\.")}: .* is missing, and its record is there`));
      assert.match(r.stdout, new RegExp(`BAD rootfs/${o.rootfsHash}: .*etc/inittab is \\d+ bytes, its record says \\d+`));
      assert.match(r.stdout, /\d+ artifacts checked: 5 bad/);
      // inspect sees the damage too: the segment's zstd checksum, the UKI's record.
      r = ramroot("inspect", segment);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /is corrupted: .*checksum/);
      r = ramroot("inspect", o.ukiPath);
      assert.notEqual(r.status, 0);
    } finally {
      await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    }
    assert.equal(boots(p, mark), 0);
    r = ramroot("store", "verify");
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.deepEqual(await outputs(p, "qemu"), o);
  });

  await t.test("nothing is booted from a damaged disk image, nor built from a damaged input", async () => {
    // The handlers as the engine calls them, with the stack's own inputs: the check comes first.
    const state = JSON.parse((await p.pulumi(["stack", "export", "--stack", "qemu"])).stdout).deployment.resources;
    const inputsOf = (type: string) => state.find((r: any) => r.type.endsWith(`ramroot:${type}`)).inputs;
    const cwd = process.cwd();
    process.chdir(path.join(p.dir, "dist"));
    try {
      const { handlers: bootcheck } = await import(path.join(p.dir, "dist", "components", "bootcheck.js"));
      const { handlers: bootmedia } = await import(path.join(p.dir, "dist", "components", "bootmedia.js"));
      flipBit(o.disk);
      const t0 = Date.now();
      await assert.rejects(bootcheck.update("x", {}, { ...inputsOf("BootCheck"), marker: "another marker, so that it would boot" }), new RegExp(`bootcheck: not built from disk/[0-9a-f]{64}\\.img: .*is not the bytes it was made with`));
      assert.ok(Date.now() - t0 < 5000, "the check took as long as a boot");
      fs.truncateSync(o.ukiPath, 4096);
      await assert.rejects(bootmedia.update("x", {}, inputsOf("BootMedia")), /bootmedia: not built from uki\/[0-9a-f]{64}\.efi: .* is 4096 bytes, its record says/);
    } finally {
      process.chdir(cwd);
      await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    }
    assert.equal(sha(o.ukiPath), o.ukiSha256);
  });

  await t.test("a truncated UKI is made again before the production stack deploys it: the host gets the bytes that booted", async () => {
    const sshd = await startSshd();
    t.after(() => sshd.stop());
    const target = path.join(sshd.dir, "media", "usb", "EFI", "BOOT", "BOOTAA64.EFI");
    fs.mkdirSync(path.dirname(target), { recursive: true });
    await p.pulumi(["stack", "init", "production"]);
    const set = (k: string, v: string, ...flags: string[]) => p.pulumi(["config", "set", ...flags, `ramroot:${k}`, "--stack", "production", "--", v]);
    await set("host", "127.0.0.1");
    await set("sshPort", String(sshd.port));
    await set("bootPath", target);
    await set("hostKey", sshd.hostKey);
    await set("sshPrivateKey", sshd.clientKey, "--secret");
    fs.truncateSync(o.ukiPath, 100_000);
    const mark = p.journal().length;
    const res = await p.pulumi(["up", "--yes", "--stack", "production"]);
    assert.match(res.stdout, /uki\/[0-9a-f]{64}\.efi is damaged, made again: .* is 100000 bytes, its record says/);
    assert.deepEqual(built(p, mark).filter((a) => !a.startsWith("rootfs")), [`uki/${path.basename(o.ukiPath)}`]);
    assert.equal(sha(target), o.ukiSha256, "the host got other bytes than the ones that booted");
    assert.equal((await outputs(p, "production")).ukiSha256, o.ukiSha256);

    // Damaged again after the deploy: production's preview names it; up makes it again, sends nothing.
    flipBit(o.ukiPath);
    const pre = await p.pulumi(["preview", "--stack", "production"]);
    assert.ok(pre.stdout.includes(o.ukiPath), pre.stdout);
    const again = await p.pulumi(["up", "--yes", "--stack", "production"]);
    assert.doesNotMatch(again.stdout, /deployed build/);
    assert.equal(sha(o.ukiPath), o.ukiSha256);
  });

  await t.test("rm -rf .ramroot/store, then up: everything is made again and booted again; the outputs name files that exist", async () => {
    // Every resource of the stack made something in the store (the boot check: its record).
    const resources = JSON.parse((await p.pulumi(["stack", "export", "--stack", "qemu"])).stdout).deployment.resources
      .filter((r: any) => r.type.startsWith("pulumi-nodejs:dynamic/")).map((r: any) => `update ${r.urn.split("::").pop()}`).sort();
    fs.rmSync(store, { recursive: true, force: true });
    const steps = await p.previewSteps("qemu");
    assert.deepEqual(steps, resources);
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.match(res.stdout, new RegExp(`${resources.length} updated`));
    const kindsBuilt = new Set(built(p, 0).map((a) => a.split("/")[0]));
    for (const k of ["disk", "initramfs", "release", "rootfs", "rootfs-packages", "segments", "uki"]) assert.ok(kindsBuilt.has(k), `no ${k} made again`);
    assert.equal(boots(p, 0), 1);
    const now = await outputs(p, "qemu");
    for (const f of [now.ukiPath, now.disk]) assert.ok(fs.existsSync(f), `${f} does not exist`);
    assert.equal(now.ukiSha256, o.ukiSha256, "the UKI made again is not the same bytes");
    assert.ok(fs.existsSync(path.join(store, "booted", `${now.ukiSha256}.json`)), "no boot record");
    assert.equal(ramroot("store", "verify").status, 0);
    // The production stack's image is back too.
    const mark = p.journal().length;
    await p.pulumi(["up", "--yes", "--stack", "production"]);
    assert.deepEqual(built(p, mark), []);
  });

  await t.test("store gc: --dry-run lists, gc removes unreferenced artifacts and dead temporaries; both stacks then build nothing", async () => {
    // A cmdline change on qemu leaves its previous disk unreferenced (production still holds the UKI).
    await p.pulumi(["config", "set", "ramroot:cmdline", "rdinit=/sbin/init console=ttyAMA0 loglevel=5", "--stack", "qemu"]);
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    const now = await outputs(p, "qemu");
    // What a killed build leaves: a partial file and a partial tree, named after a pid that is gone.
    const pid = deadPid();
    const deadFile = path.join(store, "uki", `${"0".repeat(64)}.efi.tmp-${pid}-0badc0de`);
    const deadTree = path.join(store, "rootfs", `${"0".repeat(64)}.tmp-${pid}-0badc0de`);
    fs.writeFileSync(deadFile, "partial");
    fs.mkdirSync(path.join(deadTree, "etc"), { recursive: true });
    const live = path.join(store, "segments", `x.cpio.zst.tmp-${process.pid}-12345678`);
    fs.writeFileSync(live, "being written");
    const files = () => fs.readdirSync(store, { recursive: true }).map(String).sort();
    const before = files();

    let r = ramroot("store", "gc", "--dry-run");
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`would remove disk/${path.basename(o.disk).replace(".", "\\.")} .*no stack references it`));
    assert.match(r.stdout, /would remove uki\/0+\.efi\.tmp-\d+-0badc0de .*a temporary of a killed build/);
    assert.match(r.stdout, /would remove rootfs\/0+\.tmp-\d+-0badc0de/);
    assert.doesNotMatch(r.stdout, new RegExp(path.basename(o.ukiPath)), "the UKI production holds would be removed");
    assert.doesNotMatch(r.stdout, new RegExp(path.basename(now.ukiPath)));
    assert.doesNotMatch(r.stdout, /x\.cpio\.zst\.tmp/, "a live temporary would be removed");
    assert.deepEqual(files(), before, "--dry-run removed something");

    r = ramroot("store", "gc");
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.ok(!fs.existsSync(o.disk) && !fs.existsSync(deadFile) && !fs.existsSync(deadTree));
    assert.ok(fs.existsSync(o.ukiPath) && fs.existsSync(now.ukiPath) && fs.existsSync(now.disk) && fs.existsSync(live));
    fs.rmSync(live);
    assert.equal(ramroot("store", "verify").status, 0);

    const mark = p.journal().length;
    const q = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.match(q.stdout, /\d+ unchanged/);
    assert.doesNotMatch(q.stdout, /updated|created/);
    await p.pulumi(["up", "--yes", "--stack", "production"]);
    assert.deepEqual(built(p, mark), [], "a stack rebuilt something after gc");
  });
});
