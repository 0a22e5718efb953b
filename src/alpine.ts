// Stage 1 of the rootfs, "packages": an Alpine tree with the declared packages installed, made
// by alpine-make-rootfs as the original build does. The script is downloaded at build time and
// run only if its sha256 is the pinned one; it is kept in the store under that hash.
//
// Defaults (each a ramroot: config key, see the README):
//   branch   edge                                      ALPINE_BRANCH
//   mirror   https://dl-cdn.alpinelinux.org/alpine     ALPINE_MIRROR
//   arch     aarch64                                   apk --arch (APK_OPTS)
//   builder  alpine-make-rootfs v0.7.0, BUILDER below
// The apk cache is kept in the store (apk-cache/<arch>), so a rebuild downloads only what changed.
// Before anything is installed, /etc/mkinitfs/mkinitfs.conf says disable_trigger=yes: the kernel
// package must not build an initramfs of its own (ramroot makes the initramfs).
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Store } from "./store";
import { sha256 } from "./store";
import { checkHost } from "./configure";

export const BUILDER = {
  name: "alpine-make-rootfs",
  version: "0.7.0",
  url: "https://raw.githubusercontent.com/alpinelinux/alpine-make-rootfs/v0.7.0/alpine-make-rootfs",
  sha256: "91ceb95b020260832417b01e45ce02c3a250c4527835d1bdf486bf44f80287dc",
};
export const DEFAULT_BRANCH = "edge";
export const DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine";
export const MKINITFS_CONF = "disable_trigger=yes\n";

export interface AlpineOptions {
  arch: string;
  packages: string[];
  branch?: string;
  mirror?: string;
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
  await disableMkinitfsTrigger(o.out);
  const cache = o.store.path(`apk-cache/${o.arch}`);
  await fs.mkdir(cache, { recursive: true });
  await runBuilder(builder, o, cache);
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
export function builderEnv(o: Pick<AlpineOptions, "arch" | "packages" | "branch" | "mirror" | "keysDir">, cache: string): Record<string, string> {
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
  for (const k of ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]) if (process.env[k]) env[k] = process.env[k]!;
  return env;
}

async function runBuilder(builder: string, o: AlpineOptions, cache: string): Promise<void> {
  const { execa } = await import("execa");
  o.log?.(`${BUILDER.name}: ${o.arch}, branch ${o.branch ?? DEFAULT_BRANCH}, ${o.packages.length} packages`);
  const res = await execa("/bin/sh", [builder, o.out], {
    env: builderEnv(o, cache),
    extendEnv: false,
    all: true,
    reject: false,
    stdin: "ignore",
    timeout: (o.timeoutSeconds ?? 3600) * 1000,
  });
  const output = String(res.all ?? "").trimEnd();
  if (res.exitCode !== 0 || res.failed) {
    const lines = output.split("\n");
    throw new Error(`alpine: ${BUILDER.name} failed (${res.timedOut ? "timed out" : `exit ${res.exitCode ?? res.signal}`}); its output:\n${lines.slice(-60).join("\n")}`);
  }
  for (const line of output.split("\n").filter(Boolean).slice(-5)) o.log?.(`${BUILDER.name}: ${line}`);
}
