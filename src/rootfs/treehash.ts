// A content hash of a tree that does not re-read unchanged files: like git's index, the sha256
// of each regular file is remembered together with its (size, mtime ns, ctime ns, inode,
// device), and reused while all five are unchanged. A 450 MB base tree then hashes in tens of
// milliseconds instead of seconds, which is what keeps a no-op `pulumi preview` cheap.
//
// What counts: names, types, permission bits, owners, link targets, device numbers and file
// contents (each file as its sha256), in sorted byte order of names; timestamps are left out
// (they do not reach the image).
//
// "Racily clean" files (git's term) are never trusted: an entry is recorded only when the
// file's ctime (which every write moves, and utimes cannot set back) is older than racyMs
// before the hash started, so a file written in the same clock tick as it was hashed is
// hashed again next time.
import { isUtf8 } from "node:buffer";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { notUtf8 } from "../image/walk";
import { writeFileAtomicSync } from "../store";

export interface TreeHashOptions {
  /** Every entry counts as owned by 0:0 (skeleton files of a distribution belong to root). */
  rootOwned?: boolean;
  /**
   * A folder for the per-file hash cache (e.g. the store's cache/treehash). One JSON file per
   * hashed tree, named by the tree's absolute path. Without it every file is read.
   */
  cacheDir?: string;
  /** Paths relative to the tree ("packages", "cmd/srvmonitor") left out, with everything under them. */
  exclude?: string[];
  /** A file changed (ctime) less than this long before the hash started is not cached. Default 2000. */
  racyMs?: number;
  /**
   * Filled with what the hash took of each entry below the root (mode, owner, and the content's
   * sha256, the link's target or the device number), by relative path: two of these name the
   * entries that made two hashes differ.
   */
  fingerprints?: Map<string, string>;
}

export interface TreeHashStats {
  files: number;
  /** Files whose content was read and hashed (the rest came from the cache). */
  hashed: number;
  hashedBytes: number;
}

/** [size, mtime ns, ctime ns, ino, dev, sha256] */
type Entry = [number, string, string, string, string, string];
const FORMAT = "ramroot-treehash-1";

export async function hashTree(dir: string, opts: TreeHashOptions = {}, stats?: TreeHashStats): Promise<string> {
  const root = path.resolve(dir);
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(root, { bigint: true });
  } catch {
    throw new Error(`${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);

  const cacheFile = opts.cacheDir ? path.join(opts.cacheDir, createHash("sha256").update(root).digest("hex").slice(0, 32) + ".json") : undefined;
  const old = cacheFile ? readCache(cacheFile) : new Map<string, Entry>();
  const fresh = new Map<string, Entry>();
  const trustBefore = (BigInt(Date.now()) - BigInt(opts.racyMs ?? 2000)) * 1_000_000n;
  const buf = Buffer.allocUnsafe(1 << 20);
  const s: TreeHashStats = stats ?? { files: 0, hashed: 0, hashedBytes: 0 };
  let dirty = false;

  const h = createHash("sha256").update(`${FORMAT}\n`);
  const visit = (rel: string, s0: fs.BigIntStats): void => {
    const abs = rel ? path.join(root, rel) : root;
    const owner = opts.rootOwned ? "0:0" : `${s0.uid}:${s0.gid}`;
    const head = `${rel}\0${s0.mode.toString(8)}\0${owner}\0`;
    const took = (what: string) => {
      h.update(head + what + "\n");
      if (rel) opts.fingerprints?.set(rel, `${s0.mode.toString(8)} ${owner} ${what.replace(/\0/g, " ")}`);
    };
    if (s0.isDirectory()) {
      took("d");
      const names = fs.readdirSync(abs, { encoding: "buffer" }).sort(Buffer.compare);
      for (const raw of names) {
        // Read back as text, a name that is not UTF-8 names no file (U+FFFD replaces its bytes).
        if (!isUtf8(raw)) throw new Error(notUtf8(abs, raw));
        const n = raw.toString("utf8");
        const r = rel ? `${rel}/${n}` : n;
        if (opts.exclude?.includes(r)) continue;
        visit(r, fs.lstatSync(path.join(root, r), { bigint: true }));
      }
    } else if (s0.isSymbolicLink()) {
      took("l" + fs.readlinkSync(abs));
    } else if (s0.isFile()) {
      s.files++;
      const key: Entry = [Number(s0.size), String(s0.mtimeNs), String(s0.ctimeNs), String(s0.ino), String(s0.dev), ""];
      const prev = old.get(rel);
      let digest: string;
      if (prev && prev[0] === key[0] && prev[1] === key[1] && prev[2] === key[2] && prev[3] === key[3] && prev[4] === key[4]) {
        digest = prev[5];
      } else {
        digest = hashFile(abs, buf);
        s.hashed++;
        s.hashedBytes += key[0];
        dirty = true;
      }
      key[5] = digest;
      if (s0.ctimeNs < trustBefore) fresh.set(rel, key);
      else dirty = true;
      took(`f${s0.size}\0${digest}`);
    } else {
      took(`r${s0.rdev}`);
    }
  };
  visit("", st);
  if (cacheFile && (dirty || fresh.size !== old.size)) writeCache(cacheFile, fresh);
  return h.digest("hex");
}

function hashFile(file: string, buf: Buffer): string {
  const h = createHash("sha256");
  const fd = fs.openSync(file, "r");
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

function readCache(file: string): Map<string, Entry> {
  try {
    const j = JSON.parse(fs.readFileSync(file, "utf8"));
    if (j.format === FORMAT && j.entries && typeof j.entries === "object") return new Map(Object.entries(j.entries) as Array<[string, Entry]>);
  } catch {
    // Missing or unreadable: start over (the cache only saves time).
  }
  return new Map();
}

function writeCache(file: string, entries: Map<string, Entry>): void {
  try {
    writeFileAtomicSync(file, JSON.stringify({ format: FORMAT, entries: Object.fromEntries(entries) }));
  } catch {
    // A read-only store still hashes correctly, only slower.
  }
}
