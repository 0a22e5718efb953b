// The seed's stick: what the NAS boots from, made by ramroot. One GPT disk with one EFI System
// Partition, FAT32 with the volume id that /etc/fstab mounts at /media/usb (B61B-19E7), so the
// one filesystem is both what the firmware boots (EFI/BOOT/BOOTAA64.EFI, the removable-media
// path: no boot entry needed) and the persistence disk (persist/ for the system's state).
//
// Writing a whole disk is the one thing here that can destroy data, so it refuses, before
// anything is written: a device that is mounted or whose partitions are (or that the kernel
// holds: swap, device mapper, md), and a target that already holds a partition table or a
// filesystem, unless `force`. Only the named target is ever opened for writing.
import { createHash } from "node:crypto";
import * as fsSync from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { PERSIST_VOLUME_ID, writeEsp, type Arch } from "./bootmedia";
import { peMachine } from "../image/pe";
import { sha256File, writeAtomically } from "../store";
import { ARCH_NAMES, isArch } from "../arch";
import { run, RunError } from "../run";

const MiB = 1024 * 1024;

export interface StickOptions {
  /** An image file (made if missing) or a block device. */
  target: string;
  /** The UKI to boot. */
  uki: string;
  /** Default: the UKI's own architecture. */
  arch?: Arch;
  /** Bytes, for an image file (default: four times the UKI, at least 256 MiB: room for .prev and a trial image). A device is used whole. */
  size?: number;
  /** FAT volume id, 8 hex digits (default B61B19E7: UUID=B61B-19E7). */
  volumeId?: string;
  /** Write over a partition table or filesystem that is there. */
  force?: boolean;
}

/** "256M", "1G", "300000000": bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) throw new Error(`stick: size ${text} is not a number of bytes with an optional K, M, G or T (e.g. 512M)`);
  return Number(m[1]) * 1024 ** " KMGT".indexOf((m[2] || " ").toUpperCase());
}

export async function writeStick(o: StickOptions): Promise<{ target: string; arch: Arch; bytes: number; device: boolean }> {
  const volumeId = (o.volumeId ?? PERSIST_VOLUME_ID).replace("-", "").toUpperCase();
  if (!/^[0-9A-F]{8}$/.test(volumeId)) throw new Error(`stick: volume id ${o.volumeId} is not 8 hex digits (e.g. B61B-19E7)`);
  const arch = await ukiArch(o.uki, o.arch);
  const st = await fs.stat(o.target).catch((e) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
  const device = !!st?.isBlockDevice();
  if (st && !device && !st.isFile()) throw new Error(`stick: ${o.target} is neither an image file nor a block device`);
  if (device) devicesInUse(o.target);
  if (st && !o.force) {
    const what = await existingData(o.target);
    if (what) throw new Error(`stick: ${o.target} already holds ${what}: nothing written (add --force to write over it)`);
  }
  const ukiBytes = (await fs.stat(o.uki)).size;
  const bytes = device ? deviceBytes(o.target) : o.size ?? (st?.size || Math.max(256 * MiB, Math.ceil((4 * ukiBytes) / MiB) * MiB));
  if (device && o.size !== undefined) throw new Error(`stick: --size is for image files; the device ${o.target} is used whole (${bytes} bytes)`);
  const seed = createHash("sha256").update(`ramroot-stick\0${volumeId}\0${await sha256File(o.uki)}`).digest();
  const layout = { efi: o.uki, arch, diskBytes: bytes, seed, serial: volumeId, label: "RAMROOT", folders: ["persist"] };
  if (device) {
    await writeEsp(o.target, layout);
    // The kernel learns the new partition (best effort: a stick that is plugged in again is read anew).
    await run("partx", ["-u", o.target], { allowFail: true }).catch(() => undefined);
    await run("sync", [], { allowFail: true }).catch(() => undefined);
  } else {
    // An image file: made beside the target and renamed, so a half-written stick is never taken for one.
    await writeAtomically(o.target, async (tmp) => {
      const fh = await fs.open(tmp, "w", 0o600);
      await fh.truncate(bytes).finally(() => fh.close());
      await writeEsp(tmp, layout);
    });
  }
  return { target: o.target, arch, bytes, device };
}

/** The UKI's architecture, from its PE header; `want`, when given, must agree. */
async function ukiArch(uki: string, want?: Arch): Promise<Arch> {
  const head = Buffer.alloc(4096);
  const fh = await fs.open(uki, "r").catch((e) => Promise.reject(new Error(`stick: cannot read the UKI ${uki}: ${e.code ?? e.message}`)));
  await fh.read(head, 0, head.length, 0).finally(() => fh.close());
  const m = peMachine(head);
  if ("why" in m) throw new Error(`stick: ${uki} is not a UKI (${m.why})`);
  if (!isArch(m.arch)) throw new Error(`stick: ${uki} is a PE image for ${m.arch}, not for ${ARCH_NAMES.join(" or ")}`);
  if (want && want !== m.arch) throw new Error(`stick: ${uki} is for ${m.arch}, not ${want}: give the ${want} UKI, or leave --arch out`);
  return m.arch;
}

/** The device and its partitions, as major:minor, from sysfs. */
function devNumbers(device: string): Map<string, string> {
  const name = path.basename(fsSync.realpathSync(device));
  const sys = `/sys/class/block/${name}`;
  const out = new Map<string, string>([[fsSync.readFileSync(`${sys}/dev`, "utf8").trim(), name]]);
  for (const e of fsSync.readdirSync(sys)) {
    if (e.startsWith(name) && fsSync.existsSync(`${sys}/${e}/dev`)) out.set(fsSync.readFileSync(`${sys}/${e}/dev`, "utf8").trim(), e);
  }
  return out;
}

/** Throws, naming what, when the device or one of its partitions is mounted, a swap, or held by the kernel. */
function devicesInUse(device: string): void {
  const devs = devNumbers(device);
  const busy: string[] = [];
  for (const line of fsSync.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const f = line.split(" ");
    if (f[2] && devs.has(f[2])) busy.push(`/dev/${devs.get(f[2])} is mounted on ${f[4]}`);
  }
  for (const line of fsSync.readFileSync("/proc/swaps", "utf8").split("\n").slice(1)) {
    const dev = line.split(/\s+/)[0];
    if (!dev) continue;
    try {
      const st = fsSync.statSync(dev);
      const key = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
      if (devs.has(key)) busy.push(`/dev/${devs.get(key)} is a swap`);
    } catch {
      // a swap file on another device
    }
  }
  for (const name of devs.values()) {
    const holders = fsSync.readdirSync(`/sys/class/block/${name}/holders`);
    if (holders.length > 0) busy.push(`/dev/${name} is held by ${holders.join(", ")}`);
  }
  if (busy.length > 0) throw new Error(`stick: ${device} is in use (${busy.join("; ")}): nothing written (unmount it, swapoff it, or stop what holds it, first)`);
  // What sysfs does not say: the kernel refuses an exclusive open of a device in use.
  try {
    fsSync.closeSync(fsSync.openSync(device, fsSync.constants.O_RDONLY | fsSync.constants.O_EXCL));
  } catch (e: any) {
    if (e.code === "EBUSY") throw new Error(`stick: ${device} is in use (the kernel refuses an exclusive open): nothing written`);
    throw e;
  }
}

/** A description of the partition table or filesystem at the start of `target`, or undefined when there is none. */
async function existingData(target: string): Promise<string | undefined> {
  // blkid exits 2 when it finds nothing; without blkid, the first MiB is looked at instead.
  const r: { stdout: string; noBlkid?: boolean } = await run("blkid", ["-p", "-o", "export", target], { allowFail: true }).catch((e) => {
    if (e instanceof RunError && e.notFound) return { stdout: "", noBlkid: true };
    throw e;
  });
  const found = Object.fromEntries(r.stdout.split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
  if (found.PTTYPE) return `a partition table (${found.PTTYPE})`;
  if (found.TYPE) return `a filesystem (${found.TYPE}${found.UUID ? `, UUID ${found.UUID}` : ""}${found.LABEL ? `, label ${found.LABEL}` : ""})`;
  if (r.noBlkid) {
    // No blkid: anything but zeros in the first MiB counts.
    const fd = fsSync.openSync(target, "r");
    try {
      const buf = Buffer.alloc(MiB);
      const n = fsSync.readSync(fd, buf, 0, buf.length, 0);
      if (buf.subarray(0, n).some((b) => b !== 0)) return "data";
    } finally {
      fsSync.closeSync(fd);
    }
  }
  return undefined;
}

/** A block device's size in bytes. */
function deviceBytes(device: string): number {
  const name = path.basename(fsSync.realpathSync(device));
  return Number(fsSync.readFileSync(`/sys/class/block/${name}/size`, "utf8").trim()) * 512;
}
