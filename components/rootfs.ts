// Rootfs: the base tree with the declared system's skeleton over it, in the store as
// rootfs/<hash>/. The hash covers the base tree and the skeleton's contents, so editing a file
// under system/root changes exactly this layer and what is built from it.
import * as pulumi from "@pulumi/pulumi";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { dynamicProvider } from "./adapter";
import { artifactHandlers, InputError, isKnown, projectDir } from "./artifact";
import { sha256 } from "../src/store";
import { assembleRootfs, hashTree } from "../src/rootfs";

export interface RootfsArgs {
  /** Absolute path of the base tree (an Alpine build, or a Debian-made test tree). */
  base: pulumi.Input<string>;
  /** The skeleton folder, relative to the project (system/root). */
  skeleton?: pulumi.Input<string>;
  arch: pulumi.Input<string>;
}

interface Inputs { base: string; skeleton?: string; arch: string }

export const handlers = artifactHandlers<Inputs, { path: string }>({
  kind: "rootfs",
  version: 1,
  hashKeys: ["base", "skeleton", "arch"],
  async validate(i) {
    const root = projectDir();
    const isDir = async (p: string) => (await fs.stat(p).catch(() => undefined))?.isDirectory();
    if (isKnown(i.base) && !(await isDir(i.base))) throw new InputError("base", `the base tree ${i.base} is not a folder: build it (scripts/testsys.sh ${i.arch}) or set ramroot:base`);
    if (i.skeleton && isKnown(i.skeleton) && !(await isDir(path.resolve(root, i.skeleton))))
      throw new InputError("skeleton", `the skeleton folder ${i.skeleton} does not exist: create it (root/etc/x becomes /etc/x) or set ramroot:system`);
  },
  async hash(i) {
    const base = await hashTree(i.base);
    const skel = i.skeleton ? await hashTree(path.resolve(projectDir(), i.skeleton), { rootOwned: true }) : "";
    return sha256(JSON.stringify(["rootfs/1", i.arch, base, skel]));
  },
  async build(i, ctx) {
    const res = await ctx.store.put(`rootfs/${i.hash}`, (out) => assembleRootfs({ base: i.base, skeleton: i.skeleton && path.resolve(ctx.projectDir, i.skeleton), out }), { dir: true });
    ctx.log(res.built ? `assembled ${i.hash.slice(0, 12)}` : `reused ${i.hash.slice(0, 12)} from the store`);
    return { path: res.path };
  },
});

export class Rootfs extends pulumi.dynamic.Resource {
  declare readonly hash: pulumi.Output<string>;
  declare readonly path: pulumi.Output<string>;
  constructor(name: string, args: RootfsArgs, opts?: pulumi.CustomResourceOptions) {
    super(dynamicProvider("rootfs"), name, { ...args, hash: undefined, path: undefined }, opts, "ramroot", "Rootfs");
  }
}
