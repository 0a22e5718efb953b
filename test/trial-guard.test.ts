// The trial guard's files (src/deploy/trial-timer.ts) as the image carries them, its state lines
// as the deployer reads them (src/deploy/trial.ts), and the rehearsal host's watchdog options.
// No QEMU here: test/trial.test.ts boots them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { healthFiles } from "../src/boot/health";
import { qemuWatchdogArgs } from "../src/boot/rehearsal-host";
import { TRIAL_GUARD, TRIAL_GUARD_PATH, TRIAL_RUNLEVEL_PATH, TRIAL_SERVICE, TRIAL_SERVICE_PATH, guardWaitCommand } from "../src/deploy/trial-timer";
import { guardOutcome } from "../src/deploy/trial";
import { smallArchive } from "../src/image/release";

const tmp = (t: { after(f: () => void): void }) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-trial-guard-"));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

test("the release member carries the guard, its OpenRC service and the service's link in sysinit", async (t) => {
  const dir = tmp(t);
  const archive = path.join(dir, "release.cpio");
  fs.writeFileSync(archive, await smallArchive(healthFiles()));
  const out = path.join(dir, "out");
  fs.mkdirSync(out);
  execFileSync("cpio", ["-idm", "--quiet", "--no-absolute-filenames", "-F", archive], { cwd: out });
  assert.equal(fs.readFileSync(path.join(out, TRIAL_GUARD_PATH), "utf8"), TRIAL_GUARD);
  assert.equal(fs.statSync(path.join(out, TRIAL_GUARD_PATH)).mode & 0o777, 0o755);
  assert.equal(fs.readFileSync(path.join(out, TRIAL_SERVICE_PATH), "utf8"), TRIAL_SERVICE);
  assert.equal(fs.statSync(path.join(out, TRIAL_SERVICE_PATH)).mode & 0o777, 0o755);
  assert.ok(fs.lstatSync(path.join(out, TRIAL_RUNLEVEL_PATH)).isSymbolicLink());
  assert.equal(fs.readlinkSync(path.join(out, TRIAL_RUNLEVEL_PATH)), `/${TRIAL_SERVICE_PATH}`);
  assert.match(TRIAL_SERVICE, /^#!\/sbin\/openrc-run\n/);
  assert.match(TRIAL_SERVICE, /need sysfs/);
  // Nothing of the local.d timer that the guard replaced.
  assert.ok(!healthFiles().some((f) => f.name.startsWith("etc/local.d/") && /trial/.test(f.name)));
});

test("the guard, its service and the deployer's wait are POSIX sh that shellcheck accepts", (t) => {
  const dir = tmp(t);
  const files = { "trial-guard": TRIAL_GUARD, "ramroot-trial": TRIAL_SERVICE.replace("#!/sbin/openrc-run", "#!/bin/sh"), wait: `#!/bin/sh\n${guardWaitCommand(30)}\n` };
  for (const [name, text] of Object.entries(files)) {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    execFileSync("dash", ["-n", f]);
    // The service is sourced by openrc-run, which defines depend/start/stop's helpers.
    const r = spawnSync("shellcheck", ["-s", "sh", "-e", "SC2034", f], { encoding: "utf8" });
    assert.ok(!r.error, `shellcheck did not run: ${r.error?.message}`);
    assert.equal(r.stdout + r.stderr, "", `${name}:\n${r.stdout}`);
  }
  // The deployer's wait gives up after its seconds and prints the state it saw.
  const state = spawnSync("sh", ["-c", guardWaitCommand(1).replaceAll("/run/ramroot/trial-watchdog", path.join(dir, "state"))], { encoding: "utf8" });
  assert.equal(state.stdout, "\n");
  fs.writeFileSync(path.join(dir, "state"), "armed /dev/watchdog0 timeout=30\n");
  const t0 = Date.now();
  const armed = spawnSync("sh", ["-c", guardWaitCommand(2).replaceAll("/run/ramroot/trial-watchdog", path.join(dir, "state"))], { encoding: "utf8" });
  assert.equal(armed.stdout, "armed /dev/watchdog0 timeout=30\n");
  assert.ok(Date.now() - t0 >= 1900, "it waited");
});

test("the guard's state after the confirmation: promoted or not", () => {
  assert.match((guardOutcome("disarmed /dev/watchdog0", "b1") as any).note, /hardware watchdog \/dev\/watchdog0 is disarmed \(magic close\)/);
  assert.match((guardOutcome("none no-watchdog-device", "b1") as any).note, /no hardware watchdog armed/);
  assert.match((guardOutcome("", "b1") as any).note, /without ramroot's trial guard state/);
  assert.match((guardOutcome("fed /dev/watchdog0 nowayout", "b1") as any).note, /cannot be stopped \(nowayout\)/);
  assert.match((guardOutcome("armed /dev/watchdog0 timeout=30", "b1") as any).error, /trial guard of build b1 did not stand down.*not promoting it/);
  assert.match((guardOutcome("released /dev/watchdog0", "b1") as any).error, /ran out before the confirmation.*ramroot:trialSeconds/);
  assert.match((guardOutcome("expired", "b1") as any).error, /ran out before the confirmation/);
  assert.match((guardOutcome("what now", "b1") as any).error, /says "what now".*does not know/);
});

test("the rehearsal host's watchdog: an i6300esb that resets the machine, in the syntax of the QEMU at hand", () => {
  assert.deepEqual(qemuWatchdogArgs(7, 2), ["-device", "i6300esb", "-action", "watchdog=reset"]);
  assert.deepEqual(qemuWatchdogArgs(6, 0), ["-device", "i6300esb", "-action", "watchdog=reset"]);
  assert.deepEqual(qemuWatchdogArgs(5, 2), ["-device", "i6300esb", "-watchdog-action", "reset"]);
});

test("the guard's loop, run by busybox sh and dash on stand-in files: fed, then disarmed by the magic close on the confirmation; released and rebooting at the deadline; a device it cannot open leaves the timer", (t) => {
  const dir = tmp(t);
  const f = (rel: string) => path.join(dir, rel);
  fs.mkdirSync(f("run"));
  fs.mkdirSync(f("sysw"));
  fs.writeFileSync(f("sysw/timeout"), "30\n");
  fs.writeFileSync(f("sysw/nowayout"), "0\n");
  fs.writeFileSync(f("sysw/state"), "inactive\n");
  // The guard's functions with its paths moved into `dir`, and `reboot` made a word on stdout.
  const lib = TRIAL_GUARD.replace(/^run=\/run\/ramroot$/m, `run=${f("run")}`)
    .replace(/^confirmed=.*$/m, `confirmed=${f("run/trial-confirmed")}`)
    .replace(/^state=.*$/m, `state=${f("run/trial-watchdog")}`)
    .replace(/^\treboot$/m, "\techo REBOOT; exit 0")
    .replaceAll("/dev/console", f("console"))
    .replace(/^case \$\{1-\} in[\s\S]*$/m, "");
  assert.match(lib, /echo REBOOT; exit 0/);
  assert.doesNotMatch(lib.split("\n").filter((l) => !/^\s*#/.test(l)).join("\n"), /\/run\/ramroot|\/dev\/console|^\treboot$/m);
  fs.writeFileSync(f("lib.sh"), lib);
  const script = `. ${f("lib.sh")}
build=b1 seconds=4 dev=${f("dev")} sysw=${f("sysw")}
: >${f("dev")}
( guard ) & p=$!
sleep 2; cat ${f("run/trial-watchdog")}; : >${f("run/trial-confirmed")}; wait $p; cat ${f("run/trial-watchdog")}; od -An -c ${f("dev")}
rm -f ${f("run/trial-confirmed")}; : >${f("dev")}
( guard ); cat ${f("run/trial-watchdog")}; od -An -c ${f("dev")}
dev=/nonexistent/watchdog0; ( guard ) 2>/dev/null; cat ${f("run/trial-watchdog")}
`;
  for (const shell of [["busybox", "sh"], ["dash"]]) {
    const r = spawnSync(shell[0], [...shell.slice(1), "-c", script], { encoding: "utf8", timeout: 60_000 });
    const lines = r.stdout.split("\n").map((l) => l.trim().replace(/\s+/g, " "));
    assert.equal(lines[0], `armed ${f("dev")} timeout=30`, r.stdout + r.stderr);
    assert.equal(lines[1], `disarmed ${f("dev")}`);
    // Fed (any byte but V) while it waited, then V as the last byte before the close.
    assert.match(lines[2], /^(\. )+V$/);
    assert.equal(lines[3], "REBOOT");
    assert.equal(lines[4], `released ${f("dev")}`);
    assert.match(lines[5], /^(\. ?)+$/, "fed, never the magic V: the hardware keeps counting");
    // A device it cannot open (in use): the guard lives on as the timer alone.
    assert.equal(lines[6], "REBOOT");
    assert.equal(lines[7], "expired");
  }
});
