// End to end: a UKI built from the test system (scripts/testsys.sh) is put on an ESP image,
// booted from that disk by the firmware under QEMU, and proves it ran by printing a marker from
// /etc/local.d and leaving a file on the persistence disk, which a second boot reads back. The
// guest also prints ramroot's health report and, asked through QEMU's fw_cfg, powers itself off
// cleanly: every boot here ends with a clean persistence image (fsck.vfat -n).
//
// The initramfs and the UKI are built here with plain tools (cpio | zstd, objcopy), independent
// of src/image/initramfs.ts and src/image/uki.ts, so that this runner is tested on its own.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { makeEspImage, makePersistImage, readPersistFile, writePersistFile } from "../src/boot/bootmedia";
import { BootCheckError, bootCheck, cleanConsole, qemuCommand, type Arch } from "../src/boot/qemu";
import { healthFiles } from "../src/boot/health";

const exec = promisify(execFile);
const repo = path.resolve(__dirname, "..", "..");
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const CONSOLE: Record<Arch, string> = { x86_64: "ttyS0", aarch64: "ttyAMA0" };

async function sh(script: string, cwd?: string): Promise<string> {
  const { stdout } = await exec("bash", ["-euo", "pipefail", "-c", script], { cwd, maxBuffer: 64 << 20 });
  return stdout;
}

/** The guest's test: report the persistence disk, count boots on it. OpenRC's shutdown unmounts it. */
const TEST_START = `#!/bin/sh
echo "RAMROOT-TEST-MOUNT: $(grep ' /media/usb ' /proc/mounts)"
n=0
[ -f /media/usb/boot-count ] && n=$(cat /media/usb/boot-count)
n=$((n + 1))
echo "$n" > /media/usb/boot-count
echo "RAMROOT-TEST-HASH: $(sha256sum /media/usb/from-host | cut -d' ' -f1)"
sync
echo "RAMROOT-BOOT-OK count=$n arch=$(uname -m) kernel=$(uname -r)"
`;

/** OpenRC runlevels of the test system (empty in the tree, as on a fresh Alpine), as setup.sh would link them. */
const RUNLEVELS: Record<string, string[]> = {
  sysinit: ["devfs", "mdev", "hwdrivers"],
  boot: ["localmount"],
  default: ["local"],
  shutdown: ["killprocs", "mount-ro"],
};

/**
 * What each test disk's overlay holds besides the runlevels: `ok` the test script and ramroot's
 * health files; `nolocal` no local service (no marker, no report) and a service that powers off;
 * `dirty` a local.d script after the health hook that powers off at once, disks still mounted.
 */
type Variant = "ok" | "nolocal" | "dirty";
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

/** Test tree -> initramfs (base archive + overlay: runlevels, local.d, health files) -> UKI -> ESP disk image. */
async function buildDisk(arch: Arch, dir: string, variant: Variant = "ok"): Promise<Built> {
  const tree = (await exec("bash", [path.join(repo, "scripts/testsys.sh"), arch], { maxBuffer: 1 << 20 })).stdout.trim();
  const kernel = /^KERNEL=(.*)$/m.exec(await fs.readFile(path.join(tree, "etc/ramroot-testsys"), "utf8"))![1]!;
  const overlay = path.join(dir, "overlay");
  const put = async (rel: string, content: string, mode = 0o644) => {
    await fs.mkdir(path.dirname(path.join(overlay, rel)), { recursive: true, mode: 0o755 });
    await fs.writeFile(path.join(overlay, rel), content, { mode });
  };
  const runlevels = structuredClone(RUNLEVELS);
  await put("etc/local.d/50-ramroot-test.start", TEST_START, 0o755);
  await put("etc/conf.d/local", "rc_verbose=yes\n");
  await put("etc/ramroot-release", `BUILD_ID="test-${arch}"\n`);
  for (const f of healthFiles()) {
    if (f.link) await fs.mkdir(path.dirname(path.join(overlay, f.name)), { recursive: true, mode: 0o755 }).then(() => fs.symlink(f.link!, path.join(overlay, f.name)));
    else if (!f.dir) await put(f.name, f.content!, f.mode);
  }
  if (variant === "nolocal") {
    runlevels.default = ["zz-off"];
    await put("etc/init.d/zz-off", '#!/bin/sh\n[ "$1" = start ] && { echo "RAMROOT-NO-LOCAL: powering off"; poweroff; }\nexit 0\n', 0o755);
  }
  if (variant === "dirty") await put("etc/local.d/zzz-dirty.start", "#!/bin/sh\necho RAMROOT-DIRTY: poweroff -f\npoweroff -f\n", 0o755);
  for (const [level, names] of Object.entries(runlevels)) {
    await fs.mkdir(path.join(overlay, "etc/runlevels", level), { recursive: true, mode: 0o755 });
    for (const n of names) await fs.symlink(`/etc/init.d/${n}`, path.join(overlay, "etc/runlevels", level, n));
  }
  const initrd = path.join(dir, "initrd.zst");
  // Two whole archives, separately compressed, concatenated; the overlay has no "." entry.
  await sh(`find . -path ./boot -prune -o -print | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -T0 -3 > '${initrd}'`, tree);
  await sh(`find . -mindepth 1 -type d -exec chmod 0755 {} + && find etc usr | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | zstd -q -3 >> '${initrd}'`, overlay);
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
test.after(() => { if (times.length) console.log(`# boot times (qemu start to marker, then the report to qemu's exit): ${times.join(", ")}`); });

/** fsck.vfat -n on the persistence image: the guest unmounted it before it powered off. */
function assertClean(persist: string): void {
  const r = spawnSync("fsck.vfat", ["-n", persist], { encoding: "utf8" });
  assert.equal(r.status, 0, `fsck.vfat -n ${persist} finds it dirty:\n${r.stdout}${r.stderr}`);
}

for (const arch of ["x86_64", "aarch64"] as const) {
  test(`${arch}: the UKI boots from the ESP disk, keeps state on the persistence disk, reports healthy and powers off cleanly`, { timeout: 900_000 }, async (t) => {
    const dir = await tempDir(t, arch);
    const { disk, kernel } = await buildDisk(arch, dir);
    const diskHash = sha256(await fs.readFile(disk));
    const persist = path.join(dir, "persist.img");
    assert.equal((await makePersistImage({ out: persist })).created, true);
    const fromHost = randomBytes(4096);
    await writePersistFile(persist, "from-host", fromHost);

    for (const count of [1, 2]) {
      const r = await bootCheck({ arch, disk, persist, marker: /RAMROOT-BOOT-OK count=\d+/, timeoutMs: 240_000, health: true, powerOff: true });
      times.push(`${arch} boot ${count} ${r.seconds.toFixed(1)} s + power-off ${r.shutdownSeconds!.toFixed(1)} s`);
      assert.match(r.console, new RegExp(`RAMROOT-BOOT-OK count=${count} arch=${arch} kernel=${kernel.replace(/\./g, "\\.")}`));
      assert.match(r.console, /RAMROOT-TEST-MOUNT: \/dev\/vd[a-z] \/media\/usb vfat/);
      assert.ok(r.console.includes(`RAMROOT-TEST-HASH: ${sha256(fromHost)}`), "the guest read the host's file");
      // The report: this build, the persistence stick mounted, every enabled service started.
      assert.equal(r.health!.build, `test-${arch}`);
      assert.equal(r.health!.result, "ok");
      assert.deepEqual(r.health!.mounts, [{ state: "ok", mountPoint: "/media/usb", source: "UUID=B61B-19E7", type: "vfat" }]);
      assert.equal(r.health!.counts.services, 6); // with ramroot's trial guard (sysinit)
      // Asked through fw_cfg, the guest went down through OpenRC's shutdown, which unmounted the stick.
      assert.match(r.console, /ramroot: powering off: QEMU asked for it through fw_cfg opt\/org\.ramroot\/after-boot/);
      assert.match(r.console, / \* Stopping localmount \.\.\.[\s\S]* \* Starting mount-ro \.\.\./);
      assert.ok(r.shutdownSeconds! < 60);
      assert.match(r.fsck!, /persist\.img: \d+ files/);
      assertClean(persist);
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

test("qemu exiting before the marker and the report fails at once, saying what prints the report and how to enable it", { timeout: 600_000 }, async (t) => {
  const dir = await tempDir(t, "exit");
  const { disk } = await buildDisk("x86_64", dir, "nolocal");
  const persist = path.join(dir, "persist.img");
  await makePersistImage({ out: persist });
  const started = Date.now();
  const err: Error = await bootCheck({ arch: "x86_64", disk, persist, marker: "NEVER-PRINTED", timeoutMs: 240_000, health: true, powerOff: true })
    .then(() => assert.fail("bootCheck succeeded"), (e: Error) => e);
  assert.match(err.message, /qemu exited \(0\) before "NEVER-PRINTED" appeared \(nor the health report: the report is printed by \/etc\/local\.d\/zz-ramroot-health\.start, which ramroot adds to every image and OpenRC's local service runs at the end of boot: enable that service \(in setup\.sh: rc-update add local default\); the example system's marker comes from \/etc\/local\.d too\)/);
  assert.match(err.message, /RAMROOT-NO-LOCAL: powering off/); // the guest's last words are in the tail
  assert.ok(Date.now() - started < 120_000);
  assertClean(persist);
});

test("a guest that powers off with its disk mounted fails the check: the persistence image is dirty, and the error names the fix", { timeout: 600_000 }, async (t) => {
  const dir = await tempDir(t, "dirty");
  const { disk } = await buildDisk("x86_64", dir, "dirty");
  const persist = path.join(dir, "persist.img");
  await makePersistImage({ out: persist });
  await writePersistFile(persist, "from-host", randomBytes(16));
  const err = await bootCheck({ arch: "x86_64", disk, persist, marker: /RAMROOT-BOOT-OK count=1/, timeoutMs: 240_000, health: true, powerOff: true })
    .then(() => assert.fail("bootCheck succeeded"), (e: Error) => e);
  assert.ok(err instanceof BootCheckError);
  assert.equal(err.health?.result, "ok", "the report itself was fine");
  assert.match(err.message, /^boot check of build test-x86_64 failed:\n  - the persistence image \S+persist\.img is dirty after the boot check \(fsck\.vfat -n: Dirty bit is set\. Fs was not properly unmounted and some data may be corrupt\.\): the guest did not unmount it before powering off; its shutdown must unmount \/media\/usb \(OpenRC: localmount unmounts fstab's filesystems when it stops, and rc-update add mount-ro shutdown remounts what is left read-only\); fsck\.vfat -a \S+persist\.img repairs the image\n/);
  assert.match(err.message, /health report:\nramroot-health: begin 1 build=test-x86_64\n/);
  assert.equal(spawnSync("fsck.vfat", ["-n", persist]).status, 1, "fsck.vfat -n agrees: dirty");
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
  assert.doesNotMatch(xs, /-kernel|-append|-enable-kvm|accel kvm|-fw_cfg/);
  // The boot check's request to power off: a QEMU fw_cfg item, commas doubled.
  const f = qemuCommand({ arch: "x86_64", disk: "d.img", fwCfg: { "opt/org.ramroot/after-boot": "poweroff", "opt/org.ramroot/x": "a,b" } });
  assert.match(f.args.join(" "), /-fw_cfg name=opt\/org\.ramroot\/after-boot,string=poweroff -fw_cfg name=opt\/org\.ramroot\/x,string=a,,b/);
  assert.throws(() => qemuCommand({ arch: "x86_64", disk: "d.img", fwCfg: { "etc/x": "1" } }), /fw_cfg name etc\/x: use opt\//);
  const a = qemuCommand({ arch: "aarch64", disk: "d.img", interactive: true });
  assert.equal(a.cmd, "qemu-system-aarch64");
  const as = a.args.join(" ");
  assert.match(as, /-M virt -cpu cortex-a72/);
  assert.match(as, /-bios \/usr\/share\/qemu-efi-aarch64\/QEMU_EFI\.fd/);
  assert.match(as, /-boot menu=on,splash-time=0/);
  assert.match(as, /-serial mon:stdio/);
  assert.doesNotMatch(as, /id=persist/);
  // `ramroot qemu` (interactive) passes no fw_cfg item: the guest stays up.
  assert.doesNotMatch(as, /-fw_cfg/);
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
