// Deltas between two files, for sending a new boot image to a host that holds an older one.
//
// Both files are cut into content-defined chunks (a gear rolling hash with FastCDC's normalized
// chunking: min 16 KiB, average ~64 KiB, max 256 KiB), each named by its sha256 and length. The
// cut points depend only on the bytes just before them, so an insertion, deletion or change moves
// the boundaries near it only: the chunks after it are found again in the old file, shifted.
// The delta of a new file against a base is then a list of ranges, in the new file's order, each
// either copied out of the base or sent as literal bytes of the new file; copies that are
// contiguous in the base are merged into one.
//
// Files are read in 2 MiB blocks (bounded memory); a chunk list is ~1 entry per 64 KiB. Chunk
// lists can be cached in a folder by the file's sha256 (<sha256>.json, written temp-then-rename).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "../store";

export interface ChunkParams { min: number; avg: number; max: number }
export const DEFAULT_CHUNK_PARAMS: ChunkParams = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

export interface ChunkList {
  size: number;
  /** Chunk lengths, in file order; they sum to size. */
  lengths: number[];
  /** sha256 of each chunk (32 bytes), parallel to lengths. */
  hashes: Buffer[];
  /** sha256 (hex) of the whole file, when it was computed (wholeSha256) or given. */
  sha256?: string;
  params: ChunkParams;
}

/** The 256 gear values: fixed forever (a change would need a new cache version). */
const GEAR = (() => {
  const g = new Int32Array(256);
  const bytes = Buffer.concat(Array.from({ length: 32 }, (_, i) => createHash("sha256").update(`ramroot gear ${i}`).digest()));
  for (let i = 0; i < 256; i++) g[i] = bytes.readInt32LE(i * 4);
  return g;
})();

/** The top `bits` bits of a 32-bit word (the gear hash's high bits depend on the last 32 bytes). */
const topBits = (bits: number) => (~0 << (32 - bits)) | 0;

const sameParams = (a: ChunkParams, b: ChunkParams) => a.min === b.min && a.avg === b.avg && a.max === b.max;

function checkParams(p: ChunkParams) {
  const ok = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  if (!ok(p.avg) || !(p.min >= 64 && p.min < p.avg && p.avg < p.max) || p.max > 64 << 20) {
    throw new Error(`chunk parameters must satisfy 64 <= min < avg < max <= 64 MiB, avg a power of two: ${JSON.stringify(p)}`);
  }
}

/**
 * Length of the chunk that starts at `start` in buf[start, end): the first position past min
 * where the gear hash matches the (stricter before avg, looser after) mask, else max, else what
 * is left. The caller passes at least max bytes unless it is the end of the file.
 */
function cutPoint(buf: Uint8Array, start: number, end: number, min: number, avg: number, max: number, maskS: number, maskL: number): number {
  const n = end - start;
  if (n <= min) return n;
  const limit = n < max ? end : start + max;
  const normal = Math.min(start + avg, limit);
  const g = GEAR;
  let h = 0;
  let i = start + min;
  for (; i < normal; i++) {
    h = ((h << 1) + g[buf[i]]) | 0;
    if ((h & maskS) === 0) return i + 1 - start;
  }
  for (; i < limit; i++) {
    h = ((h << 1) + g[buf[i]]) | 0;
    if ((h & maskL) === 0) return i + 1 - start;
  }
  return limit - start;
}

const BLOCK = 2 << 20;

/**
 * Cuts a file into content-defined chunks and hashes each one. Streams the file (one buffer of
 * 2 MiB + max). With wholeSha256, also the sha256 of the whole file in the same pass.
 *
 * With `like` (the chunk list of another file, e.g. the image the new one replaces), the result
 * is the same, only faster where the files share content: a chunker that starts at the same
 * bytes cuts at the same place, so after a chunk that equals chunk i of `like`, the next chunk
 * is tried as chunk i+1 (same length, same sha256): when it matches, that is where the gear
 * hash would have cut, and no byte of it needs the rolling hash. Where it does not match, the
 * gear hash runs until a chunk is found in `like` again. With `likeFile` (the file `like` was made
 * from), a tried chunk is compared with its bytes there instead of being hashed, and takes its
 * hash from `like` (a likeFile that is not what `like` says yields a list that does not match
 * this file: the deploy's sha256 check on the host catches that).
 */
export async function chunkFile(file: string, opts: { params?: ChunkParams; wholeSha256?: boolean; like?: ChunkList; likeFile?: string } = {}): Promise<ChunkList> {
  const params = opts.params ?? DEFAULT_CHUNK_PARAMS;
  checkParams(params);
  const { min, avg, max } = params;
  const like = opts.like && sameParams(opts.like.params, params) ? opts.like : undefined;
  const bits = Math.log2(avg);
  const maskS = topBits(bits + 2), maskL = topBits(bits - 2);
  const whole = opts.wholeSha256 ? createHash("sha256") : undefined;
  const lengths: number[] = [];
  const hashes: Buffer[] = [];
  // like's chunks by sha256 + length, to find where the files are in step again.
  const index = new Map<string, number>();
  if (like) for (let i = like.lengths.length - 1; i >= 0; i--) index.set(like.hashes[i].toString("latin1") + like.lengths[i], i);
  let next = like ? 0 : -1; // the chunk of `like` expected next, -1: none
  // likeFile, read through a window, and where each of like's chunks starts in it.
  let base: { fh: fs.promises.FileHandle; starts: number[]; win: Buffer; winStart: number; winLen: number } | undefined;
  if (like && opts.likeFile) {
    const fh = await fs.promises.open(opts.likeFile, "r");
    if ((await fh.stat()).size !== like.size) await fh.close();
    else {
      const starts: number[] = [];
      let off = 0;
      for (const n of like.lengths) { starts.push(off); off += n; }
      base = { fh, starts, win: Buffer.allocUnsafe(BLOCK + max), winStart: 0, winLen: 0 };
    }
  }
  const fh = await fs.promises.open(file, "r");
  try {
    const buf = Buffer.allocUnsafe(BLOCK + max);
    let len = 0;
    let size = 0;
    let eof = false;
    for (;;) {
      // Fill the buffer (or reach the end of the file).
      while (!eof && len < buf.length) {
        const { bytesRead } = await fh.read(buf, len, buf.length - len, null);
        if (bytesRead === 0) eof = true;
        len += bytesRead;
      }
      let pos = 0;
      while (len - pos >= max || (eof && pos < len)) {
        let n = -1;
        let hash: Buffer | undefined;
        if (like && next >= 0 && next < like.lengths.length) {
          const want = like.lengths[next];
          // like's last chunk ends at its end of file, not at a cut: it only predicts a chunk
          // that also ends this file.
          const last = next === like.lengths.length - 1;
          if (want <= len - pos && (!last || (eof && len - pos === want))) {
            if (base) {
              const at = base.starts[next];
              if (at < base.winStart || at + want > base.winStart + base.winLen) {
                base.winStart = at;
                base.winLen = (await base.fh.read(base.win, 0, base.win.length, at)).bytesRead;
              }
              const o = at - base.winStart;
              if (want <= base.winLen - o && buf.subarray(pos, pos + want).equals(base.win.subarray(o, o + want))) { n = want; hash = like.hashes[next]; next++; }
            } else {
              const h = createHash("sha256").update(buf.subarray(pos, pos + want)).digest();
              if (h.equals(like.hashes[next])) { n = want; hash = h; next++; }
            }
          }
        }
        if (n < 0) {
          n = cutPoint(buf, pos, len, min, avg, max, maskS, maskL);
          hash = createHash("sha256").update(buf.subarray(pos, pos + n)).digest();
          if (like) {
            const i = index.get(hash.toString("latin1") + n);
            next = i === undefined ? -1 : i + 1;
          }
        }
        whole?.update(buf.subarray(pos, pos + n));
        hashes.push(hash!);
        lengths.push(n);
        pos += n;
      }
      size += pos;
      buf.copyWithin(0, pos, len);
      len -= pos;
      if (eof && len === 0) break;
    }
    return { size, lengths, hashes, params, sha256: whole?.digest("hex") };
  } finally {
    await fh.close();
    await base?.fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Cache: <dir>/<sha256>.json

interface CacheFile { v: 1; params: [number, number, number]; size: number; sha256: string; chunks: Array<[number, string]> }


/** A cached chunk list of the file with this sha256 and size, or undefined (absent, other parameters, unreadable). */
export async function readChunkCache(dir: string, sha256: string, size: number, params = DEFAULT_CHUNK_PARAMS): Promise<ChunkList | undefined> {
  let c: CacheFile;
  try {
    c = JSON.parse(await fs.promises.readFile(path.join(dir, `${sha256}.json`), "utf8"));
  } catch {
    return undefined;
  }
  if (c?.v !== 1 || c.sha256 !== sha256 || c.size !== size || !Array.isArray(c.params) || !sameParams(params, { min: c.params[0], avg: c.params[1], max: c.params[2] }) || !Array.isArray(c.chunks)) return undefined;
  const lengths: number[] = [];
  const hashes: Buffer[] = [];
  let sum = 0;
  for (const e of c.chunks) {
    if (!Array.isArray(e) || !Number.isInteger(e[0]) || e[0] <= 0 || typeof e[1] !== "string" || !/^[0-9a-f]{64}$/.test(e[1])) return undefined;
    lengths.push(e[0]);
    hashes.push(Buffer.from(e[1], "hex"));
    sum += e[0];
  }
  if (sum !== size) return undefined;
  return { size, lengths, hashes, params, sha256 };
}

/** Writes a chunk list to <dir>/<sha256>.json (temp file, then rename: a name that exists is complete). */
export async function writeChunkCache(dir: string, sha256: string, list: ChunkList): Promise<void> {
  const c: CacheFile = {
    v: 1, params: [list.params.min, list.params.avg, list.params.max], size: list.size, sha256,
    chunks: list.lengths.map((n, i) => [n, list.hashes[i].toString("hex")]),
  };
  await writeFileAtomic(path.join(dir, `${sha256}.json`), JSON.stringify(c));
}

/**
 * The chunk list of `file`: from the cache when `sha256` is given and cached, else computed
 * (and then written to the cache). When `sha256` is not given, or `verify` is set, the whole
 * file's sha256 is computed in the same pass; with verify, a file whose sha256 is not the given
 * one is an error (nothing is cached).
 */
export async function chunkListOf(file: string, opts: { sha256?: string; cacheDir?: string; verify?: boolean; params?: ChunkParams } = {}): Promise<ChunkList & { cached: boolean }> {
  const params = opts.params ?? DEFAULT_CHUNK_PARAMS;
  if (opts.sha256 && opts.cacheDir) {
    const size = (await fs.promises.stat(file)).size;
    const hit = await readChunkCache(opts.cacheDir, opts.sha256, size, params);
    if (hit) return { ...hit, cached: true };
  }
  const list = await chunkFile(file, { params, wholeSha256: !opts.sha256 || opts.verify });
  if (opts.sha256 && list.sha256 && list.sha256 !== opts.sha256) throw new Error(`${file} has sha256 ${list.sha256}, expected ${opts.sha256}`);
  list.sha256 ??= opts.sha256;
  if (opts.cacheDir) await writeChunkCache(opts.cacheDir, list.sha256!, list);
  return { ...list, cached: false };
}

// ---------------------------------------------------------------------------------------------
// Delta

/** A range of the new file: copied from the base at `src`, or literal bytes of the new file (src undefined). */
export interface DeltaOp { dst: number; len: number; src?: number }

export interface Delta {
  size: number;
  /** In the new file's order; they tile [0, size). */
  ops: DeltaOp[];
  /** Bytes copied from the base, bytes to send. */
  copied: number;
  literal: number;
}

/**
 * The delta that builds `next` from `base`: each chunk of next is copied from a chunk of base
 * with the same sha256 and length (preferring the one that continues the previous copy), or
 * sent. Adjacent copies contiguous in the base, and adjacent literals, are merged.
 */
export function computeDelta(base: ChunkList, next: ChunkList): Delta {
  const where = new Map<string, number[]>();
  let off = 0;
  for (let i = 0; i < base.lengths.length; i++) {
    const key = base.hashes[i].toString("latin1") + base.lengths[i];
    const list = where.get(key);
    if (list) list.push(off); else where.set(key, [off]);
    off += base.lengths[i];
  }
  const ops: DeltaOp[] = [];
  let dst = 0, copied = 0, literal = 0;
  for (let i = 0; i < next.lengths.length; i++) {
    const len = next.lengths[i];
    const found = where.get(next.hashes[i].toString("latin1") + len);
    const last = ops[ops.length - 1];
    if (found) {
      const want = last?.src !== undefined ? last.src + last.len : -1;
      const src = found.includes(want) ? want : found[0];
      if (last?.src !== undefined && last.src + last.len === src) last.len += len;
      else ops.push({ dst, len, src });
      copied += len;
    } else {
      if (last && last.src === undefined) last.len += len;
      else ops.push({ dst, len });
      literal += len;
    }
    dst += len;
  }
  return { size: dst, ops, copied, literal };
}

/** Builds the new file locally from the base and the new file's literal ranges (what a host does; for tests and checks). */
export async function applyDelta(baseFile: string, newFile: string, delta: Delta, outFile: string): Promise<void> {
  const [b, n, o] = await Promise.all([fs.promises.open(baseFile, "r"), fs.promises.open(newFile, "r"), fs.promises.open(outFile, "w")]);
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (const op of delta.ops) {
      for (let done = 0; done < op.len;) {
        const want = Math.min(buf.length, op.len - done);
        const from = op.src !== undefined ? b : n;
        const { bytesRead } = await from.read(buf, 0, want, (op.src ?? op.dst) + done);
        if (bytesRead !== want) throw new Error(`applyDelta: short read at ${(op.src ?? op.dst) + done} of ${op.src !== undefined ? baseFile : newFile}`);
        await o.write(buf, 0, want, op.dst + done);
        done += want;
      }
    }
    await o.truncate(delta.size);
  } finally {
    await Promise.all([b.close(), n.close(), o.close()]);
  }
}
