// src/deploy/delta.ts on synthetic files: the chunk lists, the deltas, and the files rebuilt from them.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  applyDelta, chunkFile, chunkListOf, computeDelta, DEFAULT_CHUNK_PARAMS, readChunkCache, writeChunkCache, type ChunkList,
} from "../src/deploy/delta";

const KiB = 1024, MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** Deterministic pseudo-random bytes (xorshift32), so a failure reproduces. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

function scratch(t: { after: (fn: () => void) => void }): (name: string, data: Buffer) => string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-delta-test-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return (name, data) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, data);
    return f;
  };
}

function checkList(list: ChunkList, data: Buffer) {
  assert.equal(list.size, data.length);
  assert.equal(list.lengths.reduce((s, n) => s + n, 0), data.length);
  let off = 0;
  list.lengths.forEach((n, i) => {
    assert.ok(n > 0 && n <= DEFAULT_CHUNK_PARAMS.max, `chunk ${i}: ${n} bytes`);
    if (i < list.lengths.length - 1) assert.ok(n >= DEFAULT_CHUNK_PARAMS.min, `chunk ${i} (not the last): ${n} bytes`);
    assert.ok(list.hashes[i].equals(createHash("sha256").update(data.subarray(off, off + n)).digest()), `chunk ${i} hash`);
    off += n;
  });
}

const sameList = (a: ChunkList, b: ChunkList) =>
  a.lengths.length === b.lengths.length && a.lengths.every((n, i) => n === b.lengths[i] && a.hashes[i].equals(b.hashes[i]));

/**
 * Chunks base and next, checks that the guided chunking of next (like: base) gives the same list
 * as the plain one, builds next from base with the delta, and returns the delta.
 */
async function roundTrip(put: (name: string, data: Buffer) => string, base: Buffer, next: Buffer) {
  const fb = put("base", base), fn = put("next", next);
  const lb = await chunkFile(fb, { wholeSha256: true });
  assert.equal(lb.sha256, sha(base));
  checkList(lb, base);
  const plain = await chunkFile(fn);
  const guided = await chunkFile(fn, { like: lb });
  checkList(guided, next);
  assert.ok(sameList(plain, guided), "guided chunking gives the same chunks as plain chunking");
  assert.ok(sameList(plain, await chunkFile(fn, { like: lb, likeFile: fb })), "guided by the base's bytes: the same chunks too");
  const delta = computeDelta(lb, guided);
  assert.equal(delta.size, next.length);
  assert.equal(delta.copied + delta.literal, next.length);
  // The ops tile the new file in order; no two neighbours could have been merged.
  let dst = 0;
  delta.ops.forEach((op, i) => {
    assert.equal(op.dst, dst);
    assert.ok(op.len > 0);
    dst += op.len;
    const prev = delta.ops[i - 1];
    if (prev) assert.ok(!(prev.src === undefined && op.src === undefined) && !(prev.src !== undefined && op.src !== undefined && prev.src + prev.len === op.src), `ops ${i - 1} and ${i} could be one`);
  });
  assert.equal(dst, next.length);
  const out = put("out", Buffer.alloc(0));
  await applyDelta(fb, fn, delta, out);
  assert.equal(sha(fs.readFileSync(out)), sha(next), "rebuilt from the delta");
  return delta;
}

test("chunks: within min..max, cover the file, hashes right; the same bytes cut the same way at any offset", async (t) => {
  const put = scratch(t);
  const data = bytes(6 * MiB + 12345, 1);
  const list = await chunkFile(put("a", data), { wholeSha256: true });
  checkList(list, data);
  assert.equal(list.sha256, sha(data));
  const avg = data.length / list.lengths.length;
  assert.ok(avg > 32 * KiB && avg < 128 * KiB, `average chunk ${avg.toFixed(0)} bytes`);
  // Content-defined: after 1000 bytes put in front, the cuts come back and the chunks repeat.
  const shifted = await chunkFile(put("b", Buffer.concat([bytes(1000, 2), data])));
  const known = new Set(list.hashes.map((h) => h.toString("hex")));
  const again = shifted.hashes.filter((h) => known.has(h.toString("hex"))).length;
  assert.ok(again >= list.lengths.length - 2, `${again} of ${list.lengths.length} chunks found again after a shift`);
});

test("delta: identical files are one copy, nothing sent", async (t) => {
  const put = scratch(t);
  const data = bytes(3 * MiB, 3);
  const d = await roundTrip(put, data, data);
  assert.deepEqual(d.ops, [{ dst: 0, len: data.length, src: 0 }]);
  assert.equal(d.literal, 0);
});

test("delta: a change in the middle sends about the changed chunks, the rest is copied in few ranges", async (t) => {
  const put = scratch(t);
  const base = bytes(8 * MiB, 4);
  const next = Buffer.from(base);
  bytes(200 * KiB, 5).copy(next, 3 * MiB);
  const d = await roundTrip(put, base, next);
  assert.ok(d.literal >= 200 * KiB && d.literal < 200 * KiB + 2 * DEFAULT_CHUNK_PARAMS.max, `${d.literal} bytes sent`);
  assert.ok(d.ops.length <= 3, `${d.ops.length} ranges`);
});

test("delta: insertions, deletions and shifted content are found again", async (t) => {
  const put = scratch(t);
  const base = bytes(8 * MiB, 6);
  // Insert 5000 bytes at 1 MiB, delete 70000 bytes at 4 MiB, move a 1 MiB block to the end.
  const next = Buffer.concat([
    base.subarray(0, MiB), bytes(5000, 7), base.subarray(MiB, 4 * MiB), base.subarray(4 * MiB + 70000, 6 * MiB),
    base.subarray(7 * MiB), base.subarray(6 * MiB, 7 * MiB),
  ]);
  const d = await roundTrip(put, base, next);
  assert.ok(d.literal < 6 * DEFAULT_CHUNK_PARAMS.max, `${d.literal} bytes sent of ${next.length}`);
  assert.ok(d.copied > next.length - 6 * DEFAULT_CHUNK_PARAMS.max);
});

test("delta: a totally different file is sent whole; a base made of the same bytes repeated is used", async (t) => {
  const put = scratch(t);
  const d = await roundTrip(put, bytes(2 * MiB, 8), bytes(2 * MiB + 3, 9));
  assert.equal(d.copied, 0);
  assert.equal(d.ops.length, 1);
  // Runs of zeros: every max-size chunk is the same; the copies still rebuild the file.
  const zeros = Buffer.alloc(3 * MiB);
  const z = await roundTrip(put, zeros, Buffer.concat([zeros.subarray(0, MiB), bytes(100, 10), zeros.subarray(0, 2 * MiB)]));
  assert.ok(z.literal < 2 * DEFAULT_CHUNK_PARAMS.max);
});

test("delta: empty files and files smaller than a chunk", async (t) => {
  const put = scratch(t);
  const empty = Buffer.alloc(0);
  const small = bytes(1000, 11);
  const e = await roundTrip(put, empty, empty);
  assert.deepEqual(e.ops, []);
  assert.deepEqual(await chunkFile(put("e", empty)).then((l) => l.lengths), []);
  assert.equal((await roundTrip(put, empty, small)).literal, 1000);
  assert.equal((await roundTrip(put, small, empty)).ops.length, 0);
  assert.deepEqual((await roundTrip(put, small, small)).ops, [{ dst: 0, len: 1000, src: 0 }]);
  const smaller = small.subarray(0, 999);
  assert.equal((await roundTrip(put, small, smaller)).literal, 999, "a chunk is matched whole or not at all");
  // A base that is a prefix of the new file: its last chunk ends at its end, not at a cut.
  const big = bytes(MiB, 12);
  const grown = await roundTrip(put, big.subarray(0, 300 * KiB), big);
  assert.ok(grown.copied > 0);
});

test("chunk cache: written temp-then-rename, read back the same; a stale or foreign entry is ignored", async (t) => {
  const put = scratch(t);
  const data = bytes(2 * MiB, 13);
  const file = put("a", data);
  const dir = path.join(path.dirname(file), "cache");
  const h = sha(data);
  const first = await chunkListOf(file, { cacheDir: dir });
  assert.equal(first.cached, false);
  assert.equal(first.sha256, h);
  assert.deepEqual(fs.readdirSync(dir), [`${h}.json`], "no temporaries left");
  const second = await chunkListOf(file, { sha256: h, cacheDir: dir });
  assert.equal(second.cached, true);
  assert.ok(sameList(first, second));
  // Another size than the file's: not used.
  assert.equal(await readChunkCache(dir, h, data.length + 1), undefined);
  // Other chunk parameters: not used.
  assert.equal(await readChunkCache(dir, h, data.length, { min: 8 * KiB, avg: 32 * KiB, max: 128 * KiB }), undefined);
  // Damaged: not used, and rewritten by the next chunkListOf.
  fs.writeFileSync(path.join(dir, `${h}.json`), "{\"v\":1,");
  assert.equal(await readChunkCache(dir, h, data.length), undefined);
  assert.equal((await chunkListOf(file, { sha256: h, cacheDir: dir })).cached, false);
  assert.equal((await chunkListOf(file, { sha256: h, cacheDir: dir })).cached, true);
  // A file that is not what its sha256 says is refused (with verify) and not cached under it.
  const other = "0".repeat(64);
  await assert.rejects(chunkListOf(file, { sha256: other, cacheDir: dir, verify: true }), /has sha256 [0-9a-f]{64}, expected 0{64}/);
  assert.equal(await readChunkCache(dir, other, data.length), undefined);
  await writeChunkCache(dir, other, first);
  assert.ok(await readChunkCache(dir, other, data.length));
});
