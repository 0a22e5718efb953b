import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { PeChecksum } from "../../src/image/pe";

// The PE checksum as CheckSumMappedFile defines it, a byte pair at a time: each little-endian
// 16-bit word added with the carry folded back in at once, the CheckSum field read as zero, an
// odd last byte as a word of its own, then the file's length added.
function reference(buf: Buffer, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i += 2) {
    const byte = (j: number) => (j >= checksumOffset && j < checksumOffset + 4 ? 0 : j < buf.length ? buf[j] : 0);
    sum += byte(i) | (byte(i + 1) << 8);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return (((sum & 0xffff) + (sum >>> 16)) + buf.length) >>> 0;
}

// Fed in pieces of the given sizes, each a view at `shift` bytes into a larger buffer, so that
// every alignment of the bytes in memory and in the file is met.
function pieces(buf: Buffer, checksumOffset: number, sizes: number[], shift: number): number {
  const c = new PeChecksum(checksumOffset);
  let at = 0;
  for (let k = 0; at < buf.length; k++) {
    const n = Math.min(sizes[k % sizes.length], buf.length - at);
    const host = Buffer.alloc(n + shift);
    buf.copy(host, shift, at, at + n);
    c.update(host.subarray(shift, shift + n));
    at += n;
  }
  return c.digest();
}

test("PE checksum: the same as the definition for every chunking and alignment", () => {
  const small: Buffer[] = [
    Buffer.alloc(0), Buffer.alloc(1, 0xff), Buffer.alloc(3, 0x80), Buffer.alloc(4096), Buffer.alloc(4099, 0xff),
    // A sum that is a multiple of 65535 (where 0 and 0xffff differ).
    Buffer.alloc(2 * 65535, 0x01),
    ...Array.from({ length: 15 }, () => randomBytes(1 + Math.floor(Math.random() * 5000))),
  ];
  for (const buf of small) {
    for (const off of [0, 1, 2, 3, 0x98, Math.max(0, buf.length - 2)]) {
      const want = reference(buf, off);
      for (const sizes of [[buf.length || 1], [1], [3, 5, 7], [2, 4093, 65536, 6]])
        for (const shift of [0, 1, 2, 3]) assert.equal(pieces(buf, off, sizes, shift), want, `${buf.length} bytes, CheckSum at ${off}, pieces ${sizes}, shifted ${shift}`);
    }
  }
  // Long runs: the 32-bit path's folds (every 2^20 words) and 4 MiB pieces, as the UKI writer feeds it.
  for (const buf of [Buffer.alloc(9 << 20, 0xff), randomBytes((3 << 20) + 7)]) {
    const want = reference(buf, 0x98);
    for (const sizes of [[4 << 20], [2, 4093, 65536, 6]])
      for (const shift of [0, 2]) assert.equal(pieces(buf, 0x98, sizes, shift), want, `${buf.length} bytes, pieces ${sizes}, shifted ${shift}`);
  }
});
