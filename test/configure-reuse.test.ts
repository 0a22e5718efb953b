// Stage 2 without setup.sh when it cannot matter: a stage 2 that differs from one in the store
// only by the contents of skeleton files setup.sh neither read nor changed is made from that
// tree (src/rootfs/rootfs.ts buildConfigured, src/rootfs/configure.ts watchSetup). The real
// stage 2 runs here (root, namespaces, the overlay, the test system as stage 1), and every tree
// made without setup.sh is compared, entry for entry, with a from-scratch build of the same inputs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { repo } from "./project";
import { hostProblem } from "../src/rootfs/configure";
import { buildConfigured, configureHash, stage1Of, listingFile, packagesHash, setupFile, type RootfsSpec } from "../src/rootfs/rootfs";
import { readListing, walk, writeListing } from "../src/image/walk";
import { recordTree, Store } from "../src/store";

const testsys = (arch: string) => execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { encoding: "utf8" }).trim().split("\n").pop()!;

const SETUP = `#!/bin/sh -e
echo "setup.sh ran"
cat /etc/reuse/cat.conf > /etc/derived-cat
if grep -q yes /etc/reuse/grep.conf; then echo yes > /etc/derived-grep; else echo no > /etc/derived-grep; fi
. /etc/reuse/sourced.conf
echo "$VALUE" > /etc/derived-sourced
sed -i 's/^a/A/' /etc/reuse/sedi.conf
cat root/etc/reuse/mnt.conf > /etc/derived-mnt
cat /etc/reuse/empty >> /etc/derived-empty
chmod 600 /etc/reuse/chmodded
[ -f /etc/reuse/stat-only ] && echo present > /etc/derived-stat
rc-update add local default
`;

const FILES: Record<string, string> = {
  "etc/reuse/unread.conf": "v1\n",
  "etc/reuse/also-unread": "one\n",
  "etc/reuse/cat.conf": "cat v1\n",
  "etc/reuse/grep.conf": "yes\n",
  "etc/reuse/sourced.conf": "VALUE=one\n",
  "etc/reuse/sedi.conf": "a line\n",
  "etc/reuse/mnt.conf": "via /mnt\n",
  "etc/reuse/empty": "",
  "etc/reuse/chmodded": "x\n",
  "etc/reuse/stat-only": "s\n",
  "etc/fstab": "# nothing\n",
};

test("configure: setup.sh is not run again for a skeleton edit it cannot see, and the tree is the one a full build gives", { timeout: 10 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-reuse-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const base = testsys("x86_64");
  const system = path.join(dir, "system");
  for (const [rel, text] of Object.entries(FILES)) {
    fs.mkdirSync(path.dirname(path.join(system, "root", rel)), { recursive: true });
    fs.writeFileSync(path.join(system, "root", rel), text, { mode: 0o644 });
  }
  fs.writeFileSync(path.join(system, "setup.sh"), SETUP, { mode: 0o755 });
  fs.writeFileSync(path.join(system, "notes"), "seen at /mnt\n");
  const spec = (store: Store): RootfsSpec => ({
    arch: "x86_64", source: { kind: "folder", path: base }, skeleton: path.join(system, "root"), setup: path.join(system, "setup.sh"), system, hashCache: store.path("cache/treehash"),
  });
  const build = async (store: Store) => {
    const lines: string[] = [];
    const s = spec(store);
    const hash1 = await packagesHash(s);
    const hash2 = await configureHash(s, hash1);
    const res = await buildConfigured(store, s, stage1Of(store, s, hash1), hash2, (l) => lines.push(l));
    const reused = lines.some((l) => l.startsWith("configured from "));
    assert.equal(!!res.from, reused, "the result names the tree it was made from exactly when it was");
    // Stage 1 is made or proved (two walks of it) only when the tree is made from it.
    const ran = lines.includes("setup.sh: setup.sh ran");
    if (res.built) assert.equal(!!res.packages, !reused, reused ? "stage 1 was checked for a tree made from an earlier one" : "stage 1 was not made or checked for a tree made from it");
    if (ran) assert.equal(res.packages?.path, stage1Of(store, s, hash1).path);
    return { ...res, hash2, lines, ran, reused };
  };
  let n = 0;
  /** The same inputs in a store of their own: setup.sh runs; the two trees must be the same entry for entry. */
  const sameAsFromScratch = async (got: { path: string; hash2: string }) => {
    const fresh = await build(new Store(path.join(dir, `scratch-${n++}`)));
    assert.equal(fresh.hash2, got.hash2);
    assert.ok(fresh.ran, "the from-scratch build ran setup.sh");
    const [a, b] = [await recordTree(got.path), await recordTree(fresh.path)];
    assert.deepEqual(a.entries, b.entries, "the tree made without setup.sh differs from a full build");
    assert.equal(a.sha256, b.sha256);
  };
  const store = new Store(path.join(dir, "store"));
  const storeLog: string[] = [];
  store.log = (l) => storeLog.push(l);
  /**
   * A tree made from an earlier one has the store's record and the listing that reading it gives:
   * the record derived from the earlier tree's is recordTree's of the new tree (and put took it,
   * not read the tree instead), the listing is byte for byte the walk's (stamps carried from the
   * earlier tree's listing, as buildConfigured walks with them).
   */
  const derivedAsRead = async (r: { path: string; hash2: string; from?: string }) => {
    assert.ok(r.from);
    assert.deepEqual(await store.record(`rootfs/${r.hash2}`), await recordTree(r.path), "the derived record is not recordTree's");
    assert.deepEqual(storeLog.filter((l) => l.includes("derived")), [], "put did not take the derived record");
    const earlier = store.path(`rootfs/${r.from}`);
    const linkedFrom = new Map(readListing(listingFile(earlier), earlier)!.map((x) => [x.name, x]));
    const walked = await walk(r.path, { linkedFrom });
    assert.deepEqual(readListing(listingFile(r.path), r.path), walked, "the listing is not the walk's");
    const again = path.join(dir, "walked.listing");
    await writeListing(again, r.path, walked);
    assert.ok(fs.readFileSync(listingFile(r.path)).equals(fs.readFileSync(again)), "the listing's bytes are not the walk's");
    assert.ok((await store.check(`rootfs/${r.hash2}`)).ok && (await store.check(`rootfs/${r.hash2}.listing`)).ok);
  };
  const edit = (rel: string, text: string) => fs.writeFileSync(path.join(system, "root", rel), text);
  const read = (tree: string, rel: string) => fs.readFileSync(path.join(tree, rel), "utf8");

  const first = await build(store);
  assert.ok(first.built && first.ran && !first.reused, first.lines.join("\n"));
  assert.equal(read(first.path, "etc/reuse/sedi.conf"), "A line\n");

  await t.test("the record beside the tree names what setup.sh read or changed", async () => {
    const rec = JSON.parse(fs.readFileSync(setupFile(first.path), "utf8"));
    // What setup.sh read (cat, grep, sourced, through /mnt, an empty file), changed (sed -i, chmod),
    // and what the stage reads itself (etc/fstab); not the files it never opened, nor the one it only stat()ed.
    assert.deepEqual(rec.touched, ["etc/fstab", "etc/reuse/cat.conf", "etc/reuse/chmodded", "etc/reuse/empty", "etc/reuse/grep.conf", "etc/reuse/mnt.conf", "etc/reuse/sedi.conf", "etc/reuse/sourced.conf"]);
    assert.ok((await store.check(`rootfs/${first.hash2}.setup.json`)).ok, "the record beside the tree has a record of its bytes");
  });

  await t.test("an edit of a file setup.sh never reads: made from the earlier tree, without setup.sh", async () => {
    edit("etc/reuse/unread.conf", "v2\n");
    const r = await build(store);
    assert.ok(r.built && !r.ran && r.reused, r.lines.join("\n"));
    assert.equal(read(r.path, "etc/reuse/unread.conf"), "v2\n");
    // The new file is its own inode: nothing of the earlier tree was written through.
    assert.notEqual(fs.statSync(path.join(r.path, "etc/reuse/unread.conf")).ino, fs.statSync(path.join(first.path, "etc/reuse/unread.conf")).ino);
    assert.equal(read(first.path, "etc/reuse/unread.conf"), "v1\n");
    assert.ok((await store.check(`rootfs/${first.hash2}`)).ok, "the earlier tree is intact");
    await derivedAsRead(r);
    await sameAsFromScratch(r);
    // And again from that one (its record carries what setup.sh touched), two files at once.
    edit("etc/reuse/unread.conf", "v3\n");
    edit("etc/reuse/also-unread", "two\n");
    const r2 = await build(store);
    assert.ok(r2.built && !r2.ran && r2.reused, r2.lines.join("\n"));
    await derivedAsRead(r2);
    await sameAsFromScratch(r2);
  });

  await t.test("the blind spot: a file setup.sh only stat()s is not seen", async () => {
    edit("etc/reuse/stat-only", "changed, still there\n");
    const r = await build(store);
    assert.ok(!r.ran && r.reused, r.lines.join("\n"));
    await derivedAsRead(r);
    await sameAsFromScratch(r);
  });

  for (const [what, rel, text, check] of [
    ["read with cat", "etc/reuse/cat.conf", "cat v2\n", (p: string) => assert.equal(read(p, "etc/derived-cat"), "cat v2\n")],
    ["read with grep", "etc/reuse/grep.conf", "no\n", (p: string) => assert.equal(read(p, "etc/derived-grep"), "no\n")],
    ["sourced", "etc/reuse/sourced.conf", "VALUE=two\n", (p: string) => assert.equal(read(p, "etc/derived-sourced"), "two\n")],
    ["rewritten with sed -i", "etc/reuse/sedi.conf", "another line\n", (p: string) => assert.equal(read(p, "etc/reuse/sedi.conf"), "Another line\n")],
    ["read through /mnt", "etc/reuse/mnt.conf", "via /mnt, v2\n", (p: string) => assert.equal(read(p, "etc/derived-mnt"), "via /mnt, v2\n")],
    ["empty, then read", "etc/reuse/empty", "not empty\n", (p: string) => assert.equal(read(p, "etc/derived-empty"), "not empty\n")],
    ["chmod-ed", "etc/reuse/chmodded", "y\n", (p: string) => assert.equal(fs.statSync(path.join(p, "etc/reuse/chmodded")).mode & 0o777, 0o600)],
    ["etc/fstab (the stage reads it)", "etc/fstab", "tmpfs /data tmpfs defaults 0 0\n", (p: string) => assert.ok(fs.statSync(path.join(p, "data")).isDirectory())],
  ] as const) {
    await t.test(`a file ${what}: setup.sh runs again`, async () => {
      edit(rel, text);
      const r = await build(store);
      assert.ok(r.built && r.ran && !r.reused, r.lines.join("\n"));
      check(r.path);
    });
  }

  await t.test("an added file, a mode change, setup.sh or the rest of /mnt changed: setup.sh runs again", async () => {
    fs.writeFileSync(path.join(system, "root", "etc/reuse/added"), "new\n");
    let r = await build(store);
    assert.ok(r.ran && !r.reused, r.lines.join("\n"));
    fs.rmSync(path.join(system, "root", "etc/reuse/added"));
    r = await build(store);
    assert.ok(!r.built, "back to a tree the store has");
    // Back to an earlier tree's inputs but for an unread file: reused again.
    edit("etc/reuse/unread.conf", "v4\n");
    r = await build(store);
    assert.ok(!r.ran && r.reused, r.lines.join("\n"));
    await derivedAsRead(r);
    fs.chmodSync(path.join(system, "root", "etc/reuse/unread.conf"), 0o600);
    edit("etc/reuse/unread.conf", "v5\n");
    r = await build(store);
    assert.ok(r.ran && !r.reused, `a mode change: ${r.lines.join("\n")}`);
    edit("etc/reuse/unread.conf", "v6\n");
    fs.writeFileSync(path.join(system, "notes"), "changed at /mnt\n");
    r = await build(store);
    assert.ok(r.ran && !r.reused, `the rest of /mnt: ${r.lines.join("\n")}`);
    edit("etc/reuse/unread.conf", "v7\n");
    fs.appendFileSync(path.join(system, "setup.sh"), "# a comment\n");
    r = await build(store);
    assert.ok(r.ran && !r.reused, `setup.sh: ${r.lines.join("\n")}`);
    // The same edit with no record beside the earlier tree: setup.sh runs.
    fs.rmSync(setupFile(r.path));
    edit("etc/reuse/unread.conf", "v8\n");
    r = await build(store);
    assert.ok(r.ran && !r.reused, `no record: ${r.lines.join("\n")}`);
    await sameAsFromScratch(r);
  });
});

test("configure: where reads move no access time (a noatime mount), nothing is recorded and setup.sh always runs", { timeout: 5 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-reuse-noatime-"));
  const at = path.join(dir, "noatime");
  fs.mkdirSync(at);
  execFileSync("mount", ["--bind", at, at]);
  t.after(() => {
    execFileSync("umount", ["-l", at]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  execFileSync("mount", ["-o", "remount,bind,noatime", at]);
  const system = path.join(dir, "system");
  fs.mkdirSync(path.join(system, "root", "etc"), { recursive: true });
  fs.writeFileSync(path.join(system, "root", "etc", "unread.conf"), "v1\n");
  fs.writeFileSync(path.join(system, "setup.sh"), '#!/bin/sh -e\necho "setup.sh ran"\n', { mode: 0o755 });
  const store = new Store(path.join(at, "store"));
  const s: RootfsSpec = { arch: "x86_64", source: { kind: "folder", path: testsys("x86_64") }, skeleton: path.join(system, "root"), setup: path.join(system, "setup.sh"), system, hashCache: store.path("cache/treehash") };
  const build = async () => {
    const lines: string[] = [];
    const hash1 = await packagesHash(s);
    const res = await buildConfigured(store, s, stage1Of(store, s, hash1), await configureHash(s, hash1), (l) => lines.push(l));
    return { ...res, lines, ran: lines.includes("setup.sh: setup.sh ran") };
  };
  const first = await build();
  assert.ok(first.ran);
  assert.ok(first.lines.some((l) => l.includes("reads do not move access times here")), first.lines.join("\n"));
  assert.equal(fs.existsSync(setupFile(first.path)), false, "a record was written though nothing could be watched");
  fs.writeFileSync(path.join(system, "root", "etc", "unread.conf"), "v2\n");
  const second = await build();
  assert.ok(second.built && second.ran, second.lines.join("\n"));
});
