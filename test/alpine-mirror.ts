// A test fixture: an offline, signed Alpine package repository ("mirror") made from genuine Alpine
// material, so that tests run the REAL alpine-make-rootfs v0.7.0 with the REAL apk-tools 2.14
// against it. No Alpine mirror can be reached on ramroot's build machines.
//
//   const m = await alpineMirror();
//   if ("unavailable" in m) { t.skip(m.unavailable); return; }
//   env: ALPINE_MIRROR=m.url ALPINE_BRANCH=m.branch APK=m.apk KEYS_DIR=m.keysDir
//   ... m.requests (each path the server was asked for), await m.close()
//
// What the mirror holds (MIRROR/v3.20/{main,community}/<arch>/, for x86_64 and aarch64):
// - genuine packages: every package of the 3.20.3 minirootfs's /lib/apk/db/installed, rebuilt
//   from the minirootfs's own files with the database's metadata, owners and modes, install
//   scripts (lib/apk/db/scripts.tar) and triggers (lib/apk/db/triggers). The files are Alpine's
//   bytes (their SHA-1s equal the database's Z: lines); the package envelopes are ours, so their
//   C: (the SHA-1 of the control stream) differs from the minirootfs's.
// - synthetic packages, each labelled "ramroot test fixture: synthetic stand-in, not an Alpine
//   package" in its pkgdesc: what system/packages and alpine-make-rootfs need that the minirootfs
//   lacks (synthetic() below). The kernel, its modules, the EFI stub and the OpenRC stand-in come
//   from the Debian-made test tree of scripts/testsys.sh.
// - community: a valid, signed, empty index.
//
// The package format is apk v2 as abuild makes it: three gzip streams concatenated. (1) A tar
// segment with .SIGN.RSA.<key> (RSA PKCS#1 v1.5 over the SHA-1 of stream 2's bytes), no
// end-of-archive blocks (abuild-tar --cut). (2) The control tar segment: .PKGINFO (ending with
// `datahash = <sha256 of stream 3's bytes>`) and the install scripts, no end-of-archive blocks.
// (3) The data tar, each entry behind a PAX header carrying APK-TOOLS.checksum.SHA1 as
// abuild-tar --hash writes it. APKINDEX.tar.gz is a signature stream as in (1), signing the bytes
// of the stream after it, followed by a tar of DESCRIPTION and APKINDEX as `apk index` writes it.
//
// Everything is built once per content (this file, the material's sums, the signing key, every
// input file) into cacheDir()/alpine-mirror/<hash>, in a temporary folder renamed into place, so
// a folder that exists is complete. The material: ../shared/alpine beside any ancestor of the
// checkout (or $RAMROOT_ALPINE_MATERIAL), else Alpine's CDN, checked against the sums below.
import { execFile } from "node:child_process";
import { createHash, generateKeyPairSync, sign } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { promisify } from "node:util";
import * as zlib from "node:zlib";
import { BUILDER } from "../src/rootfs/alpine";
import { cacheDir, repo } from "./project";

const run = promisify(execFile);
const gzip = promisify(zlib.gzip);

export const BRANCH = "v3.20";
export const ARCHES = ["x86_64", "aarch64"] as const;
export type Arch = (typeof ARCHES)[number];
const RELEASE = "3.20.3";
/** Alpine's published sums (checksums.sha512 of the v3.20 releases), as in ../shared/alpine/SHA512SUMS. */
const MINIROOTFS_SHA512: Record<Arch, string> = {
  x86_64: "9d5405f61f8a6ebc02461ba75346fbf1a63a4eab8510a0158dd321cee0c4dafe28c2a3d2cb7c3d75e2a8130dae0c3c92382f5b6adeea309eafc97621c5bf6400",
  aarch64: "cb3ba1d3ac8b90cb85a4fe2a0e26a42af542f64ea86598d0409bc35493c4e561229f8d3142a23013c98b1a037495a8bf123ff977066230ab36a3a13dc92da9c4",
};
const minirootfsName = (arch: Arch) => `alpine-minirootfs-${RELEASE}-${arch}.tar.gz`;
const minirootfsUrl = (arch: Arch) => `https://dl-cdn.alpinelinux.org/alpine/${BRANCH}/releases/${arch}/${minirootfsName(arch)}`;
const builderName = `${BUILDER.name}-v${BUILDER.version}`;

export interface Mirror {
  /** ALPINE_MIRROR: http://127.0.0.1:PORT (the tree below is served at /). */
  url: string;
  branch: typeof BRANCH;
  /** KEYS_DIR: holds only the public key the indexes and packages are signed with. */
  keysDir: string;
  /** APK: a wrapper running the x86_64 minirootfs's genuine apk through its own musl loader. */
  apk: string;
  /** The pinned builder, served by the same server. */
  builderUrl: string;
  builderSha256: string;
  /** Each request's path, in order (e.g. "/v3.20/main/aarch64/musl-1.2.5-r0.apk"). */
  requests: string[];
  /** The mirror tree on disk (v3.20/...) and what went into it. */
  root: string;
  manifest: Manifest;
  /** Each arch's minirootfs apk database (lib/apk/db/installed), the source of the genuine packages. */
  minirootfsDb: Record<Arch, string>;
  close(): Promise<void>;
}

export interface PackageRecord { name: string; version: string; file: string; C: string; synthetic: boolean; /** the minirootfs database's C: (genuine packages) */ dbC?: string }
export interface Manifest { key: string; packages: Record<Arch, PackageRecord[]> }

/** Builds the mirror (or finds it in the cache) and serves it on 127.0.0.1, or says why it cannot. */
export async function alpineMirror(): Promise<Mirror | { unavailable: string }> {
  const built = await buildAlpineMirror();
  if ("unavailable" in built) return built;
  const requests: string[] = [];
  const builder = path.join(built.dir, builderName);
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    requests.push(p);
    const file = p === `/${BUILDER.name}` ? builder : path.join(built.dir, "mirror", path.normalize(p));
    let st: fs.Stats | undefined;
    try { st = fs.statSync(file); } catch { /* 404 */ }
    if (!st?.isFile() || !file.startsWith(built.dir + path.sep) || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
      return;
    }
    // apk asks again for an index it has cached with If-Modified-Since: answer as a mirror does.
    const since = Date.parse(req.headers["if-modified-since"] ?? "");
    if (!Number.isNaN(since) && Math.floor(st.mtimeMs / 1000) * 1000 <= since) { res.writeHead(304).end(); return; }
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": st.size, "Last-Modified": st.mtime.toUTCString() });
    if (req.method === "HEAD") res.end();
    else fs.createReadStream(file).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url, branch: BRANCH, keysDir: built.keysDir, apk: built.apk, root: path.join(built.dir, "mirror"), manifest: built.manifest,
    minirootfsDb: { x86_64: path.join(built.dir, "db", "x86_64-installed"), aarch64: path.join(built.dir, "db", "aarch64-installed") },
    builderUrl: `${url}/${BUILDER.name}`, builderSha256: BUILDER.sha256, requests,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

export interface BuiltMirror { dir: string; keysDir: string; apk: string; manifest: Manifest }

/** The mirror's folder in the cache, built if it is not there. */
export async function buildAlpineMirror(): Promise<BuiltMirror | { unavailable: string }> {
  const mat = await material();
  if ("unavailable" in mat) return mat;
  const trees = await Promise.all(ARCHES.map((a) => testTree(a)));
  const bad = trees.find((t): t is { unavailable: string } => "unavailable" in t);
  if (bad) return bad;
  const inputs = trees as TestTree[];
  const key = signingKey();
  const base = path.join(cacheDir(), "alpine-mirror");
  const h = createHash("sha256");
  const self = path.join(repo, "test", "alpine-mirror.ts");
  h.update(fs.readFileSync(fs.existsSync(self) ? self : __filename));
  h.update(JSON.stringify([MINIROOTFS_SHA512, BUILDER.sha256, key.name]));
  for (const t of inputs) for (const f of t.files) h.update(`${t.arch} ${f.rel} ${fileDigest(f.abs)}\n`);
  const dir = path.join(base, h.digest("hex").slice(0, 16));
  const result = (): BuiltMirror => ({ dir, keysDir: path.join(dir, "keys"), apk: path.join(dir, "host", "ramroot-apk"), manifest: JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")) });
  // A mirror's folder is touched at each use; one unused for a week (an older fixture or test
  // tree) is removed when another is built, as are builds that died over an hour ago.
  if (fs.existsSync(dir)) { fs.utimesSync(dir, new Date(), new Date()); return result(); }
  fs.mkdirSync(base, { recursive: true });
  for (const f of fs.readdirSync(base)) {
    const age = Date.now() - fs.statSync(path.join(base, f)).mtimeMs;
    if ((f.startsWith(".build-") && age > 3600_000) || (/^[0-9a-f]{16}$/.test(f) && age > 7 * 86400_000)) fs.rmSync(path.join(base, f), { recursive: true, force: true });
  }
  const tmp = fs.mkdtempSync(path.join(base, ".build-"));
  fs.chmodSync(tmp, 0o755);
  try {
    const manifest: Manifest = { key: key.name, packages: {} as Manifest["packages"] };
    await Promise.all(ARCHES.map(async (arch, i) => {
      const mini = path.join(tmp, `minirootfs-${arch}`);
      fs.mkdirSync(mini);
      await run("tar", ["-xzf", mat.minirootfs[arch], "-C", mini, "--numeric-owner"]);
      manifest.packages[arch] = await buildArch(arch, mini, inputs[i], key, path.join(tmp, "mirror", BRANCH));
      fs.mkdirSync(path.join(tmp, "db"), { recursive: true });
      fs.copyFileSync(path.join(mini, "lib/apk/db/installed"), path.join(tmp, "db", `${arch}-installed`));
    }));
    // apk for the build host (x86_64; an arm64 host would take the other): the minirootfs kept
    // whole for its musl loader and libraries. The same apk installs the other arch's packages.
    const hostArch: Arch = process.arch === "arm64" ? "aarch64" : "x86_64";
    for (const arch of ARCHES)
      if (arch === hostArch) fs.renameSync(path.join(tmp, `minirootfs-${arch}`), path.join(tmp, "host"));
      else fs.rmSync(path.join(tmp, `minirootfs-${arch}`), { recursive: true, force: true });
    // Inside the minirootfs's folder: src/rootfs/alpine.ts shows the builder the folder of its apk.
    const host = path.join(dir, "host");
    fs.writeFileSync(path.join(tmp, "host", "ramroot-apk"),
      `#!/bin/sh\n# ramroot test fixture: the Alpine ${RELEASE} ${hostArch} minirootfs's own apk-tools, run through its musl loader.\n` +
      `exec '${host}/lib/ld-musl-${hostArch}.so.1' --library-path '${host}/lib:${host}/usr/lib' '${host}/sbin/apk' "$@"\n`, { mode: 0o755 });
    fs.mkdirSync(path.join(tmp, "keys"));
    fs.writeFileSync(path.join(tmp, "keys", key.name), key.publicPem);
    fs.copyFileSync(mat.builder, path.join(tmp, builderName));
    fs.writeFileSync(path.join(tmp, "manifest.json"), JSON.stringify(manifest, null, 1));
    try {
      fs.renameSync(tmp, dir);
    } catch (e: any) {
      if (!fs.existsSync(dir)) throw e; // else another process finished the same build first
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return result();
}

// ---------------------------------------------------------------------------------------------
// Material: the minirootfs tarballs and the builder, checked against their sums.

interface Material { minirootfs: Record<Arch, string>; builder: string }

async function material(): Promise<Material | { unavailable: string }> {
  const wanted: Array<[string, string, "sha512" | "sha256", string]> = [
    ...ARCHES.map((a) => [minirootfsName(a), minirootfsUrl(a), "sha512", MINIROOTFS_SHA512[a]] as [string, string, "sha512", string]),
    [builderName, BUILDER.url, "sha256", BUILDER.sha256],
  ];
  const shared = sharedMaterial();
  const found: Record<string, string> = {};
  for (const [name, url, alg, sum] of wanted) {
    const local = shared && path.join(shared, name);
    if (local && fs.existsSync(local)) {
      const got = createHash(alg).update(fs.readFileSync(local)).digest("hex");
      if (got !== sum) return { unavailable: `cannot run: ${local} has ${alg} ${got}, expected ${sum}` };
      found[name] = local;
      // Kept in the cache too: a clone elsewhere on this machine (CI's) finds it there.
      const copy = path.join(cacheDir(), "alpine-material", name);
      if (!fs.existsSync(copy)) {
        fs.mkdirSync(path.dirname(copy), { recursive: true });
        fs.copyFileSync(local, `${copy}.${process.pid}`);
        fs.renameSync(`${copy}.${process.pid}`, copy);
      }
      continue;
    }
    const cached = path.join(cacheDir(), "alpine-material", name);
    if (fs.existsSync(cached) && createHash(alg).update(fs.readFileSync(cached)).digest("hex") === sum) { found[name] = cached; continue; }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
      if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`);
      const bytes = Buffer.from(await res.arrayBuffer());
      const got = createHash(alg).update(bytes).digest("hex");
      if (got !== sum) throw new Error(`its ${alg} is ${got}, expected ${sum}`);
      fs.mkdirSync(path.dirname(cached), { recursive: true });
      fs.writeFileSync(`${cached}.${process.pid}`, bytes);
      fs.renameSync(`${cached}.${process.pid}`, cached);
      found[name] = cached;
    } catch (e: any) {
      const why = e?.cause?.message ?? e?.message ?? String(e);
      return { unavailable: `cannot run: ${shared ? `${shared} has no ${name}` : "../shared/alpine is absent"} and ${url} could not be fetched: ${why}` };
    }
  }
  return { minirootfs: { x86_64: found[minirootfsName("x86_64")], aarch64: found[minirootfsName("aarch64")] }, builder: found[builderName] };
}

/** $RAMROOT_ALPINE_MATERIAL, else the first <ancestor of the checkout>/shared/alpine. */
function sharedMaterial(): string | undefined {
  const env = process.env.RAMROOT_ALPINE_MATERIAL;
  if (env && fs.existsSync(env)) return env;
  for (let d = repo; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, "shared", "alpine"))) return path.join(d, "shared", "alpine");
    if (path.dirname(d) === d) return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The Debian-made test tree (scripts/testsys.sh): kernel, modules, EFI stub, OpenRC stand-in.

interface TestTree { arch: Arch; dir: string; kver: string; stub: string; kernelPkg: string; stubPkg: string; files: Array<{ rel: string; abs: string }> }

async function testTree(arch: Arch): Promise<TestTree | { unavailable: string }> {
  let dir: string;
  try {
    const out = await run("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { maxBuffer: 16 << 20 });
    dir = out.stdout.trim().split("\n").pop()!;
  } catch (e: any) {
    return { unavailable: `cannot run: scripts/testsys.sh ${arch} failed: ${String(e.stderr || e.message).trim().split("\n").slice(-3).join(" ")}` };
  }
  const info = Object.fromEntries(fs.readFileSync(path.join(dir, "etc", "ramroot-testsys"), "utf8").split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
  const kver = info.KERNEL ?? fs.readdirSync(path.join(dir, "lib", "modules"))[0];
  const stub = arch === "x86_64" ? "linuxx64.efi.stub" : "linuxaa64.efi.stub";
  const rels = ["etc/ramroot-testsys", "sbin/openrc", "sbin/rc-update", "sbin/rc-service", "sbin/openrc-run", `boot/vmlinuz-${kver}`, `boot/config-${kver}`, `usr/lib/systemd/boot/efi/${stub}`,
    ...walkTree(dir, "etc/init.d"), ...walkTree(dir, `lib/modules/${kver}`), ...Object.values(debianFiles(dir, arch)).flat()];
  return { arch, dir, kver, stub, kernelPkg: info.KERNELPKG ?? "", stubPkg: info.STUBPKG ?? "", files: rels.filter((r) => fs.existsSync(path.join(dir, r)) || isLink(path.join(dir, r))).map((rel) => ({ rel, abs: path.join(dir, rel) })) };
}

/**
 * The test tree's Debian programs (scripts/testsys.sh: install_debian_programs), by the synthetic
 * package that carries them: glibc and the libraries they link against, OpenSSH, efibootmgr.
 */
function debianFiles(dir: string, arch: Arch): Record<"glibc" | "openssh" | "efibootmgr", string[]> {
  const triplet = arch === "x86_64" ? "x86_64-linux-gnu" : "aarch64-linux-gnu";
  const interp = arch === "x86_64" ? ["lib64", "lib64/ld-linux-x86-64.so.2"] : ["lib/ld-linux-aarch64.so.1"];
  const has = (r: string) => fs.existsSync(path.join(dir, r)) || isLink(path.join(dir, r));
  return {
    // Not etc/nsswitch.conf: alpine-baselayout-data owns one (hosts only; glibc looks the rest up in the files).
    glibc: [...walkTree(dir, `lib/${triplet}`), ...walkTree(dir, `usr/lib/${triplet}`), ...interp].filter(has),
    openssh: ["usr/sbin/sshd", "usr/bin/ssh-keygen", "usr/lib/openssh", ...walkTree(dir, "usr/lib/openssh"), ...walkTree(dir, "etc/ssh")].filter(has),
    efibootmgr: ["usr/sbin/efibootmgr"].filter(has),
  };
}

/** Every path under root/rel (folders too), sorted. */
function walkTree(root: string, rel: string): string[] {
  const out: string[] = [];
  const visit = (r: string) => {
    for (const e of fs.readdirSync(path.join(root, r), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      out.push(`${r}/${e.name}`);
      if (e.isDirectory()) visit(`${r}/${e.name}`);
    }
  };
  if (fs.existsSync(path.join(root, rel))) visit(rel);
  return out;
}

const isLink = (p: string) => { try { return fs.lstatSync(p).isSymbolicLink(); } catch { return false; } };

function fileDigest(p: string): string {
  const st = fs.lstatSync(p);
  const what = st.isSymbolicLink() ? `l ${fs.readlinkSync(p)}` : st.isDirectory() ? "d" : createHash("sha256").update(fs.readFileSync(p)).digest("hex");
  return `${(st.mode & 0o7777).toString(8)} ${what}`;
}

// ---------------------------------------------------------------------------------------------
// The signing key: made once (abuild-keygen's RSA), kept in the cache; the mirror names it.

interface Key { name: string; privatePem: string; publicPem: string }

function signingKey(): Key {
  const dir = path.join(cacheDir(), "alpine-mirror", "key");
  if (!fs.existsSync(dir)) {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const pub = publicKey.export({ type: "spki", format: "pem" }) as string;
    const name = `ramroot-test-${createHash("sha256").update(publicKey.export({ type: "spki", format: "der" })).digest("hex").slice(0, 8)}.rsa`;
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    const tmp = fs.mkdtempSync(`${dir}.tmp-`);
    fs.writeFileSync(path.join(tmp, name), privateKey.export({ type: "pkcs8", format: "pem" }) as string, { mode: 0o600 });
    fs.writeFileSync(path.join(tmp, `${name}.pub`), pub);
    try { fs.renameSync(tmp, dir); } catch { fs.rmSync(tmp, { recursive: true, force: true }); } // a concurrent run made one first
  }
  const priv = fs.readdirSync(dir).find((f) => f.endsWith(".rsa"))!;
  return { name: `${priv}.pub`, privatePem: fs.readFileSync(path.join(dir, priv), "utf8"), publicPem: fs.readFileSync(path.join(dir, `${priv}.pub`), "utf8") };
}

// ---------------------------------------------------------------------------------------------
// tar, as GNU tar --format=posix writes it for abuild (a PAX header before each entry, with
// atime/ctime zeroed) plus what abuild-tar --hash adds to regular files and symlinks.

interface Entry { name: string; type: "file" | "dir" | "symlink"; mode: number; uid: number; gid: number; uname: string; gname: string; mtime: number; data?: Buffer; target?: string }

const BLOCK = 512;
const oct = (n: number, width: number) => n.toString(8).padStart(width - 1, "0") + "\0";

function header(h: { name: string; mode: number; uid: number; gid: number; size: number; mtime: number; type: string; linkname?: Buffer; uname: string; gname: string; gnuMagic?: boolean }): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(h.name, 0, 100);
  b.write(oct(h.mode, 8), 100); b.write(oct(h.uid, 8), 108); b.write(oct(h.gid, 8), 116);
  b.write(oct(h.size, 12), 124); b.write(oct(h.mtime, 12), 136);
  b.write(h.type, 156);
  h.linkname?.copy(b, 157, 0, 100);
  if (h.gnuMagic) b.write("ustar  \0", 257);
  else { b.write("ustar\0", 257); b.write("00", 263); b.write(oct(0, 8), 329); b.write(oct(0, 8), 337); }
  b.write(h.uname, 265, 32); b.write(h.gname, 297, 32);
  b.fill(" ", 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(oct(sum, 7) + " ", 148);
  return b;
}

const pad = (b: Buffer) => (b.length % BLOCK ? Buffer.concat([b, Buffer.alloc(BLOCK - (b.length % BLOCK))]) : b);

/** One PAX record: "<length> key=value\n", the length counting itself. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body);
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

function tarEntry(e: Entry): Buffer {
  const name = e.type === "dir" ? `${e.name}/` : e.name;
  const data = e.type === "file" ? e.data! : Buffer.alloc(0);
  let records = "";
  if (Buffer.byteLength(name) > 100) records += paxRecord("path", name);
  if (e.target && Buffer.byteLength(e.target) > 100) records += paxRecord("linkpath", e.target);
  records += paxRecord("atime", "0") + paxRecord("ctime", "0");
  let linkname = e.target ? Buffer.from(e.target) : undefined;
  if (e.type !== "dir") {
    // abuild-tar --hash: the SHA-1 of the content (of the link target for a symlink) as a PAX
    // record, and for a regular file also in the legacy "APK2" form inside the linkname field.
    const digest = createHash("sha1").update(e.type === "file" ? data : Buffer.from(e.target!)).digest();
    records += paxRecord("APK-TOOLS.checksum.SHA1", digest.toString("hex"));
    if (e.type === "file") {
      linkname = Buffer.alloc(100);
      linkname.write("APK2", 3);
      linkname.writeUInt16LE(64 /* NID_sha1 */, 7);
      linkname.writeUInt16LE(20, 9);
      digest.copy(linkname, 11);
    }
  }
  const slash = name.replace(/\/$/, "").lastIndexOf("/");
  const paxName = `${slash < 0 ? "." : name.slice(0, slash)}/PaxHeaders/${name.replace(/\/$/, "").slice(slash + 1)}`;
  const pax = Buffer.from(records);
  return Buffer.concat([
    header({ name: truncate(paxName), mode: 0o644, uid: 0, gid: 0, size: pax.length, mtime: e.mtime, type: "x", uname: "", gname: "" }), pad(pax),
    header({ name: truncate(name), mode: e.mode, uid: e.uid, gid: e.gid, size: data.length, mtime: e.mtime, type: { file: "0", dir: "5", symlink: "2" }[e.type], linkname, uname: e.uname, gname: e.gname }),
    pad(data),
  ]);
}

function truncate(s: string): string {
  const b = Buffer.from(s);
  return b.length <= 100 ? s : b.subarray(0, 100).toString("latin1");
}

/** A data tar: entries sorted as `LC_ALL=C sort` orders the paths, end-of-archive blocks, padded to GNU tar's 10 KiB record. */
function dataTar(entries: Entry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  const body = Buffer.concat([...sorted.map(tarEntry), Buffer.alloc(2 * BLOCK)]);
  return body.length % 10240 ? Buffer.concat([body, Buffer.alloc(10240 - (body.length % 10240))]) : body;
}

const controlEntry = (name: string, data: Buffer, mode: number, mtime: number): Entry => ({ name, type: "file", mode, uid: 0, gid: 0, uname: "root", gname: "root", mtime, data });
/** A control or signature segment: no end-of-archive blocks (abuild-tar --cut), hence no per-file hash. */
function cutTar(entries: Entry[]): Buffer {
  return Buffer.concat(entries.map((e) => {
    const records = Buffer.from(paxRecord("atime", "0") + paxRecord("ctime", "0"));
    return Buffer.concat([
      header({ name: `./PaxHeaders/${e.name}`, mode: 0o644, uid: 0, gid: 0, size: records.length, mtime: e.mtime, type: "x", uname: "", gname: "" }), pad(records),
      header({ name: e.name, mode: e.mode, uid: 0, gid: 0, size: e.data!.length, mtime: e.mtime, type: "0", uname: "root", gname: "root" }), pad(e.data!),
    ]);
  }));
}

/** abuild-sign: a gzip stream holding .SIGN.RSA.<key name>, the signature over `signed`'s bytes. */
async function signatureStream(signed: Buffer, key: Key, mtime: number): Promise<Buffer> {
  const sig = sign("sha1", signed, key.privatePem); // RSA PKCS#1 v1.5 over SHA-1
  return gzip(cutTar([controlEntry(`.SIGN.RSA.${key.name}`, sig, 0o644, mtime)]), { level: 9 });
}

// ---------------------------------------------------------------------------------------------
// Packages.

interface Meta {
  name: string; version: string; arch: Arch; desc: string; url: string; license: string; origin: string; builddate: number;
  maintainer?: string; commit?: string; installedSize?: number; providerPriority?: number; replacesPriority?: number;
  depends?: string[]; provides?: string[]; installIf?: string[]; replaces?: string[]; triggers?: string[];
  scripts?: Record<string, Buffer>; packager: string;
}

interface Built { file: string; bytes: Buffer; C: string; index: string }

async function makePackage(m: Meta, entries: Entry[], key: Key): Promise<Built> {
  const data = await gzip(dataTar(entries), { level: 6 });
  const size = m.installedSize ?? entries.reduce((n, e) => n + (e.data?.length ?? 0), 0);
  const lines = [
    "# Generated by ramroot's test fixture (test/alpine-mirror.ts), not by abuild",
    `pkgname = ${m.name}`, `pkgver = ${m.version}`, `pkgdesc = ${m.desc}`, `url = ${m.url}`, `builddate = ${m.builddate}`,
    `packager = ${m.packager}`, `size = ${size}`, `arch = ${m.arch}`, `origin = ${m.origin}`,
    ...(m.commit ? [`commit = ${m.commit}`] : []), ...(m.maintainer ? [`maintainer = ${m.maintainer}`] : []),
    ...(m.replacesPriority ? [`replaces_priority = ${m.replacesPriority}`] : []), ...(m.providerPriority ? [`provider_priority = ${m.providerPriority}`] : []),
    `license = ${m.license}`,
    ...(m.replaces ?? []).map((r) => `replaces = ${r}`), ...(m.depends ?? []).map((d) => `depend = ${d}`), ...(m.provides ?? []).map((p) => `provides = ${p}`),
    ...(m.triggers?.length ? [`triggers = ${m.triggers.join(" ")}`] : []), ...(m.installIf?.length ? [`install_if = ${m.installIf.join(" ")}`] : []),
    `datahash = ${createHash("sha256").update(data).digest("hex")}`,
  ];
  const control = await gzip(cutTar([
    controlEntry(".PKGINFO", Buffer.from(lines.join("\n") + "\n"), 0o644, m.builddate),
    ...Object.entries(m.scripts ?? {}).map(([type, body]) => controlEntry(`.${type}`, body, 0o755, m.builddate)),
  ]), { level: 9 });
  const bytes = Buffer.concat([await signatureStream(control, key, m.builddate), control, data]);
  const C = `Q1${createHash("sha1").update(control).digest("base64")}`;
  const index = [
    `C:${C}`, `P:${m.name}`, `V:${m.version}`, `A:${m.arch}`, `S:${bytes.length}`, `I:${size}`, `T:${m.desc}`, `U:${m.url}`, `L:${m.license}`,
    `o:${m.origin}`, ...(m.maintainer ? [`m:${m.maintainer}`] : []), `t:${m.builddate}`, ...(m.commit ? [`c:${m.commit}`] : []),
    ...(m.providerPriority ? [`k:${m.providerPriority}`] : []),
    ...(m.depends?.length ? [`D:${m.depends.join(" ")}`] : []), ...(m.provides?.length ? [`p:${m.provides.join(" ")}`] : []),
    ...(m.installIf?.length ? [`i:${m.installIf.join(" ")}`] : []),
  ].join("\n") + "\n";
  return { file: `${m.name}-${m.version}.apk`, bytes, C, index };
}

/** APKINDEX.tar.gz: signature stream + the tar `apk index` writes (DESCRIPTION, APKINDEX, end blocks). */
async function makeIndex(packages: Built[], description: string, key: Key, mtime: number): Promise<Buffer> {
  const file = (name: string, data: Buffer) => Buffer.concat([header({ name, mode: 0o644, uid: 0, gid: 0, size: data.length, mtime, type: "0", uname: "root", gname: "root", gnuMagic: true }), pad(data)]);
  const index = packages.map((p) => p.index + "\n").join("");
  const tar = Buffer.concat([file("DESCRIPTION", Buffer.from(description)), file("APKINDEX", Buffer.from(index)), Buffer.alloc(2 * BLOCK)]);
  const body = await gzip(tar, { level: 9 });
  return Buffer.concat([await signatureStream(body, key, mtime), body]);
}

// The minirootfs's apk database: one block per package, the files under each F: folder.
interface DbPackage { fields: Record<string, string[]>; dirs: Array<{ path: string; acl?: string; files: Array<{ name: string; acl?: string; Z?: string }> }> }

function parseInstalled(text: string): DbPackage[] {
  const pkgs: DbPackage[] = [];
  for (const block of text.split(/\n\n+/).filter((b) => b.trim())) {
    const p: DbPackage = { fields: {}, dirs: [] };
    for (const line of block.split("\n")) {
      const k = line[0], v = line.slice(2);
      const dir = p.dirs[p.dirs.length - 1], file = dir?.files[dir.files.length - 1];
      if (k === "F") p.dirs.push({ path: v, files: [] });
      else if (k === "M") dir.acl = v;
      else if (k === "R") dir.files.push({ name: v });
      else if (k === "a") file!.acl = v;
      else if (k === "Z") file!.Z = v;
      else (p.fields[k] ??= []).push(v);
    }
    pkgs.push(p);
  }
  return pkgs;
}

const words = (v?: string[]) => (v ?? []).flatMap((s) => s.split(" ")).filter(Boolean);

async function buildArch(arch: Arch, mini: string, tree: TestTree, key: Key, out: string): Promise<PackageRecord[]> {
  const db = parseInstalled(fs.readFileSync(path.join(mini, "lib/apk/db/installed"), "utf8"));
  const scriptsDir = fs.mkdtempSync(path.join(path.dirname(mini), `scripts-${arch}-`));
  await run("tar", ["-xf", path.join(mini, "lib/apk/db/scripts.tar"), "-C", scriptsDir]);
  const triggers = new Map(fs.readFileSync(path.join(mini, "lib/apk/db/triggers"), "utf8").split("\n").filter(Boolean).map((l) => [l.split(" ")[0], l.split(" ").slice(1)]));
  // Tar entries carry owner names, as abuild's do; apk maps them through the new root's passwd.
  const names = (file: string) => new Map(fs.readFileSync(path.join(mini, file), "utf8").split("\n").filter(Boolean).map((l) => [Number(l.split(":")[2]), l.split(":")[0]]));
  const users = names("etc/passwd"), groups = names("etc/group");
  const epoch = Math.max(...db.map((p) => Number(p.fields.t?.[0] ?? 0)));

  const built: Array<{ pkg: Built; rec: Omit<PackageRecord, "file" | "C"> }> = [];
  const owned = new Set<string>();
  for (const p of db) {
    const f = (k: string) => p.fields[k]?.[0];
    const C = f("C")!, name = f("P")!, version = f("V")!;
    const acl = (s: string | undefined, mode: number) => { const [uid, gid, m] = (s ?? `0:0:${mode.toString(8)}`).split(":"); return { uid: +uid, gid: +gid, mode: parseInt(m, 8) }; };
    const owner = (a: { uid: number; gid: number }) => ({ uname: users.get(a.uid) ?? "", gname: groups.get(a.gid) ?? "" });
    const entries: Entry[] = [];
    for (const d of p.dirs) {
      if (d.path) {
        // The minirootfs (a container image) lacks dev/pts and dev/shm: a folder needs no bytes.
        const a = acl(d.acl, 0o755);
        const st = fs.existsSync(path.join(mini, d.path)) ? fs.lstatSync(path.join(mini, d.path)) : undefined;
        if (st && !st.isDirectory()) throw new Error(`${arch} ${name}: ${d.path} is not a folder in the minirootfs`);
        entries.push({ name: d.path, type: "dir", ...a, ...owner(a), mtime: st ? Math.floor(st.mtimeMs / 1000) : Number(f("t") ?? epoch) });
      }
      for (const file of d.files) {
        const rel = d.path ? `${d.path}/${file.name}` : file.name;
        const abs = path.join(mini, rel);
        const st = fs.lstatSync(abs);
        const a = acl(file.acl, st.isSymbolicLink() ? 0o777 : 0o644);
        const e: Entry = st.isSymbolicLink()
          ? { name: rel, type: "symlink", ...a, ...owner(a), mtime: Math.floor(st.mtimeMs / 1000), target: fs.readlinkSync(abs) }
          : { name: rel, type: "file", ...a, ...owner(a), mtime: Math.floor(st.mtimeMs / 1000), data: fs.readFileSync(abs) };
        // The database's Z: is the SHA-1 of these very bytes (of the target, for a link): proof
        // that the minirootfs still holds what Alpine's package installed. One file was edited
        // when the image was made, as alpine-make-rootfs edits it (sed 's/^root::/root:*:/'
        // etc/shadow): undone, and kept only if the result is the package's file again.
        const zOf = (b: Buffer) => `Q1${createHash("sha1").update(b).digest("base64")}`;
        if (file.Z && e.data && zOf(e.data) !== file.Z && rel === "etc/shadow") {
          const undone = Buffer.from(e.data.toString("latin1").replace(/^root:\*:/, "root::"), "latin1");
          if (zOf(undone) === file.Z) e.data = undone;
        }
        const z = zOf(e.data ?? Buffer.from(e.target!));
        if (file.Z && file.Z !== z) throw new Error(`${arch} ${name}: ${rel} differs from what the package installed (${z}, the database says ${file.Z})`);
        entries.push(e);
        owned.add(rel);
      }
    }
    const scripts: Record<string, Buffer> = {};
    for (const s of fs.readdirSync(scriptsDir)) {
      const prefix = `${name}-${version}.${C}.`;
      if (s.startsWith(prefix)) scripts[s.slice(prefix.length)] = fs.readFileSync(path.join(scriptsDir, s));
    }
    const meta: Meta = {
      name, version, arch, desc: f("T") ?? "", url: f("U") ?? "", license: f("L") ?? "", origin: f("o") ?? name, builddate: Number(f("t") ?? epoch),
      maintainer: f("m"), commit: f("c"), installedSize: Number(f("I") ?? 0), providerPriority: Number(f("k") ?? 0) || undefined, replacesPriority: Number(f("q") ?? 0) || undefined,
      depends: words(p.fields.D), provides: words(p.fields.p), installIf: words(p.fields.i), replaces: words(p.fields.r), triggers: triggers.get(C),
      scripts, packager: "ramroot test fixture (files, metadata and scripts from the Alpine 3.20.3 minirootfs)",
    };
    built.push({ pkg: await makePackage(meta, entries, key), rec: { name, version, synthetic: false, dbC: C } });
  }
  for (const [meta, entries] of synthetic(arch, mini, tree, db, owned, epoch))
    built.push({ pkg: await makePackage(meta, entries, key), rec: { name: meta.name, version: meta.version, synthetic: true } });

  const main = path.join(out, "main", arch), community = path.join(out, "community", arch);
  fs.mkdirSync(main, { recursive: true });
  fs.mkdirSync(community, { recursive: true });
  for (const b of built) fs.writeFileSync(path.join(main, b.pkg.file), b.pkg.bytes);
  const sorted = [...built].sort((a, b) => (a.rec.name < b.rec.name ? -1 : 1));
  fs.writeFileSync(path.join(main, "APKINDEX.tar.gz"), await makeIndex(sorted.map((b) => b.pkg), `ramroot-test-fixture-${RELEASE} main`, key, epoch));
  fs.writeFileSync(path.join(community, "APKINDEX.tar.gz"), await makeIndex([], `ramroot-test-fixture-${RELEASE} community (empty)`, key, epoch));
  fs.rmSync(scriptsDir, { recursive: true, force: true });
  return sorted.map((b) => ({ ...b.rec, file: b.pkg.file, C: b.pkg.C }));
}

// ---------------------------------------------------------------------------------------------
// Synthetic packages: what the example system and alpine-make-rootfs install that the minirootfs
// lacks, each labelled in its pkgdesc. How each differs from Alpine's package of that name:
//   alpine-base          a metapackage as Alpine's, without the dependencies not here (alpine-conf,
//                        busybox-openrc, busybox-mdev-openrc)
//   alpine-release       Alpine's own three files, from the minirootfs (no package there owns them)
//   busybox-suid         empty: no /bin/bbsuid, so no setuid applets
//   openrc               the test tree's busybox-sh stand-in (openrc, rc-update, rc-service, a small
//                        openrc-run, and its etc/init.d/*): no service dependencies or supervision
//   linux-lts            Debian's kernel and the test tree's module subset; kernel.release holds
//                        Debian's release name (6.1.0-56-arm64, not 6.6.x-0-lts); no System.map
//   mkinitfs             /sbin/mkinitfs writes a one-line marker, not an initramfs; its trigger
//                        behaves as Alpine's; no features.d, initramfs-init or nlplug-findfs
//   systemd-efistub      Debian's systemd-stub (bookworm: 252) at Alpine's path
//   debian-glibc         Debian's glibc and the libraries the two below link against (the test
//                        tree's lib/<triplet>, usr/lib/<triplet>, the ELF interpreter); not in Alpine
//   openssh              Debian's sshd, sftp-server (at Debian's /usr/lib/openssh) and ssh-keygen,
//                        the test tree's sshd_config (laid out as Alpine's); its sshd service is the
//                        openrc stand-in's; no ssh client
//   efibootmgr           Debian's efibootmgr at Alpine's /usr/sbin
//   dosfstools           empty
//   linux-firmware-none  empty, as Alpine's is

const LABEL = "ramroot test fixture: synthetic stand-in, not an Alpine package:";

/** A stand-in for Alpine's mkinitfs: writes a labelled marker where the initramfs would go. */
const MKINITFS = `#!/bin/sh
# ramroot test fixture: a stand-in for Alpine's mkinitfs. It writes a small labelled text file
# (not an initramfs) where mkinitfs would write the initramfs, so a test sees whether it ran.
out= kver= features=
while [ $# -gt 0 ]; do
	case "$1" in
	-o) out=$2; shift 2 ;;
	-F) features=$2; shift 2 ;;
	-b|-c|-C|-d|-f|-i|-I|-P|-t) shift 2 ;;
	-*) shift ;;
	*) kver=$1; shift ;;
	esac
done
[ -n "$kver" ] || kver=$(uname -r)
[ -n "$out" ] || out=/boot/initramfs-$kver
[ -n "$features" ] || features=$( . /etc/mkinitfs/mkinitfs.conf 2>/dev/null; printf %s "$features")
[ -d "/lib/modules/$kver" ] || { echo "mkinitfs: /lib/modules/$kver does not exist" >&2; exit 1; }
echo "==> initramfs: creating $out for $kver"
printf 'ramroot test fixture: stand-in initramfs for kernel %s (features: %s)\\n' "$kver" "$features" > "$out"
`;

/**
 * Written to behave as Alpine's mkinitfs.trigger (aports main/mkinitfs/mkinitfs.trigger), which
 * is not copied here: disable_trigger in /etc/mkinitfs/mkinitfs.conf, read by sourcing the file,
 * set to yes/YES/true/TRUE/1 turns it off; else each triggered /usr/share/kernel/<flavor> holding
 * a kernel.release gets /boot/initramfs-<flavor> from `mkinitfs -o`, and a flavor whose
 * kernel.release is gone loses its /boot files.
 */
const MKINITFS_TRIGGER = `#!/bin/sh
# ramroot test fixture: behaves as Alpine's mkinitfs.trigger (see test/alpine-mirror.ts).
conf=/etc/mkinitfs/mkinitfs.conf
if [ -f "$conf" ]; then
	case "$( . "$conf" >/dev/null; printf %s "$disable_trigger")" in
	yes|YES|true|TRUE|1) exit 0 ;;
	esac
fi
for dir in "$@"; do
	flavor=\${dir##*/}
	if [ ! -f "$dir/kernel.release" ]; then
		rm -f "/boot/initramfs-$flavor" "/boot/vmlinuz-$flavor" "/boot/$flavor" "/boot/$flavor.gz"
		continue
	fi
	mkinitfs -o "/boot/initramfs-$flavor" "$(cat "$dir/kernel.release")" || {
		echo "  mkinitfs failed!" >&2
		exit 1
	}
done
[ -e /boot/boot ] || ln -sf . /boot/boot 2>/dev/null
exit 0
`;

/**
 * What a hostile package's script would try from inside apk's chroot on the build machine: host
 * files through /proc/N/root (apk and the builder run outside the chroot), a build process's
 * environment, a sysctl, a disk node, /sys, the hostname. The test puts its bait at
 * /run/ramroot-escape-probe.secret on the host and in its own environment (RAMROOT_TEST_SECRET).
 */
const ESCAPE_PROBE = `#!/bin/sh
out=/var/lib/ramroot-escape-probe
mkdir -p $out
{
  echo "pid $$"
  for r in /proc/*/root; do
    cat "$r/run/ramroot-escape-probe.secret" 2>/dev/null
    echo x > "$r/run/ramroot-escape-probe.written" 2>/dev/null
    ls "$r/" 2>/dev/null | tr '\\n' ' '; echo
  done
  cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep RAMROOT_TEST_SECRET
  echo escaped > /proc/sys/kernel/domainname 2>/dev/null && echo 'WROTE a sysctl'
  mount -o remount,rw /proc/sys 2>/dev/null && echo 'REMOUNTED /proc/sys'
  touch /sys/ramroot 2>/dev/null && echo 'WROTE /sys'
  mknod /tmp/disk b 8 0 2>/dev/null && echo 'MADE a disk node'
  hostname escaped 2>/dev/null
  echo "dev: $(ls /dev | tr '\\n' ' ')"
  echo "processes: $(ls -d /proc/[0-9]* | wc -l)"
} > $out/report 2>&1
exit 0
`;

/** mkinitfs's default configuration as its Makefile writes it (DEFAULT_FEATURES). */
const MKINITFS_CONF = 'features="ata base cdrom ext4 keymap kms mmc nvme raid scsi usb virtio"\n';

function synthetic(arch: Arch, mini: string, tree: TestTree, db: DbPackage[], owned: Set<string>, epoch: number): Array<[Meta, Entry[]]> {
  const version = (name: string) => db.find((p) => p.fields.P?.[0] === name)?.fields.V?.[0];
  const bbver = version("busybox")!;
  /** Debian's package version as an apk version: 6.1.192-2 -> 6.1.192-r2. */
  const debVersion = (pkg: string) => { const m = /_(\d+(?:\.\d+)*)[^_]*?-(\d+)[^_]*_/.exec(pkg); return m ? `${m[1]}-r${m[2]}` : "0-r0"; };
  const root = { uid: 0, gid: 0, uname: "root", gname: "root" };
  const dirsOf = (entries: Entry[]): Entry[] => {
    const dirs = new Set<string>();
    for (const e of entries) for (let d = path.posix.dirname(e.name); d !== "."; d = path.posix.dirname(d)) dirs.add(d);
    for (const e of entries) if (e.type === "dir") dirs.delete(e.name);
    return [...dirs].map((d) => ({ name: d, type: "dir" as const, mode: 0o755, ...root, mtime: epoch }));
  };
  const text = (name: string, body: string, mode = 0o644): Entry => ({ name, type: "file", mode, ...root, mtime: epoch, data: Buffer.from(body) });
  /** A file, link or folder of a tree, at `name` in the package (default: the same path). */
  const copy = (dir: string, rel: string, name = rel): Entry => {
    const abs = path.join(dir, rel), st = fs.lstatSync(abs), mtime = Math.floor(st.mtimeMs / 1000), mode = st.mode & 0o7777;
    if (st.isSymbolicLink()) return { name, type: "symlink", mode: 0o777, ...root, mtime, target: fs.readlinkSync(abs) };
    if (st.isDirectory()) return { name, type: "dir", mode, ...root, mtime };
    return { name, type: "file", mode, ...root, mtime, data: fs.readFileSync(abs) };
  };
  const pkg = (m: Partial<Meta> & { name: string; version: string; desc: string }, files: Entry[] = []): [Meta, Entry[]] => [{
    arch, url: "test/alpine-mirror.ts", license: "MIT", origin: m.name, builddate: epoch, maintainer: "ramroot test fixture",
    packager: "ramroot test fixture (synthetic)", ...m, desc: `${LABEL} ${m.desc}`,
  }, [...files, ...dirsOf(files)]];
  const present = (rel: string) => fs.existsSync(path.join(tree.dir, rel)) || isLink(path.join(tree.dir, rel));
  const debian = debianFiles(tree.dir, arch);

  // alpine-release's files are genuine (the minirootfs has them, no package of its database owns them).
  const release = ["etc/alpine-release", "etc/issue", "etc/os-release"].filter((f) => !owned.has(f) && fs.existsSync(path.join(mini, f)));
  return [
    // Alpine's depends on alpine-conf, busybox-mdev-openrc and busybox-openrc too, which are not
    // here; alpine-keys comes through alpine-release, as in Alpine.
    pkg({ name: "alpine-base", version: `${RELEASE}-r0`, license: "MIT", replaces: ["alpine-baselayout"],
      depends: ["alpine-baselayout", "alpine-release", "apk-tools", "busybox", "busybox-suid", "musl-utils", "openrc"],
      desc: "Alpine's alpine-base metapackage, with those of its dependencies this mirror has (no alpine-conf, busybox-openrc, busybox-mdev-openrc)" }),
    pkg({ name: "alpine-release", version: `${RELEASE}-r0`, origin: "alpine-base", depends: ["alpine-keys"],
      desc: `Alpine ${RELEASE}'s release files (${release.join(", ")}, copied from the minirootfs)` }, release.map((f) => copy(mini, f))),
    pkg({ name: "busybox-suid", version: bbver, origin: "busybox", license: "GPL-2.0-only", depends: [`busybox=${bbver}`],
      desc: "empty: Alpine's has /bin/bbsuid, the setuid helper for busybox applets" }),
    pkg({ name: "openrc", version: "0.54-r1", license: "BSD-2-Clause",
      desc: "the test system's OpenRC stand-in (busybox sh) from scripts/testsys.sh, not OpenRC",
    }, ["sbin/openrc", "sbin/rc-update", "sbin/rc-service", "sbin/openrc-run", ...tree.files.map((f) => f.rel).filter((r) => r.startsWith("etc/init.d/"))].filter(present).map((r) => copy(tree.dir, r))),
    pkg({ name: "linux-lts", version: debVersion(tree.kernelPkg), license: "GPL-2.0-only", depends: ["initramfs-generator", "linux-firmware-any"],
      desc: `Debian's kernel ${tree.kver} (${tree.kernelPkg}) laid out as Alpine's linux-lts, with the test tree's subset of its modules`,
    }, [
      copy(tree.dir, `boot/vmlinuz-${tree.kver}`, "boot/vmlinuz-lts"),
      ...(present(`boot/config-${tree.kver}`) ? [copy(tree.dir, `boot/config-${tree.kver}`, "boot/config-lts")] : []),
      ...walkTree(tree.dir, `lib/modules/${tree.kver}`).map((r) => copy(tree.dir, r)),
      text("usr/share/kernel/lts/kernel.release", `${tree.kver}\n`),
    ]),
    pkg({ name: "mkinitfs", version: "3.10.1-r0", license: "GPL-2.0-only", depends: ["busybox"], provides: ["initramfs-generator"], providerPriority: 900,
      triggers: ["/usr/share/kernel/*"], scripts: { trigger: Buffer.from(MKINITFS_TRIGGER) },
      desc: "/sbin/mkinitfs writes a labelled marker file, not an initramfs; a trigger on /usr/share/kernel/* that behaves as Alpine's; Alpine's default mkinitfs.conf",
    }, [text("sbin/mkinitfs", MKINITFS, 0o755), text("etc/mkinitfs/mkinitfs.conf", MKINITFS_CONF)]),
    pkg({ name: "systemd-efistub", version: debVersion(tree.stubPkg), origin: "systemd", license: "LGPL-2.1-or-later",
      desc: `Debian's systemd-stub (${tree.stubPkg}) at Alpine's path`,
    }, [copy(tree.dir, `usr/lib/systemd/boot/efi/${tree.stub}`)]),
    pkg({ name: "debian-glibc", version: "2.36-r9", license: "LGPL-2.1-or-later", desc: "Debian's glibc and the libraries Debian's sshd, ssh-keygen and efibootmgr link against, from the test tree (Alpine has none of it: its programs use musl)" },
      debian.glibc.map((r) => copy(tree.dir, r))),
    pkg({ name: "openssh", version: "9.7_p1-r4", license: "BSD", depends: ["debian-glibc"],
      desc: "Debian's sshd, sftp-server (/usr/lib/openssh) and ssh-keygen, with the test tree's sshd_config (Alpine's is a metapackage of openssh-client-default, openssh-server and openssh-sftp-server)",
    }, debian.openssh.map((r) => copy(tree.dir, r))),
    pkg({ name: "efibootmgr", version: "18-r2", license: "GPL-2.0-or-later", depends: ["debian-glibc"], desc: "Debian's efibootmgr (bookworm: 17) at Alpine's /usr/sbin/efibootmgr" },
      debian.efibootmgr.map((r) => copy(tree.dir, r))),
    pkg({ name: "dosfstools", version: "4.2-r2", license: "GPL-3.0-or-later", desc: "empty: no mkfs.vfat or fsck.vfat" }),
    // Not installed by the example: test/alpine-contained.test.ts installs it to see what a
    // package's script can reach of the build machine (src/rootfs/alpine.ts runs the builder contained).
    pkg({ name: "ramroot-escape-probe", version: "1-r0", depends: ["busybox"], scripts: { "post-install": Buffer.from(ESCAPE_PROBE) },
      desc: "a post-install script that tries to leave apk's chroot and reports what it reached in /var/lib/ramroot-escape-probe" },
    // A file: apk runs no script of a package that installs nothing.
    [text("usr/share/ramroot-escape-probe/README", "See its post-install script.\n")]),
    pkg({ name: "linux-firmware-none", version: "20240811-r0", origin: "linux-firmware", license: "custom", provides: ["linux-firmware-any"],
      desc: "empty, as Alpine's is: satisfies linux-firmware-any without firmware" }),
  ];
}
