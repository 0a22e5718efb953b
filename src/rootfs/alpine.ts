// Stage 1 of the rootfs, "packages": an Alpine tree with the declared packages installed, made
// by alpine-make-rootfs as the original build does. The script is downloaded at build time and
// run only if its sha256 is the pinned one; it is kept in the store under that hash.
//
// Defaults (each a ramroot: config key, see the README):
//   branch        edge                                  ALPINE_BRANCH
//   mirror        https://dl-cdn.alpinelinux.org/alpine ALPINE_MIRROR
//   repositories  (instead of branch and mirror)        REPOS_FILE: `[@tag ]URL` lines
//   arch          aarch64                               apk --arch (APK_OPTS)
//   apk           the host's `apk`, else apk.static     APK
//   builder       alpine-make-rootfs v0.7.0, BUILDER below
// The apk cache is kept in the store (apk-cache/<arch>), so a rebuild downloads only what changed;
// so is apk.static (tools/), fetched once, sha256-pinned, for a host that has no apk of its own.
// Before anything is installed, /etc/mkinitfs/mkinitfs.conf says disable_trigger=yes: the kernel
// package must not build an initramfs of its own (ramroot makes the initramfs).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Store } from "../store";
import { sha256 } from "../store";
import { checkHost, hostArch, KEPT_CAPS } from "./configure";
import { run } from "../run";

export const BUILDER = {
  name: "alpine-make-rootfs",
  version: "0.7.0",
  url: "https://raw.githubusercontent.com/alpinelinux/alpine-make-rootfs/v0.7.0/alpine-make-rootfs",
  sha256: "91ceb95b020260832417b01e45ce02c3a250c4527835d1bdf486bf44f80287dc",
};
/**
 * apk-tools' static build, for a build host without apk (alpine-make-rootfs would download the
 * x86_64 one on every run). Pinned per host architecture, as Alpine publishes them.
 */
export const APK_STATIC: Record<string, { url: string; sha256: string }> = {
  x86_64: { url: "https://gitlab.alpinelinux.org/api/v4/projects/5/packages/generic/v2.14.4/x86_64/apk.static", sha256: "42cea2a41dc09b263f04bb0ade8a2ba251256b91f89095ecc8a19903b2b3e39e" },
  aarch64: { url: "https://gitlab.alpinelinux.org/api/v4/projects/5/packages/generic/v2.14.4/aarch64/apk.static", sha256: "0fbf66c343240dacd2ef5a31692542efcf107dbad35896caa4c3179a3bbed1e2" },
};
export const DEFAULT_BRANCH = "edge";
export const DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine";
export const MKINITFS_CONF = "disable_trigger=yes\n";

export interface AlpineOptions {
  arch: string;
  packages: string[];
  branch?: string;
  mirror?: string;
  /** `[@tag ]URL` lines for /etc/apk/repositories, instead of branch and mirror. */
  repositories?: string[];
  /** The apk program to run (APK); default: the host's `apk`, else the pinned apk.static. */
  apk?: string;
  builderUrl?: string;
  builderSha256?: string;
  /** A folder of apk signing keys (KEYS_DIR); default: the host's /etc/apk/keys, else the builder's own. */
  keysDir?: string;
  /** An empty folder: the result. */
  out: string;
  store: Store;
  log?(line: string): void;
  /** Seconds before the builder is stopped. Default 3600. */
  timeoutSeconds?: number;
}

export async function makeAlpineRootfs(o: AlpineOptions): Promise<void> {
  checkHost(o.arch, "installing Alpine packages");
  const builder = await fetchBuilder(o.store, o.builderUrl ?? BUILDER.url, o.builderSha256 ?? BUILDER.sha256, o.log);
  const apk = o.apk ?? hostApk() ?? (await fetchApkStatic(o.store, hostArch(), o.log));
  await disableMkinitfsTrigger(o.out);
  const cache = o.store.path(`apk-cache/${o.arch}`);
  await fs.mkdir(cache, { recursive: true });
  // The builder copies REPOS_FILE into the tree; it must not be inside it.
  const repos = o.repositories && `${o.out}.repositories`;
  try {
    if (repos) await fs.writeFile(repos, o.repositories!.join("\n") + "\n");
    await runBuilder(builder, { ...o, apk, reposFile: repos }, cache);
  } finally {
    if (repos) await fs.rm(repos, { force: true });
  }
  // apk kept our mkinitfs.conf (disable_trigger=yes) and left the package's own beside it.
  await fs.rm(path.join(o.out, "etc", "mkinitfs", "mkinitfs.conf.apk-new"), { force: true });
}

/** The host's own apk (an Alpine build host), as alpine-make-rootfs would find it on PATH. */
export function hostApk(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const p = dir && path.join(dir, "apk");
    if (p && existsSync(p)) return p;
  }
  return undefined;
}

/** apk.static for this host, from the store or downloaded once and checked against its pin. */
export async function fetchApkStatic(store: Store, arch: string, log?: (l: string) => void): Promise<string> {
  const pin = APK_STATIC[arch];
  if (!pin) throw new Error(`alpine: no pinned apk.static for a ${arch} build host: set ramroot:apk to an apk program that runs here`);
  const res = await store.put(`tools/apk.static-${arch}-${pin.sha256}`, async (tmp) => {
    log?.(`downloading ${pin.url}`);
    const bytes = await download(pin.url);
    const actual = sha256(bytes);
    if (actual !== pin.sha256) throw new Error(`alpine: refusing ${pin.url}: its sha256 is ${actual}, expected ${pin.sha256} (set ramroot:apk to an apk program you trust)`);
    await fs.writeFile(tmp, bytes, { mode: 0o755 });
  }, { mode: 0o755 });
  return res.path;
}

/**
 * What is wrong with the apk and keys this build would use, checked before anything is built
 * (preview); undefined when nothing is.
 */
export function apkProblem(o: { apk?: string; keysDir?: string; arch: string; hostArch?: string; hostKeys?: string }): { key: "apk" | "keysDir"; message: string } | undefined {
  const apk = (message: string) => ({ key: "apk" as const, message });
  const keys = (message: string) => ({ key: "keysDir" as const, message });
  if (o.apk) {
    const st = statSync(o.apk, { throwIfNoEntry: false });
    if (!st?.isFile()) return apk(`ramroot:apk ${o.apk} does not exist: point it at an apk program (an Alpine host's /sbin/apk, or apk.static)`);
    if ((st.mode & 0o111) === 0) return apk(`ramroot:apk ${o.apk} is not executable: chmod +x ${o.apk}`);
    const r = spawnSync(o.apk, ["--version"], { encoding: "utf8", timeout: 30_000, stdio: ["ignore", "pipe", "pipe"] });
    if (r.status !== 0 || !/apk-tools/.test(r.stdout ?? ""))
      return apk(`ramroot:apk ${o.apk} does not run here (\`${o.apk} --version\` ${r.error ? `failed: ${r.error.message}` : `exited ${r.status ?? r.signal}: ${(r.stderr || r.stdout || "").trim().split("\n").slice(-2).join(" ")}`}): point it at an apk program for this ${o.hostArch ?? hostArch()} host`);
  } else if (!hostApk() && !APK_STATIC[o.hostArch ?? hostArch()]) {
    return apk(`this ${o.hostArch ?? hostArch()} host has no apk and ramroot has no pinned apk.static for it: set ramroot:apk to an apk program that runs here`);
  }
  if (o.keysDir) {
    const entries = readdirSync(o.keysDir, { withFileTypes: true });
    const folders = entries.filter((e) => e.isDirectory()).map((e) => e.name);
    // The builder copies KEYS_DIR/* without -r: a folder in it stops the build.
    if (folders.length > 0) return keys(`ramroot:keysDir ${o.keysDir} holds folders (${folders.map((f) => `${f}/`).join(", ")}): point it at the folder that holds the *.rsa.pub keys themselves (e.g. ${path.join(o.keysDir, folders[0]!)})`);
    if (!entries.some((e) => e.isFile() && e.name.endsWith(".rsa.pub")))
      return keys(`ramroot:keysDir ${o.keysDir} holds no *.rsa.pub key: point it at Alpine's public keys (the alpine-keys package's /usr/share/apk/keys/${o.arch})`);
  } else if (o.arch !== "x86_64" && !existsSync(o.hostKeys ?? "/etc/apk/keys")) {
    // Without KEYS_DIR or /etc/apk/keys the builder falls back to its embedded x86_64 keys.
    return keys(`${o.arch} packages are signed with keys that alpine-make-rootfs does not embed, and this host has no /etc/apk/keys: set ramroot:keysDir to a folder of Alpine's ${o.arch} keys (the alpine-keys package's /usr/share/apk/keys/${o.arch})`);
  }
  return undefined;
}

/** The builder script from the store, or downloaded, checked against `expected` and stored. */
export async function fetchBuilder(store: Store, url: string, expected: string, log?: (l: string) => void): Promise<string> {
  if (!/^[0-9a-f]{64}$/.test(expected)) throw new Error(`alpine: the builder's sha256 ${expected} is not 64 hex digits`);
  const res = await store.put(`builders/${BUILDER.name}-${expected}`, async (tmp) => {
    log?.(`downloading ${url}`);
    const bytes = await download(url);
    const actual = sha256(bytes);
    if (actual !== expected)
      throw new Error(`alpine: refusing to run ${url}: its sha256 is ${actual}, expected ${expected} (set ramroot:builderSha256 only for a script you have read)`);
    await fs.writeFile(tmp, bytes, { mode: 0o755 });
  });
  return res.path;
}

async function download(url: string): Promise<Buffer> {
  const u = new URL(url);
  if (u.protocol === "file:") return fs.readFile(u);
  if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error(`alpine: cannot download ${url}: use an https://, http:// or file:// URL`);
  const res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
  if (!res.ok) throw new Error(`alpine: downloading ${url}: HTTP ${res.status} ${res.statusText}`);
  return Buffer.from(await res.arrayBuffer());
}

/** What the original does before installing: keep the kernel package's trigger from making an initramfs. */
export async function disableMkinitfsTrigger(root: string): Promise<void> {
  await fs.mkdir(path.join(root, "etc", "mkinitfs"), { recursive: true });
  await fs.writeFile(path.join(root, "etc", "mkinitfs", "mkinitfs.conf"), MKINITFS_CONF);
}

/** The builder's environment: its documented options, and nothing of the build host's secrets. */
export function builderEnv(o: Pick<AlpineOptions, "arch" | "packages" | "branch" | "mirror" | "keysDir" | "apk"> & { reposFile?: string }, cache: string): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: process.env.HOME ?? "/root",
    LANG: "C",
    ALPINE_BRANCH: o.branch ?? DEFAULT_BRANCH,
    ALPINE_MIRROR: o.mirror ?? DEFAULT_MIRROR,
    PACKAGES: o.packages.join(" "),
    // --update-cache: a moving branch is read afresh whenever this stage runs.
    APK_OPTS: `--no-progress --arch ${o.arch} --cache-dir ${cache} --update-cache`,
  };
  if (o.keysDir) env.KEYS_DIR = o.keysDir;
  if (o.apk) env.APK = o.apk;
  if (o.reposFile) env.REPOS_FILE = o.reposFile;
  for (const k of ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]) if (process.env[k]) env[k] = process.env[k]!;
  return env;
}

/** The builder paints its messages (bold red ERROR:, cyan steps): Pulumi's output shows plain text. */
export const stripColour = (s: string) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");

/** What of the host's /etc the builder may read: names, addresses, certificates, loader, users. */
const ETC = ["alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "resolv.conf", "hosts", "nsswitch.conf", "host.conf", "gai.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "localtime", "apk"];

/**
 * The builder runs contained, because apk runs the packages' install scripts and triggers as
 * root, and they come from the mirror: in a mount namespace whose root is a tmpfs holding only
 * what the builder needs (the host's programs and libraries read-only, a few files of /etc, the
 * tree, the apk cache, the keys, the builder and apk), so that neither the builder nor a
 * script that climbs out of apk's chroot (or goes through /proc/N/root) finds the host's files,
 * the project, its passphrase or the store; in a PID namespace (a fresh /proc: no build process,
 * no environment of one), with /sys read-only, a /dev of its own (no host disk), its own UTS
 * and IPC, and without the capabilities that would undo any of that (configure.ts's KEPT_CAPS:
 * no mount, mknod, ptrace, modules). The tree gets the same /proc, /sys and /dev for the
 * scripts, mounted before apk would mount the host's /proc there. The network stays: apk
 * fetches from the mirror (a script could reach it too; it cannot reach what the build holds).
 */
const SANDBOX = `set -e
r=$1 caps=$2
shift 2
ro() { mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; }
knobs() {
  for f in sys sysrq-trigger bus fs irq; do [ ! -e "$1/$f" ] || ro "$1/$f" "$1/$f"; done
  for f in kcore keys timer_list sched_debug; do [ ! -e "$1/$f" ] || mount --bind "$r/dev/null" "$1/$f"; done
}
dev() {
  mount -t tmpfs -o mode=0755,nosuid,size=1m ramroot-dev "$1"
  mknod -m 0666 "$1/null" c 1 3; mknod -m 0666 "$1/zero" c 1 5; mknod -m 0666 "$1/full" c 1 7
  mknod -m 0666 "$1/random" c 1 8; mknod -m 0666 "$1/urandom" c 1 9; mknod -m 0666 "$1/tty" c 5 0
  ln -s /proc/self/fd "$1/fd"; ln -s /proc/self/fd/0 "$1/stdin"; ln -s /proc/self/fd/1 "$1/stdout"; ln -s /proc/self/fd/2 "$1/stderr"
  mkdir "$1/pts" "$1/shm"; chmod 1777 "$1/shm"
}
mount -t tmpfs -o mode=0755,size=16m ramroot-stage1 "$r"
for d in bin sbin lib lib32 lib64 libx32 usr; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$r/$d"
  elif [ -d "/$d" ]; then mkdir "$r/$d"; ro "/$d" "$r/$d"; fi
done
mkdir "$r/etc" "$r/tmp" "$r/run" "$r/root" "$r/proc" "$r/sys" "$r/dev"
for e in ${ETC.join(" ")}; do
  [ -e "/etc/$e" ] || continue
  if [ -d "/etc/$e" ]; then mkdir "$r/etc/$e"; else : > "$r/etc/$e"; fi
  ro "/etc/$e" "$r/etc/$e"
done
mount -t tmpfs -o mode=1777,nosuid,nodev ramroot-tmp "$r/tmp"
dev "$r/dev"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
knobs "$r/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
tree=
while [ "$1" != -- ]; do
  how=$1 p=$2
  shift 2
  if [ -d "$p" ]; then mkdir -p "$r$p"; else mkdir -p "$r\${p%/*}"; : > "$r$p"; fi
  case $how in
    tree) tree=$p; mount --bind "$p" "$r$p" ;;
    rw) mount --bind "$p" "$r$p" ;;
    *) ro "$p" "$r$p" ;;
  esac
done
shift
mkdir -p "$r$tree/proc" "$r$tree/sys" "$r$tree/dev"
mount -t proc -o nosuid,nodev,noexec proc "$r$tree/proc"
knobs "$r$tree/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r$tree/sys"
dev "$r$tree/dev"
cd "$r"
pivot_root . .
umount -l .
cd /
exec setpriv --bounding-set "-all,+$caps" -- "$@"
`;

/** Paths the sandbox shows in place (the host's programs and libraries, already read-only there). */
const inSandbox = (p: string) => /^\/(usr|bin|sbin|lib|lib32|lib64|libx32)(\/|$)/.test(p);

/** A repository line's local folder, if it names one (`[@tag ]/path` or `file:///path`). */
function localRepository(line: string): string | undefined {
  const url = line.trim().replace(/^@\S+\s+/, "");
  if (url.startsWith("/")) return url;
  if (url.startsWith("file://")) return new URL(url).pathname;
  return undefined;
}

/** unshare's arguments that run `command` in the sandbox, with `mounts` (absolute host paths) in it. */
export function sandboxArgs(scratch: string, mounts: Array<["tree" | "rw" | "ro", string]>, command: string[]): string[] {
  // Parents first: a folder bound later would cover whatever was bound inside it before.
  const shown = mounts.filter(([how, p]) => how !== "ro" || !inSandbox(p)).sort((a, b) => a[1].split("/").length - b[1].split("/").length);
  return ["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--uts", "--ipc", "--", "/bin/sh", "-c", SANDBOX, "sandbox", scratch, KEPT_CAPS.join(",+"), ...shown.flat(), "--", ...command];
}

async function runBuilder(builder: string, o: AlpineOptions & { reposFile?: string }, cache: string): Promise<void> {
  o.log?.(`${BUILDER.name}: ${o.arch}, ${o.repositories ? `${o.repositories.length} repositories` : `branch ${o.branch ?? DEFAULT_BRANCH}`}, ${o.packages.length} packages`);
  const ro = (p: string | undefined): Array<["ro", string]> => (p && existsSync(p) ? [["ro", path.resolve(p)]] : []);
  const mounts: Array<["tree" | "rw" | "ro", string]> = [
    ["tree", path.resolve(o.out)],
    ["rw", cache],
    ...ro(builder),
    // Its folder: an apk program may come with its loader and libraries (a minirootfs's apk).
    ...ro(o.apk && path.dirname(path.resolve(o.apk))),
    ...ro(o.keysDir),
    ...ro(o.reposFile),
    ...[o.mirror, ...(o.repositories ?? [])].flatMap((l) => ro(l && localRepository(l))),
  ];
  const scratch = await fs.mkdtemp(`${o.out}.sandbox-`);
  try {
    const res = await run("unshare", sandboxArgs(scratch, mounts, ["/bin/sh", builder, path.resolve(o.out)]), {
      // CLEANUP=no: its cleanup would unmount the tree's /proc and /dev, which it cannot (no
      // CAP_SYS_ADMIN) and need not: the sandbox's mounts and its /tmp end with its namespaces.
      env: { ...builderEnv(o, cache), CLEANUP: "no" },
      timeoutMs: (o.timeoutSeconds ?? 3600) * 1000,
      allowFail: true,
      shown: `${BUILDER.name} ${o.out}`,
    }).catch((e: Error) => {
      throw new Error(`alpine: ${stripColour(e.message)}`);
    });
    // It writes its steps and apk's to stderr, its own errors too.
    const output = stripColour(res.stderr + res.stdout).trimEnd();
    if (res.exitCode !== 0) {
      const lines = output.split("\n");
      throw new Error(`alpine: ${BUILDER.name} failed (exit ${res.exitCode}); its output:\n${lines.slice(-60).join("\n")}`);
    }
    for (const line of output.split("\n").filter(Boolean).slice(-5)) o.log?.(`${BUILDER.name}: ${line}`);
  } finally {
    await fs.rmdir(scratch).catch(() => {});
  }
}
