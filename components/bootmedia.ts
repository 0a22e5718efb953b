// BootMedia: what the firmware boots. The qemu kind is a GPT disk image whose EFI System
// Partition holds the UKI at the removable-media path (EFI/BOOT/BOOTAA64.EFI), plus a
// persistence disk formatted FAT with the production stick's volume id. The boot disk is an
// artifact of the store; the persistence disk is state: created once, never wiped by an
// update, a replace or a delete.
import * as pulumi from "@pulumi/pulumi";
import * as path from "node:path";
import { resourceClass } from "./resource";
import type { Outputs as DeployOutputs } from "./deploy";
import { artifactHandlers, isKnown } from "./artifact";
import { sha256 } from "../src/store";
import { makeEspImage, makePersistImage, removableBootPath, type Arch } from "../src/boot/bootmedia";
import { archProblem } from "../src/arch";

export interface BootMediaArgs {
  kind: pulumi.Input<"qemu">;
  arch: pulumi.Input<string>;
  uki: pulumi.Input<string>;
  /** The sha256 of the UKI's bytes (Uki.sha256): the disk image is keyed by it. */
  ukiSha256: pulumi.Input<string>;
  /** The persistence disk's name under .ramroot/persist/ (one per stack and arch). */
  persistName: pulumi.Input<string>;
  /** FAT volume id of the persistence disk. Default B61B19E7, as the original fstab's UUID=B61B-19E7. */
  volumeId?: pulumi.Input<string>;
  /** The UKI holds a secrets layer: the disk image is then readable only by its owner. */
  containsSecrets?: pulumi.Input<boolean>;
}

interface Inputs { kind: string; arch: string; uki: string; ukiSha256: string; persistName: string; volumeId?: string; containsSecrets?: boolean }

const persistPath = (projectDir: string, name: string) => path.join(projectDir, ".ramroot", "persist", `${name}.img`);

interface Outputs { disk: string; persist: string; efiPath: string }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "bootmedia/2";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "bootmedia",
  // 2: keyed by the bytes of the UKI inside (its sha256), not by the UKI's inputs.
  format: FORMAT,
  hashKeys: ["kind", "arch", "ukiSha256"],
  async validate(i, fail) {
    if (isKnown(i.kind) && i.kind !== "qemu") fail("kind", `boot media kind ${i.kind} is not known here: use qemu (the ssh kind deploys to a host)`);
    const archWrong = isKnown(i.arch) ? archProblem(i.arch, "ramroot:arch") : undefined;
    if (archWrong) fail("arch", archWrong);
    if (i.volumeId !== undefined && isKnown(i.volumeId) && !/^[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}$/.test(i.volumeId))
      fail("volumeId", `volume id ${i.volumeId} is not 8 hex digits (like B61B19E7 or B61B-19E7)`);
    if (isKnown(i.persistName) && !/^[A-Za-z0-9._-]+$/.test(i.persistName)) fail("persistName", `persistence disk name ${i.persistName}: use letters, digits, dot, dash, underscore`);
  },
  async hash(i) {
    return sha256(JSON.stringify([FORMAT, i.kind, i.arch, i.ukiSha256]));
  },
  async build(i, ctx) {
    // The UKI was checked against the record of its bytes (artifact.ts); that record must be
    // the image this disk is named by.
    const rec = await ctx.store.record(ctx.store.relOf(i.uki) ?? "-");
    if (rec && (rec.type !== "file" || rec.sha256 !== i.ukiSha256))
      throw new Error(`bootmedia: ${i.uki} is not the UKI with sha256 ${i.ukiSha256}: run \`pulumi up\` again`);
    const disk = await ctx.store.put(`disk/${i.hash}.img`, (tmp) => makeEspImage({ efi: i.uki, arch: i.arch as Arch, out: tmp, efiSha256: i.ukiSha256 }), { mode: i.containsSecrets ? 0o600 : 0o644 });
    ctx.log(`${disk.built ? (disk.repaired ? "wrote again" : "wrote") : "reused"} boot disk ${path.basename(disk.path)} with ${removableBootPath(i.arch as Arch)}`);
    const persist = persistPath(ctx.projectDir, i.persistName);
    const p = await makePersistImage({ out: persist, volumeId: i.volumeId });
    ctx.log(p.created ? `created persistence disk ${persist}` : `kept persistence disk ${persist}`);
    return { disk: disk.path, persist, efiPath: removableBootPath(i.arch as Arch) };
  },
  artifacts: (p) => [p.disk],
  async onDelete(props, ctx) {
    ctx.log(`the persistence disk ${props.persist} is kept (it holds the guest's state); the boot disk stays in the store`);
  },
});

/** The ssh kind: the host's boot stick (components/deploy.ts). */
export interface SshBootMediaArgs {
  kind: "ssh";
  host: pulumi.Input<string>;
  port?: pulumi.Input<number>;
  user?: pulumi.Input<string>;
  /** OpenSSH private key text: pass a secret. */
  privateKey: pulumi.Input<string>;
  /** The host's public key, pinned ("ssh-ed25519 AAAA..."). */
  hostKey: pulumi.Input<string>;
  /** Default /media/usb/EFI/BOOT/BOOTAA64.EFI. */
  path?: pulumi.Input<string>;
  uki: pulumi.Input<string>;
  ukiSha256: pulumi.Input<string>;
  buildId: pulumi.Input<string>;
  allowUntested?: pulumi.Input<boolean>;
  afterDeploy?: pulumi.Input<pulumi.Input<string>[]>;
  waitSeconds?: pulumi.Input<number>;
  /** Reboot the host into the new image (ramroot:reboot), through a trial boot where it can (ramroot:trialBoot). */
  reboot?: pulumi.Input<boolean>;
  trialBoot?: pulumi.Input<boolean>;
  trialSeconds?: pulumi.Input<number>;
  /** The host's serial console log (the rehearsal host's --console), quoted when a trial fails. */
  consoleLog?: pulumi.Input<string>;
  /** The certificate the image must be signed by (ramroot:secureBootCert): checked before anything is sent. */
  secureBootCert?: pulumi.Input<string>;
}

// One resource type, BootMedia, with a provider per kind: a disk image for qemu, the host's
// stick for ssh (components/deploy.ts).
const QemuMedia = resourceClass<BootMediaArgs, Outputs>("bootmedia", "BootMedia", { disk: true, persist: true, efiPath: true });
const SshMedia = resourceClass<SshBootMediaArgs, DeployOutputs>("deploy", "BootMedia", { remoteSha256: true, previousSha256: true, bytesSent: true }, { secretInputs: ["privateKey"] });

export const BootMedia = function (name: string, args: BootMediaArgs | SshBootMediaArgs, opts?: pulumi.CustomResourceOptions) {
  return args.kind === "ssh" ? new SshMedia(name, args, opts) : new QemuMedia(name, args, opts);
} as unknown as {
  new (name: string, args: BootMediaArgs, opts?: pulumi.CustomResourceOptions): InstanceType<typeof QemuMedia>;
  new (name: string, args: SshBootMediaArgs, opts?: pulumi.CustomResourceOptions): InstanceType<typeof SshMedia>;
};
