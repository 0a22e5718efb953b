// The production stack deploys to a real OpenSSH server (started here on 127.0.0.1
// with throw-away keys) through a byte-counting proxy that can cut the connection. The "stick"
// is a folder on the server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";
import { startProxy, startSshd } from "./sshd";

const sha = (f: string) => createHash("sha256").update(fs.readFileSync(f)).digest("hex");

test("production: deploy over SSH, atomic, verified, gated, reversible", { timeout: 40 * 60_000 }, async (t) => {
  const sshd = await startSshd();
  t.after(() => sshd.stop());
  const proxy = await startProxy(sshd.port);
  t.after(() => proxy.close());
  const stick = path.join(sshd.dir, "media", "usb");
  const target = path.join(stick, "EFI", "BOOT", "BOOTAA64.EFI");
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const p = Project.create();
  t.after(() => p.remove());
  const prod = ["--stack", "production"];
  // "--" ends the flags: a private key starts with "-----".
  const set = (k: string, v: string, ...flags: string[]) => p.pulumi(["config", "set", ...flags, `ramroot:${k}`, ...prod, "--", v]);
  const out = async (stack: string) => JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", stack])).stdout);
  const up = (opts: { allowFail?: boolean } = {}) => p.pulumi(["up", "--yes", ...prod], opts);

  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  const qemu = await out("qemu");
  await p.pulumi(["stack", "init", "production"]);
  await set("host", "127.0.0.1");
  await set("sshPort", String(proxy.port));
  await set("bootPath", target);

  await t.test("missing key config: a clear error in preview", async () => {
    const r = await p.pulumi(["preview", ...prod], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /ramroot:hostKey is not set: pin the host's key: ssh-keyscan -t ed25519 127.0.0.1/);
  });

  await t.test("a wrong host key is refused and nothing is sent", async () => {
    await set("sshPrivateKey", sshd.clientKey, "--secret");
    // A well-formed key that is not the server's.
    await set("hostKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl");
    proxy.reset();
    const r = await up({ allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /SHA256:[A-Za-z0-9+/]{43}/);
    assert.ok(proxy.up < 10_000, `${proxy.up} bytes went to the server`);
    assert.deepEqual(fs.readdirSync(path.dirname(target)), []);
  });

  const afterLog = path.join(sshd.dir, "after-deploy.log");
  const afterRuns = () => (fs.existsSync(afterLog) ? fs.readFileSync(afterLog, "utf8").split("\n").filter(Boolean).length : 0);

  await t.test("up deploys the UKI that booted in qemu; the remote hash equals it; after-deploy commands run", async () => {
    await set("hostKey", sshd.hostKey);
    await p.pulumi(["config", "set", "--path", "ramroot:afterDeploy[0]", ...prod, "--", `echo deployed >> ${afterLog}`]);
    await up();
    const o = await out("production");
    assert.equal(o.ukiSha256, qemu.ukiSha256);
    assert.equal(sha(target), o.ukiSha256);
    assert.equal(afterRuns(), 1);
  });

  await t.test("a second up (with refresh) sends no image bytes and runs no after-deploy command", async () => {
    proxy.reset();
    const r = await p.pulumi(["up", "--yes", "--refresh", ...prod]);
    assert.doesNotMatch(r.stdout, /deployed build/);
    assert.ok(proxy.up < 100_000, `${proxy.up} bytes went to the server`);
    assert.equal(afterRuns(), 1);
  });

  await t.test("the gate refuses a build that never booted in qemu; the override lets it through; .prev keeps the previous image", async () => {
    await set("cmdline", "rdinit=/sbin/init console=ttyAMA0 production=1");
    const r = await p.pulumi(["preview", ...prod], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /never passed the qemu stack's boot check in this store/);
    await set("allowUntested", "true");
    await up();
    const o = await out("production");
    assert.equal(sha(target), o.ukiSha256);
    assert.equal(sha(`${target}.prev`), qemu.ukiSha256);
  });

  await t.test("a connection cut during the upload leaves the old image in place; the next up completes", async () => {
    const before = sha(target);
    await set("cmdline", "rdinit=/sbin/init console=ttyAMA0 production=2");
    // The new image differs from the deployed one in .cmdline and the release layer: a delta of
    // a few hundred kB goes over the wire (the rest is copied on the host), so cut inside it.
    for (const cut of [50_000, 120_000, 200_000]) {
      proxy.cutAfter = cut;
      const r = await up({ allowFail: true });
      assert.notEqual(r.code, 0, `up succeeded with a cut after ${cut} bytes`);
      assert.equal(sha(target), before, `the image changed after a cut at ${cut} bytes`);
    }
    proxy.cutAfter = undefined;
    await up();
    assert.equal(sha(target), (await out("production")).ukiSha256);
    assert.equal(sha(`${target}.prev`), before);
  });

  await t.test("a file changed on the host shows as drift after refresh; up restores it", async () => {
    const want = (await out("production")).ukiSha256;
    fs.writeFileSync(target, "changed by hand\n");
    await p.pulumi(["refresh", "--yes", ...prod]);
    assert.deepEqual(await p.previewSteps("production"), ["update media"]);
    await up();
    assert.equal(sha(target), want);
  });

  await t.test("ramroot rollback puts the previous image back, and again the newer one; it refuses a .prev that is not an image", async () => {
    const rollback = () => new Promise<string>((resolve, reject) =>
      execFile(path.join(p.dir, "bin", "ramroot"), ["rollback", "--stack", "production"], { cwd: p.dir, env: p.env }, (e, so, se) => (e ? reject(new Error(`${e.message}\n${so}\n${se}`)) : resolve(so))));
    // .prev is now the file "changed by hand" that the drift test left: not a boot image.
    const left = [sha(target), sha(`${target}.prev`)];
    await assert.rejects(rollback(), /is not a PE image|not a PE|nothing was changed/);
    assert.deepEqual([sha(target), sha(`${target}.prev`)], left);
    // An older image: the current one with one byte of its payload changed (still an aarch64 PE).
    const older = Buffer.from(fs.readFileSync(target));
    older[older.length - 100] ^= 0xff;
    fs.writeFileSync(`${target}.prev`, older);
    const newer = sha(target);
    await rollback();
    assert.equal(sha(target), createHash("sha256").update(older).digest("hex"));
    assert.equal(sha(`${target}.prev`), newer);
    await rollback();
    assert.equal(sha(target), newer);
  });

  await t.test("destroying the stack leaves the boot image on the host", async () => {
    const img = sha(target);
    const r = await p.pulumi(["destroy", "--yes", ...prod]);
    assert.match(r.stdout, /is left in place/);
    assert.equal(sha(target), img);
  });
});
