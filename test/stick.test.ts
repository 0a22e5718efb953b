// The seed's stick, made by `ramroot stick write`: GPT, one FAT32 ESP with the
// persistence volume id, the UKI at the removable path, persist/; and the refusals that keep it
// from writing over anything it should not.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { repo } from "./project";

const cli = (args: string[]) => spawnSync(process.execPath, [path.join(repo, "dist", "src", "cli.js"), ...args], { encoding: "utf8" });
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const tmpdir = (t: { after(f: () => void): void }) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-stick-"));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};
/** Debian's systemd-stub for an architecture: a PE image of that machine, enough to stand for a UKI here. */
const stub = (arch: string) => {
  const tree = execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { encoding: "utf8" }).trim().split("\n").pop()!;
  return path.join(tree, "usr/lib/systemd/boot/efi", arch === "aarch64" ? "linuxaa64.efi.stub" : "linuxx64.efi.stub");
};
/** A file from the ESP of a stick image or device. */
const espFile = (disk: string, file: string) => execFileSync("mtype", ["-i", `${disk}@@1048576`, `::/${file}`], { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" }, maxBuffer: 1 << 28 });

test("stick write: GPT, one FAT32 ESP with the volume id, the UKI at the removable path, persist/", async (t) => {
  const dir = tmpdir(t);
  for (const arch of ["aarch64", "x86_64"]) {
    const image = path.join(dir, `stick-${arch}.img`);
    const r = cli(["stick", "write", image, "--uki", stub(arch), "--size", "300M"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`image of 300 MiB, ${arch} UKI at its removable path, persist/`));
    assert.equal(fs.statSync(image).size, 300 * 2 ** 20);
    const table = JSON.parse(execFileSync("sfdisk", ["-J", image], { encoding: "utf8" })).partitiontable;
    assert.equal(table.label, "gpt");
    assert.equal(table.partitions.length, 1);
    assert.equal(table.partitions[0].type, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert.equal(table.partitions[0].start, 2048);
    const fat = execFileSync("blkid", ["-p", "-O", "1048576", "-o", "export", image], { encoding: "utf8" });
    assert.match(fat, /^TYPE=vfat$/m);
    assert.match(fat, /^VERSION=FAT32$/m);
    assert.match(fat, /^UUID=B61B-19E7$/m);
    const boot = arch === "aarch64" ? "EFI/BOOT/BOOTAA64.EFI" : "EFI/BOOT/BOOTX64.EFI";
    assert.equal(sha(espFile(image, boot)), sha(fs.readFileSync(stub(arch))));
    const root = execFileSync("mdir", ["-b", "-i", `${image}@@1048576`, "::/"], { encoding: "utf8", env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } });
    assert.deepEqual(root.trim().split("\n").sort(), ["::/EFI/", "::/PERSIST/"].sort().map((s) => s.replace("PERSIST", "persist")).sort());
    // fsck of the partition: clean.
    const part = path.join(dir, `part-${arch}.img`);
    execFileSync("dd", [`if=${image}`, `of=${part}`, "bs=1M", "skip=1", "count=298", "status=none"]);
    assert.equal(spawnSync("fsck.vfat", ["-n", part]).status, 0);
  }
  // A volume id of the stack's own (ramroot:volumeId), and a UKI that is not for the --arch asked.
  const other = path.join(dir, "other.img");
  assert.equal(cli(["stick", "write", other, "--uki", stub("aarch64"), "--size", "64M", "--volume-id", "1234-ABCD"]).status, 0);
  assert.match(execFileSync("blkid", ["-p", "-O", "1048576", "-o", "export", other], { encoding: "utf8" }), /^UUID=1234-ABCD$/m);
  const wrong = cli(["stick", "write", path.join(dir, "wrong.img"), "--uki", stub("aarch64"), "--arch", "x86_64"]);
  assert.equal(wrong.status, 1);
  assert.match(wrong.stderr, /^ramroot: stick: .* is for aarch64, not x86_64: give the x86_64 UKI, or leave --arch out$/m);
  assert.ok(!fs.existsSync(path.join(dir, "wrong.img")));
  const notUki = path.join(dir, "not-a-uki");
  fs.writeFileSync(notUki, "hello");
  assert.match(cli(["stick", "write", path.join(dir, "x.img"), "--uki", notUki]).stderr, /stick: .*not-a-uki is not a UKI/);
  assert.match(cli(["stick", "write", path.join(dir, "x.img"), "--uki", stub("aarch64"), "--size", "4M"]).stderr, /cannot hold .* on its ESP/);
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.includes(".tmp-")), [], "a temporary was left");
});

test("stick write refuses a target that holds a filesystem or a partition table unless --force, changing nothing", async (t) => {
  const dir = tmpdir(t);
  const image = path.join(dir, "stick.img");
  assert.equal(cli(["stick", "write", image, "--uki", stub("aarch64"), "--size", "64M"]).status, 0);
  const before = sha(fs.readFileSync(image));
  const again = cli(["stick", "write", image, "--uki", stub("x86_64")]);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /^ramroot: stick: .*stick.img already holds a partition table \(gpt\): nothing written \(add --force to write over it\)$/m);
  assert.equal(sha(fs.readFileSync(image)), before);
  const fatOnly = path.join(dir, "fat.img");
  execFileSync("mkfs.vfat", ["-C", fatOnly, "65536"], { stdio: "ignore" });
  assert.match(cli(["stick", "write", fatOnly, "--uki", stub("aarch64")]).stderr, /already holds a filesystem \(vfat, UUID [0-9A-F-]+/);
  const forced = cli(["stick", "write", image, "--uki", stub("x86_64"), "--force"]);
  assert.equal(forced.status, 0, forced.stderr);
  assert.equal(sha(espFile(image, "EFI/BOOT/BOOTX64.EFI")), sha(fs.readFileSync(stub("x86_64"))));
});

test("stick write on a block device: written whole; refused while it or a partition of it is mounted", async (t) => {
  const dir = tmpdir(t);
  const backing = path.join(dir, "device.img");
  fs.writeFileSync(backing, "");
  fs.truncateSync(backing, 128 * 2 ** 20);
  const lo = spawnSync("losetup", ["--find", "--show", "--partscan", backing], { encoding: "utf8" });
  if (lo.status !== 0) {
    t.skip(`no loop device here (${lo.stderr.trim() || lo.error?.message}): the device checks are not run`);
    return;
  }
  const dev = lo.stdout.trim();
  t.after(() => spawnSync("losetup", ["-d", dev]));
  const w = cli(["stick", "write", dev, "--uki", stub("aarch64")]);
  assert.equal(w.status, 0, w.stderr);
  assert.match(w.stdout, new RegExp(`${dev}: device of 128 MiB`));
  assert.equal(sha(espFile(dev, "EFI/BOOT/BOOTAA64.EFI")), sha(fs.readFileSync(stub("aarch64"))));
  assert.match(cli(["stick", "write", dev, "--uki", stub("aarch64"), "--size", "64M", "--force"]).stderr, /--size is for image files; the device .* is used whole/);
  // Its partition in use (the kernel read the new table): every write is refused, even with --force.
  spawnSync("partx", ["-u", dev]);
  const part = `${dev}p1`;
  for (let i = 0; i < 20 && !fs.existsSync(part); i++) await new Promise((r) => setTimeout(r, 100));
  if (!fs.existsSync(part)) {
    t.diagnostic(`${part} did not appear: the mounted-partition check is not run`);
    return;
  }
  // Mounted where this kernel can mount FAT; else in use as a swap (what matters: the kernel holds a partition).
  const mnt = path.join(dir, "mnt");
  fs.mkdirSync(mnt);
  let holding: RegExp;
  if (spawnSync("mount", [part, mnt]).status === 0) {
    t.after(() => spawnSync("umount", [mnt]));
    holding = new RegExp(`/dev/${path.basename(part)} is mounted on ${mnt}`);
  } else {
    execFileSync("mkswap", [part], { stdio: "ignore" });
    execFileSync("swapon", [part]);
    t.after(() => spawnSync("swapoff", [part]));
    holding = new RegExp(`/dev/${path.basename(part)} is a swap`);
  }
  const before = sha(fs.readFileSync(backing));
  const busy = cli(["stick", "write", dev, "--uki", stub("x86_64"), "--force"]);
  assert.equal(busy.status, 1);
  assert.match(busy.stderr, new RegExp(`^ramroot: stick: ${dev} is in use \\(.*\\): nothing written \\(unmount it, swapoff it, or stop what holds it, first\\)$`, "m"));
  assert.match(busy.stderr, holding);
  assert.equal(sha(fs.readFileSync(backing)), before);
});
