// The declared system: a folder of plain files, as on the original NAS.
//
//   system/packages   apk packages, one per line (`#` comments, blank lines); stage 1 installs them
//   system/root/      the skeleton: root/etc/x becomes /etc/x, modes kept, owned by root
//   system/setup.sh   optional: runs in a chroot of the new system after the packages
//                     (rc-update add ..., small edits), with system/ at /mnt (read-only)
//
// Everything here is checked before anything is built (during `pulumi preview`), and every
// error names the file and the fix.
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** Folders whose files are executed by the system, so each file in them must be executable. */
export const EXEC_DIRS = ["etc/init.d", "etc/local.d", "etc/periodic/*", "etc/profile.d", "usr/local/bin", "usr/local/sbin"];

/** A problem with the declared system: `file` is what to fix. */
export class SystemError extends Error {
  constructor(readonly file: string, message: string) {
    super(message);
  }
}

export interface SystemFiles {
  dir: string;
  skeleton: string;
  packages: string;
  setup: string;
}

export function systemFiles(dir: string): SystemFiles {
  return { dir, skeleton: path.join(dir, "root"), packages: path.join(dir, "packages"), setup: path.join(dir, "setup.sh") };
}

// apk's dependency syntax: an optional `!` (conflict), a name (with a provider prefix such as
// so: or cmd:), an optional @tag (a pinned repository), an optional version constraint
// (=, <, >, <=, >=, ~, =~, ><). Nothing a shell would interpret can match.
const APK_DEP = /^!?[A-Za-z0-9][A-Za-z0-9+_.:-]*(@[A-Za-z0-9_.-]+)?(?:(?:=|<|>|<=|>=|~|=~|><)[A-Za-z0-9+_.~*-]+)?$/;

/**
 * The package list: one dependency per line; `#` starts a comment; blank lines are ignored.
 * With `tags` (the @tags that ramroot:repositories defines), a `name@tag` line must name one of
 * them: apk would otherwise refuse it only once the build runs.
 */
export function parsePackages(text: string, file = "packages", tags?: Set<string>): string[] {
  const out: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/#.*/, "").trim();
    if (!line) return;
    const where = `${file}:${i + 1}`;
    if (/\s/.test(line)) throw new SystemError(file, `${where}: "${line}" holds several words: put one package per line`);
    const m = APK_DEP.exec(line);
    if (!m)
      throw new SystemError(file, `${where}: "${line}" is not an apk package name (letters, digits, + _ . - and an optional version such as =1.2-r0 or >=1.2): fix the line or make it a # comment`);
    if (tags && m[1] && !tags.has(m[1]))
      throw new SystemError(file, `${where}: "${line}" pins the repository ${m[1]}, which ramroot:repositories does not define: add "${m[1]} URL" to ramroot:repositories, or remove ${m[1]}`);
    out.push(line);
  });
  return out;
}

export async function readPackages(file: string, shown = file, tags?: Set<string>): Promise<string[]> {
  const text = await fs.readFile(file, "utf8").catch((e) => {
    if (e.code === "ENOENT") throw new SystemError(shown, `${shown} does not exist: list the Alpine packages there, one per line (alpine-base, linux-lts, ...)`);
    throw e;
  });
  return parsePackages(text, shown, tags);
}

/**
 * ramroot:repositories, the lines of /etc/apk/repositories: `[@tag ]URL`. Returns the tags it
 * defines; throws naming the first bad line.
 */
export function repositoryTags(lines: string[]): Set<string> {
  const tags = new Set<string>();
  lines.forEach((line, i) => {
    const m = /^(?:(@[A-Za-z0-9_.-]+)\s+)?((?:https?|ftp|file):\/\/\S+|\/\S*)$/.exec(line.trim());
    if (!m) throw new SystemError("repositories", `ramroot:repositories line ${i + 1} "${line}" is not "[@tag ]URL" (an http(s)://, ftp://, file:// URL or an absolute path, e.g. "@community https://dl-cdn.alpinelinux.org/alpine/edge/community")`);
    if (m[1]) tags.add(m[1]);
  });
  if (lines.length === 0) throw new SystemError("repositories", "ramroot:repositories is empty: list at least one repository, or leave it unset to use ramroot:mirror and ramroot:branch");
  return tags;
}

/** The files under `skeleton` that the system would execute but that are not executable. */
export async function notExecutable(skeleton: string, dirs: string[] = EXEC_DIRS): Promise<string[]> {
  const bad: string[] = [];
  const folders = new Set<string>();
  for (const d of dirs) {
    const clean = d.replace(/^\/+|\/+$/g, "");
    if (!clean.endsWith("/*")) folders.add(clean);
    else {
      const parent = clean.slice(0, -2);
      for (const e of await fs.readdir(path.join(skeleton, parent), { withFileTypes: true }).catch(() => [])) if (e.isDirectory()) folders.add(`${parent}/${e.name}`);
    }
  }
  for (const rel of [...folders].sort()) {
    for (const e of await fs.readdir(path.join(skeleton, rel), { withFileTypes: true }).catch(() => [])) {
      const st = await fs.stat(path.join(skeleton, rel, e.name)).catch(() => undefined);
      if (st?.isFile() && (st.mode & 0o111) === 0) bad.push(`${rel}/${e.name}`);
    }
  }
  return bad;
}

/** The shebang rule: setup.sh is run as a program in the chroot, so it needs `#!` and +x. */
export async function checkSetup(file: string, shown = file): Promise<boolean> {
  const st = await fs.stat(file).catch(() => undefined);
  if (!st) return false;
  if (!st.isFile()) throw new SystemError(shown, `${shown} is not a file: make it a shell script (#!/bin/sh -e) or remove it`);
  const head = (await fs.readFile(file)).subarray(0, 2).toString("latin1");
  if (head !== "#!") throw new SystemError(shown, `${shown} does not start with a shebang: make its first line #!/bin/sh -e`);
  if ((st.mode & 0o111) === 0) throw new SystemError(shown, `${shown} is not executable: chmod +x ${shown}`);
  return true;
}

export interface DeclaredSystem {
  skeleton?: string;
  /** Undefined when the system does not declare packages (an offline base tree). */
  packages?: string[];
  /** Absolute path of setup.sh when the system has one. */
  setup?: string;
}

/**
 * Checks the system folder `dir` (absolute; `shown` is how errors name it): the skeleton
 * exists, the files in executed folders are executable, the package list parses (required
 * when `needPackages`), setup.sh (optional) has a shebang and is executable.
 */
export async function validateSystem(dir: string, opts: { shown?: string; needPackages?: boolean; execDirs?: string[]; tags?: Set<string> } = {}): Promise<DeclaredSystem> {
  const shown = opts.shown ?? dir;
  const f = systemFiles(dir);
  const show = (p: string) => path.join(shown, path.relative(dir, p));
  if (!(await fs.stat(dir).catch(() => undefined))?.isDirectory())
    throw new SystemError(shown, `the system folder ${shown} does not exist: create it (root/, packages, setup.sh) or set ramroot:system`);
  if (!(await fs.stat(f.skeleton).catch(() => undefined))?.isDirectory())
    throw new SystemError(show(f.skeleton), `the skeleton folder ${show(f.skeleton)} does not exist: create it (root/etc/x becomes /etc/x in the system)`);
  const bad = await notExecutable(f.skeleton, [...EXEC_DIRS, ...(opts.execDirs ?? [])]);
  if (bad.length > 0) {
    const files = bad.map((b) => show(path.join(f.skeleton, b)));
    throw new SystemError(files[0], `${files.join(", ")} ${bad.length === 1 ? "is" : "are"} in a folder whose files the system executes but not executable: chmod +x ${files.join(" ")}`);
  }
  const hasPackages = await fs.stat(f.packages).then(() => true, () => false);
  const packages = hasPackages || opts.needPackages ? await readPackages(f.packages, show(f.packages), opts.tags) : undefined;
  const setup = (await checkSetup(f.setup, show(f.setup))) ? f.setup : undefined;
  return { skeleton: f.skeleton, packages, setup };
}
