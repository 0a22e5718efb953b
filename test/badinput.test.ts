// Bad input reaching the resources: what preview can see is refused there,
// as a failure on the property to fix; what only the build can see (the kernel in the built
// rootfs) is refused before anything is written. The checks are the CLI's and the library's:
// test/initramfs.test.ts, test/uki.test.ts and test/cli.test.ts test those on their own.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { handlers as rootfs } from "../components/rootfs";
import { handlers as initramfs } from "../components/initramfs";
import { handlers as uki } from "../components/uki";

/** A scratch folder, and a store of its own (RAMROOT_STORE) for the test. */
function scratch(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-badinput-"));
  const env = process.env.RAMROOT_STORE;
  process.env.RAMROOT_STORE = path.join(dir, "store");
  t.after(() => {
    if (env === undefined) delete process.env.RAMROOT_STORE;
    else process.env.RAMROOT_STORE = env;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

test("preview: a skeleton the initramfs cannot hold is a failure on ramroot:system / skeleton, before anything is hashed or built", async (t) => {
  const dir = scratch(t);
  const base = path.join(dir, "base");
  fs.mkdirSync(path.join(base, "etc"), { recursive: true });
  const system = path.join(dir, "system");
  const skel = path.join(system, "root");
  fs.mkdirSync(path.join(skel, "etc"), { recursive: true });
  fs.writeFileSync(path.join(skel, "etc", "hostname"), "ramroot\n");
  const check = (inputs: Record<string, unknown>) => rootfs.check({}, { arch: "x86_64", base, ...inputs });
  // The good skeleton passes.
  assert.equal((await check({ system })).failures, undefined);

  // A name that is not UTF-8: the walker's message, not an lstat stack trace (the tree hash
  // used to read the name back as text, with U+FFFD, and lstat a name that does not exist).
  const bad = Buffer.concat([Buffer.from(`${skel}/etc/caf`), Buffer.from([0xe9])]);
  fs.writeFileSync(bad, "x");
  assert.deepEqual((await check({ system })).failures, [{ property: "system", reason: `the name "${skel}/etc/caf\\xe9" is not valid UTF-8 (an initramfs names files in UTF-8): rename it` }]);
  assert.deepEqual((await check({ skeleton: skel })).failures?.map((f: any) => f.property), ["skeleton"]);
  fs.rmSync(bad);

  // A top-level TRAILER!!! would end the archive that holds it.
  fs.writeFileSync(path.join(skel, "TRAILER!!!"), "x");
  assert.deepEqual((await check({ system })).failures, [{
    property: "system",
    reason: `${skel}/TRAILER!!!: a top-level entry named TRAILER!!! ends a newc archive (the kernel would unpack nothing after it): rename it or leave it out of ${system}/root`,
  }]);
  fs.rmSync(path.join(skel, "TRAILER!!!"));

  // A file of 4 GiB: newc's size field is 32 bits (sparse: nothing is written or read).
  const huge = path.join(skel, "var", "big.img");
  fs.mkdirSync(path.dirname(huge), { recursive: true });
  fs.closeSync(fs.openSync(huge, "w"));
  fs.truncateSync(huge, 2 ** 32);
  const t0 = Date.now();
  assert.deepEqual((await check({ system })).failures, [{
    property: "system",
    reason: `${huge} is 4294967296 bytes, and an initramfs (newc) holds files up to 4294967295 bytes (4 GiB - 1): make it smaller or leave it out of ${system}/root`,
  }]);
  assert.ok(Date.now() - t0 < 5000, "the big file was read");
  assert.ok(!fs.existsSync(path.join(dir, "store", "rootfs")), "something was built");
});

test("preview: ramroot:compressionLevel is checked against the compression", async () => {
  const check = (compression: string | undefined, level: number | undefined) => initramfs.check({}, { rootfs: "/nonexistent", rootfsHash: "h", compression, level });
  const failure = async (compression: string | undefined, level: number, reason: string) =>
    assert.deepEqual((await check(compression, level)).failures, [{ property: "level", reason }]);
  await failure("gzip", 12, "ramroot:compressionLevel 12: not a gzip level: use a whole number from 1 to 9");
  await failure(undefined, 20, "ramroot:compressionLevel 20: not a zstd level: use a whole number from 1 to 19");
  await failure("zstd", 0, "ramroot:compressionLevel 0: not a zstd level: use a whole number from 1 to 19");
  await failure("zstd", 2.5, "ramroot:compressionLevel 2.5: not a zstd level: use a whole number from 1 to 19");
  await failure("none", 3, "ramroot:compressionLevel 3: compression none takes no level: leave the level out, or compress with zstd (levels 1-19) or gzip (1-9)");
  for (const [c, l] of [["gzip", 9], ["zstd", 19], ["zstd", 1], ["none", undefined], ["gzip", undefined]] as const)
    assert.equal((await check(c, l)).failures, undefined, `${c} ${l}`);
});

test("build: a rootfs kernel that is not a kernel for ramroot:arch is refused, naming its path in the rootfs and ramroot:kernel", async (t) => {
  const dir = scratch(t);
  const root = path.join(dir, "rootfs");
  fs.mkdirSync(path.join(root, "boot"), { recursive: true });
  fs.mkdirSync(path.join(root, "etc"), { recursive: true });
  fs.writeFileSync(path.join(root, "etc", "os-release"), "ID=test\n");
  const kernel = path.join(root, "boot", "vmlinuz-lts");
  const inputs = {
    rootfs: root, rootfsHash: "r", initramfs: [], initramfsHash: "i", cmdline: "console=ttyS0", arch: "x86_64",
    kernel: "boot/vmlinuz-lts", stub: "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
  };
  const refused = async (reason: RegExp) => {
    const checked = await uki.check({}, inputs);
    assert.equal(checked.failures, undefined);
    await assert.rejects(uki.create(checked.inputs!), (e: Error) => {
      assert.match(e.message, reason);
      assert.match(e.message, /^uki: the kernel boot\/vmlinuz-lts \(ramroot:kernel\) in the rootfs .*: install the kernel package for x86_64 \(linux-lts\) or set ramroot:kernel to the kernel's path under \/$/);
      return true;
    });
    assert.ok(!fs.existsSync(path.join(dir, "store", "uki")), "a UKI was written");
  };
  // Something else (here a script), an arm64 Image, a gzip'd Image.
  fs.writeFileSync(kernel, "#!/bin/sh\necho not a kernel\n".repeat(100));
  await refused(/in the rootfs is not a Linux kernel image for x86_64 \(no bzImage header/);
  const arm = Buffer.alloc(8192);
  arm.write("ARM\x64", 0x38, "latin1");
  fs.writeFileSync(kernel, arm);
  await refused(/in the rootfs is for aarch64, not x86_64:/);
  fs.writeFileSync(kernel, Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, ...Buffer.alloc(100)]));
  await refused(/in the rootfs is not a Linux kernel image for x86_64 \(gzip-compressed data/);
});

test("preview names every bad input of a resource at once, not one per run", async () => {
  const res = await rootfs.check({}, { arch: "arm64", base: "/nonexistent-base", builderSha256: "xyz", setupTimeout: -1, apk: "apk" });
  assert.deepEqual(res.failures?.map((f: any) => f.property), ["arch", "base", "builderSha256", "setupTimeout", "apk"]);
  assert.match(res.failures![0]!.reason, /ramroot:arch arm64 .*use aarch64 or x86_64 \(arm64 is aarch64\)/);
});
