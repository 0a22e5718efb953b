// BootCheck: boots the qemu stack's boot disk headless (TCG, the arch's UEFI firmware) and waits
// for a marker on the serial console and for the guest's health report (src/boot/health.ts: fstab's
// mounts, OpenRC's failed services); then the guest powers itself off (asked through QEMU's
// fw_cfg, which no real machine has), qemu must exit by itself, and the persistence image must
// be clean (fsck.vfat -n). On success it records in the store that this UKI (by the sha256 of
// its bytes) booted, which is what lets production refuse bytes that never did. On failure
// `pulumi up` fails naming what is wrong (a mount missing, a service failed, no report, no
// power-off, a dirty persistence image) with the report and the last console lines.
import * as pulumi from "@pulumi/pulumi";
import { resourceClass } from "./resource";
import { artifactHandlers, InputError, isKnown } from "./artifact";
import { sha256 } from "../src/store";
import { bootCheck } from "../src/boot/qemu";
import type { Arch } from "../src/boot/bootmedia";
import { parseProbes, type Probe } from "../src/boot/probe";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";

async function fileSha256(file: string): Promise<string> {
  const data = await fs.readFile(file).catch((e: any) => {
    throw new InputError("secureBootVars", e.code === "ENOENT" ? `the Secure Boot variable store ${file} (ramroot:secureBootVars) does not exist: give a copy of the firmware's variable store with your certificate in db` : `the Secure Boot variable store ${file}: ${e.message}`);
  });
  return createHash("sha256").update(data).digest("hex");
}

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
  /** HTTP probes of the guest's services once it reports healthy (ramroot:probes, src/boot/probe.ts). */
  probes?: pulumi.Input<Probe[]>;
  /** Who asked, for the record (the stack name). */
  stack: pulumi.Input<string>;
  /**
   * Boot under enforcing Secure Boot firmware (the stack signs its UKI, components/signed-uki.ts):
   * the firmware refuses an image whose signer is not in the db of `secureBootVars`.
   */
  secureBoot?: pulumi.Input<boolean>;
  /** The firmware's variable store for secureBoot (ramroot:secureBootVars); default Debian's snakeoil store. */
  secureBootVars?: pulumi.Input<string>;
}

type Inputs = pulumi.Unwrap<BootCheckArgs>;

export interface BootRecord { ukiSha256: string; buildId: string; stack: string; arch: string; seconds: number; time: string; health?: string[]; /** Booted under enforcing Secure Boot firmware. */ secureBoot?: boolean }

interface Outputs { seconds: number; console: string; health: string; shutdownSeconds: number }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "bootcheck/1";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "bootcheck",
  // 2: the health report, the clean power-off and the fsck are part of the check.
  format: FORMAT,
  hashKeys: ["arch", "diskHash", "marker", "probes", "secureBoot", "secureBootVars"],
  async validate(i, fail) {
    if (isKnown(i.marker) && !i.marker) fail("marker", "the boot marker is empty: set ramroot:bootMarker to a line the guest prints when it is up");
    if (i.timeoutSeconds !== undefined && isKnown(i.timeoutSeconds) && !(i.timeoutSeconds > 0)) fail("timeoutSeconds", `boot timeout ${i.timeoutSeconds}: give a number of seconds > 0`);
    if (i.secureBootVars !== undefined && isKnown(i.secureBootVars) && !i.secureBoot) fail("secureBootVars", "a Secure Boot variable store is given, but the boot check does not boot with Secure Boot (the stack signs nothing): set ramroot:secureBootKey and ramroot:secureBootCert, or unset ramroot:secureBootVars");
    if (isKnown(i.probes)) {
      try {
        parseProbes(i.probes);
      } catch (e: any) {
        fail("probes", e.message);
      }
    }
  },
  async hash(i) {
    // Another firmware is another check; a store of one's own is named by its bytes.
    const sb = i.secureBoot ? [["secureBoot", i.secureBootVars ? await fileSha256(i.secureBootVars) : "snakeoil"]] : [];
    return sha256(JSON.stringify([FORMAT, i.arch, i.diskHash, i.marker, ...(i.probes?.length ? [i.probes] : []), ...sb]));
  },
  async build(i, ctx) {
    ctx.log(`booting ${i.arch} build ${i.buildId} under QEMU${i.secureBoot ? ` with Secure Boot enforced (db: ${i.secureBootVars ?? "Debian's test certificate"})` : ""}, waiting for "${i.marker}" and the health report`);
    const res = await bootCheck({
      arch: i.arch as Arch,
      disk: i.disk,
      persist: i.persist,
      marker: i.marker,
      timeoutMs: (i.timeoutSeconds ?? 180) * 1000,
      memoryMiB: i.memoryMiB,
      health: true,
      powerOff: true,
      probes: parseProbes(i.probes),
      ...(i.secureBoot ? { secureBoot: { vars: i.secureBootVars } } : {}),
      // The guest's own lines, not the kernel's timestamped ones: progress without a flood.
      log: (line) => {
        if (/^ramroot(-health)?:/.test(line)) ctx.log(`console: ${line}`);
      },
    });
    const record: BootRecord = { ukiSha256: i.ukiSha256, buildId: i.buildId, stack: i.stack, arch: i.arch, seconds: res.seconds, time: new Date().toISOString(), health: res.health!.lines, ...(i.secureBoot ? { secureBoot: true } : {}) };
    // By the exact bytes, and by build id: a production UKI that differs only in its secrets
    // layer is the same build (components/uki.ts).
    await ctx.store.writeRecord(`booted/${i.ukiSha256}.json`, record);
    await ctx.store.writeRecord(`booted-build/${i.buildId}.json`, record);
    await ctx.store.journal({ event: "booted", uki: i.ukiSha256, buildId: i.buildId, seconds: res.seconds });
    for (const r of res.probes ?? []) ctx.log(`probe ${r.probe.service ?? `port ${r.probe.port}`}: GET ${r.probe.path} answered ${r.got} in ${(r.ms / 1000).toFixed(1)} s, as declared`);
    ctx.log(`build ${i.buildId} booted in ${res.seconds.toFixed(1)} s, reported healthy, powered off in ${(res.shutdownSeconds ?? 0).toFixed(1)} s; the persistence image is clean`);
    return { seconds: res.seconds, console: res.console.split("\n").slice(-40).join("\n"), health: res.health!.lines.join("\n"), shutdownSeconds: res.shutdownSeconds ?? 0 };
  },
  // The boot record is what this check makes: when it is gone (a store removed), boot again.
  artifacts: (p, store) => [store.path(`booted/${p.ukiSha256}.json`)],
});

export const BootCheck = resourceClass<BootCheckArgs, Outputs>("bootcheck", "BootCheck", { seconds: true, console: true, health: true, shutdownSeconds: true });
export type BootCheck = InstanceType<typeof BootCheck>;
