// The engine-free SSH deploy against a real OpenSSH server on 127.0.0.1 (throw-away keys), through
// a TCP proxy that counts bytes and can cut the connection. The "USB stick" is a temp folder the
// server sees at the same path (server and tests share this machine), so the tests read the
// results directly from disk.
import { test, type TestContext } from "node:test";
import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import {
  deployImage, fingerprint, parseDf, parseHostKeys, remoteState, rollback, runOnHost, spaceCheck, waitForBuild, type SshTarget,
} from "../src/deploy/deploy";
import { chunkFile, writeChunkCache } from "../src/deploy/delta";
import { rsyncTo, scpTo, startProxy, startSshd, type Proxy, type Sshd } from "./sshd";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const fileSha = (f: string) => (fs.existsSync(f) ? sha256(fs.readFileSync(f)) : undefined);

interface Env {
  sshd: Sshd;
  proxy: Proxy;
  /** Scratch folder of this test (images are written here). */
  dir: string;
  /** The target file on the "stick". */
  target: string;
  /** Through the proxy. */
  t: SshTarget;
  lines: string[];
  log: (l: string) => void;
  image(size: number): { file: string; sha: string };
  /** Registers a cleanup; all run last-in first-out after the test, even when one fails. */
  defer(fn: () => unknown): void;
  /** Files in the target's folder. */
  stick(): string[];
}

async function setup(t: TestContext, opts: { stickDir?: string; sftp?: boolean } = {}): Promise<Env> {
  const cleanups: Array<() => unknown> = [];
  const defer = (fn: () => unknown) => { cleanups.push(fn); };
  t.after(async () => {
    const errors: unknown[] = [];
    for (const fn of cleanups.reverse()) { try { await fn(); } catch (err) { errors.push(err); } }
    if (errors.length) throw errors[0];
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-deploy-test-"));
  defer(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sshd = await startSshd({ sftp: opts.sftp });
  defer(() => sshd.stop());
  const proxy = await startProxy(sshd.port);
  defer(() => proxy.close());
  const stickDir = path.join(dir, opts.stickDir ?? "media/usb/EFI/BOOT");
  fs.mkdirSync(stickDir, { recursive: true });
  const target = path.join(stickDir, "BOOTAA64.EFI");
  const lines: string[] = [];
  let n = 0;
  return {
    sshd, proxy, dir, target, lines, defer,
    log: (l) => lines.push(l),
    t: { host: "127.0.0.1", port: proxy.port, privateKey: sshd.clientKey, hostKey: sshd.hostKey, path: target, timeoutMs: 10_000 },
    image(size) {
      // A boot image for BOOTAA64.EFI as far as rollback looks: an arm64 PE header, then noise.
      const bytes = randomBytes(size);
      peHead(0xaa64).copy(bytes, 0, 0, Math.min(size, 0x100));
      const file = path.join(dir, `image-${n++}.efi`);
      fs.writeFileSync(file, bytes);
      return { file, sha: sha256(bytes) };
    },
    stick: () => fs.readdirSync(stickDir).sort(),
  };
}

const MB = 1024 * 1024;

/** The start of a PE image for `machine` (0xaa64 arm64, 0x8664 x86_64): MZ, e_lfanew, PE\0\0, Machine. */
function peHead(machine: number): Buffer {
  const b = Buffer.alloc(0x100);
  b.write("MZ", 0, "latin1");
  b.writeUInt32LE(0x80, 0x3c);
  b.write("PE\0\0", 0x80, "latin1");
  b.writeUInt16LE(machine, 0x84);
  return b;
}

test("deploy: the remote file's hash equals ours; a second, different deploy keeps the first as .prev", async (t) => {
  const e = await setup(t);
  const a = e.image(8 * MB);
  const r1 = await deployImage(e.t, a.file, a.sha, e.log);
  assert.deepEqual({ ...r1, uploadMs: 0 }, { changed: true, bytesSent: 8 * MB, previous: undefined, uploadMs: 0 });
  assert.equal(fileSha(e.target), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI"], "no .prev without a previous image, no temporaries");
  // Progress lines every 10%.
  // Progress: at most one line per tenth, increasing, ending at 100% (with 1 MiB writes an
  // 8 MiB image moves in eighths, so a few tenths are skipped).
  const progress = e.lines.filter((l) => l.startsWith("upload "));
  const pct = progress.map((l) => Number(/^upload (\d+)%/.exec(l)![1]));
  assert.ok(pct.length >= 5 && pct.length <= 10, progress.join("\n"));
  assert.deepEqual(pct, [...pct].sort((x, y) => x - y));
  assert.equal(new Set(pct).size, pct.length);
  assert.match(progress[progress.length - 1], /^upload 100% \(8\.4 MB of 8\.4 MB, [\d.]+ MB\/s\)$/);

  const b = e.image(8 * MB + 12345);
  const r2 = await deployImage(e.t, b.file, b.sha, e.log);
  assert.equal(r2.changed, true);
  assert.equal(r2.previous, a.sha);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
  assert.deepEqual(await remoteState(e.t), { sha256: b.sha, size: 8 * MB + 12345, prevSha256: a.sha, prevSize: 8 * MB });
  // The image holds the secrets layer: root's alone on the host, whatever sshd's umask (022).
  assert.equal(fs.statSync(e.target).mode & 0o777, 0o600);
  // The private key never shows up in what the deploy says.
  const keyBody = e.sshd.clientKey.split("\n")[1];
  assert.ok(!e.lines.join("\n").includes(keyBody));
});

test("deploy: paths with spaces and quotes are quoted safely", async (t) => {
  const e = await setup(t, { stickDir: "media/u s'b $(touch pwned)/EFI/BOOT" });
  const a = e.image(100_000);
  await deployImage(e.t, a.file, a.sha, e.log);
  const b = e.image(100_001);
  await deployImage(e.t, b.file, b.sha, e.log);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.ok(!fs.existsSync(path.join(e.sshd.dir, "..", "pwned")) && !fs.existsSync("/root/pwned"));
  await rollback(e.t, e.log);
  assert.equal(fileSha(e.target), a.sha);
});

test("deploy of the image the host already has sends no image bytes and reports changed=false", async (t) => {
  const e = await setup(t);
  const a = e.image(8 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  const before = fs.statSync(e.target);
  e.proxy.reset();
  const r = await deployImage(e.t, a.file, a.sha, e.log);
  assert.deepEqual(r, { changed: false, bytesSent: 0, previous: undefined, uploadMs: 0 });
  const traffic = e.proxy.up + e.proxy.down;
  t.diagnostic(`no-op deploy: ${e.proxy.up} bytes up, ${e.proxy.down} down`);
  assert.ok(traffic < 100_000, `traffic ${traffic} bytes for an unchanged 8 MiB image`);
  assert.ok(e.proxy.up > 0, "the proxy did see the connection");
  const after = fs.statSync(e.target);
  assert.equal(after.mtimeMs, before.mtimeMs, "the target was not rewritten");
});

test("a connection cut anywhere during the upload leaves the old image in place; the next deploy completes", async (t) => {
  const e = await setup(t);
  const a = e.image(8 * MB);
  const b = e.image(8 * MB);
  const c = e.image(8 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  // Measure a full changed deploy (upload + .prev copy) to place the cuts.
  e.proxy.reset();
  let uploaded = 0;
  await deployImage(e.t, b.file, b.sha, (l) => { if (l.startsWith("upload 100%")) uploaded = e.proxy.up; });
  const total = e.proxy.up;
  t.diagnostic(`a full 8 MiB deploy sends ${total} bytes client->server, ${uploaded} of them by the end of the upload`);
  assert.ok(uploaded > 8 * MB && uploaded < total, `upload ended at ${uploaded} of ${total}`);
  assert.ok(total > 8 * MB && total < 8.5 * MB, `unexpected total ${total}`);

  for (const frac of [0.002, 0.1, 0.35, 0.6, 0.85, 0.99]) {
    const cut = Math.floor(frac * 8 * MB);
    e.proxy.cutAfter = cut;
    const cuts = e.proxy.cuts;
    const t0 = Date.now();
    await assert.rejects(deployImage(e.t, c.file, c.sha, e.log), (err: Error) => {
      assert.match(err.message, new RegExp(`^root@127\\.0\\.0\\.1:${e.proxy.port}: (connect|read the state|open sftp|upload to )`), err.message);
      return true;
    }, `cut after ${cut} bytes`);
    assert.ok(Date.now() - t0 < 9000, "the cut was noticed before the step timeout");
    assert.equal(e.proxy.cuts, cuts + 1, "the proxy did cut");
    assert.equal(fileSha(e.target), b.sha, `old image intact after a cut at ${cut} bytes`);
    assert.equal(fileSha(`${e.target}.prev`), a.sha, ".prev untouched");
  }

  // Cuts after the upload (in the verify / .prev / rename steps): the target holds a complete
  // image, old or new, never a partial one; .prev is the image before it; a rerun finishes.
  for (const cut of [uploaded + 50, Math.floor((uploaded + total) / 2), total - 100]) {
    e.proxy.cutAfter = cut;
    const late = await deployImage(e.t, c.file, c.sha, e.log).then(() => "completed", (err: Error) => err.message.replace(/\/tmp\/\S+\//g, ""));
    t.diagnostic(`cut after ${cut} bytes: ${late}`);
    const now = fileSha(e.target);
    const prev = fileSha(`${e.target}.prev`);
    if (now === b.sha) assert.ok(prev === a.sha || prev === b.sha, "old image in place, .prev the one before or a copy of it");
    else assert.ok(now === c.sha && prev === b.sha, "new image in place, the old one as .prev");

    e.proxy.cutAfter = undefined;
    const r = await deployImage(e.t, c.file, c.sha, e.log);
    assert.equal(fileSha(e.target), c.sha);
    assert.equal(fileSha(`${e.target}.prev`), b.sha);
    // Where exactly the cut lands varies by a few hundred bytes (the host-side copy runs beside
    // the upload); reuse of a verified upload is checked deterministically in the next test.
    assert.ok(r.bytesSent === 0 || r.bytesSent === 8 * MB);
    assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"], "no temporaries left");
    // Back to the old image for the next cut.
    await rollback(e.t, e.log);
    fs.copyFileSync(a.file, `${e.target}.prev`);
  }
});

test("an interrupted deploy is finished: a verified upload is reused, stale temporaries are replaced", async (t) => {
  const e = await setup(t);
  const a = e.image(2 * MB);
  const b = e.image(2 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  // Stopped after the upload and the .prev copy, before the final rename.
  fs.copyFileSync(b.file, `${e.target}.ramroot-new`);
  fs.copyFileSync(a.file, `${e.target}.prev`);
  e.proxy.reset();
  const r = await deployImage(e.t, b.file, b.sha, e.log);
  assert.equal(r.changed, true);
  assert.equal(r.bytesSent, 0);
  assert.ok(e.proxy.up < 100_000, `${e.proxy.up} bytes sent`);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);

  // Garbage temporaries (a partial upload of the right size, a partial .prev copy) are replaced.
  const c = e.image(2 * MB);
  fs.writeFileSync(`${e.target}.ramroot-new`, randomBytes(2 * MB));
  fs.writeFileSync(`${e.target}.ramroot-prev`, randomBytes(1000));
  const r2 = await deployImage(e.t, c.file, c.sha, e.log);
  assert.equal(r2.bytesSent, 2 * MB);
  assert.equal(fileSha(e.target), c.sha);
  assert.equal(fileSha(`${e.target}.prev`), b.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

  // A local file that does not match the promised hash fails the remote verification and
  // leaves everything as it was.
  const d = e.image(1 * MB);
  await assert.rejects(deployImage(e.t, d.file, "0".repeat(64), e.log), /has sha256 [0-9a-f]{64}, expected 0{64}/);
  assert.equal(fileSha(e.target), c.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
});

test("a server without SFTP: the upload goes through cat, with the same checks", async (t) => {
  const e = await setup(t, { sftp: false });
  const a = e.image(3 * MB);
  const b = e.image(3 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  const r = await deployImage(e.t, b.file, b.sha, e.log);
  assert.equal(r.bytesSent, 3 * MB);
  assert.ok(e.lines.some((l) => /no SFTP subsystem: uploading through cat/.test(l)), e.lines.join("\n"));
  assert.equal(e.lines.filter((l) => l.startsWith("upload 100%")).length, 2, "progress lines for both uploads");
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
  assert.equal(fs.statSync(e.target).mode & 0o777, 0o600);
  // A cut during a cat upload leaves the old image too.
  const c = e.image(3 * MB);
  e.proxy.cutAfter = 1 * MB; // per connection
  await assert.rejects(deployImage(e.t, c.file, c.sha, e.log), /upload to .*(connection closed|ECONNRESET)/);
  assert.equal(fileSha(e.target), b.sha);
  e.proxy.cutAfter = undefined;
  await deployImage(e.t, c.file, c.sha, e.log);
  assert.equal(fileSha(e.target), c.sha);
});

test("a wrong pinned host key is refused before authentication, with both fingerprints; nothing is written", async (t) => {
  const e = await setup(t);
  const a = e.image(1 * MB);
  const other = path.join(e.dir, "other_ed25519");
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", other]);
  const otherPub = fs.readFileSync(`${other}.pub`, "utf8");
  const serverFp = execFileSync("ssh-keygen", ["-lf", path.join(e.sshd.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1];
  const pinnedFp = execFileSync("ssh-keygen", ["-lf", `${other}.pub`], { encoding: "utf8" }).split(" ")[1];
  const logBefore = e.sshd.log();
  e.proxy.reset();
  await assert.rejects(deployImage({ ...e.t, hostKey: otherPub }, a.file, a.sha, e.log), (err: Error) => {
    assert.match(err.message, /host key verification failed/);
    assert.ok(err.message.includes(serverFp), `server fingerprint ${serverFp} in: ${err.message}`);
    assert.ok(err.message.includes(pinnedFp), `pinned fingerprint ${pinnedFp} in: ${err.message}`);
    assert.ok(err.message.includes(`ssh-keyscan -t ed25519 -p ${e.proxy.port} 127.0.0.1`), err.message);
    assert.ok(err.message.startsWith(`root@127.0.0.1:${e.proxy.port}: `));
    return true;
  });
  assert.deepEqual(e.stick(), [], "nothing written on the server");
  assert.ok(e.proxy.up < 4000, `${e.proxy.up} bytes went to the server (key exchange only)`);
  const newLog = e.sshd.log().slice(logBefore.length);
  assert.doesNotMatch(newLog, /Accepted publickey/, "the client never authenticated");

  // A pinned key of a type the server does not have: a clear error too.
  const ecdsa = path.join(e.dir, "other_ecdsa");
  execFileSync("ssh-keygen", ["-q", "-t", "ecdsa", "-N", "", "-f", ecdsa]);
  await assert.rejects(remoteState({ ...e.t, hostKey: fs.readFileSync(`${ecdsa}.pub`, "utf8") }), /ecdsa-sha2-nistp256.*ssh-keyscan/);
  assert.deepEqual(e.stick(), []);
});

test("host keys: ssh-keyscan output, known_hosts lines and .pub files pin the same key; fingerprint as ssh-keygen prints it", async (t) => {
  const e = await setup(t);
  const scanned = execFileSync("ssh-keyscan", ["-t", "ed25519", "-p", String(e.sshd.port), "127.0.0.1"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  assert.match(scanned, /^\[127\.0\.0\.1\]:\d+ ssh-ed25519 AAAA/m);
  const known = fs.readFileSync(e.sshd.knownHostsFile, "utf8");
  for (const hostKey of [scanned, known, e.sshd.hostKey, `# comment\n\n${e.sshd.hostKey}\n`]) {
    assert.deepEqual(await remoteState({ ...e.t, hostKey }), { sha256: undefined, size: undefined, prevSha256: undefined, prevSize: undefined });
  }
  const fp = execFileSync("ssh-keygen", ["-lf", path.join(e.sshd.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1];
  assert.equal(fingerprint(e.sshd.hostKey), fp);
  assert.equal(fingerprint(scanned), fp);
  assert.throws(() => parseHostKeys(""), /no SSH host key/);
  assert.throws(() => parseHostKeys("hello world"), /not an SSH public key/);
  // A type name that does not match the key inside.
  assert.throws(() => parseHostKeys(e.sshd.hostKey.replace("ssh-ed25519", "ssh-rsa")), /holds a ssh-ed25519 key/);
  await assert.rejects(remoteState({ ...e.t, hostKey: "" }), /no SSH host key/);
  await assert.rejects(remoteState({ ...e.t, privateKey: "not a key" }), (err: Error) => {
    assert.match(err.message, /^root@127\.0\.0\.1:\d+: the private key cannot be used/);
    return true;
  });
  await assert.rejects(remoteState({ ...e.t, path: "relative/BOOTAA64.EFI" }), /absolute file path/);
});

test("a file changed by hand on the host shows up in remoteState; deploy restores it", async (t) => {
  const e = await setup(t);
  const a = e.image(2 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  assert.equal((await remoteState(e.t)).sha256, a.sha);
  const edited = Buffer.concat([fs.readFileSync(a.file).subarray(0, MB), Buffer.from("edited by hand")]);
  fs.writeFileSync(e.target, edited);
  const drift = await remoteState(e.t);
  assert.equal(drift.sha256, sha256(edited));
  assert.equal(drift.size, edited.length);
  const r = await deployImage(e.t, a.file, a.sha, e.log);
  assert.equal(r.changed, true);
  assert.equal(fileSha(e.target), a.sha);
  assert.equal(fileSha(`${e.target}.prev`), sha256(edited), "the replaced file is kept as .prev, never just deleted");
  assert.equal((await remoteState(e.t)).sha256, a.sha);
});

test("rollback puts the previous image back; a second rollback returns to the newer one", async (t) => {
  const e = await setup(t);
  const a = e.image(3 * MB);
  const b = e.image(3 * MB + 1);
  await assert.rejects(rollback(e.t, e.log), /no previous image at .*BOOTAA64\.EFI\.prev/);
  await deployImage(e.t, a.file, a.sha, e.log);
  await assert.rejects(rollback(e.t, e.log), /no previous image/);
  await deployImage(e.t, b.file, b.sha, e.log);

  e.proxy.reset();
  assert.deepEqual(await rollback(e.t, e.log), { current: a.sha, previous: b.sha });
  assert.ok(e.proxy.up < 100_000, "rollback copies on the host, it sends no image");
  assert.equal(fileSha(e.target), a.sha);
  assert.equal(fileSha(`${e.target}.prev`), b.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

  assert.deepEqual(await rollback(e.t, e.log), { current: b.sha, previous: a.sha });
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

  // Identical .prev and target: nothing to roll back to.
  fs.copyFileSync(b.file, `${e.target}.prev`);
  await assert.rejects(rollback(e.t, e.log), /is the same image as/);
  assert.equal(fileSha(e.target), b.sha);
});

test("rollback refuses a .prev or a current image that is not a PE image for the host's architecture, and changes nothing", async (t) => {
  const e = await setup(t);
  const a = e.image(MB);
  const b = e.image(MB + 1);
  await deployImage(e.t, a.file, a.sha, e.log);
  await deployImage(e.t, b.file, b.sha, e.log);
  const prev = `${e.target}.prev`;
  const good = fs.readFileSync(prev);
  const refused = async (file: string, bytes: Buffer, why: RegExp) => {
    fs.writeFileSync(file, bytes);
    const before = e.stick().map((n) => [n, fileSha(path.join(path.dirname(e.target), n))]);
    await assert.rejects(rollback(e.t, e.log), (err: Error) => {
      assert.match(err.message, why);
      assert.doesNotMatch(err.message, /\n/, "one line");
      assert.match(err.message, /nothing was changed; deploy a good image instead/);
      return true;
    });
    assert.deepEqual(e.stick().map((n) => [n, fileSha(path.join(path.dirname(e.target), n))]), before, "the stick changed");
  };
  const name = (f: string) => f.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  // Not a PE at all (a text file copied over it), a PE for the other architecture, an empty file.
  await refused(prev, Buffer.from("not an image\n".repeat(1000)), new RegExp(`: ${name(prev)} is not a boot image for aarch64 \\(BOOTAA64\\.EFI is the aarch64 boot file; it is not a PE image: no MZ header\\) and the rollback would boot it:`));
  await refused(prev, Buffer.concat([peHead(0x8664), randomBytes(MB)]), new RegExp(`${name(prev)} is not a boot image for aarch64 .*it is a PE image for x86_64\\)`));
  // The PE header must be in the first 4 KiB: that is all rollback reads of an image.
  const far = Buffer.concat([peHead(0xaa64), randomBytes(MB)]);
  far.writeUInt32LE(8192, 0x3c);
  await refused(prev, far, /it is not a PE image: no PE header in its first 4096 bytes/);
  fs.writeFileSync(prev, good);
  const current = fs.readFileSync(e.target);
  await refused(e.target, Buffer.concat([Buffer.from("MZ"), randomBytes(MB)]), new RegExp(`${name(e.target)} is not a boot image for aarch64 .*and the rollback would keep it as ${name(prev)}`));
  fs.writeFileSync(e.target, current);
  // Good images on both sides: the rollback goes through.
  assert.deepEqual(await rollback(e.t, e.log), { current: a.sha, previous: b.sha });

  // BOOTX64.EFI: the x86_64 boot file takes x86_64 images only.
  const x64 = { ...e.t, path: path.join(path.dirname(e.target), "BOOTX64.EFI") };
  fs.writeFileSync(x64.path, Buffer.concat([peHead(0x8664), randomBytes(1000)]));
  fs.writeFileSync(`${x64.path}.prev`, Buffer.concat([peHead(0xaa64), randomBytes(1000)]));
  await assert.rejects(rollback(x64, e.log), /BOOTX64\.EFI\.prev is not a boot image for x86_64 \(BOOTX64\.EFI is the x86_64 boot file; it is a PE image for aarch64\)/);
  fs.writeFileSync(`${x64.path}.prev`, Buffer.concat([peHead(0x8664), randomBytes(1001)]));
  await rollback(x64, e.log);
});

test("parseDf reads GNU and busybox df -P output", () => {
  const gnu = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/vda         264212084 18170172  77331092      20% /\n";
  assert.deepEqual(parseDf(gnu), { total: 264212084 * 1024, available: 77331092 * 1024, mountedOn: "/" });
  const busybox = "Filesystem           1024-blocks    Used Available Capacity Mounted on\n/dev/sda1              7812864   123456   7689408   2% /media/usb\n";
  assert.deepEqual(parseDf(busybox), { total: 7812864 * 1024, available: 7689408 * 1024, mountedOn: "/media/usb" });
  const posix512 = "Filesystem 512-blocks Used Available Capacity Mounted on\n/dev/sdb1 2000 1000 1000 50% /mnt/my stick\n";
  assert.deepEqual(parseDf(posix512), { total: 2000 * 512, available: 1000 * 512, mountedOn: "/mnt/my stick" });
  assert.throws(() => parseDf("df: /nope: No such file or directory\n"), /cannot read df -P output/);
  assert.throws(() => parseDf(""), /cannot read df -P output/);

  const fits = spaceCheck(100 * MB, [["new image", 40 * MB], ["copy of the current image", 40 * MB]]);
  assert.equal(fits.ok, true);
  assert.equal(fits.need, 81 * MB);
  assert.equal(spaceCheck(80 * MB, [["new image", 40 * MB], ["copy of the current image", 40 * MB]]).ok, false);
  // This machine's own df, through the parser.
  const here = parseDf(execFileSync("df", ["-Pk", os.tmpdir()], { encoding: "utf8" }));
  assert.ok(here.available > 0 && here.total >= here.available);
});

test("free space: a deploy that does not fit next to the current image and .prev fails clearly and changes nothing", async (t) => {
  const e = await setup(t);
  const stickDir = path.dirname(e.target);
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=12m", "tmpfs", stickDir], { stdio: "ignore" });
  } catch {
    t.skip("cannot mount a tmpfs here (not root?); parseDf/spaceCheck are unit-tested above");
    return;
  }
  e.defer(() => execFileSync("umount", [stickDir]));
  const a = e.image(4 * MB);
  const b = e.image(4 * MB);
  await deployImage(e.t, a.file, a.sha, e.log); // 4 MiB + 1 MiB slack fits in 12 MiB
  e.proxy.reset();
  await assert.rejects(deployImage(e.t, b.file, b.sha, e.log), (err: Error) => {
    assert.match(err.message, /not enough space in .*: need 9\.4 MB \(new image 4\.2 MB \+ copy of the current image 4\.2 MB \+ 1\.0 MB slack\), 8\.4 MB available/);
    return true;
  });
  assert.ok(e.proxy.up < 100_000, "nothing uploaded");
  assert.equal(fileSha(e.target), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI"]);
});

test("every network step has a timeout that names host, port and step", async (t) => {
  // A server that accepts TCP and never says a word.
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((s) => { sockets.add(s); s.on("error", () => {}); });
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  t.after(() => { for (const s of sockets) s.destroy(); return new Promise<void>((r) => silent.close(() => r())); });
  const port = (silent.address() as net.AddressInfo).port;
  const e = await setup(t);
  const t0 = Date.now();
  await assert.rejects(remoteState({ ...e.t, port, timeoutMs: 500 }), new RegExp(`^Error: root@127\\.0\\.0\\.1:${port}: connect: Timed out`, "i"));
  assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);

  // Nothing listening: refused at once, with host and port.
  fs.rmSync(e.target, { force: true });
  const closed = await new Promise<number>((resolve) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); }); });
  await assert.rejects(remoteState({ ...e.t, port: closed }), new RegExp(`root@127\\.0\\.0\\.1:${closed}: connect: .*ECONNREFUSED`));
});

test("commands after a deploy run in order, their output logged, up to the first that fails; waitForBuild says what the host runs", async (t) => {
  const e = await setup(t);
  const out = path.join(e.dir, "after.log");
  await runOnHost(e.t, [`echo one >> '${out}'`, `echo two; echo two >> '${out}'`], e.log);
  assert.equal(fs.readFileSync(out, "utf8"), "one\ntwo\n");
  assert.ok(e.lines.includes("  two"), e.lines.join("\n"));
  await assert.rejects(runOnHost(e.t, ["echo oops >&2; false", `echo three >> '${out}'`], e.log), (err: Error) => {
    assert.equal(err.message, `root@127.0.0.1:${e.proxy.port}: run \`echo oops >&2; false\`: oops`);
    return true;
  });
  assert.equal(fs.readFileSync(out, "utf8"), "one\ntwo\n", "nothing runs after a failure");
  // The host script reads /etc/ramroot-release; this machine has none (it is no ramroot image).
  if (fs.existsSync("/etc/ramroot-release")) return t.skip("this machine has an /etc/ramroot-release");
  await assert.rejects(waitForBuild(e.t, "0123abcd", 500, e.log), /^Error: 127\.0\.0\.1 did not come back with build 0123abcd within 1 s \(it runs build \(unknown\)\); .*`ramroot rollback --stack production` puts it back$/);
});

test("throughput: a changed 64 MiB image over loopback, against scp and rsync -e ssh", async (t) => {
  const e = await setup(t);
  const size = 64 * MB;
  const a = e.image(size);
  const b = e.image(size);
  const direct: SshTarget = { ...e.t, port: e.sshd.port };
  await deployImage(direct, a.file, a.sha);
  const t0 = performance.now();
  const r = await deployImage(direct, b.file, b.sha);
  const deployMs = performance.now() - t0;
  assert.equal(fileSha(e.target), b.sha);
  const scpMs = await scpTo(e.sshd, b.file, path.join(e.dir, "scp.efi"));
  const rsyncMs = await rsyncTo(e.sshd, b.file, path.join(e.dir, "rsync.efi"));
  assert.equal(fileSha(path.join(e.dir, "rsync.efi")), b.sha);
  // The same change as a delta from the image the host has (1 MiB replaced).
  const c = variant(e, "c.efi", b, (x) => splice(x, 20 * MB, MB, randomBytes(MB)));
  const t1 = performance.now();
  const rd = await deployImage(direct, c.file, c.sha, () => {}, { bases: [{ path: b.file, sha256: b.sha }] });
  const deltaMs = performance.now() - t1;
  assert.equal(fileSha(e.target), c.sha);
  assert.ok(rd.delta);
  fs.copyFileSync(b.file, path.join(e.dir, "rsync.efi"));
  const rsyncDeltaMs = await rsyncTo(e.sshd, c.file, path.join(e.dir, "rsync.efi"));
  const rate = (ms: number) => `${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
  t.diagnostic(`sftp upload ${rate(r.uploadMs)}; whole deploy (upload, sync, remote sha256, .prev link, rename) ${rate(deployMs)}; scp ${rate(scpMs)}; rsync -e ssh ${rate(rsyncMs)}`);
  t.diagnostic(`1 MiB changed: delta deploy ${rate(deltaMs)} (${(rd.bytesSent / 1e6).toFixed(1)} MB sent); rsync -e ssh onto the old image ${rate(rsyncDeltaMs)}`);
});

// ---------------------------------------------------------------------------------------------
// Delta deploys: the host's image is a local base; only the bytes the new image does not share
// with it are sent, the rest is copied on the host (SFTP copy-data).

/** A file made from another one's bytes (changed, cut, moved), in the test's folder. */
function variant(e: Env, name: string, from: { file: string }, fn: (b: Buffer) => Buffer): { file: string; sha: string; size: number } {
  const bytes = fn(fs.readFileSync(from.file));
  const file = path.join(e.dir, name);
  fs.writeFileSync(file, bytes);
  return { file, sha: sha256(bytes), size: bytes.length };
}

const splice = (b: Buffer, at: number, del: number, ins: Buffer) => Buffer.concat([b.subarray(0, at), ins, b.subarray(at + del)]);

test("delta deploy: far fewer bytes than the image, the exact new bytes at the path, the old image at .prev", async (t) => {
  const e = await setup(t);
  const cache = path.join(e.dir, "chunks");
  const a = e.image(8 * MB);
  const r0 = await deployImage(e.t, a.file, a.sha, e.log, { chunkCache: cache });
  assert.equal(r0.delta, undefined, "nothing on the host to start from");
  assert.ok(fs.existsSync(path.join(cache, `${a.sha}.json`)), "a full upload keeps the image's chunk list for the next deploy");

  // 300 KiB changed, 1000 bytes inserted elsewhere: the new image is 1000 bytes longer.
  const b = variant(e, "b.efi", a, (x) => splice(splice(x, 5 * MB, 0, randomBytes(1000)), 2 * MB, 300 * 1024, randomBytes(300 * 1024)));
  e.proxy.reset();
  e.lines.length = 0;
  // A base given by path alone: its sha256 is worked out (and its chunk list read from the cache).
  const r1 = await deployImage(e.t, b.file, b.sha, e.log, { bases: [a.file], chunkCache: cache });
  t.diagnostic(`delta deploy of ${b.size} bytes: ${r1.bytesSent} image bytes sent, ${e.proxy.up} bytes up, ${e.proxy.down} down; ${JSON.stringify(r1.delta)}`);
  assert.equal(r1.changed, true);
  assert.equal(r1.previous, a.sha);
  assert.ok(r1.delta, e.lines.join("\n"));
  assert.equal(r1.delta!.base, a.sha);
  assert.equal(r1.delta!.copied + r1.delta!.literal, b.size);
  assert.equal(r1.bytesSent, r1.delta!.literal);
  assert.ok(r1.bytesSent < 1 * MB, `${r1.bytesSent} image bytes sent`);
  assert.ok(e.proxy.up < 1.2 * MB, `${e.proxy.up} bytes went to the host for an ${b.size}-byte image`);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"], "no temporaries left");
  assert.equal(fs.statSync(e.target).mode & 0o777, 0o600);
  assert.ok(e.lines.some((l) => /copied on the host, .* sent, \d+ ranges/.test(l)), e.lines.join("\n"));
  assert.ok(fs.existsSync(path.join(cache, `${b.sha}.json`)), "the deployed image's chunk list is kept");

  // The same size as the host's image: the host copies while it hashes its image, and our
  // bytes follow once its hash says it is not ours already.
  const c = variant(e, "c.efi", b, (x) => splice(x, 7 * MB, 4096, randomBytes(4096)));
  assert.equal(c.size, b.size);
  e.proxy.reset();
  const r2 = await deployImage(e.t, c.file, c.sha, e.log, { bases: [{ path: a.file, sha256: a.sha }, { path: b.file, sha256: b.sha }], chunkCache: cache });
  assert.equal(r2.delta?.base, b.sha);
  assert.ok(r2.bytesSent <= 3 * 256 * 1024, `${r2.bytesSent} image bytes sent`);
  assert.equal(fileSha(e.target), c.sha);
  assert.equal(fileSha(`${e.target}.prev`), b.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

  // The images are whole files of their own: a rollback swaps them back.
  assert.deepEqual(await rollback(e.t, e.log), { current: b.sha, previous: c.sha });
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), c.sha);
});

test("delta deploy of the image the host already has: nothing sent, the host's copies taken away", async (t) => {
  const e = await setup(t);
  const a = e.image(4 * MB);
  const b = variant(e, "b.efi", a, (x) => splice(x, MB, 8192, randomBytes(8192)));
  await deployImage(e.t, b.file, b.sha, e.log);
  e.proxy.reset();
  // a has the host's image's size: the host starts copying from its image before its hash is known.
  const r = await deployImage(e.t, b.file, b.sha, e.log, { bases: [{ path: a.file, sha256: a.sha }] });
  assert.deepEqual(r, { changed: false, bytesSent: 0, previous: undefined, uploadMs: 0 });
  assert.ok(e.proxy.up < 100_000, `${e.proxy.up} bytes sent`);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI"], "no temporary left");
  assert.equal(fileSha(e.target), b.sha);
});

test("delta deploy: a base that is not the host's image, missing or unusable: the whole image is sent", async (t) => {
  const e = await setup(t);
  const host = e.image(4 * MB);
  await deployImage(e.t, host.file, host.sha, e.log);
  // Same size as the host's image, other bytes: the host's copies from it are thrown away.
  const other = e.image(4 * MB);
  const next = variant(e, "next.efi", other, (x) => splice(x, MB, 100, randomBytes(100)));
  e.lines.length = 0;
  const r1 = await deployImage(e.t, next.file, next.sha, e.log, { bases: [other.file, path.join(e.dir, "missing.efi")] });
  assert.equal(r1.delta, undefined);
  assert.equal(r1.bytesSent, next.size);
  assert.equal(fileSha(e.target), next.sha);
  assert.equal(fileSha(`${e.target}.prev`), host.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
  assert.ok(e.lines.some((l) => /missing\.efi: not found, not used/.test(l)), e.lines.join("\n"));
  assert.ok(e.lines.some((l) => /same size, other content/.test(l)), e.lines.join("\n"));

  // Another size: not even tried.
  const third = variant(e, "third.efi", next, (x) => splice(x, 0, 0, randomBytes(10)));
  const r2 = await deployImage(e.t, third.file, third.sha, e.log, { bases: [host.file] });
  assert.equal(r2.delta, undefined);
  assert.equal(fileSha(e.target), third.sha);

  // A base that claims the host's sha256 but holds other bytes: its chunk list cannot be made
  // (it is checked), so the whole image goes.
  const liar = e.image(third.size);
  const fourth = variant(e, "fourth.efi", third, (x) => splice(x, 2 * MB, 10, randomBytes(10)));
  e.lines.length = 0;
  const r3 = await deployImage(e.t, fourth.file, fourth.sha, e.log, { bases: [{ path: liar.file, sha256: third.sha }] });
  assert.equal(r3.delta, undefined);
  assert.equal(r3.bytesSent, fourth.size);
  assert.ok(e.lines.some((l) => /no delta from .*has sha256 [0-9a-f]{64}, expected/.test(l)), e.lines.join("\n"));
  assert.equal(fileSha(e.target), fourth.sha);
  assert.equal(fileSha(`${e.target}.prev`), third.sha);

  // Worse: a cached chunk list that is wrong for the host's image. The delta builds the wrong
  // bytes, the host's sha256 check catches it, and the whole image follows.
  const cache = path.join(e.dir, "chunks");
  await writeChunkCache(cache, fourth.sha, await chunkFile(liar.file));
  const fifth = variant(e, "fifth.efi", liar, (x) => splice(x, 3 * MB, 10, randomBytes(10)));
  e.lines.length = 0;
  const r4 = await deployImage(e.t, fifth.file, fifth.sha, e.log, { bases: [{ path: liar.file, sha256: fourth.sha }], chunkCache: cache });
  assert.equal(r4.delta, undefined);
  assert.ok(r4.bytesSent >= fifth.size, `${r4.bytesSent}`);
  assert.ok(e.lines.some((l) => /written from the delta has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}: sending the whole image/.test(l)), e.lines.join("\n"));
  assert.equal(fileSha(e.target), fifth.sha);
  assert.equal(fileSha(`${e.target}.prev`), fourth.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
});

test("delta deploy: a server without SFTP gets the whole image through cat", async (t) => {
  const e = await setup(t, { sftp: false });
  const a = e.image(2 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  const b = variant(e, "b.efi", a, (x) => splice(x, MB, 10, randomBytes(10)));
  const r = await deployImage(e.t, b.file, b.sha, e.log, { bases: [{ path: a.file, sha256: a.sha }] });
  assert.equal(r.delta, undefined);
  assert.equal(r.bytesSent, b.size);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
});

test("a connection cut during a delta deploy leaves the old image and .prev; the next deploy completes", async (t) => {
  const e = await setup(t);
  const a = e.image(8 * MB);
  const old = e.image(8 * MB);
  // 2 MiB changed: enough bytes on the wire to cut in the middle of them.
  const b = variant(e, "b.efi", a, (x) => splice(x, 3 * MB, 2 * MB, randomBytes(2 * MB + 777)));
  const opts = { bases: [{ path: a.file, sha256: a.sha }] };
  await deployImage(e.t, old.file, old.sha, e.log);
  await deployImage(e.t, a.file, a.sha, e.log);
  // Measure one delta deploy, then go back to a (and old as .prev).
  e.proxy.reset();
  const r = await deployImage(e.t, b.file, b.sha, e.log, opts);
  const total = e.proxy.up;
  assert.ok(r.delta && total > 2 * MB && total < 3 * MB, `${total} bytes up, ${JSON.stringify(r.delta)}`);
  const reset = async () => {
    e.proxy.cutAfter = undefined;
    await rollback(e.t, e.log);
    fs.copyFileSync(old.file, `${e.target}.prev`);
  };
  await reset();

  for (const frac of [0.05, 0.3, 0.6, 0.9]) {
    e.proxy.cutAfter = Math.floor(frac * total);
    await assert.rejects(deployImage(e.t, b.file, b.sha, e.log, opts), (err: Error) => {
      assert.match(err.message, new RegExp(`^root@127\\.0\\.0\\.1:${e.proxy.port}: `), err.message);
      return true;
    });
    assert.equal(fileSha(e.target), a.sha, `the old image after a cut at ${frac}`);
    assert.equal(fileSha(`${e.target}.prev`), old.sha, `.prev untouched after a cut at ${frac}`);
  }
  // Right at the end (in the verify or the renames): old or new, never partial; a rerun finishes.
  e.proxy.cutAfter = total - 150;
  const late = await deployImage(e.t, b.file, b.sha, e.log, opts).then(() => "completed", (err: Error) => err.message.replace(/\/tmp\/\S+\//g, ""));
  t.diagnostic(`cut after ${total - 150} of ${total} bytes: ${late}`);
  const now = fileSha(e.target);
  assert.ok(now === a.sha || (now === b.sha && fileSha(`${e.target}.prev`) === a.sha));

  e.proxy.cutAfter = undefined;
  await deployImage(e.t, b.file, b.sha, e.log, opts);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"], "no temporaries left");
});

test("a filesystem where the image cannot be hard-linked (FAT): .prev is a copy, verified", async (t) => {
  const e = await setup(t);
  const a = e.image(2 * MB);
  await deployImage(e.t, a.file, a.sha, e.log);
  // ext4 allows 65000 links to a file: fill them up (in a folder beside the stick) so that ln fails
  // on the host as it does on FAT. Filesystems without such a limit cannot play FAT here.
  const links = path.join(e.dir, "links");
  fs.mkdirSync(links);
  e.defer(() => fs.rmSync(links, { recursive: true, force: true }));
  let full = false;
  for (let i = 0; i < 70_000 && !full; i++) {
    try { fs.linkSync(e.target, path.join(links, String(i))); } catch (err: any) {
      if (err.code !== "EMLINK") throw err;
      full = true;
    }
  }
  if (!full) {
    t.skip(`the filesystem of ${os.tmpdir()} has no small link limit: cannot stand in for FAT`);
    return;
  }
  const b = variant(e, "b.efi", a, (x) => splice(x, MB, 10, randomBytes(10)));
  e.lines.length = 0;
  const r = await deployImage(e.t, b.file, b.sha, e.log, { bases: [{ path: a.file, sha256: a.sha }] });
  assert.ok(r.delta);
  assert.equal(fileSha(e.target), b.sha);
  assert.equal(fileSha(`${e.target}.prev`), a.sha);
  assert.notEqual(fs.statSync(`${e.target}.prev`).nlink, 65000, ".prev is a file of its own");
  assert.ok(e.lines.some((l) => /\.prev: now the previous image [0-9a-f]{12}$/.test(l)), e.lines.join("\n"));
  assert.ok(!e.lines.some((l) => /hard link/.test(l)));
  assert.deepEqual(e.stick(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
});
