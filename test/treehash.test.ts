// The cached tree hash: same answer with and without the cache, unchanged files not re-read,
// every kind of change noticed (content with the old mtime put back, mode, owner, symlink,
// added and removed names), exclusions and racily clean files.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { hashTree, type TreeHashStats } from "../src/rootfs/treehash";

let work: string;
let tree: string;
let cache: string;
const OLD = new Date("2020-01-01T00:00:00Z");

function write(rel: string, data: string, mode = 0o644): void {
  const p = path.join(tree, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, data);
  fs.chmodSync(p, mode);
  fs.utimesSync(p, OLD, OLD);
}

async function run(opts: { rootOwned?: boolean; exclude?: string[]; racyMs?: number } = {}): Promise<{ hash: string; stats: TreeHashStats }> {
  const stats = { files: 0, hashed: 0, hashedBytes: 0 };
  return { hash: await hashTree(tree, { racyMs: -1000, ...opts, cacheDir: cache }, stats), stats };
}

before(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-treehash-"));
  tree = path.join(work, "tree");
  cache = path.join(work, "cache");
  write("etc/hostname", "nas\n");
  write("bin/tool", "#!/bin/sh\necho hi\n", 0o755);
  write("lib/modules/a.ko", "x".repeat(100_000));
  write("boot/vmlinuz", "kernel");
  fs.symlinkSync("tool", path.join(tree, "bin/alias"));
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

test("the cache gives the same hash and reads no unchanged file", async () => {
  const plain = await hashTree(tree);
  const first = await run();
  assert.equal(first.hash, plain);
  assert.equal(first.stats.hashed, 4);
  const second = await run();
  assert.equal(second.hash, plain);
  assert.equal(second.stats.hashed, 0);
});

test("a content change is noticed even with the old size and mtime put back (ctime moves)", async () => {
  const before_ = (await run()).hash;
  write("etc/hostname", "NAS\n");
  const changed = await run();
  assert.notEqual(changed.hash, before_);
  assert.equal(changed.stats.hashed, 1);
  write("etc/hostname", "nas\n");
  assert.equal((await run()).hash, before_);
});

test("mode, owner, symlink target, added and removed names change the hash", async () => {
  const base = (await run()).hash;
  fs.chmodSync(path.join(tree, "bin/tool"), 0o700);
  assert.notEqual((await run()).hash, base);
  fs.chmodSync(path.join(tree, "bin/tool"), 0o755);
  assert.equal((await run()).hash, base);
  fs.unlinkSync(path.join(tree, "bin/alias"));
  fs.symlinkSync("other", path.join(tree, "bin/alias"));
  assert.notEqual((await run()).hash, base);
  fs.unlinkSync(path.join(tree, "bin/alias"));
  fs.symlinkSync("tool", path.join(tree, "bin/alias"));
  assert.equal((await run()).hash, base);
  write("etc/new", "");
  assert.notEqual((await run()).hash, base);
  fs.unlinkSync(path.join(tree, "etc/new"));
  assert.equal((await run()).hash, base);
  if (process.getuid?.() === 0) {
    fs.lchownSync(path.join(tree, "etc/hostname"), 1000, 1000);
    assert.notEqual((await run()).hash, base);
    assert.equal((await run({ rootOwned: true })).hash, (await hashTree(tree, { rootOwned: true })));
    fs.lchownSync(path.join(tree, "etc/hostname"), 0, 0);
    assert.equal((await run()).hash, base);
  }
});

test("exclude leaves out top-level names only", async () => {
  const base = (await run({ exclude: ["boot"] })).hash;
  write("boot/vmlinuz", "another kernel");
  assert.equal((await run({ exclude: ["boot"] })).hash, base);
  write("lib/boot", "not excluded");
  assert.notEqual((await run({ exclude: ["boot"] })).hash, base);
  fs.unlinkSync(path.join(tree, "lib/boot"));
});

test("a file written just now is hashed again next time (racily clean)", async () => {
  fs.writeFileSync(path.join(tree, "etc/fresh"), "new");
  await run({ racyMs: 2000 });
  // Every file of this tree was written (chmod, utimes) within the last two seconds.
  const again = (await run({ racyMs: 2000 })).stats;
  assert.equal(again.hashed, again.files);
  fs.unlinkSync(path.join(tree, "etc/fresh"));
});

test("errors name the folder", async () => {
  await assert.rejects(hashTree(path.join(work, "missing")), /does not exist/);
  await assert.rejects(hashTree(path.join(tree, "etc/hostname")), /is not a directory/);
});
