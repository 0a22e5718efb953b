// The host's half of a deploy (src/deploy/ramroot-host.sh) on its own: linted by shellcheck as
// POSIX sh, and run through its real client (src/deploy/host-protocol.ts) on this machine, with
// no SSH in between, under two hosts: dash with GNU coreutils (and openssl), and busybox sh with
// nothing but busybox's applets on its PATH (the NAS's userland: no GNU tool, no openssl).
import { test, type TestContext } from "node:test";
import * as assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { HostProtocol, hostFiles, hostScript, hostScriptPath, type HostLink } from "../src/deploy/host-protocol";
import type { RemoteProcess } from "../src/deploy/ssh-session";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const fileSha = (f: string) => (fs.existsSync(f) ? sha256(fs.readFileSync(f)) : undefined);

const hasShellcheck = spawnSync("shellcheck", ["--version"]).status === 0;

test("ramroot-host.sh is POSIX sh that shellcheck finds nothing in, as written and as sent", { skip: !hasShellcheck && "shellcheck is not installed (scripts/setup.sh installs the Debian package shellcheck)" }, () => {
  const lint = (args: string[], input?: string) => spawnSync("shellcheck", ["-s", "sh", "-f", "gcc", ...args], { input, encoding: "utf8" });
  const file = lint([hostScriptPath()]);
  assert.equal(file.status, 0, file.stdout + file.stderr);
  // What the client sends: the same script without comment lines and indentation.
  const sent = lint(["-"], hostScript());
  assert.equal(sent.status, 0, sent.stdout + sent.stderr);
  assert.ok(hostScript().length < fs.statSync(hostScriptPath()).size * 0.7, "comments are not sent");
});

/** A shell to run the script with, and the PATH it gets. */
interface Shell { name: string; argv0: string[]; env: NodeJS.ProcessEnv }

/** busybox sh with a PATH of busybox applets only. */
function busyboxShell(t: TestContext): Shell | undefined {
  const bb = ["/bin/busybox", "/usr/bin/busybox"].find((f) => fs.existsSync(f));
  if (!bb) return undefined;
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-busybox-"));
  t.after(() => fs.rmSync(bin, { recursive: true, force: true }));
  for (const applet of execFileSync(bb, ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean)) {
    fs.symlinkSync(bb, path.join(bin, applet));
  }
  return { name: "busybox sh, busybox applets only", argv0: [path.join(bin, "sh")], env: { PATH: bin, HOME: "/" } };
}

const dash: Shell = { name: "dash, GNU coreutils", argv0: ["/bin/sh"], env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/" } };

/** A HostLink that runs argv ("sh", "-c", script, ...) on this machine with `shell`; what it started is killed after the test. */
function localLink(t: TestContext, shell: Shell): HostLink {
  const where = "local";
  const start = (argv: string[]): RemoteProcess => {
    assert.equal(argv[0], "sh");
    const [cmd, ...args] = [...shell.argv0, ...argv.slice(1)];
    const child = spawn(cmd, args, { env: shell.env, stdio: "pipe" });
    child.stdin.on("error", () => {}); // a command after the script has died: its exit says why
    t.after(() => { if (child.exitCode === null && child.signalCode === null) child.kill(); });
    return { stdout: child.stdout, stderr: child.stderr, stdin: child.stdin, exited: new Promise((r) => child.on("close", (code) => r(code))) };
  };
  const step: HostLink["step"] = (name, ms, fn) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${where}: ${name}: timed out after ${ms} ms`)), ms);
    fn(() => {}).then((v) => { clearTimeout(timer); resolve(v); }, (e) => { clearTimeout(timer); reject(new Error(`${where}: ${name}: ${e.message}`)); });
  });
  return {
    where, timeoutMs: 10_000, step,
    spawn: async (_name, argv) => start(argv),
    exec: (name, argv) => step(name, 10_000, async () => {
      const p = start(argv);
      const out: Buffer[] = [], err: Buffer[] = [];
      p.stdout.on("data", (d: Buffer) => out.push(d));
      p.stderr.on("data", (d: Buffer) => err.push(d));
      p.stdin.end();
      const code = await p.exited;
      if (code !== 0) throw new Error(Buffer.concat(err).toString().trim() || `exited with ${code}`);
      return Buffer.concat(out).toString();
    }),
  };
}

/** An arm64 PE header, then noise. */
function image(size: number): Buffer {
  const b = randomBytes(size);
  const head = Buffer.alloc(0x100);
  head.write("MZ", 0, "latin1");
  head.writeUInt32LE(0x80, 0x3c);
  head.write("PE\0\0", 0x80, "latin1");
  head.writeUInt16LE(0xaa64, 0x84);
  head.copy(b, 0, 0, Math.min(size, 0x100));
  return b;
}

function stick(t: TestContext) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-host-script-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = hostFiles(path.join(dir, "EFI", "BOOT", "BOOTAA64.EFI"));
  fs.mkdirSync(files.dir, { recursive: true });
  return { files, list: () => fs.readdirSync(files.dir).sort() };
}

for (const make of [() => dash, busyboxShell]) {
  test(`host script under ${make === busyboxShell ? "busybox sh with busybox applets only" : "dash with GNU coreutils"}: state, deploy, reuse, hard links, copies where links fail, rollback, receive`, async (t) => {
    const shell = make(t);
    if (!shell) return t.skip("busybox is not installed (Debian's busybox-static; scripts/setup.sh installs it)");
    const { files, list } = stick(t);
    const host = new HostProtocol(localLink(t, shell), files);

    // Nothing there yet; a folder that does not exist is an error that names it.
    assert.deepEqual(await host.read(), { cur: undefined, curSize: undefined, prev: undefined, prevSize: undefined, prevDiffers: false, upload: undefined, uploadSize: undefined, df: undefined, heads: undefined });
    await assert.rejects(new HostProtocol(localLink(t, shell), hostFiles("/nonexistent/ramroot/BOOTAA64.EFI")).read(), /folder \/nonexistent\/ramroot does not exist/);

    // A first deploy: the upload written beside P (as SFTP would), verified, renamed; no .prev.
    const a = image(300_000), b = image(300_001);
    fs.writeFileSync(files.upload, a, { mode: 0o644 });
    let ch = await host.deploy(a.length, sha256(a), false);
    let st = await ch.state();
    assert.equal(st.upload, sha256(a), "a leftover upload of the image is hashed and kept");
    assert.ok(st.df && st.df.available > 0, "df is read");
    ch.verify();
    assert.equal(await ch.verified(), sha256(a));
    assert.equal(await ch.commit(), undefined, "no .prev to make");
    assert.deepEqual(list(), ["BOOTAA64.EFI"]);
    assert.equal(fs.statSync(files.path).mode & 0o777, 0o600, "verify makes the image root's alone");

    // A second deploy: P is kept as .prev through a hard link.
    fs.writeFileSync(files.upload, b);
    ch = await host.deploy(b.length, sha256(b), false);
    st = await ch.state();
    assert.deepEqual([st.cur, st.curSize, st.prev, st.prevDiffers], [sha256(a), a.length, undefined, true]);
    ch.keepPrevious(st.cur!, st.curSize!);
    ch.verify();
    assert.equal(await ch.verified(), sha256(b));
    assert.equal(await ch.commit(), "linked");
    assert.equal(fileSha(files.path), sha256(b));
    assert.equal(fileSha(files.prev), sha256(a));
    assert.deepEqual(await host.read(), { cur: sha256(b), curSize: b.length, prev: sha256(a), prevSize: a.length, prevDiffers: true, upload: undefined, uploadSize: undefined, df: undefined, heads: undefined });

    // A deploy reads .prev only where it may be P's image: of another size it is not ("?"), its
    // hash on request; a hard link to P is P ("=", without hashing it twice).
    const c = image(b.length);
    ch = await host.deploy(c.length, sha256(c), false);
    st = await ch.state();
    assert.deepEqual([st.prev, st.prevSize, st.prevDiffers], [undefined, a.length, true]);
    assert.equal(await ch.hashPrev(st.prevSize!), sha256(a));
    ch.end();
    fs.rmSync(files.prev);
    fs.linkSync(files.path, files.prev);
    ch = await host.deploy(c.length, sha256(c), false);
    st = await ch.state();
    assert.deepEqual([st.prev, st.prevDiffers], [sha256(b), false]);
    // A commit before a verify that gave the deploy's hash is refused.
    fs.writeFileSync(files.upload, randomBytes(10));
    await assert.rejects(ch.commit(), /BOOTAA64\.EFI\.ramroot-new is not verified: not renaming it/);
    assert.equal(fileSha(files.path), sha256(b));

    // Leftovers: an upload of the right size but other bytes, and a partial .prev copy, are
    // removed by a deploy; left alone by a speculative one (the client is writing the upload).
    const prevTemp = `${files.path}.ramroot-prev`;
    fs.writeFileSync(files.upload, randomBytes(c.length));
    fs.writeFileSync(prevTemp, "partial");
    ch = await host.deploy(c.length, sha256(c), true);
    st = await ch.state();
    assert.deepEqual([st.upload, st.uploadSize], [undefined, undefined]);
    assert.ok(fs.existsSync(files.upload) && !fs.existsSync(prevTemp));
    await ch.abort();
    assert.ok(!fs.existsSync(files.upload), "abort takes the temporaries away");
    const junk = randomBytes(c.length);
    fs.writeFileSync(files.upload, junk);
    ch = await host.deploy(c.length, sha256(c), false);
    st = await ch.state();
    assert.deepEqual([st.upload, st.uploadSize], [sha256(junk), c.length]);
    ch.end();
    assert.deepEqual(list(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

    // Without SFTP the upload goes through the script's stdin: root's alone, whatever the umask.
    const local = path.join(files.dir, "..", "c.efi");
    fs.writeFileSync(local, c);
    await host.receive(() => fs.createReadStream(local));
    assert.equal(fileSha(files.upload), sha256(c));
    assert.equal(fs.statSync(files.upload).mode & 0o777, 0o600);
    fs.rmSync(files.upload);

    // Rollback: the first 4 KiB of both images and uname -m come with the state; swap.
    fs.rmSync(files.prev);
    fs.writeFileSync(files.prev, a);
    ch = await host.rollback();
    st = await ch.state();
    assert.deepEqual(st.heads!.cur, b.subarray(0, 4096));
    assert.deepEqual(st.heads!.prev, a.subarray(0, 4096));
    assert.equal(st.heads!.uname, os.machine());
    await ch.swap(st.cur!, st.prev!, a.length + b.length);
    assert.equal(fileSha(files.path), sha256(a));
    assert.equal(fileSha(files.prev), sha256(b));
    assert.deepEqual(list(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
    // A swap whose hashes are not the files' changes nothing.
    ch = await host.rollback();
    st = await ch.state();
    await assert.rejects(ch.swap(st.prev!, st.cur!, a.length + b.length), /the copy .*BOOTAA64\.EFI\.ramroot-new of .*BOOTAA64\.EFI\.prev has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}/);
    assert.equal(fileSha(files.path), sha256(a));
    assert.deepEqual(list(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);

    // Where P cannot be hard-linked (the NAS's FAT stick, always): .prev is a copy, synced and
    // verified. ext4 allows 65000 links to a file: use them up, beside the stick.
    const links = path.join(files.dir, "..", "links");
    fs.mkdirSync(links);
    let full = false;
    for (let i = 0; i < 70_000 && !full; i++) {
      try { fs.linkSync(files.path, path.join(links, String(i))); } catch (err: any) {
        if (err.code !== "EMLINK") throw err;
        full = true;
      }
    }
    if (full) {
      fs.writeFileSync(files.upload, c);
      ch = await host.deploy(c.length, sha256(c), false);
      st = await ch.state();
      ch.keepPrevious(st.cur!, st.curSize!);
      ch.verify();
      assert.equal(await ch.verified(), sha256(c));
      assert.equal(await ch.commit(), "copied");
      assert.equal(fileSha(files.path), sha256(c));
      assert.equal(fileSha(files.prev), sha256(a));
      assert.equal(fs.statSync(files.prev).nlink, 1, ".prev is a file of its own");
      assert.deepEqual(list(), ["BOOTAA64.EFI", "BOOTAA64.EFI.prev"]);
    } else {
      t.diagnostic(`the filesystem of ${os.tmpdir()} has no small link limit: the copy of .prev is not tested here`);
    }
    fs.rmSync(links, { recursive: true, force: true });

    // Something at P that is not a regular file is an error, not an absent image.
    fs.rmSync(files.path);
    fs.mkdirSync(files.path);
    await assert.rejects(host.read(), /BOOTAA64\.EFI is not a regular file/);

    // build-id: this machine has no /etc/ramroot-release (or one with a hex build id).
    assert.match(await host.buildId(), /^[0-9a-f]*$/);
  });
}
