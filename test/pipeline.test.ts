// From a root filesystem tree to a UKI that UEFI boots from the ESP of a disk, each
// step a content-addressed resource, driven by the real pulumi CLI on the qemu stack.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";
import { execFileSync, spawnSync } from "node:child_process";
import { bootCheck } from "../src/boot/qemu";
import { handlers as rootfs } from "../components/rootfs";
import { handlers as initramfs } from "../components/initramfs";
import { handlers as uki } from "../components/uki";

const built = (p: Project, since: number) => p.journal().slice(since).filter((e) => e.event === "built").map((e) => String(e.artifact));
const outputs = async (p: Project, stack: string) => JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", stack])).stdout);
/** Every boot check ends with the guest powered off cleanly: fsck.vfat -n finds nothing. */
const assertClean = (persist: string) => {
  const r = spawnSync("fsck.vfat", ["-n", persist], { encoding: "utf8" });
  assert.equal(r.status, 0, `fsck.vfat -n ${persist} finds it dirty:\n${r.stdout}${r.stderr}`);
};

for (const arch of ["aarch64", "x86_64"] as const) {
  test(`${arch}: pulumi up builds and boots from an empty store; the persistence disk keeps state across boots`, { timeout: 20 * 60_000 }, async (t) => {
    const p = Project.create();
    t.after(() => p.remove());
    await p.pulumi(["stack", "init", "qemu"]);
    await p.pulumi(["config", "set", "ramroot:arch", arch, "--stack", "qemu"]);
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    const o = await outputs(p, "qemu");
    assert.match(o.buildId, /^[0-9a-f]{16}$/);
    // The guest printed the build id it read from its own /etc/os-release: the check's marker.
    assert.match(res.stdout, new RegExp(`console: ramroot: build ${o.buildId} up`));
    assert.match(res.stdout, /console: ramroot: persisted boots=1 \(was 0\) on \/media\/usb/);
    // ramroot's health report: this build, the stick mounted, no service failed; then a clean power-off.
    assert.match(res.stdout, new RegExp(`console: ramroot-health: begin 1 build=${o.buildId}`));
    assert.match(res.stdout, /console: ramroot-health: mount ok \/media\/usb UUID=B61B-19E7 vfat/);
    assert.match(res.stdout, /console: ramroot-health: result ok problems=0 mounts=1 services=17/);
    assert.match(res.stdout, /reported healthy, powered off in [\d.]+ s; the persistence image is clean/);
    assert.match(o.bootHealth, /^ramroot-health: begin 1 build=[0-9a-f]{16}\n[\s\S]*\nramroot-health: result ok problems=0 mounts=1 services=17$/);
    const record = JSON.parse(fs.readFileSync(path.join(p.dir, ".ramroot", "store", "booted", `${o.ukiSha256}.json`), "utf8"));
    assert.deepEqual(record.health, o.bootHealth.split("\n"));
    assertClean(o.persist);
    // A second boot of the same disk reads back what the first one wrote.
    const again = await bootCheck({ arch, disk: o.disk, persist: o.persist, marker: "ramroot: persisted boots=2 (was 1)", timeoutMs: 240_000, health: true, powerOff: true });
    assert.match(again.console, new RegExp(`ramroot: build ${o.buildId} up`));
    assert.equal(again.health!.result, "ok");
    assertClean(o.persist);
  });
}

test("a file changed in system/root rebuilds only its segment, and the guest sees it", { timeout: 20 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const root = path.join(p.dir, "system", "root");
  fs.writeFileSync(path.join(root, "etc", "ramroot-test"), "one\n");
  fs.writeFileSync(path.join(root, "etc", "local.d", "00-test.start"), '#!/bin/sh\necho "ramroot: test file says $(cat /etc/ramroot-test)"\n', { mode: 0o755 });
  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  const before = await outputs(p, "qemu");

  fs.writeFileSync(path.join(root, "etc", "ramroot-test"), "two\n");
  assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update initramfs", "update media", "update rootfs", "update uki"]);
  const mark = p.journal().length;
  const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  const segments = built(p, mark).filter((a) => a.startsWith("segments/"));
  assert.equal(segments.length, 1, `expected one segment recompressed, got ${segments.join(", ")}`);
  // The new rootfs is a fresh copy, but its listing gives its untouched files their stage-1
  // stamps: only segments with files the skeleton or setup.sh wrote are read again.
  const read = /\[initramfs[^\]]*\] (\d+) of (\d+) segments read/.exec(res.stdout);
  assert.ok(read, "the initramfs says how many segments it read");
  assert.ok(Number(read[1]) < Number(read[2]) / 2, `read ${read[1]} of ${read[2]} segments again`);
  assert.match(res.stdout, /console: ramroot: test file says two/);
  const after = await outputs(p, "qemu");
  assert.notEqual(after.ukiSha256, before.ukiSha256);
  assertClean(after.persist);
});

test("two builds of the same inputs into two empty stores are byte-identical", { timeout: 10 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const base = execFileSync("bash", [path.join(p.dir, "scripts", "testsys.sh"), "aarch64"], { encoding: "utf8" }).trim().split("\n").pop()!;
  const cwd = process.cwd();
  const results: Array<{ initramfs: Buffer; uki: string }> = [];
  try {
    process.chdir(p.dir);
    for (const store of ["store-a", "store-b"]) {
      process.env.RAMROOT_STORE = path.join(p.dir, store);
      const create = async (h: typeof rootfs, inputs: Record<string, any>) => (await h.create((await h.check({}, inputs)).inputs!)).outs!;
      const r = await create(rootfs, { base, skeleton: "system/root", arch: "aarch64" });
      const i = await create(initramfs, { rootfs: r.path, rootfsHash: r.hash });
      const u = await create(uki, { rootfs: r.path, rootfsHash: r.hash, initramfs: i.files, initramfsHash: i.hash, arch: "aarch64", cmdline: "rdinit=/sbin/init console=ttyAMA0", kernel: "boot/vmlinuz", stub: "usr/lib/systemd/boot/efi/linuxaa64.efi.stub" });
      assert.ok(u.path.startsWith(process.env.RAMROOT_STORE));
      results.push({ initramfs: Buffer.concat(i.files.map((f: string) => fs.readFileSync(f))), uki: u.path });
    }
  } finally {
    delete process.env.RAMROOT_STORE;
    process.chdir(cwd);
  }
  assert.ok(results[0].initramfs.equals(results[1].initramfs), "the initramfs differs");
  assert.ok(fs.readFileSync(results[0].uki).equals(fs.readFileSync(results[1].uki)), "the UKI differs");
});

test("bad input: a clear error naming the problem, and nothing partial in the store", { timeout: 30 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  await p.pulumi(["stack", "init", "qemu"]);
  const store = path.join(p.dir, ".ramroot", "store");
  const listing = () => (fs.existsSync(store) ? fs.readdirSync(store, { recursive: true }).map(String).sort() : []);
  const noTemp = () => assert.deepEqual(listing().filter((f) => f.includes(".tmp")), [], "a temporary file was left in the store");
  const set = (k: string, v: string) => p.pulumi(["config", "set", `ramroot:${k}`, v, "--stack", "qemu"]);
  const rm = (k: string) => p.pulumi(["config", "rm", `ramroot:${k}`, "--stack", "qemu"]);
  const fails = async (cmd: "preview" | "up", pattern: RegExp) => {
    const res = await p.pulumi(cmd === "up" ? ["up", "--yes", "--stack", "qemu"] : ["preview", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(res.code, 0, `${cmd} succeeded`);
    assert.match(res.stdout + res.stderr, pattern);
  };

  // Each case sets its keys and removes them afterwards, also when it fails.
  const withConfig = async (kv: Record<string, string>, body: () => Promise<void>) => {
    for (const [k, v] of Object.entries(kv)) await set(k, v);
    try {
      await body();
    } finally {
      for (const k of Object.keys(kv)) await rm(k);
    }
  };

  await t.test("a missing base tree fails preview and builds nothing", () =>
    withConfig({ base: "/nonexistent/tree" }, async () => {
      await fails("preview", /the base tree \/nonexistent\/tree is not a folder/);
      await fails("up", /the base tree \/nonexistent\/tree is not a folder/);
      assert.deepEqual(listing().filter((f) => !f.startsWith("journal")), []);
    }));

  await t.test("an empty or oversized cmdline fails preview", async () => {
    await withConfig({ cmdline: " " }, () => fails("preview", /the kernel command line is empty/));
    await withConfig({ cmdline: "x".repeat(3000) }, () => fails("preview", /the kernel command line is 3000 bytes; Linux keeps at most 2047/));
  });

  await t.test("a stub that is not a PE fails up and leaves no UKI", () =>
    withConfig({ stub: "/etc/hostname" }, async () => {
      await fails("up", /is not a PE\/COFF image/);
      assert.deepEqual(listing().filter((f) => f.startsWith("uki/")), []);
      noTemp();
    }));

  await t.test("a missing kernel fails up naming it", () =>
    withConfig({ kernel: "boot/no-such-kernel" }, async () => {
      await fails("up", /the kernel boot\/no-such-kernel is not in the rootfs/);
      assert.deepEqual(listing().filter((f) => f.startsWith("uki/")), []);
      noTemp();
    }));

  await t.test("an image that does not boot fails up with the console tail and records no boot", () =>
    withConfig({ bootMarker: "this line is never printed", bootTimeout: "25" }, async () => {
      // The error carries the console's last lines: the guest's own marker line is among them.
      await fails("up", /this line is never printed[\s\S]*ramroot: build [0-9a-f]{16} up/);
      assert.deepEqual(listing().filter((f) => f.startsWith("booted/")), []);
      noTemp();
    }));

  await t.test("a system whose fstab names a filesystem that is not there, and whose setup.sh enables a failing service, fails the boot check naming both", async () => {
    const system = path.join(p.dir, "system");
    const keep = Object.fromEntries(["root/etc/fstab", "setup.sh"].map((f) => [f, fs.readFileSync(path.join(system, f), "utf8")]));
    try {
      fs.appendFileSync(path.join(system, "root/etc/fstab"), "LABEL=NOPE /mnt/nope vfat defaults 0 0\n");
      fs.mkdirSync(path.join(system, "root/etc/init.d"), { recursive: true });
      fs.writeFileSync(path.join(system, "root/etc/init.d/broken"), '#!/bin/sh\n# A service that cannot start.\ncase "$1" in start) echo "broken: cannot start" >&2; exit 1 ;; esac\nexit 0\n', { mode: 0o755 });
      fs.appendFileSync(path.join(system, "setup.sh"), "\nrc-update add broken default\n");
      await fails("up", /boot check of build [0-9a-f]{16} failed:\s*\n\s*- \/mnt\/nope \(LABEL=NOPE, from \/etc\/fstab\) is not mounted\s*\n\s*- service broken failed to start \(runlevel default\)\s*\n\s*health report:/);
      assert.deepEqual(listing().filter((f) => f.startsWith("booted/")), []);
      // A failed check still ends with a clean power-off.
      assertClean(path.join(p.dir, ".ramroot", "persist", "qemu-aarch64.img"));
    } finally {
      for (const [f, text] of Object.entries(keep)) fs.writeFileSync(path.join(system, f), text);
      fs.rmSync(path.join(system, "root/etc/init.d/broken"), { force: true });
      if (fs.readdirSync(path.join(system, "root/etc/init.d")).length === 0) fs.rmdirSync(path.join(system, "root/etc/init.d"));
    }
  });
});
