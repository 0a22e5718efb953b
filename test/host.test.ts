// The rehearsal host. A stick made by `ramroot stick write` from a UKI of the
// test system (scripts/testsys.sh: Debian's sshd and efibootmgr under the OpenRC stand-in) boots
// under `ramroot host` as the NAS boots its stick: SSH on 127.0.0.1:PORT with the host key from
// the image's secrets layer, a reboot in the guest reboots the machine, a UEFI variable written
// with efibootmgr survives a reboot and a restart with the same --vars, and SIGTERM powers the
// guest off through its power button, leaving the stick's FAT clean. The example system/, built
// by the real program with its host key as a stack secret, goes through the same host.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { qemuCommand, type Arch } from "../src/boot/qemu";
import { freePort } from "./sshd";
import { Project, repo } from "./project";
import { bootsIn, cli, keyPair, HostProcess, login, ssh, sshArgs, stickFile, stickFsck, testSystemStick, tmpdir } from "./rehearsal";

const times: string[] = [];
test.after(() => { if (times.length) console.log(`# rehearsal host timings: ${times.join("; ")}`); });


for (const arch of ["aarch64", "x86_64"] as const) {
  test(`${arch}: the stick boots under ramroot host; SSH with the pinned key, reboot, a UEFI variable kept across a reboot and a restart, SIGTERM powers off cleanly`, { timeout: 20 * 60_000 }, async (t) => {
    const dir = tmpdir(t, arch);
    const s = await testSystemStick(arch, dir);
    const port = await freePort();
    const vars = path.join(dir, "vars.fd");
    const consoleFile = path.join(dir, "console.log");
    const knownHosts = path.join(dir, "known_hosts");
    fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${s.hostKey}\n`);
    const args = sshArgs(port, knownHosts, s.client.file);
    const label = `ramroot-host-test-${randomBytes(4).toString("hex")}`;
    const bootPath = arch === "aarch64" ? "\\EFI\\BOOT\\BOOTAA64.EFI" : "\\EFI\\BOOT\\BOOTX64.EFI";
    const hostArgs = ["--stick", s.stick, "--ssh-port", String(port), "--vars", vars, "--console", consoleFile];

    let h = new HostProcess(hostArgs);
    t.after(() => { h.child.kill("SIGKILL"); });
    await h.line(/made the UEFI variable store .*vars\.fd from \/usr\/share\/(AAVMF\/AAVMF|OVMF\/OVMF)_VARS/, 30_000);
    const up = await login(args, 240_000);
    times.push(`${arch} SSH login ${((Date.now() - h.started) / 1000).toFixed(1)} s after start`);
    // The stick is what the firmware booted; this build's id; the host key came from the secrets layer.
    assert.match((await ssh(args, "cat /etc/ramroot-release")).stdout, new RegExp(`^BUILD_ID="${s.buildId}"$`, "m"));
    assert.match((await ssh(args, "stat -c '%a %U' /etc/ssh/ssh_host_ed25519_key")).stdout, /^600 root$/m);
    assert.ok(up >= 0);
    // Nothing listens on the host's other addresses: the forward is on 127.0.0.1 only.
    const ss = execFileSync("ss", ["-Htln", `sport = :${port}`], { encoding: "utf8" });
    assert.match(ss, new RegExp(`127\\.0\\.0\\.1:${port}\\b`));
    assert.doesNotMatch(ss, new RegExp(`(0\\.0\\.0\\.0|\\*|\\[::\\]):${port}\\b`));

    // efibootmgr through efivarfs: a boot entry that the firmware keeps in the variable store.
    const made = await ssh(args, `efibootmgr -C -d /dev/vda -p 1 -L ${label} -l '${bootPath}'`);
    assert.ok(made.ok, made.stderr);
    assert.match(made.stdout, new RegExp(`Boot[0-9A-F]{4}\\* ${label}`));

    // A reboot in the guest reboots the machine: qemu keeps running, the firmware boots the stick again.
    const mark = h.lines.length;
    const rebootAt = Date.now();
    await ssh(args, "reboot", 30_000);
    await h.line(/the guest rebooted \(guest-reset\): boot 2/, 120_000, mark);
    await login(args, 240_000);
    times.push(`${arch} reboot to SSH ${((Date.now() - rebootAt) / 1000).toFixed(1)} s`);
    const after = await ssh(args, "efibootmgr; cat /media/usb/host-boots");
    assert.match(after.stdout, new RegExp(`Boot[0-9A-F]{4}\\* ${label}`), "the variable survived the reboot");
    assert.match(after.stdout, /^2$/m, "the second boot counted itself on the stick");
    assert.equal(bootsIn(fs.readFileSync(consoleFile, "utf8")), 2, "the console shows a second boot");
    assert.match(fs.readFileSync(consoleFile, "utf8"), new RegExp(`RAMROOT-HOST-BOOT count=2 build=${s.buildId}`));

    // SIGTERM: the power button, the guest's own shutdown (OpenRC unmounts the stick), qemu's exit.
    const stop = await h.terminate();
    times.push(`${arch} SIGTERM to exit ${stop.seconds.toFixed(1)} s`);
    assert.equal(stop.code, 0, h.stderr);
    assert.match(h.stderr, /SIGTERM: powering the guest off/);
    assert.match(h.stderr, /pressing the power button \(QMP system_powerdown\)/);
    assert.match(h.stderr, /the guest powered off after its power button was pressed \([\d.]+ s running, 2 boots\)/);
    const log = fs.readFileSync(consoleFile, "utf8");
    assert.match(log, / \* Stopping localmount \.\.\.[\s\S]* \* Starting mount-ro \.\.\.[\s\S]*reboot: Power down/);
    const fsck = stickFsck(s.stick, dir);
    assert.ok(fsck.clean, `the stick's FAT is dirty after the power-off:\n${fsck.output}`);
    assert.equal(stickFile(s.stick, "host-boots"), "2\n");

    // The same --vars, a new qemu: the variable is still there; the console file is appended to.
    const consoleBefore = fs.statSync(consoleFile).size;
    h = new HostProcess(hostArgs);
    await h.line(/UEFI variables in .*vars\.fd/, 30_000);
    assert.doesNotMatch(h.stderr, /made the UEFI variable store/);
    await login(args, 240_000);
    const again = await ssh(args, "efibootmgr; cat /media/usb/host-boots");
    assert.match(again.stdout, new RegExp(`Boot[0-9A-F]{4}\\* ${label}`), "the variable survived a restart of ramroot host");
    assert.match(again.stdout, /^3$/m);
    assert.ok(fs.statSync(consoleFile).size > consoleBefore);
    assert.match(fs.readFileSync(consoleFile, "utf8").slice(0, consoleBefore), new RegExp(`RAMROOT-HOST-BOOT count=2 build=${s.buildId}`), "the first run's console is kept");
    const second = await h.terminate();
    assert.equal(second.code, 0, h.stderr);
    assert.ok(stickFsck(s.stick, dir).clean, "the stick's FAT is dirty after the second power-off");
  });
}

test("a guest that does not handle its power button: after --stop-timeout qemu is killed, exit 1, saying what to enable", { timeout: 10 * 60_000 }, async (t) => {
  const dir = tmpdir(t, "noacpid");
  const s = await testSystemStick("aarch64", dir, { acpid: false });
  const port = await freePort();
  const knownHosts = path.join(dir, "known_hosts");
  fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${s.hostKey}\n`);
  const h = new HostProcess(["--stick", s.stick, "--ssh-port", String(port), "--console", path.join(dir, "console.log"), "--stop-timeout", "15"]);
  t.after(() => { h.child.kill("SIGKILL"); });
  await h.line(/UEFI variables in a throw-away store \(--vars FILE keeps them\)/, 30_000);
  await login(sshArgs(port, knownHosts, s.client.file), 240_000);
  const stop = await h.terminate();
  assert.equal(stop.code, 1, h.stderr);
  assert.ok(stop.seconds >= 15 && stop.seconds < 60, `${stop.seconds} s`);
  assert.match(h.stderr, /pressing the power button \(QMP system_powerdown\)[\s\S]*pressing the power button/, "pressed again after 10 s");
  assert.match(h.stderr, /killing qemu: the guest did not power off within 15 s of its power button: does it handle the button\? \(Alpine: rc-update add acpid default, and \/etc\/acpi\/PWRF\/00000080 running poweroff\)/);
  assert.match(h.stderr, /qemu killed \(.*\) after [\d.]+ s: the guest did not shut down, so the stick may not be clean \(fsck\.vfat\)/);
});

test("ramroot host refuses what it cannot boot, before qemu starts", async (t) => {
  const dir = tmpdir(t, "refuse");
  const run = (args: string[]) => spawnSync(process.execPath, [cli, "host", ...args], { encoding: "utf8", timeout: 60_000 });
  const stub = (arch: Arch) => {
    const tree = execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { encoding: "utf8" }).trim().split("\n").pop()!;
    return path.join(tree, "boot", "efistub");
  };
  assert.match(run([]).stderr, /host needs --stick IMAGE and --ssh-port PORT/);
  assert.match(run(["--stick", path.join(dir, "none.img"), "--ssh-port", "2222"]).stderr, /the stick .*none\.img does not exist \(make one with: ramroot stick write/);
  assert.match(run(["--stick", "x", "--ssh-port", "70000"]).stderr, /--ssh-port 70000: a whole number from 1 to 65535/);
  const blank = path.join(dir, "blank.img");
  fs.writeFileSync(blank, Buffer.alloc(4 << 20));
  assert.match(run(["--stick", blank, "--ssh-port", "2222"]).stderr, /blank\.img has no EFI System Partition, so no firmware would boot it/);
  const stick = path.join(dir, "stick.img");
  execFileSync(process.execPath, [cli, "stick", "write", stick, "--uki", stub("aarch64"), "--size", "64M"]);
  assert.match(run(["--stick", stick, "--ssh-port", "2222", "--arch", "x86_64"]).stderr, /has no EFI\/BOOT\/BOOTX64\.EFI on its ESP \(it has the aarch64 one\): the x86_64 firmware would not boot it/);
  // A port something listens on.
  const srv = net.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => srv.once("listening", r));
  const busy = (srv.address() as net.AddressInfo).port;
  const r = run(["--stick", stick, "--ssh-port", String(busy)]);
  srv.close();
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${busy} is in use: give another --ssh-port`));
  // A variable store of the other architecture's firmware (OVMF's 540 KiB, AAVMF wants 64 MiB).
  const vars = path.join(dir, "ovmf-vars.fd");
  fs.copyFileSync("/usr/share/OVMF/OVMF_VARS_4M.fd", vars);
  assert.match(run(["--stick", stick, "--ssh-port", String(await freePort()), "--vars", vars]).stderr, /--vars .*ovmf-vars\.fd is not a UEFI variable store for aarch64 \(540672 bytes; \/usr\/share\/AAVMF\/AAVMF_VARS\.fd has 67108864\)/);
});

test("qemuCommand for the host: pflash firmware with the variable store, the stick writable, reboots kept, SSH on 127.0.0.1 only", () => {
  const a = qemuCommand({ arch: "aarch64", disk: "/s/stick.img", diskWritable: true, reboot: true, firmwareVars: "/s/vars.fd", forward: [{ hostAddress: "127.0.0.1", hostPort: 2222, guestPort: 22 }], qmpSocket: "/t/qmp.sock", rng: true }).args.join(" ");
  assert.match(a, /-drive if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/AAVMF\/AAVMF_CODE\.fd -drive if=pflash,format=raw,unit=1,file=\/s\/vars\.fd/);
  assert.doesNotMatch(a, /-bios|-no-reboot|readonly=on,file=\/s\/stick/);
  assert.match(a, /-drive if=none,id=boot,format=raw,file=\/s\/stick\.img/);
  assert.match(a, /-netdev user,id=net0,hostfwd=tcp:127\.0\.0\.1:2222-:22 -device virtio-net-pci,netdev=net0/);
  assert.match(a, /-chardev socket,id=qmp,path=\/t\/qmp\.sock,server=on,wait=off -mon chardev=qmp,mode=control/);
  assert.match(a, /-device virtio-rng-pci/);
  // The boot check's command is unchanged: -bios on aarch64, read-only disk, -no-reboot, no network.
  const b = qemuCommand({ arch: "aarch64", disk: "/s/disk.img" }).args.join(" ");
  assert.match(b, /-bios \/usr\/share\/qemu-efi-aarch64\/QEMU_EFI\.fd/);
  assert.match(b, /-no-reboot/);
  assert.match(b, /readonly=on,file=\/s\/disk\.img/);
  assert.doesNotMatch(b, /-netdev|AAVMF|-mon chardev|virtio-rng/);
  const x = qemuCommand({ arch: "x86_64", disk: "/s/stick.img", firmwareVars: "/s/vars.fd", reboot: true }).args.join(" ");
  assert.match(x, /unit=0,readonly=on,file=\/usr\/share\/OVMF\/OVMF_CODE_4M\.fd -drive if=pflash,format=raw,unit=1,file=\/s\/vars\.fd/);
  assert.throws(() => qemuCommand({ arch: "x86_64", disk: "d", forward: [{ hostAddress: "localhost", hostPort: 1, guestPort: 22 }] }), /give an IPv4 address/);
});

test("the example system/, built by the real program with its host key as a stack secret, under ramroot host: SSH as the skeleton's key, efibootmgr, a clean power-off", { timeout: 30 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  const dir = tmpdir(t, "example");
  const host = keyPair(dir, "host_ed25519");
  const client = keyPair(dir, "client_ed25519");
  const sys = path.join(p.dir, "system");
  // The NAS's way: the host key declared as a secret (the example has the line, commented), root's key in the skeleton.
  const secrets = fs.readFileSync(path.join(sys, "secrets"), "utf8");
  assert.match(secrets, /^# file \/etc\/ssh\/ssh_host_ed25519_key 0600 root sshHostKey$/m);
  fs.writeFileSync(path.join(sys, "secrets"), secrets.replace(/^# (file \/etc\/ssh\/ssh_host_ed25519_key 0600 root sshHostKey)$/m, "$1"));
  fs.appendFileSync(path.join(sys, "root", "root", ".ssh", "authorized_keys"), `${client.public}\n`);
  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["config", "set", "ramroot:arch", "aarch64", "--stack", "qemu"]);
  await p.pulumi(["config", "set", "--secret", "ramroot:secretsSalt", randomBytes(32).toString("hex"), "--stack", "qemu"]);
  // The key file's text, its final newline included (OpenSSH reads no key without it); "--": it starts with dashes.
  await p.pulumi(["config", "set", "--secret", "--stack", "qemu", "ramroot:sshHostKey", "--", host.private]);
  const up = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  // The boot check passed with sshd and acpid enabled and the host key from the secret.
  assert.match(up.stdout, /console: ramroot-health: result ok problems=0 mounts=1 services=\d+/);
  assert.doesNotMatch(up.stdout, /service failed (sshd|acpid)/);
  assert.doesNotMatch(up.stdout, /Generating ed25519 SSH host key/, "sshd made a key although the image has one");
  const o = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
  const stick = path.join(dir, "stick.img");
  execFileSync(process.execPath, [cli, "stick", "write", stick, "--uki", o.ukiPath]);
  const port = await freePort();
  const knownHosts = path.join(dir, "known_hosts");
  fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${host.public.split(" ").slice(0, 2).join(" ")}\n`);
  const args = sshArgs(port, knownHosts, client.file);
  const consoleFile = path.join(dir, "console.log");
  const h = new HostProcess(["--stick", stick, "--ssh-port", String(port), "--vars", path.join(dir, "vars.fd"), "--console", consoleFile]);
  t.after(() => { h.child.kill("SIGKILL"); });
  await login(args, 300_000);
  times.push(`example aarch64 SSH login ${((Date.now() - h.started) / 1000).toFixed(1)} s after start`);
  const r = await ssh(args, "cat /etc/ramroot-release; efibootmgr; grep -c . /media/usb/ramroot-boots; ls -ld /root | cut -c1-10");
  assert.ok(r.ok, r.stderr);
  assert.match(r.stdout, new RegExp(`BUILD_ID="?${o.buildId}"?`));
  assert.match(r.stdout, /^BootCurrent: [0-9A-F]{4}$/m);
  assert.match(r.stdout, /^drwx------$/m, "root's home is private (setup.sh)");
  // The boot check's persistence image is not this stick: here the stick itself is /media/usb.
  assert.match(fs.readFileSync(consoleFile, "utf8"), /ramroot: persisted boots=1 \(was 0\) on \/media\/usb/);
  const stop = await h.terminate();
  assert.equal(stop.code, 0, h.stderr);
  assert.match(h.stderr, /the guest powered off after its power button was pressed/);
  assert.ok(stickFsck(stick, dir).clean, "the stick's FAT is dirty after the power-off");
});
