// The guest's health report (src/boot/health.ts): the parser on canned console text, and the script
// itself run by dash and busybox sh on a made-up root (etc/fstab, a mounts file, runlevels and
// OpenRC's /run/openrc), without booting anything. The boots are in qemu.test.ts and
// pipeline.test.ts.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { HEALTH_HOOK, HEALTH_HOOK_PATH, HEALTH_SCRIPT, HEALTH_SCRIPT_PATH, healthFiles, parseHealth } from "../src/boot/health";
import { smallArchive } from "../src/image/release";

const tmpdir = (t: { after(f: () => void): void }) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-health-test-"));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

test("parseHealth: a clean report among kernel lines and console noise", () => {
  const text = [
    "[    3.1] virtio_blk virtio1: [vdb] 131072 512-byte logical blocks",
    "ramroot: build 0123456789abcdef up",
    "\rramroot-health: begin 1 build=0123456789abcdef",
    "[    3.2] random: crng init done",
    "ramroot-health: mount ok /media/usb UUID=B61B-19E7 vfat",
    "ramroot-health: mount missing /srv/backup nas:/backup nfs optional=network",
    "ramroot-health: result ok problems=0 mounts=2 services=14\r",
    "The system is going down NOW!",
  ].join("\n");
  const r = parseHealth(text)!;
  assert.equal(r.build, "0123456789abcdef");
  assert.equal(r.result, "ok");
  assert.deepEqual(r.problems, []);
  assert.deepEqual(r.mounts, [
    { state: "ok", mountPoint: "/media/usb", source: "UUID=B61B-19E7", type: "vfat" },
    { state: "missing", mountPoint: "/srv/backup", source: "nas:/backup", type: "nfs", optional: "network" },
  ]);
  assert.deepEqual(r.notes, ["/srv/backup (nas:/backup, from /etc/fstab) is not mounted (a network filesystem: not a failure)"]);
  assert.deepEqual(r.counts, { problems: 0, mounts: 2, services: 14 });
  assert.equal(r.lines.length, 4);
  assert.equal(r.lines[3], "ramroot-health: result ok problems=0 mounts=2 services=14");
});

test("parseHealth: missing mounts and failed services become problems in words", () => {
  const r = parseHealth([
    "ramroot-health: begin 1 build=feedfacefeedface",
    "ramroot-health: mount missing /media/usb UUID=B61B-19E7 vfat",
    String.raw`ramroot-health: mount missing /mnt/my\040disk LABEL=data ext4`,
    "ramroot-health: mount readonly /var/lib/x /dev/sda2 ext4",
    "ramroot-health: mount missing /mnt/spare LABEL=spare ext4 optional=nofail",
    "ramroot-health: service failed sshd default",
    "ramroot-health: service stopped syslog boot",
    "ramroot-health: service inactive net.eth0 default",
    "ramroot-health: result fail problems=6 mounts=4 services=15",
  ].join("\n"))!;
  assert.equal(r.result, "fail");
  assert.deepEqual(r.problems, [
    "/media/usb (UUID=B61B-19E7, from /etc/fstab) is not mounted",
    "/mnt/my disk (LABEL=data, from /etc/fstab) is not mounted",
    "/var/lib/x (/dev/sda2, from /etc/fstab) is mounted read-only (fstab does not say ro)",
    "service sshd failed to start (runlevel default)",
    "service syslog (runlevel boot) was not started",
    "service net.eth0 (runlevel default) is inactive, not started",
  ]);
  assert.deepEqual(r.notes, ["/mnt/spare (LABEL=spare, from /etc/fstab) is not mounted (nofail: not a failure)"]);
  assert.deepEqual(r.services.map((s) => [s.state, s.name, s.runlevel]), [["failed", "sshd", "default"], ["stopped", "syslog", "boot"], ["inactive", "net.eth0", "default"]]);
});

test("parseHealth: no report, an unfinished one, the last of two, and a garbled one", () => {
  assert.equal(parseHealth("ramroot: build x up\nlogin:"), undefined);
  assert.equal(parseHealth("ramroot-health: begin 1 build=a\nramroot-health: mount ok / rootfs rootfs\n"), undefined, "no result line yet");
  const two = parseHealth([
    "ramroot-health: begin 1 build=first",
    "ramroot-health: result fail problems=1 mounts=0 services=1",
    "ramroot-health: begin 1 build=second",
    "ramroot-health: result ok problems=0 mounts=0 services=0",
  ].join("\n"))!;
  assert.equal(two.build, "second");
  assert.equal(two.result, "ok");
  // A line lost on the console: the result line's counts give it away.
  const lost = parseHealth([
    "ramroot-health: begin 1 build=b",
    "ramroot-health: mount ok /media/usb UUID=B61B-19E7 vfat",
    "ramroot-health: result fail problems=1 mounts=2 services=3",
  ].join("\n"))!;
  assert.equal(lost.problems.length, 1);
  assert.match(lost.problems[0]!, /^the health report is garbled: its result line says fail with problems=1 mounts=2, the lines above it show 0 problems and 1 mounts$/);
  const mangled = parseHealth("ramroot-health: begin 1 build=c\nramroot-health: mount ok /med[    4.0] usb: new device\nramroot-health: result ok problems=0 mounts=0 services=0")!;
  assert.match(mangled.problems.join("\n"), /^the health report is garbled: "mount ok \/med\[/);
  const later = parseHealth("ramroot-health: begin 2 build=d\nramroot-health: result ok problems=0 mounts=0 services=0")!;
  assert.match(later.problems.join("\n"), /garbled: format 2 \(this ramroot reads format 1\)/);
});

/** A made-up root for the script: fstab, the mounts file, runlevels and OpenRC's state. */
function fakeRoot(dir: string): { root: string; mounts: string } {
  const root = path.join(dir, "root");
  const w = (rel: string, text: string) => {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), text);
  };
  w("etc/ramroot-release", 'BUILD_ID="0123456789abcdef"\nCMDLINE="console=ttyS0 $(reboot)"\n');
  w("etc/fstab", [
    "# the persistence stick",
    "UUID=B61B-19E7\t/media/usb/ vfat noatime,rw,fmask=177 0 0",
    String.raw`LABEL=data /mnt/my\040disk ext4 defaults 0 2   # a comment`,
    "/dev/sda2 /var/lib/x ext4 rw 0 0",
    "tmpfs /tmp tmpfs ro,mode=1777 0 0",
    "nas:/backup /srv/backup nfs defaults 0 0",
    "LABEL=spare /mnt/spare ext4 nofail 0 0",
    "/dev/sdb1 /mnt/later ext4 noauto 0 0",
    "/dev/sda3 none swap sw 0 0",
    "",
  ].join("\n"));
  const mounts = path.join(dir, "mounts");
  fs.writeFileSync(mounts, [
    "rootfs / rootfs rw 0 0",
    "proc /proc proc rw,nosuid,nodev,noexec 0 0",
    "/dev/vdb /media/usb vfat rw,noatime,fmask=0177 0 0",
    "/dev/sda2 /var/lib/x ext4 ro,relatime 0 0",
    "tmpfs /tmp tmpfs ro,relatime 0 0",
    "",
  ].join("\n"));
  const svc: Record<string, string[]> = { sysinit: ["devfs", "mdev"], boot: ["localmount", "syslog", "seedrng"], default: ["sshd", "local", "net.eth0"], shutdown: ["mount-ro"] };
  fs.mkdirSync(path.join(root, "etc/init.d"), { recursive: true });
  for (const [level, names] of Object.entries(svc)) {
    fs.mkdirSync(path.join(root, "etc/runlevels", level), { recursive: true });
    for (const n of names) fs.symlinkSync(`/etc/init.d/${n}`, path.join(root, "etc/runlevels", level, n));
  }
  const state: Record<string, string[]> = { started: ["devfs", "mdev", "localmount", "seedrng"], starting: ["local"], failed: ["sshd"], inactive: ["net.eth0"] };
  for (const [dir_, names] of Object.entries(state)) {
    fs.mkdirSync(path.join(root, "run/openrc", dir_), { recursive: true });
    for (const n of names) fs.symlinkSync(`/etc/init.d/${n}`, path.join(root, "run/openrc", dir_, n));
  }
  return { root, mounts };
}

test("the health script, run by dash and by busybox sh on a made-up root, says what it finds", (t) => {
  const dir = tmpdir(t);
  const script = path.join(dir, "health");
  fs.writeFileSync(script, HEALTH_SCRIPT, { mode: 0o755 });
  const { root, mounts } = fakeRoot(dir);
  const expected = [
    "ramroot-health: begin 1 build=0123456789abcdef",
    "ramroot-health: mount ok /media/usb UUID=B61B-19E7 vfat",
    String.raw`ramroot-health: mount missing /mnt/my\040disk LABEL=data ext4`,
    "ramroot-health: mount readonly /var/lib/x /dev/sda2 ext4",
    "ramroot-health: mount ok /tmp tmpfs tmpfs",
    "ramroot-health: mount missing /srv/backup nas:/backup nfs optional=network",
    "ramroot-health: mount missing /mnt/spare LABEL=spare ext4 optional=nofail",
    "ramroot-health: service stopped syslog boot",
    "ramroot-health: service inactive net.eth0 default",
    "ramroot-health: service failed sshd default",
    "ramroot-health: result fail problems=5 mounts=6 services=8",
    "",
  ].join("\n");
  const shells = [["dash"], ["busybox", "sh"]].filter(([sh]) => spawnSync("sh", ["-c", `command -v ${sh}`]).status === 0);
  assert.ok(shells.length > 0, "neither dash nor busybox is installed");
  for (const sh of shells) {
    const r = spawnSync(sh[0]!, [...sh.slice(1), script], { encoding: "utf8", env: { PATH: process.env.PATH, RAMROOT_HEALTH_ROOT: root, RAMROOT_HEALTH_MOUNTS: mounts } });
    assert.equal(r.stderr, "", `${sh.join(" ")}: stderr`);
    assert.equal(r.stdout, expected, `${sh.join(" ")}: the report`);
    assert.equal(r.status, 1, `${sh.join(" ")}: exit status of a failed report`);
    assert.equal(parseHealth(r.stdout)!.problems.length, 5);
  }

  // Everything fine: exit 0 and an ok result the parser agrees with.
  fs.writeFileSync(path.join(root, "etc/fstab"), "UUID=B61B-19E7 /media/usb vfat rw 0 0\n");
  for (const n of ["syslog", "sshd", "net.eth0"]) fs.rmSync(path.join(root, "etc/runlevels", n === "syslog" ? "boot" : "default", n));
  const ok = spawnSync("dash", [script], { encoding: "utf8", env: { PATH: process.env.PATH, RAMROOT_HEALTH_ROOT: root, RAMROOT_HEALTH_MOUNTS: mounts } });
  assert.equal(ok.status, 0);
  const report = parseHealth(ok.stdout)!;
  assert.equal(report.result, "ok");
  assert.deepEqual(report.problems, []);
  assert.deepEqual(report.counts, { problems: 0, mounts: 1, services: 5 });

  // No fstab, no runlevels, no OpenRC: a report all the same.
  const empty = path.join(dir, "empty");
  fs.mkdirSync(empty);
  const none = spawnSync("dash", [script], { encoding: "utf8", env: { PATH: process.env.PATH, RAMROOT_HEALTH_ROOT: empty, RAMROOT_HEALTH_MOUNTS: mounts } });
  assert.equal(none.stdout, "ramroot-health: begin 1 build=unknown\nramroot-health: result ok problems=0 mounts=0 services=0\n");
});

test("the release member carries the script and the hook, executable, in a folder of their own", async (t) => {
  const dir = tmpdir(t);
  const archive = path.join(dir, "release.cpio");
  fs.writeFileSync(archive, await smallArchive([{ name: "etc/ramroot-release", content: "BUILD_ID=\"x\"\n" }, ...healthFiles()]));
  const out = path.join(dir, "out");
  fs.mkdirSync(path.join(out, "etc/local.d"), { recursive: true });
  fs.mkdirSync(path.join(out, "usr/lib"), { recursive: true });
  execFileSync("cpio", ["-idm", "--quiet", "--no-absolute-filenames", "-F", archive], { cwd: out });
  const st = (rel: string) => fs.statSync(path.join(out, rel));
  assert.ok(st("usr/lib/ramroot").isDirectory());
  assert.equal(st("usr/lib/ramroot").mode & 0o7777, 0o755);
  assert.equal(fs.readFileSync(path.join(out, HEALTH_SCRIPT_PATH), "utf8"), HEALTH_SCRIPT);
  assert.equal(fs.readFileSync(path.join(out, HEALTH_HOOK_PATH), "utf8"), HEALTH_HOOK);
  assert.equal(st(HEALTH_SCRIPT_PATH).mode & 0o7777, 0o755);
  assert.equal(st(HEALTH_HOOK_PATH).mode & 0o7777, 0o755);
  // Both parse as POSIX sh; the hook asks QEMU's fw_cfg, and only powers off when told to.
  for (const f of [HEALTH_SCRIPT_PATH, HEALTH_HOOK_PATH]) execFileSync("dash", ["-n", path.join(out, f)]);
  assert.match(HEALTH_HOOK, /by_name\/opt\/org\.ramroot\/after-boot\/raw/);
  assert.match(HEALTH_HOOK, /case "\$\(cat "\$cfg" 2>\/dev\/null\)" in\npoweroff\)\n[^;]*\n\tpoweroff\n\t;;\nwait-then-poweroff\)\n/);
});
