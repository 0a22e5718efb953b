// PE/COFF headers: just enough to append sections to an EFI stub and read them back.
//
// A PE image starts with a DOS header ("MZ", e_lfanew at 0x3C pointing at "PE\0\0"), then the
// COFF header (20 bytes), the optional header (PE32 or PE32+), and the section table (40 bytes
// per section). Everything in those headers fits in the first SizeOfHeaders bytes of the file,
// so parsing and rewriting work on that one buffer; section contents never pass through here.
// `layoutSections` is the only place that does placement arithmetic (as in systemd's ukify).

export const IMAGE_SCN_CNT_CODE = 0x00000020;
export const IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040;
export const IMAGE_SCN_MEM_READ = 0x40000000;

const MACHINES: Record<number, string> = { 0x8664: "x86_64", 0xaa64: "aarch64", 0x14c: "i386", 0x1c4: "arm", 0x5064: "riscv64" };
const SECTION_HEADER_SIZE = 40;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const DIRECTORY_SECURITY = 4;

export interface PeSection {
  name: string;
  virtualSize: number;
  virtualAddress: number;
  sizeOfRawData: number;
  pointerToRawData: number;
  characteristics: number;
}

export interface PeHeaders {
  file: string;
  machine: number;
  arch: string; // "x86_64", "aarch64", or "machine 0x...." for others
  pe32plus: boolean;
  peOffset: number; // offset of "PE\0\0"
  optOffset: number; // offset of the optional header
  sectionTableOffset: number;
  timeDateStamp: number;
  sectionAlignment: number;
  fileAlignment: number;
  sizeOfImage: number;
  sizeOfHeaders: number;
  sizeOfInitializedData: number;
  checksum: number;
  checksumOffset: number; // file offset of the CheckSum field
  security: { virtualAddress: number; size: number };
  sections: PeSection[];
}

/**
 * The machine of the PE image whose first bytes are `head` ("x86_64", "aarch64", or "machine
 * 0x...."), or why they are not the start of one. Only the DOS header's e_lfanew and the COFF
 * header's Machine field are read: a few KiB of a file say it, wherever they came from.
 */
export function peMachine(head: Buffer): { arch: string } | { why: string } {
  if (head.length < 0x40 || head.toString("latin1", 0, 2) !== "MZ") return { why: head.length === 0 ? "it is empty" : "no MZ header" };
  const pe = head.readUInt32LE(0x3c);
  if (pe + 6 > head.length) return { why: `no PE header in its first ${head.length} bytes` };
  if (head.toString("latin1", pe, pe + 4) !== "PE\0\0") return { why: "no PE signature" };
  const machine = head.readUInt16LE(pe + 4);
  return { arch: MACHINES[machine] ?? `machine 0x${machine.toString(16)}` };
}

/** How many header bytes to read before calling parsePe: enough for any stub we expect. */
export const PE_HEADER_PROBE = 4096;

/**
 * Parses the headers in `buf` (the start of `file`, at least up to the end of the section
 * table). Throws an error naming `file` when it is not a PE/COFF image.
 */
export function parsePe(buf: Buffer, file: string): PeHeaders {
  const notPe = (why: string) => new Error(`${file} is not a PE/COFF image (${why}): pass a systemd-stub such as linuxx64.efi.stub or linuxaa64.efi.stub`);
  if (buf.length < 0x40 || buf.toString("latin1", 0, 2) !== "MZ") throw notPe("no MZ header");
  const peOffset = buf.readUInt32LE(0x3c);
  if (peOffset + 24 > buf.length || buf.toString("latin1", peOffset, peOffset + 4) !== "PE\0\0") throw notPe("no PE signature");
  const machine = buf.readUInt16LE(peOffset + 4);
  const numberOfSections = buf.readUInt16LE(peOffset + 6);
  const sizeOfOptionalHeader = buf.readUInt16LE(peOffset + 20);
  const optOffset = peOffset + 24;
  const sectionTableOffset = optOffset + sizeOfOptionalHeader;
  if (sectionTableOffset + numberOfSections * SECTION_HEADER_SIZE > buf.length) throw notPe("truncated headers");
  const magic = buf.readUInt16LE(optOffset);
  if (magic !== 0x10b && magic !== 0x20b) throw notPe(`optional header magic 0x${magic.toString(16)}`);
  const pe32plus = magic === 0x20b;
  // The data directories follow the fixed fields, which are 16 bytes longer in PE32+.
  const dirOffset = optOffset + (pe32plus ? 112 : 96);
  const numberOfRvaAndSizes = buf.readUInt32LE(optOffset + (pe32plus ? 108 : 92));
  const security = { virtualAddress: 0, size: 0 };
  if (numberOfRvaAndSizes > DIRECTORY_SECURITY && dirOffset + 8 * (DIRECTORY_SECURITY + 1) <= sectionTableOffset) {
    security.virtualAddress = buf.readUInt32LE(dirOffset + 8 * DIRECTORY_SECURITY);
    security.size = buf.readUInt32LE(dirOffset + 8 * DIRECTORY_SECURITY + 4);
  }
  const sections: PeSection[] = [];
  for (let i = 0; i < numberOfSections; i++) {
    const o = sectionTableOffset + i * SECTION_HEADER_SIZE;
    sections.push({
      name: buf.toString("latin1", o, o + 8).replace(/\0+$/, ""),
      virtualSize: buf.readUInt32LE(o + 8),
      virtualAddress: buf.readUInt32LE(o + 12),
      sizeOfRawData: buf.readUInt32LE(o + 16),
      pointerToRawData: buf.readUInt32LE(o + 20),
      characteristics: buf.readUInt32LE(o + 36),
    });
  }
  return {
    file, machine, pe32plus, peOffset, optOffset, sectionTableOffset, sections, security,
    arch: MACHINES[machine] ?? `machine 0x${machine.toString(16)}`,
    timeDateStamp: buf.readUInt32LE(peOffset + 8),
    sectionAlignment: buf.readUInt32LE(optOffset + 32),
    fileAlignment: buf.readUInt32LE(optOffset + 36),
    sizeOfInitializedData: buf.readUInt32LE(optOffset + 8),
    sizeOfImage: buf.readUInt32LE(optOffset + 56),
    sizeOfHeaders: buf.readUInt32LE(optOffset + 60),
    checksum: buf.readUInt32LE(optOffset + 64),
    checksumOffset: optOffset + 64,
  };
}

export function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** A section to append: only its name, length and flags matter to the layout. */
export interface NewSection {
  name: string;
  size: number;
  characteristics: number;
}

export interface PeLayout {
  /** The appended sections, placed: PointerToRawData, VirtualAddress, sizes. */
  sections: PeSection[];
  numberOfSections: number;
  sizeOfImage: number;
  sizeOfHeaders: number;
  sizeOfInitializedData: number;
  /** Length of the output file: the last section's raw data, padded to FileAlignment. */
  fileSize: number;
}

/**
 * Places `add` after everything in the stub (`stubSize` bytes long): each section starts at
 * the next SectionAlignment boundary past the end of the previous one in memory, and at the
 * next FileAlignment boundary in the file. VirtualSize is the real size, SizeOfRawData the
 * aligned one. Fails when the header has no room for the new section headers.
 */
export function layoutSections(pe: PeHeaders, stubSize: number, add: NewSection[]): PeLayout {
  if (pe.security.virtualAddress !== 0 || pe.security.size !== 0) {
    throw new Error(`${pe.file} is signed (it has a certificate table): use an unsigned systemd-stub and sign the finished UKI instead`);
  }
  if (!pe.sectionAlignment || !pe.fileAlignment) throw new Error(`${pe.file}: SectionAlignment or FileAlignment is zero`);
  for (const s of add) {
    if (!/^[\x21-\x7e]{1,8}$/.test(s.name)) throw new Error(`bad PE section name ${JSON.stringify(s.name)}: 1 to 8 printable ASCII characters`);
  }
  // Header room: the new section headers must end before the first section's data and
  // within SizeOfHeaders rounded up to FileAlignment (the bytes up to there are header padding).
  const firstData = Math.min(...pe.sections.filter((s) => s.sizeOfRawData > 0).map((s) => s.pointerToRawData), Infinity);
  const sizeOfHeaders = Math.min(roundUp(pe.sizeOfHeaders, pe.fileAlignment), firstData);
  const tableEnd = pe.sectionTableOffset + (pe.sections.length + add.length) * SECTION_HEADER_SIZE;
  if (tableEnd > sizeOfHeaders) {
    const room = Math.floor((sizeOfHeaders - pe.sectionTableOffset) / SECTION_HEADER_SIZE) - pe.sections.length;
    throw new Error(`${pe.file}: no room in the PE header for ${add.length} more section headers (room for ${Math.max(room, 0)}): use a stub with a larger SizeOfHeaders`);
  }

  let vaEnd = Math.max(pe.sizeOfHeaders, ...pe.sections.map((s) => s.virtualAddress + s.virtualSize));
  let fileEnd = Math.max(stubSize, ...pe.sections.map((s) => s.pointerToRawData + s.sizeOfRawData));
  let sizeOfInitializedData = pe.sizeOfInitializedData;
  const sections: PeSection[] = [];
  for (const s of add) {
    const placed: PeSection = {
      name: s.name,
      virtualSize: s.size,
      virtualAddress: roundUp(vaEnd, pe.sectionAlignment),
      sizeOfRawData: roundUp(s.size, pe.fileAlignment),
      pointerToRawData: roundUp(fileEnd, pe.fileAlignment),
      characteristics: s.characteristics,
    };
    sections.push(placed);
    vaEnd = placed.virtualAddress + placed.virtualSize;
    fileEnd = placed.pointerToRawData + placed.sizeOfRawData;
    sizeOfInitializedData += s.size; // as ukify does, for every added section
  }
  const sizeOfImage = roundUp(vaEnd, pe.sectionAlignment);
  if (sizeOfImage > 0xffffffff || fileEnd > 0xffffffff || sizeOfInitializedData > 0xffffffff) {
    throw new Error(`${pe.file}: the image would be larger than 4 GiB, which PE cannot describe`);
  }
  return {
    sections,
    numberOfSections: pe.sections.length + add.length,
    sizeOfImage,
    sizeOfHeaders: Math.max(pe.sizeOfHeaders, sizeOfHeaders),
    sizeOfInitializedData,
    fileSize: roundUp(fileEnd, pe.fileAlignment),
  };
}

/**
 * Returns a copy of the stub's header bytes (`head`, at least SizeOfHeaders long) updated for
 * `layout`: counts and sizes, the new section headers, and CheckSum set to zero (the caller
 * computes it over the whole file and patches it at `pe.checksumOffset`).
 */
export function writeHeaders(head: Buffer, pe: PeHeaders, layout: PeLayout): Buffer {
  const out = Buffer.alloc(layout.sizeOfHeaders);
  head.copy(out, 0, 0, Math.min(head.length, layout.sizeOfHeaders));
  out.writeUInt16LE(layout.numberOfSections, pe.peOffset + 6);
  out.writeUInt32LE(layout.sizeOfInitializedData, pe.optOffset + 8);
  out.writeUInt32LE(layout.sizeOfImage, pe.optOffset + 56);
  out.writeUInt32LE(layout.sizeOfHeaders, pe.optOffset + 60);
  out.writeUInt32LE(0, pe.checksumOffset);
  layout.sections.forEach((s, i) => {
    const o = pe.sectionTableOffset + (pe.sections.length + i) * SECTION_HEADER_SIZE;
    out.fill(0, o, o + SECTION_HEADER_SIZE);
    out.write(s.name, o, 8, "latin1");
    out.writeUInt32LE(s.virtualSize, o + 8);
    out.writeUInt32LE(s.virtualAddress, o + 12);
    out.writeUInt32LE(s.sizeOfRawData, o + 16);
    out.writeUInt32LE(s.pointerToRawData, o + 20);
    out.writeUInt32LE(s.characteristics, o + 36);
  });
  return out;
}

/**
 * The PE checksum (as in Windows' CheckSumMappedFile): the 16-bit ones'-complement sum of the
 * file's little-endian words, with the CheckSum field read as zero, plus the file length.
 * Feed the file in order with `update`; chunks may have any length.
 */
export class PeChecksum {
  private sum = 0;
  private length = 0;
  private odd: number | undefined; // a byte left over from the previous chunk

  constructor(private readonly checksumOffset: number) {}

  update(chunk: Buffer): void {
    const at = this.length;
    this.length += chunk.length;
    const field = this.checksumOffset - at;
    if (field + 4 > 0 && field < chunk.length) {
      chunk = Buffer.from(chunk); // the CheckSum field counts as zero: blank it in a copy
      chunk.fill(0, Math.max(field, 0), Math.min(field + 4, chunk.length));
    }
    let i = 0;
    if (this.odd !== undefined && chunk.length > 0) {
      this.sum += this.odd | (chunk[0] << 8);
      this.odd = undefined;
      i = 1;
    }
    // Words are summed into a double, exact up to 2^53: folding waits for digest().
    const words = (chunk.length - i) >> 1;
    if (LITTLE_ENDIAN && (chunk.byteOffset + i) % 2 === 0) {
      const view = new Uint16Array(chunk.buffer, chunk.byteOffset + i, words);
      let sum = 0;
      for (let k = 0; k < words; k++) sum += view[k];
      this.sum += sum;
    } else {
      let sum = 0;
      for (let k = i; k < i + 2 * words; k += 2) sum += chunk[k] | (chunk[k + 1] << 8);
      this.sum += sum;
    }
    i += 2 * words;
    if (i < chunk.length) this.odd = chunk[i];
  }

  digest(): number {
    if (this.odd !== undefined) this.sum += this.odd;
    this.odd = undefined;
    let s = this.sum;
    while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
    return (s + this.length) >>> 0;
  }
}
