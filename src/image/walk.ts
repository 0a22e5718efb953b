// One walker turns a directory tree into newc records; one transform (`reproducible`) makes
// them independent of when and where the tree was made. Only metadata is read here: content
// stays on disk until the encoder streams it. A file's stamp (dev, inode, times) is what a
// cache may trust instead of reading it (a tree linked from another keeps that one's stamps),
// and a listing keeps a walk of a tree that will not change.
import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import type { NewcRecord } from "./newc";

/** A record as the walk makes it: what the archive holds, and what the walk knows beside it. */
export interface WalkRecord extends NewcRecord {
  /** "dev:ino" of a regular file that has several names, for the hardlink step. */
  linkKey?: string;
  /**
   * Change detection for `source`, never encoded: [dev, ino, mtime ms, ctime ms] as the walk
   * saw it. Equal stamps (and size) mean the content can be trusted unchanged (git's index does
   * the same). A ctime younger than a clock tick is not trusted.
   */
  stamp?: [dev: number, ino: number, mtimeMs: number, ctimeMs: number];
}
import { writeFileAtomic } from "../store";

export interface WalkOptions {
  /** Paths relative to the tree ("boot", "var/cache") left out with everything under them. */
  exclude?: string[];
  /**
   * The records of a tree this one was linked from (cp -al), by path: a file that is still the
   * same inode, with the same size and mtime, takes that record's stamp. Linking changes every
   * inode's ctime, so without this a new link of the same tree would look all new to a cache.
   */
  linkedFrom?: Map<string, WalkRecord>;
}

/**
 * A listing: a tree's walk (every record, stamps included), taken once when the tree is made
 * and kept beside it, so that later plans read one file instead of lstat-ing thousands. It
 * is for trees nothing writes to after they are made (the store's rootfs trees): it says
 * nothing about changes made later. It is taken with no exclusions.
 *
 * File: magic, 7 doubles of header (count, bytes of names, bytes of link targets, and the
 * tree's root folder's dev, inode, mtime and ctime), the names joined by
 * NUL (UTF-8), the link targets, zero padding to 8 bytes, then ROW_L doubles a record
 * (little-endian): read back with one readFileSync and no parsing of numbers.
 */
const LISTING = "ramroot-listing-2\n";
const HEAD_DOUBLES = 7;
const HEAD = LISTING.length + 8 * HEAD_DOUBLES;
const ROW_L = 16;

const rootStamp = (st: fs.Stats) => [st.dev, st.ino, st.mtimeMs, st.ctimeMs];

export async function writeListing(file: string, tree: string, records: WalkRecord[]): Promise<void> {
  const names = Buffer.from(records.map((r) => r.name).join("\0"));
  const data = Buffer.concat(records.filter((r) => r.data).map((r) => r.data!));
  const at = Math.ceil((HEAD + names.length + data.length) / 8) * 8;
  const buf = Buffer.alloc(at + records.length * ROW_L * 8);
  buf.write(LISTING, 0, "latin1");
  const head = [records.length, names.length, data.length, ...rootStamp(fs.statSync(tree))];
  head.forEach((v, i) => buf.writeDoubleLE(v, LISTING.length + 8 * i));
  names.copy(buf, HEAD);
  data.copy(buf, HEAD + names.length);
  const rows = new Float64Array(buf.buffer, buf.byteOffset + at, records.length * ROW_L);
  records.forEach((r, i) => {
    const link = r.linkKey ? r.linkKey.split(":").map(Number) : [-1, -1];
    rows.set([r.mode, r.uid, r.gid, r.nlink, r.mtime, r.ino, r.rdevMajor, r.rdevMinor, r.size, r.data ? r.data.length : -1, link[0], link[1], ...(r.stamp ?? [-1, -1, -1, -1])], i * ROW_L);
  });
  await writeFileAtomic(file, buf);
}

/**
 * The records of `tree` from its listing, as `walk` gives them; undefined when there is no
 * listing, it is not one of ours, or it belongs to another folder than `tree` (its root folder's
 * dev, inode, mtime and ctime differ) -- then walk it.
 */
export function readListing(file: string, tree: string): WalkRecord[] | undefined {
  let buf: Buffer;
  let root: fs.Stats;
  try {
    buf = fs.readFileSync(file);
    root = fs.statSync(tree);
  } catch {
    return undefined;
  }
  if (buf.length < HEAD || buf.toString("latin1", 0, LISTING.length) !== LISTING) return undefined;
  const head = Array.from({ length: HEAD_DOUBLES }, (_, i) => buf.readDoubleLE(LISTING.length + 8 * i));
  const [count, namesLen, dataLen] = head;
  if (rootStamp(root).some((v, i) => v !== head[3 + i])) return undefined;
  const at = Math.ceil((HEAD + namesLen + dataLen) / 8) * 8;
  if (buf.length !== at + count * ROW_L * 8) return undefined;
  const names = buf.toString("utf8", HEAD, HEAD + namesLen).split("\0");
  if (names.length !== count) return undefined;
  // A copy into fresh memory: readFileSync's buffer may sit at an offset that is not 8-aligned.
  const v = new Float64Array(count * ROW_L);
  Buffer.from(v.buffer).set(buf.subarray(at));
  const base = path.resolve(tree);
  let d = HEAD + namesLen;
  const records = names.map((name, i): WalkRecord => {
    const o = i * ROW_L;
    const mode = v[o];
    const dataLen = v[o + 9];
    const data = dataLen >= 0 ? buf.subarray(d, (d += dataLen)) : undefined;
    const regular = isRegular(mode);
    return {
      name, mode, uid: v[o + 1], gid: v[o + 2], nlink: v[o + 3], mtime: v[o + 4], ino: v[o + 5], devMajor: 0, devMinor: 0,
      rdevMajor: v[o + 6], rdevMinor: v[o + 7], size: v[o + 8],
      source: regular ? `${base}/${name}` : undefined,
      data,
      linkKey: v[o + 10] >= 0 ? `${v[o + 10]}:${v[o + 11]}` : undefined,
      stamp: regular && v[o + 12] >= 0 ? [v[o + 12], v[o + 13], v[o + 14], v[o + 15]] : undefined,
    };
  });
  return records;
}

/** Records without the excluded paths and everything under them, as `walk` leaves them out. */
export function excludeRecords(records: WalkRecord[], exclude: string[]): WalkRecord[] {
  const ex = exclude.map(normalise).filter(Boolean);
  if (ex.length === 0) return records;
  return records.filter((r) => !ex.some((e) => r.name === e || r.name.startsWith(`${e}/`)));
}

/**
 * The error for a name that is not UTF-8 (the walk's, and the tree hash's: a skeleton is hashed
 * in preview). Node reads such a name with U+FFFD in place of the bad bytes, a name that does
 * not exist, so it must be caught before anything is done with it. The bytes that are not
 * UTF-8 are shown as \xNN, the rest as text.
 */
export function notUtf8(dir: string, raw: Buffer): string {
  return `the name "${escapeText(`${dir}/`)}${escapeBytes(raw)}" is not valid UTF-8 (an initramfs names files in UTF-8): rename it`;
}

const escapeText = (s: string) => JSON.stringify(s).slice(1, -1);

function escapeBytes(raw: Buffer): string {
  let out = "";
  for (let i = 0; i < raw.length; ) {
    const b = raw[i];
    const len = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (len > 0 && isUtf8(raw.subarray(i, i + len)) && i + len <= raw.length) {
      out += escapeText(raw.toString("utf8", i, i + len));
      i += len;
    } else {
      out += `\\x${b.toString(16).padStart(2, "0")}`;
      i++;
    }
  }
  return out;
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
export async function walk(tree: string, opts: WalkOptions = {}): Promise<WalkRecord[]> {
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
  const out: WalkRecord[] = [{ ...record(".", st), mode: S_IFDIR | 0o755, uid: 0, gid: 0 }];
  // Names per inode of the files with several links: only those with more than one name in
  // the tree are hard links here (a tree linked from another has every file's nlink at 2).
  const links = new Map<string, number>();
  visit(root, "");
  for (const r of out) if (r.linkKey && links.get(r.linkKey) === 1) r.linkKey = undefined;
  return out;

  function visit(dir: string, rel: string): void {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
      // A name that is not UTF-8 reads back with U+FFFD in it: only then look at the bytes.
      if (names.some((n) => n.includes("\uFFFD"))) {
        for (const raw of fs.readdirSync(dir, { encoding: "buffer" })) if (!isUtf8(raw)) throw new Error(`initramfs: ${notUtf8(dir, raw)}`);
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
        const base = opts.linkedFrom?.get(relName);
        const st = base?.stamp;
        r.stamp = st && st[0] === s.dev && st[1] === s.ino && st[2] === s.mtimeMs && base!.size === s.size ? st : [s.dev, s.ino, s.mtimeMs, s.ctimeMs];
        if (s.nlink > 1) {
          r.linkKey = `${s.dev}:${s.ino}`;
          links.set(r.linkKey, (links.get(r.linkKey) ?? 0) + 1);
        }
      } else if ((mode & S_IFMT) === S_IFLNK) {
        r.data = fs.readlinkSync(full, { encoding: "buffer" });
        r.size = r.data.length;
      }
      out.push(r);
      if (isDir(mode)) visit(full, relName);
    }
  }
}

/** One entry's record from its lstat, as the walk makes it (also for trees whose lstats were taken elsewhere). */
export function record(name: string, s: fs.Stats): WalkRecord {
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
 * ino; GNU cpio defers size-0 links and links them at the end. Names of the inode in another
 * archive would not be visible here and would become an independent copy there: the initramfs
 * segmentation (splitSegments) keeps every name of an inode in one archive.
 *
 * Changes the records in place and returns them.
 */
export function reproducible(records: WalkRecord[], opts: ReproducibleOptions): WalkRecord[] {
  const names = new Map<string, number>();
  for (const r of records) if (r.linkKey) names.set(r.linkKey, (names.get(r.linkKey) ?? 0) + 1);
  const firstIno = new Map<string, number>();
  let ino = FIRST_INO;
  // In place: the records are the walk's own, and a tree has thousands (copies show up as GC time).
  for (const r of records) {
    const key = r.linkKey;
    r.linkKey = undefined;
    r.mtime = opts.epoch;
    r.devMajor = 0;
    r.devMinor = 0;
    r.nlink = isDir(r.mode) ? 2 : 1;
    const count = key ? names.get(key)! : 1;
    if (count < 2) {
      r.ino = ino++;
      continue;
    }
    r.nlink = count;
    const seen = firstIno.get(key!);
    if (seen === undefined) {
      firstIno.set(key!, ino);
      r.ino = ino++;
      continue;
    }
    r.ino = seen;
    r.size = 0;
    r.source = undefined;
  }
  return records;
}
