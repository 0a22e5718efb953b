// Issue 14, part 3, the waiting half against a real OpenSSH server on this machine (test/sshd.ts),
// which never reboots: the host's status as the host script reads it, a wait for a new boot that
// gives up after its time saying what it last saw, and a down host (nothing listening).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { hostStatus, waitForBoot } from "../src/deploy/trial";
import { freePort, startSshd } from "./sshd";

test("hostStatus reads this machine's build and boot id; waitForBoot gives up after its time, naming what it saw", { timeout: 120_000 }, async (t) => {
  const sshd = await startSshd();
  t.after(() => sshd.stop());
  const target = { host: sshd.host, port: sshd.port, privateKey: sshd.clientKey, hostKey: sshd.hostKey, path: `${sshd.dir}/BOOTAA64.EFI` };
  const st = await hostStatus(target);
  assert.equal(st.boot, fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim());
  assert.equal(st.health, undefined, "this machine has no ramroot health report");
  const t0 = Date.now();
  await assert.rejects(waitForBoot(target, st.boot, "0123456789abcdef", 5_000, () => {}), /127\.0\.0\.1 did not come back within 5 s \(last: it has not rebooted yet\)/);
  assert.ok(Date.now() - t0 < 20_000);
  // A host that never answers: the connection's own error is what it last saw.
  const down = { ...target, port: await freePort() };
  await assert.rejects(waitForBoot(down, st.boot, "x", 4_000, () => {}), /did not come back within 4 s \(last: .*(ECONNREFUSED|connect)/);
});
