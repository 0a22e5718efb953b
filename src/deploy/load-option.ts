// UEFI boot entries (Boot#### variables, EFI_LOAD_OPTION: UEFI 2.10, 3.1.3) made by hand. A trial
// boot needs an entry for EFI\ramroot\trial.efi on the very partition the firmware booted the
// stick from. efibootmgr (Debian bookworm's, and busybox systems may have none) cannot write
// the full device path the firmware needs there, so the entry is built here from the one the
// firmware itself used (BootCurrent): its device path up to the partition, then our file.
//
// Variables travel as efivarfs files: 4 bytes of attributes, then the payload.

export const GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/** A trial entry's description: "ramroot trial BUILD ramroot-trial-seconds=N". */
export const TRIAL_DESCRIPTION = "ramroot trial";
export const TRIAL_SECONDS_KEY = "ramroot-trial-seconds";
/** NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS: what boot entries and BootNext carry. */
export const NV_BS_RT = 7;
const LOAD_OPTION_ACTIVE = 1;

export interface DevicePathNode { type: number; subtype: number; data: Buffer }
export interface LoadOption { attributes: number; description: string; path: DevicePathNode[]; optional: Buffer }

const MEDIA = 4, HARD_DRIVE = 1, FILE_PATH = 4, END = 0x7f, END_ENTIRE = 0xff;

/** An efivarfs file's bytes: the payload without its 4 attribute bytes. */
export function varPayload(file: Buffer): Buffer {
  if (file.length < 4) throw new Error(`an efivarfs file of ${file.length} bytes has no attributes`);
  return file.subarray(4);
}

export function varFile(payload: Buffer, attributes = NV_BS_RT): Buffer {
  const a = Buffer.alloc(4);
  a.writeUInt32LE(attributes);
  return Buffer.concat([a, payload]);
}

/** A 16-bit entry number as the variable names it: Boot0007. */
export const bootName = (n: number) => `Boot${n.toString(16).toUpperCase().padStart(4, "0")}`;

export function parseU16(payload: Buffer): number {
  if (payload.length < 2) throw new Error(`a UINT16 variable of ${payload.length} bytes`);
  return payload.readUInt16LE(0);
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

export function parseLoadOption(b: Buffer): LoadOption {
  if (b.length < 6) throw new Error(`a load option of ${b.length} bytes is too short`);
  const attributes = b.readUInt32LE(0);
  const pathLen = b.readUInt16LE(4);
  let i = 6;
  while (i + 1 < b.length && b.readUInt16LE(i) !== 0) i += 2;
  if (i + 1 >= b.length) throw new Error("a load option whose description has no terminating NUL");
  const description = b.subarray(6, i).toString("utf16le");
  const start = i + 2;
  if (start + pathLen > b.length) throw new Error(`a load option's device path (${pathLen} bytes) runs past its end`);
  const path: DevicePathNode[] = [];
  for (let j = start; j < start + pathLen;) {
    const type = b[j], subtype = b[j + 1], len = b.readUInt16LE(j + 2);
    if (len < 4 || j + len > start + pathLen) throw new Error(`a device path node of length ${len} at offset ${j}`);
    if (type === END && subtype === END_ENTIRE) break;
    path.push({ type, subtype, data: Buffer.from(b.subarray(j + 4, j + len)) });
    j += len;
  }
  return { attributes, description, path, optional: Buffer.from(b.subarray(start + pathLen)) };
}

function node(n: DevicePathNode): Buffer {
  const h = Buffer.alloc(4);
  h[0] = n.type;
  h[1] = n.subtype;
  h.writeUInt16LE(4 + n.data.length, 2);
  return Buffer.concat([h, n.data]);
}

export function encodeLoadOption(o: LoadOption): Buffer {
  const dp = Buffer.concat([...o.path.map(node), node({ type: END, subtype: END_ENTIRE, data: Buffer.alloc(0) })]);
  const head = Buffer.alloc(6);
  head.writeUInt32LE(o.attributes);
  head.writeUInt16LE(dp.length, 4);
  return Buffer.concat([head, Buffer.from(`${o.description}\0`, "utf16le"), dp, o.optional]);
}

/** The GPT partition a HD() node needs, as the host's disk says (see gptPartition). */
export interface GptPartition { number: number; start: bigint; size: bigint; guid: Buffer }

/** A HD(number, GPT, guid, start, size) media node. */
export function hardDriveNode(p: GptPartition): DevicePathNode {
  const d = Buffer.alloc(38);
  d.writeUInt32LE(p.number, 0);
  d.writeBigUInt64LE(p.start, 4);
  d.writeBigUInt64LE(p.size, 12);
  p.guid.copy(d, 20);
  d[36] = 2; // partition format: GPT
  d[37] = 2; // signature type: GUID
  return { type: MEDIA, subtype: HARD_DRIVE, data: d };
}

/** The GPT entry `number` (1-based) from the disk's LBA 1 (header) and its entry array. */
export function gptPartition(header: Buffer, entries: Buffer, number: number): GptPartition {
  if (header.subarray(0, 8).toString("latin1") !== "EFI PART") throw new Error("the disk has no GPT header at LBA 1");
  const entrySize = header.readUInt32LE(84);
  const e = entries.subarray((number - 1) * entrySize, number * entrySize);
  if (e.length < 56) throw new Error(`the GPT has no entry ${number}`);
  const first = e.readBigUInt64LE(32), last = e.readBigUInt64LE(40);
  return { number, start: first, size: last - first + 1n, guid: Buffer.from(e.subarray(16, 32)) };
}

/**
 * A load option for `file` (a path on the ESP, backslashes) on the partition the booted entry
 * came from: its device path up to and including its HD() node, else (an entry the firmware made
 * for a whole removable disk, as OVMF does) its whole path followed by a HD() node of `part`.
 */
export function trialLoadOption(booted: LoadOption, part: GptPartition | undefined, file: string, description: string, optional = Buffer.alloc(0)): LoadOption {
  const hd = booted.path.findIndex((n) => n.type === MEDIA && n.subtype === HARD_DRIVE);
  let prefix: DevicePathNode[];
  if (hd >= 0) prefix = booted.path.slice(0, hd + 1);
  else if (part && booted.path.length && !booted.path.some((n) => n.type === MEDIA)) prefix = [...booted.path, hardDriveNode(part)];
  else throw new Error(`the boot entry the host booted from ("${booted.description}") names no partition and no disk this deploy can extend: cannot make a trial entry (set ramroot:trialBoot false)`);
  if (!/^\\[^\0]+$/.test(file)) throw new Error(`a load option's file must be an absolute path with backslashes, got ${file}`);
  return {
    attributes: LOAD_OPTION_ACTIVE,
    description,
    path: [...prefix, { type: MEDIA, subtype: FILE_PATH, data: Buffer.from(`${file}\0`, "utf16le") }],
    optional,
  };
}

/** The file path of a load option (its FilePath node), or undefined. */
export function loadOptionFile(o: LoadOption): string | undefined {
  const f = o.path.find((n) => n.type === MEDIA && n.subtype === FILE_PATH);
  return f && f.data.toString("utf16le").replace(/\0+$/, "");
}
