// Engine-free: the store's record of each artifact's bytes, the check that
// finds a missing, truncated or changed artifact (file or folder) and names it, the stamp cache
// that keeps a check from reading unchanged files, dead temporaries, and gc's references.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { removeTree, Store, verifyStats } from "../src/store";
import { planGc, readStacks, runGc, verifyStore } from "../src/gc";
import { repo } from "./project";

const work = () => fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-store-"));
/** Sets a file's times 10 s back: a check then remembers it (it is not "racily clean"). */
const age = (file: string) => {
  const t = new Date(Date.now() - 10_000);
  fs.utimesSync(file, t, t);
};
const flipBit = (file: string, at?: number) => {
  const fd = fs.openSync(file, "r+");
  const b = Buffer.alloc(1);
  const pos = at ?? Math.floor(fs.statSync(file).size / 2);
  fs.readSync(fd, b, 0, 1, pos);
  b[0] ^= 0x04;
  fs.writeSync(fd, b, 0, 1, pos);
  fs.closeSync(fd);
};
/** A pid that no process has (a child that has exited). */
const deadPid = () => spawnSync("true").pid!;

test("a file artifact: recorded when made; truncated, flipped and deleted copies are named and made again", async (t) => {
  const dir = work();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(dir);
  const bytes = Buffer.alloc(300_000, 7);
  let writes = 0;
  const make = () => store.put("uki/a.efi", async (tmp) => {
    writes++;
    fs.writeFileSync(tmp, bytes);
  });
  assert.equal((await make()).built, true);
  const rec = await store.record("uki/a.efi");
  assert.equal(rec?.type, "file");
  assert.equal(rec?.type === "file" && rec.size, bytes.length);
  assert.ok((await store.check("uki/a.efi")).ok);
  assert.equal((await make()).built, false, "a good artifact was made again");

  const file = store.path("uki/a.efi");
  for (const [how, damage, pattern] of [
    ["truncated", () => fs.truncateSync(file, 1000), /a\.efi is 1000 bytes, its record says 300000 \(truncated or changed\)/],
    ["one bit flipped", () => flipBit(file), /a\.efi is not the bytes it was made with: sha256 [0-9a-f]{16}…, its record says [0-9a-f]{16}…/],
    ["deleted", () => fs.rmSync(file), /a\.efi is missing/],
  ] as const) {
    damage();
    const v = await store.check("uki/a.efi");
    assert.equal(v.ok, false, how);
    assert.match(v.problems.join("\n"), pattern, how);
    const before = writes;
    const res = await make();
    assert.equal(res.built, true, `${how}: not made again`);
    assert.equal(writes, before + 1);
    assert.deepEqual(fs.readFileSync(file), bytes, `${how}: the bytes were not restored`);
    assert.ok((await store.check("uki/a.efi")).ok);
  }
  const damagedEvents = (await store.readJournal()).filter((e) => e.event === "damaged");
  assert.equal(damagedEvents.length, 2, "truncation and the flipped bit are journalled as damaged");

  // Without a record nothing proves the bytes: not trusted, made again.
  fs.rmSync(path.join(dir, "sums", "uki", "a.efi.json"));
  assert.match((await store.check("uki/a.efi")).problems[0], /has no record of its bytes/);
  assert.equal((await make()).built, true);
});

test("a check does not read a file whose stamp is unchanged since it was found good, and reads it when the stamp moves", async (t) => {
  const dir = work();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(dir);
  await store.put("segments/s.cpio.zst", async (tmp) => fs.writeFileSync(tmp, Buffer.alloc(100_000, 1)));
  const file = store.path("segments/s.cpio.zst");
  age(file);
  // A new process knows nothing: simulate with deep, which ignores the cache, then a cached one.
  let n = verifyStats.files;
  assert.ok((await store.check("segments/s.cpio.zst", { deep: true })).ok);
  assert.equal(verifyStats.files, n + 1, "a deep check reads the file");
  n = verifyStats.files;
  for (let i = 0; i < 3; i++) assert.ok((await store.check("segments/s.cpio.zst")).ok);
  assert.equal(verifyStats.files, n, "a check of an unchanged file read it");
  // A write that keeps the size and puts the mtime back still moves the ctime.
  const st = fs.statSync(file);
  flipBit(file, 10);
  fs.utimesSync(file, st.atime, st.mtime);
  const v = await store.check("segments/s.cpio.zst");
  assert.equal(v.ok, false);
  assert.match(v.problems[0], /is not the bytes it was made with/);
});

test("once per operation: a check with `once` takes what this process made or proved; any other check looks, and a failure is not forgotten", async (t) => {
  const dir = work();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(dir);
  // Just written: its bytes are those the record was made from, so `once` does not read them again.
  await store.put("uki/u.efi", async (tmp) => fs.writeFileSync(tmp, Buffer.alloc(200_000, 2)));
  let n = verifyStats.files;
  assert.ok((await store.check("uki/u.efi", { once: true })).ok);
  assert.equal(verifyStats.files, n, "a once check read a file this process had just written");
  // A tree proved by a check is not walked again by a once check: a file removed meanwhile is
  // found by the next plain check, and from then on by once checks too.
  await store.put("rootfs/t", async (tmp) => {
    fs.mkdirSync(path.join(tmp, "etc"));
    fs.writeFileSync(path.join(tmp, "etc", "x"), "x\n");
  }, { dir: true });
  assert.ok((await store.check("rootfs/t")).ok);
  fs.rmSync(store.path("rootfs/t/etc/x"));
  assert.ok((await store.check("rootfs/t", { once: true })).ok, "once checks answer from what this process proved");
  const plain = await store.check("rootfs/t");
  assert.equal(plain.ok, false);
  assert.match(plain.problems.join("\n"), /etc\/x is missing/);
  assert.equal((await store.check("rootfs/t", { once: true })).ok, false, "a once check forgot the failure a plain check found");
  // Discarded (made again): not proved any more.
  await store.discard("uki/u.efi");
  assert.equal((await store.check("uki/u.efi", { once: true })).missing, true);
});

test("a folder artifact: every entry recorded; a changed, truncated, chmod-ed, deleted or added file is named; made again", async (t) => {
  const dir = work();
  t.after(() => removeTree(dir));
  const store = new Store(dir);
  const make = () => store.put("rootfs-packages/" + "1".repeat(64), async (out) => {
    fs.mkdirSync(path.join(out, "etc"));
    fs.writeFileSync(path.join(out, "etc", "hostname"), "nas\n");
    fs.writeFileSync(path.join(out, "etc", "big"), Buffer.alloc(50_000, 3));
    fs.symlinkSync("hostname", path.join(out, "etc", "name"));
  }, { dir: true });
  assert.equal((await make()).built, true);
  const rel = "rootfs-packages/" + "1".repeat(64);
  const tree = store.path(rel);
  const rec = await store.record(rel);
  assert.equal(rec?.type, "tree");
  assert.equal(rec?.type === "tree" && rec.files, 2);
  assert.ok((await store.check(rel)).ok);
  const cases: Array<[string, () => void, RegExp]> = [
    ["changed", () => fs.writeFileSync(path.join(tree, "etc", "hostname"), "sun\n"), /etc\/hostname is not the bytes it was made with/],
    ["truncated", () => fs.truncateSync(path.join(tree, "etc", "big"), 10), /etc\/big is 10 bytes, its record says 50000/],
    ["one bit flipped", () => flipBit(path.join(tree, "etc", "big")), /etc\/big is not the bytes it was made with/],
    ["chmod", () => fs.chmodSync(path.join(tree, "etc", "hostname"), 0o600), /etc\/hostname is mode 100600 owner 0:0, its record says mode 100644/],
    ["deleted", () => fs.rmSync(path.join(tree, "etc", "hostname")), /etc\/hostname is missing \(its record of rootfs-packages\/1+ lists it\)/],
    ["added", () => fs.writeFileSync(path.join(tree, "etc", "extra"), "x"), /etc\/extra is not in the record of rootfs-packages\/1+ \(added after it was made\)/],
    ["relinked", () => {
      fs.rmSync(path.join(tree, "etc", "name"));
      fs.symlinkSync("big", path.join(tree, "etc", "name"));
    }, /etc\/name links to big, its record says hostname/],
  ];
  for (const [how, damage, pattern] of cases) {
    damage();
    const v = await store.check(rel);
    assert.equal(v.ok, false, how);
    assert.match(v.problems.join("\n"), pattern, how);
    assert.equal((await make()).built, true, `${how}: not made again`);
    assert.ok((await store.check(rel)).ok, `${how}: still bad after put`);
  }
});

test("a tree linked from another is recorded without reading the linked files, and both checks stay cached", async (t) => {
  const dir = work();
  t.after(() => removeTree(dir));
  const store = new Store(dir);
  const one = "rootfs-packages/" + "2".repeat(64);
  await store.put(one, async (out) => {
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(out, `f${i}`), Buffer.alloc(10_000, i));
  }, { dir: true });
  for (let i = 0; i < 20; i++) age(path.join(store.path(one), `f${i}`));
  assert.ok((await store.check(one)).ok);
  const n = verifyStats.files;
  const two = "rootfs/" + "3".repeat(64);
  await store.put(two, async (out) => {
    for (let i = 0; i < 20; i++) fs.linkSync(path.join(store.path(one), `f${i}`), path.join(out, `f${i}`));
    fs.writeFileSync(path.join(out, "new"), "skeleton\n");
  }, { dir: true });
  assert.equal(verifyStats.files, n + 1, "only the one new file was read");
  // Linking moved the first tree's ctimes: right after linking, this process knows the inodes.
  assert.ok((await store.check(one, { linked: true })).ok);
  assert.ok((await store.check(one)).ok);
  assert.equal(verifyStats.files, n + 1);
  // Its record still holds: a linked file changed in place is caught in both trees.
  fs.writeFileSync(path.join(store.path(two), "f3"), Buffer.alloc(10_000, 99));
  assert.match((await store.check(one)).problems.join("\n"), /f3 is not the bytes it was made with/);
  assert.match((await store.check(two)).problems.join("\n"), /f3 is not the bytes it was made with/);
});

test("dead temporaries (their pid is gone) are removed by the next build and by gc; live ones stay", async (t) => {
  const dir = work();
  t.after(() => removeTree(dir));
  const store = new Store(dir);
  fs.mkdirSync(path.join(dir, "segments"), { recursive: true });
  fs.mkdirSync(path.join(dir, "rootfs"), { recursive: true });
  const dead = deadPid();
  const deadFile = path.join(dir, "segments", `x.cpio.zst.tmp-${dead}-0123abcd`);
  const deadTree = path.join(dir, "rootfs", `${"4".repeat(64)}.tmp-${dead}-89abcdef`);
  const live = path.join(dir, "segments", `y.cpio.zst.tmp-${process.pid}-00000000`);
  fs.writeFileSync(deadFile, "partial");
  fs.mkdirSync(path.join(deadTree, "etc", "ro"), { recursive: true });
  fs.chmodSync(path.join(deadTree, "etc", "ro"), 0o555);
  fs.writeFileSync(live, "being written");
  assert.deepEqual((await store.deadTemporaries()).map((d) => d.path).sort(), [deadFile, deadTree].sort());
  const lines: string[] = [];
  store.log = (l) => lines.push(l);
  await store.put("segments/z.cpio.zst", async (tmp) => fs.writeFileSync(tmp, "z"));
  assert.ok(!fs.existsSync(deadFile) && !fs.existsSync(deadTree), "a dead temporary survived a build");
  assert.ok(fs.existsSync(live), "a live temporary was removed");
  assert.match(lines.join("\n"), new RegExp(`removed segments/x\\.cpio\\.zst\\.tmp-${dead}-0123abcd, left by a build that was killed \\(pid ${dead} is gone\\)`));
});

/** A stack checkpoint of the file backend, as Pulumi writes it, naming `hashes`. */
function writeStack(state: string, stack: string, paths: string[]): void {
  const file = path.join(state, ".pulumi", "stacks", "ramroot", `${stack}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  // The id is the hash the resource was first created with: an update keeps it, so it references nothing.
  const stale = path.join(path.dirname(paths[0]), `${"8".repeat(64)}${path.extname(paths[0])}`);
  fs.writeFileSync(file, JSON.stringify({ version: 3, checkpoint: { stack: `organization/ramroot/${stack}`, latest: { resources: [{ urn: "x", id: stale, outputs: { path: paths[0], files: paths.slice(1) } }] } } }));
}

test("gc removes what no stack references (and dead temporaries), keeps what one does, and the tools; verify names each bad artifact", async (t) => {
  const dir = work();
  t.after(() => removeTree(dir));
  const store = new Store(path.join(dir, "store"));
  const state = path.join(dir, "state");
  const h = (c: string) => c.repeat(64);
  const put = (rel: string, data = rel) => store.put(rel, async (tmp) => fs.writeFileSync(tmp, data));
  for (const rel of [`uki/${h("a")}.efi`, `release/${h("a")}.cpio`, `uki/${h("b")}.efi`, `release/${h("b")}.cpio`, `uki/${h("8")}.efi`, `segments/${h("c")}.cpio.raw`, `segments/${h("d")}.cpio.raw`, `disk/${h("e")}.img`, `tools/apk.static-x86_64-${h("f")}`]) await put(rel);
  await store.put(`initramfs/${h("9")}.json`, async (tmp) => fs.writeFileSync(tmp, JSON.stringify({ segments: [{ key: h("c"), file: `segments/${h("c")}.cpio.raw` }] })));
  // The qemu stack holds uki a (and thereby release a) and the initramfs 9 (and thereby segment c).
  writeStack(state, "qemu", [store.path(`uki/${h("a")}.efi`), store.path(`initramfs/${h("9")}.json`)]);
  const dead = path.join(store.root, "uki", `${h("b")}.efi.tmp-${deadPid()}-aaaaaaaa`);
  fs.writeFileSync(dead, "partial");

  assert.deepEqual(readStacks(state).map((s) => s.name), ["ramroot/qemu"]);
  const plan = await planGc(store, state);
  assert.deepEqual(plan.unreferenced.map((u) => u.rel).sort(), [`disk/${h("e")}.img`, `release/${h("b")}.cpio`, `segments/${h("d")}.cpio.raw`, `uki/${h("8")}.efi`, `uki/${h("b")}.efi`].sort());
  assert.deepEqual(plan.dead.map((d) => d.path), [dead]);
  await runGc(store, plan);
  assert.deepEqual((await store.artifacts()).sort(), [`initramfs/${h("9")}.json`, `release/${h("a")}.cpio`, `segments/${h("c")}.cpio.raw`, `tools/apk.static-x86_64-${h("f")}`, `uki/${h("a")}.efi`].sort());
  assert.ok(!fs.existsSync(dead));
  assert.ok(!fs.existsSync(path.join(store.root, "sums", "uki", `${h("b")}.efi.json`)), "the record of a removed artifact was kept");

  // verify: each bad artifact named.
  fs.truncateSync(store.path(`uki/${h("a")}.efi`), 3);
  flipBit(store.path(`release/${h("a")}.cpio`), 2);
  const results = await verifyStore(store, { deep: true });
  assert.deepEqual(results.filter((r) => !r.verdict.ok).map((r) => r.rel).sort(), [`release/${h("a")}.cpio`, `uki/${h("a")}.efi`].sort());
});

test("ramroot store verify and gc on the command line: exit 1 naming each bad artifact; --dry-run lists and removes nothing", async (t) => {
  const dir = work();
  t.after(() => removeTree(dir));
  const storeDir = path.join(dir, "store");
  const state = path.join(dir, "state");
  const store = new Store(storeDir);
  const h = (c: string) => c.repeat(64);
  await store.put(`uki/${h("a")}.efi`, async (tmp) => fs.writeFileSync(tmp, "image a"));
  await store.put(`uki/${h("b")}.efi`, async (tmp) => fs.writeFileSync(tmp, "image b"));
  writeStack(state, "qemu", [store.path(`uki/${h("a")}.efi`)]);
  const ramroot = (...args: string[]) => spawnSync(path.join(repo, "bin", "ramroot"), args, { encoding: "utf8", env: { ...process.env, RAMROOT_STORE: storeDir, PULUMI_BACKEND_URL: `file://${state}` } });

  let r = ramroot("store", "verify");
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /2 artifacts checked: all match their records/);
  flipBit(store.path(`uki/${h("a")}.efi`), 1);
  fs.truncateSync(store.path(`uki/${h("b")}.efi`), 2);
  r = ramroot("store", "verify");
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, new RegExp(`BAD uki/${h("a")}\\.efi: .*uki/${h("a")}\\.efi is not the bytes it was made with`));
  assert.match(r.stdout, new RegExp(`BAD uki/${h("b")}\\.efi: .*is 2 bytes, its record says 7`));
  assert.match(r.stdout, /2 artifacts checked: 2 bad/);

  r = ramroot("store", "gc", "--dry-run");
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, new RegExp(`would remove uki/${h("b")}\\.efi .*no stack references it`));
  assert.ok(fs.existsSync(store.path(`uki/${h("b")}.efi`)), "--dry-run removed something");
  r = ramroot("store", "gc");
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, new RegExp(`removed uki/${h("b")}\\.efi`));
  assert.ok(!fs.existsSync(store.path(`uki/${h("b")}.efi`)));
  assert.ok(fs.existsSync(store.path(`uki/${h("a")}.efi`)), "gc removed a referenced artifact");

  // Without any stack in the backend, gc refuses: nothing would be referenced.
  r = spawnSync(path.join(repo, "bin", "ramroot"), ["store", "gc"], { encoding: "utf8", env: { ...process.env, RAMROOT_STORE: storeDir, PULUMI_BACKEND_URL: `file://${path.join(dir, "empty")}` } });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /no stack found in .*empty/);
  assert.ok(fs.existsSync(store.path(`uki/${h("a")}.efi`)));
});
