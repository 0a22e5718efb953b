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
