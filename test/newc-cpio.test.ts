// Random trees on disk (odd names, hard links, symlinks, devices, fifos, empty files, every
// permission bit, any owner) walked and encoded as ramroot encodes a segment, then read by GNU
// cpio, an implementation we did not write: `cpio -t` lists exactly our names, and `cpio -idm`
// makes a copy of the tree. test/unit/newc.test.ts has the in-memory half (our own reader).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { encodeNewc, NewcReader, type NewcEntry } from "../src/image/newc";
import { reproducible, walk } from "../src/image/walk";
import { Random, randomName, randomTarget } from "./unit/random-trees";

const root = process.getuid?.() === 0;
const EPOCH = 1700000000;

/**
 * A random tree in `dir`. Folders are made 0700 and given their random mode last, deepest
 * first, so that making their contents is not refused; without root, every mode keeps the
 * owner's read (and a folder's write and search) bits, and there are no devices or owners.
 */
function randomTree(r: Random, dir: string): void {
  const dirs = [""];
  const files: string[] = [];
  const modes: Array<[string, number]> = [];
  const n = 5 + r.int(40);
  for (let i = 0; i < n; i++) {
    const parent = r.pick(dirs);
    const rel = parent ? `${parent}/${randomName(r)}` : randomName(r);
    const p = path.join(dir, rel);
    if (fs.existsSync(p)) continue;
    const kind = r.pick(["file", "file", "file", "empty", "dir", "dir", "symlink", "link", "fifo", "chr", "blk"] as const);
    const perm = r.int(0o10000) | (root ? 0 : 0o400);
    switch (kind) {
      case "file":
      case "empty":
        fs.writeFileSync(p, kind === "empty" ? "" : r.bytes(r.size(20000)));
        fs.chmodSync(p, perm);
        files.push(rel);
        break;
      case "dir":
        fs.mkdirSync(p, { mode: 0o700 });
        dirs.push(rel);
        modes.push([p, r.int(0o10000) | (root ? 0 : 0o700)]);
        break;
      case "symlink":
        fs.symlinkSync(randomTarget(r), p);
        break;
      case "link":
        if (files.length) fs.linkSync(path.join(dir, r.pick(files)), p);
        break;
      case "fifo":
        execFileSync("mkfifo", ["-m", (perm & 0o777).toString(8), p]);
        break;
      case "chr":
      case "blk":
        if (root) execFileSync("mknod", ["-m", (perm & 0o777).toString(8), p, kind === "chr" ? "c" : "b", String(1 + r.int(250)), String(r.int(256))]);
        break;
    }
    if (root && fs.existsSync(p) !== false && r.chance(0.4)) {
      try {
        fs.lchownSync(p, r.pick([0, 1, 1000, 65534, 123456]), r.pick([0, 1, 1000, 65534, 654321]));
      } catch {
        // A dangling symlink's name is gone only if it was never made: nothing to own.
      }
    }
  }
  // Deepest first: a folder's mode may take away what its parent needs while being filled.
  for (const [p, mode] of modes.reverse()) fs.chmodSync(p, mode);
}

/** Every path under `dir` (relative), sorted. */
function listTree(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    out.push(r);
    if (fs.lstatSync(path.join(dir, r)).isDirectory()) out.push(...listTree(dir, r));
  }
  return out;
}

/** Names grouped by inode, for the regular files with more than one name. */
function linkGroups(dir: string, names: string[]): string[][] {
  const byIno = new Map<number, string[]>();
  for (const n of names) {
    const st = fs.lstatSync(path.join(dir, n));
    if (st.isFile() && st.nlink > 1) byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), n]);
  }
  return [...byIno.values()].map((g) => g.sort()).sort();
}

test("random trees: GNU cpio lists our names and unpacks a copy of the tree; our reader agrees", { timeout: 10 * 60_000 }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-newc-cpio-"));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));
  const seeds = process.env.RAMROOT_SEED ? [Number(process.env.RAMROOT_SEED)] : Array.from({ length: 25 }, (_, i) => 1000 + i);
  // What the seeds covered: the title's promise, checked at the end.
  const seen = { file: 0, empty: 0, dir: 0, symlink: 0, "hard link": 0, fifo: 0, device: 0, "name with a newline": 0, "set-id or sticky bit": 0, "other owner": 0 };
  for (const seed of seeds) {
    const at = `seed ${seed} (RAMROOT_SEED=${seed} repeats it)`;
    const r = new Random(seed);
    const tree = path.join(work, `tree-${seed}`);
    fs.mkdirSync(tree, { mode: 0o755 });
    randomTree(r, tree);
    const records = reproducible(await walk(tree), { epoch: EPOCH });
    const parts: Buffer[] = [];
    for await (const c of encodeNewc(records)) parts.push(Buffer.from(c));
    const archive = Buffer.concat(parts);

    // Our reader: every name, header and content as encoded.
    const entries: NewcEntry[] = [];
    const reader = new NewcReader((e) => entries.push(e), { content: true });
    reader.push(archive);
    assert.ok(reader.done && reader.consumed === archive.length, at);
    assert.deepEqual(entries.map((e) => e.name), records.map((x) => x.name), at);
    for (const [i, e] of entries.entries()) {
      const x = records[i];
      assert.deepEqual([e.mode, e.uid, e.gid, e.nlink, e.ino, e.size, e.rdevMajor, e.rdevMinor], [x.mode, x.uid, x.gid, x.nlink, x.ino, x.size, x.rdevMajor, x.rdevMinor], `${at}: ${JSON.stringify(x.name)}`);
      const content = x.source !== undefined ? fs.readFileSync(x.source) : Buffer.from(x.data ?? []);
      assert.ok(e.data!.equals(content), `${at}: content of ${JSON.stringify(x.name)}`);
    }

    // GNU cpio -t: our names, in our order, byte for byte (it prints them raw, newlines and all).
    const listed = spawnSync("cpio", ["-t", "--quiet"], { input: archive, maxBuffer: 1 << 26 });
    assert.equal(listed.status, 0, `${at}: cpio -t: ${listed.stderr}`);
    assert.equal(listed.stdout.toString("utf8"), records.map((x) => `${x.name}\n`).join(""), at);

    // GNU cpio -idm: a copy of the tree.
    const out = path.join(work, `out-${seed}`);
    fs.mkdirSync(out);
    const unpacked = spawnSync("cpio", ["-idm", "--no-absolute-filenames", "--quiet"], { cwd: out, input: archive, maxBuffer: 1 << 26 });
    assert.equal(unpacked.status, 0, `${at}: cpio -i: ${unpacked.stderr}`);
    const names = listTree(tree);
    assert.deepEqual(listTree(out), names, at);
    for (const rel of names) {
      const st = fs.lstatSync(path.join(tree, rel));
      if (st.isFile()) seen[st.size ? "file" : "empty"]++;
      if (st.isFile() && st.nlink > 1) seen["hard link"]++;
      if (st.isDirectory()) seen.dir++;
      if (st.isSymbolicLink()) seen.symlink++;
      if (st.isFIFO()) seen.fifo++;
      if (st.isCharacterDevice() || st.isBlockDevice()) seen.device++;
      if (rel.includes("\n")) seen["name with a newline"]++;
      if (st.mode & 0o7000) seen["set-id or sticky bit"]++;
      if (st.uid !== 0 || st.gid !== 0) seen["other owner"]++;
    }
    for (const rel of names) {
      const a = fs.lstatSync(path.join(tree, rel));
      const b = fs.lstatSync(path.join(out, rel));
      const what = `${at}: ${JSON.stringify(rel)}`;
      assert.equal(b.mode.toString(8), a.mode.toString(8), `${what}: mode`);
      if (root) assert.deepEqual([b.uid, b.gid], [a.uid, a.gid], `${what}: owner`);
      if (a.isSymbolicLink()) assert.equal(fs.readlinkSync(path.join(out, rel)), fs.readlinkSync(path.join(tree, rel)), `${what}: target`);
      if (a.isFile()) {
        assert.ok(fs.readFileSync(path.join(out, rel)).equals(fs.readFileSync(path.join(tree, rel))), `${what}: content`);
        assert.equal(b.mtimeMs, EPOCH * 1000, `${what}: mtime`);
      }
      if (a.isCharacterDevice() || a.isBlockDevice()) assert.equal(b.rdev, a.rdev, `${what}: device`);
    }
    assert.deepEqual(linkGroups(out, names), linkGroups(tree, names), `${at}: hard links`);
    fs.rmSync(tree, { recursive: true, force: true });
    fs.rmSync(out, { recursive: true, force: true });
  }
  t.diagnostic(JSON.stringify(seen));
  if (!process.env.RAMROOT_SEED) {
    const missing = Object.entries(seen).filter(([k, n]) => n === 0 && (root || (k !== "device" && k !== "other owner")));
    assert.deepEqual(missing, [], "kinds of entry no seed made");
  }
});
