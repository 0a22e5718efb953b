// Boot media as image files, without loop mounts or root: a GPT disk whose one EFI System
// Partition holds the UKI at the firmware's removable-media path, and the FAT persistence disk
// that plays the NAS's USB stick (/media/usb, volume UUID B61B-19E7).
//
// Tools: sfdisk (Debian package fdisk) writes the partition table on the image file; mkfs.vfat
// (dosfstools) formats the partition in place with --offset; mtools writes and reads files with
// the `image@@offset` syntax.
//
// Determinism: the ESP image is a function of the UKI bytes, its architecture and the size. The
// disk GUID, partition GUID and FAT serial are derived from the UKI's hash, mkfs.vfat runs with
// --invariant, and mtools honours SOURCE_DATE_EPOCH (verified with mtools 4.0.32), so every
// directory entry carries 1980-01-01 00:00 (TZ=UTC).
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { sha256File, temporaryName } from "../store";
import { removablePath, type Arch } from "../arch";
import { baseEnv, run } from "../run";

export type { Arch } from "../arch";

/** GPT partition type of an EFI System Partition. */
export const ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/** The volume id of the production USB stick (UUID=B61B-19E7 in /etc/fstab). */
export const PERSIST_VOLUME_ID = "B61B19E7";

const MiB = 1024 * 1024;
const SECTOR = 512;
/** The partition starts at 1 MiB; the backup GPT needs the last 33 sectors, so 1 MiB is left at the end. */
const PART_START = MiB;
/** FAT32 needs 65525 clusters: with 512-byte clusters that is 32 MiB plus the FATs. */
const FAT32_MIN_MIB = 36;
/** 1980-01-01 00:00:00 UTC, the earliest FAT timestamp. */
const FAT_EPOCH = "315532800";

/** The firmware's removable-media path for an architecture. */
export const removableBootPath = (arch: Arch): string => removablePath(arch);

/**
 * Writes a GPT disk image at `out` with one EFI System Partition holding `efi` at
 * EFI/BOOT/BOOT{AA64,X64}.EFI. `sizeMiB` is the whole disk (default: the UKI plus a margin, at
 * least 40 MiB so that the partition can be FAT32). Written where it is told, not flushed: the
 * caller makes it atomic (Store.put, writeAtomically); removed when it fails.
 * `efiSha256`: the sha256 of `efi`'s bytes, when known (it seeds the GUIDs and the FAT serial).
 */
export async function makeEspImage(opts: { efi: string; arch: Arch; out: string; sizeMiB?: number; efiSha256?: string }): Promise<void> {
  const efiSize = (await fs.stat(opts.efi)).size;
  // The caller may know the UKI's sha256 (the store's record of it): reading 100+ MB again to
  // learn it costs 0.15-0.3 s of every boot disk.
  const hash = opts.efiSha256 ?? (await sha256File(opts.efi));
  const seed = createHash("sha256").update(`ramroot-esp\0${opts.arch}\0${hash}`).digest();
  const sizeMiB = opts.sizeMiB ?? Math.max(40, Math.ceil((efiSize * 1.05) / MiB) + 8);
  if (!Number.isInteger(sizeMiB)) throw new Error(`bootmedia: a ${sizeMiB} MiB ESP image cannot hold ${opts.efi} (${efiSize} bytes)`);
  try {
    const fh = await fs.open(opts.out, "w");
    await fh.truncate(sizeMiB * MiB).finally(() => fh.close());
    await writeEsp(opts.out, { efi: opts.efi, arch: opts.arch, diskBytes: sizeMiB * MiB, seed, serial: seed.subarray(16, 20).toString("hex").toUpperCase(), label: "ESP" });
  } catch (e) {
    await fs.rm(opts.out, { force: true });
    throw e;
  }
}

/**
 * Lays out `target` (an image file of `diskBytes`, or a block device of that size) as a GPT
 * disk with one EFI System Partition: FAT (32 where it is big enough), serial `serial` (the
 * volume id, 8 hex digits), `efi` at the architecture's removable path, and `folders` made.
 * GUIDs come from `seed`, so the layout is a function of the inputs.
 */
export async function writeEsp(target: string, o: { efi: string; arch: Arch; diskBytes: number; seed: Buffer; serial: string; label: string; folders?: string[] }): Promise<void> {
  const bootPath = removableBootPath(o.arch);
  const efiSize = (await fs.stat(o.efi)).size;
  // The partition starts at 1 MiB and leaves the last MiB for the backup GPT.
  const partBytes = Math.floor(o.diskBytes / MiB) * MiB - 2 * MiB;
  // FAT32 overhead: 32 reserved sectors + 2 FATs of 4 bytes per cluster, plus directories.
  if (partBytes < 8 * MiB || efiSize + partBytes / 64 + 64 * 1024 > partBytes)
    throw new Error(`bootmedia: a ${(o.diskBytes / MiB).toFixed(0)} MiB disk cannot hold ${o.efi} (${efiSize} bytes) on its ESP`);
  const table = [
    "label: gpt",
    `label-id: ${guid(o.seed, 0)}`,
    `start=${PART_START / SECTOR}, size=${partBytes / SECTOR}, type=${ESP_TYPE}, uuid=${guid(o.seed, 1)}, name="EFI System Partition"`,
    "",
  ].join("\n");
  await sh("sfdisk", ["--quiet", "--no-reread", "--no-tell-kernel", target], { input: table });
  const fat = partBytes / MiB >= FAT32_MIN_MIB ? "32" : "16";
  await sh("mkfs.vfat", ["--invariant", "-F", fat, "-i", o.serial, "-n", o.label, `--offset=${PART_START / SECTOR}`, target, String(partBytes / 1024)]);
  const img = `${target}@@${PART_START}`;
  const dirs = new Set<string>();
  for (const d of [path.posix.dirname(bootPath), ...(o.folders ?? [])])
    for (let p = d; p !== "." && p !== "/"; p = path.posix.dirname(p)) dirs.add(p);
  await mtools("mmd", ["-i", img, ...[...dirs].sort((a, b) => a.length - b.length || a.localeCompare(b)).map((d) => `::/${d}`)]);
  await mtools("mcopy", ["-i", img, o.efi, `::/${bootPath}`]);
}

/** Where the ESP starts on a disk that writeEsp made (for mtools: `DISK@@offset`). */
export const ESP_OFFSET = PART_START;

export interface EspListing {
  /** GPT disk GUID. */
  diskId: string;
  partition: { start: number; size: number; type: string; uuid: string; name?: string };
  /** FAT volume serial as the kernel shows it (XXXX-XXXX). */
  volumeSerial: string;
  fatType: string;
  /** Every file on the ESP, paths relative to its root (EFI/BOOT/BOOTX64.EFI), sorted. */
  files: { path: string; size: number; sha256: string }[];
}

/** What is on the ESP of a disk image written by makeEspImage (or any GPT disk with one ESP). */
export async function listEspImage(image: string): Promise<EspListing> {
  const pt = JSON.parse(await sh("sfdisk", ["--json", image])).partitiontable;
  if (pt?.label !== "gpt") throw new Error(`bootmedia: ${image} has no GPT`);
  const esp = (pt.partitions ?? []).find((p: any) => String(p.type).toUpperCase() === ESP_TYPE);
  if (!esp) throw new Error(`bootmedia: ${image} has no EFI System Partition`);
  const sectorSize: number = pt.sectorsize ?? SECTOR;
  const img = `${image}@@${esp.start * sectorSize}`;
  const info = await mtools("minfo", ["-i", img, "::"]);
  const serial = /serial number:\s*([0-9A-Fa-f]{8})/.exec(info)?.[1]?.toUpperCase() ?? "";
  const fatType = /disk type="([^"]*)"/.exec(info)?.[1]?.trim() ?? "";
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-esp-"));
  try {
    const listing = await mtools("mdir", ["-i", img, "-/", "-b", "::/"]);
    if (listing.trim()) await mtools("mcopy", ["-s", "-n", "-i", img, "::/*", tmp + "/"]);
    const files: EspListing["files"] = [];
    for (const rel of await walkFiles(tmp)) {
      const p = path.join(tmp, rel);
      files.push({ path: rel.split(path.sep).join("/"), size: (await fs.stat(p)).size, sha256: await sha256File(p) });
    }
    files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    return {
      diskId: pt.id,
      partition: { start: esp.start, size: esp.size, type: esp.type, uuid: esp.uuid, name: esp.name },
      volumeSerial: serial ? `${serial.slice(0, 4)}-${serial.slice(4)}` : "",
      fatType,
      files,
    };
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Creates the persistence disk, a bare FAT filesystem (no partition table) with the volume id
 * of the production stick, unless `out` exists: an existing image is never touched, since it
 * holds state. Returns whether it was created.
 */
export async function makePersistImage(opts: { out: string; volumeId?: string; sizeMiB?: number }): Promise<{ created: boolean }> {
  const volumeId = (opts.volumeId ?? PERSIST_VOLUME_ID).replace("-", "").toUpperCase();
  if (!/^[0-9A-F]{8}$/.test(volumeId)) throw new Error(`bootmedia: volume id ${opts.volumeId} is not 8 hex digits`);
  const sizeMiB = opts.sizeMiB ?? 64;
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1) throw new Error(`bootmedia: bad persistence image size ${sizeMiB}`);
  if (await exists(opts.out)) return { created: false };
  await fs.mkdir(path.dirname(path.resolve(opts.out)), { recursive: true });
  const tmp = temporaryName(opts.out);
  try {
    const fat = sizeMiB >= FAT32_MIN_MIB ? ["-F", "32"] : [];
    await sh("mkfs.vfat", [...fat, "-i", volumeId, "-n", "RAMROOT", "-C", tmp, String(sizeMiB * 1024)]);
    await syncFile(tmp);
    // link() fails when `out` appeared meanwhile: never replace an existing image.
    try {
      await fs.link(tmp, opts.out);
    } catch (e: any) {
      if (e.code === "EEXIST") return { created: false };
      throw e;
    }
    return { created: true };
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/**
 * `fsck.vfat -n` on the persistence image (read-only: nothing is repaired). Clean means no
 * errors and no dirty bit, i.e. the last system that mounted it unmounted it.
 */
export async function checkPersistImage(image: string): Promise<{ clean: boolean; output: string }> {
  let r;
  try {
    r = await run("fsck.vfat", ["-n", image], { allowFail: true });
  } catch (e: any) {
    throw new Error(`bootmedia: ${e.message}`);
  }
  const output = (r.stdout + r.stderr).trim();
  // 0: clean; 1: errors found (-n leaves them); anything else: fsck could not check it.
  if (r.exitCode === 0 || r.exitCode === 1) return { clean: r.exitCode === 0, output };
  throw new Error(`bootmedia: fsck.vfat -n ${image} failed (${r.exitCode}): ${output}`);
}

/** A file from the persistence image (a path from its root), or undefined when it is absent. */
export async function readPersistFile(image: string, file: string): Promise<Buffer | undefined> {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-persist-"));
  try {
    const dest = path.join(tmp, "f");
    try {
      await mtools("mcopy", ["-n", "-i", image, fatPath(file), dest]);
    } catch (e: any) {
      if (/not found/i.test(String(e.message))) return undefined;
      throw e;
    }
    return await fs.readFile(dest);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** Writes (or replaces) a file on the persistence image, creating its folders. */
export async function writePersistFile(image: string, file: string, data: Buffer): Promise<void> {
  const target = fatPath(file);
  const parts = target.slice(3).split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const dir = `::/${parts.slice(0, i).join("/")}`;
    try {
      await mtools("mmd", ["-i", image, dir]);
    } catch (e: any) {
      if (!/exists/i.test(String(e.message))) throw e;
    }
  }
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-persist-"));
  try {
    const src = path.join(tmp, "f");
    await fs.writeFile(src, data);
    await mtools("mcopy", ["-o", "-i", image, src, target]);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

function fatPath(file: string): string {
  const parts = file.split("/").filter((p) => p && p !== ".");
  if (parts.length === 0 || parts.includes("..")) throw new Error(`bootmedia: bad file name ${file}`);
  return `::/${parts.join("/")}`;
}

/** A GUID from 16 bytes of `seed` (the n-th 16-byte slice), marked as a version 4 / RFC 4122 variant. */
function guid(seed: Buffer, n: number): string {
  const b = Buffer.from(createHash("sha256").update(seed).update(String(n)).digest().subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString("hex").toUpperCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function mtools(cmd: string, args: string[]): Promise<string> {
  return sh(cmd, args, { env: { MTOOLS_SKIP_CHECK: "1", SOURCE_DATE_EPOCH: FAT_EPOCH, TZ: "UTC" } });
}

/** A command through the runner (src/run.ts), its stdout; a failure says it came from here. */
async function sh(cmd: string, args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<string> {
  try {
    return (await run(cmd, args, { input: opts.input, env: { ...baseEnv(), ...opts.env } })).stdout;
  } catch (e: any) {
    throw new Error(`bootmedia: ${e.message}`);
  }
}

async function walkFiles(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...(await walkFiles(dir, r)));
    else if (e.isFile()) out.push(r);
  }
  return out;
}

async function syncFile(file: string): Promise<void> {
  const fh = await fs.open(file, "r+");
  await fh.sync().finally(() => fh.close());
}

function exists(p: string): Promise<boolean> {
  return fs.access(p).then(() => true, () => false);
}
