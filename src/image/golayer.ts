// The system's own Go programs: a Go module in the system folder (system/go.mod, programs under
// system/cmd/NAME/) is built for the image's architecture, and every main package under cmd/
// becomes /usr/local/bin/NAME in the image, in a layer of its own (components/goprograms.ts):
// a small newc archive appended to the initramfs after the rootfs's segments, as the secrets
// layer is. So a change to a program rebuilds that layer, its segment and the UKI, and nothing of
// the rootfs: the configure stage's hash leaves the module's files out (goOwned), and the Go
// layer's hash covers only them, the target architecture and the toolchain.
//
// What belongs to the module (goOwned): go.mod, go.sum, go.work(.sum), the .go files at the top,
// vendor/, and every folder (outside the skeleton, root/) that holds a .go file, whole: a
// package's embedded files live in its folder or below (//go:embed cannot reach out of it).
//
// The build (buildGoPrograms), as the original NAS does it, made reproducible: GOOS=linux,
// GOARCH=arm64|amd64, CGO_ENABLED=0, -trimpath, -buildvcs=false, GOTOOLCHAIN=auto (go.mod's
// toolchain and go lines select the Go that builds, a newer local one wins), GOAMD64=v1 and
// GOARM64=v8.0 (the baselines, whatever the environment says), GOWORK=off. The toolchain it
// selects (`go env GOVERSION` in the module, with that environment) is part of the hash. The
// build cache (GOCACHE) is ramroot's own, outside the project: ~/.cache/ramroot/go-build.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fsSync from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { NewcRecord } from "./newc";
import type { Compression } from "./compress-worker";
import { ARCHES, archProblem, type Arch } from "../arch";
import { run } from "../run";


/** Where the programs go in the image. */
export const BIN_DIR = "usr/local/bin";

/** The oldest Go that lets go.mod select the toolchain (GOTOOLCHAIN). */
const MIN_GO = [1, 21];

/** ramroot's cache folder (RAMROOT_CACHE, else ~/.cache/ramroot), as scripts/env.sh has it. */
export function ramrootCache(env: NodeJS.ProcessEnv = process.env): string {
  return env.RAMROOT_CACHE || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "ramroot");
}

/** The Go build cache ramroot uses: reused by every build, every stack and every store. */
export const goBuildCache = (env: NodeJS.ProcessEnv = process.env) => path.join(ramrootCache(env), "go-build");

/** A problem with the Go module or the Go installation: `file` is what to fix (relative to the system folder, or "" for the host). */
export class GoError extends Error {
  constructor(readonly file: string, message: string) {
    super(message);
  }
}

const TOP_FILES = ["go.mod", "go.sum", "go.work", "go.work.sum"];
/** Folders of the system folder that are never the module's: the skeleton (the image's own files). */
const NOT_MODULE = ["root"];

/** Whether the system folder holds a Go module. */
export function hasGoModule(systemDir: string): boolean {
  return fsSync.existsSync(path.join(systemDir, "go.mod"));
}

/**
 * What of the system folder belongs to the Go module, as paths relative to it (files, and
 * folders taken whole), sorted: what the configure stage leaves out of its hash and the Go
 * layer hashes. Empty without a go.mod.
 */
export function goOwned(systemDir: string): string[] {
  if (!hasGoModule(systemDir)) return [];
  const out: string[] = [];
  const top = fsSync.readdirSync(systemDir, { withFileTypes: true });
  for (const e of top) {
    if (TOP_FILES.includes(e.name) || (e.isFile() && e.name.endsWith(".go"))) out.push(e.name);
    else if (e.isDirectory() && e.name === "vendor") out.push(e.name);
  }
  const visit = (rel: string) => {
    const entries = fsSync.readdirSync(path.join(systemDir, rel), { withFileTypes: true });
    if (entries.some((e) => e.isFile() && e.name.endsWith(".go"))) {
      out.push(rel);
      return;
    }
    for (const e of entries) if (e.isDirectory()) visit(`${rel}/${e.name}`);
  };
  for (const e of top) if (e.isDirectory() && e.name !== "vendor" && !NOT_MODULE.includes(e.name)) visit(e.name);
  return out.sort();
}

/** Every file (and symlink) of the module, relative to the system folder, in byte order. */
export function moduleFiles(systemDir: string): string[] {
  const out: string[] = [];
  const visit = (rel: string) => {
    const st = fsSync.lstatSync(path.join(systemDir, rel));
    if (!st.isDirectory()) {
      out.push(rel);
      return;
    }
    for (const n of fsSync.readdirSync(path.join(systemDir, rel))) visit(`${rel}/${n}`);
  };
  for (const rel of goOwned(systemDir)) visit(rel);
  return out.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/** [path, kind, content]: kind x (executable), f (file) or l (symlink); content a sha256 or a link target. */
export function moduleDigest(systemDir: string): Array<[string, string, string]> {
  return moduleFiles(systemDir).map((rel) => {
    const abs = path.join(systemDir, rel);
    const st = fsSync.lstatSync(abs);
    if (st.isSymbolicLink()) return [rel, "l", fsSync.readlinkSync(abs)];
    if (!st.isFile()) throw new GoError(rel, `${rel} is neither a file nor a folder: the Go module holds files only`);
    return [rel, st.mode & 0o111 ? "x" : "f", createHash("sha256").update(fsSync.readFileSync(abs)).digest("hex")];
  });
}

/** The text of a Go file before its package clause, comments removed, and the clause's name. */
function packageClause(text: string): { name?: string; ignored: boolean } {
  let header = "";
  let i = 0;
  let ignored = false;
  while (i < text.length) {
    if (text.startsWith("//", i)) {
      const end = text.indexOf("\n", i);
      const line = text.slice(i, end < 0 ? text.length : end);
      // //go:build ignore (or any constraint naming ignore): not part of the package.
      if (/^\/\/go:build\b.*\bignore\b/.test(line)) ignored = true;
      i = end < 0 ? text.length : end + 1;
    } else if (text.startsWith("/*", i)) {
      const end = text.indexOf("*/", i + 2);
      i = end < 0 ? text.length : end + 2;
    } else if (/\s/.test(text[i])) {
      i++;
    } else {
      header = text.slice(i, i + 200);
      break;
    }
  }
  return { name: /^package\s+([A-Za-z_][A-Za-z0-9_]*)/.exec(header)?.[1], ignored };
}

/**
 * The programs of the module: each folder directly under cmd/ is one, and must be a main
 * package (its non-test .go files say `package main`). Read from the files, for preview; the
 * build asks `go list` as well.
 */
export function commands(systemDir: string, shown = "system"): string[] {
  const cmd = path.join(systemDir, "cmd");
  if (!fsSync.statSync(cmd, { throwIfNoEntry: false })?.isDirectory())
    throw new GoError("cmd", `${shown}/go.mod is a Go module without programs: put each program in a folder of ${shown}/cmd/ (${shown}/cmd/NAME/main.go becomes /${BIN_DIR}/NAME), or remove go.mod`);
  const out: string[] = [];
  for (const e of fsSync.readdirSync(cmd, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!e.isDirectory()) continue;
    const rel = `cmd/${e.name}`;
    const goFiles = fsSync.readdirSync(path.join(cmd, e.name)).filter((n) => n.endsWith(".go") && !n.endsWith("_test.go")).sort();
    const names = new Map<string, string>();
    for (const f of goFiles) {
      const { name, ignored } = packageClause(fsSync.readFileSync(path.join(cmd, e.name, f), "utf8"));
      if (!ignored && name) names.set(name, `${rel}/${f}`);
    }
    if (names.size === 0)
      throw new GoError(rel, `${shown}/${rel} is not a main package: it has no Go files. Each folder of ${shown}/cmd/ is a program (${shown}/${rel}/main.go with package main becomes /${BIN_DIR}/${e.name}): add one, or move the folder out of cmd/`);
    if (!names.has("main")) {
      const [pkg, file] = [...names][0];
      throw new GoError(rel, `${shown}/${rel} is not a main package (${shown}/${file} says package ${pkg}): each folder of ${shown}/cmd/ is a program, built into /${BIN_DIR}/${e.name}: make it package main with a func main, or move it out of cmd/ (e.g. to ${shown}/internal/${e.name})`);
    }
    out.push(e.name);
  }
  if (out.length === 0) throw new GoError("cmd", `${shown}/cmd/ holds no program: put each in a folder of its own (${shown}/cmd/NAME/main.go becomes /${BIN_DIR}/NAME)`);
  return out;
}

/** How to get Go, for every message that says it is missing or too old. */
export const GET_GO = "run `npm run setup` (it installs Debian's golang-go where no Go is there, and with it fetches the Go toolchain that the example's go.mod names from the Go module proxy into ~/.cache/ramroot/go; `go-bin` there says where), or install Go 1.21 or later from https://go.dev/dl/ and put its bin/ on PATH";

const versionOf = (go: string, env: NodeJS.ProcessEnv): string | undefined => {
  try {
    return execFileSync(go, ["env", "GOVERSION"], { env: { ...env, GOTOOLCHAIN: "local" }, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 30_000 }).trim();
  } catch {
    return undefined;
  }
};

/** What versionOf said of each go binary (path, inode, size, mtime, PATH), in this process. */
const versions = new Map<string, string>();

const newEnough = (v: string) => {
  const m = /^go(\d+)\.(\d+)/.exec(v);
  return !!m && (Number(m[1]) > MIN_GO[0] || (Number(m[1]) === MIN_GO[0] && Number(m[2]) >= MIN_GO[1]));
};

/**
 * The go command to build with: the first `go` on PATH that is Go 1.21 or later, else the one
 * `npm run setup` provisioned (its folder in ~/.cache/ramroot/go-bin). Throws a GoError saying
 * how to get one.
 */
export function findGo(env: NodeJS.ProcessEnv = process.env): { go: string; version: string } {
  const candidates: string[] = [];
  for (const dir of (env.PATH ?? "").split(path.delimiter)) if (dir) candidates.push(path.join(dir, "go"));
  const pointer = path.join(ramrootCache(env), "go-bin");
  const provisioned = fsSync.existsSync(pointer) ? fsSync.readFileSync(pointer, "utf8").trim() : "";
  if (provisioned) candidates.push(path.join(provisioned, "go"));
  const old: string[] = [];
  for (const go of candidates) {
    const st = fsSync.statSync(go, { throwIfNoEntry: false });
    if (!st?.isFile() || !(st.mode & 0o111)) continue;
    // Asked once per binary as it is (a check asks for the hash, then for the toolchain shown).
    const stamp = `${go}\0${st.ino}\0${st.size}\0${st.mtimeMs}\0${env.PATH ?? ""}`;
    const version = versions.get(stamp) ?? versionOf(go, env);
    if (version) versions.set(stamp, version);
    if (version && newEnough(version)) return { go, version };
    old.push(`${go} (${version ?? "does not run"})`);
  }
  if (old.length > 0)
    throw new GoError("", `building the system's Go programs needs Go 1.21 or later (go.mod selects the toolchain through GOTOOLCHAIN=auto), and this machine has only ${old.join(", ")}: ${GET_GO}`);
  throw new GoError("", `building the system's Go programs needs Go, and there is none on PATH${provisioned ? ` nor in ${provisioned} (${pointer})` : ""}: ${GET_GO}`);
}

/** The environment of every go command ramroot runs: what makes the bytes (see the top of this file). */
export function goEnv(arch: string, cache: string, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const problem = archProblem(arch, "ramroot:arch");
  if (problem) throw new GoError("", problem);
  const goarch = ARCHES[arch as Arch].goarch;
  return {
    ...env,
    GOOS: "linux",
    GOARCH: goarch,
    CGO_ENABLED: "0",
    GOTOOLCHAIN: "auto",
    GOFLAGS: "-buildvcs=false",
    GOAMD64: "v1",
    GOARM64: "v8.0",
    GOWORK: "off",
    GOCACHE: cache,
  };
}

/**
 * The toolchain go.mod selects (`go env GOVERSION` in the module with GOTOOLCHAIN=auto): the
 * local go, or the newer one go.mod's toolchain (or go) line asks for, which the go command
 * downloads from the module proxy the first time (checked against the checksum database).
 */
export async function selectedToolchain(go: string, moduleDir: string, env: NodeJS.ProcessEnv, shown = "system"): Promise<string> {
  const r = await run(go, ["env", "GOVERSION"], { cwd: moduleDir, env, timeoutMs: 15 * 60_000, allowFail: true });
  const v = r.stdout.trim();
  if (r.exitCode !== 0 || !/^go\d/.test(v))
    throw new GoError("go.mod", `${shown}/go.mod: the Go toolchain it selects cannot be had (GOTOOLCHAIN=auto, ${go} env GOVERSION): ${(r.stderr || r.stdout).trim() || `exit ${r.exitCode}`}`);
  return v;
}

export interface GoBuild {
  /** Program names, each /usr/local/bin/NAME. */
  programs: string[];
  toolchain: string;
  seconds: number;
}

/**
 * Builds every main package under cmd/ into `out`/usr/local/bin/. A compile error throws with
 * the compiler's messages (file:line, relative to the system folder). `out` must be empty.
 */
export async function buildGoPrograms(o: { module: string; arch: string; out: string; cache?: string; go?: string; shown?: string; log?: (line: string) => void }): Promise<GoBuild> {
  const shown = o.shown ?? "system";
  const go = o.go ?? findGo().go;
  const env = goEnv(o.arch, o.cache ?? goBuildCache());
  await fs.mkdir(env.GOCACHE!, { recursive: true });
  const t0 = performance.now();
  const toolchain = await selectedToolchain(go, o.module, env, shown);
  // What go itself says the packages are, for this GOOS/GOARCH.
  const list = await run(go, ["list", "-e", "-f", "{{.Dir}}\t{{.Name}}\t{{if .Error}}{{.Error}}{{end}}", "./cmd/..."], { cwd: o.module, env, timeoutMs: 30 * 60_000, allowFail: true });
  if (list.exitCode !== 0) throw new GoError("cmd", `go list ./cmd/... in ${shown}/ failed:\n${(list.stderr || list.stdout).trim()}`);
  const mains: string[] = [];
  const errors: string[] = [];
  for (const line of list.stdout.split("\n").filter(Boolean)) {
    const [dir, name, error] = line.split("\t");
    const rel = path.relative(o.module, dir).split(path.sep).join("/");
    if (error) errors.push(error);
    else if (name === "main") mains.push(rel);
    else if (path.posix.dirname(rel) === "cmd") throw new GoError(rel, `${shown}/${rel} is not a main package (package ${name}): each folder of ${shown}/cmd/ is a program, built into /${BIN_DIR}/${path.basename(rel)}: make it package main, or move it out of cmd/`);
  }
  if (errors.length > 0) throw new GoError("cmd", `the Go programs in ${shown}/ do not build:\n${errors.join("\n")}`);
  const names = new Map<string, string>();
  for (const rel of mains) {
    const n = path.posix.basename(rel);
    if (names.has(n)) throw new GoError(rel, `${shown}/${names.get(n)} and ${shown}/${rel} would both be /${BIN_DIR}/${n}: rename one folder`);
    names.set(n, rel);
  }
  if (mains.length === 0) throw new GoError("cmd", `${shown}/cmd/ holds no main package: put each program in a folder of its own (${shown}/cmd/NAME/main.go becomes /${BIN_DIR}/NAME)`);
  const bin = path.join(o.out, BIN_DIR);
  await fs.mkdir(bin, { recursive: true });
  o.log?.(`building ${mains.map((m) => `./${m}`).join(" ")} with ${toolchain} for linux/${env.GOARCH}`);
  const build = await run(go, ["build", "-trimpath", "-buildvcs=false", "-o", bin + path.sep, ...mains.map((m) => `./${m}`)], { cwd: o.module, env, timeoutMs: 30 * 60_000, allowFail: true });
  if (build.exitCode !== 0) throw new GoError("cmd", `go build in ${shown}/ failed (${toolchain}, linux/${env.GOARCH}):\n${(build.stderr || build.stdout).trim()}`);
  for (const n of names.keys()) {
    const f = path.join(bin, n);
    if (!fsSync.statSync(f, { throwIfNoEntry: false })?.isFile()) throw new GoError(names.get(n)!, `go build wrote no ${f}`);
    await fs.chmod(f, 0o755);
  }
  // Folders as the image has them: 0755 (the umask must not decide).
  for (let d = bin; d !== o.out; d = path.dirname(d)) await fs.chmod(d, 0o755);
  return { programs: [...names.keys()].sort(), toolchain, seconds: (performance.now() - t0) / 1000 };
}

/** The folders the layer holds, as every distribution has them: 0755, root's. */
const LAYER_DIRS = ["usr", "usr/local", BIN_DIR];

/**
 * The layer as a compressed newc archive (the initramfs's compression): usr, usr/local and
 * usr/local/bin (0755 root), then each program (0755 root), every time 0.
 */
export async function writeGoSegment(tree: string, out: string, compression: Compression, level?: number): Promise<void> {
  const records: NewcRecord[] = [];
  const rec = (name: string, mode: number, size: number, source?: string): NewcRecord => ({
    name, mode, uid: 0, gid: 0, nlink: source ? 1 : 2, mtime: 0, ino: records.length + 1, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size, source,
  });
  for (const d of LAYER_DIRS) records.push(rec(d, 0o040755, 0));
  const names = (await fs.readdir(path.join(tree, BIN_DIR))).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  for (const n of names) {
    const src = path.join(tree, BIN_DIR, n);
    const st = await fs.lstat(src);
    if (!st.isFile()) throw new Error(`go layer: ${src} is not a file`);
    records.push(rec(`${BIN_DIR}/${n}`, 0o100755, st.size, src));
  }
  const lvl = compression === "none" ? 0 : level ?? (compression === "zstd" ? 3 : 6);
  // Loaded here: configure's namespace helper imports this file for goOwned alone.
  const { runSegment } = require("./compress-worker") as typeof import("./compress-worker");
  await runSegment({ records, compression, level: lvl, out });
}

/**
 * Why the layer cannot go over this rootfs, or undefined: the layer's folder entries set
 * usr, usr/local and usr/local/bin to 0755 root (the kernel applies an archive's folder entry to
 * a folder that exists), so a rootfs where one of them is something else would be changed.
 */
export async function layerProblem(rootfs: string): Promise<string | undefined> {
  for (const d of LAYER_DIRS) {
    const st = await fs.lstat(path.join(rootfs, d)).catch(() => undefined);
    if (!st) continue;
    if (!st.isDirectory()) return `/${d} in the rootfs is not a folder (${st.isSymbolicLink() ? "a symlink" : "a file"}), and the Go programs go into /${BIN_DIR}: make it a folder (skeleton or setup.sh)`;
    if ((st.mode & 0o7777) !== 0o755 || st.uid !== 0 || st.gid !== 0)
      return `/${d} in the rootfs is mode ${(st.mode & 0o7777).toString(8)} owner ${st.uid}:${st.gid}, and the Go programs' layer makes it 0755 root:root: make it 0755 root's (skeleton or setup.sh)`;
  }
  return undefined;
}
