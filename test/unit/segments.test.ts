// The segmentation rule (src/image/segments.ts) on records made up in memory: where segments start
// and end, what a change moves, and where hard-linked names go.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import type { WalkRecord } from "../../src/image/walk";
import { segmentRecords, splitSegments, type SegmentRange } from "../../src/image/segments";

const SPLIT = 1 << 20;
const dir = (name: string): WalkRecord => ({ name, mode: 0o40755, uid: 0, gid: 0, nlink: 2, mtime: 0, ino: 0, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0, size: 0 });
const file = (name: string, size: number, linkKey?: string): WalkRecord => ({ ...dir(name), mode: 0o100644, nlink: 1, size, linkKey });
/** The names in each segment, as segmentRecords orders them. */
const names = (records: WalkRecord[], ranges: SegmentRange[]) => segmentRecords(records, ranges).map((rs) => rs.map((r) => r.name));

describe("splitSegments", () => {
  const sample = (bump = 0) => {
    const r = [dir("."), dir("etc"), file("etc/a", 10), dir("usr"), dir("usr/lib")];
    for (let i = 0; i < 200; i++) r.push(file(`usr/lib/lib${String(i).padStart(3, "0")}.so`, 100_000 + (i === 50 ? bump : 0)));
    r.push(dir("var"), file("var/x", 5));
    return r;
  };

  test("segments are contiguous, cover every record, and keep directories before contents", () => {
    const recs = sample();
    const segs = splitSegments(recs, SPLIT);
    assert.ok(segs.length > 3, `split usr/lib, got ${segs.map((s) => s.name)}`);
    assert.equal(segs[0].start, 0);
    assert.equal(segs[segs.length - 1].end, recs.length);
    for (let i = 1; i < segs.length; i++) assert.equal(segs[i].start, segs[i - 1].end);
    assert.ok(segs.every((s) => s.end > s.start));
    assert.deepEqual(segs.slice(0, 1).map((s) => s.name), ["etc"]);
    assert.equal(segs[segs.length - 1].name, "var");
  });

  test("a size change moves no boundary", () => {
    const a = splitSegments(sample(), SPLIT);
    const b = splitSegments(sample(30_000), SPLIT);
    assert.deepEqual(b, a);
  });

  test("a new file changes only the segment it lands in (and at most splits it)", () => {
    const recs = sample();
    const a = splitSegments(recs, SPLIT);
    const withNew = [...recs];
    withNew.splice(recs.findIndex((r) => r.name === "usr/lib/lib100.so") + 1, 0, file("usr/lib/lib100.so.1", 100_000));
    const b = splitSegments(withNew, SPLIT);
    const joined = (s: typeof a, rs: WalkRecord[]) => s.map((x) => rs.slice(x.start, x.end).map((r) => r.name).join(","));
    const before = new Set(joined(a, recs));
    // The segment that gets the file changes; if the new name is itself a cut point, the
    // rest of that old segment becomes a segment of its own. Nothing else moves.
    const differ = joined(b, withNew).filter((n) => !before.has(n));
    assert.ok(differ.length >= 1 && differ.length <= 2, `segments that differ: ${differ.length}`);
    assert.ok(differ[0].includes("lib100.so.1"));
    assert.equal(joined(b, withNew).length - differ.length, a.length - 1);
  });
});


describe("the rule's edges", () => {
  test("the root is always split: each top-level entry is a segment of its own, even in a tiny tree", () => {
    const recs = [dir("."), dir("etc"), file("etc/hostname", 8), file("init", 100), dir("usr"), file("usr/x", 1)];
    assert.deepEqual(names(recs, splitSegments(recs)), [[".", "etc", "etc/hostname"], ["init"], ["usr", "usr/x"]]);
  });

  test("one archive for Infinity (ramroot initramfs --single)", () => {
    const recs = [dir("."), dir("etc"), file("etc/a", 1)];
    assert.deepEqual(splitSegments(recs, Infinity), [{ name: ".", start: 0, end: 3 }]);
    assert.deepEqual(splitSegments([], Infinity), []);
  });

  test("a folder within splitBytes is one unit; past it, it is split", () => {
    const tree = (size: number) => [dir("."), dir("usr"), dir("usr/lib"), ...Array.from({ length: 64 }, (_, i) => file(`usr/lib/f${i}`, size))];
    // 64 x 8 KiB: well within 1 MiB.
    assert.deepEqual(splitSegments(tree(8 << 10), SPLIT).map((s) => s.name), ["usr"]);
    // 64 x 64 KiB = 4 MiB: usr and usr/lib are split, and usr/lib's files cut where their names say.
    const big = splitSegments(tree(64 << 10), SPLIT);
    assert.ok(big.length > 2, big.map((s) => s.name).join(" "));
    assert.ok(big.every((s) => s.name.startsWith("usr")), big.map((s) => s.name).join(" "));
  });

  test("every name of an inode goes to the segment of its last name, ahead of its own records; an emptied segment is dropped", () => {
    const recs = [
      dir("."), dir("etc"), file("etc/a", 1), file("etc/shared", 9, "1:7"),
      file("top", 3, "1:8"),
      dir("var"), file("var/shared", 0, "1:7"), file("var/top", 0, "1:8"), file("var/z", 1),
    ];
    const ranges = splitSegments(recs);
    // top's segment held only top, which moved to var's: there is no segment of it left.
    assert.deepEqual(names(recs, ranges), [[".", "etc", "etc/a"], ["etc/shared", "top", "var", "var/shared", "var/top", "var/z"]]);
    assert.deepEqual(ranges.map((r) => r.links), [undefined, [3, 4]]);
    // Without link keys the same records make three segments.
    const plain = recs.map((r) => ({ ...r, linkKey: undefined }));
    assert.deepEqual(splitSegments(plain).map((r) => r.name), ["etc", "top", "var"]);
  });
});
