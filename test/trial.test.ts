// Issue 14, parts 3-5: the production stack, driven by the real Pulumi CLI, deploys the example
// system/ to a rehearsal host (`ramroot host`, aarch64: it boots fastest) whose stick was made by
// `ramroot stick write` from an older build: a deploy that reboots into the new build, trial
// boots through BootNext that are promoted, or fall back by themselves (a kernel panic; a
// userland without SSH, through the trial timer), connections cut during the upload, the trial
// boot and the promotion, and a rollback. One host, one variable store and one build of the
// rootfs for all of them: each case changes the cmdline (a new UKI only) or one skeleton file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";
import { freePort, startProxy } from "./sshd";
import { cli, HostProcess, keyPair, login, ssh, sshArgs, stickFsck, tmpdir } from "./rehearsal";

const times: string[] = [];
test.after(() => { if (times.length) console.log(`# trial boot timings: ${times.join("; ")}`); });

const STICK = "/media/usb/EFI/BOOT/BOOTAA64.EFI";
const cmdline = (tag: string, init = "/sbin/init") => `rdinit=${init} console=ttyAMA0 panic=5 ramroot-test=${tag}`;

test("production on the rehearsal host: reboot deploys, trial boots promoted or fallen back, cuts converge, rollback", { timeout: 45 * 60_000 }, async (t) => {
  const t0 = Date.now();
  const lap = (what: string, from: number) => times.push(`${what} ${((Date.now() - from) / 1000).toFixed(0)} s`);
  const p = Project.create();
  t.after(() => p.remove());
  const dir = tmpdir(t, "trial");
  const hostKey = keyPair(dir, "host_ed25519");
  const client = keyPair(dir, "client_ed25519");
  const sys = path.join(p.dir, "system");
  const secrets = fs.readFileSync(path.join(sys, "secrets"), "utf8");
  fs.writeFileSync(path.join(sys, "secrets"), secrets.replace(/^# (file \/etc\/ssh\/ssh_host_ed25519_key 0600 root sshHostKey)$/m, "$1"));
  fs.appendFileSync(path.join(sys, "root", "root", ".ssh", "authorized_keys"), `${client.public}\n`);
  const prod = ["--stack", "production"];
  const set = (k: string, v: string, ...flags: string[]) => p.pulumi(["config", "set", ...flags, `ramroot:${k}`, ...prod, "--", v]);
  const out = async () => JSON.parse((await p.pulumi(["stack", "output", "--json", ...prod])).stdout);
  const up = (allowFail = false) => p.pulumi(["up", "--yes", ...prod], { allowFail, timeoutMs: 20 * 60_000 });
  await p.pulumi(["stack", "init", "production"]);
  await set("arch", "aarch64");
  await set("secretsSalt", randomBytes(32).toString("hex"), "--secret");
  await set("sshHostKey", hostKey.private, "--secret");
  await set("allowUntested", "true");

  // The older build, made by the same stack before it has a host; the stick made from it.
  await set("cmdline", cmdline("a"));
  let t1 = Date.now();
  await up();
  lap("first build", t1);
  const a = await out();
  const stick = path.join(dir, "stick.img");
  execFileSync(process.execPath, [cli, "stick", "write", stick, "--uki", a.ukiPath]);

  const port = await freePort();
  const knownHosts = path.join(dir, "known_hosts");
  fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostKey.public.split(" ").slice(0, 2).join(" ")}\n`);
  const args = sshArgs(port, knownHosts, client.file);
  const consoleFile = path.join(dir, "console.log");
  const h = new HostProcess(["--stick", stick, "--ssh-port", String(port), "--vars", path.join(dir, "vars.fd"), "--console", consoleFile]);
  t.after(() => { h.child.kill("SIGKILL"); });
  const proxy = await startProxy(port);
  t.after(() => proxy.close());
  await login(args, 300_000);
  const run = async (command: string) => {
    const r = await ssh(args, command);
    assert.ok(r.ok, `${command}: ${r.stderr}`);
    return r.stdout;
  };
  const buildOnHost = async () => (await run(". /etc/ramroot-release; echo $BUILD_ID")).trim();
  const sha = async (f: string) => (await run(`sha256sum ${f} 2>/dev/null || true`)).split(" ")[0].trim();
  /** What a trial may leave on the host: boot entries, BootNext, the mark, the image. */
  const leftovers = async () => (await run("efibootmgr | grep -i 'ramroot trial' || true; ls /sys/firmware/efi/efivars | grep -E '^BootNext' || true; ls /media/usb/EFI/ramroot 2>/dev/null || true")).trim();
  assert.equal(await buildOnHost(), a.buildId);
  // Persistence data written before any deploy: it must outlive all of them.
  await run("mkdir -p /media/usb/persist && echo kept-across-deploys > /media/usb/persist/trial-test && sync");

  await set("host", "127.0.0.1");
  await set("sshPort", String(proxy.port));
  await set("hostKey", hostKey.public.split(" ").slice(0, 2).join(" "));
  await set("sshPrivateKey", client.private, "--secret");
  await set("reboot", "true");
  await set("waitSeconds", "240");
  await set("trialSeconds", "75");
  await set("consoleLog", consoleFile);

  let b: any;
  await t.test("§3: a deploy with reboot on the stick made from the older build comes back on the new build, healthy; BOOTAA64.EFI and .prev are the two images", async () => {
    await set("trialBoot", "false");
    await set("cmdline", cmdline("b"));
    const pv = await p.pulumi(["preview", ...prod]);
    assert.match(pv.stdout, /deploy mode: replace the image, reboot, wait for the new build \(ramroot:trialBoot false\)/);
    t1 = Date.now();
    const r = await up();
    lap("reboot deploy", t1);
    b = await out();
    assert.match(r.stdout, new RegExp(`127\\.0\\.0\\.1 is up and runs build ${b.buildId}, healthy`));
    assert.equal(await buildOnHost(), b.buildId);
    assert.equal(await sha(STICK), b.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), a.ukiSha256);
  });

  await t.test("§3: a host that comes back on another build fails the up, naming it", async () => {
    // The firmware boots BOOTAA64.EFI, not this file: the host comes back on the build it had.
    const before = await buildOnHost();
    await set("bootPath", "/media/usb/EFI/other/BOOTAA64.EFI");
    await run("mkdir -p /media/usb/EFI/other");
    await set("cmdline", cmdline("b2"));
    const r = await up(true);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, new RegExp(`came back on build ${before}, not [0-9a-f]+, after the deploy's reboot`));
    await p.pulumi(["config", "rm", "ramroot:bootPath", ...prod]);
    await run("rm -rf /media/usb/EFI/other");
  });

  let c: any;
  await t.test("§4: a trial deploy of a good build is promoted: BOOTAA64.EFI is it, .prev the one before, no trial entry or image left", async () => {
    await p.pulumi(["config", "rm", "ramroot:trialBoot", ...prod]);
    await set("cmdline", cmdline("c"));
    const pv = await p.pulumi(["preview", ...prod]);
    assert.match(pv.stdout, /deploy mode: trial boot through BootNext, promoted once healthy \(the host has efivarfs and efibootmgr\)/);
    t1 = Date.now();
    const r = await up();
    lap("trial deploy, promoted", t1);
    c = await out();
    assert.match(r.stdout, /Boot[0-9A-F]{4} "ramroot trial [0-9a-f]+ ramroot-trial-seconds=75" -> \\EFI\\ramroot\\trial\.efi; BootNext=Boot[0-9A-F]{4}/);
    assert.match(r.stdout, new RegExp(`runs build ${c.buildId} from its trial entry, healthy: promoting it`));
    assert.equal(await buildOnHost(), c.buildId);
    assert.equal(await sha(STICK), c.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), b.ukiSha256);
    assert.equal(await leftovers(), "");
    assert.match(fs.readFileSync(consoleFile, "utf8"), new RegExp(`ramroot: trial boot of build ${c.buildId} \\(Boot[0-9A-F]{4}\\): rebooting to the default entry in 75 s unless the deployer confirms it`));
  });

  await t.test("§4: a trial of a build that panics falls back by itself; the host is on the old build, its data intact; the next up leaves nothing of the trial", async () => {
    await set("cmdline", cmdline("d", "/no-such-init"));
    t1 = Date.now();
    const r = await up(true);
    lap("trial of a panicking build, failed", t1);
    assert.notEqual(r.code, 0);
    const text = r.stdout + r.stderr;
    assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${c.buildId}`));
    assert.match(text, /Kernel panic - not syncing/, "the console lines of the trial boot");
    assert.equal(await buildOnHost(), c.buildId);
    assert.equal(await sha(STICK), c.ukiSha256);
    assert.equal((await run("cat /media/usb/persist/trial-test")).trim(), "kept-across-deploys");
    assert.equal((await out()).ukiSha256, c.ukiSha256, "the state still records the build the host runs");
    await set("cmdline", cmdline("c"));
    await up();
    assert.equal(await leftovers(), "");
  });

  await t.test("§4: a trial of a build whose userland comes up without SSH falls back through the trial timer", async () => {
    const conf = path.join(sys, "root", "etc", "conf.d", "sshd");
    const orig = fs.readFileSync(conf, "utf8");
    // sshd -t refuses the option: the service fails, the rest of the boot goes on.
    fs.writeFileSync(conf, `${orig}\nSSHD_OPTS="-o NoSuchOption=yes"\n`);
    try {
      t1 = Date.now();
      const r = await up(true);
      lap("trial of a build without SSH, failed", t1);
      const text = r.stdout + r.stderr;
      assert.notEqual(r.code, 0);
      assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${c.buildId}`));
      assert.match(text, /was not confirmed within 75 s: rebooting to the default entry/);
    } finally {
      fs.writeFileSync(conf, orig);
    }
    assert.equal(await buildOnHost(), c.buildId);
    assert.equal(await leftovers(), "");
  });

  // A pulumi up killed (the deployer's machine gone) when `when` says so; then the next up.
  const killedUp = async (when: () => Promise<boolean>): Promise<string> => {
    const child = spawn("pulumi", ["--non-interactive", "up", "--yes", ...prod], { cwd: p.dir, env: p.env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (d) => { text += d; });
    child.stderr.on("data", (d) => { text += d; });
    const exited = new Promise((r) => child.on("exit", r));
    let done = false;
    child.on("exit", () => { done = true; });
    while (!done) {
      if (await when().catch(() => false)) { process.kill(-child.pid!, "SIGKILL"); break; }
      await new Promise((r) => setTimeout(r, 1000));
    }
    await exited;
    // The killed engine's lock: what scripts/pulumi.sh clears for a dead pulumi.
    fs.rmSync(path.join(p.dir, ".ramroot", "state", ".pulumi", "locks"), { recursive: true, force: true });
    return text;
  };

  await t.test("§4: a connection cut during the trial's upload: the default image untouched; the next up promotes", async () => {
    await set("cmdline", cmdline("e"));
    proxy.cutAfter = 4 << 20;
    const r = await up(true);
    proxy.cutAfter = undefined;
    assert.notEqual(r.code, 0);
    assert.equal(await sha(STICK), c.ukiSha256);
    await up();
    const e = await out();
    assert.equal(await sha(STICK), e.ukiSha256);
    assert.equal(await buildOnHost(), e.buildId);
    assert.equal(await leftovers(), "");
    c = e;
  });

  await t.test("§4: the deployer gone during the trial boot: the unconfirmed trial reboots to the default by its timer; the next up cleans up and promotes", async () => {
    await set("cmdline", cmdline("f"));
    const boots = () => (fs.readFileSync(consoleFile, "utf8").match(/Run \/sbin\/init as init process/g) ?? []).length;
    const before = boots();
    t1 = Date.now();
    await killedUp(async () => boots() > before);
    // Nobody confirms: the timer takes the host back to the default image.
    const deadline = Date.now() + 240_000;
    while (!/was not confirmed within 75 s/.test(fs.readFileSync(consoleFile, "utf8").split("Run /sbin/init").slice(before + 1).join(""))) {
      assert.ok(Date.now() < deadline, "the trial timer did not reboot the unconfirmed trial");
      await new Promise((r) => setTimeout(r, 2000));
    }
    await login(args, 240_000);
    assert.equal(await buildOnHost(), c.buildId);
    lap("trial boot abandoned, back by its timer", t1);
    assert.notEqual(await leftovers(), "", "the abandoned trial left its entry or image for the next up");
    await up();
    const f = await out();
    assert.equal(await buildOnHost(), f.buildId);
    assert.equal(await sha(STICK), f.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), c.ukiSha256);
    assert.equal(await leftovers(), "");
    c = f;
  });

  await t.test("§4: the deployer gone during the promotion: the next up finishes it", async () => {
    await set("cmdline", cmdline("g"));
    const killed = await killedUp(async () => (await ssh(args, "test -e /run/ramroot/trial-confirmed", 10_000)).ok);
    assert.doesNotMatch(killed, /Update complete|Resources:.*updated/);
    await up();
    const g = await out();
    assert.equal(await buildOnHost(), g.buildId);
    assert.equal(await sha(STICK), g.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), c.ukiSha256);
    assert.equal(await leftovers(), "");
    c = g;
  });

  await t.test("ramroot rollback, then a reboot: the previous build boots", async () => {
    const prevSha = await sha(`${STICK}.prev`);
    await new Promise<void>((resolve, reject) => execFile(path.join(p.dir, "bin", "ramroot"), ["rollback", "--stack", "production"], { cwd: p.dir, env: p.env }, (e, so, se) => (e ? reject(new Error(`${e.message}\n${so}\n${se}`)) : resolve())));
    assert.equal(await sha(STICK), prevSha);
    const mark = h.lines.length;
    await ssh(args, "reboot", 30_000);
    await h.line(/the guest rebooted/, 120_000, mark);
    await login(args, 240_000);
    const prevBuild = (await run("sed -n 's/^BUILD_ID=\"\\{0,1\\}\\([^\"]*\\).*/\\1/p' /etc/ramroot-release")).trim();
    assert.notEqual(prevBuild, c.buildId);
    assert.match(fs.readFileSync(consoleFile, "utf8").split("Run /sbin/init").pop()!, new RegExp(`build ${prevBuild}`));
  });

  const stop = await h.terminate();
  assert.equal(stop.code, 0, h.stderr);
  assert.ok(stickFsck(stick, dir).clean, "the stick's FAT is dirty after the power-off");
  lap("whole test", t0);
});
