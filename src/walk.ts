// One walker turns a directory tree into newc records; one transform (`reproducible`) makes
// them independent of when and where the tree was made. Only metadata is read here: content
// stays on disk until the encoder streams it.
import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import type { NewcRecord } from "./newc";

export interface WalkOptions {
  /** Paths relative to the tree ("boot", "var/cache") left out with everything under them. */
  exclude?: string[];
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFSOCK = 0o140000;

export const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR;
export const isRegular = (mode: number) => (mode & S_IFMT) === S_IFREG;

/** Byte order of UTF-8 names: the same on every machine, unlike locale collation. */
const byBytes = (a: Buffer, b: Buffer) => Buffer.compare(a, b);

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
    let names: Buffer[];
    try {
      names = fs.readdirSync(dir, { encoding: "buffer" });
    } catch (e: any) {
      throw new Error(`initramfs: cannot read directory ${dir} (${e.code ?? e.message}); make it readable by the user running ramroot, or exclude it`);
    }
    for (const raw of names.sort(byBytes)) {
      const name = raw.toString("utf8");
      // `dir` is absolute and normalised and a name never holds a slash: no path.join needed.
      const full = `${dir}/${name}`;
      if (!isUtf8(raw)) throw new Error(`initramfs: ${JSON.stringify(full)} is not valid UTF-8; rename it`);
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
        r.stamp = `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
        r.ctimeMs = s.ctimeMs;
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
