// One walker turns a directory tree into newc records; one transform (`reproducible`) makes
// them independent of when and where the tree was made. Only metadata is read here: content
// stays on disk until the encoder streams it. A file's stamp (dev, inode, times) is what a
// cache may trust instead of reading it; copy stamps carry those across a copy of the tree.
import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import type { NewcRecord } from "./newc";
import { writeFileAtomic } from "./store";

export interface WalkOptions {
  /** Paths relative to the tree ("boot", "var/cache") left out with everything under them. */
  exclude?: string[];
  /** The tree is a copy: files it still holds as copied take their originals' stamps (copyStamps). */
  copied?: CopyStamps;
}

/** A regular file's stamp, as NewcRecord.stamp. */
export type Stamp = [dev: number, ino: number, mtimeMs: number, ctimeMs: number];

/**
 * What a copy of a tree got from its original, by path: [size, the copy's stamp (4), the
 * original's stamp (4)]. A copy has new inodes and ctimes, so every stamp differs from the
 * original's and a stamp cache keyed by them misses on the whole tree; with this, a file whose
 * size and stamp are still those the copy gave it is known to hold its original's bytes and
 * carries the original's stamp instead. Any later change to it (a write, a replacement) changes
 * its ctime or inode, and it is then itself again.
 */
export interface CopyStamps {
  /** Path -> row of `values`. */
  rows: Map<string, number>;
  /** 9 numbers a row. */
  values: Float64Array;
}

const ROW = 9;

/** Pairs the regular files of `copy` with those of `original` they were copied from (cp -a). */
export async function copyStamps(original: string, copy: string): Promise<CopyStamps> {
  const [from, to] = await Promise.all([walk(original), walk(copy)]);
  const orig = new Map(from.filter((r) => r.stamp).map((r) => [r.name, r]));
  const rows = new Map<string, number>();
  const values: number[] = [];
  for (const r of to) {
    const o = orig.get(r.name);
    // cp -a keeps the mode, size and mtime; anything else is not a copy of that file.
    if (!r.stamp || !o?.stamp || o.size !== r.size || o.mode !== r.mode || o.stamp[2] !== r.stamp[2]) continue;
    rows.set(r.name, rows.size);
    values.push(r.size, ...r.stamp, ...o.stamp);
  }
  return { rows, values: Float64Array.from(values) };
}

// File: magic, the paths joined by NUL (UTF-8), zero padding to 8 bytes, the rows as doubles
// (little-endian): read back with one readFileSync and no parsing of numbers.
const MAGIC = "ramroot-copy-stamps-2\n";

export async function writeCopyStamps(file: string, c: CopyStamps): Promise<void> {
  const names = Buffer.from([...c.rows.keys()].join("\0"));
  const head = Buffer.alloc(Math.ceil((MAGIC.length + 8 + names.length) / 8) * 8);
  head.write(MAGIC, 0, "latin1");
  head.writeUInt32LE(c.rows.size, MAGIC.length);
  head.writeUInt32LE(names.length, MAGIC.length + 4);
  names.copy(head, MAGIC.length + 8);
  await writeFileAtomic(file, Buffer.concat([head, Buffer.from(c.values.buffer, c.values.byteOffset, c.values.byteLength)]));
}

/** Undefined when there is no such file or it is not one of ours. */
export function readCopyStamps(file: string): CopyStamps | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return undefined;
  }
  if (buf.length < MAGIC.length + 8 || buf.toString("latin1", 0, MAGIC.length) !== MAGIC) return undefined;
  const count = buf.readUInt32LE(MAGIC.length);
  const namesLen = buf.readUInt32LE(MAGIC.length + 4);
  const at = Math.ceil((MAGIC.length + 8 + namesLen) / 8) * 8;
  if (buf.length !== at + count * ROW * 8) return undefined;
  const names = count ? buf.toString("utf8", MAGIC.length + 8, MAGIC.length + 8 + namesLen).split("\0") : [];
  if (names.length !== count) return undefined;
  // A copy into fresh memory: readFileSync's buffer may sit at an offset that is not 8-aligned.
  const values = new Float64Array(count * ROW);
  Buffer.from(values.buffer).set(buf.subarray(at));
  return { rows: new Map(names.map((n, i) => [n, i])), values };
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFSOCK = 0o140000;

export const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR;
export const isRegular = (mode: number) => (mode & S_IFMT) === S_IFREG;

/**
 * Names in the byte order of their UTF-8 (the same on every machine, unlike locale collation).
 * That is code point order, which JavaScript's own string order (UTF-16 code units) equals
 * unless a name holds a character from U+D800 up: only then are the bytes compared.
 */
function sortByBytes(names: string[]): string[] {
  if (!names.some((n) => /[\uD800-\uFFFF]/.test(n))) return names.sort();
  return names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/**
 * Records for every entry under `tree`, without following symlinks, in path order: each
 * directory, then its entries sorted by name bytes, depth first, so a directory's subtree is a
 * contiguous run right after it. The root comes first as "." with mode 0755 root:root whatever
 * the source folder is: its mode becomes the mode of / in the booted system, and a mktemp
 * folder is 0700. Sockets are skipped: a socket file without its server is a dead name.
 */
export async function walk(tree: string, opts: WalkOptions = {}): Promise<NewcRecord[]> {
  const root = path.resolve(tree);
  let st: fs.Stats;
  try {
    st = fs.statSync(root);
  } catch (e: any) {
    if (e.code === "ENOENT") throw new Error(`initramfs: the tree ${root} does not exist; build the root filesystem first or fix the path`);
    throw new Error(`initramfs: cannot stat the tree ${root} (${e.code ?? e.message}); make it readable by the user running ramroot`);
  }
  if (!st.isDirectory()) throw new Error(`initramfs: ${root} is not a directory; pass the folder that holds the root filesystem (the one with etc/ and usr/)`);

  const exclude = new Set((opts.exclude ?? []).map(normalise));
  const out: NewcRecord[] = [{ ...record(".", st), mode: S_IFDIR | 0o755, uid: 0, gid: 0 }];
  visit(root, "");
  return out;

  function visit(dir: string, rel: string): void {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
      // A name that is not UTF-8 reads back with U+FFFD in it: only then look at the bytes.
      if (names.some((n) => n.includes("\uFFFD"))) {
        for (const raw of fs.readdirSync(dir, { encoding: "buffer" }))
          if (!isUtf8(raw)) throw new Error(`initramfs: ${JSON.stringify(`${dir}/${raw.toString("utf8")}`)} is not valid UTF-8; rename it`);
      }
    } catch (e: any) {
      if (!e.code) throw e;
      throw new Error(`initramfs: cannot read directory ${dir} (${e.code}); make it readable by the user running ramroot, or exclude it`);
    }
    for (const name of sortByBytes(names)) {
      // `dir` is absolute and normalised and a name never holds a slash: no path.join needed.
      const full = `${dir}/${name}`;
      const relName = rel ? `${rel}/${name}` : name;
      if (exclude.has(relName)) continue;
      // Plain-number stats: BigInt ones cost a third of the walk in allocation and GC, and a
      // double holds inode numbers below 2^53 and times to a fraction of a microsecond.
      const s = fs.lstatSync(full);
      const mode = s.mode;
      if ((mode & S_IFMT) === S_IFSOCK) continue;
      const r = record(relName, s);
      if (isRegular(mode)) {
        r.size = s.size;
        r.source = full;
        r.stamp = [s.dev, s.ino, s.mtimeMs, s.ctimeMs];
        const row = opts.copied?.rows.get(relName);
        if (row !== undefined) {
          const v = opts.copied!.values;
          const o = row * ROW;
          if (v[o] === s.size && v[o + 1] === s.dev && v[o + 2] === s.ino && v[o + 3] === s.mtimeMs && v[o + 4] === s.ctimeMs) r.stamp = [v[o + 5], v[o + 6], v[o + 7], v[o + 8]];
        }
        if (s.nlink > 1) r.linkKey = `${s.dev}:${s.ino}`;
      } else if ((mode & S_IFMT) === S_IFLNK) {
        r.data = fs.readlinkSync(full, { encoding: "buffer" });
        r.size = r.data.length;
      }
      out.push(r);
      if (isDir(mode)) visit(full, relName);
    }
  }
}

function record(name: string, s: fs.Stats): NewcRecord {
  // Linux's dev_t layout (glibc's gnu_dev_major/minor), on the two 32-bit halves.
  const lo = s.rdev >>> 0;
  const hi = Math.floor(s.rdev / 2 ** 32) >>> 0;
  return {
    name,
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    nlink: s.nlink,
    mtime: Math.floor(s.mtimeMs / 1000),
    ino: s.ino >>> 0,
    devMajor: 0,
    devMinor: 0,
    rdevMajor: (((lo >>> 8) & 0xfff) | (hi & 0xfffff000)) >>> 0,
    rdevMinor: ((lo & 0xff) | ((lo >>> 12) & 0xfff00) | ((hi & 0xfff) << 20)) >>> 0,
    size: 0,
    // Every record gets every field: one object shape for all, which V8 copies fast.
    source: undefined,
    data: undefined,
    linkKey: undefined,
    stamp: undefined,
  };
}

function normalise(p: string): string {
  return p.replace(/^(\.?\/)+/, "").replace(/\/+$/, "");
}

export interface ReproducibleOptions {
  /** The one mtime of every entry (seconds since 1970). */
  epoch: number;
  /** Force every entry to this owner (skeleton files of a distribution belong to root). */
  owner?: { uid: number; gid: number };
}

/** First inode number of every archive; see `reproducible`. */
export const FIRST_INO = 1;

/**
 * Makes one archive's records depend only on the tree's names, modes, owners and content:
 * every mtime becomes the epoch, device numbers of the host disk become 0, directories get
 * nlink 2, and inode numbers are renumbered in order from FIRST_INO *per archive*, so adding a
 * file shifts no number in any other segment (the kernel forgets inode numbers at each
 * TRAILER!!!, so repeating them across archives is safe).
 *
 * Regular files that share an inode within this archive stay hardlinks: the first name
 * carries the data, later ones have size 0 and the same ino, and all say nlink = number of
 * names in this archive. The kernel links a later nlink>=2 entry to the first it saw with that
 * ino; GNU cpio defers size-0 links and links them at the end. Names of the inode that fall in
 * another archive are not visible here and become independent copies there.
 */
export function reproducible(records: NewcRecord[], opts: ReproducibleOptions): NewcRecord[] {
  const names = new Map<string, number>();
  for (const r of records) if (r.linkKey) names.set(r.linkKey, (names.get(r.linkKey) ?? 0) + 1);
  const firstIno = new Map<string, number>();
  let ino = FIRST_INO;
  return records.map((r) => {
    // One new object per record (a tree has thousands; copies of copies show up as GC time).
    const out: NewcRecord = { ...r, linkKey: undefined, mtime: opts.epoch, devMajor: 0, devMinor: 0, nlink: isDir(r.mode) ? 2 : 1, ino: 0, ...opts.owner };
    const count = r.linkKey ? names.get(r.linkKey)! : 1;
    if (count < 2) {
      out.ino = ino++;
      return out;
    }
    out.nlink = count;
    const seen = firstIno.get(r.linkKey!);
    if (seen === undefined) {
      firstIno.set(r.linkKey!, ino);
      out.ino = ino++;
      return out;
    }
    out.ino = seen;
    out.size = 0;
    out.source = undefined;
    return out;
  });
}
