// The segmentation rule: how a tree's records (in walk order) are cut into the whole newc
// archives an initramfs concatenates (src/image/initramfs.ts). Pure: names, modes, sizes and link keys
// in, ranges of records out; nothing is read or written.
import * as path from "node:path";
import { encodedSize } from "./newc";
import type { WalkRecord } from "./walk";
import { isDir } from "./walk";

export const DEFAULT_SPLIT_BYTES = 32 << 20;

export interface SegmentRange {
  name: string;
  /** Records [start, end) of the walk... */
  start: number;
  end: number;
  /**
   * ...after these, in walk order: names of hard-linked files from earlier ranges, whose inode
   * has its last name in this range. They leave their own ranges (see splitSegments).
   */
  links?: number[];
}

/** The records of each segment: its `links`, then its range without the names that moved on. */
export function segmentRecords<T>(records: T[], ranges: SegmentRange[]): T[][] {
  const moved = new Set<number>();
  for (const r of ranges) for (const i of r.links ?? []) moved.add(i);
  return ranges.map((r) => {
    const own = records.slice(r.start, r.end);
    const kept = moved.size === 0 ? own : own.filter((_, k) => !moved.has(r.start + k));
    return r.links ? [...r.links.map((i) => records[i]), ...kept] : kept;
  });
}

/**
 * The segmentation rule. Records are in walk order, so every directory's subtree is a
 * contiguous run; a segment is a contiguous run too, hence segments are in path order and a
 * directory always comes before its contents, in its own segment or an earlier one.
 *
 * - A directory whose subtree takes more than `splitBytes` of newc is *split*; any other entry
 *   (a file, a small directory with everything under it) is a *unit* and never divided.
 *   The root is always split.
 * - In a split directory, each split child gets segments of its own (recursively), and the
 *   runs of units between them are cut into segments at names: a segment ends after a unit
 *   whose name's FNV-1a hash is 0 modulo M. M is 1 in the root (every top-level entry is its
 *   own segment, so etc/ is alone) and elsewhere the largest power of two <= (splitBytes/2) /
 *   (average unit bytes of that directory), aiming at splitBytes/2 per segment.
 * - A segment that would hold only entries of split directories joins the next one.
 *
 * - Hard links: every name of an inode goes into the segment of its last name in walk order
 *   (listed in that range's `links`, ahead of the range's own records), and a range left
 *   empty by that is dropped. The kernel forgets its table of links at each TRAILER!!!, so
 *   names in two archives would unpack as two files with the content stored twice. The last
 *   name's segment, because it is the latest: the folders of every other name are unpacked
 *   before it, so each archive still comes after the folders of what it holds.
 *
 * So boundaries sit at names and depend on sizes only through two per-directory decisions:
 * whether a directory crosses splitBytes, and the power-of-two bucket of its average unit. A
 * size change can move boundaries only inside the directories whose decision it flips, and
 * only when it crosses a threshold (a factor of two for M); everywhere else, changing a file
 * changes exactly the one segment that holds it.
 */
export function splitSegments(records: WalkRecord[], splitBytes = DEFAULT_SPLIT_BYTES): SegmentRange[] {
  const n = records.length;
  if (splitBytes === Infinity) return n ? [{ name: ".", start: 0, end: n }] : [];
  // end[i]: where i's subtree ends; weight[i]: its newc bytes (a subtree's weight is added to
  // its parent's when the walk order leaves it).
  const end = new Int32Array(n);
  const weight = new Float64Array(n);
  const depthOf = new Int32Array(n);
  for (let i = 1; i < n; i++) {
    const name = records[i].name;
    let d = 1;
    for (let at = name.indexOf("/"); at !== -1; at = name.indexOf("/", at + 1)) d++;
    depthOf[i] = d;
  }
  const stack: number[] = [];
  const leave = (at: number) => {
    const j = stack.pop()!;
    end[j] = at;
    if (stack.length) weight[stack[stack.length - 1]] += weight[j];
  };
  for (let i = 0; i < n; i++) {
    while (stack.length && depthOf[stack[stack.length - 1]] >= depthOf[i]) leave(i);
    weight[i] = encodedSize(records[i].name, records[i].size);
    stack.push(i);
  }
  while (stack.length) leave(n);

  const out: SegmentRange[] = [];
  let start = 0;
  let units: string[] = [];
  const cut = (at: number) => {
    if (units.length === 0) return;
    const name = units.length === 1 ? units[0] : `${units[0]}..${path.posix.basename(units[units.length - 1])}`;
    out.push({ name, start, end: at });
    start = at;
    units = [];
  };
  // The root is always split: then etc/ (where a system's configuration lives) is a segment of
  // its own even in a small tree, and editing it never recompresses the rest.
  const big = (i: number) => isDir(records[i].mode) && (i === 0 || weight[i] > splitBytes);

  const split = (dir: number) => {
    const children: number[] = [];
    for (let c = dir + 1; c < end[dir]; c = end[c]) children.push(c);
    const small = children.filter((c) => !big(c));
    const avg = small.reduce((sum, c) => sum + weight[c], 0) / Math.max(1, small.length);
    const m = dir === 0 ? 1 : 2 ** Math.floor(Math.log2(Math.max(1, splitBytes / 2 / Math.max(1, avg))));
    for (const c of children) {
      if (big(c)) {
        cut(c);
        split(c);
        cut(end[c]);
      } else {
        units.push(records[c].name);
        if ((fnv1a(path.posix.basename(records[c].name)) & (m - 1)) === 0) cut(end[c]);
      }
    }
  };

  if (n > 0 && big(0)) split(0);
  else units.push(".");
  cut(n);
  if (start < n) out.push({ name: records[start].name, start, end: n });
  return groupLinks(records, out);
}

/** Moves every name of a hard-linked inode into the range of its last name (splitSegments). */
function groupLinks(records: WalkRecord[], ranges: SegmentRange[]): SegmentRange[] {
  const last = new Map<string, number>();
  for (let i = 0; i < records.length; i++) {
    const key = records[i].linkKey;
    if (key !== undefined) last.set(key, i);
  }
  if (last.size === 0) return ranges;
  const rangeOf = new Int32Array(records.length);
  ranges.forEach((r, j) => rangeOf.fill(j, r.start, r.end));
  const links = new Map<number, number[]>();
  const left = ranges.map((r) => r.end - r.start);
  for (let i = 0; i < records.length; i++) {
    const key = records[i].linkKey;
    if (key === undefined) continue;
    const to = rangeOf[last.get(key)!];
    if (to === rangeOf[i]) continue;
    if (!links.has(to)) links.set(to, []);
    links.get(to)!.push(i);
    left[rangeOf[i]]--;
  }
  return ranges.flatMap((r, j) => (left[j] === 0 ? [] : links.has(j) ? [{ ...r, links: links.get(j)! }] : [r]));
}

/** FNV-1a over the UTF-8 bytes of `s` (an ASCII name is its own bytes: no Buffer needed). */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  if (/^[\x00-\x7f]*$/.test(s)) for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  else for (const b of Buffer.from(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}
