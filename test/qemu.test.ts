// End to end: a UKI built from the test system (scripts/testsys.sh) is put on an ESP image,
// booted from that disk by the firmware under QEMU, and proves it ran by printing a marker from
// /etc/local.d and leaving a file on the persistence disk, which a second boot reads back.
//
// The initramfs and the UKI are built here with plain tools (cpio | zstd, objcopy), independent
// of src/initramfs.ts and src/uki.ts, so that this runner is tested on its own.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { makeEspImage, makePersistImage, readPersistFile, writePersistFile } from "../src/bootmedia";
import { bootCheck, cleanConsole, qemuCommand, type Arch } from "../src/qemu";

const exec = promisify(execFile);
const repo = path.resolve(__dirname, "..", "..");
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const CONSOLE: Record<Arch, string> = { x86_64: "ttyS0", aarch64: "ttyAMA0" };

async function sh(script: string, cwd?: string): Promise<string> {
  const { stdout } = await exec("bash", ["-euo", "pipefail", "-c", script], { cwd, maxBuffer: 64 << 20 });
  return stdout;
}

/** The guest's test: report the persistence disk, count boots on it, power off. */
const TEST_START = `#!/bin/sh
echo "RAMROOT-TEST-MOUNT: $(grep ' /media/usb ' /proc/mounts)"
n=0
[ -f /media/usb/boot-count ] && n=$(cat /media/usb/boot-count)
n=$((n + 1))
echo "$n" > /media/usb/boot-count
echo "RAMROOT-TEST-HASH: $(sha256sum /media/usb/from-host | cut -d' ' -f1)"
sync
umount /media/usb
echo "RAMROOT-BOOT-OK count=$n arch=$(uname -m) kernel=$(uname -r)"
poweroff -f
`;

/** Section end of a PE stub, from objdump -h: the first free address for added sections. */
async function peEnd(objdump: string, file: string): Promise<bigint> {
  let end = 0n;
  for (const line of (await exec(objdump, ["-h", file])).stdout.split("\n")) {
    const m = /^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s/.exec(line);
    if (m) end = [end, BigInt(`0x${m[3]}`) + BigInt(`0x${m[2]}`)].reduce((a, b) => (a > b ? a : b));
  }
  assert.ok(end > 0n, `no sections in ${file}`);
  return end;
}

/** A UKI the old way: objcopy adds each section past the previous one, 4 KiB aligned. */
async function objcopyUki(arch: Arch, stub: string, sections: [string, string][], out: string): Promise<void> {
  const prefix = arch === "aarch64" ? "aarch64-linux-gnu-" : "";
  const align = (n: bigint) => (n + 0xfffn) & ~0xfffn;
  let vma = align(await peEnd(`${prefix}objdump`, stub));
  const args: string[] = [];
  for (const [name, file] of sections) {
    args.push("--add-section", `${name}=${file}`, "--change-section-vma", `${name}=0x${vma.toString(16)}`);
    vma = align(vma + BigInt((await fs.stat(file)).size));
  }
  await exec(`${prefix}objcopy`, [...args, stub, out]);
}

interface Built { dir: string; disk: string; kernel: string }

/** Test tree -> initramfs (base archive + local.d overlay) -> UKI -> ESP disk image. */
async function buildDisk(arch: Arch, dir: string): Promise<Built> {
  const tree = (await exec("bash", [path.join(repo, "scripts/testsys.sh"), arch], { maxBuffer: 1 << 20 })).stdout.trim();
  const kernel = /^KERNEL=(.*)$/m.exec(await fs.readFile(path.join(tree, "etc/ramroot-testsys"), "utf8"))![1]!;
  const overlay = path.join(dir, "overlay");
  await fs.mkdir(path.join(overlay, "etc/local.d"), { recursive: true, mode: 0o755 });
  await fs.writeFile(path.join(overlay, "etc/local.d/zz-ramroot-test.start"), TEST_START, { mode: 0o755 });
  const initrd = path.join(dir, "initrd.zst");
  // Two whole archives, separately compressed, concatenated; the overlay has no "." entry.
  await sh(`find . -path ./boot -prune -o -print | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -T0 -3 > '${initrd}'`, tree);
  await sh(`chmod 0755 etc etc/local.d && find etc | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -3 >> '${initrd}'`, overlay);
  const cmdline = path.join(dir, "cmdline");
  await fs.writeFile(cmdline, `rdinit=/sbin/init console=${CONSOLE[arch]} panic=-1\n`);
  const uki = path.join(dir, "uki.efi");
  await objcopyUki(arch, path.join(tree, "boot/efistub"), [
    [".osrel", path.join(tree, "etc/os-release")],
    [".cmdline", cmdline],
    [".linux", path.join(tree, "boot/vmlinuz")],
    [".initrd", initrd],
  ], uki);
  const disk = path.join(dir, "disk.img");
  await makeEspImage({ efi: uki, arch, out: disk });
  return { dir, disk, kernel };
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }, name: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `ramroot-qemu-test-${name}-`));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

const times: string[] = [];
test.after(() => { if (times.length) console.log(`# boot times (qemu start to marker): ${times.join(", ")}`); });

for (const arch of ["x86_64", "aarch64"] as const) {
  test(`${arch}: the UKI boots from the ESP disk and keeps state on the persistence disk`, { timeout: 900_000 }, async (t) => {
    const dir = await tempDir(t, arch);
    const { disk, kernel } = await buildDisk(arch, dir);
    const diskHash = sha256(await fs.readFile(disk));
    const persist = path.join(dir, "persist.img");
    assert.equal((await makePersistImage({ out: persist })).created, true);
    const fromHost = randomBytes(4096);
    await writePersistFile(persist, "from-host", fromHost);

    for (const count of [1, 2]) {
      const r = await bootCheck({ arch, disk, persist, marker: /RAMROOT-BOOT-OK count=\d+/, timeoutMs: 240_000 });
      times.push(`${arch} boot ${count} ${r.seconds.toFixed(1)} s`);
      assert.match(r.console, new RegExp(`RAMROOT-BOOT-OK count=${count} arch=${arch} kernel=${kernel.replace(/\./g, "\\.")}`));
      assert.match(r.console, /RAMROOT-TEST-MOUNT: \/dev\/vd[a-z] \/media\/usb vfat/);
      assert.ok(r.console.includes(`RAMROOT-TEST-HASH: ${sha256(fromHost)}`), "the guest read the host's file");
      assert.equal((await readPersistFile(persist, "boot-count"))?.toString(), `${count}\n`);
    }
    assert.equal(sha256(await fs.readFile(disk)), diskHash, "the boot disk is never written");
  });
}

test("a boot whose marker never appears fails within the timeout, with the console tail", { timeout: 300_000 }, async (t) => {
  const dir = await tempDir(t, "fail");
  // Not a PE image: the firmware refuses it and waits in its shell forever.
  const efi = path.join(dir, "not-a-uki.efi");
  await fs.writeFile(efi, "this is not an EFI application\n");
  const disk = path.join(dir, "disk.img");
  await makeEspImage({ efi, arch: "x86_64", out: disk });
  const started = Date.now();
  const timeoutMs = 25_000;
  const lines: string[] = [];
  const err: Error = await bootCheck({ arch: "x86_64", disk, marker: "RAMROOT-BOOT-OK", timeoutMs, log: (l) => lines.push(l) })
    .then(() => assert.fail("bootCheck succeeded"), (e: Error) => e);
  const elapsed = Date.now() - started;
  assert.match(err.message, /no "RAMROOT-BOOT-OK" on the console within 25 s/);
  assert.ok(elapsed >= timeoutMs && elapsed < timeoutMs + 5000, `failed after ${elapsed} ms`);
  assert.ok(lines.length > 0, "console lines reached the log callback");
  const tail = err.message.split("last console lines:\n")[1] ?? "";
  assert.ok(tail.length > 0 && tail.split("\n").length <= 40);
  assert.match(tail, /BdsDxe: failed to load/, "the firmware's refusal is in the tail");
  assert.ok(tail.includes(lines.filter((l) => l.trim()).at(-1)!), "the tail ends with the console's last lines");
  // The qemu process is gone: nothing of ours still holds the disk.
  assert.equal(execFileSync("bash", ["-c", `fuser '${disk}' 2>/dev/null || true`], { encoding: "utf8" }).trim(), "");
});

test("qemu exiting before the marker fails at once, with the console tail", { timeout: 600_000 }, async (t) => {
  const dir = await tempDir(t, "exit");
  const { disk } = await buildDisk("aarch64", dir);
  const started = Date.now();
  const err: Error = await bootCheck({ arch: "aarch64", disk, marker: "NEVER-PRINTED", timeoutMs: 240_000 })
    .then(() => assert.fail("bootCheck succeeded"), (e: Error) => e);
  assert.match(err.message, /qemu exited \(0\) before "NEVER-PRINTED"/);
  assert.match(err.message, /RAMROOT-BOOT-OK count=1/); // the guest's last words are in the tail
  assert.ok(Date.now() - started < 120_000);
});

test("qemuCommand: boots the disk through the firmware, read-only, with TCG", () => {
  const x = qemuCommand({ arch: "x86_64", disk: "/tmp/a,b.img", persist: "/tmp/p.img", firmwareVars: "/tmp/vars.fd" });
  assert.equal(x.cmd, "qemu-system-x86_64");
  const xs = x.args.join(" ");
  assert.match(xs, /-accel tcg/);
  assert.match(xs, /if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/OVMF\/OVMF_CODE_4M\.fd/);
  assert.match(xs, /if=pflash,format=raw,unit=1,file=\/tmp\/vars\.fd/);
  assert.match(xs, /if=none,id=boot,format=raw,readonly=on,file=\/tmp\/a,,b\.img/);
  assert.match(xs, /if=none,id=persist,format=raw,file=\/tmp\/p\.img/);
  assert.match(xs, /-no-reboot/);
  assert.doesNotMatch(xs, /-kernel|-append|-enable-kvm|accel kvm/);
  const a = qemuCommand({ arch: "aarch64", disk: "d.img", interactive: true });
  assert.equal(a.cmd, "qemu-system-aarch64");
  const as = a.args.join(" ");
  assert.match(as, /-M virt -cpu cortex-a72/);
  assert.match(as, /-bios \/usr\/share\/qemu-efi-aarch64\/QEMU_EFI\.fd/);
  assert.match(as, /-boot menu=on,splash-time=0/);
  assert.match(as, /-serial mon:stdio/);
  assert.doesNotMatch(as, /id=persist/);
  const savedPath = process.env.PATH;
  process.env.PATH = "/nonexistent";
  try {
    assert.throws(() => qemuCommand({ arch: "aarch64", disk: "d.img" }), /install the Debian package qemu-system-arm/);
  } finally {
    process.env.PATH = savedPath;
  }
});

test("cleanConsole drops escape sequences and carriage returns", () => {
  assert.equal(cleanConsole("\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\r\nok\x1b[0m\x1b(B"), "BdsDxe: loading\nok");
});
