// src/image/newc.ts in memory: random archives encoded and read back field by field and byte by byte,
// in any split of the bytes; the reader's refusals; and the archive's length it reports.
// test/newc-cpio.test.ts has GNU cpio read the same kind of archives from real trees.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { encodedSize, encodeNewc, NewcReader, packRecords, TRAILER, unpackRecords, type NewcEntry, type NewcRecord } from "../../src/image/newc";
import { Random, randomName, randomTarget } from "./random-trees";

const S_IFMT = 0o170000;
const TYPES = { reg: 0o100000, dir: 0o040000, lnk: 0o120000, chr: 0o020000, blk: 0o060000, fifo: 0o010000, sock: 0o140000 };
const u32 = (r: Random) => r.pick([0, 1, 0xffffffff, r.u32(), r.int(70000)]);

/**
 * Random records as a walk could give them, and beyond: every file type, all 12 permission
 * bits, any 32-bit owner, times, inode and device numbers, empty and padding-edge contents,
 * hard links (later names of an inode with size 0, as `reproducible` writes them), symlinks,
 * and some contents streamed from files in `dir` instead of held inline.
 */
function randomRecords(r: Random, dir: string): NewcRecord[] {
  const out: NewcRecord[] = [];
  const dirs = ["."];
  const base = (name: string, type: number): NewcRecord => ({
    name, mode: type | r.int(0o10000), uid: u32(r), gid: u32(r), nlink: 1 + r.int(3), mtime: u32(r), ino: u32(r),
    devMajor: u32(r), devMinor: u32(r), rdevMajor: 0, rdevMinor: 0, size: 0,
  });
  out.push(base(".", TYPES.dir));
  const n = 1 + r.int(40);
  for (let i = 0; i < n; i++) {
    const parent = r.pick(dirs);
    const name = parent === "." ? randomName(r) : `${parent}/${randomName(r)}`;
    if (out.some((x) => x.name === name)) continue;
    const kind = r.pick(["reg", "reg", "reg", "dir", "lnk", "chr", "blk", "fifo", "sock", "link"] as const);
    if (kind === "link") {
      // Another name of an earlier regular file: its ino, no content.
      const first = out.filter((x) => (x.mode & S_IFMT) === TYPES.reg).pop();
      if (first) out.push({ ...base(name, TYPES.reg), mode: first.mode, ino: first.ino, nlink: first.nlink, size: 0 });
      continue;
    }
    const rec = base(name, TYPES[kind]);
    if (kind === "dir") dirs.push(name);
    if (kind === "chr" || kind === "blk") [rec.rdevMajor, rec.rdevMinor] = [u32(r), u32(r)];
    if (kind === "lnk") {
      rec.data = Buffer.from(randomTarget(r));
      rec.size = rec.data.length;
    }
    if (kind === "reg") {
      const data = r.bytes(r.size());
      rec.size = data.length;
      if (r.chance(0.5)) {
        rec.source = path.join(dir, `src-${i}`);
        fs.writeFileSync(rec.source, data);
      } else rec.data = data;
    }
    out.push(rec);
  }
  return out;
}

/** Encodes records, with the encoder's buffer of `chunk` bytes (reused) when given. */
async function encode(records: NewcRecord[], chunk?: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of encodeNewc(records, chunk ? { reuse: Buffer.alloc(chunk) } : {})) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** Reads an archive back, pushed in pieces of the sizes `split` gives. */
function read(bytes: Buffer, split: () => number): { entries: NewcEntry[]; reader: NewcReader } {
  const entries: NewcEntry[] = [];
  const reader = new NewcReader((e) => entries.push(e), { content: true });
  for (let at = 0; at < bytes.length; ) {
    const n = Math.max(1, split());
    reader.push(bytes.subarray(at, at + n));
    at += n;
  }
  return { entries, reader };
}

const contentOf = (rec: NewcRecord) => (rec.source !== undefined ? fs.readFileSync(rec.source) : Buffer.from(rec.data ?? []));

test("random archives read back as they were written, whatever the chunks on either side", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-newc-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const seeds = process.env.RAMROOT_SEED ? [Number(process.env.RAMROOT_SEED)] : Array.from({ length: 60 }, (_, i) => i + 1);
  for (const seed of seeds) {
    const r = new Random(seed);
    const records = randomRecords(r, dir);
    const bytes = await encode(records, r.pick([undefined, 1, 3, 7, 512, 4096]));
    const at = `seed ${seed} (RAMROOT_SEED=${seed} repeats it)`;
    // What encodedSize promises, record by record, and the trailer's 124 bytes.
    assert.equal(bytes.length, records.reduce((s, x) => s + encodedSize(x.name, x.size), 0) + encodedSize(TRAILER, 0), at);
    const split = r.pick([() => bytes.length, () => 1, () => 1 + r.int(7), () => 1 + r.int(5000)]);
    const { entries, reader } = read(Buffer.concat([bytes, r.bytes(r.int(300))]), split);
    assert.ok(reader.done, `${at}: the trailer was read`);
    assert.equal(reader.consumed, bytes.length, `${at}: consumed is the archive's length, not what followed it`);
    assert.equal(entries.length, records.length, at);
    records.forEach((rec, i) => {
      const e = entries[i];
      const { data, ...head } = e;
      assert.deepEqual(head, {
        name: rec.name, mode: rec.mode, uid: rec.uid, gid: rec.gid, nlink: rec.nlink, mtime: rec.mtime, ino: rec.ino, size: rec.size,
        devMajor: rec.devMajor, devMinor: rec.devMinor, rdevMajor: rec.rdevMajor, rdevMinor: rec.rdevMinor,
      }, `${at}: header of ${JSON.stringify(rec.name)}`);
      assert.ok(data!.equals(contentOf(rec)), `${at}: content of ${JSON.stringify(rec.name)}`);
    });
  }
});

test("packed records unpack field for field and encode to the same bytes; a source under the root is not stored", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-pack-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, "elsewhere"));
  for (let seed = 1; seed <= 40; seed++) {
    const r = new Random(seed);
    const records = randomRecords(r, path.join(dir, "elsewhere"));
    // Names whose source is root/name, as a walk gives them (the files exist: they are encoded).
    for (const rec of records.filter((x) => x.source !== undefined)) {
      const name = `root-${path.basename(rec.source!)}`;
      fs.copyFileSync(rec.source!, path.join(dir, name));
      records.push({ ...rec, name, source: `${dir}/${name}` });
    }
    const at = `seed ${seed}`;
    const packed = packRecords(records, dir);
    const back = [...unpackRecords(packed)];
    assert.equal(packed.count, records.length, at);
    // Every field, as a walk's record has it (an absent source or data is undefined).
    const norm = (x: NewcRecord) => ({ ...x, source: x.source, data: x.data && Buffer.from(x.data) });
    assert.deepEqual(back.map(norm), records.map(norm), at);
    const stored = records.reduce((n, x) => n + Buffer.byteLength(x.name) + (x.data?.length ?? 0) + (x.source && !x.name.startsWith("root-") ? Buffer.byteLength(x.source) : 0), 0);
    assert.equal(packed.bytes.length, stored, `${at}: bytes held`);
    assert.ok((await encode(back)).equals(await encode(records)), `${at}: encoded`);
  }
});

test("every split point of a small archive reads the same", async () => {
  const records: NewcRecord[] = [
    { name: ".", mode: 0o40755, uid: 0, gid: 0, nlink: 2, mtime: 1, ino: 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 0 },
    { name: "a\nb", mode: 0o100644, uid: 1, gid: 2, nlink: 1, mtime: 1, ino: 2, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 5, data: Buffer.from("hello") },
    { name: "l", mode: 0o120777, uid: 0, gid: 0, nlink: 1, mtime: 1, ino: 3, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 1, data: Buffer.from("a") },
  ];
  const bytes = await encode(records);
  const whole = read(bytes, () => bytes.length).entries;
  assert.deepEqual(whole.map((e) => e.name), [".", "a\nb", "l"]);
  for (let cut = 1; cut < bytes.length; cut++) {
    const entries: NewcEntry[] = [];
    const reader = new NewcReader((e) => entries.push(e), { content: true });
    reader.push(bytes.subarray(0, cut));
    reader.push(bytes.subarray(cut));
    assert.ok(reader.done && reader.consumed === bytes.length, `cut at ${cut}`);
    assert.deepEqual(entries, whole, `cut at ${cut}`);
  }
});

test("without content, the reader still reports every header", async () => {
  const rec: NewcRecord = { name: "f", mode: 0o100600, uid: 0, gid: 0, nlink: 1, mtime: 0, ino: 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 3, data: Buffer.from("abc") };
  const names: Array<[string, Buffer | undefined]> = [];
  const reader = new NewcReader((e) => names.push([e.name, e.data]));
  reader.push(await encode([rec, { ...rec, name: "g", ino: 2 }]));
  assert.deepEqual(names, [["f", undefined], ["g", undefined]]);
  assert.ok(reader.done);
});

test("the reader refuses what is not newc, naming the offset", async () => {
  const rec: NewcRecord = { name: "f", mode: 0o100644, uid: 0, gid: 0, nlink: 1, mtime: 0, ino: 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 2, data: Buffer.from("hi") };
  const good = await encode([rec, { ...rec, name: "g" }]);
  const second = encodedSize("f", 2);
  const broken = (at: number, text: string) => {
    const b = Buffer.from(good);
    b.write(text, at, "latin1");
    return b;
  };
  const reading = (b: Buffer) => () => new NewcReader(() => {}).push(b);
  assert.throws(reading(broken(second, "070707")), new RegExp(`^Error: newc: bad magic "070707" at offset ${second}$`));
  // The uid field of the second header ("0000000x" is not hex; parseInt would have read 0).
  assert.throws(reading(broken(second + 6 + 8 * 2, "0000000x")), new RegExp(`newc: header field 2 at offset ${second} is "0000000x", not 8 hex digits`));
  // A name size that cuts the name before its NUL.
  assert.throws(reading(broken(6 + 8 * 11, "00000001")), /newc: the name of the member at offset 0 does not end with NUL/);
  assert.throws(reading(broken(6 + 8 * 11, "00000000")), /newc: the member at offset 0 has an empty name/);
  // A truncated archive is not done, and says how far it got.
  const r = new NewcReader(() => {});
  r.push(good.subarray(0, good.length - 1));
  assert.equal(r.done, false);
});
