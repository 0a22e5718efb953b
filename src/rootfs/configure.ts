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
}

/** Returns whether the tree is linked to stage 1 (false: copied, where links cannot be made). */
export async function configureRootfs(o: ConfigureOptions): Promise<boolean> {
  if (o.setup) checkHost(o.arch, "the configure stage runs system/setup.sh in a chroot");
  let linked = await linkTree(o.packages, o.out);
  if (o.skeleton) await overlaySkeleton(o.skeleton, o.out);
  if (o.setup && !(await runSetup({ ...o, setup: o.setup }, linked))) {
    // No overlay here (an overlay's upper layer cannot be on overlayfs, as in a container):
    // setup.sh then runs on a copy, which it may write through.
    o.log?.("no overlay filesystem here: the configure stage copies stage 1 instead of linking it");
    linked = await copyTree(o.packages, o.out);
    if (o.skeleton) await overlaySkeleton(o.skeleton, o.out);
    await runSetup({ ...o, setup: o.setup }, false);
  }
  // The tree's own folder becomes / in the booted system.
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
export async function overlaySkeleton(skeleton: string, out: string): Promise<void> {
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
 * an overlay was wanted and cannot be mounted here (nothing has run).
 */
async function runSetup(o: ConfigureOptions & { setup: string }, overlay: boolean): Promise<boolean> {
  const { execa } = await import("execa");
  const name = path.basename(o.setup);
  o.log?.(`running ${name} in a chroot`);
  const scratch = await fs.mkdtemp(`${o.out}.setup-`);
  try {
    const ov = overlay ? { upper: path.join(scratch, "upper"), work: path.join(scratch, "work"), merged: path.join(scratch, "merged") } : undefined;
    for (const d of ov ? [ov.upper, ov.work, ov.merged] : []) await fs.mkdir(d);
    const job: NamespaceJob = {
      tree: o.out, overlay: ov, network: o.network, bind: path.dirname(o.setup), hide: goOwned(path.dirname(o.setup)), script: name, listings: ov && path.join(scratch, "listings.json"), noOverlay: ov && path.join(scratch, "no-overlay"),
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
    if (ov) await applyUpper(ov.upper, o.out, JSON.parse(await fs.readFile(job.listings!, "utf8")));
    return true;
  } finally {
    await removeTree(scratch);
  }
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
