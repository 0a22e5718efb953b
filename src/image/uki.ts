// The Unified Kernel Image: a systemd-stub with the kernel, initrd, command line and
// os-release appended as PE sections (UAPI "Unified Kernel Image" spec; systemd's ukify is the
// reference). `buildUki` writes one and says where each section went; `inspectUki` reads one back,
// with each section's sha256.
//
// Inputs are streamed into the output (the kernel and initrd may be 100+ MB), written where the
// caller says (Store.put and writeAtomically make it atomic). The output is a function of the
// inputs only: the stub's TimeDateStamp is kept and nothing else carries a time.
//
// The UKI holds the headers and sections and nothing else (see src/image/pe.ts), so that every
// Authenticode implementation computes the same digest for it. What the stub carries outside
// its sections is dropped, except two things found there that belong in sections, as the x86_64
// stub has them: its SBAT data (Debian's linuxaa64.efi.stub keeps it past its last section,
// where shim, which reads SBAT from a `.sbat` section, cannot see it) and its `.sdmagic`
// version string ("#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####"). Both are added as
// sections of those names, before the UKI's own, byte for byte (their NUL included).
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import {
  IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ,
  layoutSections, parsePe, peMachine, PeChecksum, PeHeaders, PeSection, stringTableSize, unsectioned, Unsectioned, writeHeaders,
} from "./pe";

export interface UkiInput {
  stub: string;
  linux: string;
  initrds: string[];
  cmdline: string;
  osRelease?: string; // file contents
  uname?: string;
}

export interface UkiSection {
  name: string;
  offset: number; // file offset
  vma: number;
  size: number; // VirtualSize: the real length of the content
  sha256: string; // of the section's bytes in the file (min(VirtualSize, SizeOfRawData) of them)
}

/** Linux's COMMAND_LINE_SIZE on x86 and arm64, including the terminating NUL. */
export const COMMAND_LINE_SIZE = 2048;

/** Throws when the kernel would not get `cmdline` intact. */
export function validateCmdline(cmdline: string): void {
  if (cmdline.trim() === "") throw new Error(`the kernel command line is empty: give at least console=... and rdinit=/init (or root=...)`);
  const bad = cmdline.search(/[\x00-\x1f\x7f]/);
  if (bad >= 0) {
    const c = cmdline.charCodeAt(bad);
    throw new Error(`the kernel command line contains ${c === 0 ? "a NUL" : c === 10 ? "a newline" : `control character 0x${c.toString(16)}`} at position ${bad}: separate parameters with spaces`);
  }
  const n = Buffer.byteLength(cmdline);
  if (n > COMMAND_LINE_SIZE - 1) {
    throw new Error(`the kernel command line is ${n} bytes; Linux keeps at most ${COMMAND_LINE_SIZE - 1} (COMMAND_LINE_SIZE is ${COMMAND_LINE_SIZE} on x86_64 and arm64): shorten it or move settings into the initrd`);
  }
}

// A section's content: literal bytes and/or whole files, in order.
type Part = Buffer | { file: string; size: number };
interface Payload { name: string; parts: Part[]; characteristics: number }

const DATA = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ;
const CHUNK = 4 << 20;

/** Where buildUki put a section; inspectUki also reads each one's sha256 back. */
export type PlacedSection = Omit<UkiSection, "sha256">;

export interface BuiltUki {
  sha256: string;
  size: number;
  sections: PlacedSection[];
  /** The stub's bytes left out (outside its headers and sections), in the stub's file offsets. */
  dropped: Unsectioned[];
  /** Sections made from stub data found outside its sections (".sbat", ".sdmagic"). */
  recovered: string[];
}

export async function buildUki(input: UkiInput, out: string): Promise<BuiltUki> {
  validateCmdline(input.cmdline);
  const stub = await readInput(input.stub, "systemd-stub", "install systemd-boot-efi and pass /usr/lib/systemd/boot/efi/linuxx64.efi.stub (linuxaa64.efi.stub on arm64)");
  const pe = parsePe(stub, input.stub);
  const linux = await sizeOf(input.linux, "kernel image", "pass the kernel, e.g. /boot/vmlinuz-<version>");
  if (linux.size === 0) throw new Error(`kernel image ${input.linux} is empty: pass the kernel, e.g. /boot/vmlinuz-<version>`);
  await checkKernelArch(input.linux, pe);

  // Several initrds become one .initrd: the kernel unpacks concatenated archives in order.
  // Each is padded to 4 bytes (as ukify does) so the next archive starts aligned.
  const initrd: Part[] = [];
  for (const file of input.initrds) {
    const part = await sizeOf(file, "initrd", "build it first, or leave it out of initrds");
    if (initrd.length) initrd.push(Buffer.alloc((4 - (partsSize(initrd) % 4)) % 4));
    initrd.push(part);
  }

  // The stub's own data found outside its sections first, then ukify's order; .linux last,
  // leaving room past the kernel for it to decompress into.
  const dropped = unsectioned(pe, stub.length, stringTableSize(stub, pe));
  const recovered = recoverStubData(stub, pe, dropped);
  const payloads: Payload[] = recovered.map((r) => ({ name: r.name, parts: [r.data], characteristics: DATA }));
  const text = (name: string, s: string | undefined) => { if (s !== undefined) payloads.push({ name, parts: [Buffer.from(s)], characteristics: DATA }); };
  text(".osrel", input.osRelease);
  text(".cmdline", input.cmdline);
  text(".uname", input.uname);
  if (initrd.length) payloads.push({ name: ".initrd", parts: initrd, characteristics: DATA });
  // ukify marks .linux as code: old stubs run the EFI handover entry inside the section.
  payloads.push({ name: ".linux", parts: [linux], characteristics: IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ });

  const already = pe.sections.find((s) => payloads.some((p) => p.name === s.name));
  if (already) throw new Error(`${input.stub} already has a ${already.name} section, so it is a UKI rather than a stub: pass the bare systemd-stub (linuxx64.efi.stub / linuxaa64.efi.stub)`);
  const layout = layoutSections(pe, stub.length, payloads.map((p) => ({ name: p.name, size: partsSize(p.parts), characteristics: p.characteristics })));
  const headers = writeHeaders(stub, pe, layout);

  // Written where it is told; the caller makes it atomic (Store.put, writeAtomically).
  const fh = await fs.open(out, "w");
  const sections: PlacedSection[] = [];
  try {
    const w = new Writer(fh, new PeChecksum(pe.checksumOffset));
    await w.write(headers);
    // The stub's sections in file order, where the layout put them; only their bytes.
    const order = pe.sections.map((s, i) => i).filter((i) => pe.sections[i].sizeOfRawData > 0).sort((x, y) => layout.stubSections[x].pointerToRawData - layout.stubSections[y].pointerToRawData);
    for (const i of order) {
      const orig = pe.sections[i], placed = layout.stubSections[i];
      await w.padTo(placed.pointerToRawData);
      await w.write(stub.subarray(orig.pointerToRawData, orig.pointerToRawData + orig.sizeOfRawData));
      await w.padTo(placed.pointerToRawData + placed.sizeOfRawData);
    }
    pe.sections.forEach((_, i) => sections.push(placed(layout.stubSections[i])));
    for (const [i, p] of payloads.entries()) {
      await w.padTo(layout.sections[i].pointerToRawData);
      for (const part of p.parts) await (Buffer.isBuffer(part) ? w.write(part) : w.copy(part));
      sections.push(placed(layout.sections[i]));
    }
    await w.padTo(layout.fileSize);
    const checksum = Buffer.alloc(4);
    checksum.writeUInt32LE(w.checksum.digest());
    await fh.write(checksum, 0, 4, pe.checksumOffset);
  } catch (e) {
    await fh.close().catch(() => {});
    await fs.rm(out, { force: true });
    throw e;
  }
  // The whole file's sha256 is known only once the CheckSum is in: read back, while the kernel
  // flushes the file (the caller's flush, to make it atomic, then has nothing left to write).
  let whole: string;
  try {
    [whole] = await Promise.all([hashFile(out, 0, layout.fileSize), fh.datasync()]);
  } catch (e) {
    await fs.rm(out, { force: true });
    throw e;
  } finally {
    await fh.close().catch(() => {});
  }
  return { sha256: whole, size: layout.fileSize, sections, dropped, recovered: recovered.map((r) => r.name) };
}

/**
 * The stub's SBAT data and .sdmagic string, when they are among the bytes `dropped` (outside
 * its sections) and it has no section of that name: each from its well-known start to its NUL,
 * included. SBAT is CSV whose first line is the "sbat,1,SBAT Version,..." record (shim's SBAT.md).
 */
function recoverStubData(stub: Buffer, pe: PeHeaders, dropped: Unsectioned[]): { name: string; data: Buffer }[] {
  const found: { name: string; data: Buffer }[] = [];
  const look = (name: string, re: RegExp) => {
    if (pe.sections.some((s) => s.name === name)) return;
    for (const d of dropped) {
      if (d.what !== "unsectioned data") continue;
      const m = re.exec(stub.toString("latin1", d.offset, d.offset + d.size));
      if (m) return void found.push({ name, data: Buffer.from(m[0], "latin1") });
    }
  };
  look(".sbat", /sbat,1,SBAT Version,[\x20-\x7e]*\n(?:[\x20-\x7e]+\n)*\0/);
  look(".sdmagic", /#### LoaderInfo: [\x20-\x7e]* ####\0/);
  return found;
}

export async function inspectUki(file: string): Promise<{
  arch: "x86_64" | "aarch64" | string;
  sections: UkiSection[];
  cmdline?: string;
  osRelease?: string;
  uname?: string;
  initrd?: { offset: number; size: number };
}> {
  const { size } = await sizeOf(file, "UKI", "build it first");
  const fh = await fs.open(file, "r");
  try {
    const head = Buffer.alloc(Math.min(size, 64 << 10));
    await fh.read(head, 0, head.length, 0);
    const pe = parsePe(head, file);
    const sections: UkiSection[] = [];
    const texts: Record<string, string> = {};
    let initrd: { offset: number; size: number } | undefined;
    for (const s of pe.sections) {
      const n = contentLength(s);
      if (s.pointerToRawData + n > size) throw new Error(`${file} is truncated: section ${s.name} ends past the end of the file`);
      sections.push(describe(s, await hashFile(file, s.pointerToRawData, n)));
      if (s.name === ".cmdline" || s.name === ".osrel" || s.name === ".uname") {
        const buf = Buffer.alloc(n);
        await fh.read(buf, 0, n, s.pointerToRawData);
        texts[s.name] = buf.toString("utf8").replace(/\0+$/, "");
      }
      if (s.name === ".initrd") initrd = { offset: s.pointerToRawData, size: s.virtualSize };
    }
    return { arch: pe.arch, sections, cmdline: texts[".cmdline"], osRelease: texts[".osrel"], uname: texts[".uname"], initrd };
  } finally {
    await fh.close();
  }
}

/**
 * The kernel release ("6.1.0-56-cloud-amd64") stored in a kernel image, or undefined.
 * x86 bzImage: the string the setup header's kernel_version field (0x20E) points at.
 * Others (the arm64 Image is uncompressed): the "Linux version ..." banner in the image.
 */
export async function kernelRelease(file: string): Promise<string | undefined> {
  const fh = await fs.open(file, "r");
  try {
    const head = Buffer.alloc(0x210);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (bytesRead === head.length && head.toString("latin1", 0x202, 0x206) === "HdrS") {
      const str = Buffer.alloc(256);
      await fh.read(str, 0, str.length, 0x200 + head.readUInt16LE(0x20e));
      const m = /^([A-Za-z0-9._+~-]+) \(/.exec(str.toString("latin1").split("\0")[0]);
      if (m) return m[1];
    }
    // Scan for the banner (Buffer.indexOf, not a regular expression over the text of 30+ MB),
    // each chunk read to overlap the last by what a banner needs, so that none is cut in two.
    const marker = Buffer.from("Linux version ");
    const pattern = /^Linux version (\d+\.[^\s\0]+) \(/;
    const OVERLAP = 256;
    const buf = Buffer.alloc(CHUNK);
    for (let pos = 0; ; pos += CHUNK - OVERLAP) {
      const { bytesRead: n } = await fh.read(buf, 0, CHUNK, pos);
      for (let at = buf.subarray(0, n).indexOf(marker); at >= 0; at = buf.subarray(0, n).indexOf(marker, at + 1)) {
        const m = pattern.exec(buf.toString("latin1", at, Math.min(n, at + OVERLAP)));
        if (m) return m[1];
      }
      if (n < CHUNK) return undefined;
    }
  } finally {
    await fh.close();
  }
}

// Writes the output in order, feeding every byte to the PE checksum.
class Writer {
  pos = 0;
  constructor(private readonly fh: fs.FileHandle, readonly checksum: PeChecksum) {}

  async write(buf: Buffer): Promise<void> {
    this.checksum.update(buf);
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, this.pos + done);
      done += bytesWritten;
    }
    this.pos += buf.length;
  }

  async padTo(offset: number): Promise<void> {
    if (offset < this.pos) throw new Error(`internal error: layout goes backwards (${offset} < ${this.pos})`);
    if (offset > this.pos) await this.write(Buffer.alloc(offset - this.pos));
  }

  async copy(part: { file: string; size: number }): Promise<void> {
    const src = await fs.open(part.file, "r");
    try {
      let copied = 0;
      const buf = Buffer.alloc(CHUNK); // reused: each chunk is written before the next read
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, CHUNK, copied);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        copied += bytesRead;
        if (copied > part.size) break;
        await this.write(chunk);
      }
      if (copied !== part.size) throw new Error(`${part.file} changed size while the UKI was being written (${part.size} bytes expected, ${copied} read)`);
    } finally {
      await src.close();
    }
  }
}

function placed(s: PeSection): PlacedSection {
  return { name: s.name, offset: s.pointerToRawData, vma: s.virtualAddress, size: s.virtualSize };
}

function describe(s: PeSection, sha256: string): UkiSection {
  return { ...placed(s), sha256 };
}

// How many of a section's bytes are in the file (the rest of VirtualSize is zero-filled).
function contentLength(s: PeSection): number {
  return Math.min(s.virtualSize, s.sizeOfRawData);
}

function partsSize(parts: Part[]): number {
  return parts.reduce((n, p) => n + (Buffer.isBuffer(p) ? p.length : p.size), 0);
}

async function hashFile(file: string, offset: number, length: number): Promise<string> {
  const hash = createHash("sha256");
  if (length === 0) return hash.digest("hex");
  const fh = await fs.open(file, "r");
  try {
    for await (const chunk of fh.createReadStream({ start: offset, end: offset + length - 1, highWaterMark: CHUNK, autoClose: false })) hash.update(chunk as Buffer);
  } finally {
    await fh.close();
  }
  return hash.digest("hex");
}

async function sizeOf(file: string, what: string, fix: string): Promise<{ file: string; size: number }> {
  const st = await fs.stat(file).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === "ENOENT" ? `${what} ${file} does not exist: ${fix}` : `${what} ${file}: ${e.message}`);
  });
  if (!st.isFile()) throw new Error(`${what} ${file} is not a regular file: ${fix}`);
  return { file, size: st.size };
}

async function readInput(file: string, what: string, fix: string): Promise<Buffer> {
  await sizeOf(file, what, fix);
  return fs.readFile(file);
}

/** Bytes of a kernel image read to tell what it is: its headers are well inside them. */
const KERNEL_PROBE = 4096;

/**
 * What the kernel image `file` is for, from its first 4 KiB: an x86 bzImage (setup header
 * "HdrS" at 0x202; it is also a PE image), an arm64 Image ("ARM\x64" at 0x38), or a PE image
 * (an EFI zboot kernel) by its machine; or why it is none of them.
 */
export async function kernelArch(file: string): Promise<{ arch: string } | { why: string }> {
  const fh = await fs.open(file, "r");
  const head = Buffer.alloc(KERNEL_PROBE);
  let n: number;
  try {
    n = (await fh.read(head, 0, head.length, 0)).bytesRead;
  } finally {
    await fh.close();
  }
  const h = head.subarray(0, n);
  if (h.length >= 0x206 && h.toString("latin1", 0x202, 0x206) === "HdrS") return { arch: "x86_64" };
  if (h.length >= 0x3c && h.toString("latin1", 0x38, 0x3c) === "ARM\x64") return { arch: "aarch64" };
  const pe = peMachine(h);
  if ("arch" in pe) return pe;
  if (h[0] === 0x1f && h[1] === 0x8b) return { why: "gzip-compressed data: decompress it first, e.g. zcat Image.gz > Image" };
  if (h.length >= 4 && h.readUInt32LE(0) === 0xfd2fb528) return { why: "zstd-compressed data: decompress it first" };
  return { why: n === 0 ? "it is empty" : 'no bzImage header ("HdrS" at 0x202), no arm64 Image header ("ARM\\x64" at 0x38), no PE header' };
}

/**
 * Why `file` is not a kernel that a systemd-stub for `arch` boots (a phrase to follow the
 * kernel's name: "is for aarch64", "is not a Linux kernel image (...)"), or undefined.
 */
export async function kernelProblem(file: string, arch: string): Promise<string | undefined> {
  const k = await kernelArch(file);
  if ("why" in k) return `is not a Linux kernel image for ${arch} (${k.why})`;
  if (k.arch !== arch) return `is for ${k.arch}, not ${arch}`;
  return undefined;
}

// A kernel for the wrong architecture, or something else than a kernel, boots into nothing,
// silently: refuse it here.
async function checkKernelArch(file: string, stub: PeHeaders): Promise<void> {
  const k = await kernelArch(file);
  if ("why" in k) throw new Error(`kernel image ${file} is not a Linux kernel for ${stub.arch} (${k.why}): pass the kernel, e.g. /boot/vmlinuz-<version>`);
  if (k.arch !== stub.arch) throw new Error(`kernel image ${file} is for ${k.arch} but the stub ${stub.file} is for ${stub.arch}: use a kernel and a stub of the same architecture`);
}
