// The real Alpine path, offline. The pinned alpine-make-rootfs runs Alpine's own apk,
// which installs the example system/packages from a local signed mirror of genuine Alpine
// packages (test/alpine-mirror.ts); the image then boots in QEMU with its persistence stick.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Project } from "./project";
import { alpineMirror, type Mirror } from "./alpine-mirror";
import { hostProblem } from "../src/rootfs/configure";
import { parsePackages } from "../src/rootfs/system";

const built = (p: Project, since: number) => p.journal().slice(since).filter((e) => e.event === "built").map((e) => String(e.artifact));
const stage = (artifacts: string[], prefix: string) => artifacts.filter((a) => a.startsWith(prefix + "/"));
const outputs = async (p: Project) => JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
/** fsck.vfat -n: exit 0 when the filesystem is clean (nothing to repair, no dirty bit). */
const fsckClean = (image: string) => {
  try {
    execFileSync("fsck.vfat", ["-n", image], { encoding: "utf8" });
    return "";
  } catch (e: any) {
    return `${e.stdout ?? ""}${e.stderr ?? ""}` || String(e);
  }
};

/** A throw-away project whose qemu stack builds `arch` through the real builder and the mirror. */
async function alpineProject(t: { after(f: () => void): void }, arch: string, mirror: Mirror): Promise<Project> {
  const p = Project.create();
  t.after(() => p.remove());
  await p.pulumi(["stack", "init", "qemu"]);
  const config = { arch, base: "alpine", mirror: mirror.url, branch: mirror.branch, apk: mirror.apk, keysDir: mirror.keysDir, builderUrl: mirror.builderUrl };
  for (const [k, v] of Object.entries(config)) await p.pulumi(["config", "set", `ramroot:${k}`, v, "--stack", "qemu"]);
  return p;
}

/** The mirror, or the reason this test cannot run here (said in the skip). */
async function mirrorOrSkip(t: { skip(m: string): void; after(f: () => Promise<void> | void): void }): Promise<Mirror | undefined> {
  const m = await alpineMirror();
  if ("unavailable" in m) {
    console.log(`# skipped: ${m.unavailable}`);
    t.skip(m.unavailable);
    return undefined;
  }
  t.after(() => m.close());
  return m;
}

/** What the first up of either architecture must show: the real path ran, the image is healthy. */
async function firstUp(p: Project, arch: string, mirror: Mirror): Promise<void> {
  const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  const all = res.stdout + res.stderr;
  const b = built(p, 0);
  assert.equal(stage(b, "rootfs-packages").length, 1);
  assert.equal(stage(b, "rootfs").length, 1);
  assert.ok(mirror.requests.some((r) => r.endsWith(".apk")), "no package was downloaded from the mirror");
  assert.ok(!all.includes("\x1b["), "raw colour escapes in Pulumi's output");
  const o = await outputs(p);
  const store = path.join(p.dir, ".ramroot", "store");
  const stage1 = path.join(store, stage(b, "rootfs-packages")[0]!);
  const tree = path.join(store, "rootfs", o.rootfsHash);
  // apk's own database lists what system/packages asked for.
  const installed = fs.readFileSync(path.join(stage1, "lib", "apk", "db", "installed"), "utf8");
  for (const name of parsePackages(fs.readFileSync(path.join(p.dir, "system", "packages"), "utf8")))
    assert.match(installed, new RegExp(`^P:${name}$`, "m"), `${name} is not in apk's database`);
  assert.match(installed, new RegExp(`^A:${arch}$`, "m"));
  assert.equal(fs.readFileSync(path.join(stage1, "etc", "apk", "repositories"), "utf8"), `${mirror.url}/${mirror.branch}/main\n${mirror.url}/${mirror.branch}/community\n`);
  // The kernel package's mkinitfs trigger saw disable_trigger=yes; apk's .apk-new copy is gone.
  assert.equal(fs.readFileSync(path.join(stage1, "etc", "mkinitfs", "mkinitfs.conf"), "utf8"), "disable_trigger=yes\n");
  assert.ok(!fs.existsSync(path.join(stage1, "etc", "mkinitfs", "mkinitfs.conf.apk-new")), "mkinitfs.conf.apk-new left in the image");
  assert.deepEqual(fs.readdirSync(path.join(stage1, "boot")).filter((f) => f.startsWith("initramfs")), [], "mkinitfs's trigger made an initramfs");
  // alpine-make-rootfs removed the empty /media/usb; the configure stage made it again from fstab.
  assert.ok(!fs.existsSync(path.join(stage1, "media", "usb")), "the builder no longer removes /media/usb: this test no longer shows the defect");
  assert.ok(fs.statSync(path.join(tree, "media", "usb")).isDirectory());
  // Each architecture's serial console gets its login.
  const serial = arch === "aarch64" ? "ttyAMA0" : "ttyS0";
  const inittab = fs.readFileSync(path.join(tree, "etc", "inittab"), "utf8");
  assert.match(inittab, new RegExp(`^${serial}::respawn:/sbin/getty -L 115200 ${serial} vt100$`, "m"));
  assert.doesNotMatch(inittab, new RegExp(`^${arch === "aarch64" ? "ttyS0" : "ttyAMA0"}::`, "m"));
  // The guest: this build, the stick mounted and a boot counted on it, then a clean shutdown.
  assert.match(res.stdout, new RegExp(`console: ramroot: build ${o.buildId} up`));
  assert.match(res.stdout, /console: ramroot: persisted boots=1 \(was 0\) on \/media\/usb/);
  assert.equal(fsckClean(o.persist), "", "the persistence image is dirty after the boot check");
}

test("real Alpine path, aarch64: builder + apk from the local mirror, boot, and which stage reruns", { timeout: 40 * 60_000 }, async (t) => {
  const problem = hostProblem("aarch64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const mirror = await mirrorOrSkip(t);
  if (!mirror) return;
  const arch = "aarch64";
  const p = await alpineProject(t, arch, mirror);
  const sys = path.join(p.dir, "system");

  await t.test("first up: both stages through the real builder; the image boots with the stick mounted", () => firstUp(p, arch, mirror));

  await t.test("a second up builds nothing and downloads nothing", async () => {
    const mark = p.journal().length;
    const asked = mirror.requests.length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.deepEqual(built(p, mark), []);
    assert.deepEqual(mirror.requests.slice(asked), []);
  });

  await t.test("an edit of setup.sh reruns only stage 2", async () => {
    fs.appendFileSync(path.join(sys, "setup.sh"), '\necho "edited by the test" > /etc/ramroot-edited\n');
    assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update initramfs", "update media", "update rootfs", "update uki"]);
    const mark = p.journal().length;
    const asked = mirror.requests.length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    const b = built(p, mark);
    assert.deepEqual(stage(b, "rootfs-packages"), []);
    assert.equal(stage(b, "rootfs").length, 1);
    assert.deepEqual(mirror.requests.slice(asked), [], "the builder ran again");
    const o = await outputs(p);
    assert.equal(fs.readFileSync(path.join(p.dir, ".ramroot", "store", "rootfs", o.rootfsHash, "etc", "ramroot-edited"), "utf8"), "edited by the test\n");
  });

  await t.test("a comment in the package list changes nothing", async () => {
    fs.appendFileSync(path.join(sys, "packages"), "# just a comment\n");
    assert.deepEqual(await p.previewSteps("qemu"), []);
  });

  await t.test("ramroot:refresh rebuilds stage 1 from the apk cache: no package is downloaded again", async () => {
    await p.pulumi(["config", "set", "ramroot:refresh", "2026-11-29", "--stack", "qemu"]);
    const mark = p.journal().length;
    const asked = mirror.requests.length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.equal(stage(built(p, mark), "rootfs-packages").length, 1);
    // (apk reads an index again only when its cached copy is a minute old: not asserted.)
    assert.deepEqual(mirror.requests.slice(asked).filter((r) => r.endsWith(".apk")), [], "packages were downloaded again");
  });

  await t.test("ramroot:repositories: a tagged repository, and a name@tag package installed from it", async () => {
    await p.pulumi(["config", "rm", "ramroot:mirror", "--stack", "qemu"]);
    await p.pulumi(["config", "rm", "ramroot:branch", "--stack", "qemu"]);
    const repos = [`${mirror.url}/${mirror.branch}/main`, `@local ${mirror.url}/${mirror.branch}/main`];
    await p.pulumi(["config", "set", "--path", "ramroot:repositories[0]", repos[0]!, "--stack", "qemu"]);
    await p.pulumi(["config", "set", "--path", "ramroot:repositories[1]", repos[1]!, "--stack", "qemu"]);
    const packages = path.join(sys, "packages");
    fs.writeFileSync(packages, fs.readFileSync(packages, "utf8").replace(/^dosfstools$/m, "dosfstools@local"));
    // The diff shows the package list's change, not only a new hash.
    const diff = await p.pulumi(["preview", "--diff", "--stack", "qemu"]);
    assert.match(diff.stdout, /"dosfstools"\s*=>\s*"dosfstools@local"/, `the diff does not show the package change:\n${diff.stdout}`);
    const mark = p.journal().length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    const b = built(p, mark);
    assert.equal(stage(b, "rootfs-packages").length, 1);
    const stage1 = path.join(p.dir, ".ramroot", "store", stage(b, "rootfs-packages")[0]!);
    assert.equal(fs.readFileSync(path.join(stage1, "etc", "apk", "repositories"), "utf8"), repos.join("\n") + "\n");
    assert.match(fs.readFileSync(path.join(stage1, "etc", "apk", "world"), "utf8"), /^dosfstools@local$/m);
  });

  await t.test("a package that does not exist: apk's message, and nothing in the store", async () => {
    fs.appendFileSync(path.join(sys, "packages"), "ramroot-no-such-package\n");
    const mark = p.journal().length;
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(res.code, 0);
    const all = res.stdout + res.stderr;
    assert.match(all, /ERROR: unable to select packages/);
    assert.match(all, /ramroot-no-such-package \(no such package\)/);
    assert.ok(!all.includes("\x1b["), "raw colour escapes in Pulumi's output");
    assert.deepEqual(built(p, mark), []);
    const store = path.join(p.dir, ".ramroot", "store");
    assert.deepEqual(fs.readdirSync(store, { recursive: true }).map(String).filter((f) => f.includes(".tmp")), []);
  });

  await t.test("a builder whose sha256 is not the configured one is refused before it runs", async () => {
    const wrong = "0".repeat(64);
    await p.pulumi(["config", "set", "ramroot:builderSha256", wrong, "--stack", "qemu"]);
    const mark = p.journal().length;
    const res = await p.pulumi(["up", "--yes", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(res.code, 0);
    assert.match(res.stdout + res.stderr, new RegExp(`refusing to run ${mirror.builderUrl.replace(/[.]/g, "\\.")}: its sha256 is ${mirror.builderSha256}, expected ${wrong}`));
    assert.deepEqual(built(p, mark), []);
  });
});

test("real Alpine path, x86_64: builder + apk from the local mirror, boot, and a no-op second up", { timeout: 30 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const mirror = await mirrorOrSkip(t);
  if (!mirror) return;
  const p = await alpineProject(t, "x86_64", mirror);
  await t.test("first up: both stages through the real builder; the image boots with the stick mounted", () => firstUp(p, "x86_64", mirror));
  await t.test("a second up builds nothing", async () => {
    const mark = p.journal().length;
    await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    assert.deepEqual(built(p, mark), []);
  });
});
