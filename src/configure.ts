// Stage 2 of the rootfs, "configure": a copy of the packages tree (stage 1), the skeleton copied
// over it (owned root:root, modes kept, as alpine-make-rootfs's FS_SKEL_DIR + FS_SKEL_CHOWN),
// then setup.sh run in a chroot of the new tree (SCRIPT_CHROOT=yes), with /proc, /sys and /dev
// mounted and the system folder at /mnt, read-only.
//
// The mounts live in a private mount namespace (unshare --mount) whose only process is the
// chroot step: cleanup is registered (trap) before the first mount, and whatever happens, even
// a killed build, the kernel drops the namespace and its mounts with it. So no mount can be
// left under the store, and a failed build's folder can be removed without reaching through a
// bind mount into the host's /dev. Afterwards /proc/mounts is checked all the same.
import * as fsSync from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { copyStamps, type CopyStamps } from "./walk";

export interface ConfigureOptions {
  /** The stage-1 tree (read only: it is copied). */
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
}

/**
 * Returns what the copy of stage 1 got from it (src/walk.ts copyStamps), taken before the
 * skeleton and setup.sh change anything: the initramfs then knows the files they left alone
 * as the same files as last time, without reading them.
 */
export async function configureRootfs(o: ConfigureOptions): Promise<CopyStamps> {
  if (o.setup) checkHost(o.arch, "the configure stage runs system/setup.sh in a chroot");
  await copyTree(o.packages, o.out);
  const copied = await copyStamps(o.packages, o.out);
  if (o.skeleton) await overlaySkeleton(o.skeleton, o.out);
  if (o.setup) await runSetup({ ...o, setup: o.setup });
  // The tree's own folder becomes / in the booted system.
  await fs.chmod(o.out, 0o755);
  return copied;
}

/** cp -a, sharing blocks (reflink) where the filesystem can. */
export async function copyTree(from: string, to: string): Promise<void> {
  const { execa } = await import("execa");
  await execa("cp", ["-a", "--reflink=auto", `${from}/.`, to]);
}

/** The skeleton over the tree: root/etc/x becomes /etc/x, modes kept, owned by root. */
export async function overlaySkeleton(skeleton: string, out: string): Promise<void> {
  const { execa } = await import("execa");
  await execa("cp", ["-a", "--remove-destination", `${skeleton}/.`, out]);
  if (process.getuid?.() === 0) for (const rel of await listTree(skeleton)) await fs.lchown(path.join(out, rel), 0, 0);
}

// Runs in the new mount namespace: $1 the tree, $2 the folder bound at /mnt, $3 the script name.
const CHROOT_SH = `
set -eu
root=$1 bind=$2 script=$3
cleanup() {
	grep -o " $root/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
	[ -z "$made_mnt" ] || rmdir "$root/mnt" 2>/dev/null || true
}
made_mnt=
trap cleanup EXIT
mkdir -p "$root/proc" "$root/sys" "$root/dev"
[ -d "$root/mnt" ] || { mkdir "$root/mnt"; made_mnt=yes; }
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind "$bind" "$root/mnt"
mount -o remount,bind,ro "$root/mnt"
cd "$root"
chroot "$root" /bin/sh -c 'cd /mnt && exec "./$0"' "$script"
`;

async function runSetup(o: ConfigureOptions & { setup: string }): Promise<void> {
  const { execa } = await import("execa");
  const name = path.basename(o.setup);
  o.log?.(`running ${name} in a chroot`);
  // A clean environment: nothing of the build host (passphrases, tokens) reaches the script.
  const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/root", LANG: "C", TERM: "dumb", RAMROOT_ARCH: o.arch };
  const res = await execa("unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", CHROOT_SH, "ramroot-chroot", o.out, path.dirname(o.setup), name], {
    env,
    extendEnv: false,
    all: true,
    reject: false,
    stdin: "ignore",
    timeout: (o.timeoutSeconds ?? 1800) * 1000,
    killSignal: "SIGKILL",
  });
  const left = await mountsUnder(o.out);
  if (left.length > 0) throw new Error(`configure: mounts left under ${o.out} after ${name}: ${left.join(", ")} (umount them before removing the folder)`);
  const output = String(res.all ?? "").trimEnd();
  if (res.exitCode !== 0 || res.failed) {
    const why = res.timedOut ? `did not finish in ${o.timeoutSeconds ?? 1800} s` : `failed (exit ${res.exitCode ?? res.signal})`;
    throw new Error(`configure: ${name} ${why} in the chroot; its output:\n${tail(output, 60)}`);
  }
  for (const line of output.split("\n").filter(Boolean).slice(-3)) o.log?.(`${name}: ${line}`);
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

function tail(text: string, lines: number): string {
  const all = text.split("\n");
  return (all.length > lines ? ["...", ...all.slice(-lines)] : all).join("\n");
}

const HOST_ARCH: Record<string, string> = { x64: "x86_64", arm64: "aarch64" };

/**
 * Why this host cannot run `arch` programs in a chroot as root, or undefined when it can. A
 * foreign architecture needs a qemu-user interpreter registered with binfmt_misc with the F
 * (fix binary) flag, so that it works inside a chroot that does not contain it.
 */
export function hostProblem(arch: string, opts: { uid?: number; hostArch?: string; binfmtDir?: string } = {}): string | undefined {
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  if (uid !== 0) return "it needs root (chroot and mounts): run the build as root, or in a privileged container (docker run --privileged ...)";
  const host = opts.hostArch ?? HOST_ARCH[process.arch] ?? process.arch;
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
