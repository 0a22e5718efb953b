// Uki: systemd-stub + kernel + initramfs + cmdline + os-release, assembled in TypeScript (no
// objcopy or ukify at run time). Its hash covers the rootfs (which holds the kernel and, for
// Alpine's systemd-efistub, the stub), the initramfs, the cmdline and the paths chosen, so a
// cmdline-only change rebuilds this layer and what follows, never the initramfs.
import * as pulumi from "@pulumi/pulumi";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { resourceClass } from "./resource";
import { artifactHandlers, isKnown } from "./artifact";
import { sha256, sha256File } from "../src/store";
import { buildUki, kernelProblem, kernelRelease, validateCmdline } from "../src/image/uki";
import { resolveInRoot } from "../src/rootfs/rootfs";
import { buildIdOf, osReleaseWithBuild, releaseFile, smallArchive } from "../src/image/release";
import { healthFiles, healthFilesHash } from "../src/boot/health";
import { layerProblem as goLayerProblem } from "../src/image/golayer";

export interface UkiArgs {
  rootfs: pulumi.Input<string>;
  rootfsHash: pulumi.Input<string>;
  /** The initramfs's segment files in order (Initramfs.files). */
  initramfs: pulumi.Input<pulumi.Input<string>[]>;
  initramfsHash: pulumi.Input<string>;
  cmdline: pulumi.Input<string>;
  arch: pulumi.Input<string>;
  /** The kernel, relative to the rootfs (Alpine: boot/vmlinuz-lts). */
  kernel: pulumi.Input<string>;
  /** The systemd-stub: relative to the rootfs, or an absolute path outside it. */
  stub: pulumi.Input<string>;
  /** os-release, relative to the rootfs. Default etc/os-release. */
  osRelease?: pulumi.Input<string>;
  /** The secrets layer (components/secrets.ts), appended after everything else. */
  secrets?: pulumi.Input<string>;
  secretsHash?: pulumi.Input<string>;
  /** The Go programs' layer (components/goprograms.ts: its segment), appended after the rootfs's segments. */
  programs?: pulumi.Input<string>;
  programsHash?: pulumi.Input<string>;
}

type Inputs = pulumi.Unwrap<UkiArgs> & { buildId?: string };

/**
 * Everything that goes into the image except the secrets layer. Its hash is the build id, so a
 * qemu build and a production build that differ only in their secrets are the same build.
 */
const buildInputs = async (i: Inputs) => {
  // A stub from outside the rootfs is hashed by content; one inside is covered by rootfsHash.
  const stub = path.isAbsolute(i.stub) ? await sha256File(i.stub) : i.stub;
  // ramroot's own files in the release member (the health report) are part of the build.
  const base = [FORMAT, i.arch, i.rootfsHash, i.initramfsHash, i.kernel, stub, i.cmdline, i.osRelease ?? "etc/os-release", `health:${healthFilesHash()}`];
  // The Go programs are part of the build (and of its id), unlike the secrets.
  return i.programsHash ? [...base, `goprograms:${i.programsHash}`] : base;
};

interface Outputs { path: string; sha256: string; size: number; buildId: string; uname: string }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "uki/2";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "uki",
  format: FORMAT,
  hashKeys: ["arch", "rootfsHash", "initramfsHash", "kernel", "stub", "cmdline", "osRelease", "secretsHash", "programsHash"],
  async validate(i, fail) {
    try {
      if (isKnown(i.cmdline)) validateCmdline(i.cmdline);
    } catch (e: any) {
      fail("cmdline", e.message);
    }
    if (isKnown(i.stub) && path.isAbsolute(i.stub) && !(await fs.stat(i.stub).catch(() => undefined))?.isFile())
      fail("stub", `the systemd-stub ${i.stub} does not exist: install systemd-boot-efi (Debian) or systemd-efistub (Alpine), or set ramroot:stub`);
  },
  async hash(i) {
    const base = await buildInputs(i);
    return sha256(JSON.stringify(i.secretsHash ? [...base, i.secretsHash] : base));
  },
  derived: { keys: ["buildId"], compute: async (i) => ({ buildId: buildIdOf(sha256(JSON.stringify(await buildInputs(i)))) }) },
  async build(i, ctx) {
    const inRoot = async (p: string, what: string, fix: string) => {
      const abs = path.isAbsolute(p) ? p : await resolveInRoot(i.rootfs, p);
      if (!(await fs.stat(abs).catch(() => undefined))?.isFile()) throw new Error(`uki: the ${what} ${p} is not in the rootfs (${i.rootfs}): ${fix}`);
      return abs;
    };
    const kernel = await inRoot(i.kernel, "kernel", "install a kernel package (linux-lts) or set ramroot:kernel to its path under /");
    const notKernel = await kernelProblem(kernel, i.arch);
    if (notKernel) throw new Error(`uki: the kernel ${i.kernel} (ramroot:kernel) in the rootfs ${notKernel}: install the kernel package for ${i.arch} (linux-lts) or set ramroot:kernel to the kernel's path under /`);
    const stub = await inRoot(i.stub, "systemd-stub", "install systemd-efistub in the rootfs or set ramroot:stub to a stub file");
    const overGo = i.programs ? await goLayerProblem(i.rootfs) : undefined;
    if (overGo) throw new Error(`uki: ${overGo}`);
    const buildId = buildIdOf(sha256(JSON.stringify(await buildInputs(i))));
    const osrelPath = await resolveInRoot(i.rootfs, i.osRelease ?? "etc/os-release");
    const osrel = osReleaseWithBuild(await fs.readFile(osrelPath, "utf8").catch(() => undefined), buildId);
    const uname = (await kernelRelease(kernel)) ?? "";
    const release = await ctx.store.put(`release/${i.hash}.cpio`, async (tmp) => {
      const text = releaseFile({ BUILD_ID: buildId, UKI_INPUTS: i.hash, ROOTFS: i.rootfsHash, INITRAMFS: i.initramfsHash, KERNEL: uname, CMDLINE: i.cmdline, ...(i.programsHash ? { GOPROGRAMS: i.programsHash } : {}) });
      await fs.writeFile(tmp, await smallArchive([{ name: "etc/ramroot-release", content: text }, { name: "etc/os-release", content: osrel }, ...healthFiles()]));
    });
    const res = await ctx.store.put(`uki/${i.hash}.efi`, async (tmp) => {
      const initrds = [...i.initramfs, ...(i.programs ? [i.programs] : []), release.path, ...(i.secrets ? [i.secrets] : [])];
      return buildUki({ stub, linux: kernel, initrds, cmdline: i.cmdline, osRelease: osrel, uname: uname || undefined }, tmp);
    }, { mode: i.secrets ? 0o600 : 0o644 });
    // The sha256 is the store's record of the image's bytes, written when it was assembled and
    // checked (by stamp, or by reading it) before it is reused: reusing a 100+ MB UKI (the
    // production stack after qemu's) does not read it again.
    const rec = await ctx.store.record(`uki/${i.hash}.efi`);
    if (rec?.type !== "file") throw new Error(`uki: ${res.path} has no record of its bytes`);
    const info = { sha256: rec.sha256, size: rec.size };
    ctx.log(`${res.built ? (res.repaired ? "assembled again" : "assembled") : "reused"} ${path.basename(res.path)}: build ${buildId}, ${info.size} bytes, sha256 ${info.sha256.slice(0, 16)}`);
    return { path: res.path, sha256: info.sha256, size: info.size, buildId, uname };
  },
  artifacts: (p) => [p.path],
});

export const Uki = resourceClass<UkiArgs, Outputs>("uki", "Uki", { path: true, sha256: true, size: true, buildId: true, uname: true });
export type Uki = InstanceType<typeof Uki>;
