// src/image/initramfs.ts on small trees, with Node alone: what is refused before anything is encoded
// (and how it is said), and inspect's cutting of a concatenated image into its members.
// test/initramfs.test.ts builds a tricky tree and has GNU cpio, gzip and zstd check the result.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildInitramfs, inspectInitramfs, inspectProblem, planInitramfs, treeProblem, writeInitramfs, type Compression } from "../../src/image/initramfs";
import { Store } from "../../src/store";
import { encodeNewc, type NewcRecord } from "../../src/image/newc";
import { hashTree } from "../../src/rootfs/treehash";
import { reproducible, walk } from "../../src/image/walk";
import { runSegment, SegmentPool } from "../../src/image/compress-worker";

const EPOCH = 1234567890;
let work: string;
before(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-initramfs-unit-"));
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

test("a top-level TRAILER!!! is refused (it would end the archive), naming the path and the fix; elsewhere it is a name", async () => {
  const dir = fs.mkdtempSync(path.join(work, "trailer-"));
  fs.mkdirSync(path.join(dir, "etc"));
  fs.writeFileSync(path.join(dir, "etc/TRAILER!!!"), "just a name here\n");
  const ok = await planInitramfs(dir, { epoch: EPOCH });
  fs.writeFileSync(path.join(dir, "TRAILER!!!"), "x");
  const out = path.join(work, "trailer.img");
  for (const run of [() => planInitramfs(dir, { epoch: EPOCH }), () => writeInitramfs(dir, out, { epoch: EPOCH })]) {
    await assert.rejects(run(), (e: Error) => {
      assert.equal(e.message, `initramfs: ${dir}/TRAILER!!!: a top-level entry named TRAILER!!! ends a newc archive (the kernel would unpack nothing after it): rename it or exclude it`);
      return true;
    });
  }
  assert.ok(!fs.existsSync(out));
  // Excluded, the tree is the one without it.
  assert.equal((await planInitramfs(dir, { epoch: EPOCH, exclude: ["TRAILER!!!"] })).hash, ok.hash);
  // The encoder itself refuses it too (a record list that did not come from a walk).
  const rec: NewcRecord = { name: "TRAILER!!!", mode: 0o100644, uid: 0, gid: 0, nlink: 1, mtime: 0, ino: 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 1, data: Buffer.from("x") };
  await assert.rejects(async () => { for await (const _ of encodeNewc([rec])) void _; }, /newc: TRAILER!!!: a top-level entry named TRAILER!!! ends a newc archive/);
  // A folder of that name too, even empty.
  fs.rmSync(path.join(dir, "TRAILER!!!"));
  fs.mkdirSync(path.join(dir, "TRAILER!!!"));
  assert.match(await treeProblem(dir) ?? "", /TRAILER!!!: a top-level entry named TRAILER!!! ends a newc archive .*: rename it or leave it out$/);
});

test("a file of 4 GiB or more is refused before anything is encoded; treeProblem says so from the names and sizes alone", async () => {
  const dir = fs.mkdtempSync(path.join(work, "huge-"));
  fs.mkdirSync(path.join(dir, "var"));
  const huge = path.join(dir, "var/disk.img");
  fs.closeSync(fs.openSync(huge, "w"));
  fs.truncateSync(huge, 2 ** 32); // sparse: nothing is written
  const t0 = Date.now();
  await assert.rejects(planInitramfs(dir, { epoch: EPOCH }), (e: Error) => {
    assert.equal(e.message, `initramfs: ${huge} is 4294967296 bytes, and an initramfs (newc) holds files up to 4294967295 bytes (4 GiB - 1): make it smaller or exclude it`);
    return true;
  });
  assert.equal(await treeProblem(dir, "leave it out of system/root"), `${huge} is 4294967296 bytes, and an initramfs (newc) holds files up to 4294967295 bytes (4 GiB - 1): make it smaller or leave it out of system/root`);
  assert.ok(Date.now() - t0 < 5000, "the file was read");
  fs.truncateSync(huge, 2 ** 32 - 1);
  assert.equal(await treeProblem(dir), undefined);
  fs.rmSync(dir, { recursive: true });
});

test("names that are not UTF-8: the walk and the tree hash give the same one-line message", async () => {
  const dir = fs.mkdtempSync(path.join(work, "latin1-"));
  fs.mkdirSync(path.join(dir, "etc"));
  const bad = Buffer.concat([Buffer.from(path.join(dir, "etc") + "/caf"), Buffer.from([0xe9]), Buffer.from("-ü.conf")]);
  fs.writeFileSync(bad, "x");
  const msg = `the name "${dir}/etc/caf\\xe9-ü.conf" is not valid UTF-8 (an initramfs names files in UTF-8): rename it`;
  await assert.rejects(walk(dir), (e: Error) => e.message === `initramfs: ${msg}`);
  await assert.rejects(planInitramfs(dir), (e: Error) => e.message === `initramfs: ${msg}`);
  await assert.rejects(hashTree(dir), (e: Error) => e.message === msg);
  assert.equal(await treeProblem(dir), msg);
  fs.rmSync(dir, { recursive: true });
});

test("inspect refuses an empty file, a folder and a file over 2 GiB from a stat, without reading them", async () => {
  const empty = path.join(work, "empty.img");
  fs.writeFileSync(empty, "");
  await assert.rejects(inspectInitramfs(empty), new RegExp(`^Error: ${empty} is empty: pass an initramfs \\(a build or copy that did not finish leaves an empty file\\)$`));
  await assert.rejects(inspectInitramfs(work), new RegExp(`^Error: ${work} is a folder: pass an initramfs, a file`));
  const big = path.join(work, "big.img");
  fs.closeSync(fs.openSync(big, "w"));
  fs.truncateSync(big, 2 ** 31 + 1);
  const rss = process.memoryUsage().rss;
  await assert.rejects(inspectInitramfs(big), new RegExp(`^Error: ${big} is 2147483649 bytes, more than inspect reads \\(2 GiB\\)`));
  assert.ok(process.memoryUsage().rss - rss < 256 << 20, "the file was read into memory");
  assert.equal(await inspectProblem(path.join(work, "nothing.img")), `${path.join(work, "nothing.img")} does not exist: pass an initramfs or a UKI`);
  fs.rmSync(big);
});

test("inspect cuts a concatenation of plain, gzip and zstd members (zero padding between) and counts each one's entries", async () => {
  const tree = fs.mkdtempSync(path.join(work, "small-"));
  fs.mkdirSync(path.join(tree, "etc"));
  fs.writeFileSync(path.join(tree, "etc/hostname"), "ramroot\n");
  fs.writeFileSync(path.join(tree, "init"), "#!/bin/sh\n".repeat(1000), { mode: 0o755 });
  fs.symlinkSync("init", path.join(tree, "sbin-init"));
  const entries = (await walk(tree)).length;
  const parts: Buffer[] = [];
  const compressions: Compression[] = ["none", "gzip", "zstd", "none"];
  for (const compression of compressions) {
    const img = path.join(work, `single-${parts.length}.img`);
    await writeInitramfs(tree, img, { compression, epoch: EPOCH, splitBytes: Infinity });
    parts.push(fs.readFileSync(img), Buffer.alloc(parts.length + 1));
  }
  const image = path.join(work, "mixed.img");
  fs.writeFileSync(image, Buffer.concat(parts));
  const members = await inspectInitramfs(image);
  assert.deepEqual(members.map((m) => [m.compression, m.entries]), compressions.map((c) => [c, entries]));
  // Each member where it was put: after the members and zero padding before it.
  let at = 0;
  members.forEach((m, i) => {
    assert.deepEqual([m.offset, m.size], [at, parts[2 * i].length], `member ${i}`);
    at += parts[2 * i].length + parts[2 * i + 1].length;
  });

  // A plain archive cut before its trailer, and bytes that are no member at all.
  const cut = path.join(work, "cut.img");
  fs.writeFileSync(cut, parts[0].subarray(0, parts[0].length - 20));
  await assert.rejects(inspectInitramfs(cut), new RegExp(`^Error: initramfs: ${cut}: member at offset 0 does not end with TRAILER!!!$`));
  const junk = path.join(work, "junk.img");
  fs.writeFileSync(junk, Buffer.concat([parts[0], Buffer.from("junk")]));
  await assert.rejects(inspectInitramfs(junk), new RegExp(`^Error: initramfs: ${junk}: unknown data at offset ${parts[0].length} \\(not gzip, zstd or newc\\)$`));
});

test("a thread's compressor, kept for all its segments, gives each the bytes a new one gives, also after a segment that failed midway", async () => {
  // Text (compressible, different at each level) in two folders; a file of 3 MiB, so that a
  // segment that fails after it has already given the compressor several 1 MiB chunks.
  const tree = fs.mkdtempSync(path.join(work, "reuse-"));
  for (const dir of ["a", "b"]) {
    fs.mkdirSync(path.join(tree, dir));
    for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(tree, dir, `f${i}`), Array.from({ length: 20000 }, (_, n) => `${dir} ${i} line ${n} ${(n * 7919 + i) % 10007}\n`).join(""));
  }
  fs.writeFileSync(path.join(tree, "big"), Array.from({ length: 150000 }, (_, n) => `big line ${n} ${(n * 104729) % 65521}\n`).join(""));
  // And a small folder after the rest, as var/ is in a real tree: a few entries, under 1 KiB.
  fs.mkdirSync(path.join(tree, "c/empty"), { recursive: true });
  fs.mkdirSync(path.join(tree, "c/lib"));
  fs.symlinkSync("../run", path.join(tree, "c/run"));
  const records = reproducible(await walk(tree), { epoch: EPOCH });
  const part = (p: string) => records.filter((r) => r.name === p || r.name.startsWith(`${p}/`));
  const [a, b, big, c] = [part("a"), part("b"), part("big"), part("c")];
  assert.ok(big[0].size > 3 << 20, `big is ${big[0].size} bytes`);
  // Fails after big's content: the source of the next record is gone.
  const failing = [...big, { ...a[1], name: "gone", source: path.join(tree, "gone") }];
  const bytes = (f: string) => fs.readFileSync(f);
  let n = 0;
  const out = () => path.join(work, `reuse-${n++}.seg`);
  for (const [compression, level] of [["zstd", 3], ["zstd", 12], ["gzip", 6]] as const) {
    // New compressors: the first job of a new worker, each segment on a pool of its own.
    const fresh: Buffer[] = [];
    for (const recs of [a, b, big, c]) {
      const pool = new SegmentPool(1);
      const f = out();
      try {
        await pool.run({ compression, level, records: recs, out: f });
      } finally {
        await pool.close();
      }
      fresh.push(bytes(f));
    }
    // This thread's compressor: a, b, a again, big then the small one, then a failure midway,
    // then b, a and the small one.
    const seen: Buffer[] = [];
    for (const recs of [a, b, a, big, c]) {
      const f = out();
      await runSegment({ compression, level, records: recs, out: f });
      seen.push(bytes(f));
    }
    await assert.rejects(runSegment({ compression, level, records: failing, out: out() }), /cannot read .*gone/);
    for (const recs of [b, a, c]) {
      const f = out();
      await runSegment({ compression, level, records: recs, out: f });
      seen.push(bytes(f));
    }
    const want = [fresh[0], fresh[1], fresh[0], fresh[2], fresh[3], fresh[1], fresh[0], fresh[3]];
    seen.forEach((got, i) => assert.ok(got.equals(want[i]), `${compression} -${level}: segment ${i} (${got.length} bytes) differs from a new compressor's (${want[i].length})`));
    // And they are whole streams of the level asked for: a differs from its bytes at another level.
    assert.ok(fresh[0].length > 1000);
  }
  // Levels differ in their bytes (the level is kept, not reset to the default).
  const at = async (level: number) => { const f = out(); await runSegment({ compression: "zstd", level, records: a, out: f }); return bytes(f); };
  const [l1, l19, l1again] = [await at(1), await at(19), await at(1)];
  assert.ok(!l1.equals(l19) && l1.equals(l1again));
  fs.rmSync(tree, { recursive: true });
});

test("build makes the segments a plan knew by their fingerprints (kept no records of) when the store lacks them: the same files as a plan that read them", async () => {
  const tree = fs.mkdtempSync(path.join(work, "known-"));
  for (const dir of ["etc", "usr/lib", "usr/share", "var"]) {
    fs.mkdirSync(path.join(tree, dir), { recursive: true });
    for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(tree, dir, `f${i}`), `${dir} ${i}\n`.repeat(2000 * (i + 1)));
  }
  fs.symlinkSync("usr/lib", path.join(tree, "lib"));
  // A stamp younger than 2 s is not trusted: the files must look settled to the fingerprints.
  const old = new Date(Date.now() - 60_000);
  execFileSync("touch", ["-h", "-d", `@${Math.floor(old.getTime() / 1000)}`, ...execFileSync("find", [tree], { encoding: "utf8" }).trim().split("\n")]);
  await new Promise((r) => setTimeout(r, 2100));
  const cacheDir = path.join(work, "known-cache");
  const o = { epoch: EPOCH, cacheDir, splitBytes: 20_000 };
  const first = await planInitramfs(tree, o);
  assert.equal(first.read, first.segments.length);
  assert.ok(first.segments.length >= 4, `${first.segments.length} segments`);
  const storeA = fs.mkdtempSync(path.join(work, "store-a-"));
  const a = await buildInitramfs(first, new Store(storeA));
  const want = a.files.map((f) => fs.readFileSync(f));
  // Every segment known: this plan keeps no records. The store has lost all segments but one.
  const again = await planInitramfs(tree, o);
  assert.equal(again.read, 0);
  assert.equal(again.hash, first.hash);
  a.files.forEach((f, i) => i !== 1 && fs.rmSync(f));
  const b = await buildInitramfs(again, new Store(storeA));
  assert.equal(b.built.length, again.segments.length - 1);
  b.files.forEach((f, i) => assert.ok(fs.readFileSync(f).equals(want[i]), `segment ${i}`));
  fs.rmSync(tree, { recursive: true });
});
