// Stage 2 of the rootfs, "configure": stage 1's tree as hard links (so that it costs neither
// the time nor the disk of a copy), the skeleton copied over it (owned root:root, modes kept,
// as alpine-make-rootfs's FS_SKEL_DIR + FS_SKEL_CHOWN), then setup.sh run in a chroot
// (SCRIPT_CHROOT=yes), with /proc, /sys and /dev mounted and the system folder at /mnt,
// read-only.
//
// The links share their inodes with stage 1, which must never change: the skeleton replaces
// files (unlink, then a new file), and setup.sh runs on an overlay whose lower layer is the
// tree, so whatever it writes lands in the upper layer, which is then moved into the tree
// (whiteouts as removals, opaque folders as replacements), file by file, never through a link.
//
// The mounts live in a private mount namespace (unshare --mount) whose only process is the
// chroot step (this file, run by Node: see inNamespace): whatever happens, even a killed build,
// the kernel drops the namespace and its mounts with it. So no mount can be left under the
// store. Afterwards /proc/mounts is checked all the same.
//
// setup.sh is the user's, but it runs as root on the build machine, which holds the project's
// passphrase and, in the Pulumi processes' environment, every decrypted stack secret. So it
// runs contained: in its own PID namespace, where it is PID 1, and in a mount namespace whose
// root is the tree itself (pivot_root, not chroot: a root process can leave a chroot, and there
// is no /proc/N/root or /proc/N/environ of a build process to reach), with a fresh /proc whose sysctls
// and sysrq-trigger are read-only, /sys read-only, a /dev of its own (null, zero, full, random,
// urandom, tty: no host disk), no network unless asked (ramroot:setupNetwork), an environment
// that holds nothing of the build process, and without the capabilities that would undo any
// of that (mount, mknod, ptrace, modules, raw I/O, reboot, the clock: see KEPT_CAPS).
import { spawn, spawnSync } from "node:child_process";
import * as fsSync from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { removeTree } from "../store";
import { goOwned } from "../image/golayer";
import { hostArch } from "../arch";
import { run as runProgram } from "../run";

export interface ConfigureOptions {
  /** The stage-1 tree (read only: it is linked, never written). */
  packages: string;
  /** The skeleton folder (system/root), copied over the tree. */
  skeleton?: string;
  /** setup.sh (absolute); its folder is bound at /mnt, and it runs there as ./setup.sh. */
  setup?: string;
  arch: string;
  /** An empty folder: the result. */
  out: string;
  log?(line: string): void;
  /** Seconds before setup.sh is stopped. Default 1800. */
  timeoutSeconds?: number;
  /** Give setup.sh the host's network (default: none, only its own loopback). */
  network?: boolean;
  /** Watch which of the skeleton's files setup.sh reads or changes (see watchSetup). */
  watch?: boolean;
}

/**
 * Which of the skeleton's regular files setup.sh read, wrote, removed, renamed, linked or
 * chmod-ed (or that could not be watched), by path relative to the skeleton. A skeleton file
 * outside this list reached the tree as the skeleton had it, and nothing setup.sh did depended
 * on its contents (unless it only stat()ed it: `[ -s f ]` reads no byte, and is not seen).
 */
export interface SetupAccess {
  touched: string[];
}

/** Returns whether the tree is linked to stage 1 (false: copied, where links cannot be made). */
export async function configureRootfs(o: ConfigureOptions): Promise<boolean> {
  return (await configureRootfsWatched(o)).linked;
}

/**
 * configureRootfs, and with `watch`, what setup.sh did with the skeleton's files (undefined
 * when it could not be watched here: no overlay, access times not kept, no skeleton).
 */
export async function configureRootfsWatched(o: ConfigureOptions): Promise<{ linked: boolean; access?: SetupAccess }> {
  if (o.setup) checkHost(o.arch, "the configure stage runs system/setup.sh in a chroot");
  let linked = await linkTree(o.packages, o.out);
  if (o.skeleton) await overlaySkeleton(o.skeleton, o.out);
  let access: SetupAccess | undefined;
  if (o.setup) {
    let r = await runSetup({ ...o, setup: o.setup }, linked, !!(o.watch && o.skeleton));
    if (r === "rerun") {
      // setup.sh wrote into the watched copy of the skeleton at /mnt, which is read-only in an
      // unwatched run: that run could not tell what a build gives, so setup.sh runs again, unwatched.
      o.log?.(`${path.basename(o.setup)} wrote under /mnt (read-only): it runs again, unwatched`);
      r = await runSetup({ ...o, setup: o.setup }, linked, false);
    }
    if (r === false) {
      // No overlay here (an overlay's upper layer cannot be on overlayfs, as in a container):
      // setup.sh then runs on a copy, which it may write through.
      o.log?.("no overlay filesystem here: the configure stage copies stage 1 instead of linking it");
      linked = await copyTree(o.packages, o.out);
      if (o.skeleton) await overlaySkeleton(o.skeleton, o.out);
      await runSetup({ ...o, setup: o.setup }, false, false);
    } else if (r !== "rerun") access = r.access;
  }
  // The tree's own folder becomes / in the booted system.
  await fs.chmod(o.out, 0o755);
  return { linked, access };
}

/**
 * A tree made from an earlier configured tree `from` (hard links, as from stage 1), with the
 * skeleton files `changed` written fresh from the skeleton (each replaces its link: no inode
 * shared with another tree is written). For a stage 2 that differs from `from`'s only by the
 * contents of skeleton files that setup.sh neither read nor changed there (src/rootfs/rootfs.ts).
 */
export async function reconfigureRootfs(o: { from: string; skeleton: string; changed: string[]; out: string }): Promise<boolean> {
  const linked = await linkTree(o.from, o.out);
  await overlaySkeleton(o.skeleton, o.out, o.changed);
  await fs.chmod(o.out, 0o755);
  return linked;
}

/**
 * `from` into `to` as hard links (cp -al), or as a copy where links cannot be made (another
 * filesystem, one without links).
 */
export async function linkTree(from: string, to: string): Promise<boolean> {
  if ((await runProgram("cp", ["-al", `${from}/.`, to], { allowFail: true, timeoutMs: 3600_000 })).exitCode === 0) return true;
  return copyTree(from, to);
}

/** `to` emptied (of a failed or unwanted link), then cp -a, sharing blocks (reflink) where the filesystem can. */
async function copyTree(from: string, to: string): Promise<false> {
  for (const e of await fs.readdir(to)) await removeTree(path.join(to, e));
  await runProgram("cp", ["-a", "--reflink=auto", `${from}/.`, to], { timeoutMs: 3600_000 });
  return false;
}

/**
 * The skeleton over the tree: root/etc/x becomes /etc/x, modes kept, owned by root. Each file
 * replaces what was there (--remove-destination unlinks first), so a linked file of stage 1 is
 * never written through.
 */
export async function overlaySkeleton(skeleton: string, out: string, only?: string[]): Promise<void> {
  if (only) {
    // These files alone (regular files, their folders already there): as cp -a --remove-destination.
    for (const rel of only) {
      const from = path.join(skeleton, rel);
      const to = path.join(out, rel);
      const st = await fs.lstat(from);
      if (!st.isFile()) throw new Error(`configure: ${from} is not a regular file`);
      await fs.rm(to, { force: true });
      await fs.copyFile(from, to, fsSync.constants.COPYFILE_EXCL);
      if (process.getuid?.() === 0) await fs.lchown(to, 0, 0);
      await fs.chmod(to, st.mode & 0o7777);
      await fs.utimes(to, st.atime, st.mtime);
    }
    return;
  }
  await runProgram("cp", ["-a", "--remove-destination", `${skeleton}/.`, out], { timeoutMs: 3600_000 });
  if (process.getuid?.() !== 0) return;
  for (const rel of await listTree(skeleton)) {
    const to = path.join(out, rel);
    await fs.lchown(to, 0, 0);
    // chown clears the setuid and setgid bits: give the skeleton's mode back (links have none).
    const st = await fs.lstat(path.join(skeleton, rel));
    if (!st.isSymbolicLink() && st.mode & 0o6000) await fs.chmod(to, st.mode & 0o7777);
  }
}

/**
 * The capabilities setup.sh keeps (Docker's default set, less mknod and net_raw): what package
 * administration needs (owners, modes, setcap, setuid programs), nothing that reaches past the
 * chroot. Root's other powers go, so none of the containment can be undone from inside.
 */
export const KEPT_CAPS = ["chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap", "setfcap", "net_bind_service", "sys_chroot", "audit_write"];

/**
 * Run by the host's /bin/sh as PID 1 of the new PID namespace, before it becomes setup.sh: the
 * fresh /proc's knobs read-only (or hidden); the tree made the namespace's root (pivot_root,
 * then the host's root detached, so nothing outside the tree is left to reach); then, with the
 * host's setpriv and its libraries copied to TOOLS (the tree's own /dev), the capabilities
 * dropped and setup.sh run. exec all the way: PID 1 becomes setup.sh.
 */
const TOOLS = "/dev/.ramroot";
const PID1 = `set -e
p=$1/proc
for f in sys sysrq-trigger bus fs irq; do
  [ -e "$p/$f" ] || continue
  mount --bind "$p/$f" "$p/$f"
  mount -o remount,bind,ro "$p/$f"
done
for f in kcore keys timer_list sched_debug; do [ ! -e "$p/$f" ] || mount --bind /dev/null "$p/$f"; done
cd "$1"
pivot_root . .
umount -l .
cd /mnt
t=${TOOLS}
exec $t/ld.so --library-path $t $t/setpriv --bounding-set "-all,+$3" -- /bin/sh -c 'exec "./$0"' "$2"
`;

/** The host's setpriv, its libraries and its loader, into `dir`: what runs after the pivot. */
function copyTools(dir: string): void {
  const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((f) => fsSync.existsSync(f));
  if (!setpriv) throw new Error("configure: setpriv not found: install util-linux (Debian: apt-get install util-linux)");
  const ldd = spawnSync("ldd", [setpriv], { encoding: "utf8" });
  if (ldd.status !== 0) throw new Error(`configure: ldd ${setpriv} failed: ${ldd.stderr.trim()}`);
  fsSync.mkdirSync(dir);
  fsSync.copyFileSync(setpriv, path.join(dir, "setpriv"));
  for (const line of ldd.stdout.split("\n")) {
    const lib = /=>\s+(\/\S+)/.exec(line)?.[1];
    const loader = /^\s*(\/\S+)\s+\(/.exec(line)?.[1];
    if (lib) fsSync.copyFileSync(lib, path.join(dir, path.basename(lib)));
    if (loader) fsSync.copyFileSync(loader, path.join(dir, "ld.so"));
  }
  if (!fsSync.existsSync(path.join(dir, "ld.so"))) throw new Error(`configure: no dynamic loader in ldd ${setpriv}'s output`);
  for (const f of fsSync.readdirSync(dir)) fsSync.chmodSync(path.join(dir, f), 0o755);
}

interface NamespaceJob {
  /** The tree; with `overlay`, the overlay's lower layer, and its upper, work and merged folders. */
  tree: string;
  /** The host's network (else a network namespace with nothing in it). */
  network?: boolean;
  overlay?: { upper: string; work: string; merged: string };
  /** The folder bound at /mnt, and the script's name in it. */
  bind: string;
  script: string;
  /** With `overlay`: where to write, for every folder of the upper layer, the names the merged view shows in it. */
  listings?: string;
  /** With `overlay`: the file made when the overlay cannot be mounted (setup.sh has not run then). */
  noOverlay?: string;
  /**
   * Paths under /mnt that setup.sh does not see: the Go module's files (src/image/golayer.ts), which are
   * not part of this stage's key. A folder is covered by an empty read-only tmpfs, a file by /dev/null.
   */
  hide?: string[];
  /** With `overlay`: probe that reads move access times (see watchSetup), and where to say so. */
  watch?: { probe: string; result: string; skeleton?: { at: string; from: string } };
}

/**
 * The access time given to every watched file before setup.sh runs: older than any mtime and
 * than a day, so that its first read moves it (relatime, and strictatime alike).
 */
const OLD_ATIME = new Date(1000);
const OLD_ATIME_MS = OLD_ATIME.getTime();
const PROBE = ".ramroot-atime-probe";

/** Reads `file` (through a mount) and tells whether `backing` (the same inode) shows the read. */
function probeRead(file: string, backing: string): boolean {
  try {
    fsSync.readFileSync(file);
    const moved = fsSync.statSync(backing).atimeMs > OLD_ATIME_MS;
    fsSync.unlinkSync(file);
    return moved;
  } catch {
    return false;
  }
}

const run = (cmd: string, ...args: string[]) => {
  const r = spawnSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
  if (r.status !== 0) throw new Error(`configure: ${cmd} ${args.join(" ")} failed (${r.error?.message ?? `exit ${r.status}`})`);
};

/**
 * The chroot step, inside the private mount namespace (this file run by Node under unshare):
 * the overlay, the chroot's mounts, setup.sh in its own PID (and network) namespace, then what
 * the parent needs to apply the upper layer to the tree. Resolves to setup.sh's status.
 */
async function inNamespace(job: NamespaceJob): Promise<number> {
  const ov = job.overlay;
  if (ov) {
    // Relative to the folder that holds them all: option strings cannot hold every path (a
    // comma or a colon in the store's path would split them), and these names are ours.
    const at = path.dirname(job.tree);
    const rel = (p: string) => path.relative(at, p);
    const options = `lowerdir=${rel(job.tree)},upperdir=${rel(ov.upper)},workdir=${rel(ov.work)},redirect_dir=off,metacopy=off`;
    const r = spawnSync("mount", ["-t", "overlay", "overlay", "-o", options, ov.merged], { stdio: "ignore", cwd: at });
    if (r.status !== 0) {
      fsSync.writeFileSync(job.noOverlay!, "");
      return 1;
    }
  }
  const m = ov?.merged ?? job.tree;
  const probes: Record<string, boolean> = {};
  // Before anything else reads it: a file of the upper layer read through the overlay.
  if (ov && job.watch) probes.tree = probeRead(path.join(m, job.watch.probe), path.join(ov.upper, job.watch.probe));
  const made = ["proc", "sys", "dev", "mnt"].filter((d) => !fsSync.existsSync(path.join(m, d)));
  const mounts: string[] = [];
  let status = 1;
  try {
    for (const d of made) fsSync.mkdirSync(path.join(m, d));
    const mount = (at: string, ...args: string[]) => (run("mount", ...args, path.join(m, at)), mounts.push(path.join(m, at)));
    // pivot_root needs the new root to be a mount point: the overlay is one, a plain tree is bound on itself.
    if (!ov) mount("", "--bind", m);
    mount("sys", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs");
    // A /dev of its own: the devices a package script may use, no disk of the host.
    mount("dev", "-t", "tmpfs", "-o", "mode=0755,nosuid,size=16m", "devtmp");
    for (const [name, major, minor] of [["null", 1, 3], ["zero", 1, 5], ["full", 1, 7], ["random", 1, 8], ["urandom", 1, 9], ["tty", 5, 0]] as const)
      run("mknod", "-m", "0666", path.join(m, "dev", name), "c", String(major), String(minor));
    for (const [name, target] of [["fd", "/proc/self/fd"], ["stdin", "/proc/self/fd/0"], ["stdout", "/proc/self/fd/1"], ["stderr", "/proc/self/fd/2"]])
      fsSync.symlinkSync(target, path.join(m, "dev", name));
    for (const d of ["pts", "shm"]) fsSync.mkdirSync(path.join(m, "dev", d));
    fsSync.chmodSync(path.join(m, "dev", "shm"), 0o1777);
    copyTools(path.join(m, TOOLS));
    mount("mnt", "--bind", job.bind);
    run("mount", "-o", "remount,bind,ro", path.join(m, "mnt"));
    const skel = job.watch?.skeleton;
    if (skel) {
      // The watched copy of the skeleton, over the read-only one (reads through a read-only mount move no access time).
      mount(path.join("mnt", skel.at), "--bind", skel.from);
      probes.mnt = probeRead(path.join(m, "mnt", skel.at, job.watch!.probe), path.join(skel.from, job.watch!.probe));
    }
    if (job.watch) fsSync.writeFileSync(job.watch.result, JSON.stringify(probes));
    for (const rel of job.hide ?? []) {
      const st = fsSync.lstatSync(path.join(m, "mnt", rel), { throwIfNoEntry: false });
      if (st?.isDirectory()) mount(path.join("mnt", rel), "-t", "tmpfs", "-o", "ro,size=4k,mode=0755", "ramroot-hidden");
      else if (st?.isFile()) mount(path.join("mnt", rel), "--bind", "/dev/null");
    }
    const args = ["--pid", "--uts", "--ipc", "--fork", "--kill-child", `--mount-proc=${path.join(m, "proc")}`, ...(job.network ? [] : ["--net"]), "--", "/bin/sh", "-c", PID1, "pid1", m, job.script, KEPT_CAPS.join(",+")];
    status = await new Promise<number>((resolve) => {
      const child = spawn("unshare", args, { stdio: ["ignore", "inherit", "inherit"] });
      // Stopped (a timeout, the engine gone): the namespace's PID 1 dies with unshare, and with it every process of setup.sh.
      const stop = () => child.kill("SIGKILL");
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
      child.on("error", (e) => (console.error(`configure: unshare: ${e.message}`), resolve(127)));
      child.on("exit", (code, signal) => resolve(code ?? 128 + (signal ? (os.constants.signals as Record<string, number>)[signal] ?? 9 : 9)));
    });
  } finally {
    for (const at of mounts.reverse()) spawnSync("umount", ["-l", at]);
    // Folders made here for the chroot are its business, not the system's.
    for (const d of made) fsSync.rmSync(path.join(m, d), { recursive: true, force: true });
  }
  if (!ov) return status;
  // Which names each folder of the upper layer holds in the merged view: an opaque folder (one
  // removed and made again) hides everything below it, and only the merged view tells.
  const listings: Record<string, string[]> = {};
  const visit = (rel: string) => {
    listings[rel] = fsSync.readdirSync(path.join(m, rel));
    for (const e of fsSync.readdirSync(path.join(ov.upper, rel), { withFileTypes: true })) if (e.isDirectory()) visit(rel ? `${rel}/${e.name}` : e.name);
  };
  visit("");
  fsSync.writeFileSync(job.listings!, JSON.stringify(listings));
  // Lazily, as the chroot's own mounts: a daemon that setup.sh left running must not fail the build.
  run("umount", "-l", m);
  return status;
}

if (require.main === module && process.argv[2] === "--in-namespace") {
  inNamespace(JSON.parse(process.argv[3])).then(
    (status) => process.exit(status),
    (e) => {
      console.error((e as Error).message);
      process.exit(1);
    },
  );
}

/**
 * setup.sh in a chroot of the tree: through an overlay when the tree is linked to stage 1 (its
 * writes then reach the tree by applyUpper), straight on the tree when it is a copy. False when
 * an overlay was wanted and cannot be mounted here (nothing has run); "rerun" when a watched run
 * wrote under /mnt (nothing applied); else, when watched and the host keeps access times, what
 * setup.sh did with the skeleton's files.
 */
async function runSetup(o: ConfigureOptions & { setup: string }, overlay: boolean, watch: boolean): Promise<false | "rerun" | { access?: SetupAccess }> {
  const { execa } = await import("execa");
  const name = path.basename(o.setup);
  o.log?.(`running ${name} in a chroot`);
  const scratch = await fs.mkdtemp(`${o.out}.setup-`);
  try {
    const ov = overlay ? { upper: path.join(scratch, "upper"), work: path.join(scratch, "work"), merged: path.join(scratch, "merged") } : undefined;
    for (const d of ov ? [ov.upper, ov.work, ov.merged] : []) await fs.mkdir(d);
    const watched = ov && watch && o.skeleton ? await watchSetup(o.skeleton, o.out, ov.upper, path.dirname(o.setup), scratch) : undefined;
    const job: NamespaceJob = {
      tree: o.out, overlay: ov, network: o.network, bind: path.dirname(o.setup), hide: goOwned(path.dirname(o.setup)), script: name, listings: ov && path.join(scratch, "listings.json"), noOverlay: ov && path.join(scratch, "no-overlay"),
      watch: watched?.job,
    };
    // A clean environment: nothing of the build host (passphrases, tokens) reaches the script.
    const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/root", LANG: "C", TERM: "dumb", RAMROOT_ARCH: o.arch };
    // SIGTERM on a timeout: the namespace's node stops setup.sh's whole PID namespace at once.
    const sub = execa("unshare", ["--mount", "--propagation", "private", process.execPath, __filename, "--in-namespace", JSON.stringify(job)], {
      env,
      extendEnv: false,
      all: true,
      buffer: false,
      reject: false,
      stdin: "ignore",
      timeout: (o.timeoutSeconds ?? 1800) * 1000,
      killSignal: "SIGTERM",
      forceKillAfterDelay: 5000,
    });
    // Shown as it runs, line by line; the end kept for the error.
    const lines: string[] = [];
    let partial = "";
    const shown = (line: string) => {
      lines.push(line);
      if (lines.length > 60) lines.shift();
      o.log?.(`${name}: ${line}`);
    };
    sub.all!.on("data", (d: Buffer) => {
      const parts = (partial + d.toString()).split("\n");
      partial = parts.pop()!;
      parts.forEach(shown);
    });
    const res = await sub;
    if (partial) shown(partial);
    const left = [...(await mountsUnder(o.out)), ...(await mountsUnder(scratch))];
    if (left.length > 0) throw new Error(`configure: mounts left after ${name}: ${left.join(", ")} (umount them before removing the folder)`);
    if (job.noOverlay && fsSync.existsSync(job.noOverlay)) return false;
    if (res.exitCode !== 0 || res.failed) {
      const why = res.timedOut ? `did not finish in ${o.timeoutSeconds ?? 1800} s (ramroot:setupTimeout)` : `failed (exit ${res.exitCode ?? res.signal})`;
      throw new Error(`configure: ${name} ${why} in the chroot; its output:\n${lines.join("\n")}`);
    }
    const access = watched && (await watched.finish());
    if (access === "rerun") return "rerun";
    if (watched && !access) o.log?.(`configure: reads do not move access times here (noatime?): ${name} reruns on every skeleton edit`);
    if (ov) await applyUpper(ov.upper, o.out, JSON.parse(await fs.readFile(job.listings!, "utf8")));
    return { access: access || undefined };
  } finally {
    await removeTree(scratch);
  }
}


/** A file's identity and everything a change moves (not its access time). */
const stampOf = (st: fsSync.Stats) => `${st.ino}:${st.mode}:${st.uid}:${st.gid}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

/**
 * Sets up watching what setup.sh does with the skeleton's regular files. Reads through an
 * overlay never move a lower file's access time (its lower layers are mounted noatime), nor do
 * reads through a read-only mount, so each skeleton file the tree holds is copied into the
 * overlay's upper layer (the same bytes, mode, owner and times, its folders as the tree has them:
 * what applyUpper then moves into the tree is what was there), and the skeleton that setup.sh
 * sees at /mnt is a copy bound read-write over the read-only one; every copy gets an access
 * time of 1970. Afterwards, `finish` compares: a file whose access time moved was read; one
 * whose inode, mode, owner, size, mtime or ctime changed, or that is gone, was changed
 * (written, renamed, removed, linked, chmod-ed). A file that cannot be watched this way (its
 * place in the tree is not a file under folders) counts as touched. A probe read before
 * setup.sh runs proves that this host moves access times; `finish` gives undefined when it does
 * not, and "rerun" when setup.sh wrote under /mnt (read-only in an unwatched run).
 */
async function watchSetup(skeleton: string, tree: string, upper: string, bind: string, scratch: string): Promise<{ job: NonNullable<NamespaceJob["watch"]>; finish(): Promise<SetupAccess | "rerun" | undefined> }> {
  const touched = new Set<string>();
  const planted = new Map<string, string>();
  const files: string[] = [];
  const isDirIn = (root: string, rel: string) => fsSync.lstatSync(path.join(root, rel), { throwIfNoEntry: false })?.isDirectory() ?? false;
  for (const rel of await listTree(skeleton)) {
    if (!(await fs.lstat(path.join(skeleton, rel))).isFile()) continue;
    const parts = rel.split("/");
    const parentsOk = parts.slice(0, -1).every((_, i) => isDirIn(tree, parts.slice(0, i + 1).join("/")));
    if (parentsOk && fsSync.lstatSync(path.join(tree, rel), { throwIfNoEntry: false })?.isFile()) files.push(rel);
    else touched.add(rel);
  }
  // One cp for all: the files with their folders (--parents, attributes kept), as the tree has them.
  for (let i = 0; i < files.length; i += 500) await runProgram("cp", ["-a", "--parents", "--", ...files.slice(i, i + 500), upper], { cwd: tree, timeoutMs: 600_000 });
  for (const rel of files) {
    const f = path.join(upper, rel);
    const st = fsSync.lstatSync(f);
    fsSync.utimesSync(f, OLD_ATIME, st.mtime);
    planted.set(rel, stampOf(fsSync.lstatSync(f)));
  }
  fsSync.writeFileSync(path.join(upper, PROBE), "probe\n");
  fsSync.utimesSync(path.join(upper, PROBE), OLD_ATIME, new Date());
  // The skeleton at /mnt, when it is there (system/root under system/).
  const at = path.relative(bind, skeleton);
  let mnt: { at: string; from: string; before: Map<string, string> } | undefined;
  if (at && !at.startsWith("..") && !path.isAbsolute(at)) {
    const from = path.join(scratch, "mnt-skeleton");
    await runProgram("cp", ["-a", `${skeleton}/.`, from], { timeoutMs: 600_000 });
    const before = new Map<string, string>();
    for (const rel of ["", ...(await listTree(from))]) {
      const f = rel ? path.join(from, rel) : from;
      let st = fsSync.lstatSync(f);
      if (st.isFile()) {
        fsSync.utimesSync(f, OLD_ATIME, st.mtime);
        st = fsSync.lstatSync(f);
      }
      before.set(rel, rel ? stampOf(st) : `${st.mode}:${st.uid}:${st.gid}`);
    }
    fsSync.writeFileSync(path.join(from, PROBE), "probe\n");
    fsSync.utimesSync(path.join(from, PROBE), OLD_ATIME, new Date());
    mnt = { at, from, before };
  }
  const result = path.join(scratch, "watch.json");
  return {
    job: { probe: PROBE, result, ...(mnt ? { skeleton: { at: mnt.at, from: mnt.from } } : {}) },
    async finish() {
      let probes: Record<string, boolean>;
      try {
        probes = JSON.parse(await fs.readFile(result, "utf8"));
      } catch {
        return undefined;
      }
      if (mnt) {
        const seen = new Set<string>();
        for (const rel of ["", ...(await listTree(mnt.from))]) {
          const st = fsSync.lstatSync(rel ? path.join(mnt.from, rel) : mnt.from);
          seen.add(rel);
          if ((rel ? stampOf(st) : `${st.mode}:${st.uid}:${st.gid}`) !== mnt.before.get(rel)) return "rerun";
          if (rel && st.isFile() && st.atimeMs > OLD_ATIME_MS) touched.add(rel);
        }
        if (seen.size !== mnt.before.size) return "rerun";
      }
      if (!probes.tree || (mnt && !probes.mnt)) return undefined;
      for (const [rel, stamp] of planted) {
        const st = fsSync.lstatSync(path.join(upper, rel), { throwIfNoEntry: false });
        if (!st?.isFile() || stampOf(st) !== stamp || st.atimeMs > OLD_ATIME_MS) touched.add(rel);
      }
      return { touched: [...touched].sort() };
    },
  };
}

const isWhiteout = (st: fsSync.Stats) => st.isCharacterDevice() && st.rdev === 0;

/**
 * Moves an overlay's upper layer into its lower tree, so that the tree becomes what the merged
 * view showed. Every name the upper layer holds replaces the tree's (a rename of the new file,
 * never a write into the old one, which may be a link to stage 1); a folder in both is merged
 * into, then given the upper folder's owner, mode and times; and the tree loses, in each folder
 * of the upper layer, the names the merged view no longer showed (whiteouts, opaque folders).
 */
export async function applyUpper(upper: string, tree: string, listings: Record<string, string[]>, rel = ""): Promise<void> {
  const names = listings[rel];
  // Without the merged view of a folder, nothing of it can be removed safely.
  if (!names) throw new Error(`configure: no listing of /${rel} from the overlay; the configure stage cannot apply setup.sh's changes`);
  const shown = new Set(names);
  const dir = path.join(tree, rel);
  for (const name of await fs.readdir(dir)) if (!shown.has(name)) await removeTree(path.join(dir, name));
  for (const name of await fs.readdir(path.join(upper, rel))) {
    const from = path.join(upper, rel, name);
    const to = path.join(dir, name);
    const st = await fs.lstat(from);
    if (isWhiteout(st)) continue;
    const there = await fs.lstat(to).catch(() => undefined);
    if (st.isDirectory() && there?.isDirectory()) {
      await applyUpper(upper, tree, listings, rel ? `${rel}/${name}` : name);
      await fs.lchown(to, st.uid, st.gid);
      await fs.chmod(to, st.mode & 0o7777);
      await fs.utimes(to, st.atime, st.mtime);
      continue;
    }
    if (there) await removeTree(to);
    await fs.rename(from, to);
  }
}

/** Mount points at or under `dir`, from /proc/mounts. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const real = await fs.realpath(dir).catch(() => path.resolve(dir));
  const text = await fs.readFile("/proc/mounts", "utf8");
  return text
    .split("\n")
    .map((l) => l.split(" ")[1])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === real || m.startsWith(real + "/"));
}

export { hostArch } from "../arch";

/**
 * Why this host cannot run `arch` programs in a chroot as root, or undefined when it can. A
 * foreign architecture needs a qemu-user interpreter registered with binfmt_misc with the F
 * (fix binary) flag, so that it works inside a chroot that does not contain it.
 */
export function hostProblem(arch: string, opts: { uid?: number; hostArch?: string; binfmtDir?: string } = {}): string | undefined {
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  if (uid !== 0) return "it needs root (chroot and mounts): run the build as root, or in a privileged container (docker run --privileged ...)";
  const host = opts.hostArch ?? hostArch();
  if (arch === host) return undefined;
  const dir = opts.binfmtDir ?? "/proc/sys/fs/binfmt_misc";
  const fix = `on Debian: apt-get install qemu-user-static binfmt-support (in a container, also: mount -t binfmt_misc binfmt_misc ${dir} && update-binfmts --enable qemu-${arch})`;
  let entry: string;
  try {
    entry = fsSync.readFileSync(path.join(dir, `qemu-${arch}`), "utf8");
  } catch {
    return `building ${arch} on this ${host} host runs ${arch} programs, which needs qemu-user registered with binfmt_misc (${dir}/qemu-${arch} is missing): ${fix}`;
  }
  const status = fsSync.existsSync(path.join(dir, "status")) ? fsSync.readFileSync(path.join(dir, "status"), "utf8").trim() : "enabled";
  if (status !== "enabled" || !/^enabled/m.test(entry)) return `qemu-${arch} is registered with binfmt_misc but disabled: update-binfmts --enable qemu-${arch}`;
  if (!/^flags:.*F/m.test(entry)) return `qemu-${arch} is registered with binfmt_misc without the F flag, so it cannot run inside a chroot: install qemu-user-static (its binfmt entries have F)`;
  return undefined;
}

export function checkHost(arch: string, what: string): void {
  const problem = hostProblem(arch);
  if (problem) throw new Error(`${what}: ${problem}`);
}

async function listTree(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    out.push(r);
    if (e.isDirectory()) out.push(...(await listTree(dir, r)));
  }
  return out;
}
