// The root filesystem, in two stages, each an artifact of the store named by the hash of its
// inputs, so that editing the skeleton reruns only the second:
//
//   1. packages   rootfs-packages/<hash1>/  the declared packages installed by alpine-make-rootfs
//                 (src/rootfs/alpine.ts), or a base tree extracted from a tarball or copied from a
//                 folder (named by the hash of its contents).
//   2. configure  rootfs/<hash2>/  stage 1 as hard links, the skeleton over it, setup.sh run in
//                 a chroot (src/rootfs/configure.ts). hash2 covers hash1, so a package change reruns both.
//
// Each tree has its listing beside it (<tree>.listing, src/image/walk.ts), taken once it is final.
import type { Stats } from "node:fs";
import { readlinkSync, statSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { sha256, sha256File, treeRecordOf, writeFileAtomic, type Store, type TreeEntry, type TreeRecord } from "../store";
import { BUILDER, DEFAULT_BRANCH, DEFAULT_MIRROR, makeAlpineRootfs } from "./alpine";
import { configureRootfsWatched, reconfigureRootfs } from "./configure";
import type { WalkRecord } from "../image/walk";
import { readListing, record as walkEntry, walk, writeListing } from "../image/walk";
import { hashTree } from "./treehash";
import { mountEntries, parseFstab } from "./fstab";
import { goOwned } from "../image/golayer";
import { run } from "../run";

/** Where stage 1 comes from. */
export type Source =
  | { kind: "alpine"; packages: string[]; branch?: string; mirror?: string; repositories?: string[]; apk?: string; builderUrl?: string; builderSha256?: string; keysDir?: string; refresh?: string }
  | { kind: "folder"; path: string }
  | { kind: "tarball"; path: string };

export interface RootfsSpec {
  arch: string;
  source: Source;
  /** The skeleton folder (system/root). */
  skeleton?: string;
  /** setup.sh, run in a chroot with its folder at /mnt. */
  setup?: string;
  /** The system folder (absolute): hashed for stage 2, minus packages (stage 1) and secrets (their own layer). */
  system?: string;
  /** Where tree hashes remember file hashes (src/rootfs/treehash.ts), so a no-op preview reads nothing. */
  hashCache?: string;
  /** setup.sh gets the host's network (default: none). */
  setupNetwork?: boolean;
  /** Seconds before setup.sh is stopped (default 1800). */
  setupTimeout?: number;
}

export const TARBALL = /\.(tar|tar\.gz|tgz|tar\.xz|txz)$/;

/** A base given in config: a tarball or a folder. */
export function baseSource(p: string): Source {
  return TARBALL.test(p) ? { kind: "tarball", path: p } : { kind: "folder", path: p };
}

/** The stage-1 key: everything that decides which packages end up in the tree. */
export async function packagesHash(spec: RootfsSpec): Promise<string> {
  const s = spec.source;
  switch (s.kind) {
    case "folder":
      return hashTree(s.path, { cacheDir: spec.hashCache });
    case "tarball":
      return sha256(JSON.stringify(["rootfs-packages/tarball/1", await sha256File(s.path)]));
    case "alpine":
      // The apk program is a tool, like cp: named, not hashed (a host's apk is upgraded in place).
      return sha256(JSON.stringify([
        "rootfs-packages/alpine/2", spec.arch, ...(s.repositories ? [s.repositories] : [s.branch ?? DEFAULT_BRANCH, s.mirror ?? DEFAULT_MIRROR]), s.packages,
        s.builderSha256 ?? BUILDER.sha256, s.keysDir ? await hashTree(s.keysDir, { cacheDir: spec.hashCache }) : "", s.refresh ?? "", s.apk ?? "",
      ]));
  }
}

/** The configured tree's format: the first thing its hash covers, and the Rootfs resource's version. */
export const ROOTFS_FORMAT = "rootfs/3";

/** The stage-2 key: stage 1, the skeleton, setup.sh and whatever else of system/ setup.sh can read at /mnt. */
export async function configureHash(spec: RootfsSpec, stage1: string): Promise<string> {
  const skel = spec.skeleton ? await hashTree(spec.skeleton, { rootOwned: true, cacheDir: spec.hashCache }) : "";
  // The Go module's files are the Go layer's (src/image/golayer.ts), not this stage's.
  const sys = spec.system ? await hashTree(spec.system, { rootOwned: true, exclude: ["packages", "secrets", ...goOwned(spec.system)], cacheDir: spec.hashCache }) : "";
  const setup = spec.setup ? sha256(await fs.readFile(spec.setup)) : "";
  // With the network, setup.sh may fetch things: another build.
  return sha256(JSON.stringify([ROOTFS_FORMAT, spec.arch, stage1, skel, sys, setup, ...(spec.setupNetwork ? ["network"] : [])]));
}

export interface Built {
  path: string;
  built: boolean;
  /** Stage 2 made from this earlier configured tree (its hash) without running setup.sh. */
  from?: string;
  /** Stage 1 as buildConfigured made or proved it; absent where stage 2 did not need it. */
  packages?: Built;
}

/** Stage 1 for stage 2: where it is, and how to make or prove it (buildPackages) when it is needed. */
export interface Stage1 {
  path: string;
  ready(): Promise<Built>;
}

/** Stage 1 as buildConfigured takes it: made or proved (buildPackages) on first need, once. */
export function stage1Of(store: Store, spec: RootfsSpec, hash1: string, log?: (l: string) => void): Stage1 {
  let made: Promise<Built> | undefined;
  return { path: store.path(`rootfs-packages/${hash1}`), ready: () => (made ??= buildPackages(store, spec, hash1, log)) };
}

/**
 * Stage 1: the tree to configure, always in the store. A base folder is copied in: stage 2
 * links to stage 1's files, and a link must never lead to a file that someone may edit.
 */
export async function buildPackages(store: Store, spec: RootfsSpec, hash1: string, log?: (l: string) => void): Promise<Built> {
  const s = spec.source;
  const res = await store.put(`rootfs-packages/${hash1}`, async (out) => {
    if (s.kind === "folder") {
      log?.(`copying ${s.path}`);
      await run("cp", ["-a", `${s.path}/.`, out], { timeoutMs: 3600_000 });
    } else if (s.kind === "tarball") {
      log?.(`extracting ${s.path}`);
      await run("tar", ["-xpf", s.path, "-C", out, "--numeric-owner"], { timeoutMs: 3600_000 });
    } else {
      await makeAlpineRootfs({ ...s, arch: spec.arch, out, store, log });
    }
  }, { dir: true });
  await ensureListing(store, res);
  return res;
}

/**
 * Stage 2: rootfs/<hash2>, and its listing beside it. When setup.sh runs, what it did with the
 * skeleton's files is recorded beside the tree (setupFile); a later stage 2 that differs from a
 * recorded one only by the contents of skeleton files setup.sh neither read nor changed there is
 * made from that tree (links, those files written fresh), without running setup.sh again, and
 * then stage 1 is neither read nor checked (`stage1.ready()` is called only where it is used:
 * two walks of it less on every such edit; the earlier tree, linked from it, is checked).
 */
export async function buildConfigured(store: Store, spec: RootfsSpec, stage1: Stage1, hash2: string, log?: (l: string) => void): Promise<Built> {
  const inputs = spec.setup && spec.skeleton && spec.system ? await setupInputs(spec, path.basename(stage1.path)) : undefined;
  let linkedFrom: Map<string, WalkRecord> | undefined;
  let packages: Built | undefined;
  const fromStage1 = async () => {
    packages = await stage1.ready();
    linkedFrom = await stage1Records(packages.path);
    return packages.path;
  };
  let record: SetupRecord | undefined;
  let from: string | undefined;
  const seen = new Map<string, Stats>();
  const res = await store.put(`rootfs/${hash2}`, async (out) => {
    const earlier = inputs && (await findReusable(store, inputs));
    let derived: TreeRecord | undefined;
    if (earlier) {
      from = path.basename(earlier.tree);
      log?.(`configured from ${path.basename(earlier.tree).slice(0, 12)} without running setup.sh: it neither read nor changed ${earlier.changed.join(", ")}`);
      await reconfigureRootfs({ from: earlier.tree, skeleton: spec.skeleton!, changed: earlier.changed, out });
      record = { ...inputs, touched: earlier.touched };
      // Its files keep the stamps they have in the earlier tree's listing (stage 1's, or setup.sh's).
      const earlierRecords = readListing(listingFile(earlier.tree), earlier.tree);
      if (earlierRecords) linkedFrom = new Map(earlierRecords.map((r) => [r.name, r]));
      else await fromStage1();
    } else {
      const { access } = await configureRootfsWatched({ packages: await fromStage1(), skeleton: spec.skeleton, setup: spec.setup, arch: spec.arch, out, log, network: spec.setupNetwork, timeoutSeconds: spec.setupTimeout, watch: !!inputs });
      if (inputs && access) record = { ...inputs, touched: access.touched };
    }
    const made = await makeMountPoints(out, log);
    // The stage itself reads the final /etc/fstab (the mount points): a skeleton fstab counts as read.
    if (record) {
      const fstab = path.relative(out, await resolveInRoot(out, "etc/fstab"));
      if (fstab in record.skeleton) record.touched = [...new Set([...record.touched, fstab])].sort();
    }
    // Made from a tree the store has just checked: its record, but for the files written fresh,
    // is this tree's (put checks that it is, and reads the tree where it is not).
    if (earlier && made.length === 0) {
      const rec = await store.record(store.relOf(earlier.tree) ?? "");
      derived = rec?.type === "tree" ? await derivedTree(rec, out, earlier.changed) : undefined;
    }
    return derived && { tree: derived };
  }, { dir: true, seen: (name, st) => void seen.set(name, st) });
  // Made from an earlier tree: its listing from what the store's check of it just saw (no walk).
  if (!(res.built && from && (await listingFromSeen(store, res.path, seen, linkedFrom)))) await ensureListing(store, res, linkedFrom);
  if (res.built && record) {
    const rel = store.relOf(setupFile(res.path));
    if (rel) {
      await writeFileAtomic(store.path(rel), JSON.stringify(record) + "\n", 0o644);
      await store.recordFile(rel);
    }
  }
  // Linking moved the ctime of every file of stage 1: its check is remembered again now, from
  // what this process just read and recorded (no file is read), or the next check reads it all.
  // (Not when stage 1 was not used: made from an earlier tree, stage 1's files, which that tree
  // shares, are read once by the next check of stage 1, the next time setup.sh runs. Nor the
  // earlier tree's: the next edit is made from this newer tree.)
  const rel1 = store.relOf(stage1.path);
  if (res.built && packages && rel1) await store.check(rel1, { linked: true });
  return { ...res, ...(res.built && from ? { from } : {}), ...(packages ? { packages } : {}) };
}

/** Names in recordTree's order: folder by folder (a folder's entries right after it), each folder's names sorted. */
function inTreeOrder(a: string, b: string): boolean {
  const [x, y] = [a.split("/"), b.split("/")];
  for (let i = 0; i < x.length; i++) {
    if (i === y.length) return false;
    if (x[i] !== y[i]) return x[i] < y[i];
  }
  return x.length < y.length;
}

/**
 * The store's record (recordTree) of `tree`, made by links from a tree whose record is
 * `earlier` (checked just before: every entry's type, mode, owner and content as the record
 * says), with the regular files `changed` written fresh: the earlier entries (each in the form
 * recordTree gives its type), those files as they are now (lstat, sha256). Undefined when the
 * earlier record cannot stand for it: not in recordTree's order, or a changed file it does not
 * list as a file. What it does not prove (that the link made every entry, with its mode and
 * owner) Store.put's check after the rename does, reading the tree where it finds otherwise.
 */
export async function derivedTree(earlier: TreeRecord, tree: string, changed: string[]): Promise<TreeRecord | undefined> {
  const fresh = new Map(changed.map((rel) => [rel, true]));
  const entries: TreeEntry[] = [];
  let prev: string | undefined;
  for (const e of earlier.entries) {
    if (!Array.isArray(e) || e.length !== 6 || typeof e[0] !== "string" || typeof e[1] !== "number") return undefined;
    const [name, mode, uid, gid, size, data] = e;
    if (prev !== undefined && !inTreeOrder(prev, name)) return undefined;
    prev = name;
    const type = mode & 0o170000;
    if (fresh.delete(name)) {
      if (type !== 0o100000) return undefined;
      const abs = path.join(tree, name);
      const st = await fs.lstat(abs);
      if (!st.isFile()) return undefined;
      entries.push([name, st.mode, st.uid, st.gid, st.size, await sha256File(abs)]);
    } else if (type === 0o100000) entries.push([name, mode, uid, gid, size, data]);
    else if (type === 0o040000) entries.push([name, mode, uid, gid, 0, ""]);
    else entries.push([name, mode, uid, gid, 0, data]);
  }
  return fresh.size === 0 ? treeRecordOf(entries) : undefined;
}

/** Where what setup.sh did with the skeleton is recorded: beside the tree (rootfs/<hash2>.setup.json). */
export const setupFile = (tree: string) => `${tree.replace(/\/+$/, "")}.setup.json`;

const SETUP_RECORD = "ramroot-setup-access-1";

/** What decides whether a recorded run of setup.sh stands for a new one: all but the skeleton's contents. */
interface SetupInputs {
  format: string;
  arch: string;
  /** Stage 1's hash (its folder's name). */
  stage1: string;
  /** sha256 of setup.sh. */
  setup: string;
  /** The system folder as setup.sh sees it at /mnt, less the skeleton (whose files are below). */
  system: string;
  network: boolean;
  /** The skeleton, by path: treehash's fingerprint (mode, owner, and the content's sha256, link target or device). */
  skeleton: Record<string, string>;
}

interface SetupRecord extends SetupInputs {
  /** Skeleton paths (regular files) setup.sh read or changed, and etc/fstab (which the stage reads). */
  touched: string[];
}

async function setupInputs(spec: RootfsSpec, stage1: string): Promise<SetupInputs> {
  const sysFp = new Map<string, string>();
  // The same options as configureHash's (its per-file cache then serves both).
  await hashTree(spec.system!, { rootOwned: true, exclude: ["packages", "secrets", ...goOwned(spec.system!)], cacheDir: spec.hashCache, fingerprints: sysFp });
  const skelFp = new Map<string, string>();
  await hashTree(spec.skeleton!, { rootOwned: true, cacheDir: spec.hashCache, fingerprints: skelFp });
  const at = path.relative(spec.system!, spec.skeleton!);
  const inside = (rel: string) => !!at && !at.startsWith("..") && (rel === at || rel.startsWith(`${at}/`));
  const rest = [...sysFp].filter(([rel]) => !inside(rel)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    format: SETUP_RECORD, arch: spec.arch, stage1, setup: sha256(await fs.readFile(spec.setup!)), system: sha256(JSON.stringify(rest)), network: !!spec.setupNetwork,
    skeleton: Object.fromEntries([...skelFp].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
  };
}

/** A fingerprint's parts: mode, owner, and what (f<size> <sha256> for a file). */
const fpParts = (fp: string) => {
  const [mode, owner, ...what] = fp.split(" ");
  return { mode, owner, file: what[0]?.startsWith("f") ?? false };
};

/**
 * A configured tree of the store made by setup.sh with these inputs but for the contents of
 * some skeleton files that it neither read nor changed, with its record and its bytes proven;
 * the one with the fewest such files.
 */
export async function findReusable(store: Store, want: SetupInputs): Promise<{ tree: string; changed: string[]; touched: string[] } | undefined> {
  const names = await fs.readdir(store.path("rootfs")).catch(() => [] as string[]);
  const found: Array<{ hash: string; changed: string[]; touched: string[]; mtimeMs: number }> = [];
  for (const n of names) {
    const hash = /^([0-9a-f]{64})\.setup\.json$/.exec(n)?.[1];
    if (!hash) continue;
    let r: SetupRecord;
    let mtimeMs: number;
    try {
      mtimeMs = (await fs.stat(store.path(`rootfs/${n}`))).mtimeMs;
      r = JSON.parse(await fs.readFile(store.path(`rootfs/${n}`), "utf8"));
    } catch {
      continue;
    }
    if (r?.format !== want.format || r.arch !== want.arch || r.stage1 !== want.stage1 || r.setup !== want.setup || r.system !== want.system || r.network !== want.network) continue;
    if (!r.skeleton || !Array.isArray(r.touched)) continue;
    const had = Object.keys(r.skeleton);
    const has = Object.keys(want.skeleton);
    if (had.length !== has.length) continue;
    const touched = new Set(r.touched);
    const changed: string[] = [];
    let ok = true;
    for (const rel of has) {
      const before = r.skeleton[rel];
      const now = want.skeleton[rel];
      if (before === undefined) ok = false;
      if (!ok || before === now) continue;
      const [a, b] = [fpParts(before), fpParts(now)];
      // Only a regular file's contents may differ, and only of a file setup.sh did not touch.
      if (!(a.file && b.file && a.mode === b.mode && a.owner === b.owner) || touched.has(rel)) ok = false;
      else changed.push(rel);
    }
    if (ok && changed.length > 0) found.push({ hash, changed, touched: r.touched, mtimeMs });
  }
  // The newest first among equals: its check is remembered from its own build (a tree linked
  // from since has had its files' ctimes moved, and its check would read them again).
  found.sort((a, b) => a.changed.length - b.changed.length || b.mtimeMs - a.mtimeMs);
  for (const f of found) {
    // Built from only when proven: the record, and the tree against the record of its bytes.
    if (!(await store.has(`rootfs/${f.hash}.setup.json`))) continue;
    if (!(await store.check(`rootfs/${f.hash}`, { remember: true })).ok) continue;
    return { tree: store.path(`rootfs/${f.hash}`), changed: f.changed, touched: f.touched };
  }
  return undefined;
}

/**
 * The listing of a new tree from the lstat of each of its entries that the store's check after
 * put saw (`seen`: every name the tree holds), as walk (src/image/walk.ts) makes its records:
 * the same records, in the same order, stamps carried from `linkedFrom` alike, so the same file.
 * False (nothing written) where it cannot be that: no entries seen, a name that is not UTF-8 or
 * that holds a character from U+D800 up (walk compares such names by their bytes); then walk.
 */
export async function listingFromSeen(store: Store, tree: string, seen: Map<string, Stats>, linkedFrom?: Map<string, WalkRecord>): Promise<boolean> {
  const rel = store.relOf(listingFile(tree));
  if (!rel || seen.size === 0) return false;
  const records = recordsFromSeen(tree, seen, linkedFrom);
  if (!records) return false;
  await store.discard(rel);
  await writeListing(listingFile(tree), tree, records);
  await store.recordFile(rel);
  return true;
}

const S_IFMT = 0o170000;

/** walk's records of `tree` from lstats already taken (see listingFromSeen), or undefined. */
export function recordsFromSeen(tree: string, seen: Map<string, Stats>, linkedFrom?: Map<string, WalkRecord>): WalkRecord[] | undefined {
  const root = path.resolve(tree);
  // Walk's order: each folder's names sorted (by their bytes, which is JavaScript's order for
  // names without a character from U+D800 up), a folder's entries right after it.
  const children = new Map<string, string[]>();
  for (const name of seen.keys()) {
    if (/[\uD800-\uFFFF]/.test(name)) return undefined;
    const cut = name.lastIndexOf("/");
    const dir = cut < 0 ? "" : name.slice(0, cut);
    const list = children.get(dir);
    if (list) list.push(name.slice(cut + 1));
    else children.set(dir, [name.slice(cut + 1)]);
  }
  const names: string[] = [];
  const visit = (dir: string) => {
    for (const n of children.get(dir)?.sort() ?? []) {
      const name = dir ? `${dir}/${n}` : n;
      names.push(name);
      if (seen.get(name)!.isDirectory()) visit(name);
    }
  };
  visit("");
  if (names.length !== seen.size) return undefined;
  const out: WalkRecord[] = [{ ...walkEntry(".", statSync(root)), mode: 0o040755, uid: 0, gid: 0 }];
  const links = new Map<string, number>();
  for (const name of names) {
    const s = seen.get(name)!;
    const type = s.mode & S_IFMT;
    // A socket is left out, as walk leaves it out.
    if (type === 0o140000) continue;
    const r = walkEntry(name, s);
    if (type === 0o100000) {
      r.size = s.size;
      r.source = `${root}/${name}`;
      const base = linkedFrom?.get(name);
      const st = base?.stamp;
      r.stamp = st && st[0] === s.dev && st[1] === s.ino && st[2] === s.mtimeMs && base!.size === s.size ? st : [s.dev, s.ino, s.mtimeMs, s.ctimeMs];
      if (s.nlink > 1) {
        r.linkKey = `${s.dev}:${s.ino}`;
        links.set(r.linkKey, (links.get(r.linkKey) ?? 0) + 1);
      }
    } else if (type === 0o120000) {
      r.data = readlinkSync(`${root}/${name}`, { encoding: "buffer" });
      r.size = r.data.length;
    }
    out.push(r);
  }
  for (const r of out) if (r.linkKey && links.get(r.linkKey) === 1) r.linkKey = undefined;
  return out;
}

/** The tree's listing, made again when the tree is new or its listing is missing or damaged. */
async function ensureListing(store: Store, res: Built, linkedFrom?: Map<string, WalkRecord>): Promise<void> {
  const rel = store.relOf(listingFile(res.path));
  if (!res.built && rel && (await store.has(rel))) return;
  if (rel) await store.discard(rel);
  const records = await recordListing(res.path, linkedFrom);
  if (records && rel) await store.recordFile(rel);
}

/**
 * Every mount point named in the tree's final /etc/fstab (after setup.sh), made where missing
 * (0755, root's), following the tree's own symlinks; a line whose mount point cannot be made
 * is an error that names it.
 */
export async function makeMountPoints(tree: string, log?: (l: string) => void): Promise<string[]> {
  const fstab = await resolveInRoot(tree, "etc/fstab");
  const text = await fs.readFile(fstab, "utf8").catch((e) => (e.code === "ENOENT" ? "" : Promise.reject(e)));
  const made: string[] = [];
  for (const e of mountEntries(parseFstab(text))) {
    const where = `/etc/fstab:${e.line} (${e.spec} on ${e.file})`;
    if (!e.file.startsWith("/")) throw new Error(`configure: ${where}: the mount point is not an absolute path: write it as /${e.file}`);
    const dir = await resolveInRoot(tree, e.file);
    const st = await fs.stat(dir).catch(() => undefined);
    if (st?.isDirectory()) continue;
    if (st) throw new Error(`configure: ${where}: ${e.file} is a file in the image, not a folder: remove it (skeleton or setup.sh) or mount elsewhere`);
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o755 });
    } catch (err: any) {
      throw new Error(`configure: ${where}: cannot make the mount point (${err.code ?? err.message}): a part of ${e.file} is a file in the image`);
    }
    await fs.chmod(dir, 0o755);
    made.push(e.file);
  }
  if (made.length > 0) log?.(`made the mount points ${made.join(", ")} (from /etc/fstab)`);
  return made;
}

/**
 * Stage 1's records by path, from its own listing (made now if it has none), for the listing of
 * a tree linked from it: they hold the stamps from before any link changed its files' ctimes,
 * so each new configured tree keeps them for the files it left alone, and their initramfs
 * segments keep their fingerprints.
 */
export async function stage1Records(stage1: string): Promise<Map<string, WalkRecord> | undefined> {
  const records = readListing(listingFile(stage1), stage1) ?? (await recordListing(stage1));
  return records && new Map(records.map((r) => [r.name, r]));
}

/**
 * The tree's listing (src/image/walk.ts), taken once it is final, so that the initramfs reads one
 * file instead of walking the tree again. Beside the tree, not in it (it would end up in the
 * initramfs). Without it (a crash just before it is written, a name the walk refuses) the
 * initramfs walks the tree: slower, never wrong.
 */
export async function recordListing(tree: string, linkedFrom?: Map<string, WalkRecord>): Promise<WalkRecord[] | undefined> {
  try {
    const records = await walk(tree, { linkedFrom });
    await writeListing(listingFile(tree), tree, records);
    return records;
  } catch {
    // The initramfs walks the tree instead, and reports what it finds wrong there.
    return undefined;
  }
}

/** Where a tree's listing is kept: beside it. */
export const listingFile = (tree: string) => `${tree.replace(/\/+$/, "")}.listing`;

/**
 * The real path of `rel` inside the tree `root`, following symlinks as the booted system
 * would: an absolute link target is inside the tree, never on the build host.
 */
export async function resolveInRoot(root: string, rel: string): Promise<string> {
  let parts = rel.split("/").filter((p) => p && p !== ".");
  const done: string[] = [];
  for (let hops = 0; parts.length > 0; ) {
    const part = parts.shift()!;
    if (part === "..") {
      done.pop();
      continue;
    }
    const abs = path.join(root, ...done, part);
    const st = await fs.lstat(abs).catch(() => undefined);
    if (st?.isSymbolicLink()) {
      if (++hops > 40) throw new Error(`${rel}: too many levels of symbolic links in ${root}`);
      const target = await fs.readlink(abs);
      if (target.startsWith("/")) done.length = 0;
      parts = [...target.split("/").filter((p) => p && p !== "."), ...parts];
      continue;
    }
    done.push(part);
  }
  return path.join(root, ...done);
}
