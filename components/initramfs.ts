// Initramfs: the rootfs (minus /boot) as a concatenation of whole compressed newc archives.
// Its hash is a function of the rootfs hash and the options, so it is known in preview even
// when the rootfs is about to change; at build time each segment is looked up in the store by
// the hash of its own bytes, and only the segments that differ are compressed again.
import * as pulumi from "@pulumi/pulumi";
import { resourceClass } from "./resource";
import { artifactHandlers, isKnown } from "./artifact";
import { sha256, summary } from "../src/store";
import { buildInitramfs, levelProblem, planInitramfs, type Compression } from "../src/image/initramfs";
import { listingFile } from "../src/rootfs/rootfs";

export interface InitramfsArgs {
  rootfs: pulumi.Input<string>;
  rootfsHash: pulumi.Input<string>;
  compression?: pulumi.Input<string>;
  level?: pulumi.Input<number>;
  /** Paths left out, relative to the rootfs. Default ["boot"]: the kernel goes into the UKI. */
  exclude?: pulumi.Input<pulumi.Input<string>[]>;
  /** The mtime of every entry. Default 0. */
  epoch?: pulumi.Input<number>;
}

type Inputs = pulumi.Unwrap<InitramfsArgs>;

const options = (i: Inputs) => ({
  compression: (i.compression ?? "zstd") as Compression,
  level: i.level,
  exclude: i.exclude ?? ["boot"],
  epoch: i.epoch ?? 0,
});

/**
 * path: the manifest (initramfs/<hash>.json: the segments in order, with their files).
 * files: the compressed segments in boot order; the initramfs is their concatenation, which
 * Uki writes straight into its .initrd section (`ramroot initramfs` writes it as one file).
 */
interface Outputs { path: string; files: string[]; size: number; segments: number; compressed: number }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "initramfs/1";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "initramfs",
  // 2: files instead of one concatenated image (path is the manifest).
  format: FORMAT,
  hashKeys: ["rootfsHash", "compression", "level", "exclude", "epoch"],
  async validate(i, fail) {
    if (isKnown(i.compression) && !["zstd", "gzip", "none"].includes(i.compression ?? "zstd"))
      fail("compression", `compression ${i.compression} is not supported: use zstd (kernels >= 5.9), gzip or none`);
    const bad = isKnown(i.level) && isKnown(i.compression) ? levelProblem((i.compression ?? "zstd") as Compression, i.level) : undefined;
    if (bad) fail("level", `ramroot:compressionLevel ${i.level}: ${bad}`);
  },
  async hash(i) {
    return sha256(JSON.stringify([FORMAT, i.rootfsHash, options(i)]));
  },
  async build(i, ctx) {
    // The rootfs's listing stands for a walk of it, and segments whose files are unchanged
    // (inode, size, mtime, ctime; for the files a new rootfs links from its packages tree,
    // those of the packages tree's own listing) are not read again.
    // A listing that is not what was recorded is not read: the tree is walked instead.
    const listing = listingFile(i.rootfs);
    const rel = ctx.store.relOf(listing);
    const listed = rel ? await ctx.store.check(rel) : { ok: true, missing: false, problems: [] };
    if (!listed.ok && !listed.missing) ctx.log(`${summary(listed.problems)}: the rootfs is walked instead`);
    const plan = await planInitramfs(i.rootfs, { ...options(i), cacheDir: ctx.store.path("cache/segments"), listing: listed.ok ? listing : undefined });
    const res = await buildInitramfs(plan, ctx.store);
    const names = plan.segments.filter((s) => res.built.includes(s.key)).map((s) => s.name);
    const which = names.length > 0 && names.length <= 5 ? ` (${names.join(", ")})` : "";
    ctx.log(`${plan.read} of ${plan.segments.length} segments read (the rest known by their files' stamps), ${res.built.length} compressed${which}, ${res.reused.length} reused; ${res.size} bytes`);
    return { path: res.manifest, files: res.files, size: res.size, segments: plan.segments.length, compressed: res.built.length };
  },
  artifacts: (p) => [p.path, ...(p.files ?? [])],
});

export const Initramfs = resourceClass<InitramfsArgs, Outputs>("initramfs", "Initramfs", { path: true, files: true, size: true, segments: true, compressed: true });
export type Initramfs = InstanceType<typeof Initramfs>;
