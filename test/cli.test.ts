// The `ramroot` command as a user runs it: initramfs, uki and inspect on the x86_64 test tree,
// checked against GNU cpio and objdump, the tools nobody here wrote.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { repo } from "./project";

const ramroot = (...args: string[]) => spawnSync(path.join(repo, "bin", "ramroot"), args, { encoding: "utf8" });

test("ramroot initramfs, uki and inspect", { timeout: 5 * 60_000 }, async (t) => {
  const tree = execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), "x86_64"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim().split("\n").pop()!;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-cli-"));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));
  const initrd = path.join(work, "initrd.img");
  const uki = path.join(work, "uki.efi");

  let r = ramroot("initramfs", tree, "-o", initrd, "--compression", "gzip", "--exclude", "boot");
  assert.equal(r.status, 0, r.stderr);
  // GNU cpio stops at the first TRAILER!!!, so each member is cut out at the offset inspect
  // reports and listed on its own: both the segments and the offsets are checked.
  r = ramroot("inspect", initrd, "--json");
  assert.equal(r.status, 0, r.stderr);
  const members = JSON.parse(r.stdout).segments;
  assert.ok(members.length > 1, "one segment only");
  const bytes = fs.readFileSync(initrd);
  const listed: string[] = [];
  for (const [i, m] of members.entries()) {
    assert.equal(m.compression, "gzip");
    const part = path.join(work, `member-${i}.gz`);
    fs.writeFileSync(part, bytes.subarray(m.offset, m.offset + m.size));
    const names = execFileSync("sh", ["-c", `gzip -dc ${part} | cpio -t --quiet`], { encoding: "utf8", maxBuffer: 64 << 20 }).split("\n").filter(Boolean);
    assert.equal(names.length, m.entries, `member ${i}: cpio lists ${names.length} entries, inspect says ${m.entries}`);
    listed.push(...names);
  }
  assert.ok(listed.includes("bin/busybox") && listed.includes("etc/inittab"), "cpio does not list the tree's files");
  assert.ok(!listed.some((l) => l.startsWith("boot/")), "boot/ was not excluded");

  r = ramroot("uki", "--stub", path.join(tree, "usr/lib/systemd/boot/efi/linuxx64.efi.stub"), "--linux", path.join(tree, "boot/vmlinuz"), "--initrd", initrd, "--cmdline", "console=ttyS0 rdinit=/sbin/init", "--os-release", path.join(tree, "etc/os-release"), "-o", uki);
  assert.equal(r.status, 0, r.stderr);
  const objdump = execFileSync("objdump", ["-h", uki], { encoding: "utf8" });
  for (const s of [".osrel", ".cmdline", ".initrd", ".linux"]) assert.match(objdump, new RegExp(`\\${s}\\s`));

  r = ramroot("inspect", uki, "--json");
  assert.equal(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.kind, "uki");
  assert.equal(report.arch, "x86_64");
  assert.equal(report.cmdline, "console=ttyS0 rdinit=/sbin/init");
  assert.equal(report.sections.find((s: any) => s.name === ".initrd").size, fs.statSync(initrd).size);
  assert.ok(report.segments.length > 1 && report.segments.every((s: any) => s.compression === "gzip" && s.entries > 0));

  r = ramroot("inspect", initrd);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`initramfs segments \\(${members.length}\\):`));

  // --single: one archive, which GNU cpio reads whole from the decompressed stream.
  const single = path.join(work, "single.img");
  r = ramroot("initramfs", tree, "-o", single, "--compression", "zstd", "--exclude", "boot", "--single");
  assert.equal(r.status, 0, r.stderr);
  const all = execFileSync("sh", ["-c", `zstd -dc ${single} | cpio -t --quiet`], { encoding: "utf8", maxBuffer: 64 << 20 }).split("\n").filter(Boolean);
  assert.deepEqual(all.sort(), listed.filter(Boolean).sort());

  r = ramroot("uki", "--stub", "/etc/hostname", "--linux", path.join(tree, "boot/vmlinuz"), "--initrd", initrd, "--cmdline", "x", "-o", path.join(work, "bad.efi"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /is not a PE\/COFF image/);
  assert.ok(!fs.existsSync(path.join(work, "bad.efi")));
  r = ramroot("frobnicate");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command frobnicate[\s\S]*usage:/);
});

test("bad input: one line that names the problem and the fix, and nothing written", { timeout: 60_000 }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-cli-bad-"));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));
  const fails = (r: ReturnType<typeof ramroot>, re: RegExp) => {
    assert.equal(r.status, 1, `${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^ramroot: [^\n]+\n$/, "one line");
    assert.match(r.stderr.trimEnd(), re);
  };

  await t.test("inspect: an empty file, a folder, a file over 2 GiB (sparse: nothing is read, nothing is held)", () => {
    const empty = path.join(work, "empty.img");
    fs.writeFileSync(empty, "");
    fails(ramroot("inspect", empty), new RegExp(`^ramroot: ${empty} is empty: pass an initramfs or a UKI`));
    fails(ramroot("inspect", work), new RegExp(`^ramroot: ${work} is a folder: pass an initramfs or a UKI, a file`));
    const big = path.join(work, "big.img");
    fs.closeSync(fs.openSync(big, "w"));
    fs.truncateSync(big, 2 ** 31 + 1);
    const t0 = Date.now();
    fails(ramroot("inspect", big), new RegExp(`^ramroot: ${big} is 2147483649 bytes, more than inspect reads \\(2 GiB\\)`));
    assert.ok(Date.now() - t0 < 10_000, "inspect read the file");
    fails(ramroot("inspect", path.join(work, "missing.img")), /missing\.img does not exist: pass an initramfs or a UKI$/);
  });

  const tree = path.join(work, "tree");
  fs.mkdirSync(path.join(tree, "etc"), { recursive: true });
  fs.writeFileSync(path.join(tree, "etc", "hostname"), "x\n");
  const out = path.join(work, "initrd.img");
  await t.test("initramfs --level: checked per compression before the tree is walked", () => {
    fails(ramroot("initramfs", tree, "-o", out, "--compression", "gzip", "--level", "10"), /^ramroot: --level 10: not a gzip level: use a whole number from 1 to 9$/);
    fails(ramroot("initramfs", tree, "-o", out, "--level", "20"), /^ramroot: --level 20: not a zstd level: use a whole number from 1 to 19$/);
    fails(ramroot("initramfs", tree, "-o", out, "--level", "0"), /not a zstd level/);
    fails(ramroot("initramfs", tree, "-o", out, "--level", "fast"), /^ramroot: --level fast: not a zstd level/);
    fails(ramroot("initramfs", tree, "-o", out, "--compression", "none", "--level", "3"), /^ramroot: --level 3: compression none takes no level: leave the level out, or compress with zstd \(levels 1-19\) or gzip \(1-9\)$/);
    assert.ok(!fs.existsSync(out));
    for (const [c, l] of [["gzip", "9"], ["zstd", "19"], ["zstd", "1"]]) {
      const r = ramroot("initramfs", tree, "-o", out, "--compression", c, "--level", l);
      assert.equal(r.status, 0, r.stderr);
    }
  });

  await t.test("uki --linux: something that is not a kernel for the stub's architecture", () => {
    const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const uki = (linux: string) => ramroot("uki", "--stub", stub, "--linux", linux, "--initrd", path.join(tree, "etc", "hostname"), "--cmdline", "console=ttyS0", "-o", path.join(work, "uki.efi"));
    const notKernel = path.join(work, "vmlinuz");
    fs.writeFileSync(notKernel, "#!/bin/sh\necho I am not a kernel\n".repeat(200));
    fails(uki(notKernel), new RegExp(`^ramroot: kernel image ${notKernel} is not a Linux kernel for x86_64 \\(no bzImage header \\("HdrS" at 0x202\\), no arm64 Image header \\("ARM\\\\x64" at 0x38\\), no PE header\\): pass the kernel, e\\.g\\. /boot/vmlinuz-<version>$`));
    const gz = path.join(work, "Image.gz");
    fs.writeFileSync(gz, execFileSync("gzip", ["-c"], { input: Buffer.alloc(4096) }));
    fails(uki(gz), /is not a Linux kernel for x86_64 \(gzip-compressed data: decompress it first/);
    // An arm64 Image (header magic "ARM\x64" at 0x38) for an x86_64 stub.
    const arm = Buffer.alloc(8192);
    arm.write("ARM\x64", 0x38, "latin1");
    fs.writeFileSync(notKernel, arm);
    fails(uki(notKernel), /is for aarch64 but the stub .*linuxx64\.efi\.stub is for x86_64: use a kernel and a stub of the same architecture$/);
    // A PE for arm64 (an EFI zboot kernel) likewise.
    const pe = Buffer.alloc(8192);
    pe.write("MZ", 0, "latin1");
    pe.writeUInt32LE(0x40, 0x3c);
    pe.write("PE\0\0", 0x40, "latin1");
    pe.writeUInt16LE(0xaa64, 0x44);
    fs.writeFileSync(notKernel, pe);
    fails(uki(notKernel), /is for aarch64 but the stub/);
    assert.ok(!fs.existsSync(path.join(work, "uki.efi")));
    // An x86 bzImage header is a kernel for this stub: the UKI is written.
    const bz = Buffer.alloc(8192);
    bz.write("HdrS", 0x202, "latin1");
    fs.writeFileSync(notKernel, bz);
    const r = uki(notKernel);
    assert.equal(r.status, 0, r.stderr);
  });
});
