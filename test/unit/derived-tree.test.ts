// A configured tree made from an earlier one (src/rootfs/rootfs.ts buildConfigured, without
// setup.sh) gets the store's record of its bytes derived from the earlier tree's record, and its
// listing from the lstats the store's check took: both must be exactly what recordTree and walk
// give when they read the new tree. Here on a small tree with every kind of entry (no root needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import type { Stats } from "node:fs";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { derivedTree, listingFile, listingFromSeen, recordListing } from "../../src/rootfs/rootfs";
import { readListing, walk, writeListing } from "../../src/image/walk";
import { recordTree, Store, type TreeRecord } from "../../src/store";

async function earlierTree(t: { after(f: () => void): void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-derived-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(path.join(dir, "store"));
  const log: string[] = [];
  store.log = (l) => log.push(l);
  const earlier = await store.put("rootfs/" + "a".repeat(64), async (out) => {
    for (const d of ["etc/conf.d", "usr/bin", "usr/lib/empty", "run", "Zeta", "a-b", "a"]) fs.mkdirSync(path.join(out, d), { recursive: true });
    fs.writeFileSync(path.join(out, "etc/hostname"), "one\n");
    fs.writeFileSync(path.join(out, "etc/conf.d/sshd"), "x=1\n", { mode: 0o600 });
    fs.writeFileSync(path.join(out, "usr/bin/prog"), Buffer.alloc(70_000, 7), { mode: 0o755 });
    fs.linkSync(path.join(out, "usr/bin/prog"), path.join(out, "usr/bin/prog-link"));
    fs.writeFileSync(path.join(out, "etc/shared"), "two names\n");
    fs.linkSync(path.join(out, "etc/shared"), path.join(out, "a/shared"));
    fs.symlinkSync("../usr/bin/prog", path.join(out, "etc/prog"));
    fs.symlinkSync("/nowhere", path.join(out, "a-b/dangling"));
    fs.writeFileSync(path.join(out, "Zeta/é"), "");
    // A socket: in the store's record, left out of the listing.
    await new Promise<void>((resolve) => {
      const srv = net.createServer().listen(path.join(out, "run/sock"), () => srv.close(() => resolve()));
    });
    fs.chmodSync(path.join(out, "usr/lib/empty"), 0o700);
  }, { dir: true });
  await recordListing(earlier.path);
  return { dir, store, log, earlier };
}

/** As buildConfigured makes it: links of the earlier tree, `changed` written fresh, the record derived, the listing from what the check saw. */
async function linkedTree(s: Awaited<ReturnType<typeof earlierTree>>, changed: Record<string, string>, breakIt?: (r: TreeRecord) => void) {
  const seen = new Map<string, Stats>();
  const rec = (await s.store.record("rootfs/" + "a".repeat(64))) as TreeRecord;
  const res = await s.store.put("rootfs/" + "b".repeat(64), async (out) => {
    execFileSync("cp", ["-al", `${s.earlier.path}/.`, out]);
    for (const [rel, text] of Object.entries(changed)) {
      fs.rmSync(path.join(out, rel));
      fs.writeFileSync(path.join(out, rel), text);
    }
    const tree = await derivedTree(rec, out, Object.keys(changed));
    assert.ok(tree, "the earlier record stands for the new tree");
    breakIt?.(tree);
    return { tree };
  }, { dir: true, seen: (n, st) => void seen.set(n, st) });
  const linkedFrom = new Map(readListing(listingFile(s.earlier.path), s.earlier.path)!.map((r) => [r.name, r]));
  assert.ok(await listingFromSeen(s.store, res.path, seen, linkedFrom));
  return { res, linkedFrom };
}

test("derived tree record and listing: equal to recordTree's and walk's of the new tree", async (t) => {
  const s = await earlierTree(t);
  const { res, linkedFrom } = await linkedTree(s, { "etc/hostname": "two, longer\n", "etc/shared": "one name now\n" });
  assert.deepEqual(await s.store.record("rootfs/" + "b".repeat(64)), await recordTree(res.path), "the derived record is recordTree's");
  assert.deepEqual(s.log, [], "put took the derived record as it was");
  assert.ok((await s.store.check("rootfs/" + "b".repeat(64))).ok);
  // The listing: the same records as a walk, and the same bytes as the walk's listing.
  const walked = await walk(res.path, { linkedFrom });
  assert.deepEqual(readListing(listingFile(res.path), res.path), walked);
  const again = path.join(s.dir, "walked.listing");
  await writeListing(again, res.path, walked);
  assert.ok(fs.readFileSync(listingFile(res.path)).equals(fs.readFileSync(again)), "the listing's bytes are the walk's");
  assert.ok((await s.store.check("rootfs/" + "b".repeat(64) + ".listing")).ok, "the listing has a record of its bytes");
  // What it is about: a file left alone keeps the earlier stamp; the changed ones are new inodes, a single name.
  const byName = new Map(walked.map((r) => [r.name, r]));
  assert.deepEqual(byName.get("usr/bin/prog")!.stamp, linkedFrom.get("usr/bin/prog")!.stamp);
  assert.equal(byName.get("a/shared")!.linkKey, undefined, "its other name was written fresh: no link left in the tree");
  assert.ok(byName.get("usr/bin/prog-link")!.linkKey);
  assert.equal(byName.has("run/sock"), false);
});

test("a derived record that is not the tree's is not kept: put records the tree by reading it, and says so", async (t) => {
  const s = await earlierTree(t);
  const { res } = await linkedTree(s, { "etc/hostname": "two\n" }, (r) => {
    const e = r.entries.find((x) => x[0] === "etc/conf.d/sshd")!;
    e[1] = e[1] | 0o044;
  });
  assert.deepEqual(await s.store.record("rootfs/" + "b".repeat(64)), await recordTree(res.path));
  assert.equal(s.log.length, 1);
  assert.match(s.log[0], /the record derived for it does not match the folder, recorded by reading it instead: .*etc\/conf\.d\/sshd is mode 100600/);
  assert.ok((await s.store.check("rootfs/" + "b".repeat(64))).ok);
});

test("derivedTree refuses a record out of recordTree's order, and a changed path it does not list as a file", async (t) => {
  const s = await earlierTree(t);
  const rec = (await s.store.record("rootfs/" + "a".repeat(64))) as TreeRecord;
  assert.ok(await derivedTree(rec, s.earlier.path, ["etc/hostname"]));
  const swapped = { ...rec, entries: [rec.entries[1], rec.entries[0], ...rec.entries.slice(2)] };
  assert.equal(await derivedTree(swapped, s.earlier.path, ["etc/hostname"]), undefined);
  const twice = { ...rec, entries: [rec.entries[0], ...rec.entries] };
  assert.equal(await derivedTree(twice, s.earlier.path, ["etc/hostname"]), undefined);
  assert.equal(await derivedTree(rec, s.earlier.path, ["etc/nothing"]), undefined);
  assert.equal(await derivedTree(rec, s.earlier.path, ["etc/prog"]), undefined, "a symbolic link is not a file written fresh");
});
