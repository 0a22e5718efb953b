// PE/COFF headers: just enough to append sections to an EFI stub and read them back.
//
// A PE image starts with a DOS header ("MZ", e_lfanew at 0x3C pointing at "PE\0\0"), then the
// COFF header (20 bytes), the optional header (PE32 or PE32+), and the section table (40 bytes
// per section). Everything in those headers fits in the first SizeOfHeaders bytes of the file,
// so parsing and rewriting work on that one buffer; section contents never pass through here.
// `layoutSections` is the only place that does placement arithmetic (as in systemd's ukify).
//
// The output holds the headers and the sections and nothing else. Authenticode (what Secure
// Boot checks) hashes a PE by its headers and sections; bytes outside them are hashed by some
// implementations and not by others (EDK2 and sbsign skip a gap between sections that
// osslsigncode hashes), so a signature made by one is refused by another. Debian's stubs carry
// such bytes: linuxx64.efi.stub a COFF symbol table after its last section (362 symbols and
// their strings, 12,641 bytes; an image needs none, and ukify drops it too), linuxaa64.efi.stub
// 5,076 bytes past its last section that gnu-efi's `objcopy -O binary` left there (.dynsym,
// .dynstr, .gnu.hash, .sbat, .sdmagic of the ELF stub: past SizeOfImage, so never loaded; its
// code and relocations reach nothing past 0x10000). Those bytes are dropped: `unsectioned` says
// where they are, and the stub's sections are packed after the headers (a no-op for Debian's).

export const IMAGE_SCN_CNT_CODE = 0x00000020;
export const IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040;
export const IMAGE_SCN_MEM_READ = 0x40000000;
/** COFF Characteristics: the image holds no COFF symbol table. */
export const IMAGE_FILE_LOCAL_SYMS_STRIPPED = 0x0008;

const MACHINES: Record<number, string> = { 0x8664: "x86_64", 0xaa64: "aarch64", 0x14c: "i386", 0x1c4: "arm", 0x5064: "riscv64" };
const SECTION_HEADER_SIZE = 40;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const DIRECTORY_SECURITY = 4;
const DIRECTORY_DEBUG = 6;
const COFF_SYMBOL_SIZE = 18;

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
  characteristics: number; // COFF Characteristics
  pointerToSymbolTable: number;
  numberOfSymbols: number;
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
  /** File offset of the certificate table's directory entry (8 bytes), or undefined. */
  securityDirOffset?: number;
  /** The data directories (RVA and size; the certificate table's "RVA" is a file offset). */
  directories: { virtualAddress: number; size: number }[];
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
  const directories: { virtualAddress: number; size: number }[] = [];
  for (let i = 0; i < Math.min(numberOfRvaAndSizes, 16) && dirOffset + 8 * (i + 1) <= sectionTableOffset; i++) {
    directories.push({ virtualAddress: buf.readUInt32LE(dirOffset + 8 * i), size: buf.readUInt32LE(dirOffset + 8 * i + 4) });
  }
  const security = { ...(directories[DIRECTORY_SECURITY] ?? { virtualAddress: 0, size: 0 }) };
  const securityDirOffset = directories.length > DIRECTORY_SECURITY ? dirOffset + 8 * DIRECTORY_SECURITY : undefined;
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
    file, machine, pe32plus, peOffset, optOffset, sectionTableOffset, sections, security, securityDirOffset, directories,
    characteristics: buf.readUInt16LE(peOffset + 22),
    pointerToSymbolTable: buf.readUInt32LE(peOffset + 12),
    numberOfSymbols: buf.readUInt32LE(peOffset + 16),
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
  /** The stub's own sections (in section-table order), where they go in the output. */
  stubSections: PeSection[];
  /** The appended sections, placed: PointerToRawData, VirtualAddress, sizes. */
  sections: PeSection[];
  numberOfSections: number;
  sizeOfImage: number;
  sizeOfHeaders: number;
  sizeOfInitializedData: number;
  /** Length of the output file: the last section's raw data, padded to FileAlignment. */
  fileSize: number;
}

/** A run of stub bytes that neither the headers nor a section hold. */
export interface Unsectioned {
  offset: number;
  size: number;
  what: "COFF symbol table" | "unsectioned data";
}

/**
 * The bytes of a PE file of `size` bytes outside its headers (SizeOfHeaders), its sections' raw
 * data and its certificate table, in file order: for a stub, what `layoutSections` leaves out of
 * the output; for a UKI, what Authenticode implementations disagree on. The COFF symbol table
 * (`stringTableSize`: the length of the string table that follows it, see `stringTableSize`) is
 * named as such.
 */
export function unsectioned(pe: PeHeaders, size: number, stringTableSize = 0): Unsectioned[] {
  const covered: [number, number][] = [[0, Math.min(pe.sizeOfHeaders, size)]];
  for (const s of pe.sections) if (s.sizeOfRawData > 0) covered.push([s.pointerToRawData, Math.min(s.pointerToRawData + s.sizeOfRawData, size)]);
  if (pe.security.size > 0) covered.push([pe.security.virtualAddress, Math.min(pe.security.virtualAddress + pe.security.size, size)]);
  covered.sort((a, b) => a[0] - b[0]);
  const gaps: [number, number][] = [];
  let pos = 0;
  for (const [start, end] of covered) {
    if (start > pos) gaps.push([pos, start]);
    pos = Math.max(pos, end);
  }
  if (pos < size) gaps.push([pos, size]);
  const symbols = pe.pointerToSymbolTable > 0 && pe.pointerToSymbolTable < size
    ? [pe.pointerToSymbolTable, Math.min(pe.pointerToSymbolTable + pe.numberOfSymbols * COFF_SYMBOL_SIZE + stringTableSize, size)]
    : undefined;
  const out: Unsectioned[] = [];
  for (const [start, end] of gaps) {
    const cuts = [start, ...(symbols ?? []).filter((x) => x > start && x < end), end];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const inSymbols = !!symbols && cuts[i] >= symbols[0] && cuts[i + 1] <= symbols[1];
      out.push({ offset: cuts[i], size: cuts[i + 1] - cuts[i], what: inSymbols ? "COFF symbol table" : "unsectioned data" });
    }
  }
  return out;
}

/** Where the COFF string table starts (right after the symbol table), or undefined. */
export function stringTableOffset(pe: PeHeaders): number | undefined {
  return pe.pointerToSymbolTable > 0 ? pe.pointerToSymbolTable + pe.numberOfSymbols * COFF_SYMBOL_SIZE : undefined;
}

/** The length of the COFF string table in `buf` (the whole file): its first four bytes. */
export function stringTableSize(buf: Buffer, pe: PeHeaders): number {
  const at = stringTableOffset(pe);
  return at !== undefined && at + 4 <= buf.length ? Math.max(buf.readUInt32LE(at), 4) : 0;
}

/**
 * Lays out the UKI: the headers, the stub's sections packed after them in their file order
 * (each at the next FileAlignment boundary, SizeOfRawData rounded up to it: where the stub's
 * sections already follow each other, as in Debian's, nothing moves), then `add`, each at the
 * next SectionAlignment boundary past the end of the previous section in memory and the next
 * FileAlignment boundary in the file. VirtualSize is the real size, SizeOfRawData the aligned
 * one. Nothing of the stub (`stubSize` bytes long) outside its headers and sections is kept
 * (see `unsectioned`). Fails when the header has no room for the new section headers.
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
  const sizeOfHeaders = Math.max(pe.sizeOfHeaders, Math.min(roundUp(pe.sizeOfHeaders, pe.fileAlignment), firstData));
  const tableEnd = pe.sectionTableOffset + (pe.sections.length + add.length) * SECTION_HEADER_SIZE;
  if (tableEnd > sizeOfHeaders) {
    const room = Math.floor((sizeOfHeaders - pe.sectionTableOffset) / SECTION_HEADER_SIZE) - pe.sections.length;
    throw new Error(`${pe.file}: no room in the PE header for ${add.length} more section headers (room for ${Math.max(room, 0)}): use a stub with a larger SizeOfHeaders`);
  }

  // The stub's sections, packed in file order.
  const stubSections = pe.sections.map((s) => ({ ...s }));
  const inFileOrder = stubSections.map((s, i) => ({ s, orig: pe.sections[i] })).filter((x) => x.s.sizeOfRawData > 0).sort((x, y) => x.orig.pointerToRawData - y.orig.pointerToRawData);
  let fileEnd = sizeOfHeaders;
  let prevEnd = 0;
  let moved = false;
  for (const { s, orig } of inFileOrder) {
    if (orig.pointerToRawData + orig.sizeOfRawData > stubSize) throw new Error(`${pe.file} is truncated: section ${orig.name} ends past the end of the file`);
    if (orig.pointerToRawData < prevEnd) throw new Error(`${pe.file}: section ${orig.name} overlaps another one in the file: use an unmodified systemd-stub`);
    prevEnd = orig.pointerToRawData + orig.sizeOfRawData;
    s.pointerToRawData = roundUp(fileEnd, pe.fileAlignment);
    s.sizeOfRawData = roundUp(orig.sizeOfRawData, pe.fileAlignment);
    moved ||= s.pointerToRawData !== orig.pointerToRawData;
    fileEnd = s.pointerToRawData + s.sizeOfRawData;
  }
  // A debug directory points at its data by file offset too: moving sections would break it.
  if (moved && (pe.directories[DIRECTORY_DEBUG]?.size ?? 0) > 0) {
    throw new Error(`${pe.file} has bytes between its sections and a debug directory that points into them by file offset: use a stub whose sections follow each other in the file`);
  }

  let vaEnd = Math.max(pe.sizeOfHeaders, ...pe.sections.map((s) => s.virtualAddress + s.virtualSize));
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
    stubSections,
    sections,
    numberOfSections: pe.sections.length + add.length,
    sizeOfImage,
    sizeOfHeaders,
    sizeOfInitializedData,
    fileSize: roundUp(fileEnd, pe.fileAlignment),
  };
}

/**
 * Returns a copy of the stub's header bytes (`head`, at least SizeOfHeaders long) updated for
 * `layout`: counts and sizes, the stub's sections where they moved, the new section headers, no
 * COFF symbol table (PointerToSymbolTable and NumberOfSymbols zero and, where the stub had one,
 * IMAGE_FILE_LOCAL_SYMS_STRIPPED set, as ukify does), and CheckSum set to zero (the caller
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
  if (pe.pointerToSymbolTable !== 0 || pe.numberOfSymbols !== 0) {
    out.writeUInt32LE(0, pe.peOffset + 12);
    out.writeUInt32LE(0, pe.peOffset + 16);
    out.writeUInt16LE(pe.characteristics | IMAGE_FILE_LOCAL_SYMS_STRIPPED, pe.peOffset + 22);
  }
  layout.stubSections.forEach((s, i) => {
    const o = pe.sectionTableOffset + i * SECTION_HEADER_SIZE;
    out.writeUInt32LE(s.sizeOfRawData, o + 16);
    out.writeUInt32LE(s.pointerToRawData, o + 20);
  });
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
    let words = (chunk.length - i) >> 1;
    if (LITTLE_ENDIAN && (chunk.byteOffset + i) % 2 === 0) {
      // Where the bytes are 4-aligned in memory they are read as 32-bit words, each of them two
      // 16-bit words at once: hi * 65536 + lo is congruent to hi + lo modulo 65535, which is all
      // the ones'-complement sum keeps (RFC 1071), and it is 0 only when both are. Half the loop
      // of a 100+ MB image; folded every 2^20 words to stay exact.
      if ((chunk.byteOffset + i) % 4 === 2 && words > 0) {
        this.sum += chunk[i] | (chunk[i + 1] << 8);
        i += 2;
        words--;
      }
      const quads = words >> 1;
      const view32 = quads > 0 ? new Uint32Array(chunk.buffer, chunk.byteOffset + i, quads) : new Uint32Array(0);
      for (let start = 0; start < quads; start += 1 << 20) {
        const end = Math.min(quads, start + (1 << 20));
        let sum = 0;
        for (let k = start; k < end; k++) sum += view32[k];
        this.sum += fold(sum);
      }
      i += 4 * quads;
      words -= 2 * quads;
      if (words > 0) {
        this.sum += chunk[i] | (chunk[i + 1] << 8);
      }
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
    return (fold(this.sum) + this.length) >>> 0;
  }
}

/** A sum folded to 16 bits with end-around carry (ones' complement): the same value modulo 65535, 0 only for 0. */
function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}
