// Rootfs: the declared system (system/: packages, root/, setup.sh) as a root filesystem tree, in
// two cached stages (src/rootfs/rootfs.ts): packages (rootfs-packages/<hash1>/, alpine-make-rootfs or
// an offline base) and configure (rootfs/<hash2>/, stage 1 linked, skeleton + setup.sh in a chroot). The
// resource's hash is hash2; `path` is the configured tree. Everything that can be checked before
// a build is checked in check(), so `pulumi preview` reports it and nothing is built.
import * as pulumi from "@pulumi/pulumi";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { resourceClass } from "./resource";
import { artifactHandlers, InputError, isKnown, type BuildContext } from "./artifact";
import { baseSource, buildConfigured, configureHash, stage1Of, ROOTFS_FORMAT, listingFile, packagesHash, type RootfsSpec } from "../src/rootfs/rootfs";
import { repositoryTags, SystemError, validateSystem } from "../src/rootfs/system";
import { hostProblem } from "../src/rootfs/configure";
import { apkProblem } from "../src/rootfs/alpine";
import { treeProblem } from "../src/image/initramfs";
import { hashTree } from "../src/rootfs/treehash";
import { goOwned } from "../src/image/golayer";
import { archProblem } from "../src/arch";

export interface RootfsArgs {
  arch: pulumi.Input<string>;
  /** The declared system folder, relative to the project (system): packages, root/, setup.sh. */
  system?: pulumi.Input<string>;
  /** Instead of `system`: a skeleton folder alone (no packages, no setup.sh). */
  skeleton?: pulumi.Input<string>;
  /** Stage 1 from an offline base, an absolute folder or tarball (.tar, .tar.gz, .tar.xz); absent: Alpine packages. */
  base?: pulumi.Input<string>;
  /** Alpine branch (edge), mirror (https://dl-cdn.alpinelinux.org/alpine). */
  branch?: pulumi.Input<string>;
  mirror?: pulumi.Input<string>;
  /** `[@tag ]URL` lines for /etc/apk/repositories, instead of branch and mirror (needed for name@tag packages). */
  repositories?: pulumi.Input<pulumi.Input<string>[]>;
  /** The apk program the builder runs (absolute); default: the host's apk, else apk.static (pinned, kept in the store). */
  apk?: pulumi.Input<string>;
  /** Any string: changing it rebuilds stage 1 from the branch as it is now. */
  refresh?: pulumi.Input<string>;
  /** Where alpine-make-rootfs comes from, and the sha256 it must have (default v0.7.0's). */
  builderUrl?: pulumi.Input<string>;
  builderSha256?: pulumi.Input<string>;
  /** apk signing keys for the builder (KEYS_DIR), absolute. */
  keysDir?: pulumi.Input<string>;
  /** setup.sh gets the host's network (default false: it runs without any). */
  setupNetwork?: pulumi.Input<boolean>;
  /** Seconds before setup.sh is stopped (default 1800). */
  setupTimeout?: pulumi.Input<number>;
  /** More skeleton folders whose files must be executable, besides etc/init.d, etc/local.d, ... */
  execDirs?: pulumi.Input<pulumi.Input<string>[]>;
}

type Inputs = pulumi.Unwrap<RootfsArgs>;

/** The inputs as a build spec, after validating the system folder (SystemError → InputError). */
async function specOf(i: Inputs, ctx: BuildContext): Promise<RootfsSpec> {
  const root = ctx.projectDir;
  const source = i.base ? baseSource(i.base) : undefined;
  let spec: RootfsSpec = { arch: i.arch, source: source ?? { kind: "alpine", packages: [] }, hashCache: ctx.store.path("cache/treehash"), setupNetwork: i.setupNetwork, setupTimeout: i.setupTimeout };
  if (i.system) {
    try {
      // Tags are checked only where the packages are installed; the default repositories have none.
      const tags = source ? undefined : i.repositories ? repositoryTags(i.repositories) : new Set<string>();
      const sys = await validateSystem(path.resolve(root, i.system), { shown: i.system, needPackages: !source, execDirs: i.execDirs, tags });
      spec = { ...spec, skeleton: sys.skeleton, setup: sys.setup, system: path.resolve(root, i.system) };
      if (!source) spec.source = { kind: "alpine", packages: sys.packages!, branch: i.branch, mirror: i.mirror, repositories: i.repositories, apk: i.apk, builderUrl: i.builderUrl, builderSha256: i.builderSha256, keysDir: i.keysDir, refresh: i.refresh };
    } catch (e) {
      if (e instanceof SystemError) throw new InputError(e.file === "repositories" ? "repositories" : "system", e.message);
      throw e;
    }
  } else if (i.skeleton) {
    spec.skeleton = path.resolve(root, i.skeleton);
    if (!(await fs.stat(spec.skeleton).catch(() => undefined))?.isDirectory())
      throw new InputError("skeleton", `the skeleton folder ${i.skeleton} does not exist: create it (root/etc/x becomes /etc/x) or set ramroot:system`);
  } else if (!source) {
    throw new InputError("system", "no system folder and no base: set ramroot:system (packages, root/, setup.sh) or ramroot:base");
  }
  return spec;
}

interface Outputs { path: string; packagesHash: string; packagesPath: string }

const HASH_KEYS = ["arch", "system", "skeleton", "base", "branch", "mirror", "repositories", "apk", "refresh", "builderSha256", "keysDir", "execDirs", "setupNetwork"] as const;

// The engine calls a resource's update right after its check, in the same process: the hashes
// check() has just computed for the same inputs are taken then, rather than walking a base
// folder again (0.1 s on the 8.8k-entry bench tree). Not after a second: computed again.
const FRESH_MS = 1000;
let lastHashes: { key: string; at: number; hash1: string; hash2: string } | undefined;
const hashesKey = (i: Inputs, ctx: BuildContext) => JSON.stringify([ctx.projectDir, ...HASH_KEYS.map((k) => i[k] ?? null)]);

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "rootfs",
  format: ROOTFS_FORMAT,
  hashKeys: [...HASH_KEYS],
  async validate(i, fail) {
    const archWrong = isKnown(i.arch) ? archProblem(i.arch, "ramroot:arch") : undefined;
    if (archWrong) fail("arch", archWrong);
    if (isKnown(i.base) && i.base) {
      const st = await fs.stat(i.base).catch(() => undefined);
      const src = baseSource(i.base);
      if (src.kind === "folder" && !st?.isDirectory()) fail("base", `the base tree ${i.base} is not a folder: build it (scripts/testsys.sh ${i.arch}) or set ramroot:base`);
      if (src.kind === "tarball" && !st?.isFile()) fail("base", `the base tarball ${i.base} does not exist: download it (an Alpine minirootfs) or set ramroot:base`);
    }
    if (isKnown(i.builderSha256) && i.builderSha256 !== undefined && !/^[0-9a-f]{64}$/.test(i.builderSha256))
      fail("builderSha256", `ramroot:builderSha256 ${i.builderSha256} is not a sha256 (64 lowercase hex digits)`);
    if (isKnown(i.keysDir) && i.keysDir && !(await fs.stat(i.keysDir).catch(() => undefined))?.isDirectory())
      fail("keysDir", `the apk keys folder ${i.keysDir} does not exist: point ramroot:keysDir at Alpine's public keys (the alpine-keys package's /usr/share/apk/keys/${i.arch})`);
    if (isKnown(i.repositories) && i.repositories && (i.branch !== undefined || i.mirror !== undefined))
      fail("repositories", "ramroot:repositories replaces ramroot:mirror and ramroot:branch: set the one or the others, not both");
    if (isKnown(i.setupTimeout) && i.setupTimeout !== undefined && !(Number.isFinite(i.setupTimeout) && i.setupTimeout > 0))
      fail("setupTimeout", `ramroot:setupTimeout ${i.setupTimeout}: give a number of seconds > 0`);
    if (isKnown(i.apk) && i.apk !== undefined && !path.isAbsolute(i.apk))
      fail("apk", `ramroot:apk ${i.apk} is not an absolute path: give the full path of an apk program`);
  },
  async hash(i, ctx) {
    const spec = await specOf(i, ctx);
    // The skeleton reaches the initramfs as it is: what a newc archive cannot hold (names that
    // are not UTF-8, a top-level TRAILER!!!, files of 4 GiB or more) stops preview, not `up`.
    if (spec.skeleton) {
      const problem = await treeProblem(spec.skeleton, `leave it out of ${i.system ? path.join(i.system, "root") : i.skeleton}`);
      if (problem) throw new InputError(i.system ? "system" : "skeleton", problem);
    }
    const hash1 = await packagesHash(spec);
    const hash2 = await configureHash(spec, hash1);
    lastHashes = { key: hashesKey(i, ctx), at: Date.now(), hash1, hash2 };
    // Fail in preview, before anything is built, when this host cannot build what is missing.
    const store = ctx.store;
    if (!(await store.exists(`rootfs/${hash2}`))) {
      const installs = spec.source.kind === "alpine" && !(await store.exists(`rootfs-packages/${hash1}`));
      if (installs && spec.source.kind === "alpine") {
        const apk = apkProblem({ apk: spec.source.apk, keysDir: spec.source.keysDir, arch: i.arch });
        if (apk) throw new InputError(apk.key, `installing Alpine packages: ${apk.message}`);
      }
      const needs = [
        installs ? "installing Alpine packages (alpine-make-rootfs)" : undefined,
        spec.setup ? `running ${path.join(i.system ?? "", "setup.sh")} in a chroot` : undefined,
      ].filter(Boolean);
      const problem = needs.length > 0 ? hostProblem(i.arch) : undefined;
      if (problem) throw new InputError(spec.setup && needs.length === 1 ? "system" : "base", `${needs.join(" and ")} for ${i.arch}: ${problem}`);
    }
    return hash2;
  },
  async build(i, ctx) {
    const spec = await specOf(i, ctx);
    const fresh = lastHashes && lastHashes.key === hashesKey(i, ctx) && Date.now() - lastHashes.at < FRESH_MS ? lastHashes : undefined;
    const hash1 = fresh?.hash1 ?? (await packagesHash(spec));
    const hash2 = fresh?.hash2 ?? (await configureHash(spec, hash1));
    if (hash2 !== i.hash) throw new Error(`rootfs: the inputs changed since preview (hash ${i.hash.slice(0, 12)}, now ${hash2.slice(0, 12)}): run again`);
    if (spec.source.kind !== "alpine" && i.system && (await fs.stat(path.resolve(ctx.projectDir, i.system, "packages")).catch(() => undefined)))
      ctx.log(`${path.join(i.system, "packages")} is not installed: the base ${i.base} is used as it is (set ramroot:base alpine to install packages)`);
    const stage1 = stage1Of(ctx.store, spec, hash1, ctx.log);
    const stage2 = await buildConfigured(ctx.store, spec, stage1, hash2, ctx.log);
    const p = stage2.packages;
    ctx.log(`packages ${hash1.slice(0, 12)}: ${!p ? "not needed" : p.built ? (spec.source.kind === "folder" ? `copied from the base folder ${spec.source.path}` : "built") : "reused from the store"}`);
    ctx.log(`configured ${hash2.slice(0, 12)}: ${stage2.built ? (stage2.from ? `made from ${stage2.from.slice(0, 12)} without setup.sh` : spec.setup ? "skeleton and setup.sh applied" : "skeleton applied") : "reused from the store"}`);
    return { path: stage2.path, packagesHash: hash1, packagesPath: stage1.path };
  },
  // Beside the hash, what `pulumi preview --diff` shows of a change: each entry of the system
  // folder that stage 2 takes (mode, owner, content; digests shortened), so an edit is named by
  // its file, and the declared packages, so a package list change shows what was added or removed.
  derived: {
    keys: ["systemFiles", "packages"],
    async compute(i, ctx) {
      const spec = await specOf(i, ctx);
      const fingerprints = new Map<string, string>();
      const folder = spec.system ?? spec.skeleton;
      const exclude = spec.system ? ["packages", "secrets", ...goOwned(spec.system)] : [];
      if (folder) await hashTree(folder, { rootOwned: true, exclude, cacheDir: spec.hashCache, fingerprints });
      const short = (v: string) => v.replace(/[0-9a-f]{64}/g, (d) => d.slice(0, 16));
      // (No undefined values: the engine's protocol cannot carry them.)
      return {
        systemFiles: Object.fromEntries([...fingerprints].map(([k, v]) => [k, short(v)])),
        ...(spec.source.kind === "alpine" ? { packages: spec.source.packages } : {}),
      };
    },
  },
  // The configured tree, and its listing where it has one (a listing only saves the initramfs a
  // walk). The packages tree is checked when it is used, to configure a tree (Store.put); a file
  // changed in place in it is changed in the configured tree too (they share it), and caught there.
  artifacts: (p) => [p.path, { path: listingFile(p.path), optional: true }],
});

export const Rootfs = resourceClass<RootfsArgs, Outputs>("rootfs", "Rootfs", { path: true, packagesHash: true, packagesPath: true });
export type Rootfs = InstanceType<typeof Rootfs>;
