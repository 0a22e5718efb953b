// GoPrograms: the system's own Go programs (system/go.mod, system/cmd/NAME/) built for the image's
// architecture into a layer of their own (src/image/golayer.ts): goprograms/<hash>/usr/local/bin/NAME,
// and the same as one compressed newc segment, goprograms/<hash>.cpio.<ext>, which the UKI
// appends to the initramfs after the rootfs's segments. The hash covers the module's files, the
// architecture, the toolchain go.mod selects and the compression, and is known in preview: a
// change to a program changes this layer and the UKI, never the rootfs or the initramfs.
import * as pulumi from "@pulumi/pulumi";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { resourceClass } from "./resource";
import { artifactHandlers, InputError, isKnown, type BuildContext } from "./artifact";
import { sha256 } from "../src/store";
import { buildGoPrograms, commands, findGo, goBuildCache, goEnv, GoError, hasGoModule, moduleDigest, selectedToolchain, writeGoSegment } from "../src/image/golayer";
import { levelProblem, type Compression } from "../src/image/initramfs";
import { archProblem } from "../src/arch";

export interface GoProgramsArgs {
  /** The declared system folder (its go.mod and cmd/), relative to the project or absolute. */
  system: pulumi.Input<string>;
  arch: pulumi.Input<string>;
  /** As the initramfs's: zstd (default), gzip or none, and the level. */
  compression?: pulumi.Input<string>;
  level?: pulumi.Input<number>;
}

type Inputs = pulumi.Unwrap<GoProgramsArgs> & { toolchain?: string };
interface Outputs { path: string; tree: string; programs: string[]; toolchain: string; size: number }

const EXT: Record<string, string> = { zstd: "zst", gzip: "gz", none: "raw" };

/** InputError from a GoError: the property is the system folder, or the arch for a host problem. */
const asInput = (e: unknown) => (e instanceof GoError ? new InputError("system", e.message) : e);

const toolchains = new Map<string, string>();

async function spec(i: Inputs, ctx: BuildContext) {
  const dir = path.resolve(ctx.projectDir, i.system);
  if (!hasGoModule(dir)) throw new InputError("system", `${i.system}/go.mod does not exist: the Go programs need a Go module there (go mod init), or leave GoPrograms out`);
  try {
    const programs = commands(dir, i.system);
    const { go } = findGo();
    // One `go env GOVERSION` per module, go.mod and go: check asks for the hash, then the toolchain.
    const key = JSON.stringify([go, dir, i.arch, readFileSync(path.join(dir, "go.mod"), "utf8")]);
    const toolchain = toolchains.get(key) ?? (await selectedToolchain(go, dir, goEnv(i.arch, goBuildCache()), i.system));
    toolchains.set(key, toolchain);
    return { dir, go, programs, toolchain, files: moduleDigest(dir) };
  } catch (e) {
    throw asInput(e);
  }
}

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "goprograms/1";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "goprograms",
  format: FORMAT,
  hashKeys: ["system", "arch", "compression", "level"],
  async validate(i, fail) {
    const archWrong = isKnown(i.arch) ? archProblem(i.arch, "ramroot:arch") : undefined;
    if (archWrong) fail("arch", archWrong);
    if (isKnown(i.compression) && !["zstd", "gzip", "none"].includes(i.compression ?? "zstd"))
      fail("compression", `compression ${i.compression} is not supported: use zstd, gzip or none`);
    const bad = isKnown(i.level) && isKnown(i.compression) ? levelProblem((i.compression ?? "zstd") as Compression, i.level) : undefined;
    if (bad) fail("level", `ramroot:compressionLevel ${i.level}: ${bad}`);
  },
  async hash(i, ctx) {
    const s = await spec(i, ctx);
    return sha256(JSON.stringify([FORMAT, "linux", i.arch, s.toolchain, s.files, i.compression ?? "zstd", i.level ?? null]));
  },
  // The toolchain is shown in preview next to the hash.
  derived: { keys: ["toolchain"], compute: async (i, ctx) => ({ toolchain: (await spec(i, ctx)).toolchain }) },
  async build(i, ctx) {
    const s = await spec(i, ctx);
    const hash = sha256(JSON.stringify([FORMAT, "linux", i.arch, s.toolchain, s.files, i.compression ?? "zstd", i.level ?? null]));
    if (hash !== i.hash) throw new Error(`goprograms: ${i.system}'s Go module changed since preview (hash ${i.hash.slice(0, 12)}, now ${hash.slice(0, 12)}): run again`);
    const compression = (i.compression ?? "zstd") as Compression;
    let built: { programs: string[]; seconds: number } | undefined;
    const tree = await ctx.store.put(`goprograms/${i.hash}`, async (out) => {
      built = await buildGoPrograms({ module: s.dir, arch: i.arch, out, go: s.go, shown: i.system, log: ctx.log });
    }, { dir: true });
    const segment = await ctx.store.put(`goprograms/${i.hash}.cpio.${EXT[compression]}`, (tmp) => writeGoSegment(tree.path, tmp, compression, i.level));
    const rec = await ctx.store.record(`goprograms/${i.hash}.cpio.${EXT[compression]}`);
    const size = rec?.type === "file" ? rec.size : 0;
    ctx.log(built
      ? `built ${s.programs.map((p) => `/usr/local/bin/${p}`).join(", ")} with ${s.toolchain} for ${i.arch} in ${built.seconds.toFixed(1)} s; segment ${size} bytes`
      : `reused ${s.programs.map((p) => `/usr/local/bin/${p}`).join(", ")} (${s.toolchain}, ${i.arch})${segment.built ? `; segment written, ${size} bytes` : ""}`);
    return { path: segment.path, tree: tree.path, programs: s.programs, toolchain: s.toolchain, size };
  },
  artifacts: (p) => [p.path, p.tree],
});

export const GoPrograms = resourceClass<GoProgramsArgs, Outputs>("goprograms", "GoPrograms", { path: true, tree: true, programs: true, toolchain: true, size: true });
export type GoPrograms = InstanceType<typeof GoPrograms>;
