// Stage 1 runs apk's install scripts and triggers, which come from the mirror, as root on the
// build machine: src/rootfs/alpine.ts runs the builder contained. A package of the test mirror
// (ramroot-escape-probe) tries, from its post-install script, what setup.sh's containment test
// tries (test/rootfs.test.ts), and reports what it reached; here that report and the host say
// whether anything got out.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { alpineMirror } from "./alpine-mirror";
import { hostProblem } from "../src/rootfs/configure";
import { makeAlpineRootfs } from "../src/rootfs/alpine";
import { Store } from "../src/store";

test("apk's package scripts run contained: no host file, build process, secret, sysctl or disk within their reach", { timeout: 10 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) { t.skip(problem); return; }
  const got = await alpineMirror();
  if ("unavailable" in got) { t.skip(got.unavailable); return; }
  const mirror = got;
  t.after(() => mirror.close());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-contained-apk-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The bait: a host file (as the project's passphrase would be) and a secret in this process's
  // environment (as the language host holds the decrypted stack config).
  const secret = `ramroot-secret-${process.pid}-${Date.now()}`;
  const bait = "/run/ramroot-escape-probe.secret", written = "/run/ramroot-escape-probe.written";
  fs.writeFileSync(bait, `${secret}\n`, { mode: 0o600 });
  fs.rmSync(written, { force: true });
  t.after(() => { fs.rmSync(bait, { force: true }); fs.rmSync(written, { force: true }); });
  process.env.RAMROOT_TEST_SECRET = secret;
  t.after(() => { delete process.env.RAMROOT_TEST_SECRET; });
  const domainname = fs.readFileSync("/proc/sys/kernel/domainname", "utf8");
  const hostname = os.hostname();

  const store = new Store(path.join(dir, "store"));
  const out = path.join(dir, "tree");
  fs.mkdirSync(out);
  const lines: string[] = [];
  await makeAlpineRootfs({
    arch: "x86_64", packages: ["busybox", "apk-tools", "ramroot-escape-probe"], mirror: mirror.url, branch: mirror.branch,
    apk: mirror.apk, keysDir: mirror.keysDir, builderUrl: mirror.builderUrl, out, store, log: (l) => lines.push(l),
  });
  const report = fs.readFileSync(path.join(out, "var", "lib", "ramroot-escape-probe", "report"), "utf8");
  t.diagnostic(report);
  // The script ran (busybox's own post-install made its applet links in the same place).
  assert.equal(fs.readlinkSync(path.join(out, "bin", "sh")), "/bin/busybox");
  assert.ok(!report.includes(secret), `a secret of the build machine reached a package script:\n${report}`);
  assert.ok(!fs.existsSync(written), "a package script wrote a host file");
  assert.doesNotMatch(report, /WROTE|REMOUNTED|MADE/);
  assert.equal(fs.readFileSync("/proc/sys/kernel/domainname", "utf8"), domainname);
  assert.equal(os.hostname(), hostname);
  assert.match(report, /^dev: fd full null pts random shm stderr stdin stdout tty urandom zero $/m, "the scripts' /dev is not the minimal one");
  // Only the sandbox's processes: its PID 1 (the builder), apk, the script and what it runs.
  const processes = Number(/^processes: (\d+)$/m.exec(report)?.[1]);
  assert.ok(processes > 0 && processes < 10, `the scripts see ${processes} processes`);
  // What the tree keeps of the sandbox: the empty folders Alpine has anyway (the builder empties /dev).
  for (const d of ["proc", "sys", "dev"]) assert.deepEqual(fs.readdirSync(path.join(out, d)), [], `/${d} of the tree`);
  assert.deepEqual(fs.readdirSync(dir).sort(), ["store", "tree"], "scratch folders left beside the tree");
  assert.ok(!fs.readFileSync("/proc/mounts", "utf8").includes(dir), "a mount of the sandbox is left on the host");
});
