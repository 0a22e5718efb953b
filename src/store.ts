// The content-addressed store shared by every stack of a project (.ramroot/store by default).
//
// Artifacts are named by the hash of what produced them, so a second stack that asks for the
// same thing finds it already built: this is how production deploys the very bytes that qemu
// booted. Every artifact is written under a temporary name and renamed into place, so a name
// that exists was complete when it was made. Artifacts are never deleted by a resource: two
// stacks may hold the same one; `ramroot store gc` is the place for pruning.
//
// The store proves its contents. When an artifact is made, Store.put writes a record of its
// bytes first (sums/<name>.json: sha256 and size for a file; for a folder, every entry's type,
// mode, owner, size and content sha256, and one sha256 over all of that), then renames the
// artifact into place. Store.check compares what is on disk with that record before anything
// reuses it, builds from it, boots or deploys it: a missing, truncated or changed artifact, or
// one without a record, is named and never used (put rebuilds it). Reading every byte each time
// would make a no-op `pulumi up` slow, so a check is remembered per file by its stamp (device,
// inode, size, mtime, ctime) in cache/verified/<name>.json: a file whose stamp is unchanged
// since it was last found good is not read again. What changes a file (a write, a truncation,
// a chmod, a rename over it) moves its ctime; only damage below the filesystem (a bit rotting
// on the disk) keeps the stamp, and `ramroot store verify` reads everything for that.
//
// Temporaries are named <name>.tmp-<pid>-<8 hex>: one whose process is gone is dead (a build
// that was killed), and is removed by the next build in any process and by `store gc`.
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fsSync from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** The record of a file artifact's bytes. */
export interface FileRecord {
  type: "file";
  sha256: string;
  size: number;
}

/** One entry of a folder artifact: [name, mode, uid, gid, size, sha256 | link target | rdev | ""]. */
export type TreeEntry = [name: string, mode: number, uid: number, gid: number, size: number, data: string];

/** The record of a folder artifact: its entries in name order, and the sha256 over them. */
export interface TreeRecord {
  type: "tree";
  sha256: string;
  files: number;
  bytes: number;
  entries: TreeEntry[];
}

export type ArtifactRecord = FileRecord | TreeRecord;

/** What Store.check found: nothing wrong (ok), or the problems, each naming a file. */
export interface Verdict {
  ok: boolean;
  /** The artifact does not exist at all (nothing to report but its absence). */
  missing: boolean;
  problems: string[];
}

/** Folders of the store that hold artifacts (each made by put, each with a record). */
export const ARTIFACT_KINDS = ["rootfs-packages", "rootfs", "segments", "initramfs", "release", "secrets", "goprograms", "uki", "disk", "tools", "builders"] as const;
/** Folders of JSON records written by writeRecord: checked for being there and readable. */
const RECORD_KINDS = ["booted", "booted-build", "deployed"];

/** `<name>.tmp-<pid>-<8 hex>`, possibly with a suffix of the temporary's own (`.repositories`, setup.sh's `.setup-XXXXXX`). */
export const TEMPORARY = /\.tmp-(\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9-]+)?$/;

/**
 * A file whose mtime is this recent is not remembered as checked: a write in the same clock
 * tick as the check would leave its stamp as it was (git's "racily clean").
 */
const RACY_MS = 2000;

/**
 * A file's stamp, "dev:ino:size:mtimeMs:ctimeMs". The times are the doubles Node gives (a
 * quarter of a microsecond apart at today's dates): reading nanoseconds (bigint stats) cost a
 * third of a check of a large tree, for a precision nothing here needs.
 */
const stampOf = (st: fsSync.Stats): string => `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

interface VerifiedCache {
  /** The record this cache is about (a rebuilt artifact has a new record: the cache is void). */
  sum: string;
  /** Regular files by name ("" for a file artifact) and the stamp they had when found good. */
  files: Record<string, string>;
}

/**
 * Artifacts this process has proven: written by put, or found whole by a check. A provider
 * plugin lives for one operation (one `pulumi up`), in which each resource checks the artifacts
 * it is built from; without this the tree Rootfs has just made and checked is walked again by
 * Initramfs and by Uki, and the UKI and the disk just written are read again by the next
 * resource (0.4 s of a skeleton edit on the bench tree). Only `check(rel, { once: true })`
 * answers from it; every other check looks at the artifact.
 */
const provenHere = new Set<string>();

/**
 * Files of this process whose content is known (checked or hashed here), by device and inode,
 * with the size and mtime they had then. A folder linked from another (cp -al: the configured
 * rootfs from its packages tree) shares its inodes, and linking moves every ctime: a file whose
 * inode, size and mtime are as this process last saw them is taken as the content it had, not
 * read again.
 */
const knownInodes = new Map<string, { size: number; mtimeMs: number; sha256: string }>();

/** Dead temporaries are swept once per process and store, at its first build. */
const swept = new Set<string>();

/** What this process read to check or record artifacts (tests, the benchmark). */
export const verifyStats = { files: 0, bytes: 0 };

export class Store {
  /** Where the store reports what it finds (a damaged artifact, a dead temporary removed). */
  log: (line: string) => void = () => {};

  constructor(readonly root: string) {}

  /** The store of the project in `projectDir`, or RAMROOT_STORE when set. */
  static forProject(projectDir: string): Store {
    return new Store(path.resolve(process.env.RAMROOT_STORE || path.join(projectDir, ".ramroot", "store")));
  }

  path(rel: string): string {
    if (path.isAbsolute(rel) || rel.split(/[\\/]/).includes("..")) throw new Error(`store: bad artifact name ${rel}`);
    return path.join(this.root, rel);
  }

  /** The artifact name of an absolute path inside the store, or undefined. */
  relOf(file: string): string | undefined {
    const rel = path.relative(this.root, path.resolve(file));
    if (!rel || rel.startsWith("..") || path.isAbsolute(rel)) return undefined;
    return rel.split(path.sep).join("/");
  }

  private sumFile(rel: string): string {
    return this.path(`sums/${rel}.json`);
  }

  private cacheFile(rel: string): string {
    return this.path(`cache/verified/${rel}.json`);
  }

  /** Whether the artifact exists and matches its record (a cached check). */
  async has(rel: string): Promise<boolean> {
    return (await this.check(rel)).ok;
  }

  /** Whether something exists under this name, proven or not. */
  async exists(rel: string): Promise<boolean> {
    return fs.lstat(this.path(rel)).then(() => true, () => false);
  }

  /** The record of an artifact's bytes, or undefined. */
  async record(rel: string, opts: { validate?: boolean } = {}): Promise<ArtifactRecord | undefined> {
    try {
      const r = JSON.parse(await fs.readFile(this.sumFile(rel), "utf8"));
      if (r?.type === "file" && /^[0-9a-f]{64}$/.test(r.sha256) && Number.isInteger(r.size)) return r;
      // A tree record's own digest is checked by deep checks (store verify); a damaged entry
      // otherwise only makes its file look changed, and the tree is made again.
      if (r?.type === "tree" && /^[0-9a-f]{64}$/.test(r.sha256) && Array.isArray(r.entries) && (!opts.validate || treeDigest(r.entries) === r.sha256)) return r;
    } catch {
      // missing or unreadable: no record
    }
    return undefined;
  }

  /**
   * Compares the artifact with the record of its bytes. `deep` reads every byte (store verify);
   * otherwise a file whose stamp is the one it had when last found good is not read again.
   * `remember` keeps what it found by inode, for a tree about to be linked from; `linked`, right
   * after this process linked the artifact's files into a new tree (which moves their ctimes),
   * also takes a file this process read or recorded by inode, size and mtime.
   * Records (booted/, deployed/) are checked for being there and readable JSON. `once`: an
   * artifact this process has already proven (provenHere) is not looked at again.
   */
  async check(rel: string, opts: { deep?: boolean; linked?: boolean; remember?: boolean; once?: boolean; seen?: (name: string, st: fsSync.Stats) => void } = {}): Promise<Verdict> {
    const file = this.path(rel);
    if (opts.once && !opts.deep && !opts.remember && !opts.linked && !opts.seen && provenHere.has(file)) return { ok: true, missing: false, problems: [] };
    const verdict = await this.look(rel, file, opts);
    if (verdict.ok && !RECORD_KINDS.includes(rel.split("/")[0])) provenHere.add(file);
    else provenHere.delete(file);
    return verdict;
  }

  private async look(rel: string, file: string, opts: { deep?: boolean; linked?: boolean; remember?: boolean; seen?: (name: string, st: fsSync.Stats) => void }): Promise<Verdict> {
    const bad = (...problems: string[]): Verdict => ({ ok: false, missing: false, problems });
    let st: fsSync.Stats;
    try {
      st = fsSync.lstatSync(file);
    } catch (e: any) {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") return { ok: false, missing: true, problems: [`${file} is missing`] };
      return bad(`${file} cannot be read (${e.code ?? e.message})`);
    }
    if (RECORD_KINDS.includes(rel.split("/")[0])) {
      try {
        JSON.parse(await fs.readFile(file, "utf8"));
        return { ok: true, missing: false, problems: [] };
      } catch (e: any) {
        return bad(`${file} is not a readable record (${e.code ?? e.message})`);
      }
    }
    let rec = await this.record(rel, { validate: opts.deep });
    if (!rec) {
      rec = await this.adopt(rel, st);
      if (!rec) return bad(`${file} has no record of its bytes (sums/${rel}.json is missing or damaged), so nothing proves it is what was built`);
    }
    const cached = opts.deep ? {} : this.readCache(rel, rec.sha256);
    const fresh: Record<string, string> = {};
    const racyBefore = Date.now() - RACY_MS;
    let dirty = false;
    /** Whether the file is what the record says (by its stamp, or read); notes its stamp. */
    const proven = async (name: string, abs: string, s: fsSync.Stats, sha256: string): Promise<string | undefined> => {
      const stamp = stampOf(s);
      if (cached[name] === stamp || (opts.linked && this.knownAs(s, sha256))) {
        if (opts.remember || opts.linked) this.remember(s, sha256);
      } else {
        const got = await hashCounted(abs);
        this.remember(s, got);
        if (got !== sha256) return `${abs} is not the bytes it was made with: sha256 ${got.slice(0, 16)}…, its record says ${sha256.slice(0, 16)}… (corrupted or changed)`;
      }
      if (s.mtimeMs < racyBefore) {
        fresh[name] = stamp;
        if (cached[name] !== stamp) dirty = true;
      } else if (cached[name] !== undefined) dirty = true;
      return undefined;
    };
    const good = (): Verdict => {
      if (dirty || Object.keys(cached).length !== Object.keys(fresh).length) writeJsonSync(this.cacheFile(rel), { sum: rec.sha256, files: fresh } satisfies VerifiedCache);
      return { ok: true, missing: false, problems: [] };
    };
    if (rec.type === "file") {
      if (!st.isFile()) return bad(`${file} is not a file, as its record says it is`);
      if (st.size !== rec.size) return bad(`${file} is ${st.size} bytes, its record says ${rec.size} (truncated or changed)`);
      const problem = await proven("", file, st, rec.sha256);
      return problem ? bad(problem) : good();
    }
    if (!st.isDirectory()) return bad(`${file} is not a folder, as its record says it is`);
    const problems: string[] = [];
    const byName = new Map<string, TreeEntry | null>();
    for (const e of rec.entries) byName.set(e[0], e);
    // Every entry is looked at (a file changed in place moves only its own stamps); those found
    // are crossed out of byName, so what is left is missing.
    const visit = async (dir: string, prefix: string): Promise<void> => {
      for (const n of fsSync.readdirSync(dir)) {
        const name = prefix + n;
        const abs = `${dir}/${n}`;
        const s = fsSync.lstatSync(abs);
        const want = byName.get(name);
        opts.seen?.(name, s);
        if (s.isDirectory()) await visit(abs, `${name}/`);
        if (!want) {
          if (want === undefined) problems.push(`${abs} is not in the record of ${rel} (added after it was made)`);
          continue;
        }
        byName.set(name, null);
        const [, mode, uid, gid, size, data] = want;
        if (s.mode !== mode || s.uid !== uid || s.gid !== gid) {
          problems.push(`${abs} is mode ${s.mode.toString(8)} owner ${s.uid}:${s.gid}, its record says mode ${mode.toString(8)} owner ${uid}:${gid}`);
        } else if (s.isFile()) {
          if (s.size !== size) problems.push(`${abs} is ${s.size} bytes, its record says ${size} (truncated or changed)`);
          else {
            const problem = await proven(name, abs, s, data);
            if (problem) problems.push(problem);
          }
        } else if (s.isSymbolicLink()) {
          const target = fsSync.readlinkSync(abs);
          if (target !== data) problems.push(`${abs} links to ${target}, its record says ${data}`);
        } else if (!s.isDirectory() && String(s.rdev) !== data) {
          problems.push(`${abs} is device ${s.rdev}, its record says ${data}`);
        }
      }
    };
    await visit(file, "");
    for (const [name, e] of byName) if (e) problems.push(`${file}/${name} is missing (its record of ${rel} lists it)`);
    return problems.length > 0 ? bad(...problems.sort()) : good();
  }

  /** Whether this process knows the inode's content (see knownInodes) to be `sha256`. */
  private knownAs(st: fsSync.Stats, sha256: string): boolean {
    const k = knownInodes.get(`${st.dev}:${st.ino}`);
    return !!k && k.sha256 === sha256 && k.size === st.size && k.mtimeMs === st.mtimeMs;
  }

  private remember(st: fsSync.Stats, sha256: string): void {
    knownInodes.set(`${st.dev}:${st.ino}`, { size: st.size, mtimeMs: st.mtimeMs, sha256 });
  }

  private readCache(rel: string, sum: string): Record<string, string> {
    try {
      const c = JSON.parse(fsSync.readFileSync(this.cacheFile(rel), "utf8"));
      if (c?.sum === sum && c.files && typeof c.files === "object") return c.files;
    } catch {
      // no cache: read the files
    }
    return {};
  }

  /**
   * An artifact without a record whose name carries its own sha256 (tools/apk.static-ARCH-SHA,
   * builders/NAME-SHA: downloads checked against a pin) is recorded when its bytes have that
   * sha256. Anything else without a record is not trusted.
   */
  private async adopt(rel: string, st: fsSync.Stats): Promise<FileRecord | undefined> {
    const pinned = /-([0-9a-f]{64})$/.exec(rel)?.[1];
    if (!pinned || !st.isFile() || !/^(tools|builders)\//.test(rel)) return undefined;
    const got = await hashCounted(this.path(rel));
    if (got !== pinned) return undefined;
    const rec: FileRecord = { type: "file", sha256: got, size: Number(st.size) };
    await writeFileAtomic(this.sumFile(rel), JSON.stringify(rec) + "\n", 0o600);
    return rec;
  }

  /**
   * Produces the artifact `rel` unless it exists and matches its record. `write` receives a
   * temporary path (a file or, with `dir`, an empty folder) beside the final one, and may return
   * the sha256 and size of the file it wrote (else the file is read once), or with `dir` the
   * folder's record as the writer derived it (a folder linked from a checked one: see
   * derivedTree), which the check after the rename must find true, or the folder is recorded by
   * reading it (recordTree) after all; the record of the
   * bytes is written, then the artifact is renamed into place; on failure it is removed. An
   * artifact that is there but damaged (or has no record) is named, removed and made again.
   * Returns whether this call built it. `seen` is given every entry of a folder it built, with
   * its lstat, as the check after the rename found it (the last one, when there are two).
   */
  async put(rel: string, write: (tmp: string) => Promise<void | { sha256: string; size: number } | { tree: TreeRecord }>, opts: { dir?: boolean; mode?: number; seen?: (name: string, st: fsSync.Stats) => void } = {}): Promise<{ path: string; built: boolean; repaired?: string[] }> {
    const final = this.path(rel);
    await this.sweepOnce();
    // A tree that is reused is then built from (linked): remember its inodes.
    const verdict = await this.check(rel, { remember: opts.dir });
    if (verdict.ok) return { path: final, built: false };
    let repaired: string[] | undefined;
    if (!verdict.missing) {
      repaired = verdict.problems;
      this.log(`${rel} is damaged, made again: ${summary(verdict.problems)}`);
      await this.journal({ event: "damaged", artifact: rel, problems: verdict.problems.slice(0, 20) });
      await this.discard(rel);
    }
    await fs.mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    const tmp = temporaryName(final);
    try {
      if (opts.dir) await fs.mkdir(tmp, { mode: opts.mode ?? 0o755 });
      const written = await write(tmp);
      let rec: ArtifactRecord;
      const derived = opts.dir && written && "tree" in written && written.tree?.type === "tree" ? written.tree : undefined;
      if (opts.dir) {
        rec = derived ?? (await recordTree(tmp));
      } else {
        if (opts.mode !== undefined) await fs.chmod(tmp, opts.mode);
        const size = (await fs.stat(tmp)).size;
        const told = written && "sha256" in written && written.size === size && /^[0-9a-f]{64}$/.test(written.sha256) ? written.sha256 : undefined;
        // Flushed while it is read for its sha256 (the kernel writes, this thread hashes).
        const fh = await fs.open(tmp, "r");
        const [, sha256] = await Promise.all([fh.sync().finally(() => fh.close()), told ?? hashCounted(tmp)]);
        rec = { type: "file", sha256, size };
      }
      // The record first: a name that exists has its record (a crash between the two leaves a
      // record of nothing, which the next put replaces).
      await writeFileAtomic(this.sumFile(rel), JSON.stringify(rec) + "\n", 0o600);
      await fs.rm(this.cacheFile(rel), { force: true });
      try {
        await fs.rename(tmp, final);
      } catch (e: any) {
        // Another process finished the same folder first. Its record was overwritten by ours
        // (the same bytes by construction, but a setup.sh may not be reproducible): record its.
        if (!(opts.dir && (e.code === "ENOTEMPTY" || e.code === "EEXIST"))) throw e;
        await removeTree(tmp);
        await writeFileAtomic(this.sumFile(rel), JSON.stringify(await recordTree(final)) + "\n", 0o600);
        return { path: final, built: false };
      }
      if (opts.dir) {
        const v = await this.check(rel, { linked: true, seen: opts.seen });
        if (!v.ok && derived) {
          // The writer's record is not the folder's: record the folder as it is (and say so).
          this.log(`${rel}: the record derived for it does not match the folder, recorded by reading it instead: ${summary(v.problems)}`);
          await writeFileAtomic(this.sumFile(rel), JSON.stringify(await recordTree(final)) + "\n", 0o600);
          await fs.rm(this.cacheFile(rel), { force: true });
          await this.check(rel, { linked: true, seen: opts.seen });
        }
      }
    } catch (e) {
      await removeTree(tmp);
      // A record of nothing is left only when the artifact is not there.
      if (!(await this.exists(rel))) await fs.rm(this.sumFile(rel), { force: true });
      throw e;
    }
    // A file's record is of the bytes just written; a folder's, the check after the rename proved.
    if (!opts.dir) provenHere.add(final);
    await this.journal({ event: "built", artifact: rel, ...(repaired ? { repaired: true } : {}) });
    return { path: final, built: true, repaired };
  }

  /**
   * Writes the record of a file that is made beside an artifact rather than by put (a rootfs
   * tree's listing), from its bytes as they are now.
   */
  async recordFile(rel: string): Promise<void> {
    const file = this.path(rel);
    const rec: FileRecord = { type: "file", sha256: await hashCounted(file), size: (await fs.stat(file)).size };
    await writeFileAtomic(this.sumFile(rel), JSON.stringify(rec) + "\n", 0o600);
    await fs.rm(this.cacheFile(rel), { force: true });
  }

  /** Moves a damaged artifact out of the way (atomically) and removes it, with its cache. */
  async discard(rel: string): Promise<void> {
    const final = this.path(rel);
    provenHere.delete(final);
    const aside = temporaryName(final);
    try {
      await fs.rename(final, aside);
    } catch (e: any) {
      if (e.code !== "ENOENT") throw e;
      return;
    }
    await removeTree(aside);
    await fs.rm(this.cacheFile(rel), { force: true });
  }

  /** Every dead temporary in the store (see TEMPORARY), with the pid that left it. */
  async deadTemporaries(): Promise<Array<{ path: string; pid: number }>> {
    const out: Array<{ path: string; pid: number }> = [];
    const visit = (dir: string, depth: number) => {
      let entries: fsSync.Dirent[];
      try {
        entries = fsSync.readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const abs = path.join(dir, e.name);
        const m = TEMPORARY.exec(e.name);
        if (m) {
          if (!alive(Number(m[1]), abs)) out.push({ path: abs, pid: Number(m[1]) });
        } else if (e.isDirectory() && depth < 3 && !isTreeArtifact(this.relOf(abs) ?? "")) {
          visit(abs, depth + 1);
        }
      }
    };
    visit(this.root, 0);
    return out;
  }

  /** Removes the dead temporaries (builds that were killed), saying so. */
  async sweep(): Promise<string[]> {
    const dead = await this.deadTemporaries();
    for (const d of dead) {
      await removeTree(d.path);
      this.log(`removed ${this.relOf(d.path)}, left by a build that was killed (pid ${d.pid} is gone)`);
    }
    if (dead.length > 0) await this.journal({ event: "swept", temporaries: dead.map((d) => this.relOf(d.path)) });
    return dead.map((d) => d.path);
  }

  private async sweepOnce(): Promise<void> {
    if (swept.has(this.root)) return;
    swept.add(this.root);
    await this.sweep().catch(() => {});
  }

  /** Small JSON records (boot results, build metadata), replaced atomically. */
  async writeRecord(rel: string, value: unknown): Promise<void> {
    await writeFileAtomic(this.path(rel), JSON.stringify(value, null, 2) + "\n");
  }

  async readRecord<T>(rel: string): Promise<T | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.path(rel), "utf8")) as T;
    } catch (e: any) {
      if (e.code === "ENOENT") return undefined;
      throw e;
    }
  }

  /** An append-only log of what was built, for people ("why did this rebuild?") and tests. */
  async journal(entry: Record<string, unknown>): Promise<void> {
    await fs.mkdir(this.root, { recursive: true });
    await fs.appendFile(path.join(this.root, "journal.jsonl"), JSON.stringify({ time: new Date().toISOString(), pid: process.pid, ...entry }) + "\n");
  }

  async readJournal(): Promise<Array<Record<string, any>>> {
    const text = await fs.readFile(path.join(this.root, "journal.jsonl"), "utf8").catch(() => "");
    return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  }

  /** The artifacts in the store: every entry of the artifact folders (listings and temporaries aside). */
  async artifacts(): Promise<string[]> {
    const out: string[] = [];
    for (const kind of ARTIFACT_KINDS) {
      const names = await fs.readdir(this.path(kind)).catch(() => [] as string[]);
      for (const n of names.sort()) if (!TEMPORARY.test(n)) out.push(`${kind}/${n}`);
    }
    return out;
  }
}

/** Problems in one line: the first few, and how many more. */
export function summary(problems: string[], max = 3): string {
  return problems.slice(0, max).join("; ") + (problems.length > max ? `; and ${problems.length - max} more` : "");
}

const isTreeArtifact = (rel: string) => /^(rootfs|rootfs-packages|goprograms)\/[0-9a-f]{64}$/.test(rel);

/** A temporary name beside `final`, which the store sweeps once its process is gone (TEMPORARY). */
export const temporaryName = (final: string) => `${final}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;

/**
 * Whether the process that named a temporary after itself may still be writing it: the pid
 * runs, and started before the temporary was made (else the pid was reused by another process).
 */
function alive(pid: number, file: string): boolean {
  try {
    process.kill(pid, 0);
  } catch (e: any) {
    if (e.code === "ESRCH") return false;
  }
  try {
    const stat = fsSync.readFileSync(`/proc/${pid}/stat`, "utf8");
    const startTicks = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
    const btime = Number(/^btime (\d+)$/m.exec(fsSync.readFileSync("/proc/stat", "utf8"))?.[1]);
    const started = (btime + startTicks / 100) * 1000;
    const st = fsSync.lstatSync(file);
    const made = Math.min(st.birthtimeMs || Infinity, st.mtimeMs, st.ctimeMs);
    // Clock ticks are 1/100 s on Linux (USER_HZ); a second of slack for rounding.
    if (Number.isFinite(started) && started > made + 1000) return false;
  } catch {
    // Not Linux, or gone meanwhile: the pid decides.
  }
  return true;
}

/** Every entry below `root`, in name order, with its lstat. */
function listTree(root: string): Array<{ name: string; st: fsSync.Stats }> {
  const out: Array<{ name: string; st: fsSync.Stats }> = [];
  const visit = (rel: string) => {
    const names = fsSync.readdirSync(rel ? path.join(root, rel) : root).sort();
    for (const n of names) {
      const name = rel ? `${rel}/${n}` : n;
      const st = fsSync.lstatSync(`${root}/${name}`);
      out.push({ name, st });
      if (st.isDirectory()) visit(name);
    }
  };
  visit("");
  return out;
}

/** The record of a folder with these entries (in recordTree's order): its counts and digest. */
export function treeRecordOf(entries: TreeEntry[]): TreeRecord {
  let files = 0;
  let bytes = 0;
  for (const e of entries) if ((e[1] & 0o170000) === 0o100000) (files++, (bytes += e[4]));
  return { type: "tree", sha256: treeDigest(entries), files, bytes, entries };
}

const treeDigest = (entries: TreeEntry[]) => {
  const h = createHash("sha256").update("ramroot-tree-record-1\n");
  for (const e of entries) h.update(JSON.stringify(e) + "\n");
  return h.digest("hex");
};

/**
 * The record of a folder: every entry's mode, owner, size and content. Hard links are read
 * once, and files this process already knows by inode (the packages tree a configured tree is
 * linked from, checked just before) are not read at all.
 */
export async function recordTree(root: string): Promise<TreeRecord> {
  const entries: TreeEntry[] = [];
  let files = 0;
  let bytes = 0;
  for (const { name, st } of listTree(root)) {
    let data = "";
    if (st.isFile()) {
      files++;
      bytes += Number(st.size);
      const k = knownInodes.get(`${st.dev}:${st.ino}`);
      if (k && k.size === st.size && k.mtimeMs === st.mtimeMs) data = k.sha256;
      else {
        data = await hashCounted(path.join(root, name));
        knownInodes.set(`${st.dev}:${st.ino}`, { size: st.size, mtimeMs: st.mtimeMs, sha256: data });
      }
    } else if (st.isSymbolicLink()) data = fsSync.readlinkSync(path.join(root, name));
    else if (!st.isDirectory()) data = String(st.rdev);
    entries.push([name, Number(st.mode), Number(st.uid), Number(st.gid), st.isFile() ? Number(st.size) : 0, data]);
  }
  return { type: "tree", sha256: treeDigest(entries), files, bytes, entries };
}

export async function removeTree(p: string): Promise<void> {
  await fs.rm(p, { recursive: true, force: true }).catch(async () => {
    // Trees copied from a rootfs can hold read-only folders: make them writable, then retry.
    await chmodTree(p);
    await fs.rm(p, { recursive: true, force: true });
  });
}

async function chmodTree(p: string): Promise<void> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await fs.chmod(p, 0o700);
  for (const e of await fs.readdir(p)) await chmodTree(path.join(p, e));
}

/**
 * Makes `file` through `write`, which writes a temporary path beside it (named so that the store
 * sweeps it when its process died): on success the temporary is flushed (unless `sync: false`)
 * and renamed into place, so a reader sees the old file or the whole new one, never a part; on
 * failure it is removed. Makes the folder. The core writes where it is told; this (and Store.put,
 * for the store's artifacts) is where ramroot's results become atomic.
 */
export async function writeAtomically<T>(file: string, write: (tmp: string) => Promise<T>, opts: { sync?: boolean } = {}): Promise<T> {
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = temporaryName(file);
  try {
    const result = await write(tmp);
    if (opts.sync !== false) {
      const fh = await fs.open(tmp, "r");
      await fh.sync().finally(() => fh.close());
    }
    await fs.rename(tmp, file);
    return result;
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/** A small file (a record, a cache entry), written atomically (not flushed: a crash costs a rebuild). */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode?: number): Promise<void> {
  await writeAtomically(file, (tmp) => fs.writeFile(tmp, data, mode === undefined ? undefined : { mode }), { sync: false });
}

/** writeFileAtomic, synchronous. */
export function writeFileAtomicSync(file: string, data: string | Uint8Array, mode?: number): void {
  const tmp = temporaryName(file);
  try {
    fsSync.mkdirSync(path.dirname(file), { recursive: true });
    fsSync.writeFileSync(tmp, data, mode === undefined ? undefined : { mode });
    fsSync.renameSync(tmp, file);
  } catch (e) {
    fsSync.rmSync(tmp, { force: true });
    throw e;
  }
}

/** For a cache: a failure only costs a read next time. */
function writeJsonSync(file: string, value: unknown): void {
  try {
    // Owner-only, as the records: those of a secrets layer and of the images that hold it too.
    writeFileAtomicSync(file, JSON.stringify(value), 0o600);
  } catch {
    // (the next check reads the file again)
  }
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** sha256File, counted in verifyStats; a small file in one read (a stream costs more than it). */
async function hashCounted(file: string): Promise<string> {
  const fd = fsSync.openSync(file, "r");
  try {
    const size = fsSync.fstatSync(fd).size;
    if (size <= 1 << 20) {
      const buf = Buffer.allocUnsafe(size);
      let n = 0;
      for (let r; n < size && (r = fsSync.readSync(fd, buf, n, size - n, n)) > 0; ) n += r;
      verifyStats.files++;
      verifyStats.bytes += n;
      return createHash("sha256").update(buf.subarray(0, n)).digest("hex");
    }
  } finally {
    fsSync.closeSync(fd);
  }
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    verifyStats.bytes += (chunk as Buffer).length;
  }
  verifyStats.files++;
  return h.digest("hex");
}

export function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}
