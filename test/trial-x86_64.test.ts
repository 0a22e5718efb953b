// Issue 14 on x86_64: trial boots on an x86_64 rehearsal host (q35, OVMF with its variables in
// pflash, the stick on virtio: OVMF's own boot entry for the disk names no partition, so the trial
// entry adds one, as on aarch64), through the real Pulumi CLI as test/trial.test.ts does on
// aarch64: a trial of a good build is promoted, a trial of a build that panics falls back by
// itself. One host for both. The host has QEMU's i6300esb watchdog, but the x86_64 test system's
// kernel (Debian's cloud amd64 flavour) has no driver for it (nor for any watchdog q35 offers):
// the trial guard says so and guards with its timer alone; the hardware watchdog is tested on
// aarch64 (test/trial.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { rehearsalCmdline, startRehearsal } from "./rehearsal";

const times: string[] = [];
test.after(() => { if (times.length) console.log(`# trial boot timings (x86_64): ${times.join("; ")}`); });

const TRIAL_SECONDS = 90;
const cmdline = (tag: string, init = "/sbin/init") => rehearsalCmdline("x86_64", tag, init);

test("x86_64 rehearsal host (OVMF): a trial of a good build is promoted, a panicking one falls back by itself", { timeout: 30 * 60_000 }, async (t) => {
  const t0 = Date.now();
  const lap = (what: string, from: number) => times.push(`${what} ${((Date.now() - from) / 1000).toFixed(0)} s`);
  let t1 = Date.now();
  const r = await startRehearsal(t, "x86_64", { trialSeconds: TRIAL_SECONDS, waitSeconds: 300 });
  lap("first build, stick, host up", t1);
  assert.equal(r.stickPath, "/media/usb/EFI/BOOT/BOOTX64.EFI");
  assert.equal(await r.buildOnHost(), r.first.buildId);
  await r.run("mkdir -p /media/usb/persist && echo kept > /media/usb/persist/x && sync");
  const consoleOfBoot = (n: number) => fs.readFileSync(r.consoleFile, "utf8").split("Run /sbin/init as init process").slice(n + 1).join("Run /sbin/init as init process");
  const boots = () => (fs.readFileSync(r.consoleFile, "utf8").match(/Run \/sbin\/init as init process/g) ?? []).length;

  let c: any;
  await t.test("a trial deploy of a good build is promoted: BOOTX64.EFI is it, .prev the one before, no trial entry or image left", async () => {
    await r.setAll({ cmdline: cmdline("c") });
    const pv = await r.p.pulumi(["preview", ...r.prod]);
    assert.match(pv.stdout, /deploy mode: trial boot through BootNext, promoted once healthy \(the host has efivarfs and efibootmgr\)/);
    const n = boots();
    t1 = Date.now();
    const res = await r.up();
    lap("trial deploy, promoted", t1);
    c = await r.out();
    assert.match(res.stdout, new RegExp(`Boot[0-9A-F]{4} "ramroot trial ${c.buildId} ramroot-trial-seconds=${TRIAL_SECONDS}" -> \\\\EFI\\\\ramroot\\\\trial\\.efi; BootNext=Boot[0-9A-F]{4}`));
    assert.match(res.stdout, new RegExp(`runs build ${c.buildId} from its trial entry, healthy: promoting it`));
    assert.match(res.stdout, /the trial timer stood down \(no hardware watchdog armed: no-watchdog-device\)/);
    assert.equal(await r.buildOnHost(), c.buildId);
    assert.equal(await r.sha(r.stickPath), c.ukiSha256);
    assert.equal(await r.sha(`${r.stickPath}.prev`), r.first.ukiSha256);
    assert.equal(await r.leftovers(), "");
    const trialConsole = consoleOfBoot(n);
    assert.match(trialConsole, new RegExp(`ramroot: trial boot of build ${c.buildId} \\(Boot[0-9A-F]{4}\\): rebooting to the default entry in ${TRIAL_SECONDS} s unless the deployer confirms it; no hardware watchdog on this machine`));
    const confirmed = new RegExp(`ramroot: trial boot of build ${c.buildId} confirmed (\\d+) s into its ${TRIAL_SECONDS} s`).exec(trialConsole);
    assert.ok(confirmed, `no confirmation on the console:\n${trialConsole.slice(-3000)}`);
    times.push(`(confirmed ${confirmed[1]} s into the ${TRIAL_SECONDS} s trial)`);
  });

  await t.test("a trial of a build that panics falls back by itself; the host is on the old build, its data intact, nothing of the trial left", async () => {
    await r.setAll({ cmdline: cmdline("d", "/no-such-init") });
    t1 = Date.now();
    const res = await r.up(true);
    lap("trial of a panicking build, failed", t1);
    assert.notEqual(res.code, 0);
    const text = res.stdout + res.stderr;
    assert.match(text, new RegExp(`trial boot of build [0-9a-f]+ failed \\(it did not come up\\); the host is back on build ${c.buildId}`));
    assert.match(text, /Kernel panic - not syncing/, "the console lines of the trial boot");
    assert.equal(await r.buildOnHost(), c.buildId);
    assert.equal(await r.sha(r.stickPath), c.ukiSha256);
    assert.equal((await r.run("cat /media/usb/persist/x")).trim(), "kept");
    assert.equal((await r.out()).ukiSha256, c.ukiSha256, "the state still records the build the host runs");
    // The failed deploy removed its entry and image itself (BootNext the firmware consumed).
    assert.equal(await r.leftovers(), "");
  });

  const stop = await r.h.terminate();
  assert.equal(stop.code, 0, r.h.stderr);
  lap("whole test", t0);
});
