// BootCheck: boots the qemu stack's boot disk headless (TCG, the arch's UEFI firmware) and waits
// for a marker on the serial console. On success it records in the store that this UKI (by the
// sha256 of its bytes) booted, which is what lets production refuse bytes that never did. On
// failure `pulumi up` fails with the last console lines.
import * as pulumi from "@pulumi/pulumi";
import { dynamicProvider } from "./adapter";
import { artifactHandlers, InputError, isKnown } from "./artifact";
import { sha256 } from "../src/store";
import { bootCheck } from "../src/qemu";
import type { Arch } from "../src/bootmedia";

export interface BootCheckArgs {
  arch: pulumi.Input<string>;
  disk: pulumi.Input<string>;
  diskHash: pulumi.Input<string>;
  persist: pulumi.Input<string>;
  ukiSha256: pulumi.Input<string>;
  buildId: pulumi.Input<string>;
  /** Text the guest prints on the serial console once it is up. */
  marker: pulumi.Input<string>;
  timeoutSeconds?: pulumi.Input<number>;
  /** Guest memory. Default 1024 MiB; the kernel unpacks the initramfs into at most half of it. */
  memoryMiB?: pulumi.Input<number>;
  /** Who asked, for the record (the stack name). */
  stack: pulumi.Input<string>;
}

interface Inputs { arch: string; disk: string; diskHash: string; persist: string; ukiSha256: string; buildId: string; marker: string; timeoutSeconds?: number; memoryMiB?: number; stack: string }

export interface BootRecord { ukiSha256: string; buildId: string; stack: string; arch: string; seconds: number; time: string }

export const handlers = artifactHandlers<Inputs, { seconds: number; console: string }>({
  kind: "bootcheck",
  version: 1,
  hashKeys: ["arch", "diskHash", "marker"],
  async validate(i) {
    if (isKnown(i.marker) && !i.marker) throw new InputError("marker", "the boot marker is empty: set ramroot:bootMarker to a line the guest prints when it is up");
    if (i.timeoutSeconds !== undefined && isKnown(i.timeoutSeconds) && !(i.timeoutSeconds > 0)) throw new InputError("timeoutSeconds", `boot timeout ${i.timeoutSeconds}: give a number of seconds > 0`);
  },
  async hash(i) {
    return sha256(JSON.stringify(["bootcheck/1", i.arch, i.diskHash, i.marker]));
  },
  async build(i, ctx) {
    ctx.log(`booting ${i.arch} build ${i.buildId} under QEMU, waiting for "${i.marker}"`);
    const res = await bootCheck({
      arch: i.arch as Arch,
      disk: i.disk,
      persist: i.persist,
      marker: i.marker,
      timeoutMs: (i.timeoutSeconds ?? 180) * 1000,
      memoryMiB: i.memoryMiB,
      // The marker line is printed after the guest synced the persistence disk.
      exitGraceMs: 500,
      // The guest's own lines, not the kernel's timestamped ones: progress without a flood.
      log: (line) => {
        if (/^ramroot:/.test(line)) ctx.log(`console: ${line}`);
      },
    });
    const record: BootRecord = { ukiSha256: i.ukiSha256, buildId: i.buildId, stack: i.stack, arch: i.arch, seconds: res.seconds, time: new Date().toISOString() };
    // By the exact bytes, and by build id: a production UKI that differs only in its secrets
    // layer is the same build (components/uki.ts).
    await ctx.store.writeRecord(`booted/${i.ukiSha256}.json`, record);
    await ctx.store.writeRecord(`booted-build/${i.buildId}.json`, record);
    await ctx.store.journal({ event: "booted", uki: i.ukiSha256, buildId: i.buildId, seconds: res.seconds });
    ctx.log(`build ${i.buildId} booted in ${res.seconds.toFixed(1)} s`);
    return { seconds: res.seconds, console: res.console.split("\n").slice(-40).join("\n") };
  },
});

export class BootCheck extends pulumi.dynamic.Resource {
  declare readonly hash: pulumi.Output<string>;
  declare readonly seconds: pulumi.Output<number>;
  declare readonly console: pulumi.Output<string>;
  constructor(name: string, args: BootCheckArgs, opts?: pulumi.CustomResourceOptions) {
    super(dynamicProvider("bootcheck"), name, { ...args, hash: undefined, seconds: undefined, console: undefined }, opts, "ramroot", "BootCheck");
  }
}
