// Issue 14, parts 3-5: the production stack, driven by the real Pulumi CLI, deploys the example
// system/ to a rehearsal host (`ramroot host`, aarch64: it boots fastest, and its kernel has the
// driver of the host's hardware watchdog) whose stick was made by `ramroot stick write` from an
// older build: a deploy that reboots into the new build, trial boots through BootNext that are
// promoted (the watchdog disarmed), or fall back by themselves (a kernel panic; a userland without
// SSH, through the trial timer; a userland frozen so hard that no process runs, through the
// hardware watchdog), connections cut during the upload, the trial boot and the promotion, and a
// rollback. One host, one variable store and one build of the rootfs for all of them: each case
// changes the cmdline (a new UKI only) or one skeleton file. test/trial-x86_64.test.ts does the
// trial boots on x86_64.
//
// RAMROOT_TRIAL_ONLY=WORD runs the setup and only the cases whose name holds WORD (e.g. watchdog).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fsckBeyondDirtyBit, login, ssh, stickFsck, rehearsalCmdline, startRehearsal } from "./rehearsal";

const times: string[] = [];
test.after(() => { if (times.length) console.log(`# trial boot timings (aarch64): ${times.join("; ")}`); });

/** The trial timer, counted from the trial guard's start in sysinit: boot, health report, the deployer's confirmation. */
const TRIAL_SECONDS = 60;
const cmdline = (tag: string, init = "/sbin/init", extra = "") => rehearsalCmdline("aarch64", tag, init, extra);
const only = process.env.RAMROOT_TRIAL_ONLY;

test("production on the rehearsal host: reboot deploys, trial boots promoted or fallen back (panic, timer, hardware watchdog), cuts converge, rollback", { timeout: 45 * 60_000 }, async (t) => {
  const t0 = Date.now();
  const lap = (what: string, from: number) => times.push(`${what} ${((Date.now() - from) / 1000).toFixed(0)} s`);
  const scenario = (name: string, fn: () => Promise<void>) =>
    t.test(name, { skip: only && !name.includes(only) ? `RAMROOT_TRIAL_ONLY=${only}` : false }, fn);
  let t1 = Date.now();
  const r = await startRehearsal(t, "aarch64", { trialSeconds: TRIAL_SECONDS, waitSeconds: 240 });
  lap("first build, stick, host up", t1);
  const { p, sys, h, proxy, prod, run, buildOnHost, sha, leftovers, consoleFile, args } = r;
  const STICK = r.stickPath;
  const a = r.first;
  const set = (k: string, v: string) => r.setAll({ [k]: v });
  const up = r.up, out = r.out;
  assert.equal(await buildOnHost(), a.buildId);
  // Persistence data written before any deploy: it must outlive all of them.
  await run("mkdir -p /media/usb/persist && echo kept-across-deploys > /media/usb/persist/trial-test && sync");
  /** The console since boot number `n` began (0: the first). */
  const consoleOfBoot = (n: number) => fs.readFileSync(consoleFile, "utf8").split("Run /sbin/init as init process").slice(n + 1).join("Run /sbin/init as init process");
  const boots = () => (fs.readFileSync(consoleFile, "utf8").match(/Run \/sbin\/init as init process/g) ?? []).length;

  let watchdogReset = false;
  let b: any;
  await scenario("§3: a deploy with reboot on the stick made from the older build comes back on the new build, healthy; BOOTAA64.EFI and .prev are the two images", async () => {
    await r.setAll({ trialBoot: "false", cmdline: cmdline("b") });
    const pv = await p.pulumi(["preview", ...prod]);
    assert.match(pv.stdout, /deploy mode: replace the image, reboot, wait for the new build \(ramroot:trialBoot false\)/);
    t1 = Date.now();
    const res = await up();
    lap("reboot deploy", t1);
    b = await out();
    assert.match(res.stdout, new RegExp(`127\\.0\\.0\\.1 is up and runs build ${b.buildId}, healthy`));
    assert.equal(await buildOnHost(), b.buildId);
    assert.equal(await sha(STICK), b.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), a.ukiSha256);
  });

  await scenario("§3: a host that comes back on another build fails the up, naming it", async () => {
    // The firmware boots BOOTAA64.EFI, not this file: the host comes back on the build it had.
    const before = await buildOnHost();
    await r.setAll({ trialBoot: "false", bootPath: "/media/usb/EFI/other/BOOTAA64.EFI", cmdline: cmdline("b2") });
    await run("mkdir -p /media/usb/EFI/other");
    const res = await up(true);
    assert.notEqual(res.code, 0);
    assert.match(res.stdout + res.stderr, new RegExp(`came back on build ${before}, not [0-9a-f]+, after the deploy's reboot`));
    await p.pulumi(["config", "rm", "ramroot:bootPath", ...prod]);
    await run("rm -rf /media/usb/EFI/other");
  });
  await p.pulumi(["config", "rm", "ramroot:trialBoot", ...prod]);

  let c: any;
  await scenario("§4: a trial deploy of a good build is promoted: the guard disarms the watchdog; BOOTAA64.EFI is it, .prev the one before, no trial entry or image left", async () => {
    const prev = await sha(STICK);
    await set("cmdline", cmdline("c"));
    const pv = await p.pulumi(["preview", ...prod]);
    assert.match(pv.stdout, /deploy mode: trial boot through BootNext, promoted once healthy \(the host has efivarfs and efibootmgr\)/);
    const n = boots();
    t1 = Date.now();
    const res = await up();
    lap("trial deploy, promoted", t1);
    c = await out();
    assert.match(res.stdout, new RegExp(`Boot[0-9A-F]{4} "ramroot trial [0-9a-f]+ ramroot-trial-seconds=${TRIAL_SECONDS}" -> \\\\EFI\\\\ramroot\\\\trial\\.efi; BootNext=Boot[0-9A-F]{4}`));
    assert.match(res.stdout, new RegExp(`runs build ${c.buildId} from its trial entry, healthy: promoting it`));
    assert.match(res.stdout, /the trial timer stood down; the hardware watchdog \/dev\/watchdog0 is disarmed \(magic close\)/);
    assert.equal(await buildOnHost(), c.buildId);
    assert.equal(await sha(STICK), c.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), prev);
    assert.equal(await leftovers(), "");
    const trialConsole = consoleOfBoot(n);
    assert.match(trialConsole, new RegExp(`ramroot: trial boot of build ${c.buildId} \\(Boot[0-9A-F]{4}\\): rebooting to the default entry in ${TRIAL_SECONDS} s unless the deployer confirms it; the hardware watchdog /dev/watchdog0 armed until then`));
    const confirmed = new RegExp(`ramroot: trial boot of build ${c.buildId} confirmed (\\d+) s into its ${TRIAL_SECONDS} s: watchdog /dev/watchdog0 disarmed`).exec(trialConsole);
    assert.ok(confirmed, `no confirmation on the console:\n${trialConsole.slice(-3000)}`);
    times.push(`(confirmed ${confirmed[1]} s into the ${TRIAL_SECONDS} s trial)`);
    // Disarmed for good: the promoted build runs on with the watchdog stopped.
    assert.equal((await run("cat /sys/class/watchdog/watchdog0/state; cat /run/ramroot/trial-watchdog")).trim(), "inactive\ndisarmed /dev/watchdog0");
  });

  await scenario("§4: a trial of a build that panics falls back by itself; the host is on the old build, its data intact, nothing of the trial left", async () => {
    const before = await buildOnHost();
    const beforeSha = await sha(STICK);
    await set("cmdline", cmdline("d", "/no-such-init"));
    t1 = Date.now();
    const res = await up(true);
    lap("trial of a panicking build, failed", t1);
    assert.notEqual(res.code, 0);
    const text = res.stdout + res.stderr;
    assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${before}`));
    assert.match(text, /Kernel panic - not syncing/, "the console lines of the trial boot");
    assert.equal(await buildOnHost(), before);
    assert.equal(await sha(STICK), beforeSha);
    assert.equal((await run("cat /media/usb/persist/trial-test")).trim(), "kept-across-deploys");
    assert.equal((await out()).ukiSha256, beforeSha, "the state still records the build the host runs");
    // The failed deploy removed its entry and image itself (BootNext the firmware consumed).
    assert.equal(await leftovers(), "");
    // A boot that is not a trial leaves the watchdog alone.
    assert.equal((await run("cat /sys/class/watchdog/watchdog0/state; ls /run/ramroot/trial-watchdog 2>&1 || true")).trim().split("\n")[0], "inactive");
  });

  await scenario("§4: a trial of a build whose userland freezes so hard that no process runs (kill -STOP -1 in the boot runlevel) falls back through the hardware watchdog", async () => {
    const before = await buildOnHost();
    const beforeSha = await sha(STICK);
    await set("cmdline", cmdline("w", "/sbin/init", "ramroot-test-freeze"));
    const n = boots(), mark = h.lines.length;
    t1 = Date.now();
    const res = await up(true);
    lap("trial of a frozen build, back through the watchdog", t1);
    assert.notEqual(res.code, 0);
    const text = res.stdout + res.stderr;
    assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${before}`));
    const trialConsole = consoleOfBoot(n).split("Run /sbin/init as init process")[0];
    assert.match(trialConsole, /the hardware watchdog \/dev\/watchdog0 armed until then/);
    assert.match(trialConsole, /ramroot-test: freezing the userland: kill -STOP -1/);
    assert.doesNotMatch(trialConsole, /was not confirmed within/, "the timer could not run: only the watchdog brought it back");
    await h.line(/the machine's hardware watchdog expired \(action: reset\)/, 1000, mark);
    watchdogReset = true;
    assert.equal(await buildOnHost(), before);
    assert.equal(await sha(STICK), beforeSha);
  });

  await scenario("§4: a trial of a build whose userland comes up without SSH falls back through the trial timer", async () => {
    const before = await buildOnHost();
    const conf = path.join(sys, "root", "etc", "conf.d", "sshd");
    const orig = fs.readFileSync(conf, "utf8");
    // sshd -t refuses the option: the service fails, the rest of the boot goes on.
    fs.writeFileSync(conf, `${orig}\nSSHD_OPTS="-o NoSuchOption=yes"\n`);
    try {
      await set("cmdline", cmdline("c"));
      t1 = Date.now();
      const res = await up(true);
      lap("trial of a build without SSH, failed", t1);
      const text = res.stdout + res.stderr;
      assert.notEqual(res.code, 0);
      assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${before}`));
      assert.match(text, new RegExp(`was not confirmed within ${TRIAL_SECONDS} s: rebooting to the default entry \\(the watchdog /dev/watchdog0, no longer fed`));
    } finally {
      fs.writeFileSync(conf, orig);
    }
    assert.equal(await buildOnHost(), before);
    assert.equal(await leftovers(), "", "what the frozen and the failed trials left is gone");
  });

  // A pulumi up killed (the deployer's machine gone) when `when` says so; then the next up.
  const killedUp = async (when: () => Promise<boolean>): Promise<string> => {
    const child = spawn("pulumi", ["--non-interactive", "up", "--yes", "--skip-preview", ...prod], { cwd: p.dir, env: p.env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
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

  // One build for both cuts: the first up loses its connection during the trial's upload, the
  // second is killed during the trial boot, and the third cleans up what both left and promotes.
  await scenario("§4: a connection cut during the trial's upload leaves the default image untouched; the deployer gone during the trial boot: the unconfirmed trial reboots to the default by its timer; the next up cleans up and promotes", async () => {
    await set("cmdline", cmdline("e"));
    t1 = Date.now();
    proxy.cutAfter = 4 << 20;
    const cut = await up(true);
    proxy.cutAfter = undefined;
    assert.notEqual(cut.code, 0);
    assert.equal(await sha(STICK), c.ukiSha256);
    assert.equal(await buildOnHost(), c.buildId);
    lap("trial upload cut", t1);
    const before = boots();
    t1 = Date.now();
    await killedUp(async () => boots() > before);
    // Nobody confirms: the timer takes the host back to the default image.
    const deadline = Date.now() + 240_000;
    while (!new RegExp(`was not confirmed within ${TRIAL_SECONDS} s`).test(consoleOfBoot(before))) {
      assert.ok(Date.now() < deadline, "the trial timer did not reboot the unconfirmed trial");
      await new Promise((r) => setTimeout(r, 2000));
    }
    // The trial's sshd may still answer while it shuts down: log in once the default image boots.
    while (boots() < before + 2) {
      assert.ok(Date.now() < deadline, "the host did not boot again after the trial timer's reboot");
      await new Promise((r) => setTimeout(r, 1000));
    }
    await login(args, 240_000);
    assert.equal(await buildOnHost(), c.buildId);
    lap("trial boot abandoned, back by its timer", t1);
    assert.notEqual(await leftovers(), "", "the abandoned trial left its entry or image for the next up");
    await up();
    const e = await out();
    assert.equal(await buildOnHost(), e.buildId);
    assert.equal(await sha(STICK), e.ukiSha256);
    assert.equal(await sha(`${STICK}.prev`), c.ukiSha256);
    assert.equal(await leftovers(), "");
    c = e;
  });

  await scenario("§4: the deployer gone during the promotion: the next up finishes it", async () => {
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

  await scenario("ramroot rollback, then a reboot: the previous build boots", async () => {
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
  const fsck = stickFsck(r.stick, r.dir);
  if (watchdogReset) {
    // The watchdog's reset is a hard one, with the stick mounted: its FAT keeps the dirty bit
    // (fsck.fat clears it), and nothing else may be wrong.
    assert.deepEqual(fsckBeyondDirtyBit(fsck.output), [], fsck.output);
  } else {
    assert.ok(fsck.clean, `the stick's FAT is dirty after the power-off:\n${fsck.output}`);
  }
  lap("whole test", t0);
});
