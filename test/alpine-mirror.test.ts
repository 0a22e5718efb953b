// The offline Alpine mirror fixture (test/alpine-mirror.ts), proved with the real tools: openssl
// verifies its signatures, and the pinned alpine-make-rootfs v0.7.0 with the minirootfs's own
// apk-tools 2.14 installs the example system's packages from it, for x86_64 and aarch64.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { alpineMirror, ARCHES, type Arch, type Mirror } from "./alpine-mirror";
import { BUILDER, builderEnv } from "../src/rootfs/alpine";
import { hostProblem } from "../src/rootfs/configure";

const PACKAGES = ["alpine-base", "openrc", "linux-lts", "linux-firmware-none", "systemd-efistub", "openssh", "dosfstools"];
const STUB: Record<Arch, string> = { x86_64: "linuxx64.efi.stub", aarch64: "linuxaa64.efi.stub" };
const ELF_MACHINE: Record<Arch, number> = { x86_64: 0x3e, aarch64: 0xb7 };
const sha1 = (b: Buffer) => createHash("sha1").update(b).digest();
const Q1 = (b: Buffer) => `Q1${sha1(b).toString("base64")}`;
const tmpdir = (t: { after(f: () => void): void }, prefix: string) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};
const ms = (since: number) => `${Math.round(performance.now() - since)} ms`;

/** The gzip members of a file (an .apk has three, an APKINDEX.tar.gz two), found by inflating each. */
function gzipMembers(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < buf.length;) {
    assert.equal(buf.readUInt16BE(off), 0x1f8b, `gzip magic at ${off}`);
    const flags = buf[off + 3];
    let p = off + 10;
    if (flags & 4) p += 2 + buf.readUInt16LE(p);
    if (flags & 8) p = buf.indexOf(0, p) + 1;
    if (flags & 16) p = buf.indexOf(0, p) + 1;
    if (flags & 2) p += 2;
    const { engine } = zlib.inflateRawSync(buf.subarray(p), { info: true }) as unknown as { engine: { bytesWritten: number } };
    const end = p + engine.bytesWritten + 8; // deflate data, then CRC32 and size
    out.push(buf.subarray(off, end));
    off = end;
  }
  return out;
}

interface TarEntry { name: string; type: string; data: Buffer; linkname: string; pax: Record<string, string> }

/** A plain tar reader: ustar headers, PAX 'x' records applied to the next entry, stops at a zero block. */
function readTar(tar: Buffer): TarEntry[] {
  const out: TarEntry[] = [];
  let pax: Record<string, string> = {};
  for (let off = 0; off + 512 <= tar.length;) {
    const h = tar.subarray(off, off + 512);
    if (h[0] === 0) break;
    const str = (a: number, n: number) => h.subarray(a, a + n).toString("latin1").replace(/\0.*$/s, "");
    const size = parseInt(str(124, 12), 8) || 0;
    const type = String.fromCharCode(h[156]);
    const data = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === "x") {
      for (let s = data.toString("utf8"); s.length;) {
        const len = parseInt(s, 10);
        const rec = s.slice(s.indexOf(" ") + 1, len - 1);
        pax[rec.slice(0, rec.indexOf("="))] = rec.slice(rec.indexOf("=") + 1);
        s = s.slice(len);
      }
      continue;
    }
    out.push({ name: pax.path ?? str(0, 100), type, data, linkname: pax.linkpath ?? str(157, 100), pax });
    pax = {};
  }
  return out;
}

/** An apk database or index: one record per package, the fields in order. */
function parseDb(text: string): Array<Array<[string, string]>> {
  return text.split(/\n\n+/).filter((b) => b.trim()).map((b) => b.split("\n").filter(Boolean).map((l) => [l[0], l.slice(2)] as [string, string]));
}

/** path -> Z: of each file each package of an installed database owns. */
function dbChecksums(text: string): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  for (const rec of parseDb(text)) {
    const files = new Map<string, string>();
    let dir = "", file = "";
    for (const [k, v] of rec) {
      if (k === "F") dir = v;
      else if (k === "R") file = dir ? `${dir}/${v}` : v;
      else if (k === "Z") files.set(file, v);
    }
    out.set(rec.find(([k]) => k === "P")![1], files);
  }
  return out;
}

/** openssl dgst -sha1 -verify: the signature stream's .SIGN.RSA.<key> over the next stream's bytes. */
function opensslVerifies(dir: string, m: Mirror, sigStream: Buffer, signed: Buffer): string {
  const [sig] = readTar(zlib.gunzipSync(sigStream));
  const key = fs.readdirSync(m.keysDir);
  assert.deepEqual(key, [sig.name.replace(/^\.SIGN\.RSA\./, "")], "signed with the key in keysDir");
  fs.writeFileSync(path.join(dir, "sig"), sig.data);
  fs.writeFileSync(path.join(dir, "signed"), signed);
  return execFileSync("openssl", ["dgst", "-sha1", "-verify", path.join(m.keysDir, key[0]), "-signature", path.join(dir, "sig"), path.join(dir, "signed")], { encoding: "utf8" }).trim();
}

test("alpine mirror: signed indexes, genuine packages repackaged, cached", async (t) => {
  let start = performance.now();
  const got = await alpineMirror();
  if ("unavailable" in got) { t.skip(got.unavailable); return; }
  const m: Mirror = got;
  t.after(() => m.close());
  t.diagnostic(`first call (builds the mirror unless cached): ${ms(start)}`);
  start = performance.now();
  const again = await alpineMirror();
  const cached = performance.now() - start;
  assert.ok(!("unavailable" in again));
  await again.close();
  t.diagnostic(`second call: ${Math.round(cached)} ms`);
  assert.ok(cached < 1000, `a cached mirror takes ${cached} ms`);
  const dir = tmpdir(t, "ramroot-mirror-");

  for (const arch of ARCHES) {
    for (const repo of ["main", "community"]) {
      const members = gzipMembers(fs.readFileSync(path.join(m.root, m.branch, repo, arch, "APKINDEX.tar.gz")));
      assert.equal(members.length, 2, `${repo}/${arch}: signature + index`);
      assert.equal(opensslVerifies(dir, m, members[0], members[1]), "Verified OK", `${repo}/${arch} index signature`);
    }
    // The real apk checks every package's signature and datahash, and trusts only the fixture's key.
    const main = path.join(m.root, m.branch, "main", arch);
    const apks = m.manifest.packages[arch].map((p) => p.file);
    const verified = execFileSync(m.apk, ["--keys-dir", m.keysDir, "verify", ...apks], { cwd: main, encoding: "utf8" });
    assert.deepEqual(verified.trim().split("\n"), apks.map((f) => `${f}: 0 - OK`));
    fs.mkdirSync(path.join(dir, "no-keys"), { recursive: true });
    const untrusted = await new Promise<string>((resolve) => execFile(m.apk, ["--keys-dir", path.join(dir, "no-keys"), "verify", apks[0]], { cwd: main }, (err, out) => resolve(`${err ? "failed" : "passed"}: ${out}`)));
    assert.equal(untrusted.trim(), `failed: ${apks[0]}: 0 - UNTRUSTED`);
    const [description, apkindex] = readTar(zlib.gunzipSync(gzipMembers(fs.readFileSync(path.join(m.root, m.branch, "main", arch, "APKINDEX.tar.gz")))[1]));
    assert.deepEqual([description.name, apkindex.name], ["DESCRIPTION", "APKINDEX"]);
    const index = new Map(parseDb(apkindex.data.toString()).map((r) => [r.find(([k]) => k === "P")![1], new Map(r)]));
    const minirootfs = fs.readFileSync(m.minirootfsDb[arch], "utf8");
    const alpineZ = dbChecksums(minirootfs);
    const alpineC = new Map(parseDb(minirootfs).map((r) => [new Map(r).get("P")!, new Map(r).get("C")!]));
    assert.deepEqual([...alpineC.keys()].filter((p) => !m.manifest.packages[arch].some((q) => q.name === p && !q.synthetic)), [], `${arch}: every minirootfs package is in the mirror`);

    for (const p of m.manifest.packages[arch]) {
      const bytes = fs.readFileSync(path.join(m.root, m.branch, "main", arch, p.file));
      const members = gzipMembers(bytes);
      assert.equal(members.length, 3, `${p.file}: signature, control, data`);
      const [sig, control, data] = members;
      const entry = index.get(p.name)!;
      assert.equal(entry.get("C"), Q1(control), `${p.file}: C: is the SHA-1 of the control stream`);
      assert.equal(entry.get("C"), p.C);
      assert.equal(entry.get("S"), String(bytes.length));
      assert.equal(opensslVerifies(dir, m, sig, control), "Verified OK", `${p.file} signature`);
      const ctl = readTar(zlib.gunzipSync(control));
      assert.equal(ctl[0].name, ".PKGINFO");
      const pkginfo = ctl[0].data.toString();
      assert.match(pkginfo, new RegExp(`^datahash = ${createHash("sha256").update(data).digest("hex")}$`, "m"), `${p.file}: datahash`);
      const files = readTar(zlib.gunzipSync(data)).filter((e) => e.type === "0" || e.type === "2");
      for (const f of files)
        assert.equal(f.pax["APK-TOOLS.checksum.SHA1"], sha1(f.type === "0" ? f.data : Buffer.from(f.linkname)).toString("hex"), `${p.file}: ${f.name} checksum`);
      if (p.synthetic) {
        assert.match(entry.get("T")!, /^ramroot test fixture: synthetic stand-in, not an Alpine package: /, p.name);
        continue;
      }
      // Genuine: the data holds exactly the files Alpine's package installed, byte for byte (their
      // SHA-1s are the database's Z: lines). The C: cannot equal the database's: that is the SHA-1
      // of Alpine's own control stream, whose .PKGINFO (datahash of Alpine's data stream, packager)
      // and gzip bytes are not in the material; the envelope here is the fixture's.
      assert.equal(p.dbC, alpineC.get(p.name));
      const want = alpineZ.get(p.name)!;
      assert.deepEqual(new Map(files.map((f) => [f.name, Q1(f.type === "0" ? f.data : Buffer.from(f.linkname))])), want, `${p.file}: files and checksums as the minirootfs database has them`);
      for (const k of ["V", "A", "I", "T", "U", "L", "o", "m", "t", "c", "k", "D", "p", "i"])
        assert.equal(entry.get(k), new Map(parseDb(minirootfs).find((r) => new Map(r).get("P") === p.name)!).get(k), `${p.file}: ${k}:`);
    }
  }
});

test("alpine-make-rootfs v0.7.0 with the real apk against the mirror, x86_64 and aarch64", async (t) => {
  const got = await alpineMirror();
  if ("unavailable" in got) { t.skip(got.unavailable); return; }
  const m: Mirror = got;
  t.after(() => m.close());
  const dir = tmpdir(t, "ramroot-amr-");
  // Fetched from the mirror's server and checked, as the project fetches its pinned builder.
  const script = Buffer.from(await (await fetch(m.builderUrl)).arrayBuffer());
  assert.equal(createHash("sha256").update(script).digest("hex"), m.builderSha256);
  assert.equal(m.builderSha256, BUILDER.sha256);
  const builder = path.join(dir, "alpine-make-rootfs");
  fs.writeFileSync(builder, script, { mode: 0o755 });

  /** The builder as src/rootfs/alpine.ts runs it (its environment), with the fixture's apk. */
  const build = (arch: Arch, dest: string, packages: string[], cache: string) => new Promise<{ code: number; out: string; ms: number }>((resolve) => {
    const start = performance.now();
    const env = { ...builderEnv({ arch, packages, branch: m.branch, mirror: m.url, keysDir: m.keysDir }, cache), APK: m.apk };
    execFile("/bin/sh", [builder, dest], { env, maxBuffer: 64 << 20, timeout: 600_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as any).code === "number" ? (err as any).code : 1) : 0, out: stdout + stderr, ms: performance.now() - start }));
  });

  for (const arch of ARCHES) {
    await t.test(arch, async (t) => {
      const problem = hostProblem(arch);
      if (problem) { t.skip(problem); return; }
      const cache = path.join(dir, `cache-${arch}`);
      fs.mkdirSync(cache);

      // As the project runs it: mkinitfs.conf says disable_trigger=yes before anything is installed.
      const dest = path.join(dir, `rootfs-${arch}`);
      fs.mkdirSync(path.join(dest, "etc", "mkinitfs"), { recursive: true });
      fs.writeFileSync(path.join(dest, "etc", "mkinitfs", "mkinitfs.conf"), "disable_trigger=yes\n");
      const first = await build(arch, dest, PACKAGES, cache);
      assert.equal(first.code, 0, first.out);
      t.diagnostic(`${arch}: builder run ${Math.round(first.ms)} ms`);
      const busybox = fs.readFileSync(path.join(dest, "bin", "busybox"));
      assert.equal(busybox.readUInt16LE(18), ELF_MACHINE[arch], "Alpine's busybox for the target architecture");
      assert.equal(fs.readlinkSync(path.join(dest, "bin", "ls")), "/bin/busybox", "applet links from busybox's post-install/trigger");
      assert.equal(fs.readlinkSync(path.join(dest, "bin", "sh")), "/bin/busybox");
      assert.ok(fs.statSync(path.join(dest, "boot", "vmlinuz-lts")).size > 1 << 20);
      assert.ok(fs.existsSync(path.join(dest, "sbin", "openrc")));
      assert.ok(fs.existsSync(path.join(dest, "usr", "lib", "systemd", "boot", "efi", STUB[arch])));
      const kver = fs.readFileSync(path.join(dest, "usr", "share", "kernel", "lts", "kernel.release"), "utf8").trim();
      assert.ok(fs.existsSync(path.join(dest, "lib", "modules", kver, "modules.dep")));
      assert.equal(fs.readFileSync(path.join(dest, "etc", "apk", "arch"), "utf8"), `${arch}\n`);
      assert.equal(fs.readFileSync(path.join(dest, "etc", "alpine-release"), "utf8"), "3.20.3\n");
      const installed = fs.readFileSync(path.join(dest, "lib", "apk", "db", "installed"), "utf8");
      const names = parseDb(installed).map((r) => new Map(r).get("P")!);
      for (const p of [...PACKAGES, "alpine-baselayout", "busybox", "busybox-suid", "musl-utils", "alpine-release", "mkinitfs", "musl", "apk-tools"])
        assert.ok(names.includes(p), `${p} installed (${names.join(" ")})`);
      // apk recorded Alpine's checksums for every genuine file (from the packages' PAX headers).
      const mine = dbChecksums(installed), alpine = dbChecksums(fs.readFileSync(m.minirootfsDb[arch], "utf8"));
      for (const [p, files] of alpine) if (mine.has(p)) assert.deepEqual(mine.get(p), files, `${p}'s files`);
      // The trigger read disable_trigger: no initramfs; apk kept the existing config (protected /etc).
      assert.ok(!fs.existsSync(path.join(dest, "boot", "initramfs-lts")), "no initramfs with disable_trigger=yes");
      assert.equal(fs.readFileSync(path.join(dest, "etc", "mkinitfs", "mkinitfs.conf"), "utf8"), "disable_trigger=yes\n");
      assert.match(fs.readFileSync(path.join(dest, "etc", "mkinitfs", "mkinitfs.conf.apk-new"), "utf8"), /^features="/);

      // Once more without that file, the same apk cache: the trigger makes /boot/initramfs-lts,
      // and nothing is downloaded again but (at most) the indexes.
      const asked = m.requests.length;
      const dest2 = path.join(dir, `rootfs-${arch}-trigger`);
      const second = await build(arch, dest2, PACKAGES, cache);
      assert.equal(second.code, 0, second.out);
      t.diagnostic(`${arch}: builder run with the apk cache, trigger enabled ${Math.round(second.ms)} ms`);
      assert.match(second.out, /Executing mkinitfs-[^ ]+\.trigger/);
      assert.match(fs.readFileSync(path.join(dest2, "boot", "initramfs-lts"), "utf8"), new RegExp(`stand-in initramfs for kernel ${kver.replace(/\./g, "\\.")}`));
      assert.deepEqual(m.requests.slice(asked).filter((r) => r.endsWith(".apk")), [], "no package fetched again");
    });
  }

  await t.test("a package that does not exist: apk's own error", async (t) => {
    const arch: Arch = "x86_64";
    const problem = hostProblem(arch);
    if (problem) { t.skip(problem); return; }
    const cache = path.join(dir, "cache-missing");
    fs.mkdirSync(cache);
    const res = await build(arch, path.join(dir, "rootfs-missing"), ["alpine-base", "nosuchpkg"], cache);
    assert.notEqual(res.code, 0);
    assert.match(res.out, /ERROR: unable to select packages:/);
    assert.match(res.out, /nosuchpkg \(no such package\)/);
  });
});
