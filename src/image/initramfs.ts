// An initramfs as a concatenation of whole compressed newc archives ("segments"). The kernel
// unpacks them in order (a later path replaces an earlier one); each must end at its own
// TRAILER!!!. Splitting by directory means a change in etc/ recompresses one small segment,
// and segments compress in parallel.
//
// plan:  walk the tree, split it, hash each segment's exact newc bytes -> keys (no compression;
//        this runs during `pulumi preview`). The image's name is known here.
// build: compress the segments whose key is not in the store. Uki concatenates them.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { finished } from "node:stream/promises";
import * as zlib from "node:zlib";
import { Cancelled, runSegment, SegmentPool, type Compression, type SegmentJob, type SegmentResult } from "./compress-worker";
import { NewcReader, packedSize, packRecords, TRAILER, unarchivable, type PackedRecords } from "./newc";
import type { WalkRecord } from "./walk";
import { removeTree, writeFileAtomic, type Store } from "../store";
import { DEFAULT_SPLIT_BYTES, segmentRecords, splitSegments } from "./segments";
import { excludeRecords, readListing, reproducible, walk } from "./walk";

export type { Compression } from "./compress-worker";

export interface InitramfsOptions {
  /** Default zstd (kernels since 5.9 have RD_ZSTD). */
  compression?: Compression;
  /** Default 3 for zstd, 6 for gzip. */
  level?: number;
  /** The mtime of every entry. Default SOURCE_DATE_EPOCH, else 0. */
  epoch?: number;
  /** Paths relative to the tree left out with their subtrees, e.g. ["boot"]. */
  exclude?: string[];
  /**
   * A directory holding more than this many newc bytes is split; see splitSegments. Default 32
   * MiB. Infinity: one archive, for tools that read only the first (GNU cpio stops at the first
   * TRAILER!!!).
   */
  splitBytes?: number;
  /**
   * Where plan remembers each segment's key by a fingerprint of its records and their files'
   * stamps (e.g. the store's cache/segments): a segment whose files are all unchanged (same
   * inode, size, mtime and ctime) is then not read again. Not part of the plan.
   */
  cacheDir?: string;
  /**
   * The tree's listing (src/image/walk.ts writeListing), taken when the tree was made: read instead
   * of walking the tree, if it belongs to this very folder. Only for trees nothing writes to
   * afterwards, as the store's rootfs trees (src/rootfs/rootfs.ts buildConfigured): a change made
   * after the listing would go unseen. Its stamps are what the fingerprints use, so a rootfs
   * that is a new copy of its packages tree keeps the fingerprints of the files it left alone.
   */
  listing?: string;
}

export interface SegmentPlan {
  name: string;
  key: string;
  entries: number;
  /** Uncompressed newc bytes, trailer included. */
  bytes: number;
  /** CRC-32 of those bytes: build checks it to notice a tree that changed after plan. */
  crc32: number;
}

export interface InitramfsPlan {
  tree: string;
  /** sha256 over the ordered segment keys: names the image before it is built. */
  hash: string;
  compression: Compression;
  level: number;
  segments: SegmentPlan[];
  /** How many segments plan had to read (the others were known by their files' stamps). */
  read: number;
  /** What build needs to walk and split the tree the same way again. */
  epoch: number;
  exclude: string[];
  splitBytes: number;
  listing?: string;
}

/** Bumped whenever the bytes of a segment would change for the same tree and options. */
const FORMAT = "ramroot-initramfs-2";
const EXT: Record<Compression, string> = { zstd: "zst", gzip: "gz", none: "raw" };

/**
 * The levels each compression takes. zstd stops at 19: 20-22 ("ultra") raise the window to up
 * to 128 MiB, which the booting kernel would have to allocate to unpack the image.
 */
export const LEVELS: Record<Compression, readonly [number, number] | undefined> = { zstd: [1, 19], gzip: [1, 9], none: undefined };

/**
 * Why `level` is not a level of `compression`, or undefined; callers put the option's name and
 * value before it. An undefined level is the default and always fits.
 */
export function levelProblem(compression: Compression, level: number | undefined): string | undefined {
  if (level === undefined || !(compression in LEVELS)) return undefined;
  const range = LEVELS[compression];
  if (!range) return `compression none takes no level: leave the level out, or compress with zstd (levels ${LEVELS.zstd!.join("-")}) or gzip (${LEVELS.gzip!.join("-")})`;
  if (!Number.isInteger(level) || level < range[0] || level > range[1]) return `not a ${compression} level: use a whole number from ${range[0]} to ${range[1]}`;
  return undefined;
}

function settle(tree: string, opts: InitramfsOptions) {
  const compression = opts.compression ?? "zstd";
  if (!(compression in EXT)) throw new Error(`initramfs: unknown compression ${compression}; use zstd, gzip or none`);
  const bad = levelProblem(compression, opts.level);
  if (bad) throw new Error(`initramfs: level ${opts.level}: ${bad}`);
  const level = compression === "none" ? 0 : opts.level ?? (compression === "zstd" ? 3 : 6);
  const envEpoch = process.env.SOURCE_DATE_EPOCH;
  const epoch = opts.epoch ?? (envEpoch ? Number(envEpoch) : 0);
  if (!Number.isInteger(epoch) || epoch < 0) throw new Error(`initramfs: epoch ${opts.epoch ?? envEpoch} is not a whole number of seconds; fix SOURCE_DATE_EPOCH or the epoch option`);
  return {
    tree: path.resolve(tree),
    compression,
    level,
    epoch,
    exclude: opts.exclude ?? [],
    splitBytes: opts.splitBytes ?? DEFAULT_SPLIT_BYTES,
    listing: opts.listing,
  };
}
type Settled = ReturnType<typeof settle>;

/**
 * Why the walk of `tree` cannot become a newc archive (a top-level TRAILER!!!, a file of 4 GiB
 * or more: see unarchivable), or undefined. Checked before anything is encoded.
 */
export function archiveProblem(tree: string, records: WalkRecord[], fix = "exclude it"): string | undefined {
  for (const r of records) {
    const bad = unarchivable(r.name, r.size, `${tree}/${r.name}`, fix);
    if (bad) return bad;
  }
  return undefined;
}

/**
 * Checks a tree that is to go into an initramfs (a system's skeleton, in preview) as a plan
 * would, reading only names and sizes: names that are not UTF-8, a top-level TRAILER!!!, files
 * of 4 GiB or more. Resolves the first problem as one line, or undefined.
 */
export async function treeProblem(tree: string, fix = "leave it out"): Promise<string | undefined> {
  let records: WalkRecord[];
  try {
    records = await walk(tree);
  } catch (e: any) {
    return String(e.message).replace(/^initramfs: /, "");
  }
  return archiveProblem(path.resolve(tree), records, fix);
}

/** A segment as the walk (or the listing) gives it: the records as objects. */
interface Segment {
  name: string;
  records: WalkRecord[];
}

/**
 * A segment's records as plan keeps them for build, and as jobs take them: packed (a plan of
 * the 433 MB bench tree has 8809 records; held as the walk's objects until the last job ended,
 * they were much of what made the writer's heap grow with the tree).
 */
interface Packed {
  name: string;
  packed: PackedRecords;
  /** newc bytes of the records (without the trailer), and bytes of file content. */
  bytes: number;
  content: number;
}

function pack(seg: Segment, tree: string): Packed {
  const packed = packRecords(seg.records, tree);
  return { name: seg.name, packed, ...packedSize(packed) };
}

/**
 * The tree's segments, and the ctime from which a file's stamp is not trusted. After a walk,
 * that is 2 s before it began: a file written in the same clock tick as the walk could be
 * written again without changing its stamp (git's "racily clean"). A listing is of a tree
 * that nothing writes to after it is listed, so every stamp in it is trusted.
 */
async function segmentsOf(s: Settled): Promise<{ segs: Segment[]; trustBefore: number }> {
  const listed = s.listing ? readListing(s.listing, s.tree) : undefined;
  const trustBefore = listed ? Infinity : Date.now() - 2000;
  const records = listed ? excludeRecords(listed, s.exclude) : await walk(s.tree, { exclude: s.exclude });
  const bad = archiveProblem(s.tree, records);
  if (bad) throw new Error(`initramfs: ${bad}`);
  const ranges = splitSegments(records, s.splitBytes);
  const segs = segmentRecords(records, ranges).map((recs, i) => ({ name: ranges[i].name, records: reproducible(recs, { epoch: s.epoch }) }));
  return { segs, trustBefore };
}

const keyPrefix = (s: { compression: Compression; level: number }) => `${FORMAT}\n${s.compression}:${s.level}\n`;

const imageHash = (keys: string[]) => createHash("sha256").update(`${FORMAT}\n${keys.join("\n")}\n`).digest("hex");
const segmentFile = (key: string, c: Compression) => `segments/${key}.cpio.${EXT[c]}`;

/**
 * A segment's fingerprint: its records as they will be encoded, plus the stamp of every file
 * whose content they carry. Undefined when a file changed too recently to be trusted (see
 * segmentsOf).
 */
function fingerprint(prefix: string, records: WalkRecord[], trustBefore: number): string | undefined {
  // Names and link targets as one string, numbers as doubles: no number is turned into text.
  const FIELDS = 13;
  const nums = new Float64Array(records.length * FIELDS);
  const names = new Array<string>(records.length);
  for (let i = 0, o = 0; i < records.length; i++) {
    const r = records[i];
    const st = r.source === undefined ? undefined : r.stamp;
    if (r.source !== undefined && (st === undefined || st[3] >= trustBefore)) return undefined;
    names[i] = r.data ? `${r.name}\0${Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength).toString("hex")}` : `${r.name}\0`;
    nums[o++] = r.mode;
    nums[o++] = r.uid;
    nums[o++] = r.gid;
    nums[o++] = r.nlink;
    nums[o++] = r.mtime;
    nums[o++] = r.ino;
    nums[o++] = r.rdevMajor;
    nums[o++] = r.rdevMinor;
    nums[o++] = r.size;
    for (let k = 0; k < 4; k++) nums[o++] = st ? st[k] : -1;
  }
  return createHash("sha256").update(`${prefix}fingerprint/3\n`).update(names.join("\0")).update(nums).digest("hex");
}

interface Remembered { key: string; bytes: number; crc32: number }

function recall(dir: string | undefined, fp: string | undefined): Remembered | undefined {
  if (!dir || !fp) return undefined;
  try {
    const r = JSON.parse(readFileSync(path.join(dir, `${fp}.json`), "utf8"));
    if (typeof r.key === "string" && Number.isInteger(r.bytes) && Number.isInteger(r.crc32)) return r;
  } catch {
    // not remembered
  }
  return undefined;
}

async function remember(dir: string | undefined, fp: string | undefined, r: Remembered): Promise<void> {
  if (!dir || !fp) return;
  // A cache: failing to remember only costs a read next time.
  await writeFileAtomic(path.join(dir, `${fp}.json`), JSON.stringify(r)).catch(() => {});
}

/**
 * What plan leaves build, in the same process: the packed records of the segments plan read
 * (undefined for those it knew by their fingerprints), so that the tree is not walked twice
 * when the store lacks only segments plan read (a new or changed segment).
 */
const walked = new WeakMap<InitramfsPlan, Array<Packed | undefined>>();

/**
 * Segments smaller than this are encoded on the calling thread: starting a worker costs more
 * than they do, and a one-file rebuild then starts no worker at all.
 */
const INLINE_BYTES = 2 << 20;

function runJob(pool: SegmentPool, job: SegmentJob, bytes: number): Promise<SegmentResult> {
  return bytes < INLINE_BYTES ? runSegment(job) : pool.run(job);
}

/** Runs `fn` with a pool that is closed afterwards, whatever happens. */
async function withPool<T>(fn: (pool: SegmentPool) => Promise<T>): Promise<T> {
  const pool = new SegmentPool();
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

/** Waits for every promise, then throws the real failure (not a cancellation): nothing is left running. */
async function all<T>(ps: Promise<T>[]): Promise<T[]> {
  const rs = await Promise.allSettled(ps);
  const bad = rs.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  if (bad.length) throw (bad.find((r) => !(r.reason instanceof Cancelled)) ?? bad[0]).reason;
  return rs.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** Biggest first, so the last job to finish is a small one. */
function bySizeDesc(segs: Array<Packed | undefined>): number[] {
  const size = (i: number) => segs[i]?.content ?? 0;
  return segs.map((_, i) => i).sort((a, b) => size(b) - size(a) || a - b);
}

export async function planInitramfs(tree: string, opts: InitramfsOptions = {}): Promise<InitramfsPlan> {
  const s = settle(tree, opts);
  const { segs, trustBefore } = await segmentsOf(s);
  const fps = segs.map((seg) => (opts.cacheDir ? fingerprint(keyPrefix(s), seg.records, trustBefore) : undefined));
  const known = fps.map((fp) => recall(opts.cacheDir, fp));
  const names = segs.map((seg) => seg.name);
  const entries = segs.map((seg) => seg.records.length);
  // Kept packed, and only for the segments read here: the walk's objects are garbage from now
  // on (a one-file change packs one segment), and those known by fingerprint are not kept.
  const kept = segs.map((seg, i) => (known[i] ? undefined : pack(seg, s.tree)));
  segs.length = 0;
  const results = await withPool((pool) => {
    const ps = new Array<Promise<Remembered>>(kept.length);
    for (const i of bySizeDesc(kept)) {
      const seg = kept[i];
      ps[i] = !seg
        ? Promise.resolve(known[i]!)
        : runJob(pool, { compression: s.compression, level: s.level, packed: seg.packed, keyPrefix: keyPrefix(s), crc: true }, seg.bytes).then(async (r) => {
            const got = { key: r.key!, bytes: r.bytes, crc32: r.crc32! };
            await remember(opts.cacheDir, fps[i], got);
            return got;
          });
    }
    return all(ps);
  });
  const segments = names.map((name, i) => ({ name, key: results[i].key, entries: entries[i], bytes: results[i].bytes, crc32: results[i].crc32 }));
  const plan: InitramfsPlan = { ...s, hash: imageHash(segments.map((x) => x.key)), segments, read: known.filter((k) => !k).length };
  walked.set(plan, kept);
  return plan;
}

export interface InitramfsBuild {
  /** initramfs/<hash>.json in the store: the segments in order, with their files and sizes. */
  manifest: string;
  /** The compressed segment files, in boot order: the initramfs is their concatenation. */
  files: string[];
  /** Bytes of the concatenation. */
  size: number;
  /** Keys of the segments compressed by this call, and of those found in the store. */
  built: string[];
  reused: string[];
}

/**
 * Compresses the segments whose key is not in the store yet. The image is never concatenated
 * here: Uki streams the segment files into its .initrd section one after another (it copies
 * every byte anyway), so a one-file change costs one small segment, not a 100 MB copy.
 */
export async function buildInitramfs(plan: InitramfsPlan, store: Store, log: (line: string) => void = () => {}): Promise<InitramfsBuild> {
  const built: string[] = [];
  const reused: string[] = [];
  const rels = plan.segments.map((x) => segmentFile(x.key, plan.compression));
  const have = await Promise.all(rels.map((rel) => store.has(rel)));
  if (have.every(Boolean)) reused.push(...plan.segments.map((x) => x.key));
  else {
    const changed = () => new Error(`initramfs: ${plan.tree} changed since it was planned; plan again (run preview/up again)`);
    let segs = walked.get(plan);
    // A segment plan knew by its fingerprint but the store lacks (or a plan from elsewhere): walk again.
    if (!segs || have.some((h, i) => !h && !segs![i])) {
      const again = (await segmentsOf(settle(plan.tree, { ...plan, level: plan.compression === "none" ? undefined : plan.level }))).segs;
      if (again.length !== plan.segments.length || again.some((seg, i) => seg.name !== plan.segments[i].name)) throw changed();
      segs = again.map((seg, i) => (have[i] ? undefined : pack(seg, plan.tree)));
    }
    await withPool((pool) => {
      const ps: Promise<unknown>[] = [];
      for (const i of bySizeDesc(segs)) {
        const { key, name, bytes, crc32 } = plan.segments[i];
        if (have[i]) {
          reused.push(key);
          continue;
        }
        ps.push(
          store.put(rels[i], async (tmp) => {
            const r = await runJob(pool, { compression: plan.compression, level: plan.level, packed: segs![i]!.packed, crc: true, out: tmp }, bytes);
            // The key names these bytes in the store: never file different bytes under it.
            // (CRC-32 rather than a second sha256 pass: it guards against accidents, at a
            // third of the cost.)
            if (r.crc32 !== crc32 || r.bytes !== bytes) throw changed();
          }).then((r) => {
            (r.built ? built : reused).push(key);
            log(`initramfs: segment ${name} (${bytes} bytes) ${r.built ? "compressed" : "reused"}`);
          }),
        );
      }
      return all(ps);
    });
  }
  const files = rels.map((rel) => store.path(rel));
  const sizes = await Promise.all(files.map(async (f) => (await fs.stat(f)).size));
  const size = sizes.reduce((t, n) => t + n, 0);
  const { path: manifest } = await store.put(`initramfs/${plan.hash}.json`, async (tmp) => {
    const segments = plan.segments.map((x, i) => ({ name: x.name, key: x.key, entries: x.entries, bytes: x.bytes, file: rels[i], size: sizes[i] }));
    await fs.writeFile(tmp, `${JSON.stringify({ format: FORMAT, compression: plan.compression, level: plan.level, size, segments }, null, 1)}\n`);
  });
  log(`initramfs: ${plan.segments.length} segments, ${size} bytes, ${built.length} compressed, ${reused.length} reused`);
  return { manifest, files, size, built, reused };
}

/**
 * Concatenates files into `out` (the single-file initramfs of writeInitramfs), returning the sha256 of the result. Two buffers: while one
 * chunk is being written (on libuv's thread pool) the next is read and hashed.
 */
async function concatenate(files: string[], out: string): Promise<string> {
  const hash = createHash("sha256");
  const bufs = [Buffer.allocUnsafe(4 << 20), Buffer.allocUnsafe(4 << 20)];
  const dst = await fs.open(out, "w");
  const writeAll = async (chunk: Buffer) => {
    for (let off = 0; off < chunk.length; ) off += (await dst.write(chunk, off, chunk.length - off)).bytesWritten;
  };
  let writing: Promise<void> = Promise.resolve();
  let turn = 0;
  try {
    for (const f of files) {
      const src = await fs.open(f, "r");
      try {
        for (;;) {
          // The write two chunks ago used this buffer; it finished before the last write began.
          const buf = bufs[turn & 1];
          const n = (await src.read(buf, 0, buf.length)).bytesRead;
          if (n === 0) break;
          turn++;
          const chunk = buf.subarray(0, n);
          hash.update(chunk);
          await writing;
          writing = writeAll(chunk);
        }
      } finally {
        await src.close();
      }
    }
    await writing;
  } finally {
    await writing.catch(() => {});
    await dst.close();
  }
  return hash.digest("hex");
}

/**
 * Writes the initramfs of `tree` to `out` in one pass, without a store: segments are
 * compressed to a temporary folder beside `out`, concatenated, and renamed into place.
 */
export async function writeInitramfs(tree: string, out: string, opts: InitramfsOptions = {}): Promise<void> {
  const s = settle(tree, opts);
  // Packed, and the walk's objects let go before the workers start.
  const segs = (await segmentsOf(s)).segs.map((seg) => pack(seg, s.tree));
  const dest = path.resolve(out);
  const tmp = await fs.mkdtemp(path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-`));
  try {
    const files = segs.map((_, i) => path.join(tmp, `${i}.cpio`));
    await withPool((pool) => all(bySizeDesc(segs).map((i) => pool.run({ compression: s.compression, level: s.level, packed: segs[i].packed, out: files[i] }))));
    const image = path.join(tmp, "image");
    await concatenate(files, image);
    await fs.rename(image, dest);
  } finally {
    await removeTree(tmp);
  }
}

/** The largest file inspect reads (into memory): 2 GiB - 1, the most fs.readFile reads. */
export const INSPECT_MAX_BYTES = 2 ** 31 - 1;

/**
 * Why `file` cannot be inspected (missing, not a regular file, empty, over INSPECT_MAX_BYTES),
 * from a stat alone, or undefined. `what` names what it should be.
 */
export async function inspectProblem(file: string, what = "an initramfs or a UKI"): Promise<string | undefined> {
  const st = await fs.stat(file).catch((e: NodeJS.ErrnoException) => e);
  if (st instanceof Error) return st.code === "ENOENT" ? `${file} does not exist: pass ${what}` : `cannot read ${file} (${st.code ?? st.message}): pass a file you can read`;
  if (st.isDirectory()) return `${file} is a folder: pass ${what}, a file (a folder is archived with \`ramroot initramfs DIR -o FILE\`)`;
  if (!st.isFile()) return `${file} is not a regular file: pass ${what}`;
  if (st.size === 0) return `${file} is empty: pass ${what} (a build or copy that did not finish leaves an empty file)`;
  if (st.size > INSPECT_MAX_BYTES) return `${file} is ${st.size} bytes, more than inspect reads (2 GiB), and more than an initramfs or a UKI should be: pass ${what}`;
  return undefined;
}

export interface InitramfsMember {
  offset: number;
  size: number;
  compression: Compression;
  entries: number;
  sha256: string;
}

/**
 * Splits a concatenated initramfs into its members (gzip, zstd or plain newc, with the zero
 * padding the kernel skips between them) and counts the entries of each. A diagnostic: the
 * file is read into memory whole, so it must be a regular file of at most INSPECT_MAX_BYTES.
 */
export async function inspectInitramfs(file: string): Promise<InitramfsMember[]> {
  const problem = await inspectProblem(file, "an initramfs");
  if (problem) throw new Error(problem);
  const buf = await fs.readFile(file);
  const members: InitramfsMember[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf[off] === 0) {
      off++;
      continue;
    }
    let entries = 0;
    const reader = new NewcReader(() => entries++);
    const rest = buf.subarray(off);
    let size: number;
    let compression: Compression = "none";
    // A damaged member is named with what is wrong: zstd frames carry an XXH64 checksum of their
    // content and gzip members a CRC-32 and the length, both checked here as the kernel does.
    try {
      if (rest.length >= 2 && rest[0] === 0x1f && rest[1] === 0x8b) {
        compression = "gzip";
        size = await inflateGzipMember(rest, (c) => reader.push(c));
      } else if (rest.length >= 4 && rest.readUInt32LE(0) === 0xfd2fb528) {
        compression = "zstd";
        size = zstdFrameSize(rest);
        await drain(zlib.createZstdDecompress(), rest.subarray(0, size), (c) => reader.push(c));
      } else if (rest.toString("latin1", 0, 6) === "070701") {
        reader.push(rest);
        size = reader.done ? reader.consumed : rest.length;
      } else {
        throw new Error(`initramfs: ${file}: unknown data at offset ${off} (not gzip, zstd or newc)`);
      }
    } catch (e: any) {
      if (String(e.message).startsWith("initramfs: ")) throw e;
      throw new Error(`initramfs: ${file}: the ${compression} member at offset ${off} is corrupted: ${e.message}`);
    }
    if (!reader.done) throw new Error(`initramfs: ${file}: member at offset ${off} does not end with ${TRAILER}`);
    members.push({ offset: off, size, compression, entries, sha256: createHash("sha256").update(rest.subarray(0, size)).digest("hex") });
    off += size;
  }
  return members;
}

async function drain(t: zlib.Gunzip | zlib.InflateRaw | zlib.ZstdDecompress, input: Buffer, onData: (c: Buffer) => void): Promise<void> {
  // What onData throws (the cpio reader's "bad magic") ends the stream with that error.
  t.on("data", (c: Buffer) => {
    try {
      onData(c);
    } catch (e) {
      t.destroy(e as Error);
    }
  });
  const done = finished(t);
  // A decompression error ends the stream: it must end the writing too (no "drain" follows).
  done.catch(() => {});
  for (let i = 0; i < input.length && !t.destroyed; i += 1 << 20) {
    if (!t.write(input.subarray(i, i + (1 << 20)))) await Promise.race([new Promise<void>((r) => t.once("drain", () => r())), done]);
  }
  t.end();
  await done;
}

/** Length of the gzip member at the start of `buf` (RFC 1952), found by inflating it. */
async function inflateGzipMember(buf: Buffer, onData: (c: Buffer) => void): Promise<number> {
  const flags = buf[3];
  let p = 10;
  if (flags & 4) p += 2 + buf.readUInt16LE(p);
  if (flags & 8) p = buf.indexOf(0, p) + 1;
  if (flags & 16) p = buf.indexOf(0, p) + 1;
  if (flags & 2) p += 2;
  const inflate = zlib.createInflateRaw();
  // Raw inflate stops at the end of the deflate stream; bytesWritten is what it consumed.
  let crc = 0;
  let length = 0;
  await drain(inflate, buf.subarray(p), (c) => {
    crc = zlib.crc32(c, crc);
    length += c.length;
    onData(c);
  });
  const end = p + inflate.bytesWritten;
  if (end + 8 > buf.length) throw new Error("the gzip member is truncated (no CRC-32 and length after its data)");
  if (buf.readUInt32LE(end) !== crc >>> 0 || buf.readUInt32LE(end + 4) !== length % 2 ** 32)
    throw new Error(`its content does not match its CRC-32 and length (crc32 ${(crc >>> 0).toString(16)}, length ${length}; recorded ${buf.readUInt32LE(end).toString(16)}, ${buf.readUInt32LE(end + 4)})`);
  return end + 8;
}

/** Length of the zstd frame at the start of `buf`, from its block headers (RFC 8878). */
function zstdFrameSize(buf: Buffer): number {
  const fhd = buf[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictId = [0, 1, 2, 4][fhd & 3];
  const fcs = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  let p = 5 + (single ? 0 : 1) + dictId + fcs;
  for (;;) {
    if (p + 3 > buf.length) throw new Error("the zstd frame is truncated");
    const bh = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16);
    const type = (bh >> 1) & 3;
    p += 3 + (type === 1 ? 1 : bh >>> 3);
    if (bh & 1) break;
  }
  if (p + (checksum ? 4 : 0) > buf.length) throw new Error("the zstd frame is truncated");
  return p + (checksum ? 4 : 0);
}
