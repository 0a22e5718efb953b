// Builds a tricky tree, archives it with each compression, unpacks every member with GNU cpio
// (an implementation we did not write) and compares the result with the source.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import * as zlib from "node:zlib";
import { buildInitramfs, inspectInitramfs, levelProblem, planInitramfs, writeInitramfs, type Compression } from "../src/image/initramfs";
import { NewcReader, type NewcEntry } from "../src/image/newc";
import { Store } from "../src/store";
import { readListing, walk, writeListing } from "../src/image/walk";

const root = process.getuid?.() === 0;
const EPOCH = 1234567890;
const SPLIT = 1 << 20;
const LONG = "l".repeat(230);
const UNICODE = "ünïcödé-文件.txt";
let work: string;
let tree: string;

function write(rel: string, data: string | Buffer, mode = 0o644): void {
  const p = path.join(tree, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, data);
  fs.chmodSync(p, mode);
}

function makeTree(): void {
  tree = fs.mkdtempSync(path.join(work, "tree-")); // 0700, like every mktemp folder
  write("etc/hostname", "ramroot\n");
  write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
  fs.mkdirSync(path.join(tree, "etc/empty.d"));
  write("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
  write("usr/bin/suid", "suid", 0o4755);
  write("usr/bin/sgid", "sgid", 0o2711);
  write("usr/bin/a", "shared by two names\n");
  fs.linkSync(path.join(tree, "usr/bin/a"), path.join(tree, "usr/bin/a-link"));
  // A hardlink group that the segment rule splits (etc/ and usr/ are different segments).
  write("etc/cross", "one inode in two segments\n");
  fs.linkSync(path.join(tree, "etc/cross"), path.join(tree, "usr/cross"));
  fs.symlinkSync("usr/bin", path.join(tree, "bin"));
  fs.symlinkSync("tool", path.join(tree, "usr/bin/rel"));
  fs.symlinkSync("/nonexistent/target", path.join(tree, "usr/bin/dangling"));
  write("usr/share/empty", "");
  write(`usr/share/${LONG}`, "long name\n");
  write(`usr/share/${UNICODE}`, "non-ASCII name\n");
  fs.mkdirSync(path.join(tree, "usr/share/empty-dir/deeper"), { recursive: true });
  fs.mkdirSync(path.join(tree, "tmp"));
  fs.chmodSync(path.join(tree, "tmp"), 0o1777);
  const big = Buffer.alloc(20 << 20);
  for (let i = 0; i < big.length; i += 4096) createHash("sha256").update(String(i)).digest().copy(big, i);
  write("usr/lib/big.bin", big);
  write("boot/vmlinuz", "excluded");
  execFileSync("mkfifo", [path.join(tree, "run-fifo")]);
  if (root) {
    fs.mkdirSync(path.join(tree, "dev"));
    execFileSync("mknod", ["-m", "0620", path.join(tree, "dev/mynull"), "c", "1", "3"]);
    execFileSync("mknod", [path.join(tree, "dev/loop9"), "b", "7", "9"]);
    write("home/user/file", "someone else's\n", 0o640);
    fs.chownSync(path.join(tree, "home/user"), 1234, 5678);
    fs.chownSync(path.join(tree, "home/user/file"), 1234, 5678);
    fs.lchownSync(path.join(tree, "usr/bin/rel"), 42, 43);
  }
}

/** Every path under `dir` (relative), sorted. */
function listTree(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    out.push(r);
    if (fs.lstatSync(path.join(dir, r)).isDirectory()) out.push(...listTree(dir, r));
  }
  return out;
}

function decompress(member: Buffer, c: Compression): Buffer {
  if (c === "gzip") return execFileSync("gzip", ["-dc"], { input: member, maxBuffer: 1 << 30 });
  if (c === "zstd") return execFileSync("zstd", ["-dc"], { input: member, maxBuffer: 1 << 30 });
  return member;
}

/** The members of an image, decompressed by the gzip and zstd programs. */
async function members(image: string): Promise<Array<{ compression: Compression; data: Buffer }>> {
  const bytes = fs.readFileSync(image);
  return (await inspectInitramfs(image)).map((m) => ({ compression: m.compression, data: decompress(bytes.subarray(m.offset, m.offset + m.size), m.compression) }));
}

function headers(data: Buffer): NewcEntry[] {
  const out: NewcEntry[] = [];
  const r = new NewcReader((e) => out.push(e));
  r.push(data);
  assert.ok(r.done, "member ends with TRAILER!!!");
  return out;
}

function extract(image: Array<{ data: Buffer }>, into: string): void {
  for (const m of image) {
    const r = spawnSync("cpio", ["-idm", "--no-absolute-filenames", "--quiet"], { cwd: into, input: m.data, maxBuffer: 1 << 26 });
    assert.equal(r.status, 0, `cpio -i failed: ${r.stderr}`);
  }
}

const sha = (p: string) => createHash("sha256").update(fs.readFileSync(p)).digest("hex");

/** The image a build stands for (what Uki writes into .initrd): its segment files, concatenated. */
let images = 0;
function imageOf(res: { files: string[] }): string {
  const file = path.join(work, `image-${images++}.img`);
  fs.writeFileSync(file, Buffer.concat(res.files.map((f) => fs.readFileSync(f))));
  return file;
}

before(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-initramfs-"));
  makeTree();
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

const opts = (compression: Compression) => ({ compression, epoch: EPOCH, exclude: ["boot"], splitBytes: SPLIT });

for (const compression of ["zstd", "gzip", "none"] as const) {
  test(`${compression}: GNU cpio unpacks every member into a copy of the tree`, async () => {
    const store = new Store(fs.mkdtempSync(path.join(work, "store-")));
    const plan = await planInitramfs(tree, opts(compression));
    assert.ok(plan.segments.length >= 4, `several segments, got ${plan.segments.map((s) => s.name)}`);
    const res = await buildInitramfs(plan, store);
    const img = imageOf(res);
    assert.equal(res.size, fs.statSync(img).size);
    assert.deepEqual([...res.built].sort(), plan.segments.map((s) => s.key).sort());
    const manifest = JSON.parse(fs.readFileSync(res.manifest, "utf8"));
    assert.deepEqual(manifest.segments.map((m: { file: string }) => store.path(m.file)), res.files);
    assert.equal(manifest.size, res.size);

    const image = await members(img);
    assert.deepEqual(image.map((m) => m.compression), plan.segments.map(() => compression));
    if (compression === "zstd") {
      // Every frame carries its checksum: zstd (and the kernel) detect a flipped bit.
      for (const f of res.files) assert.match(execFileSync("zstd", ["-lv", f], { encoding: "utf8" }), /Check: XXH64/, f);
      const bad = Buffer.from(fs.readFileSync(res.files[0]));
      bad[Math.floor(bad.length / 2)] ^= 0x10;
      assert.throws(() => execFileSync("zstd", ["-t", "-q"], { input: bad, stdio: ["pipe", "pipe", "pipe"] }));
    }
    const all = image.flatMap((m) => headers(m.data));
    assert.equal(all[0].name, ".");
    assert.equal(all[0].mode, 0o040755, "/ is 0755 although the source folder is 0700");
    assert.equal(fs.statSync(tree).mode & 0o777, 0o700);
    assert.deepEqual([all[0].uid, all[0].gid], [0, 0]);
    for (const e of all) assert.equal(e.mtime, EPOCH, `mtime of ${e.name}`);
    // A directory comes before anything in it, across members too.
    const seen = new Set<string>();
    for (const e of all) {
      if (e.name !== ".") assert.ok(seen.has(path.posix.dirname(e.name)), `${e.name} after its directory`);
      seen.add(e.name);
    }

    const out = fs.mkdtempSync(path.join(work, "out-"));
    extract(image, out);
    const expected = listTree(tree).filter((p) => p !== "boot" && !p.startsWith("boot/"));
    assert.deepEqual(listTree(out), expected);
    for (const rel of expected) {
      const a = fs.lstatSync(path.join(tree, rel));
      const b = fs.lstatSync(path.join(out, rel));
      assert.equal(b.mode, a.mode, `mode of ${rel}`);
      assert.deepEqual([b.uid, b.gid], [a.uid, a.gid], `owner of ${rel}`);
      if (a.isSymbolicLink()) assert.equal(fs.readlinkSync(path.join(out, rel)), fs.readlinkSync(path.join(tree, rel)));
      if (a.isFile()) {
        assert.equal(sha(path.join(out, rel)), sha(path.join(tree, rel)), `content of ${rel}`);
        assert.equal(b.mtimeMs, EPOCH * 1000, `mtime of ${rel}`);
      }
      if (a.isCharacterDevice() || a.isBlockDevice()) assert.equal(b.rdev, a.rdev, `rdev of ${rel}`);
    }
    const [a, link] = ["usr/bin/a", "usr/bin/a-link"].map((p) => fs.statSync(path.join(out, p)));
    assert.equal(a.ino, link.ino, "a hardlink stays a hardlink");
    assert.equal(a.nlink, 2);
    assert.equal(all.filter((e) => e.name.startsWith("usr/bin/a") && e.size > 0).length, 1, "hardlinked data is stored once");
    // Names of one inode that the rule would put in different segments (etc/ and usr/) share
    // one: the link survives, and the content is stored once in the whole image.
    const [cross, usrCross] = ["etc/cross", "usr/cross"].map((p) => fs.statSync(path.join(out, p)));
    assert.equal(cross.ino, usrCross.ino, "a hard link across segments stays a hard link");
    assert.equal(cross.nlink, 2);
    assert.equal(all.filter((e) => (e.name === "etc/cross" || e.name === "usr/cross") && e.size > 0).length, 1, "cross-segment hardlinked data is stored once");
    if (root) assert.equal(fs.statSync(path.join(out, "dev/mynull")).rdev, fs.statSync("/dev/null").rdev);
  });
}

test("inspect reports the planned segments, and writeInitramfs writes the same bytes", async () => {
  const plan = await planInitramfs(tree, opts("zstd"));
  const res = await buildInitramfs(plan, new Store(fs.mkdtempSync(path.join(work, "store-"))));
  const img = imageOf(res);
  const found = await inspectInitramfs(img);
  assert.deepEqual(found.map((m) => m.entries), plan.segments.map((s) => s.entries));
  assert.equal(found.reduce((t, m) => t + m.size, 0), res.size);
  const direct = path.join(work, "direct.img");
  await writeInitramfs(tree, direct, opts("zstd"));
  assert.equal(sha(direct), sha(img));
  assert.deepEqual(fs.readdirSync(work).filter((n) => n.includes(".tmp")), [], "no temporary files left");
});

test("builds are reproducible: two empty stores, and a copy of the tree elsewhere", async () => {
  const copy = path.join(work, "copy");
  execFileSync("cp", ["-a", tree, copy]);
  const p1 = await planInitramfs(tree, opts("zstd"));
  const p2 = await planInitramfs(copy, opts("zstd"));
  assert.equal(p2.hash, p1.hash);
  const r1 = await buildInitramfs(p1, new Store(fs.mkdtempSync(path.join(work, "store-"))));
  const r2 = await buildInitramfs(p2, new Store(fs.mkdtempSync(path.join(work, "store-"))));
  assert.ok(fs.readFileSync(imageOf(r1)).equals(fs.readFileSync(imageOf(r2))));
  assert.equal(path.basename(r1.manifest), `${p1.hash}.json`);
  fs.rmSync(copy, { recursive: true });
});

test("changing one file in etc/ changes one segment, and only it is compressed again", async () => {
  const store = new Store(fs.mkdtempSync(path.join(work, "store-")));
  const before = await planInitramfs(tree, opts("zstd"));
  await buildInitramfs(before, store);
  const hostname = path.join(tree, "etc/hostname");
  const old = fs.readFileSync(hostname);
  try {
    fs.writeFileSync(hostname, "another-name\n");
    const next = await planInitramfs(tree, opts("zstd"));
    assert.deepEqual(next.segments.map((s) => s.name), before.segments.map((s) => s.name));
    const changed = next.segments.filter((s, i) => s.key !== before.segments[i].key);
    assert.deepEqual(changed.map((s) => s.name), ["etc"]);
    assert.notEqual(next.hash, before.hash);
    const res = await buildInitramfs(next, store);
    assert.deepEqual(res.built, [changed[0].key]);
    assert.equal(res.reused.length, next.segments.length - 1);
    // Nothing is concatenated: the store's initramfs/ holds only the two manifests.
    assert.deepEqual(fs.readdirSync(store.path("initramfs")).sort(), [`${before.hash}.json`, `${next.hash}.json`].sort());
  } finally {
    fs.writeFileSync(hostname, old);
  }
});

test("a new link of the tree (as the rootfs's configure stage makes) re-reads only what changed after linking", async () => {
  // Stamps younger than 2 s are never trusted: let the tree's age past that.
  await new Promise((r) => setTimeout(r, 2100));
  const cache = path.join(work, "fingerprints");
  // The tree's own listing (stage 1's), taken before any link changes its files' ctimes.
  const baseListing = path.join(work, "base.listing");
  await writeListing(baseListing, tree, await walk(tree));
  const base = new Map(readListing(baseListing, tree)!.map((r) => [r.name, r]));
  // As src/rootfs/rootfs.ts buildConfigured: link, let `change` replace files (the skeleton, setup.sh
  // through the overlay), then list the final tree.
  const link = async (name: string, change: (dir: string) => void = () => {}) => {
    const dir = path.join(work, name);
    execFileSync("cp", ["-al", `${tree}/.`, dir]);
    change(dir);
    const listing = `${dir}.listing`;
    await writeListing(listing, dir, await walk(dir, { linkedFrom: base }));
    return { dir, listing };
  };
  const a = await link("link-a");
  const planA = await planInitramfs(a.dir, { ...opts("zstd"), cacheDir: cache, listing: a.listing });
  const known = fs.readdirSync(cache).length;
  assert.equal(known, planA.segments.length, "every segment fingerprinted");
  const truthA = await planInitramfs(a.dir, opts("zstd"));
  assert.deepEqual(planA.segments, truthA.segments, "the plan from the listing differs from the plan from a walk");

  const b = await link("link-b", (dir) => {
    const hostname = path.join(dir, "etc/hostname");
    fs.rmSync(hostname);
    fs.writeFileSync(hostname, "changed after linking\n");
    // Same size, same mtime, other bytes: a new file renamed over the link.
    const tool = path.join(dir, "usr/bin/tool");
    const st = fs.statSync(tool);
    const tmp = `${tool}.new`;
    fs.writeFileSync(tmp, Buffer.from("#!/bin/sh\necho TOOL\n").subarray(0, st.size), { mode: st.mode });
    fs.utimesSync(tmp, st.atime, st.mtime);
    fs.renameSync(tmp, tool);
  });
  const planB = await planInitramfs(b.dir, { ...opts("zstd"), cacheDir: cache, listing: b.listing });
  const truth = await planInitramfs(b.dir, opts("zstd"));
  assert.deepEqual(planB.segments.map((x) => x.key), truth.segments.map((x) => x.key), "a cached fingerprint stood for other bytes");
  const changed = planB.segments.filter((x, i) => x.key !== planA.segments[i].key).map((x) => x.name);
  assert.ok(changed.includes("etc") && changed.some((n) => n.startsWith("usr")), `changed: ${changed}`);
  assert.equal(planB.read, changed.length, "segments read beyond those that changed");
  // A listed tree is not written to afterwards: even files written just before the listing
  // are trusted, and the changed segments are remembered.
  assert.equal(fs.readdirSync(cache).length - known, changed.length);
  // The linked files are stage 1's own: the tree is unchanged.
  assert.equal(fs.readFileSync(path.join(tree, "etc/hostname"), "utf8") === "changed after linking\n", false);

  // A listing is used only for its own folder: here the folder was replaced after it.
  fs.renameSync(b.dir, `${b.dir}.old`);
  execFileSync("cp", ["-a", `${a.dir}/.`, b.dir]);
  fs.writeFileSync(path.join(b.dir, "etc/hostname"), "the new folder\n");
  const other = await planInitramfs(b.dir, { ...opts("zstd"), cacheDir: cache, listing: b.listing });
  const otherTruth = await planInitramfs(b.dir, opts("zstd"));
  assert.deepEqual(other.segments.map((x) => x.key), otherTruth.segments.map((x) => x.key), "a listing of another folder was used");

  // Without stage 1's stamps (a walk, no listing), a new link makes every file look new: its
  // ctime changed. Every segment with a file in it is read again.
  const bare = path.join(work, "fingerprints-bare");
  await planInitramfs(a.dir, { ...opts("zstd"), cacheDir: bare });
  execFileSync("cp", ["-al", `${tree}/.`, path.join(work, "link-c")]);
  const again = await planInitramfs(a.dir, { ...opts("zstd"), cacheDir: bare });
  assert.ok(again.read > changed.length + 2, `without stage 1's stamps, ${again.read} segments read again`);
  for (const d of [a.dir, b.dir, `${b.dir}.old`, path.join(work, "link-c")]) fs.rmSync(d, { recursive: true });
});

test("a size change in a big file changes only its own segment", async () => {
  const before = await planInitramfs(tree, opts("none"));
  const big = path.join(tree, "usr/lib/big.bin");
  fs.appendFileSync(big, "x".repeat(3 << 20));
  try {
    const next = await planInitramfs(tree, opts("none"));
    assert.deepEqual(next.segments.map((s) => s.name), before.segments.map((s) => s.name));
    assert.deepEqual(next.segments.filter((s, i) => s.key !== before.segments[i].key).map((s) => s.name), ["usr/lib/big.bin"]);
  } finally {
    fs.truncateSync(big, 20 << 20);
  }
});

test("errors name the problem and leave nothing behind", async () => {
  const store = new Store(fs.mkdtempSync(path.join(work, "store-")));
  const missing = path.join(work, "no-such-tree");
  await assert.rejects(planInitramfs(missing), (e: Error) => e.message.includes(missing) && /does not exist/.test(e.message));
  await assert.rejects(planInitramfs(path.join(tree, "etc/passwd")), /is not a directory/);
  await assert.rejects(writeInitramfs(missing, path.join(work, "never.img")), /does not exist/);
  assert.ok(!fs.existsSync(path.join(work, "never.img")));

  // The tree changes between plan and build: the worker's hash no longer matches the key.
  const plan = await planInitramfs(tree, opts("zstd"));
  const passwd = path.join(tree, "etc/passwd");
  const old = fs.readFileSync(passwd);
  fs.writeFileSync(passwd, Buffer.from(old.toString().toUpperCase()));
  try {
    await assert.rejects(buildInitramfs(plan, store), /changed since it was planned/);
  } finally {
    fs.writeFileSync(passwd, old);
  }
  const left = fs.existsSync(path.join(store.root, "segments")) ? fs.readdirSync(path.join(store.root, "segments")) : [];
  assert.ok(left.every((n) => !n.includes(".tmp")), `no temporary files: ${left}`);
  assert.ok(!left.some((n) => n.startsWith(plan.segments.find((s) => s.name === "etc")!.key)), "the mismatching segment was not stored");
  assert.ok(!(await store.has(`initramfs/${plan.hash}.img`)));
});

describe("hard links across segments", () => {
  // Two names of one inode in etc/ and var/lib/ (segments of their own by the rule), a third
  // in a split directory's run, and an inode whose only other name is a top-level file.
  let dir: string;
  const put = (rel: string, data: string | Buffer) => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), data);
  };
  const link = (from: string, to: string) => {
    fs.mkdirSync(path.dirname(path.join(dir, to)), { recursive: true });
    fs.linkSync(path.join(dir, from), path.join(dir, to));
  };
  before(() => {
    dir = fs.mkdtempSync(path.join(work, "links-"));
    put("etc/motd", "welcome\n");
    put("etc/shared.conf", "one inode, three names\n".repeat(100));
    link("etc/shared.conf", "var/lib/app/shared.conf");
    for (let i = 0; i < 40; i++) put(`usr/lib/lib${String(i).padStart(2, "0")}.so`, createHash("sha256").update(String(i)).digest().toString("hex").repeat(1000));
    link("etc/shared.conf", "usr/lib/lib20.so.conf");
    put("top", "a top-level file\n");
    link("top", "var/top");
    put("var/log/x", "x\n");
  });
  const o = { compression: "gzip" as const, epoch: EPOCH, splitBytes: 256 << 10 };

  test("every name of an inode is in one member: GNU cpio lists them together and extracts one file with its links", async () => {
    // Without links the rule makes etc, usr/lib runs, var/lib... segments of their own.
    const plain = await planInitramfs(dir, o);
    assert.ok(plain.segments.length >= 5, plain.segments.map((x) => x.name).join(" "));
    const img = path.join(work, "links.img");
    await writeInitramfs(dir, img, o);
    const image = await members(img);
    const listed = image.map((m) => execFileSync("cpio", ["-it", "--quiet"], { input: m.data, encoding: "utf8" }).split("\n").filter(Boolean));
    const holding = (name: string) => listed.findIndex((l) => l.includes(name));
    for (const names of [["etc/shared.conf", "usr/lib/lib20.so.conf", "var/lib/app/shared.conf"], ["top", "var/top"]]) {
      const at = names.map(holding);
      assert.ok(at.every((i) => i >= 0 && i === at[0]), `${names.join(", ")} are in members ${at}`);
      assert.equal(listed.flat().filter((n) => names.includes(n)).length, names.length, "each name once");
    }
    // The other segments are as the rule makes them: etc's motd stays in a member without the links.
    assert.notEqual(holding("etc/motd"), holding("etc/shared.conf"));
    const all = image.flatMap((m) => headers(m.data));
    assert.equal(all.filter((e) => /shared\.conf$|lib20\.so\.conf$/.test(e.name) && e.size > 0).length, 1, "the content is stored once");
    assert.equal(all.filter((e) => /(^|\/)top$/.test(e.name) && e.size > 0).length, 1);
    // GNU cpio, member by member (as the kernel unpacks them): one file, three names.
    const out = fs.mkdtempSync(path.join(work, "links-out-"));
    extract(image, out);
    const st = ["etc/shared.conf", "var/lib/app/shared.conf", "usr/lib/lib20.so.conf"].map((p) => fs.statSync(path.join(out, p)));
    assert.ok(st.every((x) => x.ino === st[0].ino && x.nlink === 3), st.map((x) => `${x.ino}/${x.nlink}`).join(" "));
    assert.equal(fs.readFileSync(path.join(out, "var/lib/app/shared.conf"), "utf8"), "one inode, three names\n".repeat(100));
    assert.equal(fs.statSync(path.join(out, "top")).ino, fs.statSync(path.join(out, "var/top")).ino);
    assert.deepEqual(listTree(out), listTree(dir));
    // A directory comes before anything in it, across members too.
    const seen = new Set<string>();
    for (const e of all) {
      if (e.name !== ".") assert.ok(seen.has(path.posix.dirname(e.name)), `${e.name} after its directory`);
      seen.add(e.name);
    }
  });

  test("deterministic: the same image from a copy of the tree, and a change to the linked file changes one segment", async () => {
    const a = await planInitramfs(dir, o);
    const copy = path.join(work, "links-copy");
    execFileSync("cp", ["-a", dir, copy]);
    const b = await planInitramfs(copy, o);
    assert.equal(b.hash, a.hash);
    assert.deepEqual(b.segments, a.segments);
    fs.appendFileSync(path.join(copy, "var/lib/app/shared.conf"), "more\n");
    const c = await planInitramfs(copy, o);
    assert.deepEqual(c.segments.map((x) => x.name), a.segments.map((x) => x.name));
    assert.equal(c.segments.filter((x, i) => x.key !== a.segments[i].key).length, 1);
    fs.rmSync(copy, { recursive: true });
  });
});

test("the zstd level is the one asked for, in every segment a thread compresses (not the default after the first)", async () => {
  // Text that compresses differently at each level, in folders that become several segments.
  const text = fs.mkdtempSync(path.join(work, "text-"));
  for (const dir of ["etc", "usr/lib", "usr/share", "var"]) {
    fs.mkdirSync(path.join(text, dir), { recursive: true });
    for (let i = 0; i < 4; i++)
      fs.writeFileSync(path.join(text, dir, `f${i}`), Array.from({ length: 6000 }, (_, n) => `${dir} ${i} line ${n} value ${(n * 7919 + i) % 10007}\n`).join(""));
  }
  const sizes: Record<number, number> = {};
  for (const level of [1, 19]) {
    const store = new Store(fs.mkdtempSync(path.join(work, `store-level${level}-`)));
    const res = await buildInitramfs(await planInitramfs(text, { ...opts("zstd"), level, splitBytes: 100_000 }), store);
    assert.ok(res.files.length >= 3, `${res.files.length} segments`);
    sizes[level] = res.size;
    // Each segment is closer to what zstd itself makes of it at that level than at the default (3).
    const zstd = (raw: Buffer, l: number) => execFileSync("zstd", [`-${l}`, "-c", "--no-content-size", "-"], { input: raw, maxBuffer: 1 << 30 }).length;
    for (const f of res.files) {
      const raw = execFileSync("zstd", ["-dc", f], { maxBuffer: 1 << 30 });
      const [ours, asked, deflt] = [fs.statSync(f).size, zstd(raw, level), zstd(raw, 3)];
      assert.ok(Math.abs(ours - asked) < Math.abs(ours - deflt), `${f}: ${ours} bytes; zstd -${level} makes ${asked}, zstd -3 ${deflt}`);
    }
  }
  assert.ok(sizes[19]! < sizes[1]!, `level 19 (${sizes[19]} bytes) is not smaller than level 1 (${sizes[1]})`);
});

test("compression levels are checked per compression before anything is walked", async () => {
  const out = path.join(work, "level.img");
  await assert.rejects(planInitramfs(tree, { compression: "gzip", level: 12 }), /^Error: initramfs: level 12: not a gzip level: use a whole number from 1 to 9$/);
  await assert.rejects(writeInitramfs(tree, out, { compression: "zstd", level: 0 }), /initramfs: level 0: not a zstd level: use a whole number from 1 to 19$/);
  await assert.rejects(writeInitramfs(tree, out, { compression: "none", level: 3 }), /initramfs: level 3: compression none takes no level: leave the level out, or compress with zstd \(levels 1-19\) or gzip \(1-9\)$/);
  assert.ok(!fs.existsSync(out));
  assert.equal(levelProblem("zstd", 19), undefined);
  assert.equal(levelProblem("gzip", 9), undefined);
  assert.equal(levelProblem("none", undefined), undefined);
  assert.match(levelProblem("zstd", 2.5)!, /not a zstd level/);
  assert.match(levelProblem("zstd", 20)!, /not a zstd level/);
  // A plan for none still builds (its level is 0 inside the plan).
  const plan = await planInitramfs(tree, opts("none"));
  await buildInitramfs(plan, new Store(fs.mkdtempSync(path.join(work, "store-"))));
});

test("gzip members decompress with node:zlib too (sanity of the gzip stream)", async () => {
  const out = path.join(work, "g.img");
  await writeInitramfs(tree, out, opts("gzip"));
  const bytes = fs.readFileSync(out);
  const m = (await inspectInitramfs(out))[0];
  assert.ok(zlib.gunzipSync(bytes.subarray(m.offset, m.offset + m.size)).length > 0);
});
