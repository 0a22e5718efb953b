// Random inputs for the newc round-trip tests (test/unit/newc.test.ts in memory, and
// test/newc-cpio.test.ts on disk against GNU cpio): a seeded generator, so that a failure
// names a seed that reproduces it.

/** xorshift32: small, seedable, and the same sequence on every machine. */
export class Random {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.s = x >>> 0);
  }
  /** 0..n-1 */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A size that is often at a padding edge (0-5, around 4k) and sometimes larger. */
  size(max = 9000): number {
    return this.pick([0, 1, 2, 3, 4, 5, this.int(64), 4095, 4096, 4097, this.int(max)]);
  }
}

/**
 * Characters a file name may hold that tools get wrong: control characters (newline, tab,
 * escape), quotes, backslash, spaces, a leading dash, and multi-byte UTF-8 (two, three and four
 * bytes). Never "/" or NUL, which no name can hold; every name is valid UTF-8, since ramroot
 * refuses others before they reach the encoder.
 */
const ODD = ["\n", "\t", "\x01", "\x1b", "\x7f", " ", '"', "'", "\\", "-", "*", "?", "[", "é", "文", "😀", "\u00a0", "\u200b", "~", "$", "%"];
const PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._";

/** A name for one path component (1 to about 90 bytes). */
export function randomName(r: Random): string {
  for (;;) {
    const len = r.pick([1, 2, 3, 8, 20, 60]);
    let s = "";
    for (let i = 0; i < len; i++) s += r.chance(0.3) ? r.pick(ODD) : PLAIN[r.int(PLAIN.length)];
    if (s !== "." && s !== ".." && s !== "TRAILER!!!") return s;
  }
}

/** A symlink target: any bytes of a path but NUL, sometimes absolute, sometimes dangling. */
export function randomTarget(r: Random): string {
  const parts = Array.from({ length: 1 + r.int(4) }, () => randomName(r));
  return (r.chance(0.3) ? "/" : "") + parts.join("/");
}
